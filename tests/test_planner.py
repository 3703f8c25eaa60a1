"""core/planner.py: nnU-Net v2 planning rules checked against numbers worked out by hand."""
import math

import numpy as np
import pytest

from core.plan import Fingerprint, IntensityStats, apply_overrides, plan_hash
from core.planner import (CaseRecord, batch_size_for, budget_elements, fingerprint_from_stats,
                          initial_patch_size, make_plan, parse_budget, target_spacing,
                          unet_activation_elements, unet_spec, unet_topology)

STATS = IntensityStats(100.0, 20.0, 50.0, 200.0)


def _fingerprint(spacings, shapes, crop_fractions=None, n_channels=3):
    n = len(spacings)
    return Fingerprint(spacings=tuple(spacings), shapes_after_crop=tuple(shapes),
                       crop_fractions=crop_fractions or (0.9,) * n, intensity=(STATS,) * n_channels,
                       channel_names=tuple(f"{c:04d}" for c in range(n_channels)), n_cases=n)


def _breast(n=10):
    """DUKE-like: 0.7 x 0.7 x 1.0 mm, 300 x 300 x 160 voxels after cropping (= after resampling,
    since every case already has the target spacing)."""
    return _fingerprint([(0.7, 0.7, 1.0)] * n, [(300, 300, 160)] * n)


def _elements_by_hand(levels, features, n_conv=2, num_classes=2):
    """Independent count of nnU-Net's feature-map elements for one sample: ``levels`` are the
    voxel counts per resolution stage. Encoder: n_conv convs per stage. Decoder (all stages but
    the bottleneck): n_conv convs + the transposed conv (F channels each) + a 2-class head."""
    enc = sum(n_conv * f * v for f, v in zip(features, levels))
    dec = sum(((n_conv + 1) * f + num_classes) * v for f, v in zip(features[:-1], levels[:-1]))
    return enc + dec


# ----------------------------------------------------------------------------------------------
# the worked example: 0.7 x 0.7 x 1.0 mm, median shape 300 x 300 x 160, 8 GB
# ----------------------------------------------------------------------------------------------
def test_worked_example_initial_patch_and_topology():
    # 1. target spacing = median = (0.7, 0.7, 1.0); 1.0 is not > 3 * 0.7, so no anisotropy rule
    assert target_spacing([(0.7, 0.7, 1.0)] * 10, [(300, 300, 160)] * 10) == (0.7, 0.7, 1.0)
    # 2. edges proportional to 1/spacing with volume 256^3:
    #    s = (256^3 / (1/0.7 * 1/0.7 * 1/1.0))^(1/3) = 256 * 0.49^(1/3) = 201.82
    #    -> (201.82/0.7, 201.82/0.7, 201.82) = (288.3, 288.3, 201.8) -> (288, 288, 202)
    #    clipped to the median shape (300, 300, 160) -> (288, 288, 160)
    s = 256 * 0.49 ** (1 / 3)
    assert round(s / 0.7) == 288 and round(s) == 202
    assert initial_patch_size((0.7, 0.7, 1.0), (300, 300, 160)) == (288, 288, 160)
    # 3. pooling: all spacings within 2x of 0.7 -> every axis pools while >= 8 voxels:
    #    X/Y 288 -> 144 -> 72 -> 36 -> 18 -> 9 -> 5 (6 poolings), Z 160 -> 80 -> 40 -> 20 -> 10 -> 5
    #    (5 poolings; at the 6th Z has 5 < 8 voxels and sits out: stride (2, 2, 1)).
    #    Kernels 3 everywhere (1.0 / 0.7 < 2). Padding to multiples of (64, 64, 32): 288 -> 320.
    topo = unet_topology((0.7, 0.7, 1.0), (288, 288, 160))
    assert topo.num_pool == (6, 6, 5)
    assert topo.strides == ((1, 1, 1),) + ((2, 2, 2),) * 5 + ((2, 2, 1),)
    assert topo.kernel_sizes == ((3, 3, 3),) * 7
    assert topo.divisor == (64, 64, 32)
    assert topo.patch_size == (320, 320, 160)


