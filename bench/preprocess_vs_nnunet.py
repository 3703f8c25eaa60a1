"""Preprocessing of one full-size DUKE-like case: ours vs nnU-Net v2's DefaultPreprocessor.

Task: read the 4 DCE phases of a 448 x 448 x 168 case at 0.7031 x 0.7031 x 1.0 mm (NIfTI, int16),
crop to the nonzero box, z-score every channel (no nonzero mask), resample to 1 mm isotropic
(cubic for images) -> (4, 315, 315, 168) float32. No segmentation (the inference path).

* ours: ``data.preprocess.preprocess(case, plan)`` (nibabel reading, separable Keys cubic
  convolution in torch).
* nnU-Net v2: ``DefaultPreprocessor.run_case`` with a plans dict whose ``3d_fullres``
  configuration has spacing 1 mm, ``ZScoreNormalization`` with ``use_mask_for_norm`` false and
  the default resampling (``resample_data_or_seg_to_shape``, order 3, order_z 0), SimpleITKIO
  reading (what nnU-Net picks for .nii.gz). ``nnunet_plans`` builds the plans and dataset.json.

Each run is a fresh subprocess (interleaved: ours, nnU-Net, ours at 1 thread, ours, ...) that times
only the preprocessing call after its imports and reports its peak RSS (``ru_maxrss``, imports
included; the RSS after imports is printed beside it). Both get the same thread count (torch,
OpenMP, MKL, SimpleITK); nnU-Net's resampling is single-threaded scikit-image, so ours is also
timed at 1 thread. The outputs are compared on the common grid (nnU-Net's arrays are (C, Z, Y, X),
transposed back): Pearson correlation over the whole volume and inside the body (voxels whose
mean over channels of our output is above 10 % of its 1st-99th percentile range).

The case is the phantom's DUKE case k=26 (seed 0: 448^2 x 168, 0.7031 x 0.7031 x 1.0 mm, 4 phases),
written once under .cache/bench/ (about 3 minutes); ``--data`` takes any MAMA-MIA root instead.

Run:  .venv/bin/python bench/preprocess_vs_nnunet.py [--data ROOT --case ID] [--threads N] [--repeats R]
Peer: pip install nnunetv2 (see ``make bench``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_CASE = ("DUKE", 26, "DUKE_027")  # phantom seed 0: 448^2 x 168, 0.7031 x 0.7031 x 1.0 mm, 4 phases
TARGET_SPACING = (1.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- the peer's plans

import common as bench_common  # noqa: E402  (bench/common.py: the script's folder is on sys.path)

def nnunet_plans(n_channels: int, target_spacing=TARGET_SPACING, patch_size=(64, 64, 64),
                 features=(16, 32, 64, 128), strides=(1, 2, 2, 2), num_classes: int = 2,
                 median_shape=(168, 315, 315)) -> tuple[dict, dict]:
    """A minimal nnU-Net v2 ``plans.json`` (configuration ``3d_fullres``) and ``dataset.json``.

    Keys as written by ``ExperimentPlanner.plan_experiment`` / ``get_plans_for_configuration``
    (nnunetv2 2.x). Spacings and shapes are in nnU-Net's (SimpleITK) axis order Z, Y, X;
    ``transpose_forward`` is the identity. The architecture is a PlainConvUNet with the given
    features and strides (kernel 3, 2 convs per stage, InstanceNorm, LeakyReLU), like ours.
    """
    n_stages = len(features)
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n_stages, "features_per_stage": list(features),
            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * n_stages,
            "strides": [[s] * 3 for s in strides], "n_conv_per_stage": [2] * n_stages,
            "n_conv_per_stage_decoder": [2] * (n_stages - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": list(patch_size), "median_image_size_in_voxels": list(median_shape),
        "spacing": list(target_spacing)[::-1],
        "normalization_schemes": ["ZScoreNormalization"] * n_channels,
        "use_mask_for_norm": [False] * n_channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "architecture": arch, "batch_dice": True,
    }
    # only CTNormalization reads these; ZScoreNormalization ignores them
    stats = {"max": 1.0, "mean": 0.0, "median": 0.0, "min": 0.0, "percentile_00_5": 0.0,
             "percentile_99_5": 1.0, "std": 1.0}
    plans = {
        "dataset_name": "Dataset999_MAMAMIABench", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(target_spacing)[::-1],
        "original_median_shape_after_transp": list(median_shape),
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(c): dict(stats) for c in range(n_channels)},
    }
    dataset = {"channel_names": {str(c): f"DCE{c}" for c in range(n_channels)},
               "labels": {"background": 0, "tumour": 1}, "numTraining": 1, "file_ending": ".nii.gz"}
    return plans, dataset


def bench_plan(n_channels: int, patch=(64, 64, 64), features=(16, 32, 64, 128), resampling: str = "cubic"):
    """Our ``Plan`` for the same settings (z-score per channel, no nonzero mask, 1 mm)."""
    from core.plan import ArchSpec, IntensityStats, Plan
    n = len(features)
    unet = ArchSpec(name="unet", num_pool=(n - 1,) * 3, features=features, kernel_sizes=((3, 3, 3),) * n,
                    strides=((1, 1, 1),) + ((2, 2, 2),) * (n - 1), n_conv_per_stage=(2,) * n)
    return Plan(target_spacing=TARGET_SPACING, channels=tuple(range(n_channels)),
                normalisation=("zscore",) * n_channels, patch_size=patch, batch_size=2,
                median_shape=(315, 315, 168), intensity_stats=(IntensityStats(0.0, 1.0, -1.0, 1.0),) * n_channels,
                archs={"unet": unet}, use_nonzero_mask=False, clahe=False, separate_z_resampling=True,
                resampling=resampling)


def ensure_case(data: str | None, case_id: str | None) -> tuple[Path, str]:
    if data:
        return Path(data), case_id
    center, k, pid = DEFAULT_CASE
    root = REPO / ".cache" / "bench" / f"duke_full_k{k}"
    if not (root / "images" / pid).is_dir():
        from data import phantom
        tmp = root.with_name(root.name + ".tmp")
        print(f"writing the phantom case {pid} (full scale) to {root} ...", flush=True)
        phantom.write_case(tmp, phantom.draw_case(0, center, k, pid, "full"))
        tmp.rename(root)
    return root, pid


# ----------------------------------------------------------------------------- one run (child)

def set_threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)
    try:
        import SimpleITK as sitk
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    except ImportError:
        pass


def child(args) -> int:
    import resource

    import torch
    from data import mamamia
    from data.preprocess import preprocess
    set_threads(args.threads)
    case = next(c for c in mamamia.load_dataset(args.data, strict_split_ids=False) if c.patient_id == args.case)
    files = [str(case.phase_path(p)) for p in range(args.phases)]
    if args.worker == "nnunet":
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        plans, dataset = nnunet_plans(args.phases)
        pm = PlansManager(plans)
        cm = pm.get_configuration("3d_fullres")
        pre = DefaultPreprocessor(verbose=False)
    else:
        plan = bench_plan(args.phases)
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if args.worker == "nnunet":
        data, _, props = pre.run_case(files, None, pm, cm, dataset)
        seconds = time.perf_counter() - t0
        out = data.transpose(0, 3, 2, 1)              # (C, Z, Y, X) -> (C, X, Y, Z)
        box = [list(b) for b in props["bbox_used_for_cropping"][::-1]]
    else:
        img, _, meta = preprocess(case, plan, with_mask=False)
        seconds = time.perf_counter() - t0
        out, box = img, [list(b) for b in meta.crop_box]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.save:
        np.save(args.save, np.ascontiguousarray(out, dtype=np.float32))
    print(json.dumps({"seconds": seconds, "rss_mb": rss, "rss_after_imports_mb": rss_imports,
                      "shape": list(out.shape), "crop_box": box, "torch_threads": torch.get_num_threads()}))
    return 0


# ----------------------------------------------------------------------------- driver (parent)

def spawn(worker: str, threads: int, args, root: Path, case_id: str, save: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads),
               nnUNet_raw=tempfile.gettempdir(), nnUNet_preprocessed=tempfile.gettempdir(),
               nnUNet_results=tempfile.gettempdir())
    cmd = [sys.executable, __file__, "--worker", worker, "--threads", str(threads), "--data", str(root),
           "--case", case_id, "--phases", str(args.phases)] + (["--save", save] if save else [])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{worker} run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    if mask is not None:
        a, b = a[:, mask], b[:, mask]
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def compare(ours_path: str, peer_path: str, box_ours, box_peer) -> dict:
    a, b = np.load(ours_path, mmap_mode="r"), np.load(peer_path, mmap_mode="r")
    if a.shape != b.shape or box_ours != box_peer:
        # different crops give different grids: compare the common corner-aligned block
        print(f"  grids differ: ours {a.shape} box {box_ours}, nnU-Net {b.shape} box {box_peer}")
        common = tuple(min(x, y) for x, y in zip(a.shape, b.shape))
        sl = tuple(slice(0, n) for n in common)
        a, b = a[sl], b[sl]
    a, b = np.asarray(a), np.asarray(b)
    mean = a.mean(axis=0)
    lo, hi = np.percentile(mean, [1, 99])
    body = mean > lo + 0.1 * (hi - lo)
    return {"corr_all": correlation(a, b), "corr_body": correlation(a, b, body),
            "body_fraction": float(body.mean()), "max_abs_diff_body": float(np.abs(a[:, body] - b[:, body]).max()),
            "shape": list(a.shape)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="MAMA-MIA root (default: a phantom DUKE case under .cache/bench/)")
    ap.add_argument("--case", help="patient id in --data")
    ap.add_argument("--phases", type=int, default=4, help="use phases 0..N-1 (default 4)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-single-thread", action="store_true", help="skip the extra 1-thread runs of ours")
    ap.add_argument("--worker", choices=("ours", "nnunet"), help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return child(args)
    if args.data and not args.case:
        ap.error("--data needs --case")

    root, case_id = ensure_case(args.data, args.case)
    print(f"case {case_id} in {root}; load average {os.getloadavg()} on {os.cpu_count()} cores "
          "(the machine is shared: medians of interleaved runs)", flush=True)
    for p in sorted((root / "images" / case_id).glob("*.nii.gz")):
        p.read_bytes()  # warm the page cache so neither side pays for the first read
    variants = [("ours", args.threads), ("nnunet", args.threads)]
    if not args.no_single_thread and args.threads != 1:
        variants.append(("ours", 1))
    runs = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        saved = {}
        for r in range(args.repeats):
            order = variants if r % 2 == 0 else variants[::-1]
            for worker, threads in order:
                save = None
                if r == 0 and threads == args.threads:
                    save = saved[worker] = os.path.join(tmp, f"{worker}.npy")
                res = spawn(worker, threads, args, root, case_id, save)
                runs[(worker, threads)].append(res)
                print(f"  run {r}: {worker:6s} {threads} thr  {res['seconds']:7.2f} s  peak RSS {res['rss_mb']:6.0f} MB"
                      f" (after imports {res['rss_after_imports_mb']:.0f} MB)  shape {res['shape']}", flush=True)
        cmp = compare(saved["ours"], saved["nnunet"], runs[variants[0]][0]["crop_box"],
                      runs[variants[1]][0]["crop_box"])

    med = {v: statistics.median(x["seconds"] for x in runs[v]) for v in variants}
    rss = {v: max(x["rss_mb"] for x in runs[v]) for v in variants}
    ours, peer = med[("ours", args.threads)], med[("nnunet", args.threads)]
    print("\nraw seconds:")
    for v in variants:
        print(f"  {v[0]:6s} {v[1]} thr: " + " ".join(f"{x['seconds']:.2f}" for x in runs[v])
              + f"   median {med[v]:.2f}   peak RSS {rss[v]:.0f} MB")
    print(f"speed-up of ours over nnU-Net at {args.threads} threads: {peer / ours:.2f}x (goal 2x)")
    if ("ours", 1) in med and args.threads != 1:
        print(f"ours at 1 thread vs nnU-Net at {args.threads}: {peer / med[('ours', 1)]:.2f}x")
    print(f"output agreement on {cmp['shape']}: correlation {cmp['corr_all']:.6f} (all voxels), "
          f"{cmp['corr_body']:.6f} (body, {100 * cmp['body_fraction']:.0f} % of voxels), "
          f"max |diff| in body {cmp['max_abs_diff_body']:.3f}")
    result = {"bench": "preprocess_vs_nnunet", "ours": round(ours, 3), "peer": round(peer, 3), "unit": "s/case",
              "ratio": round(peer / ours, 3), "goal": 2.0, "device": bench_common.cpu_device_string(args.threads),
              "corr_body": round(cmp["corr_body"], 6), "rss_mb_ours": round(rss[("ours", args.threads)]),
              "rss_mb_peer": round(rss[("nnunet", args.threads)])}
    if ("ours", 1) in med and args.threads != 1:
        result["ours_1_thread"] = round(med[("ours", 1)], 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
