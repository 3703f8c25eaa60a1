import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data import augment
from data.augment import AugmentProfile, Params, apply, draw_params


def _batch(B=2, C=2, region=(20, 20, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn((B, C, *region), generator=g)
    label = (torch.rand((B, 1, *region), generator=g) > 0.7).to(torch.uint8)
    return image, label


def _crop(x, out):
    return x[(slice(None), slice(None)) + tuple(slice((i - o) // 2, (i - o) // 2 + o)
                                                for i, o in zip(x.shape[2:], out))]


@pytest.mark.parametrize("region, out", [((20, 20, 20), (12, 12, 12)), ((21, 18, 15), (12, 11, 10)),
                                         ((12, 12, 12), (12, 12, 12))])
def test_identity_params_give_the_exact_centre_crop(region, out):
    image, label = _batch(region=region)
    x, y = apply(image, label, Params.identity(2, 2), out)
    assert torch.equal(x, _crop(image, out)) and torch.equal(y, _crop(label, out))
    assert y.dtype == torch.uint8


def test_patch_larger_than_region_is_zero_padded():
    image, label = _batch(region=(8, 8, 8))
    x, _ = apply(image, label, Params.identity(2, 2), (12, 12, 12))
    assert torch.equal(x[:, :, 2:10, 2:10, 2:10], image)
    x[:, :, 2:10, 2:10, 2:10] = 0
    assert x.abs().sum() == 0


def test_none_profile_draws_identity():
    g = torch.Generator().manual_seed(0)
    image, label = _batch()
    for _ in range(5):
        p = draw_params(2, "none", g, num_channels=2)
        x, y = apply(image, label, p, (12, 12, 12))
        assert torch.equal(x, _crop(image, (12,) * 3)) and torch.equal(y, _crop(label, (12,) * 3))


@pytest.mark.parametrize("axis, dims", [(2, (3, 2)), (0, (4, 3)), (1, (2, 4))])
def test_rotation_by_90_degrees_equals_rot90(axis, dims):
    # about z: q = Rz p = (-p_y, p_x, p_z), so out[i, j] = in[n-1-j, i] = rot90 from Y towards X
    image, label = _batch(B=1, region=(9, 9, 9))
    rot = torch.zeros(1, 3)
    rot[0, axis] = math.pi / 2
    x, y = apply(image, label, Params.identity(1, 2).replace(rotation=rot), (9, 9, 9))
    torch.testing.assert_close(x, torch.rot90(image, 1, dims), atol=1e-4, rtol=0)
    assert torch.equal(y, torch.rot90(label, 1, dims))


def test_half_turn_and_mirror_on_the_resampling_path():
    image, label = _batch(B=1, region=(9, 9, 9))
    rot = torch.tensor([[0.0, 0.0, math.pi]])               # Rz(pi) = diag(-1, -1, 1)
    p = Params.identity(1, 2).replace(rotation=rot)
    torch.testing.assert_close(apply(image, label, p, (9,) * 3)[0], image.flip((2, 3)), atol=1e-4, rtol=0)
    p = p.replace(mirror=torch.tensor([[True, False, False]]))   # diag(-1,-1,1) diag(-1,1,1)
    torch.testing.assert_close(apply(image, label, p, (9,) * 3)[0], image.flip((3,)), atol=1e-4, rtol=0)


def test_mirror_equals_flip():
    image, label = _batch()
    mirror = torch.tensor([[True, False, True], [False, True, False]])
    x, y = apply(image, label, Params.identity(2, 2).replace(mirror=mirror), (12, 12, 12))
    c, cl = _crop(image, (12,) * 3), _crop(label, (12,) * 3)
    assert torch.equal(x[0], c[0].flip((1, 3))) and torch.equal(x[1], c[1].flip((2,)))
    assert torch.equal(y[0], cl[0].flip((1, 3))) and torch.equal(y[1], cl[1].flip((2,)))


def test_scaling_of_a_linear_ramp():
    # trilinear interpolation reproduces a linear function: out = c_in + s * (i - (n - 1) / 2)
    region, out, s = (30, 30, 30), (16, 16, 16), 1.25
    ramp = torch.arange(30.0).view(1, 1, 30, 1, 1).expand(1, 1, *region).contiguous()
    p = Params.identity(1, 1).replace(scale=torch.tensor([s]))
    x, _ = apply(ramp, None, p, out)
    centre = (30 - 16) // 2 + 7.5
    expected = centre + s * (torch.arange(16.0) - 7.5)
    torch.testing.assert_close(x[0, 0, :, 5, 9], expected, atol=1e-3, rtol=0)
    assert expected[0] < (30 - 16) // 2                   # it really reads beyond the plain crop


def test_label_stays_binary_under_random_augmentation():
    g = torch.Generator().manual_seed(3)
    image, label = _batch(B=4, region=(24, 24, 24))
    profile = AugmentProfile(p_rotation=1.0, p_scaling=1.0, p_elastic=0.5)
    for mode in ("linear", "nearest"):
        for _ in range(3):
            _, y = apply(image, label, draw_params(4, profile, g, num_channels=2), (16,) * 3, label_mode=mode)
            assert y.dtype == torch.uint8 and set(torch.unique(y).tolist()) <= {0, 1}
            assert y.sum() > 0


def test_noise_std_and_shared_field():
    x = torch.zeros(2, 3, 32, 32, 32)
    out = augment.add_noise(x, torch.tensor([0.1, 0.05]), seed=11)
    assert abs(out[0].std().item() - 0.1) < 0.002 and abs(out[1].std().item() - 0.05) < 0.001
    assert torch.equal(out[0, 0], out[0, 2])               # one field for all channels
    assert torch.equal(out, augment.add_noise(x, torch.tensor([0.1, 0.05]), seed=11))


def test_brightness_is_an_exact_product():
    image, _ = _batch()
    f = torch.tensor([[0.8, 1.2], [1.0, 0.75]])
    out = augment.multiply_brightness(image, f)
    assert torch.equal(out, image * f.view(2, 2, 1, 1, 1))


def test_contrast_keeps_mean_and_range():
    image, _ = _batch()
    out = augment.adjust_contrast(image, torch.full((2, 2), 0.8))
    mean = image.mean((2, 3, 4), keepdim=True)
    torch.testing.assert_close(out.mean((2, 3, 4), keepdim=True), mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(out - mean, 0.8 * (image - mean), atol=1e-5, rtol=0)
    wide = augment.adjust_contrast(image, torch.full((2, 2), 1.25))
    assert (wide.amax((2, 3, 4)) <= image.amax((2, 3, 4))).all()
    assert (wide.amin((2, 3, 4)) >= image.amin((2, 3, 4))).all()


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_formula_by_hand(invert):
    image, _ = _batch(B=1, C=2, region=(6, 5, 4))
    gamma = torch.tensor([[0.7, 1.4]])
    out = augment.adjust_gamma(image, gamma, invert=invert)
    for c in range(2):
        v = image[0, c].double().numpy() * (-1 if invert else 1)
        m, s = v.mean(), v.std(ddof=1)
        lo, rng = v.min(), v.max() - v.min()
        w = ((v - lo) / rng) ** float(gamma[0, c]) * rng + lo
        w = (w - w.mean()) / w.std(ddof=1) * s + m
        w = -w if invert else w
        np.testing.assert_allclose(out[0, c].numpy(), w, atol=2e-5)


def test_low_resolution_identity_and_hand_values():
    image, _ = _batch(region=(10, 9, 8))
    assert torch.equal(augment.simulate_low_resolution(image, torch.ones(2, 2)), image)
    # ramp 0..7 along X at zoom 0.5: nearest-exact keeps x[1], x[3], x[5], x[7]; trilinear back up
    ramp = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 1, 8, 8, 8).contiguous()
    out = augment.simulate_low_resolution(ramp, torch.tensor([[0.5]]))
    expected = torch.tensor([1, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7])
    torch.testing.assert_close(out[0, 0, :, 3, 3], expected)


def test_blur_of_an_impulse_is_the_truncated_gaussian():
    x = torch.zeros(1, 2, 15, 15, 15)
    x[0, :, 7, 7, 7] = 1.0
    sigma = torch.tensor([[[0.5, 1.0, 0.8], [0.0, 0.0, 0.0]]])
    out = augment.gaussian_blur(x, sigma)
    # sigma 1: round-to-odd(6.5) = 7 taps; sigma 0.5: round-to-odd(3.5) = 3 taps (half to even)
    k = np.arange(-3, 4)
    g = np.exp(-0.5 * k ** 2)
    g /= g.sum()
    line = out[0, 0, 7, 4:11, 7].numpy()
    h = np.exp(-0.5 * (np.array([-1, 0, 1]) / 0.5) ** 2)
    h /= h.sum()
    k8 = np.arange(-2, 3)   # sigma 0.8: round-to-odd(5.3) = 5 taps
    z = np.exp(-0.5 * (k8 / 0.8) ** 2)
    z /= z.sum()
    np.testing.assert_allclose(line, g * h[1] * z[2], rtol=1e-5)
    assert out[0, 0, 5, 7, 7] == 0 and abs(out[0, 0].sum().item() - 1) < 1e-5
    assert torch.equal(out[0, 1], x[0, 1])


def test_motion_shifts_one_channel_and_not_the_label():
    image, label = _batch(B=1, region=(20, 20, 20))
    shift = torch.zeros(1, 2, 3)
    shift[0, 1] = torch.tensor([2.0, -1.0, 0.0])
    x, y = apply(image, label, Params.identity(1, 2).replace(motion_shift=shift), (12, 12, 12))
    torch.testing.assert_close(x[:, 0], image[:, 0, 4:16, 4:16, 4:16], atol=1e-4, rtol=0)
    torch.testing.assert_close(x[:, 1], image[:, 1, 6:18, 3:15, 4:16], atol=1e-4, rtol=0)
    assert torch.equal(y, _crop(label, (12,) * 3))


def test_bias_field_and_ghosting_by_hand():
    image, _ = _batch(B=1, C=1, region=(8, 6, 4))
    n = len(augment._monomials(3))
    torch.testing.assert_close(augment.bias_field(image, torch.zeros(1, n), 3), image)
    coeffs = torch.zeros(1, n)
    coeffs[0, augment._monomials(3).index((1, 0, 0))] = 0.4            # exp(0.4 x), x in [-1, 1]
    lo = image.min()
    field = torch.exp(0.4 * torch.linspace(-1, 1, 8)).view(8, 1, 1)
    torch.testing.assert_close(augment.bias_field(image, coeffs, 3)[0, 0], (image[0, 0] - lo) * field + lo)
    out = augment.ghosting(image, torch.tensor([0]), torch.tensor([2]), torch.tensor([[0.1]]))
    torch.testing.assert_close(out, image + 0.1 * torch.roll(image - lo, 4, dims=2))


def test_draw_params_frequencies_and_determinism():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    p, q = draw_params(4000, "nnunet", g1, num_channels=2), draw_params(4000, "nnunet", g2, num_channels=2)
    assert all(torch.equal(getattr(p, f), getattr(q, f)) for f in ("rotation", "scale", "gamma", "blur_sigma"))
    rate = lambda m, target: abs(m.float().mean().item() - target) < 0.03  # noqa: E731
    assert rate((p.rotation != 0).any(1), 0.2) and rate(p.scale != 1, 0.2) and rate(p.mirror, 0.5)
    assert rate(p.noise_std != 0, 0.1) and rate((p.blur_sigma != 0).any(-1).any(-1), 0.2 * (1 - 0.5 ** 2))
    assert rate((p.lowres_zoom != 1).any(1), 0.25 * (1 - 0.5 ** 2)) and rate((p.gamma != 1).any(1), 0.3)
    assert p.rotation.abs().max() <= math.radians(30) and p.scale.min() >= 0.7 and p.scale.max() <= 1.4
    b = p.brightness[p.brightness != 1]                                    # BGContrast: half below 1
    assert abs((b < 1).float().mean().item() - 0.5) < 0.05 and b.min() >= 0.75 and b.max() <= 1.25
    assert (p.motion_shift == 0).all() and (p.bias == 0).all() and (p.elastic == 0).all()
    m = draw_params(400, "mri", g1, num_channels=3)
    assert (m.motion_shift[:, 0] == 0).all() and (m.motion_shift != 0).any() and (m.bias != 0).any()


def test_mri_profile_runs_and_profiles_validate():
    g = torch.Generator().manual_seed(0)
    image, label = _batch(B=3, C=3, region=(20, 20, 20))
    prof = AugmentProfile.from_dict({**augment.PROFILES["mri"].__dict__, "p_motion": 1.0, "p_ghosting": 1.0,
                                     "p_bias": 1.0})
    x, y = apply(image, label, draw_params(3, prof, g, num_channels=3), (12, 12, 12))
    assert x.shape == (3, 3, 12, 12, 12) and torch.isfinite(x).all() and y.shape == (3, 1, 12, 12, 12)
    with pytest.raises(ValueError, match="unknown key 'p_rotaton'"):
        AugmentProfile.from_dict({**prof.to_dict(), "p_rotaton": 0.1})
    with pytest.raises(ValueError, match="missing required key 'p_rotation'"):
        AugmentProfile.from_dict({k: v for k, v in prof.to_dict().items() if k != "p_rotation"})
    with pytest.raises(ValueError, match="profile"):
        draw_params(2, "nnUNet", g, num_channels=1)
    with pytest.raises(ValueError, match="params drawn"):
        apply(image, label, Params.identity(2, 3), (12, 12, 12))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(1)
    image, label = _batch(B=4, C=3, region=(26, 26, 26))
    prof = AugmentProfile(p_rotation=0.5, p_scaling=0.5, p_blur=1.0, p_lowres=1.0, p_gamma=1.0, p_motion=0.5)
    p = draw_params(4, prof, g, num_channels=3)
    x, y = apply(image, label, p, (16,) * 3)
    xc, yc = apply(image.cuda(), label.cuda(), p, (16,) * 3)
    assert xc.is_cuda and yc.is_cuda
    # noise fields come from different generators per device; compare the rest
    same = p.noise_std == 0
    torch.testing.assert_close(xc.cpu()[same], x[same], atol=1e-3, rtol=1e-3)
    assert (yc.cpu() != y).float().mean() < 1e-3


def test_low_resolution_matches_interpolate_reference():
    image, _ = _batch(region=(13, 11, 9))
    zoom = torch.tensor([[0.6, 1.0], [0.5, 0.77]])
    out = augment.simulate_low_resolution(image, zoom)
    for b in range(2):
        for c in range(2):
            if zoom[b, c] == 1:
                continue
            size = [round(s * float(zoom[b, c])) for s in image.shape[2:]]
            low = F.interpolate(image[b, c][None, None], size, mode="nearest-exact")
            torch.testing.assert_close(out[b, c], F.interpolate(low, image.shape[2:], mode="trilinear")[0, 0])


def test_seed_a_profile_deforms_elastically():
    """nnU-Net's profile never deforms; seed A's does for about 20 % of the samples."""
    g = torch.Generator().manual_seed(0)
    plain = draw_params(200, "nnunet", g, num_channels=3)
    seed_a = draw_params(200, "seed_a", torch.Generator().manual_seed(0), num_channels=3)
    moved = seed_a.elastic.flatten(1).abs().amax(1) > 0
    assert not (plain.elastic != 0).any()
    assert 0.1 < moved.float().mean() < 0.3
    assert augment.PROFILES["seed_a"].p_elastic == 0.2
    assert {k: v for k, v in augment.PROFILES["seed_a"].to_dict().items() if k != "p_elastic"} == \
        {k: v for k, v in augment.PROFILES["nnunet"].to_dict().items() if k != "p_elastic"}


def test_seed_a_elastic_moves_voxels_by_the_drawn_displacement():
    """With p_elastic = 1 every sample gets a displacement field, and apply reads input voxel
    p + e(p): on a ramp along axis a (value = voxel index) the output is the plain centre crop
    plus e_a, exactly (trilinear interpolation reproduces a linear image). With p_elastic = 0
    the same draw leaves the crop untouched."""
    region, out = (24, 24, 24), (12, 12, 12)
    idx = torch.arange(24.0)
    ramps = torch.stack([idx.view(24, 1, 1).expand(region), idx.view(1, 24, 1).expand(region),
                         idx.view(1, 1, 24).expand(region)])[None].repeat(4, 1, 1, 1, 1).contiguous()
    # only elastic, so the other transforms cannot produce the difference
    others_off = [f"{f.name}=0" for f in dataclasses.fields(AugmentProfile)
                  if f.name.startswith("p_") and f.name != "p_elastic"]
    prof = augment.with_overrides("seed_a", [*others_off, "p_elastic=1"])
    p = draw_params(4, prof, torch.Generator().manual_seed(3), num_channels=3)
    assert (p.elastic.flatten(1).abs().amax(1) > 0).all()
    x, _ = apply(ramps, None, p, out)
    crop = _crop(ramps, out)
    field = F.interpolate(p.elastic, size=out, mode="trilinear", align_corners=True)
    torch.testing.assert_close(x - crop, field, atol=1e-4, rtol=0)
    assert float((x - crop).abs().amax()) > 0.5                       # voxels really moved
    still, _ = apply(ramps, None, p.replace(elastic=torch.zeros_like(p.elastic)), out)
    assert torch.equal(still, crop)


def test_with_overrides_parses_from_the_field_types_and_validates():
    prof = augment.with_overrides("seed_a", ["p_elastic=1", "scaling=0.8, 1.2", "mirror_axes=0,1",
                                             "elastic_grid=7"])
    assert (prof.p_elastic, prof.scaling, prof.mirror_axes, prof.elastic_grid) == (1.0, (0.8, 1.2), (0, 1), 7)
    assert type(prof.p_elastic) is float and type(prof.elastic_grid) is int
    assert prof.p_rotation == augment.PROFILES["seed_a"].p_rotation           # the rest untouched
    assert augment.with_overrides(prof, []) == prof
    assert augment.PROFILES["seed_a"].p_elastic == 0.2                        # registry not mutated
    with pytest.raises(ValueError, match=r"unknown field 'p_elastc'.*p_elastic, elastic_magnitude"):
        augment.with_overrides("nnunet", ["p_elastc=0.2"])
    with pytest.raises(ValueError, match="p_elastic: cannot parse 'often'"):
        augment.with_overrides("nnunet", ["p_elastic=often"])
    with pytest.raises(ValueError, match="elastic_grid: cannot parse '2.5'"):
        augment.with_overrides("nnunet", ["elastic_grid=2.5"])
    with pytest.raises(ValueError, match="scaling: expected 2 values"):
        augment.with_overrides("nnunet", ["scaling=0.8"])
    with pytest.raises(ValueError, match="p_elastic is a probability, got 1.5"):
        augment.with_overrides("nnunet", ["p_elastic=1.5"])
    with pytest.raises(ValueError, match=r"scaling is a range \(low, high\)"):
        augment.with_overrides("nnunet", ["scaling=1.2,0.8"])
    with pytest.raises(ValueError, match="mirror_axes must name spatial axes"):
        augment.with_overrides("nnunet", ["mirror_axes=0,3"])
    with pytest.raises(ValueError, match="not of the form key=value"):
        augment.with_overrides("nnunet", ["p_elastic"])
    with pytest.raises(ValueError, match="unknown augmentation profile"):
        augment.with_overrides("seed_b", [])
    with pytest.raises(TypeError):
        augment.with_overrides("nnunet", "p_elastic=0.2")