def test_worked_example_plan_8gb():
    # 4. shrinking until the estimate fits 560e6 elements per sample (8 GB at batch 2). The axis
    #    with the largest patch/median ratio loses one divisor step each time (ties: last axis):
    #    (320,320,160) -> (320,256,160) -> (256,256,160) -> (256,256,128) -> (256,224,128)
    #    [192 would have 5 poolings, divisor 32: 256 - 32 = 224] -> (224,224,128) -> (224,224,112)
    #    -> (224,192,112) -> (192,192,112) -> (192,192,96) -> (192,160,96) -> (160,160,96).
    tried = []

    def recording(spec, patch, batch):
        if batch == 2:
            tried.append(tuple(patch))
        return unet_activation_elements(spec, patch, batch)

    plan = make_plan(_breast(), (0, 1, 2), budget="8GB", archs=("unet",), activation_elements=recording)
    assert tried == [(320, 320, 160), (320, 256, 160), (256, 256, 160), (256, 256, 128),
                     (256, 224, 128), (224, 224, 128), (224, 224, 112), (224, 192, 112),
                     (192, 192, 112), (192, 192, 96), (192, 160, 96), (160, 160, 96)]
    assert plan.target_spacing == (0.7, 0.7, 1.0)
    assert plan.median_shape == (300, 300, 160)
    assert plan.patch_size == (160, 160, 96)
    unet = plan.archs["unet"]
    # (160, 160, 96): X/Y 160 -> 80 -> 40 -> 20 -> 10 -> 5 (5 poolings); Z 96 -> 48 -> 24 -> 12 -> 6
    # (4 poolings; 6 < 8 at the 5th) -> 6 stages, features 32, 64, 128, 256, 320, 320
    assert unet.num_pool == (5, 5, 4)
    assert unet.strides == ((1, 1, 1),) + ((2, 2, 2),) * 4 + ((2, 2, 1),)
    assert unet.features == (32, 64, 128, 256, 320, 320)
    assert unet.kernel_sizes == ((3, 3, 3),) * 6
    assert unet.n_conv_per_stage == (2,) * 6
    # stage voxel counts: 160*160*96, 80*80*48, 40*40*24, 20*20*12, 10*10*6, 5*5*6
    levels = [2_457_600, 307_200, 38_400, 4_800, 600, 150]
    fits = _elements_by_hand(levels, unet.features)
    # encoder 2*(32*2457600 + 64*307200 + 128*38400 + 256*4800 + 320*600 + 320*150) = 209,376,000
    # decoder 98*2457600 + 194*307200 + 386*38400 + 770*4800 + 962*600 = 319,537,200
    assert fits == 209_376_000 + 319_537_200 == 528_913_200 <= 560e6
    assert unet_activation_elements(unet, plan.patch_size, 1) == fits
    # the step before, (192, 160, 96) with the same topology, did not fit:
    levels_before = [192 * 160 * 96, 96 * 80 * 48, 48 * 40 * 24, 24 * 20 * 12, 12 * 10 * 6, 6 * 5 * 6]
    assert _elements_by_hand(levels_before, unet.features) > 560e6
    # 5. batch: round(2 * 560e6 / 528.9e6) = round(2.12) = 2; 5 % cap: 10 cases of 300*300*160
    #    voxels -> round(0.05 * 144e6 / 2457600) = round(2.93) = 3; min(2, 3) = 2
    assert round(2 * 560e6 / fits) == 2
    assert round(0.05 * 300 * 300 * 160 * 10 / (160 * 160 * 96)) == 3
    assert plan.batch_size == 2
    assert plan.channels == (0, 1, 2) and plan.normalisation == ("zscore",) * 3
    assert plan.use_nonzero_mask is False  # median crop fraction 0.9 >= 0.75


