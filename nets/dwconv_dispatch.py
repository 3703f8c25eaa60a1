"""A measured choice between implementations of one operation, remembered per key.

:class:`Dispatcher` times each candidate once for a key (``timer(name, fn)`` -> seconds; the
default, :func:`wall_time`, synchronises CUDA), keeps the fastest in a dict and, when given a
path, in a JSON file that the next process reads back (``{"format": 1, "choices": {key:
{"winner", "seconds"}}}``, written atomically; an unreadable file is ignored with a warning, never
unpickled or trusted). ``nets.dwconv_triton`` uses it to pick Triton or cuDNN per convolution
shape.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ENV_CACHE = "MAMAMIA_DWCONV_CACHE"

Timer = Callable[[str, Callable[[], object]], float]


def wall_time(name: str, fn: Callable[[], object], warmup: int = 2, repeats: int = 5) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` (Triton compiles in the
    first), synchronising CUDA around each run."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def default_cache_path() -> Path | None:
    """``$MAMAMIA_DWCONV_CACHE`` (``off``/empty: none), else the user cache directory."""
    env = os.environ.get(ENV_CACHE)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mamamia-torch" / "dwconv_dispatch.json"


class Dispatcher:
    """Per-key choice between implementations, measured once and kept in ``choices`` (and in the
    JSON file ``path``, when given). ``timer(name, fn)`` returns the seconds ``fn`` takes."""

    FORMAT = 1

    def __init__(self, timer: Timer | None = None, path: Path | str | None = None):
        self.timer = timer or wall_time
        self.path = Path(path) if path is not None else None
        self.choices: dict[str, str] = {}
        self._loaded = False

    def _load(self) -> None:
        self._loaded = True
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != self.FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {self.FORMAT}")
            choices = {str(k): v["winner"] for k, v in data["choices"].items() if v.get("winner") in ("aten", "triton")}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("ignoring the depthwise-conv dispatch cache %s: %s", self.path, e)
            return
        for key, winner in choices.items():
            self.choices.setdefault(key, winner)

    def _save(self, key: str, winner: str, seconds: dict[str, float]) -> None:
        if self.path is None:
            return
        try:
            data = {"format": self.FORMAT, "choices": {}}
            if self.path.exists():
                try:
                    old = json.loads(self.path.read_text())
                    if old.get("format") == self.FORMAT and isinstance(old.get("choices"), dict):
                        data = old
                except ValueError:
                    pass
            data["choices"][key] = {"winner": winner, "seconds": seconds}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot write the depthwise-conv dispatch cache %s: %s", self.path, e)

    def choose(self, key: str, candidates: Callable[[], dict[str, Callable[[], object]]]) -> str:
        """The remembered winner for ``key``; else time every candidate (``candidates()`` makes
        them, only on a miss) and remember the fastest. A candidate that raises loses."""
        if not self._loaded:
            self._load()
        if key in self.choices:
            return self.choices[key]
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            return "aten"  # no timing inside a CUDA graph capture; measured on a later call
        seconds = {}
        for name, fn in candidates().items():
            try:
                seconds[name] = float(self.timer(name, fn))
            except Exception as e:  # a kernel that fails to compile or run is not chosen
                log.warning("depthwise conv %s failed on %s: %s", name, key, e)
        winner = min(seconds, key=seconds.get) if seconds else "aten"
        self.choices[key] = winner
        self._save(key, winner, seconds)
        log.info("depthwise conv %s: %s (%s)", key, winner, {k: f"{v * 1e3:.3f} ms" for k, v in seconds.items()})
        return winner
