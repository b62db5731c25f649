"""The tile grid: pure geometry, no raster I/O.

A :class:`TileGrid` is a CRS, the upper-left ``origin`` (x, y) of tile ``(0, 0)``, a
square pixel size and a tile size in pixels. Tile ``(ix, iy)`` lies ``ix`` tiles east
and ``iy`` tiles south of the origin. Tile ids look like ``X0012_Y0034`` (negative
indices are allowed: ``X-001_Y0002``). Indices are always ``(ix, iy)``, i.e. x first;
shapes are always ``(height, width)``, i.e. y first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from affine import Affine
from rasterio.windows import Window

from .atomic import atomic_path
from .errors import GridError

TILE_ID_RE = re.compile(r"^X(-?\d{1,7})_Y(-?\d{1,7})$")


class TileIndex(NamedTuple):
    """Grid index of a tile: ``ix`` eastward, ``iy`` southward from the origin."""

    ix: int
    iy: int


class Shape2d(NamedTuple):
    height: int
    width: int


class Bounds(NamedTuple):
    left: float
    bottom: float
    right: float
    top: float


def tile_id_from_index(index: TileIndex | tuple[int, int]) -> str:
    ix, iy = index
    return f"X{ix:04d}_Y{iy:04d}"


def index_from_tile_id(tile_id: str) -> TileIndex:
    m = TILE_ID_RE.match(tile_id)
    if not m:
        raise GridError(f"not a tile id: {tile_id!r} (expected like X0012_Y0034)")
    return TileIndex(int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile: its id, index, CRS, bounds, affine transform and pixel shape."""

    id: str
    index: TileIndex
    crs: str
    bounds: Bounds
    transform: Affine
    shape: Shape2d

    @property
    def height(self) -> int:
        return self.shape.height

    @property
    def width(self) -> int:
        return self.shape.width

    def blocks(self, block_size: int) -> Iterator[Window]:
        """Windows of at most ``block_size`` × ``block_size`` pixels covering the tile, row-major."""
        if block_size <= 0:
            raise GridError(f"block_size must be positive, got {block_size}")
        for row in range(0, self.height, block_size):
            for col in range(0, self.width, block_size):
                yield Window(col, row, min(block_size, self.width - col), min(block_size, self.height - row))

    def window_transform(self, window: Window) -> Affine:
        return self.transform @ Affine.translation(window.col_off, window.row_off)

    def window_bounds(self, window: Window) -> Bounds:
        t = self.window_transform(window)
        left, top = t.c, t.f
        return Bounds(left, top + t.e * window.height, left + t.a * window.width, top)


