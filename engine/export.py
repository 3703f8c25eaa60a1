"""Export a trained run: a TorchScript or ONNX model of one fold, or a shareable zip of the run.

    python -m engine.export RUN --format torchscript --out model.pt [--fold K]
    python -m engine.export RUN --format onnx --out model.onnx [--fold K]
    python -m engine.export RUN --zip run.zip            # weights, plan, config, splits, CV summary
    python -m engine.export --import-zip run.zip --as NAME

TorchScript: the fold's final network in eval mode (one output tensor), traced on one patch of
the plan's size, with ``plan.json`` and ``config.json`` as extra files so the model can be
preprocessed for without this project; the traced model's output is checked against PyTorch's
on a random patch (max abs difference <= 1e-4) before the file is kept.

ONNX: the same network for ONNX Runtime (and any ONNX consumer), batch axis dynamic, plan and
config as metadata properties, checked the same way with ONNX Runtime where it is installed
(``pip install onnx onnxruntime``; optional, never needed by training or inference here).
The network-level exporters are ``nets.export``; this module reads run folders around them.

Zip: the run's description (config, plan, data selection, folds, request, CV summary) and per
fold a checkpoint without optimiser state (weights, plan, config, epoch), read back by
``--import-zip`` into a run folder that inference accepts. No optimiser, no history: a few MB
less, and nothing but tensors and JSON (members are checked on import; nothing is unpickled).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import zipfile
from pathlib import Path

import torch

from core.atomic import atomic_write
from core.errors import UserError
from core import plan as planlib
from engine.runs import CHECKPOINTS, RunDir, fold_name
from nets import checkpoint as ckptlib
from nets import export as netexport

log = logging.getLogger(__name__)
TOLERANCE = 1e-4
DESCRIPTION_FILES = ("config.json", "plan.json", "data.json", "splits.json", "request.json", "cv_summary.json",
                     "cv_summary.csv", "selection.json")


def _fold_model(run: RunDir, fold: int | None, which: str):
    """The checkpoint state and the eval-mode float network of ``fold`` (default: the first
    fold with a ``which`` checkpoint)."""
    folds = [f for f in run.folds() if run.checkpoint(f, which).is_file()]
    if not folds:
        raise UserError(f"{run.path}: no checkpoint_{which}.pt to export")
    fold = folds[0] if fold is None else fold
    if fold not in folds:
        raise UserError(f"{run.path}: fold {fold_name(fold)} has no checkpoint_{which}.pt (have {folds})")
    state = ckptlib.load(run.checkpoint(fold, which))
    return fold, state, ckptlib.build_from(state).float().eval()


def _patches(plan, batch: int = 1):
    """Two reproducible random patches of the plan's size."""
    return [torch.randn(batch, len(plan.channels), *plan.patch_size, generator=torch.Generator().manual_seed(s))
            for s in (0, 1)]


def _extra(state) -> dict[str, str]:
    return {"plan.json": planlib.to_json(state["plan"]), "config.json": json.dumps(state["config"].to_dict())}


def export_torchscript(run: RunDir, out: Path, fold: int | None = None, which: str = "final") -> dict:
    """Trace fold ``fold`` (default: the first with a ``which`` checkpoint) to TorchScript."""
    fold, state, model = _fold_model(run, fold, which)
    plan = state["plan"]
    data, diff = netexport.torchscript_bytes(model, _patches(plan), _extra(state))
    if diff > TOLERANCE:
        raise RuntimeError(f"TorchScript output differs from PyTorch by {diff:.3g} (> {TOLERANCE}); not written")
    atomic_write(out, data)
    return {"file": str(out), "fold": fold_name(fold), "max_abs_diff": diff, "patch": list(plan.patch_size)}


def export_onnx(run: RunDir, out: Path, fold: int | None = None, which: str = "final") -> dict:
    """Fold ``fold`` as an ONNX model (``nets.export.onnx_bytes``), checked on a batch of two
    patches and on one (the batch axis is dynamic); written only when ONNX Runtime's output equals
    PyTorch's within :data:`TOLERANCE`, or unchecked (``"checked": false``, a warning) where
    onnxruntime is not installed."""
    fold, state, model = _fold_model(run, fold, which)
    plan = state["plan"]
    x, y = _patches(plan, batch=2)
    try:
        data, diff = netexport.onnx_bytes(model, [x, y[:1]], _extra(state))
    except ImportError as exc:
        raise UserError(f"--format onnx needs the onnx package ({exc}): pip install onnx onnxruntime "
                        "(the project's [onnx] extra)") from None
    result = {"file": str(out), "fold": fold_name(fold), "patch": list(plan.patch_size),
              "opset": netexport.ONNX_OPSET, "checked": diff is not None}
    if diff is None:
        log.warning("onnxruntime is not installed: %s written without comparing its output to PyTorch's", out)
    elif diff > TOLERANCE:
        raise RuntimeError(f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> {TOLERANCE}); not written")
    else:
        result["max_abs_diff"] = diff
    atomic_write(out, data)
    return result


