"""``ecocube mosaic``, ``ecocube stac [build|validate]``, ``ecocube finalize``, ``ecocube browse``."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import EcocubeError
from ..products import NAMES as PRODUCT_NAMES
from .options import config_override_option, load_run_config, overwrite_option, run_config_argument

threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="Threads in all (default: the Slurm allocation / CPU affinity).")


@click.command()
@run_config_argument
@config_override_option
@overwrite_option
@threads_option
@click.option("--product", "products", multiple=True,
              type=click.Choice(PRODUCT_NAMES),
              help="Only these products (repeatable; default: output.layers).")
def mosaic(run_yaml: Path, overrides, overwrite: bool, threads, products) -> None:
    """Mosaic the finished tiles into COGs (+ VRTs, thumbnails) under catalog/ in the store.

    \b
    Example:
      ecocube mosaic run.yaml --product class
    """
    from ..mosaic import mosaic_run

    cfg = load_run_config(run_yaml, overrides)
    layers = mosaic_run(cfg, overwrite=overwrite, threads=threads, products=products or None)
    for layer in layers:
        click.echo(f"{layer.state:10s} {layer.key}  ({len(layer.tiles)} tiles, {layer.size / 2**20:.1f} MiB)")


class _DefaultBuildGroup(click.Group):
    """``ecocube stac RUN.yaml`` is short for ``ecocube stac build RUN.yaml``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["build", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultBuildGroup)
def stac() -> None:
    """Build (``stac build RUN.yaml``, or just ``stac RUN.yaml``) or validate the STAC catalog.

    \b
    Examples:
      ecocube stac build run.yaml
      ecocube stac validate output/catalog
    """


@stac.command("build")
@run_config_argument
@config_override_option
@click.option("--no-validate", is_flag=True, help="Publish without validating against the schemas.")
def stac_build(run_yaml: Path, overrides, no_validate: bool) -> None:
    """Build, validate and publish the catalog from the mosaics of a run.

    \b
    Example:
      ecocube stac build run.yaml
    """
    from ..stac import publish_catalog

    cfg = load_run_config(run_yaml, overrides)
    built = publish_catalog(cfg, validate=not no_validate)
    click.echo(f"catalog: {built.catalog} ({built.objects} files)")
    if built.index:
        click.echo(f"browser: {built.index}")


@stac.command("validate")
@click.argument("catalog", type=click.Path(exists=True, path_type=Path))
@click.option("--schemas", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of STAC JSON schemas laid out by URL (default: the packaged copy).")
@click.option("--no-assets", is_flag=True, help="Do not check that relative asset hrefs exist.")
def stac_validate(catalog: Path, schemas, no_assets: bool) -> None:
    """Validate a local catalog (catalog.json or its folder) offline; exit 1 on any problem.

    \b
    Example:
      ecocube stac validate output/catalog/catalog.json
    """
    from ..stac import PACKAGED_SCHEMAS, validate_catalog

    issues = validate_catalog(catalog, schema_dir=schemas or PACKAGED_SCHEMAS, check_assets=not no_assets)
    if issues:
        for issue in issues:
            click.echo(str(issue), err=True)
        raise EcocubeError(f"{catalog}: {len(issues)} validation problems (first: {issues[0]})")
    click.echo(f"{catalog}: valid")


@click.command()
@run_config_argument
@config_override_option
@overwrite_option
@threads_option
@click.option("--dry-run", is_flag=True,
              help="List the mosaics that would be written, kept or refused; write nothing.")
def finalize(run_yaml: Path, overrides, overwrite: bool, threads, dry_run: bool) -> None:
    """Mosaic + STAC catalog + browser: the job Slurm runs after the tiles.

    \b
    Examples:
      ecocube finalize run.yaml --dry-run
      ecocube finalize run.yaml
    """
    from ..finalize import finalize as run_finalize

    cfg = load_run_config(run_yaml, overrides)
    if dry_run:
        from ..mosaic import plan_mosaics
        from ..store import store_for

        store = store_for(cfg)
        plan = plan_mosaics(cfg, store, overwrite=overwrite)
        click.echo(f"mosaics: {len(plan.todo)} to write, {len(plan.kept)} up to date, {len(plan.stale)} changed "
                   "since they were made" + (" (refused without --overwrite)" if plan.stale else ""))
        for key in plan.keys():
            click.echo(f"  write {store.url(key)}")
        for url in plan.stale:
            click.echo(f"  changed {url}")
        click.echo(f"then the STAC catalog {store.url('catalog/catalog.json')} and its browser page")
        click.echo("(dry run: nothing written)")
        return
    result = run_finalize(cfg, overwrite=overwrite, threads=threads)
    written = sum(1 for x in result["layers"] if x.state == "written")
    click.echo(f"mosaics: {len(result['layers'])} ({written} written, {len(result['layers']) - written} up to date)")
    click.echo(f"catalog: {result['catalog']}")
    click.echo(f"browser: {result['index']}")


@click.command()
@click.argument("catalog_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port on 127.0.0.1 (0: any free port).")
@click.option("--write-index/--no-write-index", default=None,
              help="(Re)write index.html first (default: only if it is missing).")
def browse(catalog_dir: Path, port: int, write_index) -> None:
    """Serve a catalog folder on 127.0.0.1 (Range requests, CORS) for browsers, QGIS and GDAL.

    \b
    Example:
      ecocube browse output/catalog --port 8000
    """
    from ..browse import serve, write_browser

    if write_index or (write_index is None and not (catalog_dir / "index.html").exists()):
        click.echo(f"wrote {write_browser(catalog_dir)}")

    def _ready(url: str) -> None:
        click.echo(f"serving {catalog_dir} at {url}/  (index: {url}/index.html, catalog: {url}/catalog.json)")
        click.echo("GDAL/QGIS: /vsicurl/" + url + "/<collection>/<item>/<asset>.tif ; Ctrl-C stops")

    try:
        serve(catalog_dir, port, ready=_ready)
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM (ecocube.cli.handle_stop_signals)
        click.echo(f"stopped{f' by {exc}' if str(exc) else ''}")
