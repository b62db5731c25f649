#!/usr/bin/env python
"""Benchmark of ``ecocube.gapfill.fill_gaps`` (TMWM) on a tile-sized band.

One band of 1000 x 1000 px x 84 periods (21 years x 4 seasons) with ~35 % gaps in
realistic patterns: a few whole-scene gaps, cloud blobs from smooth random fields, more
cloud in winter. Measures, in one run:

* wall time and peak extra memory (RSS above the level before the call, sampled) of
  ``fill_gaps`` with 1 and 2 threads, each repeated (the machine is shared: min and
  median are reported);
* the slow reference (a plain per-pixel, per-gap NumPy implementation of the same
  specification) on a sub-window, extrapolated per pixel, and the speed ratio; the fast
  result must equal the reference exactly on that sub-window;
* the first-call cost: import + compile in a fresh process with an empty numba cache,
  and with the on-disk cache filled (the normal case after the first run).

Usage: ``python scripts/bench/gapfill.py [--size 1000] [--repeat 3] [--out bench-gapfill.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def make_cube(size: int, years: int = 21, seasons: int = 4, seed: int = 0) -> np.ndarray:
    """A (time, y, x) float32 reflectance-like band with ~35 % realistic gaps."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    T = years * seasons

    def smooth(cells: int) -> np.ndarray:
        field = rng.standard_normal((cells, cells)).astype(np.float32)
        return zoom(field, size / cells, order=1, prefilter=False)[:size, :size]

    # signal: land-cover-like base, seasonal amplitude and phase, slow trend, noise
    base = 0.25 + 0.08 * smooth(12)
    amp = 0.10 + 0.04 * smooth(20)
    phase = 0.5 * smooth(8)
    trend = 0.002 * smooth(6)
    t = np.arange(T, dtype=np.float32)
    cube = np.empty((T, size, size), np.float32)
    for k in range(T):
        cube[k] = base + amp * np.sin(2 * np.pi * (k % seasons) / seasons + phase) + trend * t[k]
        cube[k] += 0.01 * rng.standard_normal((size, size)).astype(np.float32)
    # gaps: cloud fraction per season (winter cloudier), blobs at two scales, scene gaps
    season_cloud = np.array([0.48, 0.28, 0.22, 0.42])
    whole = set(rng.choice(T, size=3, replace=False).tolist())
    for k in range(T):
        if k in whole:
            cube[k] = np.nan
            continue
        frac = float(np.clip(season_cloud[k % seasons] + 0.12 * rng.standard_normal(), 0.0, 0.95))
        field = smooth(10) + 0.5 * smooth(40)
        thr = np.quantile(field[::8, ::8], 1.0 - frac)
        cube[k][field > thr] = np.nan
    return cube


def reference_fill(cube: np.ndarray, season_size: int, h_same: int, h_neib: int, h_annual: int) -> tuple:
    """The specification, written plainly: per pixel, per gap, windows as index sets."""
    T = cube.shape[0]
    S = season_size
    windows = []
    for h in range(1, h_same + 1):
        windows.append((h, sorted({j * S for j in range(-h, h + 1) if j})))
    for h in range(1, h_neib + 1):
        windows.append((40 + h, sorted({j * S + d for j in range(-h, h + 1) for d in (-1, 1)} - {0})))
    for h in range(1, h_annual + 1):
        windows.append((80 + h, [o for o in range(-h, h + 1) if o]))
    filled = cube.copy()
    flags = np.where(np.isnan(cube), 255, 0).astype(np.uint8)
    for iy in range(cube.shape[1]):
        for ix in range(cube.shape[2]):
            s = cube[:, iy, ix]
            for k in np.flatnonzero(np.isnan(s)):
                for code, offs in windows:
                    idx = np.array([k + o for o in offs if 0 <= k + o < T])
                    v = s[idx] if idx.size else np.empty(0, np.float32)
                    v = v[~np.isnan(v)]
                    if v.size:
                        filled[k, iy, ix] = np.float32(np.median(v.astype(np.float64)))
                        flags[k, iy, ix] = code
                        break
    return filled, flags


