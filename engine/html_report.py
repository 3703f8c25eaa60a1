"""``report.html``: one static page beside ``summary.json`` to look at an evaluation: the official
scores, the per-center and per-subgroup tables, the plots, and the per-case rows (sortable by any
column, worst Dice first) with overlay thumbnails. No server, no external resources: images are
referenced relative to the page, the sorting is ten lines of inline script."""
from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

from core.atomic import atomic_write

_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}th{background:#eee;cursor:pointer}
td:first-child,th:first-child{text-align:left}img.thumb{height:90px}img.plot{max-width:48%;margin:.3em}
.official{font-size:1.1em}.note{color:#666;font-size:.9em}"""
_SORT = """document.querySelectorAll('table.sortable th').forEach((th,i)=>th.addEventListener('click',()=>{
const t=th.closest('table'),rows=[...t.tBodies[0].rows],asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
const v=r=>{const s=r.cells[i].dataset.v??r.cells[i].textContent;const n=parseFloat(s);return isNaN(n)?s:n};
rows.sort((a,b)=>{const x=v(a),y=v(b);return (x>y?1:x<y?-1:0)*(asc?1:-1)});rows.forEach(r=>t.tBodies[0].append(r))}));"""


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4f}"
    return html.escape(str(v))


def _table(rows, columns, sortable: bool = False, extra=None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in columns) + ("<th>overlay</th>" if extra else "")
    body = []
    for r in rows:
        cells = "".join(f'<td data-v="{html.escape(str(r.get(k)))}">{_cell(r.get(k))}</td>' for k, _ in columns)
        if extra:
            cells += f"<td>{extra(r)}</td>"
        body.append(f"<tr>{cells}</tr>")
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_report(out: Path, summary: dict, rows: list[dict], task: str, thumbnails: dict | None = None) -> Path:
    """``out/report.html`` for a Task 1 (``seg``) or Task 2 (``pcr``) summary and its per-case rows."""
    out = Path(out)
    rel = lambda p: html.escape(os.path.relpath(p, out))  # noqa: E731
    o = summary.get("official") or {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>MAMA-MIA evaluation</title>"
             f"<style>{_STYLE}</style></head><body><h1>MAMA-MIA Task {1 if task == 'seg' else 2} evaluation</h1>"]
    if task == "seg" and o:
        parts.append(f"<p class='official'>Official ({o.get('n_cases')} cases): mean Dice {_cell(o.get('mean_dice'))}, "
                     f"mean NormHD {_cell(o.get('mean_norm_hd'))}, Performance {_cell(o.get('performance'))}, "
                     f"Fairness {_cell(o.get('fairness'))}, Ranking {_cell(o.get('ranking'))}</p>")
        cols = [("group", "group"), ("count", "n"), ("dice", "Dice"), ("norm_hd", "NormHD"), ("hd95", "HD95"),
                ("hd95_mm", "HD95 mm*"), ("volume_diff_ml", "dVol ml*")]
    elif o:
        parts.append(f"<p class='official'>Official ({o.get('n_cases')} cases): balanced accuracy "
                     f"{_cell(o.get('balanced_accuracy'))}, disparity {_cell(o.get('disparity'))}, "
                     f"Ranking {_cell(o.get('ranking'))}</p>")
        cols = [("group", "group"), ("count", "n"), ("pcr_rate", "pCR rate"), ("balanced_accuracy", "BA"),
                ("tpr", "TPR"), ("fpr", "FPR")]
    else:
        cols = []
        parts.append("<p>No case could be scored.</p>")
    if cols:
        parts.append("<h2>Per center</h2>" + _table(summary.get("per_center", []), cols))
        for v, table in (summary.get("per_subgroup") or {}).items():
            parts.append(f"<h2>By {html.escape(v)}</h2>" + _table(table, cols))
    if summary.get("plots"):
        parts.append("<h2>Plots</h2>" + "".join(f"<img class='plot' src='{rel(p)}' alt='{rel(p)}'>"
                                                 for p in summary["plots"]))
    key = "dice" if task == "seg" else "score"
    case_cols = ([("patient_id", "case"), ("center", "center"), ("prediction", "prediction"), ("dice", "Dice"),
                  ("norm_hd", "NormHD"), ("hd95", "HD95"), ("volume_gt_ml", "volume ml")] if task == "seg" else
                 [("patient_id", "case"), ("center", "center"), ("pcr_true", "pCR"), ("pcr_pred", "predicted"),
                  ("score", "score")])
    ordered = sorted(rows, key=lambda r: (r.get(key) if isinstance(r.get(key), (int, float)) else -1, r["patient_id"]))
    thumbs = thumbnails or {}
    extra = (lambda r: f"<img class='thumb' src='{rel(thumbs[r['patient_id']])}'>" if r["patient_id"] in thumbs
             else "") if thumbs else None
    parts.append(f"<h2>Cases ({len(rows)}, worst first; click a header to sort)</h2>"
                 + _table(ordered, case_cols, sortable=True, extra=extra))
    parts.append("<p class='note'>* non-official extra. Definitions: summary.json.</p>"
                 f"<script>{_SORT}</script></body></html>")
    return atomic_write(out / "report.html", "\n".join(parts))
