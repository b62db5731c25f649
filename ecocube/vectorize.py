"""``ecocube vectorize``: the class maps of a run as polygons, unbroken across tile borders.

For one categorical product (``class``) and each year with finished tiles,
:func:`vectorize_run`

1. lists the tiles with a ``done`` status record (:func:`ecocube.mosaic.find_layers`) and
   checks every file it reads against its record;
2. reads the tiles one at a time (row-major) and feeds them to
   :class:`ecocube.polygons.BorderMerger`, which returns each polygon once it is whole:
   regions crossing a tile edge are dissolved, memory holds only regions on edges whose
   neighbour tile has not been read yet;
3. per batch of final polygons: optional topology-preserving simplification
   (``shapely.coverage_simplify``: neighbours keep sharing their edges), the area (grid CRS
   units², on the ellipsoid for a geographic CRS), the pixel count and the mean probability
   of the polygon's class (from the ``proba`` tiles, when the run wrote them);
4. writes GeoPackage and GeoParquet in the grid CRS and GeoJSON in WGS84 (RFC 7946:
   longitude/latitude, counter-clockwise exteriors, no ``crs`` member), streamed batch by
   batch, re-reads each file's feature count and CRS, then publishes them atomically under
   ``catalog/{product}-polygons/{product}-polygons-{year}/`` and records them in
   ``catalog/vectors.json`` (:mod:`ecocube.manifest`);
5. rebuilds the STAC catalog (:func:`ecocube.stac.publish_catalog`), which gets a
   ``{product}-polygons`` collection with one item per year.

A rerun keeps outputs whose tiles and settings are unchanged; changed ones need
``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import products as registry
from .errors import ConfigError, EcocubeError, FileOverwriteError, StoreError
from .manifest import CATALOG_PREFIX, VECTORS_KEY, VectorLayer, read_vectors, write_vectors
from .polygons import BorderMerger, simplify_polygons, to_crs_transform

log = logging.getLogger(__name__)

FORMATS = ("gpkg", "parquet", "geojson")
MEDIA_TYPES = {"gpkg": "application/geopackage+sqlite3", "parquet": "application/vnd.apache.parquet",
               "geojson": "application/geo+json"}
#: polygons written per batch (GeoPackage append, Parquet row group)
BATCH = 20000
FIELDS = ("id", "class", "class_name", "pixels", "area", "mean_proba", "tiles")


def vectorizable(name: str) -> bool:
    p = registry.get(name)
    return p.kind == "categorical" and p.legend == "classes" and not p.per_class and not p.per_band


def collection_for(product: str) -> str:
    return f"{product}-polygons"


def output_key(product: str, period: str, fmt: str) -> str:
    coll = collection_for(product)
    return f"{CATALOG_PREFIX}/{coll}/{coll}-{period}/{coll}.{fmt}"


# --------------------------------------------------------------------------- writers


class _Writers:
    """The three formats, written batch by batch to local files."""

    def __init__(self, work: Path, formats: Sequence[str], crs, name: str):
        from pyproj import CRS, Transformer

        self.work, self.formats, self.name = work, tuple(formats), name
        self.crs = CRS.from_user_input(crs)
        self.paths = {f: work / f"{name}.{f}" for f in self.formats}
        self.count = 0
        self.bbox = [math.inf, math.inf, -math.inf, -math.inf]
        self._parquet = None
        self._geojson = None
        self._gpkg_started = False
        self._to_wgs84 = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
        if "geojson" in self.formats:
            self._geojson = open(self.paths["geojson"], "x", encoding="utf-8")
            self._geojson.write('{"type": "FeatureCollection", "name": ' + json.dumps(name) + ', "features": [\n')

    def write(self, geoms: np.ndarray, cols: dict[str, np.ndarray]) -> None:
        import shapely

        if len(geoms) == 0:
            return
        b = shapely.total_bounds(geoms)
        self.bbox = [min(self.bbox[0], b[0]), min(self.bbox[1], b[1]), max(self.bbox[2], b[2]), max(self.bbox[3], b[3])]
        wkb = shapely.to_wkb(geoms)
        if "gpkg" in self.formats:
            import pyogrio

            pyogrio.raw.write(str(self.paths["gpkg"]), geometry=wkb, field_data=[cols[f] for f in FIELDS],
                              fields=list(FIELDS), crs=self.crs.to_wkt(), geometry_type="Polygon", driver="GPKG",
                              layer=self.name, append=self._gpkg_started)
            self._gpkg_started = True
        if "parquet" in self.formats:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({**{f: cols[f] for f in FIELDS}, "geometry": pa.array(list(wkb), pa.binary())})
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.paths["parquet"], table.schema, compression="zstd")
            self._parquet.write_table(table)
        if self._geojson is not None:
            def _fn(xy):
                x, y = self._to_wgs84.transform(xy[:, 0], xy[:, 1])
                return np.column_stack([x, y])

            # rounded to 1e-7 degrees (~1 cm) first: set_precision rebuilds rings in GEOS order
            ll = shapely.set_precision(shapely.transform(geoms, _fn), 1e-7)
            ll = shapely.orient_polygons(ll, exterior_cw=False)  # RFC 7946 right-hand rule
            for i, g in enumerate(ll):
                props = {f: _json_value(cols[f][i]) for f in FIELDS}
                feature = {"type": "Feature", "id": props["id"], "properties": props,
                           "geometry": shapely.geometry.mapping(g)}
                self._geojson.write(("" if self.count + i == 0 else ",\n") + json.dumps(feature))
        self.count += len(geoms)

    def close(self, bbox_wgs84: list[float]) -> None:
        if self._geojson is not None:
            self._geojson.write("\n]}\n")
            self._geojson.close()
        if "parquet" in self.formats:
            self._close_parquet()
        if "gpkg" in self.formats and not self._gpkg_started:
            import pyogrio

            pyogrio.raw.write(str(self.paths["gpkg"]), geometry=np.array([], object),
                              field_data=[np.array([], np.int64)] * len(FIELDS), fields=list(FIELDS),
                              crs=self.crs.to_wkt(), geometry_type="Polygon", driver="GPKG", layer=self.name)

    def _close_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._parquet is None:  # no polygon at all: an empty file with the schema
            empty = {"id": pa.array([], pa.int64()), "class": pa.array([], pa.int32()),
                     "class_name": pa.array([], pa.string()), "pixels": pa.array([], pa.int64()),
                     "area": pa.array([], pa.float64()), "mean_proba": pa.array([], pa.float64()),
                     "tiles": pa.array([], pa.string()), "geometry": pa.array([], pa.binary())}
            self._parquet = pq.ParquetWriter(self.paths["parquet"], pa.table(empty).schema)
        bbox = self.bbox if self.count else None
        geo = {"version": "1.1.0", "primary_column": "geometry",
               "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"],
                                        "crs": self.crs.to_json_dict(), **({"bbox": bbox} if bbox else {})}}}
        self._parquet.add_key_value_metadata({"geo": json.dumps(geo)})
        self._parquet.close()

    def abort(self) -> None:
        if self._geojson is not None and not self._geojson.closed:
            self._geojson.close()
        if self._parquet is not None:
            try:
                self._parquet.close()
            except Exception:  # noqa: BLE001 - the files are deleted anyway
                pass


def _json_value(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def check_vector_file(path: Path, fmt: str, *, count: int, crs) -> None:
    """Re-read a written file: its feature count and CRS must be what was written."""
    from pyproj import CRS

    want = CRS.from_user_input(crs)
    if fmt in ("gpkg", "geojson"):
        import pyogrio

        info = pyogrio.read_info(str(path))
        got_crs = CRS.from_user_input(info["crs"]) if info["crs"] else None
        want_crs = CRS.from_epsg(4326) if fmt == "geojson" else want
        got = info["features"]
    else:
        import pyarrow.parquet as pq

        meta = pq.read_metadata(path)
        got = meta.num_rows
        geo = json.loads(meta.metadata[b"geo"])
        got_crs = CRS.from_json_dict(geo["columns"]["geometry"]["crs"])
        want_crs = want
    if got != count:
        raise StoreError(f"{path}: {got} features read back, {count} written")
    if got_crs is None or not got_crs.equals(want_crs, ignore_axis_order=True):
        raise StoreError(f"{path}: CRS read back is {got_crs}, expected {want_crs.to_string()}")


# --------------------------------------------------------------------------- the run


def _area_fn(crs):
    """Polygon areas: planar in a projected CRS, on the WGS84 ellipsoid in a geographic one."""
    import shapely
    from pyproj import CRS, Geod

    if not CRS.from_user_input(crs).is_geographic:
        return shapely.area
    geod = Geod(ellps="WGS84")
    return lambda geoms: np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms])


def _read_tile(store, key: str, tile):
    import rasterio

    path = store.gdal_path(key)
    try:
        with store.rasterio_env(), rasterio.open(path) as src:
            if src.shape != tuple(tile.shape) or not src.transform.almost_equals(tile.transform):
                raise EcocubeError(f"tile {tile.id}: {store.url(key)} is not on the tile grid "
                                   f"(shape {src.shape}, transform {tuple(src.transform)[:6]})")
            data = src.read()
            return data, src.nodata, list(src.scales), list(src.descriptions), src.tags()
    except rasterio.RasterioIOError as exc:
        raise StoreError(f"tile {tile.id}: cannot read {store.url(key)}: {exc}") from None


def _class_names(cfg, tags: dict) -> dict[int, str]:
    names = {int(c.code): c.name for c in cfg.model.classes}
    try:
        names.update({int(k): str(v) for k, v in json.loads(tags.get("classes", "{}")).items()})
    except (ValueError, TypeError, AttributeError):
        pass
    return names


@dataclass
class VectorPlan:
    """What :func:`vectorize_run` would do: per year, polygons to make (``todo``: the class and
    probability tile layers with their digest), outputs kept as up to date (``kept``), and
    outputs whose tiles or settings changed, refused without ``overwrite`` (``stale``: URLs)."""

    product: str
    formats: tuple[str, ...]
    todo: list = field(default_factory=list)
    kept: list[VectorLayer] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    previous: dict = field(default_factory=dict)

    def keys(self, period: str) -> list[str]:
        """The store keys the polygons of ``period`` are published under."""
        return [output_key(self.product, period, f) for f in self.formats]


def plan_vectorize(cfg, store, *, product: str = "class", years: Sequence[int] | None = None,
                   simplify: float = 0.0, formats: Sequence[str] = FORMATS, overwrite: bool = False) -> VectorPlan:
    """The plan of :func:`vectorize_run`, from the tiles' status records and the store's
    ``catalog/vectors.json``; reads no pixel and writes nothing.

    Raises :class:`ConfigError` (exit 2) for a product that is not a class map, one the run
    has no finished tile of, or a year without tiles.
    """
    from .mosaic import find_layers

    if product not in registry.PRODUCTS:
        raise ConfigError(f"unknown product {product!r}; known: {', '.join(registry.NAMES)}")
    if not vectorizable(product):
        ok = [n for n in registry.NAMES if vectorizable(n)]
        raise ConfigError(f"product {product!r} is not a class map and cannot be vectorised; use {', '.join(ok)}")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"unknown vector format(s) {bad}; use {', '.join(FORMATS)}")
    if simplify < 0 or not math.isfinite(simplify):
        raise ConfigError(f"--simplify must be a tolerance >= 0 in grid CRS units, got {simplify}")
    sources = find_layers(cfg, store, products=[product])
    if not sources:
        raise ConfigError(f"no finished '{product}' tiles in {cfg.output.store} (tiles need a 'done' status record "
                          f"and '{product}' among output.layers)")
    available = sorted({int(s.period[:4]) for s in sources})
    if years:
        missing = sorted(set(years) - set(available))
        if missing:
            raise ConfigError(f"no finished '{product}' tiles for year {', '.join(map(str, missing))} in "
                              f"{cfg.output.store}; years with tiles: {', '.join(map(str, available))}")
        sources = [s for s in sources if int(s.period[:4]) in set(years)]
    probas = {s.period: s for s in find_layers(cfg, store, products=["proba"])} if "proba" in registry.PRODUCTS else {}
    plan = VectorPlan(product=product, formats=tuple(formats), previous=read_vectors(store))
    settings = json.dumps({"simplify": simplify, "formats": sorted(formats), "version": 1}, sort_keys=True)
    for src in sources:
        proba = probas.get(src.period)
        digest = _sources_digest(store, [s for s in (src, proba) if s is not None], settings)
        key = output_key(product, src.period, "gpkg" if "gpkg" in formats else formats[0])
        prev = plan.previous.get(f"{product}/{src.period}")
        if prev is not None and prev.sources_digest == digest and all(store.exists(a["key"]) for a in prev.assets.values()):
            prev.state = "up-to-date"
            plan.kept.append(prev)
        elif prev is not None and not overwrite and any(store.exists(a["key"]) for a in prev.assets.values()):
            plan.stale.append(store.url(key))
        elif prev is None and not overwrite and any(store.exists(output_key(product, src.period, f)) for f in formats):
            plan.stale.append(store.url(key))
        else:
            plan.todo.append((src, proba, digest))
    return plan


def vectorize_run(cfg, *, store=None, product: str = "class", years: Sequence[int] | None = None,
                  simplify: float = 0.0, formats: Sequence[str] = FORMATS, overwrite: bool = False,
                  catalog: bool = True, threads: int | None = None) -> list[VectorLayer]:
    """Vectorise the finished tiles of ``product`` per year; returns the vector layers.

    Raises :class:`ConfigError` (exit 2) for a product that is not a class map, one the run
    has no finished tile of, or a year without tiles; :class:`FileOverwriteError` when an
    output exists, its tiles or settings changed and ``overwrite`` is not set.
    """
    from .grid import TileGrid, index_from_tile_id
    from .mosaic import verify_sources
    from .store import store_for

    store = store_for(cfg, store)
    plan = plan_vectorize(cfg, store, product=product, years=years, simplify=simplify, formats=formats,
                          overwrite=overwrite)
    if plan.stale:
        raise FileOverwriteError(f"{len(plan.stale)} polygon outputs exist but their tiles or settings changed; "
                                 f"use --overwrite to remake them: {', '.join(plan.stale[:5])}")
    grid = TileGrid.from_config(cfg.grid)
    results: list[VectorLayer] = list(plan.kept)
    for src, proba, digest in plan.todo:
        verify_sources(store, [s for s in (src, proba) if s is not None])
        results.append(_vectorize_period(cfg, store, grid, product, src, proba, digest, simplify, formats,
                                         index_from_tile_id))
    if plan.todo:  # every year up to date: the manifest already lists these layers, leave it as it is
        merged = {f"{v.product}/{v.period}": v for v in plan.previous.values()}
        merged.update({f"{v.product}/{v.period}": v for v in results})
        write_vectors(store, merged.values(), cfg)
    if catalog:
        from .stac import publish_catalog

        publish_catalog(cfg, store=store, browser=True)
    return sorted(results, key=lambda v: (v.product, v.period))


def _sources_digest(store, sources, settings: str) -> str:
    """sha256 over the tile keys with their content checksums (from the status records,
    else from the store) and the settings: changes when any tile file changes."""
    lines = []
    for src in sources:
        for key, expected in zip(src.keys, src.expected or (None,) * len(src.keys)):
            sha = (expected or {}).get("sha256") or store.info(key).sha256
            lines.append(f"{key} {sha}")
    return hashlib.sha256("\n".join([*lines, settings]).encode()).hexdigest()


def _vectorize_period(cfg, store, grid, product, src, proba_src, digest, simplify, formats,
                      index_from_tile_id) -> VectorLayer:
    import shapely

    prod = registry.get(product)
    collection = collection_for(product)
    item_id = f"{collection}-{src.period}"
    proba_keys = dict(zip(proba_src.tiles, proba_src.keys)) if proba_src else {}
    indices = {t: tuple(index_from_tile_id(t)) for t in src.tiles}
    order = sorted(src.tiles, key=lambda t: (indices[t][1], indices[t][0]))
    merger = BorderMerger(indices.values(), grid.tile_size)
    affine = to_crs_transform(grid.origin_x, grid.origin_y, grid.pixel_size)
    area_of = _area_fn(grid.crs)
    work = store.work_dir("vectorize")
    writers = _Writers(work, formats, grid.crs, collection)
    names: dict[int, str] = {int(c.code): c.name for c in cfg.model.classes}
    pending: list = []
    next_id = [1]

    def flush(force: bool = False) -> None:
        if not pending or (len(pending) < BATCH and not force):
            return
        pix = np.array([p.geometry for p in pending], dtype=object)
        crs_geoms = shapely.transform(pix, lambda xy: np.column_stack([affine[4] + xy[:, 0] * affine[0],
                                                                      affine[5] + xy[:, 1] * affine[3]]))
        crs_geoms = simplify_polygons(crs_geoms, simplify)
        n = len(pending)
        cols = {
            "id": np.arange(next_id[0], next_id[0] + n, dtype=np.int64),
            "class": np.array([p.value for p in pending], np.int32),
            "class_name": np.array([names.get(p.value, str(p.value)) for p in pending], dtype=object),
            "pixels": np.array([p.pixels for p in pending], np.int64),
            "area": np.asarray(area_of(crs_geoms), np.float64),
            "mean_proba": np.array([p.mean_proba for p in pending], np.float64),
            "tiles": np.array([",".join(p.tiles) for p in pending], dtype=object),
        }
        writers.write(crs_geoms, cols)
        next_id[0] += n
        pending.clear()

    try:
        for tile_id in order:
            tile = grid.tile(tile_id)
            key = src.keys[src.tiles.index(tile_id)]
            data, nodata, _, _, tags = _read_tile(store, key, tile)
            names.update(_class_names(cfg, tags))
            values = data[0]
            valid = values != nodata if nodata is not None else np.ones(values.shape, bool)
            proba = None
            if tile_id in proba_keys:
                pdata, pnodata, scales, descriptions, _ = _read_tile(store, proba_keys[tile_id], tile)
                band_of = {}
                for code, name in names.items():
                    if name in descriptions:
                        band_of[code] = descriptions.index(name)
                proba = np.full(values.shape, np.nan)
                for code, b in band_of.items():
                    sel = valid & (values == code)
                    band = pdata[b].astype(np.float64)
                    if pnodata is not None:
                        band[pdata[b] == pnodata] = np.nan
                    proba[sel] = band[sel] * (scales[b] or 1.0) / 100.0  # stored in percent
            pending.extend(merger.add_tile(tile_id, indices[tile_id], values, valid, proba))
            flush()
        pending.extend(merger.finish())
        flush(force=True)
        bbox = list(writers.bbox) if writers.count else [float(b) for b in _tiles_bounds(grid, src.tiles)]
        from rasterio.warp import transform_bounds

        bbox_wgs84 = list(transform_bounds(grid.crs, "EPSG:4326", *bbox, densify_pts=21))
        writers.close(bbox_wgs84)
        assets = {}
        for fmt, path in writers.paths.items():
            check_vector_file(path, fmt, count=writers.count, crs=grid.crs)
        from .mosaic import sha256_multihash

        for fmt, path in writers.paths.items():
            key = output_key(product, src.period, fmt)
            size = path.stat().st_size
            checksum = sha256_multihash(path)
            store.put_file(path, key, sha256=checksum[4:], move=True)
            assets[fmt] = {"key": key, "size": size, "checksum": checksum, "media_type": MEDIA_TYPES[fmt],
                           "crs": "EPSG:4326" if fmt == "geojson" else _crs_text(grid.crs)}
    except BaseException:
        writers.abort()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("%s %s: %d polygons from %d tiles (at most %d regions held)", product, src.period, writers.count,
             len(src.tiles), merger.carried_max)
    return VectorLayer(product=product, period=src.period, collection=collection, item_id=item_id, assets=assets,
                       features=writers.count, tiles=list(src.tiles),
                       tile_bounds=[list(grid.tile(t).bounds) for t in src.tiles], crs=_crs_text(grid.crs),
                       bbox=bbox, bbox_wgs84=bbox_wgs84, simplify=simplify, sources_digest=digest,
                       title=f"{prod.title} polygons", carried_max=merger.carried_max)


def _tiles_bounds(grid, tiles):
    b = np.array([list(grid.tile(t).bounds) for t in tiles])
    return b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()


def _crs_text(crs) -> str:
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg else c.to_wkt()


__all__ = ["FORMATS", "VECTORS_KEY", "check_vector_file", "collection_for", "output_key", "vectorizable",
           "vectorize_run"]
