"""A MAMA-MIA patient record (``patient_info_files/<id>.json``) read into typed fields, with
every value that is used checked: the breast box (converted from SimpleITK's z, y, x order once,
here), ``pcr`` in {0, 1, null}, a numeric age, increasing acquisition times. Unusable values are
errors naming the file and key; implausible ones are dropped or clamped with a warning.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger("data.mamamia")


@dataclass(frozen=True)
class Clinical:
    age: float | None = None
    menopause: str = "unknown"          # pre | post | unknown (official grouping)
    menopause_raw: str | None = None
    density: str | None = None          # a | b | c | d, known for some DUKE cases only
    pcr: int | None = None              # 1 = pathological complete response
    subtype: str | None = None
    # receptor status and grade: 1 = positive; from the dataset's clinical table (data/clinical_table.py)
    hr: int | None = None
    er: int | None = None
    pr: int | None = None
    her2: int | None = None
    grade: float | None = None          # Nottingham grade 1-3


@dataclass(frozen=True)
class Acquisition:
    site: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    field_strength: float | None = None
    echo_time: float | None = None
    repetition_time: float | None = None
    bilateral: bool | None = None
    acquisition_times: tuple[float, ...] | None = None


# ----------------------------------------------------------------------------- clinical fields

def menopause_group(raw) -> str:
    """Official MAMA-MIA grouping: contains "peri" or "pre" -> pre; "post" -> post; else unknown."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return "unknown"
    s = str(raw).strip().lower()
    if "peri" in s or "pre" in s:  # checked first, as the official evaluation does
        return "pre"
    if "post" in s:
        return "post"
    return "unknown"


def _num(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


# our array axis i holds the JSON (SimpleITK) axis BOX_AXES[i]
BOX_AXES = ("z", "y", "x")


def breast_box_from_json(coords, source: str = "<json>") -> tuple[slice, slice, slice] | None:
    """JSON ``breast_coordinates`` index SimpleITK axes 0/1/2 = nibabel axes 2/1/0 (half-open).

    No box (None) when the coordinates are absent. Unusable ones give None with a warning naming
    ``source`` and the key: a missing or non-numeric value, or ``min >= max`` after negative
    values are clamped to 0 (numpy would wrap a negative start around the axis, an inverted box
    would empty the mask). The image's upper bounds are checked by :func:`validate_box`.
    """
    if coords is None:
        return None
    where = f"{source}: primary_lesion.breast_coordinates"
    if not isinstance(coords, dict):
        log.warning("%s is not an object (%r); breast box ignored", where, coords)
        return None
    v = {}
    for ax in ("x", "y", "z"):
        for end in ("min", "max"):
            key = f"{ax}_{end}"
            raw = coords.get(key)
            num = _num(raw)
            if num is None or not math.isfinite(num):
                log.warning("%s.%s is %r, not a number; breast box ignored", where, key, raw)
                return None
            if num < 0:
                log.warning("%s.%s = %r is negative; clamped to 0", where, key, raw)
                num = 0.0
            v[key] = int(num)
    for ax in ("x", "y", "z"):
        if v[f"{ax}_min"] >= v[f"{ax}_max"]:
            log.warning("%s: %s_min %d >= %s_max %d (empty or inverted box); breast box ignored",
                        where, ax, v[f"{ax}_min"], ax, v[f"{ax}_max"])
            return None
    return tuple(slice(v[f"{ax}_min"], v[f"{ax}_max"]) for ax in BOX_AXES)  # type: ignore[return-value]


def validate_box(box, shape, source: str = "<box>") -> tuple[slice, slice, slice] | None:
    """A breast box (our axis order) checked against the image ``shape`` (X, Y, Z).

    Parts outside the image are clamped with a warning naming ``source`` and the JSON key; a box
    that is empty once clamped (entirely outside the image, or inverted) is dropped with a
    warning and None is returned: the documented fallback is "no breast box", i.e. the whole
    image, never an empty mask.
    """
    if box is None:
        return None
    out = []
    for sl, dim, ax in zip(box, tuple(shape)[-3:], BOX_AXES):
        lo, hi = sl.start, sl.stop
        if lo < 0:
            log.warning("%s: breast box %s_min %d < 0; clamped to 0", source, ax, lo)
            lo = 0
        if hi > dim:
            log.warning("%s: breast box %s_max %d beyond the image (%d voxels); clamped", source, ax, hi, dim)
            hi = dim
        if lo >= hi:
            log.warning("%s: breast box %s range [%d, %d) is empty inside the image (%d voxels); "
                        "breast box ignored", source, ax, sl.start, sl.stop, dim)
            return None
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


def _pcr(raw, source: str) -> int | None:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None
    if not isinstance(raw, bool) and isinstance(raw, (int, float)) and raw in (0, 1):
        return int(raw)
    raise ValueError(f"{source}: primary_lesion.pcr must be 0, 1 or null, got {raw!r}")


def _age(raw, source: str) -> float | None:
    age = None if isinstance(raw, bool) else _num(raw)
    if raw is not None and (age is None or not math.isfinite(age)):
        log.warning("%s: clinical_data.age is %r, not a number; treated as unknown", source, raw)
        return None
    return age


def _times(raw, source: str) -> tuple[float, ...] | None:
    if raw is None:
        return None
    vals = [None if isinstance(t, bool) else _num(t) for t in raw] if isinstance(raw, list) else [None]
    if not vals or any(t is None or not math.isfinite(t) for t in vals) \
            or any(b <= a for a, b in zip(vals, vals[1:])):
        log.warning("%s: imaging_data.acquisition_times %r are not increasing numbers; ignored", source, raw)
        return None
    return tuple(vals)  # type: ignore[arg-type]


def parse_record(record: dict, source: str = "<json>") -> tuple[str | None, Clinical, Acquisition, tuple | None]:
    """Clinical and imaging fields from one patient JSON.

    Missing keys become None. ``pcr`` other than 0, 1 or null is a ValueError naming ``source``
    (it is a training target); a non-numeric age, non-increasing acquisition times or an unusable
    breast box are dropped with a warning naming ``source`` and the key.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(record).__name__}")
    cd, pl, im = (record.get(k) or {} for k in ("clinical_data", "primary_lesion", "imaging_data"))
    pcr = _pcr(_get(pl, "pcr"), source)
    density = _get(cd, "breast_density")
    density = str(density).strip().lower() if isinstance(density, str) and density.strip() else None
    raw_meno = _get(cd, "menopausal_status")
    subtype = _get(pl, "tumor_subtype")
    clinical = Clinical(age=_age(_get(cd, "age"), source), menopause=menopause_group(raw_meno),
                        menopause_raw=raw_meno if isinstance(raw_meno, str) else None,
                        density=density if density in ("a", "b", "c", "d") else None,
                        pcr=pcr,
                        subtype=str(subtype) if subtype not in (None, "") else None)
    bil = _get(im, "bilateral")
    acq = Acquisition(site=_get(im, "site"), manufacturer=_get(im, "scanner_manufacturer"),
                      model=_get(im, "scanner_model"), field_strength=_num(_get(im, "field_strength")),
                      echo_time=_num(_get(im, "echo_time")), repetition_time=_num(_get(im, "repetition_time")),
                      bilateral=None if bil is None else bool(bil),
                      acquisition_times=_times(_get(im, "acquisition_times"), source))
    center = _get(im, "dataset")
    return (str(center).upper() if center else None), clinical, acq, breast_box_from_json(
        _get(pl, "breast_coordinates"), source)


def center_from_id(patient_id: str) -> str:
    return patient_id.split("_")[0].upper()
