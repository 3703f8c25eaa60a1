"""Tumour features for the pCR model: pyradiomics, DCE kinetics, subtraction and peritumoral ring.

Per case (arrays ``(C, X, Y, Z)`` of all DCE phases on the ``_0001`` grid, mask ``(X, Y, Z)``):

``post_<class>_<Feature>``
    pyradiomics on the first post-contrast phase inside the mask. Defaults are seed B's
    (seed B, MAMA-MIA 2025): ``binWidth`` 25, no resampling, the Original image, classes firstorder,
    shape, glcm, glrlm, glszm, gldm, ngtdm. ``RadiomicsConfig(resample_mm=1.0)`` resamples image
    (B-spline) and mask (nearest) to isotropic ``resample_mm`` spacing first (pyradiomics'
    ``resampledPixelSpacing``), which makes texture features comparable across centers with
    different slice thickness, at the price of interpolated voxels.
``sub_firstorder_<Feature>``
    first-order features of the subtraction image ``S1 - S0`` inside the mask.
``ring_firstorder_<Feature>``, ``ringsub_firstorder_<Feature>``
    first-order features of the first post-contrast phase and of the subtraction image in the
    peritumoral ring: voxels outside the mask within ``ring_mm`` (Euclidean distance in mm,
    spacing-aware) of it, clipped at the image border.
``kin_<name>``
    kinetic features computed here from the mean signal curve over the mask, ``m_k`` = mean of
    ``S_k`` (phase k = 0 pre-contrast, 1 first post-contrast, ..., K-1 last), at times ``t_k``:
    acquisition times in seconds from the pre-contrast scan when the record gives one time per
    phase (``kin_times_known`` = 1), else the phase index (``kin_times_known`` = 0, slopes per
    phase instead of per minute, time to peak in phases).

    - ``pe_early`` [%] = 100 (m_1 - m_0) / m_0: percent enhancement at the first post phase.
    - ``pe_peak`` [%] = 100 (m_p - m_0) / m_0, p = argmax_{k>=1} m_k.
    - ``ser`` [1] = (m_1 - m_0) / (m_{K-1} - m_0): signal enhancement ratio (Hylton 2012);
      > 1 means washout. NaN when K < 3 or the denominator is not positive.
    - ``washin_slope`` [%/min] = pe_early / (t_1 - t_0) * 60.
    - ``washout_slope`` [%/min] = 100 (m_{K-1} - m_p) / m_0 / (t_{K-1} - t_p) * 60; 0 when the
      peak is the last phase, NaN when K < 3. Negative values mean washout.
    - ``time_to_peak`` [s] = t_p - t_0.
    - ``washout_fraction``, ``persistent_fraction`` [1]: fraction of mask voxels whose late
      change ``(S_{K-1} - S_1) / S_1`` is below -``washout_threshold`` (type III curve) or
      above +``washout_threshold`` (type I); the rest is plateau (type II). The 10 % rule is Kuhl
      et al., Radiology 1999. NaN when K < 3.
    - ``curve_type`` [1, 2, 3]: the same rule on the mean curve (persistent, plateau, washout).

A mask with fewer than two voxels, one pyradiomics rejects (e.g. a one-voxel-thick line), or
one above a plausible tumour volume (:data:`MAX_TUMOUR_ML`, :data:`MAX_MASK_FRACTION`: a failed
segmentation, never sent to pyradiomics) gives a row of NaN with ``valid`` = 0 and a ``note``;
it never raises. The pCR model imputes such
rows (:mod:`core.pcr`).

:func:`extract_features` runs over cases in processes with a progress bar and keeps a CSV
cache keyed by (patient id, mask source), reused when the mask file's SHA-1 and the
configuration hash match.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from core import plan as planlib
from data import io, mamamia
from data.workers import process_map

log = logging.getLogger(__name__)

FEATURE_CLASSES = ("firstorder", "shape", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
META_COLUMNS = ("patient_id", "mask_source", "mask_sha1", "config", "n_voxels", "valid", "note")
KINETIC_NAMES = ("pe_early", "pe_peak", "ser", "washin_slope", "washout_slope", "time_to_peak",
                 "washout_fraction", "persistent_fraction", "curve_type", "times_known")
PRE, POST = 0, 1  # phase numbers: pre-contrast and first post-contrast (the annotated phase)
# Plausible tumour volume. A mask above either bound is taken as a segmentation failure (a
# near-whole-volume prediction): flagged, its features left NaN (imputed by the pCR model), and
# pyradiomics is never run on it (texture features on millions of voxels took minutes per case).
# 500 ml is a sphere of 98 mm diameter, about twice the 50 mm longest diameter beyond which a
# breast tumour is T3 (AJCC Cancer Staging Manual, 8th ed., 2017), i.e. eight times its volume;
# 25 % of the image is a generous share for one tumour even in a tightly cropped field of view
# (a MAMA-MIA DUKE volume is ~30 litres, the small phantom's ~1.7 litres).
MAX_TUMOUR_ML = 500.0
MAX_MASK_FRACTION = 0.25


@dataclass(frozen=True)
class RadiomicsConfig(planlib.Settings):
    """Feature settings; defaults are seed B's pyradiomics settings (seed B, MAMA-MIA 2025)."""

    bin_width: float = 25.0
    classes: tuple[str, ...] = FEATURE_CLASSES
    resample_mm: float | None = None     # None: no resampling (seed B); else isotropic spacing (mm)
    ring_mm: float = 3.0                 # peritumoral ring width (mm)
    washout_threshold: float = 0.10      # Kuhl et al. 1999: +-10 % late change

    def validate(self):
        unknown = sorted(set(self.classes) - set(FEATURE_CLASSES))
        if unknown or not self.classes:
            raise ValueError(f"radiomics classes must be a non-empty subset of {FEATURE_CLASSES}; "
                             f"unknown: {unknown}")
        if self.bin_width <= 0 or self.ring_mm <= 0 or self.washout_threshold < 0:
            raise ValueError(f"bin_width and ring_mm must be > 0 and washout_threshold >= 0: {self}")
        if self.resample_mm is not None and self.resample_mm <= 0:
            raise ValueError(f"resample_mm must be positive or None, got {self.resample_mm}")

    def hash(self) -> str:
        return planlib.settings_hash(self)[:12]


