"""``ecocube gapfill FILES... --season-size S --out DIR``: gap-fill a stack of rasters.

The files are single-band rasters on one grid, one per period, in time order. Outputs
go to ``DIR/filled/NAME`` and ``DIR/flags/NAME`` (see :mod:`ecocube.gapfill_stack`, which
does the work; this module only parses the command line).
"""

from __future__ import annotations

from pathlib import Path

import click

from .options import overwrite_option


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--season-size", "season_size", required=True, type=click.IntRange(1, 366),
              help="Periods per year: 4 quarters, 12 months, 1 year.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: filled/NAME and flags/NAME for every input NAME.")
@click.option("--method", type=click.Choice(["tmwm", "linear"]), default="tmwm", show_default=True)
@click.option("--h-same", type=click.IntRange(0, 40), default=2, show_default=True,
              help="Same-season windows: years t-h..t+h for h = 1..N.")
@click.option("--h-neib", type=click.IntRange(0, 40), default=1, show_default=True,
              help="Neighbouring-season windows, h = 1..N.")
@click.option("--h-annual", type=click.IntRange(0, 40), default=2, show_default=True,
              help="Contiguous windows of +-h periods, h = 1..N.")
@click.option("--direction", type=click.Choice(["both", "past", "future"]), default="both", show_default=True)
@click.option("--outlier-percentiles", nargs=2, type=click.FloatRange(0, 100), default=None, metavar="LO HI",
              help="Remove observed values outside the pixel's LO..HI percentile envelope first.")
@click.option("--block-size", type=click.IntRange(16, 8192), default=512, show_default=True,
              help="Window edge in pixels (bounds memory).")
@click.option("--threads", type=click.IntRange(1, None), default=None, help="Default: the allocation.")
@overwrite_option
def gapfill(files, season_size, out_dir, method, h_same, h_neib, h_annual, direction, outlier_percentiles,
            block_size, threads, overwrite) -> None:
    """Gap-fill FILES (single-band rasters, one per period, in time order) with TMWM or
    linear interpolation; writes filled rasters and flag rasters to --out.

    \b
    Example:
      ecocube gapfill ndvi/2019-*.tif --season-size 4 --out filled/
    """
    from ..gapfill_stack import fill_raster_stack

    summary = fill_raster_stack(
        list(files), out_dir, season_size=season_size, method=method, h_same=h_same, h_neib=h_neib,
        h_annual=h_annual, direction=direction, outlier_percentiles=outlier_percentiles or None,
        block_size=block_size, overwrite=overwrite, threads=threads)
    click.echo(f"wrote {summary['files']} filled and {summary['files']} flag rasters to {out_dir}: "
               f"{summary['filled']} of {summary['gaps']} gaps filled, {summary['unfilled']} unfilled")
