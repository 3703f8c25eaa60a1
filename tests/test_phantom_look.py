"""Appearance of the synthetic breast DCE-MRI phantom: partial volume, fibroglandular tissue,
vessels, coil shading, magnitude noise and the lesion mask (data/phantom_pv.py, phantom_body.py,
phantom_gland.py, phantom_vessels.py, phantom_mr.py, phantom_lesion.py, phantom_render.py).

Single small cases are drawn and rendered (or only their anatomy painted); no dataset is generated.
"""
import dataclasses
import math

import numpy as np
import pytest
from scipy import ndimage, stats

from data import phantom
from data import phantom_anatomy as pa
from data.phantom_body import paint_body
from data.phantom_gland import paint_gland
from data.phantom_look import draw_look
from data.phantom_mr import FLOW_CLIP, FLOW_DEPTH, RAYLEIGH_MEAN_OVER_STD, bias_field, flow_modulation
from data.phantom_pv import TissueMix, coverage
from data import phantom_render
from data.phantom_render import _world_coords
from data.phantom_vessels import vessel_coverage, vessel_segments

L = pa.LABELS


def _quiet(spec):
    """The same case without noise, motion and ghosts (the clean signal, int16-rounded)."""
    return dataclasses.replace(spec, noise=0.0, motion_mm=0.0, ghost=0.0)


def _anatomy(spec):
    """Body and gland of a case painted into a TissueMix (no vessels, lesion or signal)."""
    aff = pa.case_affine(spec)
    u, v, w = _world_coords(aff, spec.shape)
    mix = TissueMix(spec.shape)
    rng = np.random.default_rng(0)
    geom = paint_body(spec, spec.look, rng, u, v, w, mix)
    paint_gland(spec, spec.look, rng, np.linalg.inv(aff), geom, mix)
    return mix, geom


@pytest.fixture(scope="module")
def nact():
    return phantom.draw_case(0, "NACT", 0, "NACT_01").spec


@pytest.fixture(scope="module")
def nact_quiet(nact):
    return pa.render_case(_quiet(nact))


# ----------------------------------------------------------------------------- partial volume
def test_coverage_matches_supersampled_box():
    # an oblique plane through a grid of anisotropic voxels (0.7, 0.7, 2.2 mm): the covered
    # fraction of each voxel against a 12^3 supersampled box average
    sp = np.array([0.7, 0.7, 2.2])
    n = np.array([0.6, 0.3, 0.74])
    n /= np.linalg.norm(n)
    idx = np.stack(np.meshgrid(*[np.arange(12)] * 3, indexing="ij"), -1).astype(float)
    centre = idx * sp
    phi = centre @ n - 6.0
    cov = coverage(phi.astype(np.float32))
    sub = (np.arange(12) + 0.5) / 12 - 0.5
    offs = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3) * sp
    ref = ((centre[..., None, :] + offs) @ n - 6.0 > 0).mean(-1)
    inner = (slice(1, -1),) * 3                       # central differences need both neighbours
    err = np.abs(cov[inner] - ref[inner])
    assert err.max() < 0.12 and err.mean() < 0.01
    assert ((ref[inner] > 0.05) & (ref[inner] < 0.95)).sum() > 50   # many mixed voxels
    # a plane along a voxel face: exact halves
    assert coverage(np.array([-0.5, 0.0, 0.5, 1.0], np.float32)).tolist() == [0.0, 0.5, 1.0, 1.0]


def test_tissue_mix_weights():
    mix = TissueMix((4, 1, 1), background=L["fat"])
    mix.paint(np.array([0.3, 1.0, 0.0, 0.6], np.float32).reshape(4, 1, 1), L["fgt"])
    mix.paint(np.array([0.3, 0.0, 0.0, 0.5], np.float32).reshape(4, 1, 1), L["fgt"])
    mix.paint(np.array([0.0, 0.0, 0.0, 0.5], np.float32).reshape(4, 1, 1), L["blood"])
    fgt, fat, blood = (mix.weight(L[k]).ravel() for k in ("fgt", "fat", "blood"))
    # 0.3 then 0.3 more over the remaining 0.7: 0.3 + 0.7 * 0.3
    assert fgt[0] == pytest.approx(0.51) and fat[0] == pytest.approx(0.49)
    assert fgt[1] == 1.0 and fat[2] == 1.0
    # voxel 3: fgt 0.6 + 0.4 * 0.5 = 0.8, fat 0.2; blood 0.5 over it: blood 0.5, fgt 0.4, fat 0.1;
    # the two largest are kept and renormalised: blood 5/9, fgt 4/9
    assert blood[3] == pytest.approx(5 / 9) and fgt[3] == pytest.approx(4 / 9) and fat[3] == 0.0
    assert np.allclose(fgt + fat + blood, 1.0)
    assert mix.dominant().ravel()[:3].tolist() == [L["fgt"], L["fgt"], L["fat"]]


