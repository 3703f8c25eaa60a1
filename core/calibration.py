"""Calibration and cross-fitted evaluation of probabilistic classifiers: temperature scaling
(Guo et al. 2017), the balanced-accuracy threshold, the out-of-fold metrics of a pCR model and
the phantom oracle. Pure functions of arrays.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from core.fairness import balanced_accuracy, calibration, roc_auc


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def nll(logits, y, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / temperature)`` (numerically stable)."""
    z = np.asarray(logits, np.float64) / temperature
    y = np.asarray(y, np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits, y) -> float:
    """Temperature T > 0 minimising the NLL of ``sigmoid(logits / T)`` (Guo et al. 2017), searched
    over log T in [-4, 4]; 1 when the labels hold a single class (nothing to calibrate against)."""
    y = np.asarray(y, np.float64)
    if y.size == 0 or y.min() == y.max():
        return 1.0
    res = minimize_scalar(lambda lt: nll(logits, y, math.exp(lt)), bounds=(-4.0, 4.0), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


def choose_threshold(scores, y) -> float:
    """Threshold t maximising the balanced accuracy of ``score >= t`` on (scores, y).

    Candidates are midpoints between consecutive distinct scores plus one below and one above
    all scores; among equally good candidates the middle one is taken (the centre of the best
    plateau, least sensitive to a shift of the scores). 0.5 when y holds a single class."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(y).astype(int)
    if y.size == 0 or y.min() == y.max():
        return 0.5
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1e-6]])
    ba = np.array([balanced_accuracy(y, (s >= t).astype(int)) for t in cands])
    best = np.flatnonzero(ba >= ba.max() - 1e-12)
    return float(cands[best[len(best) // 2]])


def evaluate(logits, y, fold_of, folds: Sequence[int], n_bins: int = 10, shift=None) -> dict:
    """Cross-fitted metrics of out-of-fold (prior-corrected) ``logits`` (module docstring);
    ``shift``: the prior correction of each row (:attr:`CrossValidation.shift`), 0 if None.

    Returns balanced accuracy with the cross-fitted threshold (``balanced_accuracy``) and of the
    classifier's own decision, uncorrected probability >= 0.5 (``balanced_accuracy_at_0.5``);
    AUC; ECE and NLL of the classifier's own probabilities (``*_before``), after the prior
    correction (``ece_prior``) and after prior correction and cross-fitted temperature
    (``*_after``); the pooled ``temperature`` and ``threshold`` a deployed model uses. With a
    single fold nothing is left to cross-fit and the fold calibrates itself (``cross_fitted``).
    """
    lg, y, fold_of = np.asarray(logits, np.float64), np.asarray(y).astype(int), np.asarray(fold_of)
    sh = np.zeros_like(lg) if shift is None else np.asarray(shift, np.float64)
    rows = np.isin(fold_of, list(folds)) & np.isfinite(lg)
    lg, y, fo, sh = lg[rows], y[rows], fold_of[rows], sh[rows]
    cross = len(set(fo.tolist())) > 1
    p_cal, pred = np.zeros_like(lg), np.zeros(lg.size, int)
    for f in sorted(set(fo.tolist())):
        here = fo == f
        other = ~here if cross else here
        t = fit_temperature(lg[other], y[other])
        thr = choose_threshold(sigmoid(lg[other] / t), y[other])
        p_cal[here] = sigmoid(lg[here] / t)
        pred[here] = (p_cal[here] >= thr).astype(int)
    temp = fit_temperature(lg, y)
    p_raw = sigmoid(lg - sh)
    return {"n": int(lg.size), "positives": int(y.sum()), "cross_fitted": cross,
            "balanced_accuracy": balanced_accuracy(y, pred),
            "balanced_accuracy_at_0.5": balanced_accuracy(y, (p_raw >= 0.5).astype(int)),
            "auc": roc_auc(y, lg),
            "ece_before": calibration(y, p_raw, n_bins)["ece"],
            "ece_prior": calibration(y, sigmoid(lg), n_bins)["ece"],
            "ece_after": calibration(y, p_cal, n_bins)["ece"],
            "nll_before": nll(lg - sh, y), "nll_after": float(np.mean(
                -(y * np.log(np.clip(p_cal, 1e-12, 1)) + (1 - y) * np.log(np.clip(1 - p_cal, 1e-12, 1))))),
            "temperature": temp, "threshold": choose_threshold(sigmoid(lg / temp), y)}


def oracle(p_true, y, fold_of, folds: Sequence[int]) -> dict:
    """Balanced accuracy of the Bayes rule on the generator's own pCR probability ``p_true``.

    For balanced accuracy the Bayes-optimal rule predicts pCR when p > prevalence; the prevalence
    is taken from each fold's training rows. Also returns the expected balanced accuracy over
    label draws (labels ~ Bernoulli(p_true)), which does not depend on the realised labels, and
    the AUC of ``p_true``."""
    p, y, fold_of = np.asarray(p_true, np.float64), np.asarray(y).astype(int), np.asarray(fold_of)
    rows = np.isin(fold_of, list(folds))
    pred = np.zeros(p.size, int)
    for f in folds:
        here = fold_of == f
        prior = y[fold_of != f].mean()
        pred[here] = (p[here] > prior).astype(int)
    pr, yr, pp = pred[rows], y[rows], p[rows]
    expected = 0.5 * ((pp * pr).sum() / pp.sum() + ((1 - pp) * (1 - pr)).sum() / (1 - pp).sum())
    return {"balanced_accuracy": balanced_accuracy(yr, pr), "expected_balanced_accuracy": float(expected),
            "auc": roc_auc(yr, pp), "n": int(rows.sum())}
