"""``ecocube grid RUN.yaml --out grid.gpkg``."""

from __future__ import annotations

from pathlib import Path

import click

from ..grid import TileGrid, grid_driver, write_grid
from .options import config_override_option, load_run_config, run_config_argument


@click.command()
@run_config_argument
@config_override_option
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output file: .gpkg, .geojson or .fgb.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--dry-run", is_flag=True, help="Say which tiles would be written to OUT, and whether OUT would be "
                                              "replaced or refused; write nothing.")
def grid(run_yaml, overrides, out: Path, overwrite: bool, dry_run: bool) -> None:
    """Write the tiles of the run's area of interest as polygons (tile_id, ix, iy).

    \b
    Examples:
      ecocube grid run.yaml --out grid.gpkg
      ecocube grid run.yaml --out grid.gpkg --dry-run
    """
    from ..errors import FileOverwriteError

    cfg = load_run_config(run_yaml, overrides)
    driver = grid_driver(out)
    g = TileGrid.from_config(cfg.grid)
    if dry_run:
        tiles = g.tiles_for_aoi(cfg.aoi)
        click.echo(f"{len(tiles)} tiles to write to {out} ({driver}, {g.crs}): {_tile_range(tiles)}")
        if out.exists():
            click.echo(f"{out} exists: " + ("it would be replaced (--overwrite)" if overwrite else
                                            "refused without --overwrite"))
        click.echo("(dry run: nothing written)")
        return
    if out.exists() and not overwrite:
        raise FileOverwriteError(f"{out} exists; use --overwrite to replace it")
    tiles = g.tiles_for_aoi(cfg.aoi)
    write_grid(tiles, out, g.crs)
    click.echo(f"wrote {len(tiles)} tiles to {out}")


def _tile_range(tiles) -> str:
    """The tiles' ids (the first and last three of more than six) and the bounds they cover."""
    ids = [t.id for t in tiles]
    shown = " ".join(ids) if len(ids) <= 6 else f"{' '.join(ids[:3])} ... {' '.join(ids[-3:])}"
    if not tiles:
        return shown
    b = [t.bounds for t in tiles]
    left, bottom = min(x[0] for x in b), min(x[1] for x in b)
    right, top = max(x[2] for x in b), max(x[3] for x in b)
    return f"{shown}; bounds ({left:.12g}, {bottom:.12g}, {right:.12g}, {top:.12g})"
