"""The stacked ensemble: base learners, out-of-fold stacking, a logistic meta-learner.

:class:`EnsembleClassifier` is a scikit-learn estimator. ``fit`` works in three steps:

1. **Out-of-fold probabilities.** The rows are split by a (grouped) K-fold: with
   ``groups`` (spatial blocks or polygon ids) a :class:`~sklearn.model_selection.StratifiedGroupKFold`,
   so that a group never sits on both sides of a split; without, a stratified K-fold.
   For every fold, a fresh copy of every base learner is fitted on the other folds and
   predicts the class probabilities of the held-out fold. Each row therefore gets, from
   each learner, probabilities of a model that never saw it (``oof_proba_``).
2. **Meta-learner.** A multinomial logistic regression is fitted on the logarithms of these
   out-of-fold probabilities only (``n_samples × (n_learners · n_classes)``), never on
   in-fold ones. Its class weights are chosen by CV over the same folds
   (``meta_class_weight="auto"``): on the real data of ``scripts/bench/quality.py`` a
   balanced meta-learner traded the majority classes for the rare one and lost weighted
   F1 against its own base learners.
3. **Final base learners.** Every base learner is refitted on all rows (``estimators_``);
   prediction feeds their probabilities to the meta-learner.

``predict_uncertainty`` is the per-class standard deviation, across the base learners,
of their predicted probabilities (zero with a single learner).

Threads: the learners are fitted one after the other, each with all the threads of the
allocation (:func:`ecocube.env.available_threads`, or ``n_jobs``), so they never compete
for cores; ``n_jobs=-1`` is refused (it counts the node, not the allocation).

Missing values: with ``nan_policy="raise"`` (default) a NaN or inf in ``X`` is an error
(in ``fit`` and in ``predict``), because a pixel with a gap left after gap-filling has no
honest prediction; callers drop or mask such rows. With ``nan_policy="impute"`` NaN is
replaced by the per-feature training median, recorded in ``fill_values_`` (0 for a
feature that was all NaN).

Class imbalance: ``class_weight="balanced"`` (default) weights classes inversely to their
frequency in every base learner; the meta-learner's weights follow ``meta_class_weight``.

LightGBM: small-data settings (:data:`LGBM_SMALL_DATA`) and, with ``early_stopping``, a
tree count chosen on the stacking folds' held-out rows (:func:`out_of_fold_proba`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from .env import available_threads

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(est, *args, **kwargs):
        if "ensure_all_finite" in kwargs:
            kwargs["force_all_finite"] = kwargs.pop("ensure_all_finite")
        return est._validate_data(*args, **kwargs)

#: names accepted in ``base_learners``
BASE_LEARNERS = ("rf", "lgbm", "et", "mlp", "logreg")
_NAN_POLICIES = ("raise", "impute")
#: LightGBM settings of the ``lgbm`` base learner (classifier and regressor)
LGBM_SMALL_DATA = {"num_leaves": 15, "min_child_samples": 10, "subsample": 0.8, "subsample_freq": 1,
                   "colsample_bytree": 0.5, "reg_lambda": 1.0}
#: leaf size of the ``rf`` and ``et`` classifiers. Map training pixels come in polygons of
#: tens of near-identical pixels: leaves of one pixel learn the polygons, not the classes,
#: and polygon-grouped CV sees it. Held-out weighted F1 of RF alone, leaf 1 -> 20, 13 fold
#: draws: Flanders 0.686 -> 0.719, Slovenia 0.614 -> 0.621 (scripts/bench/quality_pool.py)
FOREST_MIN_SAMPLES_LEAF = 20
#: ... but a small table keeps room for at least this many leaves per class (a guard for
#: tables of tens of labelled pixels, not a measured optimum: see forest_leaf_size)
FOREST_MIN_LEAVES_PER_CLASS = 5

#: inverse regularisation strength of the ``logreg`` base learner (standardised features;
#: C = 1 scored 0.55 vs 0.60 wF1 for C = 0.1 on Flanders, 3 fold draws: hundreds of
#: correlated columns and a few hundred pixels need a strong penalty)
LOGREG_C = 0.1
LOGREG_MAX_ITER = 2000


def make_base_learner(name: str, *, n_estimators: int, class_weight, n_threads: int, random_state: int,
                      max_depth: int | None = None, learning_rate: float = 0.1):
    """A fresh, unfitted base learner by short name (``rf``, ``lgbm``, ``et``, ``mlp``, ``logreg``)."""
    if name == "rf":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, class_weight=class_weight,
                                      min_samples_leaf=FOREST_MIN_SAMPLES_LEAF, n_jobs=n_threads,
                                      random_state=random_state)
    if name == "et":
        from sklearn.ensemble import ExtraTreesClassifier

        return ExtraTreesClassifier(n_estimators=n_estimators, max_depth=max_depth, class_weight=class_weight,
                                    min_samples_leaf=FOREST_MIN_SAMPLES_LEAF, n_jobs=n_threads,
                                    random_state=random_state)
    if name == "lgbm":
        from lightgbm import LGBMClassifier

        # settings for the small, correlated tables of map training (hundreds to a few
        # thousand pixels, tens to hundreds of features): smaller leaves, row and column
        # subsampling (see LGBM_SMALL_DATA); the tree count comes from early stopping
        return LGBMClassifier(n_estimators=n_estimators, learning_rate=learning_rate,
                              max_depth=-1 if max_depth is None else max_depth, class_weight=class_weight,
                              n_jobs=n_threads, random_state=random_state, verbose=-1, deterministic=True,
                              force_col_wise=True, **LGBM_SMALL_DATA)
    if name == "mlp":
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        # a small network on standardised features; early stopping on a 10 % validation split.
        # MLPClassifier has no class weights: class_weight does not apply to it.
        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64, 32), alpha=1e-3,
                                                             early_stopping=True, max_iter=300,
                                                             random_state=random_state))
    if name == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        # a multinomial logistic regression on standardised features, strongly regularised
        # (LOGREG_C): a linear learner beside the trees, whose errors differ from theirs
        return make_pipeline(StandardScaler(), LogisticRegression(C=LOGREG_C, class_weight=class_weight,
                                                                  max_iter=LOGREG_MAX_ITER))
    raise ValueError(f"unknown base learner {name!r}; choose among {', '.join(BASE_LEARNERS)} "
                     f"or pass an estimator instance")


def forest_leaf_size(n_rows: int, n_classes: int) -> int:
    """``min_samples_leaf`` of the ``rf`` and ``et`` classifiers fitted on ``n_rows`` rows of
    ``n_classes`` classes: :data:`FOREST_MIN_SAMPLES_LEAF`, smaller where the table has fewer
    than :data:`FOREST_MIN_LEAVES_PER_CLASS` such leaves per class (at least 1). The real
    datasets of ``scripts/bench/quality.py`` (about 860 and 1,070 training rows of 3 and 5
    classes per fold) get 20."""
    return int(max(1, min(FOREST_MIN_SAMPLES_LEAF, n_rows // (FOREST_MIN_LEAVES_PER_CLASS * max(1, n_classes)))))


#: ``meta`` choices: a multinomial logistic regression on the log out-of-fold probabilities,
#: their plain mean (soft voting; nothing is fitted), their weighted mean by greedy ensemble
#: selection, the single best learner on the out-of-fold rows, or the best of these by CV
META_LEARNERS = ("auto", "logistic", "mean", "greedy", "best")
#: the combiners ``meta="auto"`` chooses among
AUTO_COMBINERS = ("logistic", "mean")


def _meta_features(stacked: np.ndarray) -> np.ndarray:
    """What the logistic meta-learner sees: log probabilities (clipped at 1e-4), so that it
    can weigh learners multiplicatively (a product of experts) rather than additively."""
    return np.log(np.clip(stacked, 1e-4, 1.0))


class _MeanOfProba:
    """The ``meta="mean"`` combiner: the average of the base learners' probabilities."""

    def __init__(self, n_learners: int, n_classes: int):
        self.n_learners = n_learners
        self.n_classes = n_classes

    def predict_proba(self, base: np.ndarray) -> np.ndarray:
        """``base``: ``(n_learners, n_samples, n_classes)`` probabilities."""
        p = np.asarray(base).mean(axis=0)
        return p / p.sum(axis=1, keepdims=True)


