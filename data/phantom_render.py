"""Rendering of one synthetic breast DCE-MRI case: signal per phase, then acquisition artefacts.

Signal: tissue concentrations (:func:`data.phantom_kinetics.tissue_curves`) through the SPGR
signal equation, per label for uniform tissues and per voxel for parenchyma (background
enhancement) and tumour. Artefacts, in acquisition order: rigid motion between phases (the
annotated phase ``_0001`` is the reference), blur (point-spread), ghosting along the phase-encode
axis, smooth multiplicative bias field, Rician noise, int16 storage.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data.phantom_body import _anatomy_labels, _smooth_noise
from data.phantom_kinetics import LABELS, TISSUES, spgr, t10_ms, tissue_curves
from data.phantom_lesion import _render_lesion
from data.phantom_spec import PE_AXIS, CaseSpec, case_affine, rotation


@dataclass
class Rendered:
    """A rendered case on the grid of the annotated phase ``_0001``."""

    phases: list[np.ndarray]     # int16 (X, Y, Z), one per acquisition time
    mask: np.ndarray             # uint8 {0,1}: tumour incl. satellites, foci and necrotic core
    labels: np.ndarray           # uint8 tissue labels (LABELS), noise- and motion-free
    affine: np.ndarray
    breast_box: tuple[slice, slice, slice]  # tumour-side breast, nibabel axes, half-open
    stats: dict


def _world_coords(aff: np.ndarray, shape) -> list[np.ndarray]:
    idx = [np.arange(n, dtype=np.float32) for n in shape]
    out = []
    for r in range(3):
        acc = np.float32(aff[r, 3])
        for a in range(3):
            acc = acc + (np.float32(aff[r, a]) * idx[a]).reshape([-1 if b == a else 1 for b in range(3)])
        out.append(np.ascontiguousarray(np.broadcast_to(acc, tuple(shape)), dtype=np.float32))
    return out


def _bias_field(rng, shape, strength: float) -> np.ndarray:
    axes = [np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if b == a else 1 for b in range(3)])
            for a, n in enumerate(shape)]
    c = rng.normal(0, strength, 9).astype(np.float32)
    x, y, z = axes
    log = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z
    log = log + c[6] * x * y + c[7] * x * z + c[8] * y * z
    return np.exp(log).astype(np.float32)


def _psf_voxels(spec: CaseSpec, axis: int) -> float:
    """Gaussian point-spread sigma in voxels along an in-plane axis (half a voxel by default)."""
    return 0.5 if spec.psf_mm is None else float(spec.psf_mm) / float(spec.spacing[axis])


def render_case(spec: CaseSpec) -> Rendered:
    """Render all phases of one case (see the module docstring for the model)."""
    rng = np.random.default_rng(np.random.SeedSequence(list(spec.render_seed)))
    aff = case_affine(spec)
    aff_inv = np.linalg.inv(aff)
    shape, sp, L = tuple(spec.shape), spec.spacing, LABELS
    u, v, w = _world_coords(aff, shape)
    fine = _smooth_noise(rng, shape, 0.8, sp)
    coarse = _smooth_noise(rng, shape, 3.0, sp)
    lab, breasts, skin, heart_mask = _anatomy_labels(spec, rng, u, v, w, aff_inv, fine, coarse)
    mult, stats = _render_lesion(spec, rng, u, v, w, aff_inv, lab, breasts, skin)
    bpe_field = _smooth_noise(rng, shape, 7.0, sp)
    box_mask = breasts[spec.side][0]
    del u, v, w, coarse

    # ---- signal: per-label lookup for uniform tissues, per voxel for parenchyma and tumour
    conc = tissue_curves(spec)
    fs = spec.field_strength
    flat = lab.ravel()
    fgt_idx = np.flatnonzero(flat == L["fgt"])
    tum_idx = np.flatnonzero(flat == L["tumour"])
    bpe_map = np.exp(np.float32(0.7) * bpe_field.ravel()[fgt_idx] - np.float32(0.245))
    tum_map = mult.ravel()[tum_idx]
    tex = (1 + np.float32(0.04) * fine).ravel()
    del bpe_field, mult, fine
    fat_ref = float(spgr(1.0, t10_ms("fat", fs), np.float32(0.0), spec.tr_ms, spec.flip_deg))
    scale = np.float32(spec.gain / fat_ref)
    m0 = {k: TISSUES[k][0] for k in TISSUES}
    if spec.fat_suppressed:
        m0["fat"] *= 0.12
        m0["marrow"] *= 0.3
    clean = []
    for p in range(len(spec.times_s)):
        lut = np.zeros(max(L.values()) + 1, np.float32)
        for name, code in L.items():
            lut[code] = spgr(m0[name], t10_ms(name, fs), np.float32(conc[name][p]), spec.tr_ms, spec.flip_deg)
        s = lut[flat]
        s[fgt_idx] = spgr(m0["fgt"], t10_ms("fgt", fs), bpe_map * np.float32(conc["fgt"][p]),
                          spec.tr_ms, spec.flip_deg)
        s[tum_idx] = spgr(m0["tumour"], t10_ms("tumour", fs), tum_map * np.float32(conc["tumour"][p]),
                          spec.tr_ms, spec.flip_deg)
        clean.append((s * tex * scale).reshape(shape))
    mask = ((lab == L["tumour"]) | (lab == L["necrosis"]))
    stats["clean_curves"] = {
        "tumour": [float(c[mask].mean()) if mask.any() else 0.0 for c in clean],
        "parenchyma": [float(c.ravel()[fgt_idx].mean()) if fgt_idx.size else 0.0 for c in clean],
        "heart": [float(c[lab == L["blood"]].mean()) if (lab == L["blood"]).any() else 0.0 for c in clean],
    }
    stats["heart_voxels"] = int(heart_mask.sum())

    # ---- acquisition artefacts
    centre = np.asarray(spec.fov_center, float)
    bias = _bias_field(rng, shape, spec.bias)
    pe = PE_AXIS[spec.view]
    n_pe = shape[pe]
    heart_ghost = min(0.25, 3 * spec.ghost + 0.04)
    sigma = np.float32(spec.noise * spec.gain)
    phases = []
    # rigid motion relative to the annotated phase 1: the pre-contrast phase moves independently
    # (injection), later phases drift (random walk)
    offsets = {1: (np.zeros(3), np.zeros(3))}
    for p in range(len(clean)):
        if p == 1:
            continue
        prev = offsets.get(p - 1, (np.zeros(3), np.zeros(3))) if p > 1 else (np.zeros(3), np.zeros(3))
        step = 1.0 if p == 0 else 0.6
        offsets[p] = (prev[0] + rng.normal(0, step * spec.motion_mm, 3),
                      prev[1] + rng.normal(0, step * 0.25 * spec.motion_mm, 3))
    # realised motion: largest translation of a phase relative to phase 1 (the cause of the score)
    stats["motion_max_mm"] = round(max([float(np.linalg.norm(o[0])) for o in offsets.values()]), 4)
    for p, s in enumerate(clean):
        if p != 1 and spec.motion_mm > 0:
            shift, angles = offsets[p]
            rot = rotation(angles)
            move = np.eye(4)
            move[:3, :3] = rot
            move[:3, 3] = centre - rot @ centre + shift
            mm = aff_inv @ np.linalg.inv(move) @ aff
            s = ndimage.affine_transform(s, mm[:3, :3], offset=mm[:3, 3], order=1, mode="nearest")
        for ax in (0, 1):                    # in-plane point-spread (slice axis is 2 in both views)
            s = ndimage.gaussian_filter1d(s, _psf_voxels(spec, ax), axis=ax)
        g = np.roll(s, n_pe // 2, axis=pe)
        g *= np.float32(spec.ghost)
        if heart_mask.any():
            hs = s * heart_mask
            shift = n_pe // 3
            g += np.float32(heart_ghost) * (np.roll(hs, shift, axis=pe) + np.roll(hs, -shift, axis=pe))
        s = s + g
        s *= bias
        n1 = rng.standard_normal(shape, dtype=np.float32)
        n1 *= sigma
        n1 += s
        np.square(n1, out=n1)
        n2 = rng.standard_normal(shape, dtype=np.float32)
        n2 *= sigma
        np.square(n2, out=n2)
        n1 += n2
        np.sqrt(n1, out=n1)                  # Rician magnitude
        np.rint(n1, out=n1)
        phases.append(np.clip(n1, 0, 32767).astype(np.int16))

    nz = np.argwhere(box_mask)
    if nz.size:
        lo = np.maximum(nz.min(0) - 2, 0)
        hi = np.minimum(nz.max(0) + 3, np.asarray(shape))
    else:
        lo, hi = np.zeros(3, int), np.asarray(shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return Rendered(phases=phases, mask=mask.astype(np.uint8), labels=lab, affine=aff,
                    breast_box=box, stats=stats)  # type: ignore[arg-type]
