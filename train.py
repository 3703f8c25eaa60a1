"""Train a segmentation network on a MAMA-MIA folder (or the built-in phantom dataset).

    python train.py --arch mednext --kernel 3                 # phantom data, CPU/GPU plan
    python train.py --arch unet --data /data/MAMA-MIA --centers DUKE,NACT --phases 0-2 --fold all
    python train.py --arch mednext --kernel 5 --upkern-from mednext_k3   # seed B's UpKern stage
    torchrun --nproc_per_node=2 train.py --arch unet ...                  # distributed
    python train.py --task pcr --masks expert                              # the pCR model

Reads top to bottom: arguments -> cases -> plan -> preprocessed cache -> per fold: network,
optimiser, batches, epochs (train, pseudo-Dice validation, checkpoints) -> sliding-window
validation of the fold. A run lives in ``runs/<name>/`` with ``config.json``, ``plan.json``,
``splits.json`` and one folder per fold holding ``checkpoint_latest.pt``, ``checkpoint_best.pt``
(best moving-average validation pseudo-Dice), ``checkpoint_final.pt``, ``log.csv`` and
``validation.json``. Every checkpoint embeds the plan and the training configuration.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from core import plan as planlib
from core import planner
from core.config import TrainConfig
from core.folds import kfold_splits
from core.losses import LOSSES, DeepSupervisionLoss, get_loss
from data import cache, mamamia
from core.metrics import dice as dice_score
from core.optim import DEFAULT_OPTIMIZER, GRAD_CLIP, make_optimizer, poly_lr, set_lr
from core.postprocess import largest_component
from core.sliding_window import default_window_batch, sliding_window_predict
from data import augment
from data.loader import BatchLoader
from data.sampler import PatchSampler
from nets import activation_elements, build_network
from nets import checkpoint as ckptlib
from nets.upkern import upkern_load

log = logging.getLogger("train")
REPO = Path(__file__).resolve().parent


def default_runs_dir() -> Path:
    return Path(os.environ.get("MAMAMIA_RUNS", REPO / "runs"))


def default_cache_root(root: Path, kind: str = "preprocessed") -> Path:
    """``<repo>/.cache/<kind>/<dataset name>-<hash of its path>`` (or under $MAMAMIA_CACHE):
    never inside the dataset, so a read-only download works and inputs are never touched."""
    import hashlib
    base = Path(os.environ["MAMAMIA_CACHE"]) if os.environ.get("MAMAMIA_CACHE") else REPO / ".cache"
    tag = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]
    return base / kind / f"{Path(root).name}-{tag}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("seg", "pcr"), default="seg", help="segmentation (default) or pCR")
    p.add_argument("--arch", choices=("unet", "mednext"), default="unet")
    p.add_argument("--size", choices=("S", "B", "M", "L"), help="MedNeXt size (default: the plan's)")
    p.add_argument("--kernel", type=int, help="MedNeXt kernel size, odd (default: the plan's, 3)")
    p.add_argument("--loss", choices=sorted(LOSSES), default="dice_ce")
    p.add_argument("--fold", default=None,
                   help="0-4, a list like 0,2, or 'all' (default 0 for segmentation, all for pCR)")
    p.add_argument("--data", help="MAMA-MIA root folder (default: the phantom dataset, generated once)")
    p.add_argument("--centers", help="train on these centers only, e.g. DUKE,NACT")
    p.add_argument("--phases", default=None, help="phases as input channels, e.g. 0-2 (default 0,1,2); "
                   "cases with fewer phases are skipped with a warning")
    p.add_argument("--epochs", type=int, help="epochs (default: 1000 on GPU, a short CPU schedule otherwise)")
    p.add_argument("--iters", type=int, help="iterations per epoch (default 250, CPU: 25)")
    p.add_argument("--val-iters", type=int, help="validation batches per epoch (default 50, CPU: 4)")
    p.add_argument("--run", help="run name (default: derived from arch, kernel and loss)")
    p.add_argument("--runs-dir", default=None, help="folder of runs (default ./runs or $MAMAMIA_RUNS)")
    p.add_argument("--upkern-from", help="initialise from this run's checkpoint of the same fold (UpKern)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its latest checkpoints (starts it if it does not exist)")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop after N epochs of this invocation (continue later with --resume)")
    p.add_argument("--budget", help="planning budget: cpu, 8GB (default on CUDA), 40GB, 80GB, <n>GB")
    p.add_argument("--spacing", default=None, help="target spacing in mm, or 'auto' for nnU-Net's "
                   "median rule (default 1,1,1 like the MAMA-MIA seeds; the CPU plan uses 1.5,1.5,1.5)")
    p.add_argument("--resampling", choices=("cubic", "spline"), default="cubic",
                   help="image interpolation: Keys cubic (default, fast) or order-3 B-spline (nnU-Net's)")
    p.add_argument("--normalisation", default="zscore", choices=("zscore", "zscore_joint", "none"))
    p.add_argument("--clahe", action="store_true", help="per-slice CLAHE before normalisation (ablation)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a plan value, e.g. --set patch_size=128,128,128 (repeatable)")
    p.add_argument("--augment", default="nnunet", help="augmentation profile: nnunet, mri, none")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), help="default: sgd (unet), adamw (mednext)")
    p.add_argument("--lr", type=float, help="initial learning rate (default: the optimizer's)")
    p.add_argument("--batch-size", type=int, help="override the plan's batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="background batch workers")
    p.add_argument("--grad-checkpoint", action="store_true", help="MedNeXt gradient checkpointing")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--cache-dir", default=None,
                   help="preprocessed-case cache (default .cache/preprocessed/<dataset> or $MAMAMIA_CACHE)")
    # pCR options (--task pcr)
    p.add_argument("--masks", choices=("expert", "predicted"), default="expert",
                   help="pCR: tumour masks for radiomics (predicted = the latest infer.py output)")
    p.add_argument("--pred", help="pCR with --masks predicted: folder holding pred_segmentations/")
    p.add_argument("--clinical", action="store_true", help="pCR: add age/menopause/subtype as inputs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def resolve_data(args) -> Path:
    if args.data:
        return Path(args.data)
    from data import phantom
    return phantom.default_dataset()


def parse_folds(text: str, n_folds: int = 5) -> tuple[int, ...]:
    if text == "all":
        return tuple(range(n_folds))
    folds = tuple(mamamia.parse_list(text, int) or ())
    if not folds or any(not 0 <= f < n_folds for f in folds):
        raise SystemExit(f"--fold {text!r}: expected 0-{n_folds - 1}, a list, or 'all'")
    return folds


def training_cases(root: Path, args, phases) -> list[mamamia.Case]:
    cases = mamamia.load_dataset(root)
    has_split = any(c.split for c in cases)
    cases = mamamia.select(cases, centers=mamamia.parse_list(args.centers), phases=phases,
                           split="train" if has_split else None)
    cases = [c for c in cases if c.mask_path is not None]
    if len(cases) < 5:
        raise SystemExit(f"{root}: {len(cases)} training case(s) with expert masks after selection; "
                         "5-fold cross-validation needs at least 5")
    return cases


def network_kwargs(plan: planlib.Plan, cfg: TrainConfig) -> dict:
    """Builder arguments of ``cfg.arch`` from the plan (the only place they are derived)."""
    spec = plan.archs[cfg.arch]
    common = dict(in_channels=len(plan.channels), num_classes=2, deep_supervision=cfg.deep_supervision)
    if cfg.arch == "unet":
        return dict(common, features=spec.features, kernel_sizes=spec.kernel_sizes, strides=spec.strides,
                    n_conv_per_stage=spec.n_conv_per_stage)
    return dict(common, size=cfg.size or spec.size, kernel=cfg.kernel or spec.kernel,
                base_channels=spec.base_channels, checkpoint=cfg.grad_checkpoint)


def make_plan(cases, args, phases, device) -> planlib.Plan:
    fp = cache.compute_fingerprint(cases, phases, workers=args.workers, progress=not args.quiet)
    budget = args.budget or ("8GB" if device.type == "cuda" else "cpu")
    if args.spacing is None:
        # The CPU plan resamples to 1.5 mm: a 48^3 patch then sees 72 mm (tumour and its
        # surroundings) instead of 48 mm. On the default phantom, same 20 x 25 schedule, fold-0
        # validation Dice rose from 0.55 (0.43 with the largest component) at 1 mm to 0.72 (0.83).
        spacing = (1.5, 1.5, 1.5) if budget == "cpu" else (1.0, 1.0, 1.0)
    elif args.spacing == "auto":
        spacing = None
    else:
        try:
            spacing = tuple(float(s) for s in args.spacing.split(","))
        except ValueError:
            raise SystemExit(f"--spacing {args.spacing!r}: expected 'auto' or three numbers like 1,1,1")
        if len(spacing) != 3 or min(spacing) <= 0:
            raise SystemExit(f"--spacing {args.spacing!r}: expected three positive numbers like 1,1,1")

    def act(spec, patch, batch):  # the networks count their own activations
        kw = dict(num_classes=2)
        if spec.name == "unet":
            kw.update(features=spec.features, strides=spec.strides, n_conv_per_stage=spec.n_conv_per_stage)
        else:
            kw.update(size=spec.size, kernel=spec.kernel, base_channels=spec.base_channels)
        return activation_elements(spec.name, patch, batch, **kw)

    plan = planner.make_plan(fp, channels=range(len(phases)), spacing=spacing, budget=budget,
                             normalisation=args.normalisation, activation_elements=act, clahe=args.clahe)
    import dataclasses
    plan = dataclasses.replace(plan, channels=tuple(phases), resampling=args.resampling)
    if budget == "cpu" and args.arch == "mednext" and not any(o.startswith("patch_size=") for o in args.set):
        # measured on the 2-core development CPU: a MedNeXt-S step costs ~3x a U-Net step per
        # voxel (depthwise convolutions), so the CPU plan trains MedNeXt on 48^3 patches
        cpu_patch = tuple(min(p, 48) for p in plan.patch_size)
        plan = planlib.apply_overrides(plan, ["patch_size=" + ",".join(map(str, cpu_patch))])
        log.info("CPU plan for MedNeXt: patch %s", cpu_patch)
    if args.set:
        plan = planlib.apply_overrides(plan, args.set)
    return plan, fp


def cpu_schedule(args, device) -> dict:
    """nnU-Net's 1000 x 250 on GPU; a short schedule that finishes in minutes on a CPU."""
    gpu = device.type == "cuda"
    return dict(epochs=args.epochs or (1000 if gpu else 20), iters_per_epoch=args.iters or (250 if gpu else 25),
                val_iters=args.val_iters if args.val_iters is not None else (50 if gpu else 4))


