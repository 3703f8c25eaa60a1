"""Scoring predictions with the official MAMA-MIA rules, per center and per subgroup.

``score_segmentation`` / ``score_pcr`` read a prediction folder, score every case of a split and
write ``per_case.csv``, ``summary.json`` and plots; the text tables come back through ``echo``.
The definitions of every score are in ``SEG_DEFINITIONS`` / ``PCR_DEFINITIONS`` (also written
into summary.json).

Predictions are scored as the official MAMA-MIA scorer does: label value 1 is tumour, every other
value background (a mask saved as 0/255 scores as empty; a warning names such files). A
prediction that cannot be used (unreadable, on another grid without ``resample_pred``) counts as
a failed case exactly like a missing one (Dice 0, NormHD 1) and is listed; a folder without a
single usable prediction is an error.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from core import fairness as fair
from core.errors import UserError
from core.metrics import HD_MAX, case_metrics
from data import io, mamamia, plots
from engine.report import (format_pcr, format_seg, format_table, jsonable, pcr_group_rows,  # noqa: F401
                           write_outputs)

log = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    data: str | None = None
    split: str = "test"
    subgroups: str = "age,menopause,density"
    hd_units: str = "voxel"
    threshold: float = 0.5
    resample_pred: bool = False
    workers: int = 1
    no_plots: bool = False
    quiet: bool = False
    html: bool = False               # also write report.html (engine/html_report.py)
    max_thumbnails: int = 100        # per-case overlay thumbnails in the report, worst Dice first


SUBGROUP_NAMES = fair.SUBGROUP_NAMES
SEG_COLUMNS = ["dice", "hd95", "norm_hd", "hd95_mm", "assd_mm", "volume_pred_ml", "volume_gt_ml",
               "volume_diff_ml", "volume_diff_rel"]
CLINICAL_COLUMNS = ["age", "menopausal_status", "breast_density", "subtype"]

SEG_DEFINITIONS = {
    "dice": "official: 2TP/(2TP+FP+FN) of label 1; both masks empty -> 0",
    "hd95": "official with hd_units=voxel: max of the two directed 95th percentiles of "
            "nearest-contour distances (face-connected contours), voxel index units, spacing "
            "ignored; both empty -> 0, one empty -> inf",
    "norm_hd": f"official: hd95 / {HD_MAX:g}, not clipped; inf -> 1",
    "performance": "official: 0.5 * (mean dice + 1 - mean norm_hd)",
    "fairness": "official: mean over age, menopausal_status, breast_density of Fair_v = 1 - 0.5 * "
                "(range of group mean dice + range of group mean norm_hd); always these three "
                "variables, whatever --subgroups",
    "ranking": "official: 0.5 * performance + 0.5 * fairness",
    "groups": "official: age bins (0,40],(40,50],(50,60],(60,70],(70,100], missing excluded; "
              "menopause pre/post from the raw string, missing -> 'unknown' (a group); density "
              "a-d, missing excluded; subtype (non-official) as recorded, missing excluded",
    "hd95_mm, assd_mm": "non-official: HD95 and average symmetric surface distance in mm",
    "volume_*": "non-official: volumes (ml) and differences prediction - ground truth",
    "demographic_parity": "non-official (Seed A): max - min over groups of P(dice >= threshold)",
    "table means of hd95, hd95_mm, assd_mm": "over the cases with finite distances only",
    "missing prediction": "counted as an empty mask (dice 0, norm_hd 1), as in the challenge",
    "failed case": "a prediction that cannot be used (unreadable, other grid): counted like a missing "
                   "one (dice 0, norm_hd 1), listed under 'failed'",
    "label values": "official: label 1 is tumour, every other value background; files with other "
                    "values are listed under 'non_binary_predictions'",
    "unscorable case": "an unreadable expert mask: excluded from every aggregate, listed",
}
PCR_DEFINITIONS = {
    "balanced_accuracy": "official: mean recall of the classes present; missing truth -> 0",
    "disparity": "official: clip(mean over age, menopausal_status, breast_density of EOD_v, 0, 1), "
                 "EOD_v = range of group TPR + range of group FPR (TPR/FPR 0 when undefined; every "
                 "age bin is a group even when empty)",
    "ranking": "official: 0.5 * balanced_accuracy + 0.5 * (1 - disparity)",
    "auc, ece, demographic_parity": "non-official extras; demographic parity = max - min over "
                                    "groups of the predicted pCR rate",
    "missing row": "counted as pcr 0, score 0",
    "table TPR/FPR": "official fallback: 0 when undefined or when the group holds one label",
}


# ----------------------------------------------------------------------------- arguments, inputs

def parse_subgroups(text: str) -> list[str]:
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in SUBGROUP_NAMES]
    if bad:
        raise UserError(f"--subgroups: unknown name(s) {bad}; choose from {sorted(SUBGROUP_NAMES)}")
    return list(dict.fromkeys(SUBGROUP_NAMES[n] for n in names))


def latest_prediction_dir(root: Path, marker: str) -> Path:
    """The most recently modified ``root/<run>`` holding ``marker`` (a folder or file)."""
    found = sorted(((d / marker).stat().st_mtime, d) for d in root.iterdir()
                   if (d / marker).exists()) if root.is_dir() else []
    if not found:
        raise UserError(f"no --pred given and no folder under {root} holds {marker}; run infer.py "
                         "first or pass --pred")
    return found[-1][1]


def warn(msg: str) -> None:
    log.warning(msg)


def case_info(case: mamamia.Case) -> dict[str, Any]:
    """Clinical values and subgroup labels of one case (raw menopausal string: official grouping)."""
    c = case.clinical
    raw = {"age": c.age, "menopausal_status": c.menopause_raw, "breast_density": c.density,
           "subtype": c.subtype}
    groups = {v: fair.GROUPERS[v](raw[v]) for v in fair.FAIRNESS_VARIABLES}
    groups["subtype"] = c.subtype
    return {"patient_id": case.patient_id, "center": case.center, **raw,
            **{f"group_{v}": g for v, g in groups.items()}}


# ----------------------------------------------------------------------------- segmentation

class GridMismatch(ValueError):
    """A prediction whose grid (shape or affine) differs from the expert mask's."""


