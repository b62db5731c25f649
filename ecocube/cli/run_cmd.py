"""``ecocube run-tile``, ``ecocube run``, ``ecocube run-task`` and ``ecocube status``."""

from __future__ import annotations

import json

import click

from .options import config_override_option, load_run_config, overwrite_option, run_config_argument

threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="Threads per tile (default: processing.threads, then the allocation).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
log_format_option = click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="json: one JSON line per tile on stdout (tile, state, seconds, peak RSS, completeness, error) "
         "and one summary line, for log collectors; errors still end with one line on stderr.")

#: the fields of a tile's JSON log line, from its record
LOG_FIELDS = ("tile", "state", "attempt", "seconds", "peak_rss_bytes", "completeness", "error", "host", "pid",
              "finished")


def tile_log_line(rec: dict) -> str:
    """The one JSON line of a tile (``--log-format json``)."""
    line = {"event": "tile", **{k: rec.get(k) for k in LOG_FIELDS}}
    if rec.get("skipped"):
        line["skipped"] = True
    if rec.get("held"):
        line["held"] = True
    return json.dumps(line, sort_keys=False, default=str)


def _tiles(cfg, ids: tuple[str, ...] = ()):
    from ..errors import GridError
    from ..grid import TileGrid

    grid = TileGrid.from_config(cfg.grid)
    tiles = grid.tiles_for_aoi(cfg.aoi)
    if not tiles:
        raise GridError("the area of interest holds no tile of the grid: nothing to do (check aoi and grid.origin)")
    if ids:
        known = {t.id: t for t in tiles}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise GridError(f"tiles not in the run's area of interest: {', '.join(unknown)}")
        tiles = [known[i] for i in ids]
    return tiles


def _describe(rec: dict) -> str:
    if rec.get("held"):
        from ..status import holder_text

        return f"{rec['tile']}: held by another live process, {holder_text(rec)}; skipped"
    if rec.get("skipped"):
        return f"{rec['tile']}: already done (attempt {rec.get('attempt')}), outputs verified; skipped"
    state = rec.get("state")
    if state == "empty":
        return f"{rec['tile']}: empty: no input data at all (inputs.on_empty: record); no outputs"
    if state == "done":
        return (f"{rec['tile']}: done in {rec.get('seconds', 0):.1f} s, completeness "
                f"{100 * rec.get('completeness', 0):.1f} %, {len(rec.get('outputs') or {})} outputs, "
                f"peak RSS {rec.get('peak_rss_bytes', 0) / 2**20:.0f} MiB")
    return f"{rec['tile']}: {state}: {rec.get('error')}"


def _finish_many(records: list[dict], n_tiles: int, log_format: str = "text") -> None:
    from ..errors import TileError

    failed_records = [r for r in records if r.get("state") == "failed"]
    failed = [r["tile"] for r in failed_records]
    done = sum(1 for r in records if r.get("state") in ("done", "empty"))
    skipped = sum(1 for r in records if r.get("skipped"))
    held = [r["tile"] for r in records if r.get("held")]
    if log_format == "json":
        click.echo(json.dumps({"event": "summary", "tiles": n_tiles, "done": done, "skipped": skipped,
                               "failed": failed, "held": held}))
    else:
        click.echo(f"{n_tiles} tiles: {done} done ({skipped} skipped as already done), {len(failed)} failed"
                   + (f", {len(held)} held by another process and skipped: {' '.join(held)}" if held else ""))
    if failed:
        first = failed_records[0].get("error") or "unknown error"
        raise TileError(f"{len(failed)} of {n_tiles} tiles failed: {' '.join(failed)}; "
                        f"first error: {first} (see 'ecocube status' for all errors)")


@click.command("run-tile")
@run_config_argument
@click.option("--tile", "tile_id", required=True, help="Tile id, e.g. X0012_Y0034.")
@config_override_option
@overwrite_option
@threads_option
@json_option
@log_format_option
def run_tile(run_yaml, tile_id, overrides, overwrite, threads, as_json, log_format) -> None:
    """Process one tile of RUN_YAML: read, gap-fill, predict, publish, record status.

    Exits non-zero when the tile fails (its status record holds the error) or is
    interrupted by SIGTERM/SIGINT (nothing partial is published).

    \b
    Example:
      ecocube run-tile run.yaml --tile X0000_Y0000 --log-format json
    """
    from ..tile import process_tile, stop_on_signals

    cfg = load_run_config(run_yaml, overrides)
    (tile,) = _tiles(cfg, (tile_id,))
    with stop_on_signals() as flag:
        try:
            rec = process_tile(tile, cfg, overwrite=overwrite, threads=threads, stop=flag, campaign="claim")
        except Exception as exc:
            if log_format == "json" and isinstance(getattr(exc, "record", None), dict):
                click.echo(tile_log_line(exc.record))  # type: ignore[attr-defined]
            raise
    if as_json:
        click.echo(json.dumps(rec, indent=2, sort_keys=True))
    else:
        click.echo(tile_log_line(rec) if log_format == "json" else _describe(rec))


