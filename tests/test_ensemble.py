"""EnsembleClassifier: scikit-learn conformance, out-of-fold stacking, seeds, threads, NaN."""

from __future__ import annotations

import unittest

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import estimator_checks_generator

from ecocube.bundle import ModelBundle
from ecocube.ensemble import EnsembleClassifier
from ecocube.errors import ModelError


def _fast(**kw) -> EnsembleClassifier:
    params = dict(base_learners=("rf", "lgbm"), n_estimators=5, cv_folds=3, n_jobs=1, random_state=0)
    params.update(kw)
    return EnsembleClassifier(**params)


# Checks that need optional packages this project does not depend on: scikit-learn itself
# skips them at run time (pandas is not installed; the array API needs SCIPY_ARRAY_API and
# array-api-compat; check_estimators_data_not_an_array with obj_type Pandas*). Our estimator converts every input to a float32 NumPy array anyway.
_NOT_APPLICABLE = {"check_array_api_input", "check_pandas_series", "check_dataframe_column_names_consistency",
                   "check_estimators_dtypes_pandas"}


def _conformance_cases():
    for est in (_fast(), _fast(nan_policy="impute", base_learners=("et", "lgbm"))):
        for estimator, check in estimator_checks_generator(est, legacy=True):
            name = getattr(check, "func", check).__name__
            if name in _NOT_APPLICABLE or "Pandas" in str(getattr(check, "keywords", {}).get("obj_type", "")):
                continue
            yield pytest.param(estimator, check, id=f"{est.nan_policy}-{'+'.join(est.base_learners)}-{name}")


@pytest.mark.parametrize(("estimator", "check"), list(_conformance_cases()))
@pytest.mark.slow
def test_sklearn_conformance(estimator, check):
    try:
        check(estimator)
    except unittest.SkipTest as exc:
        # check_classifier_data_not_an_array runs its NotAnArray half first (which passed
        # when we get here), then stops at its pandas half because pandas is not installed.
        assert "pandas is not installed" in str(exc), exc


# ---------------------------------------------------------------------- stacking


class _LeakDetector(ClassifierMixin, BaseEstimator):
    """A base learner that remembers the rows (ids in column 0) it was fitted on.

    ``predict_proba`` returns [1, 0] for a row it saw in training and [0, 1] for an unseen
    one, so the out-of-fold matrix shows directly whether a row's probability came from a
    model that was trained on it.
    """

    log: list = []

    def __init__(self, *, random_state=None):
        self.random_state = random_state

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.seen_ = set(np.asarray(X)[:, 0].astype(int).tolist())
        _LeakDetector.log.append(("fit", sorted(self.seen_)))
        return self

    def predict_proba(self, X):
        ids = np.asarray(X)[:, 0].astype(int)
        seen = np.array([i in self.seen_ for i in ids])
        _LeakDetector.log.append(("predict", ids.tolist()))
        p = np.zeros((ids.size, self.classes_.size))
        p[seen, 0] = 1.0
        p[~seen, -1] = 1.0
        return p