def prediction_files(folder: Path) -> dict[str, Path]:
    """Prediction files by lower-case id (matched case-insensitively; two files whose names
    differ only in case are an error naming both)."""
    return mamamia.ci_index(((io.strip_nifti_suffix(p.name), p) for p in folder.iterdir()
                             if p.is_file() and io.is_nifti(p.name)), what=str(folder))


def load_pair(case: mamamia.Case, pred_path: Path | None, resample: bool):
    """(ground truth, prediction, spacing, affine, status) on the expert-mask grid; status is
    ok | missing | resampled | non_binary | failed. The prediction is label 1 (the official
    rule); a prediction that cannot be used becomes an empty mask with status ``failed`` and the
    reason in ``load_pair.last_error`` style: returned as a sixth element."""
    header = io.load_header(case.mask_path)
    gt = mamamia.load_mask(case)
    affine = np.asarray(header.affine, float)
    spacing = io.spacing_from_affine(affine)
    if pred_path is None:
        return gt, np.zeros_like(gt), spacing, affine, "missing", None
    try:
        vol = io.load_nifti(pred_path, dtype=np.float32)
        status = "ok"
        if not io.same_grid(vol.affine, vol.shape, affine, gt.shape):
            if not resample:
                raise GridMismatch(
                    f"{case.patient_id}: prediction {pred_path} has grid {vol.shape} (affine differs by "
                    f"up to {np.abs(vol.affine - affine).max():.3g}) but the expert mask "
                    f"{case.mask_path} has {gt.shape}; pass --resample-pred to resample it")
            vol = io.Volume(io.resample_to_grid(vol.array, vol.affine, affine, gt.shape, order=0),
                            affine, spacing)
            status = "resampled"
    except (OSError, ValueError) as exc:   # unreadable or unusable: scored like a missing file
        return gt, np.zeros_like(gt), spacing, affine, "failed", f"{pred_path}: {exc}"
    values = np.unique(vol.array)
    if values.size > 2 or not np.isin(values, (0.0, 1.0)).all():
        status = "non_binary"
    pred = (vol.array == 1).astype(np.uint8)   # official: label value 1 only
    return gt, pred, spacing, affine, status, None


def score_case(case, pred_path, hd_units: str, resample: bool) -> dict[str, Any]:
    gt, pred, spacing, _, status, error = load_pair(case, pred_path, resample)
    return {"prediction": status, "error": error, **case_metrics(pred, gt, spacing, hd_units=hd_units)}


def table_record(row: dict[str, Any], threshold: float) -> dict[str, Any]:
    """Row for group tables and plots: infinite distances left out of means."""
    out = dict(row)
    for k in ("hd95", "hd95_mm", "assd_mm", "volume_diff_rel"):
        if not math.isfinite(out[k]):
            out[k] = None
    out["dice_ok"] = float(row["dice"] >= threshold)
    return out


