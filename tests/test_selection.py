"""Training-data selection: the rule language, drop-worst, and its use by train.py."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

import train
from conftest import write_case
from core.errors import UserError
from data import selection as sel


def _case(pid, center, age=None, meno="unknown", density=None, fs=None, times=None, n=3):
    return SimpleNamespace(
        patient_id=pid, center=center, n_phases=n,
        clinical=SimpleNamespace(age=age, menopause=meno, density=density, subtype=None, pcr=None),
        acquisition=SimpleNamespace(manufacturer=None, model=None, site=None, field_strength=fs,
                                    bilateral=None, acquisition_times=times))


def _vals(**kw):
    return {**{k: None for k in sel.FIELDS}, **kw}


# ----------------------------------------------------------------------------- rule language
def test_and_binds_tighter_than_or_and_not_applies_to_one_term():
    r = sel.parse_rule("center==DUKE or age>50 and quality>0")
    assert r.tree[0] == "or" and r.tree[2][0] == "and"
    assert r.evaluate(_vals(center="DUKE", age=30, quality=-1))        # DUKE alone suffices
    assert not r.evaluate(_vals(center="NACT", age=60, quality=-1))
    assert r.evaluate(_vals(center="NACT", age=60, quality=0.5))
    r = sel.parse_rule("(center==DUKE or age>50) and quality>0")
    assert not r.evaluate(_vals(center="DUKE", age=30, quality=-1))
    r = sel.parse_rule("not center=duke and age >= 40")                 # (not center) and age
    assert r.evaluate(_vals(center="NACT", age=40)) and not r.evaluate(_vals(center="DUKE", age=40))
    assert not r.evaluate(_vals(center="NACT", age=39.5))


def test_in_quotes_case_and_missing_values():
    r = sel.parse_rule("center in (DUKE, 'nact') and motion<=1.0")
    assert r.fields == {"center", "motion"}
    assert r.evaluate(_vals(center="NACT", motion=1.0))
    assert not r.evaluate(_vals(center="ISPY1", motion=0.1))
    # a comparison with a missing value is false, != included; 'is missing' asks for it
    assert not sel.parse_rule("density!=a").evaluate(_vals(density=None))
    assert not sel.parse_rule("quality<100").evaluate(_vals(quality=float("nan")))
    assert sel.parse_rule("density is missing").evaluate(_vals(density=None))
    assert sel.parse_rule("density is not missing").evaluate(_vals(density="c"))
    assert sel.parse_rule('subtype == "triple negative"').evaluate(_vals(subtype="Triple Negative"))


@pytest.mark.parametrize("text, message", [
    ("foo>1", "unknown field 'foo'; known fields: snr, cnr"),
    ("motion<=x", "motion is a number, got 'x'"),
    ("quality>=nan", "not a finite number"),
    ("center in (DUKE, NACT", "expected ), found the end of the rule"),
    ("quality", "expected a comparison after 'quality'"),
    ("quality>0 quality<1", "unexpected 'quality'"),
    ("", "empty rule"),
    ("age>40 and", "expected a field name"),
])
def test_bad_rules_are_one_line_errors(text, message):
    with pytest.raises(UserError, match="--select") as e:
        sel.parse_rule(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_case_values_read_the_record():
    c = _case("ISPY2_1", "ISPY2", age=51, meno="post", fs=3.0, times=(0.0, 150.0, 240.0), n=6)
    v = sel.case_values(c, {"quality": 0.25, "motion": 0.4})
    assert (v["center"], v["age"], v["menopause"], v["field_strength"], v["first_post_s"], v["n_phases"]) == \
        ("ISPY2", 51, "post", 3.0, 150.0, 6)
    assert v["quality"] == 0.25 and v["snr"] is None
    assert sel.case_values(_case("X", "DUKE"), None)["menopause"] is None   # 'unknown' is missing


# ----------------------------------------------------------------------------- drop-worst
def test_parse_drop():
    assert sel.parse_drop("20%") == ("fraction", 0.2)
    assert sel.parse_drop(" 5 ") == ("count", 5.0)
    assert sel.parse_drop(None) is None
    for bad in ("100%", "-1", "x", "2.5", "-5%"):
        with pytest.raises(UserError, match="--drop-worst"):
            sel.parse_drop(bad)
    assert sel.check_by("all") is None and sel.check_by("center") == "center"
    with pytest.raises(UserError, match="choose 'all' or a text field"):
        sel.check_by("age")


def test_worst_drops_the_lowest_quality_with_nan_first_per_group():
    rows = [{"patient_id": f"A{i}", "center": "A", "quality": q} for i, q in enumerate([0.5, -1.0, 0.1, 2.0, -0.2])]
    rows += [{"patient_id": f"B{i}", "center": "B", "quality": q} for i, q in enumerate([float("nan"), 1.0, 3.0])]
    # overall: 25 % of 8 = 2 -> the NaN case, then the lowest (-1.0)
    assert sel.worst(rows, ("fraction", 0.25), None) == {"B0", "A1"}
    # per center: floor(0.4 * 5) = 2 in A (-1.0, -0.2), floor(0.4 * 3) = 1 in B (NaN)
    assert sel.worst(rows, ("fraction", 0.4), "center") == {"A1", "A4", "B0"}
    assert sel.worst(rows, ("count", 1), "center") == {"A1", "B0"}
    assert sel.worst(rows, ("count", 10), None) == {r["patient_id"] for r in rows}
    assert sel.worst(rows, ("fraction", 0.1), "center") == set()          # floor: never more than asked


def test_apply_rule_then_drop_and_the_count_table():
    cases = [_case(f"D{i}", "DUKE", age=40 + i) for i in range(6)] + [_case(f"I{i}", "ISPY1", age=60) for i in range(4)]
    q = {c.patient_id: {"quality": float(i % 5) - 2} for i, c in enumerate(cases)}
    out = sel.apply(cases, sel.parse_rule("age<=44 or center==ISPY1"), ("count", 1), "center", q)
    # rule keeps D0..D4 and I0..I3; per center the lowest quality goes: D0 (-2) and I0 (q of index 6 = -1)
    assert [c.patient_id for c in out.kept] == ["D1", "D2", "D3", "D4", "I1", "I2", "I3"]
    assert out.dropped["D5"].startswith("rule:") and out.dropped["D0"] == "drop-worst: quality -2.000"
    assert out.dropped["I0"] == "drop-worst: quality -1.000"
    header, rows = sel.count_table([("available", cases), ("kept", out.kept)])
    assert header == ["center", "available", "kept"]
    assert rows == [["DUKE", 6, 4], ["ISPY1", 4, 3], ["total", 10, 7]]
    assert sel.needs_quality(sel.parse_rule("age>1"), None) is False
    assert sel.needs_quality(sel.parse_rule("age>1 or snr>3"), None) and sel.needs_quality(None, ("count", 1))


# ----------------------------------------------------------------------------- train.py
@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Ten cases in two centers; noise grows with the case number, so quality falls with it."""
    root = tmp_path_factory.mktemp("sel") / "ds"
    rng = np.random.default_rng(0)
    shape, aff = (28, 26, 14), np.diag([1.5, 1.5, 2.5, 1.0])
    ids = []
    for i in range(10):
        center = "DUKE" if i < 6 else "NACT"
        pid = f"{center}_{i:03d}"
        ids.append(pid)
        g = np.indices(shape).astype(float)
        blob = sum(((g[a] - s / 2) / (s / 5)) ** 2 for a, s in enumerate(shape)) <= 1
        body = np.zeros(shape, bool)
        body[4:-4, 4:-4, 2:-2] = True
        sigma = 2.0 + 6.0 * (i % 6 if i < 6 else i - 6)
        phases = [np.abs(body * 300.0 + blob * 120 * k + rng.normal(0, sigma, shape)) for k in range(3)]
        write_case(root, pid, phases, blob, aff,
                   {"patient_id": pid, "clinical_data": {"age": 40 + i}, "primary_lesion": {"pcr": i % 2},
                    "imaging_data": {"dataset": center}})
    (root / "train_test_splits.csv").write_text("train_split,test_split\n" + "\n".join(f"{p}," for p in ids) + "\n")
    return root


