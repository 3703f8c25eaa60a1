"""Studies: study files (parsing, validation), command building, --print-commands, the resumable
runner, the table layout, and the bootstrap statistics behind the intervals."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core.errors import UserError
from core.stats import bootstrap_ci, bootstrap_means, paired_difference
from studies import budgets, commands, runner, spec
from studies import table as tab

CENTERS = ("DUKE", "ISPY1", "ISPY2", "NACT")


def fake_facts(per_center=(30, 20, 100, 10), total=None, phases=(0, 1, 2)):
    cases = [SimpleNamespace(center=c, phase_numbers=phases, patient_id=f"{c}_{i}")
             for c, n in zip(CENTERS, per_center) for i in range(n)]
    return commands.Facts(total or len(cases), CENTERS, cases)


def write_study(tmp_path, text, name="mini.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


MINI = """
[study]
title = "mini"
baseline = "a"

[[config]]
name = "a"
train = { arch = "unet", fold = "0" }

[[config]]
name = "b"
train = { arch = "unet", fold = "0", centers = "DUKE" }
"""


# ----------------------------------------------------------------------------- study files

def test_shipped_studies_load_and_build():
    for name in ("seed_a", "seed_b", "selection"):
        s = spec.load(name)
        assert s.baseline in [c.name for c in s.configs]
        for b in budgets.BUDGETS:
            cells = commands.build(s, budgets.resolve(b, s.budgets), fake_facts(), Path("/o"), None)
            assert all(c.steps or c.skipped for c in cells)
    assert [c.name for c in spec.load("selection").configs][-3:] == ["random_s0", "random_s1", "random_s2"]
    assert len(spec.load("seed_a").configs) == 6


@pytest.mark.parametrize("text, key", [
    (MINI.replace('fold = "0" }', 'fold = "0", epoch = 3 }', 1), "epoch"),
    (MINI.replace('title = "mini"', 'title = "mini"\nbaseline_of = "a"'), "baseline_of"),
    (MINI + '\n[budget.smoke]\nfoldz = 2\n', "foldz"),
    (MINI + '\n[budget.tiny]\nfolds = 2\n', "tiny"),
    (MINI.replace('name = "b"', 'name = "b"\nensembel = ["a"]'), "ensembel"),
    (MINI.replace('[[config]]\nname = "a"', '[[config]]\nname = "a"\ninfer = { tta = true }'), "tta"),
])
def test_unknown_keys_name_the_file_and_the_key(tmp_path, text, key):
    p = write_study(tmp_path, text)
    with pytest.raises(UserError) as err:
        spec.load(str(p))
    assert str(p) in str(err.value) and key in str(err.value)


@pytest.mark.parametrize("edit, words", [
    (('centers = "DUKE" }', 'centers = "DUKE", upkern_from = "zz" }'), "zz"),
    (('baseline = "a"', 'baseline = "q"'), "baseline"),
    (('name = "b"', 'name = "a"'), "twice"),
    (('name = "b"', 'name = "b c"'), "name"),
    (('train = { arch = "unet", fold = "0" }', 'train = { arch = "unet" }\nensemble = ["b"]'), "either"),
    (('title = "mini"', 'title = "mini"\nmetrics = ["hd"]'), "metrics"),
    (('centers = "DUKE" }', 'centers = "DUKE", select = "quality>0" }\n\n[[config]]\nname = "c"\n'
                            'train = { arch = "unet" }\nmatch_size = { config = "b", by = "max_cases" }'), "b must choose"),
])
def test_invalid_studies_are_one_line_errors(tmp_path, edit, words):
    p = write_study(tmp_path, MINI.replace(*edit, 1))
    with pytest.raises(UserError, match=words):
        spec.load(str(p))


def test_list_and_budget_errors(capsys):
    from studies.__main__ import main
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("seed_a", "seed_b", "selection"))
    with pytest.raises(UserError, match="--budget 'huge'"):
        budgets.resolve("huge")
    assert budgets.resolve("smoke", {"smoke": {"folds": 2, "train": {"iters": 5}}})["train"] == \
        {**budgets.BUDGETS["smoke"]["train"], "iters": 5}
    with pytest.raises(UserError, match="folds"):
        budgets.resolve("smoke", {"smoke": {"folds": 9}})


@pytest.mark.parametrize("train, words", [
    ('{ arch = "unet", fold = "7" }', "config a: --fold"),
    ('{ arch = "unet", fold = "0", batch_size = "many" }', "config a: batch_size = 'many'"),
    ('{ arch = "mednext", fold = "0", kernel = 4 }', "config a: --kernel 4"),
])
def test_train_values_are_checked_before_anything_runs(tmp_path, train, words):
    p = write_study(tmp_path, MINI.replace('{ arch = "unet", fold = "0" }', train, 1))
    with pytest.raises(UserError, match=words) as err:
        commands.build(spec.load(str(p)), budgets.resolve("smoke"), fake_facts(), tmp_path / "o", None)
    assert str(p) in str(err.value)


def test_bad_toml_and_missing_study(tmp_path):
    with pytest.raises(UserError, match="not valid TOML"):
        spec.load(str(write_study(tmp_path, "[study\n")))
    with pytest.raises(UserError, match="not found"):
        spec.load("no_such_study")


# ----------------------------------------------------------------------------- commands

def test_flag_args():
    assert commands.flag_args({"max_cases": 5, "clahe": True, "set": ["a=1", "b=2"], "lcc": False,
                               "x": None}, "train") == \
        ["--max-cases", "5", "--clahe", "--set", "a=1", "--set", "b=2"]
    assert commands.flag_args({"amp": False, "drop_worst_by": "center"}, "train") == \
        ["--no-amp", "--drop-worst-by", "center"]


def test_seed_b_commands_under_smoke():
    s = spec.load("seed_b")
    cells = {c.config: c for c in commands.build(s, budgets.resolve("smoke", s.budgets), fake_facts(),
                                                  Path("/o"), "/data")}
    m3 = cells["M3"].steps[0].argv
    assert m3[:3] == ("train.py", "--run", "M3")
    assert "--fold 0,1 " in " ".join(m3) and "--size S" in " ".join(m3)  # two folds, the small network
    assert "archs.mednext.base_channels=8" in m3 and m3[-2:] == ("--resume", "-q")
    m5 = cells["M5"].steps[0]
    assert ("--upkern-from", "M3") == m5.argv[m5.argv.index("--upkern-from"):][:2]
    assert "--size" not in m5.argv and "--set" not in m5.argv        # inherited from its source
    assert m5.deps == ("M3/train",)
    ens = cells["M5_ensemble"]
    assert [s.kind for s in ens.steps] == ["infer", "eval"]
    assert ens.steps[0].deps == ("M5/train", "M5_focal/train")
    assert "/o/runs/M5" in ens.steps[0].argv and "/o/runs/M5_focal" in ens.steps[0].argv
    ev = ens.steps[1].argv
    assert ev[ev.index("--pred") + 1] == "/o/predictions/M5_ensemble" and "--data" in ev
    gpu = {c.config: c for c in commands.build(s, budgets.resolve("gpu"), fake_facts(), Path("/o"), None)}
    assert "--fold all" in " ".join(gpu["M3"].steps[0].argv) and "--epochs" not in gpu["M3"].steps[0].argv


def test_seed_a_case_counts_scale_with_the_dataset():
    s = spec.load("seed_a")

    def count(facts, name, budget="gpu"):
        cell = {c.config: c for c in commands.build(s, budgets.resolve(budget), facts, Path("/o"), None)}[name]
        a = cell.steps[0].argv
        return int(a[a.index("--max-cases") + 1]), cell.n_train

    real = fake_facts((291, 171, 980, 64), total=1506)       # the paper's 80 / 400 of 1,506
    assert count(real, "exp1_duke") == (80, 80) and count(real, "exp2_mixed") == (400, 400)
    small = fake_facts((30, 20, 100, 10))                     # 160 cases: round(80*160/1506) = 8
    assert count(small, "exp1_duke") == (8, 8) and count(small, "exp2_mixed") == (42, 42)
    tiny = fake_facts((6, 3, 20, 1))                          # raised to the budget's minimum of 5
    assert count(tiny, "exp1_duke") == (5, 5)


def test_selection_sizes_match_and_loco_leaves_the_center_out():
    s = spec.load("selection")
    facts = fake_facts((30, 20, 100, 10))
    cells = {c.config: c for c in commands.build(s, budgets.resolve("gpu"), facts, Path("/o"), None)}
    arg = lambda name, flag: (lambda a: a[a.index(flag) + 1])(cells[name].steps[0].argv)  # noqa: E731
    assert cells["centers"].n_train == 40
    assert arg("quality", "--drop-worst") == str(160 - 40) and cells["quality"].n_train == 40
    assert arg("random_s2", "--max-cases") == "40" and arg("random_s2", "--sample-seed") == "2"
    # without DUKE: the center selection is NACT alone (10 cases), the others match it
    assert arg("centers__loco_DUKE", "--centers") == "NACT" and cells["centers__loco_DUKE"].n_train == 10
    assert arg("all__loco_DUKE", "--centers") == "ISPY1,ISPY2,NACT"
    assert arg("quality__loco_DUKE", "--drop-worst") == str(130 - 10)
    # DUKE + NACT trained without ISPY1 is DUKE + NACT: that run is reused, not trained again
    reuse = cells["centers__loco_ISPY1"]
    assert reuse.reuses == "centers" and [s.kind for s in reuse.steps] == ["infer", "eval"]
    assert reuse.steps[0].deps == ("centers/train",) and "/o/runs/centers" in reuse.steps[0].argv
    infer = cells["random_s0__loco_ISPY2"].steps[1].argv
    assert " --split all --centers ISPY2 " in " ".join(infer) + " "
    # too few cases to train on: skipped with a reason, and what matches its size too
    few = {c.config: c for c in commands.build(s, budgets.resolve("gpu"), fake_facts((30, 20, 100, 3)),
                                                Path("/o"), None)}
    assert "fewer than 5" in few["centers__loco_DUKE"].skipped and not few["centers__loco_DUKE"].steps
    assert "skipped" in few["random_s1__loco_DUKE"].skipped


def test_hashes_follow_commands_and_dependencies():
    s = spec.load("seed_b")
    a = {c.config: c for c in commands.build(s, budgets.resolve("smoke", s.budgets), fake_facts(), Path("/o"), None)}
    b = {c.config: c for c in commands.build(s, budgets.resolve("smoke", s.budgets), fake_facts(), Path("/x"), None)}
    assert a["M5"].steps[0].hash == b["M5"].steps[0].hash          # a moved study keeps its hashes
    c = {c.config: c for c in commands.build(s, budgets.resolve("cpu", s.budgets), fake_facts(), Path("/o"), None)}
    assert a["M3"].steps[0].hash != c["M3"].steps[0].hash
    assert a["M5_ensemble"].steps[1].hash != c["M5_ensemble"].steps[1].hash   # through its dependencies


def test_print_commands(monkeypatch, capsys):
    from studies.__main__ import main
    monkeypatch.setattr(commands, "dataset_facts", lambda data: fake_facts())
    assert main(["run", "seed_b", "--print-commands", "--out", "/tmp/x"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 + 3 + 3 + 2
    argvs = [shlex.split(line) for line in lines]
    assert all(a[0] == sys.executable for a in argvs)
    assert [Path(a[1]).name for a in argvs] == ["train.py", "infer.py", "eval.py"] * 3 + ["infer.py", "eval.py"]
    assert argvs[3][argvs[3].index("--upkern-from") + 1] == "M3"
    assert not Path("/tmp/x/state.json").exists()


# ----------------------------------------------------------------------------- runner

class FakeProc:
    def __init__(self, rc=0):
        self.rc = rc

    def poll(self):
        return self.rc


def test_interrupted_study_resumes_without_redoing_finished_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "cuda_devices", lambda: 0)
    study = spec.load(str(write_study(tmp_path, MINI)))
    out = tmp_path / "study"
    cells = commands.build(study, budgets.resolve("smoke"), fake_facts(), out, None)
    calls = []

    def interrupting(step, log, env):
        if step.config == "b":
            raise KeyboardInterrupt            # the user stops the study when b's training starts
        calls.append(step.key)
        return FakeProc()

    with pytest.raises(KeyboardInterrupt):
        runner.run_steps(cells, out, launcher=interrupting, poll=0, echo=lambda *_: None)
    assert calls == ["a/train", "a/infer", "a/eval"]
    state = json.loads((out / "state.json").read_text())["steps"]
    assert state["a/eval"]["status"] == "done" and state["b/train"]["status"] == "running"
    assert state["a/train"]["argv"] == list(cells[0].steps[0].argv)
    mtime = (out / "state.json").stat().st_mtime_ns

    seen = []

    def recording(step, log, env):
        seen.append(step)
        return FakeProc()

    result = runner.run_steps(cells, out, launcher=recording, poll=0, echo=lambda *_: None)
    assert [s.key for s in seen] == ["b/train", "b/infer", "b/eval"]      # a is not redone
    assert "--resume" in seen[0].argv                                    # half-done training continues
    assert result["a/train"].startswith("skipped") and result["b/eval"] == "done"
    assert (out / "state.json").stat().st_mtime_ns > mtime
    seen.clear()
    runner.run_steps(cells, out, launcher=recording, poll=0, echo=lambda *_: None)
    assert seen == []


def test_changed_study_is_refused_unless_forced(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "cuda_devices", lambda: 0)
    out = tmp_path / "study"
    study = spec.load(str(write_study(tmp_path, MINI)))
    cells = commands.build(study, budgets.resolve("smoke"), fake_facts(), out, None)
    runner.run_steps(cells, out, launcher=lambda *a: FakeProc(), poll=0, echo=lambda *_: None)
    (out / "runs" / "b").mkdir(parents=True)
    edited = spec.load(str(write_study(tmp_path, MINI.replace('centers = "DUKE"', 'centers = "NACT"'))))
    cells2 = commands.build(edited, budgets.resolve("smoke"), fake_facts(), out, None)
    state = runner.State(out)
    with pytest.raises(UserError, match="b/train.*--force"):
        runner.check_changes(cells2, state, out, force=False)
    redo = runner.check_changes(cells2, state, out, force=True)
    assert redo == ["b/train", "b/infer", "b/eval"]
    assert not (out / "runs" / "b").exists() and list((out / "superseded").glob("*/runs/b"))
    seen = []
    runner.run_steps(cells2, out, launcher=lambda s, *a: seen.append(s.key) or FakeProc(), poll=0,
                     echo=lambda *_: None)
    assert seen == ["b/train", "b/infer", "b/eval"]


def test_a_failed_step_whose_command_changed_is_simply_redone(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "cuda_devices", lambda: 0)
    out = tmp_path / "study"
    cells = commands.build(spec.load(str(write_study(tmp_path, MINI))), budgets.resolve("smoke"),
                           fake_facts(), out, None)
    runner.run_steps(cells, out, launcher=lambda s, *a: FakeProc(1 if s.key == "b/train" else 0), poll=0,
                     echo=lambda *_: None)
    edited = spec.load(str(write_study(tmp_path, MINI.replace('centers = "DUKE"', 'centers = "NACT"'))))
    cells2 = commands.build(edited, budgets.resolve("smoke"), fake_facts(), out, None)
    assert runner.check_changes(cells2, runner.State(out), out, force=False) == ["b/train"]


def test_failed_step_stops_its_dependents_only(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "cuda_devices", lambda: 2)
    out = tmp_path / "study"
    cells = commands.build(spec.load(str(write_study(tmp_path, MINI))), budgets.resolve("smoke"),
                           fake_facts(), out, None)
    envs = {}

    def launch(step, log, env):
        envs[step.key] = env.get("CUDA_VISIBLE_DEVICES")
        return FakeProc(1 if step.key == "a/train" else 0)

    result = runner.run_steps(cells, out, parallel=2, launcher=launch, poll=0, echo=lambda *_: None)
    assert result["a/train"].startswith("failed") and result["a/eval"].startswith("not run")
    assert result["b/eval"] == "done"
    assert envs["a/train"] == "0" and envs["b/train"] == "1"        # two at once, one device each


def test_slot_environments():
    assert runner.slot_env(3, 4, 2, {})["CUDA_VISIBLE_DEVICES"] == "1"
    assert runner.slot_env(1, 2, 2, {"CUDA_VISIBLE_DEVICES": "4,6"})["CUDA_VISIBLE_DEVICES"] == "6"
    cpu = runner.slot_env(0, 2, 0, {})
    assert "CUDA_VISIBLE_DEVICES" not in cpu and int(cpu["OMP_NUM_THREADS"]) >= 1
    assert runner.slot_env(0, 1, 0, {}) == {}


# ----------------------------------------------------------------------------- table

def _result(values, centers, official=None, validation=None):
    return tab.Result({f"{c}_{i}": {"center": c, "dice": v, "norm_hd": 1 - v}
                       for i, (v, c) in enumerate(zip(values, centers))}, official or {}, validation or {})


def test_table_layout_on_known_numbers(tmp_path):
    centers = ["A", "A", "B", "B"]
    tests = {"base": _result([0.5, 0.7, 0.2, 0.4], centers, {"fairness": 0.9, "ranking": 0.8}, {"dice": 0.6}),
             "new": _result([0.6, 0.8, 0.3, 0.5], centers, {"fairness": 0.7, "ranking": 0.75}, {"dice": 0.65})}
    rows = tab.build_rows(["base", "new", "gone"], tests, "base", ["dice"], True)
    get = {(r.section, r.label): r.values for r in rows}
    assert get[("validation", "validation (mean over folds)")] == {"base": 0.6, "new": 0.65, "gone": None}
    assert get[("test", "A")]["base"] == pytest.approx(0.6) and get[("test", "B")]["new"] == pytest.approx(0.4)
    assert get[("test", "overall")]["new"] == pytest.approx(0.55) and get[("test", "overall")]["gone"] is None
    ci = bootstrap_ci([0.6, 0.8, 0.3, 0.5])
    assert get[("test", "overall 95% CI low")]["new"] == ci["low"]
    # every case gains exactly 0.1: the paired interval has zero width
    assert get[("test", "difference to baseline (paired)")]["new"] == pytest.approx(0.1)
    assert get[("test", "difference 95% CI low")]["new"] == pytest.approx(0.1)
    assert get[("test", "difference 95% CI high")]["new"] == pytest.approx(0.1)
    assert get[("test", "difference to baseline (paired)")]["base"] is None
    assert get[("test", "Ranking (official)")] == {"base": 0.8, "new": 0.75, "gone": None}
    labels = [r.label for r in rows if r.section == "test"]
    assert labels[:3] == ["A", "B", "overall"]
    tab.write_csv(rows, ["base", "new", "gone"], tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "section,row,metric,base,new,gone" and lines[2].startswith("test,A,dice,0.6")
    md = tab.markdown(rows, ["base", "new", "gone"], {"base": "Base run"}, "base")
    assert "| | Base run (baseline) | new | gone |" in md
    assert "| Dice overall | 0.450 [" in md and "| +0.100 [+0.100, +0.100] p=0.000 |" in md


def test_loco_section_pools_the_held_out_centers():
    loco = {"base": {"A": _result([0.2, 0.4], ["A", "A"]), "B": _result([0.6], ["B"])},
            "new": {"A": _result([0.3, 0.5], ["A", "A"])}}
    rows = tab.build_rows(["base", "new"], {}, "base", ["dice"], False, loco)
    get = {(r.section, r.label): r.values for r in rows if r.section == "held-out center"}
    assert get[("held-out center", "A")] == {"base": pytest.approx(0.3), "new": pytest.approx(0.4)}
    assert get[("held-out center", "B")] == {"base": pytest.approx(0.6), "new": None}
    assert get[("held-out center", "overall")]["base"] == pytest.approx(0.4)
    # paired over the cases both have (A's two): +0.1 each
    assert get[("held-out center", "difference to baseline (paired)")]["new"] == pytest.approx(0.1)


def test_draws_are_averaged_per_case_into_one_column():
    d0 = _result([0.2, 0.4], ["A", "B"], {"ranking": 0.5}, {"dice": 0.3})
    d1 = _result([0.4, 0.8], ["A", "B"], {"ranking": 0.7}, {"dice": 0.5})
    avg = tab.average_results([d0, d1, tab.Result()])
    assert avg.cases["A_0"]["dice"] == pytest.approx(0.3) and avg.cases["B_1"]["norm_hd"] == pytest.approx(0.4)
    assert avg.official == {"ranking": pytest.approx(0.6)} and avg.validation == {"dice": pytest.approx(0.4)}
    assert tab.average_results([tab.Result()]) is None
    assert [c.group for c in spec.load("selection").configs if c.group] == ["random"] * 3


# ----------------------------------------------------------------------------- statistics

def test_bootstrap_of_two_values_against_a_hand_computation():
    # resample means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5 % and
    # 97.5 % quantiles are 0 and 1, and the resample mean is about 0.5
    ci = bootstrap_ci([0.0, 1.0], n_boot=20000, seed=3)
    assert (ci["mean"], ci["low"], ci["high"], ci["n"]) == (0.5, 0.0, 1.0, 2)
    means = bootstrap_means([0.0, 1.0], 20000, 3)
    assert set(np.unique(means)) == {0.0, 0.5, 1.0}
    assert np.mean(means == 0.5) == pytest.approx(0.5, abs=0.02)


def test_bootstrap_matches_a_numpy_reference():
    v = np.random.default_rng(1).uniform(size=37)
    idx = np.random.default_rng(7).integers(0, 37, size=(500, 37))
    lo, hi = np.quantile(v[idx].mean(1), [0.025, 0.975])
    ci = bootstrap_ci(v, n_boot=500, seed=7)
    assert ci["low"] == pytest.approx(lo) and ci["high"] == pytest.approx(hi)
    assert ci["low"] < v.mean() < ci["high"]
    wide = bootstrap_ci(v, confidence=0.99, n_boot=500, seed=7)
    assert wide["low"] <= ci["low"] and wide["high"] >= ci["high"]


def test_paired_difference():
    a = np.random.default_rng(2).uniform(size=20)
    const = paired_difference(a + 0.05, a)
    assert const["mean"] == pytest.approx(0.05)
    assert const["high"] - const["low"] == pytest.approx(0, abs=1e-12) and const["p"] == 0.0
    same = paired_difference(a, a)
    assert (same["mean"], same["low"], same["high"], same["p"]) == (0.0, 0.0, 0.0, 1.0)
    # the paired interval equals the bootstrap of the differences, and is narrower than the
    # unpaired spread when the two methods share the case-to-case variation
    b = a + np.random.default_rng(4).normal(0, 0.01, 20)
    d = paired_difference(b, a, n_boot=2000, seed=5)
    ref = bootstrap_ci(b - a, n_boot=2000, seed=5)
    assert (d["low"], d["high"]) == (ref["low"], ref["high"])
    assert d["high"] - d["low"] < bootstrap_ci(a)["high"] - bootstrap_ci(a)["low"]
    with pytest.raises(ValueError, match="same cases"):
        paired_difference([1, 2], [1])
    assert np.isnan(bootstrap_ci([])["mean"])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_two_tiny_configurations_interrupted_and_resumed_for_real(tmp_path, monkeypatch):
    """Real train/infer/eval subprocesses on a 7-case dataset: the study is stopped when the
    second configuration starts, resumed, and the first configuration's run is not touched."""
    from conftest import write_tiny_dataset
    from studies import report
    monkeypatch.setenv("MAMAMIA_CACHE", str(tmp_path / "cache"))
    data = write_tiny_dataset(tmp_path / "ds", n=7)
    p = write_study(tmp_path, MINI.replace('train = { arch = "unet", fold = "0", centers = "DUKE" }',
                                          'train = { arch = "unet", fold = "0", seed = 1 }')
                    .replace('title = "mini"', 'title = "mini"\nvalidation = true'))
    study = spec.load(str(p))
    out = tmp_path / "study"
    cells = commands.build(study, budgets.resolve("smoke"), commands.dataset_facts(str(data)), out, str(data))

    def stop_at_b(step, log, env):
        if step.config == "b":
            raise KeyboardInterrupt
        return runner.default_launcher(step, log, env)

    with pytest.raises(KeyboardInterrupt):
        runner.run_steps(cells, out, launcher=stop_at_b, poll=0.2, echo=lambda *_: None)
    final = out / "runs" / "a" / "fold_0" / "checkpoint_final.pt"
    before = final.stat().st_mtime_ns
    result = runner.run_steps(cells, out, poll=0.2, echo=lambda *_: None)
    assert result == {"a/train": "skipped (done before)", "a/infer": "skipped (done before)",
                      "a/eval": "skipped (done before)", "b/train": "done", "b/infer": "done", "b/eval": "done"}
    assert final.stat().st_mtime_ns == before
    assert (out / "logs" / "a.train.log").read_text().count("$ ") == 1
    paths = report.write(study, cells, out, "smoke", "tiny")
    rows = (out / "table.csv").read_text().splitlines()
    assert rows[0] == "section,row,metric,a,b" and any(r.startswith("test,DUKE,dice,") for r in rows)
    assert any(r.startswith("validation,") for r in rows) and paths["plot"].is_file()
    assert "train.py --run b" in (out / "report.md").read_text()
