"""pCR prediction from tabular tumour features: filtering, selection, calibration, cross-validation.

Seed B's pipeline (MAMA-MIA 2025), every step fitted on the training rows of a fold only:

1. :class:`FeaturePipeline`
   0. keep the feature set ``features`` (:data:`FEATURE_SETS`): ``post`` = pyradiomics of the
      first post-contrast phase only (seed B), ``post+sub`` adds the subtraction image's
      first-order features, ``all`` also the kinetics and the peritumoral ring;
   a. drop features missing in more than ``max_missing`` of the training rows, impute the rest
      with the training median, drop constant features, standardise (training mean / sd);
   b. rank features by univariate separation ``|AUC - 0.5|`` on the training rows and walk down
      the ranking keeping a feature only when ``|Pearson r| <= corr_threshold`` (0.9) with every
      feature kept so far: of each correlated pair the better-ranked one stays;
   c. keep the best ``max_candidates`` survivors, then forward sequential feature selection
      (scikit-learn ``SequentialFeatureSelector``) to ``n_select`` (40) features, scored by
      ``scoring`` (balanced accuracy) with stratified ``sfs_cv``-fold CV of a cheap estimator
      (``selector``: a class-balanced ridge classifier by default, :class:`BalancedRidge`, whose
      closed-form fit takes microseconds; balanced accuracy is scored in numpy, because
      scikit-learn's validated metric cost more than the fit). Forward selection costs
      ``sum_{i<k} (n - i)`` cross-validated fits for n candidates and k selected features; the
      candidate cap bounds that by ~1,200 x 3 small fits per fold (seconds) for any number of
      extracted features.
      Seed B's 40 features presume hundreds of training cases (MAMA-MIA has ~1,500, i.e. ~1,000
      training rows per fold); with fewer rows the number selected is capped at one feature per
      ``rows_per_feature`` (20) training rows, about 6 positives per feature at a 30 % pCR rate,
      in the spirit of the events-per-variable rule of clinical prediction models (Peduzzi et al.,
      J Clin Epidemiol 1996). Forward selection beyond that picks noise (cross-validated AUC of
      the logistic baseline on a 124-case phantom: 0.68 with 40 features, 0.72 with 5), and the
      cap also bounds the cost. ``row_cap=False`` (``train.py --n-select K``) selects exactly
      ``n_select`` features (seed B's setting), with a logged warning when that exceeds the cap.
   Optional clinical columns (:class:`ClinicalEncoder`) bypass b-c and are always appended.
2. a classifier on the selected features (the self-normalising network of ``nets/snn.py``, or the
   logistic-regression and random-forest baselines of :data:`BASELINES`) - passed in as a
   factory, so this module does not depend on ``nets``;
3. calibration: every classifier here is trained with balanced class weights (pCR is ~30 %
   positive), which shifts its log-odds by ``log(n_neg / n_pos)``; the fixed "prior correction"
   (King & Zeng, Political Analysis 2001) adds back ``log(n_pos / n_neg)`` of the training rows
   (:attr:`FoldModel.prior_logit`); then a calibration map (none, temperature, Platt or
   isotonic) chosen by inner cross-validation on the training folds' out-of-fold predictions
   (:func:`core.calibration.choose_calibration`: the simplest map within one standard error of
   the best Brier score, so a calibrated score keeps "none"; a temperature fitted
   unconditionally raised held-out ECE on small tables); the decision threshold maximising
   balanced accuracy is also chosen on those predictions (:func:`choose_threshold`).

Cross-validation (:func:`cross_validate`) uses the segmentation folds. Each fold model predicts
its validation fold; the deployed calibration map and threshold are chosen and fitted on all
those out-of-fold predictions pooled (a 40-case phantom gives 8 validation cases per fold, too
few to fit a threshold per fold). The reported metrics are cross-fitted
(:func:`core.pcr_eval.evaluate`): fold f is scored with a map and threshold chosen and fitted on
the other folds' validation predictions, so no label is used to calibrate its own prediction;
they come with bootstrap 95 % intervals, beside the receptor rule and the phantom oracle.

:func:`model_to_state` / :func:`model_from_state` turn a deployed :class:`PCRModel` into JSON
values plus named arrays and back (the model file of ``nets/pcr_file.py``, no pickle).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import SequentialFeatureSelector
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from core.calibration import (CALIBRATIONS, CalibrationMap, choose_calibration, choose_threshold,  # noqa: F401
                              fit_temperature, nll, sigmoid)
from core.pcr_clinical import ClinicalEncoder  # noqa: F401
from core.pcr_eval import evaluate, oracle, receptor_rule, receptor_status, rule_metrics  # noqa: F401
from core.fairness import roc_auc
from core.plan import Settings

log = logging.getLogger(__name__)


class BalancedRidge(ClassifierMixin, BaseEstimator):
    """Class-balanced ridge classifier: minimises ``sum_i w_i (t_i - x_i b - c)^2 + alpha / N |b|^2``
    with targets t = -1/+1 and weights w_i = 1 / (2 n_class(i)) (each class weighs one half).
    Closed form and no input validation: the selection inner loop calls it ~1,000 times.
    ``decision_function`` is ``X b + c``; class 1 where it is positive."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, X, y):
        X, y = np.asarray(X, np.float64), np.asarray(y).astype(int)
        self.classes_ = np.array([0, 1])
        n1 = max(int(y.sum()), 1)
        n0 = max(y.size - n1, 1)
        w = np.where(y == 1, 0.5 / n1, 0.5 / n0)
        t = np.where(y == 1, 1.0, -1.0)
        mu = w @ X / w.sum()
        xc = X - mu
        a = (xc * w[:, None]).T @ xc + self.alpha / y.size * np.eye(X.shape[1])
        self.coef_ = np.linalg.solve(a, (xc * w[:, None]).T @ (t - w @ t / w.sum()))
        self.intercept_ = float(w @ t / w.sum() - mu @ self.coef_)
        return self

    def decision_function(self, X):
        return np.asarray(X, np.float64) @ self.coef_ + self.intercept_

    def predict(self, X):
        return (self.decision_function(X) > 0).astype(int)


