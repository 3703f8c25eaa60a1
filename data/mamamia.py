"""Read a MAMA-MIA dataset folder exactly as it is on disk (MAMA-MIA, Garrucho et al., Scientific Data 2025).

Layout::

    <root>/images/<PATIENT_ID>/<patient_id>_0000.nii.gz ... _0005   (3-6 DCE phases)
    <root>/segmentations/expert/<patient_id>.nii.gz                  ground truth on the _0001 grid
    <root>/patient_info_files/<patient_id>.json                      clinical + imaging record
    <root>/train_test_splits.csv                                      columns train_split, test_split
    <root>/clinical_and_imaging_info.xlsx                             optional: receptor status etc.
                                                                      (data/clinical_table.py)

A patient id is the image folder's name exactly as it is on disk: outputs are named
``<patient_id>.nii.gz`` and the official scorer opens exactly that name. Masks, JSON records,
phase files and split-file rows are matched to it case-insensitively (the challenge download has
upper-case folders and lower-case files; older copies are upper case throughout); two of a kind
that differ only in case (``duke_001/`` beside ``DUKE_001/``) are an error naming both, never a
silent pick. Non-NIfTI files are ignored.

A patient JSON that cannot be used (invalid JSON, ``pcr`` not 0/1/null) does not stop discovery:
the error is kept on the case (``Case.record_error``) and raised when the case is selected
(:func:`select`) or loaded, so a broken record of a case that is filtered out costs nothing.
Values that are merely implausible (a breast box partly outside the image, decreasing
acquisition times, a non-numeric age) are dropped or clamped with a warning naming file and key.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data import clinical_table, io
from data.records import (BOX_AXES, Acquisition, Clinical, _get, _num, breast_box_from_json,  # noqa: F401
                          center_from_id, menopause_group, parse_record, validate_box)

log = logging.getLogger(__name__)

PHASE_RE = re.compile(r"^(?P<pid>.+)_(?P<phase>\d{4})$")
ANNOTATED_PHASE = 1  # the expert masks live on the grid of the first post-contrast phase


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
    record_error: str | None = None     # why the JSON record is unusable (raised on use)
    # every column of the clinical table's row, ``(name, typed value)`` pairs (``table_row``)
    table: tuple = ()

    @property
    def table_row(self) -> dict:
        """The case's row of ``clinical_and_imaging_info.xlsx`` (column -> value), {} if none."""
        return dict(self.table)

    @property
    def n_phases(self) -> int:
        return len(self.phase_paths)

    def phase_path(self, phase: int) -> Path:
        if phase not in self.phase_numbers:
            raise FileNotFoundError(
                f"{self.patient_id}: phase {phase:04d} missing (has {list(self.phase_numbers)})")
        return self.phase_paths[self.phase_numbers.index(phase)]


def case_breast_box(case: "Case", shape) -> tuple[slice, slice, slice] | None:
    """``case.breast_box`` validated against the case's image ``shape`` (see :func:`validate_box`);
    what every user of the box (inference restriction, postprocessing) should read."""
    return validate_box(case.breast_box, shape, str(case.json_path or f"<record of {case.patient_id}>"))


# ----------------------------------------------------------------------------- discovery

def _ci_child(folder: Path | None, name: str) -> Path | None:
    """The child of ``folder`` called ``name`` in any letter case; two spellings are an error."""
    if folder is None or not folder.is_dir():
        return None
    hits = [p for p in folder.iterdir() if p.name.lower() == name]
    if len(hits) > 1:
        raise ValueError(f"{folder}: {' and '.join(str(h) for h in sorted(hits))} differ only in letter case")
    return hits[0] if hits else None


def ci_index(items, what: str = "files") -> dict:
    """``{name.lower(): value}`` from ``(name, value)`` pairs; two names that differ only in
    letter case are a ValueError naming both values (paths), never a silent pick.

    Look up ids with ``index.get(patient_id.lower())``.
    """
    out: dict = {}
    seen: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if key in out:
            raise ValueError(f"{what}: {out[key]} and {value} differ only in letter case "
                             f"({seen[key]!r} vs {name!r}); rename or remove one")
        out[key], seen[key] = value, name
    return out


