"""Synthetic MAMA-MIA-like breast DCE-MRI dataset: the embedded default dataset.

Library::

    root = generate_dataset("out/phantom", cases=40, seed=0, scale="small")
    root = default_dataset()          # cached under $MAMAMIA_CACHE or <repo>/.cache/phantom/

Command line::

    python -m data.phantom --out DIR --cases N --seed S [--scale small|full] [--workers W]
    python -m data.phantom --summary              # generate/reuse the default dataset, print table
    python -m data.phantom --preview DIR          # DIR/phantom_preview.png, one case per center

The folder follows the real layout exactly (MAMA-MIA, Garrucho et al., Scientific Data 2025): ``images/<ID>/<id>_000k.nii.gz``
(upper-case folder, lower-case files, int16, a stray ``.tsv`` beside them),
``segmentations/expert/<id>.nii.gz`` (uint8 {0,1} on the ``_0001`` grid),
``patient_info_files/<id>.json`` and ``train_test_splits.csv`` (columns train_split,test_split,
the shorter one padded with empty cells, ~80/20 stratified by center). Anatomy, tissue signal and
artefacts are in :mod:`data.phantom_anatomy`.

Centers: the real case counts (DUKE 291, ISPY1 171, ISPY2 980, NACT 64) scaled to N, every center
at least twice when N >= 8; per center view, spacing, phase counts, field strength, scanners,
noise, motion, ghosting and contrast as in :data:`CENTERS`.

How every label is generated (per case, from ``SeedSequence([seed, center_code, k])``)
---------------------------------------------------------------------------------------
1. age ~ Normal(48.5, 10.5) truncated to [21, 77], rounded.
2. menopause (latent): age < 40 -> pre; age > 58 -> post; otherwise post with probability
   sigmoid((age - 51) / 2), else peri with probability 0.35 when age >= 45, else pre.
   Reported ``menopausal_status``: missing with a per-center probability; ISPY1/ISPY2 write long
   strings ('pre (...)', 'peri (...)', 'post (...)') with probability 0.6; peri is always long.
3. density (latent, drives the amount of fibroglandular tissue for every case):
   score = -0.045 (age - 48) + Normal(0, 1), cut at -1.28 / 0 / 1.28 -> a / b / c / d.
   Reported ``breast_density`` for DUKE cases only (85 % of them), missing otherwise.
4. subtype ~ per-center categorical (:data:`CENTERS`), written as ``tumor_subtype`` (2 % missing).
5. lesion given subtype: size_z ~ Normal(SIZE_SHIFT[subtype], 1); diameter = 22 mm *
   exp(0.42 size_z) clipped to [5, 60] mm; curve type ~ CURVE_P[family] (luminal / her2 /
   triple_negative); Ktrans, ve, vp drawn for that curve type at the case's acquisition times
   (:func:`data.phantom_anatomy.draw_tumour_kinetics`); necrotic core with probability
   sigmoid(-1.4 + 1.1 size_z + 0.9 [triple negative]), core radius fraction nec ~ U(0.35, 0.7)
   (necrotic volume fraction ~ nec^3); rim (heterogeneity) ~ U(0, 0.5) + 0.3 [triple
   negative] + 0.2 [necrotic], clipped to 1; spiculated with probability 0.45 (luminal) /
   0.2 (her2) / 0.1 (triple negative); 2 or 3 foci with probability 0.10 / 0.05; 1-4
   satellite nodules with probability 0.2 (foci and satellites are part of the mask).
6. pCR: logit = B0 + B_SUBTYPE[subtype] - 0.6 size_z + 0.5 z(log Ktrans) + 0.4 [washout]
   - 4.0 nec^3 - 0.5 rim - 0.15 (age - 48) / 10 + eps, eps ~ Normal(0, 0.8), B0 = -0.85;
   pcr ~ Bernoulli(sigmoid(logit)); z(log Ktrans) = (log Ktrans + 1.35) / 0.6.
   B_SUBTYPE: luminal -1.0, luminal_a -1.3, luminal_b -0.7, her2_enriched +0.5,
   her2_pure +1.0, triple_negative +0.6. So HER2+ and triple-negative, small, fast-exchange
   (washout, high Ktrans), non-necrotic, homogeneous tumours respond more often. 30 % positive
   (0.300 and 0.314 on two sets of 4000 draws). Reported ``pcr`` is null for 3 % of cases.
7. The noise-free part of the logit (``logit_det``) and ``p_pcr`` = E[sigmoid(logit)] over eps
   are stored for every case in ``phantom_latent`` (JSON) and ``phantom_latents.csv``:
   thresholding ``p_pcr`` at 0.3 is the oracle, balanced accuracy 0.715-0.717 on those draws.
   Subtype and age are in the JSON; size, kinetics, necrosis and rim are visible in the images,
   so the oracle is the ceiling of an image + clinical model ("learnable but hard").

Acquisition per case: phase count drawn from the real per-center counts, pre-contrast at 0 s,
first post-contrast ~140-200 s, then ~80-150 s apart; injection 1.2-2 min before the first
post-contrast phase. Small scale (default) keeps the real spacings but crops the field of view
(<= 120 mm per axis) and shrinks the body by 0.55; lesions keep their drawn size unless they do
not fit the breast (at small scale most lesions above ~25 mm are shrunk to fit, so the rendered
size saturates; ``rendered_diameter_mm`` records it); full scale uses the real matrices
(e.g. 448/512^2 x 168 DUKE, 256^2 x 60 ISPY1; ~5 GB of memory per DUKE case, one worker).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
import dataclasses
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy import ndimage

from data import io
from data import phantom_anatomy as pa

log = logging.getLogger(__name__)

PHANTOM_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
SCALES = ("small", "full")
ANAT_SCALE = {"small": 0.55, "full": 1.0}
LESION_SCALE = {"small": 1.0, "full": 1.0}


@dataclass(frozen=True)
class Center:
    """Acquisition protocol of one MAMA-MIA center (MAMA-MIA, Garrucho et al., Scientific Data 2025, Table 1)."""

    name: str
    code: int
    real_cases: int
    view: str
    bilateral_p: float
    phases: dict            # number of phases -> real case count
    inplane: tuple          # in-plane spacing choices (mm)
    slice_mm: tuple
    matrix: tuple           # full scale: (in-plane matrix, slices)
    small_fov: tuple        # small scale FOV (left-right, antero-posterior, superior-inferior) mm
    scanners: tuple         # (manufacturer, model, field strength T)
    sites: tuple
    noise: tuple            # Rician sigma / fat signal, range
    motion: tuple           # mm
    ghost: tuple
    dose: tuple             # effective contrast dose (ISPY: lower contrast)
    flip: tuple
    fat_sat_p: float
    first_post_s: tuple
    interval_s: tuple
    meno_missing_p: float
    meno_long_p: float
    subtypes: dict


_LUM = {"luminal": 0.40, "her2_enriched": 0.15, "her2_pure": 0.10, "triple_negative": 0.35}
CENTERS = {
    "DUKE": Center("DUKE", 1, 291, "axial", 1.0, {4: 159, 5: 128, 3: 4},
                   (0.5859, 0.6641, 0.7031, 0.7031, 0.7422, 0.8036), (1.0, 1.0, 1.1, 1.2),
                   (448, 168), (120, 96, 64),
                   (("SIEMENS", "Avanto", 1.5), ("SIEMENS", "TrioTim", 3.0), ("GE", "Signa HDxt", 1.5),
                    ("GE", "Signa HDxt", 3.0), ("GE", "Optima MR450w", 1.5)), (None,),
                   (0.015, 0.03), (0.05, 0.3), (0.003, 0.012), (0.95, 1.1), (10, 15), 0.1,
                   (150, 200), (100, 130), 0.05, 0.0,
                   {"luminal_a": 0.30, "luminal_b": 0.25, "her2_enriched": 0.12, "her2_pure": 0.08,
                    "triple_negative": 0.25}),
    "ISPY1": Center("ISPY1", 2, 171, "sagittal", 0.0, {3: 143, 4: 15, 6: 13},
                    (0.7031, 0.7813, 0.7813, 0.8594), (2.0, 2.2, 2.2, 2.4), (256, 60), (72, 96, 96),
                    (("GE", "Signa Excite", 1.5), ("SIEMENS", "Avanto", 1.5), ("Philips", "Intera", 1.5)),
                    ("Site AAA", "Site AAB", "Site AAC", "Site AAD"),
                    (0.03, 0.06), (0.3, 1.0), (0.02, 0.05), (0.7, 0.9), (8, 11), 0.3,
                    (150, 190), (110, 150), 0.1, 0.6, _LUM),
    "ISPY2": Center("ISPY2", 3, 980, "axial", 0.15, {6: 971, 5: 5, 4: 4},
                    (0.625, 0.6641, 0.6836, 0.7031), (1.6, 2.0, 2.0, 2.4), (256, 80), (96, 96, 80),
                    (("GE", "Signa HDxt", 1.5), ("SIEMENS", "Skyra", 3.0), ("Philips", "Achieva", 3.0),
                     ("GE", "Discovery MR750", 3.0)),
                    ("Site AAE", "Site AAF", "Site AAH", "Site AAI"),
                    (0.025, 0.05), (0.15, 0.6), (0.01, 0.04), (0.75, 0.95), (8, 11), 0.3,
                    (140, 180), (80, 100), 0.15, 0.6, _LUM),
    "NACT": Center("NACT", 4, 64, "sagittal", 0.0, {3: 58, 4: 6},
                   (0.7031,), (2.0,), (256, 60), (72, 96, 96),
                   (("GE", "Signa Excite", 1.5),), (None,),
                   (0.02, 0.035), (0.1, 0.4), (0.005, 0.015), (0.95, 1.1), (10, 15), 0.0,
                   (150, 190), (110, 140), 0.5, 0.0, _LUM),
}
SIZE_SHIFT = {"luminal": -0.2, "luminal_a": -0.3, "luminal_b": -0.1, "her2_enriched": 0.1,
              "her2_pure": 0.2, "triple_negative": 0.3}
CURVE_P = {"luminal": (0.4, 0.35, 0.25), "her2": (0.15, 0.35, 0.5), "triple_negative": (0.2, 0.35, 0.45)}
B0 = -0.85
B_SUBTYPE = {"luminal": -1.0, "luminal_a": -1.3, "luminal_b": -0.7, "her2_enriched": 0.5,
             "her2_pure": 1.0, "triple_negative": 0.6}
EPS_SD = 0.8
MENO_LONG = {
    "pre": "pre (<6 months since LMP AND no prior bilateral ovariectomy AND not on estrogen replacement)",
    "peri": "peri (6-12 months since LMP AND no prior bilateral ovariectomy AND not on estrogen replacement)",
    "post": "post (prior bilateral ovariectomy OR >12 months since LMP with no prior hysterectomy)",
}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _family(subtype: str) -> str:
    return "her2" if subtype.startswith("her2") else ("triple_negative" if subtype == "triple_negative"
                                                       else "luminal")


# ----------------------------------------------------------------------------- case drawing
@dataclass(frozen=True)
class PhantomCase:
    """One drawn case: the render description plus its clinical record and latent variables."""

    spec: pa.CaseSpec
    clinical: dict              # the JSON clinical_data block as written
    subtype_reported: str | None
    pcr_reported: int | None
    scanner: tuple
    site: str | None
    latent: dict                # everything the labels were generated from


def allocate_centers(n: int) -> dict[str, int]:
    """Cases per center: real proportions scaled to ``n`` (largest remainder), each center at
    least twice when ``n >= 8``; below that, round-robin from the largest center."""
    if n < 1:
        raise ValueError(f"number of cases must be >= 1, got {n}")
    names = list(CENTERS)
    if n < 2 * len(names):
        order = sorted(names, key=lambda k: -CENTERS[k].real_cases)
        alloc = {k: 0 for k in names}
        for i in range(n):
            alloc[order[i % len(order)]] += 1
        return alloc
    total = sum(c.real_cases for c in CENTERS.values())
    target = {k: n * CENTERS[k].real_cases / total for k in names}
    alloc = {k: max(2, int(target[k])) for k in names}
    while sum(alloc.values()) > n:
        k = max((k for k in names if alloc[k] > 2), key=lambda k: alloc[k] - target[k])
        alloc[k] -= 1
    while sum(alloc.values()) < n:
        k = max(names, key=lambda k: target[k] - alloc[k])
        alloc[k] += 1
    return alloc


def patient_ids(center: str, count: int, seed: int) -> list[str]:
    """Real-looking ids (DUKE_001, ISPY1_1001, ISPY2_100899, NACT_01); the k-th id does not
    depend on ``count``."""
    if center == "DUKE":
        return [f"DUKE_{k + 1:03d}" for k in range(count)]
    if center == "ISPY1":
        return [f"ISPY1_{1001 + k}" for k in range(count)]
    if center == "NACT":
        width = max(2, len(str(count)))
        return [f"NACT_{k + 1:0{width}d}" for k in range(count)]
    rng = np.random.default_rng([seed, CENTERS[center].code, 7777])
    gaps = np.concatenate([[0], rng.integers(1, 900, max(count - 1, 0))])
    return [f"ISPY2_{100899 + int(g)}" for g in np.cumsum(gaps)]


def _pick(rng, options: dict):
    keys = list(options)
    p = np.asarray([options[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _draw_clinical(rng, c: Center) -> dict:
    age = 0
    while not 21 <= age <= 77:
        age = int(round(rng.normal(48.5, 10.5)))
    if age < 40:
        meno = "pre"
    elif age > 58:
        meno = "post"
    elif rng.random() < _sigmoid((age - 51) / 2.0):
        meno = "post"
    else:
        meno = "peri" if (age >= 45 and rng.random() < 0.35) else "pre"
    if rng.random() < c.meno_missing_p:
        meno_txt = None
    elif meno == "peri" or rng.random() < c.meno_long_p:
        meno_txt = MENO_LONG[meno]
    else:
        meno_txt = meno
    score = -0.045 * (age - 48) + rng.normal()
    density = "abcd"[int(np.searchsorted([-1.28, 0.0, 1.28], score))]
    density_txt = density if (c.name == "DUKE" and rng.random() < 0.85) else None
    subtype = _pick(rng, c.subtypes)
    return dict(age=age, menopause=meno, menopause_txt=meno_txt, density=density,
                density_txt=density_txt, subtype=subtype)


def _draw_acquisition(rng, c: Center) -> dict:
    n_ph = _pick(rng, c.phases)
    first, step = rng.uniform(*c.first_post_s), rng.uniform(*c.interval_s)
    times = [0] + [int(round(first + i * step + rng.normal(0, 3))) for i in range(n_ph - 1)]
    manu, model, field = c.scanners[int(rng.integers(len(c.scanners)))]
    tr = rng.uniform(4.5, 7.0) if field < 2 else rng.uniform(4.0, 5.5)
    ip, sl = float(rng.choice(c.inplane)), float(rng.choice(c.slice_mm))
    return dict(times=tuple(times), injection_s=float(first - 60 * rng.uniform(1.2, 2.0)),
                manufacturer=manu, model=model, field=float(field), tr=round(float(tr), 3),
                te=round(float(rng.uniform(1.3, 2.7)), 3), flip=float(rng.uniform(*c.flip)),
                fat_sat=bool(rng.random() < c.fat_sat_p), noise=float(rng.uniform(*c.noise)),
                motion=float(rng.uniform(*c.motion)), ghost=float(rng.uniform(*c.ghost)),
                dose=float(rng.uniform(*c.dose)), bias=float(rng.uniform(0.08, 0.2)),
                gain=float(rng.uniform(1500, 2500)), spacing=(ip, ip, sl),
                bilateral=bool(rng.random() < c.bilateral_p), side=int(rng.choice([-1, 1])),
                site=c.sites[int(rng.integers(len(c.sites)))],
                tilt=tuple(float(x) for x in rng.normal(0, 1.5 if c.name == "ISPY2" else 0.5, 3)))


BPE_KTRANS = ((0.004, 0.01), (0.01, 0.025), (0.025, 0.045), (0.045, 0.08))  # minimal..marked


def _draw_anatomy(rng, clin: dict, scale: str) -> pa.Anatomy:
    s = ANAT_SCALE[scale]
    a, b = rng.uniform(150, 175), rng.uniform(95, 120)
    pec, rib = rng.uniform(8, 15), rng.uniform(10, 14)
    hr = (rng.uniform(48, 60), rng.uniform(36, 46), rng.uniform(45, 55))
    pre = clin["menopause"] != "post"
    level = int(rng.choice(4, p=[0.2, 0.35, 0.3, 0.15] if pre else [0.5, 0.35, 0.12, 0.03]))
    return pa.Anatomy(
        thorax_a=s * a, thorax_b=s * b, breast_x=s * a * (0.55 if scale == "full" else 0.47),
        breast_r=(s * rng.uniform(55, 70), s * rng.uniform(55, 115), s * rng.uniform(55, 70)),
        breast_w=s * rng.normal(0, 6), pectoral_mm=s * pec, rib_layer_mm=s * rib,
        heart_center=(-s * rng.uniform(15, 35), s * (2.5 + pec + rib + rng.uniform(10, 60) + hr[1]),
                      s * rng.uniform(-140, -70)),
        heart_r=tuple(s * x for x in hr), skin_mm=float(rng.uniform(1.4, 2.2)),
        subcut_mm=s * rng.uniform(3, 8), density=clin["density"],
        bpe=float(rng.uniform(*BPE_KTRANS[level])), n_vessels=int(rng.integers(2, 6)))


def _draw_lesion(rng, clin: dict, acq: dict) -> tuple[pa.Lesion, float]:
    sub = clin["subtype"]
    fam = _family(sub)
    size_z = float(rng.normal(SIZE_SHIFT[sub], 1.0))
    curve = pa.CURVE_TYPES[int(rng.choice(3, p=CURVE_P[fam]))]
    kt, ve, vp = pa.draw_tumour_kinetics(rng, curve, acq["times"], acq["injection_s"],
                                         pa.t10_ms("tumour", acq["field"]), acq["tr"], acq["flip"])
    tn = float(sub == "triple_negative")
    necrotic = rng.random() < _sigmoid(-1.4 + 1.1 * size_z + 0.9 * tn)
    nec = float(rng.uniform(0.35, 0.7)) if necrotic else 0.0
    rim = float(min(1.0, rng.uniform(0, 0.5) + 0.3 * tn + 0.2 * necrotic))
    spic = bool(rng.random() < {"luminal": 0.45, "her2": 0.2, "triple_negative": 0.1}[fam])
    n_foci = int(rng.choice([1, 2, 3], p=[0.85, 0.1, 0.05]))
    n_sat = int(rng.integers(1, 5)) if rng.random() < 0.2 else 0
    lesion = pa.Lesion(diameter_mm=float(np.clip(22.0 * math.exp(0.42 * size_z), 5, 60)), n_foci=n_foci,
                       n_satellites=n_sat, spiculated=spic, necrosis=nec, curve=curve, ktrans=kt, ve=ve,
                       vp=vp, rim=rim, position=(float(rng.uniform(-1, 1)), float(rng.uniform(0, 1)),
                                                 float(rng.uniform(-1, 1))))
    return lesion, size_z


def pcr_logit(subtype: str, size_z: float, ktrans: float, curve: str, necrosis: float, rim: float,
              age: float) -> float:
    """Noise-free part of the pCR logit (module docstring, step 6)."""
    return (B0 + B_SUBTYPE[subtype] - 0.6 * size_z + 0.5 * (math.log(ktrans) + 1.35) / 0.6
            + 0.4 * (curve == "washout") - 4.0 * necrosis ** 3 - 0.5 * rim - 0.15 * (age - 48) / 10)


def pcr_probability(logit_det: float) -> float:
    """E[sigmoid(logit_det + eps)], eps ~ N(0, EPS_SD^2), by Gauss-Hermite quadrature."""
    x, wts = _GH
    return float((wts * _sigmoid(logit_det + EPS_SD * x)).sum() / wts.sum())


_GH = np.polynomial.hermite_e.hermegauss(24)


def draw_case(seed: int, center: str, k: int, patient_id: str, scale: str = "small") -> PhantomCase:
    """Draw every random choice of case ``k`` of ``center`` (no rendering)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if center not in CENTERS:
        raise ValueError(f"unknown center {center!r}; expected one of {list(CENTERS)}")
    c = CENTERS[center]
    rng = np.random.default_rng(np.random.SeedSequence([seed, c.code, k]))
    clin = _draw_clinical(rng, c)
    acq = _draw_acquisition(rng, c)
    anat = _draw_anatomy(rng, clin, scale)
    lesion, size_z = _draw_lesion(rng, clin, acq)
    logit = pcr_logit(clin["subtype"], size_z, lesion.ktrans, lesion.curve, lesion.necrosis, lesion.rim,
                      clin["age"])
    pcr = int(rng.random() < _sigmoid(logit + EPS_SD * rng.normal()))
    pcr_rep = None if rng.random() < 0.03 else pcr
    sub_rep = None if rng.random() < 0.02 else clin["subtype"]

    # field of view: real matrix (full) or a cropped FOV (small), anterior edge just past the apex
    bil = acq["bilateral"]
    if scale == "full":
        n_ip, n_sl = c.matrix
        if c.name == "DUKE":
            n_ip = int(rng.choice([448, 512]))
        ip, sl = acq["spacing"][0], acq["spacing"][2]
        fov = (n_ip * ip, n_ip * ip, n_sl * sl) if c.view == "axial" else (n_sl * sl, n_ip * ip, n_ip * ip)
    else:
        fov = (120.0, 96.0, 64.0) if (bil and c.name != "DUKE") else c.small_fov
    shape = pa.world_extent_to_shape(c.view, fov, acq["spacing"])
    vt, _ = pa.thorax_surface(np.float32(anat.breast_x), anat)
    front = float(vt) + anat.breast_r[1] + rng.uniform(5, 12)
    cx = rng.normal(0, 3) if bil else acq["side"] * anat.breast_x + rng.normal(0, 4)
    centre = (float(cx), front - fov[1] / 2, anat.breast_w + float(rng.normal(0, 4)))
    spec = pa.CaseSpec(
        patient_id=patient_id, center=center, render_seed=(seed, c.code, k, 1), view=c.view,
        bilateral=bool(bil), side=acq["side"], spacing=acq["spacing"], shape=shape, fov_center=(0, 0, 0),
        tilt_deg=acq["tilt"], field_strength=acq["field"], tr_ms=acq["tr"], te_ms=acq["te"],
        flip_deg=acq["flip"], fat_suppressed=acq["fat_sat"], times_s=acq["times"],
        injection_s=acq["injection_s"], dose=acq["dose"], noise=acq["noise"], motion_mm=acq["motion"],
        ghost=acq["ghost"], bias=acq["bias"], gain=acq["gain"], anatomy=anat, lesion=lesion,
        lesion_scale=LESION_SCALE[scale])
    # keep the main focus inside the field of view (real scans are planned around the lesion)
    les_c, les_r = pa.lesion_centre(spec)
    room = np.asarray(fov) / 2 - 1.3 * les_r - 3.0
    centre = tuple(float(np.clip(x, lc - max(r, 0.0), lc + max(r, 0.0)))
                   for x, lc, r in zip(centre, les_c, room))
    spec = dataclasses.replace(spec, fov_center=centre)
    latent = dict(
        age=clin["age"], menopause=clin["menopause"], density=clin["density"], subtype=clin["subtype"],
        size_z=round(size_z, 4), diameter_mm=round(lesion.diameter_mm, 2), curve=lesion.curve,
        ktrans=round(lesion.ktrans, 4), ve=round(lesion.ve, 4), vp=round(lesion.vp, 4),
        kep=round(lesion.ktrans / lesion.ve, 4), necrosis=round(lesion.necrosis, 4),
        rim=round(lesion.rim, 4), spiculated=lesion.spiculated, n_foci=lesion.n_foci,
        n_satellites=lesion.n_satellites, bpe_ktrans=round(anat.bpe, 4),
        logit_det=round(logit, 4), p_pcr=round(pcr_probability(logit), 4), pcr=pcr,
        noise=round(acq["noise"], 4), motion_mm=round(acq["motion"], 3), ghost=round(acq["ghost"], 4),
        dose=round(acq["dose"], 3), fat_suppressed=acq["fat_sat"], flip_deg=round(acq["flip"], 2))
    clinical = dict(age=clin["age"], menopausal_status=clin["menopause_txt"],
                    breast_density=clin["density_txt"])
    return PhantomCase(spec=spec, clinical=clinical, subtype_reported=sub_rep, pcr_reported=pcr_rep,
                       scanner=(acq["manufacturer"], acq["model"]), site=acq["site"], latent=latent)


