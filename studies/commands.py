"""From a study, a budget and a dataset to the exact train.py / infer.py / eval.py command lines.

Every configuration becomes up to three steps, ``<config>/train``, ``<config>/infer`` and
``<config>/eval``, each an argument list for one entry point (run by the runner as
``sys.executable <script> ...``; nothing imports the entry points). The run of a configuration is
``<out>/runs/<config>``, its masks ``<out>/predictions/<config>``, its scores
``<out>/eval/<config>``. With ``loco`` every configuration is also trained without each center
(``<config>__loco_<CENTER>``) and evaluated on every case of that center (``--split all
--centers CENTER``). Case counts written ``N/TOTAL`` are scaled to the dataset (``round(N *
cases / TOTAL)``, at least the budget's ``min_cases``); a configuration left with fewer training
cases than that is skipped, with the reason in the table. A cell whose train.py flags equal an
earlier cell's (DUKE + NACT trained without ISPY1 is DUKE + NACT) predicts with that run instead
of training it again.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from studies.spec import Config, Study

REPO = Path(__file__).resolve().parent.parent
SCALED = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
LOCO_SEP = "__loco_"


@dataclass(frozen=True)
class Step:
    config: str                 # configuration name (LOCO ones included)
    kind: str                   # train | infer | eval
    argv: tuple[str, ...]       # script then its arguments
    deps: tuple[str, ...] = ()  # keys of the steps that must finish first
    hash: str = ""

    @property
    def key(self) -> str:
        return f"{self.config}/{self.kind}"


@dataclass
class Cell:
    """One column of the study: a configuration, where it is tested, and its steps."""
    config: str
    base: str                   # the study's configuration it comes from
    label: str
    holdout: str | None         # LOCO: the center left out and tested on
    steps: list[Step] = field(default_factory=list)
    skipped: str | None = None
    n_train: int | None = None
    reuses: str | None = None   # the cell whose run this one predicts with (same training flags)


@dataclass
class Facts:
    """What the commands depend on in the dataset: its size, centers and training-case counts."""
    total: int
    centers: tuple[str, ...]
    train_cases: list            # the train split's cases with an expert mask

    def available(self, centers, phases) -> int:
        from engine.flags import parse_phases
        want = set(centers) if centers else set(self.centers)
        ph = parse_phases(str(phases) if phases is not None else "0,1,2")
        return sum(1 for c in self.train_cases if c.center in want and all(p in c.phase_numbers for p in ph))


def dataset_facts(data: str | None) -> Facts:
    from data import mamamia
    from engine.runs import dataset_root
    cases = mamamia.load_dataset(dataset_root(data))
    has_split = any(c.split for c in cases)
    train = [c for c in cases if (c.split == "train" or not has_split) and c.mask_path is not None]
    return Facts(len(cases), tuple(sorted({c.center for c in cases})), train)


def flag_args(options: dict, kind: str) -> list[str]:
    """``{"max_cases": 5, "clahe": True, "set": ["a=1"]}`` -> ``--max-cases 5 --clahe --set a=1``."""
    out: list[str] = []
    for key, value in options.items():
        if value is None or value is False and key != "amp":
            continue
        if kind == "train" and key == "amp":
            out += [] if value else ["--no-amp"]
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, list):
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, str(value)]
    return out


def _centers(text) -> list[str] | None:
    return [c.strip().upper() for c in str(text).split(",") if c.strip()] if text else None


def _cap_folds(fold, cap: int):
    if str(fold) == "all" and cap < 5:
        return ",".join(str(k) for k in range(cap))
    return fold


def build(study: Study, budget: dict, facts: Facts, out: Path, data: str | None) -> list[Cell]:
    """Every cell (configuration x test set) with its steps, in an order that respects the
    dependencies (sources before UpKern targets and ensembles)."""
    runs, preds, evals = out / "runs", out / "predictions", out / "eval"
    holdouts: list[str | None] = [None] + (list(facts.centers) if study.loco else [])
    cells: dict[str, Cell] = {}
    trained: dict[tuple, str] = {}     # train.py flags -> the cell whose run they make
    data_args = ["--data", str(Path(data).resolve())] if data else []
    for holdout in holdouts:
        for cfg in _ordered(study):
            if holdout and not cfg.loco:
                continue
            name = _name(cfg.name, holdout)
            cell = Cell(name, cfg.name, cfg.label + (f" (without {holdout})" if holdout else ""), holdout)
            cells[name] = cell
            if cfg.ensemble:
                members = [cells.get(_name(m, holdout)) for m in cfg.ensemble]
                gone = [m.config for m in members if m is None or m.skipped]
                if gone:
                    cell.skipped = f"ensemble member(s) {gone} skipped"
                    continue
                run_names = [m.config for m in members]
                deps = tuple(f"{m}/train" for m in run_names)
            else:
                train = _train_options(cfg, study, budget, facts, holdout, cells)
                if isinstance(train, str):
                    cell.skipped = train
                    continue
                cell.n_train = train.pop("__n__")
                src = cfg.upkern_from and _name(cfg.upkern_from, holdout)
                if src and cells[src].skipped:
                    cell.skipped = f"UpKern source {src} skipped"
                    continue
                if src:
                    train["upkern_from"] = src
                check_train(study, name, train)
                flags = tuple(flag_args(train, "train"))
                if flags in trained:       # the same training as another cell (e.g. DUKE + NACT
                    run_names = [trained[flags]]    # without ISPY1): its run is reused
                    deps = (f"{trained[flags]}/train",)
                    cell.reuses = trained[flags]
                else:
                    trained[flags] = name
                    argv = ["train.py", "--run", name, "--runs-dir", str(runs), *flags, *data_args, "--resume", "-q"]
                    cell.steps.append(Step(name, "train", tuple(argv), (f"{src}/train",) if src else ()))
                    run_names, deps = [name], (f"{name}/train",)
            infer_opts = {**budget["infer"], **cfg.infer}      # the study's own choice wins
            infer_opts.setdefault("ensemble", True)
            split = ["--split", "all", "--centers", holdout] if holdout else ["--split", "test"]
            argv = ["infer.py", "--runs", *(str(runs / r) for r in run_names), "--output", str(preds / name),
                    *split, *data_args, *flag_args(infer_opts, "infer"), "-q"]
            cell.steps.append(Step(name, "infer", tuple(argv), deps))
            argv = ["eval.py", "--pred", str(preds / name), "--out", str(evals / name), *split, *data_args,
                    *flag_args(budget["eval"], "eval"), "--quiet"]
            cell.steps.append(Step(name, "eval", tuple(argv), (f"{name}/infer",)))
    _hash_steps(cells.values(), out)
    return list(cells.values())


def _name(config: str, holdout: str | None) -> str:
    return f"{config}{LOCO_SEP}{holdout}" if holdout else config


def _ordered(study: Study) -> list[Config]:
    """Configurations with every source (UpKern, ensemble member, size reference) before its user."""
    done: list[Config] = []
    seen: set[str] = set()

    def visit(c: Config, stack: tuple[str, ...]):
        if c.name in seen:
            return
        if c.name in stack:
            raise UserError(f"{study.path}: configurations depend on each other in a cycle: "
                            f"{' -> '.join(stack + (c.name,))}")
        refs = list(c.ensemble) + [r for r in (c.upkern_from, (c.match_size or {}).get("config")) if r]
        for r in refs:
            visit(study.config(r), stack + (c.name,))
        seen.add(c.name)
        done.append(c)

    for c in study.configs:
        visit(c, ())
    return done


def _train_options(cfg: Config, study: Study, budget: dict, facts: Facts, holdout, cells) -> dict | str:
    """train.py options of ``cfg`` under ``budget`` (and without ``holdout``), with ``__n__`` the
    number of training cases available; a string says why the cell is skipped."""
    opts = dict(cfg.train)
    opts.update(budget["train"])
    if not cfg.upkern_from:
        opts.update(budget["network"])
    opts["fold"] = _cap_folds(opts.get("fold", "0"), budget["folds"])
    own = _centers(opts.get("centers")) or list(facts.centers)
    if holdout:
        own = [c for c in own if c != holdout]
        if not own:
            return f"trains on {holdout} only"
        opts["centers"] = ",".join(own)
    phases = opts.get("phases")
    n_avail = facts.available(own, phases)
    minimum = budget["min_cases"]
    if n_avail < minimum:
        return f"{n_avail} training case(s) available, fewer than {minimum}"
    n = n_avail
    scaled = SCALED.match(str(opts.get("max_cases", "")))
    if scaled:
        num, den = int(scaled.group(1)), int(scaled.group(2))
        opts["max_cases"] = min(n_avail, max(minimum, round(num * facts.total / den)))
        n = opts["max_cases"]
    elif "max_cases" in opts:
        n = min(n_avail, int(opts["max_cases"]))
    if cfg.match_size:
        ref = study.config(cfg.match_size["config"])
        ref_cell = cells.get(_name(ref.name, holdout))
        if ref_cell is None or ref_cell.skipped or ref_cell.n_train is None:
            return f"size reference {ref.name} skipped"
        target = ref_cell.n_train
        if cfg.match_size["by"] == "max_cases":
            opts["max_cases"] = target
            n = min(n_avail, target)
        else:
            drop = n_avail - target
            if drop > 0:
                opts["drop_worst"] = str(drop)
            n = min(n_avail, target)
    opts["__n__"] = n
    return opts


def check_train(study: Study, name: str, options: dict) -> None:
    """train.py's own torch-free flag checks (engine.flags.check_flags) on a cell's options, so
    a wrong value fails before the study starts, naming the study file and the configuration."""
    import typing

    from engine import flags
    hints = typing.get_type_hints(flags.TrainRequest)
    values = {}
    for key, value in options.items():
        hint = str(hints[key])
        try:
            if isinstance(value, list) or isinstance(value, bool) or value is None:
                values[key] = value
            elif "int" in hint and "str" not in hint:
                values[key] = int(value)
            elif "float" in hint:
                values[key] = float(value)
            else:
                values[key] = str(value)
        except ValueError:
            raise UserError(f"{study.path}: config {name}: {key} = {value!r}: expected a number") from None
    try:
        flags.check_flags(flags.TrainRequest(**values))
    except UserError as exc:
        raise UserError(f"{study.path}: config {name}: {exc}") from None


def _hash_steps(cells, out: Path) -> None:
    """Each step's hash: its arguments (with the study folder written as ``<out>``, so a moved
    study keeps its hashes) and the hashes of the steps it depends on."""
    by_key: dict[str, Step] = {}
    for cell in cells:
        for i, s in enumerate(cell.steps):
            text = json.dumps({"argv": [a.replace(str(out), "<out>") for a in s.argv],
                               "deps": [by_key[d].hash for d in s.deps if d in by_key]})
            s2 = Step(s.config, s.kind, s.argv, s.deps, hashlib.sha256(text.encode()).hexdigest()[:16])
            cell.steps[i] = s2
            by_key[s2.key] = s2
