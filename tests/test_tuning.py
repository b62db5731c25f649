"""Per-learner tuning on the stacking folds (ecocube.tuning) and its hook in EnsembleClassifier."""

from __future__ import annotations

import numpy as np
import pytest

import ecocube.selection
import ecocube.tuning
from ecocube.ensemble import EnsembleClassifier
from ecocube.train import cross_validate
from ecocube.tuning import DEFAULT_GRIDS, candidates, check_grids, resolve_grids, score_proba, tune_learner


def _table(n_groups=30, per=12, seed=0):
    """Rows whose first column is the row id (unique), a group per polygon, 3 classes from columns 1-2."""
    rng = np.random.default_rng(seed)
    n = n_groups * per
    groups = np.repeat(np.arange(n_groups), per)
    centre = rng.normal(size=(n_groups, 4))[groups]
    X = np.column_stack([np.arange(n), centre + rng.normal(scale=0.3, size=(n, 4))]).astype(np.float32)
    y = (X[:, 1] > 0).astype(int) + (X[:, 2] > 0.7).astype(int)
    return X, y, groups


def test_candidates_are_every_combination_in_order():
    assert candidates({"a": (1, 2), "b": ("x", "y", "z")}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
        {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"}]


def test_grids_resolve_and_bad_grids_name_learner_and_parameter():
    assert resolve_grids(None, ["rf"]) == {} and resolve_grids("none", ["rf"]) == {}
    assert resolve_grids("grid", ["rf", "lgbm", "rf"]) == {"rf": DEFAULT_GRIDS["rf"], "lgbm": DEFAULT_GRIDS["lgbm"]}
    assert resolve_grids({"lgbm": {"num_leaves": [4, 8]}}, ["lgbm"]) == {"lgbm": {"num_leaves": (4, 8)}}
    with pytest.raises(ValueError, match=r"tuning grid for 'lgbm': 'num_leaf' cannot be tuned; choose among num_leaves"):
        check_grids({"lgbm": {"num_leaf": [4]}})
    with pytest.raises(ValueError, match=r"'et', which is not among the base learners \(rf\)"):
        check_grids({"et": {"min_samples_leaf": [1]}}, ["rf"])
    with pytest.raises(ValueError, match=r"min_samples_leaf needs a non-empty list of values"):
        check_grids({"rf": {"min_samples_leaf": []}})
    with pytest.raises(ValueError, match="unknown learner 'svm'"):
        check_grids({"svm": {"C": [1]}})


def test_score_is_minus_log_loss_or_weighted_f1():
    proba = np.array([[0.5, 0.5], [0.1, 0.9], [0.8, 0.2]])
    y = np.array([0, 1, 1])
    assert score_proba(proba, y, "log_loss") == pytest.approx(np.mean(np.log([0.5, 0.9, 0.2])))
    # argmax: 0 (tie, first), 1, 0 -> class 0: P 1/2 R 1 F1 2/3; class 1: P 1 R 1/2 F1 2/3
    assert score_proba(proba, y, "f1_weighted") == pytest.approx(2 / 3)


def test_tune_learner_picks_the_best_candidate_and_keeps_its_oof():
    from sklearn.tree import DecisionTreeClassifier

    X, y, groups = _table()
    folds = [(np.flatnonzero(groups % 3 != k), np.flatnonzero(groups % 3 == k)) for k in range(3)]

    def oof_of(est, X_, folds_):
        out = np.zeros((X_.shape[0], 3))
        for tr, te in folds_:
            e = est.fit(X_[tr][:, 1:], y[tr])
            out[np.ix_(te, e.classes_)] = e.predict_proba(X_[te][:, 1:])
        return out, None

    res = tune_learner(DecisionTreeClassifier(random_state=0), {"max_depth": (1, 4)}, X, y, folds, oof_of)
    # depth 1 cannot separate three classes: its log loss is worse than depth 4's (computed here by hand)
    by_depth = {c["params"]["max_depth"]: c["score"] for c in res.scores}
    ref = {d: float(np.mean(np.log(np.clip(oof_of(DecisionTreeClassifier(max_depth=d, random_state=0), X, folds)[0]
                                           [np.arange(y.size), y], 1e-6, 1)))) for d in (1, 4)}
    assert by_depth == pytest.approx(ref)
    assert res.params == {"max_depth": max(ref, key=ref.get)}
    assert np.array_equal(res.oof, oof_of(DecisionTreeClassifier(random_state=0, **res.params), X, folds)[0])


def test_tuning_and_selection_never_see_the_outer_test_fold(monkeypatch):
    """Inside cross_validate, the tuner and the selector receive only an outer fold's training
    rows (the row ids in column 0 say which), and their inner folds keep polygons apart."""
    X, y, groups = _table()
    seen: dict[str, list] = {"tune": [], "select": []}
    real_tune, real_select = ecocube.tuning.tune_learner, ecocube.selection.select_features

    def _record(kind, X_, folds):
        ids = X_[:, 0].astype(int)
        for tr, te in folds:
            assert not set(groups[ids[tr]]) & set(groups[ids[te]])  # inner folds: polygons apart
        assert np.array_equal(np.sort(np.concatenate([te for _, te in folds])), np.arange(ids.size))
        seen[kind].append(set(ids.tolist()))

    def tune(proto, grid, X_, y_, folds, oof_of, **kw):
        _record("tune", X_, folds)
        return real_tune(proto, grid, X_, y_, folds, oof_of, **kw)

    def select(X_, y_, folds, **kw):
        _record("select", X_, folds)
        return real_select(X_, y_, folds, **kw)

    monkeypatch.setattr(ecocube.tuning, "tune_learner", tune)
    monkeypatch.setattr(ecocube.selection, "select_features", select)
    # feature_keep (1.0,): the tuner, called after selection, still gets the id column 0
    make = lambda t: EnsembleClassifier(base_learners=("lgbm", "rf"), n_estimators=10, cv_folds=3,  # noqa: E731
                                        tuning={"lgbm": {"num_leaves": [4, 8]}}, feature_selection="importance",
                                        feature_keep=(1.0,), n_jobs=1, random_state=0)
    _, fold_of, _ = cross_validate(make, X, y, groups, folds=4, random_state=0, threads=1)
    assert sorted(np.unique(fold_of).tolist()) == [0, 1, 2, 3]
    # one tuned learner (lgbm): one tuner call per outer fold; the selector once per outer fold
    assert len(seen["tune"]) == 4 and len(seen["select"]) == 4
    for kind in ("tune", "select"):
        for k, rows in enumerate(seen[kind]):
            test_ids = set(np.flatnonzero(fold_of == k).tolist())
            assert rows == set(range(y.size)) - test_ids, (kind, k)  # exactly the training rows of fold k


def test_tuned_ensemble_records_choice_and_uses_it_in_the_final_learner():
    X, y, groups = _table()
    m = EnsembleClassifier(base_learners=("lgbm", "et"), n_estimators=20, cv_folds=3, n_jobs=1, random_state=0,
                           tuning={"lgbm": {"num_leaves": [3, 15], "min_child_samples": [5, 40]}}).fit(
        X[:, 1:], y, groups=groups)
    rec = m.tuning_["0:lgbm"]
    assert "1:et" not in m.tuning_  # no grid for et: not tuned
    assert len(rec["candidates"]) == 4
    best = max(rec["candidates"], key=lambda c: c["score"])
    assert rec["chosen"] == best["params"] and rec["score"] == best["score"]
    params = m.estimators_[0].get_params()
    assert {k: params[k] for k in rec["chosen"]} == rec["chosen"]
    # the meta-learner saw the chosen candidate's out-of-fold probabilities: they score rec["score"]
    y_enc = np.searchsorted(m.classes_, y)
    assert score_proba(m.oof_proba_[:, :3], y_enc, "log_loss") == pytest.approx(rec["score"])


def test_without_tuning_or_selection_nothing_is_recorded():
    X, y, groups = _table(n_groups=12)
    m = EnsembleClassifier(base_learners=("rf",), n_estimators=5, cv_folds=3, n_jobs=1, random_state=0).fit(
        X[:, 1:], y, groups=groups)
    assert m.tuning_ == {} and m.selected_features_ is None and m.feature_selection_ is None
    with pytest.raises(ValueError, match="tuning_metric must be one of"):
        EnsembleClassifier(tuning_metric="auc").fit(X[:, 1:], y)
    with pytest.raises(ValueError, match="feature_selection must be None or one of"):
        EnsembleClassifier(feature_selection="lasso").fit(X[:, 1:], y)
