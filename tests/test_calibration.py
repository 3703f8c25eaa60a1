"""Calibration maps, their choice by inner cross-validation, and held-out ECE before/after."""
import numpy as np
import pytest

from core import calibration as cal
from core import pcr_eval
from core.fairness import calibration as reliability


def _scores(n, seed, stretch):
    """Labels drawn from sigmoid(z); the reported log-odds are ``stretch * z`` (1: calibrated,
    > 1: overconfident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-0.8, 1.2, n)
    y = (rng.random(n) < cal.sigmoid(z)).astype(int)
    return stretch * z, y, np.arange(n) % 5


def test_maps_by_hand():
    z = np.array([-2.0, 0.0, 2.0])
    assert np.allclose(cal.CalibrationMap("none")(z), cal.sigmoid(z))
    assert np.allclose(cal.CalibrationMap("temperature", a=0.5)(z), cal.sigmoid(z / 2))
    assert np.allclose(cal.CalibrationMap("platt", a=2.0, b=-1.0)(z), cal.sigmoid(2 * z - 1))
    iso = cal.CalibrationMap("isotonic", xs=(-1.0, 1.0), ys=(0.2, 0.6))
    np.testing.assert_allclose(iso(np.array([-5.0, 0.0, 5.0])), [0.2, 0.4, 0.6])
    with pytest.raises(ValueError, match="increasing knots"):
        cal.CalibrationMap("isotonic", xs=(1.0, -1.0), ys=(0.2, 0.6))
    with pytest.raises(ValueError, match="one of"):
        cal.CalibrationMap("beta")


def test_platt_recovers_a_known_map():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(z.size) < cal.sigmoid(0.5 * z - 0.7)).astype(int)
    a, b = cal.fit_platt(z, y)
    assert a == pytest.approx(0.5, abs=0.03) and b == pytest.approx(-0.7, abs=0.05)
    m = cal.fit_map("isotonic", z, y)
    assert np.all(np.diff(m(np.sort(z))) >= 0)                      # monotone


def test_overconfident_score_is_calibrated_on_held_out_folds():
    z, y, fold_of = _scores(400, 0, stretch=4.0)
    cmap, rep = cal.choose_calibration(z, y, fold_of)
    assert cmap.kind != "none" and rep["brier"][cmap.kind] < rep["brier"]["none"]
    r = pcr_eval.evaluate(z, y, fold_of, range(5), n_boot=200)
    assert set(r["calibration_per_fold"].values()) - {"none"}
    assert r["ece_after"] < 0.6 * r["ece_before"]
    assert r["ece_delta_ci"][1] < 0                                  # the whole interval is an improvement
    assert r["ece_before_ci"][0] <= r["ece_before"] <= r["ece_before_ci"][1]


def test_calibrated_score_keeps_none_and_ece_does_not_rise_on_average():
    deltas, chosen = [], []
    for seed in range(8):
        z, y, fold_of = _scores(300, 10 + seed, stretch=1.0)
        r = pcr_eval.evaluate(z, y, fold_of, range(5), n_boot=50)
        deltas.append(r["ece_after"] - r["ece_before"])
        chosen += list(r["calibration_per_fold"].values())
    assert chosen.count("none") >= 0.6 * len(chosen)
    assert np.mean(deltas) <= 0.005


def test_overconfident_scores_never_worse_on_average():
    """Over several draws of a mildly overconfident score, held-out ECE after <= before."""
    deltas = []
    for seed in range(6):
        z, y, fold_of = _scores(200, 30 + seed, stretch=1.8)
        r = pcr_eval.evaluate(z, y, fold_of, range(5), n_boot=20)
        deltas.append(r["ece_after"] - r["ece_before"])
    assert np.mean(deltas) < 0


def test_ece_of_the_reported_probabilities_matches_the_reference():
    z, y, fold_of = _scores(200, 3, stretch=2.0)
    r = pcr_eval.evaluate(z, y, fold_of, range(5), n_boot=20)
    assert r["ece_before"] == pytest.approx(reliability(y, cal.sigmoid(z))["ece"])


def test_single_class_or_single_positive_gives_none():
    z = np.linspace(-2, 2, 20)
    assert cal.choose_calibration(z, np.zeros(20, int))[0].kind == "none"
    y = np.zeros(20, int)
    y[3] = 1
    assert cal.choose_calibration(z, y)[0].kind == "none"


def test_receptor_rule_and_bootstrap():
    recs = [{"hr": 0, "her2": 0}, {"hr": 1, "her2": 1}, {"hr": 1, "her2": 0}, {"subtype": "luminal_a"},
            {"subtype": "triple_negative"}, {"subtype": "her2_pure"}, {"subtype": "luminal_b"}, {}]
    pred, known = pcr_eval.receptor_rule(recs)
    np.testing.assert_array_equal(pred, [1, 1, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(known, [1, 1, 1, 1, 1, 1, 0, 0])
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    m = pcr_eval.rule_metrics(recs, y, n_boot=200)
    # TPR 3/4 (rows 0, 4, 5 of positives 0, 4, 5, 6), TNR 3/4 (rows 2, 3, 7 of 1, 2, 3, 7)
    assert m["balanced_accuracy"] == pytest.approx(0.75) and m["coverage"] == pytest.approx(0.75)
    lo, hi = m["ba_ci"]
    assert 0 <= lo <= 0.75 <= hi <= 1
