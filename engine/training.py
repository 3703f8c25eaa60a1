"""The training loop of one fold, its sliding-window validation, and the distributed context.

Reads top to bottom: cached cases -> samplers -> network (``nets.build(cfg.network)``) ->
optimiser -> batches -> epochs (train, pseudo-Dice validation, checkpoints) -> sliding-window
validation of the fold. Batch ``i`` of a fold is a pure function of ``(seed, fold, rank, i)``,
so ``resume`` is bit-exact with any number of workers.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from core import plan as planlib
from core.config import FULL_FOLD, TrainConfig
from core.losses import DeepSupervisionLoss, get_loss
from core.metrics import dice as dice_score
from core.optim import GRAD_CLIP, make_optimizer, scheduled_lr, set_lr
from core.postprocess import largest_component
from core.sliding_window import default_window_batch, sliding_window_predict
from data import augment, cache, plots
from data.loader import BatchLoader
from data.sampler import PatchSampler
from engine.runs import RunDir, fold_name
from nets import build
from nets import checkpoint as ckptlib

log = logging.getLogger(__name__)


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


def seed_of(*parts) -> int:
    """A 63-bit seed from integers (seed, fold, epoch, iteration, rank): batches are a pure
    function of their position, which makes resuming bit-exact with any number of workers.
    Negative parts (the full-data fold, -1) map to 2**32 + p."""
    parts = [int(p) if int(p) >= 0 else 2 ** 32 + int(p) for p in parts]
    return int(np.random.SeedSequence(parts).generate_state(2, np.uint64)[0] >> 1)


def amp_settings(cfg: TrainConfig, device: torch.device):
    """bf16 autocast where the GPU supports it, else fp16 with a grad scaler; fp32 on CPU
    (a CPU without native bf16 emulates it, slower than fp32)."""
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
    keeping the largest connected component (what inference writes by default)."""
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


def write_log(path: Path, history: list[dict]) -> None:
    from core.atomic import atomic_write
    keys = list(history[0])
    lines = [",".join(keys)] + [",".join(f"{h[k]:.6g}" if isinstance(h[k], float) else str(h[k]) for k in keys)
                                for h in history]
    atomic_write(path, "\n".join(lines) + "\n")


def epochs_without_improvement(history: list[dict]) -> int:
    """Epochs since the best moving-average pseudo-Dice (0 when the last epoch is the best)."""
    emas = [h["ema"] for h in history if h.get("ema") == h.get("ema")]
    if not emas:
        return 0
    return len(emas) - 1 - max(range(len(emas)), key=lambda i: (emas[i], -i))


# --time-budget never plans fewer epochs than this: the poly/cosine schedule needs a few epochs to
# decay, and below ~3 epochs of the CPU plan's 25 iterations no network here segments at all
MIN_BUDGET_EPOCHS = 3


def budget_epochs(epoch_seconds: float, budget_min: float, max_epochs: int, warmup_epochs: int = 0) -> int:
    """The epochs that fit ``budget_min`` minutes when one epoch (training and its online
    validation) takes ``epoch_seconds``: ``floor(60 budget / epoch_seconds)``, at most
    ``max_epochs``, at least :data:`MIN_BUDGET_EPOCHS` (and more than the warm-up) where
    ``max_epochs`` allows. The first epoch, which is timed, is the slowest (workers starting,
    first allocations), so the estimate errs on the short side."""
    fit = math.floor(60.0 * budget_min / max(epoch_seconds, 1e-9))
    floor_ = min(max_epochs, max(MIN_BUDGET_EPOCHS, warmup_epochs + 1))
    return int(min(max_epochs, max(floor_, fit)))


def _finite_weights(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.state_dict().values() if p.is_floating_point())


