"""Body geometry of the synthetic breast DCE-MRI phantom: thorax, breast outline, chest wall, heart.

Every structure is a smooth level-set (approximately a signed distance in mm, positive inside)
painted with partial-volume coverage into a :class:`data.phantom_pv.TissueMix`, deepest first:

- body: the union of an elliptic thorax (half-axes ``thorax_a``, ``thorax_b``) and two breast
  ellipsoids sunk into it, joined by a smooth maximum (polynomial smooth union, radius ~6 mm) so
  the inframammary fold and the breast base are rounded, plus a nipple (a capsule of length
  ``Look.nipple_mm`` on the apex of each breast). The rib cage also curves in the sagittal
  direction: its anterior surface sags posteriorly by ``Look.chest_curve (w - breast_w)^2``, so a
  sagittal slice shows a curved chest wall (at the breast level the thorax ellipse is unchanged,
  which is what :func:`thorax_surface` returns).
- skin: a shell 1.4-2.2 mm thick (normal breast skin is 0.8-3 mm, Ulger et al. 2003,
  Eur J Radiol 47:159), thicker at the areola.
- axillary fat: an ellipsoid over the lateral chest wall beside each breast base, extending
  superiorly, joined into the body outline (:func:`axilla_pad`); the lymph nodes in it are painted
  by :mod:`data.phantom_axilla`.
- chest wall, from the anterior thorax surface inwards: 2.5 mm retromammary fat, the pectoralis
  (thin at the sternum, full thickness laterally), ribs and intercostal muscle, then the lungs.
  Every rib has its own pitch, height, depth, slope and curvature (:func:`rib_layout`): oval
  sections sloping laterally downwards, bone laterally and costal cartilage (own tissue,
  ``cartilage``) from the sternum to 10-25 % of the thorax half-width; the slab of a case cuts
  the outer ribs obliquely; sternum medially.
- mediastinum: heart as a left ventricle (thick-walled ellipsoid, long axis pointing left,
  anterior, inferior) and a crescent right ventricle in front of it with a thin wall, septum
  between them, pericardial fat around; ascending aorta and pulmonary trunk above it, descending
  aorta beside the vertebra, paraspinal muscles; internal mammary arteries behind the ribs
  beside the sternum. The heart is placed in the coordinates of the rib cage (its sag
  included) with its anterior surface (:func:`heart_front`) 5-30 mm (scaled) behind the inner
  chest wall, so it never reaches the ribs at either scale.

World coordinates as in :mod:`data.phantom_spec`. Fibroglandular tissue, vessels and lesions
are painted afterwards (:mod:`data.phantom_gland`, :mod:`data.phantom_vessels`,
:mod:`data.phantom_lesion`); the skin is painted last by :func:`paint_skin`.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from data.phantom_kinetics import LABELS
from data.phantom_pv import TissueMix, coverage
from data.phantom_spec import Anatomy, CaseSpec, Look


def _smooth_noise(rng: np.random.Generator, shape, sigma_mm, spacing) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation (a texture field); ``sigma_mm``:
    one correlation length or one per voxel axis (anisotropic texture).

    The filter adds the variance of a voxel box (1/12 voxel^2 per axis), so a field sampled on
    thick slices is the average over the slice, not a point sample. Wide filters (> 3 voxels) run
    on a grid coarser by an integer factor and are interpolated back (separable linear)."""
    shape = tuple(int(n) for n in shape)
    sig_mm = np.broadcast_to(np.asarray(sigma_mm, float), (3,))
    sig = np.array([math.sqrt((sm / s) ** 2 + 1 / 12) for sm, s in zip(sig_mm, spacing)])
    k = np.maximum(np.floor(sig / 1.5), 1).astype(int)
    if np.all(k == 1):
        white = rng.standard_normal(shape, dtype=np.float32)
        f = ndimage.gaussian_filter(white, sig, mode="wrap", truncate=3.0)
    else:
        small = tuple(int(math.ceil(n / kk)) + 3 for n, kk in zip(shape, k))
        white = rng.standard_normal(small, dtype=np.float32)
        g = ndimage.gaussian_filter(white, sig / k, mode="wrap", truncate=3.0)
        f = g
        for ax, (n, kk) in enumerate(zip(shape, k)):     # separable linear interpolation
            x = np.arange(n, dtype=np.float32) / np.float32(kk) + 1
            i0 = np.floor(x).astype(np.int64)
            fr = (x - i0).reshape([-1 if b == ax else 1 for b in range(3)])
            f = f.take(i0, axis=ax) * (1 - fr) + f.take(i0 + 1, axis=ax) * fr
    return f / max(float(f.std()), 1e-6)


