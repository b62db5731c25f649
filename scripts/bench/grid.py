#!/usr/bin/env python
"""Benchmark of AOI → tiles in ``ecocube.grid.TileGrid`` at continental size.

Measures, in one run, on the 30 km / 30 m EPSG:3035 grid of a European campaign:

* ``tiles_for_bbox`` over 2520 km × 2520 km (84 × 84 = 7,056 tiles);
* ``tiles_for_geometries`` for a 2600 km disc (~7,000 tiles), against a baseline in the
  same run: the per-tile loop a hand-written script would use (one shapely box per
  candidate tile, ``intersects`` and ``touches`` tested one at a time). Both must give
  the same tiles.

Each timing is the minimum of ``--repeat`` runs (the machine may be shared). Writes JSON.

Usage: ``python scripts/bench/grid.py [--repeat 5] [--out bench-grid.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("bench-grid.json"))
    args = ap.parse_args()

    import shapely

    from ecocube.grid import TileGrid

    grid = TileGrid(crs="EPSG:3035", origin_x=900000.0, origin_y=5500000.0, pixel_size=30.0,
                    tile_size=1000)
    bbox = (2610000.0, 1420000.0, 5130000.0, 3940000.0)
    disc = shapely.Point(4300000, 3200000).buffer(1420000, 64)

    bbox_s, tiles = best(lambda: grid.tiles_for_bbox(bbox), args.repeat)
    geom_s, got = best(lambda: grid.tiles_for_geometries([disc]), args.repeat)

    def per_tile_loop():
        return [t for t in grid.tiles_for_bbox(disc.bounds)
                if shapely.box(*t.bounds).intersects(disc) and not shapely.box(*t.bounds).touches(disc)]

    loop_s, ref = best(per_tile_loop, max(1, args.repeat // 2))
    same = [t.id for t in got] == [t.id for t in ref]
    result = {
        "benchmark": "grid", "machine": platform.machine(), "python": platform.python_version(),
        "cpus_allowed": len(os.sched_getaffinity(0)), "load_avg_1m": os.getloadavg()[0],
        "bbox_tiles": len(tiles), "bbox_s": bbox_s,
        "geometry_tiles": len(got), "geometry_s": geom_s, "per_tile_loop_s": loop_s,
        "speedup_vs_loop": loop_s / geom_s, "same_tiles_as_loop": same,
    }
    print(f"tiles_for_bbox: {len(tiles)} tiles in {bbox_s:.3f} s")
    print(f"tiles_for_geometries: {len(got)} tiles in {geom_s:.3f} s; per-tile loop {loop_s:.3f} s "
          f"({loop_s / geom_s:.1f}x slower); same tiles: {same}")
    text = json.dumps(result, indent=2)
    args.out.write_text(text)
    print(text)
    if not same:
        raise SystemExit("tiles_for_geometries differs from the per-tile loop")


if __name__ == "__main__":
    main()
