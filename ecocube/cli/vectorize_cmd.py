"""``ecocube vectorize``: class maps → polygons (GeoPackage, GeoParquet, GeoJSON) + catalog item."""

from __future__ import annotations

from pathlib import Path

import click

from .options import config_override_option, load_run_config, overwrite_option, run_config_argument

FORMATS = ("gpkg", "parquet", "geojson")


@click.command()
@run_config_argument
@config_override_option
@overwrite_option
@click.option("--product", default="class", show_default=True, metavar="NAME",
              help="The class-map product to vectorise.")
@click.option("--year", "years", type=int, multiple=True,
              help="Only this year (repeatable; default: every year with finished tiles).")
@click.option("--simplify", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Simplification tolerance in grid CRS units (0: exact pixel edges); neighbours keep "
                   "sharing their edges.")
@click.option("--format", "formats", type=click.Choice(FORMATS), multiple=True,
              help="Output format (repeatable; default: all three). GeoJSON is in WGS84 (RFC 7946).")
@click.option("--no-catalog", is_flag=True, help="Do not rebuild the STAC catalog afterwards.")
@click.option("--dry-run", is_flag=True,
              help="List the polygon files that would be written, kept or refused; write nothing.")
def vectorize(run_yaml: Path, overrides, overwrite: bool, product: str, years, simplify: float, formats,
              no_catalog: bool, dry_run: bool) -> None:
    """Polygons per class from the finished tiles, dissolved across tile borders, with area and
    mean class probability; published under catalog/ and added to the STAC catalog.

    \b
    Examples:
      ecocube vectorize run.yaml --year 2019 --simplify 15 --format gpkg
      ecocube vectorize run.yaml --dry-run
    """
    from ..vectorize import vectorize_run

    cfg = load_run_config(run_yaml, overrides)
    if dry_run:
        _print_plan(cfg, product, years, simplify, formats or FORMATS, overwrite, catalog=not no_catalog)
        return
    layers = vectorize_run(cfg, product=product, years=years or None, simplify=simplify,
                           formats=formats or FORMATS, overwrite=overwrite, catalog=not no_catalog)
    for v in layers:
        files = ", ".join(a["key"] for a in v.assets.values())
        click.echo(f"{v.state:10s} {v.item_id}: {v.features} polygons from {len(v.tiles)} tiles ({files})")


def _print_plan(cfg, product, years, simplify, formats, overwrite, *, catalog: bool) -> None:
    from ..manifest import VECTORS_KEY
    from ..store import store_for
    from ..vectorize import plan_vectorize

    store = store_for(cfg)
    plan = plan_vectorize(cfg, store, product=product, years=years or None, simplify=simplify, formats=formats,
                          overwrite=overwrite)
    click.echo(f"years: {len(plan.todo)} to write, {len(plan.kept)} up to date, {len(plan.stale)} changed "
               "since they were made" + (" (refused without --overwrite)" if plan.stale else ""))
    for src, _proba, _digest in plan.todo:
        click.echo(f"  write {src.period[:4]} from {len(src.tiles)} tiles: "
                   + ", ".join(store.url(k) for k in plan.keys(src.period)))
    for v in plan.kept:
        click.echo(f"  up to date {v.period[:4]}: {v.features} polygons")
    for url in plan.stale:
        click.echo(f"  changed {url}")
    if plan.todo and not plan.stale:
        click.echo(f"then {store.url(VECTORS_KEY)}" + (" and the STAC catalog" if catalog else ""))
    click.echo("(dry run: nothing written)")
