"""Image model and clinical model stacked: each on its own columns, combined by a logistic
regression on their inner cross-validated log-odds (stacked generalisation, Wolpert, Neural
Networks 1992; the two-input logistic combiner is the usual choice for binary outcomes).

Why: forcing a dozen clinical columns (receptor status, subtype, age, density, menopause and their
missing indicators) into the same network as the selected radiomics asks ~30 inputs of ~240
training rows, and the network then used the strong, nearly binary receptor signal no better
than the receptor rule alone. Stacked, the clinical part is a small logistic regression (a
well-determined model of a handful of columns), the image part keeps its network, and the
combiner learns from out-of-fold predictions how much each part adds: when the image adds
nothing, its weight goes to ~0 and the stack is the clinical model.

Layout of the input ``X``: the feature pipeline's selected image columns, then the
``n_clinical`` clinical columns (:class:`core.pcr.FeaturePipeline` appends the clinical encoder's
columns last; :func:`core.pcr.fit_fold` sets ``n_clinical``). Every part is trained with balanced
class weights, as the other classifiers of :mod:`core.pcr`, so the prior correction applies
unchanged.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from core.pcr import logits_of as _logits


def clinical_logreg(seed: int = 0) -> LogisticRegression:
    """The clinical part: class-balanced L2 logistic regression (C = 1: a handful of columns)."""
    return LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)


class StackedPredictor:
    """A fitted stack as its three parts: ``image`` (any estimator with ``decision_function`` or
    ``predict_proba`` on the image columns), ``clinical`` and ``meta`` (linear, two inputs: image
    log-odds, clinical log-odds)."""

    def __init__(self, image, clinical, meta, n_clinical: int):
        self.image_, self.clinical_, self.meta_ = image, clinical, meta
        self.n_clinical = int(n_clinical)
        self.classes_ = np.array([0, 1])

    @property
    def n_features_in_(self) -> int:
        return int(self.image_.n_features_in_) + self.n_clinical

    def parts(self, X) -> np.ndarray:
        """``(N, 2)``: the image and the clinical log-odds of every row."""
        X = np.asarray(X, np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must be (N, {self.n_features_in_}); got {X.shape}")
        k = X.shape[1] - self.n_clinical
        return np.stack([_logits(self.image_, X[:, :k]), _logits(self.clinical_, X[:, k:])], axis=1)

    def decision_function(self, X) -> np.ndarray:
        return np.asarray(self.meta_.decision_function(self.parts(X)), np.float64).ravel()

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(int)

    @property
    def weights(self) -> tuple[float, float]:
        """The combiner's weights of the image and the clinical log-odds."""
        c = np.asarray(self.meta_.coef_, np.float64).ravel()
        return float(c[0]), float(c[1])


