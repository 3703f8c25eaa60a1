"""infer.py: geometry restoration, ensembles, postprocessing, bad input, the submission wrapper."""
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import infer
import train
from conftest import write_tiny_dataset
from core import planner
from core.errors import UserError
from core.metrics import dice
from data import cache, mamamia
from data.preprocess import body_box, preprocess
from engine import predictor as P
from engine.outputs import OutputFolder
from engine.runs import RunDir


def _predict(case, members, prepared, tta=(), **kw):
    return P.Predictor(members, torch.device("cpu"), P.PredictSettings(tta_axes=tta, window_batch=1, **kw)
                       ).probability(case, prepared)


class EnhancementNet(nn.Module):
    """Foreground logit = scaled (phase 1 - phase 0): a stand-in 'model' that finds the blob."""

    def __init__(self, scale=5.0, bias=-10.0):
        super().__init__()
        self.scale, self.bias = scale, bias

    def forward(self, x):
        d = (x[:, 1:2] - x[:, 0:1]) * self.scale + self.bias
        return torch.cat([-d, d], 1)


class ConstNet(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.logit = float(np.log(p / (1 - p)))

    def forward(self, x):
        z = torch.zeros_like(x[:, :1])
        return torch.cat([z, z + self.logit], 1)


def _plan(cases, spacing=(1.0, 1.0, 1.0)):
    fp = cache.compute_fingerprint(cases, [0, 1, 2], workers=1, progress=False)
    return planner.make_plan(fp, channels=(0, 1, 2), spacing=spacing, budget="cpu", archs=("unet",))


def _oblique_dataset(root, n=2):
    """Phases with a sagittal, oblique direction, anisotropic spacing and odd sizes."""
    write_tiny_dataset(root, n=n, shape=(23, 21, 11), spacing=(0.8, 0.9, 2.3))
    theta = np.deg2rad(20)
    rot = np.array([[0, 0, 1], [np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0]])
    aff = np.eye(4)
    aff[:3, :3] = rot * np.array([0.8, 0.9, 2.3])
    aff[:3, 3] = [-40.5, 12.25, 7.0]
    for f in list(root.rglob("*.nii.gz")):
        img = nib.load(str(f))
        out = nib.Nifti1Image(np.asarray(img.dataobj), aff)
        out.set_qform(aff, code=1)
        out.set_sform(aff, code=1)
        nib.save(out, str(f))
    return root


def test_restored_mask_has_input_geometry(tmp_path):
    root = _oblique_dataset(tmp_path / "ds")
    cases = mamamia.load_dataset(root)
    plan = _plan(cases)
    members = [P.Member("enh", EnhancementNet().eval(), plan, Path("x"))]
    out = tmp_path / "out"
    res = P.Predictor(members, torch.device("cpu"), P.PredictSettings(tta_axes=(0, 1, 2))).run(
        cases, out, progress=False)
    assert res["errors"] == {}
    for c in cases:
        ref = nib.load(str(c.phase_path(1)))
        pred = nib.load(str(out / "pred_segmentations" / f"{c.patient_id}.nii.gz"))
        assert pred.shape == ref.shape and pred.get_data_dtype() == np.uint8
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
        np.testing.assert_allclose(pred.header.get_zooms(), ref.header.get_zooms(), atol=1e-6)
        data = np.asarray(pred.dataobj)
        assert set(np.unique(data)) <= {0, 1}
        gt = np.asarray(nib.load(str(c.mask_path)).dataobj)
        assert dice(data, gt) > 0.8
    # the masks of one case in memory equal the written ones
    mask, _ = P.Predictor(members, torch.device("cpu"), P.PredictSettings(tta_axes=(0, 1, 2))).predict(cases[0])
    np.testing.assert_array_equal(mask, np.asarray(nib.load(str(out / "pred_segmentations" /
                                                              f"{cases[0].patient_id}.nii.gz")).dataobj))


def test_ensemble_averages_probabilities(tmp_path):
    root = write_tiny_dataset(tmp_path / "ds", n=1)
    case = mamamia.load_dataset(root)[0]
    plan = _plan([case])
    prepared = preprocess(case, plan, with_mask=False)
    m = lambda p: P.Member(str(p), ConstNet(p).eval(), plan, Path("x"))  # noqa: E731
    prob = _predict(case, [m(0.2), m(0.5)], prepared, skip_air=False)
    box = prepared[2].crop_box
    inside = prob[tuple(slice(a, b) for a, b in box)]
    np.testing.assert_allclose(inside, 0.35, atol=1e-5)
    assert prob.shape == prepared[2].original_shape
    # outside the nonzero crop the prediction is background
    assert prob[0, 0, 0] == 0.0
    # nnU-Net's way: logits are averaged, so the ensemble is softmax(mean logit), not mean softmax
    prob = _predict(case, [m(0.2), m(0.5)], prepared, skip_air=False, average="logits")
    inside = prob[tuple(slice(a, b) for a, b in box)]
    expected = 1 / (1 + np.exp(-(np.log(0.2 / 0.8) + np.log(0.5 / 0.5)) / 2))
    np.testing.assert_allclose(inside, expected, atol=1e-5)
    assert prob.shape == prepared[2].original_shape and prob[0, 0, 0] < 1e-6


def test_postprocess_lcc_and_breast_box():
    prob = np.zeros((10, 10, 10), np.float32)
    prob[1:4, 1:4, 1:4] = 0.9   # 27 voxels
    prob[6:8, 6:8, 6:8] = 0.9   # 8 voxels
    case = mamamia.case_from_paths("DUKE_001", ["a", "b"], {
        "primary_lesion": {"breast_coordinates": {"x_min": 0, "x_max": 10, "y_min": 0, "y_max": 10,
                                                  "z_min": 5, "z_max": 10}}})
    m = P.postprocess(prob, case, lcc=True, breast_box=False)
    assert m.sum() == 27 and m[2, 2, 2] == 1
    assert P.postprocess(prob, case, lcc=False, breast_box=False).sum() == 35
    # JSON z indexes SimpleITK axis 0 = our axis 0: the box keeps rows 5..9 of axis 0 only
    boxed = P.postprocess(prob, case, lcc=True, breast_box=True)
    assert boxed.sum() == 8 and boxed[7, 7, 7] == 1
    assert P.postprocess(np.zeros_like(prob), case, lcc=True, breast_box=True).sum() == 0


def test_box_on_preprocessed_grid():
    from data.preprocess import CaseMeta
    meta = CaseMeta("X", (100, 100, 50), (0.5, 0.5, 2.0), tuple(map(tuple, np.eye(4))),
                    ((10, 90), (0, 100), (0, 50)), (80, 100, 50), (1, 1, 1), (40, 50, 100))
    box = P.box_on_preprocessed((slice(20, 40), slice(10, 31), slice(5, 6)), meta)
    assert box == (slice(5, 15), slice(5, 16), slice(10, 12))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infer")
    ds = write_tiny_dataset(tmp / "ds", n=6)
    train.main(["--data", str(ds), "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"),
                "--epochs", "1", "--iters", "1", "--val-iters", "0", "--workers", "1", "-q", "--run", "r1"])
    return tmp, ds