def draw_cases(cases: int, seed: int = 0, scale: str = "small") -> list[PhantomCase]:
    """All cases of a dataset of ``cases`` cases, in patient-id order, without rendering."""
    out = []
    for center, count in allocate_centers(cases).items():
        for k, pid in enumerate(patient_ids(center, count, seed)):
            out.append(draw_case(seed, center, k, pid, scale))
    return out


# ----------------------------------------------------------------------------- writing
MANIFEST = "phantom_manifest.json"
LATENTS_CSV = "phantom_latents.csv"
STAT_KEYS = ("rendered_diameter_mm", "tumour_ml", "necrotic_fraction", "tumour_voxels", "capped",
             "heart_voxels")


def case_record(pc: PhantomCase, rendered: pa.Rendered) -> dict:
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
    r = pa.render_case(pc.spec)
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


def _task(args) -> dict:
    root, seed, center, k, pid, scale = args
    return write_case(Path(root), draw_case(seed, center, k, pid, scale))


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


def generate_dataset(out, cases: int = 40, seed: int = 0, scale: str = "small", workers: int | None = None,
                     progress: bool = True, overwrite: bool = False) -> Path:
    """Write a complete phantom dataset to ``out``.

    Cases are written into a temporary sibling folder that is renamed to ``out`` only when
    complete, so an interrupted run never leaves half a dataset. An existing non-empty ``out`` is
    an error unless ``overwrite`` and it holds a phantom dataset (``phantom_manifest.json``).
    ``workers``: processes (default min(2, cpus), 1 at full scale); every case has its own seed,
    so the result does not depend on it.
    """
    out = Path(out)
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{out}: exists and is not empty (use overwrite=True / --overwrite)")
        if not (out / MANIFEST).exists():
            raise FileExistsError(f"{out}: not a phantom dataset (no {MANIFEST}); refusing to replace it")
    if workers is None and scale == "full":
        workers = 1                      # a full-scale DUKE case needs ~5 GB while rendering
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)                 # mkdtemp makes it private; the dataset is not
    t0 = time.time()
    try:
        pcs = draw_cases(cases, seed, scale)
        # largest volumes first, so two workers finish together
        jobs = [(str(tmp), seed, p.spec.center, int(p.spec.render_seed[2]), p.spec.patient_id, scale)
                for p in sorted(pcs, key=lambda p: -int(np.prod(p.spec.shape)))]
        rows = _run_jobs(jobs, workers, progress)
        train, test = make_splits(pcs, seed)
        split_of = {**{i: "train" for i in train}, **{i: "test" for i in test}}
        n = max(len(train), len(test))
        io.atomic_write_text(tmp / "train_test_splits.csv", _csv_text(
            ["train_split", "test_split"],
            [[train[i] if i < len(train) else "", test[i] if i < len(test) else ""] for i in range(n)]))
        rows.sort(key=lambda r: r["patient_id"])
        keys = ["patient_id", "center", "split"] + [k for k in rows[0] if k not in ("patient_id", "center")]
        io.atomic_write_text(tmp / LATENTS_CSV, _csv_text(keys, [
            [split_of.get(r["patient_id"], "") if k == "split" else r[k] for k in keys] for r in rows]))
        seconds = time.time() - t0
        io.atomic_write_text(tmp / MANIFEST, json.dumps(dict(
            generator="data.phantom", version=PHANTOM_VERSION, cases=cases, seed=seed, scale=scale,
            seconds=round(seconds, 2)), indent=2))
        if out.exists():
            if any(out.iterdir()):
                shutil.rmtree(out)
            else:
                out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("phantom: %d %s cases written to %s in %.1f s", cases, scale, out, seconds)
    return out


