"""Mosaics of the per-tile outputs: a VRT over the tiles, then a Cloud-Optimized GeoTIFF.

For every product, layer and period found in the store (``{product}/{tile}/{period}/{layer}.tif``,
or raster band ``i`` of a stacked ``{product}/{tile}/{layer}.tif`` for the ``i``-th period its
tile's record lists; tiles with a ``done`` status record only), :func:`mosaic_run`

1. takes the layer's metadata from one tile file's header and each tile's place from the
   run's grid (:class:`ecocube.grid.TileGrid`) when every tile's record lists its outputs
   (checked against those records first), so no other tile file is opened; tiles whose
   records list no outputs have every header read and checked for a common dtype, band
   count, CRS and pixel grid;
2. writes a VRT over the tile files (local paths or ``/vsis3/``; ``SourceBand`` picks the
   period of a stacked file), without copying pixels;
3. copies the VRT (or a ``WarpedVRT`` of it when ``finalize.reproject`` is set) window by
   window into a tiled temporary GeoTIFF, collecting per-band statistics on the way, so no
   layer is ever whole in memory;
4. turns that file into a COG with GDAL's COG driver (internal overviews: nearest for class,
   flags and count, average for continuous layers; DEFLATE or ZSTD with a predictor; nodata,
   scale/offset, band descriptions and, for hard classes, a colour table kept);
5. renders a small PNG thumbnail with a legend, hashes the COG (sha2-256) and uploads COG,
   VRT and thumbnail to ``catalog/{collection}/{item}/`` in the store.

Layers run in parallel threads; the thread budget comes from the allocation
(:func:`ecocube.env.available_threads`). The manifest ``catalog/mosaics.json``
(:mod:`ecocube.manifest`) lists every layer with the metadata :mod:`ecocube.stac` needs, so
building the catalog opens no raster.

Output keys (item folders follow pystac's best-practice layout)::

    catalog/{collection}/{collection}-{period}/{asset}.tif   the COG
    catalog/{collection}/{collection}-{period}/{asset}.vrt   VRT over the tile files
    catalog/{collection}/{collection}-{period}/{asset}.png   thumbnail with legend

with collections ``proba``, ``class``, ``uncertainty``, ``composite-{band}`` (assets
``{band}`` and ``count``) and ``flags`` (one asset per band).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from . import products as registry
from .atomic import VerifyError, atomic_path, sha256_file
from .env import available_threads
from .errors import EcocubeError, FileOverwriteError, StoreError
from .manifest import CATALOG_PREFIX, MANIFEST_KEY, MosaicLayer, read_manifest, write_manifest
from .profiles import GDAL_DTYPE, profile
from .rasterwrite import (WriteDigest, close_checked, last_gdal_error, reset_gdal_error, verify_written, write_error,
                          write_window)
from .store import store_for

log = logging.getLogger(__name__)

#: GDAL block cache (bytes) per layer mosaicked in parallel; the process-wide limit is this
#: times the parallel layers, at least :data:`MOSAIC_CACHEMAX_MIN`. Every window is read from
#: the tiles once and written to the staging file once, so the cache only needs the blocks in
#: flight. With the readers' 256 MB, the cached blocks churned through glibc's heap and peak
#: RSS grew with the mosaic (2 layers in parallel, 2000² / 4000² / 8000² / 12000² px: 210 / 326
#: / 631 / 929 MiB); with 64 MB: 207 / 344 / 404 / 433 MiB (452 at 16000²), same wall time
#: (scripts/bench/mosaic.py)
MOSAIC_CACHEMAX = 32 * 2**20
MOSAIC_CACHEMAX_MIN = 64 * 2**20

TILE_KEY_RE = registry.tile_key_pattern()  # parse with registry.parse_tile_key


# --------------------------------------------------------------------------- naming


def collection_for(product: str, layer: str) -> tuple[str, str]:
    """``(collection id, asset key)`` of a product's layer in the catalog."""
    if product not in registry.PRODUCTS:
        raise EcocubeError(f"unknown product {product!r}; known: {', '.join(registry.NAMES)}")
    p = registry.PRODUCTS[product]
    return p.collection_for(layer), p.asset_for(layer)


def item_id_for(collection: str, period: str) -> str:
    return f"{collection}-{period}"


def output_key(product: str, layer: str, period: str, ext: str = "tif") -> str:
    collection, asset = collection_for(product, layer)
    return f"{CATALOG_PREFIX}/{collection}/{item_id_for(collection, period)}/{asset}.{ext}"


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class LayerSources:
    """The tile files of one product/layer/period."""

    product: str
    layer: str
    period: str
    tiles: tuple[str, ...]  # tile ids, sorted
    keys: tuple[str, ...]  # store keys, same order
    #: per key, the ``{"sha256", "size"}`` its tile's status record lists (None: the record
    #: lists no outputs at all, e.g. one written by hand)
    expected: tuple[dict | None, ...] = ()
    #: the finalize settings that change a COG (compression, block size, reprojection)
    settings: str = ""
    #: mean over the tiles of the observed fraction of the period's year (status records)
    observed_fraction: float | None = None
    #: per key, the raster band holding the period (stacked files); empty: band 1 of each
    bands: tuple[int, ...] = ()

    @property
    def digest(self) -> str:
        """sha256 over the source keys, the checksums their tiles' records give them and the
        finalize settings: changes when a tile is added, removed or redone with other
        content, or when the COG settings change."""
        expected = self.expected or (None,) * len(self.keys)
        names = [f"{k}#{b}" for k, b in zip(self.keys, self.bands)] if self.bands else self.keys
        lines = [f"{k} {(e or {}).get('sha256', '')}" for k, e in zip(names, expected)]
        return hashlib.sha256("\n".join([*lines, self.settings]).encode()).hexdigest()


# --------------------------------------------------------------------------- discovery


