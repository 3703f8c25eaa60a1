"""Fibroglandular tissue and background parenchymal enhancement of the synthetic breast phantom.

Gland field, per breast (normalised breast coordinates x, y, z: y along the nipple axis):

    F = 1.2 P(rho) + 2.2 E + 1.0 D + (1.1 + g) R + 0.3 n_2.5mm + 0.3 g n_1mm + 0.4 n_6mm

- ``P(rho) = exp(-(rho / 0.6)^2)``: a conical prior around the nipple axis
  (``rho = sqrt(x^2 + z^2) / sqrt(1 - y^2)``), gland is central and retro-areolar;
- a duct tree: ``Look.ducts`` lobar ducts leave the nipple towards the chest wall, fanning
  out and branching dichotomously three times (15-20 lobes drain through 6-10 main duct orifices
  at the nipple; Going & Moffat 2004, J Pathol 203:538; Ramsay et al. 2005, J Anat 206:525),
  splatted onto the grid. ``D``: the ducts themselves (smoothed by 0.6 mm at full scale, clipped
  at 1), continuous lines of gland; ``E``: the lobular envelope around them (smoothed by 5 mm,
  square root of the normalised density), so glandular tissue concentrates around the ducts;
- ``R = 0.85 - sqrt(n^2 + 0.09)``: the ridges of a unit field ``n`` with 1.5 mm correlation
  (scaled, at least 1.1 mm so the strands keep a partial-volume edge at the output grid) stretched
  3x antero-posteriorly: high on thin sheets running from the nipple towards the chest wall, which
  every slice cuts into curvilinear strands. ``g = Look.gland_detail`` weighs them;
- ``n_s``: smooth Gaussian random fields of unit variance with correlation length ``s`` (scaled
  with the body; the finer ones stretched 2x antero-posteriorly): lobulated, fat-interleaved edges.

Where the threshold is high (fatty breasts) only ridges near the ducts pass it: scattered
curvilinear strands radiating from the nipple; where it is low (dense breasts) the gland is
confluent with elongated fat lobules. The in-plane skeleton length per gland area of density-b
cases rose from 0.18-0.24 (generator version 3, smoothed blobs) to 0.27-0.31.

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


def _duct_tree(rng, spec: CaseSpec, look: Look, side: int) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) along the ducts of one breast and their generation (N,): ``Look.ducts``
    lobar ducts leave the nipple base towards the chest wall and branch dichotomously three
    times, each branch curving gently; the terminal branches reach the breast base."""
    an = spec.anatomy
    base, _ = nipple_points(side, an, look)
    depth = an.breast_r[1] * 1.25
    pts, gens = [], []
    step = 0.5 * max(min(spec.spacing), 0.5)

    def grow(p, d, length, gen):
        n = max(4, int(length / step))
        bend = rng.normal(0, 0.25, 3)
        q = p
        for t in np.linspace(0, 1, n):
            dd = d + bend * t
            q = p + length * t * dd / np.linalg.norm(dd)
            pts.append(q)
            gens.append(gen)
        if gen < 3:
            for _ in range(2):
                nd = d + rng.normal(0, 0.5, 3)
                nd[1] = -abs(nd[1]) - 0.25          # always away from the nipple
                grow(q, nd / np.linalg.norm(nd), length * rng.uniform(0.5, 0.75), gen + 1)

    for _ in range(look.ducts):
        d = np.array([rng.normal(0, 0.6), -1.0, rng.normal(0, 0.6)])
        d[0] *= an.breast_r[0] / an.breast_r[1]
        d[2] *= an.breast_r[2] / an.breast_r[1]
        grow(np.asarray(base, float), d / np.linalg.norm(d), depth * rng.uniform(0.3, 0.45), 0)
    return np.asarray(pts), np.asarray(gens)


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
    # strands: the ridges of a fine field stretched 3x antero-posteriorly (|n| small on thin sheets
    # that run from the nipple towards the chest wall, curvilinear in every slice)
    # (a smooth |n|, sqrt(n^2 + 0.3^2), so the crests have no kink)
    ridge = _smooth_noise(rng, shape, max(1.5 * body, 1.1) * np.where(ap > 1, 3.0, 1.0), sp)
    ridge = np.float32(0.85) - np.sqrt(ridge * ridge + np.float32(0.09))
    hits = np.zeros(shape, np.float32)
    for s in (1, -1):
        pts, _ = _duct_tree(rng, spec, look, s)
        vox = np.rint((aff_inv[:3, :3] @ pts.T + aff_inv[:3, 3:4]).T).astype(np.int64)
        ok = np.all((vox >= 0) & (vox < np.asarray(shape)), axis=1)
        np.add.at(hits, tuple(vox[ok].T), 1.0)
    duct_line = np.zeros(shape, np.float32)
    duct_env = np.zeros(shape, np.float32)
    if hits.any():
        duct_line = ndimage.gaussian_filter(hits, [max(0.6 * body, 0.4) / s for s in sp])
        top = float(np.percentile(duct_line[duct_line > 1e-3], 90)) if (duct_line > 1e-3).any() else 1.0
        duct_line = np.minimum(duct_line / np.float32(max(top, 1e-6)), np.float32(1.0))
        duct_env = ndimage.gaussian_filter(hits, [5.0 * body / s for s in sp])
        duct_env /= max(float(duct_env.max()), 1e-6)
        duct_env = np.sqrt(duct_env)
    del hits
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
        f = (1.2 * np.exp(-(rho[inner] / 0.6) ** 2) + 2.2 * duct_env.ravel()[j] + 1.0 * duct_line.ravel()[j]
             + (1.1 + look.gland_detail) * ridge.ravel()[j] + 0.3 * mid.ravel()[j]
             + 0.3 * look.gland_detail * fine.ravel()[j] + 0.4 * coarse.ravel()[j])
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
