"""The training configuration: one frozen dataclass, stored in every checkpoint and run folder."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from core.losses import LOSSES  # noqa: F401  (validated below)

TASKS = ("seg", "pcr")


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "unet"                  # unet | mednext
    size: str | None = None             # MedNeXt S/B/M/L (None: the plan's)
    kernel: int | None = None           # MedNeXt kernel (None: the plan's)
    loss: str = "dice_ce"
    optimizer: str | None = None        # sgd | adamw (None: sgd for unet, adamw for mednext)
    lr: float | None = None             # None: the optimizer's default
    epochs: int = 1000                  # nnU-Net: 1000 x 250 iterations
    iters_per_epoch: int = 250
    val_iters: int = 50
    batch_size: int | None = None       # None: the plan's
    augment: str = "nnunet"             # augmentation profile
    seed: int = 0
    folds: tuple[int, ...] = (0,)
    n_folds: int = 5
    deep_supervision: bool = True
    grad_checkpoint: bool = False
    amp: bool = True                    # used on CUDA only
    workers: int = 2                    # background batch workers
    upkern_from: str | None = None

    def __post_init__(self):
        if self.arch not in ("unet", "mednext"):
            raise ValueError(f"arch must be unet or mednext, got {self.arch!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.epochs < 1 or self.iters_per_epoch < 1 or self.val_iters < 0:
            raise ValueError("epochs and iters_per_epoch must be >= 1, val_iters >= 0")
        if any(not 0 <= f < self.n_folds for f in self.folds):
            raise ValueError(f"folds {self.folds} must lie in 0..{self.n_folds - 1}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown keys {unknown}")
        d = dict(d)
        if "folds" in d:
            d["folds"] = tuple(d["folds"])
        return cls(**d)

    def replace(self, **kw) -> "TrainConfig":
        return replace(self, **kw)
