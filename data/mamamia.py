"""Read a MAMA-MIA dataset folder exactly as it is on disk (MAMA-MIA, Garrucho et al., Scientific Data 2025).

Layout::

    <root>/images/<PATIENT_ID>/<patient_id>_0000.nii.gz ... _0005   (3-6 DCE phases)
    <root>/segmentations/expert/<patient_id>.nii.gz                  ground truth on the _0001 grid
    <root>/patient_info_files/<patient_id>.json                      clinical + imaging record
    <root>/train_test_splits.csv                                      columns train_split, test_split

Names are matched case-insensitively (the challenge download has upper-case folders and
lower-case files; older copies are upper case throughout). Non-NIfTI files are ignored.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data import io

log = logging.getLogger(__name__)

PHASE_RE = re.compile(r"^(?P<pid>.+)_(?P<phase>\d{4})$")
ANNOTATED_PHASE = 1  # the expert masks live on the grid of the first post-contrast phase


@dataclass(frozen=True)
class Clinical:
    age: float | None = None
    menopause: str = "unknown"          # pre | post | unknown (official grouping)
    menopause_raw: str | None = None
    density: str | None = None          # a | b | c | d, known for some DUKE cases only
    pcr: int | None = None              # 1 = pathological complete response
    subtype: str | None = None


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


@dataclass(frozen=True)
class Case:
    """One patient. ``phase_paths[i]`` is the file of phase ``phase_numbers[i]`` (sorted)."""

    patient_id: str
    center: str
    phase_paths: tuple[Path, ...]
    phase_numbers: tuple[int, ...]
    mask_path: Path | None = None
    json_path: Path | None = None
    clinical: Clinical = field(default_factory=Clinical)
    acquisition: Acquisition = field(default_factory=Acquisition)
    # breast box in OUR array axis order (nibabel X, Y, Z), half-open slices
    breast_box: tuple[slice, slice, slice] | None = None
    split: str | None = None            # train | test | None (not listed)

    @property
    def n_phases(self) -> int:
        return len(self.phase_paths)

    def phase_path(self, phase: int) -> Path:
        if phase not in self.phase_numbers:
            raise FileNotFoundError(
                f"{self.patient_id}: phase {phase:04d} missing (has {list(self.phase_numbers)})")
        return self.phase_paths[self.phase_numbers.index(phase)]


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


def breast_box_from_json(coords) -> tuple[slice, slice, slice] | None:
    """JSON ``breast_coordinates`` index SimpleITK axes 0/1/2 = nibabel axes 2/1/0 (half-open)."""
    if not isinstance(coords, dict):
        return None
    vals = {k: _num(coords.get(k)) for k in ("x_min", "x_max", "y_min", "y_max", "z_min", "z_max")}
    if any(v is None for v in vals.values()):
        return None
    v = {k: int(x) for k, x in vals.items()}
    return (slice(v["z_min"], v["z_max"]), slice(v["y_min"], v["y_max"]), slice(v["x_min"], v["x_max"]))


def parse_record(record: dict, source: str = "<json>") -> tuple[str | None, Clinical, Acquisition, tuple | None]:
    """Clinical and imaging fields from one patient JSON; missing keys become None, never errors."""
    if not isinstance(record, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(record).__name__}")
    cd, pl, im = (record.get(k) or {} for k in ("clinical_data", "primary_lesion", "imaging_data"))
    pcr = _num(_get(pl, "pcr"))
    density = _get(cd, "breast_density")
    density = str(density).strip().lower() if isinstance(density, str) and density.strip() else None
    raw_meno = _get(cd, "menopausal_status")
    subtype = _get(pl, "tumor_subtype")
    clinical = Clinical(age=_num(_get(cd, "age")), menopause=menopause_group(raw_meno),
                        menopause_raw=raw_meno if isinstance(raw_meno, str) else None,
                        density=density if density in ("a", "b", "c", "d") else None,
                        pcr=None if pcr is None else int(pcr),
                        subtype=str(subtype) if subtype not in (None, "") else None)
    bil = _get(im, "bilateral")
    times = _get(im, "acquisition_times")
    acq = Acquisition(site=_get(im, "site"), manufacturer=_get(im, "scanner_manufacturer"),
                      model=_get(im, "scanner_model"), field_strength=_num(_get(im, "field_strength")),
                      echo_time=_num(_get(im, "echo_time")), repetition_time=_num(_get(im, "repetition_time")),
                      bilateral=None if bil is None else bool(bil),
                      acquisition_times=tuple(float(t) for t in times) if isinstance(times, list) else None)
    center = _get(im, "dataset")
    return (str(center).upper() if center else None), clinical, acq, breast_box_from_json(
        _get(pl, "breast_coordinates"))


def center_from_id(patient_id: str) -> str:
    return patient_id.split("_")[0].upper()


# ----------------------------------------------------------------------------- discovery

def _ci_children(folder: Path) -> dict[str, Path]:
    """Children of ``folder`` keyed by lower-case name."""
    if not folder.is_dir():
        return {}
    return {p.name.lower(): p for p in folder.iterdir()}


def read_splits(path: Path) -> dict[str, str]:
    """``train_test_splits.csv`` -> {PATIENT_ID: 'train'|'test'}; NaN padding and blanks skipped."""
    out: dict[str, str] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        missing = [c for c in ("train_split", "test_split") if c not in cols]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        for row in reader:
            for key, split in (("train_split", "train"), ("test_split", "test")):
                pid = (row.get(cols[key]) or "").strip().upper()
                if pid and pid not in ("NAN", "NONE", "NULL"):
                    out[pid] = split
    return out


def _discover_cases(images: Path, masks: dict, jsons: dict, splits: dict) -> list[Case]:
    cases = []
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        pid = folder.name.upper()
        phases: dict[int, Path] = {}
        for f in folder.iterdir():
            if not f.is_file() or not io.is_nifti(f.name):
                continue
            m = PHASE_RE.match(io.strip_nifti_suffix(f.name))
            if not m or m.group("pid").upper() != pid:
                log.warning("%s: not a phase file of %s; ignored", f, pid)
                continue
            k = int(m.group("phase"))
            if k in phases:
                raise ValueError(f"{folder}: phase {k:04d} present twice ({phases[k].name}, {f.name})")
            phases[k] = f
        if not phases:
            log.warning("%s: no NIfTI phase files; case skipped", folder)
            continue
        nums = tuple(sorted(phases))
        center, clinical, acq, box = None, Clinical(), Acquisition(), None
        if pid in jsons:
            try:
                record = json.loads(jsons[pid].read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{jsons[pid]}: invalid JSON: {exc}") from exc
            center, clinical, acq, box = parse_record(record, str(jsons[pid]))
        cases.append(Case(patient_id=pid, center=center or center_from_id(pid),
                          phase_paths=tuple(phases[k] for k in nums), phase_numbers=nums,
                          mask_path=masks.get(pid), json_path=jsons.get(pid), clinical=clinical,
                          acquisition=acq, breast_box=box, split=splits.get(pid)))
    return cases


def load_dataset_from_images(folder: str | os.PathLike) -> list[Case]:
    """Cases from a bare folder of case folders (``<folder>/<ID>/<id>_000k.nii.gz``), without
    masks, clinical records or splits (what a user has for new scans)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: input folder not found")
    cases = _discover_cases(folder, {}, {}, {})
    if not cases:
        raise FileNotFoundError(f"{folder}: no case folders with <id>_0000.nii.gz-style phase files")
    return cases


