"""Atomic file writes: the one helper every writer of an output or a settings file uses.

A temporary file in the destination folder receives the data, then ``os.replace`` puts it in
place, so a reader (or a resumed job after a crash) never sees a half-written file. The result
gets the permissions of any newly created file (``0o666`` minus the umask), not the ``0o600``
of a temporary file.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process umask, read without changing it where Linux exposes it (``os.umask`` would
    set it for a moment in every thread)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _suffix(name: str) -> str:
    low = name.lower()
    return ".nii.gz" if low.endswith(".nii.gz") else Path(name).suffix


def atomic_write(path: str | os.PathLike, payload: bytes | str | Callable[[Path], object],
                 overwrite: bool = True, protected=()) -> Path:
    """Write ``payload`` to ``path`` atomically.

    ``payload``: bytes, text (UTF-8) or a function that writes the temporary file whose path it
    is given (``torch.save``, ``nib.save``; the temporary's name ends in the target's suffix, so
    writers that choose the format by extension work). ``protected``: paths that must never be
    replaced (the inputs). An existing ``path`` is an error unless ``overwrite``. The temporary is
    removed on every failure; an ``OSError`` is re-raised naming the path and its errno.
    """
    path = Path(path)
    resolved = path.resolve()
    if any(resolved == Path(p).resolve() for p in protected):
        raise ValueError(f"{path}: refusing to overwrite an input file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (pass overwrite=True to replace it)")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX + _suffix(path.name),
                                   dir=path.parent)
        if callable(payload):
            os.close(fd)
            payload(Path(tmp))
        else:
            data = payload.encode("utf-8") if isinstance(payload, str) else payload
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if exc.errno is None or isinstance(exc, FileExistsError):
            raise
        raise OSError(exc.errno, f"cannot write {path} ({exc.strerror or os.strerror(exc.errno)})",
                      str(path)) from exc
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
    return path


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files ``atomic_write`` leaves only when its process was killed mid-write."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and TMP_SUFFIX in p.name)
