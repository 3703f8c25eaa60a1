"""Dataset fingerprint and the cache of preprocessed cases.

The cache lives in ``<root>/<key>/`` where ``key`` hashes every plan field that changes the
preprocessed voxels (spacing, channels, normalisation, nonzero mask, CLAHE, anisotropy rule), so
a changed plan never reads stale arrays while a changed patch or batch size reuses them. Per
case it holds ``<id>_img.npy`` (float32 (C, X, Y, Z)), ``<id>_seg.npy`` (uint8 (1, X, Y, Z)),
``<id>_fg.npy`` (sampled foreground voxel indices) and ``<id>.json`` (the ``CaseMeta``); the JSON
is written last, so a case is complete exactly when its JSON exists and an interrupted build
resumes where it stopped. Arrays are loaded memory-mapped.
"""
from __future__ import annotations

import io as _io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.plan import Fingerprint, Plan, settings_hash
from core.planner import CaseRecord, fingerprint_from_stats
from data import io, mamamia
from data.preprocess import CaseMeta, crop, nonzero_box, preprocess
from data.sampler import foreground_locations
from data.workers import process_map

log = logging.getLogger(__name__)

FINGERPRINT_SAMPLES = 10_000  # nnU-Net v2 samples 10,000 foreground voxels per case


_map = process_map   # the cache's ordered map (forked workers: no torch threads yet)


# ----------------------------------------------------------------------------- fingerprint

def case_record(args) -> CaseRecord:
    """Spacing, shapes and foreground intensity samples of one case (for the fingerprint)."""
    case, phases, seed = args
    image, spacing, affine = mamamia.load_image(case, phases)
    box = nonzero_box(image)
    img = crop(image, box)
    if case.mask_path is not None:
        mask = crop(mamamia.load_mask(case, affine, image.shape[1:])[None], box)[0] > 0
    else:
        mask = np.any(img != 0, axis=0)
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        idx = np.arange(mask.size)  # an empty mask still contributes whole-image statistics
    pick = rng.choice(idx, size=min(FINGERPRINT_SAMPLES, idx.size), replace=False)
    samples = tuple(c.ravel()[pick].astype(np.float32) for c in img)
    return CaseRecord(spacing=tuple(float(s) for s in spacing),
                      shape_before_crop=tuple(image.shape[1:]), shape_after_crop=tuple(img.shape[1:]),
                      foreground_samples=samples)


def compute_fingerprint(cases, phases, workers: int = 2, progress: bool = True, seed: int = 0) -> Fingerprint:
    """Fingerprint of ``cases`` restricted to ``phases`` (channel names are the phase suffixes)."""
    if not cases:
        raise ValueError("compute_fingerprint: no cases (check --data, --centers, --phases)")
    items = [(c, list(phases), seed + i) for i, c in enumerate(cases)]
    records = _map(case_record, items, workers, "fingerprint", progress)
    return fingerprint_from_stats(records, channel_names=[f"{p:04d}" for p in phases])


# ----------------------------------------------------------------------------- the cache

PREPROCESS_FIELDS = ("target_spacing", "channels", "normalisation", "use_nonzero_mask", "clahe",
                     "separate_z_resampling", "resampling", "format_version")


def cache_key(plan: Plan) -> str:
    return settings_hash({k: getattr(plan, k) for k in PREPROCESS_FIELDS})[:16]


@dataclass
class CachedCase:
    patient_id: str
    image: np.ndarray            # (C, X, Y, Z) float32, memory-mapped
    label: np.ndarray | None     # (1, X, Y, Z) uint8, memory-mapped
    fg: np.ndarray               # (N, 3) int64 foreground voxel indices
    meta: CaseMeta


def _save_npy(path: Path, array: np.ndarray) -> None:
    buf = _io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    io.atomic_write_bytes(path, buf.getvalue())


