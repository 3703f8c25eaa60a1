"""Anatomy and signal model of the synthetic breast DCE-MRI phantom (used by ``data.phantom``).

Everything here is a pure function of a :class:`CaseSpec` (all random draws are made from
``CaseSpec.render_seed``), so one case renders to byte-identical arrays on any machine/process.

Coordinates: anatomy is defined in world millimetres, RAS+ as nibabel uses them
(``u`` = +x towards the patient's right, ``v`` = +y anterior, ``w`` = +z superior). The patient is
prone, breasts hang anteriorly (+v). The image grid is laid over the anatomy by the affine of the
case (axial or sagittal direction cosines, real spacings), so orientation is encoded in the affine
exactly as a scanner would write it.

Anatomy: an elliptic thorax (skin, subcutaneous fat, pectoral/back muscles, ribs and sternum,
lungs, heart with myocardium and pericardial fat, ascending and descending aorta, spine), two
ellipsoidal breasts (skin, subcutaneous fat, fibroglandular tissue from thresholded multi-scale
noise around a conical gland prior, amount set by the density category), internal mammary
arteries and tortuous breast vessels; lesions are lobulated or spiculated blobs with optional
necrotic core, extra foci and satellites. Heart, aorta and vessels take up contrast faster and
more strongly than the tumour, and parenchyma enhances (background enhancement): bait for
thresholding methods.

Signal (Parker et al. 2006; Tofts et al. 1999; the SPGR signal equation): Parker population AIF -> extended Tofts tissue concentration ->
R1 = 1/T10 + r1 C -> spoiled gradient echo. Artefacts, in acquisition order: rigid motion between
phases (the annotated phase ``_0001`` is the reference), blur (point-spread), ghosting along the
phase-encode axis, smooth multiplicative bias field, Rician noise, int16 storage.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

# ----------------------------------------------------------------------------- kinetics
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


# ----------------------------------------------------------------------------- tissues
LABELS = dict(air=0, fat=1, fgt=2, skin=3, muscle=4, lung=5, blood=6, myocardium=7, marrow=8,
              tumour=9, necrosis=10)
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
}


def t10_ms(tissue: str, field_t: float) -> float:
    return float(TISSUES[tissue][1] if field_t < 2.0 else TISSUES[tissue][2])


# ----------------------------------------------------------------------------- case description
@dataclass(frozen=True)
class Lesion:
    """Primary lesion (latent variables of the clinical model are among these)."""

    diameter_mm: float          # intended volume-equivalent diameter of the main focus
    n_foci: int                 # 1 = unifocal; extra foci are smaller, in the same breast
    n_satellites: int           # tiny nodules hugging the main focus
    spiculated: bool
    necrosis: float             # radius fraction of the non-enhancing core (0 = none)
    curve: str                  # persistent | plateau | washout
    ktrans: float
    ve: float
    vp: float
    rim: float                  # heterogeneity: rim/core enhancement contrast, 0..1
    position: tuple[float, float, float]  # centre in breast-normalised coordinates (-1..1)


@dataclass(frozen=True)
class Anatomy:
    """Body shape in world mm (already scaled for the requested dataset scale)."""

    thorax_a: float             # half-width of the thorax ellipse (left-right)
    thorax_b: float             # half-depth (antero-posterior)
    breast_x: float             # |u| of each breast centre
    breast_r: tuple[float, float, float]  # lateral, depth (protrusion), superior-inferior radii
    breast_w: float             # superior-inferior centre of the breasts
    pectoral_mm: float
    rib_layer_mm: float
    heart_center: tuple[float, float, float]  # (u, depth below chest wall, w)
    heart_r: tuple[float, float, float]
    skin_mm: float
    subcut_mm: float            # subcutaneous fat under the breast skin
    density: str                # a..d: fibroglandular fraction
    bpe: float                  # background-enhancement Ktrans scale (/min)
    n_vessels: int


@dataclass(frozen=True)
class CaseSpec:
    """Everything needed to render one case deterministically."""

    patient_id: str
    center: str
    render_seed: tuple[int, ...]
    view: str                    # axial | sagittal
    bilateral: bool
    side: int                    # +1 tumour in the right breast (u > 0), -1 left
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    fov_center: tuple[float, float, float]
    tilt_deg: tuple[float, float, float]
    field_strength: float
    tr_ms: float
    te_ms: float
    flip_deg: float
    fat_suppressed: bool
    times_s: tuple[int, ...]
    injection_s: float
    dose: float                  # effective contrast dose factor (ISPY-like: lower contrast)
    noise: float                 # Rician sigma relative to the fat signal
    motion_mm: float             # rigid motion scale between phases
    ghost: float                 # phase-encode ghost amplitude
    bias: float                  # bias-field strength
    gain: float                  # stored fat intensity (scanner scaling)
    anatomy: Anatomy
    lesion: Lesion
    lesion_scale: float          # rendered lesion size / drawn size (small datasets shrink)


DIRECTIONS = {
    # columns = world directions of voxel axes i, j, k (RAS). Axial as DICOM LPS rows/cols;
    # sagittal: i -> posterior, j -> inferior, k -> slices along left-right.
    "axial": np.array([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], float),
    "sagittal": np.array([[0, 0, -1], [-1, 0, 0], [0, -1, 0]], float),
}
PE_AXIS = {"axial": 0, "sagittal": 0}  # left-right (axial) / antero-posterior (sagittal)


def rotation(angles_deg) -> np.ndarray:
    ax, ay, az = (math.radians(a) for a in angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def world_extent_to_shape(view: str, fov_mm, spacing) -> tuple[int, int, int]:
    """FOV (left-right, antero-posterior, superior-inferior mm) -> voxel matrix of the view."""
    lr, ap, si = fov_mm
    per_axis = (lr, ap, si) if view == "axial" else (ap, si, lr)
    return tuple(max(8, int(round(e / s))) for e, s in zip(per_axis, spacing))  # type: ignore


def case_affine(spec: CaseSpec) -> np.ndarray:
    """4x4 voxel -> world (RAS mm) affine with direction cosines, centred on ``fov_center``."""
    d = rotation(spec.tilt_deg) @ DIRECTIONS[spec.view]
    m = d * np.asarray(spec.spacing, float)[None, :]
    centre_vox = (np.asarray(spec.shape, float) - 1) / 2
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = np.asarray(spec.fov_center, float) - m @ centre_vox
    return aff


# ----------------------------------------------------------------------------- rendering
@dataclass
class Rendered:
    """A rendered case on the grid of the annotated phase ``_0001``."""

    phases: list[np.ndarray]     # int16 (X, Y, Z), one per acquisition time
    mask: np.ndarray             # uint8 {0,1}: tumour incl. satellites, foci and necrotic core
    labels: np.ndarray           # uint8 tissue labels (LABELS), noise- and motion-free
    affine: np.ndarray
    breast_box: tuple[slice, slice, slice]  # tumour-side breast, nibabel axes, half-open
    stats: dict


def _world_coords(aff: np.ndarray, shape) -> list[np.ndarray]:
    idx = [np.arange(n, dtype=np.float32) for n in shape]
    out = []
    for r in range(3):
        acc = np.float32(aff[r, 3])
        for a in range(3):
            acc = acc + (np.float32(aff[r, a]) * idx[a]).reshape([-1 if b == a else 1 for b in range(3)])
        out.append(np.ascontiguousarray(np.broadcast_to(acc, tuple(shape)), dtype=np.float32))
    return out


def _smooth_noise(rng: np.random.Generator, shape, sigma_mm: float, spacing) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation (a texture field)."""
    white = rng.standard_normal(tuple(shape), dtype=np.float32)
    f = ndimage.gaussian_filter(white, [sigma_mm / s for s in spacing], mode="wrap", truncate=3.0)
    return f / max(float(f.std()), 1e-6)


