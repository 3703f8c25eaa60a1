"""Run a study: train, infer and evaluate every configuration of a study file, resumably, and
write its table, plot and report.

    python -m studies list
    python -m studies run seed_a --budget smoke                 # the default (phantom) dataset
    python -m studies run seed_b --data /data/MAMA-MIA --budget gpu --parallel 4
    python -m studies run selection --print-commands            # one command per line, nothing run
    python -m studies run my_study.toml --out results/mine

A study folder (``--out``, default ``out/studies/<study>-<budget>``) holds ``state.json`` (what
ran: every command, its hash and status), ``runs/``, ``predictions/``, ``eval/``, ``logs/`` and
the outputs ``table.csv``, ``table.md``, ``plot.png`` and ``report.md``. Rerunning the same
command resumes: finished steps are skipped, an interrupted training continues from its last
epoch. A finished step whose command changed (study file, budget or dataset edited) stops the
run with the list of such steps unless ``--force`` (the old outputs are moved to superseded/).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m studies", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the study files shipped in studies/ and what each answers")
    r = sub.add_parser("run", help="run (or resume) a study")
    r.add_argument("study", help="a study name (studies/<name>.toml) or a .toml file")
    r.add_argument("--data", help="MAMA-MIA root (default: the phantom dataset)")
    r.add_argument("--budget", default="smoke", help="smoke (minutes), cpu (an afternoon on 2 cores) or gpu "
                   "(the papers' schedules); default smoke")
    r.add_argument("--out", help="study folder (default out/studies/<study>-<budget>)")
    r.add_argument("--print-commands", action="store_true",
                   help="print every train/infer/eval command, one per line, in an order that respects "
                        "the dependencies; run nothing")
    r.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="run up to N independent steps at once (each on its own CUDA device when there are any)")
    r.add_argument("--force", action="store_true",
                   help="redo the finished steps whose commands changed (and what depends on them)")
    r.add_argument("--table-only", action="store_true", help="only (re)write the table, plot and report")
    return p.parse_args(argv)


def run(args) -> int:
    from core.errors import UserError
    from studies import budgets, commands, report, runner, spec
    if args.action == "list":
        for name in spec.available():
            s = spec.load(name)
            print(f"{name:10s} {s.title}\n{'':10s} {len(s.configs)} configuration(s)"
                  f"{', leave-one-center-out' if s.loco else ''}; {s.question}\n")
        return 0
    if args.parallel < 1:
        raise UserError(f"--parallel {args.parallel}: must be >= 1")
    study = spec.load(args.study)
    budget = budgets.resolve(args.budget, study.budgets)
    out = Path(args.out) if args.out else commands.REPO / "out" / "studies" / f"{study.name}-{args.budget}"
    out = out.resolve()
    facts = commands.dataset_facts(args.data)
    cells = commands.build(study, budget, facts, out, args.data)
    if args.print_commands:
        for cell in cells:
            for step in cell.steps:
                print(runner.shell_line(step))
        return 0
    data_label = f"`{args.data}`" if args.data else "the built-in phantom"
    data_label += f" ({facts.total} cases, centers {', '.join(facts.centers)})"
    out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        state = runner.State(out)
        redone = runner.check_changes(cells, state, out, args.force)
        if redone:
            print(f"--force: redoing {len(redone)} changed step(s): {', '.join(redone[:8])}"
                  + (f" and {len(redone) - 8} more" if len(redone) > 8 else ""))
        skipped = [c for c in cells if c.skipped]
        for c in skipped:
            print(f"not run: {c.config}: {c.skipped}")
        t0 = time.time()
        print(f"study {study.name} ({args.budget}): {sum(len(c.steps) for c in cells)} step(s) into {out}")
        result = runner.run_steps(cells, out, args.parallel)
        print(f"study steps finished in {time.time() - t0:.0f} s")
        failed = {k: v for k, v in result.items() if not v.startswith(("done", "skipped"))}
    else:
        failed = {}
    paths = report.write(study, cells, out, args.budget, data_label)
    print((out / "table.md").read_text())
    print(f"wrote {paths['csv']}, {paths['md']}, {paths['plot']} and {paths['report']}")
    if failed:
        print(f"{len(failed)} step(s) did not finish:")
        for k, v in failed.items():
            print(f"  {k}: {v}")
        return 1
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from core.cli import run_entry_point
    return run_entry_point("studies", lambda: run(args), logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
