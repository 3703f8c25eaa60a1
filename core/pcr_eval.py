"""Cross-fitted metrics of pCR models and of the references they are compared with: the
clinical receptor rule and the phantom oracle, each with bootstrap 95 % intervals.

Cross-fitting (:func:`evaluate`): fold f's out-of-fold log-odds are calibrated by the map chosen
and fitted on the other folds' out-of-fold log-odds only (:func:`core.calibration.choose_calibration`,
inner cross-validation over those folds), and thresholded at the balanced-accuracy optimum of
those other folds. So no label calibrates its own prediction, and "ECE after" is a held-out
figure. Intervals are percentile bootstraps over patients (Efron & Tibshirani 1993) of the
fixed out-of-fold predictions: they show the sampling uncertainty of the evaluation set, not
the variation from refitting. ECE is biased upward in small samples (and in resamples with
repeated rows), so its percentile interval can lie above the point estimate; the interval of
the paired difference after - before (``ece_delta_ci``) is the one calibration is judged by.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.calibration import CALIBRATIONS, choose_calibration, choose_threshold, fit_temperature, nll, sigmoid
from core.fairness import balanced_accuracy, calibration, roc_auc
from core.stats import bootstrap_statistic as bootstrap_ci

N_BOOT = 1000


def label_metrics(y, pred, score=None, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Balanced accuracy of 0/1 ``pred`` (and AUC of ``score`` when given) with bootstrap 95 %
    intervals: ``balanced_accuracy``, ``ba_ci``, ``auc``, ``auc_ci``."""
    y, pred = np.asarray(y).astype(int), np.asarray(pred).astype(int)
    out = {"balanced_accuracy": balanced_accuracy(y, pred),
           "ba_ci": bootstrap_ci(lambda i: balanced_accuracy(y[i], pred[i]), y.size, y, n_boot, seed)}
    if score is not None:
        s = np.asarray(score, np.float64)
        out["auc"] = roc_auc(y, s)
        out["auc_ci"] = bootstrap_ci(lambda i: roc_auc(y[i], s[i]), y.size, y, n_boot, seed)
    return out


def evaluate(logits, y, fold_of, folds: Sequence[int], n_bins: int = 10, shift=None,
             calibrations: Sequence[str] = CALIBRATIONS, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Cross-fitted metrics of out-of-fold prior-corrected ``logits`` (module docstring);
    ``shift``: the prior correction of each row (:attr:`core.pcr.CrossValidation.shift`), 0 if None.

    Returns balanced accuracy (cross-fitted threshold) and AUC with intervals; the balanced
    accuracy of the classifier's own decision (uncorrected probability >= 0.5); ECE of the
    classifier's own probabilities (``ece_raw``), of the prior-corrected ones (``ece_before``:
    what calibration starts from) and after the cross-fitted calibration map (``ece_after``),
    with intervals and the interval of the paired difference after - before (``ece_delta_ci``);
    the maps chosen per held-out fold (``calibration_per_fold``); and what a deployed model uses,
    fitted on all rows: ``calibration`` (the map as a dict), ``threshold`` and the pooled
    ``temperature``. With a single fold the fold calibrates itself (``cross_fitted`` False).
    """
    lg, y, fold_of = np.asarray(logits, np.float64), np.asarray(y).astype(int), np.asarray(fold_of)
    sh = np.zeros_like(lg) if shift is None else np.asarray(shift, np.float64)
    rows = np.isin(fold_of, list(folds)) & np.isfinite(lg)
    lg, y, fo, sh = lg[rows], y[rows], fold_of[rows], sh[rows]
    cross = len(set(fo.tolist())) > 1
    p_cal, pred, chosen = np.zeros_like(lg), np.zeros(lg.size, int), {}
    for f in sorted(set(fo.tolist())):
        here = fo == f
        other = ~here if cross else here
        cmap, _ = choose_calibration(lg[other], y[other], fo[other] if cross else None, calibrations, seed=seed)
        chosen[int(f)] = cmap.kind
        thr = choose_threshold(cmap(lg[other]), y[other])
        p_cal[here] = cmap(lg[here])
        pred[here] = (p_cal[here] >= thr).astype(int)
    deployed, report = choose_calibration(lg, y, fo if cross else None, calibrations, seed=seed)
    p_raw, p_before = sigmoid(lg - sh), sigmoid(lg)
    ece = lambda p, i=slice(None): calibration(y[i], p[i], n_bins)["ece"]  # noqa: E731
    out = {"n": int(lg.size), "positives": int(y.sum()), "cross_fitted": cross,
           **label_metrics(y, pred, lg, n_boot, seed),
           "balanced_accuracy_at_0.5": balanced_accuracy(y, (p_raw >= 0.5).astype(int)),
           "ece_raw": ece(p_raw), "ece_before": ece(p_before), "ece_after": ece(p_cal),
           "ece_before_ci": bootstrap_ci(lambda i: ece(p_before, i), y.size, None, n_boot, seed),
           "ece_after_ci": bootstrap_ci(lambda i: ece(p_cal, i), y.size, None, n_boot, seed),
           "ece_delta_ci": bootstrap_ci(lambda i: ece(p_cal, i) - ece(p_before, i), y.size, None, n_boot, seed),
           "nll_before": nll(lg, y), "nll_after": float(np.mean(
               -(y * np.log(np.clip(p_cal, 1e-12, 1)) + (1 - y) * np.log(np.clip(1 - p_cal, 1e-12, 1))))),
           "calibration_per_fold": chosen, "calibration": deployed.to_dict(), "calibration_inner": report,
           "temperature": fit_temperature(lg, y), "threshold": choose_threshold(deployed(lg), y)}
    return out


def oracle(p_true, y, fold_of, folds: Sequence[int], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Balanced accuracy of the Bayes rule on the generator's own pCR probability ``p_true``.

    For balanced accuracy the Bayes-optimal rule predicts pCR when p > prevalence; the prevalence
    is taken from each fold's training rows. Also returns the expected balanced accuracy over
    label draws (labels ~ Bernoulli(p_true)), which does not depend on the realised labels, and
    the AUC of ``p_true``, with bootstrap intervals."""
    p, y, fold_of = np.asarray(p_true, np.float64), np.asarray(y).astype(int), np.asarray(fold_of)
    rows = np.isin(fold_of, list(folds))
    pred = np.zeros(p.size, int)
    for f in folds:
        here = fold_of == f
        prior = y[fold_of != f].mean()
        pred[here] = (p[here] > prior).astype(int)
    pr, yr, pp = pred[rows], y[rows], p[rows]
    expected = 0.5 * ((pp * pr).sum() / pp.sum() + ((1 - pp) * (1 - pr)).sum() / (1 - pp).sum())
    return {**label_metrics(yr, pr, pp, n_boot, seed), "expected_balanced_accuracy": float(expected),
            "n": int(rows.sum())}


