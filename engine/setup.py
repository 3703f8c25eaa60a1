"""From the user's flags to a run description, checked before any expensive work.

``TrainRequest`` holds the flags as given (``None`` = not given). ``prepare`` validates every
flag, then resolves the run in one of three ways:

- a new run: the data selection, a fresh fingerprint and plan, new folds;
- ``upkern_from``: the source run's stored description (data selection and folds, plan, network,
  optimiser, schedule, loss, epochs) with only the kernel changed and whatever else the user sets
  explicitly. A flag that would change the folds (``data``, ``centers``) is an error unless
  ``new_splits``; the input phases and the plan's preprocessing cannot change (the weights were
  trained on them); a missing or unfinished source fold is an error;
- ``resume`` (or more folds of an existing run): the stored description; an explicitly given flag
  that differs from it is an error listing every difference, except ``epochs`` (see
  ``core.optim.scheduled_lr`` for how the schedule is extended).

Nothing is written until ``create`` (after planning succeeded), so a failed start leaves no
run folder behind. The effective flags are stored as ``request.json`` for later comparisons.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from core import plan as planlib
from core.config import FULL_FOLD, DataSelection, NetSpec, TrainConfig
from core.errors import UserError
from engine.flags import (FOLD_FLAGS, N_FOLDS, PLAN_FLAGS, SPLIT_SEED, TrainRequest,  # noqa: F401
                          apply_recipe, check_flags, effective, given, parse_folds)
from engine.runs import RunDir, dataset_root

log = logging.getLogger(__name__)

@dataclass
class Prepared:
    """A validated run, ready to train (``create`` writes its folder)."""

    run: RunDir
    config: TrainConfig
    plan: planlib.Plan | None            # None: a new run, planned by ``plan_run``
    data: DataSelection
    request: dict                        # effective description flags
    folds: tuple[int, ...]
    splits: list[dict] | None
    resume: bool
    source: RunDir | None = None         # the UpKern source
    cases: list = field(default_factory=list)
    fingerprint: object = None
    selection: dict | None = None        # what the selection kept and dropped (selection.json)


def default_run_name(eff: dict, kernel: int | None) -> str:
    return eff["arch"] + (f"_k{kernel}" if kernel is not None else "") + f"_{eff['loss']}"


def _differences(stored: dict, eff: dict, flags) -> list[str]:
    return [f"--{k.replace('_', '-')}: run has {stored.get(k)!r}, given {eff[k]!r}"
            for k in sorted(flags) if k in stored and stored.get(k) != eff[k]]


# ----------------------------------------------------------------------------- resolution

def _config(eff: dict, network: NetSpec, folds, upkern_from=None, upkern_fold=None) -> TrainConfig:
    try:
        return TrainConfig(network=network, loss=eff["loss"], optimizer=eff["optimizer"], lr=eff["lr"],
                           schedule=eff["schedule"], epochs=eff["epochs"], iters_per_epoch=eff["iters"],
                           val_iters=eff["val_iters"], batch_size=eff["batch_size"], augment=eff["augment"],
                           seed=eff["seed"], folds=tuple(folds), n_folds=N_FOLDS, amp=eff["amp"],
                           focal_gamma=eff.get("focal_gamma"), focal_alpha=eff.get("focal_alpha"),
                           augment_overrides=tuple(eff.get("aug_set") or ()),
                           upkern_from=upkern_from, upkern_fold=upkern_fold, early_stop=eff.get("early_stop"),
                           warmup_epochs=eff.get("warmup") or 0, time_budget_min=eff.get("time_budget"))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def network_for(plan: planlib.Plan, eff: dict) -> tuple[planlib.Plan, NetSpec]:
    """The plan narrowed to the run's network (with --size/--kernel applied) and its NetSpec."""
    import nets
    entry = nets.entry(eff["arch"])
    changes = {k: eff[k] for k in entry.plan_keys if eff.get(k) is not None}
    try:
        arch = dataclasses.replace(plan.archs[eff["arch"]], **changes)
        plan = dataclasses.replace(plan, archs={eff["arch"]: arch})
    except ValueError as exc:
        raise UserError(str(exc)) from None
    options = {kw: eff[flag] for flag, kw in entry.options if eff.get(flag)}
    return plan, nets.network_spec(plan, eff["arch"], **options)


def _stored_request(run: RunDir) -> dict | None:
    p = run.request_path
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: invalid JSON ({exc})") from exc
    if not isinstance(d, dict):
        raise UserError(f"{p}: expected a JSON object")
    return d


