import csv
import json
import math
import os

import nibabel as nib
import numpy as np
import pytest

import eval as ev
from core.errors import UserError
from engine import evaluation as E
from conftest import write_tiny_dataset
from core.metrics import case_metrics
from data import plots

SPACING = (1.5, 1.5, 2.5)  # write_tiny_dataset default
# (age, raw menopausal string, density, pcr, center) per case DUKE_000..DUKE_004
CLINICAL = [(35, "pre", "a", 0, "DUKE"), (45, "peri (perimenopausal)", "b", 1, "DUKE"),
            (55, "post", None, 1, "DUKE"), (65, None, "a", None, "NACT"), (75, "POST", "b", 0, "NACT")]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cohort(tmp_path):
    """5 cases with varied subgroups and hand-made predictions: 000 perfect, 001 missing,
    002 shifted 2 voxels along x, 003 shifted 1 along y (lower-case file name), 004 perfect but
    on a 2x finer grid (a grid mismatch)."""
    root = write_tiny_dataset(tmp_path / "data", n=5)
    for i, (age, meno, dens, pcr, center) in enumerate(CLINICAL):
        (root / "patient_info_files" / f"duke_{i:03d}.json").write_text(json.dumps({
            "patient_id": f"DUKE_{i:03d}",
            "clinical_data": {"age": age, "menopausal_status": meno, "breast_density": dens},
            "primary_lesion": {"pcr": pcr}, "imaging_data": {"dataset": center}}))
    gts = [np.asarray(nib.load(str(root / "segmentations" / "expert" / f"duke_{i:03d}.nii.gz")).dataobj)
           for i in range(5)]
    pred = tmp_path / "pred"
    seg = pred / "pred_segmentations"
    seg.mkdir(parents=True)
    aff = np.diag(list(SPACING) + [1.0])
    save = lambda a, name, affine=aff: nib.save(nib.Nifti1Image(a.astype(np.uint8), affine),  # noqa: E731
                                                str(seg / name))
    preds = {0: gts[0], 2: np.roll(gts[2], 2, axis=0), 3: np.roll(gts[3], 1, axis=1)}
    save(preds[0], "DUKE_000.nii.gz")
    save(preds[2], "DUKE_002.nii.gz")
    save(preds[3], "duke_003.nii.gz")
    fine = gts[4].repeat(2, 0).repeat(2, 1).repeat(2, 2)  # fine voxel 2i has its centre on voxel i
    save(fine, "DUKE_004.nii.gz", np.diag([s / 2 for s in SPACING] + [1.0]))
    return root, pred, gts, preds


def read_rows(path):
    with open(path, newline="") as fh:
        return {r["patient_id"]: r for r in csv.DictReader(fh)}


