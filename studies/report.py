"""The study folder's outputs: ``table.csv``, ``table.md``, ``plot.png`` (grouped bars per center,
one group per test center plus overall with its 95 % interval, one bar per configuration; a panel
per metric, and one for the held-out centers of a leave-one-center-out study) and ``report.md``
(the question, the table, the plot and the exact commands of every column)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from core.atomic import atomic_write
from studies import table as tab
from studies.commands import Cell
from studies.runner import STATE, shell_line
from studies.spec import Study


def collect(cells: list[Cell], out: Path):
    """(test results by column, LOCO results by column and held-out center, skipped reasons)."""
    tests, loco, skipped = {}, {}, {}
    for cell in cells:
        trains = cell.reuses or (cell.config if any(s.kind == "train" for s in cell.steps) else None)
        run = out / "runs" / trains if trains else None
        if cell.skipped:
            skipped[cell.config] = cell.skipped
            continue
        res = tab.read_result(out / "eval" / cell.config, run)
        if cell.holdout:
            loco.setdefault(cell.base, {})[cell.holdout] = res
        else:
            tests[cell.base] = res
    return tests, loco, skipped


def plot(rows: list[tab.Row], columns: list[str], labels: dict[str, str], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(s, m) for s, m in dict.fromkeys((r.section, r.metric) for r in rows
                                               if r.section != "validation" and r.metric)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 1.3 * len(columns) + 4), 3.2 * len(panels)),
                             squeeze=False)
    width = 0.8 / max(1, len(columns))
    for ax, (section, metric) in zip(axes[:, 0], panels):
        sel = [r for r in rows if r.section == section and r.metric == metric
               and r.label not in tab.DETAIL and r.label != tab.DIFF]
        ci = {k: next((r.values for r in rows if r.section == section and r.metric == metric
                       and r.label == label), {}) for k, label in (("low", tab.CI_LOW), ("high", tab.CI_HIGH))}
        x = np.arange(len(sel))
        for j, c in enumerate(columns):
            vals = [r.values.get(c) for r in sel]
            pos = x + (j - (len(columns) - 1) / 2) * width
            ax.bar(pos, [np.nan if v is None else v for v in vals], width, label=labels.get(c, c))
            for k, (r, v) in enumerate(zip(sel, vals)):     # the interval of the overall mean
                lo, hi = ci["low"].get(c), ci["high"].get(c)
                if r.label == tab.OVERALL and None not in (v, lo, hi):
                    ax.errorbar(pos[k], v, yerr=[[v - lo], [hi - v]], color="black", capsize=2, lw=1)
        ax.set_xticks(x, [r.label for r in sel])
        ax.set_ylabel(tab.METRIC_NAMES.get(metric, metric))
        ax.set_title(f"{tab.METRIC_NAMES.get(metric, metric)}: {section}" +
                     (" (trained without it)" if section == "held-out center" else ""))
        if metric == "dice":
            ax.set_ylim(0, 1)
    handles, names = axes[0, 0].get_legend_handles_labels()
    ncol = min(3, len(columns))
    legend_rows = -(-len(columns) // ncol)
    fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.045 * legend_rows / len(panels) + 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write(study: Study, cells: list[Cell], out: Path, budget_name: str, data_label: str) -> dict[str, Path]:
    """Write the table, plot and report of whatever has finished; returns their paths."""
    columns = [c.name for c in study.configs]
    labels = {c.name: c.label for c in study.configs}
    tests, loco, skipped = collect(cells, out)
    groups: dict[str, list[str]] = {}
    for c in study.configs:
        if c.group:
            groups.setdefault(c.group, []).append(c.name)
    for group, members in groups.items():          # draws: one more column, their mean per case
        col = f"{group}_mean"
        columns.append(col)
        labels[col] = f"{group} (mean of {len(members)} draws)"
        avg = tab.average_results([tests[m] for m in members if m in tests])
        if avg is not None:
            tests[col] = avg
        for held in {h for m in members for h in loco.get(m, {})}:
            avg = tab.average_results([loco[m][held] for m in members if held in loco.get(m, {})])
            if avg is not None:
                loco.setdefault(col, {})[held] = avg
    rows = tab.build_rows(columns, tests, study.baseline, study.metrics, study.validation, loco or None)
    md = tab.markdown(rows, columns, labels, study.baseline)
    paths = {"csv": tab.write_csv(rows, columns, out / "table.csv"),
             "md": atomic_write(out / "table.md", md)}
    paths["plot"] = plot(rows, columns, labels, out / "plot.png")
    state = json.loads((out / STATE).read_text())["steps"] if (out / STATE).is_file() else {}
    lines = [f"# {study.title}", "", study.question, "",
             f"Study file `{study.path.name}`, budget `{budget_name}`, dataset {data_label}; written "
             f"{time.strftime('%Y-%m-%d %H:%M')}. Baseline of the paired comparisons: "
             f"`{study.baseline}`. Overall figures: mean over cases with a 95 % percentile-bootstrap "
             "interval over cases (10,000 resamples); differences: paired bootstrap over the cases "
             "both configurations were tested on.", "", md, "![per center](plot.png)", ""]
    if skipped:
        lines += ["## Not run", "", "Where a column lacks cells, its overall row pools fewer cases than the "
                  "others; the paired differences use only the cases both columns were tested on.", ""]
        lines += [f"- `{k}`: {v}" for k, v in skipped.items()] + [""]
    lines += ["## Commands", ""]
    for cell in cells:
        if not cell.steps:
            continue
        lines.append(f"### {cell.config}" + (f" ({cell.n_train} training cases)" if cell.n_train else "")
                     + (f", the run of `{cell.reuses}`" if cell.reuses else ""))
        lines.append("")
        lines.append("```")
        for s in cell.steps:
            rec = state.get(s.key, {})
            lines.append(rec.get("command", shell_line(s)))
            if rec.get("seconds") is not None:
                lines.append(f"# {rec.get('status')} in {rec['seconds']:.0f} s")
        lines += ["```", ""]
    paths["report"] = atomic_write(out / "report.md", "\n".join(lines))
    return paths