def test_worked_example_with_mednext_keeps_patch_divisible_by_16():
    plan = make_plan(_breast(), (0, 1, 2), budget="8GB")
    assert set(plan.archs) == {"unet", "mednext"}
    assert plan.patch_size == (160, 160, 96)  # already a multiple of 16 here
    med = plan.archs["mednext"]
    assert (med.size, med.kernel, med.base_channels, med.num_pool) == ("B", 3, 32, (4, 4, 4))


# ----------------------------------------------------------------------------------------------
# target spacing
# ----------------------------------------------------------------------------------------------
def test_anisotropy_rule_fires():
    # Z median 4.0 > 3 * 0.7 and 3 * 40 = 120 < 256 voxels -> 10th percentile of Z spacings.
    # sorted Z: [2.5, 3.0, 4.0 x 8]; position 0.1 * (10 - 1) = 0.9 -> 2.5 + 0.9 * 0.5 = 2.95
    spacings = [(0.7, 0.7, 2.5), (0.7, 0.7, 3.0)] + [(0.7, 0.7, 4.0)] * 8
    shapes = [(256, 256, 40)] * 10
    assert target_spacing(spacings, shapes) == pytest.approx((0.7, 0.7, 2.95), abs=1e-12)
    # the same rule on any axis (sagittal data, coarse X)
    spacings_x = [(s[2], s[0], s[1]) for s in spacings]
    shapes_x = [(40, 256, 256)] * 10
    assert target_spacing(spacings_x, shapes_x) == pytest.approx((2.95, 0.7, 0.7), abs=1e-12)


def test_anisotropy_rule_does_not_fire():
    # coarse spacing but not few voxels: 3 * 100 = 300 >= 256 -> median stays
    spacings = [(0.7, 0.7, 2.5)] + [(0.7, 0.7, 4.0)] * 9
    assert target_spacing(spacings, [(256, 256, 100)] * 10) == (0.7, 0.7, 4.0)
    # few voxels but spacing only 2.0 <= 3 * 0.7 -> median stays
    spacings = [(0.7, 0.7, 1.5)] + [(0.7, 0.7, 2.0)] * 9
    assert target_spacing(spacings, [(256, 256, 40)] * 10) == (0.7, 0.7, 2.0)


def test_anisotropy_rule_never_finer_than_other_axes():
    # 10th percentile of Z = 0.8 (3 of 10 cases at 0.8) < 1.0 in-plane -> 1.0 + 1e-5 (nnU-Net)
    spacings = [(1.0, 1.0, 0.8)] * 3 + [(1.0, 1.0, 5.0)] * 7
    assert target_spacing(spacings, [(200, 200, 30)] * 10) == pytest.approx((1.0, 1.0, 1.00001))


def test_explicit_spacing_1mm():
    assert target_spacing([(0.7, 0.7, 4.0)] * 3, [(256, 256, 40)] * 3, (1, 1, 1)) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        target_spacing([(1, 1, 1)], [(8, 8, 8)], (1, 1))
    # 1 mm isotropic (the MAMA-MIA seeds): 300*0.7 = 210, 160*1.0 = 160 voxels
    plan = make_plan(_breast(), (0, 1, 2), spacing=(1.0, 1.0, 1.0))
    assert plan.target_spacing == (1.0, 1.0, 1.0)
    assert plan.median_shape == (210, 210, 160)
    assert all(k == (3, 3, 3) for k in plan.archs["unet"].kernel_sizes)
    assert all(p % 16 == 0 for p in plan.patch_size)