def _balanced_accuracy_scorer(estimator, X, y) -> float:
    """scikit-learn scorer signature; same value as ``balanced_accuracy_score`` for 0/1 labels."""
    y = np.asarray(y).astype(int)
    p = np.asarray(estimator.predict(X)).astype(int)
    return float(np.mean([np.mean(p[y == c] == c) for c in np.unique(y)]))


SELECTORS: dict[str, Callable[[int], object]] = {
    "ridge": lambda seed: BalancedRidge(alpha=1.0),
    # liblinear: the fastest solver for tens of rows; balanced weights because pCR is ~30 % positive
    "logreg": lambda seed: LogisticRegression(C=1.0, class_weight="balanced", solver="liblinear",
                                              max_iter=1000),
    "lda": lambda seed: LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto", priors=[0.5, 0.5]),
}
BASELINES: dict[str, Callable[[int], object]] = {
    "logreg": lambda seed: LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000),
    "rf": lambda seed: RandomForestClassifier(n_estimators=300, min_samples_leaf=2,
                                              class_weight="balanced_subsample", random_state=seed, n_jobs=1),
}
PROB_CLIP = 1e-4  # probability-only models (random forest): logits of probabilities in [1e-4, 1 - 1e-4]


# feature sets by column-name prefix (data/radiomics.py names): seed B uses pyradiomics of the
# first post-contrast phase only ("post")
FEATURE_SETS: dict[str, tuple[str, ...] | None] = {"post": ("post_",), "post+sub": ("post_", "sub_"), "all": None}


def in_feature_set(name: str, features: str) -> bool:
    prefixes = FEATURE_SETS[features]
    return prefixes is None or name.startswith(prefixes)


