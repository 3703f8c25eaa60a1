"""Per-case segmentation metrics of the MAMA-MIA challenge, plus a few labelled extras.

Official rules (MAMA-MIA Task 1, challenge scoring code ``src/challenge/metrics.py`` of
LidiaGarrucho/MAMA-MIA):

- masks are the voxels with label value 1;
- Dice = 2TP / (2TP + FP + FN), and 0.0 when both masks are empty;
- HD95 is measured between the *contours* of the two masks (SimpleITK ``LabelContour`` with
  ``fullyConnected=False``: foreground voxels with at least one face neighbour in the background;
  voxels outside the image are not background), in **voxel index units** (spacing ignored),
  as ``max(p95(d_ab), p95(d_ba))`` of the directed nearest-neighbour distances with numpy's
  default linear percentile;
- the empty cases are decided on the contour *point sets*, exactly as the official KD-tree code:
  both empty -> 0, exactly one empty -> inf. A mask that fills the whole image has no contour, so it
  counts as empty here (all-ones vs all-ones -> 0, all-ones vs a blob -> inf) even though its Dice
  is well defined;
- NormHD = HD95 / 150, not clipped; inf -> 1.0.

Extras that are **not** part of the official score carry ``mm`` / ``volume`` in their names:
HD95 in mm, average symmetric surface distance (ASSD) in mm, and volume differences.

Every function takes arrays of any dimensionality (2D or 3D in practice) of identical shape:
one channel of the ``(C, X, Y, Z)`` convention, i.e. ``(X, Y, Z)``; ``spacing`` is a tuple in the
same axis order, in mm. Work is restricted to the bounding box of the union of both masks, and
distances use KD-trees over contour points only (measured: about 8x faster than a Euclidean
distance transform of the bounding box for an 80-voxel-wide blob, and the cost does not grow
with the empty space between far-apart islands).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

HD_MAX = 150.0  # official NormHD normaliser (scoring_task1.py: HD_MAX = 150)
HD_UNITS = ("voxel", "mm")


def as_mask(x: np.ndarray) -> np.ndarray:
    """Boolean mask of label value 1 (official ``label=1``); boolean input is used as is."""
    x = np.asarray(x)
    if x.dtype == bool:
        return x
    return x == 1


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth "
                         f"shape {gt.shape}")
    return pred, gt


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        raise ValueError("spacing (mm per voxel, one value per axis) is required for mm metrics")
    s = np.asarray(spacing, dtype=np.float64)
    if s.shape != (ndim,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing {tuple(spacing)} must hold {ndim} positive finite values")
    return s


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient of the label-1 masks; 0.0 when both are empty (official rule)."""
    crop = _crop(*_check_pair(pred, gt))
    if crop is None:
        return 0.0
    p, g = crop
    n = np.count_nonzero(p) + np.count_nonzero(g)  # = 2TP + FP + FN
    return 2.0 * np.count_nonzero(p & g) / n if n > 0 else 0.0


def contour(mask: np.ndarray) -> np.ndarray:
    """Face-connected contour of a mask, as SimpleITK ``LabelContour(fullyConnected=False)``.

    A foreground voxel is on the contour when at least one of its 2*ndim face neighbours *inside
    the image* is background; positions outside the image do not count as background, so an
    all-ones mask has an empty contour. Returns a boolean array of the input shape.
    """
    mask = as_mask(mask)
    interior = mask.copy()
    for axis in range(mask.ndim):
        hi = [slice(None)] * mask.ndim
        lo = [slice(None)] * mask.ndim
        hi[axis], lo[axis] = slice(1, None), slice(None, -1)
        # a voxel stays interior only if its neighbour on each side (when it exists) is foreground
        interior[tuple(hi)] &= mask[tuple(lo)]
        interior[tuple(lo)] &= mask[tuple(hi)]
    return mask & ~interior