def load_dataset(root: str | os.PathLike, require_splits: bool = False,
                 strict_split_ids: bool = True) -> list[Case]:
    """Discover every case under ``root/images``; sorted by patient id.

    An id listed in the split file without images is an error naming the id (``strict_split_ids``)
    or a logged warning.
    """
    root = Path(root)
    kids = _ci_children(root)
    images = kids.get("images")
    if images is None or not images.is_dir():
        raise FileNotFoundError(f"{root}: no images/ folder (is this a MAMA-MIA dataset root?)")
    seg = _ci_children(kids["segmentations"]).get("expert") if "segmentations" in kids else None
    masks = {io.strip_nifti_suffix(n).upper(): p for n, p in _ci_children(seg).items()
             if io.is_nifti(n)} if seg else {}
    info = kids.get("patient_info_files")
    jsons = {n[:-5].upper(): p for n, p in _ci_children(info).items() if n.endswith(".json")} if info else {}
    split_path = kids.get("train_test_splits.csv")
    splits = read_splits(split_path) if split_path else {}
    if require_splits and not split_path:
        raise FileNotFoundError(f"{root}: train_test_splits.csv not found")

    cases = _discover_cases(images, masks, jsons, splits)
    found = {c.patient_id for c in cases}
    orphans = sorted(set(splits) - found)
    if orphans:
        msg = f"{split_path}: {len(orphans)} id(s) in the split file have no images: {orphans[:10]}"
        if strict_split_ids:
            raise ValueError(msg)
        log.warning(msg)
    return cases


