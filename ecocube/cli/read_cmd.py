"""``ecocube read RUN.yaml --tile ID --out DIR``: dump one tile's input series (debugging;
the work is :func:`ecocube.read_dump.dump_tile_read`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import config_override_option, load_run_config, overwrite_option, run_config_argument


@click.command()
@run_config_argument
@config_override_option
@click.option("--tile", "tile_id", required=True, help="Tile id, e.g. X0012_Y0034.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder; the dump goes to OUT/TILE/.")
@click.option("--window", nargs=4, type=int, default=None, metavar="COL ROW WIDTH HEIGHT",
              help="Read only this window of the tile (tile pixels).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Read threads (default: the allocation).")
@overwrite_option
def read(run_yaml, overrides, tile_id: str, out: Path, window, threads, overwrite: bool) -> None:
    """Read the inputs of one tile into the tile grid and write what was read.

    Writes OUT/TILE/read.npz (data, reason, count, bands, periods), one float32 GeoTIFF
    per period (NaN = no valid value, band descriptions = band names) and summary.json
    (stats, missing inputs, share of each reason per period and band).

    \b
    Example:
      ecocube read run.yaml --tile X0000_Y0000 --out read-X0000_Y0000/
    """
    from ..read_dump import dump_tile_read

    cfg = load_run_config(run_yaml, overrides)
    dest, result, summary = dump_tile_read(cfg, tile_id, out, window=window or None, threads=threads,
                                           overwrite=overwrite)
    click.echo(json.dumps({"tile": summary["tile"], "out": str(dest), "shape": summary["shape"],
                           "valid_fraction": summary["valid_fraction"], "missing": result.missing,
                           "stats": result.stats}, indent=1))
