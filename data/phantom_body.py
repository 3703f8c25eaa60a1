"""Anatomy geometry of the synthetic breast DCE-MRI phantom: tissue labels of thorax and breasts.

An elliptic thorax (skin, subcutaneous fat, pectoral/back muscles, ribs and sternum, lungs, heart
with myocardium and pericardial fat, ascending and descending aorta, spine), two ellipsoidal
breasts (skin, subcutaneous fat, fibroglandular tissue from thresholded multi-scale noise around a
conical gland prior, amount set by the density category), internal mammary arteries and tortuous
breast vessels. World coordinates as in :mod:`data.phantom_spec`.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from data.phantom_kinetics import LABELS
from data.phantom_spec import Anatomy, CaseSpec


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