@dataclass(frozen=True)
class PipelineConfig(Settings):
    features: str = "all"                # a key of FEATURE_SETS
    max_missing: float = 0.3
    corr_threshold: float = 0.9          # seed B
    n_select: int = 40                   # seed B
    max_candidates: int = 50
    selector: str = "ridge"              # a key of SELECTORS
    scoring: str = "balanced_accuracy"   # any scikit-learn scorer name
    sfs_cv: int = 3
    rows_per_feature: float = 20.0       # at most n_train / rows_per_feature features selected ...
    row_cap: bool = True                 # ... unless False (an explicit --n-select): then n_select exactly
    clip: float = 10.0                   # standardised values clipped to +-clip (robust to outliers)
    seed: int = 0

    def validate(self):
        if self.features not in FEATURE_SETS:
            raise ValueError(f"features must be one of {sorted(FEATURE_SETS)}, got {self.features!r}")
        if self.selector not in SELECTORS:
            raise ValueError(f"selector must be one of {sorted(SELECTORS)}, got {self.selector!r}")
        if not 0 <= self.max_missing <= 1 or not 0 < self.corr_threshold <= 1:
            raise ValueError(f"max_missing must lie in [0, 1] and corr_threshold in (0, 1]: {self}")
        if self.n_select < 1 or self.max_candidates < 1 or self.sfs_cv < 2 or self.rows_per_feature <= 0:
            raise ValueError(f"n_select, max_candidates must be >= 1, sfs_cv >= 2 and "
                             f"rows_per_feature > 0: {self}")

    def n_features(self, n_rows: int) -> int:
        """Features to select from ``n_rows`` training rows: n_select, capped by rows_per_feature
        when ``row_cap``."""
        if not self.row_cap:
            return self.n_select
        return max(1, min(self.n_select, int(n_rows // self.rows_per_feature)))

# ----------------------------------------------------------------------------- features

def _auc_strength(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``|AUC - 0.5|`` of every column of ``z`` ``(N, F)`` against 0/1 labels."""
    if y.min() == y.max():
        return np.zeros(z.shape[1])
    return np.array([abs(roc_auc(y, z[:, j]) - 0.5) for j in range(z.shape[1])])


def correlation_filter(z: np.ndarray, order: Sequence[int], threshold: float) -> list[int]:
    """Walk columns of ``z`` in ``order``; keep one when ``|r| <= threshold`` with all kept so far."""
    r = np.abs(np.corrcoef(z, rowvar=False)) if z.shape[1] > 1 else np.ones((1, 1))
    r = np.nan_to_num(np.atleast_2d(r), nan=0.0)
    kept: list[int] = []
    for j in order:
        if all(r[j, k] <= threshold for k in kept):
            kept.append(int(j))
    return kept


class FeaturePipeline:
    """Filtering, imputation, standardisation and selection fitted on training rows only.

    ``fit(X, y, names)``: X ``(N, F)`` with NaN for missing; ``transform(X)`` -> ``(N, k)``
    standardised selected features (``selected_names``), plus the ``forced`` columns if given.
    ``selector`` overrides the SFS estimator (any scikit-learn classifier).
    """

    def __init__(self, cfg: PipelineConfig = PipelineConfig(), selector=None):
        self.cfg = cfg
        self.selector = selector

    def fit(self, X, y, names: Sequence[str], forced=None, forced_names: Sequence[str] = ()) -> "FeaturePipeline":
        X = np.asarray(X, np.float64)
        y = np.asarray(y).astype(int)
        if X.ndim != 2 or X.shape[0] != y.size or X.shape[1] != len(names):
            raise ValueError(f"X {X.shape}, y {y.shape} and {len(names)} names do not match")
        cfg = self.cfg
        self.names_in = list(names)
        miss = np.isnan(X).mean(0)
        all_nan = np.isnan(X).all(0)
        med = np.nanmedian(np.where(all_nan[None, :], 0.0, X), axis=0)
        xi = np.where(np.isnan(X), med, X)
        mean, sd = xi.mean(0), xi.std(0)
        in_set = np.array([in_feature_set(n, cfg.features) for n in names], bool)
        usable = in_set & (miss <= cfg.max_missing) & (sd > 1e-9 * np.maximum(1.0, np.abs(mean)))
        cols = np.flatnonzero(usable)
        self.dropped = {"feature_set": [names[j] for j in np.flatnonzero(~in_set)],
                        "missing": [names[j] for j in np.flatnonzero(in_set & (miss > cfg.max_missing))],
                        "constant": [names[j] for j in np.flatnonzero(in_set & ~usable & (miss <= cfg.max_missing))]}
        if cols.size == 0 and forced is None:
            raise ValueError(f"no usable feature among {len(names)}: every one is constant or missing in "
                             f"more than {cfg.max_missing:.0%} of the {y.size} training rows")
        z = (xi[:, cols] - mean[cols]) / sd[cols]
        strength = _auc_strength(z, y)
        order = sorted(range(cols.size), key=lambda j: (-strength[j], j))
        kept = correlation_filter(z, order, cfg.corr_threshold)
        self.dropped["correlated"] = [names[cols[j]] for j in sorted(set(range(cols.size)) - set(kept))]
        k = cfg.n_features(y.size)
        cand = kept[:max(cfg.max_candidates, k)]
        if k > y.size / cfg.rows_per_feature:
            log.warning("selecting %d features from %d training rows (fewer than %g rows per feature): "
                        "expect an overfitted model", k, y.size, cfg.rows_per_feature)
        chosen = self._forward_select(z[:, cand], y, k) if len(cand) > k else list(range(len(cand)))
        sel = cols[[cand[j] for j in chosen]]
        self.selected = sel
        self.selected_names = [names[j] for j in sel]
        self.median, self.mean, self.sd = med[sel], mean[sel], sd[sel]
        self.forced_names = list(forced_names)
        if forced is not None:
            f = np.asarray(forced, np.float64)
            self.forced_mean = f.mean(0)
            fsd = f.std(0)
            self.forced_sd = np.where(fsd > 1e-12, fsd, 1.0)  # a constant indicator stays 0
        else:
            self.forced_mean = self.forced_sd = None
        return self

    def _forward_select(self, z: np.ndarray, y: np.ndarray, k: int) -> list[int]:
        cfg = self.cfg
        n_min = int(min(np.bincount(y, minlength=2)))
        if n_min < 2:  # no stratified CV possible: fall back on the univariate ranking
            return list(range(k))
        est = self.selector if self.selector is not None else SELECTORS[cfg.selector](cfg.seed)
        # the splits as a list: computed once instead of once per candidate feature
        cv = list(StratifiedKFold(n_splits=min(cfg.sfs_cv, n_min), shuffle=True,
                                  random_state=cfg.seed).split(z, y))
        scoring = _balanced_accuracy_scorer if cfg.scoring == "balanced_accuracy" else cfg.scoring
        sfs = SequentialFeatureSelector(est, n_features_to_select=k, direction="forward",
                                        scoring=scoring, cv=cv, n_jobs=1)
        sfs.fit(z, y)
        return [int(j) for j in np.flatnonzero(sfs.get_support())]

    def transform(self, X, forced=None) -> np.ndarray:
        X = np.asarray(X, np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.names_in):
            raise ValueError(f"X must be (N, {len(self.names_in)}), got {X.shape}")
        x = X[:, self.selected]
        x = np.where(np.isnan(x), self.median, x)
        z = np.clip((x - self.mean) / self.sd, -self.cfg.clip, self.cfg.clip)
        if self.forced_mean is not None:
            if forced is None:
                raise ValueError("this pipeline was fitted with clinical columns; pass them to transform")
            f = (np.asarray(forced, np.float64) - self.forced_mean) / self.forced_sd
            z = np.concatenate([z, np.clip(f, -self.cfg.clip, self.cfg.clip)], axis=1)
        return z

    def state(self) -> dict:
        """What was fitted, for reports (names only)."""
        return {"selected": self.selected_names, "forced": self.forced_names,
                "dropped": {k: len(v) for k, v in self.dropped.items()}}


def logits_of(estimator, X) -> np.ndarray:
    """Log-odds of class 1: ``decision_function`` when the model has one, else clipped
    ``predict_proba`` converted to logits."""
    if hasattr(estimator, "decision_function"):
        return np.asarray(estimator.decision_function(X), np.float64).ravel()
    p = np.clip(estimator.predict_proba(X)[:, 1], PROB_CLIP, 1 - PROB_CLIP)
    return np.log(p / (1 - p))


# ----------------------------------------------------------------------------- cross-validation

@dataclass
class FoldModel:
    """One fold: its fitted feature pipeline, clinical encoder and classifiers by name."""

    fold: int
    pipeline: FeaturePipeline
    clinical: ClinicalEncoder | None
    classifiers: dict
    prior_logit: float = 0.0            # log(n_pos / n_neg) of the training rows (0: no correction)
    train_ids: list = field(default_factory=list)

    def inputs(self, X, records=None) -> np.ndarray:
        forced = self.clinical.transform(records) if self.clinical is not None else None
        return self.pipeline.transform(X, forced)

    def logits(self, X, records=None) -> dict[str, np.ndarray]:
        """Prior-corrected log-odds ``(N,)`` per classifier: the classifier's own (class-balanced)
        log-odds plus ``prior_logit``."""
        z = self.inputs(X, records)
        return {name: logits_of(est, z) + self.prior_logit for name, est in self.classifiers.items()}


def fit_fold(X, y, names, train_idx, classifiers: Mapping[str, Callable[[int], object]],
             cfg: PipelineConfig = PipelineConfig(), records=None, fold: int = 0, ids=None,
             selector=None, prior_correction: bool = True) -> FoldModel:
    """Fit the pipeline and every classifier on rows ``train_idx`` of (X, y) (nothing else is
    read). ``classifiers``: name -> factory(seed) returning an unfitted scikit-learn classifier
    trained with balanced class weights (``prior_correction``; pass False for unweighted ones)."""
    tr = np.asarray(train_idx)
    Xt, yt = np.asarray(X, np.float64)[tr], np.asarray(y).astype(int)[tr]
    enc, forced = None, None
    if records is not None:
        recs = [records[i] for i in tr]
        enc = ClinicalEncoder().fit(recs)
        forced = enc.transform(recs)
    pipe = FeaturePipeline(cfg, selector).fit(Xt, yt, names, forced, enc.names if enc else ())
    z = pipe.transform(Xt, forced)
    fitted = {}
    for name, make in classifiers.items():
        est = make(cfg.seed + fold)
        if hasattr(est, "n_clinical"):      # a stack (core.pcr_stack): the clinical columns come last
            est.n_clinical = len(pipe.forced_names)
        fitted[name] = est.fit(z, yt)
    n1 = int(yt.sum())
    prior = math.log(n1 / (yt.size - n1)) if prior_correction and 0 < n1 < yt.size else 0.0
    return FoldModel(fold=fold, pipeline=pipe, clinical=enc, classifiers=fitted, prior_logit=prior,
                     train_ids=[ids[i] for i in tr] if ids is not None else [])


@dataclass
class CrossValidation:
    """Out-of-fold prior-corrected logits per classifier and the prior correction each row got
    (``shift``), NaN for rows not validated, and the fold models."""

    fold_of: np.ndarray
    folds: list[int]
    oof: dict[str, np.ndarray]
    shift: np.ndarray
    models: list[FoldModel]


def cross_validate(X, y, names, fold_of, folds: Sequence[int], classifiers, cfg: PipelineConfig = PipelineConfig(),
                   records=None, ids=None, on_fold: Callable[[int], None] | None = None,
                   prior_correction: bool = True) -> CrossValidation:
    """For each fold f in ``folds``: fit on rows with ``fold_of != f`` and predict rows with
    ``fold_of == f`` (rows with fold -1 are never validated but always used for training)."""
    fold_of = np.asarray(fold_of)
    n = len(fold_of)
    oof = {name: np.full(n, np.nan) for name in classifiers}
    shift = np.full(n, np.nan)
    models = []
    for f in folds:
        tr, va = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
        fm = fit_fold(X, y, names, tr, classifiers, cfg, records, fold=f, ids=ids,
                      prior_correction=prior_correction)
        shift[va] = fm.prior_logit
        recs = [records[i] for i in va] if records is not None else None
        for name, lg in fm.logits(np.asarray(X, np.float64)[va], recs).items():
            oof[name][va] = lg
        models.append(fm)
        if on_fold is not None:
            on_fold(f)
    return CrossValidation(fold_of=fold_of, folds=list(folds), oof=oof, shift=shift, models=models)


# ----------------------------------------------------------------------------- deployed model

@dataclass
class PCRModel:
    """The deployed model: fold models of one classifier averaged in logit space, divided by the
    pooled out-of-fold calibration map (or temperature), thresholded at the pooled out-of-fold
    threshold.

    The temperature was fitted on single-model logits; averaging folds shrinks the spread of the
    logits a little, so the ensemble is, if anything, slightly under- rather than overconfident.
    """

    feature_names: list[str]
    folds: list[FoldModel]
    classifier: str
    temperature: float
    threshold: float
    clinical: bool
    settings: dict = field(default_factory=dict)   # feature extraction settings, for inference
    # the calibration map chosen by inner cross-validation (core.calibration); None: the temperature
    calibration: CalibrationMap | None = None

    def align(self, X, names: Sequence[str]) -> np.ndarray:
        """Reorder columns ``names`` of X to the training features; absent ones become NaN."""
        X = np.asarray(X, np.float64)
        pos = {n: j for j, n in enumerate(names)}
        missing = [n for n in self.feature_names if n not in pos]
        if len(missing) == len(self.feature_names):
            raise ValueError("none of the model's features is present in the feature table")
        out = np.full((X.shape[0], len(self.feature_names)), np.nan)
        for j, n in enumerate(self.feature_names):
            if n in pos:
                out[:, j] = X[:, pos[n]]
        return out

    def logits(self, X, names: Sequence[str], records=None) -> np.ndarray:
        if self.clinical and records is None:
            raise ValueError("this pCR model uses clinical variables; pass the clinical records")
        Xa = self.align(X, names)
        recs = records if self.clinical else None
        return np.mean([fm.logits(Xa, recs)[self.classifier] for fm in self.folds], axis=0)

    def predict(self, X, names: Sequence[str], records=None) -> tuple[np.ndarray, np.ndarray]:
        """``(score, label)``: calibrated pCR probability ``(N,)`` and 0/1 decision ``(N,)``."""
        lg = self.logits(X, names, records)
        score = self.calibration(lg) if self.calibration is not None else sigmoid(lg / self.temperature)
        return score, (score >= self.threshold).astype(int)