# ----------------------------------------------------------------------------- distributed

class Distributed:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them everything runs in one process."""

    def __init__(self, rank=0, world=1, local_rank=0):
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "nccl":
            torch.cuda.set_device(local)
        return cls(torch.distributed.get_rank(), world, local)

    def barrier(self):
        if self.enabled:
            torch.distributed.barrier()

    def shutdown(self):
        if self.enabled:
            torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------- one fold

def _seed(*parts) -> int:
    """A 63-bit seed from integers (seed, fold, epoch, iteration, rank): batches are a pure
    function of their position, which makes --resume bit-exact with any number of workers."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def amp_settings(cfg: TrainConfig, device: torch.device):
    """bf16 autocast where the GPU supports it, else fp16 with a grad scaler; fp32 on CPU
    (this CPU has no native bf16: emulated bf16 math is slower than fp32, REFERENCE.md s.3)."""
    if device.type != "cuda" or not cfg.amp:
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def pseudo_dice(logits: torch.Tensor, target: torch.Tensor) -> tuple[int, int, int]:
    """TP, FP, FN of the argmax foreground over a batch (nnU-Net's online validation)."""
    pred = logits.argmax(1, keepdim=True) == 1
    gt = target == 1
    return (int((pred & gt).sum()), int((pred & ~gt).sum()), int((~pred & gt).sum()))