def score_segmentation(args: EvalOptions, cases, pred_dir: Path, out: Path, shown: list[str], echo=print) -> int:
    """Task 1 over ``cases``; returns the exit code (1 when a case failed or none was usable)."""
    seg_dir = pred_dir / "pred_segmentations"
    if not seg_dir.is_dir():
        raise UserError(f"{pred_dir}: no pred_segmentations/ folder")
    files = prediction_files(seg_dir)
    scored = [c for c in cases if c.mask_path is not None]
    no_mask = [c.patient_id for c in cases if c.mask_path is None]
    missing = [c.patient_id for c in scored if c.patient_id.lower() not in files]
    unused = sorted(set(files) - {c.patient_id.lower() for c in cases})

    def work(case):
        try:
            return score_case(case, files.get(case.patient_id.lower()), args.hd_units, args.resample_pred)
        except (OSError, ValueError) as exc:  # an unreadable expert mask: this case cannot be scored
            return exc

    rows, failed, unscorable = [], {}, {}
    with ThreadPoolExecutor(max(1, args.workers)) as pool, \
            tqdm(total=len(scored), desc="evaluate", unit="case", disable=args.quiet) as bar:
        for case, res in zip(scored, pool.map(work, scored)):
            bar.update(1)
            if isinstance(res, Exception):
                unscorable[case.patient_id] = str(res)
                continue
            error = res.pop("error")
            if error:
                failed[case.patient_id] = error
            rows.append({**case_info(case), **res})
    if missing:
        warn(f"{len(missing)} case(s) without a prediction, counted as empty masks: {missing}")
    if failed:
        warn(f"{len(failed)} unusable prediction(s), counted as failed cases (Dice 0, NormHD 1): "
             + "; ".join(failed.values()))
    non_binary = [r["patient_id"] for r in rows if r["prediction"] == "non_binary"]
    if non_binary:
        warn(f"{len(non_binary)} prediction(s) hold values other than 0 and 1; scored as the official scorer "
             f"does (label 1 = tumour, anything else background): {non_binary[:10]}")
    for pid, msg in unscorable.items():
        log.error("%s: not scored: %s", pid, msg)
    if no_mask:
        warn(f"{len(no_mask)} case(s) without an expert mask, not scored: {no_mask}")

    summary: dict[str, Any] = {"task": "seg", "official": None}
    recs = [table_record(r, args.threshold) for r in rows]
    metrics = ["dice", "norm_hd", "hd95", "hd95_mm", "assd_mm", "volume_diff_ml", "dice_ok"]
    if rows:
        dice, nhd = [r["dice"] for r in rows], [r["norm_hd"] for r in rows]
        groups = {v: [r[f"group_{v}"] for r in rows] for v in fair.FAIRNESS_VARIABLES + ("subtype",)}
        official = fair.segmentation_scores(dice, nhd, {v: groups[v] for v in fair.FAIRNESS_VARIABLES})
        summary["official"] = {**official, "n_cases": len(rows),
                               "is_official": args.hd_units == "voxel"}
        summary["non_official"] = {
            "demographic_parity": fair.segmentation_parity(dice, groups, args.threshold),
            "dice_threshold": args.threshold,
            **{f"mean_finite_{m}": _finite_mean([r[m] for r in rows])
               for m in ("hd95", "hd95_mm", "assd_mm")},
            "mean_volume_diff_ml": float(np.mean([r["volume_diff_ml"] for r in rows]))}
        overall = [{"group": "all", "count": len(rows),
                    **{m: _finite_mean([x[m] for x in recs]) for m in metrics}}]
        summary["overall"] = overall[0]
        summary["per_center"] = fair.group_table(recs, "center", metrics)
        summary["per_subgroup"] = {v: fair.group_table(recs, f"group_{v}", metrics) for v in shown}
        echo(format_seg(summary, overall, shown, args))
    summary.update(_settings(args, pred_dir, cases), definitions=SEG_DEFINITIONS,
                   missing_predictions=missing, failed=failed, non_binary_predictions=non_binary,
                   unscorable=unscorable, no_expert_mask=no_mask, unused_predictions=unused)
    if rows and not args.no_plots:
        summary["plots"] = seg_plots(recs, scored, files, out / "plots", shown, args.resample_pred)
    thumbs = case_thumbnails(recs, scored, files, out / "plots" / "cases", args) if args.html and rows else {}
    write_outputs(out, rows, ["patient_id", "center", *CLINICAL_COLUMNS,
                              *(f"group_{v}" for v in fair.FAIRNESS_VARIABLES + ("subtype",)),
                              "prediction", *SEG_COLUMNS], summary, echo)
    if args.html:
        from engine.html_report import write_report
        echo(f"wrote {write_report(out, jsonable(summary), rows, 'seg', thumbs)}")
    usable = [r for r in rows if r["prediction"] not in ("missing", "failed")]
    if not usable:
        log.error("%s: no usable prediction for any of the %d case(s) to score", seg_dir, len(scored))
    return 1 if failed or unscorable or not usable else 0


