"""Cohort scores on small hand-made cohorts with hand-computed answers."""

import math

import numpy as np
import pytest

from core import fairness as F


# ----------------------------------------------------------------------------- subgroups

@pytest.mark.parametrize("age,group", [
    (35, "0-40"), (40, "0-40"), (40.5, "41-50"), (50, "41-50"), (55.0, "51-60"), (70, "61-70"),
    (71, "71+"), (100, "71+"), (0, None), (101, None), (None, None), (float("nan"), None),
    (np.float32("nan"), None), ("45", "41-50"),
])
def test_age_bins_right_closed(age, group):
    assert F.age_group(age) == group


@pytest.mark.parametrize("status,group", [
    ("pre", "pre"), ("post", "post"), ("Post", "post"), ("POSTMENOPAUSAL", "post"),
    ("Pre (<6 months since LMP AND no prior bilateral ovariectomy)", "pre"),
    ("peri (6-12 months since last menstrual period)", "pre"),
    (None, "unknown"), (float("nan"), "unknown"), ("", "unknown"), ("  ", "unknown"),
    ("N/A", "n/a"),  # other strings stay their own group, as in the official script
    ("post (previously pre)", "pre"),  # "pre" is tested before "post" (scoring_task2.py)
])
def test_menopause_mapping(status, group):
    assert F.menopause_group(status) == group


def test_density_and_assign_groups():
    recs = [{"age": 45, "menopausal_status": "post", "breast_density": "B"},
            {"age": None, "breast_density": None}, {}]
    g = F.assign_groups(recs)
    assert g == {"age": ["41-50", None, None], "menopausal_status": ["post", "unknown", "unknown"],
                 "breast_density": ["b", None, None]}
    with pytest.raises(ValueError, match="race"):
        F.assign_groups(recs, ["race"])
    with pytest.raises(ValueError, match="abc"):
        F.age_group("abc")


# ----------------------------------------------------------------------------- Task 1

DICE = [0.8, 0.6, 0.4, 0.7, 0.2, 0.6]
NHD = [0.1, 0.3, 0.5, 0.0, 0.7, 0.1]
CLIN = [
    {"age": 35, "menopausal_status": "pre"},
    {"age": 45, "menopausal_status": "Post"},
    {"age": 45, "menopausal_status": None},
    {"age": None, "menopausal_status": "Peri (6-12 months since LMP)"},
    {"age": 72, "menopausal_status": "post"},  # the only case of age group 71+
    {"age": 40, "menopausal_status": ""},
]  # breast_density missing for everybody


def test_segmentation_scores_hand_computed():
    groups = F.assign_groups(CLIN)
    out = F.segmentation_scores(DICE, NHD, groups)
    # mean Dice 3.3/6 = 0.55, mean NormHD 1.7/6; performance = 0.5 * (0.55 + 1 - 1.7/6)
    assert out["performance"] == pytest.approx(0.5 * (0.55 + 1 - 1.7 / 6))
    # age: 0-40 {0,5}: Dice .7 NHD .1; 41-50 {1,2}: .5 / .4; 71+ {4}: .2 / .7 -> 1 - .5*(.5+.6)
    assert out["fairness_per_variable"]["age"] == pytest.approx(0.45)
    # menopause: pre {0,3}: .75/.05; post {1,4}: .4/.5; unknown {2,5}: .5/.3 -> 1 - .5*(.35+.45)
    assert out["fairness_per_variable"]["menopausal_status"] == pytest.approx(0.6)
    # density all missing: no group, range 0 -> 1 (documented choice)
    assert out["fairness_per_variable"]["breast_density"] == 1.0
    assert out["fairness"] == pytest.approx((0.45 + 0.6 + 1.0) / 3)
    assert out["ranking"] == pytest.approx(0.5 * (0.5 * (0.55 + 1 - 1.7 / 6)) + 0.5 * 2.05 / 3)
    alt = F.segmentation_scores(DICE, NHD, groups, alpha=0.25)
    assert alt["ranking"] == pytest.approx(0.75 * out["performance"] + 0.25 * out["fairness"])


def test_single_group_is_perfectly_fair():
    out = F.segmentation_fairness([0.1, 0.9], [0.9, 0.0], {"v": ["a", "a"]})
    assert out == {"v": 1.0}


def test_segmentation_parity():
    groups = F.assign_groups(CLIN)
    # Dice >= .5: T T F T F T; age: 0-40 -> 1, 41-50 -> .5, 71+ -> 0; menopause: 1, .5, .5
    dp = F.segmentation_parity(DICE, groups, threshold=0.5)
    assert dp == {"age": pytest.approx(1.0), "menopausal_status": pytest.approx(0.5),
                  "breast_density": 0.0}
    assert F.demographic_parity([1, 0, 1, 1], ["a", "b", "b", None]) == pytest.approx(0.5)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="groups"):
        F.segmentation_fairness([0.5], [0.5], {"age": ["0-40", "71+"]})


# ----------------------------------------------------------------------------- Task 2

Y_TRUE = [1, 0, 1, None, 0, 1, 0, 1]  # missing truth counts as 0 (official)
Y_PRED = [1, 0, 0, 1, 0, 1, 1, 1]
PCR_GROUPS = {
    "g": ["a", "a", "a", "b", "b", "c", "c", None],
    "h": ["x", "x", "x", "x", "y", "y", "y", "y"],
    "k": [None] * 8,
}


def test_balanced_accuracy_missing_truth_is_zero():
    # positives {0,2,5,7}: recall 3/4; negatives {1,3,4,6}: TNR 2/4
    assert F.balanced_accuracy(Y_TRUE, Y_PRED) == pytest.approx(0.625)
    assert F.balanced_accuracy([0, 0], [0, 1]) == pytest.approx(0.5)  # one class: its recall


