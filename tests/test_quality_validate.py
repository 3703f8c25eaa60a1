"""Validation of the quality scores against the phantom's causes (data/quality_validate.py)."""
import math

import numpy as np
import pytest

from data import quality, quality_validate as qv


def _rows_and_latents():
    # 12 cases in two centers; snr falls with noise (perfectly), motion follows its cause except for
    # one swapped pair, ghosting is unrelated to its cause (reversed)
    rows, lat = [], {}
    for i in range(12):
        pid = f"C{i:02d}"
        rows.append(dict(patient_id=pid, center="A" if i < 6 else "B", snr=100.0 - i, motion=float(i),
                         ghosting=float(-i), blur=float("nan") if i == 0 else float(i)))
        lat[pid] = dict(patient_id=pid, noise=str(0.01 * (i + 1)), motion_max_mm=str([1, 0, 2, 3, 4, 5, 6, 7, 8, 9,
                                                                                         10, 11][i]),
                        motion_mm=str(i), ghost=str(i), psf_mm=str(i))
    return rows, lat


def test_spearman_signs_and_hand_values(monkeypatch):
    rows, lat = _rows_and_latents()
    assert qv.validate(rows, lat)[0]["per_center"] == {}                 # 6 cases per center: too few
    monkeypatch.setattr(qv, "MIN_CENTER", 6)
    res = {r["score"]: r for r in qv.validate(rows, lat)}
    assert res["snr"]["rho"] == pytest.approx(1.0)          # sign flipped: SNR falls with noise
    assert res["ghosting"]["rho"] == pytest.approx(-1.0)
    # one adjacent swap in 12 ranks: 1 - 6 * 2 / (12 * 143)
    assert res["motion"]["rho"] == pytest.approx(1 - 12 / (12 * 143))
    assert res["motion (drawn scale)"]["rho"] == pytest.approx(1.0)
    assert res["blur"]["n"] == 11 and res["blur"]["rho"] == pytest.approx(1.0)   # NaN pair dropped
    # within centers: A has the swapped pair (6 ranks: 1 - 12 / 210), B is perfect; median of the two
    assert res["motion"]["per_center"]["A"] == pytest.approx(1 - 12 / 210)
    assert res["motion"]["rho_within"] == pytest.approx((1 - 12 / 210 + 1) / 2)
    text = qv.format_table(list(res.values()))
    assert text.splitlines()[0].split()[:3] == ["score", "cause", "n"] and "ghost" in text


def test_missing_latents_are_errors(tmp_path):
    rows, lat = _rows_and_latents()
    del lat["C03"]
    with pytest.raises(ValueError, match="C03"):
        qv.validate(rows, lat)
    with pytest.raises(FileNotFoundError, match="phantom_latents.csv"):
        qv.read_latents(tmp_path)
    (tmp_path / "phantom_latents.csv").write_text("patient_id,center,noise\nX_1,DUKE,0.02\n")
    assert qv.read_latents(tmp_path)["X_1"]["noise"] == "0.02"
    assert math.isnan(qv.spearman([1, 2], [3, 4]))


def test_every_validated_score_exists():
    assert {s.split(" ")[0] for s in qv.CAUSES} <= set(quality.SCORES) | {"noise_sigma"}
    assert "noise_sigma" in quality.scores(np.ones((2, 8, 8, 8), np.float32), (1.0, 1.0, 1.0))
    assert np.all([qv.CAUSES[s][1] == (-1 if quality.DIRECTION[s] > 0 else 1) for s in ("snr", "motion",
                                                                                          "ghosting", "blur")])
