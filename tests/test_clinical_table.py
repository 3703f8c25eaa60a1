"""The dataset's clinical table (clinical_and_imaging_info.xlsx): reading, types, merging."""
import json
import logging

import nibabel as nib
import numpy as np
import openpyxl
import pytest

from core.errors import UserError
from data import clinical_table as ct
from data import mamamia


def _xlsx(path, header, rows, sheet="dataset_info"):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = sheet
    ws.append(header)
    for r in rows:
        ws.append(r)
    wb.save(path)
    return path


def _dataset(tmp_path, records: dict):
    """Cases with one phase pair each and the given JSON records (None: no JSON)."""
    root = tmp_path / "ds"
    for pid, rec in records.items():
        d = root / "images" / pid
        d.mkdir(parents=True)
        for k in range(2):
            nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), np.eye(4)), str(d / f"{pid.lower()}_000{k}.nii.gz"))
        if rec is not None:
            info = root / "patient_info_files"
            info.mkdir(exist_ok=True)
            (info / f"{pid.lower()}.json").write_text(json.dumps(rec))
    return root


HEADER = ["patient_id", "dataset", "age", "menopause", "hr", "er", "pr", "her2", "tumor_subtype",
          "nottingham_grade", "pcr", "bilateral_mri", "field_strength", "acquisition_times", "pixel_spacing",
          "race", "new_column"]


def test_missing_file_is_fine(tmp_path):
    root = _dataset(tmp_path, {"DUKE_001": None})
    assert ct.read_clinical_table(root) is None
    case = mamamia.load_dataset(root)[0]
    assert case.clinical.hr is None and case.table_row == {}


def test_values_typed_and_merged_json_wins(tmp_path, caplog):
    root = _dataset(tmp_path, {
        "DUKE_001": {"clinical_data": {"age": 45, "menopausal_status": "pre"},
                     "primary_lesion": {"pcr": 1, "tumor_subtype": "triple_negative"}},
        "DUKE_002": None})
    _xlsx(root / ct.FILE_NAME, HEADER, [
        # lower-case id: matched case-insensitively; age and pcr conflict with the JSON
        ["duke_001", "DUKE", 47, "post", None, "negative", "Neg", 0, "triple_negative", 3, 0, "yes", 1.5,
         "[0, 120.5, 240]", "0.7x0.7", "white", "kept"],
        ["DUKE_002", "DUKE", 61.0, "post", "positive", None, None, "1", "her2_pure", None, 1, 0, 3,
         "0", "0.8, 0.8", None, 7],
    ])
    with caplog.at_level(logging.WARNING, logger="data.mamamia"):
        cases = {c.patient_id: c for c in mamamia.load_dataset(root)}
    a, b = cases["DUKE_001"], cases["DUKE_002"]
    # the JSON wins; conflicts named by patient and field
    assert a.clinical.age == 45 and a.clinical.pcr == 1 and a.clinical.menopause == "pre"
    msgs = [r.getMessage() for r in caplog.records]
    for field in ("age", "pcr", "menopause"):
        assert any("DUKE_001" in m and f"field {field}:" in m for m in msgs), (field, msgs)
    assert not any("tumor_subtype" in m for m in msgs)          # equal values are no conflict
    # table-only fields; HR from ER/PR when hr is empty (both negative -> 0)
    assert (a.clinical.hr, a.clinical.er, a.clinical.pr, a.clinical.her2, a.clinical.grade) == (0, 0, 0, 0, 3.0)
    assert a.acquisition.bilateral is True and a.acquisition.field_strength == 1.5
    assert a.acquisition.acquisition_times == (0.0, 120.5, 240.0)
    assert a.table_row["pixel_spacing"] == (0.7, 0.7) and a.table_row["race"] == "white"
    assert a.table_row["new_column"] == "kept"                   # extra columns stay available
    # no JSON: every value from the table
    assert b.clinical.age == 61.0 and b.clinical.pcr == 1 and b.clinical.hr == 1 and b.clinical.her2 == 1
    assert b.clinical.menopause == "post" and b.clinical.subtype == "her2_pure" and b.clinical.er is None
    assert b.table_row["new_column"] == 7 and b.center == "DUKE"


