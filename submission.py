"""MAMA-MIA challenge submission: the ``Model(dataset)`` class the platform instantiates.

The platform passes a dataset object with ``get_patient_id_list()``,
``get_dce_mri_path_list(patient_id)`` (index 0 = pre-contrast) and ``read_json_file(patient_id)``.
``predict_segmentation(output_dir)`` writes ``output_dir/pred_segmentations/<patient_id>.nii.gz``
(uint8 {0,1}, the geometry of the input phase; the id exactly as the platform gives it) and
``predict_classification(output_dir)`` returns rows ``patient_id, pcr, score`` and writes
``output_dir/predictions.csv`` (the formats of the challenge's scoring scripts). Both use the
library's predictor (``engine.predictor``) and pCR stage, as ``infer.py`` does; errors are
exceptions, never ``SystemExit``, so the platform's process survives them.

Weights: the run folders under ``$MAMAMIA_RUNS`` or ``./runs`` next to this file; set
``MAMAMIA_SUBMISSION_RUNS`` to a comma-separated list of run names to choose the ensemble and
``MAMAMIA_SUBMISSION_PCR_RUN`` to choose the pCR model (default: the most recent one).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from data import mamamia
from engine.outputs import OutputFolder
from engine.pcr_predict import find_pcr_model, predict_pcr
from engine.predictor import PredictSettings, Predictor, lcc_helps, load_members
from engine.runs import RunDir, runs_root


class Model:
    def __init__(self, dataset, runs=None, runs_dir=None, tta_axes=(0, 1, 2), breast_box: bool = False,
                 device=None, pcr_run=None):
        self.dataset = dataset
        self.runs_dir = runs_root(runs_dir)
        names = runs or [r for r in os.environ.get("MAMAMIA_SUBMISSION_RUNS", "").split(",") if r]
        self.runs = [RunDir.named(r, self.runs_dir) for r in names] if names else [RunDir.latest(self.runs_dir)]
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tta_axes, self.breast_box = tuple(tta_axes), breast_box
        self._predictor = None
        self.pcr_run = pcr_run or os.environ.get("MAMAMIA_SUBMISSION_PCR_RUN") or None

    def cases(self) -> list[mamamia.Case]:
        return [mamamia.case_from_paths(pid, self.dataset.get_dce_mri_path_list(pid), self.dataset.read_json_file(pid))
                for pid in self.dataset.get_patient_id_list()]

    def predictor(self) -> Predictor:
        if self._predictor is None:
            members = load_members(self.runs, ensemble=True, which="final", device=self.device)
            settings = PredictSettings(tta_axes=self.tta_axes, breast_box=self.breast_box, lcc=lcc_helps(self.runs))
            self._predictor = Predictor(members, self.device, settings)
        return self._predictor

    def predict_segmentation(self, output_dir) -> Path:
        out = Path(output_dir)
        with OutputFolder(out):
            result = self.predictor().run(self.cases(), out, overwrite=True, progress=False)
        if result["errors"]:
            raise RuntimeError(f"segmentation failed for {sorted(result['errors'])}: {result['errors']}")
        return out / "pred_segmentations"

    def predict_classification(self, output_dir):
        out = Path(output_dir)
        if not (out / "pred_segmentations").is_dir():
            self.predict_segmentation(out)
        return predict_pcr(self.cases(), out, find_pcr_model(self.pcr_run, self.runs_dir), progress=False,
                           echo=lambda *_: None)
