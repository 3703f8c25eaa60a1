"""MedNeXt v1 (Roy et al., MICCAI 2023; reference code MIC-DKFZ/MedNeXt ``MedNextV1.py``), from scratch.

Layout, with ``C = base_channels`` and levels l = 0..4 of width ``C * 2^l``::

    stem 1x1x1 conv (in_channels -> C)
    enc_0 .. enc_3 : blocks[l] MedNeXt blocks at level l, then a down block to level l+1
    bottleneck     : blocks[4] blocks at level 4
    up_3 .. up_0   : up block level l+1 -> l, added (not concatenated) to the encoder output of
                     level l, then blocks[8-l] blocks
    heads          : 1x1x1 conv at each level 0..4 (level 4 = bottleneck output)

Expansion ratios follow MedNeXt's 9-entry list: encoder level l and the down block leaving level
l-1 use ``ratios[l]``; the decoder level l and the up block into it use ``ratios[8-l]``.
Four stride-2 down blocks: the input must be divisible by 2^4 = 16 on every axis.

Deviation kept on purpose: MedNeXt's heads are 1x1x1 ``ConvTranspose3d`` (weight ``(C, K, 1, 1, 1)``);
ours are ``Conv3d`` (``(K, C, 1, 1, 1)``), the same function and parameter count. All five heads
are always built (as nnU-Net does) so checkpoints load with deep supervision on or off.

Memory format: by default (``channels_last=None``) the format follows the device:
``channels_last_3d`` on CPU, where depthwise convolutions run several times faster and the 1x1x1
convolutions become plain GEMMs over a permuted view (``PointwiseConv3d``); contiguous on CUDA,
where cuDNN's depthwise kernels are faster on contiguous tensors. The stride-1 depthwise backward
computes the input gradient as a flipped-kernel forward conv (``DepthwiseConv3d``). The timings
behind these choices are in bench/README.md (``bench/train_step.py``). ``True`` or ``False``
forces one format. On CUDA the depthwise convolutions of the same and down blocks go through
``nets.dwconv_triton.depthwise_conv3d``: Triton kernels where they measure faster than cuDNN for
that shape (``MAMAMIA_DWCONV=auto``, the default; ``aten`` or ``triton`` forces one side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from nets.blocks import MedNeXtBlock, PointwiseConv3d, contiguous

# MedNeXt v1 sizes (create_mednext_v1.py): expansion ratio and block count per level, in the order
# enc0..enc3, bottleneck, dec3..dec0.
SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "S": ((2,) * 9, (2,) * 9),
    "B": ((2, 3, 4, 4, 4, 4, 4, 3, 2), (2,) * 9),
    "M": ((2, 3, 4, 4, 4, 4, 4, 3, 2), (3, 4, 4, 4, 4, 4, 4, 4, 3)),
    "L": ((3, 4, 8, 8, 8, 8, 8, 4, 3), (3, 4, 8, 8, 8, 8, 8, 4, 3)),
}
DIVISOR = 16  # 4 stride-2 down blocks


def _check_size(size: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if size not in SIZES:
        raise ValueError(f"unknown MedNeXt size {size!r}; choices: {sorted(SIZES)}")
    return SIZES[size]


def _check_patch(patch_size: Sequence[int]) -> tuple[int, int, int]:
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or any(p < DIVISOR or p % DIVISOR for p in patch):
        raise ValueError(f"MedNeXt input size {patch} must be 3 sizes divisible by {DIVISOR}")
    if math.prod(patch) == DIVISOR ** 3:
        # GroupNorm with one group per channel cannot normalise a single value.
        raise ValueError(f"MedNeXt input size {patch} leaves one bottleneck voxel; use at least 32 on one axis")
    return patch  # type: ignore[return-value]


class MedNeXt(nn.Module):
    """MedNeXt v1; see the module docstring. Build with :func:`build_mednext`."""

    def __init__(self, size: str = "M", kernel: int = 3, in_channels: int = 1, num_classes: int = 2,
                 deep_supervision: bool = True, grn: bool = False, checkpoint: bool = False,
                 base_channels: int = 32, channels_last: bool | None = None):
        super().__init__()
        ratios, blocks = _check_size(size)
        if in_channels < 1 or num_classes < 1 or base_channels < 1:
            raise ValueError(f"in_channels, num_classes, base_channels must be >= 1, "
                             f"got {in_channels}, {num_classes}, {base_channels}")
        self.size, self.kernel, self.num_classes = size, kernel, num_classes
        self.base_channels = base_channels
        self.deep_supervision, self.checkpoint, self.channels_last = deep_supervision, checkpoint, channels_last
        width = [base_channels * 2 ** level for level in range(5)]

        def stack(level: int, idx: int) -> nn.Sequential:
            return nn.Sequential(*(MedNeXtBlock(width[level], width[level], ratios[idx], kernel, "same", grn)
                                   for _ in range(blocks[idx])))

        self.stem = PointwiseConv3d(in_channels, width[0])
        self.enc = nn.ModuleList(stack(level, level) for level in range(4))
        self.down = nn.ModuleList(MedNeXtBlock(width[l], width[l + 1], ratios[l + 1], kernel, "down", grn)
                                  for l in range(4))
        self.bottleneck = stack(4, 4)
        # up[l] / dec[l] produce level l (0 = full resolution).
        self.up = nn.ModuleList(MedNeXtBlock(width[l + 1], width[l], ratios[8 - l], kernel, "up", grn)
                                for l in range(4))
        self.dec = nn.ModuleList(stack(l, 8 - l) for l in range(4))
        self.heads = nn.ModuleList(PointwiseConv3d(width[l], num_classes) for l in range(5))

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint and torch.is_grad_enabled():
            return _checkpoint(module, x, use_reentrant=False)
        return module(x)

    def _stack(self, seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for block in seq:  # checkpoint per block, as MedNeXt's 'outside_block' style
            x = self._run(block, x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``(B, in_channels, X, Y, Z)`` -> logits; a list (full resolution first) when deep
        supervision is on and the module is training, else ``(B, num_classes, X, Y, Z)``."""
        _check_patch(x.shape[2:])
        if self.channels_last or (self.channels_last is None and x.device.type == "cpu"):
            x = contiguous(x, torch.channels_last_3d)
        x = self.stem(x)
        skips = []
        for level in range(4):
            x = self._stack(self.enc[level], x)
            skips.append(x)
            x = self._run(self.down[level], x)
        x = self._stack(self.bottleneck, x)
        all_heads = self.deep_supervision and self.training
        outputs = [self.heads[4](x)] if all_heads else []
        for level in range(3, -1, -1):
            x = self._stack(self.dec[level], self._run(self.up[level], x) + skips[level])
            if all_heads or level == 0:
                outputs.append(self.heads[level](x))
        outputs = [contiguous(o) for o in outputs[::-1]]
        return outputs if all_heads else outputs[0]

    def activation_elements(self, patch_size: Sequence[int], batch_size: int = 1) -> int:
        """Feature-map elements of one forward pass; see :func:`mednext_activation_elements`."""
        return mednext_activation_elements(
            patch_size, size=self.size, num_classes=self.num_classes, deep_supervision=self.deep_supervision,
            base_channels=self.base_channels, batch_size=batch_size)


