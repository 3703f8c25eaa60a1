"""Work spread over processes: one ordered (or completion-order) map with a progress bar, whose
worker processes die with the process that started them."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

log = logging.getLogger(__name__)

def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="case", dynamic_ncols=True)


PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_PERIOD_S = 0.5


def _exit_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: the worker dies when the process that started the pool does.

    A ProcessPoolExecutor worker busy with a case does not notice that its parent was killed
    (kill -9, OOM killer) and went on preprocessing for minutes. Linux delivers SIGKILL on the
    parent's death (prctl PR_SET_PDEATHSIG); a watchdog thread covers other systems and the gap
    between fork and prctl (the parent may already be gone).
    """
    import ctypes
    import signal
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            log.debug("prctl(PR_SET_PDEATHSIG) unavailable; relying on the watchdog", exc_info=True)
    first_ppid = os.getppid()

    def alive() -> bool:
        if os.getppid() != first_ppid:
            return False
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def watch() -> None:
        while alive():
            time.sleep(WATCHDOG_PERIOD_S)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def process_map(fn, items, workers, desc, progress, context: str | None = None, ordered: bool = True) -> list:
    """``fn`` over ``items`` in ``workers`` processes (1 = in this process) with a progress bar;
    results in input order, or in completion order with ``ordered=False``. ``context``: the
    multiprocessing start method ("spawn" where the caller may hold torch threads, which do not
    survive a fork safely; None: the platform default). Workers exit when this process dies."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [r for r in _progress(map(fn, items), len(items), desc, progress)]
    with ProcessPoolExecutor(max_workers=workers, initializer=_exit_with_parent, initargs=(os.getpid(),),
                             mp_context=get_context(context) if context else None) as ex:
        if ordered:
            return list(_progress(ex.map(fn, items), len(items), desc, progress))
        futures = [ex.submit(fn, it) for it in items]
        return list(_progress((f.result() for f in as_completed(futures)), len(items), desc, progress))
