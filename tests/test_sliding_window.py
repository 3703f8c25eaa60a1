"""Tests for core/sliding_window.py: window grid, Gaussian map, tiled prediction, TTA, skipping."""
import itertools
import math
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from core.sliding_window import (
    flip_tta,
    gaussian_importance_map,
    pad_to_patch,
    plan_windows,
    predict_tiles,
    sliding_window_predict,
    window_starts,
)

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- window grid
@pytest.mark.parametrize(
    "size, patch, step, expected",
    [
        (64, 64, 0.5, [0]),
        (50, 64, 0.5, [0]),  # smaller than the patch: padded, one window
        (110, 64, 0.5, [0, 23, 46]),  # the example in nnU-Net's compute_steps_for_sliding_window
        (128, 64, 0.5, [0, 32, 64]),
        (192, 64, 0.5, [0, 32, 64, 96, 128]),
        (65, 64, 0.5, [0, 1]),
        (100, 64, 1.0, [0, 36]),
        (10, 4, 0.5, [0, 2, 4, 6]),
        (11, 4, 0.5, [0, 2, 4, 5, 7]),  # spacing 1.75: 1.75->2, 3.5->4, 5.25->5
        (10, 5, 0.5, [0, 2, 5]),  # spacing 2.5 rounds half to even (np.round), as nnU-Net
        (7, 4, 0.25, [0, 1, 2, 3]),
    ],
)
def test_window_starts_by_hand(size, patch, step, expected):
    assert window_starts(size, patch, step) == expected


@pytest.mark.parametrize("patch, step", [(4, 0.5), (5, 0.5), (8, 0.33), (16, 1.0), (7, 0.75)])
def test_window_starts_cover_every_voxel(patch, step):
    for size in range(1, 60):
        starts = window_starts(size, patch, step)
        covered = np.zeros(max(size, patch), bool)
        for s in starts:
            covered[s:s + patch] = True
        assert covered.all()
        assert starts[0] == 0
        assert starts[-1] == max(size - patch, 0)
        assert starts == sorted(set(starts))
        if size > patch:
            assert len(starts) == math.ceil((size - patch) / (patch * step)) + 1


@pytest.mark.parametrize("size, patch, step",
                         [(10, 4, 0.0), (10, 4, 1.5), (0, 4, 0.5), (10, 0, 0.5)])
def test_window_starts_rejects_bad_arguments(size, patch, step):
    with pytest.raises(ValueError):
        window_starts(size, patch, step)


