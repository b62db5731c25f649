#!/usr/bin/env python
"""Benchmark of ensemble inference: stock learners vs ecocube's ``predict_block``.

On the realistic model (:mod:`realistic_model`: 200 unlimited-depth RF trees, LightGBM
200 rounds × 10 classes, 60 features) and one 256 × 256 block of pixels (65,536 rows of
the model's feature distribution), measures in one run, interleaved and repeated
(``--repeat``; the best of each is reported, the machine being shared):

* ``stock``: each learner's own ``predict_proba`` with ``n_jobs`` = 1 and 2, and their sum;
* ``ecocube_stock``: ``predict_block(bundle, X, threads=t)`` on the bundle without engines
  (``model.engine: stock``);
* ``ecocube``: ``predict_block`` on the bundle saved with its engines and loaded by
  ``load_bundle`` (engines verified at load; ``model.engine: auto``).

Pixels per second (wall) and CPU seconds of the process for every measurement; ratios
against the stock sum at the same thread count; the max abs difference of the engines'
probabilities from stock (per learner, of the meta-learner's output and of the
uncertainty) and the share of ``predict_block`` outputs (uint8 percent, class) equal
to the stock run's. The load average before and after is printed with the machine.
One JSON line on stdout (and ``--out``).

Usage: ``python scripts/bench/predict.py [--rows 65536] [--repeat 3] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchtools import emit, load_average, machine, timed  # noqa: E402
from realistic_model import RESULTS, describe, realistic_bundle, realistic_features  # noqa: E402


def engine_bundle(bundle, *, rebuild: bool = False):
    """The realistic bundle saved with its engines (chosen by measurement) and loaded back."""
    from ecocube.bundle import load_bundle, save_bundle
    from ecocube.engines import build_engines

    folder = RESULTS / "realistic-bundle-engines"
    build_s = None
    if rebuild or not (folder / "model.json").exists():
        X_sample, _ = realistic_features(8192, seed=2)
        t0 = time.perf_counter()
        bundle.engine_set = build_engines(bundle.model, X_sample)
        build_s = time.perf_counter() - t0
        save_bundle(bundle, folder)
        bundle.engine_set = None
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an engine falling back to stock must not pass unnoticed here
        loaded = load_bundle(folder, engine="auto")
    return loaded, build_s, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rebuild-engines", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from ecocube.bundle import ModelBundle
    from ecocube.predict import learner_threads, predict_block

    load_before = load_average()
    raw = realistic_bundle()
    stock_bundle = ModelBundle(model=raw.model, feature_names=raw.feature_names, classes=raw.classes,
                               class_names=raw.class_names, colors=raw.colors, metadata=raw.metadata)
    fast, build_s, load_s = engine_bundle(stock_bundle, rebuild=args.rebuild_engines)
    model = stock_bundle.model
    X, _ = realistic_features(args.rows, seed=3)

    # correctness, once: engines vs stock learners, whole ensemble, predict_block outputs
    base_fast = fast.engine_set.base_predictors(fast.model)
    diffs = {}
    for key, est, eng in zip(fast.engine_set.keys, model.estimators_, base_fast):
        with learner_threads(stock_bundle, 2):
            ref = est.predict_proba(X)
        diffs[key] = float(np.max(np.abs(eng.predict_proba(X) - ref)))
    p_ref, u_ref = stock_bundle.predict_proba_and_uncertainty(X)
    p_new, u_new = fast.predict_proba_and_uncertainty(X)
    out_ref = predict_block(stock_bundle, X, threads=2)
    out_new = predict_block(fast, X, threads=2)
    check = {"max_abs_diff_per_learner": diffs,
             "max_abs_diff_proba": float(np.max(np.abs(p_new - p_ref))),
             "max_abs_diff_uncertainty": float(np.max(np.abs(u_new - u_ref))),
             "predict_block_equal_fraction": {name: float(np.mean(a == b)) for name, a, b in
                                              zip(("proba", "class", "uncertainty"), out_ref, out_new)}}

    print(f"checked: {json.dumps(check)}", file=sys.stderr, flush=True)
    # timings, interleaved
    runs: dict[str, list[tuple[float, float]]] = {}

    def record(name, fn):
        wall, cpu, _ = timed(fn)
        runs.setdefault(name, []).append((wall, cpu))
        print(f"{name}: {wall:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr, flush=True)

    for _ in range(args.repeat):
        for t in args.threads:
            for key, est in zip(fast.engine_set.keys, model.estimators_):
                def stock_learner(est=est, t=t):
                    with learner_threads(stock_bundle, t):
                        return est.predict_proba(X)
                record(f"stock_{key}_{t}t", stock_learner)
            record(f"ecocube_stock_{t}t", lambda t=t: predict_block(stock_bundle, X, threads=t))
            record(f"ecocube_{t}t", lambda t=t: predict_block(fast, X, threads=t))
    best = {name: min(v) for name, v in runs.items()}  # (wall, cpu) of the fastest wall
    result = {"bench": "predict", "rows": args.rows, "repeat": args.repeat, "model": describe(raw),
              "engines": fast.engine_set.names(), "engine_build_s": None if build_s is None else round(build_s, 1),
              "engine_load_verify_s": round(load_s, 2), "check": check, "px_per_s": {}, "cpu_s": {}, "ratio": {}}
    for name, (wall, cpu) in sorted(best.items()):
        result["px_per_s"][name] = round(args.rows / wall)
        result["cpu_s"][name] = round(cpu, 3)
    for t in args.threads:
        stock_sum = sum(best[f"stock_{k}_{t}t"][0] for k in fast.engine_set.keys)
        stock_sum_cpu = sum(best[f"stock_{k}_{t}t"][1] for k in fast.engine_set.keys)
        result["px_per_s"][f"stock_sum_{t}t"] = round(args.rows / stock_sum)
        result["ratio"][f"ecocube_vs_stock_sum_{t}t"] = round(stock_sum / best[f"ecocube_{t}t"][0], 2)
        result["ratio"][f"ecocube_vs_stock_sum_{t}t_cpu"] = round(stock_sum_cpu / best[f"ecocube_{t}t"][1], 2)
        result["ratio"][f"ecocube_vs_ecocube_stock_{t}t"] = round(best[f"ecocube_stock_{t}t"][0]
                                                                  / best[f"ecocube_{t}t"][0], 2)
    result["engine_records"] = fast.engines  # the choice by measurement, as model.json records it
    result["machine"] = machine(load_before)
    emit(result, args.out)


if __name__ == "__main__":
    main()