# ----------------------------------------------------------------------------------------------
# topology and memory
# ----------------------------------------------------------------------------------------------
def test_topology_anisotropic_kernels():
    # (0.7, 0.7, 3.0), patch (160, 160, 32):
    # stage 0: Z 3.0/0.7 >= 2 -> kernel (3,3,1), pool X/Y only -> spacing (1.4,1.4,3.0), size (80,80,32)
    # stage 1: 3.0/1.4 >= 2 -> kernel (3,3,1), pool X/Y -> (2.8,2.8,3.0), (40,40,32)
    # stage 2: 3.0/2.8 < 2 -> kernel (3,3,3), pool all -> (20,20,16); stage 3 -> (10,10,8);
    # stage 4 -> (5,5,4); nothing >= 8 left; bottleneck kernel 3. num_pool (5, 5, 3).
    topo = unet_topology((0.7, 0.7, 3.0), (160, 160, 32))
    assert topo.num_pool == (5, 5, 3)
    assert topo.strides == ((1, 1, 1), (2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert topo.kernel_sizes == ((3, 3, 1), (3, 3, 1)) + ((3, 3, 3),) * 4
    assert topo.patch_size == (160, 160, 32) and topo.divisor == (32, 32, 8)


def test_topology_single_axis_needs_12_voxels():
    # (10, 10, 64) at 1 mm: all pool once -> (5, 5, 32); then only Z (>= 8) qualifies and must
    # be >= 12: 32 -> 16 -> 8, then 8 < 12 stops. num_pool (1, 1, 3); divisor (2, 2, 8).
    topo = unet_topology((1.0, 1.0, 1.0), (10, 10, 64))
    assert topo.num_pool == (1, 1, 3)
    assert topo.patch_size == (10, 10, 64)


def test_topology_max_pool_and_min_divisor():
    topo = unet_topology((1.0, 1.0, 1.0), (100, 100, 100), max_pool=3, min_divisor=16)
    assert topo.num_pool == (3, 3, 3) and len(topo.strides) == 4
    assert topo.divisor == (16, 16, 16) and topo.patch_size == (112, 112, 112)


def test_activation_elements_small_by_hand():
    # features (4, 8), 8^3: encoder 2*4*512 + 2*8*64 = 5120; decoder 2*4*512 + 4*512 + 2*512 = 7168
    spec = unet_spec(unet_topology((1, 1, 1), (8, 8, 8), max_pool=1), base_features=4)
    assert spec.features == (4, 8) and spec.strides == ((1, 1, 1), (2, 2, 2))
    assert unet_activation_elements(spec, (8, 8, 8), 1) == 12288
    assert unet_activation_elements(spec, (8, 8, 8), 3) == 3 * 12288
    # without deep supervision the head of the lowest decoder stage only: same here (one stage)
    assert unet_activation_elements(spec, (8, 8, 8), 1, deep_supervision=False) == 12288


# ----------------------------------------------------------------------------------------------
# budgets and batch size
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fp", [_breast(),
                                _fingerprint([(0.7, 0.7, 2.0)] * 6, [(256, 256, 80)] * 6),
                                _fingerprint([(1.0, 1.0, 1.0)] * 4, [(400, 180, 120)] * 4)])
def test_bigger_budget_never_gives_a_smaller_patch(fp):
    patches = [make_plan(fp, (0,), budget=b).patch_size for b in ("4GB", "8GB", "16GB", "40GB", "80GB")]
    for small, big in zip(patches, patches[1:]):
        assert all(b >= s for s, b in zip(small, big)), patches
    assert np.prod(patches[-1]) > np.prod(patches[0])


def test_budget_parsing():
    assert parse_budget("8GB").gpu_gb == 8.0 and parse_budget("80gb").gpu_gb == 80.0
    assert parse_budget(24).gpu_gb == 24.0
    assert [parse_budget(b).mednext_size for b in ("8GB", "40GB", "80GB", "cpu")] == ["B", "M", "L", "S"]
    for bad in ("8TB", "-1GB", "", True):
        with pytest.raises(ValueError):
            parse_budget(bad)
    # 8 GB = nnU-Net's reference: 560e6 per sample at batch 2
    assert budget_elements(parse_budget("8GB"), unet_activation_elements) == 2 * 560e6
    assert budget_elements(parse_budget("40GB"), unet_activation_elements) == 5 * 2 * 560e6