# ----------------------------------------------------------------------------- kinetics

def kinetic_features(signals: np.ndarray, times=None, washout_threshold: float = 0.10) -> dict[str, float]:
    """Kinetic features (module docstring) of voxel curves ``signals`` ``(K, N)``: K phases
    (pre-contrast first), N mask voxels. ``times``: K acquisition times in seconds or None."""
    s = np.asarray(signals, np.float64)
    if s.ndim != 2 or s.shape[0] < 2 or s.shape[1] < 1:
        raise ValueError(f"signals must be (phases >= 2, voxels >= 1), got {s.shape}")
    k = s.shape[0]
    known = times is not None and len(times) == k
    t = np.asarray(times, np.float64) - float(times[0]) if known else np.arange(k, dtype=np.float64)
    per = 60.0 if known else 1.0  # slopes per minute with real times, per phase otherwise
    m = s.mean(axis=1)
    base = m[0] if abs(m[0]) > 1e-6 else math.copysign(1e-6, m[0] or 1.0)
    p = 1 + int(np.argmax(m[1:]))
    out = dict.fromkeys(KINETIC_NAMES, math.nan)
    out["times_known"] = float(known)
    out["pe_early"] = 100.0 * (m[1] - m[0]) / base
    out["pe_peak"] = 100.0 * (m[p] - m[0]) / base
    dt1 = t[1] - t[0]
    out["washin_slope"] = out["pe_early"] / dt1 * per if dt1 > 0 else math.nan
    out["time_to_peak"] = t[p] - t[0]
    if k >= 3:
        den = m[-1] - m[0]
        out["ser"] = (m[1] - m[0]) / den if den > 1e-6 else math.nan
        dtl = t[-1] - t[p]
        out["washout_slope"] = (100.0 * (m[-1] - m[p]) / base / dtl * per) if p < k - 1 and dtl > 0 else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            late = (s[-1] - s[1]) / np.where(np.abs(s[1]) > 1e-6, s[1], np.nan)
        out["washout_fraction"] = float(np.mean(late < -washout_threshold))
        out["persistent_fraction"] = float(np.mean(late > washout_threshold))
        mean_late = (m[-1] - m[1]) / (m[1] if abs(m[1]) > 1e-6 else 1e-6)
        out["curve_type"] = 3.0 if mean_late < -washout_threshold else (
            1.0 if mean_late > washout_threshold else 2.0)
    return {kk: float(v) for kk, v in out.items()}


