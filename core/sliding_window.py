"""Tiled (sliding-window) prediction of a whole volume with a patch-based network.

The behaviour follows nnU-Net v2 inference (``nnunetv2/inference/sliding_window_prediction.py`` and
``nnUNetPredictor.predict_sliding_window_return_logits``):

- windows on a regular grid per axis (:func:`window_starts`), 50 % overlap by default;
- each window weighted by a Gaussian importance map with sigma = patch / 8
  (:func:`gaussian_importance_map`), the weighted sum divided by the summed weights;
- volumes smaller than the patch are zero-padded symmetrically and cropped back afterwards;
- flip test-time augmentation over every non-empty subset of the chosen axes plus the identity
  (2^n passes for n axes), the passes averaged.

What is averaged is a named choice (``average``):

- ``"probabilities"`` (default): softmax per window and per flip, then the Gaussian-weighted mean.
  Fold ensembles are then the mean of these probabilities, which is what the inference entry point
  does, and "background" outside a restricting box is simply probability 1 for class 0.
- ``"logits"``: nnU-Net v2's choice. It averages raw logits over windows, flips and folds
  (``predict_logits_from_preprocessed_data``) and applies the softmax once at export. With
  ``return_logits=True`` the averaged logits come back, so folds can be averaged in logit space too.

nnU-Net accumulates in float16 (on CPU too) with the Gaussian scaled by 10 against underflow; near
the volume border the weights still reach the float16 floor and its logits there are off by up to
0.5 (bench/sliding_window_vs_peers.py). Here accumulators are always float32, so the scaling is
unnecessary (it cancels in the division) and the result matches a float64 loop to ~1e-6.

The parts, as nnU-Net splits them: :func:`plan_windows` (where the windows go, and which are run),
:func:`flip_tta` (the prediction of one batch of windows, with flip test-time augmentation) and
:func:`predict_tiles` (the weighted accumulation); :func:`sliding_window_predict` composes them.
Windows outside a ``box`` or away from a ``region`` (the body) are not run; their share is
background. Both are exact where the network would predict background anyway.

Windows are cut out in a prefetch thread while the network runs (see :func:`_prefetch`). The
Gaussian map is a product of 1-D Gaussians and the window grid is a Cartesian product, so the
sum of weights is the outer product of three 1-D sums; no full-size weight volume is stored (for a
512x512x256 volume this saves 256 MiB).
"""
from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

log = logging.getLogger(__name__)

# Logit written outside the restricting box for foreground classes when logits are returned:
# softmax([0, -1e4]) is exactly one-hot in float32, and the value is finite so averages stay finite.
_BACKGROUND_LOGIT_GAP = 1.0e4
# scipy.ndimage.gaussian_filter default truncate; nnU-Net builds its map with gaussian_filter.
_GAUSSIAN_TRUNCATE = 4.0

Box = tuple[slice, slice, slice]


def default_window_batch(device: torch.device | str) -> int:
    """Windows per network call: 4 on CUDA; 2 on CPU. On CPU a batch of one sends many 3D
    convolutions to aten's im2col ``slow_conv3d`` path instead of oneDNN (PyTorch's CPU heuristic
    keeps oneDNN for batch-1 inputs only when N*C*D*H > 20480, e.g. not for 16 channels at 32^3):
    measured on the development CPU, 2 threads, U-Net 8-64 features, 64^3 windows: 0.25 s per
    window at batch 1, 0.12 s at batch 2, 0.14 s at batch 4."""
    return 4 if torch.device(device).type == "cuda" else 2


def window_starts(size: int, patch: int, step: float = 0.5) -> list[int]:
    """First voxel of every window along one axis, nnU-Net v2's rule.

    n = ceil((size - patch) / (patch * step)) + 1 windows, the first at 0, the last at size - patch,
    the others evenly spaced and rounded (``compute_steps_for_sliding_window``). Example: size 110,
    patch 64, step 0.5 -> 3 windows at 0, 23, 46. A single window at 0 when size <= patch (the
    volume is padded to the patch first).
    """
    if patch < 1 or size < 1:
        raise ValueError(f"size and patch must be positive, got size={size}, patch={patch}")
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    if size <= patch:
        return [0]
    n = int(math.ceil((size - patch) / (patch * step))) + 1
    spacing = (size - patch) / (n - 1)
    # Python's round() is round-half-to-even like np.round, which nnU-Net uses.
    return [int(round(spacing * i)) for i in range(n)]