# ----------------------------------------------------------------------------- selection

def parse_list(text: str | None, kind=str) -> list | None:
    """``"DUKE,NACT"`` -> ['DUKE', 'NACT']; ``"0-2"`` or ``"0,1,2"`` -> [0, 1, 2] for ints."""
    if text is None or text == "":
        return None
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if kind is int and "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(kind(part))
    return out


def select(cases: list[Case], centers=None, phases=None, split: str | None = None,
           ids=None, on_missing_phase: str = "skip") -> list[Case]:
    """Filter cases.

    ``centers``: names (case-insensitive). ``split``: 'train' | 'test' | 'all' | None.
    ``phases``: phase numbers every kept case must have (e.g. [0, 1, 2] as channels). A case with
    fewer phases is skipped with a logged warning (``on_missing_phase="skip"``) or is an error
    naming the case (``"error"``). Cases keep all their phases; loaders take the requested ones.
    """
    out = list(cases)
    if centers:
        want = {c.upper() for c in centers}
        unknown = want - {c.center for c in cases}
        if unknown:
            log.warning("centers %s not present in the dataset", sorted(unknown))
        out = [c for c in out if c.center in want]
    if split and split != "all":
        if split not in ("train", "test"):
            raise ValueError(f"split must be train, test or all, got {split!r}")
        out = [c for c in out if c.split == split]
    if ids:
        want_ids = {i.upper() for i in ids}
        out = [c for c in out if c.patient_id in want_ids]
    if phases:
        kept = []
        for c in out:
            missing = [p for p in phases if p not in c.phase_numbers]
            if not missing:
                kept.append(c)
            elif on_missing_phase == "error":
                raise ValueError(f"{c.patient_id}: lacks phase(s) {missing} (has {list(c.phase_numbers)})")
            else:
                log.warning("%s: lacks phase(s) %s; skipped", c.patient_id, missing)
        out = kept
    return out


# ----------------------------------------------------------------------------- loading

def reference_phase(case: Case, phases=None) -> int:
    """The phase whose grid images are loaded on and outputs are written on: the annotated phase
    (``_0001``, the grid of the expert masks) when present, else the first of ``phases`` (the
    requested input phases; default all the case has)."""
    if ANNOTATED_PHASE in case.phase_numbers:
        return ANNOTATED_PHASE
    return list(phases)[0] if phases else case.phase_numbers[0]


def load_image(case: Case, phases=None, nan_policy: str = "raise"):
    """``(C, X, Y, Z)`` float32 of the requested phases on the grid of ``reference_phase``,
    plus spacing and affine."""
    phases = list(case.phase_numbers) if phases is None else list(phases)
    paths = [case.phase_path(p) for p in phases]
    ref_phase = reference_phase(case, phases)
    if ref_phase in phases:
        return io.load_phases(paths, reference=phases.index(ref_phase), nan_policy=nan_policy)
    ref_img = io.load_header(case.phase_path(ref_phase))
    arr, _, aff = io.load_phases(paths, reference=0, nan_policy=nan_policy)
    if not io.same_grid(aff, arr.shape[1:], ref_img.affine, ref_img.shape[:3]):
        arr = np.stack([io.resample_to_grid(a, aff, ref_img.affine, ref_img.shape[:3]) for a in arr])
    return arr, io.spacing_from_affine(ref_img.affine), np.asarray(ref_img.affine, float)


