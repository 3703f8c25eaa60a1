"""Per-case metrics: hand-computed table, official edge cases, brute-force reference on blobs."""

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage

from core import metrics as M


def _vol(shape, *points):
    a = np.zeros(shape, dtype=np.uint8)
    for p in points:
        a[p] = 1
    return a


def _cube(shape, lo, hi):
    a = np.zeros(shape, dtype=bool)
    a[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return a


# (name, pred, gt, dice, hd95 in voxels); each hand-computed in the comment
CASES = [
    # identical 3^3 cube: Dice 1, every contour point has distance 0
    ("perfect", _cube((7, 7, 7), (2, 2, 2), (5, 5, 5)), _cube((7, 7, 7), (2, 2, 2), (5, 5, 5)), 1.0, 0.0),
    # single voxels 3 apart along z: Dice 0, both directed distances 3
    ("disjoint", _vol((6, 6, 6), (1, 1, 1)), _vol((6, 6, 6), (1, 1, 4)), 0.0, 3.0),
    # one voxel each at the same place
    ("one_voxel", _vol((4, 4, 4), (2, 2, 2)), _vol((4, 4, 4), (2, 2, 2)), 1.0, 0.0),
    # both empty: official Dice 0, HD 0
    ("both_empty", np.zeros((5, 5, 5), bool), np.zeros((5, 5, 5), bool), 0.0, 0.0),
    # one empty: HD inf
    ("pred_empty", np.zeros((5, 5, 5), bool), _vol((5, 5, 5), (2, 2, 2)), 0.0, math.inf),
    ("gt_empty", _vol((5, 5, 5), (2, 2, 2)), np.zeros((5, 5, 5), bool), 0.0, math.inf),
    # masks touching the border x=0: gt = layers x in {0,1}, its contour is only x=1 (x=0 has no
    # background neighbour inside the image); pred = layer x=0, all contour. Dice 2*9/(9+18).
    # Both directed distance sets are all 1 -> HD 1 (border-as-background would give p95 < 1).
    ("border", _cube((4, 3, 3), (0, 0, 0), (1, 3, 3)), _cube((4, 3, 3), (0, 0, 0), (2, 3, 3)), 2 / 3, 1.0),
    # a line of 5 voxels vs its end voxel: d(pred->gt) = 0,1,2,3,4 -> p95 = 3 + 0.8*(4-3) = 3.8
    ("percentile", _vol((3, 3, 10), *[(0, 0, z) for z in range(5)]), _vol((3, 3, 10), (0, 0, 0)), 2 / 6, 3.8),
    # all-ones masks have no contour: both contour sets empty -> HD 0 (official KD-tree rule)
    ("all_ones_both", np.ones((3, 4, 5), bool), np.ones((3, 4, 5), bool), 1.0, 0.0),
    # all-ones vs a voxel: one contour set empty -> inf, although both masks are non-empty
    ("all_ones_vs_voxel", np.ones((3, 4, 5), bool), _vol((3, 4, 5), (1, 1, 1)), 2 / 61, math.inf),
]


@pytest.mark.parametrize("name,pred,gt,dice,hd", CASES, ids=[c[0] for c in CASES])
def test_hand_computed(name, pred, gt, dice, hd):
    assert M.dice(pred, gt) == pytest.approx(dice, abs=1e-12)
    got = M.hd95(pred, gt)
    assert got == pytest.approx(hd, abs=1e-12) if math.isfinite(hd) else math.isinf(got)
    # symmetric by construction (max of both directions)
    assert M.hd95(gt, pred) == got or (math.isinf(got) and math.isinf(M.hd95(gt, pred)))
    out = M.case_metrics(pred, gt, spacing=(1.0, 1.0, 1.0))
    assert out["dice"] == pytest.approx(dice, abs=1e-12)
    assert out["norm_hd"] == pytest.approx(1.0 if math.isinf(hd) else hd / 150.0, abs=1e-12)


def test_norm_hd_not_clipped_and_inf_is_one():
    assert M.norm_hd(300.0) == 2.0
    assert M.norm_hd(math.inf) == 1.0
    assert M.norm_hd(15.0) == 0.1


def test_contour_is_face_connected():
    # everything but the corner (0,0,0): only the corner's 3 face neighbours touch background;
    # (1,1,1) touches it only through a vertex, so it is interior with 6-connectivity
    m = np.ones((5, 5, 5), bool)
    m[0, 0, 0] = False
    c = M.contour(m)
    assert set(map(tuple, np.argwhere(c))) == {(1, 0, 0), (0, 1, 0), (0, 0, 1)}


def test_contour_all_ones_is_empty_and_cube_shell():
    assert not M.contour(np.ones((4, 4, 4), bool)).any()
    c = M.contour(_cube((7, 7, 7), (1, 1, 1), (6, 6, 6)))
    assert c.sum() == 5 ** 3 - 3 ** 3


def test_label_value_one_only():
    gt = _vol((5, 5, 5), (2, 2, 2))
    pred = gt.copy()
    pred[0, 0, 0] = 2  # other labels are ignored (official label=1)
    assert M.dice(pred, gt) == 1.0 and M.hd95(pred, gt) == 0.0


def test_mm_variant_anisotropic_by_hand():
    sp = (0.5, 2.0, 3.0)
    a, b = _vol((3, 4, 5), (0, 0, 0)), _vol((3, 4, 5), (1, 2, 3))
    assert M.hd95(a, b) == pytest.approx(math.sqrt(1 + 4 + 9))
    assert M.hd95(a, b, sp, units="mm") == pytest.approx(math.sqrt(0.25 + 16 + 81))
    # the percentile line with 2.5 mm slices: d = 0, 2.5, 5, 7.5, 10 and 0 back
    pred, gt = CASES[7][1], CASES[7][2]
    out = M.case_metrics(pred, gt, spacing=(1.0, 1.0, 2.5))
    assert out["hd95"] == pytest.approx(3.8)  # official ignores spacing
    assert out["hd95_mm"] == pytest.approx(9.5)
    assert out["assd_mm"] == pytest.approx(25.0 / 6.0)
    assert out["volume_diff_ml"] == pytest.approx(4 * 2.5 / 1000)
    assert out["volume_diff_rel"] == pytest.approx(4.0)
    mm = M.case_metrics(pred, gt, spacing=(1.0, 1.0, 2.5), hd_units="mm")
    assert mm["hd95"] == pytest.approx(9.5) and mm["norm_hd"] == pytest.approx(9.5 / 150)


def test_volume_and_surface_extras_edge_cases():
    e, v = np.zeros((4, 4, 4), bool), _vol((4, 4, 4), (1, 1, 1))
    assert M.volume_difference(e, e, (1, 1, 1)) == (0.0, 0.0)
    diff, rel = M.volume_difference(v, e, (2, 2, 2))
    assert diff == pytest.approx(0.008) and math.isinf(rel)
    assert M.assd_mm(e, e, (1, 1, 1)) == 0.0 and math.isinf(M.assd_mm(v, e, (1, 1, 1)))


def test_user_errors():
    with pytest.raises(ValueError, match="shape"):
        M.dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), units="mm")
    with pytest.raises(ValueError, match="spacing"):
        M.case_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), spacing=(1, 1))
    with pytest.raises(ValueError, match="units"):
        M.hd95(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), units="cm")