def thorax_surface(u, an: Anatomy):
    """Anterior chest-wall surface v_T(u) and its slope at the breast level (ellipse of half-axes a, b)."""
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


def smooth_union(a, b, k: float):
    """Polynomial smooth maximum of two level-sets (positive inside), blending radius ``k`` mm."""
    h = np.clip((k - np.abs(a - b)) / np.float32(k), 0, 1)
    return np.maximum(a, b) + h * h * np.float32(k / 4)


def _capsule(u, v, w, p0, p1, radius):
    """Signed distance (mm, positive inside) to a capsule of ``radius`` around segment p0-p1."""
    p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    d = p1 - p0
    t = ((u - p0[0]) * d[0] + (v - p0[1]) * d[1] + (w - p0[2]) * d[2]) / np.float32(d @ d)
    np.clip(t, 0, 1, out=t)
    dist = np.sqrt((u - p0[0] - t * d[0]) ** 2 + (v - p0[1] - t * d[1]) ** 2 + (w - p0[2] - t * d[2]) ** 2)
    return np.float32(radius) - dist


def nipple_points(side: int, an: Anatomy, look: Look):
    """Base (on the breast apex) and tip of the nipple of one breast, world mm."""
    cu, cv, cw, rdt = _breast_centre(side, an)
    apex = np.array([cu, cv + rdt, cw])
    return apex - np.array([0, 0.3 * look.nipple_mm, 0]), apex + np.array([0, 0.7 * look.nipple_mm, 0])


# ribs descend laterally on the anterior chest wall: ~0.45 mm inferior per mm lateral (modelling
# choice matching the oblique rib sections of axial breast MRI)
RIB_SLOPE = 0.45
# long axis of the heart: towards the patient's left and anterior, ~35 degrees from the
# left-right axis in the axial plane (a modelling value; the anatomical axis is ~45 degrees
# oblique in all three planes)
HEART_TILT_DEG = 35.0


def rib_layout(rng, an: Anatomy) -> list[dict]:
    """The ribs of a case, superior to inferior, each with its own geometry (world mm):
    ``t`` its centre on the line ``w + RIB_SLOPE |u|`` at the sternum, pitch to the next rib
    ``U(0.8, 1.25)`` times the mean (26 mm at full scale: anterior ribs ~1-1.5 cm high with
    intercostal spaces of ~1-2 cm), half-height ``half_si`` (U(0.75, 1.25) x 0.28 pitch),
    half-depth ``half_depth`` (fraction of the rib layer), a slope deviation ``slope`` and a
    curvature ``curve`` (centre moves by ``curve u^2 / thorax_a``), and ``cartilage_u``: the
    costal cartilage runs from the sternum to |u| = 0.1-0.25 thorax_a (longer for lower ribs in
    reality; here drawn per rib). The slab of a case cuts the outermost ribs obliquely."""
    body = an.thorax_a / 165.0
    pitch = 26.0 * body
    t = -260.0 * body + float(rng.uniform(0, pitch))
    out = []
    while t < 260.0 * body + RIB_SLOPE * an.thorax_a:
        out.append(dict(t=t, half_si=0.28 * pitch * float(rng.uniform(0.75, 1.25)),
                        half_depth=0.45 * float(rng.uniform(0.75, 1.05)), slope=float(rng.normal(0, 0.025)),
                        curve=float(rng.normal(0, 0.04)), cartilage_u=an.thorax_a * float(rng.uniform(0.1, 0.25))))
        t += pitch * float(rng.uniform(0.8, 1.25))
    return out


