"""Inference engines: equal to the stock learners, verified at load, stock when broken."""

from __future__ import annotations

import json
import warnings

import joblib
import numpy as np
import pytest

from ecocube.bundle import ModelBundle, load_bundle, save_bundle
from ecocube.engines import (
    CANDIDATES,
    EngineWarning,
    ForestBinsEngine,
    ForestEngine,
    GBDTBinsEngine,
    GBDTEngine,
    _Bins,
    _PackedTrees,
    build_engines,
    floor_float32,
    learner_keys,
    stock_proba,
)
from ecocube.ensemble import EnsembleClassifier
from ecocube.predict import predict_block


def _data(n, n_features=8, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(0, 1.5, (n_classes, n_features))
    y = rng.integers(0, n_classes, n)
    X = (centers[y] + rng.normal(0, 1.0, (n, n_features))).astype(np.float32)
    return X, y


@pytest.fixture(scope="module")
def model():
    X, y = _data(600)
    return EnsembleClassifier(base_learners=("rf", "lgbm", "et"), n_estimators=12, cv_folds=2, n_jobs=1,
                              random_state=0).fit(X, np.array([10, 20, 30])[y])


def _threshold_rows(model, n):
    """Rows whose values sit exactly on, and one float32 step around, the forest's split thresholds."""
    rf = model.estimators_[0]
    X, _ = _data(n, seed=5)
    tree = rf.estimators_[0].tree_
    internal = np.flatnonzero(tree.children_left >= 0)
    rng = np.random.default_rng(1)
    for i in range(n):
        node = internal[rng.integers(internal.size)]
        t = np.float32(tree.threshold[node])
        X[i, tree.feature[node]] = [t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(-np.inf))][i % 3]
    return X


def _bundle(model, engine_set=None):
    return ModelBundle(model=model, feature_names=[f"f{i}" for i in range(8)], classes=[10, 20, 30],
                       class_names=["a", "b", "c"], colors=["#000000", "#111111", "#222222"],
                       engine_set=engine_set)


def test_floor_float32_keeps_comparisons_exact():
    rng = np.random.default_rng(0)
    t = rng.normal(0, 3, 2000)
    t[:5] = [0.5, 1e-30, -2.0, np.float32(1.1), 3.0000000000000004]
    lo = floor_float32(t)
    assert lo.dtype == np.float32 and np.all(lo.astype(np.float64) <= t)
    for x in (lo, np.nextafter(lo, np.float32(np.inf)), np.nextafter(lo, np.float32(-np.inf))):
        assert np.array_equal(x.astype(np.float64) <= t, x <= lo)


def test_engines_equal_stock_on_a_small_model(model):
    X = np.concatenate([_data(500, seed=3)[0], _threshold_rows(model, 300)])
    engines = [ForestEngine.from_estimator(model.estimators_[0], 3), GBDTEngine.from_estimator(model.estimators_[1], 3),
               ForestEngine.from_estimator(model.estimators_[2], 3)]
    for est, eng in zip(model.estimators_, engines):
        ref = est.predict_proba(X)
        got = eng.predict_proba(X)
        assert got.shape == ref.shape == (800, 3)
        assert np.max(np.abs(got - ref)) <= 1e-12, eng.name
        # not trivially constant: the model separates the classes
        assert np.ptp(ref[:, 0]) > 0.5
    # the forest's leaves are pure here: stored as class indices, no probability rows
    assert engines[0].packed.n_nodes == sum(t.tree_.node_count for t in model.estimators_[0].estimators_)


def test_binned_engines_equal_stock_on_a_small_model(model):
    X = np.concatenate([_data(500, seed=3)[0], _threshold_rows(model, 300)])
    engines = [ForestBinsEngine.from_estimator(model.estimators_[0], 3),
               GBDTBinsEngine.from_estimator(model.estimators_[1], 3),
               ForestBinsEngine.from_estimator(model.estimators_[2], 3)]
    for est, eng in zip(model.estimators_, engines):
        bins = eng.packed.binned()  # the narrowest rank type; LightGBM: at most 255 thresholds a feature
        assert bins.dtype == (np.uint8 if np.diff(bins.offsets).max() <= 255 else np.uint16)
        assert eng.name != "numba-gbdt-bins" or bins.dtype == np.uint8
        ref = est.predict_proba(X)
        assert np.max(np.abs(eng.predict_proba(X) - ref)) <= 1e-12, eng.name
        assert np.ptp(ref[:, 0]) > 0.5


