"""A stand-in for the ``ecocube`` command inside Slurm jobs, for tests of the job mechanics.

It runs under the real Slurm with the real templates, reads the real tile list through
``ecocube.slurm.task_tiles`` and writes real status records through ``ecocube.status``,
but does no raster work, so array tests take seconds:

    fake_ecocube.py run-task RUN.yaml --tiles-file KEY   # tiles of SLURM_ARRAY_TASK_ID
    fake_ecocube.py finalize RUN.yaml                    # catalog/catalog.json if all done

Behaviour is steered by files next to RUN.yaml: ``FAIL_TILES`` (tile ids that fail, exit
7 with an ``ecocube: error:`` line), ``SLEEP`` (seconds per tile). Every processed tile
appends a line to ``runs.log`` next to RUN.yaml, so tests can count reruns.
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
            write_status(store, {**base, "state": "done", "completeness": 1.0})
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
    catalog = {"type": "Catalog", "id": cfg.name, "tiles": sorted(states)}
    store.put_bytes(json.dumps(catalog).encode(), "catalog/catalog.json")
    print("finalize: catalog written")
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