# ----------------------------------------------------------------------------- appearance draws
def test_look_is_drawn_on_its_own_stream(nact):
    assert nact.look == draw_look(dataclasses.replace(nact, look=None))
    assert nact.look != draw_look(phantom.draw_case(0, "NACT", 1, "NACT_02").spec)
    # rendering a spec without a look draws the same one
    a = pa.render_case(dataclasses.replace(_quiet(nact), look=None))
    b = pa.render_case(_quiet(nact))
    assert all(np.array_equal(x, y) for x, y in zip(a.phases, b.phases))


# ----------------------------------------------------------------------------- fibroglandular tissue
def test_fibroglandular_fraction_follows_density(nact):
    fractions = []
    for d in "abcd":
        spec = dataclasses.replace(nact, anatomy=dataclasses.replace(nact.anatomy, density=d))
        mix, geom = _anatomy(spec)
        breast = np.zeros(spec.shape, bool)
        breast.ravel()[geom["breasts"][spec.side][0]] = True
        breast &= (geom["dist"] > spec.anatomy.skin_mm) & (geom["delta"] < 0)
        fractions.append(float(mix.weight(L["fgt"])[breast].sum() / breast.sum()))
    assert np.all(np.diff(fractions) > 0.05), fractions
    target = np.array([0.07, 0.2, 0.4, 0.62])
    assert np.all(np.abs(np.array(fractions) - target) < 0.6 * target), fractions


def test_gland_is_textured_with_partial_volume_edges(nact, nact_quiet):
    mix, _ = _anatomy(nact)
    w = mix.weight(L["fgt"])
    mixed = (w > 0.02) & (w < 0.98)
    # the gland boundary is a band of mixed voxels: almost no pure gland voxel touches pure fat
    pure_g, pure_f = w >= 0.98, mix.weight(L["fat"]) >= 0.98
    touching = pure_g & ndimage.binary_dilation(pure_f, np.ones((3, 3, 1), bool))
    assert mixed.sum() > 0.3 * pure_g.sum()
    assert touching.sum() < 0.02 * pure_g.sum(), (touching.sum(), pure_g.sum())
    # inside the gland the clean pre-contrast signal is not piecewise constant
    lab = nact_quiet.labels
    gland = ndimage.binary_erosion(lab == L["fgt"], iterations=2)
    x = nact_quiet.phases[0][gland].astype(float)
    assert gland.sum() > 200
    assert len(np.unique(x)) > 50 and x.std() / x.mean() > 0.02
    # and neither is fat (a faint texture)
    fat = ndimage.binary_erosion(lab == L["fat"], iterations=2)
    assert len(np.unique(nact_quiet.phases[0][fat])) > 20


# ----------------------------------------------------------------------------- vessels
def test_vessel_trees_are_connected_and_branching(nact):
    rng = np.random.default_rng(3)
    segs = vessel_segments(rng, nact, nact.look, nact.side)
    starts = [tuple(np.round(s[0], 6)) for s in segs]
    ends = {tuple(np.round(s[1], 6)) for s in segs}
    roots = [p for p in starts if p not in ends]
    assert len(roots) == nact.anatomy.n_vessels                     # every other segment is attached
    counts = {}
    for p in starts:
        counts[p] = counts.get(p, 0) + 1
    assert sum(1 for c in counts.values() if c == 2) >= nact.anatomy.n_vessels   # bifurcations
    parent_r = {tuple(np.round(s[1], 6)): s[2] for s in segs}      # radius of the segment ending here
    for p, q, r in segs:                                            # Murray: children thinner
        assert r <= parent_r.get(tuple(np.round(p, 6)), r) + 1e-9
    # rasterised, one tree is one connected structure
    aff = pa.case_affine(nact)
    u, v, w = _world_coords(aff, nact.shape)
    n_first = next(i for i in range(1, len(segs)) if tuple(np.round(segs[i][0], 6)) in roots) \
        if len(roots) > 1 else len(segs)
    cov = vessel_coverage(segs[:n_first], aff, nact.shape, nact.spacing, u, v, w)
    lab, n = ndimage.label(cov > 0.05, np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel())[1:]
    assert n >= 1 and sizes.max() >= 0.95 * sizes.sum()