class StackedClassifier(StackedPredictor, ClassifierMixin, BaseEstimator):
    """Fit: inner ``inner_cv``-fold stratified CV on the training rows gives out-of-fold log-odds
    of the image model (``image_factory(seed)`` on the image columns) and of the clinical logistic
    regression (on the last ``n_clinical`` columns); a class-balanced logistic regression on
    those two columns is the combiner; both parts are then refitted on every training row."""

    def __init__(self, image_factory: Callable[[int], object] | None = None, n_clinical: int = 0,
                 inner_cv: int = 3, meta_C: float = 1.0, seed: int = 0):
        self.image_factory = image_factory
        self.n_clinical = n_clinical
        self.inner_cv = inner_cv
        self.meta_C = meta_C
        self.seed = seed

    def fit(self, X, y) -> "StackedClassifier":
        X = np.asarray(X, np.float64)
        y = np.asarray(y).astype(int).ravel()
        nc = int(self.n_clinical)
        if self.image_factory is None:
            raise ValueError("StackedClassifier needs an image_factory")
        if X.ndim != 2 or X.shape[0] != y.size:
            raise ValueError(f"X must be (N, F) with N = len(y); got {X.shape} and {y.shape}")
        if not 1 <= nc < X.shape[1]:
            raise ValueError(f"n_clinical must be >= 1 and leave at least one image column, got {nc} "
                             f"of {X.shape[1]} columns (stacking needs clinical inputs)")
        n_min = int(np.bincount(y, minlength=2).min())
        if n_min < 2:
            raise ValueError(f"StackedClassifier needs at least 2 rows of each class, got {np.bincount(y).tolist()}")
        k = X.shape[1] - nc
        img, clin = X[:, :k], X[:, k:]
        oof = np.zeros((y.size, 2))
        cv = StratifiedKFold(n_splits=min(int(self.inner_cv), n_min), shuffle=True, random_state=int(self.seed))
        for tr, va in cv.split(X, y):
            oof[va, 0] = _logits(self.image_factory(int(self.seed)).fit(img[tr], y[tr]), img[va])
            oof[va, 1] = _logits(clinical_logreg(int(self.seed)).fit(clin[tr], y[tr]), clin[va])
        self.inner_logits_ = oof
        self.meta_ = LogisticRegression(C=float(self.meta_C), class_weight="balanced", max_iter=2000).fit(oof, y)
        self.image_ = self.image_factory(int(self.seed)).fit(img, y)
        self.clinical_ = clinical_logreg(int(self.seed)).fit(clin, y)
        self.classes_ = np.array([0, 1])
        return self


def stack_codec(codecs: Mapping[str, object]):
    """A ``ClassifierCodec`` for stacks whose image part any of ``codecs`` writes (looked up when
    used, so the registry may include this codec itself). State: ``{"n_clinical", "image": {kind,
    state}}`` with arrays ``image.*``, ``clinical.*``, ``meta.*``."""
    from core import pcr_state as ps

    def handles(est) -> bool:
        return isinstance(est, StackedPredictor) and hasattr(est, "meta_")

    def image_kind(est) -> str:
        kind = next((k for k, c in codecs.items() if k != "stack" and c.handles(est)), None)
        if kind is None:
            raise ValueError(f"the stack's image model ({type(est).__name__}) has no codec: {sorted(codecs)}")
        return kind

    def to_state(est):
        kind = image_kind(est.image_)
        imeta, iarr = codecs[kind].to_state(est.image_)
        arrays = {f"image.{n}": a for n, a in iarr.items()}
        for part, lin in (("clinical", est.clinical_), ("meta", est.meta_)):
            arrays.update({f"{part}.{n}": a for n, a in ps._linear_to_state(lin)[1].items()})
        return {"n_clinical": int(est.n_clinical), "image": {"kind": kind, "state": imeta}}, arrays

    def from_state(meta, arrays):
        where = "stacked classifier"
        ps._keys(meta, {"n_clinical", "image"}, where)
        nc = ps._get(meta, "n_clinical", "int", where)
        im = ps._get(meta, "image", "dict", where)
        ps._keys(im, {"kind", "state"}, f"{where}.image")
        kind = ps._get(im, "kind", "str", f"{where}.image")
        if kind not in codecs or kind == "stack":
            raise ValueError(f"{where}.image.kind {kind!r} is not one of {sorted(set(codecs) - {'stack'})}")

        def part(p):
            return {n[len(p) + 1:]: a for n, a in arrays.items() if n.startswith(p + ".")}

        unknown = sorted(n for n in arrays if n.split(".", 1)[0] not in ("image", "clinical", "meta"))
        if unknown:
            raise ValueError(f"{where}: unexpected arrays {unknown}")
        image = codecs[kind].from_state(im["state"], part("image"))
        clinical = ps._linear_from_state({"n_features": nc}, part("clinical"))
        meta_lin = ps._linear_from_state({"n_features": 2}, part("meta"))
        if nc < 1:
            raise ValueError(f"{where}.n_clinical must be >= 1, got {nc}")
        return StackedPredictor(image, clinical, meta_lin, nc)

    return ps.ClassifierCodec(handles, to_state, from_state)