def read_splits(path: Path) -> dict[str, str]:
    """``train_test_splits.csv`` -> {patient_id as written: 'train'|'test'}; NaN padding and
    blanks skipped. An id in both columns, or spelled two ways (``duke_001`` and ``DUKE_001``),
    is a ValueError naming the file and the ids."""
    out: dict[str, str] = {}
    spelled: dict[str, str] = {}
    both: list[str] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        missing = [c for c in ("train_split", "test_split") if c not in cols]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            for key, split in (("train_split", "train"), ("test_split", "test")):
                pid = (row.get(cols[key]) or "").strip()
                if not pid or pid.upper() in ("NAN", "NONE", "NULL"):
                    continue
                low = pid.lower()
                if low in spelled and spelled[low] != pid:
                    raise ValueError(f"{path}:{line}: patient {pid!r} also listed as {spelled[low]!r} "
                                     f"(ids differ only in letter case)")
                if low in spelled and out[pid] != split:
                    both.append(pid)
                spelled[low] = pid
                out[pid] = split
    if both:
        raise ValueError(f"{path}: {len(both)} patient(s) listed in both train_split and test_split: "
                         f"{sorted(set(both))}")
    return out


def _read_record(path: Path):
    """``(center, clinical, acquisition, box, error)`` of one JSON file; an unusable record
    gives the defaults and the error message instead of raising (raised when the case is used)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, Clinical(), Acquisition(), None, f"{path}: invalid JSON: {exc}"
    try:
        return (*parse_record(record, str(path)), None)
    except ValueError as exc:
        return None, Clinical(), Acquisition(), None, str(exc)


def _discover_cases(images: Path, masks: dict, jsons: dict, splits: dict, table: dict | None = None,
                    table_source: str = clinical_table.FILE_NAME) -> list[Case]:
    """Cases of ``images/``; ``masks``, ``jsons``, ``splits`` and the clinical ``table`` are keyed
    by lower-case id."""
    folders = [p for p in images.iterdir() if p.is_dir()]
    ci_index(((p.name, p) for p in folders), what=f"case folders in {images}")  # collisions
    cases = []
    for folder in sorted(folders, key=lambda p: p.name):
        pid = io.safe_name(folder.name)
        key = pid.lower()
        phases: dict[int, Path] = {}
        for f in folder.iterdir():
            if not f.is_file() or not io.is_nifti(f.name):
                continue
            m = PHASE_RE.match(io.strip_nifti_suffix(f.name))
            if not m or m.group("pid").lower() != key:
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
        center, clinical, acq, box, error = None, Clinical(), Acquisition(), None, None
        if key in jsons:
            center, clinical, acq, box, error = _read_record(jsons[key])
        extra = {}
        if table and key in table and error is None:
            center, clinical, acq, extra = clinical_table.merge_row(pid, center, clinical, acq, table[key],
                                                                    table_source)
        cases.append(Case(table=tuple(extra.items()), patient_id=pid, center=center or center_from_id(pid),
                          phase_paths=tuple(phases[k] for k in nums), phase_numbers=nums,
                          mask_path=masks.get(key), json_path=jsons.get(key), clinical=clinical,
                          acquisition=acq, breast_box=box, split=splits.get(key), record_error=error))
    return cases


def _discover_flat(folder: Path) -> list[Case]:
    """Cases from files directly in ``folder`` named ``<case>_<4-digit phase>.nii[.gz]`` (an
    nnU-Net ``imagesTs`` folder): the case name is kept exactly as written; two spellings of one
    name that differ only in case are an error naming both files."""
    groups: dict[str, dict[int, Path]] = {}
    for f in sorted(folder.iterdir(), key=lambda p: p.name):
        if not f.is_file() or not io.is_nifti(f.name):
            continue
        m = PHASE_RE.match(io.strip_nifti_suffix(f.name))
        if not m:
            continue
        phases = groups.setdefault(m.group("pid"), {})
        k = int(m.group("phase"))
        if k in phases:
            raise ValueError(f"{folder}: phase {k:04d} of {m.group('pid')} present twice "
                             f"({phases[k].name}, {f.name})")
        phases[k] = f
    ci_index(((pid, next(iter(ph.values()))) for pid, ph in groups.items()), what=f"case names in {folder}")
    cases = []
    for pid in sorted(groups):
        nums = tuple(sorted(groups[pid]))
        cases.append(Case(patient_id=io.safe_name(pid), center=center_from_id(pid),
                          phase_paths=tuple(groups[pid][k] for k in nums), phase_numbers=nums))
    return cases


def load_dataset_from_images(folder: str | os.PathLike) -> list[Case]:
    """Cases from a bare folder of new scans, without masks, clinical records or splits: case
    folders (``<folder>/<ID>/<id>_000k.nii.gz``) and flat nnU-Net-style files
    (``<folder>/<case>_000k.nii.gz``, ``.nii`` too), names kept exactly. Nothing usable is an
    error listing what the folder holds."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: input folder not found")
    cases = _discover_cases(folder, {}, {}, {}) + _discover_flat(folder)
    ci_index(((c.patient_id, c.phase_paths[0]) for c in cases), what=f"cases in {folder}")
    if not cases:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        raise FileNotFoundError(
            f"{folder}: no case found: expected case folders <ID>/<id>_0000.nii.gz or files "
            f"<case>_0000.nii.gz; the folder holds {len(found)} entr{'y' if len(found) == 1 else 'ies'}"
            + (f": {', '.join(found[:12])}{' ...' if len(found) > 12 else ''}" if found else ""))
    return sorted(cases, key=lambda c: c.patient_id)