def _nonzero_bounds(a: np.ndarray) -> list[tuple[int, int]] | None:
    """Per-axis [lo, hi) bounds containing every non-zero element of ``a``; None if all zero.

    Bounds may be a few voxels loose along the last axis: a C-ordered array whose rows are a
    multiple of 8 bytes is read as 64-bit words (any non-zero bit counts, so -0.0 does too). That
    only grows the crop. Cost: one pass, ~5 ms for a 448 x 448 x 160 uint8 volume, where
    ``np.any(axis=...)`` over the same array takes ~25 ms.
    """
    row_bytes = a.shape[-1] * a.dtype.itemsize
    word = a.ndim > 1 and a.flags.c_contiguous and row_bytes % 8 == 0 and a.size > 0
    w = a.view(np.uint64) if word else a
    scale = a.shape[-1] // w.shape[-1]
    # first axis: count_nonzero per contiguous slab is vectorised, a reduction over axes is not
    hit = np.flatnonzero([np.count_nonzero(w[i]) for i in range(w.shape[0])])
    if hit.size == 0:
        return None
    bounds = [(int(hit[0]), int(hit[-1]) + 1)]
    if a.ndim > 1:
        slab = w[bounds[0][0]:bounds[0][1]]
        rest = np.bitwise_or.reduce(slab, axis=0) if word else (slab != 0).any(axis=0)
        for axis in range(rest.ndim):
            others = tuple(i for i in range(rest.ndim) if i != axis)
            h = np.flatnonzero((rest != 0).any(axis=others) if others else rest != 0)
            bounds.append((int(h[0]), int(h[-1]) + 1))
        lo, hi = bounds[-1]
        bounds[-1] = (lo * scale, hi * scale)
    return bounds


