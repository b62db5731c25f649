"""``ecocube config check|example``."""

from __future__ import annotations

import click

from ..config import EXAMPLE_YAML
from ..grid import TileGrid
from .options import config_override_option, load_run_config, run_config_argument


@click.group()
def config() -> None:
    """Check a run configuration or print an example."""


@config.command("check")
@run_config_argument
@config_override_option
@click.option("--show", is_flag=True, help="Print the full configuration with defaults.")
def check(run_yaml, overrides, show) -> None:
    """Validate RUN_YAML; exit 2 with the offending keys if it is invalid."""
    from ..config import dump_config

    cfg = load_run_config(run_yaml, overrides)
    grid = TileGrid.from_config(cfg.grid)
    tiles = grid.tiles_for_aoi(cfg.aoi)
    if show:
        click.echo(dump_config(cfg), nl=False)
    click.echo(
        f"{run_yaml}: valid — {len(tiles)} tiles of {grid.tile_size}×{grid.tile_size} px at "
        f"{grid.pixel_size:g} m ({grid.crs}), {len(cfg.bands)} bands, "
        f"{cfg.inputs.periods.end_year - cfg.inputs.periods.start_year + 1} years × "
        f"{cfg.inputs.periods.season_size} periods, store {cfg.output.store}",
        err=show,
    )


@config.command("example")
def example() -> None:
    """Print an annotated example configuration (ecocube config example > run.yaml)."""
    click.echo(EXAMPLE_YAML, nl=False)