@dataclass(frozen=True)
class TileGrid:
    """A regular grid of square tiles. Pure values: no file is ever opened."""

    crs: str
    origin_x: float
    origin_y: float
    pixel_size: float
    tile_size: int

    def __post_init__(self) -> None:
        if not (self.pixel_size > 0):
            raise GridError(f"pixel_size must be > 0, got {self.pixel_size}")
        if int(self.tile_size) != self.tile_size or self.tile_size <= 0:
            raise GridError(f"tile_size must be a positive number of pixels, got {self.tile_size}")

    @classmethod
    def from_config(cls, grid_cfg) -> TileGrid:
        """From a :class:`ecocube.config.GridConfig` (or anything with the same fields)."""
        return cls(
            crs=grid_cfg.crs,
            origin_x=float(grid_cfg.origin[0]),
            origin_y=float(grid_cfg.origin[1]),
            pixel_size=float(grid_cfg.pixel_size),
            tile_size=int(grid_cfg.tile_size),
        )

    @property
    def tile_extent(self) -> float:
        """Edge length of a tile in CRS units."""
        return self.pixel_size * self.tile_size

    # ------------------------------------------------------------------ one tile
    def tile(self, key: str | TileIndex | tuple[int, int]) -> Tile:
        """The :class:`Tile` for an id (``X0001_Y0002``) or an ``(ix, iy)`` index."""
        index = index_from_tile_id(key) if isinstance(key, str) else TileIndex(*key)
        return Tile(
            id=tile_id_from_index(index),
            index=index,
            crs=self.crs,
            bounds=self.tile_bounds(index),
            transform=self.tile_transform(index),
            shape=Shape2d(self.tile_size, self.tile_size),
        )

    def tile_bounds(self, index: TileIndex | tuple[int, int]) -> Bounds:
        ix, iy = index
        e = self.tile_extent
        left = self.origin_x + ix * e
        top = self.origin_y - iy * e
        return Bounds(left, top - e, left + e, top)

    def tile_transform(self, index: TileIndex | tuple[int, int]) -> Affine:
        b = self.tile_bounds(index)
        return Affine(self.pixel_size, 0.0, b.left, 0.0, -self.pixel_size, b.top)

    def index_at(self, x: float, y: float) -> TileIndex:
        """The index of the tile containing point (x, y) in the grid CRS."""
        e = self.tile_extent
        return TileIndex(math.floor((x - self.origin_x) / e), math.floor((self.origin_y - y) / e))

    # ------------------------------------------------------------------ many tiles
    def indices_for_bbox(self, bbox: Sequence[float]) -> list[TileIndex]:
        """Indices of all tiles that intersect ``bbox`` (minx, miny, maxx, maxy, grid CRS).

        Tiles that merely touch the bbox at an edge are not included.
        """
        minx, miny, maxx, maxy = map(float, bbox)
        if not (maxx > minx and maxy > miny):
            raise GridError(f"empty or inverted bbox {tuple(bbox)}")
        e = self.tile_extent
        ix0 = math.floor((minx - self.origin_x) / e)
        ix1 = math.ceil((maxx - self.origin_x) / e)  # exclusive
        iy0 = math.floor((self.origin_y - maxy) / e)
        iy1 = math.ceil((self.origin_y - miny) / e)
        return [TileIndex(ix, iy) for iy in range(iy0, iy1) for ix in range(ix0, ix1)]

    def tiles_for_bbox(self, bbox: Sequence[float], bbox_crs: str | None = None) -> list[Tile]:
        if bbox_crs is not None and not _same_crs(bbox_crs, self.crs):
            from rasterio.warp import transform_bounds

            bbox = transform_bounds(bbox_crs, self.crs, *bbox, densify_pts=21)
        return [self.tile(i) for i in self.indices_for_bbox(bbox)]

    def tiles_for_geometries(self, geometries, geometries_crs: str | None = None) -> list[Tile]:
        """Tiles that intersect any of the shapely ``geometries`` (vectorised)."""
        import shapely

        geoms = np.asarray(list(geometries), dtype=object)
        if geoms.size == 0:
            raise GridError("the area of interest holds no geometry")
        if geometries_crs is not None and not _same_crs(geometries_crs, self.crs):
            geoms = _reproject_geoms(geoms, geometries_crs, self.crs)
        union = shapely.union_all(geoms)
        if union.is_empty:
            raise GridError("the area of interest is empty")
        candidates = self.indices_for_bbox(union.bounds)
        if not candidates:
            return []
        arr = np.array(candidates, dtype=np.int64)
        e = self.tile_extent
        left = self.origin_x + arr[:, 0] * e
        top = self.origin_y - arr[:, 1] * e
        boxes = shapely.box(left, top - e, left + e, top)
        shapely.prepare(union)
        hit = shapely.intersects(boxes, union) & ~shapely.touches(boxes, union)
        return [self.tile(TileIndex(int(ix), int(iy))) for ix, iy in arr[hit]]

    def tiles_for_vector_file(self, path: str | Path) -> list[Tile]:
        import pyogrio
        import shapely

        try:
            meta, _, geometry, _ = pyogrio.raw.read(str(path), read_geometry=True)
        except Exception as exc:  # pyogrio raises DataSourceError and friends
            raise GridError(f"cannot read area of interest {path}: {exc}") from None
        crs = meta.get("crs") or self.crs
        geoms = shapely.from_wkb(geometry)
        return self.tiles_for_geometries(geoms[~shapely.is_missing(geoms)], crs)

    def tiles_for_aoi(self, aoi) -> list[Tile]:
        """Tiles for a :class:`ecocube.config.AOIConfig`, sorted by id, without duplicates."""
        if aoi.tiles is not None:
            tiles = [self.tile(t) for t in aoi.tiles]
        elif aoi.path is not None:
            tiles = self.tiles_for_vector_file(aoi.path)
        else:
            tiles = self.tiles_for_bbox(aoi.bbox, aoi.bbox_crs)
        unique = {t.id: t for t in tiles}
        return [unique[k] for k in sorted(unique, key=lambda k: index_from_tile_id(k)[::-1])]