def test_vessels_enhance_before_and_above_parenchyma(nact, nact_quiet):
    lab, m = nact_quiet.labels, nact_quiet.mask > 0
    breast = np.zeros(lab.shape, bool)
    breast[nact_quiet.breast_box] = True
    vessel = breast & (lab == L["blood"]) & ~m
    gland = (lab == L["fgt"]) & ~ndimage.binary_dilation(m, iterations=3)
    assert vessel.sum() > 20 and gland.sum() > 200
    p0, p1 = (x.astype(float) for x in nact_quiet.phases[:2])
    assert p1[vessel].mean() > 1.2 * p1[gland].mean()
    enh_v = (p1[vessel] - p0[vessel]).mean()
    enh_g = (p1[gland] - p0[gland]).mean()
    assert enh_v > 2 * enh_g


# ----------------------------------------------------------------------------- MR physics
def test_bias_field_is_smooth_and_within_its_strength(nact):
    aff = pa.case_affine(nact)
    u, v, w = _world_coords(aff, nact.shape)
    body = np.ones(nact.shape, bool)
    b = bias_field(nact, nact.look, np.random.default_rng(1), u, v, w, body)
    lb = np.log(b.astype(np.float64))
    bound = nact.look.coil + nact.bias
    assert np.abs(lb).max() <= bound + 1e-5 and np.abs(lb).max() > 0.5 * nact.look.coil
    # smooth: second differences per mm^2 are tiny against the range (no voxel-scale structure)
    for ax, s in enumerate(nact.spacing):
        d2 = np.abs(np.diff(lb, 2, axis=ax)).max() / s ** 2
        assert d2 < 0.01 * bound, (ax, d2)
    # coil shading: brighter towards the coil loops than at the chest wall behind the breast
    stronger = dataclasses.replace(nact, look=dataclasses.replace(nact.look, coil=2 * nact.look.coil))
    b2 = bias_field(stronger, stronger.look, np.random.default_rng(1), u, v, w, body)
    assert np.log(b2).std() > np.log(b).std()


def test_background_is_rayleigh():
    spec = phantom.draw_case(0, "NACT", 0, "NACT_01").spec
    # no motion or ghosts, and the heart moved out of the field of view (no cardiac ghost)
    far = dataclasses.replace(spec.anatomy, heart_center=(-500.0,) + spec.anatomy.heart_center[1:])
    spec = dataclasses.replace(spec, motion_mm=0.0, ghost=0.0, anatomy=far)
    r = pa.render_case(spec)
    assert r.stats["heart_voxels"] == 0
    air = ~ndimage.binary_dilation(r.labels != L["air"], iterations=4)
    x = r.phases[0][air].astype(float)
    assert x.size > 5000
    assert x.mean() / x.std() == pytest.approx(RAYLEIGH_MEAN_OVER_STD, abs=0.06)
    sigma = spec.noise * spec.gain
    # int16 storage rounds to integers: undo the ties with uniform dither before the KS test
    xd = x + np.random.default_rng(0).uniform(-0.5, 0.5, x.size)
    assert stats.kstest(xd, "rayleigh", args=(0, sigma)).pvalue > 1e-3
    assert stats.kstest(xd, "rayleigh", args=(0, 1.05 * sigma)).pvalue < 1e-6    # the test has power
    # Gaussian noise of the same sigma would not pass
    assert stats.kstest(x, "norm", args=(x.mean(), x.std())).pvalue < 1e-6
    assert RAYLEIGH_MEAN_OVER_STD == pytest.approx(math.sqrt(math.pi / 2) / math.sqrt(2 - math.pi / 2))


def test_fat_suppression_darkens_fat(nact):
    on = pa.render_case(dataclasses.replace(_quiet(nact), fat_suppressed=True))
    off = pa.render_case(dataclasses.replace(_quiet(nact), fat_suppressed=False))
    fat = ndimage.binary_erosion(on.labels == L["fat"], iterations=2)
    ratio = on.phases[0][fat].mean() / off.phases[0][fat].mean()
    assert ratio == pytest.approx(nact.look.fat_residual, rel=0.1)


