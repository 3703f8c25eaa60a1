"""Rendering of one synthetic breast DCE-MRI case: anatomy, signal per phase, acquisition artefacts.

Anatomy: painted deepest first into a two-tissue partial-volume mixture per voxel
(:class:`data.phantom_pv.TissueMix`): body and chest wall (:mod:`data.phantom_body`), Cooper's
ligaments and fibroglandular tissue (:mod:`data.phantom_gland`), vessel trees
(:mod:`data.phantom_vessels`), axillary lymph nodes (:mod:`data.phantom_axilla`), the lesion
(:mod:`data.phantom_lesion`), the skin. Independent
random streams (children of ``SeedSequence(render_seed)``) serve body, gland, vessels, lesion and
acquisition, so changing one does not move the others.

Signal: tissue concentrations (:func:`data.phantom_kinetics.tissue_curves`) through the SPGR
signal equation, per tissue for uniform tissues and per voxel for parenchyma (background
enhancement, M0 texture) and tumour (heterogeneity), mixed with the voxel's partial-volume
weights; a faint 3 % texture over all tissue; fat suppression scales fat M0 by
``Look.fat_residual`` (and marrow by 0.3). Artefacts, in acquisition order: rigid motion between
phases (the annotated phase ``_0001`` is the reference), in-plane blur (point-spread, Gaussian
0.5 voxel) and slice overlap (:func:`data.phantom_mr.slice_profile`), ghosting along the
phase-encode axis (N/2 ghost of the body, N/3 ghosts of the pulsating heart), multiplicative bias
(receive-coil shading and a smooth polynomial, :func:`data.phantom_mr.bias_field`), Rician
magnitude noise (:func:`data.phantom_mr.magnitude`), int16 storage.

The expert mask is the set of voxels whose lesion weight is at least 1/2 (``Rendered.lesion_weight``);
the label map is the dominant tissue of each voxel, consistent with the mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data.phantom_axilla import paint_nodes
from data.phantom_body import paint_body, paint_skin
from data.phantom_gland import paint_gland
from data.phantom_kinetics import LABELS, TISSUES, spgr, t10_ms, tissue_curves
from data.phantom_lesion import paint_lesion
from data.phantom_look import draw_look
from data.phantom_mr import bias_field, flow_modulation, magnitude, slice_profile
from data.phantom_pv import TissueMix, coverage
from data.phantom_spec import PE_AXIS, CaseSpec, case_affine, rotation
from data.phantom_vessels import vessel_coverage, vessel_segments


@dataclass
class Rendered:
    """A rendered case on the grid of the annotated phase ``_0001``."""

    phases: list[np.ndarray]     # int16 (X, Y, Z), one per acquisition time
    mask: np.ndarray             # uint8 {0,1}: tumour incl. satellites, foci and necrotic core
    labels: np.ndarray           # uint8 tissue labels (LABELS), noise- and motion-free
    affine: np.ndarray
    breast_box: tuple[slice, slice, slice]  # tumour-side breast, nibabel axes, half-open
    stats: dict
    lesion_weight: np.ndarray | None = None  # float32 partial-volume weight of the lesion; mask = >= 1/2


def _world_coords(aff: np.ndarray, shape) -> list[np.ndarray]:
    idx = [np.arange(n, dtype=np.float32) for n in shape]
    out = []
    for r in range(3):
        acc = np.float32(aff[r, 3])
        for a in range(3):
            acc = acc + (np.float32(aff[r, a]) * idx[a]).reshape([-1 if b == a else 1 for b in range(3)])
        out.append(np.ascontiguousarray(np.broadcast_to(acc, tuple(shape)), dtype=np.float32))
    return out


def _psf_voxels(spec: CaseSpec, axis: int) -> float:
    """Gaussian point-spread sigma in voxels along an in-plane axis (half a voxel by default)."""
    return 0.5 if spec.psf_mm is None else float(spec.psf_mm) / float(spec.spacing[axis])


def render_case(spec: CaseSpec) -> Rendered:
    """Render all phases of one case (see the module docstring for the model)."""
    look = spec.look if spec.look is not None else draw_look(spec)
    streams = np.random.SeedSequence(list(spec.render_seed)).spawn(6)   # the first 5 as before
    r_body, r_gland, r_vessel, r_lesion, r_acq, r_flow = (np.random.default_rng(x) for x in streams)
    aff = case_affine(spec)
    aff_inv = np.linalg.inv(aff)
    shape, sp, L = tuple(spec.shape), spec.spacing, LABELS
    u, v, w = _world_coords(aff, shape)
    an = spec.anatomy

    # ---- anatomy as a two-tissue partial-volume mixture per voxel, deepest structures first
    mix = TissueMix(shape, L["air"])
    geom = paint_body(spec, look, r_body, u, v, w, mix)
    bpe_map, gland_tex, fine = paint_gland(spec, look, r_gland, aff_inv, geom, mix)
    inner = coverage(np.minimum(geom["dist"] - np.float32(an.skin_mm + 0.5), -geom["delta"] - np.float32(1.0)),
                     band=geom["band"])
    segs = [seg for s in (1, -1) for seg in vessel_segments(r_vessel, spec, look, s)]
    mix.paint(vessel_coverage(segs, aff, shape, sp, u, v, w) * inner, L["blood"])
    node_stats = paint_nodes(spec, look, aff, u, v, w, mix)
    mult, _, stats = paint_lesion(spec, r_lesion, u, v, w, aff_inv, inner, mix, look)
    stats.update(node_stats)
    paint_skin(an, look, u, v, w, geom, mix)
    heart_mask = geom["heart"]
    body_mask = geom["dist"] > 0
    box_mask = np.zeros(shape, bool)
    box_mask.ravel()[geom["breasts"][spec.side][0]] = True
    box_mask &= geom["dist"] > 0
    lesion_w = mix.weight(L["tumour"]) + mix.weight(L["necrosis"])
    mask = lesion_w >= 0.5
    # label map: the dominant tissue, made consistent with the mask where the lesion's weight is
    # split between tumour and necrotic core (or an exact 1/2)
    lab = mix.dominant()
    les = np.isin(lab, (L["tumour"], L["necrosis"]))
    lab[mask & ~les] = L["tumour"]
    other = np.where(np.isin(mix.a, (L["tumour"], L["necrosis"])), mix.b, mix.a).reshape(shape)
    lab[~mask & les] = other[~mask & les]
    del les, other
    stats["tumour_voxels"] = int(mask.sum())
    stats["node_voxels"] = int((lab == L["node"]).sum())
    bias = bias_field(spec, look, r_acq, u, v, w, body_mask)
    del u, v, w, inner, geom

    # ---- signal: per tissue through the SPGR equation, per voxel for parenchyma (background
    # enhancement, texture) and tumour (heterogeneity), mixed with the partial-volume weights
    conc = tissue_curves(spec)
    fs = spec.field_strength
    fat_ref = float(spgr(1.0, t10_ms("fat", fs), np.float32(0.0), spec.tr_ms, spec.flip_deg))
    scale = np.float32(spec.gain / fat_ref)
    m0 = {k: TISSUES[k][0] for k in TISSUES}
    if spec.fat_suppressed:
        m0["fat"] *= look.fat_residual
        m0["marrow"] *= 0.3
    tex = (1 + np.float32(0.03) * fine).ravel()
    del fine
    code_a, code_b, f_a = mix.a, mix.b, mix.f
    per_voxel = {L["fgt"]: (bpe_map.ravel(), gland_tex.ravel(), "fgt"),
                 L["tumour"]: (mult.ravel(), None, "tumour")}
    where = {c: (np.flatnonzero(code_a == c), np.flatnonzero((code_b == c) & (f_a < 1))) for c in per_voxel}
    clean = []
    for p in range(len(spec.times_s)):
        lut = np.zeros(256, np.float32)
        for name, code in L.items():
            lut[code] = spgr(m0[name], t10_ms(name, fs), np.float32(conc[name][p]), spec.tr_ms, spec.flip_deg)
        sa, sb = lut[code_a], lut[code_b]
        for code, (kmap, m0map, name) in per_voxel.items():
            for sx, idx in zip((sa, sb), where[code]):
                if idx.size:
                    mm = m0[name] * (m0map[idx] if m0map is not None else np.float32(1.0))
                    sx[idx] = spgr(mm, t10_ms(name, fs), kmap[idx] * np.float32(conc[name][p]),
                                   spec.tr_ms, spec.flip_deg)
        s = f_a * sa + (1 - f_a) * sb
        s *= tex
        s *= scale
        s = s.reshape(shape)
        flow = flow_modulation(heart_mask, sp, r_flow)
        if flow is not None:
            s[flow[0]] *= flow[1]
        clean.append(s)
    del sa, sb
    fgt_w = mix.weight(L["fgt"]) > 0.5
    blood = lab == L["blood"]
    stats["clean_curves"] = {
        "tumour": [float(c[mask].mean()) if mask.any() else 0.0 for c in clean],
        "parenchyma": [float(c[fgt_w].mean()) if fgt_w.any() else 0.0 for c in clean],
        "heart": [float(c[blood].mean()) if blood.any() else 0.0 for c in clean],
    }
    stats["heart_voxels"] = int(heart_mask.sum())

    # ---- acquisition artefacts
    centre = np.asarray(spec.fov_center, float)
    rng = r_acq
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
        s = slice_profile(s)
        g = np.roll(s, n_pe // 2, axis=pe)
        g *= np.float32(spec.ghost)
        if heart_mask.any():
            hs = s * heart_mask
            shift = n_pe // 3
            g += np.float32(heart_ghost) * (np.roll(hs, shift, axis=pe) + np.roll(hs, -shift, axis=pe))
        s = s + g
        s *= bias
        n1 = magnitude(s, float(sigma), rng)
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
                    breast_box=box, stats=stats, lesion_weight=lesion_w)  # type: ignore[arg-type]
