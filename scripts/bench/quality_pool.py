#!/usr/bin/env python
"""Which learners to combine: held-out probabilities of single learners on the same folds,
then every mean of them, paired by fold draw against its best member and the plain RF.

``quality.py`` scores whole ensembles (each fit runs its own stacking CV); this asks a
cheaper question first. Each learner of :data:`POOL` is fitted once per outer fold of the
same polygon-grouped, stratified 5-fold CV as ``quality.py`` (same data, same feature
tables, same draws and seeds), and its held-out probabilities are kept. A combination is
then the plain mean of some members' probabilities, scored without refitting; "lgbm-es"
is the ensemble's own LightGBM (its tree count early-stopped on the inner folds), the
others are the ensemble's learners with their fixed settings. The mean of separately
fitted learners is what ``EnsembleClassifier(meta="mean")`` predicts, up to the seeds.

For every combination and dataset: its mean weighted F1 over the draws and, paired by
draw, its difference from the best of its members and the plain 200-tree RF on monthly
medians (mean, standard error, draws ahead). Choosing among many combinations on some
draws and reporting those draws overstates the winner: choose with ``--first-draw 0``,
check with fresh draws (``--first-draw 3``).

Learners are :data:`POOL` names or variants ``base:param=value`` (``rf:min_samples_leaf=10``,
``lgbm-es:min_child_samples=30``); ``--save-proba`` keeps the held-out probabilities, so that
other combination rules can be tried on them without refitting.

Usage: ``python scripts/bench/quality_pool.py [--datasets be,si] [--repeats 3] [--first-draw 0]
[--learners rf,lgbm-es,rf:min_samples_leaf=10,...] [--combos rf+lgbm-es+et,...]
[--save-proba PREFIX] [--out bench-quality-pool.json]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the datasets, feature tables and folds of the quality benchmark)

DEFAULT_SET = quality.SCORED_SET


def _pool(threads: int) -> dict:
    """name -> (factory(seed) -> unfitted estimator, feature set)."""
    from ecocube.ensemble import EnsembleClassifier, make_base_learner

    def base(name, **kw):
        def make(seed):
            est = make_base_learner(name, n_estimators=200, class_weight="balanced", n_threads=threads,
                                    random_state=seed)
            return est.set_params(**kw) if kw else est
        return make

    return {
        "rf": (base("rf"), DEFAULT_SET),
        # the forests with leaves of one pixel (their settings before FOREST_MIN_SAMPLES_LEAF)
        "rf-leaf1": (base("rf", min_samples_leaf=1), DEFAULT_SET),
        "et": (base("et"), DEFAULT_SET),
        "et-leaf1": (base("et", min_samples_leaf=1), DEFAULT_SET),
        "lgbm": (base("lgbm"), DEFAULT_SET),
        "lgbm-es": (lambda s: EnsembleClassifier(base_learners=("lgbm",), meta="mean", n_jobs=threads,
                                                 random_state=s), DEFAULT_SET),
        "mlp": (base("mlp"), DEFAULT_SET),
        "logreg": (base("logreg"), DEFAULT_SET),
        "rf-stats": (base("rf"), "stats"),
        "lgbm-stats": (base("lgbm"), "stats"),
        "et-stats": (base("et"), "stats"),
        # quality.py's rf200-plain: scikit-learn's RandomForestClassifier defaults
        "rf-plain": (base("rf", class_weight=None, min_samples_leaf=1), "monthly"),
    }


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def learner(name: str, threads: int):
    """``(factory(seed), feature set)`` of a pool name, or of a variant written
    ``base:param=value[:param=value]``: ``rf:min_samples_leaf=10``, ``lgbm-es:min_child_samples=30``
    (the ensemble's LightGBM, its tree count early-stopped, with those parameters)."""
    from ecocube.ensemble import BASE_LEARNERS, EnsembleClassifier, make_base_learner

    pool = _pool(threads)
    if name in pool:
        return pool[name]
    kind, *pairs = name.split(":")
    if kind not in (*BASE_LEARNERS, "lgbm-es") or not pairs or not all("=" in p for p in pairs):
        raise SystemExit(f"unknown learner {name!r}: a pool name ({', '.join(pool)}) or "
                         f"<{'|'.join((*BASE_LEARNERS, 'lgbm-es'))}>:param=value[:param=value]")
    kw = {k: _value(v) for k, v in (p.split("=", 1) for p in pairs)}

    def make(seed):
        est = make_base_learner("lgbm" if kind == "lgbm-es" else kind, n_estimators=200, class_weight="balanced",
                                n_threads=threads, random_state=seed).set_params(**kw)
        if kind == "lgbm-es":
            return EnsembleClassifier(base_learners=(est,), meta="mean", n_jobs=threads, random_state=seed)
        return est
    return make, DEFAULT_SET


def held_out(ds: str, cache: Path, names: list[str], *, first: int, repeats: int, threads: int):
    """``(y, codes, {name: (draws, rows, classes) held-out probabilities})`` of one dataset."""
    from sklearn.model_selection import StratifiedGroupKFold

    d = quality.load_dataset(ds, cache)
    sets = quality.feature_sets(d, ds)
    y, groups, keep = quality.scored_rows(d, sets)
    y, groups = y[keep], groups[keep]
    codes = np.unique(y)
    pool = {n: learner(n, threads) for n in names}
    proba = {n: np.zeros((repeats, y.size, codes.size)) for n in names}
    t0 = time.perf_counter()
    for i, r in enumerate(range(first, first + repeats)):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            splits = list(StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=r)
                          .split(sets[DEFAULT_SET][0][keep], y, groups))
        for train, test in splits:
            for n in names:
                make, fs = pool[n]
                X = sets[fs][0][keep]
                m = make(1000 + r)
                if hasattr(m, "cv_folds"):  # an EnsembleClassifier: grouped inner folds
                    m.fit(X[train], y[train], groups=groups[train])
                else:
                    m.fit(X[train], y[train])
                proba[n][i][np.ix_(test, np.searchsorted(codes, m.classes_))] = m.predict_proba(X[test])
        print(f"  {ds} draw {r} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    return y, codes, proba


def _wf1(y, codes, p: np.ndarray) -> np.ndarray:
    from sklearn.metrics import f1_score

    return np.array([f1_score(y, codes[q.argmax(axis=1)], average="weighted", labels=codes, zero_division=0)
                     for q in p])


def single_scores(y, codes, proba: dict) -> dict[str, np.ndarray]:
    """Weighted F1 per draw of every learner alone, ``{name: (draws,)}``."""
    return {n: _wf1(y, codes, p) for n, p in proba.items()}


def compare(y, codes, proba: dict, combo: list[str], single: dict[str, np.ndarray],
            baseline: str = "rf-plain") -> dict:
    """A mean of ``combo``'s probabilities against its best member and ``baseline``, paired by
    draw (``single``: :func:`single_scores` of ``proba``)."""
    single = {n: single[n] for n in dict.fromkeys([*combo, baseline]) if n in single}
    got = _wf1(y, codes, np.mean([proba[n] for n in combo], axis=0))
    best = max(single, key=lambda n: single[n].mean())
    d = got - single[best]
    return {"f1_weighted": float(got.mean()), "per_draw": got.round(4).tolist(), "best_single": best,
            "best_single_f1_weighted": float(single[best].mean()), "vs_best_mean": float(d.mean()),
            "vs_best_se": float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0,
            "ahead": int((d > 0).sum()), "draws": int(d.size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="be,si")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--first-draw", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--learners", default=None, help="comma-separated names of the pool (default: all)")
    ap.add_argument("--combos", default=None,
                    help="comma-separated a+b+c means to score (default: every mean of 2-4 of the learners)")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "ecocube-bench-quality"))
    ap.add_argument("--out", default="bench-quality-pool.json")
    ap.add_argument("--save-proba", default=None, metavar="PREFIX",
                    help="also write each dataset's held-out probabilities to PREFIX-<dataset>.npz "
                         "(y, codes, names, one (draws, rows, classes) array per learner)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    names = list(_pool(1)) if args.learners is None else args.learners.split(",")
    if "rf-plain" not in names:
        names.append("rf-plain")
    if args.combos:
        combos = [c.split("+") for c in args.combos.split(",")]
        names = list(dict.fromkeys(names + [n for c in combos for n in c]))
    else:
        members = [n for n in names if n != "rf-plain"]
        combos = [list(c) for k in (2, 3, 4) for c in itertools.combinations(members, k)]
    out: dict = {"first_draw": args.first_draw, "repeats": args.repeats, "load_average_start": list(os.getloadavg()),
                 "cv": "polygon-grouped stratified 5-fold (the draws of quality.py)", "datasets": {}}
    for ds in args.datasets.split(","):
        y, codes, proba = held_out(ds, Path(args.cache), names, first=args.first_draw, repeats=args.repeats,
                                   threads=args.threads)
        if args.save_proba:
            np.savez_compressed(f"{args.save_proba}-{ds}.npz", y=y, codes=codes, names=np.array(names), **proba)
        scores = single_scores(y, codes, proba)
        single = {n: {"f1_weighted": float(v.mean()), "per_draw": v.round(4).tolist()} for n, v in scores.items()}
        res = {"+".join(c): compare(y, codes, proba, c, scores) for c in combos}
        out["datasets"][ds] = {"pixels": int(y.size), "single": single, "means": res}
        print(f"\n{ds}: {y.size} px, draws {args.first_draw}..{args.first_draw + args.repeats - 1}")
        for n, v in sorted(single.items(), key=lambda kv: -kv[1]["f1_weighted"]):
            print(f"  {n:14s} alone {v['f1_weighted']:.4f}")
        for c, v in sorted(res.items(), key=lambda kv: -kv[1]["vs_best_mean"])[:40]:
            print(f"  mean of {c:40s} {v['f1_weighted']:.4f}  vs {v['best_single']:10s} {v['vs_best_mean']:+.4f} "
                  f"± {v['vs_best_se']:.4f}  ahead {v['ahead']}/{v['draws']}")
    out["load_average_end"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