def _done_records(store, tile_ids: Sequence[str], *, threads: int = 16) -> dict[str, dict | None]:
    """``{tile_id: record if it says done, else None}``, the records read in parallel."""
    from .status import read_status

    def _one(tile_id: str) -> dict | None:
        record = read_status(store, tile_id)
        return record if record is not None and record.get("state") == "done" else None

    ids = sorted(set(tile_ids))
    if not ids:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(ids)))) as pool:
        return dict(zip(ids, pool.map(_one, ids)))


def _finalize_settings(cfg) -> str:
    fin = cfg.finalize
    return json.dumps({"compress": fin.compress, "blocksize": fin.blocksize, "reproject": fin.reproject},
                      sort_keys=True)


def verify_sources(store, layers: Sequence[LayerSources], *, threads: int = 8) -> dict[str, int]:
    """Check every tile file the layers read against its tile's status record (size and
    SHA-256).

    On a local store each file is hashed. On S3 the files are checked from listings (one
    request per 1,000 keys, not one per file): a file is accepted without a request of its
    own when the listing gives the size its record gives and the server last wrote it
    *before* it wrote the tile's ``done`` record (both times from the same listing
    server). The record is written last, by the process that hashed what it uploaded,
    under the tile's lease, so such a file is the one the record describes: any later write
    of it (a redo, a hand copy, a restore) moves its time past the record's. Every other
    file (written in the same second as the record or after it, or on a store without
    listed sizes) is checked by its object's ``sha256`` metadata (one HEAD), as before.

    Raises :class:`StoreError`, one line per mismatching file naming the tile and the file
    (redo those tiles with ``ecocube run-tile --overwrite``), before anything is mosaicked.
    Returns ``{"files", "from_listing", "checked_each"}`` counts.
    """
    from .status import STATUS_PREFIX, status_key

    # a stacked file serves every period of its tile: checked once
    items = list({(t, k): (t, k, e) for src in layers for t, k, e in zip(src.tiles, src.keys, src.expected or ())
                  if e}.values())
    counts = {"files": len(items), "from_listing": 0, "checked_each": 0}
    if not items:
        return counts
    problems: list[str] = []
    rest = items
    records = store.list_stats(STATUS_PREFIX)  # None on a local store: each file is hashed
    if records is not None:
        listed: dict = {}
        for product in sorted({k.split("/", 1)[0] for _, k, _ in items}):
            listed.update(store.list_stats(f"{product}/") or {})
        rest = []
        for item in items:
            tile_id, key, expected = item
            obj = listed.get(key)
            record = records.get(status_key(tile_id))
            if obj is None:
                problems.append(f"tile {tile_id}: {store.url(key)} cannot be read: not in the store's listing")
            elif obj.size != expected.get("size"):
                problems.append(f"tile {tile_id}: {store.url(key)} does not match its status record "
                                f"(size {obj.size}, recorded {expected.get('size')})")
            elif record is not None and obj.modified < record.modified:
                counts["from_listing"] += 1
            else:
                rest.append(item)

    def _check(item) -> str | None:
        tile_id, key, expected = item
        try:
            info = store.info(key)
        except StoreError as exc:
            return f"tile {tile_id}: {store.url(key)} cannot be read: {exc}"
        if info.size != expected.get("size"):
            return (f"tile {tile_id}: {store.url(key)} does not match its status record "
                    f"(size {info.size}, recorded {expected.get('size')})")
        if info.sha256 != expected.get("sha256"):
            return (f"tile {tile_id}: {store.url(key)} does not match its status record "
                    f"(sha256 {info.sha256}, recorded {expected.get('sha256')})")
        return None

    counts["checked_each"] = len(rest)
    if rest:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(rest)))) as pool:
            problems.extend(p for p in pool.map(_check, rest) if p)
    if problems:
        raise StoreError("\n".join(problems))
    return counts


def _stacked_periods(store, key: str) -> list[str]:
    """The periods of a stacked tile file whose record lists no outputs: its band descriptions."""
    import rasterio

    try:
        with store.rasterio_env(threads=1), rasterio.open(store.gdal_path(key)) as src:
            return [d for d in src.descriptions if d]
    except rasterio.errors.RasterioIOError as exc:
        raise StoreError(f"cannot open tile output {store.url(key)}: {exc}") from None


def find_layers(cfg, store, *, products: Sequence[str] | None = None) -> list[LayerSources]:
    """Every product/layer/period with at least one finished tile, sorted.

    Only tiles whose status record says ``done`` are used (a tile's outputs may be partial
    until its record is written). Keys that do not follow the output layout are ignored. A
    stacked file (a per-period product) gives one layer per period its record lists, read
    from the raster band of that period.
    """
    wanted = [p for p in (products or cfg.output.layers) if p in registry.PRODUCTS]
    groups: dict[tuple[str, str, str], list[tuple[str, str, dict | None, int]]] = {}
    strays: list[str] = []
    matches = [(key, parsed) for product in wanted for key in store.list(f"{product}/")
               if (parsed := registry.parse_tile_key(key))]
    # one listing per product, then each tile's record once, read in parallel
    done_cache = _done_records(store, [parsed[1] for _, parsed in matches])
    for key, (product, tile_id, period, layer) in matches:
        record = done_cache[tile_id]
        if record is None:
            continue
        outputs = record.get("outputs")
        if outputs and key not in outputs:  # not an output of the attempt the record describes
            strays.append(key)
            continue
        entry = dict(outputs[key]) if outputs else None
        if period is not None:
            groups.setdefault((product, layer, period), []).append((tile_id, key, entry, 1))
            continue
        periods = entry.pop("periods", None) if entry is not None else None
        if periods is None:
            if entry is not None:
                raise StoreError(f"tile {tile_id}: the record lists {store.url(key)} without its periods "
                                 "(one per raster band); redo the tile with 'ecocube run-tile --overwrite'")
            periods = _stacked_periods(store, key)
        for band, per in enumerate(periods, start=1):
            groups.setdefault((product, layer, per), []).append((tile_id, key, entry, band))
    settings = _finalize_settings(cfg)
    out = []
    for (product, layer, period), entries in sorted(groups.items()):
        entries.sort(key=lambda e: e[:2])
        fractions = [(done_cache[e[0]] or {}).get("observed_fraction_by_year", {}).get(period[:4]) for e in entries]
        fraction = (round(sum(fractions) / len(fractions), 6)
                    if fractions and all(isinstance(f, (int, float)) for f in fractions) else None)
        bands = tuple(e[3] for e in entries) if registry.get(product).stacked else ()
        out.append(LayerSources(product, layer, period, tuple(e[0] for e in entries), tuple(e[1] for e in entries),
                                tuple(e[2] for e in entries), settings, fraction, bands))
    if strays:
        log.warning("%d files under done tiles are not listed in their status records and are left out: %s",
                    len(strays), ", ".join(strays[:5]) + (" ..." if len(strays) > 5 else ""))
    pending = [t for t, rec in done_cache.items() if rec is None]
    if pending:
        log.warning("%d tiles have outputs but no 'done' status and are left out of the mosaics: %s",
                    len(pending), ", ".join(sorted(pending)[:10]) + (" ..." if len(pending) > 10 else ""))
    return out


