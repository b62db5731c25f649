"""scripts/bench/quality.py's bookkeeping (pure): the summary of the scores over fold draws."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "bench_quality", Path(__file__).resolve().parents[1] / "scripts" / "bench" / "quality.py")
quality = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(quality)


def _run(wf1, oa, mf1, ll, per_class):
    return {"f1_weighted": wf1, "overall_accuracy": oa, "f1_macro": mf1, "log_loss": ll, "per_class_f1": per_class}


def test_summary_means_the_draws_and_names_the_chosen_combiners():
    per = {"ens": [_run(0.6, 0.5, 0.4, 1.0, [0.2, 0.8]), _run(0.8, 0.7, 0.6, 2.0, [0.4, 0.6])],
           "ens | mean": [_run(0.5, 0.5, 0.5, 0.5, [0.5, 0.5])]}
    out = quality._summarise(per, np.array([11, 13]), 12.5, {"mean": {"mean": 5}, "other": {"x": 1}})
    ens = out["ens"]
    assert ens["f1_weighted"] == pytest.approx(0.7) and ens["overall_accuracy"] == pytest.approx(0.6)
    assert ens["f1_macro"] == pytest.approx(0.5) and ens["log_loss"] == pytest.approx(1.5)
    assert ens["per_class_f1"] == {11: pytest.approx(0.3), 13: pytest.approx(0.7)}
    assert ens["f1_weighted_per_repeat"] == [0.6, 0.8]
    assert ens["f1_weighted_sd"] == pytest.approx(0.1414213562)  # sd of (0.6, 0.8), ddof 1
    assert ens["seconds"] == 12.5 and "chosen_per_fold" not in ens
    assert out["ens | mean"]["f1_weighted_sd"] == 0.0  # one draw
    assert out["ens | mean"]["chosen_per_fold"] == {"mean": 5}
    assert set(quality._summarise(per, np.array([11, 13]), 1.0)["ens | mean"]) == {
        "f1_weighted", "overall_accuracy", "f1_macro", "log_loss", "per_class_f1", "f1_weighted_per_repeat",
        "f1_weighted_sd", "seconds"}


def test_feature_sets_take_the_per_period_columns_when_the_table_also_holds_statistics():
    # extract_features returns <variable>_s<k> per-period columns and, with features.statistics,
    # <variable>_<statistic> columns after them; the sets must not stack the statistics twice
    variables = ["B02", "ndvi"]
    per_period = [f"{v}_s{k}" for v in variables for k in range(1, 13)]
    table_stats = [f"{v}_{s}" for v in variables for s in ("min", "std", "p90")]
    rng = np.random.default_rng(0)
    X = rng.random((7, len(per_period) + len(table_stats))).astype(np.float32)
    quarter = [f"{v}_s{k}" for v in variables for k in range(1, 5)] + ["B02_mean"]
    pct = per_period + [f"B02_p10_s{k}" for k in range(1, 13)] + ["B02_p10_max"]
    d = {"X_month": X, "names_month": np.array(per_period + table_stats),
         "X_quarter": rng.random((7, len(quarter))), "names_quarter": np.array(quarter),
         "X_pct": rng.random((7, len(pct))), "names_pct": np.array(pct)}
    sets = quality.feature_sets(d, "be")
    X_mi, n_mi = sets["monthly+indices"]
    assert n_mi == per_period and np.array_equal(X_mi, X[:, :24])
    X_s, n_s = sets["stats"]
    assert X_s.shape == (7, 2 * 12) and n_s[:3] == ["B02_min", "B02_max", "B02_mean"]
    X_all, n_all = sets["monthly+indices+stats"]
    assert X_all.shape == (7, 24 + 24) and len(set(n_all)) == len(n_all)
    assert sets["quarterly"][1] == quarter[:-1]
    assert sets["monthly+pct+stats"][1][:36] == pct[:-1]


def test_paired_differences_by_draw_against_own_learners_and_other_runs_only():
    def res(*wf1):
        return {"f1_weighted_per_repeat": list(wf1)}

    results = {"ens:a@F": res(0.70, 0.60, 0.65), "ens:a > lgbm@F": res(0.72, 0.58, 0.66),
               "ens:a > rf@F": res(0.60, 0.50, 0.55), "rf200-plain@M": res(0.65, 0.62, 0.64),
               "ens:b@F": res(0.1, 0.1, 0.1), "ens:b > rf@F": res(0.9, 0.9, 0.9),  # another ensemble: not paired with a
               "short@M": res(0.5, 0.5)}  # other draws: not comparable
    out = quality.paired(results)
    lg = out["ens:a@F vs ens:a > lgbm@F"]
    assert lg["mean"] == pytest.approx((-0.02 + 0.02 - 0.01) / 3) and lg["ahead"] == 1 and lg["draws"] == 3
    assert lg["se"] == pytest.approx(np.std([-0.02, 0.02, -0.01], ddof=1) / np.sqrt(3))
    assert out["ens:a@F vs ens:a > rf@F"]["ahead"] == 3
    assert out["ens:a@F vs rf200-plain@M"]["mean"] == pytest.approx((0.05 - 0.02 + 0.01) / 3)
    assert not any(k.startswith("ens:a@F vs ens:b") for k in out)
    assert "ens:a@F vs short@M" not in out
    assert set(k.split(" vs ")[0] for k in out) == {"ens:a@F", "ens:b@F"}


def test_pool_mean_is_compared_with_its_best_member_by_draw():
    spec = importlib.util.spec_from_file_location(
        "bench_quality_pool", Path(__file__).resolve().parents[1] / "scripts" / "bench" / "quality_pool.py")
    pool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pool)
    y, codes = np.array([0, 0, 1, 1]), np.array([0, 1])
    # two draws; learner a gets rows 0-2 right (draw 1: all), b rows 1-3; their mean all four
    a = np.array([[[.9, .1], [.8, .2], [.4, .6], [.6, .4]], [[.9, .1], [.8, .2], [.4, .6], [.2, .8]]])
    b = np.array([[[.4, .6], [.7, .3], [.2, .8], [.1, .9]], [[.4, .6], [.7, .3], [.2, .8], [.1, .9]]])
    plain = np.tile(np.array([[.6, .4]] * 4), (2, 1, 1))  # the majority-like baseline: wF1 1/3
    proba = {"a": a, "b": b, "rf-plain": plain}
    r = pool.compare(y, codes, proba, ["a", "b"], pool.single_scores(y, codes, proba))
    assert r["per_draw"] == [1.0, 1.0]
    # a: 3 of 4 right in draw 0 (wF1 0.7333), all in draw 1; b: 3 of 4 in both
    assert r["best_single"] == "a" and r["best_single_f1_weighted"] == pytest.approx((0.7333333 + 1.0) / 2)
    assert r["vs_best_mean"] == pytest.approx((1 - 0.7333333) / 2) and r["ahead"] == 1 and r["draws"] == 2


def test_pool_learner_variants_set_their_parameters_and_keep_the_plain_baseline_stock():
    spec = importlib.util.spec_from_file_location(
        "bench_quality_pool", Path(__file__).resolve().parents[1] / "scripts" / "bench" / "quality_pool.py")
    pool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pool)
    make, fs = pool.learner("rf:min_samples_leaf=10:max_features=0.3", 1)
    p = make(7).get_params()
    assert (p["min_samples_leaf"], p["max_features"], p["random_state"], fs) == (10, 0.3, 7, pool.DEFAULT_SET)
    make, _ = pool.learner("lgbm-es:min_child_samples=30", 1)
    ens = make(3)
    assert ens.meta == "mean" and ens.base_learners[0].get_params()["min_child_samples"] == 30
    # the baseline is scikit-learn's forest as shipped, not the ensemble's learner
    plain = pool.learner("rf-plain", 1)[0](0).get_params()
    assert (plain["min_samples_leaf"], plain["class_weight"]) == (1, None)
    with pytest.raises(SystemExit, match="unknown learner 'svm:C=1'"):
        pool.learner("svm:C=1", 1)
