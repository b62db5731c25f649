"""``ecocube config check|example``."""

from __future__ import annotations

import click

from ..config import EXAMPLES
from ..grid import TileGrid
from .options import config_override_option, load_run_config, run_config_argument, run_preflight


@click.group()
def config() -> None:
    """Check a run configuration or print an example.

    \b
    Examples:
      ecocube config example --kind acquisitions > run.yaml
      ecocube config check run.yaml
    """


@config.command("check")
@run_config_argument
@config_override_option
@click.option("--show", is_flag=True, help="Print the full configuration with defaults.")
@click.option("--inputs/--no-inputs", "open_inputs", default=True,
              help="Open a sample of the input files (default) or skip it (no network).")
@click.option("--no-preflight", is_flag=True,
              help="Only validate the file (keys, types, values); no model, input, store or scratch checks.")
def check(run_yaml, overrides, show, open_inputs, no_preflight) -> None:
    """Validate RUN_YAML and pre-flight the run: the area of interest, URL templates, dates,
    the model bundle against the features and classes, a sample of inputs opened, the store
    written, scratch space. Exit 2 listing every problem, one per line.

    \b
    Example:
      ecocube config check run.yaml --no-inputs
    """
    from ..config import dump_config
    from ..preflight import PreflightReport

    cfg = load_run_config(run_yaml, overrides)
    if no_preflight:
        report = PreflightReport(n_tiles=len(_tiles(cfg)))
    else:
        report = run_preflight(cfg, run_yaml, inputs=open_inputs)
    grid = TileGrid.from_config(cfg.grid)
    if show:
        click.echo(dump_config(cfg), nl=False)
    for fact in report.facts:
        click.echo(f"  {fact}", err=True)
    click.echo(
        f"{run_yaml}: valid — {report.n_tiles} tiles of {grid.tile_size}×{grid.tile_size} px at "
        f"{grid.pixel_size:g} m ({grid.crs}), {len(cfg.bands)} bands, "
        f"{cfg.inputs.periods.end_year - cfg.inputs.periods.start_year + 1} years × "
        f"{cfg.inputs.periods.season_size} periods, store {cfg.output.store}",
        err=show,
    )


def _tiles(cfg) -> list:
    return TileGrid.from_config(cfg.grid).tiles_for_aoi(cfg.aoi)


@config.command("example")
@click.option("--kind", "kind", type=click.Choice(sorted(EXAMPLES)), default="composite", show_default=True,
              help="Input source kind: per-period composites, scene files found by a glob, or a STAC API.")
def example(kind) -> None:
    """Print an annotated example configuration to start a run from.

    \b
    Example:
      ecocube config example --kind acquisitions > run.yaml
    """
    click.echo(EXAMPLES[kind], nl=False)