def prepare(req: TrainRequest, device_type: str = "cpu") -> Prepared:
    """Validate ``req`` and resolve the run it describes (nothing is read from the dataset and
    nothing is written; see the module docstring)."""
    eff = effective(req, device_type)
    explicit = given(req)
    folds = parse_folds(req.fold)
    if req.upkern_from:
        return _prepare_upkern(req, eff, explicit, folds)
    name = req.run or default_run_name(eff, eff["kernel"] if eff["kernel"] is not None else (
        3 if "kernel" in _plan_keys(eff["arch"]) else None))
    run = RunDir.named(name, req.runs_dir)
    if run.exists():
        return _prepare_existing(req, run, eff, explicit, folds)
    if req.resume:
        log.info("--resume: %s does not exist yet; starting it", run.path)
    if run.path.exists() and any(run.path.iterdir()):
        raise UserError(f"{run.path}: exists but holds no run description (config.json); "
                        "remove it or choose another --run")
    data = DataSelection(root=eff["data"] or "", centers=eff["centers"], phases=eff["phases"],
                         max_cases=eff["max_cases"], sample_seed=eff["sample_seed"], select=eff["select"],
                         drop_worst=eff["drop_worst"], drop_worst_by=eff["drop_worst_by"])
    return Prepared(run, config=None, plan=None, data=data, request=eff, folds=folds, splits=None,
                    resume=False)


def _plan_keys(arch: str) -> tuple[str, ...]:
    import nets
    return nets.entry(arch).plan_keys


def _prepare_existing(req, run: RunDir, eff, explicit, folds) -> Prepared:
    trained = [f for f in folds if run.checkpoint(f, "latest").exists() or run.checkpoint(f, "final").exists()]
    if trained and not req.resume:
        raise UserError(f"{run.path}: fold(s) {trained} already trained; use --resume or another --run")
    stored = _stored_request(run)
    config, plan, data = run.load_config(), run.load_plan(), run.load_data()
    splits = run.load_splits()
    if stored is None:
        log.warning("%s: no request.json (an older run); the given flags are not compared", run.path)
        stored = {}
    diffs = _differences(stored, eff, explicit - {"epochs"})
    if diffs:
        raise UserError(f"{run.path}: the given flags differ from the stored run: " + "; ".join(diffs)
                        + " (leave them out to continue the run as it was, or choose another --run)")
    if req.epochs is not None and req.epochs != config.epochs:
        if req.epochs < max((_epoch_of(run, f) for f in folds), default=0):
            raise UserError(f"--epochs {req.epochs}: the run has already trained more epochs")
        log.info("--epochs %d: extending the run from %d epochs", req.epochs, config.epochs)
        config = config.replace(epochs=req.epochs)
        stored = {**stored, "epochs": req.epochs}
    config = config.replace(folds=folds)
    return Prepared(run, config, plan, data, stored, folds, splits, resume=True,
                    source=RunDir.named(config.upkern_from, req.runs_dir) if config.upkern_from else None)


def _epoch_of(run: RunDir, fold: int) -> int:
    from nets import checkpoint as ckptlib
    p = run.checkpoint(fold, "latest")
    return int(ckptlib.read(p).get("epoch", 0)) if p.exists() else 0


