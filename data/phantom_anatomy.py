"""Anatomy and signal model of the synthetic breast DCE-MRI phantom (used by ``data.phantom``).

Everything here is a pure function of a :class:`CaseSpec` (all random draws are made from
``CaseSpec.render_seed``; the appearance ``CaseSpec.look`` was drawn from its own stream), so
one case renders to byte-identical arrays on any machine/process.

Coordinates: anatomy is defined in world millimetres, RAS+ as nibabel uses them
(``u`` = +x towards the patient's right, ``v`` = +y anterior, ``w`` = +z superior). The patient is
prone, breasts hang anteriorly (+v). The image grid is laid over the anatomy by the affine of the
case (axial or sagittal direction cosines, real spacings), so orientation is encoded in the affine
exactly as a scanner would write it.

Anatomy (:mod:`data.phantom_body`, :mod:`data.phantom_gland`, :mod:`data.phantom_vessels`,
:mod:`data.phantom_lesion`): every structure is a smooth level-set painted with partial-volume
coverage into a two-tissue mixture per voxel (:mod:`data.phantom_pv`): a thorax curving in both
the axial and sagittal planes (skin, subcutaneous fat, pectoralis, ribs and sternum, lungs, a
two-ventricle heart with septum and pericardial fat, ascending aorta, pulmonary trunk,
descending aorta, spine, internal mammary arteries), two breasts smoothly joined to it with a
skin layer, areola and nipple, Cooper's ligaments, fibroglandular tissue grown from a
nipple-centred prior, duct trees and multi-scale random fields (amount by density category),
branching vessel trees, and the lesion (lobulated or spiculated mass with necrotic core, foci and
satellites, or clumped segmental non-mass enhancement). Heart, aorta and vessels take up contrast
faster and more strongly than the tumour, and parenchyma enhances (patchy background
enhancement): bait for thresholding methods.

Signal (Parker et al. 2006; Tofts et al. 1999; the SPGR signal equation): Parker population AIF
-> extended Tofts tissue concentration -> R1 = 1/T10 + r1 C -> spoiled gradient echo, per tissue
and mixed with the partial-volume weights. Artefacts, in acquisition order (:mod:`data.phantom_mr`,
:mod:`data.phantom_render`): rigid motion between phases (the annotated phase ``_0001`` is the
reference), in-plane blur (point-spread) and slice-to-slice overlap, ghosting along the
phase-encode axis (whole body and pulsating heart), receive-coil shading and a smooth
multiplicative field, Rician magnitude noise, int16 storage.

Modules (every name is importable from here):

- :mod:`data.phantom_kinetics`: AIF, Tofts, SPGR, curve types, tissue table.
- :mod:`data.phantom_spec`: :class:`CaseSpec`, :class:`Anatomy`, :class:`Lesion`, affine of a case.
- :mod:`data.phantom_pv`: partial-volume coverage of level-sets, the two-tissue mixture.
- :mod:`data.phantom_look`: the appearance draws of a case (own random stream).
- :mod:`data.phantom_body`: thorax, breast outline, skin and nipple, chest wall, heart.
- :mod:`data.phantom_gland`: fibroglandular tissue, Cooper's ligaments, background enhancement.
- :mod:`data.phantom_vessels`: branching vessel trees of the breasts.
- :mod:`data.phantom_lesion`: lesion shape (mass or non-mass), placement, enhancement pattern.
- :mod:`data.phantom_mr`: coil shading, slice profile, Rician magnitude noise.
- :mod:`data.phantom_render`: :func:`render_case`, signal per phase and acquisition artefacts.
"""
from __future__ import annotations

from data.phantom_body import thorax_surface  # noqa: F401
from data.phantom_kinetics import (CURVE_MARGIN, CURVE_THRESHOLD, CURVE_TYPES, HCT,  # noqa: F401
                                   KINETIC_RANGES, LABELS, PARKER, R1_RELAXIVITY, TISSUES,
                                   contrast_minutes, curve_type, draw_tumour_kinetics,
                                   enhancement_curve, parker_aif, spgr, t10_ms, tissue_curves,
                                   tofts_concentration)
from data.phantom_lesion import lesion_centre, place_lesion  # noqa: F401
from data.phantom_render import Rendered, render_case  # noqa: F401
from data.phantom_spec import (DIRECTIONS, PE_AXIS, Anatomy, CaseSpec, Lesion,  # noqa: F401
                               case_affine, rotation, world_extent_to_shape)

__all__ = [
    "CURVE_MARGIN", "CURVE_THRESHOLD", "CURVE_TYPES", "DIRECTIONS", "HCT", "KINETIC_RANGES", "LABELS",
    "PARKER", "PE_AXIS", "R1_RELAXIVITY", "TISSUES", "Anatomy", "CaseSpec", "Lesion", "Rendered",
    "case_affine", "contrast_minutes", "curve_type", "draw_tumour_kinetics", "enhancement_curve",
    "lesion_centre", "parker_aif", "place_lesion", "render_case", "rotation", "spgr", "t10_ms",
    "thorax_surface", "tissue_curves", "tofts_concentration", "world_extent_to_shape",
]
