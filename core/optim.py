"""Optimisers and the learning-rate schedule, as values in a registry.

- ``sgd``: nnU-Net v2 (lr 0.01, momentum 0.99, Nesterov, weight decay 3e-5).
- ``adamw``: MedNeXt (lr 1e-3, eps 1e-4, weight decay 3e-5).
- Poly decay lr_e = lr0 * (1 - e / E) ** 0.9, set at the start of every epoch (nnU-Net's
  PolyLRScheduler steps once per epoch).
"""
from __future__ import annotations

import torch

OPTIMIZERS = {
    "sgd": dict(lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5),
    "adamw": dict(lr=1e-3, eps=1e-4, weight_decay=3e-5),
}
POLY_EXPONENT = 0.9
GRAD_CLIP = 12.0  # nnU-Net v2 clips the gradient norm at 12


def make_optimizer(name: str, params, lr: float | None = None) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choices: {sorted(OPTIMIZERS)}")
    kw = dict(OPTIMIZERS[name])
    if lr is not None:
        kw["lr"] = lr
    if name == "sgd":
        return torch.optim.SGD(params, **kw)
    return torch.optim.AdamW(params, **kw)


def poly_lr(initial_lr: float, epoch: int, max_epochs: int, exponent: float = POLY_EXPONENT) -> float:
    return initial_lr * (1 - epoch / max_epochs) ** exponent


# name -> lr(initial_lr, epoch, max_epochs), evaluated at the start of every epoch
SCHEDULES = {"poly": poly_lr}


def scheduled_lr(schedule: str, initial_lr: float, epoch: int, max_epochs: int) -> float:
    """The learning rate of ``epoch`` under ``schedule``. Extending a run (``--resume`` with more
    ``--epochs``) re-evaluates the schedule over the new length from the next epoch on: the poly
    curve is stretched, so the rate jumps up a little and then decays to 0 at the new end."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choices: {sorted(SCHEDULES)}")
    return SCHEDULES[schedule](initial_lr, epoch, max_epochs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