@pytest.mark.parametrize("header,row,expect", [
    (["patient_id", "hr"], ["P1", "maybe"], "row 2, column 'hr': 'maybe' is not 0/1"),
    (["patient_id", "age"], ["P1", "old"], "row 2, column 'age': 'old' is not a number"),
    (["patient_id", "pcr"], ["P1", 2], "row 2, column 'pcr': 2 is not 0/1"),
    (["patient_id", "acquisition_times"], ["P1", "0, soon"], "row 2, column 'acquisition_times'"),
    (["id", "hr"], ["P1", 1], "no patient_id column"),
])
def test_bad_values_name_file_row_column(tmp_path, header, row, expect):
    path = _xlsx(tmp_path / ct.FILE_NAME, header, [row])
    with pytest.raises(UserError, match=expect) as info:
        ct.read_clinical_table(tmp_path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_file_missing_sheet_duplicate_id(tmp_path):
    (tmp_path / ct.FILE_NAME).write_bytes(b"not a zip at all")
    with pytest.raises(UserError, match="not a readable xlsx"):
        ct.read_clinical_table(tmp_path)
    _xlsx(tmp_path / ct.FILE_NAME, ["patient_id"], [["P1"]], sheet="Sheet9")
    with pytest.raises(UserError, match="no sheet 'dataset_info'"):
        ct.read_clinical_table(tmp_path)
    _xlsx(tmp_path / ct.FILE_NAME, ["patient_id", "age"], [["P1", 40], [None, None], ["p1", 41]])
    with pytest.raises(UserError, match="row 4, column 'patient_id'.*row 2"):
        ct.read_clinical_table(tmp_path)


def test_empty_and_unknown_cells_are_missing(tmp_path):
    _xlsx(tmp_path / ct.FILE_NAME, ["Patient_ID ", "HR", "age", "site"],
          [["P1", "unknown", "", "NA"], ["P2", True, " 52 ", "Durham"]])
    t = ct.read_clinical_table(tmp_path)
    assert t["p1"] == {"patient_id": "P1"}
    assert t["p2"] == {"patient_id": "P2", "hr": 1, "age": 52.0, "site": "Durham"}


def test_broken_json_record_is_not_merged(tmp_path):
    root = _dataset(tmp_path, {"DUKE_001": {"primary_lesion": {"pcr": 7}}})
    _xlsx(root / ct.FILE_NAME, ["patient_id", "pcr"], [["DUKE_001", 1]])
    case = mamamia.load_dataset(root)[0]
    assert case.record_error and "pcr" in case.record_error


def test_phantom_table_round_trip(tmp_path):
    """The phantom's writer and this reader agree on every column of the shared interface."""
    from data import phantom
    pcs = phantom.draw_cases(40, seed=3)
    phantom.write_clinical_table(tmp_path, pcs)
    table = ct.read_clinical_table(tmp_path)
    assert len(table) == 40
    for pc in pcs:
        want = {k: v for k, v in phantom.table_row(pc).items() if v is not None}
        got = table[pc.spec.patient_id.lower()]
        assert set(got) == set(want), pc.spec.patient_id
        for k, v in want.items():
            if k == "acquisition_times":
                assert got[k] == tuple(float(t) for t in pc.spec.times_s)
            elif k == "pixel_spacing":
                assert got[k] == pytest.approx((v,))
            elif k in ct.BINARY or k in ct.NUMBER or isinstance(v, (int, float)):
                assert got[k] == pytest.approx(float(v)), k   # xlsx keeps 15.0 as the number 15
            else:
                assert str(got[k]) == str(v), k
    assert any(r.get("hr") is not None for r in table.values())
