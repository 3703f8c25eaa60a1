"""One training step (forward, deep-supervised loss, backward, clip, optimizer step): ours vs peers.

Two comparisons, same process, same thread count, fp32 on CPU, runs interleaved (A B A B ...),
medians reported:

* ``unet``: ``nets.build(NetSpec('unet', ...))`` vs nnU-Net v2's ``PlainConvUNet``
  (dynamic-network-architectures) at the same topology (features 16-128, 4 stages, kernel 3,
  2 convs per stage, 3 input channels, 2 classes, patch 64^3, batch 2). Each side uses its own
  stack as a user would: ours ``DeepSupervisionLoss(get_loss('dice_ce'))`` + ``make_optimizer('sgd')``;
  nnU-Net ``DeepSupervisionWrapper(DC_and_CE_loss(MemoryEfficientSoftDiceLoss))`` with the
  weights of ``nnUNetTrainer._build_loss`` + the SGD of ``configure_optimizers``, its targets
  downsampled beforehand (nnU-Net does that in the data loader, so it is not timed; ours
  downsamples inside the loss, which is timed). Both clip the gradient norm at 12 (nnU-Net's
  ``train_step``).
* ``mednext``: ``nets.build(NetSpec('mednext', ...))`` (size S) vs ``monai.networks.nets.MedNeXt``
  (S: ratio 2, 2 blocks everywhere, residual connections) at the same width and kernel
  (default 16 channels, kernel 3, 64^3, batch 2), AdamW (lr 1e-3, eps 1e-4, wd 3e-5) on both;
  MONAI uses its ``DeepSupervisionLoss(DiceCELoss)`` with our head weights.

Equal math is checked first: parameter counts, and outputs (every deep-supervision head) after
copying our weights into the peer (state_dict keys mapped explicitly), plus the loss values.

Utilisation = (FLOPs of one step, counted by ``torch.utils.flop_counter.FlopCounterMode``) /
step time / fp32 GEMM rate (median of a 2048^2 ``torch.mm`` measured between the steps, so it
sees the same machine load). ``--profile`` prints where our step spends its time.

Run:  .venv/bin/python bench/train_step.py [--net unet|mednext|both] [--threads N] [--repeats R]
Peers: pip install nnunetv2 monai (see ``make bench``). Ends with one JSON line per comparison.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import nets  # noqa: E402
from core.config import NetSpec  # noqa: E402
from core.losses import DeepSupervisionLoss, deep_supervision_weights, get_loss  # noqa: E402
from core.optim import GRAD_CLIP, make_optimizer  # noqa: E402

FEATURES = (16, 32, 64, 128)
STRIDES = (1, 2, 2, 2)
IN_CHANNELS = 3
NUM_CLASSES = 2


# ----------------------------------------------------------------------------- measuring

DEVICE = torch.device("cpu")
AMP_DTYPE = None          # torch.bfloat16 with --amp on CUDA


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def gemm_gflops(n: int = 2048, reps: int = 3) -> float:
    """Matrix-multiply rate (GFLOP/s) of this process: fp32 at the current thread count on CPU,
    the step's compute dtype (bf16 with --amp) at 8192^2 on CUDA."""
    dtype = AMP_DTYPE or torch.float32
    if DEVICE.type == "cuda":
        n, reps = 8192, 10
    a, b = torch.randn(n, n, device=DEVICE, dtype=dtype), torch.randn(n, n, device=DEVICE, dtype=dtype)
    torch.mm(a, b)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def step_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def make_step(model, loss_fn, optimizer, x, target):
    """nnU-Net's ``train_step``: zero_grad, forward + loss (under bf16 autocast with --amp on CUDA;
    bf16 needs no grad scaler), backward, clip 12, step. ``float(loss)`` synchronises CUDA."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=AMP_DTYPE or torch.bfloat16, enabled=AMP_DTYPE is not None):
            loss = loss_fn(model(x), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        return float(loss.detach())
    return step


def interleaved(steps: dict, repeats: int, warmup: int = 1) -> tuple[dict, list]:
    """Run each step ``warmup`` times, then ``repeats`` rounds of one call each in turn, with a
    GEMM-rate probe per round. Returns ``({name: [seconds]}, [gflops])``."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in steps}
    gemm = []
    for r in range(repeats):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]
        for k in order:
            t0 = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t0)
        gemm.append(gemm_gflops())
        sync()
        print(f"  round {r}: " + ", ".join(f"{k} {times[k][-1]:.3f} s" for k in steps)
              + f", gemm {gemm[-1]:.1f} GFLOP/s", flush=True)
    return times, gemm


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def max_diff(a, b) -> float:
    a = a if isinstance(a, (list, tuple)) else [a]
    b = b if isinstance(b, (list, tuple)) else [b]
    assert len(a) == len(b), (len(a), len(b))
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- U-Net vs nnU-Net