class _WeightedMeanOfProba:
    """The ``meta="greedy"`` combiner: a weighted mean of the base learners' probabilities,
    weights >= 0 summing to 1 (``weights``), found by greedy ensemble selection."""

    def __init__(self, weights: np.ndarray, n_classes: int):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.n_classes = n_classes

    def predict_proba(self, base: np.ndarray) -> np.ndarray:
        """``base``: ``(n_learners, n_samples, n_classes)`` probabilities."""
        p = np.tensordot(self.weights, np.asarray(base, dtype=np.float64), axes=1)
        return p / p.sum(axis=1, keepdims=True)


#: rounds of greedy ensemble selection (each adds one learner's probabilities, with replacement)
GREEDY_ROUNDS = 25


def _log_loss_rows(p: np.ndarray, y_enc: np.ndarray) -> float:
    p = np.clip(p[np.arange(y_enc.size), y_enc], 1e-6, 1.0)
    return float(-np.mean(np.log(p)))


def best_learner_weights(base: np.ndarray, y_enc: np.ndarray, metric: str = "f1_weighted") -> np.ndarray:
    """One-hot weights of the learner whose out-of-fold probabilities ``base``
    (``(n_learners, n_samples, n_classes)``) score best by ``metric`` (ties: the first)."""
    from sklearn.metrics import f1_score

    base = np.asarray(base, dtype=np.float64)
    if metric == "log_loss":
        score = [-_log_loss_rows(b, y_enc) for b in base]
    else:
        score = [f1_score(y_enc, b.argmax(axis=1), average="weighted") for b in base]
    w = np.zeros(base.shape[0])
    w[int(np.argmax(score))] = 1.0
    return w


def greedy_selection_weights(base: np.ndarray, y_enc: np.ndarray, *, rounds: int = GREEDY_ROUNDS) -> np.ndarray:
    """Weights of greedy ensemble selection with replacement (Caruana et al. 2004).

    ``base``: ``(n_learners, n_samples, n_classes)`` out-of-fold probabilities. Starting from
    the learner with the lowest log loss, each round adds (again, possibly) the learner whose
    addition to the running mean lowers the log loss most; the weights are how often each
    was added. The first round is the best single learner, and a round that improves
    nothing adds it again, so the result is never worse than that learner on these rows.
    """
    base = np.asarray(base, dtype=np.float64)
    n_learners = base.shape[0]
    counts = np.zeros(n_learners)
    running = np.zeros(base.shape[1:])
    for n in range(int(rounds)):
        losses = [_log_loss_rows((running * n + base[k]) / (n + 1), y_enc) for k in range(n_learners)]
        k = int(np.argmin(losses))  # ties: the first learner
        counts[k] += 1
        running = (running * n + base[k]) / (n + 1)
    return counts / counts.sum()


class _ConstantProba:
    """Stand-in for a learner whose training fold held a single class."""

    def __init__(self, label: int):
        self.classes_ = np.array([label])

    def predict_proba(self, X):
        return np.ones((X.shape[0], 1))


#: LightGBM gets one OpenMP thread per this many training rows (at least 1, at most the
#: allocation): on small tables its thread start-up and spin-waits cost far more than the
#: work (measured: 1,080 rows, 2 busy cores, 20 trees: 0.28 s on 1 thread, 4.2 s on 2).
LGBM_ROWS_PER_THREAD = 20_000


def _is_lgbm(estimator) -> bool:
    return type(estimator).__name__ in ("LGBMClassifier", "LGBMRegressor")


