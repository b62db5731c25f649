"""Feature selection inside the fit (ecocube.selection) and its hook in EnsembleClassifier."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from ecocube.ensemble import EnsembleClassifier
from ecocube.selection import check_keep, n_kept, select_features


def _table(seed=0, n_groups=30, per=10, noise=10):
    """Columns 0 and 3 carry the class; ``noise`` other columns are noise."""
    rng = np.random.default_rng(seed)
    n = n_groups * per
    groups = np.repeat(np.arange(n_groups), per)
    X = rng.normal(size=(n, 2 + noise)).astype(np.float32)
    X[:, [0, 3]] = rng.normal(size=(n_groups, 2))[groups] + rng.normal(scale=0.2, size=(n, 2))
    y = (X[:, 0] + X[:, 3] > 0).astype(int)
    folds = [(np.flatnonzero(groups % 3 != k), np.flatnonzero(groups % 3 == k)) for k in range(3)]
    return X, y, groups, folds


def _ranker():
    return RandomForestClassifier(n_estimators=50, random_state=0, n_jobs=1)


def test_keep_shares_are_checked_and_sorted():
    assert check_keep([0.25, 1, 0.5, 0.5]) == (1.0, 0.5, 0.25)
    assert n_kept(0.25, 10) == 3 and n_kept(0.01, 10) == 1 and n_kept(1.0, 10) == 10
    for bad in ([0], [1.5], [], "0.5", [True]):
        with pytest.raises(ValueError, match="feature selection keep"):
            check_keep(bad)


@pytest.mark.parametrize("method", ["importance", "rfe"])
def test_selection_keeps_the_informative_columns(method):
    X, y, _, folds = _table()
    res = select_features(X, y, folds, method=method, make_ranker=_ranker, keep=(1.0, 0.5, 0.17))
    # 12 columns, two informative: the smallest share (ceil(0.17 * 12) = 3 columns) scores best
    assert set(res.scores) == {1.0, 0.5, 0.17}
    assert res.share == max(res.scores, key=res.scores.get) == 0.17
    assert res.columns.size == 3 and {0, 3} <= set(res.columns.tolist())
    assert list(res.columns) == sorted(res.columns)  # input order
    rec = res.record([f"f{i}" for i in range(12)])
    assert rec["selected"] == [f"f{c}" for c in res.columns] and rec["n_selected"] == 3


def test_a_single_share_needs_no_cv_and_keeps_the_top_columns():
    X, y, _, folds = _table()
    res = select_features(X, y, folds, method="importance", make_ranker=_ranker, keep=(2 / 12,))
    assert res.scores == {} and res.share == pytest.approx(2 / 12)
    assert res.columns.tolist() == [0, 3]


def test_ensemble_predicts_with_the_selected_columns_only():
    X, y, groups, _ = _table()
    m = EnsembleClassifier(base_learners=("rf", "lgbm"), n_estimators=20, cv_folds=3, n_jobs=1, random_state=0,
                           feature_selection="rfe", feature_keep=(1.0, 0.5, 0.17)).fit(X, y, groups=groups)
    cols = m.selected_features_
    assert m.n_features_in_ == 12 and m.feature_selection_["columns"] == cols.tolist()
    assert all(e.n_features_in_ == cols.size for e in m.estimators_)
    dropped = [c for c in range(12) if c not in set(cols.tolist())]
    assert dropped and np.all(m.feature_importances_[dropped] == 0) and m.feature_importances_.sum() > 0
    changed = X.copy()
    changed[:, dropped] = 1e6  # nonsense in every column selection dropped: no effect
    assert np.array_equal(m.predict_proba(changed), m.predict_proba(X))
    moved = X.copy()
    moved[:, cols] = -moved[:, cols]  # the kept columns do matter
    assert not np.array_equal(m.predict_proba(moved), m.predict_proba(X))