class PeakRSS:
    """Samples this process's RSS in a thread; ``peak`` is the maximum seen (bytes)."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


FIRST_CALL = """
import time, numpy as np
t0 = time.perf_counter()
from ecocube.gapfill import fill_gaps
t1 = time.perf_counter()
c = np.full((8, 2, 2), np.nan, np.float32); c[0] = 1.0
fill_gaps(c, season_size=4, threads=1)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def first_call_seconds(cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, check=True, capture_output=True, text=True)
    imp, call = (float(v) for v in out.stdout.split())
    return {"import_s": round(imp, 3), "first_call_s": round(call, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ref-size", type=int, default=12, help="edge of the sub-window for the slow reference")
    ap.add_argument("--out", type=Path, default=Path("bench-gapfill.json"))
    args = ap.parse_args(argv)

    from ecocube.gapfill import fill_gaps

    params = {"season_size": 4, "h_same": 2, "h_neib": 1, "h_annual": 2}
    result: dict = {"benchmark": "gapfill", "python": platform.python_version(), "machine": platform.machine(),
                    "cpus_usable": len(os.sched_getaffinity(0)), "loadavg_start": os.getloadavg()[0],
                    "params": params, "size": args.size, "periods": 84}

    with tempfile.TemporaryDirectory() as cache:
        result["first_call_cold_cache"] = first_call_seconds(cache)
        result["first_call_warm_cache"] = first_call_seconds(cache)

    t0 = time.perf_counter()
    cube = make_cube(args.size)
    result["make_cube_s"] = round(time.perf_counter() - t0, 2)
    result["gap_fraction"] = round(float(np.isnan(cube).mean()), 4)
    result["input_mb"] = round(cube.nbytes / 2**20, 1)
    fill_gaps(cube[:, :8, :8], threads=1, **params)  # compile / load outside the timings

    runs = {}
    flags = None
    for threads in (1, 2):
        times, cpus, peaks = [], [], []
        for _ in range(args.repeat):
            with PeakRSS() as mem:
                t0, c0 = time.perf_counter(), time.process_time()
                filled, flags = fill_gaps(cube, threads=threads, **params)
                times.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            peaks.append((mem.peak - mem.start) / 2**20)
            del filled
        runs[str(threads)] = {"seconds_min": round(min(times), 3), "seconds_median": round(statistics.median(times), 3),
                              "seconds_all": [round(t, 3) for t in times],
                              "cpu_seconds_min": round(min(cpus), 3),
                              "peak_extra_mb_max": round(max(peaks), 1)}
    result["fill_gaps"] = runs
    codes, counts = np.unique(flags, return_counts=True)
    result["flag_counts"] = {int(c): int(n) for c, n in zip(codes, counts)}

    # slow reference on a sub-window, extrapolated per pixel
    r = args.ref_size
    y0 = args.size // 3
    sub = np.ascontiguousarray(cube[:, y0:y0 + r, y0:y0 + r])
    t0 = time.perf_counter()
    ref_filled, ref_flags = reference_fill(sub, **params)
    ref_s = time.perf_counter() - t0
    fast_filled, fast_flags = fill_gaps(sub, threads=1, **params)
    equal = bool(np.array_equal(ref_filled, fast_filled, equal_nan=True) and np.array_equal(ref_flags, fast_flags))
    ref_full = ref_s / (r * r) * args.size * args.size
    best1 = runs["1"]["seconds_min"]
    best2 = runs["2"]["seconds_min"]
    result["reference"] = {"subwindow_px": r * r, "seconds": round(ref_s, 3),
                           "extrapolated_full_band_s": round(ref_full, 1), "equal_to_fast": equal,
                           "speedup_1_thread": round(ref_full / best1, 1), "speedup_2_threads": round(ref_full / best2, 1)}
    result["loadavg_end"] = os.getloadavg()[0]
    result["target"] = {"seconds_per_band_2_threads": 1.5, "met": best2 < 1.5}
    text = json.dumps(result, indent=2)
    print(text)
    args.out.write_text(text + "\n")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