def test_binned_rows_are_threshold_ranks():
    # ranks against np.searchsorted (independent of the kernel), values on and next to every cut, NaN
    rng = np.random.default_rng(3)
    cuts = [np.unique(rng.normal(0, 1, k)) for k in (0, 1, 7, 300)]
    offsets = np.concatenate([[0], np.cumsum([c.size for c in cuts])]).astype(np.int64)
    left = np.zeros(1, dtype=np.int32)
    bins = _Bins(np.concatenate(cuts), offsets, left.astype(np.int64), np.uint16)
    X = rng.normal(0, 1.5, (400, 4)).astype(np.float32)
    for f in (2, 3):
        c = cuts[f].astype(np.float32)
        near = np.concatenate([c, np.nextafter(c, np.float32(np.inf)), np.nextafter(c, np.float32(-np.inf))])[:100]
        X[:near.size, f] = near
    X[5, 3] = np.nan
    got = bins.rows(X)
    for f in range(4):
        ref = np.searchsorted(cuts[f], X[:, f].astype(np.float64), side="left")
        ref[np.isnan(X[:, f])] = 0  # NaN > t is false at every split: left, rank 0
        assert np.array_equal(got[:, f], ref), f
    with pytest.raises(ValueError, match="3 features, the trees split on 4"):
        bins.rows(X[:, :3])


def test_binned_forest_with_uint16_ranks_and_the_fallback():
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(7)
    X = rng.normal(0, 1, (3000, 2)).astype(np.float32)
    y = (X[:, 0] + rng.normal(0, 1, 3000) > 0).astype(int)  # noisy: deep trees, many thresholds
    rf = RandomForestClassifier(n_estimators=4, random_state=0, n_jobs=1).fit(X, y)
    eng = ForestBinsEngine.from_estimator(rf, 2)
    bins = eng.packed.binned()
    assert bins.dtype == np.uint16 and np.diff(bins.offsets).max() > 255
    Xt = rng.normal(0, 1, (2000, 2)).astype(np.float32)
    assert np.max(np.abs(eng.predict_proba(Xt) - rf.predict_proba(Xt))) <= 1e-12
    # more than 65,535 distinct thresholds on one feature: no bins, the float walk instead
    n_int = 70_000  # a comb: internal node at 2k, its children 2k+1 (leaf) and 2k+2
    n = 2 * n_int + 1
    idx = np.arange(n)
    left = np.where((idx % 2 == 0) & (idx < n - 1), idx + 1, idx).astype(np.int32)
    thr = np.where(left != idx, idx.astype(np.float32), np.inf).astype(np.float32)
    packed = _PackedTrees(np.zeros(n, np.int32), thr, left, np.zeros(1, np.int64), np.array([n_int], np.int64))
    assert packed.binned() is None


def test_binned_state_is_rebuilt_from_the_stored_trees(model):
    import pickle

    eng = GBDTBinsEngine.from_estimator(model.estimators_[1], 3)
    X = _data(300, seed=8)[0]
    before = eng.predict_proba(X)
    assert "_binned" in vars(eng.packed)
    copy = pickle.loads(pickle.dumps(eng))
    assert "_binned" not in vars(copy.packed)  # derived arrays are not stored ...
    assert np.array_equal(copy.predict_proba(X), before)
    copy = pickle.loads(pickle.dumps(eng))
    copy.packed.thr[:] += 0.5  # ... so a changed threshold changes what the engine computes
    assert np.max(np.abs(copy.predict_proba(X) - before)) > 1e-3
    assert sorted(CANDIDATES) == ["numba-forest", "numba-forest-bins", "numba-gbdt", "numba-gbdt-bins"]