def _prepare_upkern(req, eff, explicit, folds) -> Prepared:
    src = RunDir.named(req.upkern_from, req.runs_dir)
    if not src.exists():
        raise UserError(f"--upkern-from {req.upkern_from}: {src.path} is not a run folder")
    src_cfg, src_plan, src_data = src.load_config(), src.load_plan(), src.load_data()
    src_splits = src.load_splits()
    src_req = _stored_request(src) or {}
    if "arch" in explicit and eff["arch"] != src_cfg.network.name:
        raise UserError(f"--arch {eff['arch']}: the UpKern source {src.name} is a {src_cfg.network.name}")
    if "kernel" not in explicit:
        raise UserError("--upkern-from needs --kernel (the larger kernel to initialise)")
    if src_cfg.network.kwargs.get("kernel") == eff["kernel"]:
        raise UserError(f"--kernel {eff['kernel']}: the source run {src.name} already has this kernel")
    if "kernel" not in src_cfg.network.kwargs:
        raise UserError(f"--upkern-from {src.name}: its network ({src_cfg.network.name}) has no kernel to enlarge")
    # the source's description, with the explicitly given flags on top
    inherited = {**src_req, "arch": src_cfg.network.name, "loss": src_cfg.loss,
                 "optimizer": src_cfg.optimizer, "lr": src_cfg.lr, "schedule": src_cfg.schedule,
                 "epochs": src_cfg.epochs, "iters": src_cfg.iters_per_epoch, "val_iters": src_cfg.val_iters,
                 "batch_size": src_cfg.batch_size, "augment": src_cfg.augment, "seed": src_cfg.seed,
                 "amp": src_cfg.amp, "data": src_data.root or None, "centers": src_data.centers and list(src_data.centers),
                 "phases": list(src_data.phases), "max_cases": src_data.max_cases,
                 "sample_seed": src_data.sample_seed, "select": src_data.select,
                 "drop_worst": src_data.drop_worst, "drop_worst_by": src_data.drop_worst_by,
                 "early_stop": src_cfg.early_stop, "time_budget": src_cfg.time_budget_min,
                 "warmup": src_cfg.warmup_epochs, "focal_gamma": src_cfg.focal_gamma,
                 "aug_set": list(src_cfg.augment_overrides),
                 "focal_alpha": src_cfg.focal_alpha}
    changed = {k for k in explicit if k in inherited and inherited[k] != eff[k]}
    fold_changes = sorted(changed & set(FOLD_FLAGS))
    if fold_changes and not req.new_splits:
        raise UserError("--upkern-from: " + "; ".join(_differences(inherited, eff, fold_changes))
                        + " would change the cases and so the folds of the source run (a validation "
                        "case could have been a training case of the source); pass --new-splits to do it anyway")
    plan_changes = sorted(changed & set(PLAN_FLAGS))
    if plan_changes:
        raise UserError("--upkern-from: " + "; ".join(_differences(inherited, eff, plan_changes))
                        + ": the target trains on the source's plan and input phases")
    for flag in ("size",):
        if flag in explicit and src_cfg.network.kwargs.get(flag) != eff[flag]:
            raise UserError(f"--{flag} {eff[flag]}: UpKern changes only the kernel (source {flag} "
                            f"{src_cfg.network.kwargs.get(flag)})")
    merged = {**inherited, **{k: eff[k] for k in explicit}}
    merged.setdefault("size", None)
    done = [f for f in src.folds() if src.checkpoint(f, "final").is_file()]
    source_fold = None
    if req.upkern_fold == "best":
        source_fold = best_fold(src)
        log.info("UpKern from %s fold %s, the best by validation Dice", src.name, source_fold)
    elif req.upkern_fold is not None:
        source_fold = int(req.upkern_fold)
    elif FULL_FOLD in folds:
        raise UserError("--fold full with --upkern-from needs --upkern-fold best or a fold number")
    missing = sorted({source_fold} if source_fold is not None else set(folds) - set(done))
    missing = [f for f in missing if f not in done]
    if missing:
        raise UserError(f"--upkern-from {src.name}: fold(s) {missing} missing or unfinished "
                        f"(no {src.checkpoint(missing[0], 'final')}); trained folds: {done}")
    plan = src_plan
    if merged.get("set") and "set" in explicit:
        try:
            plan = planlib.apply_overrides(plan, merged["set"])
        except ValueError as exc:
            raise UserError(f"--set: {exc}") from None
    name = req.run or default_run_name(merged, eff["kernel"])
    run = RunDir.named(name, req.runs_dir)
    if run.exists() and not req.resume:
        raise UserError(f"{run.path}: exists; use --resume or another --run")
    if run.exists():
        return _prepare_existing(req, run, eff, explicit - {"kernel"}, folds)
    network = src_cfg.network.with_kwargs(kernel=eff["kernel"])
    arch = dataclasses.replace(plan.archs[network.name], kernel=eff["kernel"])
    plan = dataclasses.replace(plan, archs={network.name: arch})
    merged["kernel"] = eff["kernel"]
    data = DataSelection(root=merged["data"] or "", centers=merged["centers"], phases=merged["phases"],
                         max_cases=merged.get("max_cases"), sample_seed=merged.get("sample_seed") or 0,
                         select=merged.get("select"), drop_worst=merged.get("drop_worst"),
                         drop_worst_by=merged.get("drop_worst_by"))
    config = _config(merged, network, folds, upkern_from=str(src.path) if Path(req.upkern_from).is_dir()
                     and len(Path(req.upkern_from).parts) > 1 else src.name, upkern_fold=source_fold)
    splits = None if req.new_splits else src_splits
    return Prepared(run, config, plan, data, merged, folds, splits, resume=False, source=src)


