#!/usr/bin/env python
"""Benchmark of the training path (``ecocube.ensemble`` / ``ecocube.train``).

Measures, in one run, on synthetic features (rows × features, 5 classes, blobs):

* LightGBM fit time with 1 thread vs all threads on a small table (the reason
  ``ensemble.LGBM_ROWS_PER_THREAD`` exists) and on a larger one;
* a full ``EnsembleClassifier.fit`` (rf + lgbm, out-of-fold stacking) and its predict
  throughput (pixels/s), the number a tile's prediction time scales with;
* nested spatial CV (``train.cross_validate``) with the folds run one after the other
  (threads=1) vs in parallel on joblib threads (threads=N);
* overlay window planning: windows needed for scattered samples over a 1000×1000-px tile
  per processing block vs merged per tile.

Each timing is the minimum of ``--repeat`` runs (the machine is shared). Ratios are
against the baseline measured in the same run. Writes JSON (``--out``).

Usage: ``python scripts/bench/train.py [--rows 20000] [--repeat 2] [--threads 2] [--out bench-train.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np


def blobs(n: int, n_features: int = 40, n_classes: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centers = rng.normal(0, 1.0, (n_classes, n_features))
    X = (centers[y] + rng.normal(0, 1.5, (n, n_features))).astype(np.float32)
    groups = rng.integers(0, 50, n)
    return X, y, groups


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench-train.json")
    args = ap.parse_args()

    from lightgbm import LGBMClassifier

    from ecocube.ensemble import EnsembleClassifier
    from ecocube.grid import TileGrid
    from ecocube.train import PixelTable, _overlay_jobs, cross_validate

    out: dict = {"machine": platform.platform(), "threads": args.threads, "rows": args.rows}

    # LightGBM threads on small and large tables
    for n in (1000, args.rows):
        X, y, _ = blobs(n)
        t = {}
        for th in (1, args.threads):
            est = LGBMClassifier(n_estimators=50, n_jobs=th, verbose=-1, force_col_wise=True)
            t[th] = best(lambda: est.fit(X, y), args.repeat)
        out[f"lgbm_fit_{n}_rows"] = {"1_thread_s": t[1], f"{args.threads}_threads_s": t[args.threads],
                                     "speedup": t[1] / t[args.threads]}
        print(f"LightGBM fit, {n} rows: 1 thread {t[1]:.3f} s, {args.threads} threads {t[args.threads]:.3f} s "
              f"(speed-up {t[1] / t[args.threads]:.2f}x)")

    # ensemble fit + predict throughput
    X, y, groups = blobs(args.rows)
    model = EnsembleClassifier(n_estimators=50, cv_folds=5, n_jobs=args.threads, random_state=0)
    fit_s = best(lambda: model.fit(X, y, groups=groups), 1)
    Xp = np.repeat(X, max(1, 100000 // len(X)), axis=0)
    pred_s = best(lambda: model.predict_proba(Xp), args.repeat)
    out["ensemble"] = {"fit_s": fit_s, "predict_pixels_per_s": len(Xp) / pred_s}
    print(f"ensemble fit ({args.rows} rows, 40 features, 5 classes, rf+lgbm 50 trees, 5-fold stacking): "
          f"{fit_s:.2f} s; predict {len(Xp) / pred_s:,.0f} px/s")

    # nested CV sequential vs parallel folds
    Xs, ys, gs = X[:4000], y[:4000], groups[:4000]

    def make(t):
        return EnsembleClassifier(n_estimators=30, cv_folds=3, n_jobs=t, random_state=0)

    seq = best(lambda: cross_validate(make, Xs, ys, gs, folds=4, random_state=0, threads=1), 1)
    par = best(lambda: cross_validate(make, Xs, ys, gs, folds=4, random_state=0, threads=args.threads), 1)
    out["cross_validate_4000_rows"] = {"sequential_s": seq, "parallel_s": par, "speedup": seq / par}
    print(f"nested spatial CV, 4000 rows, 4 folds: sequential {seq:.2f} s, {args.threads} threads {par:.2f} s "
          f"(speed-up {seq / par:.2f}x)")

    # overlay window planning
    grid = TileGrid(crs="EPSG:3035", origin_x=0, origin_y=0, pixel_size=30, tile_size=1000)
    rng = np.random.default_rng(0)
    for label, n, spread in (("clustered", 500, 200), ("scattered", 500, 1000)):
        gx, gy = rng.integers(0, spread, n), rng.integers(0, spread, n)
        table = PixelTable(sample_id=np.arange(n), cls=np.ones(n, int), year=np.ones(n, int), gx=gx, gy=gy,
                           x=gx * 30.0, y=gy * 30.0, group=np.array(["g"] * n), kind=np.array(["point"] * n))
        jobs = _overlay_jobs(table, grid, 256)
        px = sum(j.height * j.width for j in jobs)
        out[f"overlay_{label}"] = {"windows": len(jobs), "pixels_read": px, "tile_pixels": 1000 * 1000,
                                   "fraction_of_tile": px / 1e6}
        print(f"overlay plan, {n} {label} samples on a 1000x1000 tile, blocks of 256: {len(jobs)} windows, "
              f"{px / 1e6:.1%} of the tile read")

    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