def validate_cases(model, cases, plan, device, autocast_dtype=None) -> dict:
    """Sliding-window Dice per validation case on the preprocessed grid (no TTA): raw, and after
    keeping the largest connected component (what infer.py writes by default)."""
    model.eval()
    out = {}
    with torch.no_grad():
        for c in cases:
            img = torch.from_numpy(np.array(c.image))
            probs = sliding_window_predict(model, img, plan.patch_size, num_classes=2, device=device,
                                           autocast_dtype=autocast_dtype,
                                           window_batch=default_window_batch(device))
            pred = (probs.argmax(0) == 1).cpu().numpy()
            gt = np.asarray(c.label[0]) == 1
            out[c.patient_id] = (float(dice_score(pred, gt)), float(dice_score(largest_component(pred), gt)))
    return out


def train_fold(cfg: TrainConfig, plan, net_kwargs: dict, cache_folder: Path, split: dict, fold: int,
               fold_dir: Path, device: torch.device, dist: Distributed = Distributed(), resume: bool = False,
               init=None, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train one fold; returns the sliding-window validation summary written to validation.json."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    train_cases = cache.load_cached(cache_folder, split["train"])
    val_cases = cache.load_cached(cache_folder, split["val"])
    batch_size = cfg.batch_size or plan.batch_size
    patch = tuple(plan.patch_size)
    sampler = PatchSampler([c.image for c in train_cases], [c.label for c in train_cases],
                           [c.fg for c in train_cases], patch, batch_size, seed=cfg.seed,
                           case_ids=[c.patient_id for c in train_cases])
    val_sampler = PatchSampler([c.image for c in val_cases], [c.label for c in val_cases],
                               [c.fg for c in val_cases], patch, batch_size, rotation_margin=False,
                               seed=cfg.seed, case_ids=[c.patient_id for c in val_cases])
    profile = augment.get_profile(cfg.augment)

    torch.manual_seed(_seed(cfg.seed, fold))
    model = build_network(cfg.arch, **net_kwargs).to(device)
    if init is not None:
        report = init(model)
        log.info("UpKern: %s", {k: len(v) for k, v in report.items()} if isinstance(report, dict) else report)
    opt_name = cfg.optimizer or DEFAULT_OPTIMIZER[cfg.arch]
    optimizer = make_optimizer(opt_name, model.parameters(), cfg.lr)
    lr0 = optimizer.param_groups[0]["lr"]
    autocast_dtype, scaler = amp_settings(cfg, device)
    loss_fn = DeepSupervisionLoss(get_loss(cfg.loss))
    ddp_model = model
    if dist.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    start_epoch, history, ema, best = 0, [], None, -1.0
    latest = fold_dir / "checkpoint_latest.pt"
    if resume and latest.exists():
        state = ckptlib.load(latest, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"], state["history"]
        ema, best = state["ema"], state["best_ema"]
        log.info("fold %d: resumed after epoch %d", fold, start_epoch)
    elif resume and (fold_dir / "checkpoint_final.pt").exists():
        start_epoch = cfg.epochs

    def payload(epoch):
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch,
                "history": history, "ema": ema, "best_ema": best, "fold": fold, "split": split,
                "arch": cfg.arch, "net_kwargs": net_kwargs, "plan": planlib.to_dict(plan),
                "config": cfg.to_dict()}

    def val_batch(epoch, it):
        rng = np.random.default_rng(_seed(cfg.seed, fold, epoch, it, dist.rank, 1))
        b = val_sampler.sample_batch(rng)
        return b["image"], b["label"]

    # batch i of this fold is a pure function of (seed, fold, rank, i): resuming at epoch e
    # restarts the stream at i = e * iters_per_epoch and sees exactly the batches it would have
    loader = BatchLoader(sampler, patch, profile, seed=_seed(cfg.seed, fold, dist.rank),
                         num_workers=max(1, cfg.workers), device=device,
                         start=start_epoch * cfg.iters_per_epoch)
    bar = None
    if progress and start_epoch < cfg.epochs:
        from tqdm import tqdm
        bar = tqdm(total=(cfg.epochs - start_epoch) * cfg.iters_per_epoch, desc=f"fold {fold}",
                   unit="it", dynamic_ncols=True)
    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        set_lr(optimizer, poly_lr(lr0, epoch, cfg.epochs))
        ddp_model.train()
        losses, waits = [], []
        for it in range(cfg.iters_per_epoch):
            batch = next(loader)
            waits.append(loader.wait_times[-1])
            x, y = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = ddp_model(x)
                loss = loss_fn(out, y)
            if not torch.isfinite(loss):
                loader.close()
                raise FloatingPointError(
                    f"fold {fold}: non-finite loss ({loss.item()}) at epoch {epoch} iteration {it}; "
                    f"training stopped. The last trusted state is {latest if latest.exists() else 'none'} "
                    f"(epoch {start_epoch if not history else history[-1]['epoch'] + 1}).")
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
                optimizer.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", ema=f"{ema or 0:.3f}")
        # online validation: pseudo-Dice over sampled patches, moving average (nnU-Net: 0.9/0.1)
        model.eval()
        tp = fp = fn = 0
        with torch.no_grad():
            for it in range(cfg.val_iters):
                x, y = val_batch(epoch, it)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    out = model(x.to(device))
                a, b_, c_ = pseudo_dice(out.float(), y.to(device))
                tp, fp, fn = tp + a, fp + b_, fn + c_
        dice = 2 * tp / max(2 * tp + fp + fn, 1) if cfg.val_iters else float("nan")
        ema = dice if ema is None else 0.9 * ema + 0.1 * dice
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "pseudo_dice": dice, "ema": ema,
                        "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - t0,
                        "data_wait": float(np.sum(waits))})
        if dist.rank == 0:
            improved = ema > best
            best = max(best, ema)
            ckptlib.save(payload(epoch + 1), latest)
            if improved:
                ckptlib.save(payload(epoch + 1), fold_dir / "checkpoint_best.pt")
            write_log(fold_dir / "log.csv", history)
    loader.close()
    if bar is not None:
        bar.close()
    if end_epoch < cfg.epochs:
        log.info("fold %d: stopped after epoch %d of %d (--stop-after); continue with --resume",
                 fold, end_epoch, cfg.epochs)
        return {"fold": fold, "stopped_at": end_epoch, "mean_dice": float("nan"), "cases": {}}
    if dist.rank == 0 and (start_epoch < cfg.epochs or not (fold_dir / "checkpoint_final.pt").exists()):
        ckptlib.save(payload(cfg.epochs), fold_dir / "checkpoint_final.pt")
    summary = {}
    if dist.rank == 0:
        per_case = validate_cases(model, val_cases, plan, device, autocast_dtype)
        raw = {k: v[0] for k, v in per_case.items()}
        lcc = {k: v[1] for k, v in per_case.items()}
        mean = lambda d: float(np.mean(list(d.values()))) if d else float("nan")  # noqa: E731
        summary = {"fold": fold, "mean_dice": mean(raw), "mean_dice_lcc": mean(lcc),
                   "cases": raw, "cases_lcc": lcc, "epochs": cfg.epochs,
                   "final_ema_pseudo_dice": ema, "seconds": float(sum(h["seconds"] for h in history))}
        (fold_dir / "validation.json").write_text(json.dumps(summary, indent=1))
    dist.barrier()
    return summary


