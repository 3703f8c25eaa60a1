"""End to end: ``train.py --task pcr`` on a small synthetic DCE dataset, then the pCR step of
``infer.py`` writes predictions.csv in the challenge format."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from engine.pcr_predict import find_pcr_model, predict_pcr
from engine.predictor import input_cases
from nets.pcr_file import load_pcr_model
import train
from conftest import write_case

REPO = Path(__file__).resolve().parent.parent
TIMES = [0, 150, 270, 390]


def write_dce_dataset(root: Path, n: int = 15, n_test: int = 3, shape=(20, 20, 10), spacing=(1.0, 1.0, 2.0),
                      seed: int = 0) -> Path:
    """MAMA-MIA layout; every third case has pCR and a washout lesion, the others a persistent
    one; lesion radius varies. The last ``n_test`` cases form the test split."""
    rng = np.random.default_rng(seed)
    aff = np.diag(list(spacing) + [1.0])
    ids = [f"DUKE_{i + 1:03d}" for i in range(n)]
    g = np.indices(shape).astype(float)
    for i, pid in enumerate(ids):
        pcr = int(i % 3 == 0)
        r = 3.0 + (i % 4) * 0.5
        c = [s / 2 + rng.uniform(-1, 1) for s in shape]
        blob = sum(((g[a] - c[a]) * spacing[a] / spacing[0]) ** 2 for a in range(3)) <= r ** 2
        curve = [0, 1.0, 0.8, 0.65] if pcr else [0, 0.6, 0.8, 0.95]
        write_case(root, pid, [300 + rng.normal(0, 8, shape) + blob * 500 * e for e in curve], blob, aff, {
            "patient_id": pid, "clinical_data": {"age": 35 + 2 * i, "menopausal_status": "pre" if i < 8 else "post"},
            "primary_lesion": {"pcr": pcr, "tumor_subtype": "her2_enriched" if pcr else "luminal"},
            "imaging_data": {"dataset": "DUKE", "acquisition_times": TIMES}})
    train_ids, test_ids = ids[:-n_test], ids[-n_test:]
    rows = [f"{train_ids[k] if k < len(train_ids) else ''},{test_ids[k] if k < len(test_ids) else ''}"
            for k in range(len(train_ids))]
    (root / "train_test_splits.csv").write_text("train_split,test_split\n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("pcr_cli")
    root = write_dce_dataset(base / "data")
    runs = base / "runs"
    # two folds keep the test fast; the slow round trip below trains all five
    rc = train.main(["--task", "pcr", "--data", str(root), "--fold", "0,1", "--runs-dir", str(runs),
                     "--cache-dir", str(base / "cache"), "--workers", "1", "-q"])
    assert rc == 0
    return base, root, runs


def test_train_writes_the_run(trained):
    base, root, runs = trained
    run = runs / "pcr"
    for f in ("pcr_model.pt", "report.json", "oof_predictions.csv", "splits.json"):
        assert (run / f).exists(), f
    report = json.loads((run / "report.json").read_text())
    assert report["cases"] == 12 and report["positives"] == 4
    assert set(report["metrics"]) == {"snn", "logreg", "rf"}
    with open(run / "oof_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    validated = [r for r in rows if r["fold"] in ("0", "1")]
    for m in report["metrics"].values():
        assert 0 <= m["balanced_accuracy"] <= 1 and m["temperature"] > 0 and m["cross_fitted"]
        assert m["n"] == len(validated)
    # the washout/persistent split is easy: out-of-fold AUC of the network well above chance
    assert report["metrics"]["snn"]["auc"] > 0.8
    assert report["oracle"] is None                       # not a phantom dataset
    assert len(rows) == 12 and {r["fold"] for r in rows} == {"0", "1", "2", "3", "4"}
    assert all(np.isfinite(float(r["logit_snn"])) == (r in validated) for r in rows)
    assert set(report["features"]["per_fold"]) == {"0", "1"}
    # the segmentation folds: kfold_splits over the training ids
    splits = json.loads((run / "splits.json").read_text())
    assert sorted(sum((s["val"] for s in splits), [])) == sorted(r["patient_id"] for r in rows)
    # features were cached
    assert (base / "cache" / "data-radiomics" / "features.csv").exists()


def _predict(root, runs, out, pcr_run=None):
    cases = input_cases(str(root))
    seg = out / "pred_segmentations"
    seg.mkdir(parents=True, exist_ok=True)
    for c in cases[:-1]:   # the last case has no predicted mask (its segmentation "failed")
        shutil.copy(c.mask_path, seg / f"{c.patient_id}.nii.gz")
    predict_pcr(cases, out, find_pcr_model(pcr_run, runs), progress=False)
    with open(out / "predictions.csv") as fh:
        return cases, list(csv.reader(fh))


def test_infer_writes_predictions_csv(trained, capsys):
    base, root, runs = trained
    cases, rows = _predict(root, runs, base / "out")
    assert rows[0] == ["patient_id", "pcr", "score"]
    assert [r[0] for r in rows[1:]] == [c.patient_id for c in cases]
    assert len(rows) == 1 + 3
    model, _ = load_pcr_model(runs / "pcr" / "pcr_model.pt")
    for _, label, score in rows[1:]:
        s = float(score)
        assert 0.0 <= s <= 1.0 and label in ("0", "1")
        assert int(label) == int(s >= model.threshold)
    assert "imputed image features" in capsys.readouterr().out
    # test cases 13 (pCR, washout) and 14 (no pCR): the ranking follows the kinetics
    scores = {r[0]: float(r[2]) for r in rows[1:]}
    assert scores["DUKE_013"] > scores["DUKE_014"]


def test_infer_named_run_and_errors(trained):
    base, root, runs = trained
    _, rows = _predict(root, runs, base / "out2", "pcr")
    assert len(rows) == 4
    with pytest.raises(UserError, match="not found"):
        _predict(root, runs, base / "out3", "nope")
    with pytest.raises(UserError, match="no trained pCR model"):
        _predict(root, base / "empty_runs", base / "out4")


@pytest.mark.slow
def test_full_command_line_round_trip(tmp_path):
    """``train.py --task seg`` (tiny), ``train.py --task pcr``, then ``infer.py --pcr``."""
    root = write_dce_dataset(tmp_path / "data")
    runs, out = tmp_path / "runs", tmp_path / "out"
    common = ["--data", str(root), "--runs-dir", str(runs), "--cache-dir", str(tmp_path / "cache"), "-q"]
    env_py = [sys.executable]
    subprocess.run(env_py + [str(REPO / "train.py"), "--task", "seg", "--run", "seg", "--epochs", "1", "--iters", "2",
                             "--val-iters", "1", "--workers", "0", *common], check=True, cwd=REPO)
    subprocess.run(env_py + [str(REPO / "train.py"), "--task", "pcr", "--fold", "all", "--workers", "1", *common],
                   check=True, cwd=REPO)
    subprocess.run(env_py + [str(REPO / "infer.py"), "--data", str(root), "--runs-dir", str(runs), "--runs", "seg",
                             "--output", str(out), "--pcr", "--no-tta", "-q"], check=True, cwd=REPO)
    with open(out / "predictions.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["patient_id", "pcr", "score"] and len(rows) == 4


def test_infer_masks_dir_predicts_without_segmenting(trained, tmp_path):
    """``infer.py --pcr --masks DIR``: no segmentation run exists in this runs folder, so any
    attempt to segment would fail; predictions.csv goes to --output, the masks stay untouched."""
    import infer
    base, root, runs = trained
    masks = tmp_path / "masks"
    masks.mkdir()
    cases = input_cases(str(root))
    for c in cases:
        shutil.copy(c.mask_path, masks / f"{c.patient_id}.nii.gz")
    before = sorted(p.name for p in masks.iterdir())
    out = tmp_path / "out"
    rc = infer.main(["--data", str(root), "--runs-dir", str(runs), "--pcr", "--masks", str(masks),
                     "--output", str(out), "-q"])
    assert rc == 0 and sorted(p.name for p in masks.iterdir()) == before
    with open(out / "predictions.csv") as fh:
        rows = list(csv.reader(fh))
    assert [r[0] for r in rows[1:]] == [c.patient_id for c in cases]
    # the same numbers as the library call on the same masks
    _, ref = _predict(root, runs, tmp_path / "ref")
    assert rows[1][2] == ref[1][2]
    with pytest.raises(UserError, match="add --pcr"):
        infer.run(infer.parse_args(["--masks", str(masks)]))
    with pytest.raises(UserError, match="no mask named after any"):
        infer.run(infer.parse_args(["--data", str(root), "--runs-dir", str(runs), "--pcr", "--masks",
                                    str(tmp_path / "out")]))


def test_masks_predicted_says_what_it_needs(trained, tmp_path):
    base, root, runs = trained
    pred = tmp_path / "pred" / "pred_segmentations"
    pred.mkdir(parents=True)
    shutil.copy(input_cases(str(root), split="train")[0].mask_path, pred / "DUKE_001.nii.gz")
    args = ["--task", "pcr", "--data", str(root), "--masks", "predicted", "--pred", str(pred.parent),
            "--runs-dir", str(tmp_path / "runs"), "-q"]
    with pytest.raises(UserError, match=r"no predicted mask for 11 of the 12 labelled training case\(s\).*"
                                        r"infer.py --ensemble --data .* --split train") as info:
        train.train_pcr(train.parse_args(args))
    assert "\n" not in str(info.value) and not (tmp_path / "runs").exists()


def test_implausible_mask_volume_is_flagged_not_extracted(trained, tmp_path, caplog):
    """A whole-image mask: no pyradiomics, NaN features, valid 0 and a note; the bound by hand."""
    import nibabel as nib
    from data import radiomics
    base, root, _ = trained
    case = input_cases(str(root))[0]
    img = nib.load(str(case.mask_path))
    whole = tmp_path / "whole.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(img.shape, np.uint8), img.affine), str(whole))
    table = radiomics.extract_features([case], {case.patient_id: whole}, "predicted", workers=0, progress=False)
    assert not table.valid[0] and np.isnan(table.values).all()
    assert table.notes[0].startswith("implausible tumour volume: 8 ml, 100% of the image")   # 20*20*10 voxels of 2 mm^3
    # by hand: 500 ml = 500,000 mm^3; 1 mm^3 voxels -> 500,000 voxels is the bound, the fraction 25 %
    assert radiomics.implausible_volume(500_000, (1, 1, 1), 10**7) == ""
    assert radiomics.implausible_volume(500_001, (1, 1, 1), 10**7).startswith("implausible")
    assert radiomics.implausible_volume(26, (1, 1, 1), 100).startswith("implausible")
    assert radiomics.implausible_volume(25, (1, 1, 1), 100) == ""