def _run_jobs(jobs, workers, progress) -> list[dict]:
    from tqdm import tqdm

    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    bar = tqdm(total=len(jobs), desc="phantom", unit="case", disable=not progress, file=sys.stderr)
    rows = []
    try:
        if workers <= 1 or len(jobs) <= 1:
            for j in jobs:
                rows.append(_task(j))
                bar.update()
        else:
            # spawn: the parent may hold threads (torch); cases are independent and seeded
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as ex:
                futures = [ex.submit(_task, j) for j in jobs]
                for f in as_completed(futures):
                    rows.append(f.result())
                    bar.update()
    finally:
        bar.close()
    return rows


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


def default_dataset(scale: str = "small", cases: int = 40, seed: int = 0, workers: int | None = None,
                    progress: bool = True) -> Path:
    """The embedded default dataset: generated once into :func:`cache_dir`, reused afterwards
    (regenerated when the generator version changed)."""
    root = cache_dir(scale, cases, seed)
    if is_cached(scale, cases, seed):
        return root
    man = read_manifest(root)
    stale = man is not None
    if root.exists() and not stale and any(root.iterdir()):
        raise FileExistsError(f"{root}: exists but is not a phantom dataset; remove it or set MAMAMIA_CACHE")
    try:
        generate_dataset(root, cases, seed, scale, workers, progress, overwrite=stale)
    except OSError:
        if is_cached(scale, cases, seed):   # another process finished first
            return root
        raise
    return root