def load_mask(case: Case, like_affine=None, like_shape=None) -> np.ndarray:
    """Expert mask as uint8 {0,1}; its grid must equal the image grid (error naming the file)."""
    if case.mask_path is None:
        raise FileNotFoundError(f"{case.patient_id}: no expert segmentation found")
    vol = io.load_nifti(case.mask_path, dtype=np.float32)
    if like_affine is not None and not io.same_grid(vol.affine, vol.shape, like_affine, like_shape):
        raise io.ImageError(f"{case.mask_path}: mask grid {vol.shape} differs from the image grid "
                            f"{tuple(like_shape)} of {case.patient_id}")
    return (vol.array > 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- summary

def summary_rows(cases: list[Case], with_images: bool = True) -> list[dict]:
    """Per-center statistics: cases, phase counts, spacing, tumour volume (ml), pCR rate."""
    rows = []
    for center in sorted({c.center for c in cases}):
        cs = [c for c in cases if c.center == center]
        spacings, vols = [], []
        if with_images:
            for c in cs:
                img = io.load_header(c.phase_path(c.phase_numbers[min(1, c.n_phases - 1)]))
                sp = io.spacing_from_affine(img.affine)
                spacings.append(sp)
                if c.mask_path is not None:
                    m = io.load_nifti(c.mask_path).array
                    vols.append(float((m > 0.5).sum()) * float(np.prod(sp)) / 1000.0)
        pcr = [c.clinical.pcr for c in cs if c.clinical.pcr is not None]
        rows.append(dict(
            center=center, cases=len(cs),
            train=sum(c.split == "train" for c in cs), test=sum(c.split == "test" for c in cs),
            phases=dict(sorted(Counter(c.n_phases for c in cs).items())),
            spacing=tuple(np.median(np.array(spacings), 0).round(2)) if spacings else None,
            tumour_ml=float(np.median(vols)) if vols else None,
            pcr_rate=float(np.mean(pcr)) if pcr else None, pcr_missing=len(cs) - len(pcr)))
    return rows


def summary_table(cases: list[Case], with_images: bool = True) -> str:
    rows = summary_rows(cases, with_images)
    head = ["center", "cases", "train/test", "phases (n:cases)", "median spacing mm", "median tumour ml", "pCR rate"]
    body = []
    for r in rows:
        body.append([r["center"], str(r["cases"]), f"{r['train']}/{r['test']}",
                     " ".join(f"{k}:{v}" for k, v in r["phases"].items()),
                     "x".join(f"{s:g}" for s in r["spacing"]) if r["spacing"] else "-",
                     f"{r['tumour_ml']:.1f}" if r["tumour_ml"] is not None else "-",
                     (f"{r['pcr_rate']:.2f}" if r["pcr_rate"] is not None else "-")
                     + (f" ({r['pcr_missing']} missing)" if r["pcr_missing"] else "")])
    pcr_all = [c.clinical.pcr for c in cases if c.clinical.pcr is not None]
    body.append(["all", str(len(cases)), f"{sum(c.split == 'train' for c in cases)}/"
                 f"{sum(c.split == 'test' for c in cases)}", "", "", "",
                 f"{np.mean(pcr_all):.2f}" if pcr_all else "-"])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def case_from_paths(patient_id: str, phase_paths, record: dict | None = None, mask_path=None) -> Case:
    """A Case from an explicit phase list (index 0 = pre-contrast), as the challenge platform
    hands them over, with the clinical record parsed like a JSON file on disk."""
    if not phase_paths:
        raise ValueError(f"{patient_id}: no DCE-MRI phase paths given")
    center, clinical, acq, box = (None, Clinical(), Acquisition(), None)
    if record is not None:
        center, clinical, acq, box = parse_record(record, f"<record of {patient_id}>")
    pid = str(patient_id).upper()
    return Case(patient_id=pid, center=center or center_from_id(pid),
                phase_paths=tuple(Path(p) for p in phase_paths),
                phase_numbers=tuple(range(len(phase_paths))), mask_path=Path(mask_path) if mask_path else None,
                clinical=clinical, acquisition=acq, breast_box=box)
