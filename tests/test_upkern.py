"""UpKern: exact copies, hand-computed trilinear kernel resizing, errors on other differences."""

import pytest
import torch

from nets.mednext import build_mednext
from nets.unet import build_unet
from nets.upkern import resize_kernel, upkern_load


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_mednext(kernel, **kw):
    args = dict(size="S", kernel=kernel, in_channels=2, num_classes=2, base_channels=4)
    args.update(kw)
    return build_mednext(**args)


def resize_1d(v):
    """3 -> 5 samples, linear, align_corners=False: output i samples source 0.6 i - 0.2, clamped
    to [0, 2]: (a, 0.6 a + 0.4 b, b, 0.4 b + 0.6 c, c)."""
    a, b, c = v
    return torch.stack([a, 0.6 * a + 0.4 * b, b, 0.4 * b + 0.6 * c, c])


def test_resize_kernel_is_separable_linear_by_hand():
    torch.manual_seed(0)
    f, g, h = torch.randn(3), torch.randn(3), torch.randn(3)
    weight = torch.einsum("i,j,k->ijk", f, g, h)[None, None]
    expected = torch.einsum("i,j,k->ijk", resize_1d(f), resize_1d(g), resize_1d(h))[None, None]
    torch.testing.assert_close(resize_kernel(weight, (5, 5, 5)), expected)
    const = torch.full((2, 1, 3, 3, 3), 0.7)
    torch.testing.assert_close(resize_kernel(const, (5, 5, 5)), torch.full((2, 1, 5, 5, 5), 0.7))


def test_mednext_k3_to_k5_copies_and_resizes_exactly():
    torch.manual_seed(0)
    source = tiny_mednext(3)
    target = tiny_mednext(5)
    src_sd = {k: v.clone() for k, v in source.state_dict().items()}
    report = upkern_load(target, src_sd)
    tgt_sd = target.state_dict()
    assert set(report.copied) | set(report.resized) == set(tgt_sd) and not report.untouched
    assert not set(report.copied) & set(report.resized)
    # exactly the depthwise kernels (blocks, down and up) are resized
    assert report.resized and all(k.endswith("dw.weight") for k in report.resized)
    n_dw = sum(1 for k in tgt_sd if k.endswith("dw.weight"))
    assert len(report.resized) == n_dw
    for key in report.copied:
        assert torch.equal(tgt_sd[key], src_sd[key]), key  # bit-exact
    for key in report.resized:
        assert tgt_sd[key].shape[2:] == (5, 5, 5)
        w = src_sd[key]
        expected = torch.einsum("oiabc,xa,yb,zc->oixyz", w, *[RESIZE_MATRIX] * 3)
        torch.testing.assert_close(tgt_sd[key], expected, rtol=1e-5, atol=1e-6)
    x = torch.randn(1, 2, 32, 16, 16)
    with torch.no_grad():
        assert torch.isfinite(target.eval()(x)).all()


# Rows: output taps, columns: input taps (resize_1d as a matrix).
RESIZE_MATRIX = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.0, 1.0, 0.0], [0.0, 0.4, 0.6], [0.0, 0.0, 1.0]])


def test_equal_kernels_copy_everything():
    source, target = tiny_mednext(3), tiny_mednext(3)
    report = upkern_load(target, source.state_dict())
    assert not report.resized and len(report.copied) == len(source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_unet_kernel_change_resizes_only_convs_with_other_kernels():
    source = build_unet(1, 2, (4, 8), (3, 3), (1, 2))
    target = build_unet(1, 2, (4, 8), ((1, 3, 3), 5), (1, 2))
    report = upkern_load(target, source.state_dict())
    assert set(report.resized) == {"encoder.0.0.0.weight", "encoder.0.1.0.weight", "encoder.1.0.0.weight",
                                   "encoder.1.1.0.weight", "decoder.0.0.0.weight", "decoder.0.1.0.weight"}
    # 3 -> 1 on the first axis with align_corners=False keeps the centre tap
    torch.testing.assert_close(target.state_dict()["encoder.0.0.0.weight"],
                               source.state_dict()["encoder.0.0.0.weight"][:, :, 1:2])


def test_channel_mismatch_raises_naming_key():
    target = tiny_mednext(5)
    with pytest.raises(ValueError, match="stem.weight"):
        upkern_load(target, tiny_mednext(3, base_channels=8).state_dict())
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="heads.0.weight"):
        upkern_load(target, tiny_mednext(3, num_classes=3).state_dict())
    # nothing written when loading fails
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_missing_and_extra_keys_raise_naming_key():
    with pytest.raises(ValueError, match=r"grn\.gamma"):
        upkern_load(tiny_mednext(5, grn=True), tiny_mednext(3).state_dict())
    with pytest.raises(ValueError, match=r"grn\.gamma"):
        upkern_load(tiny_mednext(5), tiny_mednext(3, grn=True).state_dict())


def test_skip_prefix_leaves_heads_untouched():
    target = tiny_mednext(5, num_classes=3)
    heads_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("heads.")}
    report = upkern_load(target, tiny_mednext(3, num_classes=2).state_dict(), skip=("heads.",))
    assert set(report.untouched) == set(heads_before)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in heads_before.items())
