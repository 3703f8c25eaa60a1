"""MAMA-MIA challenge submission: the ``Model(dataset)`` class the platform instantiates.

The platform passes a dataset object with ``get_patient_id_list()``,
``get_dce_mri_path_list(patient_id)`` (index 0 = pre-contrast) and ``read_json_file(patient_id)``.
``predict_segmentation(output_dir)`` writes ``output_dir/pred_segmentations/<patient_id>.nii.gz``
(uint8 {0,1}, the geometry of the input phase) and ``predict_classification(output_dir)`` returns
rows ``patient_id, pcr, score`` and writes ``output_dir/predictions.csv`` (REFERENCE.md s.2).
Both go through exactly the code path of ``infer.py``.

Weights: the run folders under ``$MAMAMIA_RUNS`` or ``./runs`` next to this file; set
``MAMAMIA_SUBMISSION_RUNS`` to a comma-separated list of run names to choose the ensemble and
``MAMAMIA_SUBMISSION_PCR_RUN`` to choose the pCR model (default: the most recent one).
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import torch

import infer
from data import mamamia


class Model:
    def __init__(self, dataset, runs=None, runs_dir=None, tta_axes=(0, 1, 2), breast_box: bool = False,
                 device=None, pcr_run=None):
        self.dataset = dataset
        self.runs_dir = Path(runs_dir) if runs_dir else infer.default_runs_dir()
        names = runs or [r for r in os.environ.get("MAMAMIA_SUBMISSION_RUNS", "").split(",") if r]
        self.runs = [self.runs_dir / r for r in names] if names else [infer.latest_run(self.runs_dir)]
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tta_axes, self.breast_box = tuple(tta_axes), breast_box
        self._members = None
        self.pcr_run = pcr_run or os.environ.get("MAMAMIA_SUBMISSION_PCR_RUN") or None

    def cases(self) -> list[mamamia.Case]:
        out = []
        for pid in self.dataset.get_patient_id_list():
            out.append(mamamia.case_from_paths(pid, self.dataset.get_dce_mri_path_list(pid),
                                               self.dataset.read_json_file(pid)))
        return out

    def predict_segmentation(self, output_dir) -> Path:
        out = Path(output_dir)
        if self._members is None:
            self._members = infer.load_members(self.runs, ensemble=True, which="final", device=self.device)
        (out / "pred_segmentations").mkdir(parents=True, exist_ok=True)
        result = infer.run(self.cases(), self._members, out, self.device, tta_axes=self.tta_axes,
                           breast_box=self.breast_box, progress=False, overwrite=True)
        if result["errors"]:
            raise RuntimeError(f"segmentation failed for {sorted(result['errors'])}: {result['errors']}")
        return out / "pred_segmentations"

    def predict_classification(self, output_dir):
        out = Path(output_dir)
        if not (out / "pred_segmentations").is_dir():
            self.predict_segmentation(out)
        args = SimpleNamespace(runs_dir=str(self.runs_dir), pcr_run=self.pcr_run, quiet=True)
        return infer.predict_pcr(args, self.cases(), out)
