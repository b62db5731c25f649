"""evaluation.py: CV block size from the data, comparisons on the same folds, calibration, regression scores."""

from __future__ import annotations

import numpy as np
import pytest

from ecocube.evaluation import (
    choose_block_size,
    classification_scores,
    compare_models,
    label_semivariogram,
    regression_scores,
    reliability,
)


def _patchy_labels(patch: float, n: int = 1500, extent: float = 5000.0, seed: int = 0):
    """Points whose class is constant over square patches of edge ``patch``."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, extent, n), rng.uniform(0, extent, n)
    k = int(np.ceil(extent / patch))
    patch_class = rng.integers(0, 3, (k, k))
    return x, y, patch_class[(y // patch).astype(int), (x // patch).astype(int)]


def test_block_size_follows_the_autocorrelation_range():
    small = choose_block_size(*_patchy_labels(150.0), folds=5, pixel_size=10.0)
    large = choose_block_size(*_patchy_labels(600.0), folds=5, pixel_size=10.0)
    assert small["rule"] == large["rule"] == "the labels' autocorrelation range"
    # pairs stop sharing a label at about the patch edge
    assert 50 <= small["block_size"] <= 400, small
    assert 300 <= large["block_size"] <= 1200, large
    assert large["block_size"] > 2 * small["block_size"]
    assert small["sill"] == pytest.approx(2 / 3, abs=0.06)  # 3 random classes: P(differ) = 2/3


def test_block_size_is_capped_by_the_extent():
    # one patch larger than the whole extent: labels correlated across everything
    x, y, _ = _patchy_labels(150.0, extent=400.0)
    labels = (x > 200).astype(int)
    out = choose_block_size(x, y, labels, folds=5, pixel_size=10.0)
    assert out["block_size"] == out["cap"] <= 400.0 / 2
    assert out["cap"] == pytest.approx(np.sqrt(out["extent"][0] * out["extent"][1] / 15), rel=1e-3)
    few = choose_block_size(x[:10], y[:10], labels[:10], folds=5, pixel_size=10.0)
    assert few["rule"].startswith("too few sample pairs") and few["block_size"] == few["cap"]


def test_semivariogram_counts_pairs():
    # points 10 m apart on a line, labels 0 0 1 1; bins cover half the largest distance (0..15 m)
    x = np.array([0.0, 10.0, 20.0, 30.0])
    centres, gamma, counts = label_semivariogram(x, np.zeros(4), np.array([0, 0, 1, 1]), n_bins=3)
    np.testing.assert_allclose(centres, [2.5, 7.5, 12.5])
    assert counts.tolist() == [0, 0, 3]  # the three 10 m pairs; 20 m and 30 m pairs are beyond
    assert gamma[2] == pytest.approx(1 / 3)  # of those, only (10, 20) differs


def test_compare_models_warns_when_a_learner_beats_the_ensemble():
    classes = np.array([1, 2])
    y = np.array([1, 1, 1, 2, 2, 2])
    good = np.eye(2)[np.searchsorted(classes, y)]  # always right
    bad = good[:, ::-1]  # always wrong
    majority = np.tile([1.0, 0.0], (6, 1))
    out = compare_models(y, classes, bad, {"rf": good, "lgbm": bad}, majority)
    assert out["best"] == "rf alone"
    assert len(out["warnings"]) == 2  # rf and the majority class both beat an always-wrong ensemble
    assert "rf alone scores a higher weighted F1" in out["warnings"][0]
    fine = compare_models(y, classes, good, {"rf": good}, majority)
    assert fine["best"] == "ensemble" and fine["warnings"] == []  # a tie is no warning
    assert fine["models"]["majority class"]["overall_accuracy"] == 0.5
    assert fine["models"]["majority class"]["per_class_f1"] == {"1": pytest.approx(2 / 3), "2": 0.0}


def test_classification_scores_log_loss():
    y = np.array([0, 1])
    s = classification_scores(y, np.array([[0.8, 0.2], [0.4, 0.6]]), np.array([0, 1]))
    assert s["log_loss"] == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    assert s["overall_accuracy"] == 1.0


def test_reliability_of_calibrated_and_overconfident_probabilities():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 20000)
    right = rng.uniform(size=conf.size) < conf  # correct with exactly the stated probability
    y = np.where(right, 0, 1)
    proba = np.column_stack([conf, 1 - conf])
    assert reliability(y, proba, np.array([0, 1]))["ece"] < 0.02
    over = np.column_stack([np.full(conf.size, 0.99), np.full(conf.size, 0.01)])
    r = reliability(y, over, np.array([0, 1]))
    assert r["ece"] == pytest.approx(0.99 - right.mean(), abs=1e-9)
    assert len(r["bins"]) == 1 and r["bins"][0]["n"] == conf.size


def test_regression_scores_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    perfect = regression_scores(y, y, y - 1, y + 1)
    assert perfect["rmse"] == 0 and perfect["r2"] == 1 and perfect["ccc"] == 1
    assert perfect["interval_coverage"] == 1 and perfect["interval_mean_width"] == 2
    shifted = regression_scores(y, y + 1, y + 0.5, y + 2)
    # var(y) = 1.25; CCC = 2 * 1.25 / (1.25 + 1.25 + 1) ; R2 = 1 - 4 / 5
    assert shifted["ccc"] == pytest.approx(2.5 / 3.5)
    assert shifted["r2"] == pytest.approx(0.2)
    assert shifted["rmse"] == 1 and shifted["bias"] == 1
    assert shifted["interval_coverage"] == 0