def unet_peer_state(ours: torch.nn.Module, peer: torch.nn.Module) -> dict:
    """Our U-Net state_dict under PlainConvUNet's keys. The peer's decoder counts stages from the
    bottleneck (stage i produces resolution S-2-i); its ``all_modules`` and ``decoder.encoder``
    keys alias the same tensors and get the same values."""
    src = ours.state_dict()
    last = len(ours.features) - 2
    out = {}
    for key in peer.state_dict():
        parts = key.split(".")
        if parts[0] == "decoder" and parts[1] == "encoder":
            parts = parts[1:]
        if parts[0] == "encoder":              # encoder.stages.s.0.convs.j.(conv|norm|all_modules.k).w
            s, j = parts[2], parts[5]
            layer = {"conv": "0", "norm": "1"}.get(parts[6]) or parts[7]
            mine = f"encoder.{s}.{j}.{layer}.{parts[-1]}"
        elif parts[1] == "stages":             # decoder.stages.i.convs.j.(...).w
            s, j = last - int(parts[2]), parts[4]
            layer = {"conv": "0", "norm": "1"}.get(parts[5]) or parts[6]
            mine = f"decoder.{s}.{j}.{layer}.{parts[-1]}"
        elif parts[1] == "transpconvs":
            mine = f"up.{last - int(parts[2])}.{parts[-1]}"
        elif parts[1] == "seg_layers":
            mine = f"heads.{last - int(parts[2])}.{parts[-1]}"
        else:
            raise KeyError(key)
        out[key] = src[mine]
    return out