# ----------------------------------------------------------------------------- lesion
def test_mask_is_the_rendered_lesion(nact, nact_quiet):
    r = nact_quiet
    m = r.mask > 0
    assert np.array_equal(m, r.lesion_weight >= 0.5)
    assert np.array_equal(m, np.isin(r.labels, (L["tumour"], L["necrosis"])))
    assert r.stats["tumour_voxels"] == int(m.sum())
    # the rim is a partial-volume band, not a voxel step
    rim = (r.lesion_weight > 0.05) & (r.lesion_weight < 0.95)
    surface = m & ~ndimage.binary_erosion(m)
    assert rim.sum() > 0.5 * surface.sum()
    # and the enhancement of rim voxels lies between the lesion's and its surroundings'
    sub = r.phases[1].astype(float) - r.phases[0]
    half = (r.lesion_weight > 0.3) & (r.lesion_weight < 0.7)
    core = ndimage.binary_erosion(m, iterations=2)
    assert sub[core].mean() > sub[half].mean()


def test_non_mass_enhancement_is_clumped_and_masked():
    spec = phantom.draw_case(0, "NACT", 0, "NACT_01").spec
    spec = _quiet(dataclasses.replace(spec, look=dataclasses.replace(spec.look, nme=True)))
    r = pa.render_case(spec)
    m = r.mask > 0
    assert r.stats["nme"] and np.array_equal(m, r.lesion_weight >= 0.5)
    _, n = ndimage.label(m, np.ones((3, 3, 3), bool))
    box = m[tuple(slice(a, b + 1) for a, b in zip(np.argwhere(m).min(0), np.argwhere(m).max(0)))]
    assert n >= 2 and box.mean() < 0.4                      # clumps, not one solid mass
    mass = pa.render_case(_quiet(phantom.draw_case(0, "NACT", 0, "NACT_01").spec))
    assert not mass.stats["nme"] and ndimage.label(mass.mask)[1] <= 3
    # drawn only for unifocal lesions without satellites or necrosis, a minority of cases
    pcs = phantom.draw_cases(300, seed=5)
    nme = [p for p in pcs if p.spec.look.nme]
    assert 0 < len(nme) < 0.1 * len(pcs)
    assert all(p.spec.lesion.necrosis == 0 and p.spec.lesion.n_foci == 1 for p in nme)


def test_slice_profile_and_per_center_coil_strength():
    from data.phantom_look import COIL
    from data.phantom_mr import slice_profile
    x = np.zeros((3, 3, 5), np.float32)
    x[1, 1, 2] = 1.0
    y = slice_profile(x)
    # Gaussian of 0.3 slices truncated at 4 sigma (one slice each side): weights exp(-1 / 0.18)
    side = math.exp(-1 / (2 * 0.3 ** 2))
    assert y[1, 1, 2] == pytest.approx(1 / (1 + 2 * side), rel=1e-5)
    assert y[1, 1, 1] == pytest.approx(side / (1 + 2 * side), rel=1e-4) and y[1, 1, 0] == 0
    assert y[0].sum() == 0 and y[:, 0].sum() == 0                # in-plane untouched
    coil = {c: [phantom.draw_case(0, c, k, f"{c}_{k}").spec.look.coil for k in range(25)] for c in COIL}
    for c, vals in coil.items():
        assert COIL[c][0] <= min(vals) and max(vals) <= COIL[c][1]
    assert np.mean(coil["ISPY1"]) > np.mean(coil["DUKE"]) + 0.1


def test_glcm_features_hand_computed():
    from data.phantom_checks import glcm_features
    stripes = np.tile(np.array([0.0, 100.0]), (6, 3))         # columns alternate 0 / 100
    f = glcm_features(stripes, np.ones(stripes.shape, bool))
    # levels 0 and 31: pairs along axis 1 all (0, 31), along axis 0 all equal, equally many
    # (6 x 5 horizontal, 5 x 6 vertical): P = 1/4 at (0,0), (31,31), (0,31), (31,0)
    assert f["contrast"] == pytest.approx(31 ** 2 / 2)
    assert f["correlation"] == pytest.approx(0.0, abs=1e-12)
    assert f["entropy"] == pytest.approx(2.0)
    smooth = np.add.outer(np.arange(20.0), np.arange(20.0))  # a ramp: neighbours close, correlated
    g = glcm_features(smooth, np.ones(smooth.shape, bool))
    assert g["correlation"] > 0.95 and g["contrast"] < 5
    with pytest.raises(ValueError, match="no neighbour pairs"):
        glcm_features(smooth, np.eye(20, dtype=bool))


