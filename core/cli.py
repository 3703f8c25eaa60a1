"""How an entry point turns library exceptions into one-line messages and exit codes."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from core.errors import UserError


def run_entry_point(prog: str, fn: Callable[[], int], level: int = logging.INFO) -> int:
    """Run ``fn`` with the library's log messages on this run's stderr; a user error (bad flag,
    missing file) prints ``prog: error: <message>`` and returns 2 (set ``MAMAMIA_DEBUG=1`` for
    the traceback)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(level)
    try:
        return fn()
    except (UserError, FileNotFoundError) as exc:
        if os.environ.get("MAMAMIA_DEBUG"):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
