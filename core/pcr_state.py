"""A deployed pCR model as JSON-able values plus named numpy arrays, and back (model files
without pickle, see nets/pcr_file.py). Only what ``PCRModel.predict`` reads is kept: per fold
the feature pipeline, the clinical encoder and the deployed classifier. Classifiers are written
by a ``ClassifierCodec`` chosen by the estimator's type; core knows the linear ones, nets adds
the SNN.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

import numpy as np
from sklearn.linear_model import LogisticRegression

from core.calibration import CalibrationMap
from core.pcr import BalancedRidge, ClinicalEncoder, FeaturePipeline, FoldModel, PCRModel, PipelineConfig

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ClassifierCodec:
    """One kind of fitted classifier as plain state and back.

    ``handles(est)``: whether this codec writes ``est``; ``to_state(est)`` -> ``(meta, arrays)``
    (meta JSON-able); ``from_state(meta, arrays)`` -> an estimator with ``decision_function`` giving
    the same log-odds and ``n_features_in_``, or ValueError when the state is ill-formed."""

    handles: Callable[[object], bool]
    to_state: Callable[[object], tuple[dict, Arrays]]
    from_state: Callable[[Mapping, Mapping[str, np.ndarray]], object]


class LinearClassifier:
    """A fitted binary linear classifier as numbers: log-odds ``X @ coef.T + intercept`` with
    ``coef`` ``(1, F)``, ``intercept`` ``(1,)`` (how scikit-learn computes LogisticRegression's)."""

    def __init__(self, coef, intercept):
        self.coef_ = np.asarray(coef, np.float64).reshape(1, -1)
        self.intercept_ = np.asarray(intercept, np.float64).reshape(1)
        self.n_features_in_ = self.coef_.shape[1]
        self.classes_ = np.array([0, 1])

    def decision_function(self, X) -> np.ndarray:
        return (np.asarray(X, np.float64) @ self.coef_.T + self.intercept_).ravel()

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(int)


def _is_linear(est) -> bool:
    if isinstance(est, (LinearClassifier, BalancedRidge)):
        return True
    return (isinstance(est, LogisticRegression) and np.shape(est.coef_)[0] == 1
            and list(np.asarray(est.classes_).tolist()) == [0, 1])


def _linear_to_state(est) -> tuple[dict, Arrays]:
    coef = np.asarray(est.coef_, np.float64).reshape(1, -1)
    intercept = np.asarray(est.intercept_, np.float64).reshape(1)
    return {"n_features": int(coef.shape[1])}, {"coef": coef, "intercept": intercept}


def _linear_from_state(meta, arrays) -> LinearClassifier:
    _keys(meta, {"n_features"}, "linear classifier")
    f = _get(meta, "n_features", "int", "linear classifier")
    _array_names(arrays, {"coef", "intercept"}, "linear classifier")
    coef = _array(arrays, "coef", (1, f), np.float64, "linear classifier")
    return LinearClassifier(coef, _array(arrays, "intercept", (1,), np.float64, "linear classifier"))


class ForestClassifier:
    """A fitted binary decision-tree ensemble as numbers: the nodes of all trees concatenated
    (``left``/``right`` child indices into the same arrays, -1 at leaves; ``feature``,
    ``threshold``: go left when ``x[feature] <= threshold``; ``p1``: the class-1 fraction of a
    leaf), ``roots`` the first node of every tree. ``predict_proba`` averages the leaves' class-1
    fractions over trees, as scikit-learn's random forest does."""

    def __init__(self, left, right, feature, threshold, p1, roots, n_features: int):
        self.left, self.right = np.asarray(left, np.int64), np.asarray(right, np.int64)
        self.feature, self.threshold = np.asarray(feature, np.int64), np.asarray(threshold, np.float64)
        self.p1, self.roots = np.asarray(p1, np.float64), np.asarray(roots, np.int64)
        self.n_features_in_ = int(n_features)
        self.classes_ = np.array([0, 1])

    def predict_proba(self, X) -> np.ndarray:
        # scikit-learn's trees compare float32 inputs with their (float64) thresholds
        X = np.asarray(X, np.float64).astype(np.float32).astype(np.float64)
        node = np.broadcast_to(self.roots, (X.shape[0], self.roots.size)).copy()
        rows = np.arange(X.shape[0])[:, None]
        for _ in range(self.left.size):          # bounded by the node count; ends at the depth
            inner = self.left[node] >= 0
            if not inner.any():
                break
            go_left = X[rows, np.where(inner, self.feature[node], 0)] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
        p = self.p1[node].mean(axis=1)
        return np.stack([1 - p, p], axis=1)

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] > 0.5).astype(int)