# ----------------------------------------------------------------------------- Gaussian map
def _scipy_reference_gaussian(patch, sigma_scale=1 / 8):
    """nnU-Net's construction: delta at p // 2, scipy gaussian_filter, divide by the max."""
    delta = np.zeros(patch)
    delta[tuple(p // 2 for p in patch)] = 1
    g = gaussian_filter(delta, [p * sigma_scale for p in patch], 0, mode="constant", cval=0)
    return g / g.max()


@pytest.mark.parametrize("patch", [(8, 12, 9), (16, 16, 16), (64, 64, 64), (5, 24, 7)])
def test_gaussian_matches_scipy_construction(patch):
    g = gaussian_importance_map(patch, dtype=torch.float64)
    np.testing.assert_allclose(g.numpy(), _scipy_reference_gaussian(patch), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("patch", [(8, 12, 9), (64, 64, 64)])
def test_gaussian_max_min_symmetry_sigma(patch):
    g = gaussian_importance_map(patch)
    c = tuple(p // 2 for p in patch)
    assert g.shape == patch and g.dtype == torch.float32
    assert g.max().item() == 1.0 and g[c].item() == 1.0
    assert g.min().item() > 0
    for axis, p in enumerate(patch):
        sigma = p / 8
        line = g[tuple(slice(None) if a == axis else c[a] for a in range(3))].double()
        for d in range(1, p - c[axis]):
            if c[axis] - d >= 0:  # symmetric about the centre voxel p // 2
                assert line[c[axis] + d].item() == pytest.approx(line[c[axis] - d].item(), rel=1e-6)
            expected = math.exp(-d * d / (2 * sigma ** 2))
            assert line[c[axis] + d].item() == pytest.approx(expected, rel=1e-6)


def test_gaussian_scaling_and_zero_replacement():
    g = gaussian_importance_map((32, 32, 32), value_scaling_factor=10)
    assert g.max().item() == pytest.approx(10.0)
    # sigma 1 truncated at 4 sigma: offsets beyond 4 are zero before replacement
    g = gaussian_importance_map((32, 32, 32), sigma_scale=1 / 32, dtype=torch.float64)
    ref = _scipy_reference_gaussian((32, 32, 32), sigma_scale=1 / 32)
    assert (ref == 0).any()
    smallest = ref[ref > 0].min()
    assert g.min().item() == pytest.approx(smallest, rel=1e-12)
    np.testing.assert_allclose(g.numpy(), np.where(ref == 0, smallest, ref), rtol=1e-10, atol=0)
    g16 = gaussian_importance_map((64, 64, 64), sigma_scale=1 / 16, dtype=torch.float16)
    assert g16.min().item() > 0


# ----------------------------------------------------------------------------- helpers
def _conv_net(cin, k, kernel=3, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Conv3d(cin, k, kernel, padding=kernel // 2)
    return net.eval()


class _Counting:
    """Wraps a network and counts the windows (batch entries) it sees."""

    def __init__(self, net):
        self.net, self.seen, self.calls = net, 0, 0

    def __call__(self, x):
        self.seen += x.shape[0]
        self.calls += 1
        return self.net(x)


def _reference_loop(net, image, patch, k, step=0.5):
    """Plain nnU-Net-style loop: scipy Gaussian, float64 sums, full weight volume, softmax."""
    shape = image.shape[1:]
    g = torch.from_numpy(_scipy_reference_gaussian(patch))
    acc = torch.zeros((k, *shape), dtype=torch.float64)
    wsum = torch.zeros(shape, dtype=torch.float64)
    for corner in itertools.product(*[window_starts(n, p, step) for n, p in zip(shape, patch)]):
        sl = tuple(slice(s, s + p) for s, p in zip(corner, patch))
        with torch.no_grad():
            prob = torch.softmax(net(image[(None, slice(None), *sl)]), 1)[0].double()
        acc[(slice(None), *sl)] += prob * g
        wsum[sl] += g
    return (acc / wsum).float()


# ----------------------------------------------------------------------------- prediction
def test_single_window_equals_direct_forward():
    net = _conv_net(2, 3)
    x = torch.randn(2, 8, 8, 8)
    out = sliding_window_predict(net, x, (8, 8, 8), 3)
    with torch.no_grad():
        direct = torch.softmax(net(x[None]), 1)[0]
    assert out.shape == (3, 8, 8, 8) and out.dtype == torch.float32
    torch.testing.assert_close(out, direct, rtol=1e-6, atol=1e-6)
    logits = sliding_window_predict(net, x, (8, 8, 8), 3, average="logits", return_logits=True)
    with torch.no_grad():
        torch.testing.assert_close(logits, net(x[None])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, patch, batch", [((20, 13, 9), (8, 8, 8), 1),
                                                 ((17, 16, 11), (8, 6, 10), 3)])
def test_matches_plain_reference_loop(shape, patch, batch):
    net = _conv_net(2, 3)
    x = torch.randn(2, *shape)
    out = sliding_window_predict(net, x, patch, 3, window_batch=batch)
    torch.testing.assert_close(out, _reference_loop(net, x, patch, 3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.sum(0), torch.ones(shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gaussian", [True, False])
@pytest.mark.parametrize("average", ["probabilities", "logits"])
def test_constant_network_gives_constant_output(gaussian, average):
    logits = torch.tensor([1.0, 2.0, 3.0])

    def net(x):
        return logits.view(1, 3, 1, 1, 1).expand(x.shape[0], 3, *x.shape[2:]).clone()

    x = torch.randn(1, 20, 17, 13)
    if gaussian:
        out = sliding_window_predict(net, x, (8, 8, 8), 3, average=average)
    else:  # the parts composed with a plain mean instead of nnU-Net's Gaussian weights
        plan = plan_windows(x.shape[1:], (8, 8, 8))
        padded, _ = pad_to_patch(x, (8, 8, 8))
        out = predict_tiles(flip_tta(net, probabilities=average == "probabilities"), padded, plan, 3,
                            probabilities=average == "probabilities", gaussian=False)
        if average == "logits":
            out = torch.softmax(out, 0)
    expected = torch.softmax(logits, 0).view(3, 1, 1, 1).expand(3, 20, 17, 13)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_pointwise_net_is_flip_equivariant_and_equals_full_volume():
    net = _conv_net(3, 2, kernel=1)
    x = torch.randn(3, 21, 14, 10)
    out = sliding_window_predict(net, x, (8, 8, 8), 2)
    with torch.no_grad():
        torch.testing.assert_close(out, torch.softmax(net(x[None]), 1)[0], rtol=1e-5, atol=1e-6)
    for axes in [(1,), (2,), (3,), (1, 3)]:
        flipped = sliding_window_predict(net, torch.flip(x, axes), (8, 8, 8), 2)
        torch.testing.assert_close(flipped, torch.flip(out, axes), rtol=1e-5, atol=1e-6)


def test_padding_when_volume_smaller_than_patch():
    net = _conv_net(1, 2)
    x = torch.randn(1, 5, 6, 7)
    out = sliding_window_predict(net, x, (8, 8, 8), 2)
    # symmetric zero padding by hand: floor(d / 2) before, the rest after (nnU-Net pad_nd_image)
    padded = torch.zeros(1, 8, 8, 8)
    padded[:, 1:6, 1:7, 0:7] = x
    with torch.no_grad():
        ref = torch.softmax(net(padded[None]), 1)[0, :, 1:6, 1:7, 0:7]
    assert out.shape == (2, 5, 6, 7)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    # one axis larger than the patch, the others padded
    x = torch.randn(1, 13, 3, 8)
    out = sliding_window_predict(net, x, (8, 8, 8), 2)
    p, crop = pad_to_patch(x, (8, 8, 8))
    assert p.shape == (1, 13, 8, 8) and crop == (slice(0, 13), slice(2, 5), slice(0, 8))
    torch.testing.assert_close(out, _reference_loop(net, p, (8, 8, 8), 2)[(slice(None), *crop)],
                               rtol=1e-5, atol=1e-5)


def _body_image(bg=0.0):
    x = torch.full((2, 24, 24, 24), bg)
    x[:, :6, :6, :6] = torch.randn(2, 6, 6, 6)
    return x


def test_window_plan_counts_and_region_skips():
    plan = plan_windows((24, 24, 24), (8, 8, 8))
    # starts 0, 4, ..., 16 per axis: 125 windows, all run
    assert plan.starts == [[0, 4, 8, 12, 16]] * 3 and len(plan.windows) == 125 and all(plan.run)
    region = torch.zeros(24, 24, 24, dtype=torch.bool)
    region[:6, :6, :6] = True
    plan = plan_windows((24, 24, 24), (8, 8, 8), region=region, region_margin=0)
    assert sum(plan.run) == 2 ** 3   # the body [0, 6)^3 meets starts 0 and 4 per axis
    small = plan_windows((5, 6, 7), (8, 8, 8))
    assert small.padded_shape == (8, 8, 8) and small.crop == (slice(1, 6), slice(1, 7), slice(0, 7))


def test_box_restricts_windows_and_output():
    net = _conv_net(2, 3)
    x = torch.randn(2, 24, 24, 24)
    box = (slice(2, 9), slice(0, 24), slice(10, 14))
    counted = _Counting(net)
    out = sliding_window_predict(counted, x, (8, 8, 8), 3, box=box)
    full = sliding_window_predict(net, x, (8, 8, 8), 3)
    # windows meeting the box: x starts 0, 4, 8; y all 5; z starts 4, 8, 12
    assert counted.seen == 3 * 5 * 3
    inside = (slice(None), *box)
    torch.testing.assert_close(out[inside], full[inside], rtol=1e-6, atol=1e-6)
    outside = torch.ones(24, 24, 24, dtype=torch.bool)
    outside[box] = False
    assert (out[0][outside] == 1).all() and (out[1:][:, outside] == 0).all()
    logits = sliding_window_predict(net, x, (8, 8, 8), 3, box=box, average="logits",
                                    return_logits=True)
    assert (logits[0][outside] == 0).all() and (logits[1:][:, outside] == -1e4).all()


@pytest.mark.parametrize("average", ["probabilities", "logits"])
def test_region_skips_windows_without_foreground_region(average):
    """A window with no region voxel within the margin is not run and counts as background; the
    reference is the full computation with those windows' predictions replaced by background."""
    net = _conv_net(2, 2)
    x = torch.randn(2, 24, 24, 24)
    region = torch.zeros(24, 24, 24, dtype=torch.bool)
    region[2:5, 2:5, 2:5] = True
    counted = _Counting(net)
    out = sliding_window_predict(counted, x, (8, 8, 8), 2, region=region, region_margin=1, average=average)
    # starts 0, 4, 8, 12, 16 per axis; windows within 1 voxel of [2, 5): starts 0 and 4 -> 2^3
    assert counted.seen == 8

    bg = torch.tensor([1.0, 0.0]) if average == "probabilities" else torch.tensor([0.0, -1e4])

    def masked(t):
        pred = net(t)
        if average == "probabilities":
            pred = torch.softmax(pred, 1)
        return pred

    # reference by hand: Gaussian-weighted mean over all 125 windows, run or background
    from core.sliding_window import gaussian_importance_map, window_starts
    w = gaussian_importance_map((8, 8, 8))
    acc = torch.zeros(2, 24, 24, 24)
    norm = torch.zeros(24, 24, 24)
    for sx in window_starts(24, 8):
        for sy in window_starts(24, 8):
            for sz in window_starts(24, 8):
                sl = (slice(sx, sx + 8), slice(sy, sy + 8), slice(sz, sz + 8))
                near = all(s.start < 5 + 1 and s.stop > 2 - 1 for s in sl)
                with torch.no_grad():
                    p = masked(x[(slice(None), *sl)][None])[0] if near else bg[:, None, None, None].expand(2, 8, 8, 8)
                acc[(slice(None), *sl)] += p * w
                norm[sl] += w
    ref = acc / norm
    if average == "logits":
        ref = torch.softmax(ref, 0)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="region shape"):
        sliding_window_predict(net, x, (8, 8, 8), 2, region=region[:4])


@pytest.mark.parametrize("tta_axes", [(0,), (0, 2), (0, 1, 2)])
def test_tta_equals_mean_of_flipped_predictions(tta_axes):
    net = _conv_net(2, 3)  # random 3x3x3 kernels: not flip-equivariant
    x = torch.randn(2, 14, 11, 9)
    patch = (8, 8, 8)
    combos = [c for r in range(len(tta_axes) + 1) for c in itertools.combinations(tta_axes, r)]
    assert len(combos) == 2 ** len(tta_axes)

    def flipped_net(axes):
        dims = [a + 2 for a in axes]
        return lambda t: torch.flip(net(torch.flip(t, dims)), dims) if dims else net(t)

    out = sliding_window_predict(net, x, patch, 3, tta_axes=tta_axes)
    ref = sum(sliding_window_predict(flipped_net(c), x, patch, 3) for c in combos) / len(combos)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    no_tta = sliding_window_predict(net, x, patch, 3)
    assert (out - no_tta).abs().max() > 1e-3  # the flips did change something

    out = sliding_window_predict(net, x, patch, 3, tta_axes=tta_axes, average="logits")
    logits = sum(sliding_window_predict(flipped_net(c), x, patch, 3, average="logits",
                                        return_logits=True) for c in combos) / len(combos)
    torch.testing.assert_close(out, torch.softmax(logits, 0), rtol=1e-5, atol=1e-6)


def test_batching_changes_calls_not_results():
    net = _Counting(_conv_net(1, 2))
    x = torch.randn(1, 16, 16, 16)
    a = sliding_window_predict(net, x, (8, 8, 8), 2, window_batch=4)
    calls_batched = net.calls
    b = sliding_window_predict(net, x, (8, 8, 8), 2, window_batch=1)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert calls_batched == 7 and net.calls - calls_batched == 27   # 27 windows: 4+4+4+4+4+4+3


@pytest.mark.parametrize("kwargs", [
    {"image": torch.zeros(8, 8, 8)},
    {"num_classes": 3},
    {"average": "mean"},
    {"return_logits": True},
    {"tta_axes": (3,)},
    {"window_batch": 0},
    {"box": (slice(0, 4), slice(0, 4))},
    {"box": (slice(0, 4), slice(4, 4), slice(0, 4))},
])
def test_rejects_bad_arguments(kwargs):
    args = dict(net_fn=_conv_net(1, 2), image=torch.zeros(1, 8, 8, 8), patch=(8, 8, 8),
                num_classes=2)
    args.update(kwargs)
    with pytest.raises(ValueError):
        sliding_window_predict(**args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_matches_cpu():
    net = _conv_net(2, 3)
    x = torch.randn(2, 40, 36, 20)
    cpu = sliding_window_predict(net, x, (16, 16, 16), 3, tta_axes=(0, 1))
    plain = sliding_window_predict(net, x, (16, 16, 16), 3)
    gpu = sliding_window_predict(net.cuda(), x, (16, 16, 16), 3, tta_axes=(0, 1), device="cuda",
                                 window_batch=4, autocast_dtype=torch.float16)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-2)
    split = sliding_window_predict(net, x, (16, 16, 16), 3, device="cuda", accum_device="cpu")
    assert split.device.type == "cpu"
    torch.testing.assert_close(split, plain, rtol=1e-4, atol=1e-5)


_MEMORY_SCRIPT = textwrap.dedent("""
    import resource, torch
    from core.sliding_window import sliding_window_predict
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 1).eval()
    image = torch.randn(1, 512, 512, 256)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = sliding_window_predict(net, image, (64, 64, 64), 2, window_batch=2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(before * 1024, peak * 1024, out.numel() * 4)
""")


@pytest.mark.slow
def test_peak_memory_512x512x256_on_cpu():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], cwd=root, capture_output=True,
                         text=True, check=True)
    before, peak, output_bytes = map(int, res.stdout.split())
    print(f"peak RSS {peak / 2**30:.2f} GiB (image loaded: {before / 2**30:.2f} GiB, "
          f"output {output_bytes / 2**30:.2f} GiB)")
    # the output buffer is the accumulator; everything else is per-window or 1-D (allowance for
    # per-window buffers and the convolution library's first-use workspace)
    assert peak - before < output_bytes + 256 * 2**20


def test_network_error_propagates_and_prefetch_thread_ends():
    def broken(x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sliding_window_predict(broken, torch.zeros(1, 24, 24, 24), (8, 8, 8), 2)
    alive = [t for t in threading.enumerate() if t.name == "sliding-window-prefetch"]
    assert not alive
