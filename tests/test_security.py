"""No code runs from a data or model file: crafted pickles in checkpoints are refused everywhere
a checkpoint is read (inference, the challenge wrapper, --resume, --upkern-from)."""
import json
import pickle

import pytest
import torch

import infer
import train
from conftest import write_tiny_dataset
from core.errors import UserError
from nets import checkpoint as ckptlib


class Payload:
    """Unpickling this object runs ``open(marker, 'w')``: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _craft(path, marker):
    """A file that looks like a checkpoint but carries the payload."""
    torch.save({"model": {}, "plan": {}, "config": {}, "evil": Payload(marker)}, path, pickle_protocol=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sec")
    ds = write_tiny_dataset(tmp / "ds", n=6)
    common = ["--data", str(ds), "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"),
              "--workers", "1", "-q"]
    assert train.main(common + ["--arch", "mednext", "--kernel", "3", "--size", "S", "--run", "k3", "--epochs", "1",
                                "--iters", "1", "--val-iters", "0", "--set", "archs.mednext.base_channels=4"]) == 0
    return tmp, ds, common


def test_crafted_checkpoint_never_runs(run, tmp_path, capsys):
    tmp, ds, common = run
    marker = tmp_path / "pwned"
    fold = tmp / "runs" / "k3" / "fold_0"
    good = {n: (fold / n).read_bytes() for n in ("checkpoint_final.pt", "checkpoint_latest.pt")}
    try:
        for name in good:
            _craft(fold / name, marker)
        with pytest.raises(UserError, match="refused"):
            ckptlib.load(fold / "checkpoint_final.pt")
        # inference, the UpKern stage and --resume all stop with a one-line error
        assert infer.main(["--runs", "k3", "--runs-dir", str(tmp / "runs"), "--data", str(ds), "--split", "all",
                           "--output", str(tmp_path / "pred"), "--no-tta", "-q"]) == 2
        assert "refused" in capsys.readouterr().err
        assert train.main(["--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"), "--workers", "1",
                           "-q", "--arch", "mednext", "--kernel", "5", "--upkern-from", "k3"]) == 2
        assert "refused" in capsys.readouterr().err
        assert train.main(common + ["--run", "k3", "--resume", "--epochs", "2"]) == 2
        assert "refused" in capsys.readouterr().err
        import submission
        with pytest.raises(UserError, match="refused"):
            submission.Model(None, runs=["k3"], runs_dir=tmp / "runs").predictor()
        assert not marker.exists()
    finally:
        for name, data in good.items():
            (fold / name).write_bytes(data)


def test_checkpoints_are_plain_data(run):
    tmp, _, _ = run
    # what the loader accepts is exactly what torch's weights-only unpickler allows
    state = torch.load(tmp / "runs" / "k3" / "fold_0" / "checkpoint_final.pt", weights_only=True)
    assert isinstance(state["config"], dict) and json.dumps(state["config"]) and json.dumps(state["plan"])
    with pytest.raises(pickle.UnpicklingError):
        buf = tmp / "x.pt"
        _craft(buf, tmp / "never")
        torch.load(buf, weights_only=True)
    assert not (tmp / "never").exists()