def test_cli_end_to_end_and_bad_case(trained):
    tmp, ds = trained
    out = tmp / "pred"
    code = infer.main(["--ensemble", "--runs-dir", str(tmp / "runs"), "--data", str(ds), "--split", "all",
                       "--output", str(out), "--no-tta", "-q"])
    assert code == 0
    manifest = json.loads((out / "predictions_manifest.json").read_text())
    assert manifest["runs"][0].endswith("r1") and len(manifest["cases"]) == 6
    assert len(list((out / "pred_segmentations").glob("*.nii.gz"))) == 6
    # corrupt one case's phase: that case fails with a named error, the others are still written
    bad = tmp / "ds_bad"
    shutil.copytree(ds, bad)
    p = bad / "images" / "DUKE_002" / "duke_002_0002.nii.gz"
    p.write_bytes(p.read_bytes()[:200])
    (bad / "images" / "DUKE_003" / "duke_003_0001.nii.gz").unlink()
    out2 = tmp / "pred_bad"
    code = infer.main(["--runs", "r1", "--runs-dir", str(tmp / "runs"), "--data", str(bad), "--split", "all",
                       "--output", str(out2), "--no-tta", "-q"])
    assert code == 1
    m2 = json.loads((out2 / "predictions_manifest.json").read_text())
    assert set(m2["errors"]) == {"DUKE_002", "DUKE_003"}
    assert "duke_002_0002" in m2["errors"]["DUKE_002"] and "0001" in m2["errors"]["DUKE_003"]
    assert len(list((out2 / "pred_segmentations").glob("*.nii.gz"))) == 4