def _is_forest(est) -> bool:
    if isinstance(est, ForestClassifier):
        return True
    from sklearn.ensemble import RandomForestClassifier
    return isinstance(est, RandomForestClassifier) and list(np.asarray(est.classes_).tolist()) == [0, 1]


def _forest_to_state(est) -> tuple[dict, Arrays]:
    if isinstance(est, ForestClassifier):
        f = est
    else:
        parts, start, roots = [], 0, []
        for tree in est.estimators_:
            t = tree.tree_
            v = t.value[:, 0, :]
            inner = t.children_left >= 0
            parts.append((np.where(inner, t.children_left + start, -1), np.where(inner, t.children_right + start, -1),
                          np.where(inner, t.feature, -1), np.where(inner, t.threshold, 0.0), v[:, 1] / v.sum(1)))
            roots.append(start)
            start += t.node_count
        f = ForestClassifier(*(np.concatenate(a) for a in zip(*parts)), roots, est.n_features_in_)
    return ({"n_features": int(f.n_features_in_)},
            {"left": f.left, "right": f.right, "feature": f.feature, "threshold": f.threshold, "p1": f.p1,
             "roots": f.roots})


def _forest_from_state(meta, arrays) -> ForestClassifier:
    w = "forest classifier"
    _keys(meta, {"n_features"}, w)
    nf = _get(meta, "n_features", "int", w)
    _array_names(arrays, {"left", "right", "feature", "threshold", "p1", "roots"}, w)
    n = np.shape(arrays["left"])[0] if np.ndim(arrays["left"]) == 1 else -1
    if n < 1:
        raise ValueError(f"{w}: 'left' must be a non-empty vector")
    left, right, feature = (_array(arrays, k, (n,), np.int64, w) for k in ("left", "right", "feature"))
    threshold, p1 = (_array(arrays, k, (n,), np.float64, w) for k in ("threshold", "p1"))
    roots = arrays["roots"]
    if np.ndim(roots) != 1 or roots.size < 1:
        raise ValueError(f"{w}: 'roots' must be a non-empty vector")
    roots = _array(arrays, "roots", (roots.size,), np.int64, w)
    inner = left >= 0
    idx = np.arange(n)
    # children point forward inside the arrays (no cycles), features exist, probabilities in [0, 1]
    if (np.any((left < -1) | (left >= n) | (right >= n)) or np.any(inner != (right >= 0))
            or np.any(inner & ((left <= idx) | (right <= idx))) or np.any(inner & ((feature < 0) | (feature >= nf)))
            or np.any((p1 < 0) | (p1 > 1)) or np.any((roots < 0) | (roots >= n))):
        raise ValueError(f"{w}: node arrays are inconsistent (children, features, roots or leaf probabilities)")
    return ForestClassifier(left, right, feature, threshold, p1, roots, nf)


CLASSIFIER_CODECS: dict[str, ClassifierCodec] = {
    "linear": ClassifierCodec(_is_linear, _linear_to_state, _linear_from_state),
    "forest": ClassifierCodec(_is_forest, _forest_to_state, _forest_from_state),
}

_KINDS = {"str": "a string", "bool": "true or false", "int": "an integer", "float": "a finite number",
          "strs": "a list of strings", "dict": "a mapping", "list": "a list"}


def _check(v, kind: str, where: str):
    ok = {"str": isinstance(v, str), "bool": isinstance(v, bool), "dict": isinstance(v, dict),
          "int": isinstance(v, int) and not isinstance(v, bool), "list": isinstance(v, list),
          "float": isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          "strs": isinstance(v, list) and all(isinstance(s, str) for s in v)}[kind]
    if not ok:
        raise ValueError(f"{where} must be {_KINDS[kind]}, got {v!r:.60}")
    return float(v) if kind == "float" else v


