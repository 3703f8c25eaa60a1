"""A study file, read and checked: named configurations (train.py flags, inference options, an
ensemble of other configurations, random draws, a case count matched to another configuration),
the evaluation (metrics, validation row, leave-one-center-out) and per-budget schedule edits.

The file is TOML (read with the standard library's ``tomllib``)::

    [study]
    title = "..."               # heading of the report
    question = "..."            # what the study answers (one paragraph)
    baseline = "all"            # the configuration every other one is compared with (paired)
    metrics = ["dice"]          # table metrics: dice, norm_hd
    validation = true           # a row with the runs' validation Dice (mean over trained folds)
    loco = false                # also train without each center and test on all of its cases
    reference_total = 1506      # case counts written "N/1506" scale with the dataset's size

    [budget.smoke]              # edits of the runner's budgets (studies/budgets.py), same keys
    folds = 2

    [[config]]
    name = "exp1"               # a folder and run name: letters, digits, _ and -
    label = "DUKE only, 80"     # column heading
    train = { recipe = "seed_a", centers = "DUKE", max_cases = "80/1506", phases = "2", fold = "0" }
    infer = { lcc = true }

``train`` keys are train.py's flags with ``_`` for ``-`` (``true`` = a bare flag, a list = the
flag repeated); ``upkern_from`` names another configuration. ``ensemble = ["a", "b"]`` makes a
configuration that only infers with the runs of others. ``draws = 3`` expands a configuration into
``name_s0`` ... with ``--sample-seed`` 0, 1, 2. ``match_size = { config = "x", by = "max_cases" |
"drop_worst" }`` trains on as many cases as configuration ``x`` has available. Every unknown key is
an error naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from engine.flags import TrainRequest

STUDY_DIR = Path(__file__).resolve().parent
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
METRICS = ("dice", "norm_hd")
# flags the runner sets itself (folders, resuming, the dataset, workers come from the budget)
RUNNER_TRAIN_FLAGS = {"run", "runs_dir", "resume", "stop_after", "data", "cache_dir", "device", "upkern_from"}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainRequest)} - RUNNER_TRAIN_FLAGS | {"upkern_from"}
# infer.py / eval.py options a study may set (the runner sets runs, output, data, split, centers)
INFER_KEYS = {"ensemble", "checkpoint", "no_tta", "tta_axes", "no_lcc", "lcc", "breast_box",
              "restrict_to_box", "step", "average", "window_batch"}
EVAL_KEYS = {"no_plots", "workers", "subgroups"}
BUDGET_KEYS = {"train", "network", "folds", "infer", "eval", "min_cases"}
STUDY_KEYS = {"title", "question", "baseline", "metrics", "validation", "loco", "reference_total"}
CONFIG_KEYS = {"name", "label", "train", "infer", "ensemble", "draws", "match_size", "loco"}


@dataclass(frozen=True)
class Config:
    name: str
    label: str
    train: dict[str, Any] = field(default_factory=dict)   # empty for an ensemble
    infer: dict[str, Any] = field(default_factory=dict)
    ensemble: tuple[str, ...] = ()
    match_size: dict[str, str] | None = None
    loco: bool = True                                     # takes part in leave-one-center-out
    group: str | None = None                              # draws: the name they were expanded from

    @property
    def upkern_from(self) -> str | None:
        return self.train.get("upkern_from")


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    title: str
    question: str
    baseline: str
    metrics: tuple[str, ...]
    validation: bool
    loco: bool
    reference_total: int | None
    configs: tuple[Config, ...]
    budgets: dict[str, dict[str, Any]]

    def config(self, name: str) -> Config:
        for c in self.configs:
            if c.name == name:
                return c
        raise KeyError(name)


def _keys(where: str, table: Any, allowed: set[str], what: str) -> dict:
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table, got {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown} in {what}; allowed: {sorted(allowed)}")
    return table


def _flags(where: str, table: Any, allowed: set[str], what: str) -> dict[str, Any]:
    table = _keys(where, table, allowed, what)
    for k, v in table.items():
        ok = isinstance(v, (bool, int, float, str)) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
        if not ok:
            raise UserError(f"{where}: {what}.{k} = {v!r}: expected a string, number, boolean or list of strings")
    return dict(table)


def find(name_or_file: str) -> Path:
    """A study by name (``studies/<name>.toml``) or by path."""
    p = Path(name_or_file)
    if p.suffix == ".toml" or p.is_file():
        if not p.is_file():
            raise UserError(f"{p}: study file not found")
        return p
    p = STUDY_DIR / f"{name_or_file}.toml"
    if not p.is_file():
        raise UserError(f"study {name_or_file!r} not found; known: {', '.join(available())}")
    return p


def available() -> list[str]:
    return sorted(p.stem for p in STUDY_DIR.glob("*.toml"))


def load(name_or_file: str) -> Study:
    path = find(name_or_file)
    where = str(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: not valid TOML ({exc})") from exc
    _keys(where, doc, {"study", "budget", "config"}, "the file")
    head = _keys(where, doc.get("study", {}), STUDY_KEYS, "[study]")
    from studies.budgets import BUDGETS
    budgets = _keys(where, doc.get("budget", {}), set(BUDGETS), "[budget]")
    for b, edits in budgets.items():
        _keys(where, edits, BUDGET_KEYS, f"[budget.{b}]")
        for sub, allowed in (("train", TRAIN_KEYS), ("network", TRAIN_KEYS), ("infer", INFER_KEYS),
                             ("eval", EVAL_KEYS)):
            if sub in edits:
                _flags(where, edits[sub], allowed, f"budget.{b}.{sub}")
    raw = doc.get("config", [])
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where}: no [[config]] entry")
    configs: list[Config] = []
    for i, c in enumerate(raw):
        _keys(where, c, CONFIG_KEYS, f"[[config]] #{i + 1}")
        name = c.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise UserError(f"{where}: [[config]] #{i + 1}: name {name!r} must be letters, digits, _ or -")
        ctx = f"config {name}"
        train = _flags(where, c.get("train", {}), TRAIN_KEYS, f"{ctx}.train")
        infer = _flags(where, c.get("infer", {}), INFER_KEYS, f"{ctx}.infer")
        ens = c.get("ensemble", [])
        if not isinstance(ens, list) or not all(isinstance(e, str) for e in ens):
            raise UserError(f"{where}: {ctx}.ensemble: expected a list of configuration names")
        if bool(ens) == bool(train):
            raise UserError(f"{where}: {ctx}: give either train = {{...}} or ensemble = [...]")
        match = c.get("match_size")
        if match is not None:
            _keys(where, match, {"config", "by"}, f"{ctx}.match_size")
            if match.get("by") not in ("max_cases", "drop_worst") or not isinstance(match.get("config"), str):
                raise UserError(f"{where}: {ctx}.match_size: needs config = NAME and by = max_cases|drop_worst")
        draws = c.get("draws", 1)
        if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
            raise UserError(f"{where}: {ctx}.draws = {draws!r}: expected an integer >= 1")
        label = str(c.get("label", name))
        loco = c.get("loco", True)
        if not isinstance(loco, bool):
            raise UserError(f"{where}: {ctx}.loco: expected true or false")
        if draws == 1:
            configs.append(Config(name, label, train, infer, tuple(ens), match, loco))
        else:
            for s in range(draws):
                configs.append(Config(f"{name}_s{s}", f"{label} (draw {s})", {**train, "sample_seed": s},
                                      infer, tuple(ens), match, loco, group=name))
    names = [c.name for c in configs]
    names_all = names + sorted({c.group for c in configs if c.group})
    dup = sorted({n for n in names_all if names_all.count(n) > 1})
    if dup:
        raise UserError(f"{where}: configuration name(s) {dup} used twice")
    for c in configs:
        refs = [("ensemble", e) for e in c.ensemble]
        refs += [("train.upkern_from", c.upkern_from)] if c.upkern_from else []
        refs += [("match_size.config", c.match_size["config"])] if c.match_size else []
        for what, ref in refs:
            if ref not in names or ref == c.name:
                raise UserError(f"{where}: config {c.name}.{what} = {ref!r}: not another configuration "
                                f"of this study ({', '.join(names)})")
    for c in configs:
        ref = c.match_size and next(r for r in configs if r.name == c.match_size["config"])
        if ref and ({"select", "drop_worst"} & set(ref.train) or ref.match_size):
            raise UserError(f"{where}: config {c.name}.match_size: {ref.name} must choose its cases by centers, "
                            "phases and max_cases only (its size is counted before training)")
    baseline = head.get("baseline", configs[0].name)
    if baseline not in names:
        raise UserError(f"{where}: study.baseline = {baseline!r}: not a configuration ({', '.join(names)})")
    metrics = head.get("metrics", ["dice"])
    if not isinstance(metrics, list) or not metrics or any(m not in METRICS for m in metrics):
        raise UserError(f"{where}: study.metrics = {metrics!r}: choose from {list(METRICS)}")
    total = head.get("reference_total")
    if total is not None and (not isinstance(total, int) or total < 1):
        raise UserError(f"{where}: study.reference_total = {total!r}: expected a positive integer")
    for key in ("validation", "loco"):
        if not isinstance(head.get(key, False), bool):
            raise UserError(f"{where}: study.{key}: expected true or false")
    return Study(name=path.stem, path=path, title=str(head.get("title", path.stem)),
                 question=str(head.get("question", "")), baseline=baseline, metrics=tuple(metrics),
                 validation=head.get("validation", False), loco=head.get("loco", False),
                 reference_total=total, configs=tuple(configs), budgets=budgets)
