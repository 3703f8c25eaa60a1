"""train.py end to end on a tiny dataset: runs, resume equivalence, NaN guard, UpKern, DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train  # noqa: E402
from conftest import write_tiny_dataset
from engine import training
from nets import checkpoint as ckptlib

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("train") / "ds", n=6)


def _args(ds, tmp, *extra):
    return ["--data", str(ds), "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"),
            "--epochs", "2", "--iters", "2", "--val-iters", "1", "--workers", "1", "-q", *extra]


def test_run_layout_and_checkpoint_contents(ds, tmp_path, capsys):
    assert train.main(_args(ds, tmp_path, "--arch", "unet", "--run", "u")) == 0
    run = tmp_path / "runs" / "u"
    for name in ("config.json", "plan.json", "splits.json", "fingerprint.json"):
        assert (run / name).exists(), name
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits) == 5 and sorted(sum((s["val"] for s in splits), [])) == sorted(
        f"DUKE_{i:03d}" for i in range(5))  # DUKE_005 is the test split
    fold = run / "fold_0"
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt", "log.csv", "validation.json",
                 "progress.png"):
        assert (fold / name).exists(), name
    assert (fold / "progress.png").read_bytes().startswith(b"\x89PNG")
    state = ckptlib.load(fold / "checkpoint_final.pt")
    assert state["epoch"] == 2 and state["config"].network.name == "unet" and state["plan"].channels == (0, 1, 2)
    assert state["split"] == splits[0]
    model = ckptlib.build_from(state)
    assert not model.training
    val = json.loads((fold / "validation.json").read_text())
    assert set(val["cases"]) == set(splits[0]["val"]) and 0 <= val["mean_dice"] <= 1
    # the same run name without --resume is refused, never overwritten
    before = (fold / "checkpoint_final.pt").read_bytes()
    assert train.main(_args(ds, tmp_path, "--arch", "unet", "--run", "u")) == 2
    assert "already trained" in capsys.readouterr().err
    assert (fold / "checkpoint_final.pt").read_bytes() == before

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

    class Flaky(training.DeepSupervisionLoss):
        def forward(self, outputs, target):
            calls["n"] += 1  # one call per training iteration
            loss = super().forward(outputs, target)
            return loss * float("nan") if calls["n"] > 2 else loss  # epoch 0 has 2 iterations

    monkeypatch.setattr(training, "DeepSupervisionLoss", Flaky)
    with pytest.raises(FloatingPointError, match="non-finite loss.*epoch 1.*checkpoint_latest"):
        train.main(_args(ds, tmp_path, "--arch", "unet", "--run", "nan"))
    state = ckptlib.load(tmp_path / "runs" / "nan" / "fold_0" / "checkpoint_latest.pt")
    assert state["epoch"] == 1  # the last trusted state is kept
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "runs" / "nan" / "fold_0" / "checkpoint_final.pt").exists()


def test_exploding_weights_are_never_saved_and_the_named_state_resumes(ds, tmp_path, monkeypatch):
    """The last step of epoch 1 scales every weight by 1e29 (finite, as a diverging run does):
    the losses of that epoch were all finite, but the state is not saved; the message names the
    checkpoint of epoch 1, and resuming from it completes the run."""
    real = training.make_optimizer
    steps = {"n": 0}

    def exploding(name, params, lr=None):
        opt = real(name, params, lr)
        step = opt.step

        def wrapped(*a, **k):
            out = step(*a, **k)
            steps["n"] += 1
            if steps["n"] == 4:           # epoch 1, iteration 1 (2 iterations per epoch)
                with torch.no_grad():
                    for g in opt.param_groups:
                        for p in g["params"]:
                            p.mul_(1e29)
            return out
        opt.step = wrapped
        return opt

    monkeypatch.setattr(training, "make_optimizer", exploding)
    with pytest.raises(FloatingPointError, match=r"not saved.*checkpoint_latest.pt \(1 epoch"):
        train.main(_args(ds, tmp_path, "--arch", "unet", "--run", "boom"))
    fold = tmp_path / "runs" / "boom" / "fold_0"
    state = ckptlib.load(fold / "checkpoint_latest.pt")
    assert state["epoch"] == 1
    assert max(float(v.abs().max()) for v in state["model"].values() if v.is_floating_point()) < 1e6
    monkeypatch.setattr(training, "make_optimizer", real)
    assert train.main(_minimal(tmp_path, "--run", "boom", "--resume")) == 0
    assert ckptlib.load(fold / "checkpoint_final.pt")["epoch"] == 2


def _minimal(tmp, *extra):
    """Only the flags that do not describe a run (folders, workers, quiet)."""
    return ["--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"), "--workers", "1", "-q", *extra]


@pytest.fixture(scope="module")
def k3_run(ds, tmp_path_factory):
    """A MedNeXt-S k3 run (channels 8, phases 0-1, DUKE only) trained on folds 0 and 1."""
    tmp = tmp_path_factory.mktemp("k3")
    assert train.main(_args(ds, tmp, "--arch", "mednext", "--kernel", "3", "--size", "S", "--run", "k3",
                            "--epochs", "1", "--phases", "0-1", "--centers", "DUKE", "--fold", "0,1",
                            "--set", "archs.mednext.base_channels=8")) == 0
    return tmp


def test_upkern_inherits_the_source_description(k3_run):
    tmp = k3_run
    assert train.main(_minimal(tmp, "--arch", "mednext", "--kernel", "5", "--upkern-from", "k3")) == 0
    src, dst = tmp / "runs" / "k3", tmp / "runs" / "mednext_k5_dice_ce"
    k3 = ckptlib.load(src / "fold_0" / "checkpoint_final.pt")
    k5 = ckptlib.load(dst / "fold_0" / "checkpoint_final.pt")
    net3, net5 = k3["config"].network, k5["config"].network
    assert net5.kwargs["kernel"] == 5 and net3.kwargs["kernel"] == 3
    assert {k: v for k, v in net5.kwargs.items() if k != "kernel"} == {k: v for k, v in net3.kwargs.items() if k != "kernel"}
    assert net5.kwargs["size"] == "S" and net5.kwargs["base_channels"] == 8 and net5.kwargs["in_channels"] == 2
    # the stored description says kernel 5 everywhere: plan, config, checkpoint
    plan5 = json.loads((dst / "plan.json").read_text())
    assert plan5["archs"]["mednext"]["kernel"] == 5 and plan5["channels"] == [0, 1]
    assert json.loads((dst / "config.json").read_text())["network"]["kwargs"]["kernel"] == 5
    assert k5["plan"].patch_size == k3["plan"].patch_size
    # the same folds, the same selection, the same recipe
    assert json.loads((dst / "splits.json").read_text()) == json.loads((src / "splits.json").read_text())
    d3, d5 = json.loads((src / "data.json").read_text()), json.loads((dst / "data.json").read_text())
    assert d5 == d3 and d5["centers"] == ["DUKE"]
    assert k5["config"].epochs == k3["config"].epochs == 1 and k5["config"].optimizer == k3["config"].optimizer
    assert k5["config"].upkern_from == "k3"
    shapes = {k: v.shape for k, v in k5["model"].items()}
    assert any(len(s) == 5 and s[-1] == 5 for s in shapes.values())


def test_upkern_refuses_fold_changes_and_missing_folds(k3_run, capsys, tmp_path):
    tmp = k3_run
    base = _minimal(tmp, "--arch", "mednext", "--kernel", "5", "--upkern-from", "k3", "--run", "k5x")
    assert train.main(base + ["--centers", "DUKE,NACT"]) == 2
    err = capsys.readouterr().err
    assert "--centers" in err and "--new-splits" in err
    assert train.main(base + ["--fold", "3"]) == 2
    assert "fold(s) [3] missing or unfinished" in capsys.readouterr().err
    assert train.main(base + ["--spacing", "2,2,2"]) == 2
    assert "source's plan" in capsys.readouterr().err
    assert train.main(base + ["--phases", "0-2"]) == 2
    assert "--phases" in capsys.readouterr().err
    assert not (tmp / "runs" / "k5x").exists()
    # with --new-splits the selection may change: new folds over the new cases
    bigger = write_tiny_dataset(tmp_path / "ds8", n=9)
    assert train.main(base + ["--data", str(bigger)]) == 2
    assert "--new-splits" in capsys.readouterr().err
    assert train.main(base + ["--data", str(bigger), "--new-splits", "--fold", "0"]) == 0
    splits = json.loads((tmp / "runs" / "k5x" / "splits.json").read_text())
    assert splits != json.loads((tmp / "runs" / "k3" / "splits.json").read_text())
    assert "DUKE_006" in {i for s in splits for i in s["val"]}


def test_resume_compares_flags(ds, tmp_path, capsys):
    assert train.main(_args(ds, tmp_path, "--arch", "unet", "--run", "r", "--stop-after", "1")) == 0
    assert train.main(_minimal(tmp_path, "--run", "r", "--resume", "--loss", "dice_ce_focal", "--seed", "3")) == 2
    err = capsys.readouterr().err
    assert "--loss" in err and "--seed" in err and "differ" in err
    # --epochs extends the run
    assert train.main(_minimal(tmp_path, "--run", "r", "--resume", "--epochs", "3")) == 0
    state = ckptlib.load(tmp_path / "runs" / "r" / "fold_0" / "checkpoint_final.pt")
    assert state["epoch"] == 3 and state["config"].epochs == 3 and len(state["history"]) == 3


def test_bad_arguments_fail_fast_and_leave_nothing(ds, tmp_path, capsys):
    for extra, msg in (((["--fold", "7"]), "--fold"), (["--kernel", "4", "--arch", "mednext"], "--kernel 4"),
                       (["--kernel", "5"], "does not apply"), (["--augment", "strong"], "--augment"),
                       (["--loss", "l2"], "--loss"), (["--set", "patchsize=1"], "--set"),
                       (["--phases", "a-b"], "--phases"), (["--data", str(tmp_path / "nowhere")], "not found")):
        assert train.main(_args(ds, tmp_path, *extra)) == 2, extra
        assert msg in capsys.readouterr().err, extra
    assert train.main(_args(ds, tmp_path, "--centers", "NACT")) == 2
    assert "training case" in capsys.readouterr().err
    for bad in ("1,1", "1,x,1", "1,0,1"):
        assert train.main(_args(ds, tmp_path, "--spacing", bad)) == 2
        assert "--spacing" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_kernel_error_is_fast_and_needs_no_torch(tmp_path):
    """``train.py --kernel 4`` fails before torch is imported (and --help likewise needs none)."""
    code = ("import sys, train; rc = train.main(['--arch', 'mednext', '--kernel', '4', '--runs-dir', sys.argv[1]]);"
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True,
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 2 and "--kernel 4" in res.stderr, res.stderr
    assert not (tmp_path / "runs").exists()


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
        probs = training.sliding_window_predict(model, torch.from_numpy(np.array(c.image)),
                                             state["plan"].patch_size, num_classes=2)
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


def test_fold_full_and_upkern_from_the_best_fold(k3_run):
    tmp = k3_run
    src = tmp / "runs" / "k3"
    dice = {f: json.loads((src / f"fold_{f}" / "validation.json").read_text())["mean_dice"] for f in (0, 1)}
    best = max(sorted(dice), key=lambda f: dice[f])
    assert train.main(_minimal(tmp, "--arch", "mednext", "--kernel", "5", "--upkern-from", "k3",
                               "--upkern-fold", "best", "--fold", "full", "--run", "k5full")) == 0
    dst = tmp / "runs" / "k5full"
    state = ckptlib.load(dst / "fold_full" / "checkpoint_final.pt")
    assert state["config"].upkern_fold == best and state["config"].folds == (-1,)
    data = json.loads((dst / "data.json").read_text())
    assert sorted(state["split"]["train"]) == sorted(data["cases"]) and state["split"]["val"] == []
    val = json.loads((dst / "fold_full" / "validation.json").read_text())
    assert val["cases"] == {} and "mean_dice" not in val
    assert (dst / "fold_full" / "progress.png").read_bytes().startswith(b"\x89PNG")   # NaN pseudo-Dice plots too
    # an explicit source fold, and the refusal of a full target without one
    assert train.main(_minimal(tmp, "--arch", "mednext", "--kernel", "5", "--upkern-from", "k3",
                               "--fold", "full", "--run", "k5nofold")) == 2
    assert not (tmp / "runs" / "k5nofold").exists()
    # inference accepts a full-data run
    from engine.predictor import load_members
    from engine.runs import RunDir
    members = load_members([RunDir(dst)], ensemble=True, which="final", device=torch.device("cpu"))
    assert [m.name for m in members] == ["k5full/fold_full"]


def test_best_fold_picks_the_highest_recorded_dice(tmp_path):
    from core.errors import UserError
    from engine.runs import RunDir
    from engine.setup import best_fold
    run = tmp_path / "r"
    for f, d in ((0, 0.61), (1, 0.74), (2, 0.74), (3, float("nan")), (4, 0.9)):
        (run / f"fold_{f}").mkdir(parents=True)
        (run / f"fold_{f}" / "validation.json").write_text(json.dumps({"mean_dice": d}))
        if f != 4:  # fold 4 is unfinished: no final checkpoint
            (run / f"fold_{f}" / "checkpoint_final.pt").write_bytes(b"")
    assert best_fold(RunDir(run)) == 1     # 0.74 twice: the lower fold; 0.9 is unfinished
    with pytest.raises(UserError, match="no finished fold"):
        best_fold(RunDir(tmp_path / "empty"))


def test_max_cases_draws_reproducibly_and_keeps_center_shares():
    from types import SimpleNamespace

    from engine.setup import draw_cases
    cases = [SimpleNamespace(patient_id=f"{c}_{i:03d}", center=c)
             for c, n in (("DUKE", 60), ("ISPY2", 30), ("NACT", 10)) for i in range(n)]
    a, b = draw_cases(cases, 20, seed=3), draw_cases(cases, 20, seed=3)
    assert [c.patient_id for c in a] == [c.patient_id for c in b] and len(a) == 20
    counts = {k: sum(c.center == k for c in a) for k in ("DUKE", "ISPY2", "NACT")}
    assert counts == {"DUKE": 12, "ISPY2": 6, "NACT": 2}
    assert [c.patient_id for c in draw_cases(cases, 20, seed=4)] != [c.patient_id for c in a]
    assert len({c.patient_id for c in a}) == 20
    # largest remainder: 7 of (60, 30, 10) -> 4.2, 2.1, 0.7 -> 4, 2, 1
    seven = draw_cases(cases, 7, seed=0)
    assert [sum(c.center == k for c in seven) for k in ("DUKE", "ISPY2", "NACT")] == [4, 2, 1]


def test_early_stopping_stops_where_expected_and_resumes_exactly(ds, tmp_path, monkeypatch):
    """Scripted validation: pseudo-Dice 0.5, 0.8, then 0.1 for ever. The moving average peaks at
    epoch 1; with --early-stop 2 epochs 2 and 3 do not improve it, so training ends after epoch 4
    (four epochs run) of 10; a resume after a kill mid-way ends at the same state."""
    curve = [0.5, 0.8] + [0.1] * 10

    def scripted(logits, target):
        epoch = scripted.epoch_of()
        d = curve[epoch]
        return (int(1000 * d), int(1000 * (1 - d)), int(1000 * (1 - d)))  # 2TP/(2TP+FP+FN) = d

    state = {"calls": 0}

    def epoch_of():
        state["calls"] += 1
        return (state["calls"] - 1)  # one validation batch per epoch (--val-iters 1)
    scripted.epoch_of = epoch_of
    monkeypatch.setattr(training, "pseudo_dice", scripted)
    base = _args(ds, tmp_path, "--arch", "unet", "--epochs", "10", "--early-stop", "2")
    assert train.main(base + ["--run", "es"]) == 0
    final = ckptlib.load(tmp_path / "runs" / "es" / "fold_0" / "checkpoint_final.pt")
    emas = [h["ema"] for h in final["history"]]
    assert final["epoch"] == 4 and len(emas) == 4
    assert emas[1] == max(emas) and all(e < emas[1] for e in emas[2:])
    assert json.loads((tmp_path / "runs" / "es" / "fold_0" / "validation.json").read_text())["early_stopped"]
    best = ckptlib.load(tmp_path / "runs" / "es" / "fold_0" / "checkpoint_best.pt")
    assert best["epoch"] == 2
    # the same run stopped after 3 epochs and resumed: bit-exact
    state["calls"] = 0
    assert train.main(base + ["--run", "es2", "--stop-after", "3"]) == 0
    assert train.main(_minimal(tmp_path, "--run", "es2", "--resume")) == 0
    other = ckptlib.load(tmp_path / "runs" / "es2" / "fold_0" / "checkpoint_final.pt")
    assert other["epoch"] == 4
    for k in final["model"]:
        assert torch.equal(final["model"][k], other["model"][k]), k


def test_cross_validation_summary_matches_eval(ds, tmp_path, capsys):
    """Five folds of a tiny run: the summary is built at the end; its official out-of-fold scores
    equal eval.py's on the same out-of-fold masks, and its per-fold Dice is the mean over that
    fold's validation cases."""
    import csv

    import eval as ev
    assert train.main(_args(ds, tmp_path, "--arch", "unet", "--run", "cv", "--fold", "all", "--epochs", "1",
                            "--iters", "1", "--val-iters", "0")) == 0
    run = tmp_path / "runs" / "cv"
    summary = json.loads((run / "cv_summary.json").read_text())
    assert "best fold" in capsys.readouterr().out
    assert [f["fold"] for f in summary["folds"]] == [0, 1, 2, 3, 4]
    assert ev.main(["--pred", str(run / "cv" / "oof_raw"), "--data", str(ds), "--split", "train",
                    "--out", str(tmp_path / "ev"), "--no-plots", "--quiet"]) in (0, 1)
    official = json.loads((tmp_path / "ev" / "summary.json").read_text())["official"]
    for k in ("mean_dice", "mean_norm_hd", "performance", "fairness", "ranking"):
        assert summary["official"]["raw"][k] == pytest.approx(official[k]), k
    with open(tmp_path / "ev" / "per_case.csv") as fh:
        per_case = {r["patient_id"]: float(r["dice"]) for r in csv.DictReader(fh)}
    splits = json.loads((run / "splits.json").read_text())
    for k, f in enumerate(summary["folds"]):
        assert f["dice"] == pytest.approx(np.mean([per_case[i] for i in splits[k]["val"]]))
    best = max(range(5), key=lambda k: (summary["folds"][k]["dice"], -k))
    assert summary["best_fold_oof"] == best
    from engine.runs import RunDir
    from engine.setup import best_fold
    assert summary["best_fold"] == best_fold(RunDir(run))
    rows = list(csv.reader(open(run / "cv_summary.csv")))
    assert rows[0][:3] == ["fold", "n", "dice"] and rows[-2][0] == "mean" and rows[-1][0] == "sd"
    # the command that rebuilds it
    assert ev.main(["--cv", "cv", "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 0


def test_recipes_fill_only_what_is_not_given():
    from core.errors import UserError
    from engine.flags import RECIPES, TrainRequest, apply_recipe
    req = TrainRequest(recipe="seed_b", epochs=3, arch="mednext")
    set_ = apply_recipe(req)
    assert req.epochs == 3 and "epochs" not in set_                     # explicit flags win
    assert (req.optimizer, req.schedule, req.loss) == ("sgd", "cosine", "dice_ce") == \
        tuple(RECIPES["seed_b"][k] for k in ("optimizer", "schedule", "loss"))
    req = TrainRequest(recipe="seed_a")
    apply_recipe(req)
    assert (req.optimizer, req.loss, req.epochs, req.early_stop, req.augment) == \
        ("adam", "batch_dice", 1000, 50, "seed_a")
    with pytest.raises(UserError, match="--recipe"):
        apply_recipe(TrainRequest(recipe="seed_c"))


def test_aug_set_edits_the_profile_and_is_stored(ds, tmp_path, capsys):
    assert train.main(_args(ds, tmp_path, "--arch", "unet", "--run", "aug", "--epochs", "1",
                            "--augment", "nnunet", "--aug-set", "p_elastic=1.0", "--aug-set", "scaling=0.9,1.1")) == 0
    cfg = json.loads((tmp_path / "runs" / "aug" / "config.json").read_text())
    assert cfg["augment_overrides"] == ["p_elastic=1.0", "scaling=0.9,1.1"]
    from data.augment import with_overrides
    prof = with_overrides(cfg["augment"], cfg["augment_overrides"])
    assert prof.p_elastic == 1.0 and prof.scaling == (0.9, 1.1)
    assert train.main(_args(ds, tmp_path, "--run", "aug2", "--aug-set", "p_elastik=0.2")) == 2
    assert "p_elastik" in capsys.readouterr().err and not (tmp_path / "runs" / "aug2").exists()


@pytest.mark.parametrize("seconds,budget,max_epochs,warmup,expected", [
    (10.0, 1.0, 20, 0, 6),        # 60 s / 10 s
    (10.0, 10.0, 20, 0, 20),      # everything fits: --epochs
    (100.0, 1.0, 20, 0, 3),       # never below MIN_BUDGET_EPOCHS
    (100.0, 1.0, 2, 0, 2),        # ... unless --epochs is smaller
    (100.0, 1.0, 20, 5, 6),       # more epochs than the warm-up
    (7.0, 1.0, 20, 0, 8),         # floor(60 / 7)
])
def test_budget_epochs(seconds, budget, max_epochs, warmup, expected):
    assert training.budget_epochs(seconds, budget, max_epochs, warmup) == expected


def test_time_budget_shortens_the_schedule_and_resumes_with_it(ds, tmp_path, caplog):
    from core.optim import scheduled_lr
    # a budget no epoch fits: the schedule becomes MIN_BUDGET_EPOCHS (3) of the 5 asked for
    args = _args(ds, tmp_path, "--arch", "unet", "--run", "tb", "--epochs", "5", "--time-budget", "0.00001")
    assert train.main(args + ["--stop-after", "1"]) == 0
    fold = tmp_path / "runs" / "tb" / "fold_0"
    half = ckptlib.load(fold / "checkpoint_latest.pt")
    assert half["epoch"] == 1 and half["planned_epochs"] == training.MIN_BUDGET_EPOCHS
    assert "-> 3 of 5 epochs (schedule shortened to fit)" in caplog.text
    assert train.main(_minimal(tmp_path, "--run", "tb", "--resume")) == 0
    final = ckptlib.load(fold / "checkpoint_final.pt")
    lrs = [h["lr"] for h in final["history"]]
    assert final["epoch"] == 3 and len(lrs) == 3
    # the learning rate decays over the 3 planned epochs, not the 5 of --epochs
    assert lrs[2] == pytest.approx(scheduled_lr("poly", lrs[0], 2, 3))
    assert lrs[2] != pytest.approx(scheduled_lr("poly", lrs[0], 2, 5))
    # a budget everything fits in changes nothing
    assert train.main(_args(ds, tmp_path, "--arch", "unet", "--run", "tb2", "--time-budget", "1000")) == 0
    state = ckptlib.load(tmp_path / "runs" / "tb2" / "fold_0" / "checkpoint_final.pt")
    assert state["epoch"] == 2 and state["planned_epochs"] == 2 and state["config"].time_budget_min == 1000


def test_time_budget_must_be_positive(ds, tmp_path, capsys):
    for bad in ("0", "-1", "inf"):
        assert train.main(_args(ds, tmp_path, "--time-budget", bad)) == 2
        assert "--time-budget" in capsys.readouterr().err
