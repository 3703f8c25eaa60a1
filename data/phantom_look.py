"""Appearance draws of a synthetic breast DCE-MRI case: coil shading, fat suppression, nipple, ducts,
rib-cage curvature, vessel branching, gland texture, non-mass enhancement and axillary lymph nodes
(:class:`data.phantom_spec.Look`). The scalar draws and the node count are also written to the
latents table (``phantom_latents.csv``: coil, coil_depth, fat_residual, nipple_mm, ducts,
chest_curve, vessel_depth, gland_detail, nme, n_nodes; the renderer adds nodes_in_fov and
node_voxels).

:func:`draw_look` is called once per case by :func:`data.phantom_cases.draw_case` and draws from
its own stream, ``SeedSequence([seed, center_code, k, 2])`` (the record, acquisition and lesion
draw from ``[seed, center_code, k]`` and the render from ``[seed, center_code, k, 1]``), so the
appearance can change without changing any other draw of a case.

Per-center receive-coil shading (``COIL``, max |log bias| of the coil profile): a modelling choice
ordered by coil generation, not a measured value: DUKE (dedicated 8-16 channel breast coils at
1.5/3 T) and NACT (one site, one scanner) mild, ISPY2 moderate, ISPY1 (2002-2006, 4-channel
coils at many sites) strongest. Dedicated breast coils show roughly 20-50 % intensity
non-uniformity across the field of view before correction, which bias-field correction (e.g. N4,
Tustison et al. 2010, IEEE TMI 29:1310) is used to remove; the ranges below span that.
"""
from __future__ import annotations

import numpy as np

from data.phantom_spec import CaseSpec, Look

COIL = {"DUKE": (0.12, 0.25), "ISPY1": (0.25, 0.45), "ISPY2": (0.15, 0.35), "NACT": (0.12, 0.25)}
# fat signal left after spectral fat suppression: typically 5-20 % of the unsuppressed fat signal
# (incomplete suppression from B0/B1 inhomogeneity; a modelling range)
FAT_RESIDUAL = (0.06, 0.2)
# probability that the primary lesion is rendered as non-mass enhancement (clumped, segmental;
# MAMA-MIA annotates it too): a modelling choice, NME is a minority of primary breast cancers
# treated with neoadjuvant therapy. Only cases drawn unifocal, without satellites or necrosis use
# it, so every drawn lesion latent stays visible in the image.
NME_P = 0.08
# level I axillary nodes per side, and how often their fatty hilum shows: a modelling choice (a
# few nodes per axilla are seen on breast MRI; most normal nodes have a visible fatty hilum)
NODES_PER_SIDE = (2, 5)
HILUM_P = 0.7


def draw_look(spec: CaseSpec) -> Look:
    """The appearance of a case, from ``SeedSequence([*render_seed[:3], 2])`` (module docstring)."""
    seed = list(spec.render_seed[:3]) + [2]
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    lo, hi = COIL.get(spec.center, (0.15, 0.35))
    body = spec.anatomy.thorax_a / 160.0            # ~1 at full scale, ~0.55 small
    return Look(
        coil=float(rng.uniform(lo, hi)), coil_depth=float(rng.uniform(0.9, 1.4)),
        fat_residual=float(rng.uniform(*FAT_RESIDUAL)), nipple_mm=float(body * rng.uniform(6, 11)),
        ducts=int(rng.integers(6, 12)), chest_curve=float(rng.uniform(0.8, 1.6) / (320.0 * body)),
        vessel_depth=int(rng.integers(3, 5)), gland_detail=float(rng.uniform(0.4, 0.8)),
        nme=bool(rng.random() < NME_P and spec.lesion.necrosis == 0 and spec.lesion.n_foci == 1
                 and spec.lesion.n_satellites == 0),
        nodes=draw_nodes(rng, body))


def draw_nodes(rng, body: float) -> tuple:
    """Level I axillary lymph nodes of both sides (``NODES_PER_SIDE``), each ``(side, lateral,
    superior, out, long, ratio, azimuth, elevation, hilum)``: ``lateral`` in U(0.65, 1.05) breast
    radii beyond the breast centre, ``superior`` in U(-0.1, 0.9) breast radii above it, ``out``
    the fraction U(0.25, 0.75) of the axillary fat thickness in front of the chest wall;
    long semi-axis ``long`` = U(2.5, 5) mm x body scale (normal nodes are ~5-10 mm long), short/long
    ratio U(0.45, 0.7) (ovoid: normal nodes have a long/short ratio > 1.5-2, Vassallo et al. 1992,
    Radiology 183:215), orientation, and a fatty hilum with probability HILUM_P."""
    out = []
    for side in (1, -1):
        for _ in range(int(rng.integers(NODES_PER_SIDE[0], NODES_PER_SIDE[1] + 1))):
            out.append((side, float(rng.uniform(0.65, 1.05)), float(rng.uniform(-0.1, 0.9)),
                        float(rng.uniform(0.25, 0.75)), float(body * rng.uniform(2.5, 5.0)),
                        float(rng.uniform(0.45, 0.7)), float(rng.uniform(0, np.pi)),
                        float(rng.normal(0, 0.4)), bool(rng.random() < HILUM_P)))
    return tuple(out)
