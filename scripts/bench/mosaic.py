#!/usr/bin/env python
"""Benchmark: peak RSS and wall time of ``ecocube.mosaic.mosaic_run``, small vs large mosaic.

Writes synthetic tile outputs in the store layout of a finished run (``status/<tile>.json``
``done`` records; ``class`` uint16, ``uncertainty`` uint8 and ``composite/<band>`` int16
GeoTIFFs per tile, tiled and DEFLATE-compressed like ``process_tile`` writes them) into a
temporary local store, then runs the real ``mosaic_run`` (VRT → windowed staging GeoTIFF →
GDAL COG driver with internal overviews → thumbnail → publish) in a fresh child process per
case, so each peak RSS is its own. Prints a table with ratios against the first (baseline)
case of the same invocation and writes JSON.

The claim under test: peak RSS is bounded by the windows and GDAL's block cache, not by the
mosaic size (the large case has 16× the pixels of the small one by default).

    python scripts/bench/mosaic.py                       # 2×2 tiles of 1000² vs 4×4 tiles of 2000²
    python scripts/bench/mosaic.py --quick               # 2×2 of 500² vs 4×4 of 1000²
    python scripts/bench/mosaic.py --cases 2x500,4x2000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ORIGIN = (500000.0, 6000000.0)
PIXEL = 10.0
CLASSES = ((10, "crop", "#f2d16b"), (20, "forest", "#1a7f37"), (30, "water", "#1f5fbf"))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def config_dict(store: Path, n: int, size: int) -> dict:
    tiles = [f"X{x:04d}_Y{y:04d}" for y in range(n) for x in range(n)]
    return {
        "name": f"bench-mosaic-{n}x{size}",
        "grid": {"crs": "EPSG:32631", "origin": list(ORIGIN), "pixel_size": PIXEL, "tile_size": size},
        "aoi": {"tiles": tiles},
        "inputs": {"sources": [{"name": "s2", "href": "/unused/{band}.tif", "bands": ["red"]}]},
        "model": {"classes": [{"code": c, "name": name, "color": col} for c, name, col in CLASSES]},
        "output": {"store": str(store), "layers": ["class", "uncertainty", "composite"]},
    }


def make_store(store: Path, n: int, size: int, seed: int = 0) -> int:
    """n×n tiles of size² px in the output layout; returns the bytes written."""
    import numpy as np
    import rasterio

    from ecocube.config import config_from_dict
    from ecocube.grid import TileGrid
    from ecocube.status import write_status
    from ecocube.store import LocalStore

    cfg = config_from_dict(config_dict(store, n, size))
    grid = TileGrid.from_config(cfg.grid)
    lstore = LocalStore(store)
    rng = np.random.default_rng(seed)
    written = 0
    layers = (  # (key pattern, dtype, nodata, scale, description)
        ("class/{t}/2020-01-01/class.tif", "uint16", 65535, 1.0, "class"),
        ("uncertainty/{t}/2020-01-01/uncertainty.tif", "uint8", 255, 1.0, "uncertainty"),
        ("composite/{t}/red.tif", "int16", -32768, 0.0001, "2020-01-01"),  # stacked: one period here
    )
    codes = np.array([c for c, _, _ in CLASSES], np.uint16)
    for tile in grid.tiles_for_aoi(cfg.aoi):
        outputs = {}
        for pattern, dtype, nodata, scale, desc in layers:
            key = pattern.format(t=tile.id)
            path = store / key
            path.parent.mkdir(parents=True, exist_ok=True)
            profile = dict(driver="GTiff", width=size, height=size, count=1, dtype=dtype, crs=tile.crs,
                           transform=tile.transform, nodata=nodata, tiled=True, blockxsize=256, blockysize=256,
                           compress="deflate", predictor=2 if dtype == "int16" else 1)
            with rasterio.open(path, "w", **profile) as dst:
                for row in range(0, size, 256):
                    h = min(256, size - row)
                    rows, cols = np.mgrid[row:row + h, 0:size]
                    lc = ((rows // 37) + (cols // 53)) % 3
                    if dtype == "uint16":
                        block = codes[lc]
                    elif dtype == "uint8":
                        block = rng.integers(0, 60, (h, size), dtype=np.uint8)
                    else:
                        block = (np.array([800, 300, 150], np.int16)[lc]
                                 + rng.integers(-40, 40, (h, size), dtype=np.int16))
                    block[rng.random((h, size)) < 0.01] = nodata
                    dst.write(block.astype(dtype), 1, window=((row, row + h), (0, size)))
                dst.scales = (scale,)
                dst.set_band_description(1, desc)
            info = lstore.info(key)
            outputs[key] = {"sha256": info.sha256, "size": info.size,
                            **({"periods": [desc]} if key.startswith("composite/") else {})}
            written += info.size
        write_status(lstore, {"tile": tile.id, "state": "done", "attempt": 1, "completeness": 1.0,
                              "outputs": outputs})
    return written


def child(store: str, n: int, size: int, threads: int) -> None:
    from ecocube.config import config_from_dict
    from ecocube.mosaic import mosaic_run

    cfg = config_from_dict(config_dict(Path(store), n, size))
    t0 = time.perf_counter()
    layers = mosaic_run(cfg, threads=threads, overwrite=True)
    wall = time.perf_counter() - t0
    print(json.dumps({
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "layers": len(layers),
        "cog_bytes": sum(layer.size for layer in layers),
        "shape": layers[0].shape,
        "overviews": layers[0].overviews,
    }))


def parse_case(text: str) -> tuple[int, int]:
    n, _, size = text.lower().partition("x")
    return int(n), int(size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=None, help="comma-separated NxSIZE (N×N tiles of SIZE² px); first = baseline")
    ap.add_argument("--quick", action="store_true", help="2x500,4x1000")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="folder for the synthetic stores (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=Path("bench-mosaic.json"))
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        store, n, size, threads = args.child
        child(store, int(n), int(size), int(threads))
        return
    cases = [parse_case(c) for c in (args.cases or ("2x500,4x1000" if args.quick else "2x1000,4x2000")).split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-mosaic-", dir=args.work) as tmp:
        results = []
        for n, size in cases:
            store = Path(tmp) / f"store-{n}x{size}"
            t0 = time.perf_counter()
            nbytes = make_store(store, n, size)
            _log(f"{n}×{n} tiles of {size}² px: inputs written in {time.perf_counter() - t0:.1f} s "
                 f"({nbytes / 2**20:.0f} MiB)")
            proc = subprocess.run([sys.executable, __file__, "--child", str(store), str(n), str(size),
                                   str(args.threads)], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.exit(f"mosaic of {n}x{size} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res.update(tiles=n * n, tile_size=size, mosaic_pixels=(n * size) ** 2, input_bytes=nbytes)
            results.append(res)
            _log(f"  mosaic: {res['wall_s']} s, peak RSS {res['peak_rss_mib']} MiB")

    base = results[0]
    print(f"{'tiles':>7} {'mosaic px':>12} {'wall s':>8} {'peak RSS MiB':>13} {'px ×':>6} {'RSS ×':>6} {'time ×':>7}")
    for r in results:
        r["pixels_ratio"] = round(r["mosaic_pixels"] / base["mosaic_pixels"], 2)
        r["rss_ratio"] = round(r["peak_rss_mib"] / base["peak_rss_mib"], 2)
        r["time_ratio"] = round(r["wall_s"] / base["wall_s"], 2)
        side = r["tile_size"] * int(r["tiles"] ** 0.5)
        print(f"{r['tiles']:>7} {f'{side}²':>12} {r['wall_s']:>8} {r['peak_rss_mib']:>13} "
              f"{r['pixels_ratio']:>6} {r['rss_ratio']:>6} {r['time_ratio']:>7}")
    doc = {"benchmark": "mosaic_run", "threads": args.threads, "python": platform.python_version(),
           "machine": platform.machine(), "cpus_allowed": len(os.sched_getaffinity(0)), "results": results}
    args.out.write_text(json.dumps(doc, indent=2))
    _log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
