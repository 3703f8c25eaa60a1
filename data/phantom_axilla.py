"""Axillary lymph nodes of the synthetic breast DCE-MRI phantom.

The axillary fat (:func:`data.phantom_body.axilla_pad`) lies over the lateral chest wall beside the
breast base; the level I nodes (lateral to the pectoralis minor, the first to drain the breast)
sit in it. Each node of ``Look.nodes`` (:func:`data.phantom_look.draw_nodes`) is an ovoid
(ellipsoid of long semi-axis 2.5-5 mm x body scale, short/long 0.45-0.7, random orientation) placed
on the outward normal of the thorax ellipse at ``lateral`` breast radii beyond the breast centre,
``out`` of the axillary fat thickness in front of the chest wall; most have a fatty hilum (an
eccentric fat ellipsoid of half its size on one short axis, reaching its surface). Node cortex is
its own tissue (``node``: mild, homogeneous enhancement, :data:`data.phantom_kinetics.TISSUES`),
so nodes enhance like a small lesion, a realistic false positive of enhancement thresholds, but
are never part of the tumour mask. Only wide fields of view (bilateral axial acquisitions, and
full-scale matrices) reach them.
"""
from __future__ import annotations

import math

import numpy as np

from data.phantom_body import thorax_surface
from data.phantom_kinetics import LABELS
from data.phantom_pv import TissueMix, coverage
from data.phantom_spec import CaseSpec, Look


def node_geometry(spec: CaseSpec, look: Look) -> list[dict]:
    """Centre (world mm), semi-axes (mm), axes (3x3, columns) and hilum flag of every node."""
    an = spec.anatomy
    out = []
    for side, lat, sup, frac, long, ratio, az, el, hilum in look.nodes:
        cu = side * (an.breast_x + lat * an.breast_r[0])
        vt, _ = thorax_surface(np.float32(cu), an)
        vt = float(vt)
        # outward normal of the thorax ellipse (u / a)^2 + ((v + b) / b)^2 = 1 at (cu, vt)
        n = np.array([cu / an.thorax_a ** 2, (vt + an.thorax_b) / an.thorax_b ** 2])
        n /= np.linalg.norm(n)
        thick = 0.3 * an.breast_r[0]                              # of the axillary fat (axilla_pad)
        depth = max(frac * thick, ratio * long + 1.0)            # clear of the chest wall
        cw = an.breast_w + sup * an.breast_r[2]
        sag = look.chest_curve * (cw - an.breast_w) ** 2         # the rib cage recedes off the breast level
        centre = np.array([cu + n[0] * depth, vt + n[1] * depth - sag, cw])
        a = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az) * 0.3, math.sin(el)])
        a /= np.linalg.norm(a)                                   # long axis mostly in the u-w plane
        b = np.cross(a, [0.0, 1.0, 0.0])
        b /= max(np.linalg.norm(b), 1e-9)
        c = np.cross(a, b)
        out.append(dict(centre=centre, radii=np.array([long, ratio * long, ratio * long]),
                        axes=np.stack([a, b, c], 1), hilum=bool(hilum), side=int(side)))
    return out


def _ellipsoid_phi(x, y, z, centre, radii, axes):
    """Approximate signed distance (mm, positive inside) to a rotated ellipsoid."""
    dx, dy, dz = x - np.float32(centre[0]), y - np.float32(centre[1]), z - np.float32(centre[2])
    loc = [(dx * np.float32(axes[0, k]) + dy * np.float32(axes[1, k]) + dz * np.float32(axes[2, k]))
           / np.float32(radii[k]) for k in range(3)]
    f = np.sqrt(loc[0] ** 2 + loc[1] ** 2 + loc[2] ** 2)
    g = np.sqrt(sum((loc[k] / np.float32(radii[k])) ** 2 for k in range(3)))
    return (1 - f) * f / np.maximum(g, np.float32(1e-6))


def paint_nodes(spec: CaseSpec, look: Look, aff: np.ndarray, u, v, w, mix: TissueMix) -> dict:
    """Paint the axillary nodes (cortex ``node``, hilum ``fat``) that reach the field of view.
    Returns ``nodes_in_fov`` (nodes with at least one voxel of weight >= 1/2) and their voxels."""
    shape = np.asarray(mix.shape)
    aff_inv = np.linalg.inv(aff)
    pad = 2.0 * float(max(spec.spacing))
    seen, voxels = 0, 0
    for nd in node_geometry(spec, look):
        c, r = nd["centre"], nd["radii"]
        lo, hi = c - r.max() - pad, c + r.max() + pad
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        vox = (aff_inv[:3, :3] @ corners.T + aff_inv[:3, 3:4]).T
        a = np.clip(np.floor(vox.min(0)).astype(int), 0, shape)
        b = np.clip(np.ceil(vox.max(0)).astype(int) + 1, 0, shape)
        if np.any(b - a < 2):
            continue
        box = tuple(slice(int(i), int(j)) for i, j in zip(a, b))
        x, y, z = u[box], v[box], w[box]
        alpha = coverage(_ellipsoid_phi(x, y, z, c, r, nd["axes"]))
        if nd["hilum"]:
            hc = c + nd["axes"][:, 1] * 0.55 * r[1]
            hilum = coverage(_ellipsoid_phi(x, y, z, hc, 0.5 * r, nd["axes"]))
            alpha = alpha * (1 - hilum)
        mix.paint(alpha, LABELS["node"], box)
        if nd["hilum"]:
            mix.paint(np.minimum(hilum, coverage(_ellipsoid_phi(x, y, z, c, r, nd["axes"]))), LABELS["fat"], box)
        n_vox = int((mix.weight(LABELS["node"])[box] >= 0.5).sum())
        seen += n_vox > 0
        voxels += n_vox
    return dict(nodes_in_fov=int(seen), node_voxels=int(voxels))
