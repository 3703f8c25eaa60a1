"""Training the pCR model: radiomics + kinetic features -> feature selection -> SNN, per fold.

Training cases (train split, ``centers``) with a known pCR and a mask: the expert one, or with
``masks="predicted"`` the files in ``pred``/pred_segmentations (default: the most recent
``predictions/*`` folder). Features are cached (``engine.runs.cache_root(root, "radiomics")``).
Folds are the segmentation folds (``kfold_splits`` over the training cases with expert masks).
Per fold the feature pipeline is fitted once and the SNN and the logistic-regression and
random-forest baselines are trained on its output. The run folder receives ``pcr_model.pt`` (the
SNN fold ensemble with temperature and threshold), ``report.json`` (cross-fitted metrics of
every model, the phantom oracle, selected features), ``oof_predictions.csv`` and ``splits.json``.
"""
from __future__ import annotations

import csv
import io as _io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.folds import kfold_splits
from engine.runs import RunDir, cache_root, dataset_root, predictions_root
from engine.flags import N_FOLDS, SPLIT_SEED, parse_folds

log = logging.getLogger(__name__)


@dataclass
class PCRRequest:
    data: str | None = None
    centers: str | None = None
    masks: str = "expert"              # expert | predicted
    pred: str | None = None            # with masks="predicted": folder holding pred_segmentations/
    clinical: bool = False
    fold: str | None = None            # default: all
    seed: int = 0
    run: str | None = None
    runs_dir: str | None = None
    cache_dir: str | None = None
    workers: int = 2
    split: str = "train"               # train (the test split stays unseen) | all
    phantom_cases: int = 40            # without data: the cached phantom of this many cases ...
    phantom_seed: int = 0              # ... drawn with this seed
    # the feature pipeline (core.pcr.PipelineConfig); seed B: features="post", n_select=40
    features: str = "all"
    corr_threshold: float = 0.9
    n_select: int | None = None        # None: up to 40, one per rows_per_feature training rows
    selector: str = "ridge"
    model: str = "snn"                 # the deployed classifier: snn | lr | rf


MODELS = {"snn": "snn", "lr": "logreg", "rf": "rf", "stack": "stack"}   # --model -> classifier name in reports


def pipeline_config(req: PCRRequest):
    """The feature pipeline's settings from the request; UserError naming the flag when invalid."""
    from core import pcr
    if req.model not in MODELS:
        raise UserError(f"--model {req.model!r}: choose from {sorted(MODELS)}")
    if req.model == "stack" and not req.clinical:
        raise UserError("--model stack combines the image SNN with a clinical model: add --clinical")
    if req.split not in ("train", "all"):
        raise UserError(f"--split {req.split!r}: expected train or all")
    if req.n_select is not None and req.n_select < 1:
        raise UserError(f"--n-select {req.n_select}: must be >= 1")
    if req.features not in pcr.FEATURE_SETS:
        raise UserError(f"--features {req.features!r}: choose from {list(pcr.FEATURE_SETS)}")
    if req.selector not in pcr.SELECTORS:
        raise UserError(f"--selector {req.selector!r}: choose from {sorted(pcr.SELECTORS)}")
    if not 0 < req.corr_threshold <= 1:
        raise UserError(f"--corr-threshold {req.corr_threshold}: must lie in (0, 1]")
    return pcr.PipelineConfig(seed=req.seed, features=req.features, corr_threshold=req.corr_threshold,
                              n_select=req.n_select if req.n_select is not None else 40,
                              row_cap=req.n_select is None, selector=req.selector)


def describe(cfg, req: PCRRequest) -> str:
    """One line with the pipeline's settings, as train.py prints them."""
    count = (f"{cfg.n_select} features (--n-select)" if not cfg.row_cap else
             f"up to {cfg.n_select} features, at most one per {cfg.rows_per_feature:g} training rows")
    return (f"pCR pipeline: --features {cfg.features}, --corr-threshold {cfg.corr_threshold:g}, {count}, "
            f"--selector {cfg.selector}, --model {req.model}, clinical inputs {'on' if req.clinical else 'off'}, "
            f"{req.masks} masks")


PREDICT_TRAIN = ("predict them first, e.g. python infer.py --ensemble --data {root} --split train --output {out} "
                 "(or pass --pred DIR, a folder holding them)")