def load_dataset(root: str | os.PathLike, require_splits: bool = False,
                 strict_split_ids: bool = True) -> list[Case]:
    """Discover every case under ``root/images``; sorted by patient id.

    An id listed in the split file without images is an error naming the id (``strict_split_ids``)
    or a logged warning. Cases whose JSON record is unusable are returned with ``record_error``
    set (one summary warning) and raise when selected or loaded.
    """
    root = Path(root)
    from data import nnunet
    if nnunet.is_nnunet_dataset(root):        # an nnU-Net v2 raw dataset: channels are the phases
        return nnunet.load_nnunet_dataset(root)
    images = _ci_child(root, "images")
    if images is None or not images.is_dir():
        raise FileNotFoundError(f"{root}: no images/ folder (is this a MAMA-MIA dataset root, or an nnU-Net "
                                "raw dataset with dataset.json and imagesTr/?)")
    seg = _ci_child(_ci_child(root, "segmentations"), "expert")
    masks = ci_index(((io.strip_nifti_suffix(p.name), p) for p in seg.iterdir()
                      if p.is_file() and io.is_nifti(p.name)), what=f"masks in {seg}") \
        if seg is not None and seg.is_dir() else {}
    info = _ci_child(root, "patient_info_files")
    jsons = ci_index(((p.name[:-5], p) for p in info.iterdir() if p.name.lower().endswith(".json")),
                     what=f"records in {info}") if info is not None and info.is_dir() else {}
    split_path = _ci_child(root, "train_test_splits.csv")
    splits_raw = read_splits(split_path) if split_path else {}
    if require_splits and not split_path:
        raise FileNotFoundError(f"{root}: train_test_splits.csv not found")
    splits = {pid.lower(): split for pid, split in splits_raw.items()}

    table = clinical_table.read_clinical_table(root)
    cases = _discover_cases(images, masks, jsons, splits, table, str(root / clinical_table.FILE_NAME))
    if table:
        unmatched = sorted(v["patient_id"] for k, v in table.items() if k not in {c.patient_id.lower() for c in cases})
        if unmatched:
            log.warning("%s: %d patient(s) in the clinical table have no images: %s",
                        clinical_table.FILE_NAME, len(unmatched), _ids_text(unmatched))
    found = {c.patient_id.lower() for c in cases}
    orphans = sorted(pid for pid in splits_raw if pid.lower() not in found)
    if orphans:
        msg = f"{split_path}: {len(orphans)} id(s) in the split file have no images: {orphans[:10]}"
        if strict_split_ids:
            raise ValueError(msg)
        log.warning(msg)
    broken = [c.patient_id for c in cases if c.record_error]
    if broken:
        log.warning("%d case(s) have an unusable patient record (an error when selected or loaded): %s",
                    len(broken), _ids_text(broken))
    return cases


