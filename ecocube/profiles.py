"""Raster creation profiles: the one place where GeoTIFF/COG creation options are written.

Each writer asks for its profile by name and adds what only it knows (size, data type,
CRS, transform, nodata, threads)::

    with rasterio.open(path, "w", **profile("tile", width=w, height=h, count=1, dtype="uint8",
                                             crs=crs, transform=transform, nodata=255)) as dst:
        ...
    rasterio.shutil.copy(src, dst, **profile("cog", COMPRESS="ZSTD", NUM_THREADS="4"))

:func:`profile` returns a **copy** (changing it never changes the registry), and a
``KeyError`` naming the known profiles for an unknown name. Overrides replace an option
whatever the case of its name (``compress=`` replaces ``COMPRESS``), keeping the
profile's spelling, so the options GDAL sees are exactly the registered ones.

Profiles (name: used by, driver):

- ``tile``: per-tile outputs (:class:`ecocube.tile.TileWriter`), GTiff;
- ``mosaic-stage``: the tiled staging copy of a mosaic (:func:`ecocube.mosaic.write_cog`), GTiff;
- ``cog``: the published mosaic COGs (:func:`ecocube.mosaic.write_cog`), COG;
- ``gapfill``: ``ecocube gapfill`` outputs (:mod:`ecocube.gapfill_stack`), GTiff;
- ``read-dump``: the read debug dump (:mod:`ecocube.read_dump`), GTiff;
- ``demo-input``: the demo's input COGs (:mod:`ecocube.demo`), COG.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["GDAL_DTYPE", "PROFILES", "profile"]

_PROFILES: dict[str, dict[str, Any]] = {
    # block edge set per tile (largest power of two dividing the processing block). zstd
    # level 1: a tile writes and re-reads (verifies) 3 x periods x bands cube layers, and
    # zstd-1 + predictor takes ~0.3x the CPU of deflate-6 for the same size (within 2 %);
    # an open zstd-1 output costs ~2.4 MB like deflate (level 9 costs ~12 MB).
    # ZSTD_LEVEL is ignored when processing.compress picks another codec.
    "tile": dict(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="zstd", zstd_level=1,
                 predictor=2, interleave="band", bigtiff="IF_SAFER"),
    # fast to write, read once by the COG driver: zstd level 1
    "mosaic-stage": dict(driver="GTiff", tiled=True, blockxsize=512, blockysize=512, compress="zstd",
                         zstd_level=1, bigtiff="IF_SAFER"),
    # GDAL COG driver options; PREDICTOR/OVERVIEW_RESAMPLING/LEVEL follow the product and codec
    "cog": dict(driver="COG", COMPRESS="DEFLATE", PREDICTOR="STANDARD", BLOCKSIZE="512",
                OVERVIEW_RESAMPLING="AVERAGE", BIGTIFF="IF_SAFER"),
    "gapfill": {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
                "BIGTIFF": "IF_SAFER"},
    "read-dump": dict(driver="GTiff", dtype="float32", nodata=float("nan"), compress="deflate"),
    "demo-input": dict(driver="COG", blocksize=128, compress="deflate", predictor=2),  # COG driver: >= 128
}

#: the registered profiles, read-only (use :func:`profile` for a copy to write with)
PROFILES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {k: MappingProxyType(v) for k, v in _PROFILES.items()})

#: numpy dtype name -> GDAL data type name (VRT XML, GDAL options)
GDAL_DTYPE: Mapping[str, str] = MappingProxyType({
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
    "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32", "float64": "Float64",
})


def profile(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of the profile ``name`` with ``overrides`` applied (case-insensitive names)."""
    try:
        base = _PROFILES[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown raster profile {name!r}; known profiles: {', '.join(_PROFILES)}") from None
    out = copy.deepcopy(base)
    spelling = {k.lower(): k for k in out}
    for key, value in overrides.items():
        out[spelling.get(key.lower(), key)] = value
    return out
