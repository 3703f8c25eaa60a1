"""Train a segmentation network (or the pCR model) on a MAMA-MIA folder or the built-in phantom dataset.

    python train.py --arch mednext --kernel 3                 # phantom data, CPU/GPU plan
    python train.py --arch unet --data /data/MAMA-MIA --centers DUKE,NACT --phases 0-2 --fold all
    python train.py --arch mednext --kernel 5 --upkern-from mednext_k3_dice_ce   # seed B's UpKern stage
    torchrun --nproc_per_node=2 train.py --arch unet ...                          # distributed
    python train.py --task pcr --masks expert                                     # the pCR model
    python train.py --task pcr --features post --n-select 40 --model snn          # seed B's pCR pipeline

A run lives in runs/<name>/: config.json (the run description, network included), plan.json,
data.json (the selection), splits.json (the folds), request.json (the flags that made it) and
fold_<k>/ with checkpoint_latest.pt, checkpoint_best.pt (best moving-average pseudo-Dice),
checkpoint_final.pt, log.csv and validation.json. Every checkpoint embeds the plan and the
run description.

--upkern-from RUN starts from RUN's stored description (network size and channels, plan, data
selection and folds, optimiser, schedule, loss, epochs) and changes only the kernel and the flags
given explicitly; a flag that would change the folds needs --new-splits. --resume continues a
run; flags that differ from the stored description are an error, except --epochs, which extends
the run (the learning-rate schedule is re-evaluated over the new length from the next epoch).
Every flag is checked before any data is read, and a failed start leaves no run folder behind.
"""
from __future__ import annotations

import argparse
import logging
import sys