# ----------------------------------------------------------------------------- brute force

def _contour_loop(m):
    """Contour by an explicit loop over voxels and their 6 face neighbours inside the image."""
    out = np.zeros_like(m)
    steps = [s for s in itertools.product((-1, 0, 1), repeat=3) if sum(map(abs, s)) == 1]
    for p in zip(*np.nonzero(m)):
        for s in steps:
            q = tuple(int(a + b) for a, b in zip(p, s))
            if all(0 <= qi < n for qi, n in zip(q, m.shape)) and not m[q]:
                out[p] = True
                break
    return out


def _reference(pred, gt, sp):
    a = np.argwhere(_contour_loop(pred)) * np.asarray(sp, float)
    b = np.argwhere(_contour_loop(gt)) * np.asarray(sp, float)
    if len(a) == 0 or len(b) == 0:
        return (0.0, 0.0) if len(a) == len(b) else (math.inf, math.inf)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    dab, dba = d.min(1), d.min(0)
    return (max(np.percentile(dab, 95), np.percentile(dba, 95)),
            (dab.sum() + dba.sum()) / (len(dab) + len(dba)))


def _blob(rng, shape, level):
    return ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) > level


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    shape = (14, 12, 10)
    gt = _blob(rng, shape, 0.12)
    pred = _blob(rng, shape, 0.12) if seed % 2 else ndimage.binary_dilation(gt) ^ (rng.random(shape) < 0.03)
    sp = (0.7, 0.9, 2.2)
    hd_vox, _ = _reference(pred, gt, (1, 1, 1))
    hd_mm, assd = _reference(pred, gt, sp)
    out = M.case_metrics(pred, gt, spacing=sp)
    assert np.array_equal(M.contour(gt), _contour_loop(gt))
    assert out["hd95"] == pytest.approx(hd_vox, abs=1e-9)
    assert out["hd95_mm"] == pytest.approx(hd_mm, abs=1e-9)
    assert out["assd_mm"] == pytest.approx(assd, abs=1e-9)
    inter = np.logical_and(pred, gt).sum()
    assert out["dice"] == pytest.approx(2 * inter / (pred.sum() + gt.sum()), abs=1e-12)
    assert out["volume_diff_ml"] == pytest.approx((pred.sum() - gt.sum()) * np.prod(sp) / 1000)


