"""Atomic file writes: the one helper every writer of an output or a settings file uses.

A temporary file in the destination folder receives the bytes, then ``os.replace`` puts it in
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, payload: bytes | str | Callable[[str], None],
                 overwrite: bool = True, protected=(), keep_suffix: bool = False) -> Path:
    """Write ``payload`` to ``path`` atomically.

    ``payload``: bytes, text (UTF-8) or a function that writes the file whose name it is given
    (``torch.save``, ``nib.save``; ``keep_suffix`` ends the temporary name with the target's
    suffixes, e.g. ``.nii.gz``, for writers that look at it). ``protected``: paths that must never
    be replaced (the inputs). An existing ``path`` is an error unless ``overwrite``. A failure
    removes the temporary file and raises ``OSError`` naming the path and the errno.
    """
    path = Path(path)
    resolved = path.resolve()
    if any(resolved == Path(p).resolve() for p in protected):
        raise ValueError(f"{path}: refusing to overwrite an input file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (pass overwrite=True to replace it)")
    suffix = TMP_SUFFIX + ("".join(path.suffixes[-2:]) if keep_suffix else "")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, f"{path}: cannot write ({os.strerror(exc.errno or 0)})") from exc
    try:
        if callable(payload):
            os.close(fd)
            payload(tmp)
        else:
            data = payload.encode("utf-8") if isinstance(payload, str) else payload
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            raise OSError(exc.errno, f"{path}: write failed ({os.strerror(exc.errno or 0)})") from exc
        raise
    return path


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files ``atomic_write`` leaves only when its process was killed mid-write."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and TMP_SUFFIX in p.name)