def mednext_activation_elements(patch_size: Sequence[int], *, size: str = "M", num_classes: int = 2,
                                deep_supervision: bool = True, base_channels: int = 32,
                                batch_size: int = 1, **ignored) -> int:
    """Elements of all convolution outputs of one training forward (nnU-Net's counting unit, see
    ``nets.unet.unet_activation_elements``), from the configuration alone.

    Per block at width C and ratio R: depthwise C + expand R*C + project C (per voxel); down/up
    blocks add the residual conv's output; an up block's convolutions produce (2n-1)^3 voxels
    before the one-voxel pad. Without gradient checkpointing this tracks the stored activations:
    a block stores its input, depthwise, GroupNorm, expand and GELU outputs, (3 + 2R) C per voxel
    against (2 + R) C counted, i.e. 1.75-1.9 stored per counted element for R = 2..8, close to
    the U-Net's 2 (conv and norm/activation output per conv), so nnU-Net's reference applies to
    both. With ``checkpoint=True`` it is an upper bound. The other builder
    arguments (kernel, in_channels, grn, checkpoint) do not change the count and are ignored.
    """
    unknown = set(ignored) - {"kernel", "in_channels", "grn", "checkpoint", "channels_last"}
    if unknown:
        raise ValueError(f"unknown MedNeXt arguments: {sorted(unknown)}")
    ratios, blocks = _check_size(size)
    patch = _check_patch(patch_size)
    width = [base_channels * 2 ** level for level in range(5)]
    shape = [tuple(p >> level for p in patch) for level in range(5)]
    vox = [math.prod(s) for s in shape]
    total = width[0] * vox[0]  # stem
    for level, idx in [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (3, 5), (2, 6), (1, 7), (0, 8)]:
        total += blocks[idx] * (2 + ratios[idx]) * width[level] * vox[level]
    for level in range(4):
        c, r = width[level], ratios[level + 1]  # down block level -> level+1
        total += ((1 + r) * c + 2 * width[level + 1]) * vox[level + 1]
        c, r = width[level + 1], ratios[8 - level]  # up block level+1 -> level
        unpadded = math.prod(2 * n - 1 for n in shape[level + 1])
        total += ((1 + r) * c + 2 * width[level]) * unpadded
    heads = range(5) if deep_supervision else (0,)
    total += sum(num_classes * vox[level] for level in heads)
    return int(total) * int(batch_size)


def build_mednext(size: str = "M", kernel: int = 3, in_channels: int = 1, num_classes: int = 2,
                  deep_supervision: bool = True, grn: bool = False, checkpoint: bool = False,
                  base_channels: int = 32, channels_last: bool | None = None) -> MedNeXt:
    """MedNeXt v1 of size ``'S' | 'B' | 'M' | 'L'`` with odd depthwise ``kernel`` (3 or 5 in the paper).

    ``grn`` adds global response normalisation after the GELU (MedNeXt's later option);
    ``checkpoint`` keeps only each block's input and recomputes the block's forward during the
    backward pass (non-reentrant ``torch.utils.checkpoint``), trading one extra forward for most of
    the activation memory; ``channels_last`` picks the memory format (default: ``channels_last_3d`` on CPU,
    contiguous on CUDA; see the module docstring).
    """
    return MedNeXt(size, kernel, in_channels, num_classes, deep_supervision, grn, checkpoint,
                   base_channels, channels_last)
