"""nnU-Net's plain 3D U-Net (``PlainConvUNet`` of dynamic-network-architectures), from scratch.

Topology (all from the plan): ``features[s]``, ``kernel_sizes[s]`` and ``strides[s]`` per resolution
stage s = 0..S-1, with ``strides[0] == (1, 1, 1)``.

* Encoder stage s: ``n_conv_per_stage[s]`` x (conv -> InstanceNorm -> LeakyReLU); the first conv
  has stride ``strides[s]`` (strided convolution instead of pooling).
* Decoder stage for resolution s (s = S-2 .. 0): transposed conv ``features[s+1] -> features[s]``
  with kernel = stride = ``strides[s+1]`` (bias), concatenation with the encoder skip (transposed
  output first), then ``n_conv_per_stage_decoder[s]`` convs ``2*features[s] -> features[s]`` with
  ``kernel_sizes[s]``.
* A 1x1x1 segmentation head (bias) at every decoder stage; all heads are always built so a model
  trained with deep supervision loads into one without, as in nnU-Net.

Parameter count for the same topology is identical to nnU-Net's ``PlainConvUNet(conv_bias=True)``
(see tests/test_unet.py for the closed formula).

Memory format: by default (``channels_last=None``) the network is built in ``channels_last_3d``
(weights and activations) on a machine without CUDA, where oneDNN's 3D convolutions train a few
percent faster that way (bench/README.md), and contiguous where CUDA is available. Logits are returned contiguous.
``True``/``False`` force one format.

Output contract (shared by every network here): a list of ``S-1`` logit tensors, full resolution
first, when ``deep_supervision`` is on and the module is training; otherwise one tensor
``(B, num_classes, X, Y, Z)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from core.planner import conv_feature_map_elements

from nets.blocks import ConvStack, Triple, as_triple, contiguous, he_init_


def _per_stage(value: int | Sequence[int], n: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    value = [int(v) for v in value]
    if len(value) != n:
        raise ValueError(f"{name} needs {n} entries, got {len(value)}: {value}")
    return value


def _topology(features, kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder):
    """Validate and normalise the U-Net topology arguments (ValueError naming the bad argument)."""
    features = [int(f) for f in features]
    n = len(features)
    if n < 2:
        raise ValueError(f"a U-Net needs at least 2 stages, got features={features}")
    if any(f < 1 for f in features):
        raise ValueError(f"features must be positive, got {features}")
    if isinstance(kernel_sizes, int):
        kernel_sizes = [kernel_sizes] * n
    if isinstance(strides, int):
        strides = [strides] * n
    if len(kernel_sizes) != n or len(strides) != n:
        raise ValueError(
            f"kernel_sizes ({len(kernel_sizes)}) and strides ({len(strides)}) need one entry per stage ({n})"
        )
    kernels = [as_triple(k, f"kernel_sizes[{i}]") for i, k in enumerate(kernel_sizes)]
    strides = [as_triple(s, f"strides[{i}]") for i, s in enumerate(strides)]
    if strides[0] != (1, 1, 1):
        raise ValueError(f"strides[0] must be (1, 1, 1) (no downsampling of the input), got {strides[0]}")
    enc = _per_stage(n_conv_per_stage, n, "n_conv_per_stage")
    if n_conv_per_stage_decoder is None:
        dec = enc[:-1]
    else:
        dec = _per_stage(n_conv_per_stage_decoder, n - 1, "n_conv_per_stage_decoder")
    return features, kernels, strides, enc, dec


def _total_stride(strides: Sequence[Triple]) -> Triple:
    return tuple(math.prod(s[a] for s in strides) for a in range(3))  # type: ignore[return-value]


def _check_patch(patch_size: Sequence[int], strides: Sequence[Triple]) -> Triple:
    patch = tuple(int(p) for p in patch_size)
    total = _total_stride(strides)
    if len(patch) != 3 or any(p < 1 or p % t for p, t in zip(patch, total)):
        raise ValueError(f"patch/input size {patch} must be 3 positive sizes divisible by the total stride {total}")
    return patch  # type: ignore[return-value]


class UNet(nn.Module):
    """Plain 3D U-Net; see the module docstring. Build with :func:`build_unet`."""

    def __init__(self, in_channels: int, num_classes: int, features, kernel_sizes, strides,
                 n_conv_per_stage=2, n_conv_per_stage_decoder=None, deep_supervision: bool = True,
                 channels_last: bool | None = None):
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        features, kernels, strides, enc, dec = _topology(
            features, kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder)
        self.features, self.kernels, self.strides = features, kernels, strides
        self.n_conv_encoder, self.n_conv_decoder = enc, dec
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision

        cin = in_channels
        self.encoder = nn.ModuleList()
        for s, f in enumerate(features):
            self.encoder.append(ConvStack(enc[s], cin, f, kernels[s], strides[s]))
            cin = f
        # Decoder modules are indexed by the resolution they produce (0 = full resolution).
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(features[s + 1], features[s], strides[s + 1], strides[s + 1], bias=True)
            for s in range(len(features) - 1))
        self.decoder = nn.ModuleList(
            ConvStack(dec[s], 2 * features[s], features[s], kernels[s], (1, 1, 1))
            for s in range(len(features) - 1))
        self.heads = nn.ModuleList(nn.Conv3d(features[s], num_classes, 1, bias=True)
                                   for s in range(len(features) - 1))
        he_init_(self)
        if channels_last is None:
            channels_last = not torch.cuda.is_available()
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last_3d)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``(B, in_channels, X, Y, Z)`` -> logits (see the output contract in the module docstring)."""
        _check_patch(x.shape[2:], self.strides)
        if self.channels_last:
            x = contiguous(x, torch.channels_last_3d)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        all_heads = self.deep_supervision and self.training
        outputs = []
        for s in range(len(self.features) - 2, -1, -1):
            x = self.decoder[s](torch.cat((self.up[s](x), skips[s]), dim=1))
            if all_heads or s == 0:
                outputs.append(contiguous(self.heads[s](x)))
        return outputs[::-1] if all_heads else outputs[0]

    def activation_elements(self, patch_size: Sequence[int], batch_size: int = 1) -> int:
        """Feature-map elements of one forward pass; see :func:`unet_activation_elements`."""
        return unet_activation_elements(
            patch_size, num_classes=self.num_classes, features=self.features, strides=self.strides,
            n_conv_per_stage=self.n_conv_encoder, n_conv_per_stage_decoder=self.n_conv_decoder,
            deep_supervision=self.deep_supervision, batch_size=batch_size)


