"""The mosaic manifest: the list of finished mosaic layers, with what the catalog needs.

:func:`ecocube.mosaic.mosaic_run` writes ``catalog/mosaics.json`` (:data:`MANIFEST_KEY`)
after every mosaic run: one :class:`MosaicLayer` per COG (its keys in the store, grid,
dtype, nodata, scales, statistics, overviews, size and checksum, and the digest of the
tile keys it was made from). :mod:`ecocube.stac` builds the catalog from it without
opening a raster, and the next mosaic run uses it to tell an up-to-date COG from one
whose tiles changed.

This module only describes and stores the manifest: it opens no raster and knows
nothing of STAC.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import StoreError

#: folder (store key prefix) of everything finalize publishes: mosaics, catalog, browser
CATALOG_PREFIX = "catalog"
#: store key of the manifest
MANIFEST_KEY = f"{CATALOG_PREFIX}/mosaics.json"


@dataclass
class MosaicLayer:
    """One finished mosaic layer: what the STAC catalog needs, with no raster to open."""

    product: str
    layer: str
    period: str
    collection: str
    item_id: str
    asset: str
    key: str  # COG key in the store
    vrt_key: str
    thumbnail_key: str | None
    tiles: list[str]
    tile_bounds: list[list[float]]  # per tile (left, bottom, right, top) in the grid CRS
    crs: str  # as "EPSG:xxxx" when it has an EPSG code, else WKT
    transform: list[float]  # 6 affine coefficients (a, b, c, d, e, f)
    shape: list[int]  # (height, width)
    bounds: list[float]  # (left, bottom, right, top) in ``crs``
    dtype: str
    count: int
    nodata: float | None
    scales: list[float]
    offsets: list[float]
    descriptions: list[str | None]
    statistics: list[dict[str, float]]
    overviews: list[int]
    size: int
    checksum: str  # multihash sha2-256, hex
    sources_digest: str
    compress: str
    state: str = "written"  # written | up-to-date
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MosaicLayer:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def read_manifest(store) -> dict[str, MosaicLayer]:
    """The layers of the last mosaic run, by COG key (empty if there is none)."""
    if not store.exists(MANIFEST_KEY):
        return {}
    try:
        data = json.loads(store.get_bytes(MANIFEST_KEY))
        return {d["key"]: MosaicLayer.from_dict(d) for d in data["layers"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"mosaic manifest {store.url(MANIFEST_KEY)} is not valid: {exc}") from None


def write_manifest(store, layers: Iterable[MosaicLayer], cfg) -> None:
    from . import __version__

    doc = {"ecocube_version": __version__, "run": cfg.name,
           "layers": [layer.to_dict() for layer in sorted(layers, key=lambda x: x.key)]}
    store.put_bytes(json.dumps(doc, indent=1).encode(), MANIFEST_KEY)


#: store key of the vector layers ``ecocube vectorize`` published (:class:`VectorLayer`)
VECTORS_KEY = f"{CATALOG_PREFIX}/vectors.json"


@dataclass
class VectorLayer:
    """One year's polygons of a class product, in up to three formats (``assets``:
    format -> ``{"key", "size", "checksum", "media_type", "crs"}``)."""

    product: str
    period: str
    collection: str
    item_id: str
    assets: dict[str, dict[str, Any]]
    features: int
    tiles: list[str]
    tile_bounds: list[list[float]]  # per tile (left, bottom, right, top) in the grid CRS
    crs: str  # of the GeoPackage / GeoParquet (GeoJSON is EPSG:4326)
    bbox: list[float]  # of the polygons, in ``crs``
    bbox_wgs84: list[float]
    simplify: float
    sources_digest: str
    title: str
    carried_max: int = 0
    state: str = "written"  # written | up-to-date
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VectorLayer:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def keys(self) -> list[str]:
        return [a["key"] for a in self.assets.values()]


def read_vectors(store) -> dict[str, VectorLayer]:
    """The published vector layers by ``product/period`` (empty if there are none)."""
    if not store.exists(VECTORS_KEY):
        return {}
    try:
        data = json.loads(store.get_bytes(VECTORS_KEY))
        return {f"{d['product']}/{d['period']}": VectorLayer.from_dict(d) for d in data["layers"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"vector manifest {store.url(VECTORS_KEY)} is not valid: {exc}") from None


def write_vectors(store, layers: Iterable[VectorLayer], cfg) -> None:
    from . import __version__

    doc = {"ecocube_version": __version__, "run": cfg.name,
           "layers": [v.to_dict() for v in sorted(layers, key=lambda v: (v.product, v.period))]}
    store.put_bytes(json.dumps(doc, indent=1).encode(), VECTORS_KEY)