def test_gbdt_engine_binary_and_unseen_classes():
    from lightgbm import LGBMClassifier

    X, y = _data(400, n_classes=2)
    lg = LGBMClassifier(n_estimators=15, n_jobs=1, verbose=-1).fit(X, y)
    Xt = _data(300, n_classes=2, seed=4)[0]
    assert np.max(np.abs(GBDTEngine.from_estimator(lg, 2).predict_proba(Xt) - lg.predict_proba(Xt))) <= 1e-12
    # a learner that saw classes 0 and 2 of 3: columns placed like the ensemble places them
    lg3 = LGBMClassifier(n_estimators=5, n_jobs=1, verbose=-1).fit(X, np.where(y == 1, 2, 0))
    got = GBDTEngine.from_estimator(lg3, 3).predict_proba(Xt)
    assert np.all(got[:, 1] == 0)
    assert np.max(np.abs(got - stock_proba(lg3, Xt, 3))) <= 1e-12


def test_build_engines_chooses_by_measurement(model):
    es = build_engines(model, _data(2000, seed=6)[0], time_rows=1500)
    assert es.keys == learner_keys(model) == ["rf", "lgbm", "et"]
    for entry, chosen in zip(es.report, es.names()):
        assert entry["chosen"] == chosen
        for info in entry["candidates"].values():
            assert info["max_abs_diff"] <= 1e-5
        if chosen != "stock":  # kept only when faster than stock
            assert entry["candidates"][chosen]["seconds"] < entry["stock_s"]
    forest, gbdt = ["numba-forest", "numba-forest-bins"], ["numba-gbdt", "numba-gbdt-bins"]
    assert [sorted(e["candidates"]) for e in es.report] == [forest, gbdt, forest]
    assert es.sample.shape == (512, 8)


def _forced_engines(model):
    """An engine set with an engine for every learner (whatever the timing on a busy machine)."""
    es = build_engines(model, _data(800, seed=6)[0], time_rows=600, repeat=1)
    es.engines = [ForestEngine.from_estimator(model.estimators_[0], 3), GBDTEngine.from_estimator(model.estimators_[1], 3),
                  ForestEngine.from_estimator(model.estimators_[2], 3)]
    return es


