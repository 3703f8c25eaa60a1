"""Self-normalising network (SNN) for tabular pCR features, wrapped as a scikit-learn classifier.

Klambauer et al., "Self-Normalizing Neural Networks", NeurIPS 2017: with SELU activations,
LeCun-normal weights (N(0, 1/fan_in)) and zero biases, activations of a standardised input keep
zero mean and unit variance through depth; AlphaDropout keeps those moments under dropout. The
MAMA-MIA seed B pCR model is such a network trained with binary cross-entropy (seed B, MAMA-MIA 2025).

    clf = SNNClassifier(hidden=(64, 32), dropout=0.05, pos_weight="balanced", seed=0)
    clf.fit(X, y)                     # X (N, F) standardised features, y (N,) in {0, 1}
    logits = clf.decision_function(X) # (N,) log-odds of pCR
    proba = clf.predict_proba(X)      # (N, 2), columns = classes_ = [0, 1]

Training is full-batch Adam for a fixed number of epochs (the pCR tables hold tens to a few
thousand rows, so one batch is the whole table); all randomness (initialisation, dropout masks)
comes from ``seed`` and leaves torch's global generator untouched.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn


def lecun_normal_(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """In place: N(0, 1/fan_in) for a ``(out, in)`` Linear weight (Klambauer et al. 2017, s.3)."""
    fan_in = weight.shape[1]
    with torch.no_grad():
        return weight.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)


class SNN(nn.Module):
    """``in_features -> [Linear -> SELU -> AlphaDropout] * len(hidden) -> Linear -> 1`` logit.

    Input ``(B, F)``, output ``(B,)`` logits. ``hidden_states(x)`` returns every block's
    activation (after SELU, before dropout) for inspection.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (64, 32), dropout: float = 0.05,
                 generator: torch.Generator | None = None):
        super().__init__()
        if in_features < 1:
            raise ValueError(f"SNN needs at least one input feature, got {in_features}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        sizes = [in_features, *hidden]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.SELU(), nn.AlphaDropout(dropout))
            for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], 1)
        for lin in [b[0] for b in self.blocks] + [self.head]:
            lecun_normal_(lin.weight, generator)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x).squeeze(-1)

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for lin, act, drop in self.blocks:
            x = act(lin(x))
            out.append(x)
            x = drop(x)
        return out


