"""Tests for nets/snn.py: self-normalising initialisation statistics and the classifier wrapper."""
import math

import numpy as np
import pytest
import torch
from sklearn.base import clone

from nets.snn import SNN, SNNClassifier, lecun_normal_


def _moments(net, x, train=False):
    net.train(train)
    with torch.no_grad():
        return [(float(h.mean()), float(h.var())) for h in net.hidden_states(x)]


def test_lecun_normal_std():
    w = torch.empty(400, 625)
    lecun_normal_(w, torch.Generator().manual_seed(0))
    assert float(w.std()) == pytest.approx(1 / math.sqrt(625), rel=0.02)
    assert abs(float(w.mean())) < 1e-3


@pytest.mark.parametrize("train", [False, True])
def test_activations_stay_normalised_through_depth(train):
    g = torch.Generator().manual_seed(0)
    net = SNN(256, hidden=(256,) * 12, dropout=0.1 if train else 0.0, generator=g)
    x = torch.randn(2048, 256, generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # AlphaDropout masks
        moments = _moments(net, x, train)
    for depth, (mean, var) in enumerate(moments, 1):
        assert abs(mean) < 0.1, (depth, mean)
        assert abs(var - 1.0) < 0.15, (depth, var)


def test_badly_scaled_init_drifts():
    """The statistics test can fail: 1.3x LeCun weights inflate the variance with depth."""
    g = torch.Generator().manual_seed(0)
    net = SNN(256, hidden=(256,) * 12, dropout=0.0, generator=g)
    with torch.no_grad():
        for block in net.blocks:
            block[0].weight.mul_(1.3)
    var = _moments(net, torch.randn(2048, 256, generator=g))[-1][1]
    assert var > 1.3


def _toy(n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    y = (X[:, 0] - 0.5 * X[:, 1] + 0.3 * rng.normal(size=n) > 0.4).astype(int)
    return X, y


def test_classifier_learns_and_is_reproducible():
    X, y = _toy()
    before = torch.get_num_threads()
    state = torch.random.get_rng_state()
    a = SNNClassifier(epochs=100, n_models=1, seed=3).fit(X, y)
    assert torch.equal(torch.random.get_rng_state(), state)   # global generator untouched
    assert torch.get_num_threads() == before
    b = SNNClassifier(epochs=100, n_models=1, seed=3).fit(X, y)
    np.testing.assert_array_equal(a.decision_function(X), b.decision_function(X))
    assert np.mean(a.predict(X) == y) > 0.85
    p = a.predict_proba(X)
    assert p.shape == (len(y), 2) and np.allclose(p.sum(1), 1.0)
    c = SNNClassifier(epochs=100, n_models=1, seed=4).fit(X, y)
    assert not np.array_equal(a.decision_function(X), c.decision_function(X))
    # an ensemble of two averages the logits of seeds 3 and 4
    d = SNNClassifier(epochs=100, n_models=2, seed=3).fit(X, y)
    np.testing.assert_allclose(d.decision_function(X), (a.decision_function(X) + c.decision_function(X)) / 2,
                               rtol=1e-5, atol=1e-6)


def test_early_stopping_picks_a_length():
    X, y = _toy()
    clf = SNNClassifier(epochs=60, n_models=1, early_stopping=True).fit(X, y)
    assert 1 <= clf.best_epochs_ <= 60
    assert clf.best_epochs_ == 1 + int(np.argmin(clf.validation_curve_))


def test_positive_weight():
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0])
    assert SNNClassifier(pos_weight="balanced")._pos_weight(y) == pytest.approx(3.0)
    assert SNNClassifier(pos_weight=None)._pos_weight(y) == 1.0
    assert SNNClassifier(pos_weight=2.5)._pos_weight(y) == 2.5
    with pytest.raises(ValueError, match="pos_weight"):
        SNNClassifier(pos_weight="auto")._pos_weight(y)


def test_sklearn_protocol_and_input_errors():
    X, y = _toy(40)
    est = clone(SNNClassifier(hidden=(8,), epochs=5, n_models=1))
    assert est.get_params()["hidden"] == (8,)
    est.fit(X, y)
    with pytest.raises(ValueError, match="NaN"):
        SNNClassifier(epochs=1).fit(np.full((4, 2), np.nan), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="both classes"):
        SNNClassifier(epochs=1).fit(np.zeros((4, 2)), [0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        est.decision_function(np.zeros((3, 4)))
