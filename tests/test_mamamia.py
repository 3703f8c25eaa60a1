import json
import logging

import nibabel as nib
import numpy as np
import pytest

from data import io, mamamia


def _nii(path, arr, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(arr), np.eye(4) if affine is None else affine), str(path))


def _record(pid, **over):
    rec = {
        "patient_id": pid,
        "clinical_data": {"age": 45, "menopausal_status": "pre", "breast_density": None},
        "primary_lesion": {"pcr": 1, "tumor_subtype": "triple_negative",
                           "breast_coordinates": {"x_min": 1, "x_max": 5, "y_min": 0, "y_max": 3,
                                                  "z_min": 2, "z_max": 4}},
        "imaging_data": {"dataset": pid.split("_")[0], "field_strength": 3.0, "echo_time": 2.1,
                         "repetition_time": 5.0, "bilateral": False},
    }
    rec.update(over)
    return rec


@pytest.fixture
def root(tmp_path):
    """A tiny MAMA-MIA-like folder with the real quirks."""
    r = tmp_path / "ds"
    shape = (6, 7, 8)
    # challenge style: upper-case folders, lower-case files, a stray tsv, phases out of order on disk
    for k in (2, 0, 1):
        _nii(r / "images" / "DUKE_001" / f"duke_001_000{k}.nii.gz", np.full(shape, k, np.int16))
    (r / "images" / "DUKE_001" / "duke_001_info.tsv").write_text("a\tb\n")
    # older copies: upper case everywhere, .nii uncompressed
    for k in range(3):
        _nii(r / "images" / "NACT_01" / f"NACT_01_000{k}.NII", np.full(shape, 10 + k, np.int16))
    # a case with only two phases
    for k in range(2):
        _nii(r / "images" / "ISPY1_1001" / f"ispy1_1001_000{k}.nii.gz", np.zeros(shape, np.int16))
    seg = np.zeros(shape, np.uint8)
    seg[2:4, 2:4, 2:4] = 1
    _nii(r / "segmentations" / "expert" / "duke_001.nii.gz", seg)
    _nii(r / "segmentations" / "expert" / "NACT_01.nii.gz", seg)
    _nii(r / "segmentations" / "automatic" / "duke_001.nii.gz", np.ones(shape, np.uint8))
    info = r / "patient_info_files"
    info.mkdir(parents=True)
    (info / "duke_001.json").write_text(json.dumps(_record("DUKE_001")))
    # missing keys everywhere: fields become None, never a crash
    (info / "nact_01.json").write_text(json.dumps({"patient_id": "NACT_01", "clinical_data": {
        "menopausal_status": "peri (something long)"}}))
    (r / "train_test_splits.csv").write_text(
        "train_split,test_split\n duke_001 ,nact_01\nISPY1_1001,\n")
    return r


def test_discovery_and_case_fields(root):
    cases = {c.patient_id: c for c in mamamia.load_dataset(root)}
    assert sorted(cases) == ["DUKE_001", "ISPY1_1001", "NACT_01"]
    d = cases["DUKE_001"]
    assert d.phase_numbers == (0, 1, 2)
    assert [p.name for p in d.phase_paths] == ["duke_001_0000.nii.gz", "duke_001_0001.nii.gz",
                                               "duke_001_0002.nii.gz"]
    assert d.mask_path.parent.name == "expert"
    assert d.center == "DUKE" and d.split == "train"
    assert d.clinical.age == 45 and d.clinical.menopause == "pre" and d.clinical.pcr == 1
    assert d.clinical.subtype == "triple_negative" and d.clinical.density is None
    assert d.acquisition.field_strength == 3.0 and d.acquisition.bilateral is False
    # x/y/z of the JSON index SimpleITK axes 0/1/2 = nibabel axes 2/1/0
    assert d.breast_box == (slice(2, 4), slice(0, 3), slice(1, 5))
    n = cases["NACT_01"]
    assert n.phase_numbers == (0, 1, 2) and n.split == "test"
    assert n.clinical.age is None and n.clinical.pcr is None and n.breast_box is None
    assert n.clinical.menopause == "pre" and n.center == "NACT"
    assert cases["ISPY1_1001"].mask_path is None and cases["ISPY1_1001"].json_path is None


@pytest.mark.parametrize("raw,group", [
    ("pre", "pre"), ("post", "post"), ("PRE (lmp within 12 months)", "pre"),
    ("peri (6-12 months since lmp)", "pre"), ("Post", "post"), (None, "unknown"), ("", "unknown"),
    (float("nan"), "unknown"), ("n/a", "unknown")])