import nets  # the network registry; imports no torch, so --help and flag errors answer at once


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("seg", "pcr"), default="seg", help="segmentation (default) or pCR")
    g = p.add_argument_group("network and recipe (default: inherited with --upkern-from / --resume)")
    g.add_argument("--recipe", help="a paper's procedure as presets: seed_a (Adam 1e-4, batch Dice, 1000 "
                   "epochs with early stopping, elastic deformation) or seed_b (SGD + cosine, Dice-CE, 250 "
                   "epochs); explicit flags win, and what it sets is printed")
    g.add_argument("--arch", choices=nets.names(), help=f"network (default {nets.DEFAULT_NETWORK})")
    g.add_argument("--size", help="MedNeXt size S, B, M or L (default: the plan's)")
    g.add_argument("--kernel", type=int, help="MedNeXt kernel size, odd (default: the plan's, 3)")
    g.add_argument("--loss", help="dice_ce (default), dice (per sample), batch_dice (seed A), dice_focal or "
                   "dice_ce_focal (core/losses.py)")
    g.add_argument("--focal-gamma", type=float, help="focal losses: focusing parameter (default 2)")
    g.add_argument("--focal-alpha", type=float, help="focal losses: weight of the tumour class, background 1 - a "
                   "(default: none)")
    g.add_argument("--optimizer", help="sgd, adam (L2 decay) or adamw (decoupled decay) (default: the network's: "
                   "sgd for unet, adamw for mednext)")
    g.add_argument("--lr", type=float, help="initial learning rate (default: the optimizer's)")
    g.add_argument("--lr-schedule", "--schedule", dest="schedule",
                   help="learning-rate schedule: poly (default, nnU-Net) or cosine (annealing to 0)")
    g.add_argument("--warmup", type=int, help="epochs of linear learning-rate warm-up (default 0)")
    g.add_argument("--early-stop", type=int, metavar="N",
                   help="stop when the moving-average validation pseudo-Dice has not improved for N epochs "
                        "(the best checkpoint is kept; resumable)")
    g.add_argument("--epochs", type=int, help="epochs (default: 1000 on GPU, 20 on CPU)")
    g.add_argument("--time-budget", type=float, metavar="MIN",
                   help="minutes of training per fold: the first epoch is timed and the schedule shortened "
                        "to the epochs that fit (at most --epochs; at least 3; printed), so a slower machine "
                        "trains fewer epochs instead of taking longer")
    g.add_argument("--iters", type=int, help="iterations per epoch (default 250, CPU: 25)")
    g.add_argument("--val-iters", type=int, help="validation batches per epoch (default 50, CPU: 4)")
    g.add_argument("--batch-size", type=int, help="override the plan's batch size")
    g.add_argument("--augment", help="augmentation profile: nnunet (default), seed_a (nnU-Net + elastic "
                   "deformation), mri (+ DCE artefacts), none")
    g.add_argument("--aug-set", action="append", metavar="KEY=VALUE",
                   help="edit one transform of the profile, e.g. --aug-set p_elastic=0.2 (repeatable; "
                        "fields of data/augment.py AugmentProfile)")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--grad-checkpoint", action="store_true", default=None, help="MedNeXt gradient checkpointing")
    g.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                   help="disable mixed precision on CUDA")
    d = p.add_argument_group("data and plan")
    d.add_argument("--data", help="MAMA-MIA root folder (default: the phantom dataset, generated once)")
    d.add_argument("--centers", help="train on these centers only, e.g. DUKE,NACT")
    d.add_argument("--max-cases", type=int, metavar="N",
                   help="train on N of the selected cases, drawn reproducibly and stratified by center")
    d.add_argument("--sample-seed", type=int, help="seed of the --max-cases draw (default 0)")
    d.add_argument("--select", metavar="RULE",
                   help="keep the cases that satisfy RULE, over image-quality scores (snr, cnr, motion, "
                        "ghosting, blur, quality; see python -m data.quality) and record fields (center, "
                        "age, menopause, density, subtype, manufacturer, field_strength, n_phases, ...), "
                        "e.g. \"quality>=-0.5\" or \"motion<=1.0 and center!=ISPY1\"")
    d.add_argument("--drop-worst", metavar="P%|N",
                   help="leave out the P%% (or N) cases with the lowest quality composite, after --select")
    d.add_argument("--drop-worst-by", metavar="FIELD",
                   help="apply --drop-worst within each value of FIELD, e.g. center (default: all cases)")
    d.add_argument("--phases", help="phases as input channels, e.g. 0-2 (default 0,1,2); "
                   "cases with fewer phases are skipped with a warning")
    d.add_argument("--budget", help="planning budget: cpu, 8GB (default on CUDA), 40GB, 80GB, <n>GB")
    d.add_argument("--spacing", help="target spacing in mm, or 'auto' for nnU-Net's median rule "
                   "(default 1,1,1 like the MAMA-MIA seeds; the CPU plan uses 1.5,1.5,1.5)")
    d.add_argument("--resampling", help="image interpolation: cubic (default, Keys) or spline (nnU-Net's order 3)")
    d.add_argument("--normalisation", help="zscore (default), zscore_joint or none")
    d.add_argument("--clahe", action="store_true", default=None, help="per-slice CLAHE before normalisation (ablation)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a plan value, e.g. --set patch_size=128,128,128 (repeatable)")
    r = p.add_argument_group("run")
    r.add_argument("--fold", help="0-4, a list like 0,2, 'all' (the five folds) or 'full' (every case, no "
                   "validation) (default 0 for segmentation, all for pCR)")
    r.add_argument("--run", help="run name (default: derived from arch, kernel and loss)")
    r.add_argument("--runs-dir", help="folder of runs (default ./runs or $MAMAMIA_RUNS)")
    r.add_argument("--upkern-from", metavar="RUN", help="initialise from RUN's final checkpoint of the same fold (UpKern)")
    r.add_argument("--upkern-fold", metavar="best|K",
                   help="with --upkern-from: initialise every target fold from the source's fold K, or from "
                        "its fold with the best validation Dice (default: the same fold)")
    r.add_argument("--new-splits", action="store_true",
                   help="with --upkern-from: allow a data selection that changes the folds")
    r.add_argument("--resume", action="store_true",
                   help="continue the run from its latest checkpoints (starts it if it does not exist)")
    r.add_argument("--stop-after", type=int, metavar="N",
                   help="stop after N epochs of this invocation (continue later with --resume)")
    r.add_argument("--workers", type=int, default=2, help="background batch workers (default 2)")
    r.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    r.add_argument("--cache-dir", help="preprocessed-case cache (default .cache/preprocessed/<dataset> "
                   "or under $MAMAMIA_CACHE)")
    c = p.add_argument_group("pCR (--task pcr)")
    c.add_argument("--masks", choices=("expert", "predicted"), default="expert",
                   help="tumour masks for radiomics: expert, or predicted = masks of the training split predicted "
                        "beforehand (python infer.py --ensemble --split train --output DIR, then --pred DIR; "
                        "default DIR: the latest predictions/*); a missing mask is an error saying so")
    c.add_argument("--pred", help="with --masks predicted: folder holding pred_segmentations/")
    c.add_argument("--clinical", action="store_true",
                   help="add clinical inputs: age, menopause, breast density, HR and HER2 status, Nottingham grade "
                        "and subtype (from the JSON records and clinical_and_imaging_info.xlsx; missing values "
                        "imputed with training-fold values plus a missing indicator)")
    c.add_argument("--features", choices=("post", "post+sub", "all"), default="all",
                   help="feature set: post = pyradiomics of the first post-contrast phase only (seed B), "
                        "post+sub = also the subtraction image's first-order features, all (default) = also "
                        "kinetics and the peritumoral ring")
    c.add_argument("--corr-threshold", type=float, default=0.9,
                   help="drop one feature of every pair with |Pearson r| above this (default 0.9, seed B)")
    c.add_argument("--n-select", type=int, metavar="K",
                   help="select exactly K features by forward selection (seed B: 40); default: up to 40, "
                        "at most one per 20 training rows (a warning when K exceeds that)")
    c.add_argument("--selector", choices=("ridge", "logreg", "lda"), default="ridge",
                   help="estimator scoring the forward selection (default ridge: class-balanced, closed form)")
    c.add_argument("--model", choices=("snn", "lr", "rf", "stack"), default="snn",
                   help="deployed classifier: self-normalising network (default, seed B), logistic regression, "
                        "random forest, or (with --clinical) stack: the image SNN and a clinical logistic "
                        "regression combined on inner cross-validated log-odds; all are cross-validated and "
                        "reported")
    c.add_argument("--phantom-cases", type=int, default=40, metavar="N",
                   help="without --data: a phantom dataset of N small cases (default 40, the default dataset), "
                        "generated once and cached; e.g. 200 for a pCR model above chance")
    c.add_argument("--phantom-seed", type=int, default=0, metavar="S",
                   help="the seed of that phantom (default 0; another seed draws different patients)")
    c.add_argument("--split", choices=("train", "all"), default="train",
                   help="cases to cross-validate: the train split (default; the test split stays unseen) or all")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _device(name):
    import torch
    from core.errors import UserError
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UserError(f"--device {name!r}: expected cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def train_pcr(args) -> int:
    from engine import pcr_train
    req = pcr_train.PCRRequest(data=args.data, centers=args.centers, masks=args.masks, pred=args.pred,
                               clinical=args.clinical, fold=args.fold, seed=args.seed or 0, run=args.run,
                               runs_dir=args.runs_dir, cache_dir=args.cache_dir, workers=args.workers,
                               split=args.split, phantom_cases=args.phantom_cases, phantom_seed=args.phantom_seed,
                               features=args.features, corr_threshold=args.corr_threshold,
                               n_select=args.n_select, selector=args.selector, model=args.model)
    report = pcr_train.train_pcr(req, progress=not args.quiet)
    print(pcr_train.format_report(report))
    return 0


def train_seg(args) -> int:
    from engine import setup
    fields = {f for f in setup.TrainRequest.__dataclass_fields__}
    req = setup.TrainRequest(**{k: v for k, v in vars(args).items() if k in fields})
    preset = setup.apply_recipe(req)
    if preset:
        print(f"recipe {req.recipe}: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in preset.items()))
    setup.check_flags(req)                            # before torch is even imported
    device = None
    device_type = "cuda" if (args.device or "").startswith("cuda") else "cpu"
    if args.device is None:
        device = _device(None)
        device_type = device.type
    prep = setup.prepare(req, device_type)            # every flag checked; nothing written yet
    device = device or _device(args.device)

    from engine.training import Distributed, train_run
    dist = Distributed.from_env()
    if dist.enabled and device.type == "cuda":
        import torch
        device = torch.device("cuda", dist.local_rank)
    root, cases = setup.select_cases(prep, workers=args.workers, progress=not args.quiet,
                                     cache_dir=args.cache_dir)
    table = setup.selection_table(prep)
    if table and dist.rank == 0:
        print("cases per center after each selection step:\n" + table)
    plan = fp = None
    if prep.plan is None:
        plan, fp = setup.plan_run(prep, cases, device.type, args.workers, progress=not args.quiet)
    setup.complete(prep, root, cases, plan, fp)
    if dist.rank == 0 and not prep.resume:
        setup.create(prep)
    dist.barrier()
    from engine.runs import fold_name
    print(f"run {prep.run.path}: {prep.config.network.name} {prep.config.network.kwargs.get('size', '')}"
          f"{' k' + str(prep.config.network.kwargs['kernel']) if 'kernel' in prep.config.network.kwargs else ''}"
          f", {len(cases)} case(s), fold(s) {', '.join(fold_name(f) for f in prep.folds)}"
          + (f", initialised from {prep.source.path} (UpKern)" if prep.source and not prep.resume else ""))

    def report(fold, res, seconds):
        name = fold_name(fold)
        if "stopped_at" in res:
            print(f"fold {name}: stopped after epoch {res['stopped_at']} (continue with --resume)")
            return
        early = f", early stop after {res['epochs']} epochs" if res.get("early_stopped") else ""
        if "mean_dice" not in res:
            print(f"fold {name}: trained on every case (no validation){early}, {seconds:.0f} s -> "
                  f"{prep.run.fold_dir(fold)}")
            return
        print(f"fold {name}: validation Dice {res['mean_dice']:.4f} "
              f"(largest component {res.get('mean_dice_lcc', float('nan')):.4f}) "
              f"({len(res['cases'])} cases){early}, {seconds:.0f} s -> {prep.run.fold_dir(fold)}")

    results = train_run(prep, device, dist, progress=not args.quiet, stop_after=args.stop_after,
                        workers=args.workers, cache_dir=args.cache_dir, on_fold=report)
    dist.shutdown()
    from engine.crossval import cross_validation_summary, finished_folds, format_summary
    finished_now = any("stopped_at" not in r for f, r in results.items() if f >= 0)
    if dist.rank == 0 and finished_now and len(finished_folds(prep.run)) == len(prep.splits):
        print(format_summary(cross_validation_summary(prep.run, device, progress=not args.quiet)))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from core.cli import run_entry_point
    return run_entry_point("train.py", lambda: train_pcr(args) if args.task == "pcr" else train_seg(args), logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
