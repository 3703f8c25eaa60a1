"""Centers of the synthetic MAMA-MIA-like dataset: acquisition protocols, case counts, patient ids.

The real case counts (DUKE 291, ISPY1 171, ISPY2 980, NACT 64; MAMA-MIA, Garrucho et al.,
Scientific Data 2025) scaled to N, every center at least twice when N >= 8; per center view,
spacing, phase counts, acquisition times, scanners, record missingness, subtype labels and image
quality as in :data:`CENTERS`.

Facts the table follows (MAMA-MIA's per-center clinical and imaging table, 1,506 cases):

- first post-contrast acquisition (seconds after the pre-contrast scan): ISPY1 ~370-420 s
  (e.g. [0, 378, 707]), NACT ~380-600 s (e.g. [0, 421, 782]), ISPY2 ~110-180 s with ~90 s between
  later phases, DUKE ~165-210 s (some later) with ~110-130 s between phases;
- records: ISPY1 and NACT have no menopausal status and no breast density; density is reported
  for about a fifth of DUKE cases (c > b > d > a); menopause is missing for ~18 % of ISPY2;
  DUKE, ISPY1 and NACT write the subtype ``luminal``, ISPY2 ``luminal_a`` / ``luminal_b``; ~28 %
  of NACT subtypes are missing;
- scanners: DUKE about half 3 T (GE and SIEMENS); ISPY1 all 1.5 T, GE ~2/3, SIEMENS ~1/4,
  Philips the rest; ISPY2 ~27 % 3 T (GE ~60 %, SIEMENS ~25 %, Philips ~12 %); NACT GE 1.5 T;
- image quality as seed A judged it by eye: ISPY1/ISPY2 show more motion, lower contrast and less
  distinct tumour boundaries than DUKE/NACT, varying from case to case.

The quality causes (noise, motion, ghost, point-spread) are log-normal per center, given as
(median, sd of the log): the centers differ in median but overlap, so a per-case score can find
bad cases in a good center and good ones in a bad center. Ghost amplitudes are set so that a ghost
is about as strong as the noise or stronger (weaker ones are not measurable); the point-spread
reaches ~1 mm sigma in ISPY because their images are reconstructed on a finer grid than acquired
(interpolated matrices), so the true resolution is coarser than the voxel. The subtype mixes and pCR offsets per
center are the phantom's own choices that reproduce the pCR rates of :mod:`data.phantom_cases`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Center:
    """Acquisition protocol and records of one MAMA-MIA center (MAMA-MIA, Garrucho et al.,
    Scientific Data 2025, Table 1 and the clinical and imaging table; facts in the module docstring)."""

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
    scanners: dict          # (manufacturer, model, field strength T) -> share
    sites: tuple
    noise: tuple            # Rician sigma / fat signal: (median, sd of log)
    motion: tuple           # rigid motion scale, mm: (median, sd of log)
    ghost: tuple            # phase-encode ghost amplitude: (median, sd of log)
    psf: tuple              # in-plane point-spread sigma, mm: (median, sd of log)
    dose: tuple             # effective contrast dose (ISPY: lower contrast)
    flip: tuple
    fat_sat_p: float
    first_post_s: tuple     # first post-contrast time (s after the pre-contrast scan), range
    late_first_p: float     # share of cases with a later first post-contrast phase ...
    late_first_s: tuple     # ... drawn from this range
    interval_s: tuple       # between later phases
    meno_missing_p: float
    meno_long_p: float
    density_report_p: float
    subtype_missing_p: float
    subtypes: dict          # subtype (as written) -> share
    pcr_offset: float       # logit offset of the center (treatment and pCR definition of the study)
    grade_missing_p: float
    race: dict              # race (as written) -> share; None = missing


_RACE_US = {"white": 0.72, "black": 0.12, "asian": 0.07, "other": 0.04, None: 0.05}
CENTERS = {
    "DUKE": Center(
        "DUKE", 1, 291, "axial", 1.0, {4: 159, 5: 128, 3: 4},
        (0.5859, 0.6641, 0.7031, 0.7031, 0.7422, 0.8036), (1.0, 1.0, 1.1, 1.2), (448, 168), (120, 96, 64),
        {("SIEMENS", "Avanto", 1.5): 0.20, ("SIEMENS", "TrioTim", 3.0): 0.20, ("GE", "Signa HDxt", 1.5): 0.20,
         ("GE", "Signa HDxt", 3.0): 0.30, ("GE", "Optima MR450w", 1.5): 0.10}, (None,),
        (0.022, 0.6), (0.18, 0.7), (0.02, 0.7), (0.5, 0.5), (0.95, 1.1), (10, 15), 0.1,
        (165, 210), 0.1, (210, 300), (110, 130), 0.05, 0.0, 0.2, 0.02,
        {"luminal": 0.60, "her2_enriched": 0.12, "her2_pure": 0.06, "triple_negative": 0.22}, -0.34, 0.1,
        {"white": 0.68, "black": 0.25, "asian": 0.03, "other": 0.02, None: 0.02}),
    "ISPY1": Center(
        "ISPY1", 2, 171, "sagittal", 0.0, {3: 143, 4: 15, 6: 13},
        (0.7031, 0.7813, 0.7813, 0.8594), (2.0, 2.2, 2.2, 2.4), (256, 60), (72, 96, 96),
        {("GE", "Signa Excite", 1.5): 0.67, ("SIEMENS", "Avanto", 1.5): 0.25, ("Philips", "Intera", 1.5): 0.08},
        ("Site AAA", "Site AAB", "Site AAC", "Site AAD"),
        (0.04, 0.6), (0.6, 0.7), (0.07, 0.7), (1.1, 0.5), (0.7, 0.9), (8, 11), 0.3,
        (370, 420), 0.0, (370, 420), (310, 350), 1.0, 0.0, 0.0, 0.02,
        {"luminal": 0.40, "her2_enriched": 0.17, "her2_pure": 0.13, "triple_negative": 0.30}, -0.22, 0.3,
        _RACE_US),
    "ISPY2": Center(
        "ISPY2", 3, 980, "axial", 0.15, {6: 971, 5: 5, 4: 4},
        (0.625, 0.6641, 0.6836, 0.7031), (1.6, 2.0, 2.0, 2.4), (256, 80), (96, 96, 80),
        {("GE", "Signa HDxt", 1.5): 0.40, ("GE", "Optima MR450w", 1.5): 0.09,
         ("GE", "Discovery MR750", 3.0): 0.12, ("SIEMENS", "Avanto", 1.5): 0.15,
         ("SIEMENS", "Skyra", 3.0): 0.10, ("Philips", "Achieva", 1.5): 0.08,
         ("Philips", "Ingenia", 3.0): 0.05},
        ("Site AAE", "Site AAF", "Site AAH", "Site AAI"),
        (0.034, 0.6), (0.45, 0.7), (0.055, 0.7), (0.9, 0.5), (0.75, 0.95), (8, 11), 0.3,
        (110, 180), 0.0, (110, 180), (85, 95), 0.18, 0.6, 0.0, 0.02,
        {"luminal_a": 0.20, "luminal_b": 0.20, "her2_enriched": 0.13, "her2_pure": 0.10,
         "triple_negative": 0.37}, 0.0, 0.4, _RACE_US),
    "NACT": Center(
        "NACT", 4, 64, "sagittal", 0.0, {3: 58, 4: 6},
        (0.7031,), (2.0,), (256, 60), (72, 96, 96),
        {("GE", "Signa Excite", 1.5): 1.0}, (None,),
        (0.024, 0.6), (0.2, 0.7), (0.022, 0.7), (0.55, 0.5), (0.95, 1.1), (10, 15), 0.0,
        (380, 600), 0.0, (380, 600), (340, 380), 1.0, 0.0, 0.0, 0.28,
        {"luminal": 0.55, "her2_enriched": 0.12, "her2_pure": 0.08, "triple_negative": 0.25}, -0.98, 0.2,
        {None: 1.0}),
}


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
