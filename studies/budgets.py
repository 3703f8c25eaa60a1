"""How far a study is scaled down: schedule edits (epochs, iterations, validation batches), the
number of folds, the network size and the inference passes, per budget.

- ``smoke``: minutes per study on a 2-core CPU: one epoch of two iterations, one fold (a study
  file may ask for two, e.g. to have a best fold to pick), no flip TTA, no plots. The numbers
  mean nothing; it shows that every step runs and the tables are written.
- ``cpu``: an afternoon on a 2-core CPU with a 200-case small phantom: 10 epochs of 25
  iterations, one fold, no flip TTA, and a 32 x 32 x 32 patch for networks trained from
  scratch. Measured here: the CPU plan's U-Net step at its own 64 x 64 x 48 patch takes ~2.5 s on
  two idle cores, at 48 x 48 x 32 ~1 s; with augmentation, validation and other work sharing the
  cores a 250-iteration training took ~20 minutes at 48 x 48 x 32, so only the smallest patch
  lets a study of ~30 trainings end the same afternoon.
- ``gpu``: the papers' schedules as the study file gives them (``--recipe`` sets them), five folds.

A study file edits these under ``[budget.<name>]``: ``train`` (flags for every training command),
``network`` (flags only for configurations trained from scratch, e.g. a smaller MedNeXt; an
UpKern configuration inherits the network from its source), ``folds`` (at most this many folds of
a configuration that asks for ``all``), ``infer``, ``eval`` and ``min_cases`` (the least number
of training cases a scaled count is raised to).
"""
from __future__ import annotations

import copy
from typing import Any

BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"train": {"epochs": 1, "iters": 2, "val_iters": 1, "workers": 0},
              "network": {}, "folds": 1, "infer": {"no_tta": True}, "eval": {"no_plots": True},
              "min_cases": 5},
    "cpu": {"train": {"epochs": 10, "iters": 25, "val_iters": 4},
            "network": {"set": ["patch_size=32,32,32"]},
            "folds": 1, "infer": {"no_tta": True}, "eval": {}, "min_cases": 5},
    "gpu": {"train": {}, "network": {}, "folds": 5, "infer": {}, "eval": {}, "min_cases": 5},
}


def resolve(name: str, edits: dict[str, dict] | None = None) -> dict[str, Any]:
    """The budget ``name`` with a study's edits applied (tables merged key by key)."""
    from core.errors import UserError
    if name not in BUDGETS:
        raise UserError(f"--budget {name!r}: choose from {', '.join(BUDGETS)}")
    out = copy.deepcopy(BUDGETS[name])
    for key, value in (edits or {}).get(name, {}).items():
        if isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    folds = out["folds"]
    if not isinstance(folds, int) or isinstance(folds, bool) or not 1 <= folds <= 5:
        raise UserError(f"budget {name}: folds = {folds!r}: expected 1 to 5")
    return out
