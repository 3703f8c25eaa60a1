"""Anatomical structure of the synthetic breast DCE-MRI phantom (generator version 4 and later):
axillary lymph nodes, curvilinear fibroglandular tissue, irregular ribs with costal cartilage, the heart
behind the chest wall at both scales, and the appearance draws in the latents
(data/phantom_axilla.py, phantom_gland.py, phantom_body.py, phantom_look.py, phantom_cases.py).

Single cases are drawn and rendered (or only their anatomy painted); no dataset is generated.
"""
import dataclasses

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import skeletonize

from data import phantom
from data import phantom_anatomy as pa
from data.phantom_axilla import node_geometry
from data.phantom_body import axilla_pad, heart_front, paint_body, rib_layout
from data.phantom_pv import TissueMix
from data.phantom_render import _world_coords
from test_phantom_look import _anatomy

L = pa.LABELS


def _quiet(spec):
    return dataclasses.replace(spec, noise=0.0, motion_mm=0.0, ghost=0.0)


@pytest.fixture(scope="module")
def ispy1():
    """A unilateral sagittal case whose field of view reaches the axilla, rendered without noise."""
    pc = phantom.draw_case(0, "ISPY1", 0, "ISPY1_1001")
    return pc, pa.render_case(_quiet(pc.spec))


# ----------------------------------------------------------------------------- axillary nodes
def test_node_geometry_lies_in_the_axillary_fat():
    pcs = phantom.draw_cases(60, seed=2)
    theta = np.linspace(0, 2 * np.pi, 20000)
    n_nodes = 0
    for pc in pcs:
        an, look = pc.spec.anatomy, pc.spec.look
        for nd in node_geometry(pc.spec, look):
            n_nodes += 1
            (cu, cv, cw), r = nd["centre"], nd["radii"]
            side = nd["side"]
            # lateral to the breast centre by more than half a breast radius, on its own side
            assert side * cu > an.breast_x + 0.5 * an.breast_r[0]
            # superior half of the breast level (the axilla), not far below it
            assert an.breast_w - 0.2 * an.breast_r[2] < cw < an.breast_w + an.breast_r[2]
            # outside the rib cage (thorax ellipse, sag removed) by more than the node's short radius
            vv = cv + look.chest_curve * (cw - an.breast_w) ** 2
            assert np.hypot(cu / an.thorax_a, (vv + an.thorax_b) / an.thorax_b) > 1
            eu, ev = an.thorax_a * np.cos(theta), an.thorax_b * (np.sin(theta) - 1)
            assert np.hypot(eu - cu, ev - vv).min() > r[1]
            # inside the axillary fat pad
            (pu, pv, pw), pr = axilla_pad(side, an)
            assert ((cu - pu) / pr[0]) ** 2 + ((vv - pv) / pr[1]) ** 2 + ((cw - pw) / pr[2]) ** 2 < 1
            # small ovoid: long semi-axis 2.5-5 mm x body scale, short/long 0.45-0.7
            body = an.thorax_a / 160.0
            assert 2.5 * body <= r[0] <= 5 * body and 0.45 <= r[1] / r[0] <= 0.7
        assert 4 <= len(look.nodes) <= 10 and pc.latent["n_nodes"] == len(look.nodes)
    assert n_nodes > 200


def test_nodes_render_lateral_enhance_and_stay_out_of_the_mask(ispy1):
    pc, r = ispy1
    spec, an = pc.spec, pc.spec.anatomy
    node = r.labels == L["node"]
    assert r.stats["nodes_in_fov"] >= 1 and r.stats["node_voxels"] == int(node.sum()) > 10
    _, n_comp = ndimage.label(node, np.ones((3, 3, 3), bool))
    assert n_comp <= r.stats["nodes_in_fov"] + 1                     # a hilum may split one
    u, v, w = _world_coords(r.affine, spec.shape)
    # only in the axillary region: lateral to the breast, on the scanned side, at/above its level
    assert np.all(spec.side * u[node] > an.breast_x + 0.5 * an.breast_r[0])
    assert np.all(w[node] > an.breast_w - 0.4 * an.breast_r[2])
    # not in the expert mask, and the mask is still exactly the lesion
    assert not (r.mask.astype(bool) & node).any()
    assert np.array_equal(r.mask > 0, r.lesion_weight >= 0.5)
    # nodes enhance: more than the parenchyma (this case has moderate background enhancement),
    # less than blood, clearly above fat
    sub = r.phases[1].astype(float) - r.phases[0]
    gland = r.labels == L["fgt"]
    blood = r.labels == L["blood"]
    fat = ndimage.binary_erosion(r.labels == L["fat"], iterations=2)
    assert sub[gland].mean() * 1.15 < sub[node].mean() < sub[blood].mean()
    assert sub[node].mean() > sub[fat].mean() + 150
    # a fatty hilum: fat enclosed by node cortex in some node (hilum drawn for most nodes)
    assert any(nd["hilum"] for nd in node_geometry(spec, spec.look))
    near = ndimage.binary_dilation(node, iterations=2) & ~node
    assert (r.labels[near] == L["fat"]).any()