def test_cpu_budget_small():
    # CPU budget = elements of the 16-128 feature, 4-stage U-Net on 64^3 at batch 2:
    # levels 64^3, 32^3, 16^3, 8^3 = 262144, 32768, 4096, 512 voxels
    per_sample = _elements_by_hand([262144, 32768, 4096, 512], (16, 32, 64, 128))
    encoder = 2 * (4194304 + 1048576 + 262144 + 65536)
    decoder = 50 * 262144 + 98 * 32768 + 194 * 4096
    assert per_sample == encoder + decoder == 28_254_208
    assert budget_elements(parse_budget("cpu"), unet_activation_elements) == 2 * per_sample
    for archs in (("unet",), ("unet", "mednext")):
        plan = make_plan(_breast(), (0, 1, 2), budget="cpu", archs=archs)
        unet = plan.archs["unet"]
        assert unet.features == (16, 32, 64, 128) and max(unet.num_pool) <= 3
        assert np.prod(plan.patch_size) <= 64 ** 3
        assert unet_activation_elements(unet, plan.patch_size, 2) <= 2 * per_sample
        assert 2 <= plan.batch_size <= 4
    assert plan.archs["mednext"].size == "S" and plan.archs["mednext"].base_channels == 16
    assert all(p % 16 == 0 for p in plan.patch_size)


def test_mednext_keeps_16_voxels_on_a_thin_axis():
    # 3 mm slices, 50 of them: the U-Net alone would take Z = 18 on the CPU budget; MedNeXt needs
    # Z % 16 == 0 and Z >= 16, and the shrinking moves on to the other axes instead of below 16
    fp = _fingerprint([(0.7, 0.7, 3.0)] * 4, [(300, 300, 50)] * 4)
    assert make_plan(fp, (0,), budget="cpu", archs=("unet",)).patch_size == (104, 104, 18)
    plan = make_plan(fp, (0,), budget="cpu")
    assert plan.patch_size[2] == 16 and all(p % 16 == 0 for p in plan.patch_size)
    small = make_plan(fp, (0,), budget="0.1GB")
    assert small.patch_size == (32, 32, 16)
    with pytest.raises(ValueError, match="too small"):
        make_plan(fp, (0,), budget="0.01GB")


def test_batch_size_rules():
    spec = unet_spec(unet_topology((1, 1, 1), (64, 64, 64)))
    big = parse_budget("80GB")
    vox = 64 ** 3
    # 5 % cap: 200 cases of 64^3 -> round(0.05 * 200) = 10 patches of 64^3 per batch
    assert batch_size_for(spec, (64, 64, 64), big, unet_activation_elements, 200 * vox) == 10
    # tiny dataset: cap round(0.05 * 3) = 0, but never below 2
    assert batch_size_for(spec, (64, 64, 64), big, unet_activation_elements, 3 * vox) == 2
    # memory-bound: round(2 * 560e6 / per-sample elements)
    per_sample = unet_activation_elements(spec, (64, 64, 64), 1)
    expect = round(2 * 560e6 / per_sample)
    assert expect > 2
    assert batch_size_for(spec, (64, 64, 64), parse_budget("8GB"), unet_activation_elements,
                          1e12) == expect


def test_batch_cap_in_make_plan():
    # 3 cases of 64^3 at 80 GB: patch = whole image (64^3), memory allows dozens, 5 % allows 0 -> 2
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 3, [(64, 64, 64)] * 3)
    plan = make_plan(fp, (0,), budget="80GB")
    assert plan.patch_size == (64, 64, 64) and plan.batch_size == 2
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 200, [(64, 64, 64)] * 200)
    assert make_plan(fp, (0,), budget="80GB").batch_size == 10


def test_custom_activation_estimator_is_used():
    calls = []

    def double(spec, patch, batch):  # a network twice as hungry as nnU-Net's count
        calls.append(spec.name)
        return 2 * unet_activation_elements(spec, patch, batch)

    a = make_plan(_breast(), (0,), budget="8GB", archs=("unet",))
    b = make_plan(_breast(), (0,), budget="8GB", archs=("unet",), activation_elements=double)
    assert calls and set(calls) == {"unet"}
    assert np.prod(b.patch_size) < np.prod(a.patch_size)
    assert b.patch_size == make_plan(_breast(), (0,), budget="4GB", archs=("unet",)).patch_size


