"""Evaluation figures written as PNG files (matplotlib, Agg backend: no display needed).

Every function draws one figure, writes it atomically to ``path`` and returns the path.

- :func:`metric_distributions`: box + strip plots of per-case metrics per group (center, age bin...)
- :func:`overlay`: one slice of the first post-contrast phase with the ground-truth and predicted
  contours, through the largest cross-section of the ground-truth tumour
- :func:`roc_plot`, :func:`reliability_plot`, :func:`group_bars`: pCR figures
- :func:`training_curves`: a fold's training curves (nnU-Net's progress.png)

Volumes are ``(X, Y, Z)`` in nibabel voxel order with ``spacing`` in mm along the same axes.
"""
from __future__ import annotations

import io as _bytes_io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # file output only; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data import io  # noqa: E402

GT_COLOUR, PRED_COLOUR = "#00d000", "#ff3030"


def _save(fig, path: str | Path) -> Path:
    buf = _bytes_io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return io.atomic_write_bytes(path, buf.getvalue())


def _finite(values: Sequence[Any]) -> np.ndarray:
    a = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    return a[np.isfinite(a)]


def metric_distributions(records: Sequence[Mapping[str, Any]], key: str, metrics: Sequence[str],
                         path: str | Path, title: str = "",
                         labels: Mapping[str, str] | None = None) -> Path:
    """Box plot with the individual cases overlaid (jittered strip), one panel per metric.

    ``records``: per-case dicts; ``key`` names the group label (records whose label is None are
    left out); ``metrics`` are keys with per-case values (non-finite values are left out, counts
    in the tick labels are the cases plotted). ``labels`` renames metrics on the axes.
    """
    groups = sorted({str(r[key]) for r in records if r.get(key) is not None})
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 1.1 * len(groups) + 2) * len(metrics), 3.8),
                             squeeze=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same figure for the same input
    for ax, m in zip(axes[0], metrics):
        data = [_finite([r.get(m) for r in records if str(r.get(key)) == g]) for g in groups]
        pos = np.arange(1, len(groups) + 1)
        kept = [(p, d) for p, d in zip(pos, data) if d.size]
        if kept:
            ax.boxplot([d for _, d in kept], positions=[p for p, _ in kept], widths=0.55,
                       showfliers=False)
        for p, d in kept:
            ax.scatter(p + rng.uniform(-0.18, 0.18, d.size), d, s=12, alpha=0.6, color="tab:blue",
                       zorder=3)
        ax.set_xticks(pos)
        ax.set_xticklabels([f"{g}\n(n={d.size})" for g, d in zip(groups, data)], fontsize=8)
        ax.set_xlim(0.4, len(groups) + 0.6)
        ax.set_ylabel((labels or {}).get(m, m))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or f"per-case metrics by {key}")
    return _save(fig, path)


def section(mask: np.ndarray, spacing: Sequence[float]) -> tuple[int, int]:
    """(axis, index) of the slice with the largest mask area, across the acquisition axis.

    The acquisition (slice) axis is the one with the largest spacing (the thick-slice axis; the
    last axis on ties). With an empty mask, the middle slice.
    """
    sp = np.asarray(spacing, float)
    axis = int(np.flatnonzero(sp == sp.max())[-1])
    area = np.count_nonzero(mask, axis=tuple(a for a in range(mask.ndim) if a != axis))
    idx = int(np.argmax(area)) if area.max() > 0 else mask.shape[axis] // 2
    return axis, idx


def overlay(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
            path: str | Path, title: str = "") -> Path:
    """Slice of ``image`` through the largest ground-truth cross-section (:func:`section`), with
    the ground-truth (green) and predicted (red) label-1 contours. All inputs ``(X, Y, Z)``."""
    if not (image.shape == gt.shape == pred.shape):
        raise ValueError(f"image {image.shape}, ground truth {gt.shape} and prediction "
                         f"{pred.shape} must share one grid")
    axis, idx = section(gt == 1, spacing)
    take = lambda a: np.take(a, idx, axis=axis).T  # noqa: E731  (rows = 2nd in-plane axis)
    rest = [a for a in range(3) if a != axis]
    img, g, p = take(image).astype(float), take(gt == 1), take(pred == 1)
    lo, hi = np.percentile(img, [1, 99.5]) if img.size else (0, 1)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower",
              aspect=float(spacing[rest[1]]) / float(spacing[rest[0]]), interpolation="nearest")
    for m, colour in ((g, GT_COLOUR), (p, PRED_COLOUR)):
        if m.any() and not m.all():
            ax.contour(m.astype(float), levels=[0.5], colors=colour, linewidths=1.2)
    ax.plot([], [], color=GT_COLOUR, label="ground truth")
    ax.plot([], [], color=PRED_COLOUR, label="prediction")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.6)
    ax.set_title(f"{title}\naxis {axis}, slice {idx}", fontsize=9)
    ax.set_axis_off()
    return _save(fig, path)


