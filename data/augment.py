"""Batched spatial + intensity augmentation in torch, on the device of the batch.

Random parameters are drawn once per batch (``draw_params``, a CPU ``torch.Generator``) into a
``Params`` value; ``apply`` is deterministic given them. Every transform is a pure function of a
(n, C, X, Y, Z) tensor and its parameters; ``apply`` hands each one only the samples (or
sample-channel rows) whose parameters are not the identity.

Default profile ``"nnunet"`` = nnU-Net v2 ``nnUNetTrainer.get_training_transforms`` for 3D
isotropic patches (batchgeneratorsv2 transforms, nnunetv2 nnUNetTrainer.get_training_transforms), in its order:

1. spatial, per sample: rotation p 0.2 (all three angles U(-30, 30) deg), isotropic scaling
   p 0.2 U(0.7, 1.4) (> 1 reads a larger region: objects shrink), elastic off; centre crop to
   the final patch; mirroring p 0.5 per axis;
2. Gaussian noise p 0.1, one field shared by all channels; nnU-Net's ``noise_variance=(0, 0.1)``
   is used as the standard deviation by its implementation, and so here;
3. Gaussian blur p 0.2, each channel p 0.5, sigma U(0.5, 1) per channel and axis, kernel
   truncated at round-to-odd(6 sigma + 0.5) taps, reflect padding;
4. multiplicative brightness p 0.15, contrast p 0.15 (about the channel mean, clipped to the
   channel's former range), both per channel with nnU-Net's ``BGContrast`` draw (half the time
   U(lo, 1), else U(1, hi));
5. simulated low resolution p 0.25, each channel p 0.5, zoom U(0.5, 1) shared by the axes:
   nearest-exact down, trilinear up;
6. gamma on the inverted image p 0.1, then gamma p 0.3, gamma ``BGContrast(0.7, 1.5)`` per
   channel, mean and std restored.

Deviations, all distribution-preserving: the whole spatial part (rotation, scaling, elastic,
crop and mirroring) is ONE resampling from the enlarged region (``grid_sample``, images
trilinear, labels linear-then-threshold 0.5 like nnU-Net's one-hot resampling, or nearest), and
mirroring therefore happens before the intensity transforms instead of after them (they are
symmetric under flips); samples without rotation/scaling/elastic/motion are cropped and
flipped exactly, without interpolation (nnU-Net skips resampling the same way).

Profile ``"mri"`` adds DCE-MRI artefacts: a smooth multiplicative bias field (exp of a random
polynomial, as TorchIO's RandomBiasField), inter-phase rigid motion (small rotation/shift of
single channels, folded into the same resampling; the label follows channel 0's frame) and
ghosting along a phase-encode axis (faint shifted copies); bias field and ghosting act right
after the spatial part, before the nnU-Net intensity chain. ``"seed_a"`` is ``"nnunet"`` plus
elastic deformation (p 0.2). ``"none"`` only centre-crops. ``with_overrides`` edits any profile
from ``key=value`` strings.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from core import plan as planlib

Tensor = torch.Tensor


@dataclass(frozen=True)
class AugmentProfile(planlib.Settings):
    """Probabilities (per sample unless named per_channel) and ranges of every transform."""

    p_rotation: float = 0.2
    rotation_deg: float = 30.0
    p_scaling: float = 0.2
    scaling: tuple[float, float] = (0.7, 1.4)
    p_elastic: float = 0.0
    elastic_magnitude: tuple[float, float] = (0.0, 4.0)  # max displacement, voxels
    elastic_grid: int = 5                                # control points per axis
    p_mirror: float = 0.5
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    p_motion: float = 0.0
    motion_p_per_channel: float = 0.5
    motion_shift: float = 2.0           # voxels, U(-s, s) per axis
    motion_rotation_deg: float = 2.0    # U(-r, r) per axis
    p_bias: float = 0.0
    bias_order: int = 3
    bias_coefficient: float = 0.3
    p_ghosting: float = 0.0
    ghosting_axes: tuple[int, ...] = (0, 1)
    ghosting_count: tuple[int, int] = (2, 4)
    ghosting_intensity: tuple[float, float] = (0.02, 0.1)
    p_noise: float = 0.1
    noise_std: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_p_per_channel: float = 0.5
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_lowres: float = 0.25
    lowres_p_per_channel: float = 0.5
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)

    def validate(self) -> None:
        # draw_params would take these silently: p > 1 as always, U(hi, lo) as a flipped range
        for f in fields(self):
            value = getattr(self, f.name)
            if (f.name.startswith("p_") or f.name.endswith("_p_per_channel")) and not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentProfile.{f.name} is a probability, got {value}")
            if isinstance(value, tuple) and len(value) == 2 and not f.name.endswith("_axes") and value[0] > value[1]:
                raise ValueError(f"AugmentProfile.{f.name} is a range (low, high), got {value}")
        for name in ("mirror_axes", "ghosting_axes"):
            if not set(getattr(self, name)) <= {0, 1, 2}:
                raise ValueError(f"AugmentProfile.{name} must name spatial axes 0, 1, 2, got {getattr(self, name)}")


_NNUNET = AugmentProfile()
PROFILES: dict[str, AugmentProfile] = {
    "nnunet": _NNUNET,
    "mri": dataclasses.replace(_NNUNET, p_motion=0.2, p_bias=0.3, p_ghosting=0.15),
    # seed A (MAMA-MIA 2025) adds elastic deformation to nnU-Net's spatial augmentation. 0.2 per
    # sample is nnU-Net v1's p_eldef (default_3D_augmentation_params, batchgenerators'
    # SpatialTransform p_el_per_sample). Its magnitude, alpha U(0, 900) smoothed with sigma
    # U(9, 13) voxels, has no exact counterpart in our coarse-grid field: the magnitude defaults
    # (up to 4 voxels, 5 control points per axis) are a choice
    "seed_a": dataclasses.replace(_NNUNET, p_elastic=0.2),
    "none": AugmentProfile(**{f.name: 0.0 for f in fields(AugmentProfile) if f.name.startswith("p_")}),
}


def get_profile(profile: str | AugmentProfile) -> AugmentProfile:
    if isinstance(profile, AugmentProfile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown augmentation profile {profile!r}; choose from {sorted(PROFILES)}")
    return PROFILES[profile]


def with_overrides(profile: str | AugmentProfile, items: Sequence[str]) -> AugmentProfile:
    """``profile`` (a name or a profile) with ``key=value`` edits, e.g. ``["p_elastic=0.2",
    "scaling=0.8,1.2"]``: values parsed strictly from the field types (tuples comma-separated),
    then validated like any profile; an unknown field is a ValueError listing the valid ones."""
    if isinstance(items, str):
        raise TypeError("with_overrides expects a list of 'key=value' strings")
    base = get_profile(profile)
    names = [f.name for f in fields(AugmentProfile)]
    hints = typing.get_type_hints(AugmentProfile)
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"augmentation override {item!r} is not of the form key=value")
        if key not in names:
            raise ValueError(f"augmentation override {item!r}: unknown field {key!r} "
                             f"(valid fields: {', '.join(names)})")
        changes[key] = planlib.parse_value(value, hints[key], f"augmentation override {key}")
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as err:
        raise ValueError(f"augmentation overrides {list(items)}: {err}") from err


@dataclass(frozen=True)
class Params:
    """Parameters of one batch (CPU tensors); identity values mean "not applied".

    Shapes: B samples, C channels, T = number of bias-field monomials, g = elastic grid.
    """

    rotation: Tensor          # (B, 3) radians about axes x, y, z; 0 = none
    scale: Tensor             # (B,) 1 = none
    mirror: Tensor            # (B, 3) bool
    elastic: Tensor           # (B, 3, g, g, g) displacement in voxels; 0 = none
    motion_rotation: Tensor   # (B, C, 3) radians
    motion_shift: Tensor      # (B, C, 3) voxels
    bias: Tensor              # (B, T) polynomial coefficients; 0 = none
    bias_order: int
    ghost_axis: Tensor        # (B,) long
    ghost_count: Tensor       # (B,) long
    ghost_intensity: Tensor   # (B, C); 0 = none
    noise_std: Tensor         # (B,); 0 = none
    noise_seed: int
    blur_sigma: Tensor        # (B, C, 3); 0 = no blur along that axis
    brightness: Tensor        # (B, C); 1 = none
    contrast: Tensor          # (B, C); 1 = none
    lowres_zoom: Tensor       # (B, C); 1 = none
    gamma_inverted: Tensor    # (B, C); 1 = none
    gamma: Tensor             # (B, C); 1 = none

    @classmethod
    def identity(cls, batch_size: int, num_channels: int, elastic_grid: int = 5, bias_order: int = 3) -> "Params":
        B, C = batch_size, num_channels
        ones, zeros = torch.ones(B, C), torch.zeros(B, C)
        return cls(rotation=torch.zeros(B, 3), scale=torch.ones(B), mirror=torch.zeros(B, 3, dtype=torch.bool),
                   elastic=torch.zeros(B, 3, *(elastic_grid,) * 3), motion_rotation=torch.zeros(B, C, 3),
                   motion_shift=torch.zeros(B, C, 3), bias=torch.zeros(B, len(_monomials(bias_order))),
                   bias_order=bias_order, ghost_axis=torch.zeros(B, dtype=torch.long),
                   ghost_count=torch.full((B,), 2, dtype=torch.long), ghost_intensity=zeros.clone(),
                   noise_std=torch.zeros(B), noise_seed=0, blur_sigma=torch.zeros(B, C, 3),
                   brightness=ones.clone(), contrast=ones.clone(), lowres_zoom=ones.clone(),
                   gamma_inverted=ones.clone(), gamma=ones.clone())

    def replace(self, **changes) -> "Params":
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- drawing

def _uniform(g: torch.Generator, shape, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)


def _bg_contrast(g: torch.Generator, shape, lo: float, hi: float) -> Tensor:
    """batchgeneratorsv2 ``BGContrast``: p 0.5 U(lo, 1) when lo < 1, else U(max(lo, 1), hi)."""
    low_half = (torch.rand(shape, generator=g) < 0.5) & (lo < 1)
    return torch.where(low_half, _uniform(g, shape, lo, 1.0), _uniform(g, shape, max(lo, 1.0), hi))


def draw_params(batch_size: int, profile: str | AugmentProfile, generator: torch.Generator, *,
                num_channels: int) -> Params:
    """Draw the random parameters of one batch. Always consumes the same number of draws."""
    pr, g, B, C = get_profile(profile), generator, batch_size, num_channels

    def hit(p: float, shape=(B,)) -> Tensor:
        return torch.rand(shape, generator=g) < p

    r = math.radians(pr.rotation_deg)
    rotation = _uniform(g, (B, 3), -r, r) * hit(pr.p_rotation)[:, None]
    scale = torch.where(hit(pr.p_scaling), _uniform(g, (B,), *pr.scaling), torch.ones((), dtype=torch.float64))
    gsz = pr.elastic_grid
    coarse = torch.randn((B, 3, gsz, gsz, gsz), generator=g, dtype=torch.float64)
    peak = coarse.abs().flatten(2).amax(-1).clamp_min(1e-12)[..., None, None, None]
    magnitude = (_uniform(g, (B, 3), *pr.elastic_magnitude) * hit(pr.p_elastic)[:, None])[..., None, None, None]
    elastic = coarse / peak * magnitude
    allowed = torch.zeros(3, dtype=torch.bool)
    allowed[list(pr.mirror_axes)] = True
    mirror = hit(pr.p_mirror, (B, 3)) & allowed
    moved = hit(pr.p_motion)[:, None] & hit(pr.motion_p_per_channel, (B, C))
    moved[:, 0] = False  # channel 0 is the reference frame the label lives in
    mr = math.radians(pr.motion_rotation_deg)
    motion_rotation = _uniform(g, (B, C, 3), -mr, mr) * moved[..., None]
    motion_shift = _uniform(g, (B, C, 3), -pr.motion_shift, pr.motion_shift) * moved[..., None]
    n_terms = len(_monomials(pr.bias_order))
    bias = _uniform(g, (B, n_terms), -pr.bias_coefficient, pr.bias_coefficient) * hit(pr.p_bias)[:, None]
    axes = torch.tensor(pr.ghosting_axes, dtype=torch.long)
    ghost_axis = axes[torch.randint(len(axes), (B,), generator=g)]
    ghost_count = torch.randint(pr.ghosting_count[0], pr.ghosting_count[1] + 1, (B,), generator=g)
    ghost_intensity = _uniform(g, (B, C), *pr.ghosting_intensity) * hit(pr.p_ghosting)[:, None]
    noise_std = _uniform(g, (B,), *pr.noise_std) * hit(pr.p_noise)
    noise_seed = int(torch.randint(0, 2 ** 62, (1,), generator=g))
    blurred = hit(pr.p_blur)[:, None] & hit(pr.blur_p_per_channel, (B, C))
    blur_sigma = _uniform(g, (B, C, 3), *pr.blur_sigma) * blurred[..., None]
    one = torch.ones((), dtype=torch.float64)
    brightness = torch.where(hit(pr.p_brightness)[:, None], _bg_contrast(g, (B, C), *pr.brightness), one)
    contrast = torch.where(hit(pr.p_contrast)[:, None], _bg_contrast(g, (B, C), *pr.contrast), one)
    lowres = hit(pr.p_lowres)[:, None] & hit(pr.lowres_p_per_channel, (B, C))
    lowres_zoom = torch.where(lowres, _uniform(g, (B, C), *pr.lowres_zoom), one)
    gamma_inverted = torch.where(hit(pr.p_gamma_inverted)[:, None], _bg_contrast(g, (B, C), *pr.gamma), one)
    gamma = torch.where(hit(pr.p_gamma)[:, None], _bg_contrast(g, (B, C), *pr.gamma), one)
    f32 = lambda t: t.float()  # noqa: E731  parameters travel as float32
    return Params(rotation=f32(rotation), scale=f32(scale), mirror=mirror, elastic=f32(elastic),
                  motion_rotation=f32(motion_rotation), motion_shift=f32(motion_shift), bias=f32(bias),
                  bias_order=pr.bias_order, ghost_axis=ghost_axis, ghost_count=ghost_count,
                  ghost_intensity=f32(ghost_intensity), noise_std=f32(noise_std), noise_seed=noise_seed,
                  blur_sigma=f32(blur_sigma), brightness=f32(brightness), contrast=f32(contrast),
                  lowres_zoom=f32(lowres_zoom), gamma_inverted=f32(gamma_inverted), gamma=f32(gamma))


# ----------------------------------------------------------------------------- spatial

def rotation_matrix(angles: Tensor) -> Tensor:
    """(..., 3) angles about x, y, z -> (..., 3, 3) Rz @ Ry @ Rx (batchgeneratorsv2 order)."""
    c, s = torch.cos(angles), torch.sin(angles)
    o, z = torch.ones_like(c[..., 0]), torch.zeros_like(c[..., 0])

    def m(*rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    rx = m((o, z, z), (z, c[..., 0], -s[..., 0]), (z, s[..., 0], c[..., 0]))
    ry = m((c[..., 1], z, s[..., 1]), (z, o, z), (-s[..., 1], z, c[..., 1]))
    rz = m((c[..., 2], -s[..., 2], z), (s[..., 2], c[..., 2], z), (z, z, o))
    return rz @ ry @ rx


def spatial_matrix(rotation: Tensor, scale: Tensor, mirror: Tensor) -> Tensor:
    """(n, 3, 3) map from output offsets p to input offsets q = R S M p (M = mirror signs)."""
    signs = 1.0 - 2.0 * mirror.to(rotation.dtype)
    return rotation_matrix(rotation) * (scale[:, None] * signs)[:, None, :]


def _crop_start(in_shape, out_shape) -> list[int]:
    return [(i - o) // 2 for i, o in zip(in_shape, out_shape)]


def sampling_grid(matrix: Tensor, shift: Tensor, in_shape, out_shape, elastic: Tensor | None = None) -> Tensor:
    """grid_sample grid (align_corners=True) reading input voxel c + shift + A (p + e(p)).

    p: output voxel offset from the output centre; c: centre of the centred crop box in the input
    (start (in - out) // 2, so identity parameters reproduce ``center_crop`` up to float
    rounding); e: elastic displacement (n, 3, *out) in voxels or None. matrix (n, 3, 3),
    shift (n, 3). Returns (n, *out, 3) with the last axis in grid_sample's (z, y, x) order.
    """
    dev = matrix.device
    start = _crop_start(in_shape, out_shape)
    centre = torch.tensor([s + (o - 1) / 2 for s, o in zip(start, out_shape)], device=dev)
    k = torch.tensor([2.0 / max(i - 1, 1) for i in in_shape], device=dev)
    flip = [2, 1, 0]
    g = (k[None, :, None] * matrix)[:, flip]            # normalised; rows in grid order
    o = (k * (centre + shift) - 1.0)[:, flip]
    # affine part is separable: o + x_i G[:, :, 0] + y_j G[:, :, 1] + z_k G[:, :, 2]
    axes = [torch.arange(n_, device=dev, dtype=torch.float32) - (n_ - 1) / 2 for n_ in out_shape]
    gx = axes[0][None, :, None] * g[:, None, :, 0]
    gy = axes[1][None, :, None] * g[:, None, :, 1]
    gz = axes[2][None, :, None] * g[:, None, :, 2]
    grid = (o[:, None, None, None] + gx[:, :, None, None]) + (gy[:, None, :, None] + gz[:, None, None, :])
    if elastic is not None:
        grid = grid + torch.einsum("nmi,nixyz->nxyzm", g, elastic)
    return grid


def center_crop(x: Tensor, out_shape) -> Tensor:
    """Centred crop (zero padding where the input is smaller) of (n, C, *in) -> (n, C, *out)."""
    start = _crop_start(x.shape[2:], out_shape)
    pad = []
    for s, i, o in zip(reversed(start), reversed(x.shape[2:]), reversed(out_shape)):
        pad += [max(-s, 0), max(s + o - i, 0)]
    if any(pad):
        x = F.pad(x, pad)
        start = [max(s, 0) for s in start]
    return x[(slice(None), slice(None)) + tuple(slice(s, s + o) for s, o in zip(start, out_shape))]


def _elastic_field(coarse: Tensor, out_shape) -> Tensor:
    return F.interpolate(coarse, size=tuple(out_shape), mode="trilinear", align_corners=True)


def _resample_group(image: Tensor, label: Tensor | None, params: Params, idx: list[int], out_shape,
                    label_mode: str) -> tuple[Tensor, Tensor | None]:
    """Resample samples ``idx`` (image/label hold exactly these samples) with one shared grid."""
    dev, n, C = image.device, len(idx), image.shape[1]
    mat = spatial_matrix(params.rotation[idx], params.scale[idx], params.mirror[idx]).to(dev)
    coarse = params.elastic[idx]
    el = _elastic_field(coarse.to(dev), out_shape) if bool((coarse != 0).any()) else None
    grid = sampling_grid(mat, torch.zeros(n, 3, device=dev), image.shape[2:], out_shape, el)
    rot_c, shift_c = params.motion_rotation[idx], params.motion_shift[idx]
    if not bool((rot_c != 0).any() or (shift_c != 0).any()):
        img = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    else:  # per-channel frames: channel c reads R_c A (p + e) + t_c (channels as batch items)
        mat_c = (rotation_matrix(rot_c).to(dev) @ mat[:, None]).reshape(-1, 3, 3)
        el_c = None if el is None else el.repeat_interleave(C, 0)
        grid_c = sampling_grid(mat_c, shift_c.to(dev).reshape(-1, 3), image.shape[2:], out_shape, el_c)
        img = F.grid_sample(image.reshape(n * C, 1, *image.shape[2:]), grid_c, mode="bilinear",
                            padding_mode="zeros", align_corners=True).reshape(n, C, *out_shape)
    if label is None:
        return img, None
    mode = "bilinear" if label_mode == "linear" else "nearest"
    lab = F.grid_sample(label.float(), grid, mode=mode, padding_mode="zeros", align_corners=True)
    # 'linear': trilinear then > 0.5, nnU-Net's resampling of the one-hot binary label
    lab = (lab > 0.5).to(label.dtype) if label_mode == "linear" else lab.round_().to(label.dtype)
    return img, lab


def needs_resampling(params: Params) -> list[bool]:
    """Per sample: True when the spatial part interpolates, False when it only crops and flips."""
    moved = (params.motion_rotation != 0).flatten(1).any(1) | (params.motion_shift != 0).flatten(1).any(1)
    warped = (params.elastic != 0).flatten(1).any(1)
    return ((params.rotation != 0).any(1) | (params.scale != 1) | warped | moved).tolist()


def spatial(image: Tensor, label: Tensor | None, params: Params, out_shape, label_mode: str = "linear"):
    """Rotation, scaling, elastic, inter-channel motion, centre crop and mirroring in one pass.

    Samples whose parameters need no interpolation are cropped and flipped exactly; the others
    are resampled once from the enlarged region (one grid shared by image and label).
    image (B, C, *region), label (B, 1, *region) or None -> (B, C, *out), (B, 1, *out).
    """
    if label_mode not in ("linear", "nearest"):
        raise ValueError(f"label_mode must be 'linear' or 'nearest', got {label_mode!r}")
    B, C = image.shape[:2]
    needs = needs_resampling(params)
    if all(needs):
        return _resample_group(image, label, params, list(range(B)), out_shape, label_mode)
    img_out = image.new_empty((B, C, *out_shape))
    lab_out = None if label is None else label.new_empty((B, label.shape[1], *out_shape))
    for b in range(B):  # per-sample views: no copy of the enlarged regions
        lab_b = None if label is None else label[b:b + 1]
        if needs[b]:
            img, lab = _resample_group(image[b:b + 1], lab_b, params, [b], out_shape, label_mode)
        else:
            dims = [2 + d for d in range(3) if bool(params.mirror[b, d])]
            img = center_crop(image[b:b + 1], out_shape)
            img = img.flip(dims) if dims else img
            lab = None if label is None else center_crop(lab_b, out_shape)
            lab = lab.flip(dims) if dims and lab is not None else lab
        img_out[b:b + 1] = img
        if label is not None:
            lab_out[b:b + 1] = lab
    return img_out, lab_out


# intensity transforms live in data/intensity.py
from data.intensity import (  # noqa: E402,F401  (re-exported)
    add_noise, adjust_contrast, adjust_gamma, bias_field, bias_field_map, gaussian_blur, gaussian_kernels,
    ghosting, multiply_brightness, simulate_low_resolution, _monomials,
)


# ----------------------------------------------------------------------------- composition

def _on_samples(x: Tensor, active: Tensor, fn) -> Tensor:
    """x[active] = fn(x[active], idx) for a (B,) bool mask of samples (CPU)."""
    idx = torch.nonzero(active).flatten()
    if len(idx) == 0:
        return x
    first, last = int(idx[0]), int(idx[-1])
    if last - first + 1 == len(idx):  # a contiguous run: work on a view, no gather
        if len(idx) == x.shape[0]:
            return fn(x, idx)
        x[first:last + 1] = fn(x[first:last + 1], idx)
        return x
    dev_idx = idx.to(x.device)
    x[dev_idx] = fn(x[dev_idx], idx)
    return x


def _on_rows(x: Tensor, active: Tensor, fn) -> Tensor:
    """Same for (B, C) masks: the selected channels are passed as (rows, 1, X, Y, Z)."""
    B, C = active.shape
    idx = torch.nonzero(active.reshape(-1)).flatten()
    if len(idx) == 0:
        return x
    rows = x.reshape(B * C, 1, *x.shape[2:])
    dev_idx = idx.to(x.device)
    rows[dev_idx] = fn(rows[dev_idx], idx)
    return rows.reshape(x.shape)


def apply(batch_image: Tensor, batch_label: Tensor | None, params: Params, out_patch,
          label_mode: str = "linear") -> tuple[Tensor, Tensor | None]:
    """Augment a batch on its device.

    Args:
        batch_image: (B, C, *region) float; batch_label: (B, 1, *region) integer or None.
        out_patch: final (X, Y, Z); the region is usually ``sampler.pretransform_patch_size``.
    Returns:
        image (B, C, *out_patch) float, label (B, 1, *out_patch) with the input label dtype.
    """
    B, C = batch_image.shape[:2]
    if params.rotation.shape[0] != B or params.brightness.shape[1] != C:
        raise ValueError(f"params drawn for (B={params.rotation.shape[0]}, C={params.brightness.shape[1]}), "
                         f"batch is (B={B}, C={C})")
    out_patch = tuple(int(o) for o in out_patch)
    p = params
    with torch.no_grad():
        x, y = spatial(batch_image, batch_label, p, out_patch, label_mode)
        x = _on_samples(x, (p.bias != 0).any(1), lambda v, i: bias_field(v, p.bias[i], p.bias_order))
        x = _on_samples(x, (p.ghost_intensity != 0).any(1),
                        lambda v, i: ghosting(v, p.ghost_axis[i], p.ghost_count[i], p.ghost_intensity[i]))
        x = _on_samples(x, p.noise_std != 0, lambda v, i: add_noise(v, p.noise_std[i], p.noise_seed))
        x = _on_rows(x, (p.blur_sigma != 0).any(-1), lambda v, i: gaussian_blur(v, p.blur_sigma.reshape(-1, 1, 3)[i]))
        x = _on_samples(x, (p.brightness != 1).any(1), lambda v, i: multiply_brightness(v, p.brightness[i]))
        x = _on_samples(x, (p.contrast != 1).any(1), lambda v, i: adjust_contrast(v, p.contrast[i]))
        x = _on_samples(x, (p.lowres_zoom != 1).any(1), lambda v, i: simulate_low_resolution(v, p.lowres_zoom[i]))
        x = _on_samples(x, (p.gamma_inverted != 1).any(1),
                        lambda v, i: adjust_gamma(v, p.gamma_inverted[i], invert=True))
        x = _on_samples(x, (p.gamma != 1).any(1), lambda v, i: adjust_gamma(v, p.gamma[i]))
    return x, y