def _get(d, key: str, kind: str, where: str):
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(d).__name__}")
    if key not in d:
        raise ValueError(f"{where}: missing {key!r}")
    return _check(d[key], kind, f"{where}.{key}")


def _keys(d, expected: set, where: str) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(d).__name__}")
    missing, unknown = sorted(expected - set(d)), sorted(set(d) - expected)
    if missing or unknown:
        raise ValueError(f"{where}: missing keys {missing}, unknown keys {unknown}")


def _array_names(arrays: Mapping, expected: set, where: str) -> None:
    missing, unknown = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
    if missing or unknown:
        raise ValueError(f"{where}: missing arrays {missing}, unknown arrays {unknown}")


def _array(arrays: Mapping, name: str, shape: tuple, dtype, where: str) -> np.ndarray:
    a = arrays[name]
    if not isinstance(a, np.ndarray) or a.dtype != np.dtype(dtype) or a.shape != tuple(shape):
        raise ValueError(f"{where}: array {name!r} must be {np.dtype(dtype)} of shape {tuple(shape)}, got "
                         f"{getattr(a, 'dtype', type(a).__name__)} of shape {getattr(a, 'shape', None)}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: array {name!r} holds NaN or infinite values")
    return a


def _pipeline_state(p: FeaturePipeline) -> tuple[dict, Arrays]:
    meta = {"config": p.cfg.to_dict(), "names_in": list(p.names_in), "selected_names": list(p.selected_names),
            "forced_names": list(p.forced_names), "forced": p.forced_mean is not None,
            "dropped": {k: list(v) for k, v in p.dropped.items()}}
    arrays = {"selected": np.asarray(p.selected, np.int64), "median": np.asarray(p.median, np.float64),
              "mean": np.asarray(p.mean, np.float64), "sd": np.asarray(p.sd, np.float64)}
    if p.forced_mean is not None:
        arrays["forced_mean"] = np.asarray(p.forced_mean, np.float64)
        arrays["forced_sd"] = np.asarray(p.forced_sd, np.float64)
    return meta, arrays


def _pipeline_from_state(meta, arrays, where: str) -> FeaturePipeline:
    _keys(meta, {"config", "names_in", "selected_names", "forced_names", "forced", "dropped"}, where)
    cd = _get(meta, "config", "dict", where)
    kinds = {int: "int", float: "float", str: "str", bool: "bool"}
    for f in fields(PipelineConfig):
        if f.name in cd:
            _check(cd[f.name], kinds[type(f.default)], f"{where}.config.{f.name}")
    p = FeaturePipeline(PipelineConfig.from_dict(cd))
    p.names_in = _get(meta, "names_in", "strs", where)
    p.selected_names = _get(meta, "selected_names", "strs", where)
    p.forced_names = _get(meta, "forced_names", "strs", where)
    forced = _get(meta, "forced", "bool", where)
    dropped = _get(meta, "dropped", "dict", where)
    p.dropped = {str(k): _check(v, "strs", f"{where}.dropped.{k}") for k, v in dropped.items()}
    extra = {"forced_mean", "forced_sd"} if forced else set()
    _array_names(arrays, {"selected", "median", "mean", "sd"} | extra, where)
    k = len(p.selected_names)
    p.selected = _array(arrays, "selected", (k,), np.int64, where)
    if np.any(p.selected < 0) or np.any(p.selected >= len(p.names_in)) or \
            [p.names_in[j] for j in p.selected] != p.selected_names:
        raise ValueError(f"{where}: selected indices do not match selected_names in names_in")
    p.median, p.mean, p.sd = (_array(arrays, n, (k,), np.float64, where) for n in ("median", "mean", "sd"))
    if forced:
        nf = len(p.forced_names)
        p.forced_mean = _array(arrays, "forced_mean", (nf,), np.float64, where)
        p.forced_sd = _array(arrays, "forced_sd", (nf,), np.float64, where)
    else:
        p.forced_mean = p.forced_sd = None
    if np.any(p.sd <= 0) or (forced and np.any(p.forced_sd <= 0)):
        raise ValueError(f"{where}: standard deviations must be positive")
    if k + (len(p.forced_names) if forced else 0) == 0:
        raise ValueError(f"{where}: no input column (neither selected nor clinical)")
    return p


