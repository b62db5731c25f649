"""Gap-fill a time stack of single-band raster files (what ``ecocube gapfill`` runs).

The files are single-band rasters on one grid, one per period, in time order. Outputs go
to ``OUT/filled/NAME`` (same data type, nodata, scale and offset as the input) and
``OUT/flags/NAME`` (uint8 flag codes, legend in the :data:`FLAG_LEGEND_TAG` tag), one of
each per input file. The stack is processed window by window, so memory is bounded by
``block_size`` (about ``periods x block² x 9`` bytes), not by the raster size. Every output
is written to a temporary file beside it (:func:`ecocube.atomic.atomic_path`) and renamed
into place only when all of them are complete; existing outputs are refused unless
``overwrite``.

This module is the file I/O around :func:`ecocube.gapfill.fill_gaps`, which stays pure
(arrays in, arrays out).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import ConfigError, FileOverwriteError, ReadError, StoreError
from .profiles import profile

log = logging.getLogger(__name__)

__all__ = ["FLAG_LEGEND_TAG", "GAPFILL_TAG", "fill_raster_stack"]

#: tag of a flag raster: the JSON legend of its flag codes
FLAG_LEGEND_TAG = "ECOCUBE_FLAG_LEGEND"
#: tag of a filled raster: the JSON gap-fill settings it was made with
GAPFILL_TAG = "ECOCUBE_GAPFILL"


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
    from rasterio.errors import RasterioError

    from .env import available_threads, rasterio_env
    from .gapfill import flag_legend

    files = [Path(f) for f in files]
    _check_request(files, block_size)
    out_dir = Path(out_dir)
    targets = [(out_dir / "filled" / f.name, out_dir / "flags" / f.name) for f in files]
    if not overwrite:
        _refuse_existing(targets)
    n_threads = available_threads(threads)
    settings = {"method": method, "season_size": season_size, "h_same": h_same, "h_neib": h_neib,
                "h_annual": h_annual, "direction": direction, "outlier_percentiles": outlier_percentiles}
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
            dtype, nodata = _output_dtype_nodata(sources[0])
            outs, flag_outs = _create_outputs(stack, sources, temps, dtype=dtype, nodata=nodata,
                                              settings=settings, legend=legend)
            for win in _windows(sources[0].width, sources[0].height, block_size):
                raw, cube = _read_window(sources, files, win, dtype)
                filled, flags = _fill_window(cube, settings, threads=n_threads)
                counts += np.bincount(flags.ravel(), minlength=256)
                out, unfilled = _output_values(raw, filled, flags, dtype, nodata)
                _write_window(outs, flag_outs, out, flags, unfilled, win, masked=nodata is None)
                log.debug("gap-filled window %s", win)
    except RasterioError as exc:
        raise StoreError(f"cannot write gap-filled rasters in {out_dir}: {exc}") from None
    return _summary(counts, len(files), out_dir)


def _check_request(files: Sequence[Path], block_size: int) -> None:
    if not files:
        raise ConfigError("give at least one input raster")
    names = [f.name for f in files]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"input file names must be unique (outputs are named after them): {', '.join(dupes)}")
    if block_size < 16:
        raise ConfigError(f"block size must be at least 16, got {block_size}")


def _refuse_existing(targets: Sequence[tuple[Path, Path]]) -> None:
    existing = [str(p) for pair in targets for p in pair if p.exists()]
    if existing:
        raise FileOverwriteError(f"{existing[0]} exists ({len(existing)} outputs exist); "
                                 "use --overwrite to replace them")


def _open_inputs(files, stack: ExitStack):
    """Open every input (closed by ``stack``) and check they form one single-band stack."""
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


def _output_dtype_nodata(first) -> tuple[np.dtype, float | None]:
    """The inputs' data type and nodata (NaN for floats without one; None: integers without
    nodata, whose unfilled pixels go to a mask)."""
    dtype = np.dtype(first.dtypes[0])
    nodata = first.nodata
    if nodata is None and np.issubdtype(dtype, np.floating):
        nodata = float("nan")
    return dtype, nodata


def _create_outputs(stack: ExitStack, sources, temps, *, dtype, nodata, settings: dict[str, Any],
                    legend: dict) -> tuple[list, list]:
    """Open the filled and flag rasters (temporary paths) of every input, with its metadata."""
    import rasterio

    first = sources[0]
    base = profile("gapfill", width=first.width, height=first.height, count=1, crs=first.crs,
                   transform=first.transform)
    outlier = settings["outlier_percentiles"]
    gapfill_tag = json.dumps({**settings, "outlier_percentiles": list(outlier) if outlier else None})
    legend_tag = json.dumps({str(k): v for k, v in legend.items()})
    outs, flag_outs = [], []
    for src, (tmp_filled, tmp_flags) in zip(sources, temps):
        dst = stack.enter_context(rasterio.open(tmp_filled, "w", **base, dtype=dtype, nodata=nodata))
        dst.scales, dst.offsets = src.scales, src.offsets
        dst.descriptions, dst.units = src.descriptions, src.units
        dst.update_tags(**src.tags())
        dst.update_tags(**{GAPFILL_TAG: gapfill_tag})
        fdst = stack.enter_context(rasterio.open(tmp_flags, "w", **base, dtype="uint8", nodata=None))
        fdst.set_band_description(1, "gap-fill flag")
        fdst.update_tags(**{FLAG_LEGEND_TAG: legend_tag})
        outs.append(dst)
        flag_outs.append(fdst)
    return outs, flag_outs


def _windows(width: int, height: int, block_size: int) -> Iterator:
    """Row-major windows of at most ``block_size`` pixels a side covering the raster."""
    from rasterio.windows import Window

    for row in range(0, height, block_size):
        for col in range(0, width, block_size):
            yield Window(col, row, min(block_size, width - col), min(block_size, height - row))


def _read_window(sources, files, win, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(raw values as stored, float32 cube with NaN where masked) of one window of the stack."""
    from rasterio.errors import RasterioError

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
    return raw, cube


def _fill_window(cube: np.ndarray, settings: dict[str, Any], *, threads: int) -> tuple[np.ndarray, np.ndarray]:
    from .gapfill import fill_gaps

    return fill_gaps(cube, **settings, threads=threads, inplace=True)


def _output_values(raw: np.ndarray, filled: np.ndarray, flags: np.ndarray, dtype, nodata):
    """(output values, unfilled mask): observed values exactly as read, filled ones in the
    output type, unfilled ones nodata (or left for the mask when there is none)."""
    observed = flags == 0
    unfilled = np.isnan(filled)
    safe = np.where(unfilled, 0.0, filled)
    out = np.where(observed, raw, _to_dtype(safe, dtype))
    if nodata is not None:
        out[unfilled] = nodata
    return out, unfilled


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Filled float32 values as the output data type (integers: rounded and clipped)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _write_window(outs, flag_outs, out: np.ndarray, flags: np.ndarray, unfilled: np.ndarray, win, *,
                  masked: bool) -> None:
    for k in range(len(outs)):
        outs[k].write(out[k], 1, window=win)
        flag_outs[k].write(flags[k], 1, window=win)
        if masked:
            outs[k].write_mask(np.where(unfilled[k], 0, 255).astype(np.uint8), window=win)


def _summary(counts: np.ndarray, n_files: int, out_dir: Path) -> dict:
    gaps = int(counts[1:].sum())
    unfilled = int(counts[255] + counts[254])
    return {"files": n_files, "out": str(out_dir), "gaps": gaps, "unfilled": unfilled, "filled": gaps - unfilled,
            "flag_counts": {int(c): int(n) for c, n in enumerate(counts) if n}}
