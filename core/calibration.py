"""Calibration of probabilistic classifiers: the calibration maps (none, temperature scaling,
Platt scaling, isotonic regression), their choice by inner cross-validation, and the
balanced-accuracy threshold. Pure functions of arrays; the cross-fitted metrics that use them
are in :mod:`core.pcr_eval`.

Every map turns a log-odds score ``z`` into a probability:

- ``none``: sigmoid(z) (nothing fitted);
- ``temperature``: sigmoid(z / T), one parameter (Guo et al., ICML 2017);
- ``platt``: sigmoid(a z + b), two parameters (Platt 1999), which can also move the intercept;
- ``isotonic``: a non-decreasing step function of z fitted by pool-adjacent-violators
  (Zadrozny & Elkan, KDD 2002), interpolated linearly between its knots.

:func:`choose_calibration` picks one by inner cross-validation on the rows it is given (the
training folds' out-of-fold scores): every map is fitted on the inner training part and scored
on the inner held-out part by the Brier score (a proper scoring rule: it rewards calibration and
discrimination together and, unlike the log-loss, stays finite for the 0/1 outputs of an
isotonic fit). Following the one-standard-error rule (Breiman et al., CART 1984) the simplest map
in the order none < temperature < platt < isotonic whose paired Brier difference to the best map
is within one standard error of zero is chosen: a well-calibrated score keeps "none", because a
fitted map then only adds variance, which is how temperature scaling raised held-out ECE on
small pCR tables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scipy.optimize import minimize_scalar

from core.fairness import balanced_accuracy


def sigmoid(x):
    from scipy.special import expit  # no overflow warning for large negative log-odds
    return expit(np.asarray(x, np.float64))


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


CALIBRATIONS = ("none", "temperature", "platt", "isotonic")   # simplest first (the one-SE rule)
P_CLIP = 1e-4   # isotonic probabilities kept inside [1e-4, 1 - 1e-4] (finite log-odds)


@dataclass(frozen=True)
class CalibrationMap:
    """A fitted map from log-odds to probability (module docstring). ``a``, ``b``: the linear
    maps' slope and intercept (temperature: a = 1/T, b = 0); ``xs``, ``ys``: isotonic knots
    (log-odds, probability), ``xs`` increasing."""

    kind: str = "none"
    a: float = 1.0
    b: float = 0.0
    xs: tuple = ()
    ys: tuple = ()

    def __post_init__(self):
        if self.kind not in CALIBRATIONS:
            raise ValueError(f"calibration kind must be one of {CALIBRATIONS}, got {self.kind!r}")
        if not (math.isfinite(self.a) and math.isfinite(self.b)) or self.a < 0:
            raise ValueError(f"calibration slope must be a finite number >= 0 and the intercept finite: {self}")
        if self.kind == "isotonic":
            xs, ys = np.asarray(self.xs, float), np.asarray(self.ys, float)
            if xs.size < 1 or xs.size != ys.size or np.any(np.diff(xs) < 0) or np.any(np.diff(ys) < 0) \
                    or not np.all(np.isfinite(xs)) or np.any((ys < 0) | (ys > 1)):
                raise ValueError("isotonic calibration needs equally many increasing knots with probabilities in [0, 1]")

    def __call__(self, logits) -> np.ndarray:
        z = np.asarray(logits, np.float64)
        if self.kind == "isotonic":
            return np.clip(np.interp(z, self.xs, self.ys), P_CLIP, 1 - P_CLIP)
        return sigmoid(self.a * z + self.b)

    @classmethod
    def from_dict(cls, d) -> "CalibrationMap":
        return cls(kind=d["kind"], a=float(d["a"]), b=float(d["b"]), xs=tuple(d["xs"]), ys=tuple(d["ys"]))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "a": float(self.a), "b": float(self.b),
                "xs": [float(x) for x in self.xs], "ys": [float(v) for v in self.ys]}


def fit_platt(logits, y, iters: int = 50) -> tuple[float, float]:
    """(a, b) minimising the NLL of ``sigmoid(a z + b)`` by Newton's method, with a >= 0 (a score
    that ranks the wrong way round is not turned round by a calibration map: then a = 0 and b is
    the log-odds of the positive rate); a tiny ridge (1e-4 a^2) keeps separable data finite."""
    z, y = np.asarray(logits, np.float64), np.asarray(y, np.float64)
    x = np.stack([z, np.ones_like(z)], 1)
    w = np.array([1.0, 0.0])
    ridge = np.diag([2e-4, 1e-9])
    for _ in range(iters):
        p = sigmoid(x @ w)
        g = x.T @ (p - y) / z.size + ridge @ w
        h = (x * (p * (1 - p))[:, None]).T @ x / z.size + ridge
        step = np.linalg.solve(h, g)
        w = w - step
        if np.max(np.abs(step)) < 1e-10:
            break
    if w[0] < 0:
        rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
        return 0.0, math.log(rate / (1 - rate))
    return float(w[0]), float(w[1])


def fit_map(kind: str, logits, y) -> CalibrationMap:
    """The calibration map ``kind`` fitted on (logits, y); "none" when y holds a single class."""
    z, y = np.asarray(logits, np.float64), np.asarray(y).astype(int)
    if kind == "none" or y.size == 0 or y.min() == y.max():
        return CalibrationMap("none")
    if kind == "temperature":
        return CalibrationMap("temperature", a=1.0 / fit_temperature(z, y))
    if kind == "platt":
        a, b = fit_platt(z, y)
        return CalibrationMap("platt", a=a, b=b)
    if kind == "isotonic":
        from sklearn.isotonic import IsotonicRegression
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(z, y)
        return CalibrationMap("isotonic", xs=tuple(float(v) for v in iso.X_thresholds_),
                              ys=tuple(float(v) for v in iso.y_thresholds_))
    raise ValueError(f"calibration kind must be one of {CALIBRATIONS}, got {kind!r}")


def _inner_splits(y, groups, n_inner: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-one-group-out over ``groups`` (the outer folds of the rows) when there are at least
    three, else stratified ``n_inner``-fold splits; [] when no split can hold both classes."""
    y = np.asarray(y).astype(int)
    if groups is not None and len(set(np.asarray(groups).tolist())) >= 3:
        g = np.asarray(groups)
        return [(np.flatnonzero(g != v), np.flatnonzero(g == v)) for v in sorted(set(g.tolist()))]
    k = min(n_inner, int(np.bincount(y, minlength=2).min()))
    if k < 2:
        return []
    from sklearn.model_selection import StratifiedKFold
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(y.size), y))


