#!/usr/bin/env python
"""The realistic benchmark model shared by the speed benchmarks.

An :class:`ecocube.ensemble.EnsembleClassifier` of the size a campaign trains: a random
forest of 200 unlimited-depth trees (~4.8 M nodes) and LightGBM with 200 rounds × 10
classes (2,000 trees), on 40,000 rows × 60 features (10 overlapping Gaussian classes,
noise large enough that the forest grows deep, as on real, noisy labels). The learners
are fitted on all 40,000 rows; the logistic meta-learner on their probabilities of 4,000
held-out rows (see :func:`_assemble`).

Training takes minutes on 2 cores, so the bundle is cached (joblib) under
``scripts/bench/results/`` (git-ignored) with the parameters in its file name; reruns
load it. ``python scripts/bench/realistic_model.py`` builds (or loads) it and prints its
size as a JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

N_ROWS = 40_000
N_FEATURES = 60
N_CLASSES = 10
N_TREES = 200
NOISE = 4.0


def realistic_features(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of the benchmark's feature distribution (float32) and their labels."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(12345).normal(0, 1, (N_CLASSES, N_FEATURES))  # fixed across calls
    y = rng.integers(0, N_CLASSES, n)
    X = (centers[y] + rng.normal(0, NOISE, (n, N_FEATURES))).astype(np.float32)
    return X, y


def _bundle_class():
    try:
        from ecocube.bundle import ModelBundle
    except ImportError:  # before ecocube.bundle existed
        from ecocube.ensemble import ModelBundle  # noqa: F401
    return ModelBundle


def _fit_part(kind: str, seed: int, n_estimators: int, X: np.ndarray, y: np.ndarray):
    from ecocube.ensemble import _fit_one, make_base_learner

    est = make_base_learner(kind, n_estimators=n_estimators, class_weight="balanced", n_threads=1,
                            random_state=seed)
    if kind == "rf":  # leaves of one row, as before FOREST_MIN_SAMPLES_LEAF: the largest forest a
        est.set_params(min_samples_leaf=1)  # campaign grows, and the same model as earlier figures
    return _fit_one(est, X, y)


def _assemble(X: np.ndarray, y: np.ndarray, X_meta: np.ndarray, y_meta: np.ndarray, processes: int):
    """An EnsembleClassifier with the benchmark's learners, fitted in ``processes`` worker processes.

    The forest is fitted as ``processes - 1`` sub-forests with their own seeds and merged
    (the trees of a random forest are independent); the meta-learner is fitted on the
    learners' probabilities of held-out rows (hold-out stacking instead of the K-fold
    out-of-fold stacking of ``EnsembleClassifier.fit``: the same model to predict with, at
    a fraction of the training CPU on a shared machine).
    """
    from joblib import Parallel, delayed
    from sklearn.linear_model import LogisticRegression

    from ecocube.ensemble import EnsembleClassifier, _importance

    n_rf = max(1, processes - 1)
    sizes = [N_TREES // n_rf + (1 if i < N_TREES % n_rf else 0) for i in range(n_rf)]
    jobs = [("rf", 100 + i, n) for i, n in enumerate(sizes)] + [("lgbm", 7, N_TREES)]
    parts = Parallel(n_jobs=len(jobs), backend="loky")(delayed(_fit_part)(k, s, n, X, y) for k, s, n in jobs)
    rf, lgbm = parts[0], parts[-1]
    for extra in parts[1:-1]:
        rf.estimators_ += extra.estimators_
    rf.n_estimators = len(rf.estimators_)
    model = EnsembleClassifier(base_learners=("rf", "lgbm"), n_estimators=N_TREES, meta="logistic", n_jobs=1,
                               random_state=0)
    model.classes_ = np.arange(1, N_CLASSES + 1)  # the class codes; the learners see 0..N_CLASSES-1
    model.n_features_in_ = X.shape[1]
    model.estimators_ = [rf, lgbm]
    model.learner_names_ = ["rf", "lgbm"]
    base = np.concatenate([e.predict_proba(X_meta) for e in model.estimators_], axis=1)
    try:  # what the meta-learner sees (log probabilities since the ensemble's product-of-experts change)
        from ecocube.ensemble import _meta_features
    except ImportError:
        def _meta_features(stacked):
            return stacked
    model.meta_learner_ = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(
        _meta_features(base), y_meta)
    model.oof_proba_ = base
    model.cv_test_folds_ = []
    model.feature_importances_ = np.mean([_importance(e, X.shape[1]) for e in model.estimators_], axis=0)
    model.n_threads_ = 1
    return model


def realistic_bundle(*, processes: int = 3, rebuild: bool = False, verbose: bool = True):
    """The cached realistic bundle (trained and saved on the first call).

    Seeds are fixed, so a rebuild gives the same model.
    """
    import joblib

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"realistic-model-{N_ROWS}x{N_FEATURES}-c{N_CLASSES}-t{N_TREES}-n{NOISE:g}.joblib"
    if path.exists() and not rebuild:
        return joblib.load(path)
    X, y = realistic_features(N_ROWS, seed=0)
    X_meta, y_meta = realistic_features(N_ROWS // 10, seed=1)
    t0 = time.perf_counter()
    model = _assemble(X, y, X_meta, y_meta, processes)
    if verbose:
        print(f"trained the realistic model in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    codes = list(range(1, N_CLASSES + 1))
    bundle = _bundle_class()(model=model, feature_names=[f"f{i:02d}" for i in range(N_FEATURES)],
                             classes=codes, class_names=[f"class{c}" for c in codes],
                             colors=["#000000"] * N_CLASSES, metadata={"benchmark": "realistic"})
    tmp = path.with_suffix(".tmp")
    joblib.dump(bundle, tmp)
    tmp.replace(path)
    return bundle


def describe(bundle) -> dict:
    model = bundle.model
    out = {"rows": N_ROWS, "features": N_FEATURES, "classes": N_CLASSES}
    for name, est in zip(model.learner_names_, model.estimators_):
        if hasattr(est, "estimators_"):
            out[f"{name}_trees"] = len(est.estimators_)
            out[f"{name}_nodes"] = int(sum(t.tree_.node_count for t in est.estimators_))
        elif hasattr(est, "booster_"):
            out[f"{name}_trees"] = int(est.booster_.num_trees())
    return out


if __name__ == "__main__":
    print(json.dumps(describe(realistic_bundle())))
