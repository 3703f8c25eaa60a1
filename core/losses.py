"""Segmentation losses: soft Dice, Dice + cross-entropy, focal, and deep-supervision weighting.

Shapes: ``logits`` are ``(B, K, X, Y, Z)`` (any number of spatial axes) with K classes, class 0 the
background; ``target`` is an integer label map ``(B, 1, X, Y, Z)`` or ``(B, X, Y, Z)`` with values
in ``0..K-1``. Every loss returns a scalar tensor.

Soft Dice follows nnU-Net v2 (``MemoryEfficientSoftDiceLoss`` as configured by ``nnUNetTrainer``:
softmax, batch Dice, background excluded, smooth 1e-5)::

    dc_k = (2 * sum(p_k * y_k) + smooth) / max(sum(p_k) + sum(y_k) + smooth, 1e-8)

``smooth`` is added to numerator and denominator; the 1e-8 clip only matters for smooth = 0.
Sums run over the spatial axes, and also over the batch with ``batch_dice``; the Dice values are
averaged over the kept classes (and samples without batch Dice). Deliberate deviation: nnU-Net
returns ``-mean(dc)``; we return ``1 - mean(dc)`` (MONAI's convention), which has the same
gradient and is >= 0, so ``dice_ce`` equals MONAI's ``DiceCELoss`` with the same settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[..., torch.Tensor]


def _label_map(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` as a long label map ``(B, X, Y, Z)`` matching ``logits`` (ValueError otherwise)."""
    if target.ndim == logits.ndim:
        if target.shape[1] != 1:
            raise ValueError(f"target must be a label map (B, 1, ...) or (B, ...), got shape {tuple(target.shape)}")
        target = target[:, 0]
    if target.shape[0] != logits.shape[0] or target.shape[1:] != logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    if target.is_floating_point():
        target = target.round()
    return target.long()


def _one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, X, Y, Z)`` labels -> ``(B, K, X, Y, Z)`` one-hot in ``dtype``."""
    onehot = torch.zeros((labels.shape[0], num_classes, *labels.shape[1:]), dtype=dtype, device=labels.device)
    return onehot.scatter_(1, labels.unsqueeze(1), 1)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool = True, smooth: float = 1e-5,
                   include_background: bool = False) -> torch.Tensor:
    """``1 - mean soft Dice`` of ``softmax(logits)`` against the one-hot target (see module docstring)."""
    labels = _label_map(logits, target)
    num_classes = logits.shape[1]
    if not include_background and num_classes < 2:
        raise ValueError("include_background=False needs at least 2 classes")
    probs = torch.softmax(logits.float(), dim=1)
    with torch.no_grad():
        onehot = _one_hot(labels, num_classes, probs.dtype)
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    axes = tuple(range(2, logits.ndim))
    intersect = (probs * onehot).sum(axes)
    sum_pred = probs.sum(axes)
    sum_gt = onehot.sum(axes)
    if batch_dice:
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    dc = (2 * intersect + smooth) / torch.clamp(sum_pred + sum_gt + smooth, min=1e-8)
    return 1 - dc.mean()


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean voxel-wise cross-entropy of softmax(logits) (nnU-Net's ``RobustCrossEntropyLoss``)."""
    return F.cross_entropy(logits.float(), _label_map(logits, target))


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               alpha: float | Sequence[float] | None = None) -> torch.Tensor:
    """Multi-class focal loss (Lin et al., ICCV 2017), mean over voxels:
    ``-alpha_t * (1 - p_t)^gamma * log(p_t)`` with ``p_t`` the softmax probability of the true class.

    ``alpha``: None (all 1), one weight per class, or a float a meaning ``(1 - a, a)`` for
    background / foreground with two classes (the binary convention of the paper).
    """
    labels = _label_map(logits, target)
    logp = torch.log_softmax(logits.float(), dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    loss = -((1 - logp.exp()) ** gamma) * logp
    if alpha is not None:
        if isinstance(alpha, (int, float)):
            if logits.shape[1] != 2:
                raise ValueError(f"a scalar focal alpha needs 2 classes, got {logits.shape[1]}; give one per class")
            alpha = (1 - float(alpha), float(alpha))
        weights = torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)
        if weights.shape != (logits.shape[1],):
            raise ValueError(f"focal alpha needs one weight per class ({logits.shape[1]}), got {list(alpha)}")
        loss = weights[labels] * loss
    return loss.mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool = True, smooth: float = 1e-5,
                 include_background: bool = False) -> torch.Tensor:
    """Soft Dice + cross-entropy, weights 1 and 1 (nnU-Net ``DC_and_CE_loss``)."""
    return soft_dice_loss(logits, target, batch_dice, smooth, include_background) + cross_entropy_loss(logits, target)


