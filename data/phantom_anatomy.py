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

Modules (every name is importable from here):

- :mod:`data.phantom_kinetics`: AIF, Tofts, SPGR, curve types, tissue table.
- :mod:`data.phantom_spec`: :class:`CaseSpec`, :class:`Anatomy`, :class:`Lesion`, affine of a case.
- :mod:`data.phantom_body`: thorax, breasts, parenchyma and vessels as tissue labels.
- :mod:`data.phantom_lesion`: lesion shape, placement and enhancement pattern.
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
