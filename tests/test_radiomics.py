"""Tests for data/radiomics.py: pyradiomics on hand-checkable lesions, kinetic curves, the
peritumoral ring, degenerate masks and the feature cache."""
import json
import math

import nibabel as nib
import numpy as np
import pytest

from data import mamamia
from data import radiomics as R
from tests.conftest import write_tiny_dataset


# ----------------------------------------------------------------------------- pyradiomics

def _box_lesion():
    """A 4 x 3 x 2 voxel box at spacing (1, 1, 2) mm with intensities 100 and 300 alternating."""
    img = np.zeros((8, 7, 6), np.float32)
    mask = np.zeros((8, 7, 6), np.uint8)
    mask[2:6, 2:5, 2:4] = 1
    vals = np.where((np.indices((4, 3, 2)).sum(0) % 2) == 0, 100.0, 300.0)
    img[2:6, 2:5, 2:4] = vals
    return img, mask, (1.0, 1.0, 2.0), vals.ravel()


def test_shape_features_of_a_box_by_hand():
    img, mask, spacing, _ = _box_lesion()
    f = R.pyradiomics_features(img, mask, spacing, R.RadiomicsConfig(), ("shape",))
    assert f["shape_VoxelVolume"] == pytest.approx(24 * 1 * 1 * 2)
    # principal-axis variances of the voxel centres: s^2 (n^2 - 1) / 12 per axis
    var = [1 * (16 - 1) / 12, 1 * (9 - 1) / 12, 4 * (4 - 1) / 12]  # x: 1.25, y: 0.667, z: 1.0
    major, minor, least = sorted(var, reverse=True)
    assert f["shape_Elongation"] == pytest.approx(math.sqrt(minor / major), rel=1e-6)
    assert f["shape_Flatness"] == pytest.approx(math.sqrt(least / major), rel=1e-6)
    # a wrong axis order at the SimpleITK boundary (spacing 2 on x) would give other ratios
    wrong = sorted([4 * 1.25, 0.667, 0.25], reverse=True)
    assert f["shape_Elongation"] != pytest.approx(math.sqrt(wrong[1] / wrong[0]), rel=1e-2)


def test_first_order_features_by_hand():
    img, mask, spacing, vals = _box_lesion()
    f = R.pyradiomics_features(img, mask, spacing, R.RadiomicsConfig(), ("firstorder",), prefix="post_")
    assert f["post_firstorder_Mean"] == pytest.approx(200.0)
    assert f["post_firstorder_Minimum"] == pytest.approx(100.0)
    assert f["post_firstorder_Maximum"] == pytest.approx(300.0)
    assert f["post_firstorder_Energy"] == pytest.approx(float((vals ** 2).sum()))   # 12 * 1e4 + 12 * 9e4
    assert f["post_firstorder_Variance"] == pytest.approx(float(vals.var()))         # 100^2
    assert f["post_firstorder_Range"] == pytest.approx(200.0)


def test_resampling_option_changes_the_grid():
    img, mask, spacing, _ = _box_lesion()
    f = R.pyradiomics_features(img, mask, spacing, R.RadiomicsConfig(resample_mm=0.5), ("shape",))
    # 0.5 mm isotropic: the same box holds 8 x 6 x 8 finer voxels of 0.125 mm^3 (nearest mask)
    assert f["shape_VoxelVolume"] == pytest.approx(48.0, rel=0.25)


# ----------------------------------------------------------------------------- kinetics

TIMES = (0.0, 60.0, 120.0, 180.0)


def _curve(values, n=3):
    return np.repeat(np.asarray(values, float)[:, None], n, axis=1)


def test_persistent_curve():
    k = R.kinetic_features(_curve([100, 150, 170, 190]), TIMES)
    assert k["pe_early"] == pytest.approx(50.0)
    assert k["pe_peak"] == pytest.approx(90.0)
    assert k["ser"] == pytest.approx(50 / 90)
    assert k["washin_slope"] == pytest.approx(50.0)      # 50 % over 60 s -> %/min
    assert k["washout_slope"] == 0.0                     # peak is the last phase
    assert k["time_to_peak"] == pytest.approx(180.0)
    assert (k["washout_fraction"], k["persistent_fraction"], k["curve_type"]) == (0.0, 1.0, 1.0)
    assert k["times_known"] == 1.0


