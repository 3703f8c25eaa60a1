"""train.py end to end on a tiny dataset: runs, resume equivalence, NaN guard, UpKern, DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train  # noqa: E402
from conftest import write_tiny_dataset
from nets import checkpoint as ckptlib

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("train") / "ds", n=6)


def _args(ds, tmp, *extra):
    return ["--data", str(ds), "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"),
            "--epochs", "2", "--iters", "2", "--val-iters", "1", "--workers", "1", "-q", *extra]


def test_run_layout_and_checkpoint_contents(ds, tmp_path):
    assert train.main(_args(ds, tmp_path, "--arch", "unet", "--run", "u")) == 0
    run = tmp_path / "runs" / "u"
    for name in ("config.json", "plan.json", "splits.json", "fingerprint.json"):
        assert (run / name).exists(), name
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits) == 5 and sorted(sum((s["val"] for s in splits), [])) == sorted(
        f"DUKE_{i:03d}" for i in range(5))  # DUKE_005 is the test split
    fold = run / "fold_0"
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt", "log.csv", "validation.json"):
        assert (fold / name).exists(), name
    state = ckptlib.load(fold / "checkpoint_final.pt")
    assert state["epoch"] == 2 and state["config"]["arch"] == "unet" and state["plan"]["channels"] == [0, 1, 2]
    assert state["split"] == splits[0]
    model = ckptlib.build_from(state)
    assert not model.training
    val = json.loads((fold / "validation.json").read_text())
    assert set(val["cases"]) == set(splits[0]["val"]) and 0 <= val["mean_dice"] <= 1
    # the same run name without --resume is refused, never overwritten
    with pytest.raises(SystemExit, match="already trained"):
        train.main(_args(ds, tmp_path, "--arch", "unet", "--run", "u"))


def test_resume_is_bit_exact(ds, tmp_path):
    train.main(_args(ds, tmp_path, "--arch", "unet", "--run", "straight"))
    train.main(_args(ds, tmp_path, "--arch", "unet", "--run", "split", "--stop-after", "1"))
    half = ckptlib.load(tmp_path / "runs" / "split" / "fold_0" / "checkpoint_latest.pt")
    assert half["epoch"] == 1 and not (tmp_path / "runs" / "split" / "fold_0" / "checkpoint_final.pt").exists()
    train.main(_args(ds, tmp_path, "--run", "split", "--resume"))
    a = ckptlib.load(tmp_path / "runs" / "straight" / "fold_0" / "checkpoint_final.pt")
    b = ckptlib.load(tmp_path / "runs" / "split" / "fold_0" / "checkpoint_final.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_nan_loss_stops_with_message(ds, tmp_path, monkeypatch):
    calls = {"n": 0}

    class Flaky(train.DeepSupervisionLoss):
        def forward(self, outputs, target):
            calls["n"] += 1  # one call per training iteration
            loss = super().forward(outputs, target)
            return loss * float("nan") if calls["n"] > 2 else loss  # epoch 0 has 2 iterations

    monkeypatch.setattr(train, "DeepSupervisionLoss", Flaky)
    with pytest.raises(FloatingPointError, match="non-finite loss.*epoch 1.*checkpoint_latest"):
        train.main(_args(ds, tmp_path, "--arch", "unet", "--run", "nan"))
    state = ckptlib.load(tmp_path / "runs" / "nan" / "fold_0" / "checkpoint_latest.pt")
    assert state["epoch"] == 1  # the last trusted state is kept
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "runs" / "nan" / "fold_0" / "checkpoint_final.pt").exists()


def test_mednext_and_upkern(ds, tmp_path):
    train.main(_args(ds, tmp_path, "--arch", "mednext", "--kernel", "3", "--run", "k3", "--epochs", "1"))
    train.main(_args(ds, tmp_path, "--arch", "mednext", "--kernel", "5", "--run", "k5", "--epochs", "1",
                     "--upkern-from", "k3"))
    k3 = ckptlib.load(tmp_path / "runs" / "k3" / "fold_0" / "checkpoint_final.pt")
    k5 = ckptlib.load(tmp_path / "runs" / "k5" / "fold_0" / "checkpoint_final.pt")
    assert k5["net_kwargs"]["kernel"] == 5 and k3["net_kwargs"]["kernel"] == 3
    assert k5["plan"] == k3["plan"]
    shapes = {k: v.shape for k, v in k5["model"].items()}
    assert any(len(s) == 5 and s[-1] == 5 for s in shapes.values())


def test_bad_arguments(ds, tmp_path):
    with pytest.raises(SystemExit):
        train.main(_args(ds, tmp_path, "--fold", "7"))
    with pytest.raises(SystemExit, match="training case"):
        train.main(_args(ds, tmp_path, "--centers", "NACT"))
    for bad in ("1,1", "1,x,1", "1,0,1"):
        with pytest.raises(SystemExit, match="--spacing"):
            train.main(_args(ds, tmp_path, "--spacing", bad))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ["unet", "mednext"])
def test_cuda_amp_training_and_resume(ds, tmp_path, arch):
    """On CUDA: AMP training runs, the checkpoint opens on a CPU-only process, and a resumed run
    ends where a straight one does (cuDNN may reorder sums, so close rather than bit-equal)."""
    train.main(_args(ds, tmp_path, "--arch", arch, "--run", "straight", "--device", "cuda"))
    train.main(_args(ds, tmp_path, "--arch", arch, "--run", "split", "--device", "cuda", "--stop-after", "1"))
    half = ckptlib.load(tmp_path / "runs" / "split" / "fold_0" / "checkpoint_latest.pt")
    train.main(_args(ds, tmp_path, "--run", "split", "--resume", "--device", "cuda"))
    a = ckptlib.load(tmp_path / "runs" / "straight" / "fold_0" / "checkpoint_final.pt")
    b = ckptlib.load(tmp_path / "runs" / "split" / "fold_0" / "checkpoint_final.pt")
    assert a["config"]["amp"] and a["epoch"] == b["epoch"] == 2
    assert all(v.device.type == "cpu" for v in a["model"].values())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in a["history"])
    keys = [k for k in a["model"] if a["model"][k].is_floating_point()]

    def norm(x, y):
        return sum(float((x["model"][k].float() - y["model"][k].float()).square().sum()) for k in keys) ** 0.5
    # Adam turns tiny gradient differences into lr-sized steps for a few weights, so compare norms:
    # a resume that lost the optimizer or scheduler state lands about as far off as the last epoch moved
    moved, diff = norm(a, half), norm(a, b)
    assert moved > 0 and diff < 0.25 * moved, (diff, moved)


@pytest.mark.slow
def test_overfit_tiny_dataset(ds, tmp_path):
    """A few cases, 150 steps: the U-Net must fit its training cases (Dice > 0.9)."""
    import numpy as np
    from core.metrics import dice
    from data import cache
    args = _args(ds, tmp_path, "--arch", "unet", "--run", "fit", "--augment", "none", "--lr", "0.02")
    args[args.index("--epochs") + 1] = "6"
    args[args.index("--iters") + 1] = "25"
    train.main(args)
    state = ckptlib.load(tmp_path / "runs" / "fit" / "fold_0" / "checkpoint_final.pt")
    model = ckptlib.build_from(state)
    folder = next((tmp_path / "cache").iterdir())
    scores = []
    for c in cache.load_cached(folder, state["split"]["train"]):
        probs = train.sliding_window_predict(model, torch.from_numpy(np.array(c.image)),
                                             state["plan"]["patch_size"], num_classes=2)
        scores.append(dice(probs.argmax(0).numpy() == 1, np.asarray(c.label[0]) == 1))
    assert np.mean(scores) > 0.9, scores


@pytest.mark.slow
def test_ddp_two_processes_gloo(ds, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           str(REPO / "train.py"), *_args(ds, tmp_path, "--arch", "unet", "--epochs", "1")]
    # (no --run here: torchrun's own parser would take it as an abbreviation of --run-path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    state = ckptlib.load(tmp_path / "runs" / "unet_dice_ce" / "fold_0" / "checkpoint_final.pt")
    assert state["epoch"] == 1
