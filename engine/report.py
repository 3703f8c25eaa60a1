"""How scores are shown and stored: aligned text tables, the printed blocks of Task 1 and
Task 2, strict JSON (inf as "inf", NaN as null) and the per-case CSV + summary.json pair."""
from __future__ import annotations

import csv
import io as _text_io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from core import fairness as fair
from data import io


def pcr_group_rows(rows, key: str) -> list[dict[str, Any]]:
    t = np.array([r["pcr_true_used"] for r in rows])
    p = np.array([r["pcr_pred"] for r in rows])
    out = []
    for g, i in fair.group_indices([r[key] for r in rows]).items():
        tpr, fpr = fair.tpr_fpr(t[i], p[i])
        out.append({"group": g, "count": int(i.size), "pcr_rate": float(t[i].mean()),
                    "balanced_accuracy": fair.balanced_accuracy(t[i], p[i]), "tpr": tpr, "fpr": fpr,
                    "predicted_rate": float(p[i].mean())})
    return out


def format_seg(summary, overall, shown, args) -> str:
    o = summary["official"]
    tag = "official" if o["is_official"] else "NOT official: --hd-units mm"
    per_var = ", ".join(f"{v} {x:.4f}" for v, x in o["fairness_per_variable"].items())
    parts = [f"\nMAMA-MIA Task 1 scores ({tag}; {o['n_cases']} cases)\n"
             f"  mean Dice     {o['mean_dice']:.4f}\n  mean NormHD   {o['mean_norm_hd']:.4f}\n"
             f"  Performance   {o['performance']:.4f}\n  Fairness      {o['fairness']:.4f}  ({per_var})\n"
             f"  Ranking       {o['ranking']:.4f}"]
    cols = [("group", ""), ("count", "n"), ("dice", "Dice"), ("norm_hd", "NormHD"),
            ("hd95", f"HD95 {args.hd_units}"), ("hd95_mm", "HD95 mm*"), ("assd_mm", "ASSD mm*"),
            ("volume_diff_ml", "dVol ml*"), ("dice_ok", f"Dice>={args.threshold:g}")]
    parts.append("\n" + format_table(overall + summary["per_center"], cols, "Overall and per center"))
    dp = summary["non_official"]["demographic_parity"]
    for v in shown:
        title = f"By {v}: demographic parity* {dp[v]:.4f}"
        if v in o["fairness_per_variable"]:
            title += f", Fair_v {o['fairness_per_variable'][v]:.4f}"
        parts.append("\n" + format_table(summary["per_subgroup"][v], cols, title))
    parts.append("\n* non-official extra. HD95/ASSD means are over cases with finite distances "
                 "(both masks non-empty)\n")
    return "\n".join(parts)


def format_pcr(summary, rows, shown) -> str:
    o, x = summary["official"], summary["non_official"]
    eod = ", ".join(f"{v} {e:.4f}" for v, e in o["eod_per_variable"].items())
    parts = [f"\nMAMA-MIA Task 2 scores (official; {o['n_cases']} cases)\n"
             f"  balanced accuracy  {o['balanced_accuracy']:.4f}\n"
             f"  disparity          {o['disparity']:.4f}  (EOD {eod})\n"
             f"  Ranking            {o['ranking']:.4f}\n"
             f"  AUC*               {x['auc']:.4f}\n  ECE*               {x['ece']:.4f}"]
    cols = [("group", ""), ("count", "n"), ("pcr_rate", "pCR rate"), ("balanced_accuracy", "BA"),
            ("tpr", "TPR"), ("fpr", "FPR"), ("predicted_rate", "pred. rate")]
    parts.append("\n" + format_table(pcr_group_rows([{**r, "all": "all"} for r in rows], "all")
                                      + summary["per_center"], cols, "Overall and per center"))
    for v in shown:
        title = f"By {v}: demographic parity* {x['demographic_parity'][v]:.4f}"
        if v in o["eod_per_variable"]:
            title += f", EOD {o['eod_per_variable'][v]:.4f}"
        parts.append("\n" + format_table(summary["per_subgroup"][v], cols, title))
    parts.append("\n* non-official extra\n")
    return "\n".join(parts)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(v)
    if isinstance(v, (float, np.floating)):
        return "-" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.4f}")
    return str(v)


def format_table(rows, columns, title: str = "") -> str:
    """Aligned text table; ``columns`` = [(key, header)], first column left-aligned."""
    if not rows:
        return f"{title}\n  (no case with a known value)"
    body = [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(heads)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    lines = ([title] if title else []) + [fmt(heads), fmt(["-" * w for w in widths])]
    return "\n".join(lines + [fmt(b) for b in body])


def jsonable(x: Any) -> Any:
    """inf -> "inf" / "-inf", NaN -> null, numpy -> Python (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return None if math.isnan(x) else (("inf" if x > 0 else "-inf") if math.isinf(x) else x)
    return x


def write_outputs(out: Path, rows, columns, summary, echo=print) -> None:
    buf = _text_io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else repr(float(r[c])) if isinstance(r[c], float)
                    else r[c] for c in columns])
    io.atomic_write_text(out / "per_case.csv", buf.getvalue())
    io.atomic_write_text(out / "summary.json", json.dumps(jsonable(summary), indent=1, allow_nan=False))
    echo(f"wrote {out / 'per_case.csv'}, {out / 'summary.json'}"
          + (f" and {len(summary.get('plots', []))} plot(s) in {out / 'plots'}" if summary.get("plots") else ""))
