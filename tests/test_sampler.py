import math

import numpy as np
import pytest

from data.sampler import PatchSampler, forced_foreground, foreground_locations, pretransform_patch_size


def _case(shape=(40, 40, 40), channels=2, blob=None, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((channels, *shape)).astype(np.float32)
    label = np.zeros((1, *shape), np.uint8)
    if blob is not None:
        label[(0,) + tuple(slice(a, b) for a, b in blob)] = 1
    return image, label


def _centre(region, patch):
    return tuple(slice((r - p) // 2, (r - p) // 2 + p) for r, p in zip(region, patch))


@pytest.mark.parametrize("batch, expected", [
    # not j < round(B * 0.67), Python round: B=1 none, B=2 last, B=5 round(3.35)=3 -> two
    (1, [False]), (2, [False, True]), (3, [False, False, True]), (4, [False, False, False, True]),
    (5, [False, False, False, True, True]), (6, [False] * 4 + [True] * 2)])
def test_forced_foreground_rule(batch, expected):
    assert forced_foreground(batch, 0.33) == expected


def test_pretransform_patch_size_numbers():
    assert pretransform_patch_size((128, 128, 128)) == (205, 205, 205)  # 128 * 1.366 / 0.85 = 205.7
    assert pretransform_patch_size((96, 96, 96)) == (154, 154, 154)
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    x = max(64 * c + 160 * s, 64 * c + 128 * s) / 0.85      # widest of the x-z and x-y planes
    y = max(128 * c + 160 * s, 64 * s + 128 * c) / 0.85
    z = max(128 * s + 160 * c, 64 * s + 160 * c) / 0.85
    assert pretransform_patch_size((64, 128, 160)) == (int(x), int(y), int(z)) == (159, 224, 238)
    assert pretransform_patch_size((32, 48, 20), max_rotation_deg=0, min_scale=1) == (32, 48, 20)


def test_foreground_locations_bounds_and_rule():
    lab = np.zeros((1, 30, 30, 30), np.uint8)
    lab[0, 2:5, 3:6, 4:7] = 1
    locs = foreground_locations(lab, seed=1)
    assert locs.shape == (27, 3) and np.all(lab[0][tuple(locs.T)] == 1)
    big = np.ones((1, 30, 30, 30), np.uint8)                 # 27000 voxels
    sub = foreground_locations(big, max_points=100, seed=3, min_fraction=0.01)
    assert len(sub) == 270                                    # ceil(1 % of 27000) > 100
    assert len(np.unique(sub, axis=0)) == 270
    assert len(foreground_locations(big, max_points=500, min_fraction=0.0)) == 500
    np.testing.assert_array_equal(sub, foreground_locations(big, max_points=100, seed=3))
    assert foreground_locations(np.zeros((1, 4, 4, 4), np.uint8)).shape == (0, 3)


def test_batch_shapes_and_types():
    image, label = _case(blob=[(10, 14)] * 3)
    s = PatchSampler([image], [label], None, (16, 16, 16), 3, seed=0, case_ids=["p1"])
    assert s.region_size == pretransform_patch_size((16, 16, 16)) == (25, 25, 25)
    b = next(s)
    assert b["image"].shape == (3, 2, 25, 25, 25) and str(b["image"].dtype) == "torch.float32"
    assert b["label"].shape == (3, 1, 25, 25, 25) and str(b["label"].dtype) == "torch.uint8"
    assert b["case_ids"] == ["p1"] * 3


def _axis_probability(lb, ub, offset, patch, blob):
    """P(centre patch [start+offset, +patch) meets [blob0, blob1)) for start uniform in [lb, ub]."""
    starts = np.arange(lb, ub + 1) + offset
    return np.mean((starts < blob[1]) & (starts + patch > blob[0]))


def test_foreground_rate_matches_rule():
    blob = [(30, 33), (5, 8), (18, 21)]
    image, label = _case(shape=(40, 40, 40), channels=1, blob=blob)
    patch = (16, 16, 16)
    s = PatchSampler([image], [label], None, patch, 2, seed=5)
    region = s.region_size
    n, hits = 400, np.zeros(2)
    for _ in range(n):
        lab = next(s)["label"].numpy()
        hits += lab[(slice(None), 0) + _centre(region, patch)].reshape(2, -1).max(1)
    assert hits[1] == n                              # forced sample: always foreground in the patch
    # unforced sample: independent uniform start per axis within nnU-Net's bounds
    need = region[0] - patch[0]
    lb, ub = -(need // 2), 40 + need // 2 + need % 2 - region[0]
    p0 = np.prod([_axis_probability(lb, ub, (region[0] - patch[0]) // 2, patch[0], b) for b in blob])
    sd = math.sqrt(p0 * (1 - p0) / n)
    assert abs(hits[0] / n - p0) < 4 * sd + 1e-9, (hits[0] / n, p0)
    assert 0.05 < p0 < 0.2                           # the test discriminates


@pytest.mark.parametrize("corner", [0, 63])
def test_forced_patch_contains_foreground_at_borders(corner):
    image, label = _case(shape=(64, 64, 64), channels=1, blob=[(corner, corner + 1)] * 3)
    s = PatchSampler([image], [label], None, (16, 16, 16), 2, seed=1)
    for _ in range(20):
        lab = next(s)["label"].numpy()[1, 0]
        assert lab[_centre(s.region_size, (16, 16, 16))].sum() == 1


def test_small_case_is_padded_with_zeros():
    image, label = _case(shape=(10, 10, 10), blob=[(0, 10)] * 3)
    s = PatchSampler([image], [label], None, (16, 16, 16), 2, oversample_foreground=0.0,
                     rotation_margin=False, seed=0)
    b = next(s)
    # need_to_pad = 6 -> both random-start bounds are -3: the case sits at offset 3
    expected = np.zeros((2, 16, 16, 16), np.float32)
    expected[:, 3:13, 3:13, 3:13] = image
    for j in range(2):
        np.testing.assert_array_equal(b["image"][j].numpy(), expected)
        assert b["label"][j].sum() == 1000 and b["label"][j, 0, 3:13, 3:13, 3:13].min() == 1


def test_empty_mask_falls_back_to_random():
    image, label = _case()
    s = PatchSampler([image], [label], [np.zeros((0, 3))], (16, 16, 16), 2, seed=0)
    starts = set()
    for _ in range(10):
        b = next(s)
        assert b["label"].sum() == 0
        starts.add(float(b["image"][1, 0, 12, 12, 12]))
    assert len(starts) > 1


def test_determinism_and_memmap(tmp_path):
    image, label = _case(blob=[(10, 20)] * 3)
    mm = np.memmap(tmp_path / "img.dat", dtype=np.float32, mode="w+", shape=image.shape)
    mm[:] = image
    mm.flush()
    a = PatchSampler([image, image[:, :30]], [label, label[:, :30]], None, (16, 16, 16), 2, seed=7)
    b = PatchSampler([mm, image[:, :30]], [label, label[:, :30]], None, (16, 16, 16), 2, seed=7)
    c = PatchSampler([image, image[:, :30]], [label, label[:, :30]], None, (16, 16, 16), 2, seed=8)
    same = diff = 0
    for _ in range(4):
        ba, bb, bc = next(a), next(b), next(c)
        assert ba["case_ids"] == bb["case_ids"]
        assert np.array_equal(ba["image"], bb["image"]) and np.array_equal(ba["label"], bb["label"])
        same += 1
        diff += not np.array_equal(ba["image"], bc["image"])
    assert same == 4 and diff > 0


def test_centre_only_reads_just_the_patch_box():
    image, label = _case(blob=[(10, 30)] * 3)
    s = PatchSampler([image], [label], None, (16, 16, 16), 2, seed=0)
    full = s.sample_batch(np.random.default_rng(3))
    part = s.sample_batch(np.random.default_rng(3), centre_only=[True, False])
    box = (slice(None),) + _centre(s.region_size, (16, 16, 16))
    np.testing.assert_array_equal(part["image"][0][box], full["image"][0][box])
    np.testing.assert_array_equal(part["label"][0][box], full["label"][0][box])
    np.testing.assert_array_equal(part["image"][1], full["image"][1])
    outside = part["image"][0].clone()
    outside[box] = 0
    assert outside.abs().sum() == 0


def test_invalid_inputs_name_the_problem():
    image, label = _case()
    with pytest.raises(ValueError, match="case 0"):
        PatchSampler([image], [label[:, :20]], None, (16, 16, 16), 2)
    with pytest.raises(ValueError, match="fg_locations"):
        PatchSampler([image], [label], [], (16, 16, 16), 2)
    with pytest.raises(ValueError, match="patch_size"):
        PatchSampler([image], [label], None, (16, 16), 2)