def test_bundle_round_trip_with_engines(model, tmp_path):
    save_bundle(_bundle(model, _forced_engines(model)), tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert {k: v["engine"] for k, v in meta["engines"].items()} == {"rf": "numba-forest", "lgbm": "numba-gbdt",
                                                                      "et": "numba-forest"}
    for key, rec in meta["engines"].items():
        assert (tmp_path / "m" / rec["file"]).exists() and len(rec["sha256"]) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = load_bundle(tmp_path / "m")
    assert fast.engine_set.names() == ["numba-forest", "numba-gbdt", "numba-forest"]
    stock = load_bundle(tmp_path / "m", engine="stock")
    assert stock.engine_set is None and stock.engines == fast.engines
    X = _data(700, seed=8)[0]
    p_fast, u_fast = fast.predict_proba_and_uncertainty(X)
    p_ref, u_ref = _bundle(model).predict_proba_and_uncertainty(X)
    assert np.max(np.abs(p_fast - p_ref)) <= 1e-12 and np.max(np.abs(u_fast - u_ref)) <= 1e-12
    assert np.max(np.abs(fast.predict_proba(X) - model.predict_proba(X))) <= 1e-12
    X[::7, 2] = np.nan  # rows with gaps are not predicted
    for a, b in zip(predict_block(fast, X, threads=2, chunk_rows=100), predict_block(stock, X, threads=1)):
        assert np.array_equal(a, b)


def test_corrupt_engine_file_falls_back_to_stock(model, tmp_path):
    save_bundle(_bundle(model, _forced_engines(model)), tmp_path / "m")
    path = tmp_path / "m" / "engine-lgbm.joblib"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(EngineWarning, match=r"learner 'lgbm': inference engine numba-gbdt not used .*checksum"):
        bundle = load_bundle(tmp_path / "m")
    assert bundle.engine_set.names() == ["numba-forest", "stock", "numba-forest"]
    X = _data(300, seed=9)[0]
    assert np.max(np.abs(bundle.predict_proba(X) - model.predict_proba(X))) <= 1e-12


def test_wrong_engine_is_caught_by_the_load_time_check(model, tmp_path):
    save_bundle(_bundle(model, _forced_engines(model)), tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    path = tmp_path / "m" / "engine-rf.joblib"
    content = joblib.load(path)
    content["engine"].packed.thr[:] += 0.5  # a stale or miscompiled engine, with a valid checksum
    joblib.dump(content, path)
    from ecocube.atomic import sha256_file

    meta = json.loads(meta_path.read_text())
    meta["engines"]["rf"]["sha256"] = sha256_file(path)
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(EngineWarning, match=r"learner 'rf': .*max abs difference from stock .* > 1e-05"):
        bundle = load_bundle(tmp_path / "m")
    assert bundle.engine_set.names() == ["stock", "numba-gbdt", "numba-forest"]
    X = _data(300, seed=10)[0]
    p, u = bundle.predict_proba_and_uncertainty(X)
    p_ref, u_ref = model.predict_proba_and_uncertainty(X)
    assert np.max(np.abs(p - p_ref)) <= 1e-12 and np.max(np.abs(u - u_ref)) <= 1e-12


def test_missing_engine_file_and_unknown_kind(model, tmp_path):
    save_bundle(_bundle(model, _forced_engines(model)), tmp_path / "m")
    (tmp_path / "m" / "engine-et.joblib").unlink()
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["engines"]["rf"]["engine"] = "onnx"
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(EngineWarning) as caught:
        bundle = load_bundle(tmp_path / "m")
    text = " | ".join(str(w.message) for w in caught)
    assert "learner 'rf'" in text and "unknown engine kind 'onnx'" in text
    assert "learner 'et'" in text and "engine-et.joblib is missing" in text
    assert bundle.engine_set.names() == ["stock", "numba-gbdt", "stock"]


def test_no_candidate_keeps_stock(tmp_path):
    from sklearn.linear_model import LogisticRegression

    X, y = _data(300)
    model = EnsembleClassifier(base_learners=(LogisticRegression(max_iter=500),), cv_folds=2, n_jobs=1,
                               random_state=0).fit(X, np.array([10, 20, 30])[y])
    es = build_engines(model, X)
    assert es.names() == ["stock"] and es.records() == {}
    save_bundle(_bundle(model, es), tmp_path / "m")
    assert "engines" not in json.loads((tmp_path / "m" / "model.json").read_text())


def test_model_engine_config(tmp_path, model):
    import yaml

    from ecocube.config import EXAMPLE_YAML, load_config
    from ecocube.errors import ConfigError
    from ecocube.tile import _load_bundle

    p = tmp_path / "run.yaml"
    p.write_text(EXAMPLE_YAML)
    assert load_config(p).model.engine == "auto"
    data = yaml.safe_load(EXAMPLE_YAML)
    data["model"]["engine"] = "fast"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "model.engine" in str(err.value) and "'stock'" in str(err.value) and "'auto'" in str(err.value)
    # the tile stage loads the bundle with the configured engine
    save_bundle(_bundle(model, _forced_engines(model)), tmp_path / "m")
    assert _load_bundle(tmp_path / "m", engine="stock").engine_set is None
    assert _load_bundle(tmp_path / "m").engine_set.names() == ["numba-forest", "numba-gbdt", "numba-forest"]
    with pytest.raises(ValueError, match="engine must be 'auto' or 'stock'"):
        load_bundle(tmp_path / "m", engine="fast")


def test_float_keys_keep_the_float_order():
    from ecocube.engines import float_keys

    rng = np.random.default_rng(11)
    special = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 1e-38, -1e-38, 3.4e38, -3.4e38, 1.0, -1.0],
                       dtype=np.float32)
    values = np.concatenate([special, rng.normal(0, 10, 300).astype(np.float32),
                             np.nextafter(special, np.float32(np.inf)), np.nextafter(special, np.float32(-np.inf))])
    keys = float_keys(values)
    assert keys.dtype == np.int64 and keys.min() >= -2**31 and keys.max() < 2**31
    x, t = values[:, None], values[None, :]
    assert np.array_equal(x > t, keys[:, None] > keys[None, :])  # every pair, both ways
    assert float_keys(np.float32(-0.0)) == float_keys(np.float32(0.0)) == 0
    nan = float_keys(np.array([np.nan, -np.nan], dtype=np.float32))
    assert np.all(nan == -2**31) and np.all(nan < keys.min())  # NaN > t is false for every t