def train_fold(cfg: TrainConfig, plan: planlib.Plan, cache_folder: Path, split: dict, fold: int,
               run: RunDir, device: torch.device, dist: Distributed = Distributed(), resume: bool = False,
               init: Callable[[torch.nn.Module], object] | None = None, progress: bool = True,
               stop_after: int | None = None, loss_factory=None) -> dict:
    """Train one fold; returns the sliding-window validation summary written to validation.json."""
    fold_dir = run.fold_dir(fold)
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
                               seed=cfg.seed, case_ids=[c.patient_id for c in val_cases]) if val_cases else None
    val_iters = cfg.val_iters if val_cases else 0   # --fold full: no validation cases
    name = fold_name(fold)
    if cfg.early_stop and not val_iters:
        log.warning("fold %s: early stopping needs validation batches; it is off", name)
    profile = augment.with_overrides(cfg.augment, cfg.augment_overrides)

    torch.manual_seed(seed_of(cfg.seed, fold))
    model = build(cfg.network).to(device)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    lr0 = optimizer.param_groups[0]["lr"]
    autocast_dtype, scaler = amp_settings(cfg, device)
    loss_fn = (loss_factory or DeepSupervisionLoss)(get_loss(cfg.loss, gamma=cfg.focal_gamma, alpha=cfg.focal_alpha))
    ddp_model = model
    if dist.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    start_epoch, history, ema, best = 0, [], None, -1.0
    # epochs of this fold's schedule: --epochs, or what --time-budget found to fit after the first
    # epoch (kept in the checkpoints, so a resumed fold keeps its schedule)
    total, planned = cfg.epochs, cfg.time_budget_min is None
    latest = run.checkpoint(fold, "latest")
    if resume and latest.exists():
        state = ckptlib.load(latest, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"], state["history"]
        ema, best = state["ema"], state["best_ema"]
        if state.get("planned_epochs") is not None:
            total, planned = min(int(state["planned_epochs"]), cfg.epochs), True
        log.info("fold %s: resumed after epoch %d", fold_name(fold), start_epoch)
    elif resume and run.checkpoint(fold, "final").exists():
        start_epoch, planned = cfg.epochs, True
    elif init is not None:
        report = init(model)
        log.info("UpKern: %s", {k: len(v) for k, v in vars(report).items()} if hasattr(report, "__dict__")
                 else report)

    def payload(epoch):
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch,
                "history": history, "ema": ema, "best_ema": best, "fold": fold, "split": split,
                "plan": planlib.to_dict(plan), "config": cfg.to_dict(),
                "planned_epochs": total if planned and cfg.time_budget_min is not None else None}

    def val_batch(epoch, it):
        rng = np.random.default_rng(seed_of(cfg.seed, fold, epoch, it, dist.rank, 1))
        b = val_sampler.sample_batch(rng)
        return b["image"], b["label"]

    # resuming at epoch e restarts the stream at i = e * iters_per_epoch: the same batches
    loader = BatchLoader(sampler, patch, profile, seed=seed_of(cfg.seed, fold, dist.rank),
                         num_workers=max(1, cfg.workers), device=device,
                         start=start_epoch * cfg.iters_per_epoch)
    bar = None
    if progress and start_epoch < total:
        from tqdm import tqdm
        bar = tqdm(total=(total - start_epoch) * cfg.iters_per_epoch, desc=f"fold {name}",
                   unit="it", dynamic_ncols=True)
    stop_at = math.inf if stop_after is None else start_epoch + stop_after
    stopped_early = None
    epoch = start_epoch
    try:
        while epoch < min(total, stop_at):
            if val_iters and epochs_without_improvement(history) >= (cfg.early_stop or math.inf):
                stopped_early = epoch
                log.info("fold %s: early stop after epoch %d: no better moving-average pseudo-Dice for %d "
                         "epochs (best checkpoint kept)", name, epoch, cfg.early_stop)
                break
            t0 = time.time()
            set_lr(optimizer, scheduled_lr(cfg.schedule, lr0, epoch, total, cfg.warmup_epochs))
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
                    raise FloatingPointError(
                        f"fold {name}: non-finite loss ({loss.item()}) at epoch {epoch} iteration {it}; "
                        f"training stopped. The last trusted state is "
                        f"{latest if latest.exists() else 'none'} ({epoch} epoch(s) done); continue with "
                        "--resume, or start a new run with a lower --lr.")
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
            finite = True
            with torch.no_grad():
                for it in range(val_iters):
                    xv, y = val_batch(epoch, it)
                    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                        out = model(xv.to(device))
                    finite = finite and bool(torch.isfinite(out).all())
                    a, b_, c_ = pseudo_dice(out.float(), y.to(device))
                    tp, fp, fn = tp + a, fp + b_, fn + c_
                if not val_iters:   # still check that the new weights give finite outputs
                    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                        finite = bool(torch.isfinite(model(x)).all())
            dice = 2 * tp / max(2 * tp + fp + fn, 1) if val_iters else float("nan")
            ema = dice if ema is None else 0.9 * ema + 0.1 * dice
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), "pseudo_dice": dice, "ema": ema,
                            "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - t0,
                            "data_wait": float(np.sum(waits))})
            # weights can blow up (say to 1e29) while the epoch's losses stay finite; such a state
            # is never saved, so the named checkpoint is one that resumes
            if not finite or not _finite_weights(model):
                raise FloatingPointError(
                    f"fold {name}: the weights after epoch {epoch} give non-finite outputs; training stopped "
                    f"and that state was not saved. The last trusted state is "
                    f"{latest if latest.exists() else 'none'} ({epoch} epoch(s) done); continue with "
                    "--resume, or start a new run with a lower --lr.")
            if not planned:
                total, planned = _plan_budget(cfg, history[-1]["seconds"], dist, name), True
                if bar is not None:
                    bar.total = (total - start_epoch) * cfg.iters_per_epoch
                    bar.refresh()
            if dist.rank == 0:
                improved = ema > best
                best = max(best, ema)
                ckptlib.save(payload(epoch + 1), latest)
                if improved:
                    ckptlib.save(payload(epoch + 1), run.checkpoint(fold, "best"))
                write_log(run.log_path(fold), history)
                plots.training_curves(history, run.progress_path(fold), f"{run.name} fold {name}")
            epoch += 1
    finally:
        loader.close()
        if bar is not None:
            bar.close()
    if epoch < total and stopped_early is None:
        log.info("fold %s: stopped after epoch %d of %d (--stop-after); continue with --resume",
                 name, epoch, total)
        return {"fold": fold, "stopped_at": epoch, "mean_dice": float("nan"), "cases": {}}
    done = len(history) if stopped_early is not None else total
    final = run.checkpoint(fold, "final")
    if dist.rank == 0 and (start_epoch < done or not final.exists()):
        ckptlib.save(payload(done), final)
    summary = {}
    if dist.rank == 0:
        summary = {"fold": fold, "epochs": done, "early_stopped": stopped_early is not None,
                   "final_ema_pseudo_dice": ema, "seconds": float(sum(h["seconds"] for h in history)),
                   "cases": {}}
        if val_cases:
            per_case = validate_cases(model, val_cases, plan, device, autocast_dtype)
            raw = {k: v[0] for k, v in per_case.items()}
            lcc = {k: v[1] for k, v in per_case.items()}
            summary.update(mean_dice=float(np.mean(list(raw.values()))),
                           mean_dice_lcc=float(np.mean(list(lcc.values()))), cases=raw, cases_lcc=lcc)
        run.write_json(run.validation_path(fold), summary)
    dist.barrier()
    return summary