def export_zip(run: RunDir, out: Path, which: str = "final") -> dict:
    """The run as a zip without optimiser state (see the module docstring)."""
    if not run.exists():
        raise UserError(f"{run.path}: not a run folder")
    buf = io.BytesIO()
    folds = []
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in DESCRIPTION_FILES:
            if (run.path / name).is_file():
                zf.writestr(name, (run.path / name).read_bytes())
        for f in run.folds():
            for kind in CHECKPOINTS:
                if kind != which and kind != "best":
                    continue
                ck = run.checkpoint(f, kind)
                if not ck.is_file():
                    continue
                state = ckptlib.read(ck)
                slim = {k: state[k] for k in ("model", "plan", "config", "epoch", "fold", "split") if k in state}
                b = io.BytesIO()
                torch.save(slim, b)
                zf.writestr(f"{ck.parent.name}/{ck.name}", b.getvalue())
                for extra in (run.validation_path(f), run.log_path(f)):
                    if extra.is_file():
                        zf.writestr(f"{extra.parent.name}/{extra.name}", extra.read_bytes())
            folds.append(fold_name(f))
    atomic_write(out, buf.getvalue())
    return {"file": str(out), "folds": folds, "bytes": out.stat().st_size}


def import_zip(archive: Path, run: RunDir) -> dict:
    """A zip written by ``export_zip`` unpacked into ``run`` (which must not exist)."""
    if run.path.exists():
        raise UserError(f"{run.path}: exists; choose another --as name")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{archive}: not a run archive ({exc})") from exc
    with zf:
        names = zf.namelist()
        if "config.json" not in names or "plan.json" not in names:
            raise UserError(f"{archive}: not a run archive (no config.json/plan.json)")
        allowed = set(DESCRIPTION_FILES)
        for n in names:
            parts = n.split("/")
            ok = n in allowed or (len(parts) == 2 and parts[0].startswith("fold_") and ".." not in n and (
                parts[1] in (f"checkpoint_{k}.pt" for k in CHECKPOINTS) or parts[1] in ("validation.json", "log.csv")))
            if not ok:
                raise UserError(f"{archive}: unexpected member {n!r}; nothing imported")
        staging = run.path.with_name(f".{run.path.name}.importing")
        if staging.exists():
            raise UserError(f"{staging}: a previous import was interrupted; remove it first")
        try:
            for n in names:
                target = staging / n
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(n))
            imported = RunDir(staging)
            for ck in imported.checkpoints():
                ckptlib.load(ck)          # tensors and JSON only, or refused
            imported.load_config()
            staging.rename(run.path)
        except BaseException:
            import shutil
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return {"run": str(run.path), "checkpoints": len(run.checkpoints())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="run name or folder to export")
    p.add_argument("--runs-dir", help="folder of runs (default ./runs or $MAMAMIA_RUNS)")
    p.add_argument("--format", choices=("torchscript", "onnx"), help="export one fold's network")
    p.add_argument("--fold", help="fold to export (default: the first trained; 'full' for --fold full runs)")
    p.add_argument("--checkpoint", choices=("final", "best"), default="final")
    p.add_argument("--out", help="output file of --format")
    p.add_argument("--zip", metavar="FILE", help="write the run as a shareable zip (no optimiser state)")
    p.add_argument("--import-zip", metavar="FILE", help="unpack a zip written by --zip into a new run")
    p.add_argument("--as", dest="as_name", help="with --import-zip: the new run's name")
    args = p.parse_args(argv)
    from core.cli import run_entry_point

    def go() -> int:
        if args.import_zip:
            if not args.as_name:
                raise UserError("--import-zip needs --as NAME")
            print(import_zip(Path(args.import_zip), RunDir.named(args.as_name, args.runs_dir)))
            return 0
        if not args.run:
            raise UserError("name the run to export (or use --import-zip)")
        run = RunDir.named(args.run, args.runs_dir)
        if args.zip:
            print(export_zip(run, Path(args.zip), args.checkpoint))
        if args.format:
            if not args.out:
                raise UserError("--format needs --out FILE")
            fold = None if args.fold is None else (-1 if args.fold == "full" else int(args.fold))
            exporter = export_onnx if args.format == "onnx" else export_torchscript
            print(exporter(run, Path(args.out), fold, args.checkpoint))
        if not args.zip and not args.format:
            raise UserError("nothing to do: give --format torchscript|onnx --out FILE and/or --zip FILE")
        return 0
    return run_entry_point("engine.export", go)


if __name__ == "__main__":
    sys.exit(main())
