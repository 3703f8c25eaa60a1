"""Cohort-level scores of the MAMA-MIA challenge: subgroups, fairness, ranking, pCR metrics.

Official rules (challenge scripts ``scoring_task1.py`` and
``scoring_task2.py`` of LidiaGarrucho/MAMA-MIA):

- subgroups: age bins (0,40], (40,50], (50,60], (60,70], (70,100] (pandas ``cut``; missing or out of
  range -> excluded); menopausal status lower-cased, containing "peri" or "pre" -> "pre", else
  containing "post" -> "post", missing -> "unknown" (a group), any other string kept as its own
  group; breast density as given (lower-cased), missing -> excluded;
- Task 1: Performance = 0.5 * (mean Dice + 1 - mean NormHD);
  Fair_v = 1 - 0.5 * (range_g meanDice + range_g meanNormHD); Fairness = mean_v Fair_v;
  Ranking = (1 - alpha) * Performance + alpha * Fairness, alpha = 0.5;
- Task 2: balanced accuracy of hard predictions with missing truth counted as 0; per group TPR and
  FPR (0 when undefined); EOD_v = range_g TPR + range_g FPR; disparity = clip(mean_v EOD_v, 0, 1);
  Ranking = (1 - alpha) * BA + alpha * (1 - disparity).

Decisions where the official scripts are silent or crash (named, tested):

- a variable with no usable group (all values missing) has range 0 -> Fair_v = 1, EOD_v = 0,
  like a variable with a single group (the official scripts raise on ``max([])``);
- an empty or whitespace-only menopausal string counts as missing ("unknown");
- menopause follows scoring_task2.py (lower-case, "pre" tested before "post"); scoring_task1.py
  does not lower-case and tests "post" first; the two agree on the dataset's actual values;
- the published scoring_task1.py stores per-case values with ``df.loc[patient_id, ...]`` on a
  frame indexed 0..N-1, which appends rows instead of filling them; we follow the evident intent
  (group means of each case's Dice and NormHD);
- Task 1 counts only groups holding at least one case. (The official script groups the pandas
  ``cut`` categorical with ``observed=False``, so empty age bins appear with a NaN mean, which
  Python's ``max``/``min`` skip unless the bin "0-40" is the empty one; then its score is NaN.)
- Task 2 mirrors that grouping: by default (``categories={"age": AGE_LABELS}``) every age bin is a
  group even when empty, and an empty group has TPR = FPR = 0 (the official fallback), which
  enters the ranges. Pass ``categories={}`` to count observed groups only.
- ``official_single_label=True`` mirrors the official TPR/FPR code, which unpacks sklearn's
  ``confusion_matrix(...).ravel()`` into four values and falls back to TPR = FPR = 0 when the
  group's truth and predictions together hold a single label (e.g. every case truly and
  predictedly positive gives TPR 0, not 1).

Non-official extras: AUC, demographic parity (Seed A: max - min over groups of the positive
rate), expected calibration error with a reliability curve, per-group tables.

Inputs are plain sequences / numpy arrays of per-case values in one fixed case order, and
``groups`` maps a variable name to a sequence of group labels (``None`` = excluded) in that order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

log = logging.getLogger(__name__)

AGE_EDGES = (0, 40, 50, 60, 70, 100)  # scoring_task1.py pd.cut bins (right-closed)
AGE_LABELS = ("0-40", "41-50", "51-60", "61-70", "71+")  # official labels
FAIRNESS_VARIABLES = ("age", "menopausal_status", "breast_density")
ALPHA = 0.5  # official weight between performance and fairness

# command-line names of the subgroup variables (``subtype`` is a non-official extra)
SUBGROUP_NAMES = {"age": "age", "menopause": "menopausal_status",
                  "menopausal_status": "menopausal_status", "density": "breast_density",
                  "breast_density": "breast_density", "subtype": "subtype"}


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x))


# --------------------------------------------------------------------------- subgroups

def age_group(age: Any) -> str | None:
    """Official age bin label of an age in years; None when missing or outside (0, 100]."""
    if _missing(age):
        return None
    try:
        a = float(age)
    except (TypeError, ValueError):
        raise ValueError(f"age {age!r} is not a number") from None
    if math.isnan(a):
        return None
    for lo, hi, label in zip(AGE_EDGES[:-1], AGE_EDGES[1:], AGE_LABELS):
        if lo < a <= hi:
            return label
    return None


def menopause_group(status: Any) -> str:
    """Official menopausal group: "pre" (contains peri/pre), "post", "unknown" (missing);
    any other string stays its own (lower-cased) group."""
    if _missing(status) or not str(status).strip():
        return "unknown"
    s = str(status).lower()
    if "peri" in s or "pre" in s:  # scoring_task2.py tests peri/pre before post
        return "pre"
    if "post" in s:
        return "post"
    return s


def density_group(density: Any) -> str | None:
    """Breast density group ("a".."d" in the data), lower-cased; None when missing."""
    if _missing(density) or not str(density).strip():
        return None
    return str(density).strip().lower()


GROUPERS: dict[str, Callable[[Any], str | None]] = {
    "age": age_group,
    "menopausal_status": menopause_group,
    "breast_density": density_group,
}


def assign_groups(records: Sequence[Mapping[str, Any]],
                  variables: Sequence[str] = FAIRNESS_VARIABLES) -> dict[str, list[str | None]]:
    """Group labels per variable from clinical records (keys as in the patient JSON
    ``clinical_data``: ``age``, ``menopausal_status``, ``breast_density``; absent key = missing)."""
    unknown = [v for v in variables if v not in GROUPERS]
    if unknown:
        raise ValueError(f"unknown fairness variable(s) {unknown}; known: {sorted(GROUPERS)}")
    return {v: [GROUPERS[v](r.get(v)) for r in records] for v in variables}


def group_indices(labels: Sequence[str | None]) -> dict[str, np.ndarray]:
    """Case indices of each observed group, sorted by label; None labels are excluded."""
    out: dict[str, list[int]] = {}
    for i, g in enumerate(labels):
        if g is not None:
            out.setdefault(g, []).append(i)
    return {g: np.asarray(out[g]) for g in sorted(out)}


def _check_groups(groups: Mapping[str, Sequence], n: int) -> None:
    for v, labels in groups.items():
        if len(labels) != n:
            raise ValueError(f"groups[{v!r}] has {len(labels)} labels for {n} cases")


def _range(values: Sequence[float]) -> float:
    """max - min; 0.0 for fewer than two values (no measurable disparity)."""
    return float(max(values) - min(values)) if len(values) > 1 else 0.0


# --------------------------------------------------------------------------- Task 1

def segmentation_performance(dice: Sequence[float], norm_hd: Sequence[float]) -> float:
    """Official Performance = 0.5 * (mean Dice + 1 - mean NormHD)."""
    return 0.5 * (float(np.mean(dice)) + 1.0 - float(np.mean(norm_hd)))


def segmentation_fairness(dice: Sequence[float], norm_hd: Sequence[float],
                          groups: Mapping[str, Sequence[str | None]]) -> dict[str, float]:
    """Official Fair_v per variable (see module docstring for the no-group rule)."""
    d, h = np.asarray(dice, float), np.asarray(norm_hd, float)
    if d.shape != h.shape:
        raise ValueError(f"{d.size} Dice values but {h.size} NormHD values")
    _check_groups(groups, d.size)
    out = {}
    for v, labels in groups.items():
        idx = group_indices(labels)
        if not idx:
            log.warning("fairness variable %r has no known value; Fair_v set to 1", v)
        out[v] = 1.0 - 0.5 * (_range([d[i].mean() for i in idx.values()])
                              + _range([h[i].mean() for i in idx.values()]))
    return out


def segmentation_scores(dice: Sequence[float], norm_hd: Sequence[float],
                        groups: Mapping[str, Sequence[str | None]],
                        alpha: float = ALPHA) -> dict[str, Any]:
    """Official Task 1 summary: mean Dice/NormHD, performance, fairness (+ per variable),
    ranking."""
    if len(dice) == 0:
        raise ValueError("no cases to score")
    perf = segmentation_performance(dice, norm_hd)
    per_var = segmentation_fairness(dice, norm_hd, groups)
    fair = float(np.mean(list(per_var.values()))) if per_var else 1.0
    return {"mean_dice": float(np.mean(dice)), "mean_norm_hd": float(np.mean(norm_hd)),
            "performance": perf, "fairness": fair, "fairness_per_variable": per_var,
            "ranking": (1.0 - alpha) * perf + alpha * fair}


def demographic_parity(positive: Sequence[bool], labels: Sequence[str | None]) -> float:
    """max - min over groups of the positive-outcome rate (Seed A's DP); 0 with < 2 groups."""
    p = np.asarray(positive, dtype=bool)
    if len(labels) != p.size:
        raise ValueError(f"{len(labels)} group labels for {p.size} outcomes")
    return _range([p[i].mean() for i in group_indices(labels).values()])


def segmentation_parity(dice: Sequence[float], groups: Mapping[str, Sequence[str | None]],
                        threshold: float = 0.5) -> dict[str, float]:
    """Demographic parity per variable of the outcome ``dice >= threshold`` (non-official)."""
    ok = np.asarray(dice, float) >= threshold
    return {v: demographic_parity(ok, labels) for v, labels in groups.items()}


# --------------------------------------------------------------------------- Task 2

def _labels(y: Sequence[Any], name: str) -> np.ndarray:
    """0/1 int array with missing (None/NaN) -> 0, as the official ``fillna(0)``."""
    out = np.array([0 if _missing(v) else v for v in y], dtype=float)
    if not np.all((out == 0) | (out == 1)):
        raise ValueError(f"{name} must hold 0/1 (or missing) values, "
                         f"got {sorted(set(out.tolist()))}")
    return out.astype(int)


def balanced_accuracy(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    """Mean recall over the classes present in the truth (sklearn ``balanced_accuracy_score``);
    missing truth or prediction -> 0 (official)."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.size == 0 or t.size != p.size:
        raise ValueError(f"y_true ({t.size}) and y_pred ({p.size}) must be equally long "
                         "and non-empty")
    return float(np.mean([np.mean(p[t == c] == c) for c in np.unique(t)]))


def roc_auc(y_true: Sequence[Any], score: Sequence[float]) -> float:
    """ROC AUC by the rank (Mann-Whitney) formula with tied scores averaged; NaN with one class."""
    t = _labels(y_true, "y_true")
    s = np.asarray(score, float)
    n1, n0 = int(t.sum()), int(t.size - t.sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    r = rankdata(s)
    return float((r[t == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def tpr_fpr(y_true: np.ndarray, y_pred: np.ndarray,
            official_single_label: bool = True) -> tuple[float, float]:
    """(TPR, FPR) of 0/1 arrays, each 0 when undefined; see the module docstring for the flag."""
    if official_single_label and np.unique(np.concatenate([y_true, y_pred])).size < 2:
        return 0.0, 0.0
    tp = int(np.sum((y_true == 1) & (y_pred == 1)))
    fn = int(np.sum((y_true == 1) & (y_pred == 0)))
    fp = int(np.sum((y_true == 0) & (y_pred == 1)))
    tn = int(np.sum((y_true == 0) & (y_pred == 0)))
    return (tp / (tp + fn) if tp + fn else 0.0), (fp / (fp + tn) if fp + tn else 0.0)


def equalized_odds(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[str | None],
                   official_single_label: bool = True,
                   categories: Sequence[str] = ()) -> dict[str, Any]:
    """Per-group TPR/FPR and EOD = range(TPR) + range(FPR) of one variable.

    ``categories`` are groups that exist even without cases (TPR = FPR = 0, undefined -> 0).
    """
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if not (len(labels) == t.size == p.size):
        raise ValueError(f"{len(labels)} group labels, {t.size} truths, {p.size} predictions")
    tpr, fpr = {g: 0.0 for g in categories}, {g: 0.0 for g in categories}
    for g, i in group_indices(labels).items():
        tpr[g], fpr[g] = tpr_fpr(t[i], p[i], official_single_label)
    return {"tpr": tpr, "fpr": fpr,
            "eod": _range(list(tpr.values())) + _range(list(fpr.values()))}


def pcr_scores(y_true: Sequence[Any], y_pred: Sequence[Any],
               groups: Mapping[str, Sequence[str | None]], score: Sequence[float] | None = None,
               alpha: float = ALPHA, official_single_label: bool = True,
               categories: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Official Task 2 summary (BA, EOD per variable, disparity, ranking) plus AUC and
    demographic parity of the predictions per variable (non-official).

    ``categories`` maps a variable to groups that count even when empty; None means the official
    ``{"age": AGE_LABELS}`` (see the module docstring).
    """
    _check_groups(groups, len(y_true))
    cats = {"age": AGE_LABELS} if categories is None else categories
    ba = balanced_accuracy(y_true, y_pred)
    eo = {v: equalized_odds(y_true, y_pred, labels, official_single_label, cats.get(v, ()))
          for v, labels in groups.items()}
    disparity = float(np.clip(np.mean([e["eod"] for e in eo.values()]), 0, 1)) if eo else 0.0
    pred = _labels(y_pred, "y_pred")
    return {"balanced_accuracy": ba,
            "auc": roc_auc(y_true, score) if score is not None else math.nan,
            "eod_per_variable": {v: e["eod"] for v, e in eo.items()},
            "tpr_per_group": {v: e["tpr"] for v, e in eo.items()},
            "fpr_per_group": {v: e["fpr"] for v, e in eo.items()},
            "disparity": disparity, "fairness": 1.0 - disparity,
            "ranking": (1.0 - alpha) * ba + alpha * (1.0 - disparity),
            "parity_per_variable": {v: demographic_parity(pred == 1, labels)
                                    for v, labels in groups.items()}}


def calibration(y_true: Sequence[Any], score: Sequence[float], n_bins: int = 10) -> dict[str, Any]:
    """Expected calibration error and reliability curve with equal-width bins on [0, 1].

    Bin b holds the scores with floor(score * n) = b, i.e. [b/n, (b+1)/n); the last bin also
    holds 1.0. ECE = sum_b n_b/N * |mean score_b - observed positive rate_b|. Returns ``ece`` and
    per-bin ``centers``, ``mean_predicted``, ``observed`` (NaN for empty bins) and ``counts``.
    """
    t = _labels(y_true, "y_true")
    s = np.asarray(score, float)
    if n_bins < 1 or s.size != t.size or s.size == 0:
        raise ValueError(f"need n_bins >= 1 (got {n_bins}) and {t.size} scores (got {s.size})")
    if np.any(~np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        raise ValueError("scores must be probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # floor(s * n) rather than a search in ``edges``: linspace(0, 1, 11)[6] is 0.6000000000000001,
    # which would put a score of exactly 0.6 in the bin below
    b = np.minimum(np.floor(s * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(b, weights=s, minlength=n_bins) / counts
        observed = np.bincount(b, weights=t, minlength=n_bins) / counts
    full = counts > 0
    ece = float(np.sum(counts[full] / s.size * np.abs(mean_pred[full] - observed[full])))
    return {"ece": ece, "centers": (edges[:-1] + edges[1:]) / 2.0, "mean_predicted": mean_pred,
            "observed": observed, "counts": counts}


# --------------------------------------------------------------------------- tables

def group_table(records: Sequence[Mapping[str, Any]], key: str,
                metrics: Sequence[str] | None = None,
                group_of: Callable[[Any], str | None] | None = None) -> list[dict[str, Any]]:
    """Rows ``{"group", "count", <metric>: mean}`` per group of ``key`` (e.g. center, age).

    ``group_of`` maps the raw value to a group label (e.g. ``age_group``); records whose group is
    None/missing are left out. ``metrics`` defaults to the numeric keys of the first record other
    than ``key``. A metric missing or None in a record is left out of that mean; a group with no
    value for a metric gets NaN. Rows are sorted by group label.
    """
    if metrics is None:
        first = records[0].items() if records else ()
        metrics = [k for k, v in first if k != key and not isinstance(v, bool)
                   and isinstance(v, (int, float, np.number))]
    by_group: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        g = group_of(r.get(key)) if group_of is not None else r.get(key)
        if not _missing(g):
            by_group.setdefault(str(g), []).append(r)
    rows = []
    for g in sorted(by_group):
        rs = by_group[g]
        row: dict[str, Any] = {"group": g, "count": len(rs)}
        for m in metrics:
            vals = [float(r[m]) for r in rs if not _missing(r.get(m))]
            row[m] = float(np.mean(vals)) if vals else math.nan
        rows.append(row)
    return rows