def _plan_budget(cfg: TrainConfig, epoch_seconds: float, dist: Distributed, name: str) -> int:
    """--time-budget: the schedule's length from the first epoch's time (the slowest rank's, so
    every rank plans the same epochs), said once in the output."""
    if dist.enabled:
        t = torch.tensor([epoch_seconds], dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        epoch_seconds = float(t.item())
    total = budget_epochs(epoch_seconds, cfg.time_budget_min, cfg.epochs, cfg.warmup_epochs)
    if dist.rank == 0:
        msg = (f"fold {name}: first epoch took {epoch_seconds:.1f} s; --time-budget {cfg.time_budget_min:g} min "
               f"-> {total} of {cfg.epochs} epochs" + ("" if total == cfg.epochs else " (schedule shortened to fit)"))
        (log.warning if total < cfg.epochs else log.info)(msg)
    return total


def train_run(prep, device: torch.device, dist: Distributed = Distributed(), progress: bool = True,
              stop_after: int | None = None, workers: int = 2, cache_dir=None,
              on_fold: Callable[[int, dict, float], None] | None = None) -> dict[int, dict]:
    """Train every requested fold of a prepared run (``engine.setup``); preprocessing is cached."""
    from engine.runs import cache_root
    from nets.upkern import upkern_load

    root = Path(prep.data.root)
    cache_base = cache_root(root, override=cache_dir)
    if dist.rank == 0:
        cache.build_cache(prep.cases, prep.plan, cache_base, workers=workers, progress=progress)
    dist.barrier()
    folder = cache_base / cache.cache_key(prep.plan)
    results = {}
    for fold in prep.folds:
        init = None
        if prep.source is not None:
            src = prep.source.checkpoint(fold if prep.config.upkern_fold is None else prep.config.upkern_fold, "final")
            init = lambda model, src=src: upkern_load(model, ckptlib.read(src)["model"])  # noqa: E731
        t0 = time.time()
        split = ({"train": list(prep.data.cases), "val": []} if fold == FULL_FOLD else prep.splits[fold])
        results[fold] = train_fold(prep.config.replace(workers=workers), prep.plan, folder, split, fold, prep.run, device,
                                   dist=dist, resume=prep.resume, init=init,
                                   progress=progress and dist.rank == 0, stop_after=stop_after)
        if on_fold is not None and dist.rank == 0:
            on_fold(fold, results[fold], time.time() - t0)
    return results
