"""``ecocube gapfill FILES... --season-size S --out DIR``: gap-fill a stack of rasters.

The files are single-band rasters on one grid, one per period, in time order. Outputs
go to ``DIR/filled/NAME`` (same data type, nodata, scale and offset as the input) and
``DIR/flags/NAME`` (uint8 flag codes, legend in the ``ECOCUBE_FLAG_LEGEND`` tag), one of
each per input file. The stack is processed window by window, so memory is bounded by
``--block-size`` (about ``periods x block² x 9`` bytes), not by the raster size. Every
output is written to a temporary file in DIR and renamed into place only when all of
them are complete; existing outputs are refused unless ``--overwrite`` is given.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

import click
import numpy as np

from ..atomic import atomic_path
from ..errors import ConfigError, FileOverwriteError, ReadError, StoreError
from .options import overwrite_option

log = logging.getLogger(__name__)

FLAG_LEGEND_TAG = "ECOCUBE_FLAG_LEGEND"


def _open_inputs(files, stack: ExitStack):
    import rasterio
    from rasterio.errors import RasterioIOError

    sources = []
    for path in files:
        try:
            src = stack.enter_context(rasterio.open(path))
        except RasterioIOError as exc:
            raise ReadError(f"cannot open input raster: {exc}", url=str(path)) from None
        if src.count != 1:
            raise ConfigError(f"{path}: expected a single-band raster, it has {src.count} bands")
        sources.append(src)
    first = sources[0]
    for path, src in zip(files[1:], sources[1:]):
        if (src.width, src.height) != (first.width, first.height):
            raise ConfigError(f"{path}: size {src.width}x{src.height} differs from {files[0]} "
                              f"({first.width}x{first.height})")
        if src.crs != first.crs or not src.transform.almost_equals(first.transform):
            raise ConfigError(f"{path}: grid (CRS/transform) differs from {files[0]}")
        if src.dtypes[0] != first.dtypes[0]:
            raise ConfigError(f"{path}: data type {src.dtypes[0]} differs from {files[0]} ({first.dtypes[0]})")
    return sources


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Filled float32 values as the output data type (integers: rounded and clipped)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def fill_raster_stack(
    files: list[Path],
    out_dir: Path,
    *,
    season_size: int,
    method: str = "tmwm",
    h_same: int = 2,
    h_neib: int = 1,
    h_annual: int = 2,
    direction: str = "both",
    outlier_percentiles: tuple[float, float] | None = None,
    block_size: int = 512,
    overwrite: bool = False,
    threads: int | None = None,
) -> dict:
    """Gap-fill a time stack of single-band rasters window by window; returns a summary.

    Gaps are the pixels masked by the input (nodata or internal mask) and NaN. Observed
    values are written back exactly as read; filled values of integer rasters are rounded
    to the nearest integer. Raises ConfigError (bad stack), ReadError, FileOverwriteError.
    """
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    from ..env import available_threads, rasterio_env
    from ..gapfill import fill_gaps, flag_legend

    files = [Path(f) for f in files]
    if not files:
        raise ConfigError("give at least one input raster")
    names = [f.name for f in files]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"input file names must be unique (outputs are named after them): {', '.join(dupes)}")
    if block_size < 16:
        raise ConfigError(f"block size must be at least 16, got {block_size}")
    out_dir = Path(out_dir)
    targets = [(out_dir / "filled" / n, out_dir / "flags" / n) for n in names]
    if not overwrite:
        existing = [str(p) for pair in targets for p in pair if p.exists()]
        if existing:
            raise FileOverwriteError(f"{existing[0]} exists ({len(existing)} outputs exist); "
                                     "use --overwrite to replace them")
    n_threads = available_threads(threads)
    legend = flag_legend(method, h_same=h_same, h_neib=h_neib, h_annual=h_annual, direction=direction,
                         outliers=outlier_percentiles is not None)
    counts = np.zeros(256, np.int64)
    try:
        with rasterio_env(threads=n_threads), ExitStack() as stack:
            # entered first, so left last: every output is renamed into place only when all of
            # them are written and closed, and all temporary files go on any error
            temps = [(stack.enter_context(atomic_path(f)), stack.enter_context(atomic_path(g)))
                     for f, g in targets]
            sources = _open_inputs(files, stack)
            first = sources[0]
            dtype = np.dtype(first.dtypes[0])
            nodata = first.nodata
            if nodata is None and np.issubdtype(dtype, np.floating):
                nodata = float("nan")
            base = {"driver": "GTiff", "width": first.width, "height": first.height, "count": 1,
                    "crs": first.crs, "transform": first.transform, "tiled": True, "blockxsize": 256,
                    "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
            outs, flag_outs = [], []
            for src, (tmp_filled, tmp_flags) in zip(sources, temps):
                dst = stack.enter_context(rasterio.open(tmp_filled, "w", **base, dtype=dtype, nodata=nodata))
                dst.scales, dst.offsets = src.scales, src.offsets
                dst.descriptions, dst.units = src.descriptions, src.units
                dst.update_tags(**src.tags())
                dst.update_tags(ECOCUBE_GAPFILL=json.dumps({
                    "method": method, "season_size": season_size, "h_same": h_same, "h_neib": h_neib,
                    "h_annual": h_annual, "direction": direction,
                    "outlier_percentiles": list(outlier_percentiles) if outlier_percentiles else None}))
                fdst = stack.enter_context(rasterio.open(tmp_flags, "w", **base, dtype="uint8", nodata=None))
                fdst.set_band_description(1, "gap-fill flag")
                fdst.update_tags(**{FLAG_LEGEND_TAG: json.dumps({str(k): v for k, v in legend.items()})})
                outs.append(dst)
                flag_outs.append(fdst)
            use_mask = nodata is None  # integer rasters without nodata: unfilled pixels go to a mask
            for row in range(0, first.height, block_size):
                for col in range(0, first.width, block_size):
                    win = Window(col, row, min(block_size, first.width - col), min(block_size, first.height - row))
                    raw = np.empty((len(sources), int(win.height), int(win.width)), dtype)
                    cube = np.empty(raw.shape, np.float32)
                    for k, (src, path) in enumerate(zip(sources, files)):
                        try:
                            band = src.read(1, window=win, masked=True)
                        except RasterioError as exc:
                            raise ReadError(f"cannot read window {win}: {exc}", url=str(path)) from None
                        raw[k] = band.data
                        cube[k] = band.data
                        cube[k][np.ma.getmaskarray(band)] = np.nan
                    filled, flags = fill_gaps(cube, method=method, season_size=season_size, h_same=h_same,
                                              h_neib=h_neib, h_annual=h_annual, direction=direction,
                                              outlier_percentiles=outlier_percentiles, threads=n_threads,
                                              inplace=True)
                    counts += np.bincount(flags.ravel(), minlength=256)
                    observed = flags == 0
                    unfilled = np.isnan(filled)
                    safe = np.where(unfilled, 0.0, filled)
                    out = np.where(observed, raw, _to_dtype(safe, dtype))
                    if not use_mask:
                        out[unfilled] = nodata
                    for k in range(len(sources)):
                        outs[k].write(out[k], 1, window=win)
                        flag_outs[k].write(flags[k], 1, window=win)
                        if use_mask:
                            outs[k].write_mask(np.where(unfilled[k], 0, 255).astype(np.uint8), window=win)
                    log.debug("gap-filled window %s", win)
    except RasterioError as exc:
        raise StoreError(f"cannot write gap-filled rasters in {out_dir}: {exc}") from None
    gaps = int(counts[1:].sum())
    return {"files": len(files), "out": str(out_dir), "gaps": gaps,
            "unfilled": int(counts[255] + counts[254]), "filled": gaps - int(counts[255] + counts[254]),
            "flag_counts": {int(c): int(n) for c, n in enumerate(counts) if n}}


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
    linear interpolation; writes filled rasters and flag rasters to --out."""
    summary = fill_raster_stack(
        list(files), out_dir, season_size=season_size, method=method, h_same=h_same, h_neib=h_neib,
        h_annual=h_annual, direction=direction, outlier_percentiles=outlier_percentiles or None,
        block_size=block_size, overwrite=overwrite, threads=threads)
    click.echo(f"wrote {summary['files']} filled and {summary['files']} flag rasters to {out_dir}: "
               f"{summary['filled']} of {summary['gaps']} gaps filled, {summary['unfilled']} unfilled")
