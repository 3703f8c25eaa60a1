"""Tests for core/pcr.py: filtering and selection without leakage, calibration, thresholds,
clinical encoding, cross-fitted evaluation, the oracle and the deployed model."""
import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score

from core import pcr
from conftest import pcr_table

FAST = pcr.PipelineConfig(n_select=3, max_candidates=6, rows_per_feature=1)


def _table(n=60, f=12, seed=0):
    return pcr_table(n, f, seed)


def _logreg(seed):
    return LogisticRegression(C=1.0, max_iter=500)


# ----------------------------------------------------------------------------- calibration

def test_temperature_scaling_fixes_an_overconfident_toy():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 4000)
    y = (rng.random(z.size) < pcr.sigmoid(z)).astype(int)
    over = 3.0 * z                                    # logits three times too large
    t = pcr.fit_temperature(over, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert pcr.nll(over, y, t) < pcr.nll(over, y) - 0.05
    assert pcr.nll(over, y, t) == pytest.approx(pcr.nll(z, y), abs=0.01)
    assert pcr.fit_temperature(over, np.ones_like(y)) == 1.0  # nothing to calibrate against


def test_nll_reference():
    z, y = np.array([0.0, 2.0, -1.0]), np.array([1, 0, 0])
    ref = -np.mean([math.log(0.5), math.log(1 - 1 / (1 + math.exp(-2))), math.log(1 - 1 / (1 + math.e))])
    assert pcr.nll(z, y) == pytest.approx(ref)


def test_threshold_selection_by_hand():
    # separable: the only perfect cut lies between 0.3 and 0.4
    assert pcr.choose_threshold([0.1, 0.2, 0.3, 0.4, 0.5], [0, 0, 0, 1, 1]) == pytest.approx(0.35)
    # BA of each candidate: 0.5, .667, .833 (0.25), .667, .833 (0.5), .667, 0.5 -> tie, the middle
    # of the two best (index 1 of [0.25, 0.5]) is taken
    s, y = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7], [0, 0, 1, 0, 1, 1]
    t = pcr.choose_threshold(s, y)
    assert t == pytest.approx(0.5)
    assert balanced_accuracy_score(y, (np.array(s) >= t).astype(int)) == pytest.approx(5 / 6)
    assert pcr.choose_threshold([0.2, 0.9], [1, 1]) == 0.5


def test_logits_of_probability_models():
    class P:
        def predict_proba(self, X):
            return np.array([[0.75, 0.25], [0.0, 1.0]])
    lg = pcr.logits_of(P(), None)
    assert lg[0] == pytest.approx(math.log(0.25 / 0.75))
    assert lg[1] == pytest.approx(math.log((1 - pcr.PROB_CLIP) / pcr.PROB_CLIP))


# ----------------------------------------------------------------------------- features

def test_balanced_ridge_matches_weighted_ridge_and_scorer():
    X, y, _ = _table(50, 4)
    est = pcr.BalancedRidge(alpha=2.0).fit(X, y)
    w = np.where(y == 1, 0.5 / y.sum(), 0.5 / (y.size - y.sum()))
    ref = Ridge(alpha=2.0 / y.size).fit(X, np.where(y == 1, 1.0, -1.0), sample_weight=w)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-8, atol=1e-10)
    assert est.intercept_ == pytest.approx(ref.intercept_)
    assert pcr._balanced_accuracy_scorer(est, X, y) == pytest.approx(balanced_accuracy_score(y, est.predict(X)))


def test_correlation_filter_keeps_the_better_ranked_of_a_pair():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(size=50)
    z = np.stack([a, 2 * a + 0.01 * rng.normal(size=50), b], 1)
    assert pcr.correlation_filter(z, [0, 1, 2], 0.9) == [0, 2]
    assert pcr.correlation_filter(z, [1, 0, 2], 0.9) == [1, 2]
    assert pcr.correlation_filter(z, [0, 1, 2], 1.0) == [0, 1, 2]


def test_pipeline_filters_imputes_and_standardises():
    X, y, names = _table(60, 8)
    X[:25, 5] = np.nan             # 42 % missing -> dropped
    X[:, 6] = 3.0                  # constant -> dropped
    X[:5, 1] = np.nan              # 8 % missing -> imputed with the training median
    cfg = pcr.PipelineConfig(n_select=8, max_candidates=8, rows_per_feature=1)
    p = pcr.FeaturePipeline(cfg).fit(X, y, names)
    assert p.dropped["missing"] == ["f5"] and p.dropped["constant"] == ["f6"]
    assert p.dropped["correlated"] == ["f2"]           # the near-copy of f0 ranks lower
    assert set(p.selected_names) == {"f0", "f1", "f3", "f4", "f7"}
    z = p.transform(X)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-9)
    j = p.selected_names.index("f1")
    med = np.nanmedian(X[:, 1])
    assert z[0, j] == pytest.approx((med - p.mean[j]) / p.sd[j])
    assert p.transform(np.full((1, 8), 1e6)).max() == cfg.clip