# --------------------------------------------------------------------------- VRT


@dataclass(frozen=True)
class _TileMeta:
    path: str
    width: int
    height: int
    bounds: tuple[float, float, float, float]
    res: tuple[float, float]
    band: int = 1  # the first source band (a stacked file: the period's)


@dataclass(frozen=True)
class _LayerMeta:
    crs: Any
    dtype: str
    count: int
    nodata: float | None
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    descriptions: tuple[str | None, ...]
    colorinterp: tuple[str, ...]
    block: tuple[int, int]
    tiles: tuple[_TileMeta, ...]


def mosaic_cachemax(parallel_layers: int) -> int:
    """GDAL block cache limit (bytes) while ``parallel_layers`` layers are mosaicked at once."""
    return max(MOSAIC_CACHEMAX_MIN, MOSAIC_CACHEMAX * max(1, parallel_layers))


@contextlib.contextmanager
def _mosaic_env(store, threads: int, cachemax: int):
    """One thread's GDAL environment: the store's, with the mosaic cache limit and no VSI cache.

    The store's environment sets its own (larger) ``GDAL_CACHEMAX``, and GDAL's cache limit is
    one per process: every mosaic thread re-pins the mosaic limit right away, so the limit
    seen by running layers stays the mosaic's. No per-file VSI cache: each window is read
    once, and with up to GDAL's dataset pool (100) tile files open at once, per-handle caches
    (64 MB each) grew with the tile count.
    """
    import rasterio

    with store.rasterio_env(threads=threads), rasterio.Env(VSI_CACHE="FALSE", GDAL_CACHEMAX=cachemax):
        yield


def _read_tile_meta(paths: Sequence[str], keys: Sequence[str], threads: int, env) -> _LayerMeta:
    """Headers of a layer's tile files, checked for a common dtype, bands, CRS and grid.

    ``env()`` gives the scoped GDAL environment (rasterio's is per thread, so each
    reader thread enters its own).
    """
    import rasterio

    def _one(path: str):
        try:
            with env(), rasterio.open(path) as src:
                return src.profile, src.bounds, src.res, src.scales, src.offsets, src.descriptions, \
                    tuple(ci.name for ci in src.colorinterp), src.block_shapes[0]
        except rasterio.errors.RasterioIOError as exc:
            raise StoreError(f"cannot open tile output {path}: {exc}") from None

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
        metas = list(pool.map(_one, paths))
    first, _, res0, scales, offsets, descriptions, ci, block = metas[0]
    tiles = []
    for path, key, (prof, bounds, res, sc, off, _, _, _) in zip(paths, keys, metas):
        problems = []
        if prof["dtype"] != first["dtype"]:
            problems.append(f"dtype {prof['dtype']} != {first['dtype']}")
        if prof["count"] != first["count"]:
            problems.append(f"{prof['count']} bands != {first['count']}")
        if prof["crs"] != first["crs"]:
            problems.append(f"CRS {prof['crs']} != {first['crs']}")
        if not np.allclose(res, res0, rtol=0, atol=1e-9 * max(res0)):
            problems.append(f"pixel size {res} != {res0}")
        if prof["nodata"] != first["nodata"] and not (
            prof["nodata"] is not None and first["nodata"] is not None
            and math.isnan(prof["nodata"]) and math.isnan(first["nodata"])
        ):
            problems.append(f"nodata {prof['nodata']} != {first['nodata']}")
        if tuple(sc) != tuple(scales) or tuple(off) != tuple(offsets):
            problems.append(f"scale/offset {sc}/{off} != {scales}/{offsets}")
        if problems:
            raise StoreError(f"tile output {key} does not match the other tiles of its layer: {'; '.join(problems)}")
        tiles.append(_TileMeta(path, prof["width"], prof["height"], tuple(bounds), tuple(res)))
    return _LayerMeta(first["crs"], first["dtype"], first["count"], first["nodata"], tuple(scales),
                      tuple(offsets), tuple(descriptions), ci, tuple(block), tuple(tiles))