@contextmanager
def _one_thread():
    """Run torch on one thread: for matrices of tens of rows the thread hand-offs cost more than
    the arithmetic (fitting measured 7x slower with 2 threads on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SNNClassifier(ClassifierMixin, BaseEstimator):
    """A small scikit-learn compatible binary classifier around :class:`SNN` (clone-able, usable
    as a ``SequentialFeatureSelector`` estimator).

    ``pos_weight``: weight of the positive class in the BCE loss: a number, ``"balanced"``
    (n_negative / n_positive of the training labels) or None (1). ``weight_decay`` is Adam's L2
    term; training is full-batch Adam at learning rate ``lr`` for ``epochs`` steps.
    ``n_models`` networks with seeds ``seed, seed + 1, ...`` are trained and their logits
    averaged: on tables of ~100 rows one network's prediction depends visibly on its
    initialisation (cross-validated balanced accuracy on a 124-case phantom 0.68 with one,
    0.72 with five networks).

    ``early_stopping`` (off by default): a stratified ``validation_fraction`` of the rows is held
    out, the network is trained on the rest and the step count with the lowest held-out BCE
    (``best_epochs_``) is used to retrain on all rows. With ~100 rows the 20 % hold-out was too
    small to choose the length reliably (AUC 0.62 against 0.72 for a fixed 100 steps on the
    phantom), so it is meant for larger tables. Skipped when a class has fewer than 4 rows.

    Defaults (300 steps, weight decay 1e-2, dropout 0.1, hidden 64-32) were compared on a
    124-case phantom; differences between reasonable settings were within the noise there.
    """

    def __init__(self, hidden: Sequence[int] = (64, 32), dropout: float = 0.1, epochs: int = 300,
                 lr: float = 1e-3, weight_decay: float = 1e-2, pos_weight: float | str | None = "balanced",
                 n_models: int = 5, early_stopping: bool = False, validation_fraction: float = 0.2,
                 seed: int = 0):
        self.hidden = hidden
        self.dropout = dropout
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.pos_weight = pos_weight
        self.n_models = n_models
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.seed = seed

    def _pos_weight(self, y: np.ndarray) -> float:
        if self.pos_weight is None:
            return 1.0
        if self.pos_weight == "balanced":
            n_pos = float(y.sum())
            return (y.size - n_pos) / n_pos
        if isinstance(self.pos_weight, str):
            raise ValueError(f"pos_weight must be a number, 'balanced' or None, got {self.pos_weight!r}")
        return float(self.pos_weight)

    def _train(self, X: np.ndarray, y: np.ndarray, epochs: int, seed: int, val=None) -> tuple[SNN, list[float]]:
        """Train a fresh network for ``epochs`` steps; with ``val`` = (X, y) also return the
        held-out BCE after every step."""
        xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(self._pos_weight(y)))
        curve = []
        # nn.Linear's default initialisation and AlphaDropout draw from the global generator:
        # fork it so fitting is reproducible from ``seed`` and leaves the caller's stream alone
        with torch.random.fork_rng(devices=[]), _one_thread():
            torch.manual_seed(int(seed))
            model = SNN(X.shape[1], tuple(self.hidden), float(self.dropout),
                        generator=torch.Generator().manual_seed(int(seed)))
            opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            for _ in range(int(epochs)):
                model.train()
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xt), yt)
                loss.backward()
                opt.step()
                if val is not None:
                    model.eval()
                    with torch.no_grad():
                        curve.append(float(loss_fn(model(val[0]), val[1])))
        model.eval()
        return model, curve

    def fit(self, X, y) -> "SNNClassifier":
        X = np.asarray(X, np.float32)
        y = np.asarray(y).astype(np.float32).ravel()
        if X.ndim != 2 or X.shape[0] != y.size:
            raise ValueError(f"X must be (N, F) with N = len(y); got {X.shape} and {y.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("SNNClassifier: X holds NaN or infinite values (impute first)")
        if set(np.unique(y)) != {0.0, 1.0}:
            raise ValueError(f"SNNClassifier needs both classes 0 and 1 in y, got {sorted(set(y.tolist()))}")
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = X.shape[1]
        epochs = int(self.epochs)
        self.best_epochs_ = epochs
        if self.early_stopping and min(y.sum(), y.size - y.sum()) >= 4:
            rng = np.random.default_rng(int(self.seed))
            hold = np.zeros(y.size, bool)
            for c in (0.0, 1.0):  # stratified: the same fraction of each class held out
                idx = np.flatnonzero(y == c)
                hold[rng.choice(idx, max(1, int(round(self.validation_fraction * idx.size))), replace=False)] = True
            val = (torch.from_numpy(X[hold]), torch.from_numpy(y[hold]))
            _, curve = self._train(X[~hold], y[~hold], epochs, int(self.seed), val)
            self.validation_curve_ = curve
            self.best_epochs_ = 1 + int(np.argmin(curve))
        if self.n_models < 1:
            raise ValueError(f"n_models must be >= 1, got {self.n_models}")
        self.models_ = [self._train(X, y, self.best_epochs_, int(self.seed) + k)[0] for k in range(self.n_models)]
        return self

    def decision_function(self, X) -> np.ndarray:
        """``(N,)`` logits (log-odds of class 1)."""
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must be (N, {self.n_features_in_}); got {X.shape}")
        xt = torch.from_numpy(X)
        with torch.no_grad(), _one_thread():
            return torch.stack([m(xt) for m in self.models_]).mean(0).numpy().astype(np.float64)

    def predict_proba(self, X) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(int)


# ----------------------------------------------------------------------------- plain state

# parameter -> accepted JSON types (model files: nets/pcr_file.py); hidden is checked on its own
_PARAM_TYPES = {"dropout": (int, float), "epochs": (int,), "lr": (int, float), "weight_decay": (int, float),
                "pos_weight": (str, int, float, type(None)), "n_models": (int,), "early_stopping": (bool,),
                "validation_fraction": (int, float), "seed": (int,)}


def classifier_state(clf: SNNClassifier) -> tuple[dict, dict[str, np.ndarray]]:
    """A fitted :class:`SNNClassifier` as plain state: its parameters and input width (JSON
    values) and every network's weights as float32 arrays named ``<model>.<state_dict key>``."""
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in clf.get_params().items()}
    params["hidden"] = [int(h) for h in params["hidden"]]
    meta = {"params": params, "n_features": int(clf.n_features_in_), "n_models": len(clf.models_),
            "best_epochs": int(clf.best_epochs_)}
    arrays = {f"{m}.{k}": v.detach().cpu().numpy().astype(np.float32)
              for m, net in enumerate(clf.models_) for k, v in net.state_dict().items()}
    return meta, arrays


