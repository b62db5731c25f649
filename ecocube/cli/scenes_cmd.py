"""``ecocube scenes RUN.yaml [--tile ID]``: the scenes found per tile and period, and the choice."""

from __future__ import annotations

import json

import click

from .options import config_override_option, load_run_config, run_config_argument


@click.command()
@run_config_argument
@config_override_option
@click.option("--tile", "tile_ids", multiple=True, help="Only these tiles (repeatable; default: every tile).")
@click.option("--refresh", is_flag=True, help="Search the STAC API again instead of using the store's cache.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def scenes(run_yaml, overrides, tile_ids, refresh, as_json) -> None:
    """Print, per tile, source and period, every scene found (STAC API search, glob, dates
    or item file), its cloud cover, and whether the scene selection kept it and why.

    STAC API results are cached in the run's store (scenes/TILE/SOURCE.json), so the tiles'
    jobs read them from there.

    \b
    Example:
      ecocube scenes run.yaml --tile X0000_Y0000
    """
    from ..grid import TileGrid
    from ..read import mask_cover
    from ..scenes import scenes_report

    cfg = load_run_config(run_yaml, overrides)
    grid = TileGrid.from_config(cfg.grid)
    tiles = [grid.tile(t) for t in tile_ids] if tile_ids else grid.tiles_for_aoi(cfg.aoi)
    reports = [scenes_report(cfg, t, refresh=refresh, measure=mask_cover) for t in tiles]
    if as_json:
        click.echo(json.dumps(reports if len(reports) != 1 else reports[0], indent=1))
        return
    for rep in reports:
        for src in rep["sources"]:
            if src["kind"] == "composite":
                continue
            sel = src["select"]
            rule = sel["select"] + (f" n={sel['n']}" if sel["select"] != "all" else "") + (
                f" max_cloud={sel['max_cloud']:g}%" if sel["max_cloud"] is not None else "")
            n_found = sum(len(p["scenes"]) for p in src["periods"])
            n_kept = sum(p["kept"] for p in src["periods"])
            click.echo(f"tile {rep['tile']} source {src['source']} ({src['kind']}, from {src['from']}): "
                       f"{n_found} scenes, {n_kept} kept ({rule}, cloud from {sel['cloud_from']})")
            for p in src["periods"]:
                click.echo(f"  {p['period']} (year {p['year']} season {p['season']}): {len(p['scenes'])} scenes, "
                           f"{p['kept']} kept")
                for s in p["scenes"]:
                    cloud = "   ?  " if s["cloud"] is None else f"{s['cloud']:5.1f}%"
                    mark = "+" if s["kept"] else "-"
                    click.echo(f"    {mark} {s['date']} {cloud} {s['item'] or ''}  {s['reason']}")
