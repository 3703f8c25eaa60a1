"""Plain 3D U-Net: nnU-Net parameter counts, output contract, feature-map count, layer settings."""

import math

import pytest
import torch
from torch import nn

from nets.unet import build_unet, unet_activation_elements
from conftest import hooked_conv_elements


pytestmark = pytest.mark.usefixtures("one_torch_thread")

FEATURES = (32, 64, 128, 256, 320, 320)  # nnU-Net 3d_fullres default widths (32 * 2^i, capped at 320)
ISO_STRIDES = (1, 2, 2, 2, 2, 2)
ANISO_STRIDES = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
ANISO_KERNELS = ((1, 3, 3), (1, 3, 3), 3, 3, 3, 3)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_params(build, *args, **kwargs) -> int:
    """Parameter count of a network built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return n_params(build(*args, **kwargs))


def _triple(v):
    return (v, v, v) if isinstance(v, int) else tuple(v)


def plain_unet_params(cin, ncls, feats, kernels, strides, n_enc=2, n_dec=2):
    """Closed form for nnU-Net's PlainConvUNet with conv_bias=True, InstanceNorm(affine) and heads
    at every decoder stage: conv a->b, kernel k: a*b*prod(k) + b; norm: 2b; transposed conv
    (kernel = stride s): a*b*prod(s) + b; head: b*ncls + ncls."""
    def conv_norm(a, b, k):
        return a * b * math.prod(k) + b + 2 * b

    total, prev = 0, cin
    for s, f in enumerate(feats):
        k = _triple(kernels[s])
        total += conv_norm(prev, f, k) + (n_enc - 1) * conv_norm(f, f, k)
        prev = f
    for s in range(len(feats) - 1):
        f, below, k = feats[s], feats[s + 1], _triple(kernels[s])
        total += below * f * math.prod(_triple(strides[s + 1])) + f  # transposed conv
        total += conv_norm(2 * f, f, k) + (n_dec - 1) * conv_norm(f, f, k)
        total += f * ncls + ncls  # 1x1x1 head
    return total


@pytest.mark.parametrize("kernels, strides, expected", [
    # Numbers of dynamic-network-architectures 0.4.4 PlainConvUNet(1 input, 2 classes, conv_bias=True,
    # InstanceNorm3d affine, deep supervision) for the same topology, counted once and written here.
    (3, ISO_STRIDES, 31_195_594),
    (ANISO_KERNELS, ISO_STRIDES, 30_789_514),
    (3, ANISO_STRIDES, 30_777_802),
    (ANISO_KERNELS, ANISO_STRIDES, 30_371_722),
])
def test_parameter_count_matches_nnunet_plain_conv_unet(kernels, strides, expected):
    kernel_list = [kernels] * 6 if isinstance(kernels, int) else list(kernels)
    assert plain_unet_params(1, 2, FEATURES, kernel_list, strides) == expected
    assert meta_params(build_unet, 1, 2, FEATURES, kernels, strides) == expected


def test_parameter_count_formula_other_widths():
    net = build_unet(3, 4, (8, 16, 24), ((1, 3, 3), 3, 3), ((1, 1, 1), (1, 2, 2), 2),
                     n_conv_per_stage=(1, 2, 3), n_conv_per_stage_decoder=1)
    # by hand: encoder 3->8 (1x3x3) 8*3*9+8+16=240; 8->16 k3 16*8*27+48=3504, 16->16 6960;
    # 16->24 24*16*27+72=10440, 24->24 x2 2*(24*24*27+72)=31248;
    # decoder s1: tconv 24->16 (2,2,2) 24*16*8+16=3088, conv 32->16 k3 13872, head 16*4+4=68;
    # decoder s0: tconv 16->8 (1,2,2) 16*8*4+8=520, conv 16->8 (1,3,3) 16*8*9+24=1176, head 36.
    assert n_params(net) == 240 + 3504 + 6960 + 10440 + 31248 + 3088 + 13872 + 68 + 520 + 1176 + 36


def tiny_unet(ds=True):
    torch.manual_seed(0)
    return build_unet(2, 3, (4, 8, 12), ((1, 3, 3), 3, 3), ((1, 1, 1), (1, 2, 2), (2, 2, 2)),
                      deep_supervision=ds)


def test_output_contract_train_and_eval():
    net = tiny_unet()
    x = torch.randn(2, 2, 4, 8, 12)
    net.train()
    out = net(x)
    # one head per decoder stage (S-1 = 2), none at the bottleneck, full resolution first
    assert isinstance(out, list) and [tuple(o.shape) for o in out] == [(2, 3, 4, 8, 12), (2, 3, 4, 4, 6)]
    net.eval()
    with torch.no_grad():
        single = net(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 3, 4, 8, 12)
    # The eval output is the training list's first head (InstanceNorm has no running stats).
    torch.testing.assert_close(single, out[0].detach())
    net_nods = tiny_unet(ds=False).train()
    assert isinstance(net_nods(x), torch.Tensor)


def test_memory_formats_compute_the_same_network():
    torch.manual_seed(0)
    a = build_unet(2, 3, (4, 8, 12), 3, (1, 2, 2), channels_last=False)
    torch.manual_seed(0)
    b = build_unet(2, 3, (4, 8, 12), 3, (1, 2, 2), channels_last=True)
    assert next(b.parameters()).is_contiguous(memory_format=torch.channels_last_3d)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 2, 8, 8, 12)
    oa, ob = a.train()(x), b.train()(x)
    assert all(o.is_contiguous() for o in ob)
    for u, v in zip(oa, ob):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)
    assert build_unet(2, 3, (4, 8), 3, (1, 2)).channels_last == (not torch.cuda.is_available())


def test_gradients_reach_every_parameter():
    net = tiny_unet().train()
    sum(o.square().mean() for o in net(torch.randn(1, 2, 4, 8, 12))).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_layer_settings_follow_nnunet():
    net = tiny_unet()
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    assert convs and all(c.bias is not None for c in convs)
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and all(n.eps == 1e-5 and n.affine for n in norms)
    acts = [m for m in net.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == len(norms) and all(a.negative_slope == 0.01 for a in acts)
    strided = [c.stride for c in net.modules() if isinstance(c, nn.Conv3d) and c.stride != (1, 1, 1)]
    assert strided == [(1, 2, 2), (2, 2, 2)]
    assert [u.kernel_size for u in net.up] == [(1, 2, 2), (2, 2, 2)]
    assert all(b.abs().max() == 0 for m in convs for b in [m.bias])  # He init: zero bias


@pytest.mark.parametrize("ds", [True, False])
def test_activation_elements_equal_hooked_conv_outputs(ds):
    # Tolerance 0: the analytic count must equal the conv-output elements seen by hooks.
    net = tiny_unet(ds).train()
    x = torch.randn(2, 2, 4, 8, 12)
    assert net.activation_elements((4, 8, 12), batch_size=2) == hooked_conv_elements(net, x)


def test_activation_elements_match_nnunet_reference_count():
    # nnU-Net's compute_conv_feature_map_size for the 3d_fullres default at 128^3 (same package
    # and topology as the parameter counts above): 451,298,304 per sample.
    kwargs = dict(num_classes=2, features=FEATURES, strides=ISO_STRIDES)
    assert unet_activation_elements((128, 128, 128), **kwargs) == 451_298_304
    assert unet_activation_elements((128, 128, 128), batch_size=2, **kwargs) == 2 * 451_298_304


@pytest.mark.parametrize("bad", [
    dict(strides=(2, 2, 2)),
    dict(features=(8,), kernel_sizes=3, strides=1),
    dict(kernel_sizes=(3, 3)),
    dict(n_conv_per_stage_decoder=(2, 2, 2)),
    dict(kernel_sizes=(3, (3, 3), 3)),
])
def test_invalid_topology_raises(bad):
    args = dict(in_channels=1, num_classes=2, features=(4, 8, 8), kernel_sizes=3, strides=(1, 2, 2))
    args.update(bad)
    with pytest.raises(ValueError):
        build_unet(**args)


def test_input_not_divisible_by_total_stride_raises():
    net = tiny_unet().eval()
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 2, 4, 8, 10))
    with pytest.raises(ValueError, match="divisible"):
        net.activation_elements((3, 8, 12))
