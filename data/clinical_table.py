"""The dataset's clinical table ``<root>/clinical_and_imaging_info.xlsx`` (sheet ``dataset_info``)
read and merged into the patient records.

A MAMA-MIA download ships this table beside the JSON records (MAMA-MIA, Garrucho et al.,
Scientific Data 2025): a header row, then one row per patient, 49 variables. It is the only
place the receptor status lives (``hr``, ``er``, ``pr``, ``her2``), the strongest known
predictors of pCR. The phantom writes the same file with the same columns.

Reading (:func:`read_clinical_table`): an absent file gives ``None``; a file that is not an xlsx
workbook, lacks the sheet or the ``patient_id`` column, lists a patient twice (ids compared
case-insensitively, like the rest of the dataset code), or holds a value of the wrong type is a
``UserError`` naming the file, row (as Excel numbers it, header = row 1) and column. Column
names are compared after stripping and lower-casing. Value types:

- ``hr``, ``er``, ``pr``, ``her2``, ``pcr``, ``bilateral_mri``: 0/1; also booleans and the
  strings positive/negative, pos/neg, yes/no, true/false, +/- (any case);
- ``age``, ``field_strength``, ``echo_time``, ``repetition_time``, ``num_phases``,
  ``slice_thickness``, ``nottingham_grade``: numbers (or numeric strings);
- ``acquisition_times``, ``pixel_spacing``: a number or a list written as ``[a, b, ...]``,
  ``a, b`` or ``a x b``;
- every other column: kept as written (text stripped, numbers as numbers).

An empty cell (or nan/na/n/a/none/null, and "unknown" in the typed columns) is missing.

Merging (:func:`merge_row`): the JSON record wins wherever both hold a value; a disagreement is
a logged warning naming the patient and the field. Columns the records have no field for stay
available as :attr:`data.mamamia.Case.table` (name -> parsed value). HR status is ER or PR
positive (the usual definition, e.g. ASCO/CAP guideline, Allison et al., J Clin Oncol 2020) when
the table gives ER/PR but no ``hr``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import zipfile
from pathlib import Path

from core.errors import UserError
from data.records import Acquisition, Clinical, menopause_group

log = logging.getLogger("data.mamamia")

FILE_NAME = "clinical_and_imaging_info.xlsx"
SHEET = "dataset_info"
# the interface shared with the phantom writer (more columns may follow; all are kept)
COLUMNS = ("patient_id", "dataset", "site", "age", "menopause", "race", "breast_density", "hr", "er", "pr",
           "her2", "tumor_subtype", "nottingham_grade", "pcr", "bilateral_mri", "field_strength",
           "manufacturer", "scanner_model", "echo_time", "repetition_time", "acquisition_times",
           "num_phases", "pixel_spacing", "slice_thickness")
BINARY = ("hr", "er", "pr", "her2", "pcr", "bilateral_mri")
NUMBER = ("age", "field_strength", "echo_time", "repetition_time", "num_phases", "slice_thickness",
          "nottingham_grade")
LISTS = ("acquisition_times", "pixel_spacing")
_MISSING = {"", "nan", "na", "n/a", "none", "null"}
_POSITIVE = {"1", "1.0", "positive", "pos", "yes", "true", "+", "y"}
_NEGATIVE = {"0", "0.0", "negative", "neg", "no", "false", "-", "n"}


class _Bad(ValueError):
    """A cell of the wrong type (turned into a UserError naming file, row and column)."""


def _missing(v, typed: bool) -> bool:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return True
    if isinstance(v, str):
        s = v.strip().lower()
        return s in _MISSING or (typed and s == "unknown")
    return False


def _binary(v) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)) and v in (0, 1):
        return int(v)
    s = str(v).strip().lower()
    if s in _POSITIVE:
        return 1
    if s in _NEGATIVE:
        return 0
    raise _Bad(f"{v!r} is not 0/1 (or positive/negative)")


def _number(v) -> float:
    if isinstance(v, bool):
        raise _Bad(f"{v!r} is not a number")
    try:
        x = float(v.strip()) if isinstance(v, str) else float(v)
    except (TypeError, ValueError):
        raise _Bad(f"{v!r} is not a number") from None
    if not math.isfinite(x):
        raise _Bad(f"{v!r} is not a finite number")
    return x


def _numbers(v) -> tuple[float, ...]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (_number(v),)
    parts = [p for p in re.split(r"[,;\s]+|(?<=\d)x(?=[\d.\s-])", str(v).strip().strip("[]()")) if p]
    if not parts:
        raise _Bad(f"{v!r} is not a list of numbers")
    try:
        return tuple(_number(p) for p in parts)
    except _Bad:
        raise _Bad(f"{v!r} is not a list of numbers") from None


def parse_value(column: str, value):
    """One cell of ``column`` as its typed value, or None when missing; ``_Bad`` when ill-typed."""
    typed = column in BINARY or column in NUMBER or column in LISTS
    if _missing(value, typed):
        return None
    if column in BINARY:
        return _binary(value)
    if column in NUMBER:
        return _number(value)
    if column in LISTS:
        return _numbers(value)
    if column == "patient_id" and isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value.strip() if isinstance(value, str) else value if isinstance(value, (int, float)) else str(value)


def read_clinical_table(root, name: str = FILE_NAME) -> dict[str, dict] | None:
    """``{patient_id.lower(): {column: value}}`` from ``<root>/<name>`` (matched in any letter
    case), values typed as in the module docstring (missing ones left out); None when the file is
    absent. Every problem is a one-line ``UserError`` naming the file (and row and column)."""
    root = Path(root)
    hits = [p for p in root.iterdir() if p.name.lower() == name.lower()] if root.is_dir() else []
    if not hits:
        return None
    if len(hits) > 1:
        raise UserError(f"{root}: {' and '.join(str(h) for h in sorted(hits))} differ only in letter case")
    path = hits[0]
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable xlsx workbook ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    try:
        sheets = {s.lower(): s for s in wb.sheetnames}
        if SHEET not in sheets:
            raise UserError(f"{path}: no sheet {SHEET!r} (sheets: {wb.sheetnames})")
        rows = wb[sheets[SHEET]].iter_rows(values_only=True)
        header = next(rows, None)
        cols = [str(h).strip().lower() if h is not None else "" for h in (header or ())]
        if "patient_id" not in cols:
            raise UserError(f"{path}: sheet {SHEET!r} has no patient_id column in its header row "
                            f"(found {[c for c in cols if c][:12]})")
        dup = sorted({c for c in cols if c and cols.count(c) > 1})
        if dup:
            raise UserError(f"{path}: column(s) {dup} appear twice in the header row")
        out: dict[str, dict] = {}
        spelled: dict[str, int] = {}
        for r, row in enumerate(rows, start=2):
            if row is None or all(_missing(v, False) for v in row):
                continue
            rec = {}
            for col, v in zip(cols, row):
                if not col:
                    continue
                try:
                    val = parse_value(col, v)
                except _Bad as exc:
                    raise UserError(f"{path}: row {r}, column {col!r}: {exc}") from None
                if val is not None:
                    rec[col] = val
            pid = rec.get("patient_id")
            if pid is None:
                raise UserError(f"{path}: row {r}, column 'patient_id': empty")
            pid = str(pid).strip()
            rec["patient_id"] = pid
            if pid.lower() in out:
                raise UserError(f"{path}: row {r}, column 'patient_id': {pid!r} already listed in row "
                                f"{spelled[pid.lower()]} (ids are compared ignoring letter case)")
            out[pid.lower()], spelled[pid.lower()] = rec, r
        log.info("%s: %d patient(s), %d column(s)", path, len(out), len([c for c in cols if c]))
        return out
    finally:
        wb.close()


# ----------------------------------------------------------------------------- merging

def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-6)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return str(a).strip().lower() == str(b).strip().lower()


def _pick(pid: str, field: str, json_value, table_value, source: str):
    """The JSON value where it is known, else the table's; a disagreement is a warning."""
    if json_value is None:
        return table_value
    if table_value is not None and not _same(json_value, table_value):
        log.warning("%s: patient %s, field %s: the JSON record says %r, the table %r; the JSON value is kept",
                    source, pid, field, json_value, table_value)
    return json_value