def _union_box(a: np.ndarray, b: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Box containing the non-zero voxels of ``a`` and ``b``, grown by ``margin`` and clipped to
    the image; None when both are all zero."""
    if a.ndim == 0:
        raise ValueError("masks must have at least one dimension")
    if a.ndim > 1 and all(x.flags.f_contiguous and not x.flags.c_contiguous for x in (a, b)):
        # nibabel often returns Fortran-ordered data: scan the transposes (C-ordered views)
        box_t = _union_box(a.T, b.T, margin)
        return None if box_t is None else box_t[::-1]
    ba, bb = _nonzero_bounds(a), _nonzero_bounds(b)
    if ba is None and bb is None:
        return None
    bounds = [x if y is None else y if x is None else (min(x[0], y[0]), max(x[1], y[1]))
              for x, y in zip(ba or [None] * a.ndim, bb or [None] * a.ndim)]
    return tuple(slice(max(lo - margin, 0), min(hi + margin, n))
                 for (lo, hi), n in zip(bounds, a.shape))


def _crop(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Label-1 masks of both inputs cropped to their union box (+1 margin); None if both empty."""
    box = _union_box(pred, gt)
    if box is None:
        return None
    return as_mask(pred[box]), as_mask(gt[box])


def _points(mask: np.ndarray) -> np.ndarray:
    """(N, ndim) float64 indices of the true voxels in C order, as ``np.argwhere`` (which is
    several times slower on large 3D masks)."""
    idx = np.unravel_index(np.flatnonzero(mask), mask.shape)
    return np.stack(idx, axis=1).astype(np.float64) if idx else np.zeros((0, mask.ndim))


class _Surfaces:
    """Contour points of both masks, computed once and shared by all distance metrics.

    The crop has a one-voxel margin: inside the image that margin is background for both masks, so
    contours computed on the crop equal contours computed on the full image (where the crop meets
    the image border, the missing neighbour is outside the image in both cases).
    """

    def __init__(self, pred: np.ndarray, gt: np.ndarray):
        self._cache: dict = {}
        crop = _crop(pred, gt)
        if crop is None:
            self.pred_pts = self.gt_pts = np.zeros((0, pred.ndim))
            self.pred_n = self.gt_n = self.tp = 0
            return
        p, g = crop
        self.pred_n, self.gt_n = int(np.count_nonzero(p)), int(np.count_nonzero(g))
        self.tp = int(np.count_nonzero(p & g))
        # index coordinates relative to the crop: differences are shift-invariant
        self.pred_pts, self.gt_pts = _points(contour(p)), _points(contour(g))

    def directed(self, spacing: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(pred->gt, gt->pred) nearest-contour distances; None when a contour is empty."""
        if len(self.pred_pts) == 0 or len(self.gt_pts) == 0:
            return None
        key = None if spacing is None else tuple(spacing)
        if key not in self._cache:
            a, b = self.pred_pts, self.gt_pts
            if spacing is not None:
                a, b = a * spacing, b * spacing
            self._cache[key] = (cKDTree(b).query(a, k=1)[0], cKDTree(a).query(b, k=1)[0])
        return self._cache[key]

    def empty_value(self) -> float:
        """Distance when a contour is empty: 0 if both are, else inf (official)."""
        both_empty = len(self.pred_pts) == 0 and len(self.gt_pts) == 0
        return 0.0 if both_empty else math.inf


def _hd95_from(s: _Surfaces, spacing: np.ndarray | None) -> float:
    d = s.directed(spacing)
    if d is None:
        return s.empty_value()
    return float(max(np.percentile(d[0], 95), np.percentile(d[1], 95)))


def _assd_from(s: _Surfaces, spacing: np.ndarray) -> float:
    d = s.directed(spacing)
    if d is None:
        return s.empty_value()
    return float((d[0].sum() + d[1].sum()) / (len(d[0]) + len(d[1])))


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None,
         units: str = "voxel") -> float:
    """95th-percentile Hausdorff distance between the contours of two masks.

    ``units="voxel"`` (default) is the official rule: voxel index units, ``spacing`` ignored.
    ``units="mm"`` is a non-official extra that scales coordinates by ``spacing`` (required).
    Both contours empty -> 0.0; exactly one empty -> inf (see the module docstring).
    """
    if units not in HD_UNITS:
        raise ValueError(f"units={units!r}; expected one of {HD_UNITS}")
    pred, gt = _check_pair(pred, gt)
    sp = _check_spacing(spacing, pred.ndim) if units == "mm" else None
    return _hd95_from(_Surfaces(pred, gt), sp)


def norm_hd(hd: float, hd_max: float = HD_MAX) -> float:
    """Official NormHD: ``hd / hd_max``, not clipped; an infinite distance gives 1.0."""
    return 1.0 if math.isinf(hd) else hd / hd_max


def assd_mm(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance in mm (non-official extra).

    Mean of all directed contour distances of both directions pooled; empty cases as HD95.
    """
    pred, gt = _check_pair(pred, gt)
    return _assd_from(_Surfaces(pred, gt), _check_spacing(spacing, pred.ndim))


def volume_difference(pred: np.ndarray, gt: np.ndarray,
                      spacing: Sequence[float]) -> tuple[float, float]:
    """(pred - gt volume in ml, relative difference (pred - gt) / gt) — non-official extras.

    The relative difference is 0.0 when both masks are empty and inf when only gt is empty.
    """
    pred, gt = _check_pair(pred, gt)
    voxel_ml = float(np.prod(_check_spacing(spacing, pred.ndim))) / 1000.0
    crop = _crop(pred, gt)
    n_pred, n_gt = (0, 0) if crop is None else (int(np.count_nonzero(c)) for c in crop)
    return _volume_terms(n_pred, n_gt, voxel_ml)


def _volume_terms(n_pred: int, n_gt: int, voxel_ml: float) -> tuple[float, float]:
    diff = (n_pred - n_gt) * voxel_ml
    if n_gt == 0:
        return diff, (0.0 if n_pred == 0 else math.inf)
    return diff, (n_pred - n_gt) / n_gt


def case_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
                 hd_units: str = "voxel", hd_max: float = HD_MAX) -> dict[str, float]:
    """All per-case metrics in one pass over the union bounding box.

    Args:
        pred, gt: masks of identical shape ``(X, Y, Z)`` (label 1 = tumour).
        spacing: mm per voxel along the same axes; used by the mm extras (and by ``hd95`` when
            ``hd_units="mm"``).
        hd_units: ``"voxel"`` (official) or ``"mm"`` (deviation) for ``hd95`` and ``norm_hd``.
        hd_max: NormHD normaliser (official 150).

    Returns:
        dict with ``dice``, ``hd95``, ``norm_hd`` (official unless ``hd_units="mm"``) and the
        non-official ``hd95_mm``, ``assd_mm``, ``volume_pred_ml``, ``volume_gt_ml``,
        ``volume_diff_ml``, ``volume_diff_rel``.
    """
    if hd_units not in HD_UNITS:
        raise ValueError(f"hd_units={hd_units!r}; expected one of {HD_UNITS}")
    pred, gt = _check_pair(pred, gt)
    sp = _check_spacing(spacing, pred.ndim)
    s = _Surfaces(pred, gt)
    n = s.pred_n + s.gt_n
    hd_mm = _hd95_from(s, sp)
    hd = hd_mm if hd_units == "mm" else _hd95_from(s, None)
    voxel_ml = float(np.prod(sp)) / 1000.0
    diff_ml, diff_rel = _volume_terms(s.pred_n, s.gt_n, voxel_ml)
    return {
        "dice": 2.0 * s.tp / n if n > 0 else 0.0,
        "hd95": hd,
        "norm_hd": norm_hd(hd, hd_max),
        "hd95_mm": hd_mm,
        "assd_mm": _assd_from(s, sp),
        "volume_pred_ml": s.pred_n * voxel_ml,
        "volume_gt_ml": s.gt_n * voxel_ml,
        "volume_diff_ml": diff_ml,
        "volume_diff_rel": diff_rel,
    }
