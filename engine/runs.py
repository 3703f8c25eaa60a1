"""Where things live: the run folder layout (``RunDir``), the default runs, cache and prediction
folders, and the dataset a command uses when none is given. Nothing else builds these paths.

A run folder::

    runs/<name>/config.json        the run description (core.config.TrainConfig, network included)
                plan.json          the plan the run trains on (its network entry as trained)
                fingerprint.json   the dataset fingerprint the plan came from (first stage only)
                data.json          the data selection (core.config.DataSelection)
                splits.json        the cross-validation folds: [{"train": [...], "val": [...]}, ...]
                request.json       the train.py flags that made the run, defaults filled in
                fold_<k>/checkpoint_{latest,best,final}.pt, log.csv, validation.json, progress.png
                fold_full/         the same for a run on every case (--fold full, no validation)
                pcr_model.pt, report.json, oof_predictions.csv   (pCR runs)
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from core import plan as planlib
from core.atomic import atomic_write
from core.config import FULL_FOLD, DataSelection, TrainConfig
from core.errors import UserError

REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = ("latest", "best", "final")


def runs_root(override: str | os.PathLike | None = None) -> Path:
    """``override``, else ``$MAMAMIA_RUNS``, else ``<repo>/runs``."""
    if override:
        return Path(override)
    return Path(os.environ.get("MAMAMIA_RUNS", REPO / "runs"))


def predictions_root() -> Path:
    return REPO / "predictions"


def cache_root(dataset: Path, kind: str = "preprocessed", override: str | os.PathLike | None = None) -> Path:
    """``<repo>/.cache/<kind>/<dataset name>-<hash of its path>`` (or under $MAMAMIA_CACHE):
    never inside the dataset, so a read-only download works and inputs are never touched.
    ``override`` (``--cache-dir``) replaces the whole path for preprocessed cases and is the
    parent of ``<dataset name>-<kind>`` for other kinds."""
    if override:
        return Path(override) if kind == "preprocessed" else Path(override) / f"{Path(dataset).name}-{kind}"
    base = Path(os.environ["MAMAMIA_CACHE"]) if os.environ.get("MAMAMIA_CACHE") else REPO / ".cache"
    tag = hashlib.sha256(str(Path(dataset).resolve()).encode()).hexdigest()[:8]
    return base / kind / f"{Path(dataset).name}-{tag}"


def dataset_root(path: str | os.PathLike | None, phantom_cases: int = 40, phantom_seed: int = 0) -> Path:
    """The given dataset folder (which must exist), or the built-in phantom dataset of
    ``phantom_cases`` small cases drawn with ``phantom_seed`` (generated once and cached, see
    ``data.phantom.default_dataset``)."""
    if path:
        root = Path(path)
        if not root.is_dir():
            raise UserError(f"--data {path}: folder not found")
        return root
    from data import phantom
    try:
        return phantom.default_dataset(cases=phantom_cases, seed=phantom_seed)
    except OSError as exc:
        raise UserError(f"no --data given and the default phantom dataset is unavailable ({exc})") from exc


def fold_name(fold: int) -> str:
    """``0``..``4``, or ``full`` for the fold trained on every case."""
    return "full" if fold == FULL_FOLD else str(int(fold))


class RunDir:
    """One run folder; every path inside it comes from here."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def named(cls, name: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> "RunDir":
        """A run given by name (under the runs folder) or by path."""
        p = Path(name)
        if p.is_dir() or p.is_absolute() or len(p.parts) > 1:
            return cls(p)
        if not str(name) or str(name) in (".", "..") or "\x00" in str(name):
            raise UserError(f"run name {str(name)!r} is not a folder name")
        return cls(runs_root(runs_dir) / str(name))

    @classmethod
    def latest(cls, runs_dir: str | os.PathLike | None = None) -> "RunDir":
        """The run whose checkpoint was written most recently."""
        root = runs_root(runs_dir)
        runs = [cls(p.parent) for p in root.glob("*/config.json")]
        runs = [r for r in runs if r.checkpoints()]
        if not runs:
            raise UserError(f"{root}: no trained run found (train one with train.py)")
        return max(runs, key=lambda r: max(c.stat().st_mtime for c in r.checkpoints()))

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # files of the run
    config_path = property(lambda self: self.path / "config.json")
    plan_path = property(lambda self: self.path / "plan.json")
    fingerprint_path = property(lambda self: self.path / "fingerprint.json")
    data_path = property(lambda self: self.path / "data.json")
    splits_path = property(lambda self: self.path / "splits.json")
    request_path = property(lambda self: self.path / "request.json")
    selection_path = property(lambda self: self.path / "selection.json")   # what --select etc. kept
    pcr_model_path = property(lambda self: self.path / "pcr_model.pt")
    report_path = property(lambda self: self.path / "report.json")
    oof_path = property(lambda self: self.path / "oof_predictions.csv")

    def exists(self) -> bool:
        return self.config_path.is_file()

    # folds
    def fold_dir(self, fold: int) -> Path:
        return self.path / f"fold_{fold_name(fold)}"

    def checkpoint(self, fold: int, which: str = "final") -> Path:
        if which not in CHECKPOINTS:
            raise ValueError(f"checkpoint {which!r}: expected one of {CHECKPOINTS}")
        return self.fold_dir(fold) / f"checkpoint_{which}.pt"

    def log_path(self, fold: int) -> Path:
        return self.fold_dir(fold) / "log.csv"

    def progress_path(self, fold: int) -> Path:
        return self.fold_dir(fold) / "progress.png"

    def validation_path(self, fold: int) -> Path:
        return self.fold_dir(fold) / "validation.json"

    def folds(self) -> list[int]:
        """Folds with a folder, in order."""
        out = []
        for p in self.path.glob("fold_*"):
            suffix = p.name[len("fold_"):]
            if p.is_dir() and (suffix.isdigit() or suffix == "full"):
                out.append(FULL_FOLD if suffix == "full" else int(suffix))
        return sorted(out)

    def checkpoints(self, which: str | None = None) -> list[Path]:
        kinds = (which,) if which else CHECKPOINTS
        return [self.checkpoint(f, k) for f in self.folds() for k in kinds if self.checkpoint(f, k).is_file()]

    def validations(self) -> dict[int, dict]:
        out = {}
        for f in self.folds():
            p = self.validation_path(f)
            if p.is_file():
                try:
                    out[f] = json.loads(p.read_text())
                except json.JSONDecodeError as exc:
                    raise UserError(f"{p}: invalid JSON ({exc})") from exc
        return out

    # reading and writing the description
    def _json(self, path: Path):
        if not path.is_file():
            raise UserError(f"{path}: not found ({self.path} is not a complete run folder)")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: invalid JSON ({exc})") from exc

    def write_json(self, path: Path, obj) -> Path:
        return atomic_write(path, json.dumps(obj, indent=1) + "\n")

    def load_plan(self) -> planlib.Plan:
        return planlib.load_plan(self.plan_path)

    def load_config(self) -> TrainConfig:
        from nets.checkpoint import config_from_dict  # the registry migrates older descriptions
        plan = self.load_plan() if self.plan_path.is_file() else None
        try:
            return config_from_dict(self._json(self.config_path), plan, where=str(self.config_path))
        except UserError:
            raise
        except ValueError as exc:
            raise UserError(str(exc)) from exc

    def load_data(self) -> DataSelection:
        d = self._json(self.data_path)
        if isinstance(d, dict) and isinstance(d.get("centers"), str):  # written before selections were lists
            d = {**d, "centers": [c for c in d["centers"].split(",") if c]}
        try:
            return DataSelection.from_dict(d, str(self.data_path))
        except ValueError as exc:
            raise UserError(str(exc)) from exc

    def load_splits(self) -> list[dict]:
        splits = self._json(self.splits_path)
        if not isinstance(splits, list) or not all(
                isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list)
                for s in splits):
            raise UserError(f"{self.splits_path}: expected a list of {{'train': [...], 'val': [...]}}")
        return splits

    def save_description(self, config: TrainConfig, plan: planlib.Plan, data: DataSelection, splits,
                         fingerprint=None) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        planlib.save_plan(plan, self.plan_path)
        if fingerprint is not None:
            planlib.save_plan(fingerprint, self.fingerprint_path)
        self.write_json(self.data_path, data.to_dict())
        self.write_json(self.splits_path, splits)
        self.write_json(self.config_path, config.to_dict())   # last: its presence marks a run
