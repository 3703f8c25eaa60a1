"""Checkpoints: one ``torch.save`` dict per file, written atomically, read without unpickling
code (``weights_only=True``: tensors, numbers, strings, lists and dicts only), with the network
rebuilt from the run description the file itself records (``config.network``), never guessed.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn

from core import plan as planlib
from core.atomic import atomic_write
from core.config import CONFIG_FORMAT_VERSION, TrainConfig
from core.errors import UserError
from nets import build, entry, network_spec


def save(payload: dict, path: str | os.PathLike) -> Path:
    """Write ``payload`` to ``path`` via a temporary file and ``os.replace`` (never half-written)."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read(path: str | os.PathLike, map_location="cpu") -> dict:
    """Any file written by ``save``, loaded without running code from it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path}: refused: the file holds Python objects other than tensors and plain "
                         f"data, which are never loaded ({str(exc).splitlines()[0]})") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable checkpoint: {exc}") from exc
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a checkpoint (expected a dict, got {type(state).__name__})")
    return state


def config_from_dict(d: dict, plan: planlib.Plan | None = None, net_kwargs: dict | None = None,
                     where: str = "config") -> TrainConfig:
    """A stored run description; version-1 files (``arch``/``size``/``kernel`` fields, the
    network's arguments in the checkpoint's ``net_kwargs`` or derived from the plan) are
    migrated to the current format."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a JSON object")
    if d.get("format_version", 1) == 1 and "arch" in d:
        d = dict(d)
        arch = d.pop("arch")
        size, kernel = d.pop("size", None), d.pop("kernel", None)
        ds, gc = d.pop("deep_supervision", True), d.pop("grad_checkpoint", False)
        if net_kwargs is not None:
            spec = {"name": arch, "kwargs": net_kwargs}
        elif plan is not None:
            options = {"checkpoint": gc} if arch == "mednext" else {}
            ns = network_spec(plan, arch, deep_supervision=ds, **options)
            changes = {k: v for k, v in (("size", size), ("kernel", kernel)) if v is not None}
            spec = planlib.to_dict(ns.with_kwargs(**changes))
        else:
            raise ValueError(f"{where}: a version-1 description needs its plan to be migrated")
        d["network"] = spec
        d["optimizer"] = d.get("optimizer") or entry(arch).default_optimizer
        d.setdefault("schedule", "poly")
        d["format_version"] = CONFIG_FORMAT_VERSION
    return TrainConfig.from_dict(d, where)


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """A training checkpoint; ``state['config']`` becomes a ``TrainConfig`` and ``state['plan']``
    a ``Plan`` (older files migrated)."""
    path = Path(path)
    state = read(path, map_location)
    missing = [k for k in ("model", "plan", "config") if k not in state]
    if missing:
        raise UserError(f"{path}: not a training checkpoint (missing {missing})")
    try:
        state["plan"] = planlib.from_mapping(planlib.Plan, state["plan"], "plan")
        state["config"] = config_from_dict(state["config"], state["plan"], state.get("net_kwargs"), "config")
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from exc
    return state


def build_from(state: dict) -> nn.Module:
    """The network a loaded checkpoint describes, weights loaded, in eval mode (one output tensor)."""
    model = build(state["config"].network)
    model.load_state_dict(state["model"])
    return model.eval()
