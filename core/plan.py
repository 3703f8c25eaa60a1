"""Frozen settings that describe a dataset (``Fingerprint``) and how to train on it (``Plan``).

A ``Plan`` is the single source of truth shared by preprocessing, training and inference: every
checkpoint embeds it, so inference never guesses a spacing, a patch size or a normalisation.
Everything here is plain data plus strict (de)serialisation:

- ``to_json`` / ``from_json``: every field is written and every field is required on reading;
  an unknown or a missing key raises ``ValueError`` naming it (a typo in a hand-edited plan must
  not be silently ignored).
- ``plan_hash``: SHA-256 of the canonical JSON (sorted keys, no whitespace), stable across runs
  and machines; used to tie caches and checkpoints to the plan that produced them.
- ``apply_overrides``: command-line style ``key=value`` edits, parsed from the field types
  (``patch_size=128,128,128``, ``archs.mednext.kernel=5``).

Conventions: spacings and shapes are ``(X, Y, Z)`` in nibabel voxel order, spacings in mm.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union


from core.atomic import atomic_write
from core.settings import (ADDED_KEYS, Settings, _coerce_fields, _from_mapping, _hints,  # noqa: F401
                           _parse_text, canonical_json, coerce_fields, from_mapping, settings_hash, to_dict)

PLAN_FORMAT_VERSION = 1
RESAMPLING = ("cubic", "spline")
NORMALISATIONS = ("zscore", "zscore_joint", "none")
ARCH_NAMES = ("unet", "mednext")
MEDNEXT_SIZES = ("S", "B", "M", "L")


# ----------------------------------------------------------------------------------------------
# the settings
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IntensityStats:
    """Foreground intensity statistics of one channel (nnU-Net fingerprint: mean, std and the
    0.5 / 99.5 percentiles of intensities sampled inside the segmentation)."""

    mean: float
    std: float
    percentile_00_5: float
    percentile_99_5: float

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if self.std < 0 or self.percentile_00_5 > self.percentile_99_5:
            raise ValueError(f"inconsistent intensity statistics {self}")


@dataclass(frozen=True)
class Fingerprint:
    """What the planner needs to know about a dataset.

    ``spacings[i]`` and ``shapes_after_crop[i]`` describe case i (after crop-to-nonzero, before
    resampling); ``crop_fractions[i]`` = voxels after crop / voxels before (nnU-Net uses the median
    to decide whether normalisation is restricted to the nonzero mask); ``intensity[c]`` pools the
    foreground samples of channel c over all cases.
    """

    spacings: tuple[tuple[float, float, float], ...]
    shapes_after_crop: tuple[tuple[int, int, int], ...]
    crop_fractions: tuple[float, ...]
    intensity: tuple[IntensityStats, ...]
    channel_names: tuple[str, ...]
    n_cases: int

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if self.n_cases < 1:
            raise ValueError(f"Fingerprint.n_cases must be >= 1, got {self.n_cases}")
        for name in ("spacings", "shapes_after_crop", "crop_fractions"):
            if len(getattr(self, name)) != self.n_cases:
                raise ValueError(f"Fingerprint.{name} has {len(getattr(self, name))} entries, "
                                 f"n_cases is {self.n_cases}")
        if len(self.intensity) != len(self.channel_names):
            raise ValueError(f"Fingerprint has {len(self.intensity)} intensity entries for "
                             f"{len(self.channel_names)} channel names")
        if any(s <= 0 for sp in self.spacings for s in sp):
            raise ValueError("Fingerprint.spacings must be > 0")
        if any(s < 1 for sh in self.shapes_after_crop for s in sh):
            raise ValueError("Fingerprint.shapes_after_crop must be >= 1")
        if any(not 0 < f <= 1 for f in self.crop_fractions):
            raise ValueError("Fingerprint.crop_fractions must lie in (0, 1]")


@dataclass(frozen=True)
class ArchSpec:
    """One network configuration; fields not used by ``name`` stay empty / None.

    U-Net (nnU-Net's PlainConvUNet): ``features[s]``, ``kernel_sizes[s]``, ``strides[s]`` (the
    stride of the first conv of stage s, ``strides[0] == (1, 1, 1)``) and ``n_conv_per_stage[s]``
    per resolution stage; the decoder stage at resolution s uses the same kernel and conv count.
    MedNeXt: ``size`` (S/B/M/L), ``kernel`` (3 or 5, odd), ``base_channels`` (C, 32 in the paper);
    always 4 downsamplings on every axis.
    ``num_pool[d]``: how often axis d is halved; an input patch must be divisible by 2**num_pool[d].
    """

    name: str
    num_pool: tuple[int, int, int]
    features: tuple[int, ...] = ()
    kernel_sizes: tuple[tuple[int, int, int], ...] = ()
    strides: tuple[tuple[int, int, int], ...] = ()
    n_conv_per_stage: tuple[int, ...] = ()
    size: Optional[str] = None
    kernel: Optional[int] = None
    base_channels: Optional[int] = None

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if self.name not in ARCH_NAMES:
            raise ValueError(f"ArchSpec.name {self.name!r} is not one of {ARCH_NAMES}")
        if any(p < 0 for p in self.num_pool):
            raise ValueError(f"ArchSpec.num_pool must be >= 0, got {self.num_pool}")
        unet_fields = (self.features, self.kernel_sizes, self.strides, self.n_conv_per_stage)
        mednext_fields = (self.size, self.kernel, self.base_channels)
        if self.name == "unet":
            self._check_unet()
            if any(v is not None for v in mednext_fields):
                raise ValueError("ArchSpec 'unet' must not set size/kernel/base_channels")
        else:
            self._check_mednext()
            if any(unet_fields):
                raise ValueError("ArchSpec 'mednext' must not set features/kernel_sizes/strides/"
                                 "n_conv_per_stage")

    def _check_unet(self) -> None:
        n = len(self.features)
        lengths = {len(self.kernel_sizes), len(self.strides), len(self.n_conv_per_stage)}
        if n < 1 or lengths != {n}:
            raise ValueError(f"ArchSpec 'unet': features, kernel_sizes, strides and n_conv_per_stage "
                             f"need one entry per stage, got lengths {n} and {sorted(lengths)}")
        if self.strides[0] != (1, 1, 1):
            raise ValueError(f"ArchSpec 'unet': strides[0] must be (1, 1, 1), got {self.strides[0]}")
        if any(s not in (1, 2) for st in self.strides for s in st):
            raise ValueError(f"ArchSpec 'unet': strides must be 1 or 2, got {self.strides}")
        pools = tuple(sum(st[d] == 2 for st in self.strides) for d in range(3))
        if pools != self.num_pool:
            raise ValueError(f"ArchSpec 'unet': num_pool {self.num_pool} does not match the strides "
                             f"(which pool {pools})")
        if any(k < 1 or k % 2 == 0 for ks in self.kernel_sizes for k in ks):
            raise ValueError(f"ArchSpec 'unet': kernel sizes must be odd, got {self.kernel_sizes}")
        if any(f < 1 for f in self.features) or any(c < 1 for c in self.n_conv_per_stage):
            raise ValueError("ArchSpec 'unet': features and n_conv_per_stage must be >= 1")

    def _check_mednext(self) -> None:
        if self.size not in MEDNEXT_SIZES:
            raise ValueError(f"ArchSpec 'mednext': size {self.size!r} is not one of {MEDNEXT_SIZES}")
        if self.kernel is None or self.kernel < 3 or self.kernel % 2 == 0:
            raise ValueError(f"ArchSpec 'mednext': kernel must be odd and >= 3, got {self.kernel}")
        if self.base_channels is None or self.base_channels < 1:
            raise ValueError(f"ArchSpec 'mednext': base_channels must be >= 1, got {self.base_channels}")
        if self.num_pool != (4, 4, 4):
            raise ValueError(f"ArchSpec 'mednext': num_pool must be (4, 4, 4), got {self.num_pool}")


@dataclass(frozen=True)
class Plan:
    """How to preprocess, train and infer (one configuration, nnU-Net's '3d_fullres').

    target_spacing: resampling target (mm, X/Y/Z). channels: which phases of a case are the input
    channels, e.g. (0, 1, 2) = pre-contrast and the first two post-contrast phases.
    normalisation[c]: 'zscore' (per case and channel, nnU-Net's MR scheme), 'zscore_joint' (one
    mean/std per case shared by all phases, keeping relative enhancement) or 'none'.
    use_nonzero_mask: normalise inside the nonzero region only (nnU-Net: when cropping removed
    > 25 % of the voxels). clahe: apply CLAHE before normalising. intensity_stats[c]: fingerprint
    statistics of channel ``channels[c]``. archs: name -> ArchSpec; ``patch_size`` is divisible by
    2**num_pool of every one. median_shape: median case shape after resampling.
    separate_z_resampling: resample an axis > 3x coarser than the finest separately with order 0
    (nnU-Net's anisotropy handling). resampling: image interpolation, 'cubic' (separable Keys
    cubic convolution, the default: fast, no overshoot-prone prefilter) or 'spline' (order-3
    B-spline, nnU-Net's; with it our masks match nnU-Net's predictor to Dice >= 0.9994). The
    ``archs`` dict must be treated as read-only.
    """

    target_spacing: tuple[float, float, float]
    channels: tuple[int, ...]
    normalisation: tuple[str, ...]
    patch_size: tuple[int, int, int]
    batch_size: int
    median_shape: tuple[int, int, int]
    intensity_stats: tuple[IntensityStats, ...]
    archs: dict[str, ArchSpec]
    use_nonzero_mask: bool = False
    clahe: bool = False
    separate_z_resampling: bool = True
    resampling: str = "cubic"
    format_version: int = PLAN_FORMAT_VERSION

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if self.format_version != PLAN_FORMAT_VERSION:
            raise ValueError(f"Plan.format_version {self.format_version} is not supported "
                             f"(this code reads version {PLAN_FORMAT_VERSION})")
        if any(s <= 0 for s in self.target_spacing):
            raise ValueError(f"Plan.target_spacing must be > 0, got {self.target_spacing}")
        if self.resampling not in RESAMPLING:
            raise ValueError(f"Plan.resampling must be one of {RESAMPLING}, got {self.resampling!r}")
        if not self.channels or len(set(self.channels)) != len(self.channels) or min(self.channels) < 0:
            raise ValueError(f"Plan.channels must be distinct indices >= 0, got {self.channels}")
        for name in ("normalisation", "intensity_stats"):
            if len(getattr(self, name)) != len(self.channels):
                raise ValueError(f"Plan.{name} needs one entry per channel ({len(self.channels)}), "
                                 f"got {len(getattr(self, name))}")
        bad = [n for n in self.normalisation if n not in NORMALISATIONS]
        if bad:
            raise ValueError(f"Plan.normalisation {bad[0]!r} is not one of {NORMALISATIONS}")
        if min(self.patch_size) < 1 or min(self.median_shape) < 1 or self.batch_size < 1:
            raise ValueError("Plan.patch_size, median_shape and batch_size must be >= 1")
        if not self.archs:
            raise ValueError("Plan.archs must name at least one architecture")
        for key, spec in self.archs.items():
            if key != spec.name:
                raise ValueError(f"Plan.archs[{key!r}] holds an ArchSpec named {spec.name!r}")
            div = tuple(2 ** p for p in spec.num_pool)
            if any(p % d for p, d in zip(self.patch_size, div)):
                raise ValueError(f"Plan.patch_size {self.patch_size} is not divisible by {div} "
                                 f"as {key!r} requires")


_SETTINGS = (Plan, Fingerprint, ArchSpec, IntensityStats)


# ----------------------------------------------------------------------------------------------
# JSON, hash, files
# ----------------------------------------------------------------------------------------------
def to_json(obj: Any, indent: Optional[int] = 2) -> str:
    """JSON text of a Plan/Fingerprint/ArchSpec (all fields, declaration order)."""
    if not isinstance(obj, _SETTINGS):
        raise TypeError(f"to_json expects one of {[c.__name__ for c in _SETTINGS]}, got {type(obj)}")
    return json.dumps(to_dict(obj), indent=indent, allow_nan=False)


def from_json(text: str, cls: type = Plan) -> Any:
    """Parse JSON text into ``cls`` (default Plan); unknown or missing keys raise ValueError."""
    if cls not in _SETTINGS:
        raise TypeError(f"from_json cannot build {cls}")
    data = json.loads(text)  # json.JSONDecodeError is a ValueError
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    return _from_mapping(cls, data, cls.__name__)


def plan_hash(plan: Plan) -> str:
    """SHA-256 hex digest of ``canonical_json(plan)``."""
    return settings_hash(plan)


def save_plan(obj: Any, path: Union[str, os.PathLike]) -> Path:
    """Write ``to_json(obj)`` atomically (temporary file in the same folder, then os.replace),
    so a reader never sees a half-written plan. Works for Plan and Fingerprint."""
    return atomic_write(path, to_json(obj) + "\n")


def load_plan(path: Union[str, os.PathLike], cls: type = Plan) -> Any:
    """Read a file written by ``save_plan``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"plan file not found: {path}")
    try:
        return from_json(path.read_text(encoding="utf-8"), cls)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def load_fingerprint(path: Union[str, os.PathLike]) -> Fingerprint:
    return load_plan(path, Fingerprint)