def _layer_meta_from_grid(cfg, sources: LayerSources, paths: Sequence[str], env) -> _LayerMeta:
    """A layer's metadata from one tile file's header and the run's grid, opening no other tile file.

    Every tile of a run shares the grid's tile shape and pixel size, and every file of one
    layer is written by the same code under the same run fingerprint (a run refuses to mix
    fingerprints), so one header gives the dtype, bands, nodata, scales, descriptions and
    block shape of all of them; each tile's place comes from :class:`ecocube.grid.TileGrid`.
    The files' content was checked against their records by :func:`verify_sources`. Used
    when every record lists its outputs; 7,000 tiles × 1,575 layers would otherwise open
    11 M files for their headers before a pixel is read. The first file is checked against
    the grid (shape, pixel size, bounds): a StoreError naming it if it does not fit.
    """
    from .grid import TileGrid

    grid = TileGrid.from_config(cfg.grid)
    first = _read_tile_meta(paths[:1], sources.keys[:1], 1, env)
    head = first.tiles[0]
    tile0 = grid.tile(sources.tiles[0])
    tol = 1e-6 * grid.pixel_size
    problems = []
    if (head.height, head.width) != (tile0.height, tile0.width):
        problems.append(f"{head.width}x{head.height} px, the grid's tiles are {tile0.width}x{tile0.height}")
    if any(abs(r - grid.pixel_size) > tol for r in head.res):
        problems.append(f"pixel size {head.res}, the grid's is {grid.pixel_size}")
    if any(abs(a - b) > tol for a, b in zip(head.bounds, tile0.bounds)):
        problems.append(f"bounds {tuple(head.bounds)}, the grid's tile has {tuple(tile0.bounds)}")
    if problems:
        raise StoreError(f"tile output {sources.keys[0]} does not fit the run's grid: {'; '.join(problems)}")
    tiles = []
    for path, tile_id in zip(paths, sources.tiles):
        tile = grid.tile(tile_id)
        tiles.append(_TileMeta(path, tile.width, tile.height, tuple(tile.bounds), (grid.pixel_size, grid.pixel_size)))
    return _LayerMeta(first.crs, first.dtype, first.count, first.nodata, first.scales, first.offsets,
                      first.descriptions, first.colorinterp, first.block, tuple(tiles))


def _period_band(meta: _LayerMeta, sources: LayerSources) -> _LayerMeta:
    """A stacked layer's metadata reduced to the one raster band of its period: the band's
    scale and offset from the header, the product's band description (the tile files name
    their bands by period), each tile's source band from its record."""
    import dataclasses

    band = sources.bands[0]
    if not 1 <= band <= meta.count:
        raise StoreError(f"tile output {sources.keys[0]} has {meta.count} bands; its record puts period "
                         f"{sources.period} in band {band}")
    prod = registry.get(sources.product)
    tiles = tuple(dataclasses.replace(t, band=b) for t, b in zip(meta.tiles, sources.bands))
    return _LayerMeta(meta.crs, meta.dtype, 1, meta.nodata, (meta.scales[band - 1],), (meta.offsets[band - 1],),
                      prod.band_descriptions(sources.layer), ("gray",), meta.block, tiles)


def _mosaic_grid(meta: _LayerMeta):
    """(transform, width, height, per-tile pixel offsets) of the union of the tiles."""
    from affine import Affine

    xres, yres = meta.tiles[0].res
    left = min(t.bounds[0] for t in meta.tiles)
    top = max(t.bounds[3] for t in meta.tiles)
    right = max(t.bounds[2] for t in meta.tiles)
    bottom = min(t.bounds[1] for t in meta.tiles)
    width = round((right - left) / xres)
    height = round((top - bottom) / yres)
    offsets = []
    for t in meta.tiles:
        col = (t.bounds[0] - left) / xres
        row = (top - t.bounds[3]) / yres
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            raise StoreError(f"tile output {t.path} is not aligned with the pixel grid of the other tiles "
                             f"(offset {col:.4f}, {row:.4f} pixels)")
        offsets.append((int(round(col)), int(round(row))))
    return Affine(xres, 0.0, left, 0.0, -yres, top), width, height, offsets


def _fmt(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value)) if abs(value) < 1e15 else repr(float(value))


def vrt_xml(meta: _LayerMeta, *, source_path=lambda p: (p, False)) -> str:
    """The VRT document of a mosaic. ``source_path(path) -> (path, relative_to_vrt)``."""
    transform, width, height, offsets = _mosaic_grid(meta)
    gdal_type = GDAL_DTYPE[meta.dtype]
    bx, by = meta.block[1], meta.block[0]
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"  <SRS>{escape(meta.crs.to_wkt())}</SRS>",
             "  <GeoTransform>" + ", ".join(_fmt(v) for v in transform.to_gdal()) + "</GeoTransform>"]
    for b in range(meta.count):
        lines.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{b + 1}">')
        if meta.descriptions[b]:
            lines.append(f"    <Description>{escape(meta.descriptions[b])}</Description>")
        if meta.nodata is not None:
            lines.append(f"    <NoDataValue>{_fmt(meta.nodata) if not math.isnan(meta.nodata) else 'nan'}</NoDataValue>")
        if meta.scales[b] != 1.0 or meta.offsets[b] != 0.0:
            lines.append(f"    <Offset>{meta.offsets[b]!r}</Offset>")
            lines.append(f"    <Scale>{meta.scales[b]!r}</Scale>")
        for t, (col, row) in zip(meta.tiles, offsets):
            path, rel = source_path(t.path)
            tag = "ComplexSource" if meta.nodata is not None else "SimpleSource"
            lines.append(f"    <{tag}>")
            lines.append(f'      <SourceFilename relativeToVRT="{1 if rel else 0}">{escape(path)}</SourceFilename>')
            lines.append(f"      <SourceBand>{t.band + b}</SourceBand>")
            lines.append(f'      <SourceProperties RasterXSize="{t.width}" RasterYSize="{t.height}" '
                         f'DataType="{gdal_type}" BlockXSize="{bx}" BlockYSize="{by}" />')
            lines.append(f'      <SrcRect xOff="0" yOff="0" xSize="{t.width}" ySize="{t.height}" />')
            lines.append(f'      <DstRect xOff="{col}" yOff="{row}" xSize="{t.width}" ySize="{t.height}" />')
            if meta.nodata is not None:
                lines.append(f"      <NODATA>{_fmt(meta.nodata) if not math.isnan(meta.nodata) else 'nan'}</NODATA>")
            lines.append(f"    </{tag}>")
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- COG


