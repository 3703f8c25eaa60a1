"""A study's results as the papers lay them out: one column per configuration, one row per test
center plus the overall row (its 95 % bootstrap interval over cases and the paired difference to
the baseline below it), the official Fairness and Ranking, the validation row where the study has
one, and a held-out-center section for leave-one-center-out studies.

The numbers come from what eval.py wrote (``per_case.csv``: per-case Dice and NormHD, and
``summary.json``: the official Fairness and Ranking) and from the runs' ``validation.json`` /
``cv_summary.json``; nothing is re-scored here. ``table.csv`` holds plain numbers (the interval
bounds and the difference as rows of their own); ``table.md`` the same, formatted.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.atomic import atomic_write
from core.stats import bootstrap_ci, paired_difference

METRIC_NAMES = {"dice": "Dice", "norm_hd": "NormHD"}
# row labels of the overall block (table.csv keeps the bounds as rows of their own)
OVERALL, CI_LOW, CI_HIGH = "overall", "overall 95% CI low", "overall 95% CI high"
DIFF, DIFF_LOW, DIFF_HIGH, DIFF_P = ("difference to baseline (paired)", "difference 95% CI low",
                                     "difference 95% CI high", "difference p (bootstrap)")
DETAIL = (CI_LOW, CI_HIGH, DIFF_LOW, DIFF_HIGH, DIFF_P)      # folded into OVERALL / DIFF in table.md


@dataclass
class Result:
    """What one cell produced: per-case values (patient id -> {center, dice, norm_hd}), the
    official scores and the validation figures."""
    cases: dict[str, dict] = field(default_factory=dict)
    official: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)   # dice / norm_hd means over folds, "folds": n


def read_result(eval_dir: Path, run_dir: Path | None) -> Result:
    res = Result()
    per_case = eval_dir / "per_case.csv"
    if per_case.is_file():
        with open(per_case, newline="") as fh:
            for r in csv.DictReader(fh):
                res.cases[r["patient_id"]] = {"center": r["center"], "dice": float(r["dice"]),
                                              "norm_hd": float(r["norm_hd"])}
    summary = eval_dir / "summary.json"
    if summary.is_file():
        res.official = json.loads(summary.read_text()).get("official") or {}
    if run_dir is not None and run_dir.is_dir():
        res.validation = read_validation(run_dir)
    return res


def read_validation(run_dir: Path) -> dict:
    """Mean validation Dice over the run's folds (``fold_<k>/validation.json``); NormHD from the
    cross-validation summary when the run has one."""
    dice = []
    for p in sorted(run_dir.glob("fold_[0-9]/validation.json")):
        d = json.loads(p.read_text()).get("mean_dice")
        if isinstance(d, (int, float)) and math.isfinite(d):
            dice.append(float(d))
    out = {"dice": float(np.mean(dice)) if dice else None, "folds": len(dice)}
    cv = run_dir / "cv_summary.json"
    if cv.is_file():
        over = json.loads(cv.read_text()).get("over_folds", {})
        out["norm_hd"] = over.get("norm_hd", {}).get("mean")
    return out


def average_results(results: list[Result]) -> Result | None:
    """Several draws of one configuration as one column: per case the mean over the draws that
    scored it, the mean of their official scores and validation figures."""
    results = [r for r in results if r.cases]
    if not results:
        return None
    out = Result()
    for pid in sorted(set().union(*(r.cases for r in results))):
        got = [r.cases[pid] for r in results if pid in r.cases]
        out.cases[pid] = {"center": got[0]["center"], **{m: float(np.mean([g[m] for g in got])) for m in METRIC_NAMES}}
    for attr in ("official", "validation"):
        keys = set().union(*(getattr(r, attr) for r in results))
        for k in keys:
            vals = [getattr(r, attr).get(k) for r in results]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                getattr(out, attr)[k] = float(np.mean(vals))
    return out


@dataclass
class Row:
    section: str      # validation | test | held-out center
    label: str        # a center, overall, overall CI low, ...
    metric: str
    values: dict      # column -> number or None


def _centers(results) -> list[str]:
    return sorted({c["center"] for r in results.values() for c in r.cases.values()})


def build_rows(columns: list[str], tests: dict[str, Result], baseline: str, metrics, validation: bool,
               loco: dict[str, dict[str, Result]] | None = None, seed: int = 0) -> list[Row]:
    """The table's rows. ``tests``: column -> its test-split result; ``loco``: column -> {held-out
    center: result}."""
    rows: list[Row] = []
    if validation:
        for m in metrics:
            vals = {c: tests[c].validation.get(m) if c in tests else None for c in columns}
            if any(v is not None for v in vals.values()):
                rows.append(Row("validation", "validation (mean over folds)", m, vals))
    for m in metrics:
        rows += _section("test", m, columns, {c: tests.get(c) for c in columns}, baseline, seed)
    for key, name in (("fairness", "Fairness (official)"), ("ranking", "Ranking (official)")):
        rows.append(Row("test", name, "", {c: (tests[c].official.get(key) if c in tests else None)
                                           for c in columns}))
    if loco:
        for m in metrics:
            pooled = {c: _pool(loco.get(c, {})) for c in columns}
            per_center = {}
            for held in sorted({h for v in loco.values() for h in v}):
                per_center[held] = {c: _mean(loco.get(c, {}).get(held), m) for c in columns}
            for held, vals in per_center.items():
                rows.append(Row("held-out center", held, m, vals))
            rows += _section("held-out center", m, columns, pooled, baseline, seed, centers=False)
    return rows


def _pool(by_center: dict[str, Result]) -> Result | None:
    if not by_center:
        return None
    out = Result()
    for res in by_center.values():
        out.cases.update(res.cases)
    return out


def _mean(res: Result | None, m: str):
    if res is None or not res.cases:
        return None
    return float(np.mean([c[m] for c in res.cases.values()]))


def _section(section, m, columns, results, baseline, seed, centers=True) -> list[Row]:
    rows = []
    present = {c: r for c, r in results.items() if r is not None and r.cases}
    if centers:
        for center in _centers(present):
            rows.append(Row(section, center, m, {c: (float(np.mean([x[m] for x in present[c].cases.values()
                                                                   if x["center"] == center]))
                                                     if c in present and any(x["center"] == center for x in
                                                                             present[c].cases.values()) else None)
                                                 for c in columns}))
    cis = {c: bootstrap_ci([x[m] for x in present[c].cases.values()], seed=seed) if c in present else None
           for c in columns}
    for key, label in (("mean", OVERALL), ("low", CI_LOW), ("high", CI_HIGH)):
        rows.append(Row(section, label, m, {c: cis[c][key] if cis[c] else None for c in columns}))
    diffs = {}
    base = present.get(baseline)
    for c in columns:
        if c == baseline or c not in present or base is None:
            diffs[c] = None
            continue
        ids = sorted(set(present[c].cases) & set(base.cases))
        diffs[c] = paired_difference([present[c].cases[i][m] for i in ids], [base.cases[i][m] for i in ids],
                                     seed=seed) if ids else None
    for key, label in (("mean", DIFF), ("low", DIFF_LOW), ("high", DIFF_HIGH), ("p", DIFF_P)):
        rows.append(Row(section, label, m, {c: diffs[c][key] if diffs[c] else None for c in columns}))
    return rows


def write_csv(rows: list[Row], columns: list[str], path: Path) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "row", "metric", *columns])
    for r in rows:
        w.writerow([r.section, r.label, r.metric, *("" if r.values.get(c) is None else repr(float(r.values[c]))
                                                   for c in columns)])
    return atomic_write(path, buf.getvalue())


def _f(v, signed=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def markdown(rows: list[Row], columns: list[str], labels: dict[str, str], baseline: str) -> str:
    """The table in Markdown: the overall row carries its interval, the difference row its
    interval and p-value; one block per section."""
    lookup = {(r.section, r.label, r.metric): r.values for r in rows}
    head = "| | " + " | ".join(labels.get(c, c) + (" (baseline)" if c == baseline else "") for c in columns) + " |"
    sep = "|---|" + "---|" * len(columns)
    blocks = []
    for section in dict.fromkeys(r.section for r in rows):
        lines = [f"**{section}**", "", head, sep]
        for r in (r for r in rows if r.section == section):
            name = f"{METRIC_NAMES.get(r.metric, r.metric)} {r.label}".strip()
            if r.label in DETAIL:
                continue
            cells = []
            for c in columns:
                v = r.values.get(c)
                if r.label == OVERALL:
                    lo, hi = (lookup[(section, k, r.metric)].get(c) for k in (CI_LOW, CI_HIGH))
                    cells.append(_f(v) + (f" [{_f(lo)}, {_f(hi)}]" if v is not None else ""))
                elif r.label == DIFF:
                    lo, hi, p = (lookup[(section, k, r.metric)].get(c) for k in (DIFF_LOW, DIFF_HIGH, DIFF_P))
                    cells.append("-" if c == baseline else _f(v, True) + (f" [{_f(lo, True)}, {_f(hi, True)}] "
                                                                          f"p={p:.3f}" if v is not None else ""))
                else:
                    cells.append(_f(v))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
