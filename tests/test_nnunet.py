"""data.nnunet: a MAMA-MIA folder out as an nnU-Net v2 raw dataset, and such a dataset in."""
import json

import nibabel as nib
import numpy as np
import pytest

import infer
import train
from conftest import write_tiny_dataset
from data import mamamia, nnunet


def test_export_writes_a_raw_dataset_on_our_folds(tmp_path):
    ds = write_tiny_dataset(tmp_path / "ds", n=7)
    out = tmp_path / "Dataset101_Tiny"
    assert nnunet.main(["export", "--data", str(ds), "--out", str(out), "--phases", "0-1", "--subtraction"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "phase_0000", "1": "phase_0001", "2": "subtraction_0001_minus_0000"}
    assert meta["labels"] == {"background": 0, "tumor": 1} and meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == 6                      # DUKE_006 is the test split
    train_ids = sorted(p.name[:-7] for p in (out / "labelsTr").iterdir())
    assert train_ids == [f"DUKE_{i:03d}" for i in range(6)]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [f"DUKE_006_{k:04d}.nii.gz" for k in range(3)]
    # the channels are the phases on the mask grid, the subtraction their difference
    case = next(c for c in mamamia.load_dataset(ds) if c.patient_id == "DUKE_002")
    image, _, affine = mamamia.load_image(case, [0, 1])
    ch = [np.asarray(nib.load(str(out / "imagesTr" / f"DUKE_002_{k:04d}.nii.gz")).dataobj) for k in range(3)]
    np.testing.assert_allclose(ch[0], image[0])
    np.testing.assert_allclose(ch[2], image[1] - image[0])
    np.testing.assert_allclose(nib.load(str(out / "labelsTr" / "DUKE_002.nii.gz")).affine, affine)
    splits = json.loads((out / "splits_final.json").read_text())
    from core.folds import kfold_splits
    assert splits == kfold_splits(train_ids) and len(splits) == 5
    assert nnunet.main(["export", "--data", str(ds), "--out", str(out)]) == 2     # never into a full folder


def test_an_nnunet_dataset_trains_and_predicts(tmp_path):
    ds = write_tiny_dataset(tmp_path / "ds", n=7)
    raw = tmp_path / "Dataset102_Tiny"
    nnunet.main(["export", "--data", str(ds), "--out", str(raw), "--phases", "0-2"])
    cases = mamamia.load_dataset(raw)
    assert [c.split for c in cases].count("test") == 1 and all(c.phase_numbers == (0, 1, 2) for c in cases)
    assert all(c.clinical.age is None for c in cases)       # no records: fairness says so, no failure
    common = ["--data", str(raw), "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    assert train.main(common + ["--epochs", "1", "--iters", "1", "--val-iters", "0", "--workers", "1", "-q",
                                "--run", "nn"]) == 0
    out = tmp_path / "pred"
    assert infer.main(["--runs", "nn", "--runs-dir", str(tmp_path / "runs"), "--data", str(raw), "--output",
                       str(out), "--no-tta", "-q"]) == 0
    assert [p.name for p in (out / "pred_segmentations").iterdir()] == ["DUKE_006.nii.gz"]


@pytest.mark.skipif(not __import__("importlib").util.find_spec("nnunetv2"), reason="nnU-Net v2 not installed")
def test_export_passes_nnunets_integrity_check(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    ds = write_tiny_dataset(tmp_path / "ds", n=7)
    out = tmp_path / "Dataset103_Tiny"
    assert nnunet.main(["export", "--data", str(ds), "--out", str(out)]) == 0
    verify_dataset_integrity(str(out), num_processes=1)          # raises on any inconsistency
    # the check is not vacuous: the same dataset with one label missing fails it
    (out / "labelsTr" / "DUKE_003.nii.gz").unlink()
    with pytest.raises(Exception):
        verify_dataset_integrity(str(out), num_processes=1)