def dice_focal_loss(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool = True, smooth: float = 1e-5,
                    include_background: bool = False, gamma: float = 2.0,
                    alpha: float | Sequence[float] | None = None) -> torch.Tensor:
    """Soft Dice + focal loss, weights 1 and 1."""
    return (soft_dice_loss(logits, target, batch_dice, smooth, include_background)
            + focal_loss(logits, target, gamma, alpha))


def dice_ce_focal_loss(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool = True, smooth: float = 1e-5,
                       include_background: bool = False, gamma: float = 2.0,
                       alpha: float | Sequence[float] | None = None) -> torch.Tensor:
    """Soft Dice + cross-entropy + focal loss, weights 1, 1, 1 (the second MAMA-MIA seed-B model)."""
    return (dice_ce_loss(logits, target, batch_dice, smooth, include_background)
            + focal_loss(logits, target, gamma, alpha))


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain soft Dice, one Dice per sample averaged over the batch (no cross-entropy term)."""
    return soft_dice_loss(logits, target, batch_dice=False)


def batch_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice over the whole batch as one volume (nnU-Net's ``batch_dice=True``), no
    cross-entropy term: seed A's "batch Dice loss"."""
    return soft_dice_loss(logits, target, batch_dice=True)


LOSSES: dict[str, LossFn] = {
    "dice": dice_loss,
    "batch_dice": batch_dice_loss,
    "dice_ce": dice_ce_loss,
    "dice_focal": dice_focal_loss,
    "dice_ce_focal": dice_ce_focal_loss,
}
# parameters a loss takes from the command line (--focal-gamma, --focal-alpha)
LOSS_PARAMS: dict[str, tuple[str, ...]] = {"dice_focal": ("gamma", "alpha"), "dice_ce_focal": ("gamma", "alpha")}


def get_loss(name: str, **params) -> LossFn:
    """The registered loss ``name`` with ``params`` bound; ValueError listing the choices, or
    naming a parameter the loss does not take.

    The parameters a loss takes are ``LOSS_PARAMS[name]``: ``gamma`` (default 2.0) and ``alpha``
    (default None: no class weights; a float a weighs background / foreground 1 - a / a; or one
    weight per class) of the focal term of ``dice_focal`` and ``dice_ce_focal``. A parameter
    given as None means "the loss's default" (an unset command-line flag) and is accepted by
    every loss; with no parameter left the registered function itself is returned."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choices: {sorted(LOSSES)}")
    params = {k: v for k, v in params.items() if v is not None}
    bad = sorted(set(params) - set(LOSS_PARAMS.get(name, ())))
    if bad:
        raise ValueError(f"loss {name!r} takes no parameter {bad[0]!r} (it takes {list(LOSS_PARAMS.get(name, ())) or 'none'})")
    if not params:
        return LOSSES[name]
    fn = LOSSES[name]
    return lambda logits, target: fn(logits, target, **params)


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's head weights: ``1/2^i`` for output i (full resolution first), the lowest
    resolution set to 0, normalised to sum 1. One output gets weight 1."""
    if num_outputs < 1:
        raise ValueError(f"need at least one output, got {num_outputs}")
    if num_outputs == 1:
        return [1.0]
    raw = [0.5 ** i for i in range(num_outputs - 1)] + [0.0]
    total = sum(raw)
    return [w / total for w in raw]


def downsample_target(target: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Label map ``(B, 1, *S)`` or ``(B, *S)`` -> ``(B, 1, *spatial_shape)`` by nearest neighbour.

    Uses ``nearest-exact`` (pixel-centre sampling), as nnU-Net v2's ``DownsampleSegForDSTransform``
    (batchgeneratorsv2): for a factor-2 reduction it keeps voxel 2i+1 of each pair.
    """
    if target.ndim == len(spatial_shape) + 1:
        target = target.unsqueeze(1)
    if tuple(target.shape[2:]) == tuple(spatial_shape):
        return target
    out = F.interpolate(target.float(), size=tuple(int(s) for s in spatial_shape), mode="nearest-exact")
    return out.to(target.dtype)


class DeepSupervisionLoss(nn.Module):
    """Applies ``loss(logits, target)`` to every network output with :func:`deep_supervision_weights`.

    ``forward(outputs, target)``: ``outputs`` is one tensor (plain loss) or a list of logits, full
    resolution first; ``target`` is the full-resolution label map, resampled to each output's
    spatial shape with :func:`downsample_target`. Zero-weight heads are still evaluated (times 0)
    so their parameters get zero gradients as in nnU-Net (weight decay still reaches them).
    """

    def __init__(self, loss: LossFn):
        super().__init__()
        self.loss = loss

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        weights = deep_supervision_weights(len(outputs))
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, outputs):
            total = total + w * self.loss(out, downsample_target(target, out.shape[2:]))
        return total
