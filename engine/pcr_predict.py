"""pCR prediction: features from the predicted masks -> the trained pCR model ->
``predictions.csv`` (patient_id, pcr, score), the challenge format."""
from __future__ import annotations

import csv
import io as _io
import logging
import os
from pathlib import Path

from core.errors import UserError
from engine.runs import RunDir, runs_root

log = logging.getLogger(__name__)


def find_pcr_model(name: str | None = None, runs_dir=None) -> Path:
    """``name`` (a run under the runs folder, or a run folder) or else the most recently written
    ``<runs>/*/pcr_model.pt`` (``train.py --task pcr``)."""
    if name:
        path = RunDir.named(name, runs_dir).pcr_model_path
        if not path.exists():
            raise UserError(f"--pcr-run {name}: {path} not found")
        return path
    found = list(runs_root(runs_dir).glob("*/pcr_model.pt"))
    if not found:
        raise UserError(f"{runs_root(runs_dir)}: no trained pCR model (train one with train.py --task pcr)")
    return max(found, key=lambda p: p.stat().st_mtime)


def load_pcr_model(path: Path):
    """The pCR model in ``path`` (``nets.pcr_file``: arrays and JSON, never unpickled)."""
    from nets.pcr_file import load_pcr_model as load
    try:
        model, _ = load(path)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return model


def predict_pcr(cases, out: Path, model_path: Path, progress: bool = True, echo=print,
                masks_dir: Path | None = None) -> list[dict]:
    """Predict pCR for ``cases`` from the masks in ``masks_dir`` (default ``out``; the masks are
    ``<dir>/pred_segmentations/<ID>.nii.gz`` or ``<dir>/<ID>.nii.gz``); writes
    ``out/predictions.csv``. Features are cached in ``out/pcr_features.csv``. A case whose mask
    is missing, empty or of implausible volume still gets a prediction, from imputed image
    features (and its clinical data when the model uses them); such cases are listed. No mask
    for any case is a UserError."""
    from data import io, radiomics

    model = load_pcr_model(model_path)
    out = Path(out)
    rcfg = radiomics.RadiomicsConfig.from_dict(model.settings["radiomics"])
    src = Path(masks_dir) if masks_dir is not None else out
    try:
        masks = radiomics.predicted_masks(cases, src)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if not masks:
        raise UserError(f"{src}: no mask named after any of the {len(cases)} case(s) "
                        f"(expected <ID>.nii.gz, e.g. {cases[0].patient_id}.nii.gz)")
    out.mkdir(parents=True, exist_ok=True)
    table = radiomics.extract_features(cases, masks, "predicted", rcfg, cache=out / "pcr_features.csv",
                                       workers=min(2, os.cpu_count() or 1), progress=progress)
    records = [radiomics.clinical_record(c) for c in cases]
    score, label = model.predict(table.values, table.names, records)
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["patient_id", "pcr", "score"])
    for pid, lab, sc in zip(table.ids, label, score):
        w.writerow([pid, int(lab), f"{float(sc):.6f}"])
    io.atomic_write_text(out / "predictions.csv", buf.getvalue())
    imputed = {pid: note for pid, note, ok in zip(table.ids, table.notes, table.valid) if not ok}
    if imputed:
        echo(f"pCR: {len(imputed)} case(s) predicted from imputed image features: {imputed}")
    echo(f"pCR: {len(cases)} prediction(s), {int(label.sum())} pCR, threshold {model.threshold:.3f} "
         f"(model {model_path.parent}) -> {out / 'predictions.csv'}")
    return [{"patient_id": pid, "pcr": int(lab), "score": float(sc)} for pid, lab, sc in zip(table.ids, label, score)]