def test_rerun_completes_an_interrupted_prediction_and_refuses_other_models(trained, capsys):
    tmp, ds = trained
    out = tmp / "pred_resume"
    common = ["--runs-dir", str(tmp / "runs"), "--data", str(ds), "--split", "all", "--output", str(out), "-q"]
    assert infer.main(common + ["--runs", "r1", "--no-tta"]) == 0
    seg = out / "pred_segmentations"
    kept = seg / "DUKE_001.nii.gz"
    stamp = kept.stat().st_mtime_ns
    (seg / "DUKE_004.nii.gz").unlink()                       # as if interrupted before this case
    (seg / ".DUKE_004.nii.gz.abc.tmp.nii.gz").write_bytes(b"half")  # and mid-write
    assert infer.main(common + ["--runs", "r1", "--no-tta"]) == 0
    assert (seg / "DUKE_004.nii.gz").exists() and kept.stat().st_mtime_ns == stamp
    assert not list(seg.glob(".*.tmp*"))
    assert "5 case(s) already predicted" in capsys.readouterr().out
    # other settings into the same folder: refused, nothing mixed
    assert infer.main(common + ["--runs", "r1", "--tta-axes", "0"]) == 2
    assert "other models or settings" in capsys.readouterr().err
    assert kept.stat().st_mtime_ns == stamp
    man = json.loads((out / "predictions_manifest.json").read_text())
    assert set(man["files"]) == {f"DUKE_{i:03d}" for i in range(6)}
    assert man["files"]["DUKE_001"]["models"][0]["path"].endswith("checkpoint_final.pt")


