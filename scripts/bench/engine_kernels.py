#!/usr/bin/env python
"""Benchmark of the inference engines alone, one thread: this checkout vs another one.

Loads the engine files of the realistic bundle (``results/realistic-bundle-engines/
engine-<learner>.joblib``, written by ``predict.py``) and times each engine's
``predict_proba`` on ``--rows`` rows of the realistic feature distribution: the least
thread CPU time of ``--repeat`` calls, in a fresh process per checkout. With
``--baseline-src DIR`` the same measurement runs with ``DIR`` (another checkout's root)
first on the Python path, alternated with this checkout ``--rounds`` times (the best of
each), so both see the same load; the ratios baseline / this checkout and the max abs
difference of the two checkouts' probabilities are reported. The engines are the same
pickled trees: each checkout rebuilds its own derived layouts from them. One JSON line.

Usage: ``python scripts/bench/engine_kernels.py [--rows 8192] [--repeat 3] [--baseline-src DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def measure(rows: int, repeat: int, out: str | None) -> dict:
    """This process's ecocube: CPU s per engine (1 thread), probabilities saved to ``out`` (.npz)."""
    import joblib
    import numpy as np
    from threadpoolctl import threadpool_limits

    sys.path.insert(0, str(HERE))
    from benchtools import best_thread_cpu
    from realistic_model import RESULTS, realistic_features

    import ecocube

    folder = RESULTS / "realistic-bundle-engines"
    files = sorted(folder.glob("engine-*.joblib"))
    if not files:
        raise SystemExit(f"engine_kernels: no engine files in {folder} (run predict.py once to build them)")
    X, _ = realistic_features(rows, seed=3)
    result = {"ecocube": str(Path(ecocube.__file__).parent.parent), "cpu_s": {}, "engines": {}}
    probas = {}
    with threadpool_limits(1):
        for path in files:
            key = path.stem.removeprefix("engine-")
            engine = joblib.load(path)["engine"]
            probas[key] = engine.predict_proba(X)  # the first call also builds the layouts, compiles
            result["cpu_s"][key] = round(best_thread_cpu(lambda e=engine: e.predict_proba(X), repeat), 4)
            result["engines"][key] = engine.name
    if out:
        np.savez(out, **probas)
    return result


def _run(src: Path, args, out: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run([sys.executable, __file__, "--child", "--rows", str(args.rows), "--repeat", str(args.repeat),
                           "--probas", out], env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"engine_kernels: the run with {src} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--baseline-src", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probas", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.rows, args.repeat, args.probas)))
        return

    import numpy as np

    sys.path.insert(0, str(HERE))
    from benchtools import emit, load_average, machine

    load_before = load_average()
    srcs = {"current": ROOT} | ({"baseline": Path(args.baseline_src).resolve()} if args.baseline_src else {})
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, src in srcs.items():  # alternated: both see the same load
                r = _run(src, args, str(Path(tmp) / f"{name}.npz"))
                prev = best.get(name)
                if prev is not None:
                    r["cpu_s"] = {k: min(v, prev["cpu_s"][k]) for k, v in r["cpu_s"].items()}
                best[name] = r
        result = {"bench": "engine_kernels", "rows": args.rows, "repeat": args.repeat, "rounds": args.rounds,
                  "threads": 1, **{name: best[name] for name in srcs}}
        if "baseline" in best:
            cur, base = best["current"]["cpu_s"], best["baseline"]["cpu_s"]
            result["ratio_baseline_over_current"] = {k: round(base[k] / cur[k], 2) for k in cur if k in base}
            a, b = np.load(Path(tmp) / "current.npz"), np.load(Path(tmp) / "baseline.npz")
            result["max_abs_diff_current_vs_baseline"] = {k: float(np.max(np.abs(a[k] - b[k]))) for k in a.files}
    result["machine"] = machine(load_before)
    emit(result, args.out)


if __name__ == "__main__":
    main()