def latest_predictions(root) -> Path:
    found = sorted(predictions_root().glob("*/pred_segmentations"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError("--masks predicted needs predicted masks of the training cases and none were found under "
                        f"{predictions_root()}: " + PREDICT_TRAIN.format(root=root, out="predictions/train"))
    return found[-1].parent


def check_predicted(cases, masks: dict, pred: Path, root) -> None:
    """One-line UserError when predicted masks of labelled training cases are missing."""
    missing = [c.patient_id for c in cases if c.clinical.pcr is not None and c.patient_id not in masks]
    if missing:
        n = sum(c.clinical.pcr is not None for c in cases)
        raise UserError(f"--masks predicted: {pred} has no predicted mask for {len(missing)} of the {n} labelled "
                        f"training case(s) (e.g. {', '.join(missing[:3])}); "
                        + PREDICT_TRAIN.format(root=root, out=pred))


def train_pcr(req: PCRRequest, progress: bool = True, echo=print) -> dict:
    """Fit, cross-validate and save the pCR model; returns the report (also written as JSON)."""
    from core import pcr
    from core.pcr_stack import StackedClassifier
    from data import io as dio
    from data import mamamia, radiomics
    from nets.pcr_file import save_pcr_model
    from nets.snn import SNNClassifier

    if req.masks not in ("expert", "predicted"):
        raise UserError(f"--masks {req.masks!r}: expected expert or predicted")
    pcfg = pipeline_config(req)
    echo(describe(pcfg, req))
    folds = parse_folds(req.fold or "all")
    t0 = time.time()
    if req.data and (req.phantom_cases, req.phantom_seed) != (40, 0):
        raise UserError("--phantom-cases/--phantom-seed choose a phantom dataset: leave out --data")
    if req.phantom_cases < 10:
        raise UserError(f"--phantom-cases {req.phantom_cases}: must be >= 10")
    root = dataset_root(req.data, req.phantom_cases, req.phantom_seed)
    name = req.run or ("pcr" + ("_clinical" if req.clinical else "") + ("_predicted" if req.masks == "predicted" else ""))
    run = RunDir.named(name, req.runs_dir)
    cases = mamamia.load_dataset(root)
    has_split = any(c.split for c in cases)
    cases = mamamia.select(cases, centers=mamamia.parse_list(req.centers),
                           split="train" if has_split and req.split == "train" else None)
    if req.masks == "expert":
        masks = {c.patient_id: c.mask_path for c in cases if c.mask_path is not None}
    else:
        pred = Path(req.pred) if req.pred else latest_predictions(root)
        try:
            masks = radiomics.predicted_masks(cases, pred)
        except FileNotFoundError as exc:
            raise UserError(f"--masks predicted: {exc}; " + PREDICT_TRAIN.format(root=root, out=pred)) from None
        check_predicted(cases, masks, pred, root)
        echo(f"predicted masks from {pred}: {len(masks)} of {len(cases)} training case(s)")
    used = [c for c in cases if c.patient_id in masks and c.clinical.pcr is not None]
    y = np.array([int(c.clinical.pcr) for c in used], int)
    if len(used) < 10 or y.min(initial=1) == y.max(initial=0):
        raise UserError(f"{root}: {len(used)} training case(s) with a mask and a known pCR "
                        f"({int(y.sum())} positive); need at least 10 and both outcomes")
    echo(f"pCR: {len(used)} case(s), {int(y.sum())} pCR, {len(cases) - len(used)} without mask or pCR skipped")

    # the segmentation folds: the same call over the same ids as segmentation training
    fold_ids = sorted({c.patient_id for c in cases if c.mask_path is not None} | {c.patient_id for c in used})
    splits = kfold_splits(fold_ids, n_splits=N_FOLDS, seed=SPLIT_SEED)
    fold_of = np.array([next(k for k, s in enumerate(splits) if c.patient_id in s["val"]) for c in used])

    cache_csv = cache_root(root, "radiomics", override=req.cache_dir) / "features.csv"
    rcfg = radiomics.RadiomicsConfig()
    table = radiomics.extract_features(used, masks, req.masks, rcfg, cache=cache_csv,
                                       workers=req.workers, progress=progress)
    if not table.valid.all():
        bad = {i: n for i, n, v in zip(table.ids, table.notes, table.valid) if not v}
        echo(f"{len(bad)} case(s) without usable mask features (imputed): {bad}")
    all_records = [radiomics.clinical_record(c) for c in used]
    records = all_records if req.clinical else None
    snn_params = SNNClassifier().get_params()
    classifiers = {"snn": lambda s: SNNClassifier(**{**snn_params, "seed": s}), **pcr.BASELINES}
    if req.model == "stack":   # the image SNN and a clinical logistic regression, stacked (core.pcr_stack)
        classifiers["stack"] = lambda s: StackedClassifier(
            image_factory=lambda t: SNNClassifier(**{**snn_params, "seed": t}), seed=s)
    t_fit = time.time()

    def fold_done(f):
        if progress:
            echo(f"fold {f}: fitted ({time.time() - t_fit:.0f} s)")

    cv = pcr.cross_validate(table.values, y, table.names, fold_of, folds, classifiers, pcfg, records,
                            ids=table.ids, on_fold=fold_done)
    metrics = {k: pcr.evaluate(cv.oof[k], y, fold_of, folds, shift=cv.shift, seed=req.seed) for k in classifiers}
    validated = np.isin(fold_of, list(folds))
    rule = pcr.rule_metrics([r for r, v in zip(all_records, validated) if v], y[validated], seed=req.seed)

    oracle = None
    latents = root / "phantom_latents.csv"
    if latents.exists():
        with open(latents, newline="") as fh:
            p_true = {r["patient_id"]: float(r["p_pcr"]) for r in csv.DictReader(fh)}
        if all(i in p_true for i in table.ids):
            oracle = pcr.oracle([p_true[i] for i in table.ids], y, fold_of, folds)

    deployed = MODELS[req.model]
    dep = metrics[deployed]
    model = pcr.PCRModel(feature_names=table.names, folds=cv.models, classifier=deployed,
                         temperature=dep["temperature"], threshold=dep["threshold"], clinical=req.clinical,
                         settings={"radiomics": rcfg.to_dict(), "masks": req.masks, "pipeline": pcfg.to_dict()},
                         calibration=pcr.CalibrationMap.from_dict(dep["calibration"]))
    config = {"data": str(root), "centers": req.centers, "masks": req.masks, "clinical": req.clinical,
              "split": req.split, "model": req.model,
              "folds": list(folds), "seed": req.seed, "pipeline": pcfg.to_dict(),
              "snn": {k: list(v) if isinstance(v, tuple) else v for k, v in snn_params.items() if k != "seed"},
              "radiomics": rcfg.to_dict()}
    run.path.mkdir(parents=True, exist_ok=True)
    save_pcr_model(run.pcr_model_path, model, config)
    report = {"config": config, "cases": len(used), "positives": int(y.sum()), "metrics": metrics,
              "rule": rule, "oracle": oracle, "deployed": deployed, "seconds": round(time.time() - t0, 1),
              "features": {"extracted": len(table.names),
                           "per_fold": {str(m.fold): m.pipeline.state() for m in cv.models}}}
    dio.atomic_write_text(run.report_path, json.dumps(report, indent=1))
    dio.atomic_write_text(run.splits_path, json.dumps(splits, indent=1))
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["patient_id", "fold", "pcr", "prior_logit"] + [f"logit_{k}" for k in classifiers])
    for i, pid in enumerate(table.ids):
        w.writerow([pid, int(fold_of[i]), int(y[i]), repr(float(cv.shift[i]))]
                   + [repr(float(cv.oof[k][i])) for k in classifiers])
    dio.atomic_write_text(run.oof_path, buf.getvalue())
    report["run"] = str(run.path)
    return report


def _ci(m, key="ba_ci") -> str:
    lo, hi = m.get(key, (float("nan"), float("nan")))
    return f"[{lo:+.2f}, {hi:+.2f}]" if key == "ece_delta_ci" else f"[{lo:.2f}, {hi:.2f}]"


def format_report(report: dict) -> str:
    """The cross-validated table ``train.py --task pcr`` prints: every model and reference with
    balanced accuracy and AUC (bootstrap 95 % intervals over patients), ECE of the classifier's
    own probabilities (raw), after the prior correction (before) and after the calibration map
    chosen by inner cross-validation (after, cross-fitted), with the bootstrap interval of the
    paired difference after - before (ECE is biased upward in resamples, so intervals of ECE
    itself sit above the point estimate; the difference is what calibration is judged by);
    * marks the deployed model."""
    folds, n = report["config"]["folds"], report["cases"]
    lines = [f"\n{'model':8s} {'BA':>6s} {'95% CI':>13s} {'AUC':>6s} {'95% CI':>13s}  {'ECE raw':>7s} "
             f"{'before':>6s} {'after':>6s} {'change 95% CI':>15s}  calibration"
             f"   (cross-validated, {len(folds)} fold(s), {n} cases)"]
    for k, m in report["metrics"].items():
        mark = "*" if k == report.get("deployed") else " "
        lines.append(f"{k + mark:8s} {m['balanced_accuracy']:6.3f} {_ci(m):>13s} {m['auc']:6.3f} "
                     f"{_ci(m, 'auc_ci'):>13s}  {m['ece_raw']:7.3f} {m['ece_before']:6.3f} {m['ece_after']:6.3f} "
                     f"{_ci(m, 'ece_delta_ci'):>15s}  {m['calibration']['kind']}")
    rule = report.get("rule")
    if rule is not None:
        lines.append(f"{'rule':8s} {rule['balanced_accuracy']:6.3f} {_ci(rule):>13s} {'':6s} {'':13s}  "
                     f"HR- or HER2+ => pCR (decided for {rule['coverage']:.0%} of the cases)")
    oracle = report.get("oracle")
    if oracle is not None:
        lines.append(f"{'oracle':8s} {oracle['balanced_accuracy']:6.3f} {_ci(oracle):>13s} {oracle['auc']:6.3f} "
                     f"{_ci(oracle, 'auc_ci'):>13s}  generator's p_pcr (expected BA "
                     f"{oracle['expected_balanced_accuracy']:.3f})")
    if len(folds) < N_FOLDS:
        lines.append(f"note: {len(folds)} fold(s) trained; --fold all gives the full cross-validation")
    lines.append(f"pCR model -> {report['run']} ({report['seconds']:.0f} s)")
    return "\n".join(lines)