def choose_calibration(logits, y, groups=None, kinds=CALIBRATIONS, n_inner: int = 5,
                       seed: int = 0) -> tuple[CalibrationMap, dict]:
    """The calibration map chosen by inner cross-validation (module docstring), fitted on all
    rows, and a report ``{"chosen", "brier": {kind: inner held-out Brier}, "se"}``. ``groups``:
    the outer fold of every row (inner splits leave one out), or None for stratified splits.
    With no usable split (one class, or a single positive) the map is "none"."""
    z, y = np.asarray(logits, np.float64), np.asarray(y).astype(int)
    kinds = ["none"] + [k for k in CALIBRATIONS[1:] if k in kinds]   # "none" is always a candidate
    splits = _inner_splits(y, groups, n_inner, seed)
    if not splits or len(kinds) == 1:
        return CalibrationMap("none"), {"chosen": "none", "brier": {}, "se": None}
    sq = {k: np.full(y.size, np.nan) for k in kinds}
    for tr, va in splits:
        for k in kinds:
            sq[k][va] = (fit_map(k, z[tr], y[tr])(z[va]) - y[va]) ** 2
    done = np.isfinite(sq[kinds[0]])
    mean = {k: float(np.mean(v[done])) for k, v in sq.items()}
    best = min(kinds, key=lambda k: mean[k])
    chosen, se = best, 0.0
    for k in kinds:                       # simplest first
        d = sq[k][done] - sq[best][done]
        se_k = float(np.std(d, ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
        if d.mean() <= se_k:
            chosen, se = k, se_k
            break
    return fit_map(chosen, z, y), {"chosen": chosen, "brier": mean, "se": se}
