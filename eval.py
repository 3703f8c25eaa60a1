"""Score predictions with the official MAMA-MIA rules, per center and per subgroup.

    python eval.py --subgroups age,density                   # latest predictions/<run>, test split
    python eval.py --pred predictions/run1 --data /data/MAMA-MIA --split all --out results/
    python eval.py --task pcr --pred predictions/run1        # reads <pred>/predictions.csv

Segmentation (``--task seg``, default): every case of the split with an expert mask is compared
with ``<pred>/pred_segmentations/<patient_id>.nii.gz`` (name matched case-insensitively). A missing
prediction counts as an empty mask (Dice 0, NormHD 1), as in the challenge, and is listed. A
prediction on another grid than the expert mask is an error naming the case (the other cases are
still scored; exit code 1) unless ``--resample-pred`` resamples it (nearest neighbour).

pCR (``--task pcr``): ``<pred>/predictions.csv`` (patient_id, pcr, score) against the ``pcr`` of
the clinical records; missing truth counts as 0 (official), a missing row as pcr 0, score 0.

Official scores (core/fairness.py): Performance, Fairness and Ranking (Task 1); balanced accuracy,
equalized-odds disparity and Ranking (Task 2). The official Fairness always uses the three
variables age, menopausal_status and breast_density; ``--subgroups`` only chooses which subgroup
tables and plots are shown (``subtype`` is available as a non-official extra). HD95 in mm, ASSD,
volumes, demographic parity, AUC and calibration are non-official extras, labelled as such.

Outputs in ``--out`` (default ``<pred>/evaluation`` or ``<pred>/evaluation_pcr``): per_case.csv,
summary.json and plots/*.png; the tables are printed.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    from core.fairness import SUBGROUP_NAMES
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("seg", "pcr"), default="seg")
    p.add_argument("--subgroups", default="age,menopause,density",
                   help=f"tables/plots to show, from {sorted(SUBGROUP_NAMES)} (the official "
                        "fairness score always uses age, menopause and density)")
    p.add_argument("--pred", help="prediction folder (default: the newest under ./predictions/)")
    p.add_argument("--cv", metavar="RUN", help="(re)build RUN's cross-validation summary: out-of-fold masks of "
                   "every fold, scored officially, per fold and overall (cv_summary.csv/json in the run)")
    p.add_argument("--runs-dir", help="with --cv: folder of runs (default ./runs or $MAMAMIA_RUNS)")
    p.add_argument("--device", help="with --cv: cpu or cuda (default: cuda when available)")
    p.add_argument("--data", help="MAMA-MIA root (default: the phantom dataset)")
    p.add_argument("--split", choices=("train", "test", "all"), default="test")
    p.add_argument("--centers", help="score only the cases of these centers, e.g. NACT (with --split all: "
                                     "a held-out center)")
    p.add_argument("--out", help="output folder (default <pred>/evaluation[_pcr])")
    p.add_argument("--hd-units", choices=("voxel", "mm"), default="voxel",
                   help="HD95/NormHD units (voxel = official; mm is a labelled deviation)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="Dice counted as a success for demographic parity (default 0.5)")
    p.add_argument("--resample-pred", action="store_true",
                   help="resample predictions on another grid onto the expert mask grid (nearest)")
    p.add_argument("--workers", type=int, default=1, help="cases scored in parallel (threads)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--html", action="store_true",
                   help="also write report.html: scores, tables, plots, per-case rows with overlay thumbnails")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)



def run(args) -> int:
    from core.errors import UserError
    from data import mamamia
    from engine import evaluation as ev
    from engine.runs import dataset_root, predictions_root

    if args.cv:
        from engine.crossval import cross_validation_summary, format_summary
        from engine.runs import RunDir
        summary = cross_validation_summary(RunDir.named(args.cv, args.runs_dir), args.device,
                                           progress=not args.quiet)
        print(format_summary(summary))
        print(f"wrote {Path(summary['run']) / 'cv_summary.json'} and cv_summary.csv")
        return 0
    shown = ev.parse_subgroups(args.subgroups)
    marker = "pred_segmentations" if args.task == "seg" else "predictions.csv"
    pred = Path(args.pred) if args.pred else ev.latest_prediction_dir(predictions_root(), marker)
    if not pred.is_dir():
        raise UserError(f"--pred {pred}: folder not found")
    data = dataset_root(args.data)
    out = Path(args.out) if args.out else pred / ("evaluation" if args.task == "seg" else "evaluation_pcr")
    for inp in (pred / "pred_segmentations", data):
        if out.resolve() == inp.resolve() or inp.resolve() in out.resolve().parents:
            raise UserError(f"--out {out} lies inside the input folder {inp}; choose another folder")
    try:
        centers = [c.strip() for c in (args.centers or "").split(",") if c.strip()] or None
        cases = mamamia.select(mamamia.load_dataset(data), split=args.split, centers=centers)
    except (OSError, ValueError) as exc:
        raise UserError(f"--data {data}: {exc}") from exc
    if not cases:
        raise UserError(f"--data {data}: no case in split {args.split!r}"
                        + (f" of center(s) {args.centers}" if args.centers else ""))
    opts = ev.EvalOptions(data=str(data), split=args.split, subgroups=args.subgroups, hd_units=args.hd_units,
                          threshold=args.threshold, resample_pred=args.resample_pred, workers=args.workers,
                          no_plots=args.no_plots, quiet=args.quiet, html=args.html)
    score = ev.score_segmentation if args.task == "seg" else ev.score_pcr
    return score(opts, cases, pred, out, shown)


def main(argv=None) -> int:
    args = parse_args(argv)
    from core.cli import run_entry_point
    return run_entry_point("eval.py", lambda: run(args), logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