@click.command("run")
@run_config_argument
@config_override_option
@overwrite_option
@threads_option
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tiles processed at once (local processes); threads are split between them.")
@click.option("--tile", "tile_ids", multiple=True, help="Only these tiles (repeatable).")
@click.option("--progress/--no-progress", default=None,
              help="A progress bar with ETA on stderr (default: only when stderr is a terminal).")
@click.option("--below", type=click.FloatRange(0, 1), default=None, metavar="FRACTION",
              help="Only the tiles whose completeness is below FRACTION (see 'ecocube status --completeness'), "
                   "redone (their outputs replaced), e.g. with other scenes through --config.")
@click.option("--unit", type=click.Choice(["pixels", "chips"]), default="pixels", show_default=True,
              help="With --below: completeness in pixels or chips.")
@click.option("--dry-run", is_flag=True, help="List the tiles that would be processed and skipped; process nothing.")
@log_format_option
def run(run_yaml, overrides, overwrite, threads, workers, tile_ids, progress, below, unit, dry_run, log_format) -> None:
    """Process every tile of RUN_YAML on this machine (a laptop or one node).

    Done tiles are skipped unless --overwrite. Prints a summary; exits non-zero if any
    tile failed or the run was interrupted.

    \b
    Examples:
      ecocube run run.yaml --dry-run
      ecocube run run.yaml --workers 2
    """
    from ..tile import run_tiles

    cfg = load_run_config(run_yaml, overrides)
    tiles = _tiles(cfg, tile_ids)
    if below is not None:
        from ..completeness import completeness_report
        from ..status import tile_states

        low = set(completeness_report(tile_states(cfg, tiles=tiles, light=True), tiles, unit=unit).below(below))
        tiles = [t for t in tiles if t.id in low]
        click.echo(f"{len(tiles)} tiles below {100 * below:g} % completeness: "
                   f"{' '.join(t.id for t in tiles) or 'none'}", err=True)
        if not tiles:
            return
        overwrite = True  # done tiles are redone
    if dry_run:
        from ..tile import plan_run

        plan = plan_run(cfg, tiles, overwrite=overwrite)
        click.echo(f"{len(tiles)} tiles: {len(plan['process'])} to process, {len(plan['skip'])} done (skipped"
                   f"{'' if not plan['skip'] else '; --overwrite redoes them'})")
        if plan["process"]:
            click.echo("to process: " + " ".join(plan["process"]))
        click.echo("(dry run: nothing processed)")
        return
    on_record = (lambda rec: click.echo(tile_log_line(rec))) if log_format == "json" else None
    records = run_tiles(cfg, tiles, workers=workers, overwrite=overwrite, progress=progress, threads=threads,
                        on_record=on_record)
    if log_format != "json":
        for rec in records:
            if rec.get("state") == "failed" or rec.get("held"):
                click.echo(_describe(rec), err=True)
    _finish_many(records, len(tiles), log_format)


@click.command("run-task")
@run_config_argument
@config_override_option
@overwrite_option
@threads_option
@click.option("--task-id", type=click.IntRange(min=0), default=None,
              help="Array task index (default: $SLURM_ARRAY_TASK_ID).")