def test_keyed_rows_match_the_keys_of_every_value():
    from ecocube.engines import _Keyed, float_keys

    rng = np.random.default_rng(12)
    X = rng.normal(0, 3, (13, 5)).astype(np.float32)  # 13 rows: two groups of 8, the second padded
    X[0, 0], X[1, 1], X[2, 2], X[3, 3] = -0.0, np.nan, np.inf, -np.inf
    keyed = _Keyed(np.zeros(1, np.int64), np.ones(1, np.int64), 5)
    flat = keyed.rows(X)
    assert flat.dtype == np.int32 and flat.shape == (16 * 5,)
    back = flat.reshape(2, 5, 8).transpose(0, 2, 1).reshape(16, 5)
    assert np.array_equal(back[:13], float_keys(X))
    assert np.all(back[13:] == 0)
    with pytest.raises(ValueError, match="4 features, the trees split on 5"):
        keyed.rows(X[:, :4])


def test_keyed_forest_equals_stock_on_any_row_count(model):
    rf = model.estimators_[0]
    eng = ForestEngine.from_estimator(rf, 3)
    keyed = eng.packed.keyed()
    assert keyed is not None and keyed.word.size == eng.packed.n_nodes
    X = np.concatenate([_data(300, seed=13)[0], _threshold_rows(model, 99)])
    for n in (1, 7, 8, 9, 13, 399):  # groups of 8 and the padded last group
        ref = rf.predict_proba(X[:n])
        got = eng.predict_proba(X[:n])
        assert got.shape == (n, 3) and np.max(np.abs(got - ref)) <= 1e-12, n
    # the float walk (the layout before the keys) gives the same probabilities
    old = ForestEngine.from_estimator(rf, 3)
    old.packed._keyed = None
    assert np.array_equal(old.predict_proba(X), eng.predict_proba(X))


def test_keyed_forest_with_one_node_trees_and_nan_rows():
    from sklearn.ensemble import RandomForestClassifier

    X = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.5]], dtype=np.float32)
    rf = RandomForestClassifier(n_estimators=40, random_state=3, n_jobs=1).fit(X, [0, 0, 0, 1])
    sizes = [t.tree_.node_count for t in rf.estimators_]
    assert min(sizes) == 1 and max(sizes) > 1  # bootstraps with only class 0: one-node trees
    eng = ForestEngine.from_estimator(rf, 2)
    assert eng.packed.keyed() is not None
    Xt = np.random.default_rng(14).uniform(-1, 4, (50, 2)).astype(np.float32)
    assert np.max(np.abs(eng.predict_proba(Xt) - rf.predict_proba(Xt))) <= 1e-12
    # NaN (the ensemble never passes one: nan_policy raise or impute) goes left at every split,
    # as in the float walk
    Xt[::3, 0] = np.nan
    old = ForestEngine.from_estimator(rf, 2)
    old.packed._keyed = None
    assert np.array_equal(eng.predict_proba(Xt), old.predict_proba(Xt))


def test_forest_beyond_the_keyed_layout_uses_the_float_walk():
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(15)
    X = rng.normal(0, 1, (400, 600)).astype(np.float32)
    y = (X[:, 550] + X[:, 3] > 0).astype(int)
    rf = RandomForestClassifier(n_estimators=3, random_state=0, n_jobs=1).fit(X, y)
    assert max(int(t.tree_.feature.max()) for t in rf.estimators_) >= 512
    eng = ForestEngine.from_estimator(rf, 2)
    assert eng.packed.keyed() is None  # 600 features: feature * 8 does not fit 12 bits
    Xt = rng.normal(0, 1, (100, 600)).astype(np.float32)
    assert np.max(np.abs(eng.predict_proba(Xt) - rf.predict_proba(Xt))) <= 1e-12


