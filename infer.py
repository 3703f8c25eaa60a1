"""Predict tumour masks with trained runs: sliding window, flip TTA, fold and model ensembles.

    python infer.py --ensemble                            # all folds of the latest run, test split
    python infer.py --ensemble --runs mednext_k5_dice_ce mednext_k5_dice_ce_focal
    python infer.py --input /data/new_cases --output out/ --no-tta
    python infer.py --pcr                                  # also write predictions.csv (pCR)
    python infer.py --pcr --masks predictions/demo         # pCR from existing masks, no segmentation

``torchrun --nproc_per_node=N infer.py ...`` shards the cases across the processes (GPUs or CPU
processes); each writes its own cases and the manifest is merged at the end.

Per case: the phases the model was trained on are read and preprocessed with the plan stored in
the checkpoint (the same function as training), every model predicts softmax probabilities
(averaged over flips, folds and runs), the average is put back on the grid of the first
post-contrast phase, thresholded, reduced to its largest 26-connected component and optionally
masked with the JSON breast box. Outputs: OUTPUT/pred_segmentations/<patient_id>.nii.gz (uint8
{0,1}, same header geometry as the input phase), optional probability maps, and
predictions_manifest.json (which models and settings made each file).

One prediction writes into a folder at a time (OUTPUT/.lock). A rerun into the same folder
completes what an interrupted one left: files made by the same models and settings are kept;
files made by others need --overwrite.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ensemble", action="store_true",
                   help="average all folds of each run and all runs (default: fold 0 of each run)")
    p.add_argument("--runs", nargs="+", help="run names or folders (default: the most recent run)")
    p.add_argument("--runs-dir", help="folder of runs (default ./runs or $MAMAMIA_RUNS)")
    p.add_argument("--checkpoint", choices=("final", "best"), default="final")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="MAMA-MIA root (default: the phantom dataset)")
    src.add_argument("--input", help="a folder of case folders <ID>/<id>_000k.nii.gz, or a dataset root")
    p.add_argument("--split", default="test", choices=("train", "test", "all"),
                   help="with --data: which split to predict (default test)")
    p.add_argument("--ids", help="only these patient ids (comma separated)")
    p.add_argument("--centers", help="only the cases of these centers, e.g. NACT (with --split all: every case "
                                     "of a held-out center)")
    p.add_argument("--output", help="output folder (default ./predictions/<run>)")
    p.add_argument("--overwrite", action="store_true", help="replace predictions made by other models or settings")
    p.add_argument("--no-tta", action="store_true", help="no flip test-time augmentation")
    p.add_argument("--tta-axes", default="0,1,2", help="axes to mirror for TTA (default all: 8 passes)")
    lcc = p.add_mutually_exclusive_group()
    lcc.add_argument("--no-lcc", action="store_true", help="keep all components")
    lcc.add_argument("--lcc", action="store_true",
                     help="always keep only the largest component (default: only when the runs' "
                          "cross-validation showed it helps, nnU-Net's rule)")
    p.add_argument("--breast-box", action="store_true", help="zero predictions outside the JSON breast box")
    p.add_argument("--restrict-to-box", action="store_true",
                   help="only run the network inside the breast box (faster; output outside is background)")
    p.add_argument("--no-skip-air", action="store_true",
                   help="run every window, also those with no body voxel (slower; for comparisons)")
    p.add_argument("--save-probabilities", action="store_true", help="also write tumour probability maps")
    p.add_argument("--average", choices=("probabilities", "logits"), default="probabilities",
                   help="what windows, flips and models average: softmax probabilities (default) or "
                        "logits, restored before the softmax (nnU-Net v2's way)")
    p.add_argument("--step", type=float, default=0.5, help="window step as a fraction of the patch")
    p.add_argument("--window-batch", type=int, default=None,
                   help="windows per network call (default 4 on CUDA, 2 on CPU)")
    p.add_argument("--device", default=None)
    p.add_argument("--pcr", action="store_true", help="also predict pCR and write predictions.csv")
    p.add_argument("--pcr-run", help="pCR model: a run name or folder (default: the latest runs/*/pcr_model.pt)")
    p.add_argument("--masks", metavar="DIR",
                   help="with --pcr: predict pCR from the tumour masks already in DIR (DIR/pred_segmentations/"
                        "<ID>.nii.gz or DIR/<ID>.nii.gz) without segmenting; predictions.csv goes to --output "
                        "(default DIR)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


def _parse_axes(text: str):
    from core.errors import UserError
    try:
        return tuple(int(a) for a in text.split(",") if a.strip())
    except ValueError:
        raise UserError(f"--tta-axes {text!r}: expected axes like 0,1,2") from None


def pcr_from_masks(args) -> int:
    """``--pcr --masks DIR``: features from the masks in DIR, no network is loaded."""
    from core.errors import UserError
    from engine.pcr_predict import find_pcr_model, predict_pcr
    from engine.predictor import input_cases
    if not args.pcr:
        raise UserError("--masks DIR predicts pCR from existing masks: add --pcr")
    masks = Path(args.masks)
    if not masks.is_dir():
        raise UserError(f"--masks {masks}: folder not found")
    cases = input_cases(args.data, args.input, args.split, ids=[i for i in (args.ids or "").split(",") if i] or None)
    out = Path(args.output) if args.output else masks
    predict_pcr(cases, out, find_pcr_model(args.pcr_run, args.runs_dir), progress=not args.quiet, masks_dir=masks)
    return 0


def run(args) -> int:
    if args.masks:
        return pcr_from_masks(args)
    import torch

    from core.atomic import atomic_write
    from engine.outputs import OutputFolder
    from engine.training import Distributed
    from engine.predictor import PredictSettings, Predictor, input_cases, lcc_helps, load_members
    from engine.runs import RunDir, predictions_root
    from core.errors import UserError
    from core.plan import plan_hash

    tta = () if args.no_tta else _parse_axes(args.tta_axes)
    settings0 = PredictSettings(tta_axes=tta, step=args.step, window_batch=args.window_batch,
                                breast_box=args.breast_box, restrict_box=args.restrict_to_box,
                                skip_air=not args.no_skip_air, average=args.average,
                                save_probabilities=args.save_probabilities)
    if args.runs:
        runs = [RunDir.named(r, args.runs_dir) for r in args.runs]
        missing = [str(r.path) for r in runs if not r.path.is_dir()]
        if missing:
            raise UserError(f"run folder(s) not found: {missing}")
    else:
        runs = [RunDir.latest(args.runs_dir)]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dist = Distributed.from_env()                 # torchrun: every rank predicts its share
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    cases = input_cases(args.data, args.input, args.split, ids=[i for i in (args.ids or "").split(",") if i] or None,
                        centers=[c.strip() for c in (args.centers or "").split(",") if c.strip()] or None)
    members = load_members(runs, args.ensemble, args.checkpoint, device)
    use_lcc = False if args.no_lcc else (True if args.lcc else lcc_helps(runs))
    settings = dataclasses.replace(settings0, lcc=use_lcc)
    print(f"largest-component postprocessing: {'on' if use_lcc else 'off'}"
          + ("" if args.no_lcc or args.lcc else " (from the runs' cross-validation)"))
    out = Path(args.output) if args.output else predictions_root() / "_".join(r.name for r in runs)
    folder = OutputFolder(out)
    producer = OutputFolder.producer([m.checkpoint for m in members], settings.to_dict())
    if dist.rank == 0:
        folder.lock()                             # one writer per folder: the job, held by rank 0
    try:
        dist.barrier()
        done = folder.plan_work([c.patient_id for c in cases], producer, args.overwrite)
        if done and dist.rank == 0:
            print(f"{len(done)} case(s) already predicted by the same models and settings: kept")
        mine = cases[dist.rank::dist.world]
        t0 = time.time()
        result = Predictor(members, device, settings).run(mine, out, overwrite=True,
                                                          progress=not args.quiet and dist.rank == 0, skip=done)
        if dist.enabled:                          # the ranks' results, merged by rank 0
            part = out / f".rank{dist.rank}.json"
            atomic_write(part, json.dumps(result))
            dist.barrier()
            if dist.rank == 0:
                merged = {"errors": {}, "seconds_per_case": {}, "written": []}
                for r in range(dist.world):
                    p = out / f".rank{r}.json"
                    for k, v in json.loads(p.read_text()).items():
                        merged[k].update(v) if isinstance(v, dict) else merged[k].extend(v)
                    p.unlink()
                result = merged
        extra = {"runs": [str(r.path) for r in runs], "checkpoints": [str(m.checkpoint) for m in members],
                 "plan_hashes": sorted({plan_hash(m.plan) for m in members}),
                 "settings": {**settings.to_dict(), "checkpoint": args.checkpoint, "device": str(device),
                              "processes": dist.world},
                 "cases": [c.patient_id for c in cases], "seconds_per_case": result["seconds_per_case"],
                 "errors": result["errors"], "total_seconds": time.time() - t0}
        if dist.rank == 0:
            try:
                folder.record(result["written"], producer, extra)
            except OSError as exc:
                result["errors"]["<manifest>"] = f"{exc}"
    finally:
        if dist.rank == 0:
            folder.unlock()
        dist.shutdown()
    if dist.rank != 0:
        return 1 if result["errors"] else 0
    ok = len(cases) - len(result["errors"])
    print(f"{ok}/{len(cases)} case(s) predicted into {out / 'pred_segmentations'} "
          f"({extra['total_seconds']:.1f} s, {extra['total_seconds'] / max(len(result['written']), 1):.1f} s/case)")
    if args.pcr:
        from engine.pcr_predict import find_pcr_model, predict_pcr
        predict_pcr(cases, out, find_pcr_model(args.pcr_run, args.runs_dir), progress=not args.quiet)
    if result["errors"]:
        print(f"{len(result['errors'])} case(s) failed:")
        for pid, msg in result["errors"].items():
            print(f"  {pid}: {msg}")
        return 1
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from core.cli import run_entry_point
    return run_entry_point("infer.py", lambda: run(args), logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
