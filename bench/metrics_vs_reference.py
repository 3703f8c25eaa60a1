"""Per-case Dice / HD95 / NormHD: core.metrics against the challenge's way of computing them.

The peer follows the official MAMA-MIA scoring (``src/challenge/metrics.py`` of
LidiaGarrucho/MAMA-MIA): full-volume TP/FP/FN/TN counts, SimpleITK ``LabelContour`` on uint8
images without spacing, ``np.argwhere`` of the contour voxels, two ``scipy.spatial.cKDTree``
queries and ``np.percentile(..., 95)``. Written independently here for the comparison.

Cases are full-scale (448 x 448 x 160 voxels, 0.7 x 0.7 x 1.0 mm, DUKE-like): a lobulated tumour of
5-60 mm and a perturbed prediction (dilated, eroded, shifted, with false-positive islands, or
empty). ``data.phantom`` is used when it offers ``full_scale_masks(seed)``; otherwise the masks
are drawn here. Values must agree to 1e-9 and ours should be at least 5x faster.

Run: ``.venv/bin/python bench/metrics_vs_reference.py [--cases 20] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core import metrics  # noqa: E402

SHAPE = (448, 448, 160)
SPACING = (0.7, 0.7, 1.0)


# ----------------------------------------------------------------------------- peer

def peer_case(pred: np.ndarray, gt: np.ndarray, spacing) -> dict:
    """Official-style per-case metrics (plus HD95 in mm from the same contour points)."""
    import SimpleITK as sitk

    ref, prd = gt == 1, pred == 1
    tp = np.sum(ref & prd)
    fp = np.sum(~ref & prd)
    fn = np.sum(ref & ~prd)
    _tn = np.sum(~ref & ~prd)  # the official code counts it too
    dice = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0

    def points(m):
        c = sitk.GetArrayFromImage(sitk.LabelContour(sitk.GetImageFromArray(m.astype(np.uint8))))
        return np.argwhere(c > 0)

    a, b = points(gt), points(pred)
    if len(a) == 0 or len(b) == 0:
        hd = hd_mm = 0.0 if len(a) == len(b) else math.inf
    else:
        def p95(x, y):
            fwd, bwd = cKDTree(x).query(y, k=1)[0], cKDTree(y).query(x, k=1)[0]
            return max(np.percentile(fwd, 95), np.percentile(bwd, 95))
        hd = p95(a, b)
        s = np.asarray(spacing, float)
        hd_mm = p95(a * s, b * s)
    return {"dice": float(dice), "hd95": float(hd),
            "norm_hd": hd / 150.0 if hd != math.inf else 1.0, "hd95_mm": float(hd_mm)}


def check_contours(n: int = 40, seed: int = 0) -> None:
    """core.metrics.contour == SimpleITK LabelContour on small random blobs touching the borders."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    for i in range(n):
        m = ndimage.gaussian_filter(rng.standard_normal((12, 10, 9)), 1.2) > rng.uniform(-0.3, 0.3)
        ref = sitk.GetArrayFromImage(sitk.LabelContour(sitk.GetImageFromArray(m.astype(np.uint8))))
        if not np.array_equal(metrics.contour(m), ref > 0):
            raise SystemExit(f"contour differs from SimpleITK LabelContour on random volume {i}")
    print(f"contour equals SimpleITK LabelContour on {n} random volumes (blobs touch the borders)")


# ----------------------------------------------------------------------------- cases

def _lobulated(rng: np.random.Generator, diameter_mm: float, spacing) -> np.ndarray:
    """Boolean blob in its own small box: a sphere whose radius varies with a few lobes."""
    r_mm = diameter_mm / 2
    half = np.ceil(1.4 * r_mm / np.asarray(spacing)).astype(int) + 1
    g = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    rad = np.sqrt(sum(x ** 2 for x in g)) + 1e-9
    u = [x / rad for x in g]
    bump = np.zeros_like(rad)
    for _ in range(4):  # smooth lobes: cosines of the angle to random directions
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        bump += rng.uniform(0.05, 0.15) * np.cos(rng.integers(2, 5) * np.arccos(
            np.clip(u[0] * d[0] + u[1] * d[1] + u[2] * d[2], -1, 1)))
    return rad <= r_mm * (1 + bump)