def test_equalized_odds_hand_computed():
    eo = F.equalized_odds(Y_TRUE, Y_PRED, PCR_GROUPS["g"])
    # a: t 1,0,1 p 1,0,0 -> TPR .5 FPR 0; b: t 0,0 p 1,0 -> TPR 0 (undefined) FPR .5;
    # c: t 1,0 p 1,1 -> TPR 1 FPR 1
    assert eo["tpr"] == {"a": 0.5, "b": 0.0, "c": 1.0}
    assert eo["fpr"] == {"a": 0.0, "b": 0.5, "c": 1.0}
    assert eo["eod"] == pytest.approx(2.0)


def test_pcr_scores_hand_computed():
    out = F.pcr_scores(Y_TRUE, Y_PRED, PCR_GROUPS, score=[0.9, 0.1, 0.4, 0.6, 0.2, 0.8, 0.7, 0.9])
    # h: x t 1,0,1,0 p 1,0,0,1 -> .5/.5; y t 0,1,0,1 p 0,1,1,1 -> 1/.5 -> EOD .5; k: no group -> 0
    assert out["eod_per_variable"] == {"g": pytest.approx(2.0), "h": pytest.approx(0.5), "k": 0.0}
    assert out["disparity"] == pytest.approx(2.5 / 3)
    assert out["ranking"] == pytest.approx(0.5 * 0.625 + 0.5 * (1 - 2.5 / 3))
    assert out["parity_per_variable"]["h"] == pytest.approx(0.25)
    clipped = F.pcr_scores(Y_TRUE, Y_PRED, {"g": PCR_GROUPS["g"]})
    assert clipped["disparity"] == 1.0 and clipped["ranking"] == pytest.approx(0.3125)
    assert math.isnan(clipped["auc"])


def test_official_single_label_quirk():
    t, p = np.array([1, 1]), np.array([1, 1])
    assert F.tpr_fpr(t, p) == (0.0, 0.0)  # official: 1x1 confusion matrix -> fallback 0, 0
    assert F.tpr_fpr(t, p, official_single_label=False) == (1.0, 0.0)
    assert F.tpr_fpr(np.array([0, 0]), np.array([0, 0])) == (0.0, 0.0)


def test_empty_age_bins_count_in_task2():
    # official groupby on the pd.cut categorical also visits empty age bins (TPR = FPR = 0)
    t, p = [1, 0, 1, 0], [1, 0, 1, 1]
    groups = {"age": ["41-50", "41-50", "51-60", "51-60"]}
    # observed: 41-50 TPR 1 FPR 0; 51-60 TPR 1 FPR 1 -> EOD 1; with empty bins TPR range is 1 too
    assert F.pcr_scores(t, p, groups, categories={})["eod_per_variable"]["age"] == pytest.approx(1.0)
    official = F.pcr_scores(t, p, groups)
    assert official["eod_per_variable"]["age"] == pytest.approx(2.0)
    assert official["tpr_per_group"]["age"]["71+"] == 0.0
    assert official["disparity"] == 1.0


def test_auc_rank_formula():
    assert F.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert F.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert math.isnan(F.roc_auc([1, 1], [0.2, 0.3]))


def test_against_sklearn_on_random_labels():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    t = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 2)  # rounding creates ties
    p = (s > 0.4).astype(int)
    assert F.roc_auc(t, s) == pytest.approx(sk.roc_auc_score(t, s), abs=1e-12)
    assert F.balanced_accuracy(t, p) == pytest.approx(sk.balanced_accuracy_score(t, p), abs=1e-12)


def test_calibration_hand_computed():
    c = F.calibration([0, 1, 1, 0], [0.05, 0.95, 0.65, 0.6], n_bins=10)
    # bins 0: .05 vs 0; 9: .95 vs 1; 6: {.65, .6} -> .625 vs .5
    assert c["ece"] == pytest.approx(0.25 * 0.05 + 0.25 * 0.05 + 0.5 * 0.125)
    assert c["counts"].tolist() == [1, 0, 0, 0, 0, 0, 2, 0, 0, 1]
    assert c["mean_predicted"][6] == pytest.approx(0.625) and c["observed"][6] == 0.5
    assert np.isnan(c["observed"][3])
    assert c["centers"][0] == pytest.approx(0.05)
    assert F.calibration([1], [1.0], n_bins=4)["counts"].tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="probabilities"):
        F.calibration([1], [1.5])


def test_pcr_label_validation():
    with pytest.raises(ValueError, match="y_pred"):
        F.balanced_accuracy([0, 1], [0, 2])


# ----------------------------------------------------------------------------- tables

def test_group_table():
    recs = [{"center": "DUKE", "dice": 0.8, "hd95": 2.0, "age": 45},
            {"center": "DUKE", "dice": 0.6, "hd95": math.inf, "age": 72},
            {"center": "NACT", "dice": 0.5, "hd95": None, "age": 39},
            {"center": None, "dice": 0.1, "hd95": 1.0, "age": None}]
    rows = F.group_table(recs, "center", metrics=["dice", "hd95"])
    assert [r["group"] for r in rows] == ["DUKE", "NACT"]
    assert rows[0]["count"] == 2 and rows[0]["dice"] == pytest.approx(0.7)
    assert math.isinf(rows[0]["hd95"]) and math.isnan(rows[1]["hd95"])
    by_age = F.group_table(recs, "age", group_of=F.age_group)
    assert [(r["group"], r["count"]) for r in by_age] == [("0-40", 1), ("41-50", 1), ("71+", 1)]
    assert set(by_age[0]) == {"group", "count", "dice", "hd95"}  # numeric keys of first record
