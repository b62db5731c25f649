#!/usr/bin/env python
"""Benchmark: finalize's bookkeeping (find the layers, check every tile file against its
record) for N tiles on the real S3 server of the tests (SeaweedFS), new path vs old path.

For each size it writes N ``done`` status records, each listing F small tile files (real
objects written through ``S3Store.put_bytes``, so each carries its sha256 metadata like a
tile's publish), then measures, in the same process and on the same objects:

- ``old``: the records read one at a time (``_done_records`` with 1 thread, as the old
  ``find_layers`` did) and one HEAD per tile file (``verify_sources`` on a store whose
  listing gives no sizes: the old check);
- ``new``: ``find_layers`` (records in parallel) and ``verify_sources`` from the listings.

Prints wall time and S3 requests (botocore calls) of each and the growth per 10x tiles;
writes JSON. A real campaign has ~81 files per tile (1,575 before the per-period layers were stacked): the old check's HEADs grow with
tiles x files, the new one's listing pages with tiles x files / 1,000.

    python scripts/bench/finalize_plan.py --sizes 700,7000 --files 2 --json out.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
BUCKET = "finalize-plan"
PERIODS = ("2019-01-01", "2019-04-01", "2019-07-01", "2019-10-01", "2020-01-01", "2020-04-01")


def tile_ids(n: int) -> list[str]:
    width = min(100, n)
    return [f"X{i % width:04d}_Y{i // width:04d}" for i in range(n)]


def populate(store, n: int, files: int, threads: int = 16) -> None:
    def _tile(tile: str) -> None:
        outputs = {}
        for j in range(files):
            key = f"composite/{tile}/b{j}.tif"  # stacked: every period in the file, one band each
            data = f"{key} pixels".encode() * 8
            store.put_bytes(data, key)
            outputs[key] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "periods": list(PERIODS)}
        return outputs

    ids = tile_ids(n)
    with ThreadPoolExecutor(threads) as pool:
        all_outputs = list(pool.map(_tile, ids))
    time.sleep(1.1)  # records strictly after their files (whole-second LastModified), as in a tile's publish

    def _record(item) -> None:
        tile, outputs = item
        store.put_bytes(json.dumps({"tile": tile, "state": "done", "outputs": outputs}).encode(),
                        f"status/{tile}.json")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(_record, zip(ids, all_outputs)))


class _NoListingStats:
    """The store as the old check saw it: no sizes from the listing (one HEAD per file)."""

    def __init__(self, store):
        self._store = store

    def list_stats(self, prefix=""):
        return None

    def __getattr__(self, name):
        return getattr(self._store, name)


def measure(cfg, store, counter) -> dict:
    from ecocube import mosaic

    layers = mosaic.find_layers(cfg, store, products=["composite"])  # the layers both paths check
    out: dict = {}
    # old: one listing, the records one at a time, then one HEAD per tile file
    c0, t0 = counter[0], time.perf_counter()
    tiles = [m["tile"] for m in map(mosaic.TILE_KEY_RE.match, store.list("composite/")) if m]
    mosaic._done_records(store, tiles, threads=1)
    t_find = time.perf_counter() - t0
    t1 = time.perf_counter()
    mosaic.verify_sources(_NoListingStats(store), layers, threads=8)
    out["old"] = {"find_seconds": t_find, "verify_seconds": time.perf_counter() - t1, "s3_requests": counter[0] - c0}
    # new: find_layers (records in parallel), then the check from the listings
    c0, t0 = counter[0], time.perf_counter()
    layers = mosaic.find_layers(cfg, store, products=["composite"])
    t_find = time.perf_counter() - t0
    t1 = time.perf_counter()
    counts = mosaic.verify_sources(store, layers, threads=8)
    out["new"] = {"find_seconds": t_find, "verify_seconds": time.perf_counter() - t1,
                  "s3_requests": counter[0] - c0, "verify_counts": counts}
    for k in ("old", "new"):
        out[k]["seconds"] = out[k]["find_seconds"] + out[k]["verify_seconds"]
    out["files"] = counts["files"]
    out["ratio_old_over_new"] = {"seconds": out["old"]["seconds"] / out["new"]["seconds"],
                                 "s3_requests": out["old"]["s3_requests"] / out["new"]["s3_requests"]}
    return out


def per_10x(small, big, n_small, n_big):
    return (big / small) ** (1 / math.log10(n_big / n_small)) if small > 0 and n_big > n_small else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="700,7000")
    ap.add_argument("--files", type=int, default=2, help="tile files per tile record")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "scripts" / "bench"))
    from campaign import _count_s3_requests

    from ecocube.config import config_from_dict
    from ecocube.store import S3Store
    from tests.servers import SeaweedS3

    counter = _count_s3_requests()
    sizes = [int(x) for x in args.sizes.split(",")]
    results = []
    with SeaweedS3() as s3:
        s3.create_bucket(BUCKET)
        os.environ.update(s3.env())
        for n in sizes:
            cfg = config_from_dict({
                "name": f"plan-{n}",
                "grid": {"crs": "EPSG:3035", "origin": [3900000, 3200000], "pixel_size": 10, "tile_size": 16},
                "aoi": {"tiles": tile_ids(n)},
                "inputs": {"sources": [{"name": "s2", "href": "in/{band}.tif", "bands": ["red", "nir"]}]},
                "model": {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]},
                "output": {"store": f"s3://{BUCKET}/run-{n}",
                           "s3": {"endpoint_url": s3.endpoint_url, "region": "us-east-1"}},
            }, base_dir=REPO, source="bench")
            store = S3Store(BUCKET, prefix=f"run-{n}", endpoint_url=s3.endpoint_url, region="us-east-1")
            t0 = time.perf_counter()
            populate(store, n, args.files)
            print(f"[{n}] populated {n} records x {args.files} files in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
            r = {"tiles": n, "files_per_tile": args.files, **measure(cfg, store, counter)}
            results.append(r)
            print(f"{n:>6} tiles, {r['files']:>7} files: old {r['old']['seconds']:8.2f} s "
                  f"{r['old']['s3_requests']:>7} req | new {r['new']['seconds']:8.2f} s "
                  f"{r['new']['s3_requests']:>7} req | old/new time {r['ratio_old_over_new']['seconds']:.1f}x, "
                  f"requests {r['ratio_old_over_new']['s3_requests']:.1f}x", flush=True)
    growth = {}
    if len(results) > 1:
        a, b = results[0], results[-1]
        growth = {path: {k: per_10x(a[path][k], b[path][k], a["tiles"], b["tiles"]) for k in ("seconds", "s3_requests")}
                  for path in ("old", "new")}
        print("growth per 10x tiles:", json.dumps(growth))
    out = {"benchmark": "finalize_plan", "python": platform.python_version(), "cpus": os.cpu_count(),
           "load_avg": os.getloadavg(), "results": results, "growth_per_10x": growth}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
