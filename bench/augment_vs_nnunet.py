"""Patch sampling + augmentation: ours vs nnU-Net v2's training pipeline, same process.

Peer: nnU-Net v2's ``nnUNetDataLoader.generate_train_batch`` with the transforms of
``nnUNetTrainer.get_training_transforms`` (batchgeneratorsv2) for a 3D isotropic configuration
(rotation +-30 deg, no dummy 2D, mirroring on all axes, no deep supervision downsampling), the
pre-transform patch from nnU-Net's ``get_patch_size`` and 33 % foreground oversampling.
Ours: ``data.sampler.PatchSampler`` + ``data.augment.draw_params/apply`` with profile "nnunet"
and label_mode "linear" (nnU-Net's label resampling), as ``data.loader`` runs them: parameters
are drawn first, so samples that will only be centre-cropped read just their patch box.

Input: one synthetic 1 mm case, 3 channels, 160^3, an ellipsoid label; patch 96^3, batch 2.
Both run with the same torch thread count in one process, in interleaved rounds after a warm-up
(which also lets batchgeneratorsv2's blur pick its convolution for each kernel size).

Run: .venv/bin/python bench/augment_vs_nnunet.py [--rounds 6 --per-round 5 --threads 1]
Needs nnunetv2 and batchgeneratorsv2 (``make bench`` installs them).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import augment  # noqa: E402
from data.sampler import PatchSampler, foreground_locations, pretransform_patch_size  # noqa: E402


def synthetic_case(shape=(160, 160, 160), channels=3, seed=0):
    """Smooth z-scored channels with an enhancing ellipsoid; label = the ellipsoid (uint8)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.standard_normal((1, channels, 10, 10, 10)).astype(np.float32))
    image = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)[0]
    image += 0.3 * torch.from_numpy(rng.standard_normal((channels, *shape)).astype(np.float32))
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre, radii = (70, 85, 75), (14, 10, 12)
    blob = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1
    image = image.numpy()
    image[1:, blob] += 2.0  # post-contrast phases enhance
    image = (image - image.mean(axis=(1, 2, 3), keepdims=True)) / image.std(axis=(1, 2, 3), keepdims=True)
    return image.astype(np.float32), blob[None].astype(np.uint8)


class _OneCaseDataset:
    """The part of nnU-Net's dataset interface its data loader uses."""

    def __init__(self, image, label, locations):
        self.identifiers = ["case0"]
        # nnU-Net keeps labels as int8/int16 and class locations with a leading channel index
        self._case = (image, label.astype(np.int8), None,
                      {"class_locations": {1: np.concatenate([np.zeros((len(locations), 1), np.int64),
                                                              locations], 1)}})

    def load_case(self, identifier):
        return self._case


def _prime_blur_benchmark(compose, patch):
    """Let batchgeneratorsv2's blur time conv vs FFT for its kernel sizes (3, 5, 7) before timing."""
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform

    for t in compose.transforms:
        blur = getattr(t, "transform", t)
        if isinstance(blur, GaussianBlurTransform) and blur.benchmark:
            dummy = torch.zeros((1, *patch))
            for sigma in (0.55, 0.75, 0.95):  # round-to-odd(6 sigma + 0.5) = 3, 5, 7 taps
                for d in range(len(patch)):
                    blur._benchmark_wrapper(dummy, sigma, d)


def make_peer(image, label, locations, patch, batch):
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    rot = (-30.0 / 360 * 2 * np.pi, 30.0 / 360 * 2 * np.pi)  # nnUNetTrainer, 3D isotropic
    initial = get_patch_size(patch, rot, rot, rot, (0.85, 1.25))
    transforms = nnUNetTrainer.get_training_transforms(patch, rot, None, (0, 1, 2), False)
    _prime_blur_benchmark(transforms, patch)
    labels = LabelManager({"background": 0, "tumour": 1}, None)
    loader = nnUNetDataLoader(_OneCaseDataset(image, label, locations), batch, initial, patch, labels,
                              oversample_foreground_percent=0.33, transforms=transforms)
    return loader.generate_train_batch, tuple(int(i) for i in initial)


def make_ours(image, label, locations, patch, batch, seed=0):
    sampler = PatchSampler([image], [label], [locations], patch, batch, seed=seed)
    gen = torch.Generator().manual_seed(seed)

    rng = np.random.default_rng(seed)

    def step():
        params = augment.draw_params(batch, "nnunet", gen, num_channels=image.shape[0])
        centre_only = [not r for r in augment.needs_resampling(params)]
        b = sampler.sample_batch(rng, centre_only)
        return augment.apply(b["image"], b["label"], params, patch, label_mode="linear")
    return step, sampler.region_size


def timed(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both (nnU-Net's loader runs each worker single-threaded)")
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    torch.manual_seed(0)

    patch = (args.patch,) * 3
    image, label = synthetic_case()
    locations = foreground_locations(label, seed=1234)
    peer, peer_region = make_peer(image, label, locations, patch, args.batch)
    ours, our_region = make_ours(image, label, locations, patch, args.batch)
    assert peer_region == our_region == pretransform_patch_size(patch), (peer_region, our_region)

    for _ in range(args.warmup):
        peer()
        ours()
    t_ours, t_peer = [], []
    for r in range(args.rounds):  # interleaved, alternating who goes first
        order = [("ours", ours, t_ours), ("peer", peer, t_peer)]
        for name, fn, acc in (order if r % 2 == 0 else order[::-1]):
            acc.append(timed(fn, args.per_round))
    ours_s, peer_s = float(np.mean(t_ours)), float(np.mean(t_peer))
    n = args.rounds * args.per_round
    print(f"case 3x160^3, patch {patch}, batch {args.batch}, region {our_region}, threads {args.threads}, "
          f"{n} batches each")
    print(f"ours : {ours_s:.3f} s/batch ({1 / ours_s:.2f} batches/s)  rounds {np.round(t_ours, 3).tolist()}")
    print(f"peer : {peer_s:.3f} s/batch ({1 / peer_s:.2f} batches/s)  rounds {np.round(t_peer, 3).tolist()}")
    print(f"speed-up of ours: {peer_s / ours_s:.2f}x")
    print(json.dumps({"bench": "augment_vs_nnunet", "ours": round(ours_s, 4), "peer": round(peer_s, 4),
                      "unit": "s/batch", "ratio": round(peer_s / ours_s, 3), "goal": 1.5,
                      "device": f"cpu ({args.threads} thread{'s' if args.threads > 1 else ''})"}))


if __name__ == "__main__":
    main()
