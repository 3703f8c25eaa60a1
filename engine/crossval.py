"""Cross-validation summary of a run: out-of-fold masks at the original resolution, scored with
the official code, per fold and overall (seed B's Table 1 layout).

Every training case is a validation case of exactly one fold; that fold's final model predicts
it (sliding window, no flips unless asked), on the case's own grid, raw and after keeping the
largest component. The two out-of-fold folders ``<run>/cv/oof_raw`` and ``<run>/cv/oof_lcc`` are
ordinary prediction folders, scored by ``engine.evaluation.score_segmentation`` (so ``eval.py
--pred <run>/cv/oof_raw`` gives the same official scores). ``<run>/cv_summary.json`` and
``cv_summary.csv`` hold per fold Dice and NormHD (raw and with the largest component), their mean
and SD over folds, the best fold (the one ``--upkern-fold best`` takes: highest validation Dice
recorded by training; also the best by out-of-fold Dice) and the official scores of the whole
out-of-fold set.
"""
from __future__ import annotations

import csv
import io as _io
import json
import logging
from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_write
from core.errors import UserError
from core.postprocess import largest_component
from data import io, mamamia
from engine import evaluation as ev
from engine.outputs import OutputFolder
from engine.predictor import PredictSettings, Predictor, member, reference_header
from engine.runs import RunDir, dataset_root

log = logging.getLogger(__name__)


def finished_folds(run: RunDir, n_folds: int = 5) -> list[int]:
    return [f for f in range(n_folds) if run.checkpoint(f, "final").is_file()]