def test_forward_selection_finds_the_informative_columns():
    X, y, names = _table(120, 12)
    p = pcr.FeaturePipeline(pcr.PipelineConfig(n_select=2, max_candidates=10, rows_per_feature=1)).fit(X, y, names)
    assert set(p.selected_names) == {"f0", "f1"} or set(p.selected_names) == {"f2", "f1"}
    # the row cap: 30 rows at 20 rows per feature select one feature
    assert pcr.PipelineConfig().n_features(30) == 1 and pcr.PipelineConfig().n_features(5000) == 40


def test_no_leakage_validation_rows_do_not_change_the_fold_model():
    X, y, names = _table(60, 10)
    fold_of = np.arange(60) % 3
    recs = [{"age": 40 + i % 30, "menopause": "pre", "subtype": "her2" if i % 2 else "luminal"} for i in range(60)]
    classifiers = {"lr": _logreg}

    def fold0(X_, y_, recs_):
        return pcr.cross_validate(X_, y_, names, fold_of, [0], classifiers, FAST, recs_).models[0]

    ref = fold0(X, y, recs)
    val = fold_of == 0
    rng = np.random.default_rng(5)
    X2, y2 = X.copy(), y.copy()
    X2[val] = rng.normal(size=(val.sum(), 10)) * 100
    y2[val] = 1 - y2[val]
    recs2 = [dict(r, age=None, subtype="unseen") if val[i] else r for i, r in enumerate(recs)]
    got = fold0(X2, y2, recs2)
    assert got.pipeline.selected_names == ref.pipeline.selected_names
    for k in ("median", "mean", "sd", "forced_mean", "forced_sd"):
        np.testing.assert_array_equal(getattr(got.pipeline, k), getattr(ref.pipeline, k))
    np.testing.assert_array_equal(got.classifiers["lr"].coef_, ref.classifiers["lr"].coef_)
    assert got.clinical.subtypes == ref.clinical.subtypes
    # the check can fail: changing a training row does change the fitted state
    X3 = X.copy()
    X3[np.flatnonzero(~val)[0]] += 50
    other = fold0(X3, y, recs)
    assert not np.array_equal(other.pipeline.mean, ref.pipeline.mean)


def test_clinical_encoder_missing_values():
    """Imputation values come from the training records only; receptor status from the table,
    else implied by the subtype (luminal = HR+/HER2-, triple negative = HR-/HER2-)."""
    enc = pcr.ClinicalEncoder().fit([
        {"age": 40, "menopause": "pre", "subtype": "luminal", "density": "a"},
        {"age": None, "menopause": "post", "subtype": "her2", "density": None, "hr": 0, "her2": 1, "grade": 3},
        {"age": 60, "menopause": "unknown", "subtype": None, "density": "c", "grade": 1}])
    assert enc.names == ["age", "age_missing", "density", "density_missing", "hr", "hr_missing", "her2",
                         "her2_missing", "grade", "grade_missing", "menopause_pre", "menopause_post",
                         "subtype_her2", "subtype_luminal"]
    # fills: age median(40, 60) = 50, density median(a=0, c=2) = 1, hr mean(1, 0) = 0.5,
    # her2 mean(0, 1) = 0.5, grade median(3, 1) = 2
    out = enc.transform([{"age": float("nan"), "menopause": "post", "subtype": "triple_negative"},
                         {"age": 45, "menopause": "pre", "subtype": "her2", "density": "b", "her2": 1}])
    np.testing.assert_array_equal(out, [[50, 1, 1, 1, 0, 0, 0, 0, 2, 1, 0, 1, 0, 0],
                                        [45, 0, 1, 0, 0.5, 1, 1, 0, 2, 1, 1, 0, 1, 0]])