def heart_front(heart_r) -> float:
    """How far the pericardial fat reaches in front of the heart centre (mm): the larger of the
    two ventricles' anterior extents (rotated ellipsoids, see :func:`_paint_heart`) plus the fat
    layer with a 1.5x margin for the approximate distance of the level-set."""
    r0, r1, _ = heart_r
    s, c = math.sin(math.radians(HEART_TILT_DEG)), math.cos(math.radians(HEART_TILT_DEG))
    rv = 0.38 * r1 + math.hypot(0.75 * r0 * s, 0.62 * r1 * c)
    lv = -0.12 * r1 + math.hypot(0.85 * r0 * s, 0.85 * r1 * c)
    return max(rv, lv) + 1.5 * 0.12 * float(np.mean(heart_r))


def axilla_pad(side: int, an: Anatomy):
    """Centre and radii (world mm, in the coordinates of the rib cage, sag removed) of the
    axillary fat of one side: over the lateral chest wall beside the breast base, where the
    lateral border of the pectoralis meets the axilla, extending superiorly (the axillary tail);
    the level I lymph nodes lie in it (:mod:`data.phantom_axilla`)."""
    cu = side * (an.breast_x + 0.85 * an.breast_r[0])
    vt, _ = thorax_surface(np.float32(cu), an)
    return ((cu, float(vt) + 0.15 * an.breast_r[0], an.breast_w + 0.4 * an.breast_r[2]),
            (0.55 * an.breast_r[0], 0.5 * an.breast_r[0], 1.0 * an.breast_r[2]))