def _shapes(n_features: int, hidden: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """``SNN(n_features, hidden).state_dict()`` key -> shape, without building the network."""
    sizes = [n_features, *hidden]
    out = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        out[f"blocks.{i}.0.weight"], out[f"blocks.{i}.0.bias"] = (b, a), (b,)
    out["head.weight"], out["head.bias"] = (1, sizes[-1]), (1,)
    return out


def classifier_from_state(meta, arrays) -> SNNClassifier:
    """Rebuild :func:`classifier_state`'s classifier (networks in eval mode, same logits); raises
    ValueError naming the field or array when the state is ill-formed."""
    if not isinstance(meta, dict) or set(meta) != {"params", "n_features", "n_models", "best_epochs"}:
        raise ValueError(f"SNN state must hold params, n_features, n_models and best_epochs, got "
                         f"{sorted(meta) if isinstance(meta, dict) else type(meta).__name__}")
    params, n_features, n_models = meta["params"], meta["n_features"], meta["n_models"]
    known = SNNClassifier().get_params()
    if not isinstance(params, dict) or set(params) - set(known):
        raise ValueError(f"SNN params must be a mapping of {sorted(known)}, got {params!r:.100}")
    for k, v in params.items():
        allowed = _PARAM_TYPES.get(k, ())
        if k != "hidden" and (not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed)):
            raise ValueError(f"SNN params.{k} has the wrong type: {v!r:.60}")
    hidden = params.get("hidden", list(known["hidden"]))

    def count(v, low=1):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    if not (count(n_features) and count(n_models) and count(meta["best_epochs"], 0) and isinstance(hidden, list)
            and all(count(h) for h in hidden)):
        raise ValueError(f"SNN n_features, n_models and hidden sizes must be positive integers, best_epochs "
                         f"a count: {n_features!r:.20}, {n_models!r:.20}, {meta['best_epochs']!r:.20}, {hidden!r:.60}")
    dropout = float(params.get("dropout", known["dropout"]))
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"SNN params.dropout must lie in [0, 1), got {dropout}")
    shapes = {f"{m}.{k}": s for m in range(n_models) for k, s in _shapes(n_features, hidden).items()}
    missing, unknown = sorted(set(shapes) - set(arrays)), sorted(set(arrays) - set(shapes))
    if missing or unknown:
        raise ValueError(f"SNN weights: missing arrays {missing[:5]}, unknown arrays {unknown[:5]}")
    for name, shape in shapes.items():
        a = arrays[name]
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != shape:
            raise ValueError(f"SNN array {name!r} must be float32 of shape {shape}, got "
                             f"{getattr(a, 'dtype', type(a).__name__)} of shape {getattr(a, 'shape', None)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"SNN array {name!r} holds NaN or infinite values")
    clf = SNNClassifier(**{**params, "hidden": tuple(hidden)})
    clf.classes_ = np.array([0, 1])
    clf.n_features_in_ = n_features
    clf.best_epochs_ = meta["best_epochs"]
    models = []
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's stream alone
        for m in range(n_models):
            net = SNN(n_features, tuple(hidden), dropout)
            net.load_state_dict({k: torch.from_numpy(arrays[f"{m}.{k}"].copy()) for k in net.state_dict()})
            models.append(net.eval())
    clf.models_ = models
    return clf