def _ids_text(ids, limit: int = 20) -> str:
    ids = list(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


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
        want_ids = {str(i).lower() for i in ids}
        out = [c for c in out if c.patient_id.lower() in want_ids]
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
    broken = [c for c in out if c.record_error]
    if broken:
        raise ValueError(f"{len(broken)} selected case(s) have an unusable patient record: "
                         + "; ".join(c.record_error for c in broken[:5])
                         + (f"; and {len(broken) - 5} more" if len(broken) > 5 else ""))
    return out


def training_selection(cases: list[Case]) -> tuple[list[Case], dict]:
    """The cases that can be trained on (those with an expert mask) and a report
    ``{"kept": n, "without_mask": [ids]}``; the dropped ones are logged as ONE warning line."""
    kept = [c for c in cases if c.mask_path is not None]
    dropped = [c.patient_id for c in cases if c.mask_path is None]
    if dropped:
        log.warning("%d of %d case(s) have no expert mask and are left out of training: %s",
                    len(dropped), len(cases), _ids_text(dropped))
    return kept, {"kept": len(kept), "without_mask": dropped}


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
    if case.record_error:
        raise ValueError(case.record_error)
    phases = list(case.phase_numbers) if phases is None else list(phases)
    paths = [case.phase_path(p) for p in phases]
    ref_phase = reference_phase(case, phases)
    if ref_phase in phases:
        return io.load_phases(paths, reference=phases.index(ref_phase), nan_policy=nan_policy)
    ref_img = io.load_header(case.phase_path(ref_phase))
    arr, _, aff = io.load_phases(paths, reference=0, nan_policy=nan_policy)
    if not io.same_grid(aff, arr.shape[1:], ref_img.affine, ref_img.shape[:3]):
        arr = np.stack([io.resample_to_grid(a, aff, ref_img.affine, ref_img.shape[:3], source=path)
                        for a, path in zip(arr, paths)])
    return arr, io.spacing_from_affine(ref_img.affine), np.asarray(ref_img.affine, float)


def binarise_mask(array: np.ndarray, source: str = "<mask>") -> np.ndarray:
    """uint8 {0,1}: every nonzero voxel is tumour. Expert masks are {0,1}; the official scorer
    reads them as boolean, so a soft or rescaled mask (all values < 0.5, or {0, 255}) keeps its
    tumour instead of becoming empty under a 0.5 threshold. Values outside {0,1} are warned
    about, naming ``source``."""
    a = np.asarray(array)
    fg = a != 0
    if np.any(fg & (a != 1)):
        log.warning("%s: mask values outside {0, 1} (range %g..%g); every nonzero voxel taken as tumour",
                    source, float(a.min()), float(a.max()))
    return fg.astype(np.uint8)


def load_mask(case: Case, like_affine=None, like_shape=None) -> np.ndarray:
    """Expert mask as uint8 {0,1} (see :func:`binarise_mask`); its grid must equal the image grid
    (error naming the file)."""
    if case.mask_path is None:
        raise FileNotFoundError(f"{case.patient_id}: no expert segmentation found")
    vol = io.load_nifti(case.mask_path, dtype=np.float32)
    if like_affine is not None and not io.same_grid(vol.affine, vol.shape, like_affine, like_shape):
        raise io.ImageError(f"{case.mask_path}: mask grid {vol.shape} differs from the image grid "
                            f"{tuple(like_shape)} of {case.patient_id}")
    return binarise_mask(vol.array, str(case.mask_path))


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
                    vols.append(float((m != 0).sum()) * float(np.prod(sp)) / 1000.0)
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
    hands them over, with the clinical record parsed like a JSON file on disk. The id is kept as
    given (outputs are named after it) and must be usable as a file name (``io.safe_name``)."""
    pid = io.safe_name(patient_id)
    if not phase_paths:
        raise ValueError(f"{pid}: no DCE-MRI phase paths given")
    center, clinical, acq, box, error = (None, Clinical(), Acquisition(), None, None)
    if record is not None:
        try:
            center, clinical, acq, box = parse_record(record, f"<record of {pid}>")
        except ValueError as exc:  # raised when the case is loaded, as for a file on disk
            error = str(exc)
    return Case(patient_id=pid, center=center or center_from_id(pid), record_error=error,
                phase_paths=tuple(Path(p) for p in phase_paths),
                phase_numbers=tuple(range(len(phase_paths))), mask_path=Path(mask_path) if mask_path else None,
                clinical=clinical, acquisition=acq, breast_box=box)