def case_file(folder: Path, patient_id: str, suffix: str) -> Path:
    """``folder / f"{patient_id}{suffix}"`` for a validated id (``io.safe_name``)."""
    return folder / f"{io.safe_name(patient_id)}{suffix}"


def _build_one(args) -> str:
    case, plan, folder = args
    io.safe_name(case.patient_id)
    img, mask, meta = preprocess(case, plan, with_mask=True)
    _save_npy(case_file(folder, case.patient_id, "_img.npy"), img.astype(np.float32, copy=False))
    if mask is not None:
        _save_npy(case_file(folder, case.patient_id, "_seg.npy"), mask[None].astype(np.uint8))
        _save_npy(case_file(folder, case.patient_id, "_fg.npy"), foreground_locations(mask, seed=1234))
    io.atomic_write_text(case_file(folder, case.patient_id, ".json"), json.dumps(meta.to_dict()))
    return case.patient_id


def build_cache(cases, plan: Plan, root: str | os.PathLike, workers: int = 2, progress: bool = True) -> Path:
    """Preprocess every case not yet in the cache; returns the cache folder for this plan."""
    for c in cases:  # before any work: a bad id must not fail hours into a build
        io.safe_name(c.patient_id)
    folder = Path(root) / cache_key(plan)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    fields = {k: getattr(plan, k) for k in PREPROCESS_FIELDS}
    if manifest.exists():
        stored = json.loads(manifest.read_text())
        if json.loads(json.dumps(stored.get("fields"), default=list)) != json.loads(json.dumps(fields, default=list)):
            raise RuntimeError(f"{manifest}: cache key collision with different preprocessing settings")
    todo = [c for c in cases if not case_file(folder, c.patient_id, ".json").exists()]
    if todo:
        log.info("preprocessing %d case(s) into %s", len(todo), folder)
        _map(_build_one, [(c, plan, folder) for c in todo], workers, "preprocess", progress)
    done = sorted({p.stem for p in folder.glob("*.json") if p.name != "manifest.json"})
    empty = empty_mask_ids(folder, [c.patient_id for c in cases if c.mask_path is not None])
    if empty:
        log.warning("%d of %d case(s) have an empty expert mask (they train as tumour-free): %s",
                    len(empty), len(cases), ", ".join(empty[:20]) + (f" and {len(empty) - 20} more"
                                                                    if len(empty) > 20 else ""))
    io.atomic_write_text(manifest, json.dumps({"key": cache_key(plan), "fields": fields, "cases": done},
                                              indent=1, default=list))
    return folder


def empty_mask_ids(folder: str | os.PathLike, patient_ids) -> list[str]:
    """Ids among ``patient_ids`` whose cached mask has no foreground voxel (read from the
    ``_fg.npy`` headers, without loading any array)."""
    folder = Path(folder)
    out = []
    for pid in patient_ids:
        path = case_file(folder, pid, "_fg.npy")
        if path.exists() and np.load(path, mmap_mode="r").shape[0] == 0:
            out.append(pid)
    return out


def load_cached(folder: str | os.PathLike, patient_ids, need_labels: bool = True) -> list[CachedCase]:
    """Memory-mapped arrays of the given cases from a cache folder."""
    folder = Path(folder)
    out = []
    for pid in patient_ids:
        io.safe_name(pid)
        meta_path = folder / f"{pid}.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path}: case {pid} is not in the cache (run build_cache)")
        meta = CaseMeta.from_dict(json.loads(meta_path.read_text()))
        img = np.load(folder / f"{pid}_img.npy", mmap_mode="r")
        seg_path = folder / f"{pid}_seg.npy"
        if need_labels and not seg_path.exists():
            raise FileNotFoundError(f"{seg_path}: case {pid} has no expert mask for training")
        label = np.load(seg_path, mmap_mode="r") if seg_path.exists() else None
        fg = np.load(folder / f"{pid}_fg.npy") if seg_path.exists() else np.zeros((0, 3), np.int64)
        out.append(CachedCase(pid, img, label, fg, meta))
    return out
