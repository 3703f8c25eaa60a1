"""Predict tumour masks with trained runs: sliding window, flip TTA, fold and model ensembles.

    python infer.py --ensemble                            # all folds of the latest run, test split
    python infer.py --ensemble --runs mednext_k5_dice_ce mednext_k5_dice_ce_focal
    python infer.py --input /data/new_cases --output out/ --no-tta
    python infer.py --pcr                                  # also write predictions.csv (pCR)

Per case: the phases the model was trained on are read and preprocessed with the plan stored in
the checkpoint (the same function as training), every model predicts softmax probabilities
(averaged over flips, folds and runs), the average is put back on the grid of the first
post-contrast phase, thresholded, reduced to its largest 26-connected component and optionally
masked with the JSON breast box. Outputs: ``OUTPUT/pred_segmentations/<patient_id>.nii.gz``
(uint8 {0,1}, same header geometry as the input phase), optional probability maps, and
``predictions_manifest.json``. Reading and preprocessing of the next cases and writing of the
previous ones run in background threads while the network works.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core import plan as planlib
from core.postprocess import largest_component, mask_to_box
from core.sliding_window import default_window_batch, sliding_window_predict
from data import io, mamamia
from data.cache import cache_key
from data.preprocess import body_box, body_mask, preprocess, restore_logits, restore_probabilities
from nets import checkpoint as ckptlib

log = logging.getLogger("infer")
REPO = Path(__file__).resolve().parent


def default_runs_dir() -> Path:
    return Path(os.environ.get("MAMAMIA_RUNS", REPO / "runs"))


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
    p.add_argument("--output", help="output folder (default ./predictions/<run>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder's results")
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
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- models

@dataclass
class Member:
    """One network of the ensemble and the plan it must be fed with."""
    name: str
    model: torch.nn.Module
    plan: planlib.Plan
    checkpoint: Path


def latest_run(runs_dir: Path) -> Path:
    runs = [p.parent for p in runs_dir.glob("*/config.json")
            if any(p.parent.glob("fold_*/checkpoint_*.pt"))]
    if not runs:
        raise SystemExit(f"{runs_dir}: no trained run found (train one with train.py)")
    return max(runs, key=lambda r: max(f.stat().st_mtime for f in r.glob("fold_*/checkpoint_*.pt")))


def load_members(runs: list[Path], ensemble: bool, which: str, device) -> list[Member]:
    members = []
    for run in runs:
        folds = sorted(run.glob("fold_*"))
        if not ensemble:
            folds = folds[:1]
        found = [f / f"checkpoint_{which}.pt" for f in folds if (f / f"checkpoint_{which}.pt").exists()]
        if not found:
            raise SystemExit(f"{run}: no checkpoint_{which}.pt in any fold folder")
        for ck in found:
            state = ckptlib.load(ck)
            plan = planlib.from_json(json.dumps(state["plan"]))
            model = ckptlib.build_from(state).to(device)
            members.append(Member(f"{run.name}/{ck.parent.name}", model, plan, ck))
    keys = {cache_key(m.plan) for m in members}
    if len(keys) > 1:
        detail = "; ".join(f"{m.name}: channels {m.plan.channels}, spacing {m.plan.target_spacing}, "
                           f"normalisation {m.plan.normalisation}" for m in members)
        raise SystemExit(f"the ensemble mixes checkpoints with different preprocessing ({detail}); "
                         "only models trained on the same plan can be averaged")
    return members


# ----------------------------------------------------------------------------- cases

def input_cases(args) -> list[mamamia.Case]:
    if args.input:
        root = Path(args.input)
        if (root / "images").is_dir() or (root / "IMAGES").is_dir():
            cases = mamamia.load_dataset(root, strict_split_ids=False)
        else:  # a bare folder of case folders: wrap it as an images/ folder
            cases = mamamia.load_dataset_from_images(root)
        split = None
    else:
        if args.data:
            root = Path(args.data)
        else:
            from data import phantom
            root = phantom.default_dataset()
        cases = mamamia.load_dataset(root)
        split = args.split if any(c.split for c in cases) else None
    cases = mamamia.select(cases, split=split, ids=mamamia.parse_list(args.ids))
    if not cases:
        raise SystemExit("no cases to predict (check --data/--input, --split and --ids)")
    return cases


# ----------------------------------------------------------------------------- one case

def intersect(a, b):
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(max(x.start, y.start), max(max(x.start, y.start) + 1, min(x.stop, y.stop)))
                 for x, y in zip(a, b))


def predict_case(case: mamamia.Case, members: list[Member], prepared, device, tta_axes, step,
                 window_batch, restrict_box: bool, skip_air: bool = True,
                 average: str = "probabilities") -> np.ndarray:
    """Averaged tumour probability on the original grid of the annotated phase.

    ``skip_air``: windows with no body voxel (outside the body's bounding box, or in the air of
    its corners) are not run (their share is background); ``restrict_box``: likewise outside the
    JSON breast box. ``average``: ``"probabilities"`` averages softmax outputs over windows, flips and models and restores the
    tumour probability; ``"logits"`` (nnU-Net v2) averages logits, restores the tumour-minus-
    background logit margin to the original grid and returns its sigmoid (the two-class softmax).
    """
    img, _, meta = prepared
    x = torch.from_numpy(img)
    body = body_mask(img) if skip_air else None
    box = body_box(img, mask=body) if body is not None else None
    if restrict_box and case.breast_box is not None:
        box = intersect(box, box_on_preprocessed(case.breast_box, meta))
    total = None
    logits = average == "logits"
    for m in members:
        out = sliding_window_predict(m.model, x, m.plan.patch_size, num_classes=2, step=step,
                                     device=device, accum_device="cpu", tta_axes=tta_axes,
                                     window_batch=window_batch, box=box, region=body, average=average,
                                     return_logits=logits,
                                     autocast_dtype=torch.float16 if device.type == "cuda" else None)
        total = out if total is None else total.add_(out)
    total /= len(members)
    if logits:
        margin = restore_logits(total[1:2] - total[0:1], meta)[0]
        return 1.0 / (1.0 + np.exp(-np.clip(margin, -80, 80)))
    return restore_probabilities(total, meta)[1]


def box_on_preprocessed(box, meta) -> tuple[slice, slice, slice]:
    """A box on the original grid mapped onto the cropped, resampled grid (rounded outwards)."""
    out = []
    for ax, sl in enumerate(box):
        c0 = meta.crop_box[ax][0]
        scale = meta.resampled_shape[ax] / meta.cropped_shape[ax]
        lo = max(0, int(np.floor((sl.start - c0) * scale)))
        hi = min(meta.resampled_shape[ax], int(np.ceil((sl.stop - c0) * scale)))
        out.append(slice(lo, max(hi, lo + 1)))
    return tuple(out)


def lcc_helps(runs: list[Path]) -> bool:
    """nnU-Net keeps largest-component postprocessing only if cross-validation says it helps:
    mean fold validation Dice with it >= without it (folds without validation.json are ignored;
    with no evidence at all the component filter is applied, as the challenge seeds did)."""
    raw, lcc = [], []
    for run in runs:
        for f in run.glob("fold_*/validation.json"):
            v = json.loads(f.read_text())
            if "mean_dice_lcc" in v:
                raw.append(v["mean_dice"])
                lcc.append(v["mean_dice_lcc"])
    return not raw or float(np.mean(lcc)) >= float(np.mean(raw))


def postprocess(prob: np.ndarray, case: mamamia.Case, lcc: bool, breast_box: bool) -> np.ndarray:
    mask = (prob > 0.5).astype(np.uint8)
    if breast_box and case.breast_box is not None:
        mask = mask_to_box(mask, case.breast_box)
    if lcc:
        mask = largest_component(mask)
    return mask.astype(np.uint8)


# ----------------------------------------------------------------------------- the folder

def prepare_output(out: Path, overwrite: bool) -> None:
    seg = out / "pred_segmentations"
    if seg.exists() and any(seg.iterdir()) and not overwrite:
        raise SystemExit(f"{out}: already holds predictions; pass --overwrite or choose another --output")
    seg.mkdir(parents=True, exist_ok=True)


def run(cases, members, out: Path, device, tta_axes=(0, 1, 2), step=0.5, window_batch=None,
        lcc=True, breast_box=False, restrict_box=False, save_probabilities=False, progress=True,
        overwrite=False, skip_air=True, average="probabilities") -> dict:
    """Predict every case; per-case errors are collected, never stop the others."""
    plan = members[0].plan
    window_batch = window_batch or default_window_batch(device)
    errors, timings = {}, {}
    seg_dir = out / "pred_segmentations"
    prob_dir = out / "probabilities"

    def load(case):
        return preprocess(case, plan, with_mask=False)

    def write(case, mask, prob):
        ref = io.load_header(case.phase_path(mamamia.ANNOTATED_PHASE) if mamamia.ANNOTATED_PHASE
                             in case.phase_numbers else case.phase_paths[0])
        protected = list(case.phase_paths) + ([case.mask_path] if case.mask_path else [])
        io.save_nifti(seg_dir / f"{case.patient_id}.nii.gz", mask, ref.affine, dtype=np.uint8,
                      reference=ref, overwrite=overwrite, protected=protected)
        if prob is not None:
            io.save_nifti(prob_dir / f"{case.patient_id}.nii.gz", prob.astype(np.float32), ref.affine,
                          reference=ref, overwrite=overwrite, protected=protected)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(cases), desc="predict", unit="case", dynamic_ncols=True)
    # one thread reads and preprocesses ahead, one writes behind: the network is the bottleneck
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        pending = [reader.submit(load, c) for c in cases[:2]]
        writes = []
        for i, case in enumerate(cases):
            t0 = time.time()
            if i + 2 < len(cases):
                pending.append(reader.submit(load, cases[i + 2]))
            try:
                prepared = pending[i].result()
                prob = predict_case(case, members, prepared, device, tta_axes, step, window_batch, restrict_box,
                                    skip_air, average)
                mask = postprocess(prob, case, lcc, breast_box)
                writes.append((case.patient_id, writer.submit(write, case, mask,
                                                              prob if save_probabilities else None)))
            except (OSError, ValueError, RuntimeError) as exc:
                errors[case.patient_id] = f"{type(exc).__name__}: {exc}"
                log.error("%s: %s", case.patient_id, exc)
            timings[case.patient_id] = time.time() - t0
            if bar is not None:
                bar.update(1)
                bar.set_postfix(case=case.patient_id, s=f"{timings[case.patient_id]:.1f}")
        for pid, fut in writes:
            try:
                fut.result()
            except (OSError, ValueError) as exc:
                errors[pid] = f"{type(exc).__name__}: {exc}"
    if bar is not None:
        bar.close()
    return {"errors": errors, "seconds_per_case": timings}


def predict_pcr(args, cases, out: Path) -> list[dict]:
    """``--pcr``: features from the predicted masks in ``out`` -> the trained pCR model ->
    ``out/predictions.csv`` (patient_id, pcr, score), the challenge format.

    The model is ``--pcr-run NAME`` (a folder under the runs folder, or a path) or else the most
    recently written ``<runs>/*/pcr_model.pt`` (``train.py --task pcr``). Features are cached in
    ``out/pcr_features.csv``. A case whose predicted mask is missing or empty still gets a
    prediction, from imputed image features (and its clinical data when the model uses them);
    such cases are listed.
    """
    import csv as _csv
    import io as _io
    import pickle

    from data import radiomics

    runs_dir = Path(args.runs_dir) if args.runs_dir else default_runs_dir()
    name = getattr(args, "pcr_run", None)
    if name:
        path = (Path(name) if (Path(name) / "pcr_model.pt").exists() else runs_dir / name) / "pcr_model.pt"
        if not path.exists():
            raise SystemExit(f"--pcr-run {name}: {path} not found")
    else:
        found = list(runs_dir.glob("*/pcr_model.pt"))
        if not found:
            raise SystemExit(f"{runs_dir}: no trained pCR model (train one with train.py --task pcr)")
        path = max(found, key=lambda p: p.stat().st_mtime)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise SystemExit(f"{path}: unreadable pCR model: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != "mamamia-pcr":
        raise SystemExit(f"{path}: not a pCR model file (train.py --task pcr writes one)")
    model = state["model"]
    rcfg = radiomics.RadiomicsConfig.from_dict(model.settings["radiomics"])
    masks = radiomics.predicted_masks(cases, out)
    table = radiomics.extract_features(cases, masks, "predicted", rcfg, cache=out / "pcr_features.csv",
                                       workers=min(2, os.cpu_count() or 1), progress=not args.quiet)
    records = [radiomics.clinical_record(c) for c in cases]
    score, label = model.predict(table.values, table.names, records)
    buf = _io.StringIO()
    w = _csv.writer(buf, lineterminator="\n")
    w.writerow(["patient_id", "pcr", "score"])
    for pid, lab, sc in zip(table.ids, label, score):
        w.writerow([pid, int(lab), f"{float(sc):.6f}"])
    io.atomic_write_text(out / "predictions.csv", buf.getvalue())
    imputed = {pid: note for pid, note, ok in zip(table.ids, table.notes, table.valid) if not ok}
    if imputed:
        print(f"pCR: {len(imputed)} case(s) predicted from imputed image features: {imputed}")
    print(f"pCR: {len(cases)} prediction(s), {int(label.sum())} pCR, threshold {model.threshold:.3f} "
          f"(model {path.parent}) -> {out / 'predictions.csv'}")
    return [{"patient_id": pid, "pcr": int(lab), "score": float(sc)} for pid, lab, sc in zip(table.ids, label, score)]


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    runs_dir = Path(args.runs_dir) if args.runs_dir else default_runs_dir()
    if args.runs:
        runs = [Path(r) if Path(r).is_dir() else runs_dir / r for r in args.runs]
        missing = [str(r) for r in runs if not r.is_dir()]
        if missing:
            raise SystemExit(f"run folder(s) not found: {missing}")
    else:
        runs = [latest_run(runs_dir)]
    members = load_members(runs, args.ensemble, args.checkpoint, device)
    cases = input_cases(args)
    out = Path(args.output) if args.output else REPO / "predictions" / "_".join(r.name for r in runs)
    prepare_output(out, args.overwrite)
    tta = () if args.no_tta else tuple(mamamia.parse_list(args.tta_axes, int) or ())
    use_lcc = False if args.no_lcc else (True if args.lcc else lcc_helps(runs))
    print(f"largest-component postprocessing: {'on' if use_lcc else 'off'}"
          + ("" if args.no_lcc or args.lcc else " (from the runs' cross-validation)"))
    t0 = time.time()
    result = run(cases, members, out, device, tta_axes=tta, step=args.step, window_batch=args.window_batch,
                 lcc=use_lcc, breast_box=args.breast_box, restrict_box=args.restrict_to_box,
                 save_probabilities=args.save_probabilities, progress=not args.quiet, overwrite=args.overwrite,
                 skip_air=not args.no_skip_air, average=args.average)
    manifest = {
        "runs": [str(r) for r in runs],
        "checkpoints": [str(m.checkpoint) for m in members],
        "plan_hashes": sorted({planlib.plan_hash(m.plan) for m in members}),
        "settings": {"tta_axes": list(tta), "step": args.step, "lcc": use_lcc, "average": args.average,
                     "skip_air": not args.no_skip_air,
                     "breast_box": args.breast_box, "restrict_to_box": args.restrict_to_box,
                     "checkpoint": args.checkpoint, "device": str(device)},
        "cases": [c.patient_id for c in cases],
        "seconds_per_case": result["seconds_per_case"], "errors": result["errors"],
        "total_seconds": time.time() - t0,
    }
    io.atomic_write_text(out / "predictions_manifest.json", json.dumps(manifest, indent=1))
    ok = len(cases) - len(result["errors"])
    print(f"{ok}/{len(cases)} case(s) predicted into {out / 'pred_segmentations'} "
          f"({manifest['total_seconds']:.1f} s, {manifest['total_seconds'] / max(len(cases), 1):.1f} s/case)")
    if args.pcr:
        predict_pcr(args, cases, out)
    if result["errors"]:
        print(f"{len(result['errors'])} case(s) failed:")
        for pid, msg in result["errors"].items():
            print(f"  {pid}: {msg}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