# ----------------------------------------------------------------------------- receptor rule

# HR / HER2 implied by the MAMA-MIA tumour subtype where the table gives no receptor status:
# luminal (A) = HR+/HER2-, triple negative = HR-/HER2-, HER2-enriched / HER2-pure = HER2+
# (HR left unknown: the rule needs only HER2+ there); luminal B may be HER2+ or - (HR+ only).
SUBTYPE_RECEPTORS = {"luminal": (1, 0), "luminal_a": (1, 0), "luminal_b": (1, None),
                     "triple_negative": (0, 0), "her2_enriched": (None, 1), "her2_pure": (None, 1)}


def receptor_status(record) -> tuple[int | None, int | None]:
    """``(hr, her2)`` of a clinical record (mapping with ``hr``, ``her2``, ``subtype``): the
    recorded status, else what the subtype implies (:data:`SUBTYPE_RECEPTORS`), else None."""
    hr, her2 = record.get("hr"), record.get("her2")
    sub = SUBTYPE_RECEPTORS.get(str(record.get("subtype") or "").strip().lower().replace(" ", "_"), (None, None))
    return (hr if hr is not None else sub[0]), (her2 if her2 is not None else sub[1])


def receptor_rule(records) -> tuple[np.ndarray, np.ndarray]:
    """The clinical-only rule "HR- or HER2+ => pCR": ``(pred, known)`` per record; ``known`` is
    False where neither finding is available (predicted 0: the rule needs a positive finding).
    In MAMA-MIA the pCR rate is ~0.57 for HR- or HER2+ tumours and ~0.15 for HR+/HER2-
    (MAMA-MIA, Garrucho et al., Scientific Data 2025)."""
    pred, known = np.zeros(len(records), int), np.zeros(len(records), bool)
    for i, r in enumerate(records):
        hr, her2 = receptor_status(r)
        pred[i] = int(hr == 0 or her2 == 1)
        known[i] = pred[i] == 1 or (hr is not None and her2 is not None)
    return pred, known


def rule_metrics(records, y, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Balanced accuracy (with interval) of :func:`receptor_rule` on all rows, and its coverage
    (the fraction of rows where the rule could be decided)."""
    pred, known = receptor_rule(records)
    return {**label_metrics(y, pred, None, n_boot, seed), "coverage": float(known.mean()), "n": int(len(known))}