def test_parenchyma_texture_sees_structure_under_noise(nact, nact_quiet):
    from data.phantom_checks import parenchyma_texture
    clean, noisy = parenchyma_texture(nact_quiet), parenchyma_texture(pa.render_case(nact))
    assert all(np.isfinite(list(clean.values()))) and all(np.isfinite(list(noisy.values())))
    # without noise neighbouring gland pixels are strongly correlated (a smooth texture, not
    # constant patches: then the quantised GLCM would be a few cells and the entropy near 0)
    assert clean["correlation"] > 0.6 and clean["entropy"] > 4.0
    assert noisy["correlation"] < clean["correlation"] and noisy["contrast"] > clean["contrast"]


# ----------------------------------------------------------------------------- pulsatile flow
def test_flow_modulation_is_smooth_bounded_and_confined_to_the_pool():
    shape, spacing = (60, 50, 40), (1.0, 1.0, 2.0)
    idx = np.indices(shape).astype(float)
    r = np.sqrt(((idx[0] - 30) / 18) ** 2 + ((idx[1] - 25) / 15) ** 2 + ((idx[2] - 20) / 8) ** 2)
    mask = r <= 1
    box, f = flow_modulation(mask, spacing, np.random.default_rng(3))
    full = np.ones(shape, np.float32)
    full[box] = f
    # 1 outside the pool (its wall fades in), bounded inside
    assert np.all(full[~mask] == 1) and FLOW_CLIP[0] <= full.min() and full.max() <= FLOW_CLIP[1]
    core = ndimage.binary_erosion(mask, iterations=3)
    assert 0.6 * FLOW_DEPTH < full[core].std() < 1.4 * FLOW_DEPTH
    assert abs(full[core].mean() - 1) < 0.15
    # smooth: neighbours along x (1 mm) nearly equal against the field's spread, unlike noise
    a, b = full[:-1][core[:-1] & core[1:]], full[1:][core[:-1] & core[1:]]
    assert np.corrcoef(a, b)[0, 1] > 0.95
    # the wall: the factor moves towards 1 at the pool's boundary voxels
    wall = mask & ~ndimage.binary_erosion(mask)
    assert np.abs(full[wall] - 1).mean() < 0.8 * np.abs(full[core] - 1).mean()
    # every acquisition draws its own field; an empty pool gives nothing
    _, f2 = flow_modulation(mask, spacing, np.random.default_rng(4))
    assert np.abs(f2 - f).max() > 0.2
    assert flow_modulation(np.zeros(shape, bool), spacing, np.random.default_rng(3)) is None


def test_heart_subtraction_is_mottled_by_flow(monkeypatch):
    spec = _quiet(phantom.draw_case(0, "DUKE", 0, "DUKE_001").spec)
    r = pa.render_case(spec)
    monkeypatch.setattr(phantom_render, "flow_modulation", lambda *a, **k: None)
    still = pa.render_case(spec)                       # the same case without the flow model
    assert r.stats["heart_voxels"] > 1000
    assert np.array_equal(r.mask, still.mask) and np.array_equal(r.labels, still.labels)
    pool = ndimage.binary_erosion(r.labels == L["blood"], iterations=2) & (r.labels == L["blood"])

    def cv(x):
        sub = x.phases[1][pool].astype(float) - x.phases[0][pool].astype(float)
        return sub.std() / sub.mean()

    # without flow a pool's subtraction varies by coil shading, texture and its time course only
    assert cv(r) > 1.5 * cv(still), (cv(r), cv(still))
    # each phase has its own field: phase 1 / phase 0 is no longer nearly constant over the pool
    ratio = lambda x: x.phases[1][pool].astype(float) / np.maximum(x.phases[0][pool].astype(float), 1)
    assert ratio(r).std() / ratio(r).mean() > 2 * ratio(still).std() / ratio(still).mean()