@click.option("--tiles-file", default=None,
              help="Tile list of a submission (store key or local file, one line of tile ids per task), "
                   "as written by 'ecocube slurm submit'.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="json: one JSON line per tile and a summary line on stdout (default: slurm.log_format, text).")
def run_task(run_yaml, overrides, overwrite, threads, task_id, tiles_file, log_format) -> None:
    """Process the tiles of one Slurm array task.

    Without --tiles-file, task i takes a fixed, contiguous slice of slurm.tiles_per_task
    tiles of the run's tiles in grid order; with it, the tiles on line i of the list.
    Failed tiles do not stop the others; the task exits non-zero if any failed.

    \b
    Example:
      ecocube run-task run.yaml --task-id 3   # what an array task runs
    """
    from ..env import slurm_context
    from ..errors import ConfigError
    from ..grid import tiles_for_task
    from ..tile import run_tiles

    cfg = load_run_config(run_yaml, overrides)
    log_format = log_format or cfg.slurm.log_format
    if task_id is None:
        task_id = slurm_context().array_task_id
        if task_id is None:
            raise ConfigError("no task id: give --task-id or run inside a Slurm array job (SLURM_ARRAY_TASK_ID)")
    if tiles_file is not None:
        from ..slurm import task_tiles

        tiles = task_tiles(cfg, tiles_file, task_id)
    else:
        tiles = tiles_for_task(_tiles(cfg), task_id, cfg.slurm.tiles_per_task)
    click.echo(f"task {task_id}: tiles {' '.join(t.id for t in tiles)}", err=True)
    records = run_tiles(cfg, tiles, workers=1, overwrite=overwrite, progress=False, threads=threads,
                        on_record=lambda rec: click.echo(tile_log_line(rec) if log_format == "json" else _describe(rec)))
    _finish_many(records, len(tiles), log_format)


@click.command("status")
@run_config_argument
@config_override_option
@json_option
@click.option("--failed", "only_failed", is_flag=True,
              help="Print only the ids of the tiles to redo (failed, interrupted and stale), one a line.")
@click.option("--stale-after", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="A running tile of another host without a heartbeat for this long is stale "
                   "(default 3600; on this host a running tile is stale as soon as its process is gone).")
@click.option("--completeness", "completeness", is_flag=True,
              help="The completeness report: per tile predicted / target (and per region with --regions); "
                   "prints the table and writes completeness.csv and completeness.png into --out.")
@click.option("--regions", "regions_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Polygons with a name (GeoPackage, GeoJSON, ...): completeness averaged per region "
                   "(weighted by the area each tile overlaps).")
@click.option("--region-field", default="name", show_default=True, help="The regions' name field.")
@click.option("--unit", type=click.Choice(["pixels", "chips"]), default="pixels", show_default=True,
              help="Count pixels, or chips (chip models: chips predicted / chips targeted).")
@click.option("--below", type=click.FloatRange(0, 1), default=None, metavar="FRACTION",
              help="With --completeness: list only the tiles below FRACTION (rerun them with "
                   "'ecocube run RUN.yaml --below FRACTION').")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder for completeness.csv and completeness.png.")
def status(run_yaml, overrides, as_json, only_failed, stale_after, completeness, regions_path, region_field, unit,
           below, out_dir) -> None:
    """Show done / failed / interrupted / running / stale / pending tiles and completeness.

    A tile recorded as running whose process died (SIGKILL, a lost node, a cancelled job)
    is shown as stale and counted among the tiles to redo.

    \b
    Example:
      ecocube status run.yaml --completeness --below 0.9
    """
    from ..status import DEFAULT_STALE_AFTER, check_done_outputs, format_summary, format_table, summarize, tile_states
    from ..store import store_for

    cfg = load_run_config(run_yaml, overrides)
    store = store_for(cfg)
    states = check_done_outputs(store, tile_states(cfg, store, tiles=_tiles(cfg), light=True), cfg.output.layers)
    summary = summarize(states, stale_after=DEFAULT_STALE_AFTER if stale_after is None else stale_after)
    if completeness or regions_path or below is not None:
        _completeness(cfg, states, summary.states, regions_path=regions_path, region_field=region_field, unit=unit,
                      below=below, out_dir=out_dir, as_json=as_json)
        return
    if only_failed:
        for tile_id in summary.to_redo:
            click.echo(tile_id)
        return
    if as_json:
        out = summary.to_dict()
        out["tiles"] = {
            k: (None if r is None else {
                **{f: r.get(f) for f in ("state", "attempt", "completeness", "seconds", "host", "pid", "error",
                                         "finished", "heartbeat", "peak_rss_bytes")},
                "state": summary.states[k]})
            for k, r in states.items()
        }
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    click.echo(format_table(states, summary.stale_reasons))
    click.echo(format_summary(summary))


def _completeness(cfg, records, states, *, regions_path, region_field, unit, below, out_dir, as_json) -> None:
    from pathlib import Path

    from ..completeness import completeness_report, format_report, read_regions, write_csv, write_map

    regions = read_regions(regions_path, cfg.grid.crs, name_field=region_field) if regions_path else []
    report = completeness_report(records, _tiles(cfg), regions=regions, unit=unit, states=states)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(report, out / "completeness.csv")
    png_path = write_map(report, out / "completeness.png", regions=regions, title=cfg.name)
    if as_json:
        click.echo(json.dumps({
            "unit": report.unit, "overall": report.overall, "csv": str(csv_path), "map": str(png_path),
            "tiles": {t.tile: {"state": t.state, "target": t.target, "predicted": t.predicted,
                               "completeness": t.completeness} for t in report.tiles},
            "regions": {r.name: {"tiles": r.tiles, "completeness": r.completeness} for r in report.regions},
            **({"below": report.below(below)} if below is not None else {}),
        }, indent=2, sort_keys=True))
        return
    click.echo(format_report(report, below=below))
    click.echo(f"wrote {csv_path} and {png_path}")