def _args(ds, tmp, *extra):
    return ["--data", str(ds), "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"), "--arch", "unet",
            "--epochs", "1", "--iters", "1", "--val-iters", "0", "--workers", "1", "-q", *extra]


def test_train_stores_the_selection_and_resumes_with_it(mixed, tmp_path, capsys):
    args = _args(mixed, tmp_path, "--run", "s", "--select", "age<=48", "--drop-worst", "1", "--drop-worst-by", "center")
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "center  available  select  drop-worst" in out
    run = tmp_path / "runs" / "s"
    s = json.loads((run / "selection.json").read_text())
    # the rule keeps ages 40..48 (9 cases: DUKE_000-005, NACT_006-008); per center the noisiest goes
    assert s["counts"]["rows"] == [["DUKE", 6, 6, 5], ["NACT", 4, 3, 2], ["total", 10, 9, 7]]
    assert s["dropped"]["NACT_009"].startswith("rule:")
    assert {k for k, v in s["dropped"].items() if v.startswith("drop-worst")} == {"DUKE_005", "NACT_008"}
    data = json.loads((run / "data.json").read_text())
    assert data["select"] == "age<=48" and data["drop_worst"] == "1" and len(data["cases"]) == 7
    folds = json.loads((run / "splits.json").read_text())
    assert sorted(folds[0]["train"] + folds[0]["val"]) == s["kept"]
    # a different rule on the same run is refused; the same flags resume
    assert train.main(_args(mixed, tmp_path, "--run", "s", "--select", "age<=49", "--resume")) == 2
    assert "--select: run has 'age<=48', given 'age<=49'" in capsys.readouterr().err
    assert train.main(_args(mixed, tmp_path, "--run", "s", "--fold", "1")) == 0