def test_clinical_encoder_center_indicators():
    """One indicator per center seen in training, after the subtype indicators; a center not seen
    in training (or missing) gets none."""
    enc = pcr.ClinicalEncoder().fit([{"subtype": "luminal", "center": "NACT"}, {"subtype": None, "center": "DUKE"},
                                     {"center": None}])
    assert enc.centers == ["DUKE", "NACT"]
    assert enc.names[-3:] == ["subtype_luminal", "center_DUKE", "center_NACT"]
    out = enc.transform([{"center": "NACT"}, {"center": "DUKE"}, {"center": "ISPY2"}, {}])
    np.testing.assert_array_equal(out[:, -2:], [[0, 1], [1, 0], [0, 0], [0, 0]])
    assert pcr.ClinicalEncoder().fit([{"subtype": "luminal"}]).names[-1] == "subtype_luminal"


# ----------------------------------------------------------------------------- evaluation

def test_evaluate_cross_fits_and_reports():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 30)
    fold_of = np.arange(60) % 5
    logits = 4 * (2 * y - 1) + rng.normal(0, 1, 60)      # separable, overconfident
    r = pcr.evaluate(logits, y, fold_of, range(5))
    assert r["cross_fitted"] and r["n"] == 60 and r["positives"] == 30
    assert r["balanced_accuracy"] == 1.0 and r["auc"] == 1.0
    single = pcr.evaluate(logits, y, fold_of, [2])
    assert not single["cross_fitted"] and single["n"] == 12
    # rows outside the folds or without a logit are ignored
    lg = logits.copy()
    lg[fold_of == 1] = np.nan
    assert pcr.evaluate(lg, y, fold_of, range(5))["n"] == 48