def test_crop_is_exact_far_islands_in_large_volume():
    # a small blob plus a far-away false-positive island: cropping must not change distances
    rng = np.random.default_rng(11)
    gt = np.zeros((40, 36, 20), bool)
    gt[5:15, 5:14, 3:9] = _blob(rng, (10, 9, 6), -0.3)
    pred = np.roll(gt, 1, axis=0)
    pred[35:37, 30:33, 15:17] = True
    hd_ref, assd_ref = _reference(pred, gt, (1.0, 1.0, 1.0))
    assert M.hd95(pred, gt) == pytest.approx(hd_ref, abs=1e-9)
    assert M.assd_mm(pred, gt, (1, 1, 1)) == pytest.approx(assd_ref, abs=1e-9)


@pytest.mark.parametrize("layout", ["c_uint8_words", "fortran", "strided", "float"])
def test_memory_layouts_give_identical_results(layout):
    # the bounding-box scan has a fast path for C-ordered rows of 8-byte multiples (last axis 16
    # here) and a transposed path for Fortran order; every layout must give the same numbers
    rng = np.random.default_rng(5)
    gt = np.zeros((20, 18, 16), np.uint8)
    gt[3:12, 4:15, 9:16] = _blob(rng, (9, 11, 7), 0.0)  # touches the last-axis border
    pred = np.roll(gt, 2, axis=1)
    pred[17, 1, 0] = 1  # a far island in a corner
    pred[0, 0, 8] = 2  # another label: ignored, but inside the scanned box
    ref = M.case_metrics(pred.astype(bool) & (pred == 1), gt.astype(bool), spacing=(1, 2, 3))
    hd_ref, assd_ref = _reference(pred == 1, gt == 1, (1, 2, 3))
    assert ref["hd95_mm"] == pytest.approx(hd_ref, abs=1e-9)
    assert ref["assd_mm"] == pytest.approx(assd_ref, abs=1e-9)
    if layout == "c_uint8_words":
        p, g = pred, gt
    elif layout == "fortran":
        p, g = np.asfortranarray(pred), np.asfortranarray(gt)
    elif layout == "strided":
        big_p, big_g = np.zeros((20, 18, 32), np.uint8), np.zeros((20, 18, 32), np.uint8)
        big_p[..., ::2], big_g[..., ::2] = pred, gt
        p, g = big_p[..., ::2], big_g[..., ::2]
    else:
        p, g = pred.astype(np.float32), gt.astype(np.float32)
    out = M.case_metrics(p, g, spacing=(1, 2, 3))
    assert out == ref


def test_two_dimensional_masks():
    a = np.zeros((6, 8), bool)
    a[1:4, 1:4] = True  # 3x3 square: contour is the 8-voxel ring
    b = np.zeros((6, 8), bool)
    b[1:4, 4:7] = True  # the same square 3 columns to the right
    assert M.contour(a).sum() == 8
    # ring-to-ring distances are 1,1,1,2,2,3,3,3 both ways: p95 at rank 6.65 of 0..7 -> 3
    assert M.hd95(a, b) == pytest.approx(3.0)
    assert M.assd_mm(a, b, (1.0, 1.0)) == pytest.approx(16 / 8)
