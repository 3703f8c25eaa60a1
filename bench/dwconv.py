"""Depthwise 3D convolutions of MedNeXt on CUDA: the Triton kernels (nets/dwconv_triton.py) vs
PyTorch's own (``F.conv3d(groups=C)``, cuDNN), forward + backward (input, weight and bias
gradients), on the shapes of MedNeXt-M at a 128^3 patch.

Shapes (defaults: base width 32, patch 128, batch 2, bf16, kernels 3 and 5): the stride-1 "same"
blocks at every level (C = 32, 64, 128, 256, 512 at 128^3, 64^3, 32^3, 16^3, 8^3) and the
stride-2 depthwise conv of the four down blocks (C = 32 .. 256 at 128^3 .. 16^3), padding k // 2.
Both sides get the same tensors; rounds alternate the two (A B A B ...) and each figure is the
median of ``--repeats`` CUDA-event timings after a warm-up (which includes Triton's compilation).
The largest difference between the two sides' outputs and gradients, relative to the largest
value, is printed with each shape (bf16 rounding: expect up to ~1e-2).

Prints one JSON line per shape, ``{"bench": "dwconv", "shape", "kernel", "stride", "ours"
(Triton, ms), "peer" (cuDNN, ms), "unit", "ratio" (peer / ours, > 1: Triton faster), "goal",
...}``, then one per kernel size for the whole network (``dwconv_mednext_m_k<k>``): each shape's
time weighted by how many MedNeXt-M blocks run it (same blocks: 6, 8, 8, 8, 4 from level 0 to 4;
one down block per level 0-3), with the dispatcher's choice (the faster side per shape) as
``ours`` and Triton everywhere as ``ours_triton_only``.

Run on a CUDA machine with the triton extra installed (``pip install .[triton]``):
    python bench/dwconv.py [--kernels 3,5] [--batch 2] [--patch 128] [--base 32] [--repeats 20]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nets import dwconv_triton as dt  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# MedNeXt-M (nets/mednext.py SIZES["M"]): blocks per stage enc0..enc3, bottleneck, dec3..dec0
M_BLOCKS = (3, 4, 4, 4, 4, 4, 4, 4, 3)
DEVICE = "cuda"
GOAL = 1.0  # the dispatcher keeps the faster side, so any shape above 1.0 is a gain


def shapes(batch: int, base: int, patch: int) -> list[tuple[tuple[int, ...], int, int]]:
    """(input shape, stride, number of MedNeXt-M blocks running it) for every level."""
    out = []
    for level in range(5):
        c, n = base * 2 ** level, patch >> level
        same = M_BLOCKS[level] + (M_BLOCKS[8 - level] if level < 4 else 0)
        out.append(((batch, c, n, n, n), 1, same))
        if level < 4:
            out.append(((batch, c, n, n, n), 2, 1))
    return out


def fwd_bwd(impl, x, w, b, stride, padding, grad):
    def run():
        y = impl(x, w, b, stride, padding)
        return (y, *torch.autograd.grad(y, (x, w, b), grad))
    return run


def aten(x, w, b, stride, padding):
    return F.conv3d(x, w, b, stride, padding, groups=x.shape[1])


def cuda_ms(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def measure(shape, k, stride, dtype, repeats):
    torch.manual_seed(0)
    c = shape[1]
    x = torch.randn(shape, device=DEVICE, dtype=dtype, requires_grad=True)
    w = (torch.randn(c, 1, k, k, k, device=DEVICE, dtype=dtype) / k ** 1.5).requires_grad_()
    b = torch.randn(c, device=DEVICE, dtype=dtype, requires_grad=True)
    out = [(n + 2 * (k // 2) - k) // stride + 1 for n in shape[2:]]
    grad = torch.randn(shape[0], c, *out, device=DEVICE, dtype=dtype)
    sides = {"triton": fwd_bwd(dt.DepthwiseConv3dTriton.apply, x, w, b, stride, k // 2, grad),
             "aten": fwd_bwd(aten, x, w, b, stride, k // 2, grad)}
    results = {name: run() for name, run in sides.items()}  # warm-up, compiles the kernels
    pairs = [(a.detach().float(), e.detach().float()) for a, e in zip(results["triton"], results["aten"])]
    diff = max(float((a - e).abs().max() / e.abs().max().clamp_min(1e-30)) for a, e in pairs)
    del results
    for run in sides.values():
        run()
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            times[name].append(cuda_ms(run))
    return {name: statistics.median(t) for name, t in times.items()}, diff


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", default="3,5", help="comma-separated odd kernel sizes (3, 5, 7)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--base", type=int, default=32, help="MedNeXt base width (level-0 channels)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/dwconv.py needs a CUDA GPU: torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if not dt.triton_available():
        print("bench/dwconv.py needs Triton: pip install .[triton]", file=sys.stderr)
        return 2
    kernels = [int(k) for k in args.kernels.split(",")]
    bad = [k for k in kernels if k not in dt.KERNELS]
    if bad:
        print(f"--kernels {args.kernels}: {bad} not in {dt.KERNELS}", file=sys.stderr)
        return 2
    dtype, device = DTYPES[args.dtype], torch.cuda.get_device_name()
    for k in kernels:
        total = {"triton": 0.0, "aten": 0.0, "auto": 0.0}
        for shape, stride, count in shapes(args.batch, args.base, args.patch):
            ms, diff = measure(shape, k, stride, dtype, args.repeats)
            for name in ("triton", "aten"):
                total[name] += count * ms[name]
            total["auto"] += count * min(ms.values())
            print(json.dumps({"bench": "dwconv", "shape": list(shape), "kernel": k, "stride": stride,
                              "dtype": args.dtype, "ours": round(ms["triton"], 4), "peer": round(ms["aten"], 4),
                              "unit": "ms forward+backward", "ratio": round(ms["aten"] / ms["triton"], 3),
                              "goal": GOAL, "blocks": count, "max_rel_diff": float(f"{diff:.2e}"),
                              "device": device}), flush=True)
        print(json.dumps({"bench": f"dwconv_mednext_m_k{k}", "ours": round(total["auto"], 3),
                          "peer": round(total["aten"], 3),
                          "unit": "ms forward+backward of all depthwise convs of one step (same + down blocks)",
                          "ratio": round(total["aten"] / total["auto"], 3), "goal": GOAL,
                          "ours_triton_only": round(total["triton"], 3),
                          "ratio_triton_only": round(total["aten"] / total["triton"], 3),
                          "batch": args.batch, "patch": args.patch, "dtype": args.dtype, "device": device}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