def _crs_text(crs) -> str:
    epsg = crs.to_epsg() if crs is not None else None
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _colormap(classes) -> dict[int, tuple[int, int, int, int]]:
    cmap = {}
    for c in classes:
        h = c.color.lstrip("#")
        cmap[int(c.code)] = (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 255)
    return cmap


class _Stats:
    """Running per-band min/max/mean/std/valid share over windows (float64 accumulators)."""

    def __init__(self, count: int):
        self.n = np.zeros(count, np.int64)
        self.total = np.zeros(count, np.int64)
        self.s1 = np.zeros(count, np.float64)
        self.s2 = np.zeros(count, np.float64)
        self.lo = np.full(count, np.inf)
        self.hi = np.full(count, -np.inf)

    def add(self, data: np.ndarray, nodata: float | None, rows: int = 256) -> None:
        """Accumulate one window, ``rows`` rows at a time (float64 temporaries stay small)."""
        for b in range(data.shape[0]):
            self.total[b] += data[b].size
            for r in range(0, data.shape[1], rows):
                band = data[b, r:r + rows]
                if nodata is None:
                    valid = band.ravel()
                elif isinstance(nodata, float) and math.isnan(nodata):
                    valid = band[~np.isnan(band)]
                else:
                    valid = band[band != nodata]
                if valid.size:
                    v = valid.astype(np.float64)
                    self.n[b] += v.size
                    self.s1[b] += v.sum()
                    self.s2[b] += np.dot(v, v)
                    self.lo[b] = min(self.lo[b], v.min())
                    self.hi[b] = max(self.hi[b], v.max())

    def result(self, scales: Sequence[float], offsets: Sequence[float]) -> list[dict[str, float]]:
        out = []
        for b in range(len(self.n)):
            pct = 100.0 * self.n[b] / self.total[b] if self.total[b] else 0.0
            if self.n[b] == 0:
                out.append({"valid_percent": 0.0})  # all nodata: no min/max/mean
                continue
            mean = float(self.s1[b] / self.n[b])
            std = math.sqrt(max(0.0, float(self.s2[b] / self.n[b]) - mean * mean))
            sc, off = float(scales[b]), float(offsets[b])
            out.append({
                "minimum": float(self.lo[b]) * sc + off,
                "maximum": float(self.hi[b]) * sc + off,
                "mean": mean * sc + off,
                "stddev": std * abs(sc),
                "valid_percent": round(float(pct), 4),
            })
        return out


def _windows(width: int, height: int, step: int):
    from rasterio.windows import Window

    for row in range(0, height, step):
        for col in range(0, width, step):
            yield Window(col, row, min(step, width - col), min(step, height - row))


def _cog_options(product: str, compress: str, blocksize: int, threads: int, dtype: str) -> dict[str, str]:
    """The ``cog`` profile (driver included) for one product, codec, block size and data type."""
    prod = registry.get(product)
    if not prod.predictor:
        predictor = "NO"  # e.g. class codes do not vary smoothly; a predictor only costs time
    else:
        predictor = "FLOATING_POINT" if dtype.startswith("float") else "STANDARD"
    opts = profile("cog", COMPRESS=compress.upper(), PREDICTOR=predictor, BLOCKSIZE=str(blocksize),
                   OVERVIEW_RESAMPLING=prod.overview_resampling, NUM_THREADS=str(max(1, threads)))
    if compress == "zstd":
        opts["LEVEL"] = "9"
    return opts


