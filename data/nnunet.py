"""nnU-Net v2 raw datasets, in and out.

In: a folder with ``dataset.json``, ``imagesTr/<case>_<channel 4 digits>.nii.gz``,
``labelsTr/<case>.nii.gz`` (and ``imagesTs/``) is read as cases whose phases are the channels
(channel k = phase k), split ``train`` (imagesTr) and ``test`` (imagesTs), without clinical
records (fairness tables say so instead of failing). ``mamamia.load_dataset`` does this itself
when it finds such a folder.

Out: ``python -m data.nnunet export --data MAMA_MIA_ROOT --out DatasetNNN_Name [--phases 0-2]
[--subtraction]`` writes a raw dataset nnU-Net v2 can plan and train on, on exactly this
project's folds: every channel on the grid of the expert mask (the reference phase), the labels
{0, 1}, ``dataset.json`` (channel names, labels, numTraining, file_ending) and
``splits_final.json`` (``core.folds.kfold_splits`` over the training cases, nnU-Net's seed). With
``--subtraction`` the first post-contrast minus pre-contrast image is one more channel. Layout and
keys as nnU-Net v2 documents them (documentation/dataset_format.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

import numpy as np

from data import io

log = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def is_nnunet_dataset(root: str | os.PathLike) -> bool:
    root = Path(root)
    return (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()


def _images(folder: Path) -> dict[str, dict[int, Path]]:
    out: dict[str, dict[int, Path]] = {}
    if not folder.is_dir():
        return out
    for f in sorted(folder.iterdir(), key=lambda p: p.name):
        if f.is_file() and io.is_nifti(f.name):
            m = _CHANNEL_RE.match(io.strip_nifti_suffix(f.name))
            if m:
                out.setdefault(m.group("case"), {})[int(m.group("ch"))] = f
    return out


def load_nnunet_dataset(root: str | os.PathLike) -> list:
    """The cases of an nnU-Net v2 raw dataset (see the module docstring)."""
    from data.mamamia import Case, center_from_id
    root = Path(root)
    try:
        meta = json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{root / 'dataset.json'}: unreadable ({exc})") from exc
    if not isinstance(meta, dict) or "channel_names" not in meta:
        raise ValueError(f"{root / 'dataset.json'}: no channel_names (not an nnU-Net v2 dataset.json)")
    n_channels = len(meta["channel_names"])
    labels = {io.strip_nifti_suffix(p.name): p for p in (root / "labelsTr").iterdir()
              if p.is_file() and io.is_nifti(p.name)} if (root / "labelsTr").is_dir() else {}
    cases = []
    for split, folder in (("train", root / "imagesTr"), ("test", root / "imagesTs")):
        for case, chans in _images(folder).items():
            if sorted(chans) != list(range(n_channels)):
                raise ValueError(f"{folder}: case {case} has channels {sorted(chans)}, dataset.json names "
                                 f"{n_channels}")
            nums = tuple(sorted(chans))
            cases.append(Case(patient_id=io.safe_name(case), center=center_from_id(case),
                              phase_paths=tuple(chans[k] for k in nums), phase_numbers=nums,
                              mask_path=labels.get(case) if split == "train" else None, split=split))
    if not cases:
        raise FileNotFoundError(f"{root}: no <case>_0000{FILE_ENDING} files in imagesTr/ or imagesTs/")
    return sorted(cases, key=lambda c: c.patient_id)


def export(cases, out: str | os.PathLike, phases, subtraction: bool = False, name: str | None = None,
           progress: bool = True) -> dict:
    """Write ``cases`` (train split with masks -> imagesTr/labelsTr, test split -> imagesTs) as an
    nnU-Net v2 raw dataset in ``out``; returns dataset.json."""
    from core.folds import kfold_splits
    from data import mamamia
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; choose another --out")
    phases = list(phases)
    train = [c for c in cases if c.split != "test" and c.mask_path is not None]
    test = [c for c in cases if c.split == "test"]
    if not train:
        raise ValueError("no training case with an expert mask to export")
    channels = {str(i): f"phase_{p:04d}" for i, p in enumerate(phases)}
    if subtraction:
        if 0 not in phases or 1 not in phases:
            raise ValueError("--subtraction needs phases 0 and 1 among --phases")
        channels[str(len(phases))] = "subtraction_0001_minus_0000"
    for split, group in (("Tr", train), ("Ts", test)):
        for c in group:
            image, _, affine = mamamia.load_image(c, phases)
            if subtraction:
                image = np.concatenate([image, image[phases.index(1)][None] - image[phases.index(0)][None]])
            ref = io.load_header(c.phase_path(mamamia.reference_phase(c, phases)))
            for k, channel in enumerate(image):
                io.save_nifti(out / f"images{split}" / f"{c.patient_id}_{k:04d}{FILE_ENDING}", channel, affine,
                              dtype=np.float32, reference=ref)
            if split == "Tr":
                mask = mamamia.load_mask(c, affine, image.shape[1:])
                io.save_nifti(out / "labelsTr" / f"{c.patient_id}{FILE_ENDING}", mask, affine, dtype=np.uint8,
                              reference=ref)
            if progress:
                log.info("exported %s (%s)", c.patient_id, split)
    meta = {"name": name or out.name, "channel_names": channels, "labels": {"background": 0, "tumor": 1},
            "numTraining": len(train), "file_ending": FILE_ENDING}
    io.atomic_write_text(out / "dataset.json", json.dumps(meta, indent=1))
    # this project's folds (core.folds uses nnU-Net's KFold seed), so both train on the same split
    io.atomic_write_text(out / "splits_final.json",
                         json.dumps(kfold_splits([c.patient_id for c in train], n_splits=5), indent=1))
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a MAMA-MIA folder as an nnU-Net v2 raw dataset")
    e.add_argument("--data", help="MAMA-MIA root (default: the phantom dataset)")
    e.add_argument("--out", required=True, help="the new dataset folder, e.g. Dataset101_MAMAMIA")
    e.add_argument("--phases", default="0-2", help="phases as channels (default 0-2)")
    e.add_argument("--subtraction", action="store_true", help="add phase 1 minus phase 0 as a channel")
    e.add_argument("--centers", help="only these centers, e.g. DUKE,NACT")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from data import mamamia
    try:
        if args.data:
            root = Path(args.data)
        else:
            from data.phantom import default_dataset
            root = default_dataset()
        phases = mamamia.parse_list(args.phases, int)
        cases = mamamia.select(mamamia.load_dataset(root), centers=mamamia.parse_list(args.centers), phases=phases)
        meta = export(cases, args.out, phases, args.subtraction)
    except (OSError, ValueError) as exc:
        print(f"data.nnunet: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {meta['numTraining']} training case(s), channels {meta['channel_names']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
