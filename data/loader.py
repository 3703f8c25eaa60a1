"""Infinite, prefetching, deterministic batch loader: sampler -> augmentation.

Batch ``i`` is a pure function of ``(seed, i)``: its sampler generator and its augmentation
parameters come from ``np.random.SeedSequence([seed, i])``. Worker ``w`` of ``W`` produces the
batches ``i = w, w + W, ...`` and the consumer takes them in order, so the stream is the same
for every backend and worker count.

Where augmentation runs (``augment_on``):

- ``"worker"`` (default on CPU): workers sample and augment; the consumer gets final patches.
- ``"device"`` (default on CUDA): workers draw the parameters and sample the enlarged regions
  (pinned memory); the consumer copies them to the GPU and augments there, right before the
  training step. The GPU resamples a batch in milliseconds, so the CPU only crops.

Backends: ``"thread"`` (a thread per worker; numpy copies and torch kernels release the GIL, and
batches are handed over without copying) or ``"process"`` (``torch.utils.data.DataLoader`` over
an ``IterableDataset``; batches travel through shared memory). Threads win on a 2-core machine
(no shared-memory copy per batch; a second worker does not pay there, bench/README.md),
hence the defaults: threads, ``os.cpu_count() - 1`` workers (at most 4, at least 1).

``wait_time`` reports how long the consumer waited for each batch: near 0 means the loader
keeps up with training.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque

import numpy as np
import torch

from data import augment
from data.sampler import PatchSampler

log = logging.getLogger(__name__)

BACKENDS = ("thread", "process")


def batch_seeds(seed: int, index: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent sampler and augmentation generators of batch ``index``."""
    ss = np.random.SeedSequence([seed, index])
    np_ss, torch_ss = ss.spawn(2)
    gen = torch.Generator().manual_seed(int(torch_ss.generate_state(1, np.uint64)[0] >> np.uint64(1)))
    return np.random.default_rng(np_ss), gen


class _Producer:
    """What a worker does for one batch index (picklable for process workers)."""

    def __init__(self, sampler: PatchSampler, patch_size, profile, seed: int, augment_here: bool,
                 label_mode: str, pin: bool):
        self.sampler, self.patch_size, self.profile = sampler, tuple(patch_size), profile
        self.seed, self.augment_here, self.label_mode, self.pin = seed, augment_here, label_mode, pin

    def __call__(self, index: int) -> dict:
        rng, gen = batch_seeds(self.seed, index)
        params = augment.draw_params(self.sampler.batch_size, self.profile, gen,
                                     num_channels=self.sampler.num_channels)
        centre_only = [not r for r in augment.needs_resampling(params)]
        batch = self.sampler.sample_batch(rng, centre_only)
        if self.augment_here:
            batch["image"], batch["label"] = augment.apply(batch["image"], batch["label"], params,
                                                           self.patch_size, self.label_mode)
        else:
            batch["params"] = params
            if self.pin:
                batch["image"], batch["label"] = batch["image"].pin_memory(), batch["label"].pin_memory()
        batch["index"] = index
        return batch


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, producer: _Producer, start: int):
        self.producer, self.start = producer, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, n = (0, 1) if info is None else (info.id, info.num_workers)
        i = self.start + wid
        while True:
            yield self.producer(i)
            i += n


