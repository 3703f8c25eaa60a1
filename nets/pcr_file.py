"""pCR model files without pickle: a zip archive of one JSON manifest and ``.npy`` arrays.

    save_pcr_model(run_dir / "pcr_model.pt", model, config)
    model, config = load_pcr_model(run_dir / "pcr_model.pt")

Layout (format ``mamamia-pcr``, version 3; members stored uncompressed with a fixed timestamp,
so one model always gives the same bytes):

    pcr_model.json      {"format": "mamamia-pcr", "version": 3,
                         "model": <core.pcr_state.model_to_state meta: feature names, temperature,
                                   threshold, calibration map, per fold the pipeline, clinical
                                   encoder and the
                                   deployed classifier's parameters>,
                         "config": <the training config>,
                         "arrays": {name: {"dtype": "<f8" | "<f4" | "<i8", "shape": [...]}}}
    arrays/<name>.npy   one array per manifest entry (``fold<i>.pipeline.median``,
                        ``fold<i>.classifier.0.head.weight``, ...)

Loading parses JSON and reads arrays with ``allow_pickle=False``: nothing in the file is
unpickled, so a crafted file cannot run code, and the model is rebuilt from numbers
(``core.pcr_state.model_from_state``), so it does not break when a class moves. Version 1 files
(``torch.save`` pickles of the Python objects, written by train.py before this format) are
refused without being opened; re-train them. Every other malformed file is a ValueError naming
the file.
"""
from __future__ import annotations

import io
import json
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from core import pcr, pcr_stack, pcr_state
from core.atomic import atomic_write
from nets import snn

FORMAT = "mamamia-pcr"
VERSION = 3  # 3: calibration map, clinical encoder with receptor status and grade
MANIFEST = "pcr_model.json"
DTYPES = ("<f8", "<f4", "<i8")
_WRITE = {("f", 8): "<f8", ("f", 4): "<f4", ("i", 8): "<i8", ("i", 4): "<i8"}  # (kind, bytes) -> stored dtype
MAX_BYTES = 1 << 30          # a model is kilobytes to megabytes; refuse an archive that unpacks to more
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_STAMP = (1980, 1, 1, 0, 0, 0)
_RETRAIN = "re-train with train.py --task pcr"

CODECS: dict[str, pcr_state.ClassifierCodec] = {
    **pcr_state.CLASSIFIER_CODECS,
    "snn": pcr_state.ClassifierCodec(lambda est: isinstance(est, snn.SNNClassifier), snn.classifier_state,
                               snn.classifier_from_state),
}
CODECS["stack"] = pcr_stack.stack_codec(CODECS)   # image part written by any codec above


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=False)
    return buf.getvalue()


def save_pcr_model(path: str | os.PathLike, model: pcr.PCRModel, config: dict) -> Path:
    """Write ``model`` (only its deployed classifier per fold) and the JSON-able training
    ``config`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``;
    mode from the umask like any new file). ValueError when the model or config cannot be written
    (a random-forest classifier, a config value that is not JSON), before anything is written."""
    path = Path(path)
    meta, arrays = pcr_state.model_to_state(model, CODECS)
    spec, members = {}, {}
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        dt = _WRITE.get((a.dtype.kind, a.dtype.itemsize))
        if not _NAME.match(name) or dt is None:
            raise ValueError(f"{path}: array {name!r} ({a.dtype}) cannot be written to a pCR model file")
        a = a.astype(dt, copy=False)
        spec[name] = {"dtype": dt, "shape": list(a.shape)}
        members[f"arrays/{name}.npy"] = _npy(a)
    manifest = {"format": FORMAT, "version": VERSION, "model": meta, "config": config, "arrays": spec}
    try:
        text = json.dumps(manifest, indent=1, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: the model or config holds a value JSON cannot store: {exc}") from exc
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in [(MANIFEST, text.encode("utf-8")), *members.items()]:
            zf.writestr(zipfile.ZipInfo(name, _STAMP), data)
    atomic_write(path, buf.getvalue())
    return path


def load_pcr_model(path: str | os.PathLike) -> tuple[pcr.PCRModel, dict]:
    """``(model, config)`` from a file :func:`save_pcr_model` wrote. FileNotFoundError when
    ``path`` does not exist; ValueError naming ``path`` for anything else that is not this format
    (pickles, including this project's version 1 files, are refused unread)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pCR model file not found")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head[:1] == b"\x80":  # pickle protocol 2 or later
            raise ValueError(f"a pickle, not a pCR model file; pickles are not loaded because unpickling "
                             f"can run code: {_RETRAIN}")
        if not zipfile.is_zipfile(path):
            raise ValueError("not a pCR model file (not a zip archive; train.py --task pcr writes one)")
        with zipfile.ZipFile(path) as zf:
            manifest, arrays = _read(zf)
        model = pcr_state.model_from_state(manifest["model"], arrays, CODECS)
    except PermissionError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, EOFError, OSError, RuntimeError, NotImplementedError,
            zlib.error, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return model, manifest["config"]


def _read(zf: zipfile.ZipFile) -> tuple[dict, dict[str, np.ndarray]]:
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if MANIFEST not in names:
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise ValueError(f"a pickled pCR model (format version 1, torch.save); it is not loaded because "
                             f"unpickling can run code: {_RETRAIN}")
        raise ValueError(f"not a pCR model file (no {MANIFEST} in the archive)")
    if len(set(names)) != len(names) or sum(i.file_size for i in infos) > MAX_BYTES:
        raise ValueError("not a pCR model file (duplicate members or over 1 GiB unpacked)")

    def no_constant(c):
        raise ValueError(f"{MANIFEST}: {c} is not a number JSON allows")

    manifest = json.loads(zf.read(MANIFEST).decode("utf-8"), parse_constant=no_constant)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"not a pCR model file (format {got!r}, expected {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise ValueError(f"pCR model format version {manifest.get('version')!r} is not supported (this "
                         f"program reads version {VERSION}): {_RETRAIN}")
    expected = {"format", "version", "model", "config", "arrays"}
    if set(manifest) != expected:
        raise ValueError(f"{MANIFEST}: missing keys {sorted(expected - set(manifest))}, "
                         f"unknown keys {sorted(set(manifest) - expected)}")
    spec = manifest["arrays"]
    if not isinstance(manifest["config"], dict) or not isinstance(spec, dict):
        raise ValueError(f"{MANIFEST}: 'config' and 'arrays' must be mappings")
    for name, s in spec.items():
        if (not _NAME.match(name) or not isinstance(s, dict) or set(s) != {"dtype", "shape"}
                or s["dtype"] not in DTYPES or not isinstance(s["shape"], list)
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in s["shape"])):
            raise ValueError(f"{MANIFEST}: bad array entry {name!r}: {s!r:.100}")
    want = {MANIFEST} | {f"arrays/{n}.npy" for n in spec}
    if set(names) != want:
        raise ValueError(f"archive members differ from the manifest: missing {sorted(want - set(names))[:5]}, "
                         f"unknown {sorted(set(names) - want)[:5]}")
    arrays = {}
    for name, s in spec.items():
        with zf.open(f"arrays/{name}.npy") as fh:
            try:
                a = np.lib.format.read_array(fh, allow_pickle=False)
            except ValueError as exc:  # object arrays (pickles) among them
                raise ValueError(f"array {name!r}: {exc}") from exc
        if a.dtype.str != s["dtype"] or list(a.shape) != s["shape"]:
            raise ValueError(f"array {name!r} is {a.dtype.str} {list(a.shape)}, the manifest says "
                             f"{s['dtype']} {s['shape']}")
        arrays[name] = a
    return manifest, arrays
