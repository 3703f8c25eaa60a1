"""The predictor: trained models + sliding window + flip TTA + ensemble + restore + postprocess.

``Predictor(members, device, settings).predict(case)`` returns the mask and the tumour
probability of one case in memory (the challenge wrapper and the studies use it);
``Predictor.run(cases, out)`` writes ``out/pred_segmentations/<patient_id>.nii.gz`` for many,
reading and preprocessing the next cases and writing the previous ones in background threads.

Per case: the phases the models were trained on are read and preprocessed with the plan stored
in the checkpoints (the same function as training), every model predicts (averaged over flips,
folds and runs), the average is put back on the grid of the first post-contrast phase,
thresholded, reduced to its largest 26-connected component and optionally masked with the JSON
breast box.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core import plan as planlib
from core.errors import UserError
from core.postprocess import largest_component, mask_to_box
from core.sliding_window import default_window_batch, sliding_window_predict
from data import io, mamamia
from data.cache import cache_key
from data.preprocess import body_box, body_mask, preprocess, restore_logits, restore_probabilities
from engine.runs import RunDir
from nets import checkpoint as ckptlib

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One network of the ensemble and the plan it must be fed with."""
    name: str
    model: torch.nn.Module
    plan: planlib.Plan
    checkpoint: Path


def member(checkpoint: Path, device, name: str | None = None) -> Member:
    """One checkpoint as an ensemble member (network rebuilt from its stored description)."""
    state = ckptlib.load(checkpoint)
    model = ckptlib.build_from(state).to(device)
    return Member(name or str(checkpoint), model, state["plan"], Path(checkpoint))


def load_members(runs: list[RunDir], ensemble: bool, which: str, device) -> list[Member]:
    """Every fold of each run (``ensemble``) or its first fold, checkpoint ``which``."""
    members = []
    for run in runs:
        found = run.checkpoints(which)
        if not ensemble:
            found = found[:1]
        if not found:
            raise UserError(f"{run.path}: no checkpoint_{which}.pt in any fold folder")
        members.extend(member(ck, device, f"{run.name}/{ck.parent.name}") for ck in found)
    keys = {cache_key(m.plan) for m in members}
    if len(keys) > 1:
        detail = "; ".join(f"{m.name}: channels {m.plan.channels}, spacing {m.plan.target_spacing}, "
                           f"normalisation {m.plan.normalisation}" for m in members)
        raise UserError(f"the ensemble mixes checkpoints with different preprocessing ({detail}); "
                        "only models trained on the same plan can be averaged")
    return members


def lcc_helps(runs: list[RunDir]) -> bool:
    """nnU-Net keeps largest-component postprocessing only if cross-validation says it helps:
    mean fold validation Dice with it >= without it (folds without validation.json are ignored;
    with no evidence at all the component filter is applied, as the challenge seeds did)."""
    raw, lcc = [], []
    for run in runs:
        for v in run.validations().values():
            d, dl = v.get("mean_dice"), v.get("mean_dice_lcc")
            if isinstance(d, (int, float)) and isinstance(dl, (int, float)) and d == d and dl == dl:
                raw.append(d)
                lcc.append(dl)
    return not raw or float(np.mean(lcc)) >= float(np.mean(raw))


@dataclass(frozen=True)
class PredictSettings:
    """How to predict. ``skip_air``: windows with no body voxel are not run (their share is
    background); ``restrict_box``: likewise outside the JSON breast box. ``average``:
    ``"probabilities"`` averages softmax outputs over windows, flips and models and restores
    the tumour probability; ``"logits"`` (nnU-Net v2) averages logits, restores the
    tumour-minus-background logit margin to the original grid and returns its sigmoid."""

    tta_axes: tuple[int, ...] = (0, 1, 2)
    step: float = 0.5
    window_batch: int | None = None
    lcc: bool = True
    breast_box: bool = False
    restrict_box: bool = False
    skip_air: bool = True
    average: str = "probabilities"
    save_probabilities: bool = False

    def __post_init__(self):
        if self.average not in ("probabilities", "logits"):
            raise UserError(f"average {self.average!r}: expected probabilities or logits")
        if not 0 < self.step <= 1:
            raise UserError(f"step {self.step}: expected a fraction in (0, 1]")
        if any(a not in (0, 1, 2) for a in self.tta_axes):
            raise UserError(f"tta axes {self.tta_axes}: expected a subset of 0, 1, 2")

    def to_dict(self) -> dict:
        return planlib.to_dict(self)


def intersect(a, b):
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(max(x.start, y.start), max(max(x.start, y.start) + 1, min(x.stop, y.stop)))
                 for x, y in zip(a, b))


def box_on_preprocessed(box, meta) -> tuple[slice, slice, slice]:
    """A box on the original grid mapped onto the cropped, resampled grid (rounded outwards)."""
    out = []
    for ax, sl in enumerate(box):
        c0 = meta.crop_box[ax][0]
        scale = meta.resampled_shape[ax] / meta.cropped_shape[ax]
        lo = max(0, int(np.floor((sl.start - c0) * scale)))
        hi = min(meta.resampled_shape[ax], int(np.ceil((sl.stop - c0) * scale)))
        out.append(slice(lo, max(hi, lo + 1)))
    return tuple(out)


def postprocess(prob: np.ndarray, case: mamamia.Case, lcc: bool, breast_box: bool) -> np.ndarray:
    mask = (prob > 0.5).astype(np.uint8)
    box = mamamia.case_breast_box(case, mask.shape) if breast_box else None
    if box is not None:
        mask = mask_to_box(mask, box)
    if lcc:
        mask = largest_component(mask)
    return mask.astype(np.uint8)


