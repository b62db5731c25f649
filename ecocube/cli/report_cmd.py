"""``ecocube report RUN.yaml [--out DIR]``."""

from __future__ import annotations

from pathlib import Path

import click

from .options import config_override_option, load_run_config, run_config_argument


@click.command()
@run_config_argument
@config_override_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("report"),
              show_default=True, help="Folder for report.html, report.json, tiles.csv and the PNGs.")
@click.option("--regions", "regions_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Polygons with a name (GeoPackage, GeoJSON, ...): completeness per region.")
@click.option("--region-field", default="name", show_default=True, help="The regions' name field.")
@click.option("--unit", type=click.Choice(["pixels", "chips"]), default="pixels", show_default=True,
              help="Completeness in pixels, or chips (chip models).")
@click.option("--stale-after", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="A running tile of another host without a heartbeat for this long is stale (default 3600).")
def report(run_yaml, overrides, out_dir, regions_path, region_field, unit, stale_after) -> None:
    """Write one self-contained HTML page on the run of RUN_YAML, during the run or after it.

    Tiles by state on the grid, completeness per tile and region, time and memory per
    tile, failures grouped by error with their logs, inputs missing, how gaps were
    filled, the model's accuracy and plots, links into the catalog once finalized.

    \b
    Example:
      ecocube report run.yaml --out report && xdg-open report/report.html
    """
    from ..report import write_report

    cfg = load_run_config(run_yaml, overrides)
    rep = write_report(cfg, out_dir, regions_path=regions_path, region_field=region_field, unit=unit,
                       stale_after=stale_after)
    c = rep["counts"]
    click.echo(f"{rep['tiles_total']} tiles: " + ", ".join(f"{c[s]} {s}" for s in c if c[s])
               + f"; completeness {100 * rep['completeness']['overall']:.1f} %; "
               + f"{sum(len(g['tiles']) for g in rep['failures'])} tiles in {len(rep['failures'])} failure groups")
    click.echo(f"wrote {rep['files']['report.html']}")