# ----------------------------------------------------------------------------- pyradiomics

_EXTRACTORS: dict = {}


def _extractor(cfg: RadiomicsConfig, classes: tuple[str, ...]):
    """One pyradiomics extractor per (settings, classes), built once per process."""
    key = (cfg.bin_width, cfg.resample_mm, classes)
    if key not in _EXTRACTORS:
        import radiomics
        from radiomics import featureextractor
        # pyradiomics sets its logger to INFO on import and logs every feature class
        radiomics.setVerbosity(logging.ERROR)
        logging.getLogger("radiomics").setLevel(logging.ERROR)
        settings = dict(binWidth=cfg.bin_width, label=1, additionalInfo=False)
        if cfg.resample_mm is not None:
            settings.update(resampledPixelSpacing=[cfg.resample_mm] * 3, interpolator="sitkBSpline")
        ex = featureextractor.RadiomicsFeatureExtractor(**settings)
        ex.disableAllFeatures()
        for c in classes:
            ex.enableFeatureClassByName(c)
        _EXTRACTORS[key] = ex
    return _EXTRACTORS[key]


def _to_sitk(array: np.ndarray, spacing):
    """Our ``(X, Y, Z)`` array -> SimpleITK image (index order x, y, z; numpy view (Z, Y, X)).
    pyradiomics only accepts SimpleITK images, so this is the one place they are made."""
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    img.SetSpacing(tuple(float(s) for s in spacing))
    return img


def pyradiomics_features(image: np.ndarray, mask: np.ndarray, spacing, cfg: RadiomicsConfig,
                         classes: tuple[str, ...] | None = None, prefix: str = "") -> dict[str, float]:
    """pyradiomics features of ``image`` ``(X, Y, Z)`` inside ``mask`` (nonzero), named
    ``<prefix><class>_<Feature>``. Raises ValueError when pyradiomics rejects the mask."""
    ex = _extractor(cfg, tuple(classes or cfg.classes))
    result = ex.execute(_to_sitk(image.astype(np.float32), spacing),
                        _to_sitk((mask > 0).astype(np.uint8), spacing), label=1)
    out = {}
    for name, value in result.items():
        if name.startswith("diagnostics_"):
            continue
        out[prefix + name.split("_", 1)[1]] = float(value)  # drop pyradiomics' "original_"
    return out


# ----------------------------------------------------------------------------- one case

def feature_names(cfg: RadiomicsConfig) -> list[str]:
    """Every feature column of ``cfg`` in output order (from a small synthetic lesion)."""
    g = np.indices((9, 9, 9)).astype(float)
    mask = (((g - 4) ** 2).sum(0) <= 9).astype(np.uint8)
    img = np.stack([100 + 0 * g[0], 200 + 10 * g[0], 180 + 10 * g[1]])
    return list(case_features(img.astype(np.float32), mask, (1.0, 1.0, 1.0), (0, 100, 200), cfg))


def ring_mask(mask: np.ndarray, spacing, ring_mm: float) -> np.ndarray:
    """Voxels outside ``mask`` within ``ring_mm`` mm of it (Euclidean, spacing-aware)."""
    dist = ndimage.distance_transform_edt(mask == 0, sampling=spacing)
    return (mask == 0) & (dist <= ring_mm)