def _encoder_state(enc: ClinicalEncoder) -> dict:
    return {"fills": {k: float(v) for k, v in enc.fills.items()}, "subtypes": list(enc.subtypes),
            "centers": list(getattr(enc, "centers", [])), "names": list(enc.names)}


def _encoder_from_state(meta, where: str) -> ClinicalEncoder:
    # "centers" is absent from files written before the center columns (format 3): none then
    _keys(meta, {"fills", "subtypes", "names"} | ({"centers"} if isinstance(meta, Mapping) and "centers" in meta
                                                  else set()), where)
    enc = ClinicalEncoder()
    fills = _get(meta, "fills", "dict", where)
    _keys(fills, set(ClinicalEncoder.NUMERIC), f"{where}.fills")
    enc.fills = {k: _check(fills[k], "float", f"{where}.fills.{k}") for k in ClinicalEncoder.NUMERIC}
    enc.subtypes = _get(meta, "subtypes", "strs", where)
    enc.centers = _get(meta, "centers", "strs", where) if "centers" in meta else []
    enc.names = _get(meta, "names", "strs", where)
    if enc.names != ClinicalEncoder.column_names(enc.subtypes, enc.centers):
        raise ValueError(f"{where}: names do not match the clinical columns, subtypes and centers")
    return enc


def _calibration_from_state(meta, where: str) -> CalibrationMap | None:
    if meta is None:
        return None
    _keys(meta, {"kind", "a", "b", "xs", "ys"}, where)
    try:
        return CalibrationMap(kind=_get(meta, "kind", "str", where), a=_get(meta, "a", "float", where),
                              b=_get(meta, "b", "float", where),
                              xs=tuple(_check(v, "float", f"{where}.xs") for v in _get(meta, "xs", "list", where)),
                              ys=tuple(_check(v, "float", f"{where}.ys") for v in _get(meta, "ys", "list", where)))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def model_to_state(model: PCRModel, codecs: Mapping[str, ClassifierCodec] = CLASSIFIER_CODECS) -> tuple[dict, Arrays]:
    """The deployed ``model`` as ``(meta, arrays)``: meta holds only JSON values, arrays are named
    numpy arrays (``fold<i>.pipeline.<name>``, ``fold<i>.classifier.<name>``). Only the deployed
    classifier (``model.classifier``) of each fold is kept, written by the first codec whose
    ``handles`` accepts it; ValueError when none does (the random-forest baseline)."""
    folds, arrays = [], {}
    for i, fm in enumerate(model.folds):
        if model.classifier not in fm.classifiers:
            raise ValueError(f"fold {fm.fold} has no classifier {model.classifier!r}: {sorted(fm.classifiers)}")
        est = fm.classifiers[model.classifier]
        kind = next((k for k, c in codecs.items() if c.handles(est)), None)
        if kind is None:
            raise ValueError(f"classifier {model.classifier!r} ({type(est).__name__}) cannot be written to a "
                             f"model file; codecs: {sorted(codecs)} (deploy 'snn' or 'logreg')")
        cmeta, carr = codecs[kind].to_state(est)
        pmeta, parr = _pipeline_state(fm.pipeline)
        arrays.update({f"fold{i}.pipeline.{n}": a for n, a in parr.items()})
        arrays.update({f"fold{i}.classifier.{n}": np.asarray(a) for n, a in carr.items()})
        folds.append({"fold": int(fm.fold), "prior_logit": float(fm.prior_logit),
                      "train_ids": [str(t) for t in fm.train_ids], "pipeline": pmeta,
                      "clinical": _encoder_state(fm.clinical) if fm.clinical is not None else None,
                      "classifier": {"kind": kind, "state": cmeta}})
    meta = {"feature_names": list(model.feature_names), "classifier": model.classifier,
            "temperature": float(model.temperature), "threshold": float(model.threshold),
            "clinical": bool(model.clinical), "settings": model.settings, "folds": folds,
            "calibration": model.calibration.to_dict() if model.calibration is not None else None}
    return meta, arrays