def write_cog(src, dst_path: str | Path, *, product: str, compress: str = "deflate", blocksize: int = 512,
              threads: int = 1, colormap: dict[int, tuple[int, int, int, int]] | None = None,
              scales: Sequence[float] | None = None, offsets: Sequence[float] | None = None,
              descriptions: Sequence[str | None] | None = None, nodata: float | None = None,
              tags: dict[str, str] | None = None, tmp_dir: str | Path | None = None,
              window_size: int | None = None) -> list[dict[str, float]]:
    """Copy an open dataset (a VRT, a WarpedVRT, a file) into a COG at ``dst_path``.

    Pixels go window by window (``window_size`` px squares, default 4 × ``blocksize``)
    into a tiled temporary GeoTIFF, then GDAL's COG driver adds the overviews. Returns the
    per-band statistics (scaled values) of the valid pixels.
    """
    import rasterio
    import rasterio.shutil

    dst_path = Path(dst_path)
    step = window_size or blocksize * 4
    scales = list(scales if scales is not None else src.scales)
    offsets = list(offsets if offsets is not None else src.offsets)
    descriptions = list(descriptions if descriptions is not None else src.descriptions)
    nodata = src.nodata if nodata is None else nodata
    stats = _Stats(src.count)
    with tempfile.TemporaryDirectory(prefix=".mosaic-", dir=tmp_dir or dst_path.parent) as tmp:
        staging = Path(tmp) / "staging.tif"
        stage = profile("mosaic-stage", width=src.width, height=src.height, count=src.count,
                        dtype=src.dtypes[0], crs=src.crs, transform=src.transform, nodata=nodata,
                        blockxsize=blocksize, blockysize=blocksize, num_threads=str(max(1, threads)))
        digest = WriteDigest(src.dtypes[0])
        dst = rasterio.open(staging, "w", **stage)
        try:
            for window in _windows(src.width, src.height, step):
                data = src.read(window=window)
                stats.add(data, nodata)
                write_window(dst, data, window, staging, digest)
            dst.scales = scales
            dst.offsets = offsets
            for b, desc in enumerate(descriptions, start=1):
                if desc:
                    dst.set_band_description(b, desc)
            if colormap:
                dst.write_colormap(1, colormap)
            if tags:
                dst.update_tags(**tags)
        except BaseException:
            with contextlib.suppress(Exception):
                dst.close()
            raise
        close_checked(dst, staging)
        shape = dict(width=src.width, height=src.height, count=src.count)
        verify_written(staging, digest, **shape)

        def _verify_cog(part: Path) -> None:  # before the rename: the same pixels, overviews readable
            verify_written(part, digest, **shape, what=dst_path)
            with rasterio.open(part) as cog:
                for level in cog.overviews(1)[-1:]:
                    cog.read(1, out_shape=(max(1, cog.height // level), max(1, cog.width // level)))

        try:
            with atomic_path(dst_path, mkdir=False, verify=_verify_cog) as part:
                reset_gdal_error()
                rasterio.shutil.copy(staging, part,
                                     **_cog_options(product, compress, blocksize, threads, src.dtypes[0]))
                err = last_gdal_error()
                if err is not None:
                    raise write_error(dst_path, err[2])
        except rasterio.errors.RasterioError as exc:
            raise write_error(dst_path, f"the COG driver failed: {exc}") from None
        except VerifyError as exc:
            cause = exc.__cause__
            raise (cause if isinstance(cause, StoreError) else exc) from None
    return stats.result(scales, offsets)


def sha256_multihash(path: str | Path, chunk: int = 1 << 20) -> str:
    """The STAC file extension checksum: multihash (0x12 sha2-256, 0x20 bytes) as hex."""
    return "1220" + sha256_file(path, chunk)


# --------------------------------------------------------------------------- thumbnails


FALLBACK_FLAG_LEGEND = {0: "observed", 255: "not filled"}


def flag_legend_for(cfg=None) -> dict[int, str]:
    """Flag code -> description for the run's gap-fill settings (from :mod:`ecocube.gapfill`)."""
    try:
        from . import gapfill
    except ImportError:  # pragma: no cover - gapfill is part of the package
        return dict(FALLBACK_FLAG_LEGEND)
    if cfg is not None and hasattr(gapfill, "flag_legend_config"):
        legend = gapfill.flag_legend_config(cfg)
    elif hasattr(gapfill, "flag_legend"):
        legend = gapfill.flag_legend()
    else:  # pragma: no cover
        return dict(FALLBACK_FLAG_LEGEND)
    return {int(k): str(v) for k, v in legend.items()}


def render_thumbnail(cog_path: str | Path, png_path: str | Path, *, product: str, title: str,
                     classes=None, flag_legend: dict[int, str] | None = None, size: int = 256) -> None:
    """A small PNG of the layer (read from the COG's overviews) with a legend or colour bar."""
    import rasterio
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from rasterio.enums import Resampling

    with rasterio.open(cog_path) as src:
        scale = min(1.0, size / max(src.width, src.height))
        shape = (max(1, round(src.height * scale)), max(1, round(src.width * scale)))
        data = src.read(out_shape=(src.count, *shape), resampling=Resampling.nearest, masked=True)
        sc, off = src.scales, src.offsets

    fig = Figure(figsize=(4.2, 3.2), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.04, 0.62, 0.84))
    ax.set_axis_off()
    ax.set_title(title, fontsize=8, loc="left")
    legend_ax = fig.add_axes((0.66, 0.04, 0.32, 0.84))
    legend_ax.set_axis_off()
    prod = registry.get(product)
    if prod.legend == "classes" and classes:
        codes = [int(c.code) for c in classes]
        colors = [c.color for c in classes]
        index = np.full(shape, np.nan)
        band = data[0].filled(np.iinfo(np.uint16).max) if np.ma.isMaskedArray(data[0]) else data[0]
        for i, code in enumerate(codes):
            index[band == code] = i
        ax.imshow(np.ma.masked_invalid(index), cmap=ListedColormap(colors), vmin=-0.5,
                  vmax=len(codes) - 0.5, interpolation="nearest")
        legend_ax.legend(handles=[Patch(color=c.color, label=f"{c.code} {c.name}") for c in classes],
                         loc="center left", fontsize=7, frameon=False)
    elif prod.legend == "flags":
        legend = flag_legend or flag_legend_for()
        present = set(np.unique(data[0].compressed() if np.ma.isMaskedArray(data[0]) else data[0]).tolist())
        codes = sorted(present) or sorted(legend)  # only what the layer holds: a short legend
        legend = {c: legend.get(c, f"code {c}") for c in codes}
        palette = ["#2b83ba", "#abdda4", "#ffffbf", "#fdae61", "#d7191c", "#7b3294", "#c2a5cf", "#008837"]
        colors = {code: ("#000000" if code == 255 else palette[i % len(palette)]) for i, code in enumerate(codes)}
        index = np.full(shape, np.nan)
        for i, code in enumerate(codes):
            index[(data[0] == code).filled(False)] = i
        ax.imshow(np.ma.masked_invalid(index), cmap=ListedColormap([colors[c] for c in codes]), vmin=-0.5,
                  vmax=len(codes) - 0.5, interpolation="nearest")
        legend_ax.legend(handles=[Patch(color=colors[c], label=f"{c} {legend[c]}"[:28]) for c in codes],
                         loc="center left", fontsize=6, frameon=False)
    else:
        values = (data.max(axis=0) if prod.reduce == "max" else data[0]).astype(np.float64) * sc[0] + off[0]
        label, cmap = prod.ramp_label, prod.ramp
        compressed = values.compressed() if np.ma.isMaskedArray(values) else np.ravel(values)
        if compressed.size:
            vmin, vmax = prod.ramp_range if prod.ramp_range is not None else np.percentile(compressed, [2, 98])
        else:
            vmin, vmax = 0.0, 1.0
        if vmax <= vmin:
            vmax = vmin + 1.0
        image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        cax = fig.add_axes((0.70, 0.12, 0.05, 0.68))
        bar = fig.colorbar(image, cax=cax)
        bar.ax.tick_params(labelsize=7)
        bar.set_label(label, fontsize=7)
    with atomic_path(png_path, mkdir=False) as part:
        fig.savefig(part, format="png", facecolor="white")  # fixed layout: "tight" costs a second draw


# --------------------------------------------------------------------------- one layer


def _relpath_from(base_key: str, target_key: str) -> str:
    return os.path.relpath(target_key, os.path.dirname(base_key)).replace(os.sep, "/")


def mosaic_layer(cfg, store, sources: LayerSources, *, threads: int = 1, work_dir: str | Path,
                 cachemax: int | None = None) -> MosaicLayer:
    """Mosaic one product/layer/period: VRT → COG (+ thumbnail), uploaded to the store.

    Replaces an existing COG: :func:`mosaic_run` decides what is up to date. ``cachemax``:
    GDAL block cache limit in bytes (default :func:`mosaic_cachemax` of one layer).
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    collection, asset = collection_for(sources.product, sources.layer)
    item_id = item_id_for(collection, sources.period)
    key = output_key(sources.product, sources.layer, sources.period)
    vrt_key = output_key(sources.product, sources.layer, sources.period, "vrt")
    png_key = output_key(sources.product, sources.layer, sources.period, "png")

    fin = cfg.finalize
    work = Path(tempfile.mkdtemp(prefix=f"{item_id}-{asset}-", dir=work_dir))
    local_cog = work / f"{asset}.tif"
    local_vrt = work / f"{asset}.vrt"
    local_png = work / f"{asset}.png"
    cachemax = mosaic_cachemax(1) if cachemax is None else cachemax

    def env():
        return _mosaic_env(store, threads, cachemax)

    with env():
        paths = [store.gdal_path(k) for k in sources.keys]
        if sources.expected and all(sources.expected):  # every file verified against its record
            meta = _layer_meta_from_grid(cfg, sources, paths, env)
        else:  # records that list no outputs (written by hand): each file's header is read and compared
            meta = _read_tile_meta(paths, sources.keys, threads, env)
        if sources.bands:  # stacked tile files: the period's raster band of each
            meta = _period_band(meta, sources)
        # the working VRT points at what GDAL can open from here; the published one is
        # relative for a local store (it sits inside it) and /vsis3/ for S3
        work_vrt = vrt_xml(meta)
        local_vrt.write_text(work_vrt)
        key_of = dict(zip(paths, sources.keys))

        def _published(path: str):
            if path.startswith("/vsi"):
                return path, False
            return _relpath_from(vrt_key, key_of[path]), True

        published_vrt = work / f"{asset}.published.vrt"
        published_vrt.write_text(vrt_xml(meta, source_path=_published))

        product = registry.get(sources.product)
        colormap = _colormap(cfg.model.classes) if product.legend == "classes" else None
        tags = {"ECOCUBE_SOURCES_SHA256": sources.digest, "ECOCUBE_PRODUCT": sources.product,
                "ECOCUBE_LAYER": sources.layer, "ECOCUBE_PERIOD": sources.period,
                "ECOCUBE_TILES": str(len(sources.tiles))}
        with rasterio.open(local_vrt) as vrt:
            if fin.reproject:
                resampling = Resampling[registry.get(sources.product).warp_resampling]
                with WarpedVRT(vrt, crs=fin.reproject, resampling=resampling, nodata=meta.nodata,
                               warp_mem_limit=256, num_threads=max(1, threads)) as warped:
                    statistics = write_cog(warped, local_cog, product=sources.product, compress=fin.compress,
                                           blocksize=fin.blocksize, threads=threads, colormap=colormap,
                                           scales=meta.scales, offsets=meta.offsets,
                                           descriptions=meta.descriptions, nodata=meta.nodata, tags=tags)
            else:
                statistics = write_cog(vrt, local_cog, product=sources.product, compress=fin.compress,
                                       blocksize=fin.blocksize, threads=threads, colormap=colormap,
                                       scales=meta.scales, offsets=meta.offsets,
                                       descriptions=meta.descriptions, nodata=meta.nodata, tags=tags)

    with rasterio.open(local_cog) as cog:
        crs, transform, shape, bounds = cog.crs, cog.transform, (cog.height, cog.width), tuple(cog.bounds)
        overviews = cog.overviews(1)
    title = f"{collection} {sources.period}" + (f" · {asset}" if asset not in (collection, sources.layer) else "")
    # one thumbnail per STAC item is shown: none for count layers (they sit beside their band)
    # and, for the flags item (one asset per band), only for the first band
    bands = list(cfg.bands)
    wants_thumbnail = product.thumbnail == "every" or (
        product.thumbnail == "first-band" and (not bands or sources.layer == bands[0]))
    if wants_thumbnail:
        render_thumbnail(local_cog, local_png, product=sources.product, title=title, classes=cfg.model.classes,
                         flag_legend=flag_legend_for(cfg) if product.legend == "flags" else None)
    else:
        png_key = None
    size = local_cog.stat().st_size
    checksum = sha256_multihash(local_cog)

    # the COG first: a crash never leaves a thumbnail or VRT of a missing COG
    store.put_file(local_cog, key, sha256=checksum[4:], move=True)
    store.put_file(published_vrt, vrt_key, move=True)
    if png_key is not None:
        store.put_file(local_png, png_key, move=True)

    grid_bounds = [list(t.bounds) for t in meta.tiles]
    result = MosaicLayer(
        product=sources.product, layer=sources.layer, period=sources.period, collection=collection,
        item_id=item_id, asset=asset, key=key, vrt_key=vrt_key, thumbnail_key=png_key,
        tiles=list(sources.tiles), tile_bounds=grid_bounds, crs=_crs_text(crs),
        transform=list(transform)[:6], shape=list(shape), bounds=list(bounds), dtype=meta.dtype,
        count=meta.count, nodata=meta.nodata, scales=list(meta.scales), offsets=list(meta.offsets),
        descriptions=list(meta.descriptions), statistics=statistics, overviews=list(overviews),
        size=size, checksum=checksum, sources_digest=sources.digest, compress=fin.compress,
        extra={"grid_crs": _crs_text(meta.crs),
               **({"observed_fraction": sources.observed_fraction} if sources.observed_fraction is not None else {})},
    )
    for p in (local_cog, local_vrt, published_vrt, local_png):
        p.unlink(missing_ok=True)
    work.rmdir()
    return result


# --------------------------------------------------------------------------- whole run


@dataclass
class MosaicPlan:
    """What :func:`mosaic_run` would do: the layers to (re)make, those kept as up to date, and
    the URLs of existing mosaics whose tiles changed (they need ``overwrite``)."""

    todo: list[LayerSources]
    kept: list[MosaicLayer]
    stale: list[str]
    previous: dict[str, MosaicLayer]

    def keys(self) -> list[str]:
        return [output_key(s.product, s.layer, s.period) for s in self.todo]


def plan_mosaics(cfg, store, *, overwrite: bool = False, products: Sequence[str] | None = None) -> MosaicPlan:
    """Decide, from the tiles' records and the manifest alone (no pixel read, nothing
    written), which mosaics are to be made, kept or refused (``ecocube finalize --dry-run``)."""
    layers = find_layers(cfg, store, products=products)
    if not layers:
        raise StoreError(f"no finished tile outputs to mosaic in {store!r} "
                         f"(products {', '.join(products or cfg.output.layers)}; tiles need a 'done' status record)")
    previous = read_manifest(store)
    plan = MosaicPlan([], [], [], previous)
    for src in layers:
        key = output_key(src.product, src.layer, src.period)
        unchanged = key in previous and previous[key].sources_digest == src.digest and store.exists(key)
        if unchanged:  # same tiles with the same content (their records' checksums), same settings
            previous[key].state = "up-to-date"
            plan.kept.append(previous[key])
        elif overwrite or not store.exists(key):
            plan.todo.append(src)
        else:
            plan.stale.append(store.url(key))
    return plan


def mosaic_run(cfg, *, store=None, overwrite: bool = False, threads: int | None = None,
               products: Sequence[str] | None = None, work_dir: str | Path | None = None) -> list[MosaicLayer]:
    """Mosaic every finished product/layer/period of the run into COGs under ``catalog/``.

    Layers run in parallel (threads from ``threads`` or the allocation; each layer gets an
    equal share for GDAL). "Unchanged" is decided from content: the source keys, the
    checksums the tiles' status records give them, and the COG settings
    (:attr:`LayerSources.digest`, kept in the manifest). An existing COG whose sources are
    unchanged is kept (also with ``overwrite``); one whose sources changed needs
    ``overwrite=True`` (else :class:`FileOverwriteError` listing them), which remakes exactly
    those. Every tile file a remade layer reads is first checked against its record
    (:func:`verify_sources`; a mismatch raises :class:`StoreError` naming tile and file).
    Returns the layers (also written to ``catalog/mosaics.json``).
    """
    import rasterio

    store = store_for(cfg, store)
    plan = plan_mosaics(cfg, store, overwrite=overwrite, products=products)
    todo, kept, stale, previous = plan.todo, plan.kept, plan.stale, plan.previous
    total = available_threads(threads)
    if stale:
        raise FileOverwriteError(
            f"{len(stale)} mosaics exist but their tiles changed since they were made (or the manifest "
            f"{MANIFEST_KEY} does not list them); use --overwrite to remake exactly those: "
            + ", ".join(stale[:10]) + (" ..." if len(stale) > 10 else ""))
    verify_sources(store, todo, threads=max(1, total * 2))
    workers = max(1, min(total, len(todo)))
    per_layer = max(1, total // workers)
    cachemax = mosaic_cachemax(workers)
    log.info("mosaicking %d layers (%d up to date) with %d workers × %d threads",
             len(todo), len(kept), workers, per_layer)

    results: list[MosaicLayer] = list(kept)
    errors: list[EcocubeError] = []
    lock = threading.Lock()
    tmp = Path(tempfile.mkdtemp(prefix="ecocube-mosaic-", dir=work_dir)) if work_dir else store.work_dir("mosaic")
    try:

        def _job(src: LayerSources) -> None:
            try:
                layer = mosaic_layer(cfg, store, src, threads=per_layer, work_dir=tmp, cachemax=cachemax)
            except EcocubeError as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                results.append(layer)
            log.info("%s %s (%d tiles)", layer.state, store.url(layer.key), len(layer.tiles))

        # GDAL's block cache is one per process: pin its limit here, in the calling thread, so
        # that a layer thread leaving its scoped environment restores this limit and not
        # GDAL's default (5 % of RAM) while other layers still run
        from .progress import progress_bar

        with rasterio.Env(GDAL_CACHEMAX=cachemax), ThreadPoolExecutor(max_workers=workers) as pool, \
                progress_bar(len(todo), desc="mosaics", unit="layer") as bar:
            for _ in pool.map(_job, todo):
                bar.update(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # keep manifest entries of layers not redone this time (e.g. a products subset)
    merged = {k: v for k, v in previous.items() if products and v.product not in products and store.exists(k)}
    merged.update({layer.key: layer for layer in results})
    write_manifest(store, merged.values(), cfg)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        kinds = {type(e) for e in errors}
        kind = kinds.pop() if len(kinds) == 1 else EcocubeError
        raise kind(f"{len(errors)} of {len(todo)} mosaic layers failed:\n  " + "\n  ".join(map(str, errors)))
    return sorted(results, key=lambda x: x.key)
