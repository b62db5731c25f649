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
def vectorize(run_yaml: Path, overrides, overwrite: bool, product: str, years, simplify: float, formats,
              no_catalog: bool) -> None:
    """Polygons per class from the finished tiles, dissolved across tile borders, with area and
    mean class probability; published under catalog/ and added to the STAC catalog.

    \b
    Example:
      ecocube vectorize run.yaml --year 2019 --simplify 15 --format gpkg
    """
    from ..vectorize import vectorize_run

    cfg = load_run_config(run_yaml, overrides)
    layers = vectorize_run(cfg, product=product, years=years or None, simplify=simplify,
                           formats=formats or FORMATS, overwrite=overwrite, catalog=not no_catalog)
    for v in layers:
        files = ", ".join(a["key"] for a in v.assets.values())
        click.echo(f"{v.state:10s} {v.item_id}: {v.features} polygons from {len(v.tiles)} tiles ({files})")
