"""Case description and image grid of the synthetic breast DCE-MRI phantom.

:class:`CaseSpec` (with its :class:`Anatomy` and :class:`Lesion`) holds everything needed to render
one case; all random draws of the rendering are made from ``CaseSpec.render_seed``.

Coordinates: anatomy is defined in world millimetres, RAS+ as nibabel uses them
(``u`` = +x towards the patient's right, ``v`` = +y anterior, ``w`` = +z superior). The patient is
prone, breasts hang anteriorly (+v). The image grid is laid over the anatomy by the affine of the
case (axial or sagittal direction cosines, real spacings), so orientation is encoded in the affine
exactly as a scanner would write it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lesion:
    """Primary lesion (latent variables of the clinical model are among these)."""

    diameter_mm: float          # intended volume-equivalent diameter of the main focus
    n_foci: int                 # 1 = unifocal; extra foci are smaller, in the same breast
    n_satellites: int           # tiny nodules hugging the main focus
    spiculated: bool
    necrosis: float             # radius fraction of the non-enhancing core (0 = none)
    curve: str                  # persistent | plateau | washout
    ktrans: float
    ve: float
    vp: float
    rim: float                  # heterogeneity: rim/core enhancement contrast, 0..1
    position: tuple[float, float, float]  # centre in breast-normalised coordinates (-1..1)


@dataclass(frozen=True)
class Anatomy:
    """Body shape in world mm (already scaled for the requested dataset scale)."""

    thorax_a: float             # half-width of the thorax ellipse (left-right)
    thorax_b: float             # half-depth (antero-posterior)
    breast_x: float             # |u| of each breast centre
    breast_r: tuple[float, float, float]  # lateral, depth (protrusion), superior-inferior radii
    breast_w: float             # superior-inferior centre of the breasts
    pectoral_mm: float
    rib_layer_mm: float
    heart_center: tuple[float, float, float]  # (u, depth below chest wall, w)
    heart_r: tuple[float, float, float]
    skin_mm: float
    subcut_mm: float            # subcutaneous fat under the breast skin
    density: str                # a..d: fibroglandular fraction
    bpe: float                  # background-enhancement Ktrans scale (/min)
    n_vessels: int


@dataclass(frozen=True)
class Look:
    """Appearance of a case beyond the record: drawn by :func:`data.phantom_look.draw_look` from
    its own random stream, so adding it changed no other draw of a case."""

    coil: float                 # receive-coil shading: max |log bias| of the coil profile
    coil_depth: float           # coil loop radius / breast radius (deeper coils: flatter profile)
    fat_residual: float         # fat signal left by fat suppression (fraction of unsuppressed)
    nipple_mm: float            # nipple length (radius ~ 0.45 of it), scaled with the body
    ducts: int                  # lobar ducts per breast radiating from the nipple
    chest_curve: float          # antero-posterior sag of the rib cage per mm^2 off the breast level (1/mm)
    vessel_depth: int           # branching generations of each breast vessel tree
    gland_detail: float         # weight of the finest texture scale of the gland field
    nme: bool = False           # non-mass enhancement (clumped, segmental) instead of a mass
    # axillary lymph nodes, both sides: (side, lateral, superior, out, long semi-axis mm, short/long,
    # azimuth rad, elevation rad, fatty hilum) as drawn by data.phantom_look.draw_nodes
    nodes: tuple = ()


@dataclass(frozen=True)
class CaseSpec:
    """Everything needed to render one case deterministically."""

    patient_id: str
    center: str
    render_seed: tuple[int, ...]
    view: str                    # axial | sagittal
    bilateral: bool
    side: int                    # +1 tumour in the right breast (u > 0), -1 left
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    fov_center: tuple[float, float, float]
    tilt_deg: tuple[float, float, float]
    field_strength: float
    tr_ms: float
    te_ms: float
    flip_deg: float
    fat_suppressed: bool
    times_s: tuple[int, ...]
    injection_s: float
    dose: float                  # effective contrast dose factor (ISPY-like: lower contrast)
    noise: float                 # Rician sigma relative to the fat signal
    motion_mm: float             # rigid motion scale between phases
    ghost: float                 # phase-encode ghost amplitude
    bias: float                  # bias-field strength
    gain: float                  # stored fat intensity (scanner scaling)
    anatomy: Anatomy
    lesion: Lesion
    lesion_scale: float          # rendered lesion size / drawn size (small datasets shrink)
    psf_mm: float | None = None  # in-plane point-spread sigma (mm); None: half a voxel
    look: Look | None = None     # appearance (data.phantom_look); None: drawn from render_seed


DIRECTIONS = {
    # columns = world directions of voxel axes i, j, k (RAS). Axial as DICOM LPS rows/cols;
    # sagittal: i -> posterior, j -> inferior, k -> slices along left-right.
    "axial": np.array([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], float),
    "sagittal": np.array([[0, 0, -1], [-1, 0, 0], [0, -1, 0]], float),
}
PE_AXIS = {"axial": 0, "sagittal": 0}  # left-right (axial) / antero-posterior (sagittal)


def rotation(angles_deg) -> np.ndarray:
    ax, ay, az = (math.radians(a) for a in angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def world_extent_to_shape(view: str, fov_mm, spacing) -> tuple[int, int, int]:
    """FOV (left-right, antero-posterior, superior-inferior mm) -> voxel matrix of the view."""
    lr, ap, si = fov_mm
    per_axis = (lr, ap, si) if view == "axial" else (ap, si, lr)
    return tuple(max(8, int(round(e / s))) for e, s in zip(per_axis, spacing))  # type: ignore


def case_affine(spec: CaseSpec) -> np.ndarray:
    """4x4 voxel -> world (RAS mm) affine with direction cosines, centred on ``fov_center``."""
    d = rotation(spec.tilt_deg) @ DIRECTIONS[spec.view]
    m = d * np.asarray(spec.spacing, float)[None, :]
    centre_vox = (np.asarray(spec.shape, float) - 1) / 2
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = np.asarray(spec.fov_center, float) - m @ centre_vox
    return aff