def test_nodes_only_where_the_field_of_view_reaches_the_axilla():
    # a small bilateral DUKE case is cropped to 120 mm around the midline: the axillae lie outside
    pc = phantom.draw_case(0, "DUKE", 0, "DUKE_001")
    r = pa.render_case(_quiet(pc.spec))
    assert pc.latent["n_nodes"] >= 4
    lateral = max(abs(nd["centre"][0]) - nd["radii"][0] for nd in node_geometry(pc.spec, pc.spec.look))
    u, _, _ = _world_coords(r.affine, pc.spec.shape)
    assert np.abs(u).max() < lateral                          # the field of view ends before the nodes
    assert r.stats["nodes_in_fov"] == 0 and not (r.labels == L["node"]).any()


def test_look_values_are_in_the_latents(ispy1):
    pc, r = ispy1
    look, lat = pc.spec.look, pc.latent
    assert lat["coil"] == pytest.approx(look.coil, abs=1e-4)
    assert lat["fat_residual"] == pytest.approx(look.fat_residual, abs=1e-4)
    assert lat["gland_detail"] == pytest.approx(look.gland_detail, abs=1e-4)
    assert (lat["vessel_depth"], lat["ducts"], lat["nme"], lat["n_nodes"]) == \
        (look.vessel_depth, look.ducts, look.nme, len(look.nodes))
    rec = phantom.case_record(pc, r)["phantom_latent"]
    assert {"coil", "coil_depth", "fat_residual", "nipple_mm", "ducts", "chest_curve", "vessel_depth",
            "gland_detail", "nme", "n_nodes", "nodes_in_fov", "node_voxels"} <= set(rec)
    assert rec["nodes_in_fov"] == r.stats["nodes_in_fov"] and phantom.PHANTOM_VERSION == 5


# ----------------------------------------------------------------------------- fibroglandular tissue
def _gland(spec):
    return _anatomy(spec)[0].weight(L["fgt"]) > 0.5


def _skeleton_per_area(mask):
    """In-plane skeleton pixels per gland pixel over slices with >= 50 gland pixels: ~2/width for
    strands of a few pixels' width, low for round blobs (a disc of radius R: ~1/R)."""
    sk = area = 0
    for z in range(mask.shape[2]):
        m = mask[:, :, z]
        if m.sum() >= 50:
            sk += int(skeletonize(m).sum())
            area += int(m.sum())
    return sk / area


def test_skeleton_per_area_tells_strands_from_blobs():
    yy, xx = np.mgrid[:80, :80]
    blobs = np.zeros((80, 80, 1), bool)
    for cy, cx in ((20, 20), (20, 60), (60, 20), (60, 60)):
        blobs[..., 0] |= (yy - cy) ** 2 + (xx - cx) ** 2 < 12 ** 2
    strands = np.zeros((80, 80, 1), bool)
    for x0 in range(4, 80, 10):
        strands[:, x0:x0 + 3, 0] = True                      # lines 3 pixels wide
    assert _skeleton_per_area(blobs) < 0.1 < 0.25 < _skeleton_per_area(strands)


def test_gland_is_curvilinear():
    # density b (scattered), four centers: thin strands along the ducts give a long skeleton per
    # gland area; the generator version 3 (smoothed random blobs) gave 0.18-0.24 on these cases
    vals = []
    for c, k in (("NACT", 0), ("DUKE", 0), ("ISPY2", 0), ("ISPY1", 0)):
        spec = phantom.draw_case(0, c, k, f"{c}_{k}").spec
        spec = dataclasses.replace(spec, anatomy=dataclasses.replace(spec.anatomy, density="b"))
        vals.append(_skeleton_per_area(_gland(spec)))
    assert np.mean(vals) > 0.255 and min(vals) > 0.23, vals