def case_features(image: np.ndarray, mask: np.ndarray, spacing, times, cfg: RadiomicsConfig,
                  phase_numbers=None) -> dict[str, float]:
    """All features of one case. ``image`` ``(C, X, Y, Z)``: the phases ``phase_numbers``
    (default 0..C-1, must include 0 and 1); ``mask`` ``(X, Y, Z)``. Raises ValueError when
    pyradiomics rejects the mask (callers turn that into a flagged NaN row)."""
    phases = list(range(image.shape[0])) if phase_numbers is None else list(phase_numbers)
    if PRE not in phases or POST not in phases:
        raise ValueError(f"kinetic features need phases {PRE} and {POST}; have {phases}")
    m = mask > 0
    # crop to the mask plus the ring (and one voxel) to keep pyradiomics and the EDT small
    idx = np.argwhere(m)
    pad = np.ceil(cfg.ring_mm / np.asarray(spacing, float)).astype(int) + 1
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, m.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    img = image[(slice(None), *box)].astype(np.float32)
    m = m[box].astype(np.uint8)
    post, pre = img[phases.index(POST)], img[phases.index(PRE)]
    sub = post - pre
    ring = ring_mask(m, spacing, cfg.ring_mm).astype(np.uint8)

    feats = pyradiomics_features(post, m, spacing, cfg, prefix="post_")
    feats.update(pyradiomics_features(sub, m, spacing, cfg, ("firstorder",), prefix="sub_"))
    for prefix, arr in (("ring_", post), ("ringsub_", sub)):
        try:
            feats.update(pyradiomics_features(arr, ring, spacing, cfg, ("firstorder",), prefix=prefix))
        except ValueError:  # a ring that is all outside the image: leave those features missing
            pass
    order = np.argsort(phases)
    curves = img[order][:, m > 0]
    t = None if times is None or len(times) != len(phases) else [times[i] for i in order]
    feats.update({f"kin_{k}": v for k, v in kinetic_features(curves, t, cfg.washout_threshold).items()})
    return feats


def _case_row(task) -> dict:
    """Worker: one (case, mask path, source, cfg dict, column names) -> CSV row dict."""
    case, mask_path, source, cfg_d, names = task
    cfg = RadiomicsConfig.from_dict(cfg_d)
    row = {"patient_id": case.patient_id, "mask_source": source, "config": cfg.hash(), "n_voxels": 0,
           "valid": 0, "note": ""}
    row["mask_sha1"] = _sha1(mask_path) if mask_path is not None and Path(mask_path).exists() else ""
    feats = dict.fromkeys(names, math.nan)
    if not row["mask_sha1"]:
        row["note"] = "no mask file"
        return {**row, **feats}
    vol = io.load_nifti(mask_path, dtype=np.float32)
    mask = (vol.array > 0.5).astype(np.uint8)
    n = int(mask.sum())
    row["n_voxels"] = n
    if n < 2:
        row["note"] = "empty mask" if n == 0 else "one-voxel mask"
        return {**row, **feats}
    implausible = implausible_volume(n, io.spacing_from_affine(vol.affine), mask.size)
    if implausible:
        row["note"] = implausible
        log.warning("%s: %s (%s); features left missing", case.patient_id, implausible, mask_path)
        return {**row, **feats}
    image, spacing, affine = mamamia.load_image(case)
    if not io.same_grid(vol.affine, vol.shape, affine, image.shape[1:]):
        raise io.ImageError(f"{mask_path}: mask grid {vol.shape} differs from the image grid "
                            f"{image.shape[1:]} of {case.patient_id}")
    try:
        got = case_features(image, mask, spacing, case.acquisition.acquisition_times, cfg, case.phase_numbers)
    except ValueError as exc:  # pyradiomics rejects degenerate masks (e.g. a 1-voxel-thin line)
        row["note"] = f"radiomics failed: {exc}".replace("\n", " ")[:200]
        log.warning("%s: %s", case.patient_id, row["note"])
        return {**row, **feats}
    feats.update(got)
    row["valid"] = 1
    return {**row, **feats}


def implausible_volume(n_voxels: int, spacing, n_total: int, max_ml: float = MAX_TUMOUR_ML,
                       max_fraction: float = MAX_MASK_FRACTION) -> str:
    """A note when a mask of ``n_voxels`` (voxel ``spacing`` in mm, ``n_total`` image voxels) is
    above the plausible tumour volume (:data:`MAX_TUMOUR_ML`, :data:`MAX_MASK_FRACTION`), else ''."""
    ml = n_voxels * float(np.prod(spacing)) / 1000.0
    if ml > max_ml or n_voxels > max_fraction * n_total:
        return (f"implausible tumour volume: {ml:.0f} ml, {n_voxels / n_total:.0%} of the image "
                f"(bounds {max_ml:g} ml, {max_fraction:.0%})")
    return ""


