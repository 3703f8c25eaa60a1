"""engine.export: TorchScript model of a fold, and a run shared as a zip without optimiser state."""
import json
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch

import infer
import train
from conftest import write_tiny_dataset
from core.errors import UserError
from engine import export
from engine.runs import RunDir
from nets import checkpoint as ckptlib


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    ds = write_tiny_dataset(tmp / "ds", n=6)
    assert train.main(["--data", str(ds), "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"),
                       "--epochs", "1", "--iters", "1", "--val-iters", "0", "--workers", "1", "-q",
                       "--run", "r1"]) == 0
    return tmp, ds


def test_torchscript_matches_pytorch_and_carries_the_plan(trained, tmp_path):
    tmp, _ = trained
    out = tmp_path / "model.pt"
    assert export.main(["r1", "--runs-dir", str(tmp / "runs"), "--format", "torchscript", "--out", str(out)]) == 0
    extra = {"plan.json": "", "config.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    plan = json.loads(extra["plan.json"])
    state = ckptlib.load(tmp / "runs" / "r1" / "fold_0" / "checkpoint_final.pt")
    assert plan["patch_size"] == list(state["plan"].patch_size)
    assert json.loads(extra["config.json"])["network"] == state["config"].to_dict()["network"]
    model = ckptlib.build_from(state)
    x = torch.randn(2, len(plan["channels"]), *plan["patch_size"])
    with torch.no_grad():
        assert float((scripted(x) - model(x)).abs().max()) <= 1e-4


def test_zip_round_trip_predicts_the_same(trained, tmp_path, capsys):
    tmp, ds = trained
    archive = tmp_path / "r1.zip"
    assert export.main(["r1", "--runs-dir", str(tmp / "runs"), "--zip", str(archive)]) == 0
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        slim = torch.load(__import__("io").BytesIO(zf.read("fold_0/checkpoint_final.pt")), weights_only=True)
    assert {"config.json", "plan.json", "splits.json", "fold_0/checkpoint_final.pt"} <= names
    assert "optimizer" not in slim and "history" not in slim
    assert export.main(["--import-zip", str(archive), "--as", "r1copy", "--runs-dir", str(tmp / "runs")]) == 0
    outs = {}
    for name in ("r1", "r1copy"):
        outs[name] = tmp_path / f"pred_{name}"
        assert infer.main(["--runs", name, "--runs-dir", str(tmp / "runs"), "--data", str(ds), "--split", "all",
                           "--output", str(outs[name]), "--no-tta", "-q"]) == 0
    for f in sorted((outs["r1"] / "pred_segmentations").glob("*.nii.gz")):
        a = np.asarray(nib.load(str(f)).dataobj)
        b = np.asarray(nib.load(str(outs["r1copy"] / "pred_segmentations" / f.name)).dataobj)
        np.testing.assert_array_equal(a, b)
    # an archive with anything else in it is refused, nothing imported
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(bad, "w") as dst:
        for n in src.namelist():
            dst.writestr(n, src.read(n))
        dst.writestr("../escape.py", "print('x')")
    with pytest.raises(UserError, match="unexpected member"):
        export.import_zip(bad, RunDir(tmp / "runs" / "r1bad"))
    assert not (tmp / "runs" / "r1bad").exists()
