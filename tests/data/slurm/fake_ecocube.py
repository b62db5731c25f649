"""A stand-in for the ``ecocube`` command inside Slurm jobs, for tests of the job mechanics.

It runs under the real Slurm with the real templates, reads the real tile list through
``ecocube.slurm.task_tiles`` and writes real status records through ``ecocube.status``,
but does no raster work, so array tests take seconds:

    fake_ecocube.py run-task RUN.yaml --tiles-file KEY   # tiles of SLURM_ARRAY_TASK_ID
    fake_ecocube.py finalize RUN.yaml                    # catalog/catalog.json if all done

Behaviour is steered by files next to RUN.yaml: ``FAIL_TILES`` (tile ids that fail, exit
7 with an ``ecocube: error:`` line), ``SLEEP`` (seconds per tile). Every processed tile
appends a line to ``runs.log`` next to RUN.yaml, so tests can count reruns.

With a file ``OUTPUTS`` next to RUN.yaml, each tile also writes real, tiny tile outputs:
every GeoTIFF :func:`ecocube.tile.plan_outputs` plans for the run (data type, nodata,
bands and tags of the real tile profile) filled with :func:`tile_value` of the tile,
published through the store with their sha256, and listed in the ``done`` record; and
``finalize`` runs the real :func:`ecocube.finalize.finalize` (mosaics, manifest, STAC
catalog validated offline, browser), writing its wall time, S3 requests (botocore calls)
and peak RSS to ``finalize-metrics.json`` next to RUN.yaml.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from ecocube.config import load_config
from ecocube.slurm import task_tiles
from ecocube.status import read_status, tile_states, write_status
from ecocube.store import open_store


class _Term(Exception):
    pass


def tile_value(tile_id: str, product: str, band: int = 0) -> int:
    """The value every pixel of a stand-in output holds: class 1 or 2 like a checkerboard of
    tiles, probabilities 70/30 towards that class, uncertainty 30, cube layers from the index."""
    from ecocube.grid import index_from_tile_id

    ix, iy = index_from_tile_id(tile_id)
    klass = 1 + (ix + iy) % 2
    if product == "class":
        return klass
    if product == "proba":
        return 70 if band == klass - 1 else 30
    if product == "uncertainty":
        return 30
    return (ix * 7 + iy * 3 + band) % 100


def write_outputs(cfg, store, tile, work: Path) -> dict:
    """Every output the run plans for ``tile``, written and published; ``{key: {sha256, size}}``."""
    import numpy as np
    import rasterio

    from ecocube.atomic import sha256_file
    from ecocube.profiles import profile
    from ecocube.sources import periods_from_config
    from ecocube.tile import plan_outputs

    periods = periods_from_config(cfg.inputs.periods)
    specs = plan_outputs(cfg.output.layers, periods=periods, bands=list(cfg.bands),
                         years=sorted({int(p.year) for p in periods}),
                         classes=[int(c.code) for c in cfg.model.classes],
                         class_names=[c.name for c in cfg.model.classes])
    outputs = {}
    for spec in specs:
        key = spec.key(tile.id)
        local = work / key.replace("/", "_")
        data = np.stack([np.full((tile.height, tile.width), tile_value(tile.id, spec.product, b), spec.dtype)
                         for b in range(spec.count)])
        with rasterio.open(local, "w", **profile("tile", width=tile.width, height=tile.height, count=spec.count,
                                                  dtype=spec.dtype, crs=tile.crs, transform=tile.transform,
                                                  nodata=spec.nodata, blockxsize=16, blockysize=16)) as dst:
            dst.write(data)
            for i, desc in enumerate(spec.descriptions[: spec.count], start=1):
                dst.set_band_description(i, desc)
            if spec.scale is not None:
                dst.scales = (spec.scale,) * spec.count
            dst.update_tags(tile=tile.id, product=spec.product, period=spec.period, **spec.tags)
        digest = sha256_file(local)
        info = store.put_file(local, key, sha256=digest, move=True)
        outputs[key] = {"sha256": digest, "size": info.size, **spec.record_entry()}
    return outputs


def _on_term(signum, frame):
    # scancel signals every process of the job and the batch script forwards TERM too:
    # the second TERM must not interrupt the writing of the "interrupted" record
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Term()


def run_task(run_yaml: Path, tiles_file: str) -> int:
    cfg = load_config(run_yaml)
    store = open_store(cfg.output)
    folder = run_yaml.parent
    fail = set((folder / "FAIL_TILES").read_text().split()) if (folder / "FAIL_TILES").exists() else set()
    sleep = float((folder / "SLEEP").read_text()) if (folder / "SLEEP").exists() else 0.0
    outputs = (folder / "OUTPUTS").exists()
    tiles = task_tiles(cfg, tiles_file)
    signal.signal(signal.SIGTERM, _on_term)
    for tile in tiles:
        old = read_status(store, tile.id)
        if old is not None and old.get("state") == "done":
            print(f"tile {tile.id}: done already, skipped")
            continue
        attempt = (old or {}).get("attempt", 0) + 1
        base = {"schema": 1, "tile": tile.id, "run": cfg.name, "attempt": attempt,
                "task": {"array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
                         "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID")}}
        with open(folder / "runs.log", "a") as fh:
            fh.write(f"{tile.id} {os.environ.get('SLURM_ARRAY_JOB_ID')}_{os.environ.get('SLURM_ARRAY_TASK_ID')}\n")
        try:
            write_status(store, {**base, "state": "running"})
            time.sleep(sleep)
            if tile.id in fail:
                write_status(store, {**base, "state": "failed", "error": f"tile {tile.id}: planted failure"})
                print(f"ecocube: error: tile {tile.id}: planted failure", file=sys.stderr)
                return 7
            done = {**base, "state": "done", "completeness": 1.0}
            if outputs:
                work = folder / f".work-{tile.id}"
                work.mkdir(exist_ok=True)
                done["outputs"] = write_outputs(cfg, store, tile, work)
                work.rmdir()
            write_status(store, done)
            print(f"tile {tile.id}: done")
        except _Term:
            write_status(store, {**base, "state": "interrupted", "error": "interrupted by SIGTERM"})
            print(f"ecocube: error: tile {tile.id}: interrupted by SIGTERM", file=sys.stderr)
            return 143
    return 0


def finalize(run_yaml: Path) -> int:
    cfg = load_config(run_yaml)
    store = open_store(cfg.output)
    states = tile_states(cfg, store)
    not_done = [t for t, r in states.items() if r is None or r.get("state") != "done"]
    if not_done:
        print(f"ecocube: error: finalize: tiles not done: {' '.join(not_done)}", file=sys.stderr)
        return 1
    if (run_yaml.parent / "OUTPUTS").exists():
        return real_finalize(cfg, store, run_yaml.parent / "finalize-metrics.json")
    catalog = {"type": "Catalog", "id": cfg.name, "tiles": sorted(states)}
    store.put_bytes(json.dumps(catalog).encode(), "catalog/catalog.json")
    print("finalize: catalog written")
    return 0


def real_finalize(cfg, store, metrics_path: Path) -> int:
    """:func:`ecocube.finalize.finalize`, measured: wall time, botocore calls, peak RSS."""
    import resource

    from botocore.client import BaseClient

    from ecocube.atomic import write_text_atomic
    from ecocube.errors import EcocubeError
    from ecocube.finalize import finalize as run_finalize

    calls = {"n": 0}
    real = BaseClient._make_api_call

    def counting(self, operation_name, api_params):
        calls["n"] += 1
        return real(self, operation_name, api_params)

    BaseClient._make_api_call = counting
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    try:
        built = run_finalize(cfg, store=store)
    except EcocubeError as exc:
        print(f"ecocube: error: finalize: {exc}", file=sys.stderr)
        return 1
    metrics = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
               "s3_requests": calls["n"], "layers": len(built["layers"]), "objects": built["objects"],
               "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               "load_avg": os.getloadavg()}
    write_text_atomic(metrics_path, json.dumps(metrics))
    print(f"finalize: {built['catalog']} ({len(built['layers'])} layers) in {metrics['seconds']:.1f} s")
    return 0


def main(argv: list[str]) -> int:
    cmd, run_yaml = argv[0], Path(argv[1])
    if cmd == "run-task":
        return run_task(run_yaml, argv[argv.index("--tiles-file") + 1])
    if cmd == "finalize":
        return finalize(run_yaml)
    print(f"fake_ecocube: unknown command {cmd}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
