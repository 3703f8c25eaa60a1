"""Automatic per-case image-quality scores from the images alone (no mask), on the case's own grid.

Scores (see :func:`scores`; ``image`` is ``(C, X, Y, Z)`` with channel 0 the pre-contrast phase and
channel 1 the first post-contrast phase, the order :func:`data.mamamia.load_image` returns):

- ``snr``: mean body signal over the noise sigma. Body (:func:`body_mask`): Otsu threshold of
  ``log(1 + x)`` of the first post-contrast phase, opened by one voxel, largest component, holes
  filled. Noise: MRIQC's air-based estimate with the Rayleigh correction for magnitude images,
  ``sigma = std(air) / sqrt(2 - pi/2)`` (Dietrich et al. 2007, JMRI 26:375; MRIQC
  ``snr_dietrich``). Air (:func:`air_values`) excludes a margin around the body, the regions where
  N/2 ghosts of the body fall, and values above 4 sigma of a first estimate from the air median
  (Rayleigh median = sigma sqrt(2 ln 2)). Without usable air (fewer than ``MIN_AIR`` non-zero air
  voxels, e.g. a zero-padded or body-filling field of view) the fallback is the median absolute
  deviation of a high-pass residual inside the body (the voxel minus the mean of its 6 face
  neighbours, whose variance is ``7/6 sigma^2`` for white noise), ``sigma = 1.4826 MAD /
  sqrt(7/6)``; the key ``noise_source`` says which was used ("air" or "residual").
- ``cnr``: enhancement contrast, ``mean(post - pre)`` over the brightest 5 % of the subtraction
  inside the body, over the noise sigma.
- ``motion``: inter-phase misalignment in mm: the rigid shift between the body-outline map of each
  phase and that of the first post-contrast phase, by phase correlation (upsampled 10x,
  skimage.registration.phase_cross_correlation), converted to mm with the spacing; the largest over
  the phases present.
- ``ghosting``: ghost-to-signal ratio (MRIQC's GSR, adapted): the body mask shifted by N/2 along an
  axis, minus the (dilated) body, is the ghost region; ghost signal over the body mean. "Mean there
  minus background" is taken on squares (Rician second moment), ``sqrt(m2(ghost) - m2(air))``,
  with both mean squares trimmed at their 95th percentile and the air samples those of the noise
  estimate (see :func:`ghost_ratio`).
  The phase-encode axis is not known from the image, so every axis is tried and the largest ratio is
  kept (an axis whose ghost region is smaller than ``MIN_GHOST`` voxels is skipped).
- ``blur``: effective edge width in mm at the body outline: the 10-90 % rise distance of the mean
  intensity profile sampled along the outward normal of the outline (for a step blurred by a
  Gaussian of sigma s this is 2.563 s). Higher = blurrier. It also reflects the anatomy at the
  outline: on the phantom, fat-suppressed scans (dark fat under a thin bright skin) read sharper.
- ``quality``: composite over a dataset, higher is better: per center, robust z-scores
  ``(x - median) / (1.4826 MAD)`` of each score, signed so that higher is better (snr, cnr up;
  motion, ghosting, blur down), clipped to [-5, 5], averaged over the finite ones.
"""
from __future__ import annotations

import argparse
import csv
import io as _io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

CODE_VERSION = 5
SCORES = ("snr", "cnr", "motion", "ghosting", "blur")
COLUMNS = ("patient_id", "center") + SCORES + ("quality",)
# +1: higher is better, -1: lower is better (the sign of each score in the composite)
DIRECTION = {"snr": 1, "cnr": 1, "motion": -1, "ghosting": -1, "blur": -1}
RAYLEIGH_STD = math.sqrt(2.0 - math.pi / 2.0)   # std of a Rayleigh variable / sigma (Dietrich 2007)
MAD_TO_SIGMA = 1.4826                           # Gaussian: sigma = 1.4826 MAD
MIN_AIR = 1000          # non-zero air voxels needed for the air-based noise estimate
MIN_GHOST = 100         # voxels needed in a ghost region
BODY_MARGIN = 3         # voxels between the body and the air / ghost regions
GHOST_TRIM = 0.95      # quantile above which ghost/air samples are dropped
TOP_FRACTION = 0.05     # brightest part of the subtraction used for the CNR
Z_CLIP = 5.0


