#!/usr/bin/env python
"""Benchmark of ecocube.read: requests and bytes per tile read, reads/s with 1 vs N threads.

Reads the real Sentinel-2 series (tests/data/worldcereal-be-2019: 72 dates, 2 files per
date) into an EPSG:3035 tile over HTTP from the in-process Range server of the tests
(which counts requests and body bytes and can add a per-request latency, as a remote
object store has), and from local files as the baseline of the same run.

    python scripts/bench/read.py [--threads 2,8] [--latency-ms 20] [--repeat 2] [--out bench-read.json]

Prints and writes JSON: files read, requests and bytes per file and per tile against the
size of the files (and against ``stats["bytes_read"]``, the compressed image blocks the read
reports), and files/s for 1 thread and each N (``speedup_N``: ratio against 1 thread).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # the Range server of the tests

from rangeserver import RangeServer  # noqa: E402

from ecocube.config import config_from_dict  # noqa: E402
from ecocube.grid import TileGrid  # noqa: E402
from ecocube.read import read_block  # noqa: E402

DATA = ROOT / "tests" / "data" / "worldcereal-be-2019"
GRID = {"crs": "EPSG:3035", "origin": [3902140.0, 3087810.0], "pixel_size": 10.0, "tile_size": 48}


def make_cfg(base: str, dates: list[str], window_tile: int = 48):
    grid = dict(GRID, tile_size=window_tile)
    return config_from_dict({
        "grid": grid, "aoi": {"tiles": ["X0000_Y0000"]},
        "model": {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]},
        "inputs": {
            "periods": {"start_year": 2018, "end_year": 2019, "season_size": 4},
            "retries": 1, "backoff_seconds": 0.05,
            "sources": [{
                "name": "s2", "kind": "acquisitions", "href": f"{base}/S2L2A_{{yyyymmdd}}_10m.tif",
                "bands": ["B02", "B03", "B04", "B08"], "band_indexes": {"B02": 1, "B03": 2, "B04": 3, "B08": 4},
                "dates": dates, "scale": 0.0001, "nodata": 0, "resampling": "bilinear",
                "mask": {"href": f"{base}/S2L2A_{{yyyymmdd}}_SCL.tif", "kind": "classes", "values": [3, 8, 9, 10]},
            }],
        },
    })


def timed_read(cfg, tile, threads: int, repeat: int) -> tuple[float, dict]:
    best, stats = float("inf"), {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = read_block(cfg, tile, threads=threads)
        best = min(best, time.perf_counter() - t0)
        stats = res.stats
    return best, stats


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="2,8", help="the Ns of the 1-vs-N comparison, comma-separated")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="added to every HTTP request")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many reads per setting")
    ap.add_argument("--out", type=Path, default=Path("bench-read.json"))
    args = ap.parse_args(argv)
    ns = [int(n) for n in str(args.threads).split(",") if n.strip()]

    dates = [d[:10] for d in json.loads((DATA / "timestamps.json").read_text())]
    work = Path(tempfile.mkdtemp(prefix="ecocube-bench-read-"))
    try:
        for f in DATA.glob("S2L2A_*.tif"):
            shutil.copy(f, work / f.name)
        files = sorted(work.glob("S2L2A_*.tif"))
        file_bytes = sum(f.stat().st_size for f in files)
        tile = TileGrid(crs=GRID["crs"], origin_x=GRID["origin"][0], origin_y=GRID["origin"][1],
                        pixel_size=GRID["pixel_size"], tile_size=GRID["tile_size"]).tile("X0000_Y0000")
        report: dict = {"files": len(files), "file_bytes": file_bytes, "dates": len(dates),
                        "tile_px": [tile.height, tile.width], "latency_ms": args.latency_ms}

        # local baseline
        local_cfg = make_cfg(str(work), dates)
        t1, _ = timed_read(local_cfg, tile, 1, args.repeat)
        report["local"] = {"seconds_1": round(t1, 3), "files_per_s_1": round(len(files) / t1, 1)}
        for n in ns:
            tn, _ = timed_read(local_cfg, tile, n, args.repeat)
            report["local"].update({f"seconds_{n}": round(tn, 3), f"files_per_s_{n}": round(len(files) / tn, 1),
                                    f"speedup_{n}": round(t1 / tn, 2)})

        with RangeServer(work) as srv:
            if args.latency_ms > 0:
                srv.add_fault("", "stall", seconds=args.latency_ms / 1000.0)  # every request waits
            http_cfg = make_cfg(srv.url, dates)
            srv.reset_log()
            t1, stats = timed_read(http_cfg, tile, 1, 1)
            log = srv.log
            requests, body = len(log), sum(r.body_bytes for r in log)
            t1b, _ = timed_read(http_cfg, tile, 1, max(args.repeat - 1, 1))
            t1 = min(t1, t1b)
            tns = {n: timed_read(http_cfg, tile, n, args.repeat)[0] for n in ns}
            # one window of a quarter of the tile: fewer bytes only when files are tiled finer
            # than the window (these are 64x64 px files in one block each)
            from rasterio.windows import Window

            srv.reset_log()
            wres = read_block(http_cfg, tile, Window(0, 0, 24, 24), threads=max(ns or [1]))
            wlog = srv.log
        report["http"] = {
            "requests_per_tile": requests, "requests_per_file": round(requests / len(files), 2),
            "bytes_per_tile": body, "bytes_vs_file_sizes": round(body / file_bytes, 3),
            "heads": sum(1 for r in log if r.method == "HEAD"),
            "bytes_read_stat": stats.get("bytes_read"),
            "http_bytes_vs_bytes_read_stat": round(body / stats["bytes_read"], 3) if stats.get("bytes_read") else None,
            "window_quarter": {"requests": len(wlog), "bytes": sum(r.body_bytes for r in wlog),
                               "bytes_read_stat": wres.stats.get("bytes_read")},
            "seconds_1": round(t1, 3), "files_per_s_1": round(len(files) / t1, 1),
        }
        for n, tn in tns.items():
            report["http"].update({f"seconds_{n}": round(tn, 3), f"files_per_s_{n}": round(len(files) / tn, 1),
                                   f"speedup_{n}": round(t1 / tn, 2)})
        report["http"]["read_stats"] = stats
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=1)
    print(text)
    tmp = args.out.with_name(f".{args.out.name}.part")
    tmp.write_text(text + "\n")
    tmp.replace(args.out)
    return report


if __name__ == "__main__":
    main()