def best_fold(run: RunDir) -> int:
    """The finished fold with the highest sliding-window validation Dice (``validation.json``;
    ties: the lower fold)."""
    scores = {f: v.get("mean_dice") for f, v in run.validations().items()
              if f != FULL_FOLD and run.checkpoint(f, "final").is_file()}
    scores = {f: d for f, d in scores.items() if isinstance(d, (int, float)) and d == d}
    if not scores:
        raise UserError(f"{run.path}: no finished fold with a validation Dice to choose the best from")
    return max(sorted(scores), key=lambda f: scores[f])


def draw_cases(cases, n: int, seed: int):
    """``n`` of ``cases``, drawn reproducibly and stratified by center: each center keeps its share
    (largest-remainder rounding), cases within a center drawn uniformly with ``seed``."""
    import numpy as np
    if n >= len(cases):
        return list(cases)
    by_center: dict[str, list] = {}
    for c in sorted(cases, key=lambda c: c.patient_id):
        by_center.setdefault(c.center, []).append(c)
    quota = {k: n * len(v) / len(cases) for k, v in by_center.items()}
    take = {k: int(q) for k, q in quota.items()}
    for k in sorted(quota, key=lambda k: (-(quota[k] - take[k]), k))[:n - sum(take.values())]:
        take[k] += 1
    rng = np.random.default_rng(seed)
    out = []
    for k in sorted(by_center):
        idx = rng.permutation(len(by_center[k]))[:take[k]]
        out.extend(by_center[k][i] for i in sorted(idx))
    return sorted(out, key=lambda c: c.patient_id)


# ----------------------------------------------------------------------------- data and plan

def select_cases(prep: Prepared, workers: int = 1, progress: bool = False, cache_dir=None):
    """The training cases of the selection, in this order: the train split with an expert mask
    and the input phases (``--centers``, ``--phases``), then ``--select`` and ``--drop-worst``
    (data.selection; quality scores of every case of the dataset, cached), then the
    ``--max-cases`` draw. A resumed run keeps the cases it was created with. Sets
    ``prep.selection`` (rule, per-center counts after each stage, dropped ids with reasons)."""
    from data import mamamia
    from data import selection as sel
    root = dataset_root(prep.data.root or None)
    all_cases = mamamia.load_dataset(root)
    has_split = any(c.split for c in all_cases)
    cases = mamamia.select(all_cases, centers=prep.data.centers, phases=list(prep.data.phases),
                           split="train" if has_split else None)
    cases, _ = mamamia.training_selection(cases)   # one summary line for cases without a mask
    stages = [("available", cases)]
    dropped: dict[str, str] = {}
    rule = sel.parse_rule(prep.data.select) if prep.data.select else None
    drop = sel.parse_drop(prep.data.drop_worst)
    if prep.resume and prep.data.cases:
        stored = set(prep.data.cases)
        kept = [c for c in cases if c.patient_id in stored]
        if len(kept) != len(stored):
            lost = sorted(stored - {c.patient_id for c in kept})
            raise UserError(f"{prep.run.path}: {len(lost)} case(s) the run was created with are not in "
                            f"{root} any more (or lack an expert mask or a phase): {lost[:10]}")
        return root, kept
    if rule is not None or drop is not None:
        scores = None
        if sel.needs_quality(rule, drop):
            from data import quality
            from engine.runs import cache_root
            log.info("quality scores of %d case(s) (cached in %s)", len(all_cases),
                     cache_root(root, "quality", cache_dir))
            try:
                rows = quality.score_dataset(all_cases, workers=workers, progress=progress,
                                             cache_dir=cache_root(root, "quality", cache_dir))
            except (ValueError, OSError) as exc:
                raise UserError(f"quality scores for --select/--drop-worst: {exc}") from None
            scores = {r["patient_id"]: r for r in rows}
        out = sel.apply(cases, rule, None, None, scores)
        if rule is not None:
            stages.append(("select", out.kept))
        if drop is not None:
            out = sel.apply(cases, rule, drop, prep.data.drop_worst_by, scores)
            stages.append(("drop-worst", out.kept))
        cases, dropped = out.kept, out.dropped
    if prep.data.max_cases is not None:
        n_all = len(cases)
        drawn = draw_cases(cases, prep.data.max_cases, prep.data.sample_seed)
        keep = {c.patient_id for c in drawn}
        dropped.update({c.patient_id: "max-cases: not drawn" for c in cases if c.patient_id not in keep})
        cases = drawn
        stages.append(("max-cases", cases))
        log.info("--max-cases %d: %d of %d case(s) drawn (seed %d)", prep.data.max_cases, len(cases), n_all,
                 prep.data.sample_seed)
    header, rows = sel.count_table(stages)
    prep.selection = {"select": prep.data.select, "drop_worst": prep.data.drop_worst,
                      "drop_worst_by": prep.data.drop_worst_by, "max_cases": prep.data.max_cases,
                      "sample_seed": prep.data.sample_seed, "centers": prep.data.centers and list(prep.data.centers),
                      "phases": list(prep.data.phases), "counts": {"header": header, "rows": rows},
                      "kept": sorted(c.patient_id for c in cases), "dropped": dict(sorted(dropped.items()))}
    if len(cases) < N_FOLDS:
        raise UserError(f"{root}: {len(cases)} training case(s) with expert masks after selection; "
                        f"{N_FOLDS}-fold cross-validation needs at least {N_FOLDS}\n"
                        + sel.format_table(header, rows))
    return root, cases


