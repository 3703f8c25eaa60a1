"""Fibroglandular tissue and background parenchymal enhancement of the synthetic breast phantom.

Gland field, per breast (normalised breast coordinates x, y, z: y along the nipple axis):

    F = P(rho) + 1.3 D + g_1 n_1mm + 0.6 n_2.5mm + 0.8 n_6mm

- ``P(rho) = 2.2 exp(-(rho / 0.6)^2)``: a conical prior around the nipple axis
  (``rho = sqrt(x^2 + z^2) / sqrt(1 - y^2)``), gland is central and retro-areolar;
- ``D``: a duct tree: ``Look.ducts`` lobar ducts leave the nipple towards the chest wall, fanning
  out and branching twice (15-20 lobes drain through 6-10 main duct orifices at the nipple;
  Going & Moffat 2004, J Pathol 203:538; Ramsay et al. 2005, J Anat 206:525), splatted onto the
  grid and smoothed (sigma 2.5 mm at full scale), normalised to a maximum of 1: glandular tissue
  clusters along the ducts, radiating from the nipple;
- ``n_s``: smooth Gaussian random fields of unit variance with correlation length ``s`` (scaled
  with the body), the fine one with weight ``Look.gland_detail``: lobulated, fat-interleaved edges.

The threshold is the quantile that makes the fibroglandular fraction of the breast match its
density category (BI-RADS a..d: 7 / 20 / 40 / 62 % of the breast volume, times U(0.85, 1.15)),
and the tissue is painted with the partial-volume coverage of ``F - threshold``
(:func:`data.phantom_pv.coverage`), so the gland is one continuous textured structure with soft
edges, confined behind the subcutaneous fat and in front of the chest wall.

Cooper's ligaments (suspensory fibrous sheets through the fat) are painted before the gland:
thin partial-volume lines in the fat (:func:`_paint_ligaments`).

Background parenchymal enhancement (BPE): the Ktrans of parenchyma is the case's ``bpe`` scale
times ``exp(0.5 n_5mm + 0.4 n_12mm + 0.5 e - c)``, ``e`` rising towards the gland's periphery and
``c`` keeping the mean at 1: patchy but continuous, stronger at the periphery of the gland where BPE
is usually seen (Giess et al. 2014, RadioGraphics 34:234). Parenchyma is also not uniform before
contrast: its M0 varies by 6 % with a 2.5 mm field (``texture``).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from data.phantom_body import _smooth_noise, nipple_points
from data.phantom_kinetics import LABELS
from data.phantom_pv import TissueMix, coverage
from data.phantom_spec import CaseSpec, Look

DENSITY_FRACTION = {"a": 0.07, "b": 0.2, "c": 0.4, "d": 0.62}


def _duct_tree(rng, spec: CaseSpec, look: Look, side: int) -> np.ndarray:
    """World points (N, 3) along the ducts of one breast."""
    an = spec.anatomy
    base, _ = nipple_points(side, an, look)
    depth = an.breast_r[1] * 1.2
    pts = []

    def grow(p, d, length, gen):
        n = max(4, int(length / 0.7))
        bend = rng.normal(0, 0.15, 3)
        for t in np.linspace(0, 1, n):
            dd = d + bend * t
            pts.append(p + length * t * dd / np.linalg.norm(dd))
        end = pts[-1]
        if gen < 2:
            for _ in range(2):
                nd = d + rng.normal(0, 0.45, 3)
                nd[1] = -abs(nd[1]) - 0.3
                grow(end, nd / np.linalg.norm(nd), length * rng.uniform(0.45, 0.7), gen + 1)

    for _ in range(look.ducts):
        d = np.array([rng.normal(0, 0.55), -1.0, rng.normal(0, 0.55)])
        d[0] *= an.breast_r[0] / an.breast_r[1]
        d[2] *= an.breast_r[2] / an.breast_r[1]
        grow(np.asarray(base, float), d / np.linalg.norm(d), depth * rng.uniform(0.35, 0.55), 0)
    return np.asarray(pts)


def _paint_ligaments(an, rng, geom: dict, mix: TissueMix, sp, body: float, stretch) -> None:
    """Cooper's ligaments: thin fibrous sheets through the breast fat, the zero level-set of a
    smooth random field n (4 mm correlation, scaled, 3x longer antero-posteriorly so the sheets
    run from the gland towards the skin) thickened to ~0.4 mm: distance to the sheet
    ~ |n| / |grad n|; fibrous tissue has the relaxation of skin (dermis), at 60 % coverage."""
    n = _smooth_noise(rng, mix.shape, 4.0 * body * stretch, sp)
    grad = np.zeros(mix.shape, np.float32)
    for ax, s in enumerate(sp):
        grad += (np.gradient(n, axis=ax) / np.float32(s)) ** 2
    phi = np.float32(0.2) - np.abs(n) / np.sqrt(np.maximum(grad, np.float32(1e-6)))
    phi = np.maximum(phi, np.float32(-3.0))
    inside = coverage(np.minimum(geom["dist"] - np.float32(an.skin_mm + 1.0), -geom["delta"] - np.float32(1.0)),
                      band=geom["band"])
    mix.paint(coverage(phi) * inside * np.float32(0.6), LABELS["skin"])


def paint_gland(spec: CaseSpec, look: Look, rng, aff_inv, geom: dict, mix: TissueMix):
    """Paint fibroglandular tissue; returns (BPE Ktrans factor map, M0 texture map), both full
    volumes of mean ~1, used by the signal model wherever parenchyma is."""
    an, sp, shape = spec.anatomy, spec.spacing, mix.shape
    body = an.thorax_a / 160.0
    # the finer scales are elongated 2x along the antero-posterior axis: gland strands and fat
    # lobules run from the nipple towards the chest wall
    ap = np.ones(3)
    ap[int(np.argmax(np.abs(aff_inv[:3, 1])))] = 2.0
    fine = _smooth_noise(rng, shape, max(1.0 * body, 0.8) * ap, sp)
    mid = _smooth_noise(rng, shape, 2.5 * body * ap, sp)
    coarse = _smooth_noise(rng, shape, 6.0 * body, sp)
    ducts = np.zeros(shape, np.float32)
    for s in (1, -1):
        pts = _duct_tree(rng, spec, look, s)
        vox = np.rint((aff_inv[:3, :3] @ pts.T + aff_inv[:3, 3:4]).T).astype(np.int64)
        ok = np.all((vox >= 0) & (vox < np.asarray(shape)), axis=1)
        np.add.at(ducts, tuple(vox[ok].T), 1.0)
    if ducts.any():
        ducts = ndimage.gaussian_filter(ducts, [2.5 * body / s for s in sp])
        ducts /= max(float(ducts.max()), 1e-6)
    _paint_ligaments(an, rng, geom, mix, sp, body, np.where(ap > 1, 3.0, 1.0))
    frac = DENSITY_FRACTION[an.density] * float(rng.uniform(0.85, 1.15))
    # the gland space: behind the skin and subcutaneous fat, 2 mm in front of the chest wall; the
    # field outside it is the (negative) distance to it / 1.5 mm, so the gland fades out smoothly
    space = np.minimum(geom["dist"] - np.float32(an.skin_mm + an.subcut_mm), -geom["delta"] - np.float32(2.0))
    field = (space * np.float32(1.0 / 1.5)).ravel()
    dist, delta, space = geom["dist"].ravel(), geom["delta"].ravel(), space.ravel()
    for s in (1, -1):
        sel, (x, y, z) = geom["breasts"][s]
        region = (dist[sel] > an.skin_mm) & (delta[sel] < 0)
        inner = space[sel] > 0
        if inner.sum() < 10:
            continue
        rho = np.sqrt(x ** 2 + z ** 2) / np.sqrt(np.maximum(1 - np.minimum(y, 0.999) ** 2, 0.05))
        j = sel[inner]
        f = (2.2 * np.exp(-(rho[inner] / 0.6) ** 2) + 1.3 * ducts.ravel()[j] + look.gland_detail * fine.ravel()[j]
             + 0.6 * mid.ravel()[j] + 0.8 * coarse.ravel()[j])
        keep = min(0.97, frac * int(region.sum()) / int(inner.sum()))
        q = int((1 - keep) * (f.size - 1))
        thr = np.partition(f, q)[q]
        field[j] = np.minimum(f - thr, field[j])
    field = field.reshape(shape)
    alpha = coverage(field)
    mix.paint(alpha, LABELS["fgt"])
    # BPE: patchy but continuous, rising towards the gland's periphery (low |F - thr|)
    periph = np.exp(-np.clip(field, 0, None) / np.float32(0.8))
    b5 = _smooth_noise(rng, shape, 5.0 * body, sp)
    b12 = _smooth_noise(rng, shape, 12.0 * body, sp)
    log_bpe = np.float32(0.5) * b5 + np.float32(0.4) * b12 + np.float32(0.5) * periph
    in_gland = alpha > 0.5
    c = float(np.log(np.mean(np.exp(log_bpe[in_gland])))) if in_gland.any() else 0.0
    bpe = np.exp(log_bpe - np.float32(c)).astype(np.float32)
    texture = (1 + np.float32(0.06) * mid).astype(np.float32)
    return bpe, texture, fine
