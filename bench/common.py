"""Helpers shared by the benchmark scripts (imported as ``common``: each script's folder is on
``sys.path`` when it runs)."""
from __future__ import annotations

import os
import platform


def cpu_device_string(threads: int, extra: str = "") -> str:
    """``cpu <model name>, N threads[, extra], load avg L (shared machine)`` for a bench's JSON line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    extra = f", {extra}" if extra else ""
    return f"cpu {cpu}, {threads} threads{extra}, load avg {os.getloadavg()[0]:.1f} (shared machine)"
