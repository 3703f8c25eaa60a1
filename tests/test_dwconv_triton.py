"""Triton depthwise 3D convolution (nets/dwconv_triton.py): forward and the three gradients against
``F.conv3d(groups=C)`` in float64; the fallback to ``F.conv3d``; the measured per-shape dispatch
(with a fake timer); on CUDA, realistic bf16 shapes.

Without CUDA the kernels run on the CPU in Triton's interpreter. ``triton.jit`` reads
``TRITON_INTERPRET`` when it decorates a function, and that includes ``triton.language``'s own
jitted helpers (``tl.zeros``, ...) when triton is first imported: so the variable is set here,
before this module imports triton (nothing else in the suite imports it), and stays set for the
session (harmless without CUDA: only this module's calls reach Triton).
``test_kernels_run_in_the_interpreter`` checks that it took. With CUDA the same tests run the
compiled kernels on the GPU; the bf16 check runs in a subprocess with a clean environment.

Tolerances: float32 kernels against a float64 reference: ``rtol 1e-5`` and ``atol 1e-5 x`` the
largest reference value (float32 rounding of sums of up to 343 products is ~1e-6 relative);
bfloat16: ``2e-2`` (8-bit mantissa: 2^-8 = 0.4 % per rounding).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from nets import dwconv_triton as dt  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(DEVICE == "cpu" and not dt.interpreting(),
                                 reason="triton was imported before TRITON_INTERPRET=1 could be set")]


@pytest.fixture(autouse=True)
def mode(monkeypatch):
    monkeypatch.delenv(dt.ENV_MODE, raising=False)
    dt.set_mode(None)
    yield
    dt.set_mode(None)


def reference(x, w, b, stride, padding, grad_out):
    """Output and gradients (input, weight, bias) of ``F.conv3d`` in float64."""
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    bd = None if b is None else b.detach().double().requires_grad_()
    y = F.conv3d(xd, wd, bd, stride, padding, groups=x.shape[1])
    grads = torch.autograd.grad(y, [t for t in (xd, wd, bd) if t is not None], grad_out.double())
    return (y.detach(), *grads)


def dev(t):
    return None if t is None else t.to(DEVICE)


def triton_run(x, w, b, stride, padding, grad_out):
    """Output and gradients of the Triton convolution on ``DEVICE``, returned on the CPU."""
    x, w = dev(x).requires_grad_(), dev(w).requires_grad_()
    b = None if b is None else dev(b).requires_grad_()
    y = dt.dwconv3d_triton(x, w, b, stride, padding)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], dev(grad_out))
    return tuple(t.cpu() for t in (y.detach(), *grads))


def assert_matches(actual, expected, rtol=1e-5):
    for name, a, e in zip(("output", "grad input", "grad weight", "grad bias"), actual, expected):
        assert a.shape == e.shape, name
        torch.testing.assert_close(a.double(), e, rtol=rtol, atol=rtol * float(e.abs().max()), msg=name)


# Every kernel size with both strides and with and without bias, at MedNeXt's padding k // 2; k7
# on fewer channels (the interpreter's time grows with programs x K^2); two other paddings (the
# kernels take any 0 <= P < K).
CASES = [  # (k, stride, padding, bias, (B, C, D, H, W))
    (3, 1, 1, True, (2, 3, 5, 7, 6)),
    (3, 2, 1, False, (2, 3, 5, 7, 6)),
    (5, 1, 2, False, (2, 3, 5, 7, 6)),
    (5, 2, 2, True, (2, 3, 5, 7, 6)),
    (7, 1, 3, True, (1, 2, 5, 7, 6)),
    (7, 2, 3, False, (1, 2, 5, 7, 6)),
    (3, 2, 0, True, (1, 2, 5, 7, 6)),
    (5, 1, 4, False, (1, 2, 5, 7, 6)),
]


@pytest.mark.parametrize("k, stride, padding, bias, shape", CASES)
def test_forward_and_gradients_match_conv3d(k, stride, padding, bias, shape):
    g = torch.Generator().manual_seed(k * 10 + stride)
    c = shape[1]
    x = torch.randn(shape, generator=g)
    w = torch.randn(c, 1, k, k, k, generator=g)
    b = torch.randn(c, generator=g) if bias else None
    out = [(n + 2 * padding - k) // stride + 1 for n in shape[2:]]
    grad_out = torch.randn(shape[0], c, *out, generator=g)
    assert_matches(triton_run(x, w, b, stride, padding, grad_out), reference(x, w, b, stride, padding, grad_out))


def test_a_flipped_kernel_is_detected():
    """The comparison can fail: the kernel flipped (correlation vs convolution, the classic slip in
    a hand-written input gradient) is far outside the tolerance."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 3, 5, 7, 6, generator=g), torch.randn(3, 1, 3, 3, 3, generator=g)
    expected = reference(x, w, None, 1, 1, torch.ones(2, 3, 5, 7, 6))[:1]
    flipped = (dt.conv3d_forward(dev(x), dev(w.flip(2, 3, 4).contiguous()), None, 1, 1).cpu(),)
    with pytest.raises(AssertionError):
        assert_matches(flipped, expected)
    assert_matches((dt.conv3d_forward(dev(x), dev(w), None, 1, 1).cpu(),), expected)


