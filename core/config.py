"""The description of a training run: one frozen dataclass, stored in the run folder and in
every checkpoint, with the same strict codec as the plan (``core.plan``: unknown and missing keys
are errors; keys added after a format version was released are listed in ``ADDED_KEYS``).

``NetSpec`` is the network: its registry name and the builder's keyword arguments, derived
once from the plan (``nets.network_spec``) and then the only description anything builds from
(training, UpKern, inference, the submission wrapper, benchmarks).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from core import plan as planlib

CONFIG_FORMAT_VERSION = 2
FULL_FOLD = -1   # "train on every selected case, no validation" (nnU-Net's fold 'all')


def _json_value(value: Any, where: str) -> Any:
    """``value`` as JSON would return it (tuples become lists): equal descriptions compare equal
    whether they were just built or read back from a file."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: not a JSON value ({exc})") from exc


@dataclass(frozen=True)
class NetSpec:
    """A network: ``name`` in the ``nets`` registry and the builder's keyword arguments."""

    name: str
    kwargs: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"NetSpec.name must be a registry name, got {self.name!r}")
        if not isinstance(self.kwargs, dict):
            raise ValueError(f"NetSpec.kwargs must be an object, got {self.kwargs!r}")
        object.__setattr__(self, "kwargs", _json_value(self.kwargs, "NetSpec.kwargs"))

    def with_kwargs(self, **changes) -> "NetSpec":
        return NetSpec(self.name, {**self.kwargs, **changes})


@dataclass(frozen=True)
class TrainConfig(planlib.Settings):
    network: NetSpec
    loss: str = "dice_ce"
    focal_gamma: float | None = None    # core.losses.LOSS_PARAMS of the focal losses (None: 2.0)
    focal_alpha: float | None = None    # None: no class weighting
    optimizer: str = "sgd"              # core.optim.OPTIMIZERS
    lr: float | None = None             # None: the optimizer's default
    schedule: str = "poly"              # core.optim.SCHEDULES
    epochs: int = 1000                  # nnU-Net: 1000 x 250 iterations
    iters_per_epoch: int = 250
    val_iters: int = 50
    batch_size: int | None = None       # None: the plan's
    augment: str = "nnunet"             # augmentation profile
    augment_overrides: tuple[str, ...] = ()   # per-transform KEY=VALUE edits of the profile
    seed: int = 0
    folds: tuple[int, ...] = (0,)
    n_folds: int = 5
    amp: bool = True                    # used on CUDA only
    workers: int = 2                    # background batch workers
    upkern_from: str | None = None      # the source run of an UpKern stage
    upkern_fold: int | None = None      # its fold every target fold starts from (None: the same fold)
    early_stop: int | None = None       # stop after this many epochs without a better moving-average pseudo-Dice
    warmup_epochs: int = 0              # linear learning-rate warm-up (core.optim.scheduled_lr)
    time_budget_min: float | None = None   # per fold: epochs sized from the first epoch's time (at most ``epochs``)
    format_version: int = CONFIG_FORMAT_VERSION

    def validate(self):
        from core.losses import LOSSES            # here, not at the top: keeps --help free of torch
        from core.optim import OPTIMIZERS, SCHEDULES
        if self.format_version != CONFIG_FORMAT_VERSION:
            raise ValueError(f"TrainConfig.format_version {self.format_version} is not supported")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        from core.losses import get_loss
        get_loss(self.loss, gamma=self.focal_gamma, alpha=self.focal_alpha)  # a parameter it does not take
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {self.schedule!r}")
        if self.epochs < 1 or self.iters_per_epoch < 1 or self.val_iters < 0:
            raise ValueError("epochs and iters_per_epoch must be >= 1, val_iters >= 0")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if any(not 0 <= f < self.n_folds and f != FULL_FOLD for f in self.folds):
            raise ValueError(f"folds {self.folds} must lie in 0..{self.n_folds - 1} (or {FULL_FOLD}: all cases)")
        if self.early_stop is not None and self.early_stop < 1:
            raise ValueError(f"early_stop must be >= 1 epoch, got {self.early_stop}")
        if self.time_budget_min is not None and not self.time_budget_min > 0:
            raise ValueError(f"time_budget_min must be > 0 minutes, got {self.time_budget_min}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must lie in [0, epochs), got {self.warmup_epochs}")

    @property
    def arch(self) -> str:
        return self.network.name

    def replace(self, **kw) -> "TrainConfig":
        return replace(self, **kw)


@dataclass(frozen=True)
class DataSelection(planlib.Settings):
    """Which cases a run trains on: the dataset, the selection flags and the resulting ids."""

    root: str
    centers: tuple[str, ...] | None
    phases: tuple[int, ...]
    cases: tuple[str, ...] = field(default=())
    max_cases: int | None = None        # a reproducible draw of this many cases, stratified by center
    sample_seed: int = 0
    select: str | None = None           # a data.selection rule, e.g. "quality>=-0.5"
    drop_worst: str | None = None       # "20%" or a count: the lowest-quality cases left out
    drop_worst_by: str | None = None    # None: over all cases; a field (center): within each group