def test_write_failures_are_reported_with_path_and_errno(trained, capsys, monkeypatch):
    """A full disk while writing one mask and then the manifest: the per-case errors are still
    reported, with the path and errno; no partial or temporary file is left."""
    import errno

    import core.atomic as atomic
    tmp, ds = trained
    out = tmp / "pred_full"
    real = atomic.os.replace

    def full(src, dst):
        if str(dst).endswith(("DUKE_002.nii.gz", "predictions_manifest.json")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full)
    code = infer.main(["--runs", "r1", "--runs-dir", str(tmp / "runs"), "--data", str(ds), "--split", "all",
                       "--output", str(out), "--no-tta", "-q"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "DUKE_002" in printed and "No space left on device" in printed
    assert "predictions_manifest.json" in printed
    seg = out / "pred_segmentations"
    assert not (seg / "DUKE_002.nii.gz").exists() and len(list(seg.glob("*.nii.gz"))) == 5
    assert not [p for p in out.rglob(".*") if ".tmp" in p.name] and not (out / "predictions_manifest.json").exists()
    assert not (out / ".lock").exists()


def test_one_writer_per_output_folder(tmp_path):
    import os
    import subprocess
    import sys
    out = tmp_path / "out"
    a = OutputFolder(out).lock()
    with pytest.raises(UserError, match="another prediction is writing here"):
        OutputFolder(out).lock()
    a.unlock()
    # a lock left by a process that died is stale and taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    (out / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    b = OutputFolder(out).lock()
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    b.unlock()
    assert not (out / ".lock").exists()


def test_ensemble_refuses_mixed_preprocessing(trained):
    tmp, ds = trained
    other = tmp / "runs" / "r2"
    shutil.copytree(tmp / "runs" / "r1", other)
    ck = other / "fold_0" / "checkpoint_final.pt"
    state = torch.load(ck, weights_only=True)
    state["plan"]["target_spacing"] = [2.0, 2.0, 2.0]
    torch.save(state, ck)
    with pytest.raises(UserError, match="different preprocessing"):
        P.load_members([RunDir(tmp / "runs" / "r1"), RunDir(other)], True, "final", torch.device("cpu"))


class StandInDataset:
    """What the challenge platform hands to Model(dataset)."""

    def __init__(self, root):
        self.cases = {c.patient_id: c for c in mamamia.load_dataset(root)}

    def get_patient_id_list(self):
        return list(self.cases)

    def get_dce_mri_path_list(self, pid):
        return [str(p) for p in self.cases[pid].phase_paths]

    def read_json_file(self, pid):
        return json.loads(self.cases[pid].json_path.read_text())


def test_submission_wrapper(trained, tmp_path):
    import submission
    tmp, ds = trained
    model = submission.Model(StandInDataset(ds), runs_dir=tmp / "runs", runs=["r1"], tta_axes=())
    seg = model.predict_segmentation(tmp_path / "sub")
    files = sorted(p.name for p in seg.glob("*.nii.gz"))
    assert files == [f"DUKE_{i:03d}.nii.gz" for i in range(6)]
    # exactly the infer.py code path: identical masks
    ref = tmp_path / "ref"
    infer.main(["--runs", "r1", "--runs-dir", str(tmp / "runs"), "--data", str(ds), "--split", "all",
                "--output", str(ref), "--no-tta", "-q"])
    for f in files:
        a = np.asarray(nib.load(str(seg / f)).dataobj)
        b = np.asarray(nib.load(str(ref / "pred_segmentations" / f)).dataobj)
        np.testing.assert_array_equal(a, b)


def test_skipping_air_windows_leaves_masks_unchanged(tmp_path):
    root = write_tiny_dataset(tmp_path / "ds", n=2, shape=(60, 40, 20), spacing=(1.0, 1.0, 1.0))
    for f in root.glob("images/*/*.nii.gz"):  # noisy air around the body, as in real scans
        img = nib.load(str(f))
        a = np.asarray(img.dataobj).astype(np.int16)
        a[a == 0] = np.random.default_rng(0).integers(1, 6, size=int((a == 0).sum()))
        a[:, :10] = np.random.default_rng(1).integers(1, 6, size=a[:, :10].shape)  # a slab of air
        nib.save(nib.Nifti1Image(a, img.affine), str(f))
    cases = mamamia.load_dataset(root)
    plan = _plan(cases)
    members = [P.Member("enh", EnhancementNet(bias=-2.5).eval(), plan, Path("x"))]
    for c in cases:
        prepared = preprocess(c, plan, with_mask=False)
        full = _predict(c, members, prepared, skip_air=False)
        fast = _predict(c, members, prepared, skip_air=True)
        a, b = full > 0.5, fast > 0.5
        assert body_box(prepared[0]) is not None  # something is skipped
        assert a.sum() > 0 and dice(a, b) >= 0.999


def test_submission_classification(tmp_path):
    import csv

    import submission
    ds = write_tiny_dataset(tmp_path / "ds", n=14)
    common = ["--data", str(ds), "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "-q"]
    train.main(common + ["--run", "seg", "--epochs", "1", "--iters", "1", "--val-iters", "0", "--workers", "1"])
    train.main(common + ["--task", "pcr", "--run", "pcr_sub", "--fold", "0"])
    model = submission.Model(StandInDataset(ds), runs_dir=tmp_path / "runs", runs=["seg"], tta_axes=(),
                             pcr_run="pcr_sub")
    rows = model.predict_classification(tmp_path / "sub")
    assert sorted(r["patient_id"] for r in rows) == [f"DUKE_{i:03d}" for i in range(14)]
    assert all(r["pcr"] in (0, 1) and 0 <= r["score"] <= 1 for r in rows)
    with open(tmp_path / "sub" / "predictions.csv") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["patient_id", "pcr", "score"] and len(table) == 14
    assert (tmp_path / "sub" / "pred_segmentations" / "DUKE_000.nii.gz").exists()


def test_lcc_only_when_cross_validation_says_so(tmp_path):
    run = tmp_path / "run"
    for k, (raw, lcc) in enumerate([(0.6, 0.5), (0.7, 0.65)]):
        (run / f"fold_{k}").mkdir(parents=True)
        (run / f"fold_{k}" / "validation.json").write_text(json.dumps({"mean_dice": raw, "mean_dice_lcc": lcc}))
    assert P.lcc_helps([RunDir(run)]) is False
    (run / "fold_1" / "validation.json").write_text(json.dumps({"mean_dice": 0.7, "mean_dice_lcc": 0.9}))
    assert P.lcc_helps([RunDir(run)]) is True   # mean 0.70 >= 0.65
    assert P.lcc_helps([RunDir(tmp_path / "empty")]) is True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inference_matches_cpu(trained):
    """infer.py on CUDA (fp16 autocast, batched windows) writes the masks the CPU path writes."""
    tmp, ds = trained
    outs = {}
    for device in ("cpu", "cuda"):
        outs[device] = tmp / f"pred_{device}"
        assert infer.main(["--runs-dir", str(tmp / "runs"), "--data", str(ds), "--split", "all", "--device",
                           device, "--output", str(outs[device]), "--tta-axes", "0", "-q"]) == 0
    for f in sorted((outs["cpu"] / "pred_segmentations").glob("*.nii.gz")):
        a = np.asarray(nib.load(f).dataobj)
        b = np.asarray(nib.load(outs["cuda"] / "pred_segmentations" / f.name).dataobj)
        assert a.shape == b.shape and np.sum(a != b) <= 0.01 * max(1, a.sum() + b.sum()), f.name


def test_outputs_keep_ids_as_given_and_refuse_ids_that_escape(trained, tmp_path):
    """The official scorer opens f"{patient_id}.nii.gz": a lower-case case folder gives a
    lower-case output name; a platform id with a path in it is refused, nothing written."""
    import submission
    tmp, ds = trained
    lower = tmp_path / "lower"
    shutil.copytree(ds, lower)
    (lower / "images" / "DUKE_001").rename(lower / "images" / "duke_001")
    out = tmp_path / "pred"
    assert infer.main(["--runs", "r1", "--runs-dir", str(tmp / "runs"), "--data", str(lower), "--split", "all",
                       "--output", str(out), "--no-tta", "-q"]) == 0
    names = sorted(p.name for p in (out / "pred_segmentations").glob("*.nii.gz"))
    assert "duke_001.nii.gz" in names and "DUKE_001.nii.gz" not in names and len(names) == 6

    class Hostile(StandInDataset):
        def get_patient_id_list(self):
            return ["../../../escaped"]

        def get_dce_mri_path_list(self, pid):
            return super().get_dce_mri_path_list("DUKE_000")

        def read_json_file(self, pid):
            return super().read_json_file("DUKE_000")

    model = submission.Model(Hostile(ds), runs_dir=tmp / "runs", runs=["r1"], tta_axes=())
    with pytest.raises(ValueError, match="escaped"):
        model.predict_segmentation(tmp_path / "a" / "b" / "sub")
    assert not list(tmp_path.rglob("escaped*"))


def test_flat_nnunet_style_folder_keeps_case_names(trained, tmp_path, capsys):
    """``--input`` with ``<case>_000k.nii.gz`` (and ``.nii``) files directly in the folder, as an
    nnU-Net imagesTs folder holds them: outputs are named after the cases exactly."""
    tmp, ds = trained
    flat = tmp_path / "imagesTs"
    flat.mkdir()
    for src, name, ext in (("DUKE_000", "case1", ".nii.gz"), ("DUKE_001", "patientA", ".nii")):
        for k, f in enumerate(sorted((ds / "images" / src).glob("*.nii.gz"))):
            img = nib.load(str(f))
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), str(flat / f"{name}_{k:04d}{ext}"))
    (flat / "notes.txt").write_text("not an image")
    out = tmp_path / "pred"
    assert infer.main(["--runs", "r1", "--runs-dir", str(tmp / "runs"), "--input", str(flat), "--output", str(out),
                       "--no-tta", "-q"]) == 0
    assert sorted(p.name for p in (out / "pred_segmentations").iterdir()) == ["case1.nii.gz", "patientA.nii.gz"]
    ref = nib.load(str(flat / "patientA_0001.nii"))
    pred = nib.load(str(out / "pred_segmentations" / "patientA.nii.gz"))
    assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
    # nothing usable: one line that says what the folder holds
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "scan.dcm").write_bytes(b"")
    (empty / "sub").mkdir()
    assert infer.main(["--runs", "r1", "--runs-dir", str(tmp / "runs"), "--input", str(empty), "--output",
                       str(tmp_path / "p2"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "no case found" in err and "scan.dcm" in err and "sub/" in err and "Traceback" not in err


@pytest.mark.slow
def test_torchrun_shards_cases_and_merges_the_manifest(trained, tmp_path):
    """Two CPU processes (gloo): every case written once, the same masks as one process, one
    manifest listing all of them."""
    import os
    import subprocess
    import sys
    tmp, ds = trained
    repo = Path(__file__).resolve().parents[1]
    single, double = tmp_path / "one", tmp_path / "two"
    common = ["--runs-dir", str(tmp / "runs"), "--data", str(ds), "--split", "all", "--no-tta", "-q"]
    assert infer.main(common + ["--output", str(single)]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_port=29533", str(repo / "infer.py"), *common, "--output", str(double)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=repo)
    assert res.returncode == 0, res.stderr[-3000:]
    names = sorted(p.name for p in (double / "pred_segmentations").iterdir())
    assert names == sorted(p.name for p in (single / "pred_segmentations").iterdir()) and len(names) == 6
    for n in names:
        np.testing.assert_array_equal(np.asarray(nib.load(str(single / "pred_segmentations" / n)).dataobj),
                                      np.asarray(nib.load(str(double / "pred_segmentations" / n)).dataobj))
    man = json.loads((double / "predictions_manifest.json").read_text())
    assert set(man["files"]) == {n[:-7] for n in names} and man["settings"]["processes"] == 2
    assert not list(double.glob(".rank*")) and not (double / ".lock").exists()


def test_centers_narrow_the_cases_to_predict_and_to_score(tmp_path, capsys):
    import eval as evaluate
    root = write_tiny_dataset(tmp_path / "ds", n=3)
    assert [c.patient_id for c in P.input_cases(str(root), split="all", centers=["duke"])] == \
        ["DUKE_000", "DUKE_001", "DUKE_002"]
    assert [c.patient_id for c in P.input_cases(str(root), split="test", centers=["DUKE"])] == ["DUKE_002"]
    with pytest.raises(UserError, match="--centers"):
        P.input_cases(str(root), split="all", centers=["NACT"])
    (tmp_path / "pred" / "pred_segmentations").mkdir(parents=True)
    assert evaluate.main(["--pred", str(tmp_path / "pred"), "--data", str(root), "--split", "all",
                          "--centers", "NACT", "--quiet"]) == 2
    assert "of center(s) NACT" in capsys.readouterr().err
