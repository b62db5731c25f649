#!/usr/bin/env python
"""Benchmark: onnxruntime's TreeEnsemble kernel vs ecocube's numba engines, per learner.

The realistic model's forest and LightGBM (:mod:`realistic_model`) are packed by the
engines (:mod:`ecocube.engines`) and the same trees are written as one ONNX
``ai.onnx.ml.TreeEnsembleRegressor`` each (``BRANCH_LEQ`` on the engines' thresholds:
float32 rounded down for the forest, float64 for LightGBM with float64 input; leaf
values as targets, ``AVERAGE`` of the forest's leaf probabilities, ``SUM`` of LightGBM's
raw scores per class). Both run on one thread on the same rows, interleaved,
``--repeat`` times; the least thread CPU time of each is reported with the max abs
difference of ONNX from the engine (probabilities for the forest, raw scores for
LightGBM; onnxruntime's output is float32). One JSON line; the load average with it.

Usage: ``python scripts/bench/onnx_trees.py [--rows 8192] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchtools import best_thread_cpu, emit, load_average  # noqa: E402
from realistic_model import describe, realistic_bundle, realistic_features  # noqa: E402


def _tree_index(packed):
    n = packed.n_nodes
    tree = np.repeat(np.arange(packed.roots.size), np.diff(np.append(packed.roots, n)))
    left = packed.left.astype(np.int64)
    leaf = left == np.arange(n)
    local = np.arange(n) - packed.roots[tree]
    true = np.where(leaf, 0, left - packed.roots[tree])
    return tree, local, leaf, true, np.where(leaf, 0, true + 1)


def _session(packed, thr, targets, n_targets, aggregate, in_type):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    tree, local, leaf, true, false = _tree_index(packed)
    t_node, t_id, t_w = targets
    wtype = np.float64 if in_type == TensorProto.DOUBLE else np.float32  # the kernel's threshold type
    values = {"nodes_values_as_tensor": numpy_helper.from_array(np.where(leaf, 0.0, thr).astype(np.float64))} \
        if in_type == TensorProto.DOUBLE else {"nodes_values": np.where(leaf, 0.0, thr).astype(np.float32).tolist()}
    node = helper.make_node(
        "TreeEnsembleRegressor", ["X"], ["Y"], domain="ai.onnx.ml", n_targets=n_targets,
        aggregate_function=aggregate, post_transform="NONE", nodes_treeids=tree.tolist(),
        nodes_nodeids=local.tolist(), nodes_featureids=np.where(leaf, 0, packed.feat).tolist(),
        nodes_modes=np.where(leaf, "LEAF", "BRANCH_LEQ").tolist(), nodes_truenodeids=true.tolist(),
        nodes_falsenodeids=false.tolist(), target_treeids=tree[t_node].tolist(), target_nodeids=local[t_node].tolist(),
        target_ids=t_id.tolist(), target_weights_as_tensor=numpy_helper.from_array(t_w.astype(wtype)), **values)
    n_features = int(packed.feat.max()) + 1
    graph = helper.make_graph([node], "trees", [helper.make_tensor_value_info("X", in_type, [None, n_features])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n_targets])])
    model = helper.make_model(graph, ir_version=9,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def forest_session(engine):
    """The forest engine's trees as ONNX: leaf probabilities averaged over the trees."""
    from onnx import TensorProto

    p = engine.packed
    leaves = np.flatnonzero(p.left == np.arange(p.n_nodes))
    pay = engine.payload[leaves]
    pure = pay >= 0
    nodes, ids, weights = [leaves[pure]], [pay[pure].astype(np.int64)], [np.ones(int(pure.sum()))]
    mixed, rows = leaves[~pure], -pay[~pure] - 1
    for c in range(engine.n_classes):
        w = engine.leaf_proba[rows, c]
        nz = w > 0
        nodes.append(mixed[nz])
        ids.append(np.full(int(nz.sum()), c))
        weights.append(w[nz])
    targets = tuple(np.concatenate(a) for a in (nodes, ids, weights))
    return _session(p, p.thr, targets, engine.n_classes, "AVERAGE", TensorProto.FLOAT)


def gbdt_session(engine):
    """LightGBM's trees as ONNX: raw scores per class (tree t adds to class t % classes), float64 input."""
    from onnx import TensorProto

    p = engine.packed
    leaves = np.flatnonzero(p.left == np.arange(p.n_nodes))
    tree = _tree_index(p)[0]
    targets = (leaves, tree[leaves] % engine.n_per_iter, engine.leaf_value[leaves])
    return _session(p, p.thr, targets, engine.n_per_iter, "SUM", TensorProto.DOUBLE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    from ecocube.engines import ForestEngine, GBDTBinsEngine
    from ecocube.predict import learner_threads

    load_before = load_average()
    bundle = realistic_bundle()
    rf, lgbm = bundle.model.estimators_
    n_classes = int(bundle.model.classes_.size)
    X, _ = realistic_features(args.rows, seed=3)
    forest, gbdt = ForestEngine.from_estimator(rf, n_classes), GBDTBinsEngine.from_estimator(lgbm, n_classes)
    t0 = time.perf_counter()
    s_forest = forest_session(forest)
    s_gbdt = gbdt_session(gbdt)
    build_s = time.perf_counter() - t0
    Xd = X.astype(np.float64)
    diff = {"rf_proba": float(np.max(np.abs(s_forest.run(None, {"X": X})[0] - forest.predict_proba(X)))),
            "lgbm_raw": float(np.max(np.abs(s_gbdt.run(None, {"X": Xd})[0] - gbdt._raw(X))))}
    cpu: dict[str, float] = {}
    with threadpool_limits(1), learner_threads(bundle, 1):
        for _ in range(2):  # interleaved
            for name, fn in (("stock_rf", lambda: rf.predict_proba(X)), ("onnx_rf", lambda: s_forest.run(None, {"X": X})),
                             ("numba_forest", lambda: forest.predict_proba(X)),
                             ("stock_lgbm", lambda: lgbm.predict_proba(X)),
                             ("onnx_lgbm", lambda: s_gbdt.run(None, {"X": Xd})),
                             ("numba_gbdt_bins", lambda: gbdt.predict_proba(X))):
                cpu[name] = round(min(cpu.get(name, np.inf), best_thread_cpu(fn, args.repeat)), 4)
    result = {"bench": "onnx_trees", "rows": args.rows, "model": describe(bundle), "onnx_build_s": round(build_s, 1),
              "cpu_s_1thread": cpu, "max_abs_diff_onnx_vs_engine": diff,
              "ratio": {"onnx_vs_stock_rf": round(cpu["stock_rf"] / cpu["onnx_rf"], 2),
                        "numba_vs_onnx_rf": round(cpu["onnx_rf"] / cpu["numba_forest"], 2),
                        "onnx_vs_stock_lgbm": round(cpu["stock_lgbm"] / cpu["onnx_lgbm"], 2),
                        "numba_vs_onnx_lgbm": round(cpu["onnx_lgbm"] / cpu["numba_gbdt_bins"], 2)},
              "load_avg_before": load_before, "load_avg_after": load_average()}
    emit(result, args.out)


if __name__ == "__main__":
    main()
