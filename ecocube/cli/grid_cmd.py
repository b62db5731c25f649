"""``ecocube grid RUN.yaml --out grid.gpkg``."""

from __future__ import annotations

from pathlib import Path

import click

from ..grid import TileGrid, write_grid
from .options import config_override_option, load_run_config, run_config_argument


@click.command()
@run_config_argument
@config_override_option
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output file: .gpkg, .geojson or .fgb.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def grid(run_yaml, overrides, out: Path, overwrite: bool) -> None:
    """Write the tiles of the run's area of interest as polygons (tile_id, ix, iy).

    \b
    Example:
      ecocube grid run.yaml --out grid.gpkg
    """
    from ..errors import FileOverwriteError

    cfg = load_run_config(run_yaml, overrides)
    if out.exists() and not overwrite:
        raise FileOverwriteError(f"{out} exists; use --overwrite to replace it")
    g = TileGrid.from_config(cfg.grid)
    tiles = g.tiles_for_aoi(cfg.aoi)
    write_grid(tiles, out, g.crs)
    click.echo(f"wrote {len(tiles)} tiles to {out}")