def paint_body(spec: CaseSpec, look: Look, rng, u, v, w, mix: TissueMix) -> dict:
    """Paint fat, chest wall and mediastinum into ``mix``; returns the geometry later layers need:
    ``dist`` (depth below the body surface, mm), ``delta`` (depth below the anterior thorax
    surface), ``breasts`` {side: (index of breast voxels, normalised coords there)}, ``heart``
    (bool mask of the blood pools of heart and great vessels, the source of cardiac ghosts)."""
    an, L = spec.anatomy, LABELS
    band = 1.5 * float(sum(spec.spacing))     # mm: the level-sets here are ~distances (|grad| <~ 1)

    def _cov(phi):
        return coverage(phi, band=band)

    a_t, b_t = np.float32(an.thorax_a), np.float32(an.thorax_b)
    w0 = np.float32(an.breast_w)
    sag = np.float32(look.chest_curve) * (w - w0) ** 2          # rib cage curving away superiorly/inferiorly
    vv = v + sag
    tx, ty = u / a_t, (vv + b_t) / b_t
    ft = np.sqrt(tx * tx + ty * ty)
    delta = (1 - ft) * ft / np.maximum(np.sqrt((tx / a_t) ** 2 + (ty / b_t) ** 2), np.float32(1e-6))
    del tx, ty, ft
    dist = delta.copy()
    breasts = {}
    for s in (1, -1):
        cu, cv, cw, rdt = _breast_centre(s, an)
        f, d, xyz = _ellipsoid(u, v, w, (cu, cv, cw), (an.breast_r[0], rdt, an.breast_r[2]))
        nb, nt = nipple_points(s, an, look)
        nip = _capsule(u, v, w, nb, nt, 0.45 * look.nipple_mm)
        d = smooth_union(d, nip, 1.5)
        dist = smooth_union(dist, d, 6.0)
        pc, pr = axilla_pad(s, an)                   # axillary fat lateral to the breast base
        _, dp, _ = _ellipsoid(u, vv, w, pc, pr)
        dist = smooth_union(dist, dp, 6.0)
        sel = np.flatnonzero(((f < 1.05) | (nip > -2)).ravel() & (delta.ravel() < 2.0))
        breasts[s] = (sel, tuple(c.ravel()[sel] for c in xyz))
    mix.paint(_cov(dist), L["fat"])

    # chest wall: retromammary fat, pectoralis (thin medially), ribs/intercostals, lungs
    d0 = np.float32(2.5)
    au = np.abs(u) / a_t
    muscle_t = np.float32(an.pectoral_mm) * (np.float32(0.3) + np.float32(0.7) * np.clip(au / 0.35, 0, 1))
    muscle_t += np.clip((-b_t - vv) / (0.5 * b_t), 0, 1) * np.float32(0.15 * an.thorax_b)   # back muscles
    mix.paint(_cov(delta - d0), L["muscle"])
    rib_top = d0 + muscle_t
    rl = np.float32(an.rib_layer_mm)
    lung_top = rib_top + rl
    mix.paint(_cov(delta - lung_top), L["lung"])
    # ribs: one oval section per rib, each with its own spacing, thickness, slope and curvature,
    # bone laterally and costal cartilage medially (rib_layout); only the chest-wall band is evaluated
    bone = np.full(u.shape, -3.0, np.float32)
    cart = np.full(u.shape, -3.0, np.float32)
    mid = rib_top + 0.5 * rl
    idx = np.flatnonzero((np.abs(delta - mid) < 0.6 * rl).ravel())
    if idx.size:
        uu, ww, dd, md = (x.ravel()[idx] for x in (u, w, delta, mid))
        au_ = np.abs(uu)
        t = ww + np.float32(RIB_SLOPE) * au_
        bb = np.full(idx.size, -3.0, np.float32)
        cc = np.full(idx.size, -3.0, np.float32)
        for r in rib_layout(rng, an):
            c = np.float32(r["t"]) + np.float32(r["slope"]) * au_ + np.float32(r["curve"] / an.thorax_a) * uu * uu
            near = np.abs(t - c) < 2.0 * r["half_si"]
            if not near.any():
                continue
            ph = (t[near] - c[near]) / np.float32(r["half_si"])
            rad = (dd[near] - md[near]) / np.float32(r["half_depth"] * rl)
            sec = (1 - np.sqrt(ph * ph + rad * rad)) * np.float32(min(r["half_si"], r["half_depth"] * rl))
            lat = au_[near] - np.float32(r["cartilage_u"])            # > 0: bone, < 0: cartilage
            bb[near] = np.maximum(bb[near], np.minimum(sec, lat))
            cc[near] = np.maximum(cc[near], np.minimum(sec, -lat))
        bone.ravel()[idx] = bb
        cart.ravel()[idx] = cc
    mix.paint(_cov(bone), L["marrow"])
    mix.paint(_cov(cart), L["cartilage"])
    # sternum: an oval section in the midline, from behind the retromammary fat to the lungs
    half = np.maximum((lung_top - d0 - 1.0) / 2, np.float32(1.0))
    ell = np.sqrt((u / np.float32(0.09 * an.thorax_a)) ** 2 + ((delta - d0 - 1.0 - half) / half) ** 2)
    sternum = (1 - ell) * np.minimum(np.float32(0.09 * an.thorax_a), half)
    mix.paint(_cov(sternum) * (vv > -0.5 * b_t), L["marrow"])
    del bone, cart, mid, sternum, au, ell, half

    # mediastinum and spine
    spine_v = -2 * b_t + 0.45 * b_t
    para = np.minimum(np.float32(0.12) * a_t - np.abs(u), spine_v + 0.3 * b_t - vv)
    mix.paint(_cov(np.minimum(para, delta - lung_top)), L["muscle"])
    mix.paint(_cov(0.17 * b_t - np.sqrt(u ** 2 + (vv - spine_v) ** 2)), L["marrow"])
    desc = 0.1 * b_t - np.sqrt((u + 0.12 * a_t) ** 2 + (vv - spine_v - 0.3 * b_t) ** 2)
    mix.paint(_cov(desc), L["blood"])
    heart = desc > 0
    heart |= _paint_heart(an, u, vv, w, mix, _cov)
    # internal mammary arteries: behind the ribs beside the sternum, running superior-inferior
    for s in (1, -1):
        iu = s * 0.13 * an.thorax_a
        ivt, _ = thorax_surface(np.float32(iu), an)
        depth = 2.5 + an.pectoral_mm * 0.5 + 0.8 * an.rib_layer_mm
        ima = np.float32(1.3) - np.sqrt((u - iu) ** 2 + (vv - np.float32(ivt - depth)) ** 2)
        mix.paint(_cov(ima), L["blood"])
    return dict(dist=dist, delta=delta, breasts=breasts, heart=heart, band=band, wall=lung_top)


