"""Depthwise 3D convolution (``F.conv3d(x, w, b, stride, padding, groups=C)``) as Triton kernels,
with a per-shape choice between them and PyTorch's own (cuDNN) kernels on CUDA.

Scope: contiguous ``(B, C, D, H, W)`` input, weight ``(C, 1, K, K, K)`` with odd ``K`` in
(3, 5, 7), the same stride (1 or 2) and padding (``0 <= P < K``) on every axis: MedNeXt's
stride-1 "same" blocks (``P = K // 2``) and the stride-2 depthwise conv of its down blocks
(``P = K // 2`` too, ``nets.blocks.MedNeXtBlock``). float32, bfloat16 and float16 inputs; every
kernel accumulates in float32 and writes the input's dtype. Anything else goes to
``F.conv3d``.

Algorithm (direct convolution, no im2col, no atomics, deterministic):

* **Tiling.** A program owns one ``(batch, channel)`` volume and ``BLOCK`` consecutive voxels of
  it in memory order (flat index split into ``(d, h, w)`` once per program), so loads and stores
  run along W and are coalesced, and no program idles on a partial 2D tile of a small level
  (8^3 at MedNeXt's bottleneck). The K taps along W are handled together: every load is a
  ``[KWP, BLOCK]`` tile (``KWP`` = next power of two >= K, extra lanes masked) of the K shifted
  rows, multiplied by the K weights of that row. ``kh`` is unrolled (``tl.static_range``), ``kd``
  is a loop: K^2 unrolled steps kept every address and mask live and spilled registers from
  K = 5 on (ptxas, sm_90); ``KWP x BLOCK`` = 1024 accumulators per program for the same reason.
  Zero padding is the load mask's ``other=0``, never materialised. The shifted tiles of one
  program overlap, so after the first they mostly come from L1/L2.
* **Forward** (``_fwd``): ``acc[kw, v] += x[v shifted by (kd, kh, kw)] * w[kd, kh, kw]`` over
  ``kd``, ``kh``; then the sum over ``kw`` and the bias, cast to the output dtype.
* **Input gradient** (``_bwd_x``): the transposed convolution written as a gather (one program
  per block of input voxels, no scatter, no atomics): input voxel ``i`` receives
  ``g[o] * w[k]`` for every tap with ``i + P - k = o * S``, ``0 <= o < O``. For stride 1 this is
  the forward with the flipped kernel; for stride 2 the divisibility test is part of the mask
  (about 7/8 of the taps are masked out in 3D: simple, and only the four down blocks use it).
* **Weight gradient** (``_bwd_w``): ``dw[c, kd, kh, kw] = sum_{b, o} g[b, c, o] x[b, c, o*S - P + k]``,
  a reduction over batch and all output voxels. One program per (tap row ``(kd, kh)``, channel,
  split) carries the K ``kw`` taps in a ``[KWP, BLOCK]`` float32 accumulator through a strided
  loop over its split's share of the ``(batch, block)`` items; only at the end is it summed over
  the block, and each program writes its K partial sums to a float32 buffer
  ``[C, K*K, splits, KWP]``, which the host sums over the splits (``torch.sum``: a fixed order,
  so results are reproducible run to run). The tap row is the fastest grid axis, so the K^2
  programs of one channel and split run side by side and read the same ``g`` and ``x`` blocks
  from L2. Splits: enough for ~16 programs per SM.
* **Bias gradient**: ``g.sum((0, 2, 3, 4), dtype=float32)`` in PyTorch.
* **Precision**: loads are converted to float32, products and sums are float32 (FMA), the
  result is cast once to the input dtype (the weight gradient to the weight's dtype).

Dispatch (:func:`depthwise_conv3d`): on a CUDA tensor of a supported layout the mode decides,
``MAMAMIA_DWCONV=auto|aten|triton`` in the environment or :func:`set_mode` (default ``auto``).
``auto`` times both implementations once per (device, shape, dtype, K, stride, padding,
forward-only or forward+backward) on random tensors of that shape (median of 5 synchronised
runs after 2 warm-ups, the first of which compiles the kernels; a side that raises, e.g. out of
memory, loses) and keeps the faster in a dict (``nets.dwconv_dispatch.Dispatcher``); the choices are also written to a JSON file
(``$MAMAMIA_DWCONV_CACHE``, default ``~/.cache/mamamia-torch/dwconv_dispatch.json``; ``off``
disables it) and read back by the next process. ``triton`` uses the kernels wherever they
apply; ``aten`` never. CPU tensors always use ``F.conv3d``, except under Triton's interpreter
(``TRITON_INTERPRET=1``), which runs the same kernels on the CPU for testing. Triton is
optional (``pip install .[triton]``): without it everything is ``F.conv3d``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from nets.dwconv_dispatch import ENV_CACHE, Dispatcher, default_cache_path, wall_time  # noqa: F401

log = logging.getLogger(__name__)

MODES = ("auto", "aten", "triton")
ENV_MODE = "MAMAMIA_DWCONV"
KERNELS = (3, 5, 7)
MAX_GRID_Y = 65535  # CUDA's limit on the 2nd and 3rd grid axes
STRIDES = (1, 2)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_mode: str | None = None  # set_mode(); None: read the environment
tl = None  # triton.language once the kernels are built (Triton is optional)


def set_mode(mode: str | None) -> None:
    """``'auto' | 'aten' | 'triton'`` for this process; ``None`` goes back to ``$MAMAMIA_DWCONV``."""
    global _mode
    if mode is not None and mode not in MODES:
        raise ValueError(f"depthwise conv mode must be one of {MODES}, got {mode!r}")
    _mode = mode


def get_mode() -> str:
    if _mode is not None:
        return _mode
    mode = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_MODE}={os.environ[ENV_MODE]!r}: must be one of {MODES}")
    return mode


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """True when Triton's interpreter (``TRITON_INTERPRET=1``) runs the kernels on the CPU."""
    return triton_available() and os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    """The three jitted kernels. ``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates, so
    one set is built per interpreter setting (the argument is only the cache key). ``tl`` is a
    module global because the interpreter looks for ``triton.language`` in the kernels' globals."""
    global tl
    import triton
    import triton.language as tl

    @triton.jit
    def _fwd(x_ptr, w_ptr, b_ptr, y_ptr, C, D, H, W, OD, OH, OW,
             K: tl.constexpr, S: tl.constexpr, P: tl.constexpr, HAS_BIAS: tl.constexpr,
             KWP: tl.constexpr, BLOCK: tl.constexpr):
        bc = tl.program_id(1)  # b * C + c
        c = bc % C
        o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)[None, :]  # flat output voxel
        o_ok = o < OD * OH * OW
        ow = o % OW
        oh = (o // OW) % OH
        od = o // (OH * OW)
        kw = tl.arange(0, KWP)[:, None]
        iw = ow * S - P + kw  # [KWP, BLOCK]: all kw taps at once
        w_ok = o_ok & (kw < K) & (iw >= 0) & (iw < W)
        x_base = x_ptr + bc.to(tl.int64) * D * H * W
        w_base = w_ptr + c * (K * K * K) + kw
        acc = tl.zeros([KWP, BLOCK], dtype=tl.float32)
        for kd in range(K):  # a loop, not unrolled: K unrolled kh taps are enough to keep the
            # loads in flight, K^2 would keep their addresses and masks live (register spills)
            idd = od * S - P + kd
            d_ok = w_ok & (idd >= 0) & (idd < D)
            for kh in tl.static_range(K):
                ih = oh * S - P + kh
                v = tl.load(x_base + (idd * H + ih) * W + iw, mask=d_ok & (ih >= 0) & (ih < H), other=0.0)
                wt = tl.load(w_base + (kd * K + kh) * K, mask=kw < K, other=0.0)
                acc += v.to(tl.float32) * wt.to(tl.float32)
        y = tl.sum(acc, axis=0)
        if HAS_BIAS:
            y += tl.load(b_ptr + c).to(tl.float32)
        o1 = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        y_base = y_ptr + bc.to(tl.int64) * OD * OH * OW
        tl.store(y_base + o1, y.to(y_ptr.dtype.element_ty), mask=o1 < OD * OH * OW)

    @triton.jit
    def _bwd_x(g_ptr, w_ptr, gx_ptr, C, D, H, W, OD, OH, OW,
               K: tl.constexpr, S: tl.constexpr, P: tl.constexpr, KWP: tl.constexpr, BLOCK: tl.constexpr):
        bc = tl.program_id(1)
        c = bc % C
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)[None, :]  # flat input voxel
        i_ok = i < D * H * W
        iw = i % W
        ih = (i // W) % H
        idd = i // (H * W)
        kw = tl.arange(0, KWP)[:, None]
        tw = iw + P - kw  # = ow * S for the outputs that read input iw through tap kw
        ow = tw // S
        w_ok = i_ok & (kw < K) & (tw >= 0) & (tw % S == 0) & (ow < OW)
        g_base = g_ptr + bc.to(tl.int64) * OD * OH * OW
        w_base = w_ptr + c * (K * K * K) + kw
        acc = tl.zeros([KWP, BLOCK], dtype=tl.float32)
        for kd in range(K):  # a loop, not unrolled: K unrolled kh taps are enough to keep the
            # loads in flight, K^2 would keep their addresses and masks live (register spills)
            td = idd + P - kd
            od = td // S
            d_ok = w_ok & (td >= 0) & (td % S == 0) & (od < OD)
            for kh in tl.static_range(K):
                th = ih + P - kh
                oh = th // S
                m = d_ok & (th >= 0) & (th % S == 0) & (oh < OH)
                v = tl.load(g_base + (od * OH + oh) * OW + ow, mask=m, other=0.0)
                wt = tl.load(w_base + (kd * K + kh) * K, mask=kw < K, other=0.0)
                acc += v.to(tl.float32) * wt.to(tl.float32)
        gx = tl.sum(acc, axis=0)
        i1 = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        gx_base = gx_ptr + bc.to(tl.int64) * D * H * W
        tl.store(gx_base + i1, gx.to(gx_ptr.dtype.element_ty), mask=i1 < D * H * W)

    @triton.jit
    def _bwd_w(x_ptr, g_ptr, part_ptr, C, D, H, W, OD, OH, OW, NBLOCKS, TOTAL, NSPLIT,
               K: tl.constexpr, S: tl.constexpr, P: tl.constexpr, KWP: tl.constexpr, BLOCK: tl.constexpr):
        tap = tl.program_id(0)  # kd * K + kh
        c = tl.program_id(1)
        split = tl.program_id(2)
        kd = tap // K
        kh = tap % K
        kw = tl.arange(0, KWP)[:, None]
        lane = tl.arange(0, BLOCK)[None, :]
        acc = tl.zeros([KWP, BLOCK], dtype=tl.float32)
        # r runs over (b, block of output voxels) in memory order; this program takes every NSPLIT-th
        for r in range(split, TOTAL, NSPLIT):
            b = r // NBLOCKS
            o = (r % NBLOCKS) * BLOCK + lane
            o_ok = o < OD * OH * OW
            ow = o % OW
            oh = (o // OW) % OH
            od = o // (OH * OW)
            bc = (b * C + c).to(tl.int64)
            g = tl.load(g_ptr + bc * OD * OH * OW + o, mask=o_ok, other=0.0)
            idd = od * S - P + kd
            ih = oh * S - P + kh
            iw = ow * S - P + kw
            m = o_ok & (kw < K) & (idd >= 0) & (idd < D) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(x_ptr + bc * D * H * W + (idd * H + ih) * W + iw, mask=m, other=0.0)
            acc += g.to(tl.float32) * v.to(tl.float32)
        out = part_ptr + ((c * (K * K) + tap) * NSPLIT + split) * KWP + tl.arange(0, KWP)
        tl.store(out, tl.sum(acc, axis=1))

    return _fwd, _bwd_x, _bwd_w


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# KWP x BLOCK accumulators per program. 1024 on the GPU: ptxas (sm_90, bf16) then gives the
# forward 94 / 120 / 138 registers for K = 3 / 5 / 7 and no spills, where 2048 spilled from K = 5
# on. The interpreter's time grows with the number of operations, not their size: larger blocks.
BLOCK_ELEMENTS = 1024
BLOCK_ELEMENTS_INTERPRETER = 4096


def _block(voxels: int, kwp: int) -> int:
    """Voxels per program (a power of two, fewer for a small volume)."""
    elements = BLOCK_ELEMENTS_INTERPRETER if interpreting() else BLOCK_ELEMENTS
    return max(16, min(_next_pow2(voxels), elements // kwp))


def _out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _scalar(value) -> int | None:
    """An int or 3 equal ints as one int; None when the axes differ or it is not a size."""
    if isinstance(value, int):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 3 and all(isinstance(v, int) for v in value):
        return value[0] if value[0] == value[1] == value[2] else None
    return None


def unsupported(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding,
                dtype: torch.dtype | None = None) -> str | None:
    """Why the Triton kernels cannot compute ``F.conv3d(x, weight, bias, stride, padding,
    groups=C)`` (None when they can). ``dtype``: the dtype it would run in (autocast's), default
    the tensors' own."""
    if not triton_available():
        return "triton is not installed"
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpreting()):
        return f"tensors on {x.device} (Triton runs on CUDA, or on the CPU under TRITON_INTERPRET=1)"
    if x.ndim != 5 or x.numel() == 0:
        return f"input of shape {tuple(x.shape)} is not a non-empty (B, C, D, H, W) tensor"
    c, k = x.shape[1], weight.shape[-1]
    if tuple(weight.shape) != (c, 1, k, k, k) or k not in KERNELS:
        return f"weight of shape {tuple(weight.shape)} is not depthwise ({c}, 1, K, K, K) with K in {KERNELS}"
    if bias is not None and tuple(bias.shape) != (c,):
        return f"bias of shape {tuple(bias.shape)} for {c} channels"
    s, p = _scalar(stride), _scalar(padding)
    if s not in STRIDES:
        return f"stride {stride!r} is not one of {STRIDES} on every axis"
    if p is None or not 0 <= p < k:
        return f"padding {padding!r} is not one value in [0, {k}) on every axis"
    if dtype is None:
        if any(t is not None and t.dtype != x.dtype for t in (weight, bias)):
            return "input, weight and bias dtypes differ"
        dtype = x.dtype
    if dtype not in DTYPES:
        return f"dtype {dtype} is not one of {DTYPES}"
    if any(t is not None and t.device != x.device for t in (weight, bias)):
        return "tensors on different devices"
    if not x.is_contiguous():
        return "input is not contiguous (channels_last_3d or a strided view)"
    if min(_out(n, k, s, p) for n in x.shape[2:]) < 1:
        return f"input {tuple(x.shape[2:])} is smaller than the kernel"
    if x.shape[0] * c > MAX_GRID_Y:
        return f"{x.shape[0]} x {c} (batch, channel) volumes exceed the grid's {MAX_GRID_Y}"
    if math.prod(x.shape[2:]) >= 2 ** 31:
        return "a volume of 2^31 voxels or more (int32 indices inside a volume)"
    return None


def _target_programs(device: torch.device) -> int:
    """Programs to aim for in the weight-gradient reduction: a few waves of the GPU's SMs."""
    if device.type == "cuda":
        return 16 * torch.cuda.get_device_properties(device).multi_processor_count
    return 16  # interpreter: fewer programs, faster tests


def conv3d_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                   padding: int) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, stride, padding, groups=C)`` by the Triton forward kernel
    (contiguous tensors of one dtype; see :func:`unsupported`)."""
    fwd, _, _ = _kernels(interpreting())
    b, c, d, h, w = x.shape
    k = weight.shape[-1]
    od, oh, ow = (_out(n, k, stride, padding) for n in (d, h, w))
    y = torch.empty((b, c, od, oh, ow), dtype=x.dtype, device=x.device)
    kwp = _next_pow2(k)
    block = _block(od * oh * ow, kwp)
    grid = (math.ceil(od * oh * ow / block), b * c)
    fwd[grid](x, weight, bias if bias is not None else weight, y, c, d, h, w, od, oh, ow,
              K=k, S=stride, P=padding, HAS_BIAS=bias is not None, KWP=kwp, BLOCK=block)
    return y


def conv3d_grad_input(grad_out: torch.Tensor, weight: torch.Tensor, input_shape: Sequence[int], stride: int,
                      padding: int) -> torch.Tensor:
    """Gradient of the depthwise convolution with respect to its input (of ``input_shape``)."""
    _, bwd_x, _ = _kernels(interpreting())
    b, c, d, h, w = input_shape
    _, _, od, oh, ow = grad_out.shape
    k = weight.shape[-1]
    gx = torch.empty(tuple(input_shape), dtype=grad_out.dtype, device=grad_out.device)
    kwp = _next_pow2(k)
    block = _block(d * h * w, kwp)
    grid = (math.ceil(d * h * w / block), b * c)
    bwd_x[grid](grad_out, weight, gx, c, d, h, w, od, oh, ow, K=k, S=stride, P=padding, KWP=kwp, BLOCK=block)
    return gx


def conv3d_grad_weight(grad_out: torch.Tensor, x: torch.Tensor, kernel: int, stride: int, padding: int,
                       splits: int | None = None) -> torch.Tensor:
    """Gradient with respect to the ``(C, 1, K, K, K)`` weight, in float32. ``splits``: programs
    per (channel, tap row) sharing the reduction (default: enough for a few thousand programs)."""
    _, _, bwd_w = _kernels(interpreting())
    b, c, d, h, w = x.shape
    _, _, od, oh, ow = grad_out.shape
    k = kernel
    kwp = _next_pow2(k)
    block = _block(od * oh * ow, kwp)
    nblocks = math.ceil(od * oh * ow / block)
    total = b * nblocks
    if splits is None:
        splits = math.ceil(_target_programs(x.device) / (k * k * c))
    splits = max(1, min(int(splits), total, MAX_GRID_Y))
    part = torch.empty((c, k * k, splits, kwp), dtype=torch.float32, device=x.device)
    bwd_w[(k * k, c, splits)](x, grad_out, part, c, d, h, w, od, oh, ow, nblocks, total, splits,
                              K=k, S=stride, P=padding, KWP=kwp, BLOCK=block)
    return part.sum(2)[..., :k].reshape(c, 1, k, k, k)


class DepthwiseConv3dTriton(torch.autograd.Function):
    """``F.conv3d(x, weight, bias, stride, padding, groups=C)`` with the Triton kernels for the
    forward and all three gradients (``stride``, ``padding``: ints, the same on every axis)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, padding: int):
        x, weight = x.contiguous(), weight.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, bias is not None)
        with _on(x.device):
            return conv3d_forward(x, weight, None if bias is None else bias.contiguous(), stride, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, has_bias = ctx.conf
        grad_out = grad_out.contiguous()
        gx = gw = gb = None
        with _on(x.device):
            if ctx.needs_input_grad[0]:
                gx = conv3d_grad_input(grad_out, weight, x.shape, stride, padding)
            if ctx.needs_input_grad[1]:
                gw = conv3d_grad_weight(grad_out, x, weight.shape[-1], stride, padding).to(weight.dtype)
        if has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.sum((0, 2, 3, 4), dtype=torch.float32).to(grad_out.dtype)
        return gx, gw, gb, None, None


def _on(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def dwconv3d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0) -> torch.Tensor:
    """The Triton depthwise convolution, differentiable; ValueError when it does not apply."""
    reason = unsupported(x, weight, bias, stride, padding)
    if reason:
        raise ValueError(f"Triton depthwise conv3d cannot run this call: {reason}")
    return DepthwiseConv3dTriton.apply(x, weight, bias, _scalar(stride), _scalar(padding))


def _aten(x, weight, bias, stride, padding):
    return F.conv3d(x, weight, bias, stride, padding, groups=x.shape[1])


DISPATCH = Dispatcher(path=default_cache_path())


def _key(x: torch.Tensor, dtype: torch.dtype, k: int, stride: int, padding: int, backward: bool) -> str:
    import triton

    device = torch.cuda.get_device_name(x.device) if x.device.type == "cuda" else "cpu interpreter"
    shape = "x".join(str(n) for n in x.shape)
    return (f"{device}|triton {triton.__version__}|torch {torch.__version__}|{shape}|{str(dtype).replace('torch.', '')}"
            f"|k{k}|s{stride}|p{padding}|{'fwd+bwd' if backward else 'fwd'}")


# relative agreement (max |difference| / max |reference|) a candidate must reach against ATen on
# its first timed run: fp32 accumulation in both, so the gap is the output dtype's rounding
AGREEMENT = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


class DisagreementError(RuntimeError):
    """A kernel's results differ from ATen's on the same tensors: it must not be chosen."""


def _check_agreement(name: str, got, ref, dtype) -> None:
    tol = AGREEMENT.get(dtype, 1e-4)
    for g, r in zip(got, ref):
        scale = float(r.detach().abs().max()) or 1.0
        err = float((g.detach().float() - r.detach().float()).abs().max()) / scale
        if not err <= tol:
            raise DisagreementError(f"{name} differs from ATen by {err:.2e} (relative; allowed {tol:g})")


def _candidates(x, weight, bias, dtype, stride, padding, backward):
    """Closures running each implementation once on random tensors of the call's shape. Each
    non-ATen candidate is compared with ATen's results on its first run and raises
    :class:`DisagreementError` (so it loses the choice) when they differ beyond rounding."""
    ref: list = []

    def make(name, impl):
        checked = [name == "aten"]

        def run():
            with torch.enable_grad() if backward else torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                y = impl(xr, wr, br, stride, padding)
                out = [y]
                if backward:
                    out += list(torch.autograd.grad(y, [t for t in (xr, wr, br) if t is not None], gr))
            if name == "aten" and not ref:
                ref.extend(out)
            elif not checked[0]:
                _check_agreement(name, out, ref, dtype)
                checked[0] = True
        return run

    def rand(t):
        return None if t is None else torch.randn(t.shape, dtype=dtype, device=t.device).requires_grad_(backward)

    xr, wr, br = rand(x), rand(weight), rand(bias)
    k = weight.shape[-1]
    gr = torch.randn((*x.shape[:2], *(_out(n, k, stride, padding) for n in x.shape[2:])), dtype=dtype, device=x.device)
    return {"aten": make("aten", _aten), "triton": make("triton", DepthwiseConv3dTriton.apply)}


def backend_for(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding,
                dtype: torch.dtype | None = None) -> str:
    """``'triton'`` or ``'aten'``: which implementation :func:`depthwise_conv3d` runs for this call
    (``dtype``: the dtype it runs in under autocast)."""
    if x.device.type != "cuda" and not interpreting():
        return "aten"
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return "aten"
    mode = get_mode()
    if mode == "aten" or unsupported(x, weight, bias, stride, padding, dtype):
        return "aten"
    if mode == "triton":
        return "triton"
    dtype = dtype or x.dtype
    s, p, k = _scalar(stride), _scalar(padding), weight.shape[-1]
    backward = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return DISPATCH.choose(_key(x, dtype, k, s, p, backward),
                           lambda: _candidates(x, weight, bias, dtype, s, p, backward))


def depthwise_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, stride, padding, groups=C)``, by the Triton kernels where
    :func:`backend_for` picks them (CUDA, supported shape, mode), else by ``F.conv3d`` itself.
    Under CUDA autocast the Triton path casts to autocast's dtype, as ``F.conv3d`` would."""
    dtype = None
    if x.device.type == "cuda" and torch.is_autocast_enabled("cuda") and x.dtype in DTYPES and weight.dtype in DTYPES:
        dtype = torch.get_autocast_dtype("cuda")  # what autocast casts F.conv3d's arguments to
    if backend_for(x, weight, bias, stride, padding, dtype) == "aten":
        return _aten(x, weight, bias, stride, padding)
    s, p = _scalar(stride), _scalar(padding)
    if dtype is None:
        return DepthwiseConv3dTriton.apply(x, weight, bias, s, p)
    with torch.autocast("cuda", enabled=False):
        bias = None if bias is None else bias.to(dtype)
        return DepthwiseConv3dTriton.apply(x.to(dtype), weight.to(dtype), bias, s, p)