def bench_unet(args) -> dict:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    torch.manual_seed(0)
    ours = nets.build(NetSpec("unet", dict(in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, features=FEATURES,
                              kernel_sizes=3, strides=STRIDES, n_conv_per_stage=2, deep_supervision=True)))
    # the kwargs nnU-Net v2 writes into plans.json for a 3d_fullres PlainConvUNet
    peer = PlainConvUNet(IN_CHANNELS, len(FEATURES), list(FEATURES), torch.nn.Conv3d, 3, list(STRIDES), 2,
                         NUM_CLASSES, 2, conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True}, deep_supervision=True)
    peer.load_state_dict(unet_peer_state(ours, peer), strict=True)
    pc_ours, pc_peer = n_params(ours), n_params(peer)
    print(f"U-Net parameters: ours {pc_ours:,}  nnU-Net PlainConvUNet {pc_peer:,}")

    g = torch.Generator().manual_seed(1)
    shape = (args.batch, IN_CHANNELS) + (args.unet_patch,) * 3
    x = torch.randn(shape, generator=g)
    # a blob of foreground so Dice has something to do
    target = torch.zeros((args.batch, 1) + (args.unet_patch,) * 3)
    c = args.unet_patch // 2
    target[:, :, c - 10:c + 10, c - 8:c + 12, c - 6:c + 6] = 1
    with torch.no_grad():
        o, p = ours.train()(x), peer.train()(x)
    diff = max_diff(o, p)
    print(f"U-Net outputs ({len(o)} heads) max |ours - nnU-Net| = {diff:.2e}")

    weights = deep_supervision_weights(len(o))
    loss_ours = DeepSupervisionLoss(get_loss("dice_ce"))
    loss_peer = DeepSupervisionWrapper(
        DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                       weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss), weights)
    # nnU-Net's DownsampleSegForDSTransform output, made once (its data loader's job)
    from core.losses import downsample_target
    targets_peer = [downsample_target(target, oo.shape[2:]) for oo in o]
    with torch.no_grad():
        lo, lp = float(loss_ours(o, target)), float(loss_peer(p, targets_peer))
    # ours is 1 - Dice, nnU-Net's is -Dice; the head weights sum to 1, so they differ by exactly 1
    print(f"U-Net loss: ours {lo:.6f}  nnU-Net {lp:.6f}  (ours - nnU-Net - 1 = {lo - lp - 1:.2e})")

    peer_model = copy.deepcopy(peer)
    opt_ours = make_optimizer("sgd", ours.parameters())
    opt_peer = torch.optim.SGD(peer_model.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    steps = {"ours": make_step(ours, loss_ours, opt_ours, x, target),
             "nnunet": make_step(peer_model, loss_peer, opt_peer, x, targets_peer)}
    flops = {k: step_flops(fn) for k, fn in steps.items()}
    print(f"U-Net FLOPs per step: ours {flops['ours'] / 1e9:.2f} G, nnU-Net {flops['nnunet'] / 1e9:.2f} G")
    times, gemm = interleaved(steps, args.repeats)
    return summarise("unet", times, gemm, flops, args, goal=1.0,
                     extra=dict(params_ours=pc_ours, params_peer=pc_peer, max_abs_output_diff=diff,
                                loss_ours=lo, loss_peer=lp, peer_name="nnunet"))


# ----------------------------------------------------------------------------- MedNeXt vs MONAI

def mednext_ours_state(ours: torch.nn.Module, peer: torch.nn.Module) -> dict:
    """MONAI MedNeXt weights under our keys. MONAI lists up blocks / decoder stages from the
    bottleneck (index i produces level 3-i) and its heads are 1x1x1 transposed convs
    (weight (C, K, 1, 1, 1), ours (K, C, 1, 1, 1)); out_blocks[i] is level 4-i."""
    src = peer.state_dict()
    names = {"conv1": "dw", "norm": "norm", "conv2": "expand", "conv3": "project", "res_conv": "res"}
    out = {}
    for key, val in src.items():
        p = key.split(".")
        if p[0] == "stem":
            k = key
        elif p[0] in ("enc_stages", "bottleneck", "dec_stages"):
            top = {"enc_stages": "enc", "bottleneck": "bottleneck", "dec_stages": "dec"}[p[0]]
            idx = p[1:-2]
            if p[0] == "dec_stages":
                idx = [str(3 - int(idx[0]))] + idx[1:]
            k = ".".join([top, *idx, names[p[-2]], p[-1]])
        elif p[0] in ("down_blocks", "up_blocks"):
            level = int(p[1]) if p[0] == "down_blocks" else 3 - int(p[1])
            k = f"{'down' if p[0] == 'down_blocks' else 'up'}.{level}.{names[p[2]]}.{p[-1]}"
        elif p[0] == "out_0":
            k = f"heads.0.{p[-1]}"
        elif p[0] == "out_blocks":
            k = f"heads.{4 - int(p[1])}.{p[-1]}"
        else:
            raise KeyError(key)
        if p[0].startswith("out") and p[-1] == "weight":
            val = val.transpose(0, 1)
        out[k] = val
    return out


def bench_mednext(args) -> dict:
    from monai.losses import DeepSupervisionLoss as MonaiDSLoss
    from monai.losses import DiceCELoss
    from monai.networks.nets import MedNeXt

    from nets.mednext import SIZES

    torch.manual_seed(0)
    c0, k, size_name = args.mednext_channels, args.kernel, args.size
    ours = nets.build(NetSpec("mednext", dict(size=size_name, kernel=k, in_channels=IN_CHANNELS,
                              num_classes=NUM_CLASSES, deep_supervision=True, base_channels=c0)))
    # MONAI's create_mednext(size) settings (same ratios and block counts as ours), at our width
    ratios, blocks = SIZES[size_name]
    peer = MedNeXt(spatial_dims=3, init_filters=c0, in_channels=IN_CHANNELS, out_channels=NUM_CLASSES,
                   encoder_expansion_ratio=ratios[:4], bottleneck_expansion_ratio=ratios[4],
                   decoder_expansion_ratio=ratios[5:], kernel_size=k, deep_supervision=True,
                   use_residual_connection=True, blocks_down=blocks[:4], blocks_bottleneck=blocks[4],
                   blocks_up=blocks[5:], norm_type="group")
    if len(set(ratios)) > 1:
        # MONAI's down block i expands by encoder ratio i; the original MedNeXt (and ours) by the
        # ratio of the stage it leads to (exp_r[i + 1]). Rebuild those blocks from MONAI's own class
        # so both sides compute the same network.
        from monai.networks.blocks.mednext_block import MedNeXtDownBlock
        for i, blk in enumerate(peer.down_blocks):
            peer.down_blocks[i] = MedNeXtDownBlock(c0 * 2 ** i, c0 * 2 ** (i + 1), expansion_ratio=ratios[i + 1],
                                                   kernel_size=k, use_residual_connection=True,
                                                   norm_type="group", dim="3d")
    ours.load_state_dict(mednext_ours_state(ours, peer), strict=True)
    pc_ours, pc_peer = n_params(ours), n_params(peer)
    print(f"MedNeXt-{size_name} C={c0} k={k} parameters: ours {pc_ours:,}  MONAI {pc_peer:,}")
    ours, peer = ours.to(DEVICE), peer.to(DEVICE)

    g = torch.Generator().manual_seed(2)
    size = args.mednext_patch
    x = torch.randn((args.batch, IN_CHANNELS, size, size, size), generator=g).to(DEVICE)
    target = torch.zeros((args.batch, 1, size, size, size))
    c = size // 2
    target[:, :, c - 10:c + 10, c - 8:c + 12, c - 6:c + 6] = 1
    target = target.to(DEVICE)
    with torch.no_grad():   # equal math is checked in fp32 (TF32 off) on every device
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        o, p = ours.train()(x), peer.train()(x)
        torch.backends.cudnn.allow_tf32 = tf32
    diff = max_diff(o, list(p))
    print(f"MedNeXt outputs ({len(o)} heads) max |ours - MONAI| = {diff:.2e}")

    weights = deep_supervision_weights(len(o))
    loss_ours = DeepSupervisionLoss(get_loss("dice_ce"))
    loss_peer = MonaiDSLoss(DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                                       smooth_nr=1e-5, smooth_dr=1e-5), weights=weights)
    with torch.no_grad():
        lo, lp = float(loss_ours(o, target)), float(loss_peer(list(p), target))
    print(f"MedNeXt loss: ours {lo:.6f}  MONAI {lp:.6f}")

    opt_ours = make_optimizer("adamw", ours.parameters())
    opt_peer = torch.optim.AdamW(peer.parameters(), lr=1e-3, eps=1e-4, weight_decay=3e-5)
    steps = {"ours": make_step(ours, loss_ours, opt_ours, x, target),
             "monai": make_step(peer, lambda out, t: loss_peer(list(out), t), opt_peer, x, target)}
    if DEVICE.type == "cuda":
        # our default on CUDA is contiguous; channels_last_3d (the CPU default) for comparison
        cl = copy.deepcopy(ours)
        cl.channels_last = True
        steps["ours_channels_last"] = make_step(cl, loss_ours, make_optimizer("adamw", cl.parameters()), x, target)
    flops = {kk: step_flops(fn) for kk, fn in steps.items()}
    print(f"MedNeXt FLOPs per step: ours {flops['ours'] / 1e9:.2f} G, MONAI {flops['monai'] / 1e9:.2f} G")
    times, gemm = interleaved(steps, args.repeats)
    result = summarise("mednext", times, gemm, flops, args, goal=1.5,
                       extra=dict(params_ours=pc_ours, params_peer=pc_peer, max_abs_output_diff=diff,
                                  loss_ours=lo, loss_peer=lp, peer_name="monai"))
    if DEVICE.type == "cpu" and (args.profile or result["ratio"] < 1.5):
        profile(steps["ours"], "ours MedNeXt")
    return result