def test_plateau_curve():
    k = R.kinetic_features(_curve([100, 200, 205, 198]), TIMES)
    assert k["pe_early"] == pytest.approx(100.0)
    assert k["pe_peak"] == pytest.approx(105.0)
    assert k["ser"] == pytest.approx(100 / 98)
    assert k["washout_slope"] == pytest.approx(100 * (198 - 205) / 100 / 60 * 60)  # -7 %/min
    assert k["time_to_peak"] == pytest.approx(120.0)
    assert (k["washout_fraction"], k["persistent_fraction"], k["curve_type"]) == (0.0, 0.0, 2.0)


def test_washout_curve():
    k = R.kinetic_features(_curve([100, 200, 170, 150]), TIMES)
    assert k["ser"] == pytest.approx(2.0)
    assert k["washout_slope"] == pytest.approx(100 * (150 - 200) / 100 / 120 * 60)  # -25 %/min
    assert k["time_to_peak"] == pytest.approx(60.0)
    assert (k["washout_fraction"], k["persistent_fraction"], k["curve_type"]) == (1.0, 0.0, 3.0)


def test_voxel_fractions_and_phase_index_units():
    curves = np.array([[100, 100, 100, 100],      # voxels: washout, washout, persistent, plateau
                       [200, 200, 150, 200],
                       [170, 160, 170, 205],
                       [150, 140, 190, 198]], float)
    k = R.kinetic_features(curves, None)
    assert k["washout_fraction"] == pytest.approx(0.5)
    assert k["persistent_fraction"] == pytest.approx(0.25)
    assert k["times_known"] == 0.0
    m = curves.mean(1)
    assert k["washin_slope"] == pytest.approx(100 * (m[1] - m[0]) / m[0])  # per phase
    assert k["time_to_peak"] == pytest.approx(1.0)                          # phases


def test_two_phases_leave_late_features_missing():
    k = R.kinetic_features(_curve([100, 180]), (0.0, 90.0))
    assert k["pe_early"] == pytest.approx(80.0)
    for name in ("ser", "washout_slope", "washout_fraction", "curve_type"):
        assert math.isnan(k[name])


# ----------------------------------------------------------------------------- ring, case

def test_ring_mask_counts_neighbours_in_mm():
    m = np.zeros((5, 5, 5), np.uint8)
    m[2, 2, 2] = 1
    # isotropic 1 mm, 1.5 mm ring: 6 face (1 mm) + 12 edge (1.41 mm) neighbours, no corners
    assert R.ring_mask(m, (1, 1, 1), 1.5).sum() == 18
    # 3 mm slices: the through-plane neighbours are too far
    assert R.ring_mask(m, (1, 1, 3), 1.5).sum() == 8
    assert not R.ring_mask(m, (1, 1, 1), 1.5)[2, 2, 2]


def test_case_features_cover_every_group():
    names = R.feature_names(R.RadiomicsConfig())
    for prefix in ("post_shape_", "post_glcm_", "post_ngtdm_", "sub_firstorder_", "ring_firstorder_",
                   "ringsub_firstorder_", "kin_"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert len(names) == len(set(names))


def test_subtraction_features_by_hand():
    g = np.indices((12, 12, 12))
    mask = (((g - 6) ** 2).sum(0) <= 9).astype(np.uint8)
    pre = np.full(mask.shape, 100.0)
    post = pre + 50.0 * mask
    late = pre + 40.0 * mask
    f = R.case_features(np.stack([pre, post, late]).astype(np.float32), mask, (1.0, 1.0, 1.0),
                        (0, 100, 200), R.RadiomicsConfig())
    assert f["sub_firstorder_Mean"] == pytest.approx(50.0)
    assert f["ringsub_firstorder_Mean"] == pytest.approx(0.0)
    assert f["ring_firstorder_Mean"] == pytest.approx(100.0)
    assert f["post_firstorder_Mean"] == pytest.approx(150.0)
    assert f["kin_pe_early"] == pytest.approx(50.0)
    assert f["post_shape_VoxelVolume"] == pytest.approx(mask.sum())


# ----------------------------------------------------------------------------- many cases

def _set_mask(case, arr):
    img = nib.load(str(case.mask_path))
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), img.affine), str(case.mask_path))


