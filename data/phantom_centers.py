"""Centers of the synthetic MAMA-MIA-like dataset: acquisition protocols, case counts, patient ids.

The real case counts (DUKE 291, ISPY1 171, ISPY2 980, NACT 64; MAMA-MIA, Garrucho et al.,
Scientific Data 2025) scaled to N, every center at least twice when N >= 8; per center view,
spacing, phase counts, field strength, scanners, noise, motion, ghosting and contrast as in
:data:`CENTERS`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