def selection_table(prep: Prepared) -> str | None:
    """The per-center count table of a selection beyond centers and phases (None otherwise)."""
    from data import selection as sel
    if not prep.selection or len(prep.selection["counts"]["header"]) <= 2:
        return None
    c = prep.selection["counts"]
    return sel.format_table(c["header"], c["rows"])


def plan_run(prep: Prepared, cases, device_type: str, workers: int, progress: bool):
    """Fingerprint and plan of a new run (the expensive part of a start)."""
    import nets
    from core import planner
    from data import cache
    eff = prep.request
    phases = list(prep.data.phases)
    fp = cache.compute_fingerprint(cases, phases, workers=workers, progress=progress)
    budget = eff["budget"]
    spacing = eff["spacing"]
    if spacing is None:
        # The CPU plan resamples to 1.5 mm: a 48^3 patch then sees 72 mm (tumour and its
        # surroundings) instead of 48 mm; on the default phantom, same schedule, fold-0
        # validation Dice rose from 0.55 at 1 mm to 0.72 (bench/README.md).
        spacing = (1.5, 1.5, 1.5) if budget == "cpu" else (1.0, 1.0, 1.0)
    elif spacing == "auto":
        spacing = None
    try:
        plan = planner.make_plan(fp, channels=range(len(phases)), spacing=spacing, budget=budget,
                                 normalisation=eff["normalisation"], activation_elements=nets.arch_activation_elements,
                                 clahe=eff["clahe"])
        plan = dataclasses.replace(plan, channels=tuple(phases), resampling=eff["resampling"])
        entry = nets.entry(eff["arch"])
        if budget == "cpu" and entry.cpu_patch and not any(o.startswith("patch_size=") for o in eff["set"]):
            cpu_patch = tuple(min(p, entry.cpu_patch) for p in plan.patch_size)
            plan = planlib.apply_overrides(plan, ["patch_size=" + ",".join(map(str, cpu_patch))])
            log.info("CPU plan for %s: patch %s", eff["arch"], cpu_patch)
        if eff["set"]:
            plan = planlib.apply_overrides(plan, eff["set"])
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return plan, fp


def complete(prep: Prepared, root: Path, cases, plan=None, fingerprint=None) -> Prepared:
    """Fill in what a new run or an UpKern target derives from the data: plan, network, folds."""
    ids = [c.patient_id for c in cases]
    if plan is not None:
        plan, network = network_for(plan, prep.request)
        prep.plan, prep.fingerprint = plan, fingerprint
        prep.config = _config(prep.request, network, prep.folds)
    if prep.splits is None:
        from core.folds import kfold_splits
        prep.splits = kfold_splits(ids, n_splits=N_FOLDS, seed=SPLIT_SEED)
    known = set(ids)
    lost = sorted({i for s in prep.splits for i in s["train"] + s["val"]} - known)
    if lost:
        raise UserError(f"{prep.run.path if prep.resume else 'the folds'}: {len(lost)} case(s) of the stored "
                        f"folds are not in the selection any more: {lost[:10]}")
    prep.data = dataclasses.replace(prep.data, root=str(root.resolve()), cases=tuple(ids))
    prep.cases = cases
    return prep


def create(prep: Prepared) -> None:
    """Write the run folder's description (a new run or an UpKern target)."""
    prep.run.save_description(prep.config, prep.plan, prep.data, prep.splits, prep.fingerprint)
    prep.run.write_json(prep.run.request_path, {**prep.request, "data": prep.data.root})
    if prep.selection is not None:
        prep.run.write_json(prep.run.selection_path, prep.selection)