def profile(step, label: str, rows: int = 18) -> None:
    from torch.profiler import ProfilerActivity, profile as tprofile
    with tprofile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    print(f"\nprofile of one step, {label} (self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    print(f"{label}: convolution backward by input shape (which convolutions cost the most):")
    by_shape = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::convolution_backward"]
    by_shape.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    for e in by_shape[:12]:
        shapes = [s for s in e.input_shapes if s][:3]   # grad_out, input, weight
        print(f"  {e.self_cpu_time_total / 1e3:9.1f} ms  x{e.count:<3d} grad_out/input/weight {shapes}")


# ----------------------------------------------------------------------------- report

def summarise(name, times, gemm, flops, args, goal, extra) -> dict:
    peer_name = extra["peer_name"]
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = statistics.median(gemm)
    util = {k: flops[k] / med[k] / 1e9 / rate for k in med}
    print(f"\n{name}: raw step seconds")
    for k, v in times.items():
        print(f"  {k:7s} " + " ".join(f"{t:.3f}" for t in v) + f"   median {med[k]:.3f}")
    print(f"  GEMM fp32 GFLOP/s per round: " + " ".join(f"{r:.1f}" for r in gemm)
          + f"   median {rate:.1f}, max {max(gemm):.1f}")
    for k in med:
        print(f"  {k:7s} {flops[k] / 1e9:.2f} GFLOP/step -> {flops[k] / med[k] / 1e9:.1f} GFLOP/s = "
              f"{100 * util[k]:.0f} % of the GEMM rate")
    if "ours_channels_last" in med:
        print(f"  channels_last_3d vs contiguous (ours): {med['ours'] / med['ours_channels_last']:.2f}x")
    ratio = med[peer_name] / med["ours"]
    # each round runs both back to back under the same load: the median of the per-round
    # ratios is steadier than the ratio of medians on a shared machine
    paired = statistics.median(p / o for p, o in zip(times[peer_name], times["ours"]))
    best = min(times[peer_name]) / min(times["ours"])
    print(f"  speed-up of ours over {peer_name}: {ratio:.2f}x (goal {goal}x); median of per-round ratios "
          f"{paired:.2f}x; ratio of the fastest runs {best:.2f}x")
    return dict(bench=f"train_step_{name}", ours=round(med["ours"], 4), peer=round(med[peer_name], 4),
                unit="s/step", ratio=round(ratio, 3), goal=goal, device=device_string(args),
                utilisation_ours=round(util["ours"], 3), utilisation_peer=round(util[peer_name], 3),
                ratio_paired=round(paired, 3), ratio_fastest=round(best, 3),
                gemm_gflops=round(rate, 1), params=[extra["params_ours"], extra["params_peer"]],
                max_abs_output_diff=float(f"{extra['max_abs_output_diff']:.3g}"))


def device_string(args) -> str:
    if DEVICE.type == "cuda":
        return (f"{torch.cuda.get_device_name(DEVICE)}, {'bf16 autocast' if AMP_DTYPE else 'fp32'}, "
                f"torch {torch.__version__}")
    from common import cpu_device_string
    return cpu_device_string(args.threads, "fp32")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", choices=("unet", "mednext", "both"), default="both")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--unet-patch", type=int, default=64)
    ap.add_argument("--mednext-patch", type=int, default=64)
    ap.add_argument("--mednext-channels", type=int, default=16)
    ap.add_argument("--kernel", type=int, default=3)
    ap.add_argument("--size", choices=("S", "B", "M", "L"), default="S", help="MedNeXt size")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (CUDA: MedNeXt only)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--profile", action="store_true", help="profile our MedNeXt step even if it meets its goal")
    args = ap.parse_args(argv)
    global DEVICE, AMP_DTYPE
    DEVICE = torch.device(args.device)
    AMP_DTYPE = torch.bfloat16 if args.amp else None
    if DEVICE.type == "cuda" and args.net != "mednext":
        ap.error("--device cuda compares MedNeXt only (use --net mednext)")
    if args.amp and DEVICE.type != "cuda":
        ap.error("--amp needs --device cuda")
    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()} on {os.cpu_count()} cores "
          "(the machine is shared: timings are noisy, medians of interleaved runs)")
    results = []
    if args.net in ("unet", "both"):
        results.append(bench_unet(args))
    if args.net in ("mednext", "both"):
        results.append(bench_mednext(args))
    print(f"load average at end: {os.getloadavg()}")
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