def _sha1(path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- many cases

@dataclass
class FeatureTable:
    """Features of many cases: ``values`` ``(N, F)`` float64 (NaN = missing), rows in ``ids``
    order, ``valid`` ``(N,)`` bool (False: degenerate mask, all NaN), ``notes`` per row."""

    ids: list[str]
    names: list[str]
    values: np.ndarray
    valid: np.ndarray
    notes: list[str]


def read_cache(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_cache(path: Path, rows: list[dict], names: list[str]) -> None:
    import io as _io
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(META_COLUMNS) + names, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    io.atomic_write_text(path, buf.getvalue())


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def extract_features(cases: list, masks: dict, mask_source: str, cfg: RadiomicsConfig = RadiomicsConfig(),
                     cache: str | os.PathLike | None = None, workers: int = 2,
                     progress: bool = True) -> FeatureTable:
    """Features of ``cases`` (``mamamia.Case``) with mask files ``masks[patient_id]`` (a case
    absent from ``masks`` gets a NaN row noted "no mask file").

    ``mask_source`` names where the masks come from ("expert", "predicted", ...); with ``cache``
    (a CSV path) rows whose (patient id, mask source), mask SHA-1 and configuration hash match are
    reused, new rows are added and the file is rewritten atomically.
    """
    names = feature_names(cfg)
    cached = {(r["patient_id"], r["mask_source"]): r for r in read_cache(cache)} if cache else {}
    rows: dict[str, dict] = {}
    todo = []
    for c in cases:
        path = masks.get(c.patient_id)
        hit = cached.get((c.patient_id, mask_source))
        sha = _sha1(path) if path is not None and Path(path).exists() else ""
        if hit is not None and hit.get("config") == cfg.hash() and hit.get("mask_sha1") == sha \
                and all(n in hit for n in names):
            rows[c.patient_id] = hit
        else:
            todo.append((c, path, mask_source, cfg.to_dict(), names))
    if todo:
        log.info("radiomics: %d case(s) to extract, %d from the cache", len(todo), len(rows))
        for r in _map(_case_row, todo, workers, progress):
            rows[r["patient_id"]] = r
        if cache:
            keep = [r for k, r in cached.items() if k[0] not in rows or k[1] != mask_source]
            write_cache(Path(cache), keep + [rows[c.patient_id] for c in cases], names)
    ids = [c.patient_id for c in cases]
    values = np.array([[_float(rows[i].get(n)) for n in names] for i in ids], np.float64).reshape(len(ids), len(names))
    valid = np.array([_float(rows[i]["valid"]) == 1 for i in ids], bool)
    return FeatureTable(ids=ids, names=names, values=values, valid=valid,
                        notes=[str(rows[i].get("note") or "") for i in ids])


def _map(fn, items, workers, progress):
    # spawn: the caller may hold torch threads, which do not survive a fork safely
    return process_map(fn, items, workers, "radiomics", progress, context="spawn")


# ----------------------------------------------------------------------------- pCR inputs

def clinical_record(case) -> dict:
    """The clinical inputs of the pCR model for one ``mamamia.Case`` (None where unknown)."""
    c = case.clinical
    return {"age": c.age, "menopause": c.menopause, "subtype": c.subtype, "density": c.density,
            "hr": c.hr, "her2": c.her2, "er": c.er, "pr": c.pr, "grade": c.grade, "center": case.center}


def predicted_masks(cases, folder: str | os.PathLike) -> dict:
    """``{patient_id: path}`` of ``<folder>/pred_segmentations/<ID>.nii.gz`` (or ``<folder>/<ID>.nii.gz``),
    matched case-insensitively; cases without a file are left out."""
    folder = Path(folder)
    seg = folder / "pred_segmentations" if (folder / "pred_segmentations").is_dir() else folder
    if not seg.is_dir():
        raise FileNotFoundError(f"{folder}: no pred_segmentations/ folder of predicted masks")
    files = {io.strip_nifti_suffix(p.name).upper(): p for p in seg.iterdir() if io.is_nifti(p.name)}
    return {c.patient_id: files[c.patient_id.upper()] for c in cases if c.patient_id.upper() in files}
