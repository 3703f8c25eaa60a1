"""Clinical variables of the pCR model as numeric columns (seed B names clinical variables as
its next step; in MAMA-MIA hormone-receptor and HER2 status are the strongest known predictors
of pCR). Missing values are imputed with training-fold values plus a missing indicator, so a
model never sees the label of a row it is evaluated on through its imputation.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from core.pcr_eval import receptor_status


class ClinicalEncoder:
    """Clinical variables as numeric columns with missing-value handling fitted on training rows.

    Records are mappings with ``age`` (years), ``menopause`` ('pre' | 'post' | other = unknown),
    ``density`` ('a'-'d'), ``hr`` and ``her2`` (0/1; where absent, what ``subtype`` implies,
    :func:`core.pcr_eval.receptor_status`), ``grade`` (Nottingham 1-3), ``subtype`` (str) and
    ``center`` (the acquiring center, known from the patient id in MAMA-MIA; pCR rates differ
    between the trials behind the centers), None where unknown. Columns: for each of
    :data:`NUMERIC` the value (missing -> the training rows' median; for hr/her2 their mean, the
    positive rate) and a missing indicator; pre and post indicators (unknown: both 0); one
    indicator per subtype seen in training (missing or unseen: all 0); one indicator per center
    seen in training (a new center: all 0). Fitted on the training rows of a fold only.
    """

    NUMERIC = ("age", "density", "hr", "her2", "grade")
    DEFAULTS = {"age": 50.0, "density": 1.5, "hr": 0.5, "her2": 0.5, "grade": 2.0}

    @staticmethod
    def values(r: Mapping) -> dict[str, float | None]:
        hr, her2 = receptor_status(r)
        grade = r.get("grade")
        return {"age": float(r["age"]) if _known(r.get("age")) else None, "density": _density(r.get("density")),
                "hr": None if hr is None else float(hr), "her2": None if her2 is None else float(her2),
                "grade": float(grade) if _known(grade) else None}

    def fit(self, records: Sequence[Mapping]) -> "ClinicalEncoder":
        vals = [self.values(r) for r in records]
        self.fills = {}
        for k in self.NUMERIC:
            known = [v[k] for v in vals if v[k] is not None]
            avg = np.mean if k in ("hr", "her2") else np.median
            self.fills[k] = float(avg(known)) if known else self.DEFAULTS[k]
        self.subtypes = sorted({str(r["subtype"]) for r in records if _known(r.get("subtype"))})
        self.centers = sorted({str(r["center"]) for r in records if _known(r.get("center"))})
        self.names = self.column_names(self.subtypes, self.centers)
        return self

    @classmethod
    def column_names(cls, subtypes: Sequence[str] = (), centers: Sequence[str] = ()) -> list[str]:
        return ([n for k in cls.NUMERIC for n in (k, f"{k}_missing")] + ["menopause_pre", "menopause_post"]
                + [f"subtype_{s}" for s in subtypes] + [f"center_{c}" for c in centers])

    def transform(self, records: Sequence[Mapping]) -> np.ndarray:
        out = np.zeros((len(records), len(self.names)))
        nn = len(self.NUMERIC)
        for i, r in enumerate(records):
            v = self.values(r)
            for j, k in enumerate(self.NUMERIC):
                out[i, 2 * j] = v[k] if v[k] is not None else self.fills[k]
                out[i, 2 * j + 1] = float(v[k] is None)
            meno = str(r.get("menopause") or "")
            out[i, 2 * nn], out[i, 2 * nn + 1] = float(meno == "pre"), float(meno == "post")
            if _known(r.get("subtype")) and str(r["subtype"]) in self.subtypes:
                out[i, 2 * nn + 2 + self.subtypes.index(str(r["subtype"]))] = 1.0
            centers = getattr(self, "centers", [])
            if _known(r.get("center")) and str(r["center"]) in centers:
                out[i, 2 * nn + 2 + len(self.subtypes) + centers.index(str(r["center"]))] = 1.0
        return out


def _known(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v != ""


def _density(v) -> float | None:
    return float("abcd".index(v)) if isinstance(v, str) and v in ("a", "b", "c", "d") else None


