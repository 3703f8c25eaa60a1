"""engine.export / nets.export: TorchScript and ONNX models of a fold, and a run shared as a zip without
optimiser state."""
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


@pytest.mark.parametrize("arch", ["mednext", "unet"])
def test_onnx_matches_pytorch_and_carries_the_plan(arch, trained, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    tmp, ds = trained
    run = "r1"          # the fixture's run: the default network, a U-Net
    if arch == "mednext":
        run = "m1"
        assert train.main(["--data", str(ds), "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"),
                           "--arch", "mednext", "--epochs", "1", "--iters", "1", "--val-iters", "0",
                           "--workers", "1", "-q", "--run", run]) == 0
    out = tmp_path / "model.onnx"
    assert export.main([run, "--runs-dir", str(tmp / "runs"), "--format", "onnx", "--out", str(out)]) == 0
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    state = ckptlib.load(tmp / "runs" / run / "fold_0" / "checkpoint_final.pt")
    assert state["config"].network.name == arch
    plan = json.loads(meta["plan.json"])
    assert plan["patch_size"] == list(state["plan"].patch_size)
    assert json.loads(meta["config.json"])["network"] == state["config"].to_dict()["network"]
    model = ckptlib.build_from(state).eval()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, len(plan["channels"]), *plan["patch_size"], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(x).numpy()
    got = sess.run(None, {"image": x.numpy()})[0]      # batch 3: the batch axis is dynamic
    assert got.shape == ref.shape and float(np.abs(got - ref).max()) <= 1e-4
    # the network itself keeps its CPU memory layout outside the export
    assert model(x[:1]).is_contiguous()


def test_onnx_without_the_onnx_package_is_a_clear_error(trained, tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)
    tmp, _ = trained
    with pytest.raises(UserError, match="pip install onnx onnxruntime"):
        export.export_onnx(RunDir(tmp / "runs" / "r1"), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_without_onnxruntime_is_written_unchecked(trained, tmp_path, monkeypatch, caplog):
    pytest.importorskip("onnx")
    import sys
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    tmp, _ = trained
    out = tmp_path / "m.onnx"
    result = export.export_onnx(RunDir(tmp / "runs" / "r1"), out)
    assert result["checked"] is False and "max_abs_diff" not in result
    assert out.stat().st_size > 0 and "without comparing" in caplog.text


class _SignSwitch(torch.nn.Module):
    """Data-dependent control flow: tracing records the branch of the first example only."""

    def forward(self, x):
        return x if bool(x.sum() > 0) else -x


def test_exporters_report_the_difference_from_pytorch():
    from nets import export as netexport
    pos, neg = torch.ones(1, 1, 2, 2, 2), -torch.ones(1, 1, 2, 2, 2)
    data, diff = netexport.torchscript_bytes(_SignSwitch(), [pos, neg], {"plan.json": "{}"})
    assert diff == pytest.approx(2.0) and len(data) > 0          # the traced file always returns x
    _, same = netexport.torchscript_bytes(_SignSwitch(), [pos, 2 * pos], {})
    assert same == 0.0
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    _, diff = netexport.onnx_bytes(_SignSwitch(), [pos, neg], {"k": "v"})
    assert diff == pytest.approx(2.0)