def reference_header(case: mamamia.Case, phases=None):
    """The header outputs copy: the reference phase's (the grid of the expert masks)."""
    return io.load_header(case.phase_path(mamamia.reference_phase(case, phases)))


class Predictor:
    def __init__(self, members: list[Member], device: torch.device, settings: PredictSettings = PredictSettings()):
        if not members:
            raise UserError("no model to predict with")
        self.members, self.device, self.settings = members, torch.device(device), settings
        self.plan = members[0].plan
        self.window_batch = settings.window_batch or default_window_batch(self.device)

    def prepare(self, case: mamamia.Case):
        return preprocess(case, self.plan, with_mask=False)

    def probability(self, case: mamamia.Case, prepared=None) -> np.ndarray:
        """Averaged tumour probability on the original grid of the annotated phase."""
        s = self.settings
        img, _, meta = prepared if prepared is not None else self.prepare(case)
        x = torch.from_numpy(img)
        body = body_mask(img) if s.skip_air else None
        box = body_box(img, mask=body) if body is not None else None
        breast = mamamia.case_breast_box(case, meta.original_shape) if s.restrict_box else None
        if breast is not None:
            box = intersect(box, box_on_preprocessed(breast, meta))
        total = None
        logits = s.average == "logits"
        for m in self.members:
            out = sliding_window_predict(m.model, x, m.plan.patch_size, num_classes=2, step=s.step,
                                         device=self.device, accum_device="cpu", tta_axes=s.tta_axes,
                                         window_batch=self.window_batch, box=box, region=body, average=s.average,
                                         return_logits=logits,
                                         autocast_dtype=torch.float16 if self.device.type == "cuda" else None)
            total = out if total is None else total.add_(out)
        total /= len(self.members)
        if logits:
            margin = restore_logits(total[1:2] - total[0:1], meta)[0]
            return 1.0 / (1.0 + np.exp(-np.clip(margin, -80, 80)))
        return restore_probabilities(total, meta)[1]

    def predict(self, case: mamamia.Case, prepared=None) -> tuple[np.ndarray, np.ndarray]:
        """``(mask uint8, probability float32)`` of one case on its annotated phase's grid."""
        prob = self.probability(case, prepared)
        return postprocess(prob, case, self.settings.lcc, self.settings.breast_box), prob

    def run(self, cases, out: Path, overwrite: bool = False, progress: bool = True,
            skip=frozenset()) -> dict:
        """Predict every case into ``out``; per-case errors are collected, never stop the others.
        ``skip``: ids whose outputs are already complete."""
        out = Path(out)
        seg_dir, prob_dir = out / "pred_segmentations", out / "probabilities"
        errors, timings, written = {}, {}, []
        todo = [c for c in cases if c.patient_id not in skip]

        def write(case, mask, prob):
            ref = reference_header(case, self.plan.channels)
            protected = list(case.phase_paths) + ([case.mask_path] if case.mask_path else [])
            io.save_nifti(seg_dir / f"{io.safe_name(case.patient_id)}.nii.gz", mask, ref.affine, dtype=np.uint8,
                          reference=ref, overwrite=overwrite, protected=protected)
            if prob is not None:
                io.save_nifti(prob_dir / f"{io.safe_name(case.patient_id)}.nii.gz", prob.astype(np.float32), ref.affine,
                              reference=ref, overwrite=overwrite, protected=protected)

        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(todo), desc="predict", unit="case", dynamic_ncols=True)
        # one thread reads and preprocesses ahead, one writes behind: the network is the bottleneck
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
            pending = [reader.submit(self.prepare, c) for c in todo[:2]]
            writes = []
            for i, case in enumerate(todo):
                t0 = time.time()
                if i + 2 < len(todo):
                    pending.append(reader.submit(self.prepare, todo[i + 2]))
                try:
                    mask, prob = self.predict(case, pending[i].result())
                    writes.append((case.patient_id, writer.submit(
                        write, case, mask, prob if self.settings.save_probabilities else None)))
                except (OSError, ValueError, RuntimeError) as exc:
                    errors[case.patient_id] = f"{type(exc).__name__}: {exc}"
                    log.error("%s: %s", case.patient_id, exc)
                timings[case.patient_id] = time.time() - t0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(case=case.patient_id, s=f"{timings[case.patient_id]:.1f}")
            for pid, fut in writes:
                try:
                    fut.result()
                    written.append(pid)
                except (OSError, ValueError) as exc:
                    errors[pid] = f"{type(exc).__name__}: {exc}"
        if bar is not None:
            bar.close()
        return {"errors": errors, "seconds_per_case": timings, "written": written}


def input_cases(data: str | None = None, input: str | None = None, split: str = "test", ids=None,
                centers=None) -> list:
    """The cases to predict: a dataset's split (``data``, default the phantom dataset), or every
    case of ``input`` (a dataset root or a bare folder of case folders); ``ids`` and ``centers``
    narrow either."""
    from engine.runs import dataset_root
    if input:
        root = Path(input)
        if not root.is_dir():
            raise UserError(f"--input {input}: folder not found")
        if (root / "images").is_dir() or (root / "IMAGES").is_dir():
            cases = mamamia.load_dataset(root, strict_split_ids=False)
        else:  # a bare folder of case folders
            cases = mamamia.load_dataset_from_images(root)
        split = None
    else:
        cases = mamamia.load_dataset(dataset_root(data))
        split = split if any(c.split for c in cases) else None
    cases = mamamia.select(cases, split=split, ids=ids, centers=centers)
    if not cases:
        raise UserError("no cases to predict (check --data/--input, --split, --ids and --centers)")
    return cases