def thorax_surface(u, an: Anatomy):
    """Anterior chest-wall surface v_T(u) and its slope (ellipse of half-axes a, b)."""
    uu = np.clip(u / an.thorax_a, -0.995, 0.995)
    root = np.sqrt(1 - uu * uu)
    return an.thorax_b * (root - 1), -an.thorax_b * uu / (an.thorax_a * root)


def _breast_centre(side: int, an: Anatomy) -> tuple[float, float, float, float]:
    """(u, v, w) of a breast ellipsoid centre and its depth radius (centre sunk below the wall)."""
    cu = side * an.breast_x
    vt, _ = thorax_surface(np.float32(cu), an)
    sink = 0.3 * an.breast_r[1]
    return cu, float(vt) - sink, an.breast_w, an.breast_r[1] + sink


def _ellipsoid(u, v, w, centre, radii):
    """Normalised radius f (1 on the surface) and approximate signed distance to the surface (mm,
    positive inside) via the first-order estimate (1 - f) / |grad f|."""
    x = (u - np.float32(centre[0])) / np.float32(radii[0])
    y = (v - np.float32(centre[1])) / np.float32(radii[1])
    z = (w - np.float32(centre[2])) / np.float32(radii[2])
    f = np.sqrt(x * x + y * y + z * z)
    g = np.sqrt((x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2)
    return f, (1 - f) * f / np.maximum(g, np.float32(1e-6)), (x, y, z)


def _stamp_tubes(labels, region, aff_inv, spacing, points_mm, radius_mm, value):
    """Rasterise tubes: spheres of ``radius_mm`` stamped along world points (N, 3); only voxels
    where ``region`` is true change."""
    shape = labels.shape
    vox = (aff_inv[:3, :3] @ points_mm.T + aff_inv[:3, 3:4]).T
    half = [int(math.ceil(radius_mm / s)) + 1 for s in spacing]
    offs = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"), -1).reshape(-1, 3)
    keep = (((offs * np.asarray(spacing)) ** 2).sum(1) <= radius_mm ** 2)
    offs = offs[keep]
    all_idx = (np.round(vox).astype(np.int64)[:, None, :] + offs[None]).reshape(-1, 3)
    ok = np.all((all_idx >= 0) & (all_idx < np.asarray(shape)), axis=1)
    all_idx = all_idx[ok]
    if all_idx.size == 0:
        return
    sel = tuple(all_idx.T)
    labels[sel] = np.where(region[sel], np.uint8(value), labels[sel])


def _curve_points(rng, start, end, n=200, wiggle=0.25):
    """A smooth random curve from ``start`` to ``end`` (world mm), (n, 3)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    length = float(np.linalg.norm(end - start))
    t = np.linspace(0, 1, n)[:, None]
    ctrl = rng.normal(0, wiggle * length / 3, size=(4, 3))
    bumps = sum(ctrl[k] * np.sin((k + 1) * math.pi * t) / (k + 1) for k in range(4))
    return start + (end - start) * t + bumps


def _lesion_field(rng, coords, centre, radius, spiculated, n_lobes, shape_noise, spacing):
    """Ratio r / R(direction) of an irregular blob (< 1 inside) on local world coords (3 arrays).

    R(u) = radius * (1 + sum_i a_i max(0, u . d_i)^k_i) / norm * (1 + eps * noise): smooth lobes
    (k 2-6) make a lobulated outline, narrow ones (k 60-200) spicules."""
    q = rotation(rng.uniform(-180, 180, 3))
    stretch = np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.6, 1.0)])
    d = [c - np.float32(x) for c, x in zip(coords, centre)]
    loc = [sum(np.float32(q[i, j]) * d[j] for j in range(3)) / np.float32(stretch[i]) for i in range(3)]
    r = np.sqrt(loc[0] ** 2 + loc[1] ** 2 + loc[2] ** 2)
    unit = [x / np.maximum(r, np.float32(1e-3)) for x in loc]
    lobes = [(rng.uniform(0.15, 0.45), rng.uniform(2, 6)) for _ in range(n_lobes)]
    if spiculated:
        lobes += [(rng.uniform(0.5, 1.1), rng.uniform(60, 200)) for _ in range(int(rng.integers(6, 14)))]
    rad = np.ones_like(r)
    for amp, k in lobes:
        dvec = rng.normal(size=3)
        dvec /= np.linalg.norm(dvec)
        dot = np.maximum(unit[0] * dvec[0] + unit[1] * dvec[1] + unit[2] * dvec[2], 0)
        rad += np.float32(amp) * dot ** np.float32(k)
    # mean lobe inflation of a sphere: amp * E[max(0,cos)^k] = amp / (2 (k + 1))
    norm = 1 + sum(a / (2 * (k + 1)) for a, k in lobes if k < 20)
    noise = _smooth_noise(rng, r.shape, 2.0, spacing) if r.size else r
    rad *= np.float32(radius / norm * (1 / np.cbrt(stretch.prod()))) * (1 + np.float32(shape_noise) * noise)
    return r / np.maximum(rad, np.float32(1e-3)), noise


def _box_from_world(aff_inv, shape, lo, hi) -> tuple[slice, slice, slice]:
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    vox = (aff_inv[:3, :3] @ corners.T + aff_inv[:3, 3:4]).T
    a = np.clip(np.floor(vox.min(0)).astype(int) - 1, 0, np.asarray(shape))
    b = np.clip(np.ceil(vox.max(0)).astype(int) + 2, 0, np.asarray(shape))
    return tuple(slice(int(i), int(j)) for i, j in zip(a, b))  # type: ignore


def _anatomy_labels(spec: CaseSpec, rng, u, v, w, aff_inv, fine, coarse):
    """Tissue labels (uint8, LABELS), breast regions {side: (mask, normalised coords)}, skin mask
    and heart/great-vessel mask (the source of cardiac ghosts)."""
    an, sp, L = spec.anatomy, spec.spacing, LABELS
    # thorax: ellipse of half-axes (a, b) centred b behind the sternum; depth below its surface by
    # the first-order distance estimate, so the chest wall wraps round to the back
    a_t, b_t = np.float32(an.thorax_a), np.float32(an.thorax_b)
    tx, ty = u / a_t, (v + b_t) / b_t
    ft = np.sqrt(tx * tx + ty * ty)
    delta = (1 - ft) * ft / np.maximum(np.sqrt((tx / a_t) ** 2 + (ty / b_t) ** 2), np.float32(1e-6))
    del tx, ty, ft
    in_thorax = delta >= 0
    dist = np.where(in_thorax, delta, np.float32(-1e3))
    body = in_thorax.copy()
    breasts = {}
    for s in (1, -1):
        cu, cv, cw, rdt = _breast_centre(s, an)
        f, d, xyz = _ellipsoid(u, v, w, (cu, cv, cw), (an.breast_r[0], rdt, an.breast_r[2]))
        inside = f < 1
        body |= inside
        np.maximum(dist, np.where(inside, d, np.float32(-1e3)), out=dist)
        breasts[s] = (inside & ~in_thorax, xyz)
    lab = np.zeros(u.shape, np.uint8)
    lab[body] = L["fat"]
    skin = body & (dist < an.skin_mm)

    # chest wall: subcutaneous/retromammary fat, pectoral muscle (back muscles posteriorly), then
    # ribs/intercostals (sternum medially); inside: lungs, heart and great vessels, spine
    t = in_thorax & ~skin
    back = np.clip((-b_t - v) / (0.5 * b_t), 0, 1) * np.float32(0.15 * an.thorax_b)
    muscle_t = np.float32(an.pectoral_mm) * (1 - 0.5 * (u / a_t) ** 2) + back
    sternum = (np.abs(u) < 0.09 * an.thorax_a) & (v > -0.5 * b_t)
    d0 = np.float32(2.5)
    lab[t & (delta >= d0) & (delta < d0 + muscle_t) & ~sternum] = L["muscle"]
    rib_top = np.where(sternum, d0 + 2, d0 + muscle_t)
    rib_zone = t & (delta >= rib_top) & (delta < rib_top + an.rib_layer_mm)
    lab[rib_zone] = L["muscle"]
    # ribs: oval cross-sections every ~26 mm, sloping downwards laterally (so an axial slice cuts
    # them into separate segments)
    period = 26.0 * an.thorax_a / 165.0
    phase = np.mod(w + 0.45 * np.abs(u) - np.float32(rng.uniform(0, period)), period) - period / 2
    mid = rib_top + 0.5 * an.rib_layer_mm
    ribs = rib_zone & (((phase / (0.28 * period)) ** 2 + ((delta - mid) / (0.45 * an.rib_layer_mm)) ** 2 < 1)
                       | sternum)
    lab[ribs] = L["marrow"]
    deep = t & (delta >= rib_top + an.rib_layer_mm)
    lab[deep] = L["lung"]
    spine_v = -2 * b_t + 0.45 * b_t
    lab[deep & (np.abs(u) < 0.12 * a_t) & (v < spine_v + 0.3 * b_t)] = L["muscle"]    # paraspinal
    lab[deep & (u ** 2 + (v - spine_v) ** 2 < (0.17 * b_t) ** 2)] = L["marrow"]        # vertebra
    desc = deep & ((u + 0.12 * a_t) ** 2 + (v - spine_v - 0.3 * b_t) ** 2 < (0.1 * b_t) ** 2)
    lab[desc] = L["blood"]                                                              # aorta
    hu, hdepth, hw = an.heart_center
    vt_h, _ = thorax_surface(np.float32(hu), an)
    hc = (hu, float(vt_h) - hdepth, hw)
    ang = math.radians(35.0)
    du, dv = u - np.float32(hc[0]), v - np.float32(hc[1])
    ru = np.float32(math.cos(ang)) * du + np.float32(math.sin(ang)) * dv
    rv = -np.float32(math.sin(ang)) * du + np.float32(math.cos(ang)) * dv
    fh = np.sqrt((ru / an.heart_r[0]) ** 2 + (rv / an.heart_r[1]) ** 2 + ((w - hc[2]) / an.heart_r[2]) ** 2)
    heart = deep & (fh < 1)
    lab[deep & (fh < 1.25)] = L["fat"]              # pericardial fat
    lab[heart] = L["blood"]
    myo_t = 8.0 * an.heart_r[0] / 55.0
    lab[heart & (fh > 1 - myo_t / float(np.mean(an.heart_r)))] = L["myocardium"]
    ar = 0.22 * an.heart_r[0]
    aorta = deep & ((u - np.float32(0.3 * hu)) ** 2 + (v - np.float32(hc[1] + 0.3 * an.heart_r[1])) ** 2
                    < ar * ar) & (w > hc[2] + 0.45 * an.heart_r[2])
    lab[aorta] = L["blood"]
    heart_mask = heart | aorta

    # fibroglandular tissue: thresholded multi-scale noise around a conical gland prior, with the
    # threshold set so that the fraction of the breast matches the density category
    frac = {"a": 0.07, "b": 0.2, "c": 0.4, "d": 0.62}[an.density] * float(rng.uniform(0.85, 1.15))
    fgt = np.zeros(u.shape, bool)
    for s in (1, -1):
        breast, (x, y, z) = breasts[s]
        interior = breast & ~skin
        sub = interior & (dist > an.subcut_mm) & (delta < -2.0)
        n_int, n_sub = int(interior.sum()), int(sub.sum())
        if n_sub < 10:
            continue
        rho = np.sqrt(x[sub] ** 2 + z[sub] ** 2) / np.sqrt(np.maximum(1 - y[sub] ** 2, 0.05))
        field = 0.6 * fine[sub] + 0.8 * coarse[sub] + 2.2 * np.exp(-(rho / 0.6) ** 2)
        keep = min(0.97, frac * n_int / n_sub)
        thr = np.partition(field, int((1 - keep) * (field.size - 1)))[int((1 - keep) * (field.size - 1))]
        fgt[sub] = field > thr
    lab[fgt] = L["fgt"]

    # vessels: internal mammary arteries along the sternum, tortuous breast vessels to the nipple
    for s in (1, -1):
        iu = s * 0.13 * an.thorax_a
        ivt, _ = thorax_surface(np.float32(iu), an)
        depth = 2.5 + an.pectoral_mm + 0.5 * an.rib_layer_mm
        ws = np.linspace(w.min() - 5, w.max() + 5, 400)
        pts = np.stack([np.full_like(ws, iu), np.full_like(ws, float(ivt) - depth), ws], 1)
        _stamp_tubes(lab, in_thorax & ~skin, aff_inv, sp, pts, 1.3, L["blood"])
        breast, _ = breasts[s]
        cu, cv, cw, rdt = _breast_centre(s, an)
        bvt, _ = thorax_surface(np.float32(cu), an)
        for _ in range(an.n_vessels):
            phi = rng.uniform(0, 2 * np.pi)
            start = (cu + 0.75 * an.breast_r[0] * math.cos(phi), float(bvt) - 1.0,
                     cw + 0.75 * an.breast_r[2] * math.sin(phi))
            end = (cu + rng.uniform(-0.2, 0.2) * an.breast_r[0], float(bvt) + 0.85 * an.breast_r[1],
                   cw + rng.uniform(-0.2, 0.2) * an.breast_r[2])
            _stamp_tubes(lab, breast & ~skin, aff_inv, sp, _curve_points(rng, start, end),
                         float(rng.uniform(0.7, 1.4)), L["blood"])
    lab[skin] = L["skin"]
    return lab, breasts, skin, heart_mask


def place_lesion(an: Anatomy, side: int, radius: float, position, margin: float):
    """Centre (world mm) and radius of the main focus: the ball of ``radius`` + ``margin`` must fit
    in the breast in front of the chest wall; the radius shrinks by 10 % steps until it does.
    ``position`` (px, py, pz): lateral and superior-inferior offsets in [-1, 1] within the room
    left at that depth, py in [0, 1] from the chest wall towards the nipple."""
    cu, cv, cw, rdt = _breast_centre(side, an)
    bvt = float(thorax_surface(np.float32(cu), an)[0])
    apex = bvt + an.breast_r[1]
    px, py, pz = position
    spread = 0.8 / max(1.0, math.hypot(px, pz))
    for _ in range(40):
        lo, hi = bvt + radius + margin, apex - radius - margin
        if hi >= lo:
            v = lo + (0.1 + 0.6 * py) * (hi - lo)
            f = math.sqrt(max(1 - ((v + radius - cv) / rdt) ** 2, 0.0))
            room_u = an.breast_r[0] * f - radius - margin
            room_w = an.breast_r[2] * f - radius - margin
            if room_u > 0 and room_w > 0:
                return np.array([cu + px * spread * room_u, v, cw + pz * spread * room_w]), radius
        radius *= 0.9
    return np.array([cu, 0.5 * (bvt + apex), cw]), radius


def lesion_centre(spec: CaseSpec):
    """World centre (mm) and radius of the main lesion focus of a case (pure function)."""
    an = spec.anatomy
    return place_lesion(an, spec.side, spec.lesion.diameter_mm * spec.lesion_scale / 2,
                        spec.lesion.position, an.skin_mm + 0.5 * an.subcut_mm + 1.0)


def _render_lesion(spec: CaseSpec, rng, u, v, w, aff_inv, lab, breasts, skin):
    """Draw the lesion(s) into ``lab``; returns the enhancement multiplier map (full volume,
    1 outside lesions) and lesion stats. Rim enhances more than the core (``rim``)."""
    an, les, sp, L = spec.anatomy, spec.lesion, spec.spacing, LABELS
    breast, _ = breasts[spec.side]
    inner = breast & ~skin
    c, radius = lesion_centre(spec)
    ext = radius * (2.6 if les.spiculated else 1.6) + 3.0
    foci = [(c, radius, les.spiculated, les.necrosis)]
    for _ in range(les.n_foci - 1):
        dvec = rng.normal(size=3)
        dvec /= np.linalg.norm(dvec)
        r_f = radius * rng.uniform(0.3, 0.6)
        foci.append((c + dvec * (radius * rng.uniform(1.4, 2.4) + r_f), r_f, False, 0.0))
    for _ in range(les.n_satellites):
        dvec = rng.normal(size=3)
        dvec /= np.linalg.norm(dvec)
        r_s = rng.uniform(1.0, 2.2) * max(spec.lesion_scale, 0.6)
        foci.append((c + dvec * (radius * rng.uniform(1.05, 1.5) + r_s), r_s, False, 0.0))
    reach = max(float(np.linalg.norm(f[0] - c)) + f[1] * 1.8 for f in foci) + ext - radius
    box = _box_from_world(aff_inv, lab.shape, c - reach, c + reach)
    coords = [a[box] for a in (u, v, w)]
    ratio = np.full(coords[0].shape, np.inf, np.float32)
    core = np.zeros(coords[0].shape, bool)
    for centre, rad, spic, nec in foci:
        rr, noise = _lesion_field(rng, coords, centre, rad, spic, int(rng.integers(3, 7)),
                                  rng.uniform(0.08, 0.2), sp)
        if nec > 0:
            core |= rr < np.float32(nec) * (1 + np.float32(0.15) * noise)
        np.minimum(ratio, rr, out=ratio)
    inside = (ratio < 1) & inner[box]
    core &= inside
    sub = lab[box]                      # a view: writes go into lab
    sub[inside] = L["tumour"]
    sub[core] = L["necrosis"]
    mult = np.ones(lab.shape, np.float32)
    het = _smooth_noise(rng, ratio.shape, 3.0, sp) if ratio.size else ratio
    m = (1 - les.rim) + les.rim * 1.7 * np.clip(ratio, 0, 1) ** 2
    m = np.maximum(m * np.exp(np.float32(0.25) * het), 0.05).astype(np.float32)
    mult[box][inside] = m[inside]
    n_t, n_c = int(inside.sum()), int(core.sum())
    vol = n_t * float(np.prod(sp))
    return mult, dict(tumour_voxels=n_t, necrotic_fraction=n_c / max(n_t, 1), tumour_ml=vol / 1000.0,
                      rendered_diameter_mm=(6 * vol / math.pi) ** (1 / 3), capped=bool(
                          radius < les.diameter_mm * spec.lesion_scale / 2 - 1e-6),
                      lesion_centre_mm=[round(float(x), 2) for x in c])


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


def _bias_field(rng, shape, strength: float) -> np.ndarray:
    axes = [np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if b == a else 1 for b in range(3)])
            for a, n in enumerate(shape)]
    c = rng.normal(0, strength, 9).astype(np.float32)
    x, y, z = axes
    log = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z
    log = log + c[6] * x * y + c[7] * x * z + c[8] * y * z
    return np.exp(log).astype(np.float32)


def render_case(spec: CaseSpec) -> Rendered:
    """Render all phases of one case (see the module docstring for the model)."""
    rng = np.random.default_rng(np.random.SeedSequence(list(spec.render_seed)))
    aff = case_affine(spec)
    aff_inv = np.linalg.inv(aff)
    shape, sp, L = tuple(spec.shape), spec.spacing, LABELS
    u, v, w = _world_coords(aff, shape)
    fine = _smooth_noise(rng, shape, 0.8, sp)
    coarse = _smooth_noise(rng, shape, 3.0, sp)
    lab, breasts, skin, heart_mask = _anatomy_labels(spec, rng, u, v, w, aff_inv, fine, coarse)
    mult, stats = _render_lesion(spec, rng, u, v, w, aff_inv, lab, breasts, skin)
    bpe_field = _smooth_noise(rng, shape, 7.0, sp)
    box_mask = breasts[spec.side][0]
    del u, v, w, coarse

    # ---- signal: per-label lookup for uniform tissues, per voxel for parenchyma and tumour
    conc = tissue_curves(spec)
    fs = spec.field_strength
    flat = lab.ravel()
    fgt_idx = np.flatnonzero(flat == L["fgt"])
    tum_idx = np.flatnonzero(flat == L["tumour"])
    bpe_map = np.exp(np.float32(0.7) * bpe_field.ravel()[fgt_idx] - np.float32(0.245))
    tum_map = mult.ravel()[tum_idx]
    tex = (1 + np.float32(0.04) * fine).ravel()
    del bpe_field, mult, fine
    fat_ref = float(spgr(1.0, t10_ms("fat", fs), np.float32(0.0), spec.tr_ms, spec.flip_deg))
    scale = np.float32(spec.gain / fat_ref)
    m0 = {k: TISSUES[k][0] for k in TISSUES}
    if spec.fat_suppressed:
        m0["fat"] *= 0.12
        m0["marrow"] *= 0.3
    clean = []
    for p in range(len(spec.times_s)):
        lut = np.zeros(max(L.values()) + 1, np.float32)
        for name, code in L.items():
            lut[code] = spgr(m0[name], t10_ms(name, fs), np.float32(conc[name][p]), spec.tr_ms, spec.flip_deg)
        s = lut[flat]
        s[fgt_idx] = spgr(m0["fgt"], t10_ms("fgt", fs), bpe_map * np.float32(conc["fgt"][p]),
                          spec.tr_ms, spec.flip_deg)
        s[tum_idx] = spgr(m0["tumour"], t10_ms("tumour", fs), tum_map * np.float32(conc["tumour"][p]),
                          spec.tr_ms, spec.flip_deg)
        clean.append((s * tex * scale).reshape(shape))
    mask = ((lab == L["tumour"]) | (lab == L["necrosis"]))
    stats["clean_curves"] = {
        "tumour": [float(c[mask].mean()) if mask.any() else 0.0 for c in clean],
        "parenchyma": [float(c.ravel()[fgt_idx].mean()) if fgt_idx.size else 0.0 for c in clean],
        "heart": [float(c[lab == L["blood"]].mean()) if (lab == L["blood"]).any() else 0.0 for c in clean],
    }
    stats["heart_voxels"] = int(heart_mask.sum())

    # ---- acquisition artefacts
    centre = np.asarray(spec.fov_center, float)
    bias = _bias_field(rng, shape, spec.bias)
    pe = PE_AXIS[spec.view]
    n_pe = shape[pe]
    heart_ghost = min(0.25, 3 * spec.ghost + 0.04)
    sigma = np.float32(spec.noise * spec.gain)
    phases = []
    # rigid motion relative to the annotated phase 1: the pre-contrast phase moves independently
    # (injection), later phases drift (random walk)
    offsets = {1: (np.zeros(3), np.zeros(3))}
    for p in range(len(clean)):
        if p == 1:
            continue
        prev = offsets.get(p - 1, (np.zeros(3), np.zeros(3))) if p > 1 else (np.zeros(3), np.zeros(3))
        step = 1.0 if p == 0 else 0.6
        offsets[p] = (prev[0] + rng.normal(0, step * spec.motion_mm, 3),
                      prev[1] + rng.normal(0, step * 0.25 * spec.motion_mm, 3))
    for p, s in enumerate(clean):
        if p != 1 and spec.motion_mm > 0:
            shift, angles = offsets[p]
            rot = rotation(angles)
            move = np.eye(4)
            move[:3, :3] = rot
            move[:3, 3] = centre - rot @ centre + shift
            mm = aff_inv @ np.linalg.inv(move) @ aff
            s = ndimage.affine_transform(s, mm[:3, :3], offset=mm[:3, 3], order=1, mode="nearest")
        for ax in (0, 1):                    # in-plane point-spread (slice axis is 2 in both views)
            s = ndimage.gaussian_filter1d(s, 0.5, axis=ax)
        g = np.roll(s, n_pe // 2, axis=pe)
        g *= np.float32(spec.ghost)
        if heart_mask.any():
            hs = s * heart_mask
            shift = n_pe // 3
            g += np.float32(heart_ghost) * (np.roll(hs, shift, axis=pe) + np.roll(hs, -shift, axis=pe))
        s = s + g
        s *= bias
        n1 = rng.standard_normal(shape, dtype=np.float32)
        n1 *= sigma
        n1 += s
        np.square(n1, out=n1)
        n2 = rng.standard_normal(shape, dtype=np.float32)
        n2 *= sigma
        np.square(n2, out=n2)
        n1 += n2
        np.sqrt(n1, out=n1)                  # Rician magnitude
        np.rint(n1, out=n1)
        phases.append(np.clip(n1, 0, 32767).astype(np.int16))

    nz = np.argwhere(box_mask)
    if nz.size:
        lo = np.maximum(nz.min(0) - 2, 0)
        hi = np.minimum(nz.max(0) + 3, np.asarray(shape))
    else:
        lo, hi = np.zeros(3, int), np.asarray(shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return Rendered(phases=phases, mask=mask.astype(np.uint8), labels=lab, affine=aff,
                    breast_box=box, stats=stats)  # type: ignore[arg-type]