def test_empty_and_one_voxel_masks_give_flagged_nan_rows(tmp_path):
    root = write_tiny_dataset(tmp_path / "ds", n=4)
    cases = mamamia.load_dataset(root)
    shape = nib.load(str(cases[0].mask_path)).shape
    _set_mask(cases[0], np.zeros(shape))
    one = np.zeros(shape)
    one[5, 5, 5] = 1
    _set_mask(cases[1], one)
    line = np.zeros(shape)
    line[4:8, 5, 5] = 1          # pyradiomics needs a 2-D extent at least
    _set_mask(cases[2], line)
    masks = {c.patient_id: c.mask_path for c in cases}
    t = R.extract_features(cases, masks, "expert", cache=tmp_path / "f.csv", workers=1, progress=False)
    assert t.values.shape == (4, len(t.names))
    assert list(t.valid) == [False, False, False, True]
    assert t.notes[:2] == ["empty mask", "one-voxel mask"]
    assert t.notes[2].startswith("radiomics failed")
    assert np.isnan(t.values[:3]).all()
    assert np.isfinite(t.values[3, t.names.index("post_shape_VoxelVolume")])
    # a case without any mask file also gets a flagged row
    t2 = R.extract_features(cases, {}, "predicted", workers=1, progress=False)
    assert not t2.valid.any() and set(t2.notes) == {"no mask file"}


def test_cache_reuse_and_invalidation(tmp_path, monkeypatch):
    root = write_tiny_dataset(tmp_path / "ds", n=2)
    cases = mamamia.load_dataset(root)
    masks = {c.patient_id: c.mask_path for c in cases}
    cache = tmp_path / "cache" / "features.csv"
    first = R.extract_features(cases, masks, "expert", cache=cache, workers=1, progress=False)
    computed = []
    original = R._case_row

    def spy(task):
        computed.append(task[0].patient_id)
        return original(task)

    monkeypatch.setattr(R, "_case_row", spy)
    again = R.extract_features(cases, masks, "expert", cache=cache, workers=1, progress=False)
    assert computed == []
    np.testing.assert_allclose(again.values, first.values, equal_nan=True)
    # another mask source is another key; a changed mask file is recomputed
    R.extract_features(cases[:1], masks, "predicted", cache=cache, workers=1, progress=False)
    assert computed == [cases[0].patient_id]
    m = nib.load(str(cases[1].mask_path)).get_fdata()
    m[m.nonzero()[0][0], m.nonzero()[1][0], m.nonzero()[2][0]] = 0
    _set_mask(cases[1], m)
    R.extract_features(cases, masks, "expert", cache=cache, workers=1, progress=False)
    assert computed == [cases[0].patient_id, cases[1].patient_id]
    # another configuration does not reuse rows
    R.extract_features(cases[:1], masks, "expert", R.RadiomicsConfig(ring_mm=5.0), cache=cache,
                       workers=1, progress=False)
    assert computed[-1] == cases[0].patient_id and len(computed) == 3


def test_config_round_trip_and_errors():
    cfg = R.RadiomicsConfig(resample_mm=1.0, ring_mm=4.0)
    assert R.RadiomicsConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown key 'binwidth'"):
        R.RadiomicsConfig.from_dict({**cfg.to_dict(), "binwidth": 25})
    with pytest.raises(ValueError, match="missing required key 'ring_mm'"):
        R.RadiomicsConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "ring_mm"})
    with pytest.raises(ValueError, match="subset"):
        R.RadiomicsConfig(classes=("wavelet",))


def test_clinical_record_and_predicted_masks(tmp_path):
    root = write_tiny_dataset(tmp_path / "ds", n=2)
    cases = mamamia.load_dataset(root)
    rec = R.clinical_record(cases[1])
    assert rec == {"age": 41.0, "menopause": "pre", "subtype": None, "density": None, "hr": None, "her2": None,
                   "er": None, "pr": None, "grade": None, "center": "DUKE"}
    pred = tmp_path / "out" / "pred_segmentations"
    pred.mkdir(parents=True)
    (pred / f"{cases[0].patient_id.lower()}.nii.gz").write_bytes(cases[0].mask_path.read_bytes())
    found = R.predicted_masks(cases, tmp_path / "out")
    assert list(found) == [cases[0].patient_id]
    with pytest.raises(FileNotFoundError):
        R.predicted_masks(cases, tmp_path / "nothing")