def test_several_blocks_and_weight_gradient_splits(monkeypatch):
    """A volume over several programs' blocks (the GPU's block size), and a weight gradient
    reduced by one program or by several with uneven shares of the (batch, block) items."""
    monkeypatch.setattr(dt, "BLOCK_ELEMENTS_INTERPRETER", dt.BLOCK_ELEMENTS)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 9, 9, 9, generator=g)  # 729 voxels: 3 blocks of 256 (k = 3)
    grad_out = torch.randn(2, 2, 9, 9, 9, generator=g)
    w = torch.randn(2, 1, 3, 3, 3, generator=g)
    assert dt._block(729, 4) == 256
    expected = reference(x, w, None, 1, 1, grad_out)
    assert_matches(triton_run(x, w, None, 1, 1, grad_out), expected)
    for splits in (1, 4):  # 6 items: 1 program takes all 6, or 4 programs take 2, 2, 1, 1
        got = dt.conv3d_grad_weight(dev(grad_out), dev(x), 3, 1, 1, splits=splits).cpu()
        assert_matches((got,), expected[2:])


def test_bfloat16_accumulates_in_float32_and_returns_bfloat16():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 7, 6, generator=g).bfloat16()
    w = torch.randn(3, 1, 3, 3, 3, generator=g).bfloat16()
    b = torch.randn(3, generator=g).bfloat16()
    grad_out = torch.randn(2, 3, 5, 7, 6, generator=g).bfloat16()
    got = triton_run(x, w, b, 1, 1, grad_out)
    assert all(t.dtype == torch.bfloat16 for t in got)
    assert_matches(got, reference(x, w, b, 1, 1, grad_out), rtol=2e-2)


@pytest.mark.skipif(DEVICE == "cuda", reason="compiled kernels on CUDA")
def test_kernels_run_in_the_interpreter():
    from triton.runtime.interpreter import InterpretedFunction

    assert dt.interpreting()
    assert all(isinstance(k, InterpretedFunction) for k in dt._kernels(True))
    dt.set_mode("triton")
    assert dt.backend_for(torch.zeros(1, 1, 3, 3, 3), torch.zeros(1, 1, 3, 3, 3), None, 1, 1) == "triton"


# ---- fallback -----------------------------------------------------------------------------------


