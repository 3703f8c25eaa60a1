"""The flags of ``train.py`` as data: what was given, what it means with defaults filled in,
and the checks (every flag is checked before any data is read; the torch-free checks in
``check_flags`` run before torch is even imported, so a wrong flag fails at once).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from core import plan as planlib
from core.config import FULL_FOLD
from core.errors import UserError

# flags that describe the run (stored in request.json, compared on --resume)
DESCRIPTION = ("recipe", "data", "centers", "phases", "max_cases", "sample_seed", "select", "drop_worst",
               "drop_worst_by", "arch", "size", "kernel", "loss",
               "focal_gamma", "focal_alpha", "aug_set", "optimizer", "lr", "warmup", "early_stop",
               "schedule", "epochs", "iters", "val_iters", "batch_size", "augment", "seed", "budget",
               "spacing", "resampling", "normalisation", "clahe", "set", "grad_checkpoint", "amp", "time_budget")
# change the cases, hence the folds
FOLD_FLAGS = ("data", "centers", "max_cases", "sample_seed", "select", "drop_worst", "drop_worst_by")
PLAN_FLAGS = ("phases", "budget", "spacing", "resampling", "normalisation", "clahe")  # fixed by the weights
RESAMPLINGS = planlib.RESAMPLING
NORMALISATIONS = planlib.NORMALISATIONS
N_FOLDS = 5
SPLIT_SEED = 12345  # nnU-Net v2's KFold random_state (nnunetv2/utilities/crossval_split.py)


# The two papers' training procedures as flag presets (explicit flags win). Seed B (large-kernel
# MedNeXt, MAMA-MIA 2025): SGD with cosine annealing, Dice-CE with deep supervision, 5 folds of
# 250 epochs. Seed A (selective phase-aware nnU-Net, MAMA-MIA 2025): batch Dice loss, Adam
# lr 1e-4 with weight decay 3e-5 (core.optim), 1000 epochs with early stopping, spatial
# augmentation with elastic deformation. The paper gives no patience: 50 epochs is our choice.
RECIPES: dict[str, dict] = {
    "seed_b": {"optimizer": "sgd", "schedule": "cosine", "loss": "dice_ce", "epochs": 250},
    "seed_a": {"optimizer": "adam", "loss": "batch_dice", "epochs": 1000, "early_stop": 50,
               "augment": "seed_a"},
}


def apply_recipe(req: "TrainRequest") -> dict:
    """Fill the flags ``req.recipe`` sets that the user did not give; returns what it set."""
    if req.recipe is None:
        return {}
    if req.recipe not in RECIPES:
        raise UserError(f"--recipe {req.recipe!r}: choose from {sorted(RECIPES)}")
    changed = {k: v for k, v in RECIPES[req.recipe].items() if getattr(req, k) is None}
    for k, v in changed.items():
        setattr(req, k, v)
    return changed


@dataclass
class TrainRequest:
    """``train.py`` flags; ``None`` means "not given" (a default, or inherited)."""

    arch: str | None = None
    size: str | None = None
    kernel: int | None = None
    loss: str | None = None
    optimizer: str | None = None
    lr: float | None = None
    schedule: str | None = None
    epochs: int | None = None
    iters: int | None = None
    val_iters: int | None = None
    batch_size: int | None = None
    augment: str | None = None
    seed: int | None = None
    data: str | None = None
    centers: str | None = None
    phases: str | None = None
    budget: str | None = None
    spacing: str | None = None
    resampling: str | None = None
    normalisation: str | None = None
    clahe: bool | None = None
    set: list[str] | None = None
    grad_checkpoint: bool | None = None
    amp: bool | None = None
    fold: str | None = None
    run: str | None = None
    runs_dir: str | None = None
    recipe: str | None = None
    focal_gamma: float | None = None
    focal_alpha: float | None = None
    aug_set: list[str] | None = None
    warmup: int | None = None
    early_stop: int | None = None
    time_budget: float | None = None
    max_cases: int | None = None
    sample_seed: int | None = None
    select: str | None = None
    drop_worst: str | None = None
    drop_worst_by: str | None = None
    upkern_from: str | None = None
    upkern_fold: str | None = None
    new_splits: bool = False
    resume: bool = False
    stop_after: int | None = None
    workers: int = 2
    device: str | None = None
    cache_dir: str | None = None


# ----------------------------------------------------------------------------- flag checks

def parse_folds(text: str | None, n_folds: int = N_FOLDS) -> tuple[int, ...]:
    """``0``-``4``, a list like ``0,2``, ``all`` (the five folds) or ``full`` (one model on every
    selected case, no validation: nnU-Net's fold 'all')."""
    if text is None:
        return (0,)
    if text == "all":
        return tuple(range(n_folds))
    if text == "full":
        return (FULL_FOLD,)
    try:
        folds = tuple(int(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        folds = ()
    if not folds or any(not 0 <= f < n_folds for f in folds):
        raise UserError(f"--fold {text!r}: expected 0-{n_folds - 1}, a list like 0,2, 'all' or 'full'")
    return folds


def parse_phases(text) -> list[int]:
    try:
        out = []
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-")
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        out = []
    if not out or min(out) < 0 or len(set(out)) != len(out):
        raise UserError(f"--phases {text!r}: expected distinct phase numbers like 0-2 or 0,1,2")
    return out


def parse_spacing(text: str | None):
    """None (the budget's default), 'auto' or three positive numbers."""
    if text is None or text == "auto":
        return text
    try:
        spacing = [float(s) for s in str(text).split(",")]
    except ValueError:
        raise UserError(f"--spacing {text!r}: expected 'auto' or three numbers like 1,1,1") from None
    if len(spacing) != 3 or min(spacing) <= 0:
        raise UserError(f"--spacing {text!r}: expected three positive numbers like 1,1,1")
    return spacing


def _check_overrides(items) -> list[str]:
    names = {f.name for f in dataclasses.fields(planlib.Plan)}
    out = []
    for item in items or []:
        key, sep, _ = str(item).partition("=")
        if not sep or key.split(".")[0].strip() not in names:
            raise UserError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(names)} "
                            "(or archs.<network>.<field>)")
        out.append(str(item))
    return out


def _check_selection(req: TrainRequest) -> None:
    from data import selection
    if req.select is not None:
        selection.parse_rule(req.select)
    selection.parse_drop(req.drop_worst)
    selection.check_by(req.drop_worst_by)
    if req.drop_worst_by is not None and req.drop_worst is None:
        raise UserError("--drop-worst-by needs --drop-worst")


def check_flags(req: TrainRequest) -> None:
    """The checks that need no torch (so a wrong flag fails at once), in the order of --help."""
    import nets
    arch = req.arch or nets.DEFAULT_NETWORK
    if arch not in nets.REGISTRY:
        raise UserError(f"--arch {arch!r}: choose from {nets.names()}")
    entry = nets.entry(arch)
    for flag in ("size", "kernel"):
        if getattr(req, flag) is not None and flag not in entry.plan_keys:
            raise UserError(f"--{flag} does not apply to --arch {arch}")
    if req.kernel is not None and (req.kernel < 3 or req.kernel % 2 == 0):
        raise UserError(f"--kernel {req.kernel}: expected an odd size >= 3 (3, 5, 7, ...)")
    if req.size is not None and req.size not in planlib.MEDNEXT_SIZES:
        raise UserError(f"--size {req.size!r}: choose from {list(planlib.MEDNEXT_SIZES)}")
    if req.grad_checkpoint and "grad_checkpoint" not in dict(entry.options):
        raise UserError(f"--grad-checkpoint does not apply to --arch {arch}")
    for flag, lo in (("epochs", 1), ("iters", 1), ("val_iters", 0), ("batch_size", 1), ("stop_after", 1),
                     ("warmup", 0), ("early_stop", 1), ("max_cases", N_FOLDS), ("sample_seed", 0)):
        v = getattr(req, flag)
        if v is not None and v < lo:
            raise UserError(f"--{flag.replace('_', '-')} {v}: must be >= {lo}")
    if req.lr is not None and not req.lr > 0:
        raise UserError(f"--lr {req.lr}: must be > 0")
    if req.time_budget is not None and not (req.time_budget > 0 and req.time_budget < float("inf")):
        raise UserError(f"--time-budget {req.time_budget}: must be a positive number of minutes")
    if req.workers < 0:
        raise UserError(f"--workers {req.workers}: must be >= 0")
    if req.upkern_fold is not None:
        if not req.upkern_from:
            raise UserError("--upkern-fold needs --upkern-from")
        if req.upkern_fold != "best" and not (str(req.upkern_fold).isdigit() and int(req.upkern_fold) < N_FOLDS):
            raise UserError(f"--upkern-fold {req.upkern_fold!r}: expected best or 0-{N_FOLDS - 1}")
    if req.epochs is not None and req.warmup is not None and req.warmup >= req.epochs:
        raise UserError(f"--warmup {req.warmup}: must be shorter than --epochs {req.epochs}")
    if req.resampling is not None and req.resampling not in RESAMPLINGS:
        raise UserError(f"--resampling {req.resampling!r}: choose from {list(RESAMPLINGS)}")
    if req.normalisation is not None and req.normalisation not in NORMALISATIONS:
        raise UserError(f"--normalisation {req.normalisation!r}: choose from {list(NORMALISATIONS)}")
    if req.budget is not None:
        from core.planner import parse_budget
        try:
            parse_budget(req.budget)
        except ValueError as exc:
            raise UserError(f"--budget: {exc}") from None
    parse_folds(req.fold)
    parse_spacing(req.spacing)
    if req.phases is not None:
        parse_phases(req.phases)
    _check_overrides(req.set)
    _check_selection(req)
    if req.data and not Path(req.data).is_dir():
        raise UserError(f"--data {req.data}: folder not found")


def effective(req: TrainRequest, device_type: str) -> dict:
    """Every description flag with its default filled in, in comparable form; raises UserError
    for any invalid value (before anything is read or written)."""
    from core.losses import LOSSES
    from core.optim import OPTIMIZERS, SCHEDULES
    from data import augment
    import nets

    check_flags(req)
    arch = req.arch or nets.DEFAULT_NETWORK
    entry = nets.entry(arch)
    loss = req.loss or "dice_ce"
    if loss not in LOSSES:
        raise UserError(f"--loss {loss!r}: choose from {sorted(LOSSES)}")
    from core.losses import get_loss
    try:
        get_loss(loss, gamma=req.focal_gamma, alpha=req.focal_alpha)
    except ValueError as exc:
        raise UserError(f"--focal-gamma/--focal-alpha: {exc}") from None
    optimizer = req.optimizer or entry.default_optimizer
    if optimizer not in OPTIMIZERS:
        raise UserError(f"--optimizer {optimizer!r}: choose from {sorted(OPTIMIZERS)}")
    schedule = req.schedule or "poly"
    if schedule not in SCHEDULES:
        raise UserError(f"--lr-schedule {schedule!r}: choose from {sorted(SCHEDULES)}")
    augment_name = req.augment or "nnunet"
    if augment_name not in augment.PROFILES:
        raise UserError(f"--augment {augment_name!r}: choose from {sorted(augment.PROFILES)}")
    try:
        augment.with_overrides(augment_name, list(req.aug_set or []))
    except (ValueError, TypeError) as exc:
        raise UserError(f"--aug-set: {exc}") from None
    budget = (req.budget or ("8GB" if device_type == "cuda" else "cpu")).strip()
    gpu = device_type == "cuda"
    # nnU-Net's 1000 x 250 (50 validation batches) on a GPU; a schedule that ends in minutes on a CPU
    centers = sorted({c.strip().upper() for c in req.centers.split(",") if c.strip()}) if req.centers else None
    return {
        "data": str(Path(req.data).resolve()) if req.data else None,
        "centers": centers,
        "phases": parse_phases(req.phases if req.phases is not None else "0,1,2"),
        "arch": arch, "size": req.size, "kernel": req.kernel, "loss": loss, "optimizer": optimizer,
        "lr": req.lr, "schedule": schedule,
        "epochs": req.epochs or (1000 if gpu else 20), "iters": req.iters or (250 if gpu else 25),
        "val_iters": req.val_iters if req.val_iters is not None else (50 if gpu else 4),
        "batch_size": req.batch_size, "augment": augment_name, "seed": req.seed if req.seed is not None else 0,
        "budget": budget.lower(), "spacing": parse_spacing(req.spacing),
        "resampling": req.resampling or "cubic", "normalisation": req.normalisation or "zscore",
        "clahe": bool(req.clahe), "set": _check_overrides(req.set),
        "grad_checkpoint": bool(req.grad_checkpoint), "amp": req.amp if req.amp is not None else True,
        "recipe": req.recipe, "aug_set": list(req.aug_set or []), "focal_gamma": req.focal_gamma, "focal_alpha": req.focal_alpha,
        "warmup": req.warmup or 0, "early_stop": req.early_stop, "max_cases": req.max_cases,
        "time_budget": req.time_budget,
        "sample_seed": req.sample_seed or 0,
        "select": req.select.strip() if req.select is not None else None,
        "drop_worst": req.drop_worst.strip() if req.drop_worst is not None else None,
        "drop_worst_by": None if req.drop_worst_by in (None, "all") else req.drop_worst_by,
    }


def given(req: TrainRequest) -> set[str]:
    """The description flags the user set explicitly."""
    return {k for k in DESCRIPTION if getattr(req, k) not in (None, [], ())}