def test_menopause_official_grouping(raw, group):
    assert mamamia.menopause_group(raw) == group


def test_split_csv_padding_and_case(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("train_split,test_split\na_1,b_2\n c_3 ,\nd_4,nan\n,\n")
    # ids as written (the scorer opens f"{patient_id}.nii.gz"), matched case-insensitively later
    assert mamamia.read_splits(p) == {"a_1": "train", "b_2": "test", "c_3": "train", "d_4": "train"}
    q = tmp_path / "bad.csv"
    q.write_text("train,test\na,b\n")
    with pytest.raises(ValueError, match="train_split"):
        mamamia.read_splits(q)


def test_orphan_split_id_is_an_error(root):
    (root / "train_test_splits.csv").write_text("train_split,test_split\nDUKE_001,GHOST_9\n")
    with pytest.raises(ValueError, match="GHOST_9"):
        mamamia.load_dataset(root)
    cases = mamamia.load_dataset(root, strict_split_ids=False)
    assert len(cases) == 3


def test_invalid_json_names_file_when_the_case_is_used(root):
    (root / "patient_info_files" / "duke_001.json").write_text("{not json")
    cases = mamamia.load_dataset(root)  # a broken record of an unused case must not stop a run
    assert [c.patient_id for c in mamamia.select(cases, ids=["NACT_01"])] == ["NACT_01"]
    with pytest.raises(ValueError, match="duke_001.json"):
        mamamia.select(cases)
    with pytest.raises(ValueError, match="duke_001.json"):
        mamamia.load_image(cases[0])


def test_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        mamamia.load_dataset(tmp_path)


def test_selection(root, caplog):
    cases = mamamia.load_dataset(root)
    assert [c.patient_id for c in mamamia.select(cases, centers=["duke", "nact"])] == ["DUKE_001", "NACT_01"]
    assert [c.patient_id for c in mamamia.select(cases, split="test")] == ["NACT_01"]
    with caplog.at_level(logging.WARNING):
        kept = mamamia.select(cases, phases=[0, 1, 2])
    assert [c.patient_id for c in kept] == ["DUKE_001", "NACT_01"]
    assert "ISPY1_1001" in caplog.text
    with pytest.raises(ValueError, match="ISPY1_1001"):
        mamamia.select(cases, phases=[0, 1, 2], on_missing_phase="error")
    with pytest.raises(ValueError):
        mamamia.select(cases, split="validation")


def test_parse_list():
    assert mamamia.parse_list("0-2", int) == [0, 1, 2]
    assert mamamia.parse_list("0,2,3", int) == [0, 2, 3]
    assert mamamia.parse_list("DUKE, NACT") == ["DUKE", "NACT"]
    assert mamamia.parse_list(None) is None


def test_load_image_channels_in_order(root):
    case = mamamia.load_dataset(root)[0]
    arr, sp, aff = mamamia.load_image(case, phases=[2, 0])
    assert arr.shape == (2, 6, 7, 8) and arr.dtype == np.float32
    assert arr[0].max() == 2 and arr[1].max() == 0
    with pytest.raises(FileNotFoundError, match="phase 0005"):
        mamamia.load_image(case, phases=[5])


def test_missing_phase_file_is_reported(root):
    case = mamamia.load_dataset(root)[0]
    case.phase_paths[2].unlink()
    with pytest.raises(FileNotFoundError, match="duke_001_0002"):
        mamamia.load_image(case)


def test_mask_grid_mismatch(root):
    case = [c for c in mamamia.load_dataset(root) if c.patient_id == "DUKE_001"][0]
    arr, sp, aff = mamamia.load_image(case)
    m = mamamia.load_mask(case, aff, arr.shape[1:])
    assert m.dtype == np.uint8 and m.sum() == 8
    _nii(case.mask_path, np.zeros((6, 7, 9), np.uint8))
    with pytest.raises(io.ImageError, match="duke_001.nii.gz"):
        mamamia.load_mask(case, aff, arr.shape[1:])


def test_phase_on_different_grid_is_resampled(root, caplog):
    shape = (6, 7, 8)
    aff = np.eye(4)
    aff[2, 3] = 0.5  # half a voxel off -> resampled onto the _0001 grid
    _nii(root / "images" / "DUKE_001" / "duke_001_0002.nii.gz", np.full(shape, 2, np.int16), aff)
    case = [c for c in mamamia.load_dataset(root) if c.patient_id == "DUKE_001"][0]
    with caplog.at_level(logging.WARNING):
        arr, _, out_aff = mamamia.load_image(case)
    assert np.allclose(out_aff, np.eye(4)) and "duke_001_0002" in caplog.text
    assert np.allclose(arr[2], 2)


def test_summary_table_lists_centers(root):
    text = mamamia.summary_table(mamamia.load_dataset(root))
    assert "DUKE" in text and "NACT" in text and "ISPY1" in text
    lines = {l.split()[0]: l for l in text.splitlines()[2:]}
    assert lines["DUKE"].split()[1:5] == ["1", "1/0", "3:1", "1x1x1"]
    assert lines["all"].split()[1:3] == ["3", "2/1"]
    assert lines["ISPY1"].split()[3] == "2:1"


# ----------------------------------------------------------------------------- ids keep their case

def test_ids_keep_their_spelling_and_match_files_case_insensitively(root):
    shape = (6, 7, 8)
    for k in range(2):
        _nii(root / "images" / "duke_003" / f"DUKE_003_000{k}.nii.gz", np.zeros(shape, np.int16))
    _nii(root / "segmentations" / "expert" / "DUKE_003.nii.gz", np.zeros(shape, np.uint8))
    (root / "patient_info_files" / "Duke_003.json").write_text(json.dumps({"patient_id": "DUKE_003"}))
    (root / "train_test_splits.csv").write_text(
        "train_split,test_split\nDUKE_001,nact_01\nISPY1_1001,DUKE_003\n")
    cases = {c.patient_id: c for c in mamamia.load_dataset(root)}
    assert sorted(cases) == ["DUKE_001", "ISPY1_1001", "NACT_01", "duke_003"]
    d = cases["duke_003"]
    assert d.center == "DUKE" and d.split == "test"
    assert d.mask_path.name == "DUKE_003.nii.gz" and d.json_path.name == "Duke_003.json"
    assert [c.patient_id for c in mamamia.select(list(cases.values()), ids=["DUKE_003"])] == ["duke_003"]
    assert mamamia.center_from_id("duke_003") == "DUKE"
    c = mamamia.case_from_paths("duke_007", ["a", "b"])
    assert c.patient_id == "duke_007" and c.center == "DUKE"


@pytest.mark.parametrize("kind", ["folder", "mask", "json"])
def test_ids_differing_only_in_case_are_an_error_naming_both(root, kind):
    shape = (6, 7, 8)
    if kind == "folder":
        _nii(root / "images" / "duke_001" / "duke_001_0000.nii.gz", np.zeros(shape, np.int16))
        a, b = root / "images" / "DUKE_001", root / "images" / "duke_001"
    elif kind == "mask":
        _nii(root / "segmentations" / "expert" / "DUKE_001.nii.gz", np.zeros(shape, np.uint8))
        a, b = root / "segmentations" / "expert" / "DUKE_001.nii.gz", root / "segmentations" / "expert" / "duke_001.nii.gz"
    else:
        (root / "patient_info_files" / "DUKE_001.json").write_text(json.dumps(_record("DUKE_001")))
        a, b = root / "patient_info_files" / "DUKE_001.json", root / "patient_info_files" / "duke_001.json"
    with pytest.raises(ValueError) as info:
        mamamia.load_dataset(root)
    assert str(a) in str(info.value) and str(b) in str(info.value)


def test_split_rows_differing_in_case_or_in_both_columns_are_errors(root):
    p = root / "train_test_splits.csv"
    p.write_text("train_split,test_split\nDUKE_001,duke_001\n")
    with pytest.raises(ValueError, match="DUKE_001"):
        mamamia.load_dataset(root)
    p.write_text("train_split,test_split\nDUKE_001,NACT_01\nISPY1_1001,DUKE_001\n")
    with pytest.raises(ValueError, match=r"both train_split and test_split.*DUKE_001"):
        mamamia.load_dataset(root)


def test_case_from_paths_rejects_ids_that_are_not_file_names():
    for bad in ("../../etc/x", "a/b", "", "x\0"):
        with pytest.raises(ValueError, match="patient id"):
            mamamia.case_from_paths(bad, ["a"])


# ----------------------------------------------------------------------------- JSON values

def _box(**kw):
    coords = {"x_min": 1, "x_max": 5, "y_min": 0, "y_max": 3, "z_min": 2, "z_max": 4}
    coords.update(kw)
    return {"breast_coordinates": coords}


def test_breast_box_negative_clamped_inverted_ignored(caplog):
    with caplog.at_level(logging.WARNING):
        box = mamamia.breast_box_from_json(_box(x_min=-5)["breast_coordinates"], "p.json")
    # x indexes our axis 2: -5 would wrap around in numpy; clamped to 0
    assert box == (slice(2, 4), slice(0, 3), slice(0, 5))
    assert "p.json" in caplog.text and "x_min" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert mamamia.breast_box_from_json(_box(y_min=3, y_max=1)["breast_coordinates"], "q.json") is None
    assert "q.json" in caplog.text and "y_min" in caplog.text
    assert mamamia.breast_box_from_json(_box(z_max="big")["breast_coordinates"], "r.json") is None


def test_validate_box_against_the_image_shape(caplog):
    box = (slice(2, 4), slice(0, 3), slice(1, 5))
    assert mamamia.validate_box(box, (6, 7, 8), "s.json") == box
    with caplog.at_level(logging.WARNING):
        assert mamamia.validate_box((slice(2, 40), slice(0, 3), slice(1, 5)), (6, 7, 8), "s.json") == \
            (slice(2, 6), slice(0, 3), slice(1, 5))
    assert "s.json" in caplog.text and "z_max" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # entirely outside: no box rather than an empty mask
        assert mamamia.validate_box((slice(2, 4), slice(9, 12), slice(1, 5)), (6, 7, 8), "t.json") is None
    assert "t.json" in caplog.text and "y" in caplog.text
    case = mamamia.case_from_paths("DUKE_001", ["a"], {"primary_lesion": _box(x_max=50)})
    assert mamamia.case_breast_box(case, (3, 6, 7, 8)) == (slice(2, 4), slice(0, 3), slice(1, 8))


def test_record_value_checks(caplog):
    with caplog.at_level(logging.WARNING):
        _, clin, acq, _ = mamamia.parse_record(
            {"clinical_data": {"age": "forty"}, "imaging_data": {"acquisition_times": [0, 90, 60]}}, "u.json")
    assert clin.age is None and acq.acquisition_times is None
    assert "u.json" in caplog.text and "age" in caplog.text and "acquisition_times" in caplog.text
    _, clin, acq, _ = mamamia.parse_record(
        {"clinical_data": {"age": 51}, "imaging_data": {"acquisition_times": [0, 60.5, 121]},
         "primary_lesion": {"pcr": 0}}, "v.json")
    assert clin.age == 51 and acq.acquisition_times == (0.0, 60.5, 121.0) and clin.pcr == 0
    for bad in (2, "yes", True, 0.5):
        with pytest.raises(ValueError, match=r"w.json.*pcr"):
            mamamia.parse_record({"primary_lesion": {"pcr": bad}}, "w.json")
    assert mamamia.parse_record({"primary_lesion": {"pcr": None}}, "w.json")[1].pcr is None


def test_bad_pcr_raises_only_when_that_case_is_selected(root):
    (root / "patient_info_files" / "nact_01.json").write_text(
        json.dumps({"primary_lesion": {"pcr": 7}}))
    cases = mamamia.load_dataset(root)
    assert [c.patient_id for c in mamamia.select(cases, centers=["DUKE"])] == ["DUKE_001"]
    with pytest.raises(ValueError, match=r"nact_01.json.*pcr"):
        mamamia.select(cases, split="test")


# ----------------------------------------------------------------------------- quiet drops

def test_training_selection_one_summary_line(root, caplog):
    cases = mamamia.load_dataset(root)
    with caplog.at_level(logging.WARNING, logger="data.mamamia"):
        kept, report = mamamia.training_selection(cases)
    assert [c.patient_id for c in kept] == ["DUKE_001", "NACT_01"]
    assert report == {"kept": 2, "without_mask": ["ISPY1_1001"]}
    lines = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "1 of 3" in lines[0].getMessage() and "ISPY1_1001" in lines[0].getMessage()


def test_soft_mask_is_not_tumour_free(root, caplog):
    case = [c for c in mamamia.load_dataset(root) if c.patient_id == "DUKE_001"][0]
    soft = np.zeros((6, 7, 8), np.float32)
    soft[1:3, 1:3, 1:3] = 0.3  # every value < 0.5: a 0.5 threshold would empty it
    _nii(case.mask_path, soft)
    with caplog.at_level(logging.WARNING):
        m = mamamia.load_mask(case)
    assert m.dtype == np.uint8 and m.sum() == 8 and set(np.unique(m)) == {0, 1}
    assert "duke_001.nii.gz" in caplog.text and "outside {0, 1}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert mamamia.binarise_mask(np.array([0, 1, 1], np.uint8)).tolist() == [0, 1, 1]
    assert caplog.text == ""
