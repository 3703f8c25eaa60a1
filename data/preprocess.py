"""Preprocessing shared by training and inference, and its exact inverse for predictions.

``preprocess(case, plan)`` = load the plan's phases -> crop to the nonzero box -> normalise ->
resample to the plan's spacing; it returns the array, the mask (when present) and a ``CaseMeta``
with everything needed to put a prediction back on the original grid (``restore``).

The order crop -> normalise -> resample is nnU-Net v2's (DefaultPreprocessor): statistics are
taken on the original voxels, not on interpolated ones.

Resampling (nnU-Net v2 rules, nnunetv2/preprocessing/resampling/default_resampling.py): images with cubic interpolation, masks
by linear interpolation of the (one-hot) mask then threshold 0.5; when the spacing anisotropy
exceeds 3 the coarse axis is resampled separately with nearest-neighbour (images and masks).
Cubic interpolation here is Keys' cubic convolution (a = -0.5, which reproduces linear and
quadratic signals exactly) applied separably, one axis at a time as four gathers and a weighted
sum in torch, with edge replication like scikit-image's ``mode="edge"``; it is several times
faster than spline resampling of the whole volume and agrees with it to a correlation above
0.999 (bench/preprocess_vs_nnunet.py).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core import plan as planlib
from data import mamamia

log = logging.getLogger(__name__)

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net v2: separate z resampling when max/min spacing > 3
# nnU-Net v2 ZScoreNormalization uses max(std, 1e-8); a constant channel would be blown up to
# noise, so we instead define a constant channel to normalise to all zeros (and warn).
MIN_STD = 1e-8
# above this magnitude float32 squares (and sums of squares) lose range; statistics of such
# channels are taken on a copy scaled by a power of two
SCALE_ABOVE = 2.0 ** 60


@dataclass(frozen=True)
class CaseMeta(planlib.Settings):
    """How a preprocessed case relates to its original grid."""

    patient_id: str
    original_shape: tuple[int, int, int]
    original_spacing: tuple[float, float, float]
    affine: tuple[tuple[float, ...], ...]       # reference-phase affine (4x4)
    crop_box: tuple[tuple[int, int], ...]        # [start, stop) per axis in the original grid
    cropped_shape: tuple[int, int, int]
    target_spacing: tuple[float, float, float]
    resampled_shape: tuple[int, int, int]
    reference_path: str | None = None
    separate_z: bool = True



# ----------------------------------------------------------------------------- crop

def nonzero_box(image: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Bounding box ``[start, stop)`` per spatial axis of voxels nonzero in any channel."""
    nz = np.any(image != 0, axis=0)
    if not nz.any():
        return tuple((0, s) for s in nz.shape)
    box = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.flatnonzero(nz.any(axis=other))
        box.append((int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def crop(array: np.ndarray, box) -> np.ndarray:
    return array[(slice(None),) + tuple(slice(a, b) for a, b in box)]


# ----------------------------------------------------------------------------- normalise

def zscore(image: np.ndarray, mode: str = "zscore", mask: np.ndarray | None = None) -> np.ndarray:
    """Z-score ``(C, X, Y, Z)`` per channel (``"zscore"``) or with one mean/std pooled over all
    channels (``"zscore_joint"``, which keeps the relative enhancement between DCE phases).

    ``mask``: voxels used for the statistics (nnU-Net uses the nonzero region when cropping
    removed more than 25 % of the volume). A channel with std < 1e-8 becomes all zeros.
    """
    if mode == "none":
        return image.astype(np.float32, copy=False)
    if mode not in ("zscore", "zscore_joint"):
        raise ValueError(f"normalisation must be zscore, zscore_joint or none, got {mode!r}")
    out = np.empty(image.shape, np.float32)
    sel = (lambda a: a[mask]) if mask is not None else (lambda a: a.ravel())

    def moments(a: np.ndarray) -> tuple[float, float]:
        # float64 accumulation without float64 copies of the volume: mean, then the sum of
        # squared deviations of a float32 difference (two passes, numerically like np.std).
        # Squares overflow float32 beyond |x| ~ 1.8e19 (a 2x2 spike of 1e30 made std inf and
        # the phase zeros), so such input is first scaled by a power of two, which is exact.
        n = max(a.size, 1)
        if not a.size:
            return 0.0, 0.0
        big = max(abs(float(a.max())), abs(float(a.min())))
        exp = 0
        if big > SCALE_ABOVE:
            exp = int(np.frexp(big)[1])
            a = a * np.float32(2.0 ** -exp)
        m = float(a.mean(dtype=np.float64))
        d = np.subtract(a, np.float32(m), dtype=np.float32)
        corr = float(d.sum(dtype=np.float64)) / n           # removes the float32 rounding of m
        np.square(d, out=d)
        sd = max(float(d.sum(dtype=np.float64)) / n - corr * corr, 0.0) ** 0.5
        return math.ldexp(m + corr, exp), math.ldexp(sd, exp)

    if mode == "zscore_joint":
        parts = [sel(c) for c in image]
        sums = [moments(a) + (a.size,) for a in parts]
        n = sum(k for _, _, k in sums) or 1
        m = sum(mu * k for mu, _, k in sums) / n
        var = sum(k * (sd * sd + (mu - m) ** 2) for mu, sd, k in sums) / n
        stats = [(m, var ** 0.5)] * image.shape[0]
    else:
        stats = [moments(sel(c)) for c in image]
    for i, (m, s) in enumerate(stats):
        if s < MIN_STD:
            log.warning("channel %d is constant (std %.3g): normalised to zeros", i, s)
            out[i] = 0.0
        elif max(abs(m), s) > SCALE_ABOVE:
            # x - m can overflow float32 when both are near its limit: scale, as in moments()
            e = int(np.frexp(max(abs(m), s))[1])
            np.multiply(image[i], np.float32(2.0 ** -e), out=out[i], dtype=np.float32)
            out[i] -= np.float32(math.ldexp(m, -e))
            out[i] /= np.float32(math.ldexp(s, -e))
        else:
            out[i] = (image[i] - m) / s
    return out


def clahe(image: np.ndarray, clip_limit: float = 1.5, tiles: int = 16) -> np.ndarray:
    """Per-slice (axis Z) contrast-limited adaptive histogram equalisation, per channel.

    ``clip_limit`` is in OpenCV's convention (multiple of the mean bin count, 1.5 with 16x16
    tiles as seed A); scikit-image normalises by the tile area times the 256 bins, hence /256.
    Output in [0, 1].
    """
    from skimage import exposure

    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[0]):
        ch = image[c].astype(np.float32)
        lo, hi = np.percentile(ch, [0.5, 99.5])
        ch = np.clip((ch - lo) / max(hi - lo, 1e-8), 0, 1)
        kernel = (max(ch.shape[0] // tiles, 1), max(ch.shape[1] // tiles, 1))
        for z in range(ch.shape[2]):
            out[c, :, :, z] = exposure.equalize_adapthist(ch[:, :, z], kernel_size=kernel,
                                                          clip_limit=clip_limit / 256, nbins=256)
    return out


# ----------------------------------------------------------------------------- resample

def target_shape(shape, spacing, target_spacing) -> tuple[int, int, int]:
    """nnU-Net: new_shape = round(shape * spacing / target_spacing)."""
    return tuple(max(1, int(round(s * sp / t))) for s, sp, t in zip(shape, spacing, target_spacing))


def _interp_axes(x: torch.Tensor, size: tuple[int, int], axes: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize two spatial axes of ``x`` (C, X, Y, Z) with a 2D kernel, batching over the rest."""
    perm = [0] + [a + 1 for a in range(3) if a not in axes] + [a + 1 for a in axes]
    y = x.permute(*perm)
    lead = y.shape[:2]
    y = y.reshape(-1, 1, *y.shape[2:])
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    y = F.interpolate(y, size=size, mode=mode, **kw)
    y = y.reshape(*lead, *size)
    inv = np.argsort(perm)
    return y.permute(*inv).contiguous()


KEYS_A = -0.5  # Keys (1981): the only a for which cubic convolution is third-order accurate


def _keys(t: torch.Tensor) -> torch.Tensor:
    t = t.abs()
    a = KEYS_A
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def cubic_axis(x: torch.Tensor, axis: int, n_out: int) -> torch.Tensor:
    """Resize one axis of ``x`` to ``n_out`` samples with cubic convolution, pixel-centre
    aligned (output i samples input (i + 0.5) * n_in / n_out - 0.5), edges replicated."""
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    pos = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    base = torch.floor(pos)
    out = None
    for k in (-1, 0, 1, 2):
        idx = base + k
        w = _keys(pos - idx).to(x.dtype)
        src = x.index_select(axis, idx.clamp(0, n_in - 1).long())
        shape = [1] * x.dim()
        shape[axis] = n_out
        term = src * w.view(shape)
        out = term if out is None else out.add_(term)
    return out


def _spline(array: np.ndarray, new_shape, separate_axis: int | None) -> np.ndarray:
    """Order-3 B-spline resampling, pixel-centre aligned with replicated edges: what nnU-Net's
    ``resize(order=3, mode='edge', anti_aliasing=False)`` computes (scikit-image calls
    ``ndimage.zoom(grid_mode=True)``); a separate axis goes after the others with order 0."""
    from scipy import ndimage

    out = np.empty((array.shape[0],) + tuple(new_shape), np.float32)
    for c, ch in enumerate(np.asarray(array, np.float32)):
        zoom = [n / o if a != separate_axis else 1.0 for a, (n, o) in enumerate(zip(new_shape, ch.shape))]
        ch = ndimage.zoom(ch, zoom, order=3, mode="nearest", grid_mode=True)
        if separate_axis is not None:
            zoom = [1.0 if a != separate_axis else new_shape[a] / ch.shape[a] for a in range(3)]
            ch = ndimage.zoom(ch, zoom, order=0, mode="nearest", grid_mode=True)
        out[c] = ch
    return out


def resample(array: np.ndarray, new_shape, is_mask: bool = False, separate_axis: int | None = None,
             method: str = "cubic") -> np.ndarray:
    """Resample ``(C, X, Y, Z)`` to ``new_shape``.

    Images: ``method`` 'cubic' (separable Keys cubic convolution) or 'spline' (order-3 B-spline,
    nnU-Net's); masks: linear then > 0.5. ``separate_axis``: the coarse axis of an anisotropic
    volume, resampled with nearest-neighbour after the other two (nnU-Net's rule for spacing
    ratios > 3).
    """
    new_shape = tuple(int(s) for s in new_shape)
    if method not in ("cubic", "spline"):
        raise ValueError(f"resampling method must be 'cubic' or 'spline', got {method!r}")
    if tuple(array.shape[1:]) == new_shape:
        return array.copy() if not is_mask else (array > 0.5).astype(np.uint8)
    if method == "spline" and not is_mask:
        return _spline(array, new_shape, separate_axis)
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if separate_axis is not None:
        inplane = tuple(a for a in range(3) if a != separate_axis)
        if is_mask:
            x = _interp_axes(x, tuple(new_shape[a] for a in inplane), inplane, "bilinear")
        else:
            for a in inplane:
                x = cubic_axis(x, a + 1, new_shape[a])
        other = (inplane[0], separate_axis)
        x = _interp_axes(x, (new_shape[other[0]], new_shape[separate_axis]), other, "nearest-exact")
    elif is_mask:
        x = F.interpolate(x[None], size=new_shape, mode="trilinear", align_corners=False)[0]
    else:
        # shrinking axes first keeps the intermediate volumes small
        order = sorted(range(3), key=lambda a: new_shape[a] / x.shape[a + 1])
        for a in order:
            x = cubic_axis(x, a + 1, new_shape[a])
    out = x.numpy()
    return (out > 0.5).astype(np.uint8) if is_mask else out


def anisotropic_axis(spacing, target_spacing) -> int | None:
    """The axis to resample separately, or None (nnU-Net: max/min spacing ratio > 3)."""
    for sp in (spacing, target_spacing):
        sp = np.asarray(sp, float)
        if sp.max() / sp.min() > ANISOTROPY_THRESHOLD:
            return int(np.argmax(sp))
    return None


# ----------------------------------------------------------------------------- the pipeline

def _norm_mode(normalisation) -> str:
    modes = {normalisation} if isinstance(normalisation, str) else set(normalisation)
    if len(modes) != 1:
        raise ValueError(f"mixed normalisation schemes per channel are not supported: {normalisation}")
    return modes.pop()


def preprocess_arrays(image: np.ndarray, spacing, target_spacing, normalisation="zscore",
                      mask: np.ndarray | None = None, use_clahe: bool = False,
                      use_nonzero_mask: bool | None = None, separate_z: bool = True,
                      resampling: str = "cubic"):
    """Pure-array preprocessing. Returns ``(image, mask_or_None, crop_box, cropped_shape)``.

    ``use_nonzero_mask``: statistics (and output) restricted to the nonzero region; None decides
    per case by nnU-Net's rule (cropping removed more than 25 % of the voxels).
    """
    box = nonzero_box(image)
    img = crop(image, box)
    m = crop(mask[None], box)[0] if mask is not None else None
    if use_clahe:
        img = clahe(img)
    cropped_shape = tuple(img.shape[1:])
    if use_nonzero_mask is None:
        use_nonzero_mask = 1 - np.prod(cropped_shape) / np.prod(image.shape[1:]) > 0.25
    norm_mask = np.any(img != 0, axis=0) if use_nonzero_mask else None
    img = zscore(img, _norm_mode(normalisation), norm_mask)
    if norm_mask is not None:
        img[:, ~norm_mask] = 0
    new_shape = target_shape(cropped_shape, spacing, target_spacing)
    sep = anisotropic_axis(spacing, target_spacing) if separate_z else None
    img = resample(img, new_shape, separate_axis=sep, method=resampling)
    if m is not None:
        m = resample(m[None].astype(np.float32), new_shape, is_mask=True, separate_axis=sep)[0]
    return img, m, box, cropped_shape


def preprocess(case: mamamia.Case, plan, with_mask: bool = True, nan_policy: str = "raise"):
    """Preprocess one case with a ``core.plan.Plan`` (its channels, target spacing,
    normalisation, nonzero-mask, CLAHE and anisotropy settings).
    Returns ``(image (C, X, Y, Z) float32, mask (X, Y, Z) uint8 or None, CaseMeta)``."""
    image, spacing, affine = mamamia.load_image(case, list(plan.channels), nan_policy=nan_policy)
    mask = None
    if with_mask and case.mask_path is not None:
        mask = mamamia.load_mask(case, affine, image.shape[1:])
    img, m, box, cshape = preprocess_arrays(image, spacing, plan.target_spacing, plan.normalisation,
                                            mask, plan.clahe, plan.use_nonzero_mask,
                                            plan.separate_z_resampling, plan.resampling)
    ref = case.phase_path(mamamia.reference_phase(case, plan.channels))
    meta = CaseMeta(patient_id=case.patient_id, original_shape=tuple(image.shape[1:]),
                    original_spacing=tuple(float(s) for s in spacing),
                    affine=tuple(tuple(float(v) for v in row) for row in np.asarray(affine)),
                    crop_box=box, cropped_shape=cshape,
                    target_spacing=tuple(float(s) for s in plan.target_spacing),
                    resampled_shape=tuple(img.shape[1:]), reference_path=str(ref),
                    separate_z=bool(plan.separate_z_resampling))
    return img, m, meta


def _restore_cropped(p: torch.Tensor, meta: CaseMeta) -> torch.Tensor:
    """``(K, *resampled_shape)`` -> ``(K, *cropped_shape)``: linear resampling (nearest along a
    separately treated coarse axis), nnU-Net's order 1 / order_z 0 for predictions."""
    if tuple(p.shape[1:]) != tuple(meta.resampled_shape):
        raise ValueError(f"{meta.patient_id}: prediction shape {tuple(p.shape[1:])} != preprocessed "
                         f"shape {meta.resampled_shape}")
    sep = anisotropic_axis(meta.original_spacing, meta.target_spacing) if meta.separate_z else None
    cs = tuple(meta.cropped_shape)
    if tuple(p.shape[1:]) != cs:
        if sep is None:
            p = F.interpolate(p[None], size=cs, mode="trilinear", align_corners=False)[0]
        else:
            inplane = tuple(a for a in range(3) if a != sep)
            p = _interp_axes(p, tuple(cs[a] for a in inplane), inplane, "bilinear")
            p = _interp_axes(p, (cs[inplane[0]], cs[sep]), (inplane[0], sep), "nearest-exact")
    return p


def restore_probabilities(probs: np.ndarray | torch.Tensor, meta: CaseMeta) -> np.ndarray:
    """Put ``(K, *resampled_shape)`` class probabilities back on the original grid: linear
    resampling to the cropped shape (nearest along a separately treated coarse axis), then the
    crop is undone with background (class 0 probability 1) outside the box."""
    p = _restore_cropped(torch.as_tensor(probs, dtype=torch.float32), meta)
    out = np.zeros((p.shape[0],) + tuple(meta.original_shape), np.float32)
    out[0] = 1.0
    out[(slice(None),) + tuple(slice(a, b) for a, b in meta.crop_box)] = p.numpy()
    return out


def restore_logits(logits: np.ndarray | torch.Tensor, meta: CaseMeta, fill: float = -1e4) -> np.ndarray:
    """Put ``(K, *resampled_shape)`` logits (or logit margins) back on the original grid, nnU-Net
    v2's way: the logits themselves are resampled (linearly, as :func:`restore_probabilities`),
    the softmax comes after. Outside the crop every channel is ``fill``, except channel 0
    (background) of a multi-channel input, which is 0."""
    p = _restore_cropped(torch.as_tensor(logits, dtype=torch.float32), meta)
    out = np.full((p.shape[0],) + tuple(meta.original_shape), fill, np.float32)
    if p.shape[0] > 1:
        out[0] = 0.0
    out[(slice(None),) + tuple(slice(a, b) for a, b in meta.crop_box)] = p.numpy()
    return out


def restore_mask(mask: np.ndarray, meta: CaseMeta) -> np.ndarray:
    """A binary mask on the preprocessed grid back onto the original grid (uint8 {0,1})."""
    m = np.asarray(mask, np.float32)
    probs = np.stack([1 - m, m])
    return (restore_probabilities(probs, meta)[1] > 0.5).astype(np.uint8)


def body_mask(image: np.ndarray, min_voxels: int = 1000) -> np.ndarray | None:
    """The body in a preprocessed ``(C, X, Y, Z)`` array, as a boolean ``(X, Y, Z)`` map.

    Air is the darkest signal in every DCE phase: tissue is where the channel mean exceeds
    ``p1 + 0.1 * (p99 - p1)`` (a threshold low enough that dark tissue stays in, unlike Otsu's,
    which splits bright enhancing tissue from the rest when a crop left little air). Every
    connected region of at least ``min_voxels`` voxels is kept, not only the largest: a breast or
    arm can be cut off from the thorax in some slices (seen on the phantom: a 70,000-voxel
    region beside a 1.5-million-voxel one), and it may hold the tumour. Smaller specks are noise
    in the air. None when the image is flat or no region is large enough.
    """
    from scipy import ndimage

    mean = np.asarray(image, np.float32).mean(0)
    lo, hi = np.percentile(mean[::2, ::2, ::2], [1, 99])
    if hi - lo < 1e-6:
        return None
    fg = mean > lo + 0.1 * (hi - lo)
    labels, n = ndimage.label(fg)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    if not keep.any():
        keep[int(np.argmax(sizes[1:])) + 1] = True   # a tiny image: its largest region
    return keep[labels]


def body_box(image: np.ndarray, margin: int = 8, mask: np.ndarray | None = None) -> tuple[slice, slice, slice] | None:
    """Bounding box (plus ``margin`` voxels) of :func:`body_mask` (or of ``mask`` when given).

    Windows outside this box need not be run through a network: there is no tissue, hence no
    tumour. Returns None when no body is found or the box would not save anything.
    """
    from scipy import ndimage

    body = body_mask(image) if mask is None else mask
    if body is None or not body.any():
        return None
    region = ndimage.find_objects(body.astype(np.uint8))[0]
    shape = body.shape
    box = tuple(slice(max(0, s.start - margin), min(dim, s.stop + margin)) for s, dim in zip(region, shape))
    if np.prod([b.stop - b.start for b in box]) > 0.95 * body.size:
        return None
    return box
