"""Fingerprint -> Plan: target spacing, patch size, U-Net topology and batch size (nnU-Net v2 rules).

The rules follow nnU-Net v2's ``ExperimentPlanner`` (``determine_fullres_target_spacing``,
``get_plans_for_configuration``) and ``get_pool_and_conv_props``; the code is written from their
description. Worked example (breast DCE-MRI at 0.7 x 0.7 x 1.0 mm, median shape 300 x 300 x 160
after resampling; tests/test_planner.py checks every number):

1. Target spacing = median spacing (0.7, 0.7, 1.0). The coarsest axis (1.0 mm) is not > 3x the
   next coarsest (0.7 mm), so the 10th-percentile rule does not apply.
2. Initial patch: a 256^3 volume with edges proportional to 1/spacing:
   (1/0.7, 1/0.7, 1/1.0) * (256^3 * 0.49)^(1/3) = (288.3, 288.3, 201.8) -> (288, 288, 202),
   clipped to the median shape -> (288, 288, 160).
3. Topology: halve every axis whose feature map is >= 8 voxels and whose spacing is < 2x the
   finest: (288, 288, 160) -> 144,72,36,18,9 in-plane / 80,40,20,10,5 through-plane, then the
   in-plane axes once more (9 -> 5) while Z (5 < 8) stops: num_pool (6, 6, 5), 7 stages, kernels
   3x3x3 everywhere; the patch is padded to a multiple of 2**num_pool = (64, 64, 32): (320, 320, 160).
4. Memory: the feature-map estimate of that network (features 32, 64, ..., 320) at batch 2 is far
   above the 8 GB reference (2 x 560e6 elements), so the patch axis that is largest relative to
   the median shape is shrunk by one divisor step and the topology recomputed, until it fits:
   eleven steps later, (160, 160, 96) with num_pool (5, 5, 4) needs 528.9e6 elements per sample.
5. Batch size: as many patches as the budget allows (round(2 * 560e6 / 528.9e6) = 2), at least
   2, and no more than 5 % of the dataset's voxels per batch.

Memory model: nnU-Net's reference of 560e6 feature-map elements per sample at batch size 2 for
8 GB of GPU memory, scaled linearly with the budget. The count is what nnU-Net's
``compute_conv_feature_map_size`` returns: the outputs of every convolution, transposed
convolution and segmentation head (not the input, not norm/nonlinearity outputs). The planner
never imports a network: the caller may pass ``activation_elements(arch_spec, patch_size,
batch_size) -> int`` (the networks package provides one that counts its own modules);
``unet_activation_elements`` below is the analytic default.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from core.plan import ArchSpec, Fingerprint, IntensityStats, NORMALISATIONS, Plan

logger = logging.getLogger(__name__)

ActivationFn = Callable[[ArchSpec, Sequence[int], int], int]

ANISO_THRESHOLD = 3.0  # nnunetv2/configuration.py ANISO_THRESHOLD
REFERENCE_ELEMENTS_8GB = 560_000_000  # ExperimentPlanner.UNet_reference_val_3d, per sample ...
REFERENCE_BATCH = 2  # ... at batch size 2 (UNet_reference_val_corresp_bs_3d) for 8 GB
MIN_BATCH = 2  # UNet_min_batch_size
MAX_DATASET_FRACTION = 0.05  # max_dataset_covered: one batch sees <= 5 % of the dataset's voxels
MIN_EDGE = 4  # UNet_featuremap_min_edge_length: bottleneck edge >= 4, so pool while edge >= 8
NONZERO_MASK_CROP_FRACTION = 0.75  # use the nonzero mask when cropping removed > 25 % of voxels
MEDNEXT_POOL = 4  # MedNeXt halves every axis 4 times: patches divisible by 16


# ----------------------------------------------------------------------------------------------
# fingerprint
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseRecord:
    """What the file-reading side measures per case: spacing (mm, X/Y/Z), shape before and after
    crop-to-nonzero, and per channel a 1D array of intensities sampled inside the foreground
    (nnU-Net samples 10,000 voxels per case)."""

    spacing: tuple[float, float, float]
    shape_before_crop: tuple[int, int, int]
    shape_after_crop: tuple[int, int, int]
    foreground_samples: tuple[np.ndarray, ...]


def fingerprint_from_stats(records: Sequence[CaseRecord],
                           channel_names: Optional[Sequence[str]] = None) -> Fingerprint:
    """Aggregate per-case records into a Fingerprint.

    Intensity statistics pool the samples of all cases per channel (mean, population std, 0.5 and
    99.5 percentiles with numpy's linear interpolation, as nnU-Net). ``channel_names`` default to
    the phase file suffixes '0000', '0001', ...
    """
    if not records:
        raise ValueError("fingerprint_from_stats needs at least one case record")
    n_channels = len(records[0].foreground_samples)
    for i, rec in enumerate(records):
        if len(rec.foreground_samples) != n_channels:
            raise ValueError(f"case record {i} has {len(rec.foreground_samples)} channels, "
                             f"case record 0 has {n_channels}")
    names = tuple(channel_names) if channel_names is not None else tuple(
        f"{c:04d}" for c in range(n_channels))
    if len(names) != n_channels:
        raise ValueError(f"{len(names)} channel names given for {n_channels} channels")
    stats = []
    for c in range(n_channels):
        pooled = np.concatenate([np.asarray(r.foreground_samples[c], dtype=np.float64).ravel()
                                 for r in records])
        if pooled.size == 0:
            raise ValueError(f"channel {names[c]!r} has no foreground samples in any case")
        stats.append(IntensityStats(float(pooled.mean()), float(pooled.std()),
                                    float(np.percentile(pooled, 0.5)),
                                    float(np.percentile(pooled, 99.5))))
    fractions = tuple(float(np.prod(r.shape_after_crop, dtype=np.float64) /
                            np.prod(r.shape_before_crop, dtype=np.float64)) for r in records)
    return Fingerprint(spacings=tuple(r.spacing for r in records),
                       shapes_after_crop=tuple(r.shape_after_crop for r in records),
                       crop_fractions=fractions, intensity=tuple(stats), channel_names=names,
                       n_cases=len(records))


# ----------------------------------------------------------------------------------------------
# spacing and shapes
# ----------------------------------------------------------------------------------------------
def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]],
                   explicit: Optional[Sequence[float]] = None) -> tuple[float, float, float]:
    """Target spacing for resampling (nnU-Net v2 ``determine_fullres_target_spacing``).

    The median spacing per axis, except for strongly anisotropic data: let w be the axis with the
    largest median spacing. If ``median_spacing[w] > 3 * max(other median spacings)`` *and*
    ``3 * median_shape[w] < min(other median shapes)``, axis w gets the 10th percentile of its
    spacings instead (fewer interpolation artefacts from upsampling thick slices), but never less
    than the coarser other axis (nnU-Net then adds 1e-5 to keep w the coarsest). ``explicit``
    (e.g. the MAMA-MIA seeds' 1 mm isotropic) overrides everything.

    Example: spacings (0.7, 0.7, 4.0) with shapes (256, 256, 40) for most cases and a few at
    3.0 mm: 4.0 > 3 * 0.7 and 3 * 40 < 256, so Z gets the 10th percentile of its spacings (3.0).
    """
    if explicit is not None:
        out = tuple(float(s) for s in explicit)
        if len(out) != 3 or not all(s > 0 and math.isfinite(s) for s in out):
            raise ValueError(f"explicit target spacing must be 3 positive numbers, got {explicit}")
        return out  # type: ignore[return-value]
    sp = np.asarray(spacings, dtype=np.float64)
    sh = np.asarray(shapes, dtype=np.float64)
    if sp.ndim != 2 or sp.shape[1] != 3 or sp.shape != sh.shape or len(sp) == 0:
        raise ValueError(f"spacings and shapes must both be (n_cases, 3), got {sp.shape} and "
                         f"{sh.shape}")
    target = np.percentile(sp, 50, axis=0)
    median_shape = np.percentile(sh, 50, axis=0)
    worst = int(np.argmax(target))
    others = [d for d in range(3) if d != worst]
    aniso_spacing = target[worst] > ANISO_THRESHOLD * max(target[d] for d in others)
    aniso_voxels = median_shape[worst] * ANISO_THRESHOLD < min(median_shape[d] for d in others)
    if aniso_spacing and aniso_voxels:
        t = float(np.percentile(sp[:, worst], 10))
        coarsest_other = max(target[d] for d in others)
        if t < coarsest_other:
            t = coarsest_other + 1e-5
        logger.info("anisotropic data: axis %d target spacing %.4g (10th percentile) instead of "
                    "the median %.4g", worst, t, target[worst])
        target[worst] = t
    return tuple(float(s) for s in target)  # type: ignore[return-value]


def median_resampled_shape(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]],
                           target: Sequence[float]) -> np.ndarray:
    """Median over cases of ``round(shape * spacing / target)`` (float; may end in .5)."""
    sp, sh = np.asarray(spacings, dtype=np.float64), np.asarray(shapes, dtype=np.float64)
    new = np.round(sh * sp / np.asarray(target, dtype=np.float64))
    return np.median(new, axis=0)


# ----------------------------------------------------------------------------------------------
# U-Net topology and memory
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Topology:
    num_pool: tuple[int, int, int]
    strides: tuple[tuple[int, int, int], ...]
    kernel_sizes: tuple[tuple[int, int, int], ...]
    patch_size: tuple[int, int, int]  # padded up to a multiple of ``divisor``
    divisor: tuple[int, int, int]


def unet_topology(spacing: Sequence[float], patch_size: Sequence[int], min_edge: int = MIN_EDGE,
                  max_pool: Optional[int] = None, min_divisor: int = 1) -> Topology:
    """Pooling and kernel sizes for a patch (nnU-Net ``get_pool_and_conv_props``).

    Repeat: the axes that may be halved are those with a feature map edge >= 2*min_edge (8) and a
    current spacing < 2x the finest spacing among them (and fewer than ``max_pool`` poolings); if
    only one axis qualifies it needs an edge >= 3*min_edge (12). Halve them (ceil), double their
    spacing. The kernel of a stage is 3 on axes whose current spacing is < 2x the finest, else 1
    (once 3, it stays 3); the bottleneck kernel is 3 everywhere. The patch is padded up to a
    multiple of ``max(2**num_pool, min_divisor)`` per axis.

    Example: spacing (0.7, 0.7, 3.0), patch (160, 160, 32): Z (3.0 >= 2 * 0.7) is not pooled and
    keeps kernel 1 until the in-plane spacing reaches 2.8 (two poolings); from then on Z pools too.

    nnU-Net indexes the kernel rule with the spacings of the poolable axes only (which can
    misalign axes once one stops pooling); here every axis uses its own current spacing.
    """
    spacing_now = [float(s) for s in spacing]
    size = [float(s) for s in patch_size]
    limit = math.inf if max_pool is None else max_pool
    num_pool = [0, 0, 0]
    kernel = [1, 1, 1]
    strides: list[tuple[int, int, int]] = [(1, 1, 1)]
    kernels: list[tuple[int, int, int]] = []
    while True:
        valid = [d for d in range(3) if size[d] >= 2 * min_edge]
        if not valid:
            break
        finest = min(spacing_now[d] for d in valid)
        valid = [d for d in valid if spacing_now[d] / finest < 2 and num_pool[d] < limit]
        if not valid or (len(valid) == 1 and size[valid[0]] < 3 * min_edge):
            break
        finest_all = min(spacing_now)
        for d in range(3):
            if spacing_now[d] / finest_all < 2:
                kernel[d] = 3
        kernels.append(tuple(kernel))  # type: ignore[arg-type]
        strides.append(tuple(2 if d in valid else 1 for d in range(3)))  # type: ignore[arg-type]
        for d in valid:
            num_pool[d] += 1
            spacing_now[d] *= 2
            size[d] = math.ceil(size[d] / 2)
    kernels.append((3, 3, 3))
    divisor = tuple(max(2 ** p, min_divisor) for p in num_pool)
    padded = tuple(int(math.ceil(p / d) * d) for p, d in zip(patch_size, divisor))
    return Topology(tuple(num_pool), tuple(strides), tuple(kernels),
                    padded, divisor)  # type: ignore[arg-type]


def unet_spec(topo: Topology, base_features: int = 32, max_features: int = 320,
              n_conv: int = 2) -> ArchSpec:
    """ArchSpec of nnU-Net's PlainConvUNet for a topology: features 32 * 2**s capped at 320."""
    n = len(topo.strides)
    return ArchSpec(name="unet", num_pool=topo.num_pool,
                    features=tuple(min(max_features, base_features * 2 ** s) for s in range(n)),
                    kernel_sizes=topo.kernel_sizes, strides=topo.strides,
                    n_conv_per_stage=(n_conv,) * n)


def unet_activation_elements(spec: ArchSpec, patch_size: Sequence[int], batch_size: int,
                             num_classes: int = 2, deep_supervision: bool = True) -> int:
    """Feature-map elements of a U-Net forward pass, counted as nnU-Net's
    ``compute_conv_feature_map_size`` does, times ``batch_size``.

    Encoder stage s (size n_s = n_{s-1} // stride_s): ``n_conv[s] * F[s] * prod(n_s)``. Decoder
    stage at resolution s < last: its convs ``n_conv[s] * F[s] * prod(n_s)``, the transposed conv
    ``F[s] * prod(n_s)`` and the segmentation head ``num_classes * prod(n_s)`` (every decoder
    stage with deep supervision, otherwise only s = 0).

    Example: features (4, 8), strides ((1,1,1), (2,2,2)), 2 convs, patch 8^3, 2 classes, batch 1:
    encoder 2*4*512 + 2*8*64 = 5120; decoder 2*4*512 + 4*512 + 2*512 = 7168; total 12288.
    """
    if spec.name != "unet":
        raise ValueError(f"unet_activation_elements cannot estimate an ArchSpec named {spec.name!r}")
    per_sample = conv_feature_map_elements(patch_size, spec.features, spec.strides, spec.n_conv_per_stage,
                                           spec.n_conv_per_stage[:-1], num_classes, deep_supervision)
    return per_sample * int(batch_size)


def conv_feature_map_elements(patch_size: Sequence[int], features: Sequence[int], strides,
                              n_conv_encoder: Sequence[int], n_conv_decoder: Sequence[int],
                              num_classes: int, deep_supervision: bool = True) -> int:
    """Per-sample convolution outputs of a U-Net (the one implementation of nnU-Net's
    ``compute_conv_feature_map_size``; ``nets.unet`` counts with it too). ``strides[s]`` is a
    3-tuple, ``n_conv_decoder[s]`` the convs of the decoder stage at resolution s < S-1."""
    size = [int(s) for s in patch_size]
    voxels = []
    for st in strides:
        size = [a // b for a, b in zip(size, st)]
        voxels.append(int(np.prod(size, dtype=np.int64)))
    total = sum(n_conv_encoder[s] * features[s] * v for s, v in enumerate(voxels))
    for s in range(len(voxels) - 1):
        total += (n_conv_decoder[s] + 1) * features[s] * voxels[s]   # convs + transposed conv output
        if deep_supervision or s == 0:
            total += num_classes * voxels[s]
    return int(total)


# ----------------------------------------------------------------------------------------------
# budgets
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """A memory/compute target. ``gpu_gb`` None means the CPU preset, whose element budget is the
    activation count of its reference network (see ``parse_budget``)."""

    name: str
    gpu_gb: Optional[float]
    base_features: int = 32
    max_features: int = 320
    max_pool: Optional[int] = None
    initial_patch_volume: int = 256 ** 3
    mednext_size: str = "B"
    mednext_base_channels: int = 32


CPU_REFERENCE_PATCH = (64, 64, 64)


def parse_budget(budget: Union[str, float, Budget]) -> Budget:
    """'8GB' (nnU-Net's default), '40GB', '80GB', any '<number>GB', a number of GB, or 'cpu'.

    GPU budgets keep nnU-Net's U-Net (features 32..320, unlimited depth) and differ in the element
    budget; the MedNeXt size grows with memory (a choice, not a rule from the paper): < 16 GB B,
    < 60 GB M, otherwise L, all kernel 3 (seed B's kernel 5 comes from UpKern:
    ``archs.mednext.kernel=5``).
    'cpu' targets a 2-core CPU: features 16..128, at most 3 poolings per axis (4 stages), an
    initial patch of 64^3 voxels, and an element budget equal to that U-Net's activations on
    64^3 at batch 2. Measured on the development CPU, that forward pass takes ~1.2 s (bench/README.md), which keeps a training step to a few seconds. MedNeXt S with 16 channels.
    """
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, str) and budget.strip().lower() == "cpu":
        return Budget("cpu", None, base_features=16, max_features=128, max_pool=3,
                      initial_patch_volume=int(np.prod(CPU_REFERENCE_PATCH)),
                      mednext_size="S", mednext_base_channels=16)
    if isinstance(budget, str):
        text = budget.strip().upper()
        number = text[:-2] if text.endswith("GB") else text
        try:
            gb = float(number)
        except ValueError:
            raise ValueError(f"budget {budget!r}: expected 'cpu' or '<number>GB' like '8GB'") from None
    elif isinstance(budget, (int, float)) and not isinstance(budget, bool):
        gb = float(budget)
    else:
        raise ValueError(f"budget {budget!r}: expected 'cpu' or '<number>GB' like '8GB'")
    if not gb > 0 or not math.isfinite(gb):
        raise ValueError(f"budget {budget!r}: memory must be positive")
    size = "B" if gb < 16 else "M" if gb < 60 else "L"
    return Budget(f"{gb:g}GB", gb, mednext_size=size)


def budget_elements(budget: Budget, activation_elements: ActivationFn) -> float:
    """Feature-map elements allowed for a batch of ``REFERENCE_BATCH`` patches."""
    if budget.gpu_gb is not None:
        return REFERENCE_ELEMENTS_8GB * REFERENCE_BATCH * budget.gpu_gb / 8.0
    ref = unet_spec(unet_topology((1.0, 1.0, 1.0), CPU_REFERENCE_PATCH, max_pool=budget.max_pool),
                    budget.base_features, budget.max_features)
    return float(activation_elements(ref, CPU_REFERENCE_PATCH, REFERENCE_BATCH))


# ----------------------------------------------------------------------------------------------
# patch, topology, batch size
# ----------------------------------------------------------------------------------------------
def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[int],
                       volume: int = 256 ** 3) -> tuple[int, int, int]:
    """Edges proportional to 1/spacing with the given volume, rounded, clipped to the median shape."""
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    edges = inv * (volume / np.prod(inv)) ** (1.0 / 3.0)
    clipped = (int(min(round(float(e)), int(m))) for e, m in zip(edges, median_shape))
    return tuple(clipped)  # type: ignore[return-value]


def plan_unet(spacing: Sequence[float], median_shape: Sequence[int], budget: Budget,
              activation_elements: ActivationFn,
              min_divisor: int = 1) -> tuple[ArchSpec, tuple[int, int, int]]:
    """Largest patch (and its U-Net) whose activations at batch 2 fit the budget.

    While over budget, shrink the axis with the largest patch/median ratio (the last such axis on
    ties, as nnU-Net's argsort) by one divisor step: subtract the current divisor, recompute the
    divisor of that smaller patch and subtract *that* from the current size instead, so that valid
    sizes between multiples are not skipped (nnU-Net: 256 -> 224, not 192). Then recompute the
    topology (the patch may gain or lose a pooling) and the estimate.
    """
    elements = budget_elements(budget, activation_elements)
    median = [int(m) for m in median_shape]

    def topo_of(patch: Sequence[int]) -> Topology:
        return unet_topology(spacing, patch, MIN_EDGE, budget.max_pool, min_divisor)

    def spec_of(t: Topology) -> ArchSpec:
        return unet_spec(t, budget.base_features, budget.max_features)

    topo = topo_of(initial_patch_size(spacing, median, budget.initial_patch_volume))
    for _ in range(10_000):  # each step shrinks one axis; the bound only guards against a cycle
        if activation_elements(spec_of(topo), topo.patch_size, REFERENCE_BATCH) <= elements:
            return spec_of(topo), topo.patch_size
        patch = list(topo.patch_size)
        # axes that can still lose a step (MedNeXt needs >= 16 voxels on every axis)
        shrinkable = [d for d in range(3) if patch[d] - topo.divisor[d] >= max(1, min_divisor)]
        if not shrinkable:
            raise ValueError(f"memory budget {budget.name} is too small for any patch at spacing "
                             f"{tuple(spacing)} (reached {tuple(patch)})")
        ratios = {d: patch[d] / median[d] for d in shrinkable}
        axis = max(d for d in shrinkable if ratios[d] == max(ratios.values()))
        smaller = list(patch)
        smaller[axis] -= topo.divisor[axis]
        patch[axis] -= topo_of(smaller).divisor[axis]
        new = topo_of(patch)
        if new.patch_size[axis] >= topo.patch_size[axis]:  # padding undid the step: take the full one
            new = topo_of(smaller)
        topo = new
    raise RuntimeError(f"patch search did not converge (spacing {tuple(spacing)}, median {median})")


def batch_size_for(spec: ArchSpec, patch_size: Sequence[int], budget: Budget,
                   activation_elements: ActivationFn, dataset_voxels: float) -> int:
    """nnU-Net's batch size: ``round(budget / elements of one patch)``, capped so one batch holds
    at most 5 % of the dataset's voxels, and never below 2.

    Example: a patch of 64^3 = 262144 voxels and a dataset of 20 cases of 128^3 (41.9e6 voxels):
    the cap is round(0.05 * 41.9e6 / 262144) = 8, so even a huge budget gives batch 8.
    """
    per_sample = activation_elements(spec, patch_size, 1)
    by_memory = round(budget_elements(budget, activation_elements) / per_sample)
    patch_voxels = float(np.prod(patch_size, dtype=np.float64))
    by_dataset = round(dataset_voxels * MAX_DATASET_FRACTION / patch_voxels)
    return int(max(min(by_memory, by_dataset), MIN_BATCH))


def mednext_spec(budget: Budget, kernel: int = 3) -> ArchSpec:
    return ArchSpec(name="mednext", num_pool=(MEDNEXT_POOL,) * 3, size=budget.mednext_size,
                    kernel=kernel, base_channels=budget.mednext_base_channels)


def make_plan(fingerprint: Fingerprint, channels: Sequence[int],
              spacing: Optional[Sequence[float]] = None, budget: Union[str, float, Budget] = "8GB",
              archs: Sequence[str] = ("unet", "mednext"),
              normalisation: Union[str, Sequence[str]] = "zscore",
              activation_elements: Optional[ActivationFn] = None, *, clahe: bool = False) -> Plan:
    """Plan one configuration from a fingerprint.

    channels: phase indices into ``fingerprint.channel_names``. spacing: explicit target spacing
    (else ``target_spacing``). normalisation: one scheme for every channel or one per channel.
    The patch and batch size are planned with nnU-Net's U-Net and memory model even when only
    MedNeXt is requested; with MedNeXt the patch is also kept divisible by 16 on every axis.
    MedNeXt needs more memory than the U-Net at the same patch (expansion ratios); pass the
    networks' estimator and check it before training on a tight budget.
    """
    names = tuple(archs)
    unknown = [a for a in names if a not in ("unet", "mednext")]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"archs {archs!r}: expected distinct names from ('unet', 'mednext')")
    chans = tuple(int(c) for c in channels)
    n_avail = len(fingerprint.channel_names)
    if not chans or any(not 0 <= c < n_avail for c in chans):
        raise ValueError(f"channels {tuple(channels)} must index the fingerprint's {n_avail} channels "
                         f"{fingerprint.channel_names}")
    norms = (normalisation,) * len(chans) if isinstance(normalisation, str) else tuple(normalisation)
    if len(norms) != len(chans) or any(n not in NORMALISATIONS for n in norms):
        raise ValueError(f"normalisation {normalisation!r}: expected one of {NORMALISATIONS} "
                         f"or one per channel")
    act = activation_elements or unet_activation_elements
    bud = parse_budget(budget)

    target = target_spacing(fingerprint.spacings, fingerprint.shapes_after_crop, spacing)
    median_f = median_resampled_shape(fingerprint.spacings, fingerprint.shapes_after_crop, target)
    median = tuple(max(1, int(round(float(m)))) for m in median_f)
    min_div = 2 ** MEDNEXT_POOL if "mednext" in names else 1
    unet, patch = plan_unet(target, median, bud, act, min_div)
    dataset_voxels = float(np.prod(median_f, dtype=np.float64)) * fingerprint.n_cases
    batch = batch_size_for(unet, patch, bud, act, dataset_voxels)

    specs = {}
    if "unet" in names:
        specs["unet"] = unet
    if "mednext" in names:
        specs["mednext"] = mednext_spec(bud)
    plan = Plan(target_spacing=target, channels=chans, normalisation=norms, patch_size=patch,
                batch_size=batch, median_shape=median,
                intensity_stats=tuple(fingerprint.intensity[c] for c in chans), archs=specs,
                use_nonzero_mask=bool(np.median(fingerprint.crop_fractions)
                                      < NONZERO_MASK_CROP_FRACTION),
                clahe=clahe, separate_z_resampling=True)
    logger.info("plan (%s): spacing %s, median shape %s, patch %s, batch %d, U-Net pools %s",
                bud.name, plan.target_spacing, plan.median_shape, plan.patch_size, plan.batch_size,
                unet.num_pool)
    return plan