def test_selection_composes_with_centers_and_max_cases(mixed, tmp_path, capsys):
    assert train.main(_args(mixed, tmp_path, "--run", "c", "--centers", "DUKE", "--drop-worst", "0%",
                            "--max-cases", "5", "--sample-seed", "1")) == 0
    s = json.loads((tmp_path / "runs" / "c" / "selection.json").read_text())
    assert s["counts"]["header"] == ["center", "available", "drop-worst", "max-cases"]
    assert s["counts"]["rows"] == [["DUKE", 6, 6, 5], ["total", 6, 6, 5]]
    assert list(s["dropped"].values()) == ["max-cases: not drawn"]
    # too strict a rule: the error shows where the cases went
    assert train.main(_args(mixed, tmp_path, "--run", "z", "--select", "quality>100")) == 2
    err = capsys.readouterr().err
    assert "0 training case(s)" in err and "total" in err


def test_snr_rule_keeps_the_less_noisy_cases(mixed, tmp_path):
    """snr falls with the noise level, so an snr threshold keeps a prefix of each center's cases."""
    from data import mamamia, quality
    from engine import setup
    rows = quality.score_dataset(mamamia.load_dataset(mixed), cache_dir=tmp_path / "q")
    snr = {r["patient_id"]: r["snr"] for r in rows}
    duke = [snr[f"DUKE_{i:03d}"] for i in range(6)]
    assert all(a > b for a, b in zip(duke, duke[1:]))
    cut = (duke[2] + duke[3]) / 2
    req = setup.TrainRequest(data=str(mixed), arch="unet", centers="DUKE", select=f"snr>{cut}",
                             runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    prep = setup.prepare(req)
    with pytest.raises(UserError, match="3 training case"):      # 3 left: too few for 5 folds
        setup.select_cases(prep, cache_dir=str(tmp_path / "cache"))
    assert prep.selection["kept"] == ["DUKE_000", "DUKE_001", "DUKE_002"]