def _conv_inputs(k=3, c=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(4)
    return (dev(torch.randn(2, c, 6, 5, 7, generator=g, dtype=dtype)),
            dev(torch.randn(c, 1, k, k, k, generator=g, dtype=dtype)), dev(torch.randn(c, generator=g, dtype=dtype)))


def test_cpu_without_interpreter_is_exactly_conv3d(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dt.set_mode("triton")
    x, w, b = (t.cpu() for t in _conv_inputs())
    assert dt.backend_for(x, w, b, 2, 1) == "aten"
    assert torch.equal(dt.depthwise_conv3d(x, w, b, 2, 1), F.conv3d(x, w, b, 2, 1, groups=3))


@pytest.mark.parametrize("what", ["channels_last", "even_kernel", "stride_3", "float64", "mixed_padding",
                                  "channel_multiplier", "too_many_volumes"])
def test_unsupported_calls_fall_back_to_conv3d(what):
    dt.set_mode("triton")
    dtype = torch.float64 if what == "float64" else torch.float32
    x, w, b = _conv_inputs(k=4 if what == "even_kernel" else 3, dtype=dtype)
    stride, padding = (3 if what == "stride_3" else 1), ((1, 0, 1) if what == "mixed_padding" else 1)
    if what == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if what == "too_many_volumes":  # B x C programs on the grid's 2nd axis, at most 65535
        x, w, b = torch.zeros(2, 32768, 1, 1, 1, device=DEVICE), torch.zeros(32768, 1, 3, 3, 3, device=DEVICE), None
    if what == "channel_multiplier":  # 2 output channels per input channel
        w, b = torch.cat([w, w.flip(2)]), torch.cat([b, b])
    reason = dt.unsupported(x, w, b, stride, padding)
    assert reason, what
    assert dt.backend_for(x, w, b, stride, padding) == "aten"
    assert torch.equal(dt.depthwise_conv3d(x, w, b, stride, padding),
                       F.conv3d(x, w, b, stride, padding, groups=x.shape[1]))
    with pytest.raises(ValueError, match="cannot run"):
        dt.dwconv3d_triton(x, w, b, stride, padding)


def test_aten_mode_and_missing_triton_use_conv3d(monkeypatch):
    x, w, b = _conv_inputs()
    dt.set_mode("aten")
    assert dt.backend_for(x, w, b, 1, 1) == "aten"
    dt.set_mode("triton")
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton raises ImportError
    dt.triton_available.cache_clear()
    try:
        assert not dt.triton_available()
        assert dt.unsupported(x, w, b, 1, 1) == "triton is not installed"
        assert torch.equal(dt.depthwise_conv3d(x, w, b, 1, 1), F.conv3d(x, w, b, 1, 1, groups=3))
    finally:
        dt.triton_available.cache_clear()


def test_mode_from_environment(monkeypatch):
    monkeypatch.setenv(dt.ENV_MODE, "ATEN")
    assert dt.get_mode() == "aten"
    monkeypatch.setenv(dt.ENV_MODE, "cudnn")
    with pytest.raises(ValueError, match="MAMAMIA_DWCONV='cudnn'"):
        dt.get_mode()
    with pytest.raises(ValueError, match="'fast'"):
        dt.set_mode("fast")


# ---- dispatch -----------------------------------------------------------------------------------


class FakeTimer:
    """Runs each candidate once (so it must work) and reports preset seconds."""

    def __init__(self, seconds):
        self.seconds, self.calls = seconds, []

    def __call__(self, name, fn):
        self.calls.append(name)
        fn()
        return self.seconds[name]


def test_dispatcher_measures_once_remembers_and_persists(tmp_path):
    path = tmp_path / "cache" / "dispatch.json"
    timer = FakeTimer({"aten": 2e-3, "triton": 1e-3})
    made = []

    def candidates():
        made.append(1)
        return {"aten": lambda: None, "triton": lambda: None}

    d = dt.Dispatcher(timer, path)
    assert d.choose("key A", candidates) == "triton"
    assert d.choose("key A", candidates) == "triton"
    assert timer.calls == ["aten", "triton"] and made == [1]
    saved = json.loads(path.read_text())
    assert saved["choices"]["key A"] == {"winner": "triton", "seconds": {"aten": 2e-3, "triton": 1e-3}}
    # a new process reads the file back and measures nothing
    fresh = dt.Dispatcher(FakeTimer({}), path)
    assert fresh.choose("key A", candidates) == "triton" and fresh.timer.calls == [] and made == [1]
    # a second key is added to the same file
    assert fresh.choose("key B", lambda: {"aten": lambda: None}) == "aten"
    assert set(json.loads(path.read_text())["choices"]) == {"key A", "key B"}


def test_dispatcher_failing_candidate_loses_and_bad_cache_is_ignored(tmp_path):
    path = tmp_path / "dispatch.json"
    path.write_text("{not json")

    def boom():
        raise RuntimeError("kernel failed to compile")

    d = dt.Dispatcher(FakeTimer({"aten": 5.0, "triton": 1.0}), path)
    assert d.choose("k", lambda: {"aten": lambda: None, "triton": boom}) == "aten"
    assert json.loads(path.read_text())["choices"]["k"]["seconds"] == {"aten": 5.0}


def test_auto_mode_times_both_once_per_shape_and_grad_mode(monkeypatch, tmp_path):
    timer = FakeTimer({"aten": 3e-3, "triton": 1e-3})
    monkeypatch.setattr(dt, "DISPATCH", dt.Dispatcher(timer, tmp_path / "d.json"))
    dt.set_mode("auto")
    g = torch.Generator().manual_seed(5)
    x = dev(torch.randn(1, 2, 4, 5, 3, generator=g)).requires_grad_()
    w = dev(torch.randn(2, 1, 3, 3, 3, generator=g)).requires_grad_()
    y = dt.depthwise_conv3d(x, w, None, 1, 1)  # times the real kernels (fwd + bwd) in the interpreter
    assert timer.calls == ["aten", "triton"]
    (key, winner), = dt.DISPATCH.choices.items()
    assert winner == "triton" and key.endswith("|1x2x4x5x3|float32|k3|s1|p1|fwd+bwd")
    expected = F.conv3d(x.detach().double(), w.detach().double(), None, 1, 1, groups=2)
    torch.testing.assert_close(y.detach().double(), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    dt.depthwise_conv3d(x, w, None, 1, 1)
    assert len(timer.calls) == 2  # remembered
    with torch.no_grad():
        dt.depthwise_conv3d(x, w, None, 1, 1)
    assert len(timer.calls) == 4 and any(k.endswith("|fwd") for k in dt.DISPATCH.choices)


def test_auto_mode_never_picks_a_kernel_that_disagrees_with_aten(monkeypatch, tmp_path):
    class Wrong(torch.autograd.Function):       # fast but wrong: the kernel's output, shifted
        @staticmethod
        def forward(ctx, x, w, b, s, p):
            return F.conv3d(x, w, b, s, p, groups=x.shape[1]) + 0.5

        @staticmethod
        def backward(ctx, g):
            return None, None, None, None, None

    timer = FakeTimer({"aten": 3e-3, "triton": 1e-3})
    monkeypatch.setattr(dt, "DISPATCH", dt.Dispatcher(timer, tmp_path / "d.json"))
    monkeypatch.setattr(dt, "DepthwiseConv3dTriton", Wrong)
    dt.set_mode("auto")
    g = torch.Generator().manual_seed(6)
    x, w = dev(torch.randn(1, 2, 4, 5, 3, generator=g)), dev(torch.randn(2, 1, 3, 3, 3, generator=g))
    with torch.no_grad():
        y = dt.depthwise_conv3d(x, w, None, 1, 1)
    assert list(dt.DISPATCH.choices.values()) == ["aten"]     # faster, but disagreeing: not chosen
    torch.testing.assert_close(y, F.conv3d(x, w, None, 1, 1, groups=2))
    with pytest.raises(dt.DisagreementError, match="relative"):
        dt._check_agreement("triton", [torch.ones(3) * 1.1], [torch.ones(3)], torch.float32)
    dt._check_agreement("triton", [torch.ones(3) * (1 + 1e-6)], [torch.ones(3)], torch.float32)


def test_default_cache_path(monkeypatch, tmp_path):
    monkeypatch.setenv(dt.ENV_CACHE, "off")
    assert dt.default_cache_path() is None
    monkeypatch.setenv(dt.ENV_CACHE, str(tmp_path / "x.json"))
    assert dt.default_cache_path() == tmp_path / "x.json"
    monkeypatch.delenv(dt.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dt.default_cache_path() == tmp_path / "mamamia-torch" / "dwconv_dispatch.json"


# ---- compiled for the GPU (no GPU needed) -------------------------------------------------------

COMPILE_CHECK = textwrap.dedent("""
    import sys
    import triton
    from triton.backends.compiler import GPUTarget
    from nets import dwconv_triton as dt

    assert not dt.interpreting()
    fwd, bwd_x, bwd_w = dt._kernels(False)
    i, P = "i32", "*" + sys.argv[1]
    shape = dict(C=i, D=i, H=i, W=i, OD=i, OH=i, OW=i)
    for k in map(int, sys.argv[2].split(",")):
        for s in map(int, sys.argv[3].split(",")):
            kwp = dt._next_pow2(k)
            const = dict(K=k, S=s, P=k // 2, KWP=kwp, BLOCK=dt._block(128 ** 3, kwp))
            for fn, sig, extra in [
                    (fwd, dict(x_ptr=P, w_ptr=P, b_ptr=P, y_ptr=P, **shape), dict(HAS_BIAS=True)),
                    (bwd_x, dict(g_ptr=P, w_ptr=P, gx_ptr=P, **shape), {}),
                    (bwd_w, dict(x_ptr=P, g_ptr=P, part_ptr="*fp32", **shape, NBLOCKS=i, TOTAL=i, NSPLIT=i), {})]:
                src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs={**const, **extra})
                compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))  # H100
                assert compiled.asm["cubin"], (k, s, fn)
    print("compiled")
""")


def _compile_for_sm90(tmp_path, dtype: str, kernels: str, strides: str) -> tuple[bool, str]:
    """Compile in a fresh interpreter-free process: (whether every cubin was made, its stderr tail)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9's default, stated to silence its warning
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, leave the user's cache alone
    run = subprocess.run([sys.executable, "-c", COMPILE_CHECK, dtype, kernels, strides], env=env,
                         capture_output=True, text=True, timeout=1200)
    return run.returncode == 0 and "compiled" in run.stdout, run.stderr[-4000:]


def test_kernels_compile_for_h100(tmp_path):
    """The interpreter accepts code the compiler rejects (and the reverse): the kernels must also
    go through Triton's compiler down to an sm_90 cubin, which needs no GPU. k = 3, stride 2
    here (stride 1 is the same code with S = 1); every kernel size, stride and dtype in the slow
    test (~1 minute per dtype)."""
    ok, err = _compile_for_sm90(tmp_path, "bf16", "3", "2")
    assert ok, err


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_all_kernels_compile_for_h100(tmp_path, dtype):
    ok, err = _compile_for_sm90(tmp_path, dtype, "3,5,7", "1,2")
    assert ok, err


# ---- CUDA ---------------------------------------------------------------------------------------

GPU_CHECK = textwrap.dedent("""
    import torch, torch.nn.functional as F
    from nets import dwconv_triton as dt
    from nets.blocks import MedNeXtBlock

    def rel(a, b):
        return float((a.float() - b.float()).abs().max() / b.float().abs().max())

    torch.manual_seed(0)
    torch.backends.cudnn.allow_tf32 = False  # a float32 reference, not TF32
    # MedNeXt-M shapes at a 128^3 patch, batch 2, bf16 (same blocks and the down blocks' stride 2)
    for shape, k, s in [((2, 32, 64, 64, 64), 3, 1), ((2, 64, 32, 32, 32), 5, 1), ((2, 128, 16, 16, 16), 7, 1),
                        ((2, 32, 64, 64, 64), 3, 2), ((2, 256, 8, 8, 8), 5, 2)]:
        x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(shape[1], 1, k, k, k, device="cuda", dtype=torch.bfloat16) / k ** 1.5
        b = torch.randn(shape[1], device="cuda", dtype=torch.bfloat16)
        ref_in = [t.float().requires_grad_() for t in (x, w, b)]
        ref = F.conv3d(*ref_in, s, k // 2, groups=shape[1])
        gout = torch.randn_like(ref)
        ref_grads = torch.autograd.grad(ref, ref_in, gout)
        tri_in = [t.clone().requires_grad_() for t in (x, w, b)]
        out = dt.dwconv3d_triton(*tri_in, s, k // 2)
        grads = torch.autograd.grad(out, tri_in, gout.bfloat16())
        errs = [rel(out, ref)] + [rel(a, e) for a, e in zip(grads, ref_grads)]
        print(shape, k, s, ["%.1e" % e for e in errs])
        assert out.dtype == torch.bfloat16 and max(errs) < 2e-2, errs

    # the MedNeXt block routes its depthwise conv through the dispatch on CUDA, under autocast
    block = MedNeXtBlock(32, 64, 2, 3, "down").cuda()
    x = torch.randn(2, 32, 32, 32, 32, device="cuda")
    outs = []
    for mode in ("aten", "triton"):
        dt.set_mode(mode)
        block.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = block(x)
        y.float().square().mean().backward()
        outs.append((y.float(), block.dw.weight.grad.clone()))
    assert rel(outs[1][0], outs[0][0]) < 2e-2 and rel(outs[1][1], outs[0][1]) < 5e-2
    print("gpu check ok")
""")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_realistic_shapes_match_cudnn():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    env[dt.ENV_CACHE] = "off"
    run = subprocess.run([sys.executable, "-c", GPU_CHECK], env=env, capture_output=True, text=True, timeout=900)
    print(run.stdout)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "gpu check ok" in run.stdout
