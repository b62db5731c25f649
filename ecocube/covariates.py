"""Static covariates (a DEM, its slope, climate grids) on the tile grid, and predict masks.

:func:`tile_covariates` reads every ``inputs.covariates`` layer into the whole tile grid
once per tile (a small per-process cache serves the tile's blocks), warping it when its
grid differs (``WarpedVRT`` of exactly the tile: only the source window under the tile is
read). ``derive: slope`` reads the tile plus a one-pixel border and returns the slope in
degrees (Horn's 3x3 gradient, in the grid's units). A layer that does not overlap the
tile, or cannot be read, is an error naming it and the tile.

:func:`predict_where` turns ``model.predict_where`` rules into the pixels to predict.
Covariate values are float32 with NaN for nodata; a NaN feature is not predicted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from .errors import ConfigError, ReadError

_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def covariate_names(cfg) -> list[str]:
    """The covariates used as features, in feature order."""
    chosen = cfg.features.covariates
    known = [c.name for c in cfg.inputs.covariates]
    return list(known if chosen is None else chosen)


def slope_degrees(dem: np.ndarray, pixel_x: float, pixel_y: float) -> np.ndarray:
    """Slope (degrees) of the inner ``(h-2, w-2)`` pixels of a padded DEM (Horn 1981).
    NaN where any of the 3x3 neighbours is NaN."""
    z = np.asarray(dem, dtype=np.float64)
    a, b, c = z[:-2, :-2], z[:-2, 1:-1], z[:-2, 2:]
    d, f = z[1:-1, :-2], z[1:-1, 2:]
    g, h, i = z[2:, :-2], z[2:, 1:-1], z[2:, 2:]
    dzdx = ((c + 2 * f + i) - (a + 2 * d + g)) / (8.0 * pixel_x)
    dzdy = ((g + 2 * h + i) - (a + 2 * b + c)) / (8.0 * pixel_y)
    return np.degrees(np.arctan(np.hypot(dzdx, dzdy))).astype(np.float32)


def _check_overlap(src, tile_bounds, dst_crs, what: str, tile_id: str) -> None:
    from rasterio.warp import transform_bounds

    west, south, east, north = tile_bounds
    sb = src.bounds
    if src.crs is not None and src.crs != dst_crs:
        sb = transform_bounds(src.crs, dst_crs, *sb, densify_pts=21)
    if sb[0] >= east or sb[2] <= west or sb[1] >= north or sb[3] <= south:
        raise ConfigError(f"{what} does not overlap tile {tile_id}: its bounds {tuple(round(v, 3) for v in sb)} "
                          f"vs the tile's {tuple(round(v, 3) for v in (west, south, east, north))} "
                          f"({dst_crs.to_string()})")


def check_covariates(cfg, tiles, *, env_factory=None) -> list[str]:
    """Problems of the covariates over ``tiles`` (unreadable, wrong band, no overlap), one
    line each, without reading pixels (for the pre-flight)."""
    import rasterio
    from rasterio.crs import CRS

    from .read import gdal_path

    env_factory = env_factory or _default_env(cfg)
    problems = []
    for cov in cfg.inputs.covariates:
        for tile in tiles:
            href = cov.href.replace("{tile}", tile.id)
            what = f"covariate {cov.name} ({href})"
            try:
                with env_factory(), rasterio.open(gdal_path(href)) as src:
                    if cov.band_index > src.count:
                        raise ConfigError(f"{what} has {src.count} band(s), band_index {cov.band_index} is configured")
                    _check_overlap(src, tile.bounds, CRS.from_user_input(tile.crs), what, tile.id)
            except ConfigError as exc:
                problems.append(f"inputs.covariates: {exc}")
                break
            except Exception as exc:  # noqa: BLE001 - every failure is a problem to list
                problems.append(f"inputs.covariates: cannot open {what}: {exc}")
                break
    return problems


def _read_layer(cov, tile, *, pad: int, env_factory) -> np.ndarray:
    import rasterio
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.transform import array_bounds
    from rasterio.vrt import WarpedVRT

    from .read import gdal_path

    href = cov.href.replace("{tile}", tile.id)
    transform = tile.transform * tile.transform.translation(-pad, -pad)
    height, width = tile.height + 2 * pad, tile.width + 2 * pad
    dst_crs = CRS.from_user_input(tile.crs)
    what = f"covariate {cov.name} ({href})"
    try:
        with env_factory(), rasterio.open(gdal_path(href)) as src:
            if cov.band_index > src.count:
                raise ConfigError(f"{what} has {src.count} band(s), band_index {cov.band_index} is configured")
            nodata = cov.nodata if cov.nodata is not None else src.nodata
            _check_overlap(src, array_bounds(height, width, transform), dst_crs, what, tile.id)
            # float64 with NaN nodata: source nodata and pixels outside its footprint read as NaN
            with WarpedVRT(src, crs=dst_crs, transform=transform, width=width, height=height,
                           resampling=Resampling[cov.resampling], src_nodata=nodata, nodata=np.nan,
                           dtype="float64") as vrt:
                values = vrt.read(cov.band_index)
    except (ConfigError, ReadError):
        raise
    except rasterio.errors.RasterioIOError as exc:
        raise ReadError(f"cannot read {what} for tile {tile.id}: {exc}", url=href, tile=tile.id) from None
    return (values * cov.scale + cov.offset).astype(np.float32)


def tile_covariates(cfg, tile, *, names: Sequence[str] | None = None, env_factory=None) -> dict[str, np.ndarray]:
    """``{name: (tile.height, tile.width) float32}`` of the covariates ``names`` (default:
    every configured covariate), read once per tile and process."""
    wanted = [c for c in cfg.inputs.covariates if names is None or c.name in names]
    if not wanted:
        return {}
    key = (tile.id, str(tile.crs), tuple(tile.bounds), tuple(c.model_dump_json() for c in wanted))
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    if env_factory is None:
        env_factory = _default_env(cfg)
    out: dict[str, np.ndarray] = {}
    for cov in wanted:
        if cov.derive == "slope":
            from rasterio.crs import CRS

            if CRS.from_user_input(tile.crs).is_geographic:
                raise ConfigError(f"covariate {cov.name}: derive slope needs a projected grid CRS, got {tile.crs}")
            dem = _read_layer(cov, tile, pad=1, env_factory=env_factory)
            px, py = abs(tile.transform.a), abs(tile.transform.e)
            out[cov.name] = slope_degrees(dem, px, py)
        else:
            out[cov.name] = _read_layer(cov, tile, pad=0, env_factory=env_factory)
    with _CACHE_LOCK:
        _CACHE[key] = out
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return out


def _default_env(cfg):
    from .store import gdal_env

    s3 = cfg.inputs.s3 if cfg.inputs.s3 is not None else cfg.output.s3

    def factory():
        return gdal_env(threads=1, s3_endpoint=s3.endpoint_url, s3_region=s3.region, s3_profile=s3.profile)
    return factory


def block_covariates(cfg, tile, window) -> tuple[list[str], np.ndarray | None]:
    """Feature names and ``(h * w, n)`` float32 columns of the covariates for one block
    (row-major pixels, as :func:`ecocube.features.features_for_year` rows)."""
    names = covariate_names(cfg)
    if not names:
        return [], None
    layers = tile_covariates(cfg, tile, names=names)
    r0, c0 = int(window.row_off), int(window.col_off)
    h, w = int(window.height), int(window.width)
    cols = np.empty((h * w, len(names)), np.float32)
    for j, n in enumerate(names):
        cols[:, j] = layers[n][r0:r0 + h, c0:c0 + w].reshape(-1)
    return names, cols


def predict_where(cfg, tile, window) -> np.ndarray | None:
    """``(h * w,)`` bool: the block's pixels that ``model.predict_where`` allows (a NaN
    covariate is outside); None without rules."""
    rules = cfg.model.predict_where
    if not rules:
        return None
    layers = tile_covariates(cfg, tile, names=[r.covariate for r in rules])
    r0, c0 = int(window.row_off), int(window.col_off)
    h, w = int(window.height), int(window.width)
    ok = np.ones(h * w, bool)
    for rule in rules:
        v = layers[rule.covariate][r0:r0 + h, c0:c0 + w].reshape(-1)
        inside = np.isfinite(v)
        if rule.min is not None:
            inside &= v >= rule.min
        if rule.max is not None:
            inside &= v <= rule.max
        ok &= inside
    return ok


def feature_bands(cfg, bands: Sequence[str]) -> tuple[list[int] | None, tuple[str, ...]]:
    """Positions in ``bands`` (the read cube's) of ``features.bands`` and their names;
    (None, bands) when every band is a feature."""
    chosen = cfg.features.bands
    if chosen is None:
        return None, tuple(bands)
    missing = [b for b in chosen if b not in bands]
    if missing:
        raise ConfigError(f"features.bands {missing} are not among the bands read: {', '.join(bands)}")
    return [list(bands).index(b) for b in chosen], tuple(chosen)


def run_feature_names(cfg, bands: Sequence[str], feature_names) -> list[str]:
    """Every feature column of a run: ``feature_names(bands, season_size, indices, statistics)``
    of the selected bands, then the covariates."""
    _, fbands = feature_bands(cfg, bands)
    stats = tuple(cfg.features.statistics)
    extra = (stats,) if stats else ()  # test stages with the 3-argument signature stay usable
    names = list(feature_names(fbands, cfg.inputs.periods.season_size, tuple(cfg.features.indices), *extra))
    return names + covariate_names(cfg)


def year_features(cfg, filled: np.ndarray, bands: Sequence[str], year_index: int, tile, window,
                  features_for_year) -> np.ndarray:
    """One year's ``(h * w, n_features)`` features of a block, columns as
    :func:`run_feature_names`: the selected bands' (and indices') period values, then the
    covariates. ``features_for_year`` is :func:`ecocube.features.features_for_year` (or a
    test stage with its signature)."""
    sel, fbands = feature_bands(cfg, bands)
    S = cfg.inputs.periods.season_size
    if sel is not None:  # only this year's periods and bands: a small copy
        filled = np.asarray(filled)[year_index * S:(year_index + 1) * S][:, sel]
        year_index = 0
    stats = tuple(cfg.features.statistics)
    X = features_for_year(filled, bands=fbands, season_size=S, year_index=year_index,
                          indices=tuple(cfg.features.indices), **({"statistics": stats} if stats else {}))
    _, cols = block_covariates(cfg, tile, window)
    if cols is not None:
        X = np.concatenate([X, cols], axis=1)
    return X
