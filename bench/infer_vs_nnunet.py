"""End-to-end inference on a folder of full-scale phantom cases: ``infer.run`` vs nnU-Net v2's
``nnUNetPredictor.predict_from_files``.

Both sides read the NIfTI phases 0-2 of every case, preprocess (crop to nonzero, z-score per
channel, resample to 1 mm with order-3 spline interpolation: our plan's ``resampling='spline'``,
``--resampling cubic`` for our default Keys kernel), predict with the same network weights
(plain 4-stage U-Net, kernel 3, 2 convs per stage; features 8-64 by default, see below),
sliding window 64^3, 50 % overlap, Gaussian weighting, no flip TTA, put the prediction back on
the original grid and write ``<id>.nii.gz``. Ours averages and restores logits as nnU-Net does
(``--average probabilities`` for infer.py's default). No postprocessing on either side (ours with
``lcc=False``; nnU-Net applies none unless asked). Ours runs with its defaults ``skip_air``
(windows with no body voxel are not computed, which nnU-Net does not do) and two windows per
network call on CPU (``core.sliding_window.default_window_batch``);
``--no-skip-air`` makes both sides compute every window. Same thread count: torch intra-op threads = N
on both; each pipelines reading and writing beside the network (ours: one reader and one writer
thread; nnU-Net: one preprocessing and one export process).

The peer gets a model folder built in a temporary directory: ``plans.json`` (configuration
``3d_fullres`` with the same spacing, normalisation, patch and PlainConvUNet topology;
see ``preprocess_vs_nnunet.nnunet_plans``), ``dataset.json`` and ``fold_0/checkpoint_final.pth``
holding our weights under PlainConvUNet's keys (``train_step.unet_peer_state``), every kernel's
spatial axes reversed because nnU-Net hands the network (C, Z, Y, X) arrays (without that the
peer runs a transposed network and its masks sit ~2 voxels off ours), with the fields
``initialize_from_trained_model_folder`` reads (network_weights, trainer_name, init_args,
inference_allowed_mirroring_axes).

The network: an untrained U-Net predicts empty or random masks, so the weights are fitted first
for ``--train-steps`` steps (AdamW lr 3e-3 with poly decay, Dice+CE with deep supervision,
batch 2 of 48^3 patches, two thirds centred on tumour) on our preprocessing of the benchmark
cases themselves: the bench measures agreement between the two pipelines, not accuracy (the
Dice against the phantom truth is printed for information). The weights are cached under .cache/bench/. The default network is narrow
(8-64 features) so the CPU run stays within minutes per case; the network's share of the time is
the same code path on both sides.

Each side runs in its own subprocess (interleaved when ``--repeats`` > 1); the figure is total
wall seconds / cases. Masks must agree with Dice >= 0.99 case by case.

Run:  .venv/bin/python bench/infer_vs_nnunet.py [--data ROOT] [--cases ID,ID,...] [--threads N]
Default data: the phantom's 10-case full-scale dataset (``data.phantom.default_dataset('full', 10)``,
generated once, ~10 minutes). Peer: pip install nnunetv2 (see ``make bench``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

CHANNELS = (0, 1, 2)
PATCH = (64, 64, 64)
TRAIN_PATCH = 48


import common as bench_common  # noqa: E402  (bench/common.py: the script's folder is on sys.path)

def parse_features(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def build_model(features):
    import nets
    from core.config import NetSpec
    return nets.build(NetSpec("unet", dict(in_channels=len(CHANNELS), num_classes=2, features=features,
                              kernel_sizes=3, strides=(1,) + (2,) * (len(features) - 1), n_conv_per_stage=2,
                              deep_supervision=True)))


def select_cases(root: Path, ids: str | None):
    from data import mamamia
    cases = mamamia.load_dataset(root, strict_split_ids=False)
    if ids:
        wanted = [i.strip().upper() for i in ids.split(",")]
        by_id = {c.patient_id.upper(): c for c in cases}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise SystemExit(f"{root}: no case(s) {missing}")
        cases = [by_id[i] for i in wanted]
    return cases


# ----------------------------------------------------------------------------- a trained-ish network

def fit_network(cases, plan, features, steps: int, seed: int = 0):
    """A few hundred AdamW steps on 48^3 patches of our preprocessing of ``cases``.

    The masks of the two pipelines only agree to Dice >= 0.99 when the network is confident:
    with 200 steps about half of the predicted voxels had probabilities in (0.3, 0.7), and the
    small input differences of the two preprocessings (correlation 0.9995) moved those.
    """
    import torch
    from core.losses import DeepSupervisionLoss, get_loss
    from core.optim import GRAD_CLIP, make_optimizer, poly_lr, set_lr
    from data.preprocess import preprocess

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    arrays = []
    for c in cases:
        img, mask, _ = preprocess(c, plan, with_mask=True)
        fg = np.argwhere(mask > 0) if mask is not None else np.zeros((0, 3), int)
        arrays.append((img, mask, fg))
        print(f"  fit: preprocessed {c.patient_id} {img.shape}, {len(fg)} tumour voxels", flush=True)
    model = build_model(features).train()
    loss_fn = DeepSupervisionLoss(get_loss("dice_ce"))
    lr0 = 3e-3
    opt = make_optimizer("adamw", model.parameters(), lr=lr0)
    p = TRAIN_PATCH
    t0 = time.time()
    for it in range(steps):
        set_lr(opt, poly_lr(lr0, it, steps))
        xs, ys = [], []
        for _ in range(2):
            img, mask, fg = arrays[rng.integers(len(arrays))]
            shape = np.array(img.shape[1:])
            if len(fg) and rng.random() < 2 / 3:
                centre = fg[rng.integers(len(fg))]
            else:
                centre = rng.integers(0, shape)
            lo = np.clip(centre - p // 2, 0, np.maximum(shape - p, 0))
            sl = tuple(slice(int(a), int(a) + p) for a in lo)
            x = np.zeros((img.shape[0], p, p, p), np.float32)
            y = np.zeros((1, p, p, p), np.float32)
            cut = img[(slice(None),) + sl]
            x[(slice(None),) + tuple(slice(0, n) for n in cut.shape[1:])] = cut
            y[(slice(None),) + tuple(slice(0, n) for n in cut.shape[1:])] = mask[sl]
            xs.append(x)
            ys.append(y)
        x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        if it % 25 == 0 or it == steps - 1:
            print(f"  fit: step {it} loss {float(loss.detach()):.3f} ({time.time() - t0:.0f} s)", flush=True)
    return model.eval()


# ----------------------------------------------------------------------------- the peer's model folder

def write_nnunet_model(folder: Path, model, features) -> None:
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from preprocess_vs_nnunet import nnunet_plans
    from train_step import unet_peer_state

    plans, dataset = nnunet_plans(len(CHANNELS), patch_size=PATCH, features=features,
                                  strides=(1,) + (2,) * (len(features) - 1))
    peer = PlainConvUNet(len(CHANNELS), len(features), list(features), torch.nn.Conv3d, 3,
                         [1] + [2] * (len(features) - 1), 2, 2, 2, conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    # nnU-Net feeds the network arrays in SimpleITK order (C, Z, Y, X), ours in nibabel order
    # (C, X, Y, Z): the same network in its convention has every kernel's spatial axes reversed
    # (all strides are isotropic and InstanceNorm does not care), so peer(x^T) = ours(x)^T.
    weights = {k: (v.permute(0, 1, 4, 3, 2).contiguous() if v.ndim == 5 else v)
               for k, v in unet_peer_state(model, peer).items()}
    peer.load_state_dict(weights, strict=True)
    x = torch.randn(1, len(CHANNELS), *PATCH, generator=torch.Generator().manual_seed(0))
    x[..., :8] += 1.0   # not symmetric under the transposition
    with torch.no_grad():
        diff = float((peer.eval()(x.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2) - model.eval()(x)).abs().max())
    print(f"weights copied into PlainConvUNet (kernels in Z, Y, X order): max |ours(x) - nnU-Net(x^T)^T| "
          f"on one patch = {diff:.2e}")
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    torch.save({"network_weights": weights, "trainer_name": "nnUNetTrainer",
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset},
                "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 0},
               folder / "fold_0" / "checkpoint_final.pth")


# ----------------------------------------------------------------------------- one run (child)

def child(args) -> int:
    import torch
    torch.set_num_threads(args.threads)
    cases = select_cases(Path(args.data), args.cases)
    out = Path(args.out)
    if args.worker == "nnunet":
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=False, device=torch.device("cpu"),
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(args.model_dir, use_folds=(0,),
                                                       checkpoint_name="checkpoint_final.pth")
        lists = [[str(c.phase_path(p)) for p in CHANNELS] for c in cases]
        outs = [str(out / c.patient_id) for c in cases]
        t0 = time.perf_counter()
        predictor.predict_from_files(lists, outs, save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=1, num_processes_segmentation_export=1)
        seconds = time.perf_counter() - t0
        per_case = {}
    else:
        import infer
        from preprocess_vs_nnunet import bench_plan
        plan = bench_plan(len(CHANNELS), patch=PATCH, features=args.features, resampling=args.resampling)
        model = build_model(args.features)
        model.load_state_dict(torch.load(args.weights, map_location="cpu"))
        members = [infer.Member("bench", model.eval(), plan, Path(args.weights))]
        t0 = time.perf_counter()
        res = infer.run(cases, members, out, torch.device("cpu"), tta_axes=(), step=0.5, lcc=False,
                        progress=False, overwrite=True, skip_air=not args.no_skip_air, average=args.average)
        seconds = time.perf_counter() - t0
        if res["errors"]:
            raise RuntimeError(f"ours failed on {res['errors']}")
        per_case = res["seconds_per_case"]
    import resource
    print(json.dumps({"seconds": seconds, "per_case": per_case,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


# ----------------------------------------------------------------------------- driver (parent)

def spawn(worker: str, args, root: Path, out: Path, model_dir: Path, weights: Path) -> dict:
    t = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t,
               ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=t, nnUNet_raw=tempfile.gettempdir(),
               nnUNet_preprocessed=tempfile.gettempdir(), nnUNet_results=tempfile.gettempdir())
    cmd = [sys.executable, __file__, "--worker", worker, "--threads", t, "--data", str(root),
           "--out", str(out), "--model-dir", str(model_dir), "--weights", str(weights),
           "--features", ",".join(map(str, args.features))]
    if args.cases:
        cmd += ["--cases", args.cases]
    if args.no_skip_air:
        cmd.append("--no-skip-air")
    cmd += ["--average", args.average, "--resampling", args.resampling]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{worker} run failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="MAMA-MIA root (default: the 10-case full-scale phantom)")
    ap.add_argument("--cases", help="comma-separated patient ids (default: every case)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--features", type=parse_features, default=(8, 16, 32, 64))
    ap.add_argument("--train-steps", type=int, default=800)
    ap.add_argument("--no-skip-air", action="store_true",
                    help="run our sliding window over the whole volume too (infer.run skips windows "
                         "outside the body's bounding box by default; nnU-Net has no such step)")
    ap.add_argument("--average", choices=("logits", "probabilities"), default="logits",
                    help="what ours averages and restores: logits (nnU-Net's definition, default) or "
                         "probabilities (infer.py's default)")
    ap.add_argument("--resampling", choices=("spline", "cubic"), default="spline",
                    help="our plan's image resampling: spline (nnU-Net's order 3, default: the same "
                         "plan on both sides) or cubic (our default, Keys)")
    ap.add_argument("--worker", choices=("ours", "nnunet"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return child(args)

    import torch
    from data import io, mamamia
    from preprocess_vs_nnunet import bench_plan
    torch.set_num_threads(args.threads)
    if args.data:
        root = Path(args.data)
    else:
        from data import phantom
        root = phantom.default_dataset("full", cases=10, seed=0)
    cases = select_cases(root, args.cases)
    print(f"{len(cases)} case(s) from {root}: {[c.patient_id for c in cases]}; load average "
          f"{os.getloadavg()} on {os.cpu_count()} cores (shared machine)", flush=True)

    plan = bench_plan(len(CHANNELS), patch=PATCH, features=args.features, resampling=args.resampling)
    tag = hashlib.sha256(f"{root.resolve()}|{[c.patient_id for c in cases]}|{args.features}|{args.train_steps}"
                         .encode()).hexdigest()[:10]
    weights = REPO / ".cache" / "bench" / f"infer_unet_{tag}.pt"
    if weights.exists():
        model = build_model(args.features)
        model.load_state_dict(torch.load(weights, map_location="cpu"))
        print(f"network weights: {weights} (cached)")
    else:
        print(f"fitting the network for {args.train_steps} steps ...", flush=True)
        model = fit_network(cases, plan, args.features, args.train_steps)
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), weights)

    runs = {"ours": [], "nnunet": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_nnunet_model(tmp / "nnunet_model", model, args.features)
        outs = {}
        for r in range(args.repeats):
            for worker in (("ours", "nnunet") if r % 2 == 0 else ("nnunet", "ours")):
                out = outs.setdefault(worker, tmp / f"out_{worker}")
                res = spawn(worker, args, root, out, tmp / "nnunet_model", weights)
                runs[worker].append(res)
                print(f"  run {r}: {worker:6s} {res['seconds']:8.1f} s total, "
                      f"{res['seconds'] / len(cases):.1f} s/case, peak RSS {res['rss_mb']:.0f} MB", flush=True)
        print("\nper case: Dice(ours, nnU-Net)  voxels ours / nnU-Net  Dice vs phantom truth (ours, nnU-Net)"
              + ("  ours s" if runs["ours"][0]["per_case"] else ""))
        dices = {}
        for c in cases:
            a = io.load_nifti(outs["ours"] / "pred_segmentations" / f"{c.patient_id}.nii.gz").array
            b = io.load_nifti(outs["nnunet"] / f"{c.patient_id}.nii.gz").array
            if a.shape != b.shape:
                raise RuntimeError(f"{c.patient_id}: mask shapes differ {a.shape} vs {b.shape}")
            dices[c.patient_id] = dice(a, b)
            truth = mamamia.load_mask(c) if c.mask_path else None
            gt = f"{dice(a, truth):.3f}, {dice(b, truth):.3f}" if truth is not None else "-"
            sec = runs["ours"][0]["per_case"].get(c.patient_id)
            print(f"  {c.patient_id:14s} {dices[c.patient_id]:.4f}  {int((a > 0).sum()):8d} / {int((b > 0).sum()):8d}"
                  f"  {gt}" + (f"  {sec:.1f}" if sec is not None else ""))

    n = len(cases)
    ours = statistics.median(x["seconds"] for x in runs["ours"]) / n
    peer = statistics.median(x["seconds"] for x in runs["nnunet"]) / n
    worst = min(dices.values())
    print(f"\nraw total seconds: ours {[round(x['seconds'], 1) for x in runs['ours']]}, "
          f"nnU-Net {[round(x['seconds'], 1) for x in runs['nnunet']]} for {n} cases")
    print(f"seconds per case: ours {ours:.1f}, nnU-Net {peer:.1f}; speed-up {peer / ours:.2f}x (goal 1.5x); "
          f"lowest case Dice(ours, nnU-Net) {worst:.4f} (required >= 0.99)")
    print(json.dumps({"bench": "infer_vs_nnunet", "ours": round(ours, 2), "peer": round(peer, 2), "unit": "s/case",
                      "ratio": round(peer / ours, 3), "goal": 1.5, "device": bench_common.cpu_device_string(args.threads),
                      "cases": n, "min_dice_agreement": round(worst, 4), "skip_air": not args.no_skip_air,
                      "features": list(args.features)}))
    return 0 if worst >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
