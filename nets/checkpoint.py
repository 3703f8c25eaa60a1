"""Checkpoints: one ``torch.save`` dict per file, written atomically, with the network rebuilt
from what the file itself records (architecture name + builder arguments), never guessed."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from nets import build_network


def save(payload: dict, path: str | os.PathLike) -> Path:
    """Write ``payload`` to ``path`` via a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"{path}: unreadable checkpoint: {exc}") from exc
    missing = [k for k in ("model", "arch", "net_kwargs", "plan", "config") if k not in state]
    if missing:
        raise ValueError(f"{path}: not a training checkpoint (missing {missing})")
    return state


def build_from(state: dict) -> nn.Module:
    """The network a checkpoint describes, weights loaded, in eval mode (one output tensor)."""
    model = build_network(state["arch"], **state["net_kwargs"])
    model.load_state_dict(state["model"])
    return model.eval()
