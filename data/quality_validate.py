"""Validation of the image-quality scores against the phantom's known causes.

The phantom records, per case, what it added (``phantom_latents.csv`` of a dataset written by
:mod:`data.phantom`): Rician noise sigma relative to the fat signal (``noise``), the realised
largest inter-phase translation (``motion_max_mm``) and the motion scale it was drawn with
(``motion_mm``), the Rician sigma in stored intensity units (``noise_sigma``, what the
SNR's noise estimate should find), the phase-encode ghost amplitude (``ghost``) and the in-plane point-spread sigma
(``psf_mm``). Each score of :mod:`data.quality` is compared with its cause by the Spearman rank
correlation, over all cases and within each center (the within-center figure says whether a score
finds the bad cases inside a center, not only the bad centers). A score that falls as its cause
grows (SNR against noise) is reported with its sign flipped, so 1.0 is perfect for every row.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

LATENTS = "phantom_latents.csv"
# score -> (cause column in the latents, sign: +1 when the score grows with the cause)
CAUSES = {
    "snr": ("noise", -1),
    "noise_sigma (estimate)": ("noise_sigma", 1),
    "motion": ("motion_max_mm", 1),
    "motion (drawn scale)": ("motion_mm", 1),
    "ghosting": ("ghost", 1),
    "blur": ("psf_mm", 1),
}
AIM = {"snr": 0.8, "motion": 0.8, "ghosting": 0.8}   # issue 14: >= 0.8 for noise, motion, ghosting
MIN_CENTER = 10      # cases a center needs for its own correlation


def read_latents(root) -> dict[str, dict]:
    """``phantom_latents.csv`` of a phantom dataset, by patient id; a clear error without it."""
    path = Path(root) / LATENTS
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; validation needs a phantom dataset (python -m data.phantom)")
    with open(path, newline="") as fh:
        return {r["patient_id"]: r for r in csv.DictReader(fh)}


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def spearman(x, y) -> float:
    """Spearman rank correlation of the finite pairs (NaN with fewer than 3)."""
    from scipy.stats import spearmanr
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


def validate(rows: list[dict], latents: dict[str, dict]) -> list[dict]:
    """One dict per score in :data:`CAUSES`: ``score``, ``cause``, ``n``, ``rho`` (all cases,
    sign-adjusted), ``rho_within`` (per center with >= MIN_CENTER cases, median), ``per_center``."""
    missing = [r["patient_id"] for r in rows if r["patient_id"] not in latents]
    if missing:
        raise ValueError(f"no phantom latents for {len(missing)} case(s), e.g. {missing[0]}")
    out = []
    for name, (cause, sign) in CAUSES.items():
        score = name.split(" ")[0]
        x = np.array([_num(r.get(score)) for r in rows]) * sign
        y = np.array([_num(latents[r["patient_id"]].get(cause)) for r in rows])
        centers = np.array([str(r["center"]) for r in rows])
        per = {c: spearman(x[centers == c], y[centers == c]) for c in sorted(set(centers))
               if (centers == c).sum() >= MIN_CENTER}
        fin = [v for v in per.values() if np.isfinite(v)]
        out.append(dict(score=name, cause=cause, n=int((np.isfinite(x) & np.isfinite(y)).sum()),
                        rho=spearman(x, y), rho_within=float(np.median(fin)) if fin else float("nan"),
                        per_center=per))
    return out


def format_table(result: list[dict]) -> str:
    centers = sorted({c for r in result for c in r["per_center"]})
    head = f"{'score':<24}{'cause':<15}{'n':>5}{'rho':>8}{'aim':>6}{'within':>8}" + "".join(f"{c:>8}" for c in centers)
    lines = [head]
    for r in result:
        aim = AIM.get(r["score"])
        lines.append(f"{r['score']:<24}{r['cause']:<15}{r['n']:>5}{r['rho']:>8.3f}"
                     + (f"{aim:>6.1f}" if aim else f"{'':>6}") + f"{r['rho_within']:>8.3f}"
                     + "".join(f"{r['per_center'].get(c, float('nan')):>8.3f}" for c in centers))
    return "\n".join(lines)
