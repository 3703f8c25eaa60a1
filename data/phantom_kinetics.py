"""Contrast kinetics and MR signal of the synthetic breast DCE-MRI phantom.

Parker population arterial input function (Parker et al. 2006) -> extended Tofts tissue
concentration (Tofts et al. 1999) -> R1 = 1/T10 + r1 C -> spoiled gradient echo (SPGR) signal
equation; kinetic curve types (persistent / plateau / washout, Kuhl et al. 1999); the tissue table
(labels, M0, T10, kinetic parameters) and the concentration curve of every tissue of a case.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import signal

if TYPE_CHECKING:
    from data.phantom_spec import CaseSpec


# Parker et al. 2006 population AIF (Magn Reson Med 56:993), t in minutes.
PARKER = dict(A1=0.809, A2=0.330, T1=0.17046, T2=0.365, s1=0.0563, s2=0.132,
              a=1.050, b=0.1685, s=38.078, tau=0.483)
HCT = 0.45
R1_RELAXIVITY = 4.9  # /mM/s (gadobutrol-class agents at 1.5-3 T, Rohrer et al. 2005)
CURVE_TYPES = ("persistent", "plateau", "washout")
# Kuhl et al. 1999: late signal vs early post-contrast signal, +-10 % separates the three types.
CURVE_THRESHOLD = 0.10


def parker_aif(t_min) -> np.ndarray:
    """Whole-blood gadolinium concentration Cb(t) in mM; t in minutes after injection (0 before)."""
    p = PARKER
    t = np.asarray(t_min, dtype=np.float64)
    g1 = p["A1"] / (p["s1"] * math.sqrt(2 * math.pi)) * np.exp(-(t - p["T1"]) ** 2 / (2 * p["s1"] ** 2))
    g2 = p["A2"] / (p["s2"] * math.sqrt(2 * math.pi)) * np.exp(-(t - p["T2"]) ** 2 / (2 * p["s2"] ** 2))
    sig = p["a"] * np.exp(-p["b"] * t) / (1.0 + np.exp(-p["s"] * (t - p["tau"])))
    return np.where(t > 0, g1 + g2 + sig, 0.0)


@functools.lru_cache(maxsize=64)
def _plasma_curve(n: int, dt_min: float) -> tuple[np.ndarray, np.ndarray]:
    """Time grid (min) and plasma concentration Cp = Cb / (1 - Hct) on it (cached, read-only)."""
    t = np.arange(n) * dt_min
    cp = parker_aif(t) / (1.0 - HCT)
    t.flags.writeable = False
    cp.flags.writeable = False
    return t, cp


def tofts_concentration(t_min, ktrans: float, ve: float, vp: float, dt_min: float = 1 / 120) -> np.ndarray:
    """Extended Tofts tissue concentration (mM) at times ``t_min`` (minutes after injection).

    Ct(t) = vp Cp(t) + Ktrans int_0^t Cp(u) exp(-kep (t-u)) du, kep = Ktrans/ve, Cp = Cb/(1-Hct);
    the convolution is evaluated on a ``dt_min`` grid and interpolated.
    """
    t_q = np.atleast_1d(np.asarray(t_min, dtype=np.float64))
    n = int(math.ceil(max(float(t_q.max()), 0.0) / dt_min)) + 3
    t, cp = _plasma_curve(n, dt_min)
    # dt * sum_m Cp[m] exp(-kep (n - m) dt) as a first-order recursive filter (exact for the sum)
    conv = signal.lfilter([dt_min], [1.0, -math.exp(-(ktrans / ve) * dt_min)], cp) if ktrans > 0 else 0.0
    ct = vp * cp + ktrans * conv
    return np.interp(t_q, t, ct, left=0.0)


def spgr(m0, t10_ms, conc, tr_ms: float, flip_deg: float):
    """Spoiled gradient echo signal S0 (1-E) sin a / (1 - E cos a), E = exp(-TR R1)."""
    r1 = 1000.0 / np.asarray(t10_ms, np.float32) + np.float32(R1_RELAXIVITY) * conc
    e = np.exp(np.float32(-tr_ms / 1000.0) * r1)
    a = math.radians(flip_deg)
    return m0 * (1 - e) * np.float32(math.sin(a)) / (1 - e * np.float32(math.cos(a)))


def contrast_minutes(times_s, injection_s: float) -> np.ndarray:
    return np.clip((np.asarray(times_s, np.float64) - injection_s) / 60.0, 0.0, None)


def enhancement_curve(times_s, ktrans: float, ve: float, vp: float, t10_ms: float, tr_ms: float,
                      flip_deg: float, injection_s: float) -> np.ndarray:
    """Noise-free SPGR signal of one tissue at the acquisition times, divided by its pre-contrast
    signal (so 1.0 = no enhancement). Shape ``(len(times_s),)``."""
    c = tofts_concentration(contrast_minutes(times_s, injection_s), ktrans, ve, vp)
    s = spgr(1.0, t10_ms, c.astype(np.float32), tr_ms, flip_deg)
    return np.asarray(s / spgr(1.0, t10_ms, np.float32(0.0), tr_ms, flip_deg), np.float64)


def curve_type(signal) -> str:
    """Kinetic curve type from phase signals ``[pre, post1, ..., postN]`` (N >= 2): change of the
    last post-contrast phase relative to the first, +-10 % (Kuhl 1999)."""
    s = np.asarray(signal, np.float64)
    if s.size < 3:
        raise ValueError(f"curve_type needs a pre and >= 2 post-contrast phases, got {s.size} values")
    change = (s[-1] - s[1]) / s[1]
    if change > CURVE_THRESHOLD:
        return "persistent"
    if change < -CURVE_THRESHOLD:
        return "washout"
    return "plateau"


# Ktrans (/min), kep (/min), vp ranges per curve type; kep decides the curve shape with the
# Parker AIF (measured: kep < ~0.15 rises, ~0.3-0.5 flat, > ~0.8 falls over 2-8 min).
KINETIC_RANGES = {
    "persistent": dict(ktrans=(0.06, 0.16), kep=(0.05, 0.15), vp=(0.0, 0.02)),
    "plateau": dict(ktrans=(0.15, 0.35), kep=(0.25, 0.6), vp=(0.01, 0.04)),
    "washout": dict(ktrans=(0.30, 0.90), kep=(0.9, 3.0), vp=(0.02, 0.06)),
}
CURVE_MARGIN = 0.05  # drawn curves clear the +-10 % boundaries by this much


def draw_tumour_kinetics(rng: np.random.Generator, kind: str, times_s, injection_s: float,
                         t10_ms: float, tr_ms: float, flip_deg: float) -> tuple[float, float, float]:
    """(Ktrans, ve, vp) whose noise-free curve at these acquisition times is of type ``kind``
    with a margin of ``CURVE_MARGIN`` around the +-10 % boundaries (rejection sampling)."""
    if kind not in KINETIC_RANGES:
        raise ValueError(f"unknown curve type {kind!r}; expected one of {CURVE_TYPES}")
    r = KINETIC_RANGES[kind]
    best = None
    for _ in range(200):
        kt = float(rng.uniform(*r["ktrans"]))
        kep = float(rng.uniform(*r["kep"]))
        ve = min(kt / kep, 0.95)
        vp = float(rng.uniform(*r["vp"]))
        s = enhancement_curve(times_s, kt, ve, vp, t10_ms, tr_ms, flip_deg, injection_s)
        ch = (s[-1] - s[1]) / s[1]
        margin = {"persistent": ch - CURVE_THRESHOLD, "washout": -CURVE_THRESHOLD - ch,
                  "plateau": CURVE_THRESHOLD - abs(ch)}[kind]
        if kind == "persistent":      # keeps rising through every post-contrast phase
            margin = min(margin, float(np.min(np.diff(s[1:]) / s[1])) * 10)
        if best is None or margin > best[0]:
            best = (margin, kt, ve, vp)
        if margin >= CURVE_MARGIN:
            break
    return best[1], best[2], best[3]


LABELS = dict(air=0, fat=1, fgt=2, skin=3, muscle=4, lung=5, blood=6, myocardium=7, marrow=8,
              tumour=9, necrosis=10, cartilage=11, node=12)
# (M0, T10 at 1.5 T ms, T10 at 3 T ms, Ktrans /min, ve, vp). T10 of fat, fibroglandular tissue and
# blood from Stanisz et al. 2005 and Lu et al. 2004; muscle/myocardium from Stanisz et al. 2005; tumour ~1600 ms
# (literature values at 1.5 T) scaled to 3 T like fibroglandular tissue; blood M0 > 1 mimics inflow brightening.
TISSUES = {
    "air": (0.0, 1000, 1000, 0, 1, 0),
    "fat": (1.0, 296, 423, 0.0, 1, 0),
    "fgt": (0.80, 1266, 1680, 0.0, 0.4, 0),      # Ktrans per voxel: background enhancement map
    "skin": (0.75, 1000, 1300, 0.02, 0.3, 0.005),
    "muscle": (0.70, 1008, 1412, 0.02, 0.1, 0.005),
    "lung": (0.06, 1200, 1300, 0.0, 1, 0),
    "blood": (1.25, 1440, 1932, 0.0, 1, 1.0),    # vp = 1: the blood pool itself (Cp * (1-Hct) = Cb)
    "myocardium": (0.75, 1030, 1471, 0.5, 0.25, 0.1),
    "marrow": (0.75, 550, 620, 0.02, 0.1, 0.0),
    "tumour": (0.85, 1600, 2123, 0.0, 0.3, 0),   # kinetics per case, scaled per voxel
    "necrosis": (0.90, 2200, 2900, 0.015, 0.5, 0.0),
    # hyaline (costal) cartilage: T1 ~1020 ms at 1.5 T, ~1240 ms at 3 T (Gold et al. 2004, AJR
    # 183:343, knee cartilage); avascular, barely enhancing
    "cartilage": (0.70, 1020, 1240, 0.005, 0.1, 0.0),
    # lymph node cortex: T1 a modelling value between muscle and gland; mild, homogeneous
    # enhancement (normal nodes enhance less and wash out less than carcinoma: Ktrans 0.12 /min)
    "node": (0.80, 1100, 1450, 0.12, 0.3, 0.03),
}


def t10_ms(tissue: str, field_t: float) -> float:
    return float(TISSUES[tissue][1] if field_t < 2.0 else TISSUES[tissue][2])


def tissue_curves(spec: CaseSpec) -> dict[str, np.ndarray]:
    """Contrast concentration (mM) of every tissue kind at the acquisition times."""
    tm = contrast_minutes(spec.times_s, spec.injection_s)
    out = {}
    for name, (_, _, _, kt, ve, vp) in TISSUES.items():
        out[name] = spec.dose * tofts_concentration(tm, kt, ve, vp)
    out["blood"] = spec.dose * parker_aif(tm)
    les = spec.lesion
    out["tumour"] = spec.dose * tofts_concentration(tm, les.ktrans, les.ve, les.vp)
    out["fgt"] = spec.dose * tofts_concentration(tm, spec.anatomy.bpe, 0.4, 0.0)
    return out