def test_evaluate_uses_no_label_of_the_fold_it_scores():
    """Reference: fold f is scored with a calibration map chosen and fitted, and a threshold
    chosen, on the other folds only."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    fold_of = np.arange(80) % 4
    logits = 2 * (2 * y - 1) + rng.normal(0, 1.5, 80)
    pred = np.zeros(80, int)
    for f in range(4):
        o, h = fold_of != f, fold_of == f
        cmap, _ = pcr.choose_calibration(logits[o], y[o], fold_of[o])
        thr = pcr.choose_threshold(cmap(logits[o]), y[o])
        pred[h] = cmap(logits[h]) >= thr
    r = pcr.evaluate(logits, y, fold_of, range(4))
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))


def test_prior_correction_of_balanced_classifiers():
    X, y, names = _table(60, 6)
    tr = np.arange(40)
    fm = pcr.fit_fold(X, y, names, tr, {"lr": _logreg}, FAST)
    n1 = y[tr].sum()
    assert fm.prior_logit == pytest.approx(math.log(n1 / (40 - n1)))
    z = fm.inputs(X[40:])
    np.testing.assert_allclose(fm.logits(X[40:])["lr"], fm.classifiers["lr"].decision_function(z) + fm.prior_logit)
    assert pcr.fit_fold(X, y, names, tr, {"lr": _logreg}, FAST, prior_correction=False).prior_logit == 0.0
    # evaluate: "raw" metrics use the uncorrected log-odds, "before" the prior-corrected ones
    rng = np.random.default_rng(2)
    yy = (rng.random(200) < 0.3).astype(int)
    raw = rng.normal(0, 1, 200) + 1.5 * (2 * yy - 1)
    shift = np.full(200, math.log(0.3 / 0.7))
    r = pcr.evaluate(raw + shift, yy, np.arange(200) % 5, range(5), shift=shift)
    assert r["nll_before"] == pytest.approx(pcr.nll(raw + shift, yy))   # prior-corrected
    assert r["balanced_accuracy_at_0.5"] == pytest.approx(balanced_accuracy_score(yy, (raw >= 0).astype(int)))
    assert r["ece_before"] < r["ece_raw"]      # prior-corrected vs the classifier's own probabilities


def test_oracle_by_hand():
    p = np.array([0.9, 0.8, 0.2, 0.1])
    y = np.array([1, 1, 0, 0])
    r = pcr.oracle(p, y, np.array([0, 1, 0, 1]), [0, 1])
    assert r["balanced_accuracy"] == 1.0
    # expected TPR = (0.9 + 0.8) / 2.0, expected TNR = (0.8 + 0.9) / 2.0
    assert r["expected_balanced_accuracy"] == pytest.approx(0.85)


def test_deployed_model_aligns_columns_and_thresholds():
    X, y, names = _table(60, 6)
    fold_of = np.arange(60) % 3
    cv = pcr.cross_validate(X, y, names, fold_of, range(3), {"lr": _logreg}, FAST)
    r = pcr.evaluate(cv.oof["lr"], y, fold_of, range(3))
    model = pcr.PCRModel(feature_names=names, folds=cv.models, classifier="lr",
                         temperature=r["temperature"], threshold=r["threshold"], clinical=False)
    score, label = model.predict(X, names)
    assert score.shape == (60,) and set(np.unique(label)) <= {0, 1}
    np.testing.assert_array_equal(label, (score >= r["threshold"]).astype(int))
    ref = pcr.sigmoid(np.mean([m.logits(X)["lr"] for m in cv.models], 0) / r["temperature"])
    np.testing.assert_allclose(score, ref)
    # reordered columns plus an extra one give the same scores; an absent column is imputed
    perm = list(reversed(range(6)))
    s2, _ = model.predict(np.concatenate([X[:, perm], np.ones((60, 1))], 1), [names[i] for i in perm] + ["x"])
    np.testing.assert_allclose(s2, score)
    assert np.isfinite(model.predict(X[:, :5], names[:5])[0]).all()
    with pytest.raises(ValueError, match="none of the model's features"):
        model.predict(X, [f"g{i}" for i in range(6)])


def test_config_errors():
    with pytest.raises(ValueError, match="unknown key 'nselect'"):
        pcr.PipelineConfig.from_dict({**FAST.to_dict(), "nselect": 3})
    with pytest.raises(ValueError, match="missing required key 'n_select'"):
        pcr.PipelineConfig.from_dict({k: v for k, v in FAST.to_dict().items() if k != "n_select"})
    with pytest.raises(ValueError, match="selector"):
        pcr.PipelineConfig(selector="svm")
    assert pcr.PipelineConfig.from_dict(FAST.to_dict()) == FAST


def test_seed_b_setting_selects_40_post_contrast_features(caplog):
    """--features post --n-select 40: exactly 40 features, all pyradiomics of the first
    post-contrast phase, even when other columns (kinetics, subtraction) carry the signal."""
    rng = np.random.default_rng(5)
    n = 120
    y = (rng.random(n) < 0.35).astype(int)
    names = [f"post_glcm_f{i}" for i in range(70)] + [f"sub_firstorder_f{i}" for i in range(15)] \
        + [f"kin_k{i}" for i in range(15)]
    X = rng.normal(size=(n, len(names)))
    X[:, 70:] += 1.5 * y[:, None]                                   # the strong signal is not "post"
    X[:, :5] += 0.5 * y[:, None]
    cfg = pcr.PipelineConfig(features="post", n_select=40, row_cap=False)
    with caplog.at_level("WARNING", logger="core.pcr"):
        p = pcr.FeaturePipeline(cfg).fit(X, y, names)
    assert len(p.selected_names) == 40 and all(s.startswith("post_") for s in p.selected_names)
    assert len(p.dropped["feature_set"]) == 30
    assert any("selecting 40 features from 120 training rows" in r.getMessage() for r in caplog.records)
    assert p.transform(X).shape == (n, 40)
    # the default keeps the per-row cap (120 / 20 = 6); post+sub admits the subtraction features
    assert len(pcr.FeaturePipeline(pcr.PipelineConfig(features="post")).fit(X, y, names).selected_names) == 6
    ps = pcr.FeaturePipeline(pcr.PipelineConfig(features="post+sub", n_select=3)).fit(X, y, names)
    assert all(s.startswith(("post_", "sub_")) for s in ps.selected_names)
    assert any(s.startswith("sub_") for s in ps.selected_names)
    with pytest.raises(ValueError, match="features must be one of"):
        pcr.PipelineConfig(features="pre")


def test_pipeline_flags_are_checked_and_described():
    from core.errors import UserError
    from engine import pcr_train
    req = pcr_train.PCRRequest(features="post", n_select=40, model="snn")
    cfg = pcr_train.pipeline_config(req)
    assert (cfg.features, cfg.n_select, cfg.row_cap, cfg.corr_threshold) == ("post", 40, False, 0.9)
    assert "--features post" in pcr_train.describe(cfg, req) and "40 features (--n-select)" in pcr_train.describe(cfg, req)
    assert pcr_train.pipeline_config(pcr_train.PCRRequest()).row_cap
    for bad, msg in [(dict(model="xgb"), "--model"), (dict(n_select=0), "--n-select"),
                     (dict(corr_threshold=1.5), "--corr-threshold"), (dict(selector="svm"), "--selector")]:
        with pytest.raises(UserError, match=msg):
            pcr_train.pipeline_config(pcr_train.PCRRequest(**bad))
