"""Files of the synthetic MAMA-MIA-like dataset: per-case writing, splits, manifest and cache place.

The folder follows the real layout (MAMA-MIA, Garrucho et al., Scientific Data 2025):
``images/<ID>/<id>_000k.nii.gz`` (upper-case folder, lower-case files, int16, a stray ``.tsv``
beside them), ``segmentations/expert/<id>.nii.gz`` (uint8 {0,1} on the ``_0001`` grid),
``patient_info_files/<id>.json``, ``train_test_splits.csv`` and ``clinical_and_imaging_info.xlsx``
(sheet ``dataset_info``: a header row, then one row per patient, columns :data:`TABLE_COLUMNS`,
missing values as empty cells; receptor status and Nottingham grade are only in this table, as in
the real download); the generator adds ``phantom_latents.csv`` and ``phantom_manifest.json``
(generator version, cases, seed, scale: what decides whether a cached dataset is reused).
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from data import io
from data.clinical_table import COLUMNS, FILE_NAME, SHEET
from data.phantom_cases import PhantomCase
from data.phantom_centers import CENTERS
from data.phantom_render import Rendered, render_case


PHANTOM_VERSION = 5     # bump when generated data change: a cached dataset of another version is regenerated
REPO_ROOT = Path(__file__).resolve().parent.parent


MANIFEST = "phantom_manifest.json"
LATENTS_CSV = "phantom_latents.csv"
STAT_KEYS = ("rendered_diameter_mm", "tumour_ml", "necrotic_fraction", "tumour_voxels", "capped",
             "heart_voxels", "motion_max_mm", "nodes_in_fov", "node_voxels")
# the real table's file, sheet and column names (the reader's, data.clinical_table), then the
# extra acquisition columns this phantom also fills
CLINICAL_XLSX, TABLE_SHEET = FILE_NAME, SHEET
TABLE_COLUMNS = COLUMNS + ("view", "fat_suppressed", "flip_angle")


def case_record(pc: PhantomCase, rendered: Rendered) -> dict:
    """The patient JSON: the real MAMA-MIA keys, plus ``phantom_latent`` (generation truth)."""
    box = rendered.breast_box
    s = pc.spec
    return {
        "patient_id": s.patient_id,
        "clinical_data": dict(pc.clinical),
        "primary_lesion": {
            "pcr": pc.pcr_reported,
            "tumor_subtype": pc.subtype_reported,
            # x/y/z index SimpleITK array axes 0/1/2 = nibabel axes 2/1/0, half-open
            "breast_coordinates": {"x_min": box[2].start, "x_max": box[2].stop,
                                   "y_min": box[1].start, "y_max": box[1].stop,
                                   "z_min": box[0].start, "z_max": box[0].stop},
        },
        "imaging_data": {
            "dataset": s.center, "site": pc.site, "scanner_manufacturer": pc.scanner[0],
            "scanner_model": pc.scanner[1], "field_strength": s.field_strength, "echo_time": s.te_ms,
            "repetition_time": s.tr_ms, "bilateral": s.bilateral, "acquisition_times": list(s.times_s),
            "view": s.view, "fat_suppressed": s.fat_suppressed, "flip_angle": round(s.flip_deg, 1),
        },
        "phantom_latent": {**pc.latent, **{k: rendered.stats[k] for k in STAT_KEYS},
                           "clean_curves": rendered.stats["clean_curves"]},
    }


def write_case(root: Path, pc: PhantomCase) -> dict:
    """Render one case and write its images, mask, timing .tsv and JSON under ``root``."""
    r = render_case(pc.spec)
    pid = pc.spec.patient_id
    low = pid.lower()
    folder = Path(root) / "images" / pid
    for k, arr in enumerate(r.phases):
        io.save_nifti(folder / f"{low}_{k:04d}.nii.gz", arr, r.affine, dtype=np.int16)
    # the real download has an unrelated .tsv beside the phases; readers must ignore it
    io.atomic_write_text(folder / f"{low}_acquisition.tsv", "phase\tacquisition_time_s\n" + "".join(
        f"{k}\t{t}\n" for k, t in enumerate(pc.spec.times_s)))
    io.save_nifti(Path(root) / "segmentations" / "expert" / f"{low}.nii.gz", r.mask, r.affine,
                  dtype=np.uint8)
    record = case_record(pc, r)
    io.atomic_write_text(Path(root) / "patient_info_files" / f"{low}.json", json.dumps(record, indent=2))
    row = {"patient_id": pid, "center": pc.spec.center}
    row.update({k: v for k, v in record["phantom_latent"].items() if k != "clean_curves"})
    return row


def table_row(pc: PhantomCase) -> dict:
    """One row of the clinical table (:data:`TABLE_COLUMNS`; None = empty cell), from the drawn
    case alone: the same values as its JSON record, plus the table-only fields."""
    s, t = pc.spec, pc.table
    return dict(
        patient_id=s.patient_id, dataset=s.center, site=pc.site, age=pc.clinical["age"],
        menopause=pc.clinical["menopausal_status"], race=t["race"], breast_density=pc.clinical["breast_density"],
        hr=t["hr"], er=t["er"], pr=t["pr"], her2=t["her2"], tumor_subtype=pc.subtype_reported,
        nottingham_grade=t["nottingham_grade"], pcr=pc.pcr_reported, bilateral_mri=int(s.bilateral),
        field_strength=s.field_strength, manufacturer=pc.scanner[0], scanner_model=pc.scanner[1],
        echo_time=s.te_ms, repetition_time=s.tr_ms,
        acquisition_times="[" + ", ".join(str(int(x)) for x in s.times_s) + "]", num_phases=len(s.times_s),
        pixel_spacing=float(s.spacing[0]), slice_thickness=float(s.spacing[2]), view=s.view,
        fat_suppressed=int(s.fat_suppressed), flip_angle=round(s.flip_deg, 1))


def write_clinical_table(root: Path, pcs: list[PhantomCase]) -> Path:
    """``root/clinical_and_imaging_info.xlsx``: sheet ``dataset_info``, header row, one row per
    case in patient-id order (openpyxl; written atomically)."""
    import io as _io

    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = TABLE_SHEET
    ws.append(list(TABLE_COLUMNS))
    for pc in sorted(pcs, key=lambda p: p.spec.patient_id):
        row = table_row(pc)
        ws.append([row[k] for k in TABLE_COLUMNS])
    buf = _io.BytesIO()
    wb.save(buf)
    return io.atomic_write_bytes(Path(root) / CLINICAL_XLSX, buf.getvalue())


def make_splits(pcs: list[PhantomCase], seed: int) -> tuple[list[str], list[str]]:
    """~80/20 train/test, stratified by center (at least one test case per center with >= 2)."""
    train, test = [], []
    for name, c in CENTERS.items():
        ids = sorted(p.spec.patient_id for p in pcs if p.spec.center == name)
        if not ids:
            continue
        order = np.random.default_rng([seed, c.code, 4242]).permutation(len(ids))
        n_test = max(1, int(round(0.2 * len(ids)))) if len(ids) >= 2 else 0
        test += [ids[i] for i in order[:n_test]]
        train += [ids[i] for i in order[n_test:]]
    return sorted(train), sorted(test)


def _csv_text(header, rows) -> str:
    import io as _io
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def cache_dir(scale: str = "small", cases: int = 40, seed: int = 0) -> Path:
    """``$MAMAMIA_CACHE/<scale>-n<cases>-s<seed>`` if the variable is set, else
    ``<repo root>/.cache/phantom/<scale>-n<cases>-s<seed>``."""
    base = os.environ.get("MAMAMIA_CACHE")
    base_path = Path(base).expanduser() if base else REPO_ROOT / ".cache" / "phantom"
    return base_path / f"{scale}-n{cases}-s{seed}"


def read_manifest(root) -> dict | None:
    path = Path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def is_cached(scale: str = "small", cases: int = 40, seed: int = 0) -> bool:
    """True when :func:`cache_dir` holds a complete dataset of this generator version."""
    man = read_manifest(cache_dir(scale, cases, seed))
    want = dict(version=PHANTOM_VERSION, cases=cases, seed=seed, scale=scale)
    return man is not None and all(man.get(k) == v for k, v in want.items())
