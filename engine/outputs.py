"""An output folder of predictions: one writer at a time, a manifest of what made each file.

``OutputFolder(out).lock()`` creates ``out/.lock`` (exclusive create) holding the writer's
host and pid; a second writer stops with a message naming the holder. A lock whose process is
gone (same host) is stale: it is replaced, with a warning. ``predictions_manifest.json``
records per written file the models (checkpoint paths and their sizes and times) and the
settings hash that produced it, so an interrupted run continues where it stopped: outputs
whose entry matches the same models and settings are kept, others are redone only with
``overwrite``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from core import plan as planlib
from core.atomic import atomic_write, stale_temporaries
from core.errors import UserError

log = logging.getLogger(__name__)
MANIFEST = "predictions_manifest.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputFolder:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.seg_dir = self.path / "pred_segmentations"
        self.lock_path = self.path / ".lock"
        self.manifest_path = self.path / MANIFEST
        self._locked = False

    # ------------------------------------------------------------------ one writer
    def lock(self) -> "OutputFolder":
        self.path.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder and holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _alive(holder["pid"]):
                    log.warning("%s: stale lock of process %s (no longer running) removed", self.lock_path,
                                holder["pid"])
                    self.lock_path.unlink(missing_ok=True)
                    continue
                raise UserError(f"{self.path}: another prediction is writing here ({self.lock_path}: "
                                f"{holder or 'unreadable'}); wait for it, or remove the lock if that "
                                "process is gone") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self._locked = True
            break
        for tmp in stale_temporaries(self.seg_dir) + stale_temporaries(self.path / "probabilities"):
            log.info("removing an interrupted write: %s", tmp)
            tmp.unlink(missing_ok=True)
        return self

    def _holder(self):
        try:
            return json.loads(self.lock_path.read_text())
        except (OSError, ValueError):
            return None

    def unlock(self) -> None:
        if self._locked:
            self.lock_path.unlink(missing_ok=True)
            self._locked = False

    def __enter__(self):
        return self.lock()

    def __exit__(self, *exc):
        self.unlock()

    # ------------------------------------------------------------------ what made each file
    def manifest(self) -> dict:
        if not self.manifest_path.is_file():
            return {}
        try:
            d = json.loads(self.manifest_path.read_text())
        except ValueError as exc:
            raise UserError(f"{self.manifest_path}: invalid JSON ({exc}); remove it or use --overwrite") from exc
        return d if isinstance(d, dict) else {}

    @staticmethod
    def producer(checkpoints, settings: dict) -> dict:
        """What identifies the outputs of a prediction: the models and the settings."""
        models = []
        for ck in checkpoints:
            st = Path(ck).stat()
            models.append({"path": str(Path(ck).resolve()), "bytes": st.st_size, "mtime": st.st_mtime})
        return {"models": models, "settings_hash": planlib.settings_hash(settings)[:16]}

    def plan_work(self, ids, producer: dict, overwrite: bool) -> set[str]:
        """Ids whose outputs are already complete and made by ``producer`` (to be skipped).
        Outputs made by anything else are an error unless ``overwrite``."""
        if overwrite:
            return set()
        files = self.manifest().get("files", {})
        done, foreign = set(), []
        for pid in ids:
            target = self.seg_dir / f"{pid}.nii.gz"
            if not target.exists():
                continue
            if files.get(pid) == producer:
                done.add(pid)
            else:
                foreign.append(pid)
        if foreign:
            raise UserError(f"{self.path}: {len(foreign)} prediction(s) were made by other models or settings "
                            f"({foreign[:5]}); pass --overwrite or choose another --output")
        return done

    def record(self, written, producer: dict, extra: dict) -> None:
        """Add the written files to the manifest (keeping the entries of other files)."""
        man = self.manifest()
        files = dict(man.get("files", {}))
        for pid in written:
            files[pid] = producer
        atomic_write(self.manifest_path, json.dumps({**extra, "files": files}, indent=1))