class BatchLoader:
    """Infinite iterator of augmented batches {'image', 'label', 'case_ids', 'index'}.

    Args:
        sampler: a ``PatchSampler`` (its own seed is not used; batches derive from ``seed``).
        patch_size: final patch (X, Y, Z).
        profile: augmentation profile name or ``augment.AugmentProfile``.
        device: where batches are delivered; with ``augment_on="device"`` also where they are
            augmented.
        augment_on: "worker" or "device"; default "device" for CUDA, else "worker".
        num_workers: producer threads/processes (>= 1; default cpu_count - 1, clipped to 1..4);
            prefetch: batches queued per worker.
    Yields:
        image (B, C, *patch_size) float32 and label (B, 1, *patch_size) uint8 on ``device``.
    """

    def __init__(self, sampler: PatchSampler, patch_size, profile: str | augment.AugmentProfile = "nnunet", *,
                 seed: int = 0, num_workers: int | None = None, backend: str = "thread", prefetch: int = 2,
                 device: str | torch.device = "cpu", augment_on: str | None = None, label_mode: str = "linear",
                 start: int = 0):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if num_workers is None:
            num_workers = min(4, max(1, (os.cpu_count() or 2) - 1))
        if num_workers < 1 or prefetch < 1:
            raise ValueError(f"num_workers and prefetch must be >= 1, got {num_workers}, {prefetch}")
        self.device = torch.device(device)
        augment_on = augment_on or ("device" if self.device.type == "cuda" else "worker")
        if augment_on not in ("worker", "device"):
            raise ValueError(f"augment_on must be 'worker' or 'device', got {augment_on!r}")
        augment.get_profile(profile)  # fail early on an unknown name
        self.augment_on, self.patch_size, self.label_mode = augment_on, tuple(patch_size), label_mode
        self.num_workers, self.backend = num_workers, backend
        self._producer = _Producer(sampler, patch_size, profile, seed, augment_on == "worker", label_mode,
                                   pin=augment_on == "device" and self.device.type == "cuda")
        self._next = self._start = start
        self.wait_times: deque[float] = deque(maxlen=10000)
        self._stop = threading.Event()
        if backend == "thread":
            self._queues = [queue.Queue(maxsize=prefetch) for _ in range(num_workers)]
            self._threads = [threading.Thread(target=self._work, args=(w,), daemon=True,
                                              name=f"batch-loader-{w}") for w in range(num_workers)]
            for t in self._threads:
                t.start()
        else:
            self._dl = torch.utils.data.DataLoader(_Stream(self._producer, start), batch_size=None,
                                                   num_workers=num_workers, prefetch_factor=prefetch,
                                                   persistent_workers=False)
            self._it = iter(self._dl)

    def _work(self, w: int) -> None:
        i = self._start + w
        while not self._stop.is_set():
            try:
                item = self._producer(i)
            except Exception as err:  # handed to the consumer, which re-raises it
                log.debug("loader worker %d failed on batch %d", w, i, exc_info=True)
                item = err
            while not self._stop.is_set():
                try:
                    self._queues[w].put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return
            i += self.num_workers

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        t0 = time.perf_counter()
        if self.backend == "thread":
            if self._stop.is_set():
                raise RuntimeError("BatchLoader is closed")
            # worker w produces start + w, start + w + W, ...: the queue follows the offset from
            # start, not the absolute index (a resume at a start not divisible by W read the
            # wrong worker's batch)
            item = self._queues[(self._next - self._start) % self.num_workers].get()
            if isinstance(item, Exception):
                self.close()
                raise RuntimeError(f"batch {self._next} failed in a loader worker") from item
        else:
            item = next(self._it)
        self.wait_times.append(time.perf_counter() - t0)
        assert item["index"] == self._next, (item["index"], self._next)
        self._next += 1
        if self.augment_on == "device":
            params = item.pop("params")
            image = item["image"].to(self.device, non_blocking=True)
            label = item["label"].to(self.device, non_blocking=True)
            item["image"], item["label"] = augment.apply(image, label, params, self.patch_size, self.label_mode)
        elif self.device.type != "cpu":
            item["image"] = item["image"].to(self.device, non_blocking=True)
            item["label"] = item["label"].to(self.device, non_blocking=True)
        return item

    @property
    def wait_time(self) -> float:
        """Mean seconds the consumer waited per batch (0 before the first batch)."""
        return float(np.mean(self.wait_times)) if self.wait_times else 0.0

    def stats(self) -> dict:
        w = np.asarray(self.wait_times) if self.wait_times else np.zeros(1)
        return {"batches": self._next, "wait_mean_s": float(w.mean()), "wait_max_s": float(w.max()),
                "wait_total_s": float(w.sum())}

    def close(self) -> None:
        self._stop.set()
        if self.backend == "thread":
            for q in self._queues:  # unblock producers waiting on a full queue
                while True:
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        break
            for t in self._threads:
                t.join(timeout=5)
        else:
            self._it = None
            self._dl = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None and not stop.is_set():
            self.close()


def throughput(loader: BatchLoader, n: int = 20, warmup: int = 2) -> float:
    """Batches per second a consumer that does nothing else gets from ``loader``."""
    for _ in range(warmup):
        next(loader)
    t0 = time.perf_counter()
    for _ in range(n):
        next(loader)
    return n / (time.perf_counter() - t0)