def _paint_heart(an: Anatomy, u, v, w, mix: TissueMix, _cov) -> np.ndarray:
    """Pericardial fat, ventricles with myocardium and septum, ascending aorta and pulmonary trunk.
    ``v`` is the antero-posterior coordinate of the rib cage (sag included), so the heart keeps its
    depth behind the chest wall wherever it lies superior-inferior. Returns the mask of their
    blood pools."""
    L = LABELS
    hu, hdepth, hw = an.heart_center
    vt_h, _ = thorax_surface(np.float32(hu), an)
    hc = np.array([hu, float(vt_h) - hdepth, hw], np.float32)
    r = np.asarray(an.heart_r, np.float32)
    ang = math.radians(HEART_TILT_DEG)           # long axis towards the left, anterior
    c, s = np.float32(math.cos(ang)), np.float32(math.sin(ang))

    def ellipsoid_sdf(centre, radii):
        du, dv, dw = u - centre[0], v - centre[1], w - centre[2]
        ru, rv = c * du + s * dv, -s * du + c * dv
        _, d, _ = _ellipsoid(ru, rv, dw, (0, 0, 0), radii)
        return d

    # left ventricle posterior-left, right ventricle anterior-right of the heart centre (u > 0 is
    # the patient's right, v > 0 anterior)
    lv = ellipsoid_sdf(hc + np.array([-0.15 * r[0], -0.12 * r[1], 0], np.float32), 0.85 * r)
    rv_c = hc + np.array([0.4 * r[0], 0.38 * r[1], -0.05 * r[2]], np.float32)
    rv = ellipsoid_sdf(rv_c, (0.75 * r[0], 0.62 * r[1], 0.85 * r[2]))
    whole = np.maximum(lv, rv)
    myo = np.float32(8.0 * an.heart_r[0] / 55.0)   # LV wall ~8-10 mm at full scale
    mix.paint(_cov(whole + np.float32(0.12) * r.mean()), L["fat"])
    mix.paint(_cov(whole), L["myocardium"])
    lv_pool = lv - myo
    rv_pool = np.minimum(rv - 0.35 * myo, -lv - 0.6 * myo)    # septum between the two pools
    mix.paint(_cov(lv_pool), L["blood"])
    mix.paint(_cov(rv_pool), L["blood"])
    pools = (lv_pool > 0) | (rv_pool > 0)
    del lv, rv, whole
    # ascending aorta and pulmonary trunk above the heart (tubes along superior-inferior)
    top = hc[2] + np.float32(0.45) * r[2]
    ar = np.float32(0.22 * an.heart_r[0])
    for du_, dv_, rad in ((0.3 * hu - hc[0], 0.3 * r[1], ar), (0.25 * r[0], 0.6 * r[1], 0.9 * ar)):
        tube = np.minimum(rad - np.sqrt((u - hc[0] - du_) ** 2 + (v - hc[1] - dv_) ** 2), w - top)
        mix.paint(_cov(tube), L["blood"])
        pools |= tube > 0
    return pools


def paint_skin(an: Anatomy, look: Look, u, v, w, geom: dict, mix: TissueMix) -> None:
    """Skin shell over the whole body, thicker at the areola (radius ~3 nipple lengths)."""
    dist = geom["dist"]
    t = np.full(dist.shape, an.skin_mm, np.float32)
    for s in (1, -1):
        nb, _ = nipple_points(s, an, look)
        rho2 = (u - np.float32(nb[0])) ** 2 + (w - np.float32(nb[2])) ** 2
        t += np.float32(0.8 * an.skin_mm) * np.exp(-rho2 / np.float32((3 * look.nipple_mm) ** 2)) \
            * (v > np.float32(nb[1] - 3 * look.nipple_mm))
    band = geom["band"]
    outer = coverage(dist, band=band)
    mix.paint(np.clip(outer - coverage(dist - t, band=band), 0, 1), LABELS["skin"])
