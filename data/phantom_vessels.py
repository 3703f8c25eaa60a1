"""Enhancing vessel trees of the synthetic breast DCE-MRI phantom.

Each breast gets ``Anatomy.n_vessels`` arterial trees. A tree enters the breast at its base (the
medial ones as perforators of the internal mammary artery, the lateral ones from the lateral
thoracic artery, the two main supplies of the breast; Cunningham 1977, Cancer 40:1620, as
reviewed by van Deventer 2004, Clin Anat 17:403), runs towards the nipple with a gentle random
curvature and branches dichotomously ``Look.vessel_depth`` times. Radii follow Murray's law
(r_parent^3 = r_1^3 + r_2^3, Murray 1926, PNAS 12:207) with an asymmetric split; the trunk radius is
1.0-1.6 mm at full scale (0.8-1.3 mm in the shrunken small-scale body, so vessels stay
visible). Each segment is rasterised analytically: the
coverage of a voxel is ``clip(1/2 + (r - d) / w, 0, 1)`` with ``d`` its distance to the segment
axis and ``w`` the extent of the voxel box along the radial direction (:mod:`data.phantom_pv`), so
thin vessels are dim partial-volume lines. Vessels are blood (label ``blood``): they follow the
arterial input function, so in the first post-contrast phase they are brighter than the
parenchyma and the tumour, a classic false positive of enhancement thresholds.
"""
from __future__ import annotations

import math

import numpy as np

from data.phantom_body import _breast_centre, nipple_points, thorax_surface
from data.phantom_spec import CaseSpec, Look


def vessel_segments(rng, spec: CaseSpec, look: Look, side: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Segments (start, end, radius) in world mm of the vessel trees of one breast; the segments
    of a tree are joined end to start (a connected tree)."""
    an = spec.anatomy
    body = an.thorax_a / 160.0
    cu, cv, cw, rdt = _breast_centre(side, an)
    bvt = float(thorax_surface(np.float32(cu), an)[0])
    _, tip = nipple_points(side, an, look)
    segs: list[tuple[np.ndarray, np.ndarray, float]] = []

    def grow(p, d, length, radius, gen):
        n_sub = 3
        for _ in range(n_sub):
            d = d + rng.normal(0, 0.18, 3)
            d /= np.linalg.norm(d)
            q = p + d * length / n_sub
            segs.append((p, q, radius))
            p = q
        if gen >= look.vessel_depth:
            return
        split = rng.uniform(0.55, 0.8)                      # asymmetric Murray split
        r1 = radius * (split ** 3 / (split ** 3 + (1 - split) ** 3)) ** (1 / 3) * 1.0
        r2 = (max(radius ** 3 - r1 ** 3, 1e-6)) ** (1 / 3)
        to_nip = np.asarray(tip, float) - p
        to_nip /= max(np.linalg.norm(to_nip), 1e-6)
        for r_c in (r1, r2):
            nd = 0.6 * d + 0.4 * to_nip + rng.normal(0, 0.55, 3)
            nd /= np.linalg.norm(nd)
            grow(p, nd, length * rng.uniform(0.55, 0.8), r_c, gen + 1)

    for _ in range(an.n_vessels):
        phi = rng.uniform(0, 2 * math.pi)
        start = np.array([cu + 0.8 * an.breast_r[0] * math.cos(phi), bvt + 1.0,
                          cw + 0.8 * an.breast_r[2] * math.sin(phi)])
        d = np.asarray(tip, float) - start
        d /= np.linalg.norm(d)
        grow(start, d, 0.45 * an.breast_r[1] + 0.2 * an.breast_r[0], max(body, 0.8) * rng.uniform(1.0, 1.6), 1)
    return segs


def vessel_coverage(segs, aff: np.ndarray, shape, spacing, u, v, w) -> np.ndarray:
    """Partial-volume coverage (float32, volume shape) of the union of tube segments."""
    out = np.zeros(tuple(shape), np.float32)
    aff_inv = np.linalg.inv(aff)
    dirs = aff[:3, :3] / np.asarray(spacing, float)[None, :]      # unit voxel-axis directions (columns)
    sp = np.asarray(spacing, np.float32)
    for p, q, r in segs:
        lo = np.minimum(p, q) - r - 2 * sp.max()
        hi = np.maximum(p, q) + r + 2 * sp.max()
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        vox = (aff_inv[:3, :3] @ corners.T + aff_inv[:3, 3:4]).T
        a = np.clip(np.floor(vox.min(0)).astype(int), 0, np.asarray(shape))
        b = np.clip(np.ceil(vox.max(0)).astype(int) + 1, 0, np.asarray(shape))
        if np.any(b <= a):
            continue
        box = tuple(slice(int(i), int(j)) for i, j in zip(a, b))
        x, y, z = u[box] - np.float32(p[0]), v[box] - np.float32(p[1]), w[box] - np.float32(p[2])
        d = (q - p).astype(np.float32)
        t = np.clip((x * d[0] + y * d[1] + z * d[2]) / np.float32(d @ d), 0, 1)
        rx, ry, rz = x - t * d[0], y - t * d[1], z - t * d[2]
        dist = np.sqrt(rx * rx + ry * ry + rz * rz)
        inv = 1 / np.maximum(dist, np.float32(1e-3))
        width = sum(np.float32(sp[i]) * np.abs(rx * np.float32(dirs[0, i]) + ry * np.float32(dirs[1, i])
                                               + rz * np.float32(dirs[2, i])) * inv for i in range(3))
        width = np.maximum(width, np.float32(0.5 * sp.min()))
        cov = np.clip(0.5 + (np.float32(r) - dist) / width, 0, 1)
        np.maximum(out[box], cov, out=out[box])
    return out