def test_gbdt_bins_at_lightgbm_thresholds_and_row_counts(model):
    lg = model.estimators_[1]
    eng = GBDTBinsEngine.from_estimator(lg, 3)
    bins = eng.packed.binned()
    assert bins is not None and bins.dtype == np.uint8
    X = _data(200, seed=16)[0]
    rng = np.random.default_rng(17)
    for i in range(X.shape[0]):  # on, and one float32 step around, LightGBM's own thresholds
        f = int(rng.integers(bins.n_features))
        cuts = bins.cuts[bins.offsets[f]:bins.offsets[f + 1]]
        if cuts.size:
            t = np.float32(cuts[rng.integers(cuts.size)])
            X[i, f] = [t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(-np.inf))][i % 3]
    for n in (1, 9, 200):
        assert np.max(np.abs(eng.predict_proba(X[:n]) - lg.predict_proba(X[:n]))) <= 1e-12, n


def test_keyed_state_is_rebuilt_from_the_stored_trees(model):
    import pickle

    eng = ForestEngine.from_estimator(model.estimators_[0], 3)
    X = _data(300, seed=18)[0]
    before = eng.predict_proba(X)
    assert vars(eng.packed).get("_keyed") is not None
    copy = pickle.loads(pickle.dumps(eng))
    assert "_keyed" not in vars(copy.packed)
    copy.packed.thr[:] += 0.5
    assert np.max(np.abs(copy.predict_proba(X) - before)) > 1e-3


def test_rank_table_equals_the_binary_search():
    # float64 cuts that are not float32 values, cuts equal after rounding down to float32,
    # many cuts in one key bucket, rows on / next to the cuts' float32 neighbours, NaN, +-inf, -0
    rng = np.random.default_rng(19)
    c32 = np.float32(1.5)
    ulp = float(np.spacing(c32))
    # 39 cuts 100 float32 steps apart, half a step off float32 (one key bucket is 65,536 steps),
    # and 9 cuts within one float32 step (equal after rounding down)
    crowded = float(c32) + np.arange(1, 40) * 100 * ulp + ulp / 2
    tight = float(c32) - 50 * ulp + np.arange(1, 10) * ulp / 20
    cuts = [np.unique(rng.normal(0, 2, 250)), np.unique(np.concatenate([crowded, tight, [float(c32), -0.0, 1e-40]])),
            np.zeros(0), np.unique(rng.normal(0, 1e-3, 30))]
    offsets = np.concatenate([[0], np.cumsum([c.size for c in cuts])]).astype(np.int64)
    bins = _Bins(np.concatenate(cuts), offsets, np.zeros(1, np.int64), np.uint8)
    assert bins.rank_table() is not None
    X = rng.normal(0, 2, (500, 4)).astype(np.float32)
    for f in (0, 1, 3):
        c = floor_float32(cuts[f])
        near = np.concatenate([c, np.nextafter(c, np.float32(np.inf)), np.nextafter(c, np.float32(-np.inf))])
        X[:near.size, f] = near[:500]
    X[-6:, 1] = [np.nan, np.inf, -np.inf, -0.0, 0.0, np.float32(1e-40)]
    got = bins.rows(X)  # float32 rows: the bucket tables
    ref = np.stack([np.searchsorted(cuts[f], X[:, f].astype(np.float64), side="left") for f in range(4)], axis=1)
    ref[np.isnan(X)] = 0
    assert np.array_equal(got, ref)
    assert np.array_equal(bins.rows(X.astype(np.float64)), ref)  # float64 rows: the binary search
    assert ref[:, 1].max() == cuts[1].size and len(set(ref[:, 1])) > 40  # the crowded bucket is resolved
    fresh = _Bins(bins.cuts, bins.offsets, bins.word, np.uint8)  # tables too large: binary search
    fresh.MAX_TABLE_BYTES = 1
    assert fresh.rank_table() is None and np.array_equal(fresh.rows(X), ref)
    from ecocube.engines import float_keys

    fresh = _Bins(bins.cuts, bins.offsets, bins.word, np.uint8)  # a bucket over the limit: binary search
    u = float_keys(floor_float32(cuts[1])) + 2**31
    most = np.bincount(u >> 16).max()
    assert most >= 39  # the crowded cuts share a bucket
    fresh.MAX_BUCKET_CUTS = int(most) - 1
    assert fresh.rank_table() is None and np.array_equal(fresh.rows(X), ref)