def _blobs(n=300, n_classes=3, n_features=6, seed=0, sep=1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centers = rng.normal(0, sep, (n_classes, n_features))
    X = (centers[y] + rng.normal(0, 1, (n, n_features))).astype(np.float32)
    return X, y


@pytest.mark.slow
def test_meta_learner_sees_only_out_of_fold_probabilities():
    X, y = _blobs(120)
    X[:, 0] = np.arange(X.shape[0])  # row ids
    groups = np.arange(X.shape[0]) // 10  # 12 spatial groups
    _LeakDetector.log = []
    model = EnsembleClassifier(base_learners=(_LeakDetector(), "rf"), n_estimators=5, cv_folds=4, meta="logistic",
                               n_jobs=1, random_state=1).fit(X, y, groups=groups)
    # every row held out exactly once, groups never split across train/test
    held = np.concatenate(model.cv_test_folds_)
    assert np.array_equal(np.sort(held), np.arange(120))
    for test_idx in model.cv_test_folds_:
        train_groups = set(np.setdiff1d(groups, groups[test_idx]).tolist())
        assert not set(groups[test_idx].tolist()) & train_groups
    # the detector's out-of-fold columns say "unseen" for every row
    k = model.classes_.size
    oof_detector = model.oof_proba_[:, :k]
    assert np.all(oof_detector[:, 0] == 0.0) and np.all(oof_detector[:, -1] == 1.0)
    # per fold: the detector was fitted on exactly the other folds' rows
    fits = [rows for kind, rows in _LeakDetector.log if kind == "fit"]
    assert len(fits) == len(model.cv_test_folds_) + 1  # one per fold + the final refit
    for rows, test_idx in zip(fits, model.cv_test_folds_):
        assert set(rows) == set(range(120)) - set(test_idx.tolist())
    assert fits[-1] == list(range(120))
    # and the meta-learner is exactly a logistic regression fitted on the log of oof_proba_
    ref = LogisticRegression(C=1.0, class_weight=model.meta_class_weight_, max_iter=2000,
                             random_state=model.meta_learner_.random_state).fit(
        np.log(np.clip(model.oof_proba_, 1e-4, 1.0)), y)
    np.testing.assert_allclose(model.meta_learner_.coef_, ref.coef_, rtol=1e-6, atol=1e-8)
    # whereas in-fold, the final detector has seen every row (what stacking must avoid)
    assert np.all(model.predict_base_proba(X)[0][:, 0] == 1.0)


@pytest.mark.slow
def test_stacking_is_reproducible_with_a_seed():
    X, y = _blobs(200, seed=3)
    groups = np.arange(200) // 20
    a = _fast(random_state=7).fit(X, y, groups=groups)
    b = _fast(random_state=7).fit(X, y, groups=groups)
    np.testing.assert_array_equal(a.oof_proba_, b.oof_proba_)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = _fast(random_state=8).fit(X, y, groups=groups)
    assert not np.array_equal(a.oof_proba_, c.oof_proba_)


@pytest.mark.slow
def test_ensemble_learns_separable_classes_and_uncertainty():
    X, y = _blobs(400, n_classes=3, seed=5, sep=3.0)
    Xt, yt = X[300:], y[300:]
    model = _fast(base_learners=("rf", "lgbm", "et"), n_estimators=20).fit(X[:300], y[:300],
                                                                           groups=np.arange(300) // 15)
    proba = model.predict_proba(Xt)
    assert proba.shape == (100, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert (model.predict(Xt) == yt).mean() > 0.9
    unc = model.predict_uncertainty(Xt)
    base = model.predict_base_proba(Xt)
    assert base.shape == (3, 100, 3)
    np.testing.assert_allclose(unc, base.std(axis=0))
    assert unc.min() >= 0 and unc.max() <= 0.5
    assert model.feature_importances_.shape == (6,)
    np.testing.assert_allclose(model.feature_importances_.sum(), 1.0)
    assert model.learner_names_ == ["rf", "lgbm", "et"]
    # a single learner has no spread
    single = _fast(base_learners=("rf",)).fit(X[:300], y[:300])
    assert np.all(single.predict_uncertainty(Xt) == 0)


@pytest.mark.slow
def test_string_labels_and_missing_class_in_a_fold():
    X, y = _blobs(90, n_classes=3, seed=2, sep=3.0)
    labels = np.array(["crop", "grass", "other"])[y]
    groups = np.where(y == 2, 0, 1 + np.arange(90) % 4)  # class "other" lives in one group only
    model = _fast(cv_folds=3).fit(X, labels, groups=groups)
    assert list(model.classes_) == ["crop", "grass", "other"]
    assert not np.isnan(model.oof_proba_).any()
    assert set(model.predict(X)) <= set(model.classes_)


@pytest.mark.slow
def test_class_weight_balanced_helps_the_minority():
    rng = np.random.default_rng(0)
    n_major, n_minor = 380, 20
    X = np.vstack([rng.normal(0, 1, (n_major, 4)), rng.normal(1.2, 1, (n_minor, 4))]).astype(np.float32)
    y = np.r_[np.zeros(n_major, int), np.ones(n_minor, int)]
    # the weights in every base learner and in the meta-learner (meta_class_weight="same")
    bal = _fast(n_estimators=20, meta="logistic", meta_class_weight="same").fit(X, y)
    none = _fast(n_estimators=20, meta="logistic", meta_class_weight="same", class_weight=None).fit(X, y)
    # on new minority-class rows (the training rows themselves are memorised by the forests)
    new_minor = np.random.default_rng(1).normal(1.2, 1, (300, 4)).astype(np.float32)
    assert (bal.predict(new_minor) == 1).mean() > (none.predict(new_minor) == 1).mean()


@pytest.mark.slow
def test_nan_policy():
    X, y = _blobs(60)
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _fast().fit(X, y)
    model = _fast(nan_policy="impute").fit(X, y)
    assert model.fill_values_[2] == pytest.approx(float(np.nanmedian(X[:, 2])))
    clean = X.copy()
    clean[3, 2] = model.fill_values_[2]
    np.testing.assert_array_equal(model.predict_proba(X), model.predict_proba(clean))
    fitted = _fast().fit(np.nan_to_num(X), y)
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict_proba(X)


@pytest.mark.slow
def test_threads_come_from_the_allocation(monkeypatch):
    X, y = _blobs(60)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    model = _fast(n_jobs=None).fit(X, y)
    assert model.n_threads_ == 3
    assert model.estimators_[0].n_jobs == 3  # the forest uses the allocation
    assert model.estimators_[1].n_jobs == 1  # LightGBM: one thread per 20,000 rows (60 rows here)
    big = np.repeat(X, 700, axis=0)  # 42,000 rows -> 2 threads for LightGBM
    model = _fast(n_jobs=None, base_learners=("lgbm",), n_estimators=2).fit(big, np.repeat(y, 700))
    assert model.estimators_[0].n_jobs == 2
    with pytest.raises(ValueError, match="allocation"):
        _fast(n_jobs=-1).fit(X, y)


@pytest.mark.parametrize("bad", [dict(base_learners=()), dict(base_learners=("svm",)), dict(cv_folds=1),
                                 dict(class_weight="weird"), dict(nan_policy="zero"), dict(meta_C=0)])
def test_bad_parameters(bad):
    X, y = _blobs(40)
    with pytest.raises(ValueError):
        _fast(**bad).fit(X, y)


def test_one_group_is_refused():
    X, y = _blobs(40)
    with pytest.raises(ValueError, match="2 CV groups"):
        _fast().fit(X, y, groups=np.zeros(40))


@pytest.mark.slow
def test_bundle_checks_feature_count():
    X, y = _blobs(60)
    model = _fast().fit(X, y)
    bundle = ModelBundle(model=model, feature_names=[f"f{i}" for i in range(6)], classes=[0, 1, 2],
                         class_names=["a", "b", "c"], colors=["#000000"] * 3)
    assert bundle.predict_proba(X).shape == (60, 3)
    with pytest.raises(ModelError, match="expects 6 features"):
        bundle.predict_proba(X[:, :5])


@pytest.mark.slow
def test_proba_and_uncertainty_in_one_pass_equal_the_separate_calls():
    from sklearn.datasets import make_classification

    from ecocube.ensemble import EnsembleClassifier

    X, y = make_classification(n_samples=300, n_features=6, n_informative=4, n_classes=3, random_state=1)
    # one thread: scikit-learn's forests add their trees' probabilities in thread order, so with
    # several threads two calls may differ in the last bit (leaves hold fractions, not 0 or 1)
    clf = EnsembleClassifier(n_estimators=20, cv_folds=3, n_jobs=1, random_state=0).fit(X, y)
    proba, unc = clf.predict_proba_and_uncertainty(X)
    np.testing.assert_array_equal(proba, clf.predict_proba(X))
    np.testing.assert_array_equal(unc, clf.predict_uncertainty(X))


def test_forest_leaves_hold_20_pixels_unless_the_table_is_too_small_for_them():
    from ecocube.ensemble import forest_leaf_size

    # 3 classes: 20 from 300 rows on (5 leaves of 20 per class), fewer below, never 0
    assert [forest_leaf_size(n, 3) for n in (10_000, 300, 299, 60, 14, 3)] == [20, 20, 19, 4, 1, 1]
    assert forest_leaf_size(1065, 5) == 20  # a Slovenian training fold
    X, y = _blobs(60, n_classes=3)
    small = _fast(base_learners=("rf", "et", "lgbm")).fit(X, y)
    leaves = [e.get_params().get("min_samples_leaf") for e in small.estimators_]
    assert small.forest_min_samples_leaf_ == 4 and leaves[:2] == [4, 4]
    X, y = _blobs(600, n_classes=3)
    big = _fast(base_learners=("rf", "et")).fit(X, y)
    assert [e.min_samples_leaf for e in big.estimators_] == [20, 20]
    # every leaf of every fitted tree holds at least that many rows
    for forest in big.estimators_:
        assert min(t.tree_.n_node_samples[t.tree_.children_left == -1].min() for t in forest.estimators_) >= 20
    tuned = _fast(base_learners=("rf",), tuning={"rf": {"min_samples_leaf": [2, 3]}}).fit(X, y)
    assert tuned.estimators_[0].min_samples_leaf in (2, 3)


# ---------------------------------------------------------------------- regression

from ecocube.ensemble import EnsembleRegressor, conformal_quantile  # noqa: E402


def _fast_reg(**kw) -> EnsembleRegressor:
    params = dict(base_learners=("rf", "lgbm"), n_estimators=5, cv_folds=3, n_jobs=1, random_state=0)
    params.update(kw)
    return EnsembleRegressor(**params)


def _regressor_conformance_cases():
    for est in (_fast_reg(), _fast_reg(nan_policy="impute", interval="absolute", base_learners=("et", "lgbm"))):
        for estimator, check in estimator_checks_generator(est, legacy=True):
            name = getattr(check, "func", check).__name__
            if name in _NOT_APPLICABLE or "Pandas" in str(getattr(check, "keywords", {}).get("obj_type", "")):
                continue
            yield pytest.param(estimator, check, id=f"reg-{est.interval}-{'+'.join(est.base_learners)}-{name}")


@pytest.mark.parametrize(("estimator", "check"), list(_regressor_conformance_cases()))
@pytest.mark.slow
def test_regressor_sklearn_conformance(estimator, check):
    try:
        check(estimator)
    except unittest.SkipTest as exc:
        assert "pandas is not installed" in str(exc), exc


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1, 20, dtype=float)  # 19 scores: 1..19
    # ceil(20 * 0.9) = 18 -> the 18th smallest
    assert conformal_quantile(scores, 0.9) == 18.0
    assert conformal_quantile(scores, 0.5) == 10.0
    assert conformal_quantile(scores[:5], 0.9) == float("inf")  # ceil(6 * 0.9) = 6 > 5
    with pytest.raises(ValueError, match="no residuals"):
        conformal_quantile([], 0.9)


def _spatial_regression(n_groups=60, per_group=40, seed=0):
    """A smooth target of the features + group-level (spatially correlated) noise + heteroscedastic noise."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per_group)
    X = rng.normal(0, 1, (g.size, 5)).astype(np.float32)
    group_shift = rng.normal(0, 0.5, n_groups)[g]
    y = 3 * np.sin(X[:, 0]) + X[:, 1] ** 2 + group_shift + rng.normal(0, 0.3 + 0.4 * np.abs(X[:, 2]), g.size)
    return X, y, g


@pytest.mark.parametrize("interval", ["normalized", "absolute"])
@pytest.mark.slow
def test_intervals_cover_90_percent_of_unseen_groups(interval):
    X, y, g = _spatial_regression()
    train, test = g < 40, g >= 40  # 20 groups the model never saw
    model = EnsembleRegressor(n_estimators=60, cv_folds=5, n_jobs=1, random_state=0, interval=interval)
    model.fit(X[train], y[train], groups=g[train])
    lower, upper = model.predict_interval(X[test], coverage=0.9)
    inside = (y[test] >= lower) & (y[test] <= upper)
    assert np.all(lower <= upper)
    assert 0.85 <= inside.mean() <= 0.95, inside.mean()
    # a wider nominal coverage gives wider intervals; the mean sits inside
    lo8, up8 = model.predict_interval(X[test], coverage=0.8)
    assert np.all(up8 - lo8 <= upper - lower + 1e-9) and (up8 - lo8).mean() < (upper - lower).mean()
    mean = model.predict(X[test])
    assert np.all((mean >= lower) & (mean <= upper))
    # the stacked model is better than predicting the training mean
    assert np.mean((mean - y[test]) ** 2) < 0.5 * np.var(y[test])
    # out-of-fold residuals: one per training row, from grouped folds
    assert model.oof_residuals_.shape == (int(train.sum()),)
    for fold in model.cv_test_folds_:
        held = set(g[train][fold].tolist())
        others = set(np.delete(g[train], fold).tolist())
        assert not held & others


@pytest.mark.slow
def test_normalized_intervals_are_wider_where_the_noise_is():
    X, y, g = _spatial_regression(seed=1)
    model = EnsembleRegressor(n_estimators=60, n_jobs=1, random_state=0).fit(X, y, groups=g)
    lower, upper = model.predict_interval(X, coverage=0.9)
    width = upper - lower
    assert width.std() > 0  # not a constant band
    flat = EnsembleRegressor(n_estimators=60, n_jobs=1, random_state=0, interval="absolute").fit(X, y, groups=g)
    lo, up = flat.predict_interval(X, coverage=0.9)
    np.testing.assert_allclose(up - lo, (up - lo)[0])


def test_interval_scale_says_when_the_width_is_constant():
    """``interval="normalized"`` scales by a spread; LightGBM alone has none, so its widths are
    constant, and the fitted model says so rather than passing for a normalized interval."""
    X, y, g = _spatial_regression(n_groups=20, per_group=20, seed=2)
    alone = _fast_reg(base_learners=("lgbm",)).fit(X, y, groups=g)
    lo, up = alone.predict_interval(X, coverage=0.9)
    np.testing.assert_allclose(up - lo, (up - lo)[0], rtol=1e-12)
    assert alone.interval == "normalized" and alone.interval_scale_ == "constant"
    forest = _fast_reg(base_learners=("lgbm", "rf")).fit(X, y, groups=g)
    lo, up = forest.predict_interval(X, coverage=0.9)
    assert (up - lo).std() > 0 and forest.interval_scale_ == "tree spread of rf"
    assert _fast_reg(base_learners=("lgbm", "lgbm")).fit(X, y, groups=g).interval_scale_ == "spread between learners"
    assert _fast_reg(interval="absolute").fit(X, y, groups=g).interval_scale_ == "constant"


def test_convex_meta_learner_weights_are_a_mean_of_the_learners():
    from ecocube.ensemble import ConvexCombination

    rng = np.random.default_rng(0)
    a, b, c = rng.normal(0, 1, (3, 500))
    # the target is exactly 0.3 a + 0.7 b: the weights found are those, c gets none
    m = ConvexCombination().fit(np.column_stack([a, b, c]), 0.3 * a + 0.7 * b)
    np.testing.assert_allclose(m.coef_, [0.3, 0.7, 0.0], atol=1e-5)
    assert m.intercept_ == 0.0
    # noisy learners of a target far from 0: least squares with an intercept would shrink
    # toward the mean; the convex weights sum to 1 and beat (or equal) the best learner
    y = 100 + rng.normal(0, 10, 500)
    P = np.column_stack([y + rng.normal(0, 8, 500), y + rng.normal(0, 9, 500), y + rng.normal(0, 30, 500)])
    m = ConvexCombination().fit(P, y)
    assert np.all(m.coef_ >= 0) and m.coef_.sum() == pytest.approx(1.0)
    mse = lambda p: float(np.mean((p - y) ** 2))  # noqa: E731
    assert mse(m.predict(P)) <= min(mse(P[:, k]) for k in range(3))
    assert mse(m.predict(P)) < 0.7 * mse(P[:, 0])  # two independent errors of similar size average out
    # one learner alone: weight 1
    np.testing.assert_array_equal(ConvexCombination().fit(P[:, :1], y).coef_, [1.0])


def test_regressor_bad_parameters():
    X, y, _ = _spatial_regression(n_groups=4, per_group=5)
    with pytest.raises(ValueError, match="interval must be"):
        EnsembleRegressor(interval="quantile").fit(X, y)
    with pytest.raises(ValueError, match="coverage must be in"):
        _fast_reg().fit(X, y).predict_interval(X, coverage=1.5)
    with pytest.raises(ValueError, match="n_jobs=-1"):
        EnsembleRegressor(n_jobs=-1).fit(X, y)


def test_greedy_selection_weights_by_hand():
    from ecocube.ensemble import greedy_selection_weights

    # two rows (classes 0 and 1), two learners, each sure of one row: A gives the true class
    # 0.9 then 0.5, B 0.5 then 0.9. Round 1: a tie, A (the first); round 2: B (the mean
    # 0.7/0.7 beats A twice); from then on the two alternate (A on ties): 13 A, 12 B in 25
    A = np.array([[0.9, 0.1], [0.5, 0.5]])
    B = np.array([[0.5, 0.5], [0.1, 0.9]])
    w = greedy_selection_weights(np.stack([A, B]), np.array([0, 1]), rounds=25)
    np.testing.assert_allclose(w, [13 / 25, 12 / 25])
    # a learner that is right and sure everywhere takes all the weight; a useless one none
    y = np.array([0, 1, 2, 1, 0])
    perfect = np.eye(3)[y] * 0.98 + 0.01 / 1.5
    flat = np.full((5, 3), 1 / 3)
    np.testing.assert_array_equal(greedy_selection_weights(np.stack([flat, perfect]), y), [0.0, 1.0])


@pytest.mark.slow
def test_meta_auto_picks_the_combiner_with_the_better_out_of_fold_f1():
    X, y = _blobs(240, n_classes=3, sep=1.0)
    groups = np.arange(X.shape[0]) // 12
    model = _fast(base_learners=("rf", "lgbm", "et"), n_estimators=20, meta="auto").fit(X, y, groups=groups)
    sel = model.meta_selection_
    assert set(sel["f1_weighted"]) == {"mean", "logistic", "logistic, class weights"}
    best = max(sel["f1_weighted"].values())
    assert sel["f1_weighted"][sel["chosen"]] == best
    assert model.meta_ == ("mean" if sel["chosen"] == "mean" else "logistic")
    # the chosen combiner is the one predicting
    base = model.predict_base_proba(X)
    if model.meta_ == "mean":
        np.testing.assert_allclose(model.predict_proba(X), base.mean(axis=0), rtol=1e-6)
    else:
        ref = model.meta_learner_.predict_proba(np.log(np.clip(np.concatenate(list(base), axis=1), 1e-4, 1)))
        np.testing.assert_allclose(model.predict_proba(X), ref)
    # the mean score is the weighted F1 of the averaged out-of-fold probabilities
    from sklearn.metrics import f1_score

    mean_pred = model.oof_proba_.reshape(y.size, 3, 3).mean(axis=1).argmax(axis=1)
    assert sel["f1_weighted"]["mean"] == pytest.approx(f1_score(y, mean_pred, average="weighted"))
    fixed = _fast(base_learners=("rf", "lgbm", "et"), n_estimators=20, meta="mean").fit(X, y, groups=groups)
    assert fixed.meta_ == "mean" and fixed.meta_selection_ == {}


@pytest.mark.slow
def test_lightgbm_early_stopping_sets_the_final_tree_count():
    X, y = _blobs(400, n_classes=3, sep=0.8)
    groups = np.arange(X.shape[0]) // 10
    model = _fast(base_learners=("lgbm",), n_estimators=500, cv_folds=3).fit(X, y, groups=groups)
    used = model.n_estimators_used_["0:lgbm"]
    assert 1 <= used < 500  # overlapping blobs: the held-out loss has its minimum well before 500 rounds
    assert model.estimators_[0].booster_.num_trees() == used * 3  # one tree per class and round
    off = _fast(base_learners=("lgbm",), n_estimators=60, cv_folds=3, early_stopping=False).fit(X, y, groups=groups)
    assert off.n_estimators_used_["0:lgbm"] == 60


class LGBMClassifier(__import__("lightgbm").LGBMClassifier):
    """LightGBM that logs each fit (the rows, by content, and the fitted model); named like
    LightGBM's class, as the ensemble recognises LightGBM by its class name."""

    log: list = []

    def fit(self, X, y, **kwargs):
        super().fit(X, y, **kwargs)
        LGBMClassifier.log.append((np.asarray(X).copy(), self))
        return self


def test_lightgbm_out_of_fold_models_are_fitted_like_the_final_one():
    """The combiner must see, for every learner, held-out probabilities of models fitted on
    all the other folds' rows, as it will combine learners fitted on all rows. LightGBM's
    were fitted on 80 % of those (early stopping held out 20 % of the training groups) while
    the other learners saw all of them, and stopped at the median of those stopping rounds."""
    from sklearn.metrics import log_loss

    X, y = _blobs(240, n_classes=3, sep=0.8, seed=5)  # overlapping classes: the loss turns up
    groups = np.arange(X.shape[0]) // 8
    row_of = {r.tobytes(): i for i, r in enumerate(X)}
    LGBMClassifier.log = []
    proto = LGBMClassifier(n_estimators=80, learning_rate=0.3, num_leaves=7, min_child_samples=5, verbose=-1,
                           n_jobs=1)
    model = EnsembleClassifier(base_learners=(proto, "rf"), n_estimators=10, cv_folds=3, meta="mean", n_jobs=1,
                               random_state=2).fit(X, y, groups=groups)
    folds = model.cv_test_folds_
    fits = LGBMClassifier.log
    assert len(fits) == len(folds) + 1  # one per stacking fold, then the final fit
    for (rows, _), test_idx in zip(fits, folds):
        seen = sorted(row_of[r.tobytes()] for r in rows)
        assert seen == sorted(set(range(X.shape[0])) - set(test_idx.tolist()))  # all the other folds' rows
    assert sorted(row_of[r.tobytes()] for r in fits[-1][0]) == list(range(X.shape[0]))
    # the round counts, recomputed from the fold models: summed held-out log loss per round
    loss = np.array([[log_loss(y[t], est.predict_proba(X[t], num_iteration=r), labels=[0, 1, 2], normalize=False)
                      for r in range(1, 81)] for (_, est), t in zip(fits, folds)])
    final_rounds = int(np.argmin(loss.sum(axis=0))) + 1
    assert 1 <= final_rounds < 80  # the loss has its minimum inside the range
    assert model.n_estimators_used_["0:LGBMClassifier"] == final_rounds
    assert fits[-1][1].booster_.num_trees() == final_rounds * 3
    for j, ((_, est), t) in enumerate(zip(fits, folds)):
        rounds = int(np.argmin(loss.sum(axis=0) - loss[j])) + 1  # chosen without fold j's rows
        np.testing.assert_allclose(model.oof_proba_[t, :3], est.predict_proba(X[t], num_iteration=rounds),
                                   rtol=1e-10, atol=1e-12)


def test_meta_best_is_the_learner_with_the_best_out_of_fold_score():
    from sklearn.metrics import f1_score

    X, y = _blobs(240, seed=4, sep=1.0)
    groups = np.arange(X.shape[0]) // 8
    model = _fast(base_learners=("rf", "lgbm", "et"), n_estimators=20, meta="best").fit(X, y, groups=groups)
    oof = model.oof_proba_.reshape(y.size, 3, 3)
    scores = [f1_score(y, oof[:, k].argmax(axis=1), average="weighted") for k in range(3)]
    assert model.meta_ == "best"
    expected = np.zeros(3)
    expected[int(np.argmax(scores))] = 1.0
    np.testing.assert_array_equal(model.meta_learner_.weights, expected)
    # the ensemble predicts exactly as that learner does
    k = int(np.argmax(scores))
    np.testing.assert_allclose(model.predict_proba(X), model.predict_base_proba(X)[k], rtol=1e-12)


def test_logreg_base_learner_is_a_regularised_linear_model_with_importances():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ecocube.config import ModelConfig
    from ecocube.ensemble import LOGREG_C

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 450)
    X = rng.normal(0, 1, (450, 5)).astype(np.float32)
    X[:, 1] += 3.0 * (y == 1) - 3.0 * (y == 2)  # the class is a linear function of column 1 ...
    X[:, 3] += 2.0 * (y == 0)  # ... and of column 3; the others are noise
    X[:, 4] *= 1000.0  # on a scale the standardisation has to undo
    model = _fast(base_learners=("rf", "logreg")).fit(X[:300], y[:300], groups=np.arange(300) // 15)
    assert model.learner_names_ == ["rf", "logreg"]
    scaler, linear = model.estimators_[1].steps[0][1], model.estimators_[1].steps[-1][1]
    assert isinstance(scaler, StandardScaler) and isinstance(linear, LogisticRegression)
    assert linear.C == LOGREG_C == 0.1 and linear.class_weight is not None  # balanced, as the trees
    assert (model.predict(X[300:]) == y[300:]).mean() > 0.9
    logreg_alone = model.predict_base_proba(X[300:])[1]
    assert (logreg_alone.argmax(axis=1) == y[300:]).mean() > 0.9
    # its importance is the mean |coefficient| of the standardised columns: the two signal
    # columns first; the ensemble's importances (mean over learners) still sum to 1
    imp = np.abs(linear.coef_).mean(axis=0)
    assert set(np.argsort(imp)[-2:]) == {1, 3}
    np.testing.assert_allclose(model.feature_importances_.sum(), 1.0)
    assert set(np.argsort(model.feature_importances_)[-2:]) == {1, 3}
    assert ModelConfig(classes=[{"code": 1, "name": "a"}, {"code": 2, "name": "b"}],
                       base_learners=("rf", "logreg")).base_learners == ("rf", "logreg")
