"""Building blocks shared by the segmentation networks.

Two families live here:

* the plain convolution stage of nnU-Net (conv -> InstanceNorm -> LeakyReLU, repeated), as built by
  dynamic-network-architectures' ``StackedConvBlocks`` for ``PlainConvUNet``;
* the MedNeXt v1 blocks (Roy et al., "MedNeXt: Transformer-driven Scaling of ConvNets for Medical
  Image Segmentation", MICCAI 2023): a ConvNeXt-style residual block with a depthwise k^3
  convolution, and its strided (down) and transposed (up) variants, built from drop-in
  ``nn.Conv3d`` subclasses with faster CPU paths (``DepthwiseConv3d``, ``PointwiseConv3d``); on
  CUDA the depthwise convolutions may run as Triton kernels (``nets.dwconv_triton``).

All tensors are ``(B, C, X, Y, Z)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from nets.dwconv_triton import depthwise_conv3d

Triple = tuple[int, int, int]


def as_triple(value: int | Sequence[int], name: str) -> Triple:
    """An int or a length-3 sequence of positive ints as a 3-tuple; ValueError naming ``name``."""
    if isinstance(value, int):
        value = (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3 or any(v < 1 for v in value):
        raise ValueError(f"{name} must be a positive int or 3 positive ints, got {value!r}")
    return value  # type: ignore[return-value]


def he_init_(module: nn.Module, neg_slope: float = 1e-2) -> None:
    """nnU-Net's ``InitWeights_He(1e-2)``: Kaiming-normal conv weights (LeakyReLU slope), zero bias."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, a=neg_slope)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvNormAct(nn.Sequential):
    """Conv3d (same padding, bias) -> InstanceNorm3d(eps 1e-5, affine) -> LeakyReLU(0.01).

    nnU-Net v2 defaults (plans: conv_bias true, norm_op_kwargs eps 1e-5 affine, nonlin_kwargs
    inplace). ``(B, cin, X, Y, Z) -> (B, cout, X/s0, Y/s1, Z/s2)`` for spatial sizes divisible by
    the stride.
    """

    def __init__(self, cin: int, cout: int, kernel: Triple, stride: Triple):
        super().__init__(
            nn.Conv3d(cin, cout, kernel, stride, padding=tuple((k - 1) // 2 for k in kernel), bias=True),
            nn.InstanceNorm3d(cout, eps=1e-5, affine=True),
            nn.LeakyReLU(negative_slope=1e-2, inplace=True),
        )


class ConvStack(nn.Sequential):
    """``n`` ConvNormAct layers; only the first is strided (nnU-Net ``StackedConvBlocks``)."""

    def __init__(self, n: int, cin: int, cout: int, kernel: Triple, stride: Triple):
        if n < 1:
            raise ValueError(f"a stage needs at least one convolution, got n={n}")
        layers = [ConvNormAct(cin, cout, kernel, stride)]
        layers += [ConvNormAct(cout, cout, kernel, (1, 1, 1)) for _ in range(n - 1)]
        super().__init__(*layers)


class _DepthwiseConv3dFn(torch.autograd.Function):
    """Stride-1 'same' depthwise conv whose input gradient is computed as a forward depthwise conv
    with the flipped kernel. On CPU in channels_last_3d that forward kernel is ~100x faster than
    the input-gradient path of ``convolution_backward`` (measured on the 2-core AVX2 development
    machine, 16 channels, 2x32^3, 1 thread: k3 74 -> 0.7 ms, k5 290 -> 2.3 ms); the weight and
    bias gradients still come from ``convolution_backward``."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv3d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        channels = x.shape[1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv3d(grad_out, weight.flip((2, 3, 4)), None, padding=ctx.padding, groups=channels)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x, weight, [channels] if ctx.has_bias else None, [1, 1, 1], list(ctx.padding),
                [1, 1, 1], False, [0, 0, 0], channels,
                [False, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]])
        return grad_x, grad_w, grad_b, None


class DepthwiseConv3d(nn.Conv3d):
    """Depthwise k^3 convolution (groups = channels, odd k, padding k // 2, stride 1 or 2).

    Same parameters and results as ``nn.Conv3d``. On CPU (outside autocast) the stride-1 backward
    pass uses :class:`_DepthwiseConv3dFn`; on CUDA the convolution goes through
    :func:`nets.dwconv_triton.depthwise_conv3d` (Triton kernels where they were measured faster
    than cuDNN, or as ``MAMAMIA_DWCONV=aten|triton|auto`` says). Elsewhere it is plain ``nn.Conv3d``.
    """

    def __init__(self, channels: int, kernel: int, stride: int = 1):
        super().__init__(channels, channels, kernel, stride=stride, padding=kernel // 2, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cuda" and not exporting():
            return depthwise_conv3d(x, self.weight, self.bias, self.stride, self.padding)
        if (x.device.type == "cpu" and self.stride == (1, 1, 1) and torch.is_grad_enabled()
                and not torch.is_autocast_enabled("cpu")):
            return _DepthwiseConv3dFn.apply(x, self.weight, self.bias, self.padding)
        return super().forward(x)


def exporting() -> bool:
    """True while ``torch.onnx.export`` traces the network: memory layouts do not exist in an
    ONNX graph, so the layout conversions of the CPU fast paths are left out of it."""
    return torch.onnx.is_in_onnx_export()


def contiguous(x: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    """``x.contiguous(memory_format)``, or ``x`` itself while exporting to ONNX."""
    return x if exporting() else x.contiguous(memory_format=memory_format)


class PointwiseConv3d(nn.Conv3d):
    """1x1x1 convolution (same parameters as ``nn.Conv3d(cin, cout, 1)``).

    On a ``channels_last_3d`` input the channels are the innermost axis, so the convolution is a
    plain matrix product over a permuted *view*: ``F.linear`` runs it as one GEMM and returns a
    channels-last result without copies. PyTorch's own 1x1x1 path converts the format instead:
    measured on the development CPU (1 thread, 64 -> 32 channels, 48^3) forward + backward takes
    151 ms as a channels-last conv and 28 ms as a linear map (52 ms as a contiguous conv).
    """

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
            w = self.weight.view(self.out_channels, self.in_channels)
            return F.linear(x.permute(0, 2, 3, 4, 1), w, self.bias).permute(0, 4, 1, 2, 3)
        return super().forward(x)


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt V2, Woo et al. 2023), as in MedNeXt's ``grn`` option.

    ``x + gamma * x * N(x) + beta`` with ``N(x) = G / (mean_c G + 1e-6)`` and ``G`` the per-channel
    L2 norm over the spatial axes. gamma and beta start at zero, so the block starts as identity.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.linalg.vector_norm(x, ord=2, dim=(2, 3, 4), keepdim=True)
        n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
        return self.gamma * (x * n) + self.beta + x


class MedNeXtBlock(nn.Module):
    """MedNeXt block: depthwise k^3 conv -> GroupNorm(C groups) -> 1x1 expand (ratio) -> GELU
    -> [GRN] -> 1x1 project, plus a residual path.

    ``mode``:
      * ``"same"``: stride 1, ``cin == cout``, identity residual. ``(B,C,X,Y,Z) -> (B,C,X,Y,Z)``.
      * ``"down"``: stride-2 depthwise conv, residual 1x1x1 stride-2 conv. ``-> (B,cout,X/2,Y/2,Z/2)``.
      * ``"up"``: stride-2 transposed depthwise conv (padding k//2, so 2n-1 voxels per axis), then one
        zero voxel padded at the *start* of each axis to reach 2n; the residual 1x1x1 transposed
        stride-2 conv is padded the same way. This asymmetric pad is what MedNeXt v1's
        ``MedNeXtUpBlock`` does, kept so trained weights mean the same thing. ``-> (B,cout,2X,2Y,2Z)``.
    """

    def __init__(self, cin: int, cout: int, ratio: int, kernel: int, mode: str = "same", grn: bool = False):
        super().__init__()
        if mode not in ("same", "down", "up"):
            raise ValueError(f"MedNeXt block mode must be 'same', 'down' or 'up', got {mode!r}")
        if mode == "same" and cin != cout:
            raise ValueError(f"a 'same' MedNeXt block keeps its width, got cin={cin} cout={cout}")
        if kernel % 2 != 1:
            raise ValueError(f"MedNeXt kernel must be odd, got {kernel}")
        self.mode = mode
        stride = 1 if mode == "same" else 2
        conv = nn.ConvTranspose3d if mode == "up" else nn.Conv3d
        if mode == "up":
            self.dw = conv(cin, cin, kernel, stride=stride, padding=kernel // 2, groups=cin)
        else:
            self.dw = DepthwiseConv3d(cin, kernel, stride)
        self.norm = nn.GroupNorm(num_groups=cin, num_channels=cin)
        self.expand = PointwiseConv3d(cin, ratio * cin)
        self.act = nn.GELU()
        self.grn = GRN(ratio * cin) if grn else None
        self.project = PointwiseConv3d(ratio * cin, cout)
        self.res = None if mode == "same" else conv(cin, cout, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.expand(self.norm(self.dw(x))))
        if self.grn is not None:
            y = self.grn(y)
        y = self.project(y)
        if self.res is None:
            return x + y
        r = self.res(x)
        if self.mode == "up":
            # (left, right) per axis, last axis first: one voxel at the start of Z, Y and X.
            y = F.pad(y, (1, 0, 1, 0, 1, 0))
            r = F.pad(r, (1, 0, 1, 0, 1, 0))
        return y + r