# ----------------------------------------------------------------------------- checks and pictures
def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """2TP / (2TP + FP + FN); both empty -> 0 (official MAMA-MIA rule, scoring_task1.py)."""
    tp = int(np.count_nonzero(a & b))
    denom = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * tp / denom if denom else 0.0


def _largest_component(binary: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(binary, structure=np.ones((3, 3, 3), bool))   # 26-connectivity
    if n == 0:
        return binary
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


NAIVE_QUANTILES = (0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995)
NAIVE_VALUES = tuple(float(v) for v in np.geomspace(100, 3000, 10).round())


def naive_threshold_dice(pairs, quantiles=NAIVE_QUANTILES, values=NAIVE_VALUES) -> dict:
    """The naive segmenter used as the hardness check: threshold the first subtraction image
    (phase 1 - phase 0), keep the largest 26-connected component. One global threshold for all
    cases, chosen to maximise mean Dice over a grid of per-case quantiles and absolute values.

    ``pairs``: iterable of (subtraction (X, Y, Z), mask (X, Y, Z)). Returns best mean Dice, the
    winning threshold and the mean Dice of every candidate.
    """
    pairs = [(np.asarray(s, np.float32), np.asarray(m) > 0) for s, m in pairs]
    if not pairs:
        raise ValueError("naive_threshold_dice: no cases")
    cands = {}
    per_q = [np.quantile(s, quantiles) for s, _ in pairs]
    for j, q in enumerate(quantiles):
        cands[f"q{q}"] = [_dice(_largest_component(s > per_q[i][j]), m) for i, (s, m) in enumerate(pairs)]
    for v in values:
        cands[f"v{v:g}"] = [_dice(_largest_component(s > v), m) for s, m in pairs]
    means = {k: float(np.mean(d)) for k, d in cands.items()}
    best = max(means, key=means.get)
    return dict(dice=means[best], threshold=best, per_case=cands[best], candidates=means)


def dataset_subtractions(root, ids=None):
    """(phase 1 - phase 0, expert mask) for every case of a dataset folder, on the _0001 grid."""
    from data import mamamia

    for case in mamamia.load_dataset(root):
        if ids is not None and case.patient_id not in ids:
            continue
        arr, _, aff = mamamia.load_image(case, phases=[0, 1])
        yield arr[1] - arr[0], mamamia.load_mask(case, aff, arr.shape[1:])


def save_preview(out_dir, seed: int = 0, scale: str = "small", cases: int = 40) -> Path:
    """PNG with one case per center: pre-contrast, first post-contrast, subtraction and mask
    overlay through the tumour centre, and the mean curves of tumour, parenchyma and blood
    (heart/vessels) over acquisition time (solid: rendered image, dashed: noise-free)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pcs = draw_cases(cases, seed, scale)
    first = {}
    for p in pcs:
        first.setdefault(p.spec.center, p)
    picks = [first[c] for c in CENTERS if c in first]
    fig, axes = plt.subplots(len(picks), 5, figsize=(17, 3.5 * len(picks)), squeeze=False)
    for row, pc in zip(axes, picks):
        r = pa.render_case(pc.spec)
        ph = [x.astype(np.float32) for x in r.phases]
        k = int(np.argwhere(r.mask).mean(0)[2]) if r.mask.any() else r.mask.shape[2] // 2
        hi = float(np.percentile(ph[1], 99.5))
        sub = ph[1] - ph[0]
        tiles = [(ph[0], "pre-contrast", (0, hi)), (ph[1], "1st post-contrast", (0, hi)),
                 (sub, "subtraction 1-0", (0, float(np.percentile(sub, 99.9)))),
                 (ph[1], "mask on post-contrast", (0, hi))]
        s = pc.spec
        for a, (img, title, (lo, top)) in zip(row, tiles):
            a.imshow(img[:, :, k].T, cmap="gray", vmin=lo, vmax=top, interpolation="nearest")
            if title.startswith("mask"):
                a.contour(r.mask[:, :, k].T, [0.5], colors="r", linewidths=0.8)
            a.set_title(f"{s.patient_id} {s.view} | {title}", fontsize=8)
            a.axis("off")
        t = np.asarray(s.times_s)
        regions = {"tumour": r.mask > 0, "parenchyma": r.labels == pa.LABELS["fgt"],
                   "heart/vessels": r.labels == pa.LABELS["blood"]}
        cleans = r.stats["clean_curves"].values()
        for (name, reg), col, clean in zip(regions.items(), ("r", "g", "b"), cleans):
            if reg.any():
                row[4].plot(t, [float(x[reg].mean()) for x in ph], "-o", color=col, ms=3, label=name)
                row[4].plot(t, clean, "--", color=col, lw=0.8)
        row[4].set_xlabel("acquisition time (s)", fontsize=8)
        row[4].set_title(f"{s.lesion.curve} tumour, {s.field_strength:g} T, "
                         f"{'fat-sat' if s.fat_suppressed else 'no fat-sat'}", fontsize=8)
        row[4].legend(fontsize=7)
        row[4].tick_params(labelsize=7)
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "phantom_preview.png"
    import io as _io
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    io.atomic_write_bytes(path, buf.getvalue())
    return path


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.phantom", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="write a dataset here (must not exist or be empty)")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", choices=SCALES, default="small")
    ap.add_argument("--workers", type=int, default=None, help="processes (default min(2, cpus))")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing phantom dataset at --out")
    ap.add_argument("--summary", action="store_true",
                    help="print the per-center table (without --out: of the cached default dataset)")
    ap.add_argument("--hardness", action="store_true",
                    help="also print the naive threshold + largest component Dice")
    ap.add_argument("--preview", type=Path, metavar="DIR", help="save DIR/phantom_preview.png")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.out is None and not (args.summary or args.preview or args.hardness):
        ap.error("nothing to do: give --out DIR, --summary, --hardness or --preview DIR")
    if args.cases < 1:
        ap.error(f"--cases must be >= 1, got {args.cases}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = None
    if args.out is not None:
        t0 = time.time()
        root = generate_dataset(args.out, args.cases, args.seed, args.scale, args.workers,
                                not args.no_progress, args.overwrite)
        print(f"wrote {args.cases} {args.scale} phantom cases to {root} in {time.time() - t0:.1f} s")
    elif args.summary or args.hardness:
        reused = is_cached(args.scale, args.cases, args.seed)
        t0 = time.time()
        root = default_dataset(args.scale, args.cases, args.seed, args.workers, not args.no_progress)
        print(f"default dataset: {root} ("
              + ("reused cache" if reused else f"generated in {time.time() - t0:.1f} s") + ")")
    if args.summary and root is not None:
        from data import mamamia

        print(mamamia.summary_table(mamamia.load_dataset(root)))
        man = read_manifest(root) or {}
        workers = min(2, os.cpu_count() or 1) if args.workers is None else args.workers
        print(f"generation time: {man.get('seconds', float('nan')):.1f} s for {man.get('cases')} "
              f"{man.get('scale')} cases ({workers} worker(s))")
    if args.hardness and root is not None:
        res = naive_threshold_dice(dataset_subtractions(root))
        print(f"naive threshold + largest component: mean Dice {res['dice']:.3f} at {res['threshold']}")
    if args.preview is not None:
        print(f"preview: {save_preview(args.preview, args.seed, args.scale, args.cases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