def _place(vol: np.ndarray, blob: np.ndarray, center) -> None:
    lo = [c - s // 2 for c, s in zip(center, blob.shape)]
    sl_v, sl_b = [], []
    for l, s, n in zip(lo, blob.shape, vol.shape):
        a, b = max(l, 0), min(l + s, n)
        sl_v.append(slice(a, b))
        sl_b.append(slice(a - l, b - l))
    vol[tuple(sl_v)] |= blob[tuple(sl_b)]


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(pred, gt, kind) uint8 volumes of SHAPE; the perturbation cycles through five kinds and
    every twentieth prediction is empty."""
    rng = np.random.default_rng(seed)
    blob = _lobulated(rng, rng.uniform(5, 60), SPACING)
    center = [int(rng.integers(n // 4, 3 * n // 4)) for n in SHAPE]
    gt = np.zeros(SHAPE, bool)
    _place(gt, blob, center)
    kind = ("dilated", "eroded", "shifted", "islands", "shifted+dilated")[seed % 5]
    if seed % 20 == 19:
        kind = "empty"  # one case in twenty: HD inf, NormHD 1
    box = tuple(slice(max(c - s, 0), c + s) for c, s in zip(center, blob.shape))
    pred = np.zeros(SHAPE, bool)
    if kind == "dilated":
        pred[box] = ndimage.binary_dilation(gt[box], iterations=int(rng.integers(1, 4)))
    elif kind == "eroded":
        pred[box] = ndimage.binary_erosion(gt[box], iterations=int(rng.integers(1, 3)))
    elif kind.startswith("shifted"):
        pred = np.roll(gt, tuple(int(v) for v in rng.integers(-4, 5, 3)), axis=(0, 1, 2))
        if kind.endswith("dilated"):
            pred[box] = ndimage.binary_dilation(pred[box])
    elif kind == "islands":
        pred[:] = gt
        for _ in range(int(rng.integers(1, 4))):
            isl = _lobulated(rng, rng.uniform(3, 12), SPACING)
            _place(pred, isl, [int(rng.integers(20, n - 20)) for n in SHAPE])
    return pred.astype(np.uint8), gt.astype(np.uint8), kind


def _phantom_cases():
    """``data.phantom.full_scale_masks(seed) -> (pred, gt, kind)`` when that function exists."""
    try:
        from data import phantom  # noqa: PLC0415
    except ImportError:
        return None
    return getattr(phantom, "full_scale_masks", None)


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    make = _phantom_cases() or make_case
    print(f"cases from {'data.phantom' if make is not make_case else 'bench generator'}; "
          f"shape {SHAPE}, spacing {SPACING}")

    check_contours()
    t_ours = t_peer = 0.0
    worst = 0.0
    for i in range(args.cases):
        pred, gt, kind = make(args.seed + i)
        # interleave the order so caches and frequency scaling favour neither side
        order = ("ours", "peer") if i % 2 == 0 else ("peer", "ours")
        res = {}
        for who in order:
            t0 = time.perf_counter()
            res[who] = (metrics.case_metrics(pred, gt, SPACING) if who == "ours"
                        else peer_case(pred, gt, SPACING))
            dt = time.perf_counter() - t0
            if who == "ours":
                t_ours += dt
            else:
                t_peer += dt
        ours, peer = res["ours"], res["peer"]
        for k in ("dice", "hd95", "norm_hd", "hd95_mm"):
            a, b = ours[k], peer[k]
            diff = 0.0 if (math.isinf(a) and math.isinf(b)) else abs(a - b)
            worst = max(worst, diff)
            if not diff <= 1e-9:
                raise SystemExit(f"case {i} ({kind}): {k} ours {a!r} != peer {b!r}")
        print(f"case {i:2d} {kind:16s} gt {int(gt.sum()):7d} vox  dice {ours['dice']:.4f}  "
              f"hd95 {ours['hd95']:8.3f} vox  {ours['hd95_mm']:8.3f} mm  normhd {ours['norm_hd']:.4f}")

    ratio = t_peer / t_ours
    print(f"all {args.cases} cases equal to 1e-9 (largest difference {worst:.3g})")
    print(f"ours {t_ours:.3f} s  peer {t_peer:.3f} s  ({t_ours / args.cases * 1000:.1f} vs "
          f"{t_peer / args.cases * 1000:.1f} ms per case)  speed-up {ratio:.2f}x")
    print(json.dumps({"bench": "metrics_vs_reference", "ours": round(t_ours, 4),
                      "peer": round(t_peer, 4), "unit": "s per 20 cases" if args.cases == 20
                      else f"s per {args.cases} cases", "ratio": round(ratio, 2), "goal": 5,
                      "device": f"cpu ({os.cpu_count()} cores)"}))


if __name__ == "__main__":
    main()