def write_log(path: Path, history: list[dict]) -> None:
    keys = list(history[0])
    lines = [",".join(keys)] + [",".join(f"{h[k]:.6g}" if isinstance(h[k], float) else str(h[k]) for k in keys)
                                for h in history]
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- pCR

def train_pcr(args) -> int:
    """``--task pcr``: radiomics + kinetic features -> feature selection -> SNN, per fold.

    Training cases (train split, ``--centers``) with a known pCR and a mask: the expert one, or
    with ``--masks predicted`` the files in ``--pred DIR``/pred_segmentations (default: the most
    recent ``predictions/*`` folder). Features are cached in ``.cache/radiomics/<data>-<hash>/``
    (or ``--cache-dir``/<data>-radiomics/) ``features.csv``. Folds are the segmentation
    folds (``kfold_splits`` over the training cases with expert masks). Per fold the feature
    pipeline is fitted once and the SNN and the logistic-regression and random-forest baselines
    are trained on its output. ``runs/<--run or pcr[_clinical][_predicted]>/`` receives
    ``pcr_model.pt`` (the SNN fold ensemble with temperature and threshold, for ``infer.py
    --pcr``), ``report.json`` (cross-fitted metrics of every model, the phantom oracle, selected
    features), ``oof_predictions.csv`` and ``splits.json``.
    """
    import csv as _csv
    import io as _io

    from core import pcr
    from data import io as dio
    from data import radiomics
    from nets.snn import SNNClassifier

    t0 = time.time()
    root = resolve_data(args)
    runs_dir = Path(args.runs_dir) if args.runs_dir else default_runs_dir()
    name = args.run or ("pcr" + ("_clinical" if args.clinical else "")
                        + ("_predicted" if args.masks == "predicted" else ""))
    run_dir = runs_dir / name
    cases = mamamia.load_dataset(root)
    has_split = any(c.split for c in cases)
    cases = mamamia.select(cases, centers=mamamia.parse_list(args.centers), split="train" if has_split else None)
    if args.masks == "expert":
        masks = {c.patient_id: c.mask_path for c in cases if c.mask_path is not None}
    else:
        pred = Path(args.pred) if args.pred else None
        if pred is None:
            found = sorted((REPO / "predictions").glob("*/pred_segmentations"), key=lambda p: p.stat().st_mtime)
            if not found:
                raise SystemExit("--masks predicted: no predictions/*/pred_segmentations found; pass --pred DIR")
            pred = found[-1].parent
        masks = radiomics.predicted_masks(cases, pred)
        print(f"predicted masks from {pred}: {len(masks)} of {len(cases)} training case(s)")
    used = [c for c in cases if c.patient_id in masks and c.clinical.pcr is not None]
    y = np.array([int(c.clinical.pcr) for c in used], int)
    if len(used) < 10 or y.min(initial=1) == y.max(initial=0):
        raise SystemExit(f"{root}: {len(used)} training case(s) with a mask and a known pCR "
                         f"({int(y.sum())} positive); need at least 10 and both outcomes")
    print(f"pCR: {len(used)} case(s), {int(y.sum())} pCR, {len(cases) - len(used)} without mask or pCR skipped")

    # the segmentation folds: the same call over the same ids as train.py --task seg
    fold_ids = sorted({c.patient_id for c in cases if c.mask_path is not None} | {c.patient_id for c in used})
    splits = kfold_splits(fold_ids, n_splits=5, seed=12345)
    fold_of = np.array([next(k for k, s in enumerate(splits) if c.patient_id in s["val"]) for c in used])
    folds = parse_folds(args.fold or "all")

    if args.cache_dir:
        cache_csv = Path(args.cache_dir) / f"{root.name}-radiomics" / "features.csv"
    else:  # like the preprocessed cases: under the repository (or $MAMAMIA_CACHE), never in the data
        cache_csv = default_cache_root(root, "radiomics") / "features.csv"
    rcfg = radiomics.RadiomicsConfig()
    table = radiomics.extract_features(used, masks, args.masks, rcfg, cache=cache_csv,
                                       workers=args.workers, progress=not args.quiet)
    if not table.valid.all():
        bad = {i: n for i, n, v in zip(table.ids, table.notes, table.valid) if not v}
        print(f"{len(bad)} case(s) without usable mask features (imputed): {bad}")
    records = [radiomics.clinical_record(c) for c in used] if args.clinical else None
    pcfg = pcr.PipelineConfig(seed=args.seed)
    snn_params = SNNClassifier().get_params()
    classifiers = {"snn": lambda s: SNNClassifier(**{**snn_params, "seed": s}), **pcr.BASELINES}
    t_fit = time.time()

    def fold_done(f):
        if not args.quiet:
            print(f"fold {f}: fitted ({time.time() - t_fit:.0f} s)")

    cv = pcr.cross_validate(table.values, y, table.names, fold_of, folds, classifiers, pcfg, records,
                            ids=table.ids, on_fold=fold_done)
    metrics = {k: pcr.evaluate(cv.oof[k], y, fold_of, folds, shift=cv.shift) for k in classifiers}

    oracle = None
    latents = root / "phantom_latents.csv"
    if latents.exists():
        with open(latents, newline="") as fh:
            p_true = {r["patient_id"]: float(r["p_pcr"]) for r in _csv.DictReader(fh)}
        if all(i in p_true for i in table.ids):
            oracle = pcr.oracle([p_true[i] for i in table.ids], y, fold_of, folds)

    snn = metrics["snn"]
    model = pcr.PCRModel(feature_names=table.names, folds=cv.models, classifier="snn",
                         temperature=snn["temperature"], threshold=snn["threshold"], clinical=args.clinical,
                         settings={"radiomics": rcfg.to_dict(), "masks": args.masks})
    config = {"data": str(root), "centers": args.centers, "masks": args.masks, "clinical": args.clinical,
              "folds": list(folds), "seed": args.seed, "pipeline": pcfg.to_dict(),
              "snn": {k: list(v) if isinstance(v, tuple) else v for k, v in snn_params.items() if k != "seed"},
              "radiomics": rcfg.to_dict()}
    run_dir.mkdir(parents=True, exist_ok=True)
    ckptlib.save({"format": "mamamia-pcr", "version": 1, "model": model, "config": config}, run_dir / "pcr_model.pt")
    report = {"config": config, "cases": len(used), "positives": int(y.sum()), "metrics": metrics,
              "oracle": oracle, "seconds": round(time.time() - t0, 1),
              "features": {"extracted": len(table.names),
                           "per_fold": {str(m.fold): m.pipeline.state() for m in cv.models}}}
    dio.atomic_write_text(run_dir / "report.json", json.dumps(report, indent=1))
    dio.atomic_write_text(run_dir / "splits.json", json.dumps(splits, indent=1))
    buf = _io.StringIO()
    w = _csv.writer(buf, lineterminator="\n")
    w.writerow(["patient_id", "fold", "pcr", "prior_logit"] + [f"logit_{k}" for k in classifiers])
    for i, pid in enumerate(table.ids):
        w.writerow([pid, int(fold_of[i]), int(y[i]), repr(float(cv.shift[i]))]
                   + [repr(float(cv.oof[k][i])) for k in classifiers])
    dio.atomic_write_text(run_dir / "oof_predictions.csv", buf.getvalue())

    # BA: cross-fitted threshold; BA@0.5: the classifier's own decision; ECE of its own
    # probabilities, then after prior correction and temperature (cross-fitted)
    print(f"\n{'model':8s} {'BA':>6s} {'BA@0.5':>7s} {'AUC':>6s} {'ECE':>6s} {'ECE(cal)':>8s} {'T':>6s}"
          f"   (cross-validated, {len(folds)} fold(s), {len(used)} cases)")
    for k, m in metrics.items():
        print(f"{k:8s} {m['balanced_accuracy']:6.3f} {m['balanced_accuracy_at_0.5']:7.3f} {m['auc']:6.3f} "
              f"{m['ece_before']:6.3f} {m['ece_after']:8.3f} {m['temperature']:6.2f}")
    if oracle is not None:
        print(f"{'oracle':8s} {oracle['balanced_accuracy']:6.3f} {'':7s} {oracle['auc']:6.3f}   "
              f"(expected BA {oracle['expected_balanced_accuracy']:.3f})")
    if len(folds) < 5:
        print(f"note: {len(folds)} fold(s) trained; --fold all gives the full cross-validation")
    print(f"pCR model -> {run_dir} ({report['seconds']:.0f} s)")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.task == "pcr":
        return train_pcr(args)
    dist = Distributed.from_env()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    root = resolve_data(args)
    runs_dir = Path(args.runs_dir) if args.runs_dir else default_runs_dir()
    run_name = args.run or (f"{args.arch}" + (f"_k{args.kernel or 3}" if args.arch == "mednext" else "")
                            + f"_{args.loss}")
    run_dir = runs_dir / run_name
    folds = parse_folds(args.fold or "0")

    if args.resume and not (run_dir / "config.json").exists():
        log.info("--resume: %s does not exist yet; starting it", run_dir)
        args.resume = False
    if args.resume:
        cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())).replace(folds=folds)
        plan = planlib.load_plan(run_dir / "plan.json")
        phases = list(plan.channels)
        cases = training_cases(root, args, phases)
    else:
        phases = mamamia.parse_list(args.phases, int) or [0, 1, 2]
        cases = training_cases(root, args, phases)
        sched = cpu_schedule(args, device)
        cfg = TrainConfig(arch=args.arch, size=args.size, kernel=args.kernel, loss=args.loss,
                          optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
                          augment=args.augment, seed=args.seed, folds=folds,
                          grad_checkpoint=args.grad_checkpoint, amp=not args.no_amp, workers=args.workers,
                          upkern_from=args.upkern_from, **sched)
        existing = [f for f in folds if (run_dir / f"fold_{f}" / "checkpoint_latest.pt").exists()]
        if existing:
            raise SystemExit(f"{run_dir}: fold(s) {existing} already trained; use --resume or another --run")
        if args.upkern_from:
            plan = planlib.load_plan(runs_dir / args.upkern_from / "plan.json")
            fp = None
        else:
            plan, fp = make_plan(cases, args, phases, device)
        if dist.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            planlib.save_plan(plan, run_dir / "plan.json")
            if fp is not None:
                planlib.save_plan(fp, run_dir / "fingerprint.json")
            (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
            (run_dir / "data.json").write_text(json.dumps(
                {"root": str(root), "centers": args.centers, "phases": phases,
                 "cases": [c.patient_id for c in cases]}, indent=1))

    if args.resume and (run_dir / "splits.json").exists():
        splits = json.loads((run_dir / "splits.json").read_text())
    else:
        splits = kfold_splits([c.patient_id for c in cases], n_splits=cfg.n_folds, seed=12345)
    if dist.rank == 0 and not args.resume:
        (run_dir / "splits.json").write_text(json.dumps(splits, indent=1))
    cache_root = Path(args.cache_dir) if args.cache_dir else default_cache_root(root)
    if dist.rank == 0:
        folder = cache.build_cache(cases, plan, cache_root, workers=args.workers, progress=not args.quiet)
    dist.barrier()
    folder = cache_root / cache.cache_key(plan)
    kwargs = network_kwargs(plan, cfg)

    results = {}
    for fold in folds:
        fold_dir = run_dir / f"fold_{fold}"
        init = None
        if cfg.upkern_from and not args.resume:
            src = runs_dir / cfg.upkern_from / f"fold_{fold}" / "checkpoint_final.pt"
            init = lambda model, src=src: upkern_load(model, ckptlib.load(src)["model"])  # noqa: E731
        t0 = time.time()
        results[fold] = train_fold(cfg, plan, kwargs, folder, splits[fold], fold, fold_dir, device,
                                        dist=dist, resume=args.resume, init=init,
                                        progress=not args.quiet and dist.rank == 0,
                                        stop_after=args.stop_after)
        if dist.rank == 0:
            print(f"fold {fold}: validation Dice {results[fold]['mean_dice']:.4f} "
                  f"(largest component {results[fold].get('mean_dice_lcc', float('nan')):.4f}) "
                  f"({len(results[fold]['cases'])} cases), {time.time() - t0:.0f} s -> {fold_dir}")
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
