"""Running a study's steps as subprocesses, resumably, one or several at a time.

``<out>/state.json`` records per step (``<config>/train|infer|eval``) its exact command, the hash
of that command (and of the steps it depends on), whether it is running, done or failed, and its
times; it is rewritten atomically after every change. A rerun skips the steps that are done with
the same hash; a step that was interrupted runs again with the same command (train.py always gets
``--resume``, infer.py completes its folder), so half-done training continues. A done step whose
hash changed (the study file, the budget or the dataset changed) is an error naming the steps,
unless ``force``: then its run and prediction folders are moved to ``<out>/superseded/<time>/``
and it runs again, with everything that depends on it.

Steps run as ``sys.executable <repo>/<script> ...`` with the repository as working folder; each
writes ``<out>/logs/<config>.<step>.log``. With ``parallel`` > 1 up to that many steps whose
dependencies are done run at once; each gets ``CUDA_VISIBLE_DEVICES`` set to its slot when CUDA
devices exist (on CPU, ``OMP_NUM_THREADS`` shares the cores among the slots).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from core.atomic import atomic_write
from core.errors import UserError
from studies.commands import REPO, Cell, Step

STATE = "state.json"


def command_line(step: Step) -> list[str]:
    """What is executed for ``step``."""
    return [sys.executable, str(REPO / step.argv[0]), *step.argv[1:]]


def shell_line(step: Step) -> str:
    return shlex.join(command_line(step))


class State:
    """The study folder's record of what ran (``state.json``)."""

    def __init__(self, out: Path):
        self.path = out / STATE
        self.steps: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self.steps = json.loads(self.path.read_text())["steps"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UserError(f"{self.path}: unreadable study state ({exc}); move it away to start over") from exc

    def save(self) -> None:
        atomic_write(self.path, json.dumps({"steps": self.steps}, indent=1) + "\n")

    def done(self, step: Step) -> bool:
        rec = self.steps.get(step.key)
        return bool(rec) and rec.get("status") == "done" and rec.get("hash") == step.hash

    def changed(self, step: Step) -> bool:
        rec = self.steps.get(step.key)
        return bool(rec) and rec.get("hash") != step.hash and rec.get("status") in ("done", "running", "failed")

    def mark(self, step: Step, status: str, **extra) -> None:
        rec = self.steps.setdefault(step.key, {})
        rec.update(status=status, hash=step.hash, command=shell_line(step), argv=list(step.argv), **extra)
        self.save()


def check_changes(cells: list[Cell], state: State, out: Path, force: bool) -> list[str]:
    """Steps whose recorded command differs from the study's now. Finished or interrupted ones are
    an error unless ``force``; their outputs (and those of failed ones, which are simply redone)
    are moved to ``<out>/superseded/<time>/``. Returns the keys of the steps to redo."""
    changed = [s for c in cells for s in c.steps if state.changed(s)]
    kept = [s.key for s in changed if state.steps[s.key].get("status") != "failed"]
    if kept and not force:
        raise UserError(f"{out}: the study's commands changed for step(s) already run: {', '.join(kept[:8])}"
                        f"{' ...' if len(kept) > 8 else ''}; rerun with --force to redo them and what "
                        "depends on them (their outputs are moved to superseded/), or use another --out")
    aside = out / "superseded" / time.strftime("%Y%m%d-%H%M%S")
    for s in changed:
        for sub in {"train": ["runs"], "infer": ["predictions"], "eval": ["eval"]}[s.kind]:
            src = out / sub / s.config
            if src.exists():
                (aside / sub).mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), str(aside / sub / s.config))
        state.steps.pop(s.key, None)
    if changed:
        state.save()
    return [s.key for s in changed]


def default_launcher(step: Step, log_path: Path, env: dict) -> subprocess.Popen:
    """Start ``step`` with its output appended to ``log_path`` (the command first)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as fh:     # the child keeps its own copy of the descriptor
        fh.write(f"\n$ {shell_line(step)}\n".encode())
        fh.flush()
        return subprocess.Popen(command_line(step), cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)


def cuda_devices() -> int:
    """CUDA devices visible to this process (0 without torch or CUDA)."""
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def slot_env(slot: int, parallel: int, n_dev: int, base: dict | None = None) -> dict:
    """The environment of a step in ``slot``: its own CUDA device (one of those already visible,
    when ``CUDA_VISIBLE_DEVICES`` narrows them), or on CPU an equal share of the cores."""
    env = dict(os.environ if base is None else base)
    if n_dev:
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] or \
            [str(k) for k in range(n_dev)]
        env["CUDA_VISIBLE_DEVICES"] = visible[slot % len(visible)]
    elif parallel > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


def run_steps(cells: list[Cell], out: Path, parallel: int = 1, echo=print,
              launcher: Callable = default_launcher, poll: float = 0.5) -> dict[str, str]:
    """Run every step not yet done; returns {step key: "done" | "skipped" | "failed: ..."} for the
    steps of this call. Steps whose dependency failed are not started."""
    state = State(out)
    steps = [s for c in cells for s in c.steps]
    by_key = {s.key: s for s in steps}
    todo = [s for s in steps if not state.done(s)]
    result = {s.key: "skipped (done before)" for s in steps if state.done(s)}
    if result:
        echo(f"{len(result)} step(s) already done: skipped")
    n_dev = cuda_devices() if parallel > 1 else 0
    running: dict[int, tuple[Step, subprocess.Popen, float]] = {}
    total, started = len(todo), 0
    try:
        while todo or running:
            for slot, (step, proc, t0) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[slot]
                secs = round(time.time() - t0, 1)
                if rc == 0:
                    state.mark(step, "done", seconds=secs, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
                    result[step.key] = "done"
                    echo(f"  done   {step.key} ({secs:.0f} s)")
                else:
                    log = out / "logs" / f"{step.config}.{step.kind}.log"
                    state.mark(step, "failed", seconds=secs, returncode=rc)
                    result[step.key] = f"failed (exit {rc}, see {log})"
                    echo(f"  FAILED {step.key} (exit {rc}); log: {log}")
            blocked = [s for s in todo if any(result.get(d, "").startswith(("failed", "not run")) for d in s.deps)]
            for s in blocked:
                todo.remove(s)
                result[s.key] = "not run (a step it needs failed)"
            free = [k for k in range(max(1, parallel)) if k not in running]
            for s in list(todo):
                if not free:
                    break
                if not all(d not in by_key or state.done(by_key[d]) for d in s.deps):
                    continue
                slot = free.pop(0)
                env = slot_env(slot, parallel, n_dev)
                started += 1
                echo(f"[{started}/{total}] {s.key}" + (f" (slot {slot})" if parallel > 1 else ""))
                state.mark(s, "running", started=time.strftime("%Y-%m-%d %H:%M:%S"))
                running[slot] = (s, launcher(s, out / "logs" / f"{s.config}.{s.kind}.log", env), time.time())
                todo.remove(s)
            if running:
                time.sleep(poll)
            elif todo:      # nothing running and nothing can start: a dependency outside this run
                for s in todo:
                    result[s.key] = "not run (dependency not done)"
                break
    except KeyboardInterrupt:
        for step, proc, _ in running.values():
            proc.terminate()
        for step, proc, _ in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        echo("interrupted: rerun the same command to resume")
        raise
    return result