def run(capsys, *args):
    rc = ev.main(["--split", "all", "--quiet", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_seg_cli_values_and_aggregates(cohort, tmp_path, capsys):
    root, pred, gts, preds = cohort
    out = tmp_path / "ev"
    rc, stdout, stderr = run(capsys, "--pred", pred, "--data", root, "--out", out, "--no-plots",
                             "--subgroups", "age,menopause,density")
    # the grid mismatch makes DUKE_004 a failed case, named, counted like a missing prediction
    assert rc == 1
    assert "DUKE_004" in stderr and "--resample-pred" in stderr
    assert "DUKE_001" in stderr  # the missing-prediction warning
    rows = read_rows(out / "per_case.csv")
    assert sorted(rows) == ["DUKE_000", "DUKE_001", "DUKE_002", "DUKE_003", "DUKE_004"]
    assert rows["DUKE_004"]["prediction"] == "failed"

    # per-case values equal core.metrics called directly (missing or failed -> empty mask)
    for i in range(5):
        want = case_metrics(preds.get(i, np.zeros_like(gts[i])), gts[i], SPACING)
        r = rows[f"DUKE_{i:03d}"]
        for k, v in want.items():
            assert float(r[k]) == pytest.approx(v), (i, k)
    assert float(rows["DUKE_000"]["dice"]) == 1.0 and float(rows["DUKE_000"]["norm_hd"]) == 0.0
    assert float(rows["DUKE_001"]["dice"]) == 0.0 and float(rows["DUKE_001"]["norm_hd"]) == 1.0
    assert rows["DUKE_001"]["hd95"] == "inf" and rows["DUKE_001"]["prediction"] == "missing"
    assert 0 < float(rows["DUKE_002"]["dice"]) < 1
    # the raw menopausal string goes through the official grouping ("peri ..." -> pre)
    assert [rows[f"DUKE_{i:03d}"]["group_menopausal_status"] for i in range(4)] == \
        ["pre", "pre", "post", "unknown"]

    s = json.loads((out / "summary.json").read_text())
    assert s["missing_predictions"] == ["DUKE_001"]
    assert list(s["failed"]) == ["DUKE_004"]
    d = np.array([float(rows[f"DUKE_{i:03d}"]["dice"]) for i in range(5)])
    h = np.array([float(rows[f"DUKE_{i:03d}"]["norm_hd"]) for i in range(5)])
    perf = 0.5 * (d.mean() + 1 - h.mean())

    def fair_v(groups):  # groups: lists of case indices
        md, mh = [d[g].mean() for g in groups], [h[g].mean() for g in groups]
        return 1 - 0.5 * ((max(md) - min(md)) + (max(mh) - min(mh)))

    fv = {"age": fair_v([[0], [1], [2], [3], [4]]),            # 35, 45, 55, 65, 75: one bin each
          "menopausal_status": fair_v([[0, 1], [2, 4], [3]]),  # pre, post, unknown
          "breast_density": fair_v([[0, 3], [1, 4]])}          # a, b; DUKE_002 missing -> excluded
    o = s["official"]
    assert o["n_cases"] == 5 and o["is_official"] is True
    assert o["mean_dice"] == pytest.approx(d.mean())
    assert o["performance"] == pytest.approx(perf)
    for v, x in fv.items():
        assert o["fairness_per_variable"][v] == pytest.approx(x), v
    assert o["fairness"] == pytest.approx(np.mean(list(fv.values())))
    assert o["ranking"] == pytest.approx(0.5 * perf + 0.5 * np.mean(list(fv.values())))
    ok = d >= 0.5
    assert s["non_official"]["demographic_parity"]["breast_density"] == \
        pytest.approx(abs(ok[[0, 3]].mean() - ok[[1, 4]].mean()))
    centers = {r["group"]: r for r in s["per_center"]}
    assert centers["DUKE"]["count"] == 3 and centers["NACT"]["count"] == 2
    assert centers["DUKE"]["dice"] == pytest.approx(d[:3].mean())
    # printed tables: the official block and aligned rows with counts
    assert "Performance" in stdout and "By breast_density" in stdout
    all_row = next(line for line in stdout.splitlines() if line.startswith("all "))
    assert all_row.split()[1] == "5" and float(all_row.split()[2]) == pytest.approx(d.mean(), abs=1e-4)


def test_unusable_predictions_cannot_flatter_the_scores(cohort, tmp_path, capsys):
    """A corrupt file scores exactly like a missing one; 0/255 and probability maps are scored
    as the official scorer does (label 1 only) with a warning; no usable file is an error."""
    root, pred, gts, _ = cohort
    seg = pred / "pred_segmentations"
    (seg / "DUKE_004.nii.gz").unlink()
    rc, _, _ = run(capsys, "--pred", pred, "--data", root, "--out", tmp_path / "a", "--no-plots")
    missing = json.loads((tmp_path / "a" / "summary.json").read_text())["official"]
    (seg / "DUKE_004.nii.gz").write_bytes(b"\x1f\x8b not a nifti")
    rc, _, err = run(capsys, "--pred", pred, "--data", root, "--out", tmp_path / "b", "--no-plots")
    corrupt = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert rc == 1 and "DUKE_004" in err and "DUKE_004" in corrupt["failed"]
    assert corrupt["official"]["mean_dice"] == pytest.approx(missing["mean_dice"])
    assert corrupt["official"]["ranking"] == pytest.approx(missing["ranking"]) and corrupt["official"]["n_cases"] == 5
    # 0/255 masks: label 1 only, so empty; named in a warning
    aff = np.diag(list(SPACING) + [1.0])
    nib.save(nib.Nifti1Image((gts[0] * 255).astype(np.uint8), aff), str(seg / "DUKE_000.nii.gz"))
    rc, _, err = run(capsys, "--pred", pred, "--data", root, "--out", tmp_path / "c", "--no-plots")
    rows = read_rows(tmp_path / "c" / "per_case.csv")
    assert rows["DUKE_000"]["prediction"] == "non_binary" and float(rows["DUKE_000"]["dice"]) == 0.0
    assert "other than 0 and 1" in err and "DUKE_000" in err
    # nothing usable at all: a non-zero exit even though every case was "scored"
    for f in seg.iterdir():
        f.write_bytes(b"junk")
    rc, _, err = run(capsys, "--pred", pred, "--data", root, "--out", tmp_path / "d", "--no-plots")
    assert rc == 1 and "no usable prediction" in err


def test_seg_resample_pred_and_plots(cohort, tmp_path, capsys):
    root, pred, gts, _ = cohort
    rc, stdout, _ = run(capsys, "--pred", pred, "--data", root, "--resample-pred",
                        "--subgroups", "age,density")
    assert rc == 0
    out = pred / "evaluation"  # default --out
    rows = read_rows(out / "per_case.csv")
    assert rows["DUKE_004"]["prediction"] == "resampled"
    assert float(rows["DUKE_004"]["dice"]) == 1.0 and float(rows["DUKE_004"]["norm_hd"]) == 0.0
    s = json.loads((out / "summary.json").read_text())
    assert s["failed"] == {} and s["official"]["n_cases"] == 5
    names = sorted(os.path.basename(p) for p in s["plots"])
    assert names == ["dist_age.png", "dist_breast_density.png", "dist_center.png",
                     "overlay_best.png", "overlay_median.png", "overlay_worst.png"]
    for p in s["plots"]:
        data = open(p, "rb").read()
        assert data.startswith(PNG) and len(data) > 1000
    assert "By menopausal_status" not in stdout  # --subgroups chooses the tables shown ...
    assert set(s["official"]["fairness_per_variable"]) == {  # ... not the official score
        "age", "menopausal_status", "breast_density"}


def test_seg_hd_units_mm_is_labelled(cohort, tmp_path, capsys):
    root, pred, _, _ = cohort
    out = tmp_path / "mm"
    run(capsys, "--pred", pred, "--data", root, "--out", out, "--no-plots", "--hd-units", "mm")
    rows = read_rows(out / "per_case.csv")
    assert float(rows["DUKE_002"]["hd95"]) == float(rows["DUKE_002"]["hd95_mm"]) == 3.0  # 2 x 1.5 mm
    assert json.loads((out / "summary.json").read_text())["official"]["is_official"] is False


def test_pcr_task(cohort, tmp_path, capsys):
    root, pred, _, _ = cohort
    (pred / "predictions.csv").write_text(
        "patient_id,pcr,score\nDUKE_000,0,0.1\nduke_001,1,0.9\nDUKE_002,0,0.3\nDUKE_003,1,0.7\n")
    rc, stdout, stderr = run(capsys, "--task", "pcr", "--pred", pred, "--data", root,
                             "--subgroups", "density")
    assert rc == 0 and "DUKE_004" in stderr and "DUKE_003" in stderr
    out = pred / "evaluation_pcr"
    s = json.loads((out / "summary.json").read_text())
    # truth (missing -> 0): 0 1 1 0 0; predictions (missing row -> 0): 0 1 0 1 0
    # recall(1) = 1/2, recall(0) = 2/3
    assert s["official"]["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # AUC: positives 0.9, 0.3 vs negatives 0.1, 0.7, 0.0 -> 5 of 6 pairs ordered
    assert s["non_official"]["auc"] == pytest.approx(5 / 6)
    assert s["missing_predictions"] == ["DUKE_004"]
    assert s["missing_truth_counted_as_0"] == ["DUKE_003"]
    dens = {r["group"]: r for r in s["per_subgroup"]["breast_density"]}
    assert dens["a"]["balanced_accuracy"] == 0.5 and dens["b"]["balanced_accuracy"] == 1.0
    rows = read_rows(out / "per_case.csv")
    assert rows["DUKE_003"]["pcr_true"] == "" and rows["DUKE_003"]["pcr_true_used"] == "0"
    assert rows["DUKE_004"]["prediction"] == "missing" and float(rows["DUKE_004"]["score"]) == 0.0
    for p in s["plots"]:
        assert open(p, "rb").read().startswith(PNG)
    assert sorted(os.path.basename(p) for p in s["plots"]) == \
        ["ba_subgroups.png", "reliability.png", "roc.png"]
    assert "balanced accuracy  0.5833" in stdout


def test_pcr_bad_csv_names_the_line(cohort, capsys):
    root, pred, _, _ = cohort
    (pred / "predictions.csv").write_text("patient_id,pcr,score\nDUKE_000,2,0.1\n")
    assert ev.main(["--task", "pcr", "--pred", str(pred), "--data", str(root), "--quiet"]) == 2
    assert "predictions.csv:2" in capsys.readouterr().err


def test_user_errors(cohort, tmp_path, capsys):
    root, pred, _, _ = cohort
    for args, msg in ((["--pred", str(tmp_path / "nowhere"), "--data", str(root)], "nowhere"),
                      (["--pred", str(pred), "--data", str(root), "--subgroups", "age,shoe_size"], "unknown name"),
                      (["--pred", str(pred), "--data", str(root), "--out", str(pred / "pred_segmentations" / "x")],
                       "inside the input folder"),
                      (["--pred", str(pred), "--data", str(tmp_path / "nodata")], "nodata")):
        assert ev.main(args) == 2, args
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, args


def test_latest_prediction_dir(tmp_path):
    for name, t in (("old", 1_000_000), ("new", 2_000_000), ("nopred", 3_000_000)):
        (tmp_path / name).mkdir()
        if name != "nopred":
            (tmp_path / name / "pred_segmentations").mkdir()
            os.utime(tmp_path / name / "pred_segmentations", (t, t))
    assert E.latest_prediction_dir(tmp_path, "pred_segmentations") == tmp_path / "new"
    with pytest.raises(UserError, match="predictions.csv"):
        E.latest_prediction_dir(tmp_path, "predictions.csv")


def test_format_table_aligns_and_marks_missing():
    text = E.format_table([{"group": "a", "count": 3, "x": 0.5}, {"group": "bbb", "count": 12,
                                                                  "x": math.inf}],
                           [("group", ""), ("count", "n"), ("x", "X")], "T")
    lines = text.splitlines()
    assert lines[0] == "T" and len({len(x) for x in lines[1:]}) == 1
    assert lines[-1].split() == ["bbb", "12", "inf"] and lines[-2].split() == ["a", "3", "0.5000"]


def test_section_and_roc_points():
    m = np.zeros((6, 5, 4), bool)
    m[1:3, 1:3, 1] = True
    m[1:4, 1:4, 2] = True  # the largest cross-section along z (the thick axis)
    assert plots.section(m, (1.0, 1.0, 3.0)) == (2, 2)
    assert plots.section(m, (3.0, 1.0, 1.0))[0] == 0
    fpr, tpr = plots.roc_points([1, 0, 1, 0], [0.9, 0.8, 0.8, 0.1])
    # thresholds: 0.9 -> (0, .5); 0.8 (tie, both) -> (.5, 1); 0.1 -> (1, 1)
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]


def test_html_report_lists_scores_tables_and_cases(cohort, tmp_path, capsys):
    from html.parser import HTMLParser
    root, pred, _, _ = cohort
    out = tmp_path / "ev"
    run(capsys, "--pred", pred, "--data", root, "--out", out, "--html", "--resample-pred")
    page = (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.imgs, self.rows, self._row, self.tables = [], [], None, 0

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.imgs.append(dict(attrs)["src"])
            elif tag == "table":
                self.tables += 1
            elif tag == "tr":
                self._row = []

        def handle_data(self, data):
            if self._row is not None and data.strip():
                self._row.append(data.strip())

        def handle_endtag(self, tag):
            if tag == "tr" and self._row is not None:
                self.rows.append(self._row)
                self._row = None

    p = Collect()
    p.feed(page)
    assert f"Ranking {summary['official']['ranking']:.4f}" in page
    assert p.tables >= 2                                          # per center + per case (+ subgroups)
    for src in p.imgs:                                           # every image exists, relative to the page
        assert (out / src).is_file(), src
    assert sum("cases/" in s for s in p.imgs) == 5               # a thumbnail per case
    case_rows = [r for r in p.rows if r and r[0].startswith("DUKE_")]
    dice = [float(r[3]) for r in case_rows]
    assert len(case_rows) == 5 and dice == sorted(dice)          # worst first


@pytest.mark.skipif(not any(__import__("shutil").which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="no headless browser installed")
def test_html_report_renders_in_a_browser(cohort, tmp_path, capsys):
    import shutil
    import subprocess
    root, pred, _, _ = cohort
    out = tmp_path / "ev"
    run(capsys, "--pred", pred, "--data", root, "--out", out, "--html", "--resample-pred")
    browser = next(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b))
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,900", (out / "report.html").as_uri()], check=True, timeout=60,
                   capture_output=True)
    from PIL import Image
    img = np.asarray(Image.open(shot).convert("L"))
    assert img.std() > 5       # not a blank page