def _finite_mean(values) -> float:
    v = np.array([x for x in values if x is not None], float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def seg_plots(recs, cases, files, folder: Path, shown, resample: bool) -> list[str]:
    names = {"dice": "Dice", "norm_hd": "NormHD"}
    made = [plots.metric_distributions(recs, "center", ["dice", "norm_hd"], folder / "dist_center.png",
                                       "Dice and NormHD per center", names)]
    for v in (v for v in shown if any(r[f"group_{v}"] is not None for r in recs)):
        made.append(plots.metric_distributions(recs, f"group_{v}", ["dice", "norm_hd"],
                                               folder / f"dist_{v}.png", f"Dice and NormHD by {v}", names))
    by_id = {c.patient_id: c for c in cases}
    order = sorted(recs, key=lambda r: (r["dice"], r["patient_id"]))
    picks = {"worst": order[0], "median": order[(len(order) - 1) // 2], "best": order[-1]}
    for label, r in picks.items():
        case = by_id[r["patient_id"]]
        drawn = _overlay(case, files, resample, folder / f"overlay_{label}.png",
                         f"{label}: {case.patient_id}  Dice {r['dice']:.3f}")
        if drawn is not None:
            made.append(drawn)
    return [str(p) for p in made]


def _overlay(case, files, resample: bool, path: Path, title: str) -> Path | None:
    """The case's reference phase with the expert and predicted contours; None (with a warning)
    when it cannot be drawn."""
    try:
        gt, pred, spacing, affine, _, _ = load_pair(case, files.get(case.patient_id.lower()), resample)
        img = io.load_nifti(case.phase_path(mamamia.reference_phase(case)))
        arr = img.array if io.same_grid(img.affine, img.shape, affine, gt.shape) else \
            io.resample_to_grid(img.array, img.affine, affine, gt.shape, order=1)
        return plots.overlay(arr, gt, pred, spacing, path, title)
    except (OSError, ValueError) as exc:
        warn(f"overlay of {case.patient_id} not drawn: {exc}")
        return None


def case_thumbnails(recs, cases, files, folder: Path, args) -> dict[str, Path]:
    """Small overlays of the worst ``args.max_thumbnails`` cases (by Dice) for report.html."""
    by_id = {c.patient_id: c for c in cases}
    out = {}
    for r in sorted(recs, key=lambda r: (r["dice"], r["patient_id"]))[:args.max_thumbnails]:
        case = by_id[r["patient_id"]]
        drawn = _overlay(case, files, args.resample_pred, folder / f"{io.safe_name(case.patient_id)}.png",
                         f"{case.patient_id}  Dice {r['dice']:.3f}")
        if drawn is not None:
            out[case.patient_id] = drawn
    return out


# ----------------------------------------------------------------------------- pCR

def read_pcr_predictions(path: Path) -> dict[str, tuple[int, float]]:
    """``predictions.csv`` -> {patient id in lower case: (pcr 0/1, score in [0, 1])} (ids are
    matched case-insensitively); errors name the line."""
    if not path.is_file():
        raise UserError(f"{path}: predictions.csv not found (infer.py --pcr writes it)")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        lacking = [c for c in ("patient_id", "pcr", "score") if c not in cols]
        if lacking:
            raise UserError(f"{path}: missing column(s) {lacking}; found {reader.fieldnames}")
        out = {}
        for line, row in enumerate(reader, start=2):
            pid = (row[cols["patient_id"]] or "").strip().lower()
            try:
                pcr, score = float(row[cols["pcr"]]), float(row[cols["score"]])
            except (TypeError, ValueError):
                raise UserError(f"{path}:{line}: pcr/score must be numbers, got "
                                 f"{row[cols['pcr']]!r}, {row[cols['score']]!r}") from None
            if pcr not in (0, 1) or not 0 <= score <= 1:
                raise UserError(f"{path}:{line}: need pcr 0/1 and score in [0, 1], got {pcr}, {score}")
            if pid in out:
                raise UserError(f"{path}:{line}: patient {pid} listed twice")
            out[pid] = (int(pcr), score)
    return out


def score_pcr(args: EvalOptions, cases, pred_dir: Path, out: Path, shown: list[str], echo=print) -> int:
    """Task 2 over ``cases``; returns the exit code."""
    preds = read_pcr_predictions(pred_dir / "predictions.csv")
    ids = {c.patient_id.lower() for c in cases}
    missing = [c.patient_id for c in cases if c.patient_id.lower() not in preds]
    no_truth = [c.patient_id for c in cases if c.clinical.pcr is None]
    if missing:
        warn(f"{len(missing)} case(s) missing from predictions.csv, counted as pcr 0 score 0: {missing}")
    if no_truth:
        warn(f"{len(no_truth)} case(s) without pCR truth, counted as 0 (official rule): {no_truth}")
    if not cases:
        raise UserError("no case to score in this split")
    rows = []
    for c in cases:
        pcr, score = preds.get(c.patient_id.lower(), (0, 0.0))
        rows.append({**case_info(c), "pcr_true": c.clinical.pcr, "pcr_true_used": c.clinical.pcr or 0,
                     "pcr_pred": pcr, "score": score,
                     "prediction": "ok" if c.patient_id.lower() in preds else "missing"})
    t, p, s = ([r[k] for r in rows] for k in ("pcr_true_used", "pcr_pred", "score"))
    groups = {v: [r[f"group_{v}"] for r in rows] for v in fair.FAIRNESS_VARIABLES}
    scores = fair.pcr_scores(t, p, groups, score=s)
    cal = fair.calibration(t, s)
    dp = {v: fair.demographic_parity(np.array(p) == 1, [r[f"group_{v}"] for r in rows])
          for v in shown}
    summary: dict[str, Any] = {
        "task": "pcr",
        "official": {k: scores[k] for k in ("balanced_accuracy", "eod_per_variable", "tpr_per_group",
                                            "fpr_per_group", "disparity", "fairness", "ranking")}
        | {"n_cases": len(rows)},
        "non_official": {"auc": scores["auc"], "ece": cal["ece"], "calibration": cal,
                         "demographic_parity": {**scores["parity_per_variable"], **dp}},
        "per_center": pcr_group_rows(rows, "center"),
        "per_subgroup": {v: pcr_group_rows(rows, f"group_{v}") for v in shown},
        **_settings(args, pred_dir, cases), "definitions": PCR_DEFINITIONS,
        "missing_predictions": missing, "missing_truth_counted_as_0": no_truth,
        "unused_predictions": sorted(set(preds) - ids)}
    echo(format_pcr(summary, rows, shown))
    if not args.no_plots:
        folder = out / "plots"
        made = [plots.reliability_plot(cal, folder / "reliability.png")]
        tables = {v: t for v, t in summary["per_subgroup"].items() if t}
        if tables:
            made.append(plots.group_bars(tables, "balanced_accuracy", folder / "ba_subgroups.png",
                                         reference=scores["balanced_accuracy"]))
        if math.isfinite(scores["auc"]):
            made.append(plots.roc_plot(t, s, folder / "roc.png", auc=scores["auc"]))
        summary["plots"] = [str(x) for x in made]
    write_outputs(out, rows, ["patient_id", "center", *CLINICAL_COLUMNS,
                              *(f"group_{v}" for v in fair.FAIRNESS_VARIABLES + ("subtype",)),
                              "prediction", "pcr_true", "pcr_true_used", "pcr_pred", "score"], summary, echo)
    if args.html:
        from engine.html_report import write_report
        echo(f"wrote {write_report(out, jsonable(summary), rows, 'pcr')}")
    return 0


# ----------------------------------------------------------------------------- output

def _settings(args, pred_dir: Path, cases) -> dict[str, Any]:
    manifest = pred_dir / "predictions_manifest.json"
    errors: Any = {}
    if manifest.is_file():
        try:
            errors = json.loads(manifest.read_text()).get("errors", {})
        except (json.JSONDecodeError, AttributeError) as exc:
            warn(f"{manifest}: unreadable ({exc}); inference errors not reported")
    return {"inference_errors": errors, "settings": {"pred": str(pred_dir), "data": str(args.data), "split": args.split,
                         "subgroups": args.subgroups, "hd_units": args.hd_units,
                         "threshold": args.threshold, "resample_pred": args.resample_pred,
                         "cases_in_split": len(cases)}}


