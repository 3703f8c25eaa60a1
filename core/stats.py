"""Confidence intervals over cases: the percentile bootstrap of a mean, and the paired bootstrap of
a mean difference between two methods scored on the same cases.

Percentile bootstrap (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13):
resample the n cases with replacement ``n_boot`` times, take the mean of each resample, and report
the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of those means (numpy's default linear
quantile). The paired version resamples the cases, not the two methods separately, so the
case-to-case variation that both methods share cancels: it is the bootstrap of the per-case
differences. :func:`bootstrap_statistic` is the same percentile interval for any statistic of
the resampled cases (balanced accuracy, AUC, ECE). Pure functions on arrays; the resampling comes
from an explicit seed.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

N_BOOT = 10000      # resamples: the quantiles' Monte-Carlo error is then well below 0.01 Dice


def _values(values, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    if not np.isfinite(v).all():
        raise ValueError(f"{what}: values must be finite (got {v[~np.isfinite(v)][:3].tolist()})")
    return v


def bootstrap_means(values, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement, same size) of ``values``; the draw is
    ``default_rng(seed).integers(0, n, (n_boot, n))``."""
    v = _values(values, "bootstrap")
    if v.size == 0:
        return np.empty(0)
    idx = np.random.default_rng(seed).integers(0, v.size, size=(int(n_boot), v.size))
    return v[idx].mean(axis=1)


def bootstrap_ci(values, confidence: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """``{"mean", "low", "high", "n"}``: the mean of ``values`` and its percentile-bootstrap
    interval. One value gives a zero-width interval; no value gives NaNs."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = _values(values, "bootstrap_ci")
    if v.size == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    means = bootstrap_means(v, n_boot, seed)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"mean": float(v.mean()), "low": float(lo), "high": float(hi), "n": int(v.size)}


def paired_difference(a, b, confidence: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Mean of ``a - b`` over the same cases (same order) with its paired-bootstrap interval, and
    ``p``: the two-sided bootstrap p-value, twice the smaller share of resampled mean differences
    on either side of 0 (capped at 1; 0 when every resample lies on one side)."""
    x, y = _values(a, "paired_difference a"), _values(b, "paired_difference b")
    if x.shape != y.shape:
        raise ValueError(f"paired_difference: {x.size} and {y.size} values; the same cases are needed")
    d = x - y
    out = bootstrap_ci(d, confidence, n_boot, seed)
    if d.size == 0:
        return {**out, "p": math.nan}
    means = bootstrap_means(d, n_boot, seed)
    if np.all(means == 0):
        p = 1.0
    else:
        p = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return {**out, "p": p}


def bootstrap_statistic(stat: Callable[[np.ndarray], float], n: int, y=None, n_boot: int = 1000,
                        seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``stat(idx)`` over ``n_boot`` resamples ``idx`` of ``range(n)``
    with replacement; with ``y`` given, resamples holding a single class are skipped (balanced
    accuracy and AUC are undefined there). (nan, nan) when nothing could be computed."""
    rng = np.random.default_rng(seed)
    vals = []
    y = None if y is None else np.asarray(y).astype(int)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if y is not None and y[idx].min() == y[idx].max():
            continue
        v = stat(idx)
        if np.isfinite(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