def _density(v) -> str | None:
    s = str(v).strip().lower() if v is not None else ""
    return s if s in ("a", "b", "c", "d") else None


def merge_row(pid: str, center: str | None, clinical: Clinical, acq: Acquisition, row: dict | None,
              source: str = FILE_NAME) -> tuple[str | None, Clinical, Acquisition, dict]:
    """Merge one table ``row`` (from :func:`read_clinical_table`, or None) into a patient's JSON
    fields; returns ``(center, clinical, acquisition, extra)`` where ``extra`` holds every table
    column (typed values), so fields the records do not model stay available."""
    if not row:
        return center, clinical, acq, {}
    g = row.get
    meno_json = clinical.menopause if clinical.menopause != "unknown" else None
    meno_table = menopause_group(g("menopause")) if g("menopause") is not None else None
    meno = _pick(pid, "menopause", meno_json, None if meno_table == "unknown" else meno_table, source)
    hr = g("hr")
    if hr is None and (g("er") is not None or g("pr") is not None):
        hr = int(bool(g("er")) or bool(g("pr")))  # HR+ = ER+ or PR+
    grade = g("nottingham_grade")
    clinical = dataclasses.replace(
        clinical,
        age=_pick(pid, "age", clinical.age, g("age"), source),
        menopause=meno or "unknown",
        menopause_raw=clinical.menopause_raw if clinical.menopause_raw is not None else (
            str(g("menopause")) if g("menopause") is not None else None),
        density=_pick(pid, "breast_density", clinical.density, _density(g("breast_density")), source),
        pcr=_pick(pid, "pcr", clinical.pcr, g("pcr"), source),
        subtype=_pick(pid, "tumor_subtype", clinical.subtype, g("tumor_subtype"), source),
        hr=_pick(pid, "hr", clinical.hr, hr, source),
        er=_pick(pid, "er", clinical.er, g("er"), source),
        pr=_pick(pid, "pr", clinical.pr, g("pr"), source),
        her2=_pick(pid, "her2", clinical.her2, g("her2"), source),
        grade=_pick(pid, "nottingham_grade", clinical.grade, grade, source))
    times = g("acquisition_times")
    if times is not None and any(b <= a for a, b in zip(times, times[1:])):
        log.warning("%s: patient %s, field acquisition_times %r are not increasing; ignored", source, pid, times)
        times = None
    bil = g("bilateral_mri")
    acq = dataclasses.replace(
        acq,
        site=_pick(pid, "site", acq.site, g("site"), source),
        manufacturer=_pick(pid, "manufacturer", acq.manufacturer, g("manufacturer"), source),
        model=_pick(pid, "scanner_model", acq.model, g("scanner_model"), source),
        field_strength=_pick(pid, "field_strength", acq.field_strength, g("field_strength"), source),
        echo_time=_pick(pid, "echo_time", acq.echo_time, g("echo_time"), source),
        repetition_time=_pick(pid, "repetition_time", acq.repetition_time, g("repetition_time"), source),
        bilateral=_pick(pid, "bilateral_mri", acq.bilateral, None if bil is None else bool(bil), source),
        acquisition_times=_pick(pid, "acquisition_times", acq.acquisition_times, times, source))
    dataset = g("dataset")
    center = _pick(pid, "dataset", center, str(dataset).upper() if dataset is not None else None, source)
    return center, clinical, acq, dict(row)