def _same_crs(a: str, b: str) -> bool:
    from rasterio.crs import CRS

    return CRS.from_user_input(a) == CRS.from_user_input(b)


def _reproject_geoms(geoms, src_crs: str, dst_crs: str):
    import shapely
    from rasterio.warp import transform_geom

    return np.array(
        [shapely.geometry.shape(transform_geom(src_crs, dst_crs, shapely.geometry.mapping(g))) for g in geoms],
        dtype=object,
    )


# ---------------------------------------------------------------------- task splits


def task_count(n_tiles: int, tiles_per_task: int) -> int:
    """Array size needed for ``n_tiles`` at ``tiles_per_task`` tiles each."""
    if tiles_per_task <= 0:
        raise GridError(f"tiles_per_task must be positive, got {tiles_per_task}")
    return math.ceil(n_tiles / tiles_per_task)


def tiles_for_task(tiles: Sequence[Tile] | Sequence[str], task_id: int, tiles_per_task: int):
    """The contiguous slice of ``tiles`` that array task ``task_id`` processes.

    Deterministic: the same list, task id and ``tiles_per_task`` always give the same
    tiles, and the tasks ``0 … task_count-1`` together cover every tile exactly once.
    """
    n = task_count(len(tiles), tiles_per_task)
    if not 0 <= task_id < max(n, 1):
        raise GridError(f"task id {task_id} out of range: {len(tiles)} tiles at {tiles_per_task} per task make {n} tasks")
    return list(tiles[task_id * tiles_per_task : (task_id + 1) * tiles_per_task])


def split_balanced(items: Sequence, n_parts: int, part: int) -> list:
    """Part ``part`` of ``n_parts`` near-equal contiguous parts (sizes differ by at most 1)."""
    if n_parts <= 0 or not 0 <= part < n_parts:
        raise GridError(f"part {part} of {n_parts} is not valid")
    q, r = divmod(len(items), n_parts)
    start = part * q + min(part, r)
    return list(items[start : start + q + (1 if part < r else 0)])


# ---------------------------------------------------------------------- export


GRID_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf"}


def grid_driver(path: str | Path) -> str:
    """The OGR driver :func:`write_grid` writes ``path`` with, from its suffix; :class:`GridError`
    (exit 2) for another suffix."""
    driver = GRID_DRIVERS.get(Path(path).suffix.lower())
    if driver is None:
        raise GridError(f"unsupported grid file type {Path(path).suffix!r}: use .gpkg, .geojson or .fgb")
    return driver


def write_grid(tiles: Iterable[Tile], path: str | Path, crs: str) -> Path:
    """Write tiles as polygons (fields tile_id, ix, iy) to a GeoPackage or GeoJSON file."""
    import pyogrio
    import shapely

    path = Path(path)
    tiles = list(tiles)
    driver = grid_driver(path)
    b = np.array([t.bounds for t in tiles], dtype=np.float64).reshape(-1, 4)
    geoms = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
    field_data = [
        np.array([t.id for t in tiles], dtype=object),
        np.array([t.index.ix for t in tiles], dtype=np.int32),
        np.array([t.index.iy for t in tiles], dtype=np.int32),
    ]
    with atomic_path(path) as tmp:
        pyogrio.raw.write(
            str(tmp),
            geometry=shapely.to_wkb(geoms),
            field_data=field_data,
            fields=["tile_id", "ix", "iy"],
            crs=crs,
            geometry_type="Polygon",
            driver=driver,
            # named explicitly: by default the layer would be named after the temporary file
            layer="tiles" if driver == "GPKG" else path.stem,
        )
    return path

