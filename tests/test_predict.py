"""Block-wise prediction: compact outputs, nodata for unfilled pixels, thread budget."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from ecocube.predict import (
    CLASS_NODATA,
    PROBA_NODATA,
    UNCERTAINTY_NODATA,
    learner_threads,
    predict_block,
    predicted_mask,
)


class _Bundle:
    """A minimal bundle: two random forests averaged, per-class std as uncertainty."""

    def __init__(self, X, y, codes, n_jobs=3):
        self.classes = list(codes)
        self.estimators_ = [RandomForestClassifier(n_estimators=8, random_state=s, n_jobs=n_jobs).fit(X, y)
                            for s in (0, 1)]
        self.model = self

    def _base(self, X):
        return np.stack([e.predict_proba(X) for e in self.estimators_])

    def predict_proba(self, X):
        return self._base(X).mean(axis=0)

    def predict_uncertainty(self, X):
        return self._base(X).std(axis=0)


@pytest.fixture(scope="module")
def training():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5)).astype(np.float32)
    y = np.where(X[:, 0] > 0.5, 2, np.where(X[:, 1] > 0, 1, 0))
    return X, y


def test_outputs_match_the_model_and_mark_unfilled_pixels(training):
    X, y = training
    bundle = _Bundle(X, y, codes=[11, 13, 99])
    rng = np.random.default_rng(1)
    Xp = rng.normal(size=(5000, 5)).astype(np.float32)
    Xp[10, 2] = np.nan
    Xp[20, :] = np.nan
    Xp[30, 4] = np.inf
    proba, hard, unc = predict_block(bundle, Xp, threads=2, chunk_rows=700)
    assert proba.dtype == np.uint8 and proba.shape == (3, 5000)
    assert hard.dtype == np.uint16 and hard.shape == (5000,)
    assert unc.dtype == np.uint8 and unc.shape == (5000,)

    ok = predicted_mask(Xp)
    assert ok.sum() == 4997 and not ok[[10, 20, 30]].any()
    assert (proba[:, ~ok] == PROBA_NODATA).all()
    assert (hard[~ok] == CLASS_NODATA).all() and (unc[~ok] == UNCERTAINTY_NODATA).all()

    p = bundle.predict_proba(Xp[ok])
    best = p.argmax(axis=1)
    np.testing.assert_array_equal(hard[ok], np.array([11, 13, 99])[best])
    np.testing.assert_array_equal(proba[:, ok], np.rint(p.T * 100).astype(np.uint8))
    u = bundle.predict_uncertainty(Xp[ok])[np.arange(best.size), best]
    np.testing.assert_array_equal(unc[ok], np.rint(u * 100).astype(np.uint8))
    assert set(np.unique(hard[ok])) == {11, 13, 99}
    assert proba[:, ok].max() <= 100 and unc[ok].max() <= 100
    # sums of rounded percentages stay near 100
    assert np.abs(proba[:, ok].astype(int).sum(axis=0) - 100).max() <= 2


def test_threads_do_not_change_results(training):
    X, y = training
    bundle = _Bundle(X, y, codes=[1, 2, 3])
    Xp = np.random.default_rng(2).normal(size=(3000, 5)).astype(np.float32)
    one = predict_block(bundle, Xp, threads=1)
    two = predict_block(bundle, Xp, threads=2, chunk_rows=256)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_learners_run_single_threaded_during_prediction_and_are_restored(training):
    X, y = training
    bundle = _Bundle(X, y, codes=[1, 2, 3], n_jobs=7)
    seen = []
    lock = threading.Lock()
    original = RandomForestClassifier.predict_proba

    class Spy(RandomForestClassifier):
        def predict_proba(self, X):
            with lock:
                seen.append(self.n_jobs)
            return original(self, X)

    for est in bundle.estimators_:
        est.__class__ = Spy
    predict_block(bundle, np.zeros((100, 5), np.float32), threads=2)
    assert seen and set(seen) == {1}
    assert [e.n_jobs for e in bundle.estimators_] == [7, 7]
    with learner_threads(bundle, 2):
        assert [e.n_jobs for e in bundle.estimators_] == [2, 2]
    assert [e.n_jobs for e in bundle.estimators_] == [7, 7]


def test_all_unfilled_block_predicts_nothing(training):
    X, y = training
    bundle = _Bundle(X, y, codes=[1, 2, 3])
    proba, hard, unc = predict_block(bundle, np.full((50, 5), np.nan, np.float32), threads=2)
    assert (proba == PROBA_NODATA).all() and (hard == CLASS_NODATA).all() and (unc == UNCERTAINTY_NODATA).all()


def test_per_pixel_uncertainty_is_accepted_and_bad_models_are_refused():
    class Fixed:
        classes = [5, 6]

        def __init__(self, proba, unc):
            self.p, self.u = proba, unc

        def predict_proba(self, X):
            return np.tile(self.p, (X.shape[0], 1))

        def predict_uncertainty(self, X):
            return np.full(X.shape[0], self.u) if np.ndim(self.u) == 0 else np.tile(self.u, (X.shape[0], 1))

    proba, hard, unc = predict_block(Fixed([0.254, 0.746], 0.126), np.zeros((4, 2)), threads=1)
    assert proba[:, 0].tolist() == [25, 75] and hard.tolist() == [6] * 4 and unc.tolist() == [13] * 4
    with pytest.raises(ValueError, match="probabilities of shape"):
        predict_block(Fixed([0.2, 0.3, 0.5], 0.1), np.zeros((4, 2)), threads=1)
    with pytest.raises(ValueError, match="non-finite"):
        predict_block(Fixed([np.nan, 1.0], 0.1), np.zeros((4, 2)), threads=1)
    with pytest.raises(ValueError, match="uncertainty of shape"):
        predict_block(Fixed([0.5, 0.5], [0.1, 0.1, 0.1]), np.zeros((4, 2)), threads=1)
    bad_codes = Fixed([0.5, 0.5], 0.1)
    bad_codes.classes = [1, 70000]
    with pytest.raises(ValueError, match="class codes"):
        predict_block(bad_codes, np.zeros((4, 2)), threads=1)
    with pytest.raises(ValueError, match="2-D"):
        predict_block(Fixed([0.5, 0.5], 0.1), np.zeros(4), threads=1)