def unet_activation_elements(patch_size: Sequence[int], *, num_classes: int, features, strides,
                             n_conv_per_stage=2, n_conv_per_stage_decoder=None,
                             deep_supervision: bool = True, batch_size: int = 1,
                             in_channels: int | None = None, kernel_sizes=None) -> int:
    """Elements of all convolution outputs (conv, transposed conv, heads) of one training forward.

    This is nnU-Net's ``compute_conv_feature_map_size`` (the unit of its 560e6 VRAM reference):
    one tensor per convolution, the norm/nonlinearity outputs not counted separately (they scale
    with it). Heads below full resolution count only with deep supervision. Computed from the
    topology alone (no forward run); ``batch_size`` multiplies the per-sample count.
    ``in_channels`` and ``kernel_sizes`` are accepted so the builder's arguments can be passed
    unchanged; neither changes the count (the input is not counted, convs keep their size).
    """
    kernels = [1] * len(features)  # kernel sizes do not change feature-map sizes (same padding)
    features, _, strides, enc, dec = _topology(features, kernels, strides, n_conv_per_stage,
                                               n_conv_per_stage_decoder)
    size = _check_patch(patch_size, strides)
    return conv_feature_map_elements(size, features, strides, enc, dec, num_classes, deep_supervision) * int(batch_size)


def build_unet(in_channels: int, num_classes: int, features: Sequence[int], kernel_sizes, strides,
               n_conv_per_stage=2, n_conv_per_stage_decoder=None, deep_supervision: bool = True,
               channels_last: bool | None = None) -> UNet:
    """nnU-Net plain 3D U-Net.

    Args:
        in_channels: input channels (e.g. DCE phases).
        num_classes: output channels (background included).
        features: channels per stage, e.g. ``(32, 64, 128, 256, 320, 320)``.
        kernel_sizes: per stage int or 3-tuple (e.g. ``(1, 3, 3)`` on a coarse axis).
        strides: per stage int or 3-tuple, ``strides[0] == 1``.
        n_conv_per_stage: convs per encoder stage (int or one per stage).
        n_conv_per_stage_decoder: convs per decoder stage (int or S-1 entries); default: as the
            encoder stage of the same resolution.
        deep_supervision: return all decoder heads while training.
        channels_last: memory format (default: ``channels_last_3d`` without CUDA, see the module docstring).
    """
    return UNet(in_channels, num_classes, features, kernel_sizes, strides, n_conv_per_stage,
                n_conv_per_stage_decoder, deep_supervision, channels_last)
