"""Synthetic MAMA-MIA-like breast DCE-MRI dataset: the embedded default dataset.

Library::

    root = generate_dataset("out/phantom", cases=40, seed=0, scale="small")
    root = default_dataset()          # cached under $MAMAMIA_CACHE or <repo>/.cache/phantom/

Command line::

    python -m data.phantom --out DIR --cases N --seed S [--scale small|full] [--workers W]
    python -m data.phantom --summary              # generate/reuse the default dataset, print tables
    python -m data.phantom --summary --data DIR   # the tables of an existing phantom dataset
    python -m data.phantom --preview DIR          # DIR/phantom_preview.png, one case per center
    python -m data.phantom --texture              # parenchyma GLCM texture per center

The folder follows the real layout exactly (MAMA-MIA, Garrucho et al., Scientific Data 2025): ``images/<ID>/<id>_000k.nii.gz``
(upper-case folder, lower-case files, int16, a stray ``.tsv`` beside them),
``segmentations/expert/<id>.nii.gz`` (uint8 {0,1} on the ``_0001`` grid),
``patient_info_files/<id>.json``, ``train_test_splits.csv`` (columns train_split,test_split,
the shorter one padded with empty cells, ~80/20 stratified by center) and the clinical table
``clinical_and_imaging_info.xlsx`` (sheet ``dataset_info``, one row per patient, with receptor
status; :data:`TABLE_COLUMNS`). How every label is
generated is in :mod:`data.phantom_cases`.

Modules (this one is the public entry: generation of a dataset, the cached default dataset and the
command line; the names below are importable from here):

- :mod:`data.phantom_centers`: acquisition protocol and case count of every center, patient ids.
- :mod:`data.phantom_cases`: every random choice of a case (clinical record, acquisition, anatomy,
  lesion, pCR label), no rendering.
- :mod:`data.phantom_writer`: per-case files, train/test splits, latents table, manifest, cache place.
- :mod:`data.phantom_checks`: naive-threshold hardness check and the preview picture.
- :mod:`data.phantom_look`: the appearance draws of a case (coil shading, nipple, ducts, vessels,
  non-mass enhancement, axillary nodes), on their own random stream; they are also columns of
  the latents table.
- :mod:`data.phantom_anatomy`: the render model (re-exports :mod:`data.phantom_kinetics`,
  :mod:`data.phantom_spec`, :mod:`data.phantom_body`, :mod:`data.phantom_lesion`,
  :mod:`data.phantom_render`; the anatomy is split further into :mod:`data.phantom_pv`,
  :mod:`data.phantom_gland`, :mod:`data.phantom_vessels`, :mod:`data.phantom_axilla` and
  :mod:`data.phantom_mr`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data import io
from data.phantom_cases import (ANAT_SCALE, B0, B_SUBTYPE, BPE_KTRANS, CURVE_P, EPS_SD,  # noqa: F401
                                LESION_SCALE, MENO_LONG, RECEPTORS, SCALES, SIZE_SHIFT, PhantomCase,
                                draw_case, draw_cases, pcr_logit, pcr_probability, receptors)
from data.phantom_centers import CENTERS, Center, allocate_centers, patient_ids  # noqa: F401
from data.phantom_checks import (NAIVE_QUANTILES, NAIVE_VALUES, centers_table,  # noqa: F401
                                 dataset_subtractions, naive_threshold_dice, save_preview,
                                 texture_by_center)
from data.workers import process_map
from data.phantom_writer import (CLINICAL_XLSX, LATENTS_CSV, MANIFEST, PHANTOM_VERSION,  # noqa: F401
                                 REPO_ROOT, STAT_KEYS, TABLE_COLUMNS, TABLE_SHEET, _csv_text, cache_dir,
                                 case_record, is_cached, make_splits, read_manifest, table_row,
                                 write_case, write_clinical_table)

__all__ = [
    "ANAT_SCALE", "B0", "B_SUBTYPE", "BPE_KTRANS", "CENTERS", "CLINICAL_XLSX", "CURVE_P", "EPS_SD",
    "LATENTS_CSV", "RECEPTORS", "TABLE_COLUMNS", "TABLE_SHEET", "receptors", "table_row",
    "write_clinical_table",
    "LESION_SCALE", "MANIFEST", "MENO_LONG", "NAIVE_QUANTILES", "NAIVE_VALUES", "PHANTOM_VERSION",
    "REPO_ROOT", "SCALES", "SIZE_SHIFT", "STAT_KEYS", "Center", "PhantomCase", "allocate_centers",
    "cache_dir", "case_record", "centers_table", "dataset_subtractions", "default_dataset", "draw_case", "draw_cases",
    "generate_dataset", "is_cached", "main", "make_splits", "naive_threshold_dice", "patient_ids",
    "pcr_logit", "pcr_probability", "read_manifest", "save_preview", "texture_by_center", "write_case",
]

log = logging.getLogger(__name__)


def _task(args) -> dict:
    root, seed, center, k, pid, scale = args
    return write_case(Path(root), draw_case(seed, center, k, pid, scale))


def generate_dataset(out, cases: int = 40, seed: int = 0, scale: str = "small", workers: int | None = None,
                     progress: bool = True, overwrite: bool = False) -> Path:
    """Write a complete phantom dataset to ``out``.

    Cases are written into a temporary sibling folder that is renamed to ``out`` only when
    complete, so an interrupted run never leaves half a dataset. An existing non-empty ``out`` is
    an error unless ``overwrite`` and it holds a phantom dataset (``phantom_manifest.json``).
    ``workers``: processes (default min(2, cpus), 1 at full scale); every case has its own seed,
    so the result does not depend on it.
    """
    out = Path(out)
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{out}: exists and is not empty (use overwrite=True / --overwrite)")
        if not (out / MANIFEST).exists():
            raise FileExistsError(f"{out}: not a phantom dataset (no {MANIFEST}); refusing to replace it")
    if workers is None and scale == "full":
        workers = 1                      # a full-scale DUKE case needs ~5 GB while rendering
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)                 # mkdtemp makes it private; the dataset is not
    t0 = time.time()
    try:
        pcs = draw_cases(cases, seed, scale)
        # largest volumes first, so two workers finish together
        jobs = [(str(tmp), seed, p.spec.center, int(p.spec.render_seed[2]), p.spec.patient_id, scale)
                for p in sorted(pcs, key=lambda p: -int(np.prod(p.spec.shape)))]
        rows = _run_jobs(jobs, workers, progress)
        train, test = make_splits(pcs, seed)
        split_of = {**{i: "train" for i in train}, **{i: "test" for i in test}}
        n = max(len(train), len(test))
        io.atomic_write_text(tmp / "train_test_splits.csv", _csv_text(
            ["train_split", "test_split"],
            [[train[i] if i < len(train) else "", test[i] if i < len(test) else ""] for i in range(n)]))
        write_clinical_table(tmp, pcs)
        rows.sort(key=lambda r: r["patient_id"])
        keys = ["patient_id", "center", "split"] + [k for k in rows[0] if k not in ("patient_id", "center")]
        io.atomic_write_text(tmp / LATENTS_CSV, _csv_text(keys, [
            [split_of.get(r["patient_id"], "") if k == "split" else r[k] for k in keys] for r in rows]))
        seconds = time.time() - t0
        io.atomic_write_text(tmp / MANIFEST, json.dumps(dict(
            generator="data.phantom", version=PHANTOM_VERSION, cases=cases, seed=seed, scale=scale,
            seconds=round(seconds, 2)), indent=2))
        if out.exists():
            if any(out.iterdir()):
                shutil.rmtree(out)
            else:
                out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("phantom: %d %s cases written to %s in %.1f s", cases, scale, out, seconds)
    return out


def _run_jobs(jobs, workers, progress) -> list[dict]:
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    # spawn: the parent may hold threads (torch); cases are independent and seeded
    return process_map(_task, jobs, workers, "phantom", progress, context="spawn", ordered=False)


def default_dataset(scale: str = "small", cases: int = 40, seed: int = 0, workers: int | None = None,
                    progress: bool = True) -> Path:
    """The embedded default dataset: generated once into :func:`cache_dir`, reused afterwards
    (regenerated when the generator version changed)."""
    root = cache_dir(scale, cases, seed)
    if is_cached(scale, cases, seed):
        return root
    man = read_manifest(root)
    stale = man is not None
    if root.exists() and not stale and any(root.iterdir()):
        raise FileExistsError(f"{root}: exists but is not a phantom dataset; remove it or set MAMAMIA_CACHE")
    try:
        generate_dataset(root, cases, seed, scale, workers, progress, overwrite=stale)
    except OSError:
        if is_cached(scale, cases, seed):   # another process finished first
            return root
        raise
    return root


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.phantom", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="write a dataset here (must not exist or be empty)")
    ap.add_argument("--data", type=Path, help="with --summary / --hardness: an existing phantom dataset "
                    "instead of the default one")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", choices=SCALES, default="small")
    ap.add_argument("--workers", type=int, default=None, help="processes (default min(2, cpus))")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing phantom dataset at --out")
    ap.add_argument("--summary", action="store_true",
                    help="print the per-center table (without --out: of the cached default dataset)")
    ap.add_argument("--hardness", action="store_true",
                    help="also print the naive threshold + largest component Dice")
    ap.add_argument("--texture", action="store_true",
                    help="print the parenchyma texture (GLCM contrast, correlation, entropy) per center, "
                         "from the first 3 cases of each center (rendered, not written)")
    ap.add_argument("--preview", type=Path, metavar="DIR", help="save DIR/phantom_preview.png")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.out is None and not (args.summary or args.preview or args.hardness or args.texture):
        ap.error("nothing to do: give --out DIR, --summary, --hardness, --texture or --preview DIR")
    if args.cases < 1:
        ap.error(f"--cases must be >= 1, got {args.cases}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = None
    if args.data is not None:
        if args.out is not None:
            ap.error("give --out (write a dataset) or --data (read one), not both")
        if read_manifest(args.data) is None:
            ap.error(f"--data {args.data}: not a phantom dataset (no {MANIFEST})")
        root = args.data
    elif args.out is not None:
        t0 = time.time()
        root = generate_dataset(args.out, args.cases, args.seed, args.scale, args.workers,
                                not args.no_progress, args.overwrite)
        print(f"wrote {args.cases} {args.scale} phantom cases to {root} in {time.time() - t0:.1f} s")
    elif args.summary or args.hardness:
        reused = is_cached(args.scale, args.cases, args.seed)
        t0 = time.time()
        root = default_dataset(args.scale, args.cases, args.seed, args.workers, not args.no_progress)
        print(f"default dataset: {root} ("
              + ("reused cache" if reused else f"generated in {time.time() - t0:.1f} s") + ")")
    if args.summary and root is not None:
        from data import mamamia

        print(mamamia.summary_table(mamamia.load_dataset(root)))
        print(centers_table(root))
        man = read_manifest(root) or {}
        workers = min(2, os.cpu_count() or 1) if args.workers is None else args.workers
        print(f"generation time: {man.get('seconds', float('nan')):.1f} s for {man.get('cases')} "
              f"{man.get('scale')} cases" + ("" if args.data is not None else f" ({workers} worker(s))"))
    if args.hardness and root is not None:
        res = naive_threshold_dice(dataset_subtractions(root))
        print(f"naive threshold + largest component: mean Dice {res['dice']:.3f} at {res['threshold']}")
    if args.texture:
        for center, t in texture_by_center(args.seed, args.scale, args.cases).items():
            print(f"{center:6s} parenchyma GLCM: contrast {t['contrast']:.2f}, correlation "
                  f"{t['correlation']:.3f}, entropy {t['entropy']:.2f} bits ({t['cases']} cases rendered)")
    if args.preview is not None:
        print(f"preview: {save_preview(args.preview, args.seed, args.scale, args.cases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