def _gaussian_1d(patch: int, sigma_scale: float) -> torch.Tensor:
    """Unnormalised 1-D Gaussian (float64, max 1) as scipy's gaussian_filter yields on a delta.

    nnU-Net puts a delta at ``patch // 2`` (half a voxel off-centre for even sizes) and filters it
    with truncate=4, so offsets beyond int(4 sigma + 0.5) are exactly zero.
    """
    sigma = patch * sigma_scale
    offsets = torch.arange(patch, dtype=torch.float64) - patch // 2
    g = torch.exp(-0.5 * (offsets / sigma) ** 2)
    radius = int(_GAUSSIAN_TRUNCATE * sigma + 0.5)
    g[offsets.abs() > radius] = 0.0
    return g


def gaussian_importance_map(
    patch: Sequence[int],
    sigma_scale: float = 1.0 / 8,
    value_scaling_factor: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Gaussian weight map of shape ``patch``, max ``value_scaling_factor``, no zeros.

    Reproduces nnU-Net v2 ``compute_gaussian``: a delta at ``p // 2`` per axis blurred with
    sigma = p * sigma_scale (truncated at 4 sigma), divided by its maximum and multiplied by
    ``value_scaling_factor`` (nnU-Net passes 10 for its float16 accumulators), cast to ``dtype``,
    and zeros (beyond the truncation, or float16 underflow) replaced by the smallest nonzero value
    so that no voxel gets zero total weight.
    """
    patch = tuple(int(p) for p in patch)
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    factors = [_gaussian_1d(p, sigma_scale) for p in patch]
    g = factors[0]
    for f in factors[1:]:
        g = g[..., None] * f
    g = (g / g.max() * value_scaling_factor).to(dtype=dtype, device=device)
    zero = g == 0
    if zero.any():
        g[zero] = g[~zero].min()
    return g


def pad_to_patch(image: torch.Tensor, patch: Sequence[int], value: float = 0.0
                 ) -> tuple[torch.Tensor, Box]:
    """Pad (C, X, Y, Z) so every spatial axis is >= patch; return it and the slices undoing it.

    Symmetric as nnU-Net's ``pad_nd_image``: floor(d/2) before, the rest after.
    """
    pads, crop = [], []
    for size, p in zip(image.shape[1:], patch):
        d = max(p - size, 0)
        pads.append((d // 2, d - d // 2))
        crop.append(slice(d // 2, d // 2 + size))
    if all(a == 0 and b == 0 for a, b in pads):
        return image, tuple(crop)
    flat = [v for a, b in reversed(pads) for v in (a, b)]  # F.pad wants the last axis first
    return torch.nn.functional.pad(image, flat, mode="constant", value=value), tuple(crop)


def _check_box(box: Sequence[slice], shape: Sequence[int]) -> list[tuple[int, int]]:
    if len(box) != len(shape):
        raise ValueError(f"box needs {len(shape)} slices, got {box!r}")
    ranges = []
    for sl, n in zip(box, shape):
        if not isinstance(sl, slice) or sl.step not in (None, 1):
            raise ValueError(f"box entries must be slices with step 1, got {box!r}")
        lo, hi, _ = sl.indices(n)
        if hi <= lo:
            raise ValueError(f"box {box!r} is empty for volume shape {tuple(shape)}")
        ranges.append((lo, hi))
    return ranges


def flip_tta(net_fn: Callable[[torch.Tensor], torch.Tensor], axes: Sequence[int] = (),
             probabilities: bool = True, autocast_dtype: torch.dtype | None = None
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The window predictor: mean over flips of flip(f(flip(x))) with f = softmax(net) (or the
    raw logits), every non-empty subset of the spatial ``axes`` (0, 1, 2) plus the identity;
    maps (B, C, *patch) to (B, K, *patch) float32. ``autocast_dtype`` runs the network under
    ``torch.autocast`` (e.g. float16 on CUDA)."""
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"tta_axes must be distinct values among 0, 1, 2; got {tuple(axes)}")
    dims = [a + 2 for a in sorted(axes)]
    combos = [c for r in range(1, len(dims) + 1) for c in itertools.combinations(dims, r)]

    def f(inp):
        if autocast_dtype is None:
            out = net_fn(inp)
        else:
            with torch.autocast(inp.device.type, dtype=autocast_dtype):
                out = net_fn(inp)
        out = out.float()
        return torch.softmax(out, dim=1) if probabilities else out

    def predict(x: torch.Tensor) -> torch.Tensor:
        pred = f(x)
        for c in combos:
            pred += torch.flip(f(torch.flip(x, c)), c)
        if combos:
            pred /= len(combos) + 1
        return pred
    return predict


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows go over a volume padded to at least the patch.

    ``shape``: the volume; ``padded_shape`` and ``crop`` (slices of the padded volume that are
    the volume); ``starts``: window starts per axis; ``windows``: slices of every window in grid
    order; ``run[k]``: whether window k is computed (False: its share is background, because it
    lies outside the ``box`` or holds no ``region`` voxel within ``region_margin``);
    ``box_ranges``: the box per axis, or None.
    """

    shape: tuple[int, int, int]
    patch: tuple[int, int, int]
    padded_shape: tuple[int, int, int]
    crop: Box
    starts: list[list[int]]
    windows: list[Box]
    run: list[bool]
    box_ranges: list[tuple[int, int]] | None


def plan_windows(shape: Sequence[int], patch: Sequence[int], step: float = 0.5,
                 box: Sequence[slice] | None = None, region=None, region_margin: int = 4) -> WindowPlan:
    """Window grid of nnU-Net v2 over ``shape`` (padded to ``patch``), reduced to the windows that
    meet ``box`` (slices) and the boolean ``region`` map (e.g. the body)."""
    shape, patch = tuple(int(s) for s in shape), tuple(int(p) for p in patch)
    if len(patch) != 3 or len(shape) != 3:
        raise ValueError(f"patch and shape must have 3 entries, got {patch}, {shape}")
    box_ranges = _check_box(box, shape) if box is not None else None
    pads = [max(p - n, 0) for n, p in zip(shape, patch)]
    crop = tuple(slice(d // 2, d // 2 + n) for d, n in zip(pads, shape))
    pshape = tuple(n + d for n, d in zip(shape, pads))
    starts = [window_starts(n, p, step) for n, p in zip(pshape, patch)]
    if box_ranges is not None:
        starts = [[s for s in st if s < c.start + hi and s + p > c.start + lo]
                  for st, p, c, (lo, hi) in zip(starts, patch, crop, box_ranges)]
    windows = [tuple(slice(s, s + p) for s, p in zip(corner, patch)) for corner in itertools.product(*starts)]
    run = [True] * len(windows)
    if region is not None:
        reg = torch.as_tensor(region).to("cpu", torch.bool)
        if tuple(reg.shape) != shape:
            raise ValueError(f"region shape {tuple(reg.shape)} != image shape {shape}")
        reg_p = torch.zeros(pshape, dtype=torch.bool)
        reg_p[crop] = reg
        for k, w in enumerate(windows):
            grown = tuple(slice(max(0, sl.start - region_margin), sl.stop + region_margin) for sl in w)
            run[k] = bool(reg_p[grown].any())
    return WindowPlan(shape, patch, pshape, crop, starts, windows, run, box_ranges)


def predict_tiles(predict: Callable[[torch.Tensor], torch.Tensor], padded: torch.Tensor, plan: WindowPlan,
                  num_classes: int, probabilities: bool = True, window_batch: int = 1,
                  device: torch.device | str | None = None, accum_device: torch.device | str | None = None,
                  gaussian: bool = True) -> torch.Tensor:
    """Weighted mean of ``predict`` over the planned windows of the padded (C, *padded_shape)
    volume, cropped back to the plan's shape: (K, X, Y, Z) float32 on ``accum_device``. Windows
    that are not run count as background (probability 1 of class 0, or logits (0, -1e4, ...))."""
    device = torch.device(device) if device is not None else padded.device
    accum_device = torch.device(accum_device) if accum_device is not None else device
    patch = plan.patch
    factors = ([_gaussian_1d(p, 1.0 / 8) for p in patch] if gaussian
               else [torch.ones(p, dtype=torch.float64) for p in patch])
    weight = (gaussian_importance_map(patch, device=accum_device) if gaussian
              else torch.ones(patch, device=accum_device))
    acc = torch.zeros((num_classes, *plan.padded_shape), dtype=torch.float32, device=accum_device)
    log.debug("sliding window: %d windows (%d run), patch %s, volume %s",
              len(plan.windows), sum(plan.run), patch, plan.shape)

    def run(x: torch.Tensor) -> torch.Tensor:
        pred = predict(x.to(device, non_blocking=True))
        if pred.shape[1:] != (num_classes, *patch):
            raise ValueError(f"network output {tuple(pred.shape)} does not match "
                             f"(B, {num_classes}, *{patch})")
        return pred.to(accum_device)

    # no_grad rather than inference_mode: inference tensors cannot be updated in place later,
    # which callers summing fold predictions would trip over.
    with torch.no_grad():
        bg_pred = torch.zeros((num_classes, *patch), dtype=torch.float32, device=accum_device)
        if probabilities:
            bg_pred[0] = 1.0
        else:
            bg_pred[1:] = -_BACKGROUND_LOGIT_GAP
        # Windows are accumulated in grid order whatever is skipped or batched, so the float sums
        # (and hence the output) are bitwise those of the run without skipping.
        groups, pending, batch = [], [], []
        for k, (w, f) in enumerate(zip(plan.windows, plan.run)):
            pending.append((w, f))
            if f:
                batch.append(w)
            if len(batch) == window_batch or k + 1 == len(plan.windows):
                groups.append((pending, batch))
                pending, batch = [], []

        def gather():
            for pend, bat in groups:
                x = torch.stack([padded[(slice(None), *b)] for b in bat]) if bat else None
                if x is not None and x.device.type == "cpu" and device.type == "cuda":
                    x = x.pin_memory().to(device, non_blocking=True)
                yield pend, x

        for pend, x in _prefetch(gather()):
            preds = iter(run(x)) if x is not None else iter(())
            for pw, pf in pend:
                acc[(slice(None), *pw)].addcmul_(next(preds) if pf else bg_pred, weight)
        _divide_by_weight_sum(acc, plan.starts, factors)
    out = acc[(slice(None), *plan.crop)]
    return out.contiguous() if out.shape != acc.shape else out


def sliding_window_predict(
    net_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    patch: Sequence[int],
    num_classes: int,
    step: float = 0.5,
    window_batch: int = 1,
    device: torch.device | str | None = None,
    accum_device: torch.device | str | None = None,
    tta_axes: Sequence[int] = (),
    box: Sequence[slice] | None = None,
    region=None,
    region_margin: int = 4,
    average: str = "probabilities",
    return_logits: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Predict a whole (C, X, Y, Z) volume window by window; returns (K, X, Y, Z) float32.

    The composition of :func:`plan_windows`, :func:`flip_tta` and :func:`predict_tiles`.

    Args:
        net_fn: maps (B, C, *patch) to logits (B, K, *patch); called under no_grad. Put the
            module in eval mode first.
        image: (C, X, Y, Z) tensor, already preprocessed.
        patch: window size (px, py, pz).
        num_classes: K, checked against the network output.
        step: window stride as a fraction of the patch (0.5 = nnU-Net's 50 % overlap).
        window_batch: windows per network call.
        device: where the network runs; default ``image.device``.
        accum_device: where the (K, X, Y, Z) accumulator lives; default ``device``. Use "cpu"
            for volumes too large for GPU memory.
        tta_axes: spatial axes (0, 1, 2 for X, Y, Z) to mirror; all 2^n flip combinations used.
        box: spatial slices (X, Y, Z) of ``image``; windows outside are not run and the output
            outside is background (class 0 probability 1; logits (0, -1e4, ...)).
        region: boolean (X, Y, Z) map of where there can be foreground (e.g. the body); a window
            with no True voxel within ``region_margin`` voxels of it is not run, and its share of
            the average is background, as outside ``box``.
        average: "probabilities" (softmax per window, then mean) or "logits" (nnU-Net v2: mean of
            logits, softmax at the end).
        return_logits: with average="logits", return the averaged logits instead of the softmax.
        autocast_dtype: run the network under torch.autocast with this dtype (e.g. torch.float16
            on CUDA); accumulation stays float32.

    Returns:
        (num_classes, X, Y, Z) float32 probabilities (or logits), on ``accum_device``.
    """
    image = torch.as_tensor(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {tuple(image.shape)}")
    if average not in ("probabilities", "logits"):
        raise ValueError(f"average must be 'probabilities' or 'logits', got {average!r}")
    if return_logits and average != "logits":
        raise ValueError("return_logits=True needs average='logits'")
    if window_batch < 1:
        raise ValueError(f"window_batch must be >= 1, got {window_batch}")
    probabilities = average == "probabilities"
    predict = flip_tta(net_fn, tta_axes, probabilities, autocast_dtype)
    plan = plan_windows(image.shape[1:], patch, step, box, region, region_margin)
    device = torch.device(device) if device is not None else image.device
    accum_device = torch.device(accum_device) if accum_device is not None else device
    if accum_device == device:
        # Image, network and accumulator on one device: no host round trip per window (on CUDA
        # the loop then queues work asynchronously and only the end synchronises).
        image = image.to(device)
    padded, _ = pad_to_patch(image, plan.patch)  # nnU-Net pads with 0 whatever the background
    out = predict_tiles(predict, padded, plan, num_classes, probabilities, window_batch, device, accum_device)
    with torch.no_grad():
        if probabilities or not return_logits:
            if not probabilities:
                _softmax_classes_(out)
            background = (1.0, 0.0)
        else:
            background = (0.0, -_BACKGROUND_LOGIT_GAP)
        if plan.box_ranges is not None:
            _fill_outside_box(out, plan.box_ranges, background)
    return out


def _prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """Iterate ``items`` in a background thread, ``depth`` ahead (as nnU-Net's producer thread).

    Window extraction (and, on CUDA, the pinned host-to-device copy) overlaps the network. On a
    shared CPU it also matters for another reason, measured on the 2-core development machine
    under load: while a second thread holds an OpenMP team, libgomp throttles busy-waiting
    (it sees more threads than cores), which halved the CPU and wall time of a 2-thread U-Net
    sliding window (38 -> 16 CPU-s for 27 windows); nnU-Net's predictor gets the same effect
    from its producer thread.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # handed to the consumer, re-raised there
            q.put(e)

    thread = threading.Thread(target=produce, name="sliding-window-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.1)


def _divide_by_weight_sum(acc: torch.Tensor, starts, factors) -> None:
    """acc /= sum of the weights of all windows, in place.

    The importance map is the product of the 1-D factors (with sigma = p/8 the truncation radius
    int(p/2 + 0.5) reaches every voxel, so nnU-Net's zero replacement never applies) and the windows
    form a Cartesian grid, so the weight sum is the outer product of three 1-D sums: divided axis
    by axis, without a full-size temporary.
    """
    assert all(bool((f > 0).all()) for f in factors), "importance map must be separable"
    for axis, (st, f) in enumerate(zip(starts, factors)):
        s = torch.zeros(acc.shape[axis + 1], dtype=torch.float64)
        for start in st:
            s[start:start + len(f)] += f / f.max()
        # Voxels no window covers (outside a box) have zero sum and zero weight; leave them 0.
        s[s == 0] = 1.0
        acc /= s.to(dtype=torch.float32, device=acc.device).view([-1 if k == axis else 1
                                                                   for k in range(3)])


def _softmax_classes_(x: torch.Tensor) -> None:
    """Softmax over dim 0 in place; temporaries are one class wide, not K."""
    x -= x.max(dim=0, keepdim=True).values
    x.exp_()
    x /= x.sum(dim=0, keepdim=True)


def _fill_outside_box(out: torch.Tensor, ranges: list[tuple[int, int]],
                      background: tuple[float, float]) -> None:
    """Set out[0] = background[0], out[1:] = background[1] outside the box, in place."""
    inner_index = (slice(None), *(slice(lo, hi) for lo, hi in ranges))
    inner = out[inner_index].clone()
    out[0] = background[0]
    out[1:] = background[1]
    out[inner_index] = inner