# ----------------------------------------------------------------------------- masks
def body_mask(vol: np.ndarray) -> np.ndarray:
    """Otsu foreground of ``log(1 + vol)``, opened by one voxel: its largest connected component
    with holes filled."""
    from skimage.filters import threshold_otsu
    v = np.asarray(vol, np.float32)
    if not np.isfinite(v).all() or v.max() <= v.min():
        return np.zeros(v.shape, bool)
    # Otsu on log intensities: air (noise level) against all tissue, whatever its contrast (on raw
    # intensities a bright enhancing heart pushes the threshold above the fat and muscle);
    # opened (one voxel) so that noise voxels above the threshold do not fray the outline
    lv = np.log1p(np.maximum(v - v.min(), 0))
    m = ndimage.binary_opening(lv > threshold_otsu(lv))
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        m = lab == int(sizes.argmax())
    return ndimage.binary_fill_holes(m)


def _ghost_regions(body: np.ndarray, grown: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Per axis: the body shifted by N/2 along it (either way: the same for a roll of N/2), minus
    the grown body."""
    return [(ax, np.roll(body, body.shape[ax] // 2, axis=ax) & ~grown) for ax in range(body.ndim)]


def _grow(body: np.ndarray, it: int = BODY_MARGIN) -> np.ndarray:
    return ndimage.binary_dilation(body, iterations=it) if body.any() else body


# ----------------------------------------------------------------------------- noise
def air_values(vol: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Background noise samples: voxels outside the body grown by :data:`BODY_MARGIN`, outside the
    N/2 ghost regions of every axis, non-zero (zero padding is not noise), and trimmed of what is
    not noise (other ghosts, stray tissue): the Rayleigh median is sigma sqrt(2 ln 2), values above
    4 such sigmas are dropped (the Rayleigh tail there is e^-8)."""
    air = ~_grow(body)
    for _, g in _ghost_regions(body, _grow(body, 1)):
        air &= ~_grow(g, 2)
    vals = vol[air]
    vals = vals[vals != 0]
    if vals.size:
        rough = float(np.median(vals)) / math.sqrt(2 * math.log(2))
        vals = vals[vals <= 4 * rough]
    return vals


def noise_sigma(vol: np.ndarray, body: np.ndarray, air=None) -> tuple[float, str]:
    """Noise sigma of a magnitude image and how it was found ("air" or "residual"); see the
    module docstring."""
    vals = air_values(vol, body) if air is None else air
    if vals.size >= MIN_AIR:
        return float(vals.std() / RAYLEIGH_STD), "air"
    return residual_sigma(vol, body), "residual"


def residual_sigma(vol: np.ndarray, body: np.ndarray) -> float:
    """Noise sigma from a high-pass residual inside the body: ``r = x - mean(6 face neighbours)``
    has variance ``(1 + 1/6) sigma^2`` for white noise, so ``sigma = 1.4826 MAD(r) / sqrt(7/6)``.
    Texture and edges inflate it, so the body is eroded first (3 voxels)."""
    v = np.asarray(vol, np.float32)
    k = np.zeros((3, 3, 3), np.float32)
    k[0, 1, 1] = k[2, 1, 1] = k[1, 0, 1] = k[1, 2, 1] = k[1, 1, 0] = k[1, 1, 2] = 1 / 6
    r = v - ndimage.convolve(v, k, mode="nearest")
    inner = ndimage.binary_erosion(body, iterations=3)
    if inner.sum() < 10:
        inner = body
    x = r[inner]
    if x.size == 0:
        return float("nan")
    return float(MAD_TO_SIGMA * np.median(np.abs(x - np.median(x))) / math.sqrt(7 / 6))


# ----------------------------------------------------------------------------- scores
def _outline(body: np.ndarray) -> np.ndarray:
    """A smooth map of the body outline (gradient magnitude of the blurred mask)."""
    return ndimage.gaussian_gradient_magnitude(body.astype(np.float32), 1.0)


def motion_mm(image: np.ndarray, spacing, ref: int = 1, bodies=None) -> float:
    """Largest rigid shift (mm) between any phase's body outline and that of phase ``ref``, by
    phase correlation (skimage.registration.phase_cross_correlation, upsample 10)."""
    from skimage.registration import phase_cross_correlation
    if image.shape[0] < 2:
        return float("nan")
    bodies = bodies if bodies is not None else [body_mask(c) for c in image]
    edges = [_outline(b) for b in bodies]
    sp = np.asarray(spacing, float)
    worst = 0.0
    for c in range(image.shape[0]):
        if c == ref or not bodies[c].any():
            continue
        shift, _, _ = phase_cross_correlation(edges[ref], edges[c], upsample_factor=10,
                                              normalization=None)
        worst = max(worst, float(np.linalg.norm(np.asarray(shift) * sp)))
    return worst


def _trimmed_m2(x: np.ndarray) -> float:
    """Mean square of ``x`` below its :data:`GHOST_TRIM` quantile."""
    x = np.asarray(x, np.float64)
    x = x[x <= np.quantile(x, GHOST_TRIM)]
    return float(np.mean(np.square(x)))


def ghost_ratio(vol: np.ndarray, body: np.ndarray, air=None) -> tuple[float, int]:
    """GSR (MRIQC, adapted) and the axis it was found on; see the module docstring.

    For a magnitude image ``E[M^2] = A^2 + 2 sigma^2`` (Rician second moment, Gudbjartsson & Patz
    1995), so the ghost signal is ``A = sqrt(max(m2(ghost) - m2(air), 0))``: "mean there minus
    background" on squares, which is unbiased near the noise floor where a plain mean difference
    underestimates ghosts. ``m2`` is the mean square below the region's 95th percentile (the same
    trimming in both regions), which drops bright tissue and other ghosts falling in the region.
    The background samples are those of the noise estimate (:func:`air_values`, ``air`` if given):
    already cleared of values above 4 Rayleigh sigmas, so stray tissue cut off by the field of
    view and cardiac ghosts in the air do not outweigh the ghost (on a 200-case phantom the raw air
    gave a zero ratio for 28 % of the cases, these samples for 6 %)."""
    regions = _ghost_regions(body, _grow(body))
    air_vals = air_values(vol, body) if air is None else air
    bg = _trimmed_m2(air_vals) if air_vals.size >= MIN_GHOST else 0.0
    signal = float(vol[body].mean())
    best, best_ax = float("nan"), -1
    for ax, g in regions:
        if g.sum() < MIN_GHOST:
            continue
        r = math.sqrt(max(_trimmed_m2(vol[g]) - bg, 0.0)) / signal
        if not best >= r:
            best, best_ax = r, ax
    return best, best_ax


def edge_width_mm(vol: np.ndarray, body: np.ndarray, spacing, n_points: int = 3000,
                  half_mm: float = 8.0, step_mm: float = 0.25) -> float:
    """10-90 % rise distance (mm) of the mean profile across the body outline, sampled along the
    outward normal (from the gradient of the blurred mask, in mm) with linear interpolation."""
    sp = np.asarray(spacing, float)
    edge = body & ~ndimage.binary_erosion(body)
    pts = np.argwhere(edge)
    if len(pts) < 10:
        return float("nan")
    if len(pts) > n_points:
        pts = pts[np.random.default_rng(0).choice(len(pts), n_points, replace=False)]
    smooth = ndimage.gaussian_filter(body.astype(np.float32), 1.5 / sp * sp.min())
    grads = np.stack([ndimage.sobel(smooth, axis=a) / sp[a] for a in range(3)])
    g = grads[:, pts[:, 0], pts[:, 1], pts[:, 2]].T          # (P, 3), per mm
    norm = np.linalg.norm(g, axis=1)
    keep = norm > 1e-6
    pts, g = pts[keep], g[keep] / norm[keep, None]
    if len(pts) < 10:
        return float("nan")
    normal_vox = -g / sp                                     # outward, voxels per mm
    t = np.arange(-half_mm, half_mm + 1e-9, step_mm)
    coords = pts[:, None, :] + t[None, :, None] * normal_vox[:, None, :]   # (P, T, 3)
    prof = ndimage.map_coordinates(np.asarray(vol, np.float32), coords.reshape(-1, 3).T, order=1,
                                   mode="nearest").reshape(len(pts), len(t))
    mean = prof.mean(0)
    inside = mean[t <= -0.6 * half_mm].mean()
    outside = mean[t >= 0.6 * half_mm].mean()
    if not inside > outside:
        return float("nan")
    f = (mean - outside) / (inside - outside)                # 1 inside -> 0 outside
    # from the centre outwards: the last crossing of 0.9 before and the first of 0.1 after
    c = int(np.argmin(np.abs(t)))

    def cross(level: float, forward: bool) -> float:
        idx = range(c, len(t) - 1) if forward else range(c, 0, -1)
        for i in idx:
            j = i + 1 if forward else i - 1
            a, b = f[i], f[j]
            if (a - level) * (b - level) <= 0 and a != b:
                return float(t[i] + (level - a) / (b - a) * (t[j] - t[i]))
        return float("nan")

    t10 = cross(0.1, True) if f[c] > 0.1 else cross(0.1, False)
    t90 = cross(0.9, False) if f[c] < 0.9 else cross(0.9, True)
    return abs(t10 - t90)


def scores(image: np.ndarray, spacing) -> dict:
    """Quality scores of one case: ``image`` ``(C, X, Y, Z)`` (channel 0 pre-contrast, channel 1
    the first post-contrast phase), ``spacing`` in mm in the same axis order. Returns the
    :data:`SCORES` plus ``noise_sigma``, ``noise_source``, ``ghost_axis`` (NaN where a score is
    undefined: one phase has no CNR nor motion)."""
    image = np.asarray(image, np.float32)
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {image.shape}")
    ref = 1 if image.shape[0] > 1 else 0
    vol = image[ref]
    bodies = [body_mask(c) for c in image]
    body = bodies[ref]
    nan = float("nan")
    if not body.any():
        return dict(snr=nan, cnr=nan, motion=nan, ghosting=nan, blur=nan, noise_sigma=nan,
                    noise_source="none", ghost_axis=-1)
    air = air_values(vol, body)
    sigma, source = noise_sigma(vol, body, air)
    snr = float(vol[body].mean()) / sigma if sigma > 0 else nan
    if image.shape[0] > 1:
        sub = (image[1] - image[0])[body]
        top = sub[sub >= np.quantile(sub, 1 - TOP_FRACTION)]
        cnr = float(top.mean()) / sigma if sigma > 0 else nan
    else:
        cnr = nan
    ghost, ax = ghost_ratio(vol, body, air)
    return dict(snr=snr, cnr=cnr, motion=motion_mm(image, spacing, ref, bodies), ghosting=ghost,
                blur=edge_width_mm(vol, body, spacing), noise_sigma=sigma, noise_source=source,
                ghost_axis=int(ax))


# ----------------------------------------------------------------------------- composite
def composite(rows: list[dict], key: str = "center") -> list[float]:
    """Per-``key`` robust z-scores of :data:`SCORES`, signed by :data:`DIRECTION`, clipped to
    +-:data:`Z_CLIP`, averaged over the finite ones (NaN where none is); MAD 0 gives z = 0."""
    out = [float("nan")] * len(rows)
    groups: dict = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.get(key), []).append(i)
    for idx in groups.values():
        zs = []
        for s in SCORES:
            x = np.array([_num(rows[i].get(s)) for i in idx], float)
            fin = np.isfinite(x)
            z = np.full(x.shape, np.nan)
            if fin.any():
                med = np.median(x[fin])
                mad = MAD_TO_SIGMA * np.median(np.abs(x[fin] - med))
                z[fin] = 0.0 if mad <= 0 else np.clip(DIRECTION[s] * (x[fin] - med) / mad, -Z_CLIP, Z_CLIP)
            zs.append(z)
        zs = np.stack(zs)
        for j, i in enumerate(idx):
            col = zs[:, j]
            col = col[np.isfinite(col)]
            out[i] = float(col.mean()) if col.size else float("nan")
    return out


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# ----------------------------------------------------------------------------- dataset
def _case_key(case) -> dict:
    files = []
    for p in case.phase_paths:
        st = os.stat(p)
        files.append([Path(p).name, st.st_size, st.st_mtime_ns])
    return {"code_version": CODE_VERSION, "files": files}


