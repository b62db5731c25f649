"""A debugging dump of what :func:`ecocube.read.read_block` reads for one tile
(what ``ecocube read`` runs).

:func:`dump_tile_read` reads the tile (or a window of it) and :func:`write_read_dump`
writes, into ``OUT/TILE/``: ``read.npz`` (data, reason, count, bands, periods), one float32
GeoTIFF per period (``{period}.tif``, NaN nodata, band descriptions = band names) and
``summary.json`` (stats, missing inputs, share of each reason per period and band). Every
file is written atomically (:mod:`ecocube.atomic`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_text_atomic
from .errors import FileOverwriteError
from .profiles import profile
from .read import ReadResult, norm_window, read_block

__all__ = ["dump_tile_read", "write_read_dump"]


def dump_tile_read(cfg, tile_id: str, out, *, window: tuple[int, int, int, int] | None = None,
                   threads: int | None = None, overwrite: bool = False) -> tuple[Path, ReadResult, dict]:
    """Read tile ``tile_id`` of the run (``window``: col, row, width, height in tile pixels;
    None: the whole tile) and dump it into ``out/tile_id/``; returns (folder, result, summary).

    A folder that already holds files is refused (:class:`FileOverwriteError`) unless
    ``overwrite``.
    """
    from .grid import TileGrid

    tile = TileGrid.from_config(cfg.grid).tile(tile_id)
    dest = Path(out) / tile.id
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise FileOverwriteError(f"{dest} exists; use --overwrite to replace it")
    win = None
    if window:
        from rasterio.windows import Window

        win = Window(*window)
    result = read_block(cfg, tile, win, threads=threads)
    return dest, result, write_read_dump(result, tile, win, dest)


def write_read_dump(result: ReadResult, tile, window, folder) -> dict:
    """Write a :class:`ReadResult` for inspection: ``read.npz``, one float32 GeoTIFF per
    period (``{period}.tif``, NaN nodata) and ``summary.json``. Files are written to temporary
    names and renamed. Returns the summary."""
    import rasterio

    from .sources import REASON_NAMES

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    window = norm_window(tile, window)
    transform = tile.window_transform(window)
    T, B, h, w = result.data.shape
    with atomic_path(folder / "read.npz") as tmp:  # the temp name ends in .npz: numpy adds none
        np.savez_compressed(tmp, data=result.data, reason=result.reason, count=result.count,
                            bands=np.array(result.bands), periods=np.array([p.id for p in result.periods]))
    for p in result.periods:
        with atomic_path(folder / f"{p.id}.tif") as part:  # noqa: SIM117 (the dataset closes first)
            with rasterio.open(part, "w", **profile(
                    "read-dump", width=w, height=h, count=B, crs=tile.crs, transform=transform,
                    tiled=w >= 16 and h >= 16 and w % 16 == 0 and h % 16 == 0)) as dst:
                dst.write(result.data[p.index])
                for i, b in enumerate(result.bands, start=1):
                    dst.set_band_description(i, b)
                dst.update_tags(period=p.id, tile=tile.id)
    n = h * w
    summary = {
        "tile": tile.id,
        "window": [int(window.col_off), int(window.row_off), w, h],
        "shape": [T, B, h, w],
        "bands": list(result.bands),
        "periods": [p.id for p in result.periods],
        "valid_fraction": round(float(np.mean(result.reason == 0)), 4) if result.reason.size else 0.0,
        "reasons": {
            p.id: {
                b: {REASON_NAMES[c]: round(float(np.sum(result.reason[p.index, i] == c)) / n, 4) for c in REASON_NAMES}
                for i, b in enumerate(result.bands)
            }
            for p in result.periods
        },
        "missing": list(result.missing),
        "stats": result.stats,
    }
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=1))
    return summary