# ----------------------------------------------------------------------------------------------
# make_plan arguments, fingerprint aggregation
# ----------------------------------------------------------------------------------------------
def test_make_plan_arguments():
    fp = _breast()
    plan = make_plan(fp, (0, 2), normalisation=["zscore_joint", "none"], clahe=True)
    assert plan.channels == (0, 2) and plan.normalisation == ("zscore_joint", "none") and plan.clahe
    assert plan.intensity_stats == (STATS, STATS)
    assert make_plan(fp, (1,), archs=("mednext",)).archs.keys() == {"mednext"}


@pytest.mark.parametrize("kwargs", [dict(channels=(0, 3)), dict(channels=()), dict(archs=("swin",)),
                                    dict(archs=()), dict(normalisation="minmax"),
                                    dict(normalisation=("zscore",)), dict(budget="lots")])
def test_make_plan_bad_arguments(kwargs):
    kwargs = {"channels": (0, 1), **kwargs}
    with pytest.raises(ValueError):
        make_plan(_breast(), **kwargs)


def test_nonzero_mask_rule():
    # cropping removed > 25 % of the voxels in the median case -> nonzero-mask normalisation
    fp_crop = _fingerprint([(0.7, 0.7, 1.0)] * 3, [(300, 300, 160)] * 3, crop_fractions=(0.5, 0.7, 0.9))
    assert make_plan(fp_crop, (0,)).use_nonzero_mask is True


def test_plan_overrides_after_planning():
    plan = make_plan(_breast(), (0, 1, 2))
    changed = apply_overrides(plan, ["patch_size=128,128,128", "batch_size=4"])
    assert changed.patch_size == (128, 128, 128) and changed.batch_size == 4
    assert plan_hash(changed) != plan_hash(plan)
    assert plan_hash(make_plan(_breast(), (0, 1, 2))) == plan_hash(plan)  # deterministic


def test_fingerprint_from_stats():
    rng = np.random.default_rng(0)
    a0, a1 = rng.normal(100, 10, 500), rng.normal(50, 5, 300)
    b0, b1 = rng.normal(120, 10, 400), rng.normal(60, 5, 200)
    records = [CaseRecord((0.7, 0.7, 1.0), (512, 512, 170), (300, 300, 160), (a0, a1)),
               CaseRecord((0.8, 0.8, 2.0), (256, 256, 60), (256, 256, 60), (b0, b1))]
    fp = fingerprint_from_stats(records)
    assert fp.n_cases == 2 and fp.channel_names == ("0000", "0001")
    assert fp.spacings == ((0.7, 0.7, 1.0), (0.8, 0.8, 2.0))
    assert fp.shapes_after_crop == ((300, 300, 160), (256, 256, 60))
    assert fp.crop_fractions == pytest.approx((300 * 300 * 160 / (512 * 512 * 170), 1.0))
    # pooled statistics: channel 0 over 900 samples, by the textbook formulas
    pooled = np.sort(np.concatenate([a0, b0]))
    mean = pooled.sum() / 900
    assert fp.intensity[0].mean == pytest.approx(mean)
    assert fp.intensity[0].std == pytest.approx(math.sqrt(((pooled - mean) ** 2).sum() / 900))
    # linear percentile: position 0.005 * 899 = 4.495 between sorted[4] and sorted[5]
    assert fp.intensity[0].percentile_00_5 == pytest.approx(pooled[4] + 0.495 * (pooled[5] - pooled[4]))
    p995 = pooled[894] + 0.505 * (pooled[895] - pooled[894])
    assert fp.intensity[0].percentile_99_5 == pytest.approx(p995)
    assert fp.intensity[1].mean == pytest.approx(np.concatenate([a1, b1]).mean())
    with pytest.raises(ValueError, match="channel"):
        fingerprint_from_stats([records[0], CaseRecord((1, 1, 1), (8, 8, 8), (8, 8, 8), (a0,))])
    with pytest.raises(ValueError, match="'0001'"):
        fingerprint_from_stats([CaseRecord((1, 1, 1), (8, 8, 8), (8, 8, 8), (a0, np.array([])))])
