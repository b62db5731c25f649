"""CLI glue for Slurm jobs while ``ecocube run-task --tiles-file`` / ``ecocube finalize`` are
not wired yet: the same library calls those commands make, nothing faked.

    ecocube_shim.py run-task RUN.yaml --tiles-file KEY   # task_tiles + tile.run_tiles
    ecocube_shim.py finalize RUN.yaml                    # mosaic.finalize
"""

from __future__ import annotations

import sys
from pathlib import Path

from ecocube.config import load_config
from ecocube.errors import EcocubeError


def main(argv: list[str]) -> int:
    cmd, run_yaml = argv[0], Path(argv[1])
    cfg = load_config(run_yaml)
    try:
        if cmd == "run-task":
            from ecocube.slurm import task_tiles
            from ecocube.tile import run_tiles

            tiles = task_tiles(cfg, argv[argv.index("--tiles-file") + 1])
            print(f"task tiles: {' '.join(t.id for t in tiles)}", file=sys.stderr)
            records = run_tiles(cfg, tiles, workers=1, progress=False)
            bad = [r for r in records if r.get("state") != "done"]
            for r in bad:
                print(f"ecocube: error: tile {r.get('tile')}: {r.get('error')}", file=sys.stderr)
            return 1 if bad else 0
        if cmd == "finalize":
            from ecocube.mosaic import finalize

            finalize(cfg, overwrite=True)
            return 0
    except EcocubeError as exc:
        print(f"ecocube: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"ecocube_shim: unknown command {cmd}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