def _cache_path(cache_dir, case) -> Path:
    from data.io import safe_name
    return Path(cache_dir) / f"{safe_name(case.patient_id)}.json"


def _score_case(args) -> dict:
    case, cache_dir = args
    from data import mamamia
    from data.io import atomic_write_text
    key = _case_key(case)
    if cache_dir is not None:
        path = _cache_path(cache_dir, case)
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached["scores"]
        except (OSError, ValueError, AttributeError):
            pass
    t0 = time.perf_counter()
    image, spacing, _ = mamamia.load_image(case)       # its errors name the file at fault
    try:
        s = scores(image, spacing)
    except ValueError as exc:
        raise ValueError(f"{case.patient_id} ({case.phase_paths[0].parent}): {exc}") from exc
    s["seconds"] = round(time.perf_counter() - t0, 3)
    if cache_dir is not None:
        atomic_write_text(_cache_path(cache_dir, case), json.dumps({"key": key, "scores": s}))
    return s


def score_dataset(cases, workers: int = 1, progress: bool = False, cache_dir=None) -> list[dict]:
    """One dict per case (input order): ``patient_id``, ``center``, the scores of :func:`scores`
    and ``quality`` (:func:`composite` per center over these cases). With ``cache_dir``, each
    case's scores are stored there and reused while its phase files (sizes, mtimes) and
    :data:`CODE_VERSION` are unchanged."""
    from data.workers import process_map
    cases = list(cases)
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    results = process_map(_score_case, [(c, cache_dir) for c in cases], workers, "quality", progress)
    rows = [{"patient_id": c.patient_id, "center": c.center, **r} for c, r in zip(cases, results)]
    for r, q in zip(rows, composite(rows)):
        r["quality"] = q
    return rows


