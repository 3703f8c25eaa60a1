"""Patch sampling with nnU-Net v2's foreground oversampling.

A batch is drawn as in nnU-Net v2's ``nnUNetDataLoader`` (training/dataloading/data_loader.py):

- cases uniformly with replacement (batchgenerators ``DataLoader.get_indices``);
- sample ``j`` of a batch is forced to contain foreground iff ``j >= round(B * (1 - p))``
  (``_oversample_last_XX_percent``; Python ``round``, so B=2, p=0.33 forces exactly one sample,
  B=1 forces none);
- a forced sample centres its region on a random foreground voxel (clipped at the lower padding
  bound only, as nnU-Net does); the others start anywhere in ``[lb, ub]`` where the bounds let
  the final, centre-cropped patch reach every border of the case;
- what lies outside the case is padded with 0 in the image and 0 in the label (nnU-Net pads the
  label with -1 and maps -1 to 0 after augmentation; the result is the same).

The region is larger than the network patch (``pretransform_patch_size``) so that the spatial
augmentation (data/augment.py) resamples the final patch from real voxels, not padding.
Shapes: case image (C, X, Y, Z), case label (1, X, Y, Z); batch image (B, C, *region), label
(B, 1, *region) uint8.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

# nnU-Net v2 nnUNetTrainer.oversample_foreground_percent
OVERSAMPLE_FOREGROUND = 0.33
# nnU-Net v2 passes scale_range (0.85, 1.25) to get_patch_size (a legacy range; the spatial
# transform itself scales 0.7-1.4), and +-30 deg rotation for isotropic 3D patches.
PRETRANSFORM_MIN_SCALE = 0.85
PRETRANSFORM_ROTATION_DEG = 30.0


def foreground_locations(label: np.ndarray, max_points: int = 10000, seed: int = 1234,
                         label_value: int = 1, min_fraction: float = 0.01) -> np.ndarray:
    """A bounded random sample of the coordinates of voxels equal to ``label_value``.

    Rule of nnU-Net v2's ``DefaultPreprocessor._sample_foreground_locations``: keep
    ``max(min(max_points, n), ceil(n * min_fraction))`` of the ``n`` foreground voxels, drawn
    without replacement, so large structures keep at least 1 % of their voxels.

    Args:
        label: (1, X, Y, Z) or (X, Y, Z) integer array (np.memmap allowed).
    Returns:
        (N, 3) int64 array of (x, y, z) voxel indices; N = 0 when there is no foreground.
    """
    lab = np.asarray(label)
    if lab.ndim == 4:
        if lab.shape[0] != 1:
            raise ValueError(f"label must have one channel, got shape {lab.shape}")
        lab = lab[0]
    if lab.ndim != 3:
        raise ValueError(f"label must be (1, X, Y, Z) or (X, Y, Z), got shape {lab.shape}")
    coords = np.argwhere(lab == label_value)
    n = len(coords)
    keep = max(min(max_points, n), int(math.ceil(n * min_fraction)))
    if keep < n:
        pick = np.random.default_rng(seed).choice(n, keep, replace=False)
        coords = coords[np.sort(pick)]
    return coords.astype(np.int64)


def pretransform_patch_size(patch_size: Sequence[int], max_rotation_deg: float = PRETRANSFORM_ROTATION_DEG,
                            min_scale: float = PRETRANSFORM_MIN_SCALE) -> tuple[int, ...]:
    """Size of the region to sample so that rotating/scaling it still fills ``patch_size``.

    Geometry: a rectangle with edges (a, b) rotated by theta in its plane has an axis-aligned
    bounding box (a|cos| + b|sin|, a|sin| + b|cos|). For each rotation axis the two in-plane
    edges grow this way; the region takes, per axis, the largest of these extents (rotations
    about each axis considered one at a time, as nnU-Net v2's ``get_patch_size``) and divides by
    the smallest scale factor, because a zoom-out by s reads a region 1/s times larger.

    Worked example (nnU-Net v2 default, 3D isotropic): 128 * (cos 30 + sin 30) = 128 * 1.366 =
    174.9; / 0.85 = 205.7 -> 205, so 128^3 -> 205^3 (96^3 -> 154^3).

    Deviation: nnU-Net rotates the corner *vector* (a, b), which equals the bounding box for
    cubic patches but underestimates elongated ones ((64, 128, 160) -> nnU-Net (140, 224, 200),
    here (159, 224, 238)). Neither covers everything: rotations composed about all three axes
    reach 1.72x the edge, and nnU-Net's actual zoom-out range goes to 1/0.7, so a few voxels of
    padding can still enter extreme draws; nnU-Net accepts this and so do we.
    """
    p = np.asarray(patch_size, dtype=np.float64)
    if p.ndim != 1 or len(p) not in (2, 3) or np.any(p < 1):
        raise ValueError(f"patch_size must be 2 or 3 positive ints, got {patch_size}")
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    theta = math.radians(min(abs(max_rotation_deg), 90.0))  # nnU-Net clips to 90 deg
    c, s = math.cos(theta), math.sin(theta)
    out = p.copy()
    planes = [(0, 1)] if len(p) == 2 else [(1, 2), (0, 2), (0, 1)]
    for i, j in planes:
        out[i] = max(out[i], p[i] * c + p[j] * s)
        out[j] = max(out[j], p[i] * s + p[j] * c)
    return tuple(int(v) for v in out / min_scale)


def forced_foreground(batch_size: int, oversample_foreground: float = OVERSAMPLE_FOREGROUND) -> list[bool]:
    """nnU-Net v2 rule: sample j is forced to foreground iff not j < round(B * (1 - p))."""
    n_random = round(batch_size * (1 - oversample_foreground))
    return [not j < n_random for j in range(batch_size)]


class PatchSampler:
    """Draws batches of enlarged patches from preprocessed cases.

    Args:
        images: per case (C, X, Y, Z) float arrays (np.memmap allowed; read only where cropped).
        labels: per case (1, X, Y, Z) integer arrays on the same grid.
        fg_locations: per case (N, 3) foreground voxel indices (``foreground_locations``); None
            (for all cases or for one) computes them here.
        patch_size: final network patch (X, Y, Z).
        rotation_margin: sample ``pretransform_patch_size(patch_size)`` (True) or the patch itself.
        seed: seeds the generator used by ``next()``; ``sample_batch(rng)`` uses the given one.
        case_ids: names returned in ``batch['case_ids']`` (default: the case indices as str).
    """

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                 fg_locations: Sequence[np.ndarray] | None, patch_size: Sequence[int], batch_size: int,
                 oversample_foreground: float = OVERSAMPLE_FOREGROUND, rotation_margin: bool = True,
                 seed: int = 0, case_ids: Sequence[str] | None = None,
                 max_rotation_deg: float = PRETRANSFORM_ROTATION_DEG,
                 min_scale: float = PRETRANSFORM_MIN_SCALE):
        if len(images) == 0 or len(images) != len(labels):
            raise ValueError(f"need as many labels as images (>0), got {len(images)} and {len(labels)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= oversample_foreground <= 1:
            raise ValueError(f"oversample_foreground must be in [0, 1], got {oversample_foreground}")
        if len(patch_size) != 3:
            raise ValueError(f"patch_size must have 3 entries, got {patch_size}")
        channels = images[0].shape[0]
        for i, (im, lab) in enumerate(zip(images, labels)):
            if im.ndim != 4 or lab.ndim != 4 or lab.shape[0] != 1 or im.shape[1:] != lab.shape[1:]:
                raise ValueError(f"case {i}: image {im.shape} and label {lab.shape} must be (C,X,Y,Z) and "
                                 "(1,X,Y,Z) on the same grid")
            if im.shape[0] != channels:
                raise ValueError(f"case {i}: {im.shape[0]} channels, case 0 has {channels}")
        if fg_locations is None:
            fg_locations = [None] * len(images)
        if len(fg_locations) != len(images):
            raise ValueError(f"fg_locations has {len(fg_locations)} entries for {len(images)} cases")
        fg_locations = [foreground_locations(lab, seed=1234 + i) if f is None else f
                        for i, (f, lab) in enumerate(zip(fg_locations, labels))]
        self.images, self.labels = list(images), list(labels)
        self.fg_locations = [np.asarray(f, dtype=np.int64).reshape(-1, 3) for f in fg_locations]
        self.case_ids = [str(c) for c in case_ids] if case_ids is not None else [str(i) for i in range(len(images))]
        if len(self.case_ids) != len(images):
            raise ValueError(f"case_ids has {len(self.case_ids)} entries for {len(images)} cases")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.region_size = (pretransform_patch_size(self.patch_size, max_rotation_deg, min_scale)
                            if rotation_margin else self.patch_size)
        self.batch_size = int(batch_size)
        self.num_channels = int(channels)
        self.forced = forced_foreground(self.batch_size, oversample_foreground)
        for i, f in enumerate(self.fg_locations):
            if len(f) == 0 and any(self.forced):
                log.info("case %s has no foreground voxels; forced samples fall back to random",
                         self.case_ids[i])
        self.rng = np.random.default_rng(seed)

    def region_start(self, shape: Sequence[int], force_fg: bool, locations: np.ndarray,
                     rng: np.random.Generator) -> list[int]:
        """Lower corner of the region for one case of spatial ``shape`` (nnU-Net ``get_bbox``)."""
        region, patch = self.region_size, self.patch_size
        need = [region[d] - patch[d] for d in range(3)]
        for d in range(3):  # a case smaller than the region is padded on both sides
            if need[d] + shape[d] < region[d]:
                need[d] = region[d] - shape[d]
        lbs = [-(need[d] // 2) for d in range(3)]
        ubs = [shape[d] + need[d] // 2 + need[d] % 2 - region[d] for d in range(3)]
        if force_fg and len(locations) > 0:
            voxel = locations[rng.integers(len(locations))]
            return [max(lbs[d], int(voxel[d]) - region[d] // 2) for d in range(3)]
        return [int(rng.integers(lbs[d], ubs[d] + 1)) for d in range(3)]

    def _copy_region(self, src: np.ndarray, start: Sequence[int], dst: np.ndarray,
                     window: Sequence[tuple[int, int]] | None = None) -> None:
        """dst[:, w] = src[:, start + w] for the window w of the region (default: all of it).

        ``dst`` is pre-zeroed, so whatever lies outside ``src`` or outside the window stays 0.
        """
        size = dst.shape[1:]
        window = window or [(0, n) for n in size]
        s_sl, d_sl = [slice(None)], [slice(None)]
        for d in range(3):
            lo = max(start[d] + window[d][0], 0)
            hi = min(start[d] + window[d][1], src.shape[d + 1])
            if hi <= lo:
                return
            s_sl.append(slice(lo, hi))
            d_sl.append(slice(lo - start[d], hi - start[d]))
        np.copyto(dst[tuple(d_sl)], src[tuple(s_sl)], casting="unsafe")

    def sample_batch(self, rng: np.random.Generator, centre_only: Sequence[bool] | None = None) -> dict:
        """One batch drawn with ``rng`` (a pure function of the generator state).

        Args:
            centre_only: per sample, True when the augmentation will only centre-crop it
                (``augment.needs_resampling`` is False): only the centred ``patch_size`` box of
                its region is read from the case, the rest stays 0 (about 4x less copying for a
                96^3 patch in a 154^3 region). The random draws do not depend on it.
        Returns:
            {'image': float32 tensor (B, C, *region), 'label': uint8 tensor (B, 1, *region),
             'case_ids': list of B str}
        """
        B, region = self.batch_size, self.region_size
        if centre_only is not None and len(centre_only) != B:
            raise ValueError(f"centre_only has {len(centre_only)} entries for batch size {B}")
        # np.zeros maps fresh zero pages lazily: parts never written cost nothing
        image = np.zeros((B, self.num_channels, *region), dtype=np.float32)
        label = np.zeros((B, 1, *region), dtype=np.uint8)
        box = [((r - p) // 2, (r - p) // 2 + p) for r, p in zip(region, self.patch_size)]
        cases = rng.integers(0, len(self.images), size=B)
        for j, c in enumerate(cases):
            img = self.images[c]
            start = self.region_start(img.shape[1:], self.forced[j], self.fg_locations[c], rng)
            window = box if centre_only is not None and centre_only[j] else None
            self._copy_region(img, start, image[j], window)
            self._copy_region(self.labels[c], start, label[j], window)
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label),
                "case_ids": [self.case_ids[c] for c in cases]}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return self.sample_batch(self.rng)