def roc_points(y_true: Sequence[int], score: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the ROC curve, one point per distinct score threshold (ties together)."""
    t, s = np.asarray(y_true, int), np.asarray(score, float)
    order = np.argsort(-s, kind="stable")
    t, s = t[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), t.size - 1]  # last index of each tied block
    tp, fp = np.cumsum(t)[last], np.cumsum(1 - t)[last]
    n1, n0 = max(int(t.sum()), 1), max(int(t.size - t.sum()), 1)
    return np.r_[0.0, fp / n0], np.r_[0.0, tp / n1]


def roc_plot(y_true: Sequence[int], score: Sequence[float], path: str | Path,
             auc: float = math.nan, title: str = "pCR ROC") -> Path:
    fpr, tpr = roc_points(y_true, score)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, drawstyle="default", label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02),
           title=title)
    ax.legend(loc="lower right")
    return _save(fig, path)


def reliability_plot(cal: Mapping[str, Any], path: str | Path,
                     title: str = "pCR reliability") -> Path:
    """Reliability diagram from :func:`core.fairness.calibration` output (empty bins skipped)."""
    c, mp, ob, n = (np.asarray(cal[k], float) for k in ("centers", "mean_predicted", "observed",
                                                         "counts"))
    full = n > 0
    width = float(c[1] - c[0]) if c.size > 1 else 1.0
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.bar(c[full], ob[full], width=width * 0.9, alpha=0.35, label="observed rate")
    ax.plot(mp[full], ob[full], "o-", label="mean score vs observed")
    ax.set(ylabel="observed pCR rate", xlim=(0, 1), ylim=(0, 1.02),
           title=f"{title} (ECE = {float(cal['ece']):.3f})")
    ax.legend(loc="upper left", fontsize=8)
    axn.bar(c, n, width=width * 0.9, color="grey")
    axn.set(xlabel="predicted score", ylabel="cases")
    return _save(fig, path)


def group_bars(tables: Mapping[str, Sequence[Mapping[str, Any]]], metric: str, path: str | Path,
               reference: float | None = None, title: str = "") -> Path:
    """Bar chart of ``metric`` per group, one panel per variable; ``tables`` maps a variable to
    rows ``{"group", "count", metric}``; ``reference`` draws a dashed line (the cohort value)."""
    names = list(tables)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.6 * max(len(names), 1), 3.6),
                             squeeze=False, sharey=True)
    for ax, v in zip(axes[0], names):
        rows = tables[v]
        vals = [float(r[metric]) if r.get(metric) is not None else math.nan for r in rows]
        ax.bar(range(len(rows)), np.nan_to_num(vals, nan=0.0), color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{r['group']}\n(n={r['count']})" for r in rows], fontsize=8)
        if reference is not None and math.isfinite(reference):
            ax.axhline(reference, ls="--", color="grey", label="all cases")
            ax.legend(loc="lower right", fontsize=8)
        ax.set(title=v, ylim=(0, 1.02))
    axes[0][0].set_ylabel(metric)
    fig.suptitle(title or f"{metric} per subgroup", y=1.04)
    return _save(fig, path)


def training_curves(history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """nnU-Net's ``progress.png``: training loss, validation pseudo-Dice and its moving average,
    learning rate and epoch time against the epoch (one panel each). NaN pseudo-Dice (no
    validation cases) leaves its panel empty."""
    epochs = [int(h["epoch"]) for h in history]
    col = {k: [float("nan") if h.get(k) is None else float(h[k]) for h in history]
           for k in ("loss", "pseudo_dice", "ema", "lr", "seconds")}
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    axes[0].plot(epochs, col["loss"], color="tab:blue", label="train loss")
    axes[1].plot(epochs, col["pseudo_dice"], color="tab:green", alpha=0.5, label="pseudo-Dice")
    axes[1].plot(epochs, col["ema"], color="tab:green", label="moving average")
    axes[2].plot(epochs, col["lr"], color="tab:orange", label="learning rate")
    axes[3].plot(epochs, col["seconds"], color="tab:gray", label="epoch time (s)")
    for ax in axes:
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    if title:
        axes[0].set_title(title)
    return _save(fig, path)