def summary(rows: list[dict]) -> str:
    """Median of each score per center, as a text table."""
    cols = SCORES + ("quality",)
    centers = sorted({str(r["center"]) for r in rows})
    lines = [f"{'center':<12}{'n':>4}" + "".join(f"{c:>10}" for c in cols)]
    for c in centers:
        sel = [r for r in rows if str(r["center"]) == c]
        meds = []
        for k in cols:
            x = np.array([_num(r.get(k)) for r in sel])
            x = x[np.isfinite(x)]
            meds.append(f"{np.median(x):>10.3f}" if x.size else f"{'nan':>10}")
        lines.append(f"{c:<12}{len(sel):>4}" + "".join(meds))
    return "\n".join(lines)


def write_csv(rows: list[dict], path) -> Path:
    from data.io import atomic_write_text
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r["patient_id"], r["center"]] +
                   [f"{_num(r.get(k)):.6g}" for k in SCORES + ("quality",)])
    return atomic_write_text(path, buf.getvalue())


HELP = """\
scores (one row per case, on the case's own grid, no mask needed):
  snr       mean body signal / noise sigma; body = Otsu of the first post-contrast phase; sigma from
            air: std / sqrt(2 - pi/2) (Rayleigh correction, Dietrich 2007 / MRIQC snr_dietrich);
            without usable air, from the MAD of a high-pass residual inside the body
  cnr       mean of (post - pre) over the brightest 5 % of the subtraction in the body / sigma
  motion    mm, largest rigid shift between a phase's body outline and the first post-contrast
            phase's (phase correlation); 0 = aligned
  ghosting  ghost-to-signal ratio: signal where the body lands shifted by N/2, background
            removed on squares, sqrt(m2(ghost) - m2(air)), over the body mean; the largest over
            the axes; 0 = none
  blur      mm, 10-90 % edge width of the mean profile across the body outline; higher = blurrier
  quality   per center: mean of robust z-scores (median/MAD) of the scores, signed so that higher
            is better (snr, cnr up; motion, ghosting, blur down)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.quality", description=__doc__.splitlines()[0],
                                 epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="MAMA-MIA folder (default: the embedded phantom dataset)")
    ap.add_argument("--out", default="quality.csv", help="CSV to write (default: %(default)s); box "
                    "plots (quality_<score>.png) and the score cache (quality_cache/) go next to it")
    ap.add_argument("--workers", type=int, default=1, help="processes (default: %(default)s)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--validate", action="store_true", help="phantom datasets only: also print the "
                    "Spearman rank correlation of each score with the cause the phantom added "
                    "(data.quality_validate)")
    args = ap.parse_args(argv)
    from data import mamamia, plots
    if args.data is None:
        from data.phantom import default_dataset
        root = default_dataset(progress=not args.no_progress)
    else:
        root = Path(args.data)
    cases = mamamia.load_dataset(root)
    if not cases:
        raise SystemExit(f"{root}: no cases found")
    latents = None
    if args.validate:
        from data import quality_validate
        try:
            latents = quality_validate.read_latents(root)
        except FileNotFoundError as exc:
            raise SystemExit(str(exc)) from exc
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = score_dataset(cases, args.workers, not args.no_progress, out.parent / "quality_cache")
    write_csv(rows, out)
    for s in SCORES + ("quality",):
        plots.metric_distributions(rows, "center", [s], out.parent / f"{out.stem}_{s}.png",
                                   title=f"{s} by center")
    print(summary(rows))
    print(f"{len(rows)} cases in {time.perf_counter() - t0:.1f} s -> {out}")
    if latents is not None:
        print("\nSpearman rank correlation of each score with its known cause (sign-adjusted; "
              "within = median over centers):")
        print(quality_validate.format_table(quality_validate.validate(rows, latents)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