def model_from_state(meta, arrays: Mapping[str, np.ndarray],
                     codecs: Mapping[str, ClassifierCodec] = CLASSIFIER_CODECS) -> PCRModel:
    """Rebuild the deployed model from :func:`model_to_state`'s ``(meta, arrays)``; every field is
    checked (types, shapes, consistency between folds, pipeline and classifier): ValueError naming
    the field when one is wrong. Each fold holds only the deployed classifier."""
    w = "model"
    _keys(meta, {"feature_names", "classifier", "temperature", "threshold", "clinical", "settings", "folds",
                 "calibration"}, w)
    names = _get(meta, "feature_names", "strs", w)
    name = _get(meta, "classifier", "str", w)
    temperature = _get(meta, "temperature", "float", w)
    if temperature <= 0:
        raise ValueError(f"{w}.temperature must be positive, got {temperature}")
    threshold = _get(meta, "threshold", "float", w)
    clinical = _get(meta, "clinical", "bool", w)
    settings = _get(meta, "settings", "dict", w)
    folds_meta = _get(meta, "folds", "list", w)
    if not folds_meta:
        raise ValueError(f"{w}.folds is empty")
    prefixes = [f"fold{i}." for i in range(len(folds_meta))]
    stray = sorted(n for n in arrays if not any(n.startswith(p + s) for p in prefixes
                                                for s in ("pipeline.", "classifier.")))
    if stray:
        raise ValueError(f"{w}: unknown arrays {stray}")
    folds = []
    for i, fmeta in enumerate(folds_meta):
        wf = f"{w}.folds[{i}]"
        _keys(fmeta, {"fold", "prior_logit", "train_ids", "pipeline", "clinical", "classifier"}, wf)

        def part(kind, pre=f"fold{i}."):
            return {n[len(pre + kind) + 1:]: a for n, a in arrays.items() if n.startswith(f"{pre}{kind}.")}

        pipe = _pipeline_from_state(fmeta["pipeline"], part("pipeline"), f"{wf}.pipeline")
        if pipe.names_in != names:
            raise ValueError(f"{wf}.pipeline.names_in differs from the model's feature_names")
        enc = None if fmeta["clinical"] is None else _encoder_from_state(fmeta["clinical"], f"{wf}.clinical")
        if (enc is not None) != (pipe.forced_mean is not None) or (enc is not None and enc.names != pipe.forced_names):
            raise ValueError(f"{wf}: clinical encoder and the pipeline's clinical columns disagree")
        if enc is not None and not clinical:
            raise ValueError(f"{wf}: a clinical encoder in a model without clinical variables")
        cm = fmeta["classifier"]
        _keys(cm, {"kind", "state"}, f"{wf}.classifier")
        kind = _get(cm, "kind", "str", f"{wf}.classifier")
        if kind not in codecs:
            raise ValueError(f"{wf}.classifier.kind {kind!r} is not one of {sorted(codecs)}")
        try:
            est = codecs[kind].from_state(cm["state"], part("classifier"))
        except ValueError as exc:
            raise ValueError(f"{wf}.classifier ({kind}): {exc}") from exc
        width = pipe.selected.size + (len(pipe.forced_names) if enc is not None else 0)
        if getattr(est, "n_features_in_", None) != width:
            raise ValueError(f"{wf}.classifier takes {getattr(est, 'n_features_in_', None)} inputs, the "
                             f"pipeline gives {width}")
        folds.append(FoldModel(fold=_get(fmeta, "fold", "int", wf), pipeline=pipe, clinical=enc,
                               classifiers={name: est}, prior_logit=_get(fmeta, "prior_logit", "float", wf),
                               train_ids=_get(fmeta, "train_ids", "strs", wf)))
    return PCRModel(feature_names=names, folds=folds, classifier=name, temperature=temperature,
                    threshold=threshold, clinical=clinical, settings=settings,
                    calibration=_calibration_from_state(meta["calibration"], f"{w}.calibration"))