# ----------------------------------------------------------------------------------------------
# overrides
# ----------------------------------------------------------------------------------------------
def parse_value(text: str, tp: Any, where: str) -> Any:
    """A command-line value for a field of type ``tp`` (the codec's strict text parsing):
    scalars as written, tuples comma-separated (``0.8,1.2``), anything else as JSON; ValueError
    naming ``where`` when ``text`` does not parse."""
    return _parse_text(text, tp, where)


def apply_overrides(plan: Plan, overrides: Sequence[str]) -> Plan:
    """Return a new Plan with ``key=value`` edits applied, e.g.
    ``["patch_size=128,128,128", "batch_size=4", "archs.mednext.kernel=5"]``.

    Values are parsed from the field types; the result is validated like any Plan (so a patch
    not divisible by an architecture's 2**num_pool is refused). Overrides replace values, they
    do not re-plan: for a new target spacing with a topology to match, call
    ``core.planner.make_plan(..., spacing=...)`` instead.
    """
    if isinstance(overrides, str):
        raise TypeError("apply_overrides expects a list of 'key=value' strings")
    plan_names = [f.name for f in dataclasses.fields(Plan)]
    arch_names = [f.name for f in dataclasses.fields(ArchSpec)]
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        path = key.split(".")
        if path[0] not in plan_names:
            raise ValueError(f"override {item!r}: unknown key {path[0]!r} "
                             f"(valid keys: {', '.join(plan_names)}, archs.<arch>.<field>)")
        if path[0] == "archs" and len(path) > 1:
            if len(path) != 3 or path[1] not in plan.archs:
                raise ValueError(f"override {item!r}: expected archs.<arch>.<field> with <arch> one "
                                 f"of {sorted(plan.archs)}")
            if path[2] not in arch_names:
                raise ValueError(f"override {item!r}: unknown key {path[2]!r} "
                                 f"(valid keys: {', '.join(arch_names)})")
            nested.setdefault(path[1], {})[path[2]] = _parse_text(
                value, _hints(ArchSpec)[path[2]], key)
        elif len(path) == 1:
            top[key] = _parse_text(value, _hints(Plan)[key], key)
        else:
            raise ValueError(f"override {item!r}: {path[0]!r} has no nested keys")
    try:
        if nested:
            archs = dict(top.get("archs", plan.archs))
            for name, changes in nested.items():
                archs[name] = dataclasses.replace(archs[name], **changes)
            top["archs"] = archs
        return dataclasses.replace(plan, **top)
    except ValueError as err:
        raise ValueError(f"overrides {list(overrides)}: {err}") from err