def cross_validation_summary(run: RunDir, device=None, tta_axes=(), progress: bool = True,
                             echo=print) -> dict:
    """Build (or rebuild) the run's cross-validation summary; returns it."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    splits = run.load_splits()
    missing = [f for f in range(len(splits)) if not run.checkpoint(f, "final").is_file()]
    if missing:
        raise UserError(f"{run.path}: fold(s) {missing} not finished; the cross-validation summary needs all "
                        f"{len(splits)}")
    data = run.load_data()
    cases = {c.patient_id: c for c in mamamia.load_dataset(dataset_root(data.root or None))}
    ids = [i for s in splits for i in s["val"]]
    lost = [i for i in ids if i not in cases]
    if lost:
        raise UserError(f"{run.path}: {len(lost)} validation case(s) not in {data.root}: {lost[:5]}")
    cv = run.path / "cv"
    raw_dir, lcc_dir = cv / "oof_raw", cv / "oof_lcc"
    with OutputFolder(raw_dir), OutputFolder(lcc_dir):
        for k, split in enumerate(splits):
            fold_model = member(run.checkpoint(k, "final"), device, f"{run.name}/fold_{k}")
            predictor = Predictor([fold_model], device, PredictSettings(tta_axes=tuple(tta_axes), lcc=False))
            for pid in split["val"]:
                case = cases[pid]
                mask, _ = predictor.predict(case)
                ref = reference_header(case, predictor.plan.channels)
                for folder, m in ((raw_dir, mask), (lcc_dir, largest_component(mask).astype(np.uint8))):
                    io.save_nifti(folder / "pred_segmentations" / f"{pid}.nii.gz", m, ref.affine, dtype=np.uint8,
                                  reference=ref, overwrite=True)
            if progress:
                echo(f"fold {k}: {len(split['val'])} out-of-fold case(s) predicted")
    scored = [cases[i] for i in ids]
    opts = ev.EvalOptions(data=data.root, split="train", subgroups="age,menopause,density")
    summaries = {}
    for name, folder in (("raw", raw_dir), ("lcc", lcc_dir)):
        ev.score_segmentation(opts, scored, folder, folder / "evaluation", ["age", "menopausal_status",
                                                                           "breast_density"], echo=lambda *_: None)
        summaries[name] = json.loads((folder / "evaluation" / "summary.json").read_text())
    rows = _per_case(raw_dir), _per_case(lcc_dir)
    per_fold = []
    for k in range(len(splits)):
        r = [rows[0][i] for i in splits[k]["val"]]
        lc = [rows[1][i] for i in splits[k]["val"]]
        per_fold.append({"fold": k, "n": len(r),
                         "dice": float(np.mean([x["dice"] for x in r])),
                         "dice_lcc": float(np.mean([x["dice"] for x in lc])),
                         "norm_hd": float(np.mean([x["norm_hd"] for x in r])),
                         "norm_hd_lcc": float(np.mean([x["norm_hd"] for x in lc]))})
    stats = {key: {"mean": float(np.mean([f[key] for f in per_fold])),
                   "sd": float(np.std([f[key] for f in per_fold], ddof=1)) if len(per_fold) > 1 else 0.0}
             for key in ("dice", "dice_lcc", "norm_hd", "norm_hd_lcc")}
    # the fold UpKern's --upkern-fold best takes (validation Dice recorded by training), and the best
    # by out-of-fold Dice at the original resolution (they differ only through resampling)
    from engine.setup import best_fold
    best_oof = max(range(len(per_fold)), key=lambda k: (per_fold[k]["dice"], -k))
    summary = {"run": str(run.path), "folds": per_fold, "over_folds": stats, "best_fold": best_fold(run),
               "best_fold_oof": best_oof,
               "official": {"raw": summaries["raw"]["official"], "lcc": summaries["lcc"]["official"]},
               "per_center": {"raw": summaries["raw"]["per_center"], "lcc": summaries["lcc"]["per_center"]},
               "oof": {"raw": str(raw_dir), "lcc": str(lcc_dir)}, "tta_axes": list(tta_axes)}
    atomic_write(run.path / "cv_summary.json", json.dumps(ev.jsonable(summary), indent=1))
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = ["fold", "n", "dice", "dice_lcc", "norm_hd", "norm_hd_lcc"]
    w.writerow(keys)
    for f in per_fold:
        w.writerow([f[k] for k in keys])
    for stat in ("mean", "sd"):
        w.writerow([stat, sum(f["n"] for f in per_fold) if stat == "mean" else ""]
                   + [stats[k][stat] for k in keys[2:]])
    atomic_write(run.path / "cv_summary.csv", buf.getvalue())
    return summary


def _per_case(folder: Path) -> dict[str, dict]:
    with open(folder / "evaluation" / "per_case.csv", newline="") as fh:
        return {r["patient_id"]: {"dice": float(r["dice"]), "norm_hd": float(r["norm_hd"])}
                for r in csv.DictReader(fh)}


def format_summary(summary: dict) -> str:
    """The per-fold table and the official scores, as printed by train.py and eval.py --cv."""
    lines = [f"{'fold':>5s} {'n':>4s} {'Dice':>7s} {'Dice+LCC':>9s} {'NormHD':>7s} {'NormHD+LCC':>11s}"]
    for f in summary["folds"]:
        lines.append(f"{f['fold']:>5d} {f['n']:>4d} {f['dice']:7.4f} {f['dice_lcc']:9.4f} {f['norm_hd']:7.4f} "
                     f"{f['norm_hd_lcc']:11.4f}")
    s = summary["over_folds"]
    lines.append(f"{'mean':>5s} {'':>4s} {s['dice']['mean']:7.4f} {s['dice_lcc']['mean']:9.4f} "
                 f"{s['norm_hd']['mean']:7.4f} {s['norm_hd_lcc']['mean']:11.4f}")
    lines.append(f"{'sd':>5s} {'':>4s} {s['dice']['sd']:7.4f} {s['dice_lcc']['sd']:9.4f} "
                 f"{s['norm_hd']['sd']:7.4f} {s['norm_hd_lcc']['sd']:11.4f}")
    for name in ("raw", "lcc"):
        o = summary["official"][name]
        lines.append(f"out-of-fold official ({'largest component' if name == 'lcc' else 'raw'}): Dice "
                     f"{o['mean_dice']:.4f}, NormHD {o['mean_norm_hd']:.4f}, Fairness {o['fairness']:.4f}, "
                     f"Ranking {o['ranking']:.4f}")
    lines.append(f"best fold: {summary['best_fold']} by validation Dice (UpKern's choice), "
                 f"{summary['best_fold_oof']} by out-of-fold Dice")
    return "\n".join(lines)
