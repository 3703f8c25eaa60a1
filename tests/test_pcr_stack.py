"""The stacked pCR classifier (core/pcr_stack.py): image and clinical parts on their own columns,
combined on inner cross-validated log-odds; its place in the cross-validation and model file."""
import json
import zipfile

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from core import pcr
from core.fairness import roc_auc
from core.pcr_stack import StackedClassifier, StackedPredictor
from nets import pcr_file
from nets.snn import SNNClassifier


def _lr(seed=0):
    return LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)


def _data(n, image_effect, clinical_effect, seed=0, n_img=5, n_clin=3):
    """Image columns (the first carries ``image_effect``), clinical columns (the first a 0/1
    receptor-like indicator carrying ``clinical_effect``), the rest noise."""
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n, n_img))
    clin = rng.normal(size=(n, n_clin))
    clin[:, 0] = rng.random(n) < 0.4
    logit = image_effect * img[:, 0] + clinical_effect * (clin[:, 0] - 0.4) - 0.8
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return np.concatenate([img, clin], axis=1), y


def _fit(X, y, n_clin=3, factory=_lr):
    return StackedClassifier(image_factory=factory, n_clinical=n_clin, seed=0).fit(X, y)


def test_stack_beats_each_part_when_both_carry_signal():
    X, y = _data(1200, 1.2, 2.5, seed=1)
    Xt, yt = _data(4000, 1.2, 2.5, seed=2)
    stack = _fit(X, y)
    auc_stack = roc_auc(yt, stack.decision_function(Xt))
    auc_img = roc_auc(yt, _lr().fit(X[:, :5], y).decision_function(Xt[:, :5]))
    auc_clin = roc_auc(yt, _lr().fit(X[:, 5:], y).decision_function(Xt[:, 5:]))
    assert auc_stack > max(auc_img, auc_clin) + 0.03, (auc_stack, auc_img, auc_clin)
    w_img, w_clin = stack.weights
    assert w_img > 0.3 and w_clin > 0.3


def test_uninformative_image_gets_little_weight():
    X, y = _data(1200, 0.0, 2.5, seed=3)
    w_img, w_clin = _fit(X, y).weights
    assert w_clin > 0.5 and abs(w_img) < 0.3 * w_clin, (w_img, w_clin)


def test_parts_see_only_their_columns_and_inner_fits_only_training_rows():
    X, y = _data(90, 1.0, 1.0, seed=4)
    seen = []

    def factory(seed):
        class Spy(LogisticRegression):
            def fit(self, A, b):
                seen.append(A.shape)
                return super().fit(A, b)
        return Spy(class_weight="balanced", max_iter=2000)

    stack = StackedClassifier(image_factory=factory, n_clinical=3, inner_cv=3).fit(X, y)
    assert [s[1] for s in seen] == [5] * 4                  # image columns only
    assert sorted(s[0] for s in seen[:3]) == [60, 60, 60]   # three inner fits on 2/3 of the rows
    assert seen[3][0] == 90                                  # the final part on every row
    assert stack.clinical_.n_features_in_ == 3
    assert stack.inner_logits_.shape == (90, 2)
    np.testing.assert_allclose(stack.decision_function(X),
                               stack.meta_.decision_function(stack.parts(X)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_clinical", [0, 8])
def test_needs_clinical_and_image_columns(n_clinical):
    X, y = _data(60, 1.0, 1.0)
    with pytest.raises(ValueError, match="n_clinical"):
        StackedClassifier(image_factory=_lr, n_clinical=n_clinical).fit(X, y)


def test_one_class_is_refused():
    X, _ = _data(30, 1.0, 1.0)
    with pytest.raises(ValueError, match="each class"):
        _fit(X, np.r_[np.zeros(29, int), 1])


def _records(n, y, seed=0):
    """Receptor status that carries the outcome, plus noise variables."""
    rng = np.random.default_rng(seed)
    return [{"age": float(rng.integers(30, 70)), "menopause": ["pre", "post"][i % 2],
             "hr": int(rng.random() < (0.2 if y[i] else 0.7)), "her2": int(rng.random() < (0.5 if y[i] else 0.15)),
             "density": "abcd"[i % 4]} for i in range(n)]


@pytest.fixture(scope="module")
def stacked_cv():
    X, y, names = pcr_table_like(90)
    recs = _records(90, y)
    fold_of = np.arange(90) % 3
    classifiers = {"stack": lambda s: StackedClassifier(
        image_factory=lambda t: SNNClassifier(hidden=(8,), epochs=30, n_models=2, seed=t), seed=s)}
    cfg = pcr.PipelineConfig(n_select=3, max_candidates=6, rows_per_feature=1)
    cv = pcr.cross_validate(X, y, names, fold_of, range(3), classifiers, cfg, recs,
                            ids=[f"P{i:03d}" for i in range(90)])
    return X, y, names, recs, fold_of, cv


def pcr_table_like(n, f=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f))
    y = (X[:, 0] + rng.normal(size=n) > 0.5).astype(int)
    return X, y, [f"original_firstorder_f{j}" for j in range(f)]


def test_cross_validation_tells_the_stack_how_many_clinical_columns(stacked_cv):
    _, _, _, _, _, cv = stacked_cv
    for fm in cv.models:
        est = fm.classifiers["stack"]
        assert est.n_clinical == len(fm.pipeline.forced_names) == len(fm.clinical.names) > 0
        assert est.image_.n_features_in_ == len(fm.pipeline.selected_names)
    assert np.isfinite(cv.oof["stack"]).all()


def test_stack_round_trips_through_the_model_file(stacked_cv, tmp_path):
    X, y, names, recs, fold_of, cv = stacked_cv
    r = pcr.evaluate(cv.oof["stack"], y, fold_of, range(3), shift=cv.shift)
    model = pcr.PCRModel(feature_names=names, folds=cv.models, classifier="stack", temperature=r["temperature"],
                         threshold=r["threshold"], clinical=True, settings={"masks": "expert"},
                         calibration=pcr.CalibrationMap.from_dict(r["calibration"]))
    path = pcr_file.save_pcr_model(tmp_path / "pcr_model.pt", model, {"seed": 0})
    loaded, _ = pcr_file.load_pcr_model(path)
    assert all(isinstance(fm.classifiers["stack"], StackedPredictor) for fm in loaded.folds)
    s0, l0 = model.predict(X, names, recs)
    s1, l1 = loaded.predict(X, names, recs)
    np.testing.assert_allclose(s1, s0, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(l1, l0)
    assert np.ptp(s0) > 1e-3

    # a file whose stack names an unknown image codec, or carries a stray array, is refused
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members[pcr_file.MANIFEST])
    manifest["model"]["folds"][0]["classifier"]["state"]["image"]["kind"] = "stack"
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, json.dumps(manifest).encode() if n == pcr_file.MANIFEST else data)
    with pytest.raises(ValueError, match="image.kind"):
        pcr_file.load_pcr_model(bad)