def _fit_one(estimator, X: np.ndarray, y: np.ndarray):
    """Fit one base learner (a constant stand-in when ``y`` holds one class; LightGBM with
    the threads its row count is worth, :data:`LGBM_ROWS_PER_THREAD`)."""
    if np.unique(y).size < 2:
        return _ConstantProba(int(y[0]))
    if _is_lgbm(estimator):
        allowed = int(estimator.get_params()["n_jobs"] or 1)
        estimator.set_params(n_jobs=max(1, min(allowed, X.shape[0] // LGBM_ROWS_PER_THREAD)))
    return estimator.fit(X, y)


def _staged_log_loss(estimator, X: np.ndarray, y_enc: np.ndarray, n_classes: int, n_rounds: int) -> np.ndarray:
    """Summed log loss of the rows ``X, y_enc`` after each boosting round ``1..n_rounds`` of a
    fitted LightGBM classifier (rounds past its last one repeat the last), ``(n_rounds,)``."""
    out = np.empty(n_rounds)
    if not _is_lgbm(estimator):  # a constant stand-in: the same loss at every round
        out[:] = _log_loss_rows(_proba_full(estimator, X, n_classes), y_enc) * y_enc.size
        return out
    booster = estimator.booster_
    done = booster.current_iteration()
    cols = np.asarray(estimator.classes_, dtype=np.int64)
    raw = None
    for i in range(min(done, n_rounds)):
        step = np.asarray(booster.predict(X, raw_score=True, start_iteration=i, num_iteration=1), dtype=np.float64)
        raw = step if raw is None else raw + step
        if raw.ndim == 1:  # binary: the logit of the second class
            seen = np.column_stack([-raw, raw]) / 2.0
        else:
            seen = raw
        seen = np.exp(seen - seen.max(axis=1, keepdims=True))
        seen /= seen.sum(axis=1, keepdims=True)
        p = np.zeros((X.shape[0], n_classes))
        p[:, cols] = seen
        out[i] = _log_loss_rows(p, y_enc) * y_enc.size
    if done < n_rounds:
        out[done:] = out[done - 1] if done else np.inf
    return out


def out_of_fold_proba(proto, X: np.ndarray, y_enc: np.ndarray, splits, n_classes: int, *,
                      early_stopping: bool = False) -> tuple[np.ndarray, int | None]:
    """Out-of-fold probabilities of one base learner over the stacking folds ``splits``
    (``(n_samples, n_classes)``), and the tree count of its final fit (None: unchanged).

    Every fold's model is a clone of ``proto`` fitted on all the other folds' rows, as the
    final learner is fitted on all rows, so the combiner weighs the learners it will combine.
    LightGBM with ``early_stopping`` is fitted to ``n_estimators`` rounds in each fold; the
    held-out fold ``j`` is predicted at the round count that minimises the summed log loss of
    the *other* folds' held-out rows (so fold ``j``'s labels do not choose its own predictions),
    and the final LightGBM gets the round count that minimises it over all folds. (This
    replaced early stopping on 20 % of each fold's training groups: those models were fitted
    on 64 % of the rows against the others' 80 %, stopped on the loss of a few polygons, at
    4-17 rounds on the Flanders data, and the final fit took the median of those counts.)
    """
    block = np.full((X.shape[0], n_classes), np.nan)
    fitted = []
    for train_idx, test_idx in splits:
        est = _fit_one(clone(proto), X[train_idx], y_enc[train_idx])
        fitted.append(est)
        block[test_idx] = _proba_full(est, X[test_idx], n_classes)
    if not (early_stopping and _is_lgbm(proto)):
        return block, None
    n_rounds = int(proto.get_params()["n_estimators"])
    curves = np.stack([_staged_log_loss(est, X[test_idx], y_enc[test_idx], n_classes, n_rounds)
                       for est, (_, test_idx) in zip(fitted, splits)])
    total = curves.sum(axis=0)
    for j, (est, (_, test_idx)) in enumerate(zip(fitted, splits)):
        if not _is_lgbm(est):
            continue
        others = total - curves[j] if len(splits) > 1 else total
        rounds = int(np.argmin(others)) + 1
        block[test_idx] = _proba_full(_AtRounds(est, rounds), X[test_idx], n_classes)
    return block, int(np.argmin(total)) + 1


class _AtRounds:
    """A fitted LightGBM classifier predicting with its first ``rounds`` boosting rounds."""

    def __init__(self, estimator, rounds: int):
        self.estimator = estimator
        self.rounds = rounds
        self.classes_ = estimator.classes_

    def predict_proba(self, X):
        return self.estimator.predict_proba(X, num_iteration=self.rounds)


def _proba_full(estimator, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities on all ``n_classes`` encoded classes (0 for classes the learner never saw)."""
    p = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    cols = np.asarray(estimator.classes_, dtype=np.int64)
    if cols.size == n_classes and np.array_equal(cols, np.arange(n_classes)):
        return p
    out = np.zeros((X.shape[0], n_classes))
    out[:, cols] = p
    return out


def _importance(estimator, n_features: int) -> np.ndarray:
    """Normalised feature importance of one fitted learner (zeros when it has none)."""
    imp = None
    booster = getattr(estimator, "booster_", None)
    if booster is not None:
        imp = np.asarray(booster.feature_importance(importance_type="gain"), dtype=np.float64)
    elif hasattr(estimator, "feature_importances_"):
        imp = np.asarray(estimator.feature_importances_, dtype=np.float64)
    elif hasattr(estimator, "steps") and hasattr(estimator.steps[-1][1], "coef_"):
        # a linear model on standardised features: the mean |coefficient| over the classes
        imp = np.abs(np.asarray(estimator.steps[-1][1].coef_, dtype=np.float64)).mean(axis=0)
    if imp is None or imp.shape != (n_features,) or not np.isfinite(imp).all() or imp.sum() <= 0:
        return np.zeros(n_features)
    return imp / imp.sum()


class EnsembleClassifier(ClassifierMixin, BaseEstimator):
    """Ensemble of base learners: their probabilities averaged (default) or stacked under a meta-learner.

    Parameters (keyword-only)
    -------------------------
    base_learners : sequence of ``"rf"``, ``"lgbm"``, ``"et"``, ``"mlp"``, ``"logreg"`` or estimator instances
        The base learners (random forest, LightGBM, extra trees, a small neural network, a
        regularised multinomial logistic regression; :func:`make_base_learner`). Instances are cloned.
    n_estimators : int
        Trees per tree learner.
    max_depth : int or None
        Depth limit of the trees (None: unlimited; LightGBM -1).
    learning_rate : float
        LightGBM learning rate.
    cv_folds : int
        Folds of the stacking CV (fewer when there are fewer groups or class members).
    class_weight : ``"balanced"``, None or dict
        Class weights of every base learner (a dict maps class -> weight).
    meta : ``"auto"``, ``"logistic"``, ``"mean"``, ``"greedy"`` or ``"best"``
        The combiner: a multinomial logistic regression on the log out-of-fold probabilities
        (stacking), their plain mean (soft voting), their weighted mean by greedy ensemble
        selection with replacement on the out-of-fold log loss
        (:func:`greedy_selection_weights`; never worse than the best learner alone on those
        rows), the one learner that scores best on the out-of-fold rows by ``meta_metric``
        (:func:`best_learner_weights`: the "ensemble" is then its best member), or
        (``"auto"``) whichever of :data:`AUTO_COMBINERS` scores best over the stacking
        folds by ``meta_metric`` (``meta_``, ``meta_selection_``). ``"mean"`` (default, as
        ``model.meta`` of a run): on the real datasets of ``scripts/bench/quality.py`` the
        other combiners, fitted or chosen on the inner folds of ~30-70 polygons, scored lower.
    meta_metric : ``"f1_weighted"`` or ``"log_loss"``
        How ``meta="auto"`` scores its candidates on the stacking folds (a candidate that is
        fitted, logistic or greedy, is refitted on the other folds' out-of-fold rows).
    meta_C : float
        Inverse regularisation strength of the logistic meta-learner.
    meta_class_weight : ``"auto"``, ``"same"``, ``"balanced"`` or None
        Class weights of the meta-learner. ``"auto"`` (default) chooses between none and
        ``class_weight`` by the weighted F1 of the meta-learner over the stacking folds
        (``meta_selection_``), except that explicit per-class weights (a dict) are always
        applied, by a logistic meta-learner; ``"same"`` uses ``class_weight``.
    early_stopping : bool
        LightGBM's tree count (at most ``n_estimators``) is the one with the lowest summed
        log loss of the stacking folds' held-out rows; each fold's out-of-fold probabilities
        come from the count chosen on the other folds (:func:`out_of_fold_proba`).
    tuning : None, ``"grid"`` or a mapping learner name -> {parameter: [values]}
        Per-learner hyperparameters chosen on the stacking folds (:mod:`ecocube.tuning`):
        every candidate of a learner's grid gets its out-of-fold probabilities, the best by
        ``tuning_metric`` is kept (its out-of-fold probabilities feed the meta-learner, its
        parameters the final learner; ``tuning_``). ``"grid"``: :data:`ecocube.tuning.DEFAULT_GRIDS`.
    tuning_metric : ``"log_loss"`` or ``"f1_weighted"``
        How tuning and feature selection score their candidates on the out-of-fold rows.
    feature_selection : None, ``"importance"`` or ``"rfe"``
        Columns kept before everything else (:mod:`ecocube.selection`), the share of
        ``feature_keep`` chosen on the stacking folds; ``selected_features_`` holds their
        indices, ``feature_selection_`` the choice. Prediction takes all ``n_features_in_``
        columns and uses the selected ones.
    feature_keep : sequence of shares in (0, 1]
        The shares of the features feature selection chooses among.
    nan_policy : ``"raise"`` or ``"impute"``
        What to do with NaN in ``X`` (see module docstring).
    n_jobs : int or None
        Threads; None: :func:`ecocube.env.available_threads` (the Slurm allocation).
    random_state : int, RandomState or None
        Seeds the CV shuffles and every learner: the same seed gives the same model.

    Fitted attributes
    -----------------
    classes_, n_features_in_, estimators_ (final base learners), learner_names_,
    meta_learner_, oof_proba_ (n_samples, n_learners * n_classes), cv_test_folds_ (row
    indices held out in each stacking fold), fill_values_ (impute only), feature_importances_,
    tuning_ (tuned learners only), selected_features_ and feature_selection_ (None without selection),
    forest_min_samples_leaf_ (the leaf size of the ``rf`` / ``et`` learners, :func:`forest_leaf_size`;
    a tuning grid may replace it).
    """

    def __init__(
        self,
        *,
        base_learners: Sequence[Any] = ("rf", "lgbm", "et"),
        n_estimators: int = 200,
        max_depth: int | None = None,
        learning_rate: float = 0.1,
        cv_folds: int = 5,
        class_weight: str | None = "balanced",
        meta: str = "mean",
        meta_C: float = 1.0,
        meta_class_weight: str | None = "auto",
        meta_metric: str = "f1_weighted",
        early_stopping: bool = True,
        tuning=None,
        tuning_metric: str = "log_loss",
        feature_selection: str | None = None,
        feature_keep: Sequence[float] = (1.0, 0.5, 0.25),
        nan_policy: str = "raise",
        n_jobs: int | None = None,
        random_state=None,
    ):
        self.base_learners = base_learners
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.cv_folds = cv_folds
        self.tuning = tuning
        self.tuning_metric = tuning_metric
        self.feature_selection = feature_selection
        self.feature_keep = feature_keep
        self.class_weight = class_weight
        self.meta = meta
        self.meta_C = meta_C
        self.meta_class_weight = meta_class_weight
        self.meta_metric = meta_metric
        self.early_stopping = early_stopping
        self.nan_policy = nan_policy
        self.n_jobs = n_jobs
        self.random_state = random_state

    # ------------------------------------------------------------------ sklearn tags
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self.nan_policy == "impute"
        return tags

    def _more_tags(self):  # pragma: no cover - scikit-learn < 1.6
        return {"allow_nan": self.nan_policy == "impute"}

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        learners = self.base_learners
        if isinstance(learners, str) or not isinstance(learners, Sequence) or len(learners) == 0:
            raise ValueError(f"base_learners must be a non-empty sequence, got {learners!r}")
        for item in learners:
            if isinstance(item, str):
                if item not in BASE_LEARNERS:
                    raise ValueError(f"unknown base learner {item!r}; choose among {', '.join(BASE_LEARNERS)}")
            elif not (hasattr(item, "fit") and hasattr(item, "predict_proba")):
                raise ValueError(f"base learner {item!r} has no fit/predict_proba")
        if not isinstance(self.n_estimators, numbers.Integral) or self.n_estimators < 1:
            raise ValueError(f"n_estimators must be a positive integer, got {self.n_estimators!r}")
        if self.max_depth is not None and (not isinstance(self.max_depth, numbers.Integral) or self.max_depth < 1):
            raise ValueError(f"max_depth must be None or a positive integer, got {self.max_depth!r}")
        if not isinstance(self.cv_folds, numbers.Integral) or self.cv_folds < 2:
            raise ValueError(f"cv_folds must be an integer >= 2, got {self.cv_folds!r}")
        if not (self.class_weight in ("balanced", None) or isinstance(self.class_weight, dict)):
            raise ValueError(f"class_weight must be 'balanced', None or a dict class -> weight, "
                             f"got {self.class_weight!r}")
        if not (isinstance(self.meta_C, numbers.Real) and self.meta_C > 0):
            raise ValueError(f"meta_C must be > 0, got {self.meta_C!r}")
        if self.meta_class_weight not in ("auto", "same", "balanced", None):
            raise ValueError(f"meta_class_weight must be 'auto', 'same', 'balanced' or None, "
                             f"got {self.meta_class_weight!r}")
        if self.meta_metric not in ("f1_weighted", "log_loss"):
            raise ValueError(f"meta_metric must be 'f1_weighted' or 'log_loss', got {self.meta_metric!r}")
        if self.meta not in META_LEARNERS:
            raise ValueError(f"meta must be one of {META_LEARNERS}, got {self.meta!r}")
        if not isinstance(self.early_stopping, (bool, np.bool_)):
            raise ValueError(f"early_stopping must be True or False, got {self.early_stopping!r}")
        if not (isinstance(self.learning_rate, numbers.Real) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        from .selection import METHODS, check_keep
        from .tuning import METRICS, resolve_grids

        resolve_grids(self.tuning, [b for b in learners if isinstance(b, str)])
        if self.tuning_metric not in METRICS:
            raise ValueError(f"tuning_metric must be one of {METRICS}, got {self.tuning_metric!r}")
        if self.feature_selection is not None and self.feature_selection not in METHODS:
            raise ValueError(f"feature_selection must be None or one of {METHODS}, got {self.feature_selection!r}")
        check_keep(self.feature_keep)
        if self.nan_policy not in _NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {_NAN_POLICIES}, got {self.nan_policy!r}")
        if self.n_jobs is not None and (not isinstance(self.n_jobs, numbers.Integral) or self.n_jobs < 1):
            raise ValueError(
                f"n_jobs must be None (the allocation's threads) or a positive integer, got {self.n_jobs!r}; "
                "n_jobs=-1 would count the node's cores, not the job's allocation"
            )

    def _validate_X(self, X, *, reset: bool, y=None):
        finite = True if self.nan_policy == "raise" else "allow-nan"
        if y is not None:
            return _validate_data(self, X, y, reset=reset, dtype=np.float32, ensure_all_finite=finite,
                                  ensure_min_samples=2)
        return _validate_data(self, X, reset=reset, dtype=np.float32, ensure_all_finite=finite)

    def _impute(self, X: np.ndarray) -> np.ndarray:
        if self.nan_policy != "impute":
            return X
        mask = np.isnan(X)
        if mask.any():
            X = np.where(mask, self.fill_values_[None, :], X).astype(np.float32)
        return X

    # ------------------------------------------------------------------ fitting
    def _encoded_class_weight(self):
        """``class_weight`` with keys turned into the encoded labels the learners see."""
        if not isinstance(self.class_weight, dict):
            return self.class_weight
        index = {c: i for i, c in enumerate(self.classes_.tolist())}
        return {index[k]: float(w) for k, w in self.class_weight.items() if k in index}

    def _learners(self, n_threads: int, rng: np.random.RandomState, n_rows: int) -> list[tuple[str, Any]]:
        out = []
        class_weight = self._encoded_class_weight()
        self.forest_min_samples_leaf_ = forest_leaf_size(n_rows, self.classes_.size)
        for item in self.base_learners:
            seed = int(rng.randint(np.iinfo(np.int32).max))
            if isinstance(item, str):
                est = make_base_learner(item, n_estimators=int(self.n_estimators), class_weight=class_weight,
                                        n_threads=n_threads, random_state=seed, max_depth=self.max_depth,
                                        learning_rate=float(self.learning_rate))
                if item in ("rf", "et"):
                    est.set_params(min_samples_leaf=self.forest_min_samples_leaf_)
                out.append((item, est))
            else:
                est = clone(item)
                if "random_state" in est.get_params():
                    est.set_params(random_state=seed)
                out.append((type(item).__name__, est))
        return out

    def _select_meta(self, feats: np.ndarray, oof: np.ndarray, y_enc: np.ndarray, folds: list[np.ndarray],
                     seed: int, n_learners: int, n_classes: int, combiners=None) -> tuple[str, Any, dict]:
        """The combiner and its class weights, fixed or chosen by CV over the stacking folds.

        Candidates: the mean of the probabilities (``meta="mean"`` or ``"auto"``) and the
        logistic meta-learner with the class weights ``meta_class_weight`` allows (``"auto"``:
        none and ``class_weight``). Each is scored by the weighted F1 of its predictions for
        the rows of every stacking fold, a logistic candidate being refitted on the
        out-of-fold rows of the other folds. The best wins (a tie: the simpler one, the mean
        first, then no class weights). Returns (combiner, class weights, the scores).
        """
        from sklearn.metrics import f1_score

        if combiners is None:  # (the bench passes others, to score alternatives on the same learners)
            combiners = AUTO_COMBINERS if self.meta == "auto" else (self.meta,)
        explicit = isinstance(self.class_weight, dict) and self.meta_class_weight == "auto"
        if explicit and self.meta == "auto":
            combiners = ("logistic",)  # explicit per-class costs: the meta-learner applies them too
        weights: dict[str, Any] = {}
        if "logistic" in combiners:
            if explicit:
                weights["logistic"] = self._encoded_class_weight()
            elif self.meta_class_weight == "auto":
                weights["logistic"] = None
                if self.class_weight is not None:
                    weights["logistic, class weights"] = self._encoded_class_weight()
            elif self.meta_class_weight == "same":
                weights["logistic"] = self._encoded_class_weight()
            else:
                weights["logistic"] = self.meta_class_weight
        simple = [c for c in ("mean", "greedy", "best") if c in combiners]
        candidates = simple + list(weights)
        if len(candidates) == 1:
            only = candidates[0]
            return (only, None, {}) if only in simple else ("logistic", weights[only], {})
        base = oof.reshape(y_enc.size, n_learners, n_classes).transpose(1, 0, 2)
        scores, losses = {}, {}
        for label in candidates:
            proba = np.empty((y_enc.size, n_classes))
            if label == "mean":
                proba = base.mean(axis=0)
            else:
                for test_idx in folds:
                    train_idx = np.setdiff1d(np.arange(y_enc.size), test_idx)
                    if np.unique(y_enc[train_idx]).size < 2:
                        proba[test_idx] = np.eye(n_classes)[y_enc[train_idx][0]]
                        continue
                    if label in ("greedy", "best"):
                        w = (greedy_selection_weights(base[:, train_idx], y_enc[train_idx]) if label == "greedy"
                             else best_learner_weights(base[:, train_idx], y_enc[train_idx], self.meta_metric))
                        proba[test_idx] = _WeightedMeanOfProba(w, n_classes).predict_proba(base[:, test_idx])
                        continue
                    lr = LogisticRegression(C=float(self.meta_C), class_weight=weights[label], max_iter=2000,
                                            random_state=seed).fit(feats[train_idx], y_enc[train_idx])
                    proba[test_idx] = _proba_full(lr, feats[test_idx], n_classes)
            scores[label] = float(f1_score(y_enc, proba.argmax(axis=1), average="weighted"))
            losses[label] = _log_loss_rows(proba / proba.sum(axis=1, keepdims=True), y_enc)
        if self.meta_metric == "log_loss":
            best = min(candidates, key=lambda k: (losses[k], candidates.index(k)))
        else:
            best = max(candidates, key=lambda k: (scores[k], -candidates.index(k)))
        selection = {"f1_weighted": scores, "log_loss": losses, "metric": self.meta_metric, "chosen": best}
        if best in simple:
            return best, None, selection
        return "logistic", weights[best], selection

    def _fit_combiner(self, meta: str, class_weight, feats: np.ndarray, oof: np.ndarray, y_enc: np.ndarray,
                      n_learners: int, n_classes: int, seed: int):
        """The fitted combiner ``meta`` on all out-of-fold rows."""
        if meta == "logistic":
            lr = LogisticRegression(C=float(self.meta_C), class_weight=class_weight, max_iter=2000,
                                    random_state=seed)
            return lr.fit(feats, y_enc)
        if meta in ("greedy", "best"):
            base = oof.reshape(y_enc.size, n_learners, n_classes).transpose(1, 0, 2)
            w = (greedy_selection_weights(base, y_enc) if meta == "greedy"
                 else best_learner_weights(base, y_enc, self.meta_metric))
            return _WeightedMeanOfProba(w, n_classes)
        return _MeanOfProba(n_learners, n_classes)

    def _splitter(self, y_enc: np.ndarray, groups, seed: int):
        if groups is not None:
            n_groups = np.unique(groups).size
            n_splits = min(int(self.cv_folds), n_groups)
            if n_splits < 2:
                raise ValueError(f"stacking needs at least 2 CV groups, got {n_groups}")
            return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        smallest = int(np.bincount(y_enc).min())
        n_splits = min(int(self.cv_folds), smallest)
        if n_splits >= 2:
            return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return KFold(n_splits=min(int(self.cv_folds), y_enc.size), shuffle=True, random_state=seed)

    def fit(self, X, y, groups=None):
        """Fit the ensemble; ``groups`` (spatial block or polygon ids) keep groups out of their own folds."""
        self._check_params()
        if y is None:
            raise ValueError("requires y to be passed, but the target y is None")
        X, y = self._validate_X(X, reset=True, y=y)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        n_classes = self.classes_.size
        if n_classes < 2:
            raise ValueError(f"the ensemble needs at least 2 classes, got 1 class ({self.classes_[0]!r})")
        y_enc = encoder.transform(y).astype(np.int64)
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape[0] != X.shape[0]:
                raise ValueError(f"groups has {groups.shape[0]} entries for {X.shape[0]} samples")

        if self.nan_policy == "impute":
            with np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: handled below
                    med = np.nanmedian(X, axis=0)
            self.fill_values_ = np.where(np.isfinite(med), med, 0.0).astype(np.float32)
            X = self._impute(X)

        rng = check_random_state(self.random_state)
        n_threads = available_threads(self.n_jobs)
        cv_seed = int(rng.randint(np.iinfo(np.int32).max))
        learners = self._learners(n_threads, rng, X.shape[0])
        self.learner_names_ = [name for name, _ in learners]
        n_learners = len(learners)

        splitter = self._splitter(y_enc, groups, cv_seed)
        split_args = (X, y_enc, groups) if groups is not None else (X, y_enc)
        splits = list(splitter.split(*split_args))
        test_folds = [test_idx for _, test_idx in splits]
        X = self._select_features(X, y_enc, splits, n_threads, int(rng.randint(np.iinfo(np.int32).max)))

        def oof_of(proto, X_, folds):
            """Out-of-fold probabilities of ``proto`` over ``folds`` and LightGBM's final tree count."""
            return out_of_fold_proba(proto, X_, y_enc, folds, n_classes, early_stopping=self.early_stopping)

        from .tuning import resolve_grids, tune_learner

        grids = resolve_grids(self.tuning, [b for b in self.base_learners if isinstance(b, str)])
        oof = np.full((X.shape[0], n_learners * n_classes), np.nan)
        final_rounds: list[int | None] = [None] * n_learners
        self.tuning_ = {}
        for k, (name, proto) in enumerate(learners):
            if isinstance(self.base_learners[k], str) and name in grids:
                result = tune_learner(proto, grids[name], X, y_enc, splits, oof_of, metric=self.tuning_metric)
                learners[k] = (name, clone(proto).set_params(**result.params))
                block, final_rounds[k] = result.oof, result.extra
                self.tuning_[f"{k}:{name}"] = result.record()
            else:
                block, final_rounds[k] = oof_of(proto, X, splits)
            oof[:, k * n_classes:(k + 1) * n_classes] = block
        if np.isnan(oof).any():  # every row must be held out exactly once
            raise RuntimeError("internal error: the stacking CV left rows without out-of-fold probabilities")
        self.oof_proba_ = oof
        self.cv_test_folds_ = test_folds

        meta_seed = int(rng.randint(np.iinfo(np.int32).max))
        feats = _meta_features(oof)
        self.meta_, self.meta_class_weight_, self.meta_selection_ = self._select_meta(
            feats, oof, y_enc, test_folds, meta_seed, n_learners, n_classes)
        self.meta_learner_ = self._fit_combiner(self.meta_, self.meta_class_weight_, feats, oof, y_enc,
                                                n_learners, n_classes, meta_seed)

        # final learners on all rows; LightGBM with the tree count chosen on the stacking folds
        self.n_estimators_used_ = {}
        finals = []
        for k, (name, proto) in enumerate(learners):
            est = clone(proto)
            if final_rounds[k] is not None:
                est.set_params(n_estimators=int(final_rounds[k]))
            if "n_estimators" in est.get_params():
                self.n_estimators_used_[f"{k}:{name}"] = int(est.get_params()["n_estimators"])
            finals.append(_fit_one(est, X, y_enc))
        self.estimators_ = finals
        importance = np.mean([_importance(e, X.shape[1]) for e in self.estimators_], axis=0)
        self.feature_importances_ = np.zeros(self.n_features_in_)
        self.feature_importances_[self._columns()] = importance
        self.n_threads_ = n_threads
        return self

    def _select_features(self, X: np.ndarray, y_enc: np.ndarray, splits, n_threads: int, seed: int) -> np.ndarray:
        """``X`` reduced to the columns feature selection keeps (all of them without it)."""
        self.selected_features_ = None
        self.feature_selection_ = None
        if self.feature_selection is None:
            return X
        from sklearn.ensemble import RandomForestClassifier

        from .selection import RANKING_TREES, select_features

        def ranker():
            return RandomForestClassifier(n_estimators=RANKING_TREES, class_weight=self._encoded_class_weight(),
                                          n_jobs=n_threads, random_state=seed)

        result = select_features(X, y_enc, splits, method=self.feature_selection, make_ranker=ranker,
                                 keep=self.feature_keep, metric=self.tuning_metric)
        self.selected_features_ = result.columns
        self.feature_selection_ = result.record()
        return np.ascontiguousarray(X[:, result.columns])

    def _columns(self) -> np.ndarray | slice:
        """The input columns the base learners see."""
        cols = getattr(self, "selected_features_", None)  # bundles from before feature selection lack it
        return slice(None) if cols is None else cols

    # ------------------------------------------------------------------ prediction
    def _prepared(self, X) -> np.ndarray:
        check_is_fitted(self, "meta_learner_")
        X = self._impute(self._validate_X(X, reset=False))
        cols = self._columns()
        return X if isinstance(cols, slice) else np.ascontiguousarray(X[:, cols])

    def predict_base_proba(self, X) -> np.ndarray:
        """Probabilities of every final base learner: ``(n_learners, n_samples, n_classes)``."""
        X = self._prepared(X)
        return self._base_proba(X)

    def _base_proba(self, X: np.ndarray, base_predictors=None) -> np.ndarray:
        n_classes = self.classes_.size
        return np.stack([_proba_full(e, X, n_classes) for e in (base_predictors or self.estimators_)])

    def predict_proba(self, X) -> np.ndarray:
        """Meta-learner probabilities ``(n_samples, n_classes)``, columns in ``classes_`` order."""
        X = self._prepared(X)
        base = self._base_proba(X)
        return self._combine(base)

    def _combine(self, base: np.ndarray) -> np.ndarray:
        """Meta-learner probabilities from the base learners' ``(n_learners, n, n_classes)``."""
        if isinstance(self.meta_learner_, (_MeanOfProba, _WeightedMeanOfProba)):
            return self.meta_learner_.predict_proba(base)
        return self.meta_learner_.predict_proba(_meta_features(np.concatenate(list(base), axis=1)))

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "meta_learner_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def predict_proba_with_base(self, X) -> tuple[np.ndarray, np.ndarray]:
        """``predict_proba`` and ``predict_base_proba`` from one pass of the base learners."""
        X = self._prepared(X)
        base = self._base_proba(X)
        return self._combine(base), base

    def predict_uncertainty(self, X) -> np.ndarray:
        """Per-class standard deviation of the base learners' probabilities ``(n_samples, n_classes)``."""
        X = self._prepared(X)
        return self._base_proba(X).std(axis=0)

    def predict_proba_and_uncertainty(self, X, *, base_predictors=None) -> tuple[np.ndarray, np.ndarray]:
        """``predict_proba`` and ``predict_uncertainty`` from one pass of the base learners.

        ``base_predictors``: one object per final base learner, in ``estimators_`` order,
        whose ``predict_proba`` (with ``classes_``) replaces the learner's (the verified
        inference engines of :mod:`ecocube.engines`).
        """
        X = self._prepared(X)
        if base_predictors is not None and len(base_predictors) != len(self.estimators_):
            raise ValueError(f"{len(base_predictors)} base predictors for {len(self.estimators_)} learners")
        base = self._base_proba(X, base_predictors)
        return self._combine(base), base.std(axis=0)


# ---------------------------------------------------------------------- regression


def make_base_regressor(name: str, *, n_estimators: int, n_threads: int, random_state: int,
                        max_depth: int | None = None, learning_rate: float = 0.1):
    """A fresh, unfitted base regressor by short name (``rf``, ``lgbm``, ``et``)."""
    if name == "rf":
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(n_estimators=n_estimators, max_depth=max_depth, n_jobs=n_threads,
                                     random_state=random_state)
    if name == "et":
        from sklearn.ensemble import ExtraTreesRegressor

        return ExtraTreesRegressor(n_estimators=n_estimators, max_depth=max_depth, n_jobs=n_threads,
                                   random_state=random_state)
    if name == "lgbm":
        from lightgbm import LGBMRegressor

        return LGBMRegressor(n_estimators=n_estimators, learning_rate=learning_rate,
                             max_depth=-1 if max_depth is None else max_depth, n_jobs=n_threads,
                             random_state=random_state, verbose=-1, deterministic=True, force_col_wise=True,
                             **LGBM_SMALL_DATA)
    raise ValueError(f"unknown base regressor {name!r}; choose among {', '.join(BASE_REGRESSORS)} "
                     f"or pass an estimator instance")


#: names accepted in ``EnsembleRegressor(base_learners=...)``
BASE_REGRESSORS = ("rf", "lgbm", "et")


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The split-conformal quantile of non-negative ``scores`` for ``coverage``.

    The ``ceil((n + 1) * coverage)``-th smallest score (``inf`` when that exceeds ``n``):
    for exchangeable data, a new score falls at or below it with probability at least
    ``coverage`` (Vovk et al. 2005; Lei et al. 2018).
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = s.size
    if n == 0:
        raise ValueError("no residuals to calibrate the interval from")
    k = math.ceil((n + 1) * float(coverage))
    return float("inf") if k > n else float(s[k - 1])


class ConvexCombination:
    """The regressor's meta-learner: non-negative weights summing to 1, no intercept,
    minimising the squared error of the out-of-fold predictions.

    A weighted mean of the learners, so it never shrinks toward the training mean (the
    non-negative least squares it replaced put weights summing to ~0.82 on the learners plus
    an intercept, and scored RMSE 30.6 m against its learners' 28.8-29.1 m on the 400-point
    run of ``tests/test_regression.py``), and on the rows it is fitted on it is at least as
    good as the best learner alone (a single learner is one of the weightings it searches).
    ``coef_`` holds the weights, ``intercept_`` is 0.
    """

    def fit(self, P: np.ndarray, y: np.ndarray) -> ConvexCombination:
        from scipy.optimize import minimize

        P = np.asarray(P, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        n_learners = P.shape[1]
        mse = ((P - y[:, None]) ** 2).mean(axis=0)
        start = np.eye(n_learners)[int(np.argmin(mse))]  # the best single learner
        if n_learners > 1:
            scale = float(np.mean(y ** 2)) or 1.0
            res = minimize(lambda w: float(np.mean((P @ w - y) ** 2)) / scale, start,
                           jac=lambda w: 2.0 * (P.T @ (P @ w - y)) / y.size / scale, method="SLSQP",
                           bounds=[(0.0, 1.0)] * n_learners,
                           constraints=[{"type": "eq", "fun": lambda w: float(w.sum()) - 1.0,
                                         "jac": lambda w: np.ones_like(w)}],
                           options={"maxiter": 200, "ftol": 1e-12})
            w = np.clip(np.asarray(res.x, dtype=np.float64), 0.0, None)
            w = w / w.sum() if w.sum() > 0 else start
            # never worse than the best learner on the rows it was fitted on
            if np.mean((P @ w - y) ** 2) > mse.min():
                w = start
        else:
            w = start
        self.coef_ = w
        self.intercept_ = 0.0
        return self

    def predict(self, P: np.ndarray) -> np.ndarray:
        return np.asarray(P, dtype=np.float64) @ self.coef_


class EnsembleRegressor(RegressorMixin, BaseEstimator):
    """Stacked ensemble of tree regressors, a convex meta-learner and conformal intervals.

    ``fit`` mirrors :class:`EnsembleClassifier`: every base learner (default random forest
    and LightGBM) is fitted on the other folds of a (grouped) K-fold and predicts the held-out
    fold, giving each row out-of-fold predictions (``oof_predictions_``); a convex
    combination of them (``meta_learner_``, :class:`ConvexCombination`: weights >= 0
    summing to 1) is fitted on these, and the base learners are refitted on all rows.

    **Intervals** (:meth:`predict_interval`) are split-conformal intervals calibrated on the
    out-of-fold residuals of the stacked prediction, ``r_i = y_i - meta(oof_i)``. The
    interval of a new pixel is ``mean ± q · s(x)`` where ``q`` is the conformal quantile
    (:func:`conformal_quantile`) of the scores ``|r_i| / s(x_i)``:

    * ``interval="absolute"``: ``s = 1``, a constant width;
    * ``interval="normalized"`` (default): ``s(x) = σ(x) + median σ``, where ``σ(x)`` is the
      standard deviation of the trees of the random forest/extra trees learner (the first in
      ``base_learners``; the spread between base learners when none is a forest). Wider
      intervals where the trees disagree, narrower where they agree. A single learner that
      is no forest has no spread: its intervals have a constant width, as with ``absolute``
      (``interval_scale_`` says which scale a fitted model uses).

    With ``groups`` (spatial blocks or polygons) the residuals come from models that never
    saw the residual's group, so the coverage holds for new locations as well as the groups
    are exchangeable. The meta-learner (at most one weight per base learner plus an
    intercept) is fitted on the same out-of-fold predictions; this small reuse is not
    corrected for.

    Parameters (keyword-only): ``base_learners`` (``"rf"``, ``"lgbm"``, ``"et"`` or
    regressor instances), ``n_estimators``, ``max_depth``, ``learning_rate``, ``cv_folds``,
    ``interval`` (``"normalized"`` or ``"absolute"``), ``nan_policy`` (``"raise"`` or
    ``"impute"``, as in :class:`EnsembleClassifier`), ``n_jobs``, ``random_state``.

    Fitted attributes: ``n_features_in_``, ``estimators_``, ``learner_names_``,
    ``meta_learner_``, ``oof_predictions_`` (n_samples, n_learners), ``oof_residuals_``,
    ``conformity_scores_``, ``scale_offset_``, ``interval_scale_`` (what ``s(x)`` is:
    ``"tree spread of <learner>"``, ``"spread between learners"`` or ``"constant"``),
    ``cv_test_folds_``, ``fill_values_`` (impute only), ``feature_importances_``.
    """

    def __init__(
        self,
        *,
        base_learners: Sequence[Any] = ("rf", "lgbm"),
        n_estimators: int = 200,
        max_depth: int | None = None,
        learning_rate: float = 0.05,
        cv_folds: int = 5,
        interval: str = "normalized",
        nan_policy: str = "raise",
        n_jobs: int | None = None,
        random_state=None,
    ):
        self.base_learners = base_learners
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.cv_folds = cv_folds
        self.interval = interval
        self.nan_policy = nan_policy
        self.n_jobs = n_jobs
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self.nan_policy == "impute"
        return tags

    def _more_tags(self):  # pragma: no cover - scikit-learn < 1.6
        return {"allow_nan": self.nan_policy == "impute"}

    def _check_params(self) -> None:
        learners = self.base_learners
        if isinstance(learners, str) or not isinstance(learners, Sequence) or len(learners) == 0:
            raise ValueError(f"base_learners must be a non-empty sequence, got {learners!r}")
        for item in learners:
            if isinstance(item, str):
                if item not in BASE_REGRESSORS:
                    raise ValueError(f"unknown base regressor {item!r}; choose among {', '.join(BASE_REGRESSORS)}")
            elif not (hasattr(item, "fit") and hasattr(item, "predict")):
                raise ValueError(f"base learner {item!r} has no fit/predict")
        if not isinstance(self.n_estimators, numbers.Integral) or self.n_estimators < 1:
            raise ValueError(f"n_estimators must be a positive integer, got {self.n_estimators!r}")
        if self.max_depth is not None and (not isinstance(self.max_depth, numbers.Integral) or self.max_depth < 1):
            raise ValueError(f"max_depth must be None or a positive integer, got {self.max_depth!r}")
        if not isinstance(self.cv_folds, numbers.Integral) or self.cv_folds < 2:
            raise ValueError(f"cv_folds must be an integer >= 2, got {self.cv_folds!r}")
        if not (isinstance(self.learning_rate, numbers.Real) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.interval not in ("normalized", "absolute"):
            raise ValueError(f"interval must be 'normalized' or 'absolute', got {self.interval!r}")
        if self.nan_policy not in _NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {_NAN_POLICIES}, got {self.nan_policy!r}")
        if self.n_jobs is not None and (not isinstance(self.n_jobs, numbers.Integral) or self.n_jobs < 1):
            raise ValueError(
                f"n_jobs must be None (the allocation's threads) or a positive integer, got {self.n_jobs!r}; "
                "n_jobs=-1 would count the node's cores, not the job's allocation"
            )

    _validate_X = EnsembleClassifier._validate_X
    _impute = EnsembleClassifier._impute

    def _learners(self, n_threads: int, rng: np.random.RandomState) -> list[tuple[str, Any]]:
        out = []
        for item in self.base_learners:
            seed = int(rng.randint(np.iinfo(np.int32).max))
            if isinstance(item, str):
                out.append((item, make_base_regressor(item, n_estimators=int(self.n_estimators), n_threads=n_threads,
                                                      random_state=seed, max_depth=self.max_depth,
                                                      learning_rate=float(self.learning_rate))))
            else:
                est = clone(item)
                if "random_state" in est.get_params():
                    est.set_params(random_state=seed)
                out.append((type(item).__name__, est))
        return out

    def _spread(self, X: np.ndarray, base: np.ndarray) -> np.ndarray:
        """``σ(x)``: tree spread of the first forest learner, else the spread between learners."""
        forest = next((e for e in self.estimators_ if hasattr(e, "estimators_") and
                       type(e).__name__ in ("RandomForestRegressor", "ExtraTreesRegressor")), None)
        if forest is None:
            return base.std(axis=1)
        return _tree_std(forest, X)

    def fit(self, X, y, groups=None):
        """Fit the ensemble; ``groups`` keep spatial blocks/polygons out of their own folds."""
        self._check_params()
        if y is None:
            raise ValueError("requires y to be passed, but the target y is None")
        X, y = self._validate_X(X, reset=True, y=y)
        y = np.asarray(y, dtype=np.float64)
        if y.ndim != 1:
            y = y.ravel()
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape[0] != X.shape[0]:
                raise ValueError(f"groups has {groups.shape[0]} entries for {X.shape[0]} samples")
        if self.nan_policy == "impute":
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(X, axis=0)
            self.fill_values_ = np.where(np.isfinite(med), med, 0.0).astype(np.float32)
            X = self._impute(X)

        rng = check_random_state(self.random_state)
        n_threads = available_threads(self.n_jobs)
        cv_seed = int(rng.randint(np.iinfo(np.int32).max))
        learners = self._learners(n_threads, rng)
        self.learner_names_ = [name for name, _ in learners]
        if groups is not None:
            n_groups = np.unique(groups).size
            if n_groups < 2:
                raise ValueError(f"stacking needs at least 2 CV groups, got {n_groups}")
            splitter = GroupKFold(n_splits=min(int(self.cv_folds), n_groups), shuffle=True, random_state=cv_seed)
            splits = list(splitter.split(X, y, groups))
        else:
            splitter = KFold(n_splits=min(int(self.cv_folds), X.shape[0]), shuffle=True, random_state=cv_seed)
            splits = list(splitter.split(X))
        oof = np.full((X.shape[0], len(learners)), np.nan)
        spread = np.full(X.shape[0], np.nan)
        for train_idx, test_idx in splits:
            fold = []
            for k, (_, proto) in enumerate(learners):
                est = _fit_one_regressor(clone(proto), X[train_idx], y[train_idx])
                oof[test_idx, k] = est.predict(X[test_idx])
                fold.append(est)
            forest = next((e for e in fold if type(e).__name__ in ("RandomForestRegressor", "ExtraTreesRegressor")),
                          None)
            spread[test_idx] = _tree_std(forest, X[test_idx]) if forest is not None else oof[test_idx].std(axis=1)
        if np.isnan(oof).any():
            raise RuntimeError("internal error: the stacking CV left rows without out-of-fold predictions")
        self.oof_predictions_ = oof
        self.cv_test_folds_ = [t for _, t in splits]
        self.meta_learner_ = ConvexCombination().fit(oof, y)
        stacked = self.meta_learner_.predict(oof)
        self.oof_residuals_ = y - stacked
        if self.interval == "normalized":
            self.scale_offset_ = float(np.median(spread)) or float(np.std(y)) or 1.0
            scale = spread + self.scale_offset_
        else:
            self.scale_offset_ = 1.0
            scale = np.ones_like(spread)
        self.conformity_scores_ = np.abs(self.oof_residuals_) / scale
        self.estimators_ = [_fit_one_regressor(clone(proto), X, y) for _, proto in learners]
        forest_name = next((name for name, e in zip(self.learner_names_, self.estimators_)
                            if type(e).__name__ in ("RandomForestRegressor", "ExtraTreesRegressor")), None)
        if self.interval == "absolute" or (forest_name is None and len(learners) == 1):
            self.interval_scale_ = "constant"
        else:
            self.interval_scale_ = f"tree spread of {forest_name}" if forest_name else "spread between learners"
        self.feature_importances_ = np.mean([_importance(e, X.shape[1]) for e in self.estimators_], axis=0)
        self.n_threads_ = n_threads
        return self

    def _prepared(self, X) -> np.ndarray:
        check_is_fitted(self, "meta_learner_")
        return self._impute(self._validate_X(X, reset=False))

    def predict_base(self, X) -> np.ndarray:
        """Predictions of every final base learner: ``(n_samples, n_learners)``."""
        X = self._prepared(X)
        return np.column_stack([e.predict(X) for e in self.estimators_])

    def predict(self, X) -> np.ndarray:
        base = self.predict_base(X)
        return self.meta_learner_.predict(base)

    def predict_interval(self, X, coverage: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` conformal bounds holding the truth with probability ``coverage``."""
        if not (isinstance(coverage, numbers.Real) and 0 < coverage < 1):
            raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
        _, lower, upper = self.predict_with_interval(X, coverage=coverage)
        return lower, upper

    def predict_with_interval(self, X, coverage: float = 0.9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, lower, upper)`` from one pass of the base learners (what tiles need)."""
        X = self._prepared(X)
        base = np.column_stack([e.predict(X) for e in self.estimators_])
        mean = self.meta_learner_.predict(base)
        q = conformal_quantile(self.conformity_scores_, coverage)
        if self.interval == "normalized":
            half = q * (self._spread(X, base) + self.scale_offset_)
        else:
            half = np.full(mean.shape, q)
        return mean, mean - half, mean + half


def _fit_one_regressor(estimator, X: np.ndarray, y: np.ndarray):
    if type(estimator).__name__.startswith("LGBM"):
        allowed = int(estimator.get_params()["n_jobs"] or 1)
        estimator.set_params(n_jobs=max(1, min(allowed, X.shape[0] // LGBM_ROWS_PER_THREAD)))
    return estimator.fit(X, y)


def _tree_std(forest, X: np.ndarray) -> np.ndarray:
    """Standard deviation across the trees of a fitted forest regressor (no tree copies kept)."""
    X = np.asarray(X, dtype=np.float32)
    s = np.zeros(X.shape[0])
    s2 = np.zeros(X.shape[0])
    for tree in forest.estimators_:
        p = tree.predict(X)
        s += p
        s2 += p * p
    n = len(forest.estimators_)
    return np.sqrt(np.maximum(s2 / n - (s / n) ** 2, 0.0))
