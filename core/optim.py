"""Optimisers and the learning-rate schedule, as values in a registry.

- ``sgd``: nnU-Net v2 (lr 0.01, momentum 0.99, Nesterov, weight decay 3e-5).
- ``adamw``: MedNeXt (lr 1e-3, eps 1e-4, weight decay 3e-5).
- ``adam``: seed A (lr 1e-4, weight decay 3e-5 as L2 on the gradient).
- Cosine annealing to 0 (seed B) beside poly; an optional linear warm-up.
- Poly decay lr_e = lr0 * (1 - e / E) ** 0.9, set at the start of every epoch (nnU-Net's
  PolyLRScheduler steps once per epoch).
"""
from __future__ import annotations

import math

import torch

OPTIMIZERS = {
    "sgd": dict(lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5),
    "adamw": dict(lr=1e-3, eps=1e-4, weight_decay=3e-5),
    # seed A (MAMA-MIA 2025): Adam, lr 1e-4, weight decay 3e-5 as L2 added to the gradient
    # (torch.optim.Adam), unlike AdamW's decoupled decay of the weights
    "adam": dict(lr=1e-4, weight_decay=3e-5),
}
_CLASSES = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
POLY_EXPONENT = 0.9
GRAD_CLIP = 12.0  # nnU-Net v2 clips the gradient norm at 12


def make_optimizer(name: str, params, lr: float | None = None) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choices: {sorted(OPTIMIZERS)}")
    kw = dict(OPTIMIZERS[name])
    if lr is not None:
        kw["lr"] = lr
    return _CLASSES[name](params, **kw)


def poly_lr(initial_lr: float, epoch: int, max_epochs: int, exponent: float = POLY_EXPONENT) -> float:
    return initial_lr * (1 - epoch / max_epochs) ** exponent


def cosine_lr(initial_lr: float, epoch: int, max_epochs: int) -> float:
    """Cosine annealing to 0 (Loshchilov & Hutter 2017, SGDR without restarts; torch's
    CosineAnnealingLR with eta_min 0 stepped per epoch): lr0 * (1 + cos(pi e / E)) / 2."""
    return initial_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max_epochs))


# name -> lr(initial_lr, epoch, max_epochs), evaluated at the start of every epoch
SCHEDULES = {"poly": poly_lr, "cosine": cosine_lr}


def scheduled_lr(schedule: str, initial_lr: float, epoch: int, max_epochs: int, warmup: int = 0) -> float:
    """The learning rate of ``epoch`` under ``schedule``. With ``warmup`` W > 0, epochs
    0..W-1 ramp linearly, lr0 * (e + 1) / W, and the schedule then runs over the remaining
    epochs (epoch e >= W takes the schedule's value at e - W of E - W). Extending a run
    (``--resume`` with more ``--epochs``) re-evaluates the schedule over the new length from the
    next epoch on: the curve is stretched, so the rate jumps up a little and then decays to 0 at
    the new end."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choices: {sorted(SCHEDULES)}")
    if not 0 <= warmup < max_epochs:
        raise ValueError(f"warmup {warmup} must lie in [0, {max_epochs})")
    if epoch < warmup:
        return initial_lr * (epoch + 1) / warmup
    return SCHEDULES[schedule](initial_lr, epoch - warmup, max_epochs - warmup)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
