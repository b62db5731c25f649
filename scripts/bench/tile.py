#!/usr/bin/env python
"""Benchmark: peak RSS and wall time of ``process_tile`` per tile size and block size.

Makes synthetic inputs (quarterly composites, ``--bands`` bands, ``--years`` × 4 periods,
~30 % gaps), trains a tiny model with the real ensemble, then runs each tile in a fresh
child process (so each peak RSS is its own) through the real read → gap-fill → features
→ predict → write → publish path into a local store. Prints a table with ratios against
the first (baseline) run of the same invocation and writes JSON.

The claim under test: peak RSS grows with the *block* size, not with the *tile* size.

    python scripts/bench/tile.py                         # 256², 1000², 2000²; 84 periods × 6 bands
    python scripts/bench/tile.py --quick                 # 128², 256², 512²; 16 periods × 6 bands
    python scripts/bench/tile.py --sizes 1000 --block-sizes 128,256,512
    python scripts/bench/tile.py --sizes 1000 --baseline-src ../main --repeats 2   # old code vs this
    python scripts/bench/tile.py --sizes 1000 --compare processing.read_ahead=true  # a setting off vs on

``--baseline-src DIR`` runs every configuration twice per repeat, interleaved: first with
the ``ecocube`` package of another checkout (``PYTHONPATH=DIR``), then with this one, so
both see the same machine load; ratios are then against that baseline. ``--compare KEY=VAL``
(repeatable) does the same with this checkout twice: the baseline with the run's settings
(``--set KEY=VAL`` changes those for every run), then with the ``--compare`` overrides.
``overhead_s`` is the wall time of the stages other than inference (wall minus ``features``
and ``predict``). ``runnable_per_wall``: the tile's threads' on-CPU plus run-queue wait time
(``/proc/self/task/*/schedstat``, sampled every 50 ms, so a thread that ends between two
samples loses up to 50 ms) over the wall time: the average number of threads that wanted a
core, i.e. about what CPU/wall would be on an idle machine; ``schedstat_coverage`` is the
sampled on-CPU time over the process's CPU time (1.0: no thread's time lost).

Inputs: one 6-band COG per season (``{season}``), shared by all years, so the input
disk footprint stays small for 2000² tiles; every period is still read, gap-filled,
predicted and written separately.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
# reflectance per class and band for seasons 1..4
SPECTRA = {
    1: [(0.06, 0.08, 0.14, 0.25, 0.30, 0.22), (0.04, 0.07, 0.05, 0.45, 0.25, 0.12),
        (0.04, 0.07, 0.04, 0.50, 0.24, 0.11), (0.06, 0.08, 0.13, 0.26, 0.29, 0.21)],
    2: [(0.03, 0.05, 0.04, 0.30, 0.15, 0.07), (0.03, 0.05, 0.03, 0.38, 0.16, 0.07),
        (0.03, 0.05, 0.03, 0.38, 0.16, 0.07), (0.03, 0.05, 0.04, 0.31, 0.15, 0.07)],
    3: [(0.08, 0.07, 0.05, 0.02, 0.01, 0.01)] * 4,
}
ORIGIN = (500000.0, 6000000.0)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_inputs(folder: Path, size: int, n_bands: int, seed: int = 0) -> None:
    """Four seasonal ``n_bands``-band COGs of ``size``² px (uint16 DN, nodata 0), written in strips."""
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    transform = Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1])
    for season in range(1, 5):
        path = folder / f"s{season}.tif"
        if path.exists():
            continue
        tmp = folder / f".s{season}.tmp.tif"
        profile = dict(driver="GTiff", width=size, height=size, count=n_bands, dtype="uint16", crs="EPSG:32631",
                       transform=transform, nodata=0, tiled=True, blockxsize=256, blockysize=256,
                       compress="deflate", predictor=2)
        with rasterio.open(tmp, "w", **profile) as dst:
            for row in range(0, size, 256):
                h = min(256, size - row)
                rows, cols = np.mgrid[row:row + h, 0:size]
                lc = ((rows // 40) + (cols // 40)) % 3 + 1
                block = np.zeros((n_bands, h, size), np.uint16)
                for code, spectra in SPECTRA.items():
                    refl = np.array(spectra[season - 1][:n_bands])[:, None]
                    m = lc == code
                    block[:, m] = np.clip((refl + rng.normal(0, 0.01, (n_bands, m.sum()))) * 10000, 1, 10000)
                gaps = rng.random((h, size)) < 0.3
                block[:, gaps] = 0
                dst.write(block, window=Window(0, row, size, h))
        from rasterio.shutil import copy as rio_copy

        rio_copy(tmp, path, driver="COG", blocksize=256, compress="deflate")
        tmp.unlink()


def train_bundle(folder: Path, n_bands: int, seed: int = 0) -> Path:
    """A tiny real stacked ensemble (RF + LightGBM, 10 trees) on synthetic features."""
    import numpy as np

    from ecocube.bundle import ModelBundle, save_bundle
    from ecocube.ensemble import EnsembleClassifier
    from ecocube.features import feature_names

    if (folder / "model.json").exists():
        return folder
    bands = BANDS[:n_bands]
    names = feature_names(bands, 4, ("ndvi",) if n_bands >= 4 else ())
    rng = np.random.default_rng(seed)
    rows = []
    ys = []
    for code, spectra in SPECTRA.items():
        refl = np.array([s[:n_bands] for s in spectra])  # (season, band)
        X = np.repeat(refl.T.reshape(1, -1), 300, axis=0) + rng.normal(0, 0.01, (300, refl.size))
        if n_bands >= 4:
            nir, red = X[:, 3 * 4:4 * 4], X[:, 2 * 4:3 * 4]
            X = np.concatenate([X, (nir - red) / (nir + red)], axis=1)
        rows.append(X)
        ys.append(np.full(300, code))
    X, y = np.concatenate(rows).astype(np.float32), np.concatenate(ys)
    model = EnsembleClassifier(base_learners=("rf", "lgbm"), n_estimators=10, cv_folds=3, n_jobs=1,
                               random_state=0).fit(X, y)
    bundle = ModelBundle(model=model, feature_names=names, classes=[1, 2, 3], class_names=["crop", "forest", "water"],
                         colors=["#f2d16b", "#1a7f37", "#1f5fbf"], metadata={"benchmark": True})
    return save_bundle(bundle, folder)


def run_yaml(work: Path, size: int, block: int, years: int, n_bands: int, threads: int, layers: list[str]) -> Path:
    import yaml

    data = {
        "name": f"bench-{size}-{block}",
        "grid": {"crs": "EPSG:32631", "origin": list(ORIGIN), "pixel_size": 10, "tile_size": size},
        "aoi": {"tiles": ["X0000_Y0000"]},
        "inputs": {
            "periods": {"start_year": 2000, "end_year": 2000 + years - 1, "season_size": 4},
            "sources": [{"name": "syn", "href": str(work / f"inputs-{size}" / "s{season}.tif"),
                         "bands": list(BANDS[:n_bands]),
                         "band_indexes": {b: i + 1 for i, b in enumerate(BANDS[:n_bands])},
                         "scale": 0.0001, "nodata": 0, "resampling": "nearest"}],
        },
        "features": {"indices": ["ndvi"] if n_bands >= 4 else [], "statistics": []},
        "model": {"path": str(work / f"model-{n_bands}"),
                  "classes": [{"code": 1, "name": "crop"}, {"code": 2, "name": "forest"},
                              {"code": 3, "name": "water"}]},
        "processing": {"block_size": block, "threads": threads},
        "output": {"store": str(work / f"out-{size}-{block}"), "layers": layers, "fsync": False},
    }
    path = work / f"run-{size}-{block}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class _SchedSampler:
    """Sums ``/proc/self/task/*/schedstat`` (on-CPU ns, run-queue wait ns) over the threads
    of this process, sampled on a thread of its own; a counter is kept per thread id at its
    last sample, so threads that have ended still count (up to their last sample)."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval, self.last = interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-schedstat", daemon=True)

    def sample(self) -> None:
        me = getattr(self, "_tid", None)
        for task in Path("/proc/self/task").iterdir():
            if task.name == me:
                continue  # the sampler's own thread
            try:
                on_cpu, wait = map(int, (task / "schedstat").read_text().split()[:2])
            except (OSError, ValueError):
                continue  # ended meanwhile
            self.last[task.name] = (on_cpu, wait)

    def _loop(self) -> None:
        import threading

        self._tid = str(threading.get_native_id())
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self.start = dict(self.last)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def totals(self) -> tuple[float, float]:
        """(on-CPU s, run-queue wait s) of every thread since :meth:`__enter__`."""
        cpu = sum(c - self.start.get(t, (0, 0))[0] for t, (c, _) in self.last.items())
        wait = sum(w - self.start.get(t, (0, 0))[1] for t, (_, w) in self.last.items())
        return cpu / 1e9, wait / 1e9


def child(yaml_path: str, overrides: dict) -> None:
    """Run one tile in this (fresh) process and print its measurements as JSON."""
    from ecocube.config import load_config
    from ecocube.grid import TileGrid
    from ecocube.tile import process_tile

    cfg = load_config(yaml_path, overrides or None)
    tile = TileGrid.from_config(cfg.grid).tile("X0000_Y0000")
    sched = _SchedSampler() if Path("/proc/self/task").is_dir() else None
    with sched or contextlib.nullcontext():
        t0, c0 = time.perf_counter(), os.times()
        rec = process_tile(tile, cfg, overwrite=True)
        wall, c1 = time.perf_counter() - t0, os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    extra = {}
    if sched is not None:
        s_cpu, s_wait = sched.totals()
        extra = {"schedstat_cpu_s": round(s_cpu, 2), "schedstat_wait_s": round(s_wait, 2),
                 "runnable_per_wall": round((s_cpu + s_wait) / wall, 2),
                 "schedstat_coverage": round(s_cpu / cpu, 3) if cpu else None}
    print(json.dumps({
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "cpu_per_wall": round(cpu / wall, 2), **extra,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "timings": rec["timings"], "cpu_seconds": rec.get("cpu_seconds", {}), "outputs": len(rec["outputs"]),
        "bytes_written": rec["bytes_written"], "completeness": round(rec["completeness"], 4),
        "blocks": rec["blocks"], "overrides": overrides,
    }))


def _overrides(items: list[str]) -> dict:
    """``KEY=VAL`` options (VAL parsed as YAML) as a dict."""
    from ecocube.config import parse_override

    return dict(parse_override(item) for item in items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=None, help="tile edges in px (default 256,1000,2000; quick 128,256,512)")
    ap.add_argument("--block-sizes", default="256", help="processing block sizes, e.g. 128,256,512")
    ap.add_argument("--years", type=int, default=None, help="years × 4 periods (default 21 = 84 periods; quick 4)")
    ap.add_argument("--bands", type=int, default=6, choices=range(1, 7))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", default="proba,class,uncertainty,composite,flags,count")
    ap.add_argument("--quick", action="store_true", help="a small configuration for a quick check")
    ap.add_argument("--workdir", type=Path, default=None, help="keep inputs/outputs here (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=Path("bench-tile.json"))
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="a checkout whose ecocube is run as the baseline, interleaved with this one")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VAL",
                    help="a setting of every run (e.g. processing.read_ahead=false); repeatable")
    ap.add_argument("--compare", action="append", default=[], metavar="KEY=VAL",
                    help="run each configuration twice, interleaved: without, then with these settings; repeatable")
    ap.add_argument("--repeats", type=int, default=1, help="runs per configuration (and code)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-overrides", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, json.loads(args.child_overrides))
        return
    if args.baseline_src and args.compare:
        ap.error("--baseline-src and --compare are two kinds of baseline: give one")
    fixed, compared = _overrides(args.set), _overrides(args.compare)

    sizes = [int(s) for s in (args.sizes or ("128,256,512" if args.quick else "256,1000,2000")).split(",")]
    blocks = [int(b) for b in args.block_sizes.split(",")]
    years = args.years or (4 if args.quick else 21)
    layers = args.layers.split(",")
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ecocube-bench-tile-")
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)

    _log(f"training the model, making inputs for tiles {sizes} ({years * 4} periods × {args.bands} bands)")
    train_bundle(work / f"model-{args.bands}", args.bands)
    results = []
    paired = bool(args.baseline_src or compared)
    codes = ("baseline", "current") if paired else ("current",)
    for size in sizes:
        make_inputs(work / f"inputs-{size}", size, args.bands)
        for block in blocks:
            path = run_yaml(work, size, block, years, args.bands, args.threads, layers)
            for rep in range(args.repeats):
                for code in codes:
                    _log(f"tile {size}² block {block} ({code}, run {rep + 1}): running ...")
                    env = dict(os.environ)
                    src = args.baseline_src if code == "baseline" and args.baseline_src \
                        else Path(__file__).resolve().parents[2]
                    env["PYTHONPATH"] = str(Path(src).resolve())
                    overrides = {**fixed, **(compared if code == "current" else {})}
                    load = os.getloadavg()[0]
                    proc = subprocess.run([sys.executable, __file__, "--child", str(path), "--child-overrides",
                                           json.dumps(overrides)], capture_output=True, text=True, env=env)
                    if proc.returncode != 0:
                        raise SystemExit(f"tile {size} block {block} ({code}) failed:\n{proc.stderr[-3000:]}")
                    res = json.loads(proc.stdout.strip().splitlines()[-1])
                    t = res["timings"]
                    res.update(tile=size, block=block, pixels=size * size, code=code, run=rep + 1,
                               load_before=round(load, 1), load_after=round(os.getloadavg()[0], 1),
                               overhead_s=round(res["wall_s"] - t.get("predict", 0.0) - t.get("features", 0.0), 2))
                    results.append(res)
                    _log(f"  {res['wall_s']:.1f} s (overhead {res['overhead_s']:.1f} s), peak RSS "
                         f"{res['peak_rss_mib']:.0f} MiB, CPU/wall {res['cpu_per_wall']}, runnable threads/wall "
                         f"{res.get('runnable_per_wall')} (schedstat coverage {res.get('schedstat_coverage')}), "
                         f"load {load:.1f}")
                    cpu = res.get("cpu_seconds", {})
                    _log("  per stage (wall s, CPU s): " + ", ".join(
                        f"{k} {v:.1f} s / {cpu[k]:.1f}" if k in cpu else f"{k} {v:.1f} s"
                        for k, v in t.items()))
                    import shutil

                    shutil.rmtree(work / f"out-{size}-{block}", ignore_errors=True)

    base = results[0]
    print(f"\nbaseline: tile {base['tile']}², block {base['block']} "
          f"({years * 4} periods × {args.bands} bands, {args.threads} threads)"
          + (f"; current = baseline with {compared}" if compared else "") + (f"; every run {fixed}" if fixed else ""))
    print(f"{'code':>8} {'tile':>6} {'block':>6} {'area×':>7} {'wall s':>8} {'wall×':>7} {'ovh s':>7} "
          f"{'ovh×':>6} {'RSS MiB':>8} {'RSS×':>6} {'CPU/wall':>8} {'run/wall':>8} {'load':>5} {'outputs':>8}")
    for r in results:
        # with a baseline checkout: each run against the baseline run just before it (same load)
        ref = base
        if paired:
            ref = next(b for b in results if b["code"] == "baseline" and b["tile"] == r["tile"]
                       and b["block"] == r["block"] and b["run"] == r["run"])
        r["area_ratio"] = round(r["pixels"] / base["pixels"], 2)
        r["wall_ratio"] = round(r["wall_s"] / ref["wall_s"], 2)
        r["overhead_ratio"] = round(r["overhead_s"] / ref["overhead_s"], 2) if ref["overhead_s"] else None
        r["rss_ratio"] = round(r["peak_rss_mib"] / ref["peak_rss_mib"], 2)
        print(f"{r['code']:>8} {r['tile']:>6} {r['block']:>6} {r['area_ratio']:>7} {r['wall_s']:>8.1f} "
              f"{r['wall_ratio']:>7} {r['overhead_s']:>7.1f} {r['overhead_ratio']!s:>6} {r['peak_rss_mib']:>8.0f} "
              f"{r['rss_ratio']:>6} {r['cpu_per_wall']:>8} {r.get('runnable_per_wall')!s:>8} {r['load_before']:>5} "
              f"{r['outputs']:>8}")
    out = {
        "benchmark": "process_tile peak RSS and wall time per tile size",
        "config": {"sizes": sizes, "block_sizes": blocks, "periods": years * 4, "bands": args.bands,
                   "threads": args.threads, "layers": layers, "repeats": args.repeats,
                   "baseline_src": str(args.baseline_src) if args.baseline_src else None,
                   "set": fixed, "compare": compared},
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus_allowed": len(os.sched_getaffinity(0)), "cpus": os.cpu_count(),
                    "load_avg_end": [round(x, 1) for x in os.getloadavg()]},
        "results": results,
    }
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