# ----------------------------------------------------------------------------- ribs
def test_rib_layout_varies_per_rib():
    for seed in range(5):
        pc = phantom.draw_case(seed, "DUKE", 0, "DUKE_001")
        an = pc.spec.anatomy
        ribs = rib_layout(np.random.default_rng(seed), an)
        t = np.array([r["t"] for r in ribs])
        pitch = np.diff(t)
        assert len(ribs) >= 12 and np.all(pitch > 0)
        assert pitch.std() / pitch.mean() > 0.07                  # uneven spacing
        h = np.array([r["half_si"] for r in ribs])
        assert h.std() / h.mean() > 0.07                          # uneven thickness
        assert np.all(2 * h[:-1] / pitch < 0.9)                    # neighbours never merge at the sternum
        assert np.std([r["curve"] for r in ribs]) > 0 and np.std([r["slope"] for r in ribs]) > 0
        cart = np.array([r["cartilage_u"] for r in ribs]) / an.thorax_a
        assert np.all((cart >= 0.1) & (cart <= 0.25)) and cart.std() > 0


def test_rendered_ribs_are_uneven_with_costal_cartilage(ispy1):
    pc, r = ispy1
    # sagittal slice through the middle: rib sections along superior-inferior are not periodic
    lab = r.labels[:, :, r.labels.shape[2] // 2]            # sagittal: (antero-posterior, inferior)
    ribs, n = ndimage.label(lab == L["marrow"])
    sizes = ndimage.sum(np.ones(lab.shape), ribs, range(1, n + 1))
    keep = [i + 1 for i, s in enumerate(sizes) if s >= 10]
    cen = np.array(ndimage.center_of_mass(np.ones(lab.shape), ribs, keep))
    along = np.sort(cen[:, 1]) * pc.spec.spacing[1]
    gaps = np.diff(along)
    assert len(gaps) >= 3 and gaps.std() / gaps.mean() > 0.05, gaps
    # costal cartilage beside the sternum only (axial bilateral case through the midline)
    duke = phantom.draw_case(0, "DUKE", 0, "DUKE_001")
    an = duke.spec.anatomy
    aff = pa.case_affine(duke.spec)
    u, v, w = _world_coords(aff, duke.spec.shape)
    mix = TissueMix(duke.spec.shape)
    paint_body(duke.spec, duke.spec.look, np.random.default_rng(0), u, v, w, mix)
    dom = mix.dominant()
    cart = dom == L["cartilage"]
    assert cart.sum() > 50
    assert np.abs(u[cart]).max() <= 0.25 * an.thorax_a + 2 * max(duke.spec.spacing)
    bone = (dom == L["marrow"]) & (np.abs(u) > 0.3 * an.thorax_a)
    assert bone.sum() > 50                                    # ribs are bone laterally


# ----------------------------------------------------------------------------- heart
@pytest.mark.parametrize("scale", ["small", "full"])
def test_heart_lies_behind_the_chest_wall(scale):
    s = phantom.ANAT_SCALE[scale]
    gaps = []
    for k in range(8):
        pc = phantom.draw_case(1, "DUKE", k, f"DUKE_{k:03d}", scale)
        an = pc.spec.anatomy
        # a coarse axial grid (2 mm) over the whole heart and great vessels
        hu, _, hw = an.heart_center
        ext = 1.6 * max(an.heart_r) + 10
        shape = (int(2 * ext / 2), int(2 * an.thorax_b / 2), int(2.2 * ext / 2))
        spec = dataclasses.replace(pc.spec, view="axial", spacing=(2.0, 2.0, 2.0), shape=shape,
                                   tilt_deg=(0.0, 0.0, 0.0), fov_center=(hu, -an.thorax_b, hw + 0.1 * ext))
        aff = pa.case_affine(spec)
        u, v, w = _world_coords(aff, shape)
        mix = TissueMix(shape)
        geom = paint_body(spec, spec.look, np.random.default_rng(0), u, v, w, mix)
        dom = mix.dominant()
        heart = geom["heart"] | (dom == L["myocardium"])
        # the anterior half of the rib cage (sag removed): the heart's front and the great vessels
        heart &= v + spec.look.chest_curve * (w - an.breast_w) ** 2 > -an.thorax_b
        assert heart.sum() > 20
        gap = geom["delta"][heart] - geom["wall"][heart]
        assert gap.min() > 0, (scale, k, gap.min())              # never in front of the inner chest wall
        gaps.append(float(gap.min()))
    # and close behind it: the right ventricle 5-30 mm (scaled) behind the chest wall, plus its
    # pericardial fat; not deep in the chest
    assert max(gaps) < 50 * s, gaps
    assert heart_front((55.0, 41.0, 50.0)) > 41.0               # the tilted heart reaches past r_ap
