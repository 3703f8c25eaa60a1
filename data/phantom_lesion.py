"""Lesion shapes of the synthetic breast DCE-MRI phantom.

Mass lesions are lobulated or spiculated blobs with optional necrotic core, extra foci and
satellites, placed in the tumour-side breast in front of the chest wall; the rim enhances more
than the core (``rim``) and the enhancement varies inside with a 3 mm random field. Each shape is a
level-set (``1 - r / R(direction)`` times the radius, ~mm) painted with partial-volume coverage
(:mod:`data.phantom_pv`), so the rim is a band of mixed voxels, not a voxel step.

Non-mass enhancement (``Look.nme``; BI-RADS NME, distribution "segmental", internal pattern
"clumped", ACR BI-RADS Atlas 5th ed. 2013): enhancing clumps (a 1.2 mm random field above a
threshold) inside a segment, a cone with its apex at the nipple whose axis runs through the lesion
centre, widening towards the chest wall, over 1.6 lesion radii either side of the centre.

The expert mask is the lesion at the image grid: voxels whose lesion weight (tumour plus necrotic
core) is at least 1/2, the same weights the signal is rendered from.
"""
from __future__ import annotations

import math

import numpy as np

from data.phantom_body import _breast_centre, _smooth_noise, nipple_points, thorax_surface
from data.phantom_kinetics import LABELS
from data.phantom_pv import TissueMix, coverage
from data.phantom_spec import Anatomy, CaseSpec, rotation


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


def _nme_phi(rng, spec: CaseSpec, look, coords, c, radius, sp):
    """Level-set (~mm, > 0 inside) of clumped segmental non-mass enhancement (module docstring)."""
    nb, _ = nipple_points(spec.side, spec.anatomy, look)
    axis = np.asarray(c, float) - nb
    length = max(float(np.linalg.norm(axis)), 1e-3)
    axis /= length
    d = [x - np.float32(p) for x, p in zip(coords, nb)]
    t = d[0] * np.float32(axis[0]) + d[1] * np.float32(axis[1]) + d[2] * np.float32(axis[2])
    radial = np.sqrt(np.maximum(sum(x * x for x in d) - t * t, 0))
    region = np.minimum(np.float32(1.6 * radius) - np.abs(t - np.float32(length)),
                        np.float32(radius) * (0.45 + 0.55 * np.clip(t, 0, None) / np.float32(length)) - radial)
    body = max(spec.anatomy.thorax_a / 160.0, 0.8)
    clumps = _smooth_noise(rng, coords[0].shape, 1.2 * body, sp)
    return np.minimum(region, (clumps - np.float32(0.2)) * np.float32(1.2 * body))


def paint_lesion(spec: CaseSpec, rng, u, v, w, aff_inv, inner, mix: TissueMix, look=None):
    """Paint the lesion(s) into ``mix`` with partial-volume edges; returns the enhancement
    multiplier map (full volume, 1 outside lesions), the lesion coverage (full volume, float32)
    and lesion stats. ``inner``: coverage of the breast interior (behind the skin)."""
    les, sp, L = spec.lesion, spec.spacing, LABELS
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
    box = _box_from_world(aff_inv, mix.shape, c - reach, c + reach)
    coords = [a[box] for a in (u, v, w)]
    ratio = np.full(coords[0].shape, np.inf, np.float32)
    core = np.full(coords[0].shape, -np.inf, np.float32)
    nme = bool(look is not None and look.nme)
    for centre, rad, spic, nec in ([] if nme else foci):
        rr, noise = _lesion_field(rng, coords, centre, rad, spic, int(rng.integers(3, 7)),
                                  rng.uniform(0.08, 0.2), sp)
        if nec > 0:
            np.maximum(core, np.float32(nec) * (1 + np.float32(0.15) * noise) - rr, out=core)
        np.minimum(ratio, rr, out=ratio)
    # level-sets in ~mm (ratio is r / R): partial-volume coverage of tumour and necrotic core,
    # the tumour confined to the breast interior
    if nme:
        phi = _nme_phi(rng, spec, look, coords, c, radius, sp)
        ratio = np.clip(1 - phi / np.float32(radius), 0, None)
    else:
        phi = np.where(np.isfinite(ratio), (1 - ratio) * np.float32(radius), np.float32(-radius))
    alpha = coverage(phi) * inner[box]
    core_phi = np.where(np.isfinite(core), core * np.float32(radius), np.float32(-radius))
    alpha_core = np.minimum(coverage(core_phi), alpha)
    mix.paint(alpha, L["tumour"], box)
    mix.paint(alpha_core, L["necrosis"], box)
    mult = np.ones(mix.shape, np.float32)
    het = _smooth_noise(rng, ratio.shape, 3.0, sp) if ratio.size else ratio
    rim = 0.0 if nme else les.rim
    m = (1 - rim) + rim * 1.7 * np.clip(ratio, 0, 1) ** 2
    m = np.maximum(m * np.exp(np.float32(0.25) * het), 0.05).astype(np.float32)
    mult[box] = np.where(alpha > 0, m, np.float32(1.0))
    cov = np.zeros(mix.shape, np.float32)
    cov[box] = alpha
    n_t = float(alpha.sum())
    vol = n_t * float(np.prod(sp))
    return mult, cov, dict(necrotic_fraction=float(alpha_core.sum()) / max(n_t, 1e-6), tumour_ml=vol / 1000.0,
                           rendered_diameter_mm=(6 * vol / math.pi) ** (1 / 3), capped=bool(
                               radius < les.diameter_mm * spec.lesion_scale / 2 - 1e-6),
                           lesion_centre_mm=[round(float(x), 2) for x in c], nme=nme)
