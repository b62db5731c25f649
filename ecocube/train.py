"""Training: labelled samples -> feature table -> stacked ensemble, spatial-block CV, bundle, report.

The flow of :func:`train_model`:

1. **Samples** (:func:`load_samples`): points or polygons from a GeoPackage, GeoJSON,
   FlatGeobuf or shapefile (pyogrio), a GeoParquet file (pyarrow, WKB geometry, CRS from
   the ``geo`` metadata) or a CSV file with ``x`` and ``y`` columns and a CRS given by the
   caller. The class field holds integer class codes of ``model.classes``.
2. **Years.** A sample's year comes from its date/year column (``model.date_field``, else a
   column named ``year`` or ``date``; an ISO date gives its year). Without such a column,
   every sample takes the ``year`` argument; without that, every year of the run: the
   label is then assumed stable over the years and each sample appears once per year, all
   copies in the same CV group (so a location never sits on both sides of a split).
3. **Pixels** (:func:`sample_pixels`): a point samples the pixel it falls in; a polygon
   samples the pixels whose centres lie inside it (at most ``model.max_pixels_per_polygon``,
   drawn at random with ``model.random_state``; a polygon too small to hold a pixel centre
   samples the pixel of its representative point).
4. **Overlay** (:func:`extract_features`): the pixels are grouped by tile of the run's grid
   (and by processing block, ``processing.block_size``, where a tile's samples spread over
   more than ``MERGE_BLOCKS`` blocks' worth of pixels); for each group only the window
   spanning its pixels is read (:func:`ecocube.read.read_block`), gap-filled
   (:func:`ecocube.gapfill.fill_gaps_config`) and turned into features
   (:func:`ecocube.features.features_for_year`). Groups run in parallel on joblib threads,
   the allocation's threads shared between them. The feature table is written as Parquet
   (``features.parquet``) and reused by a later run with the same samples and settings.
   Pixels whose features still hold a gap after gap-filling are dropped (counted in the
   report) or, with ``model.nan_policy: impute``, imputed by the ensemble.
5. **Spatial CV** (:func:`cross_validate`): groups are spatial blocks of
   ``model.cv_block_size`` CRS units (points) or polygon ids (polygons; ``model.cv_groups``
   chooses). A grouped, stratified K-fold splits the groups; on each split a complete
   ensemble (with its own inner, grouped stacking CV) is fitted on the training groups and
   predicts the held-out groups. The metrics (:func:`evaluate`) are computed on these
   held-out predictions only, and compared with the majority-class baseline.
6. **Final model**: the ensemble fitted on all samples, saved as a bundle
   (:func:`ecocube.bundle.save_bundle`: ``model.joblib`` + ``model.json``) next to ``report.json``,
   ``report.md`` and PNG plots, in ``out_dir`` or ``model.path``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path, sha256_file, write_text_atomic
from .bundle import META_FILE, MODEL_FILE, ModelBundle, package_versions, save_bundle, strict_json
from .ensemble import EnsembleClassifier
from .env import available_threads
from .errors import ConfigError, FileOverwriteError, ModelError
from .covariates import run_feature_names, year_features
from .features import feature_names as make_feature_names
from .grid import TileGrid

log = logging.getLogger(__name__)

FEATURE_TABLE = "features.parquet"


# ---------------------------------------------------------------------- samples


@dataclass
class Samples:
    """Labelled features read from a file, geometries in ``crs``."""

    path: Path
    geometries: np.ndarray  # shapely geometries (object array)
    classes: np.ndarray  # int64 class codes
    years: np.ndarray | None  # int64, or None when the file has no date/year column
    ids: np.ndarray  # int64 feature number in the file (0-based)
    crs: str
    sha256: str
    date_field: str | None = None
    values: np.ndarray | None = None  # float64 target values (model.task: regression), else None

    def __len__(self) -> int:
        return int(self.classes.size)


def _year_of(value: Any, where: str, periods_cfg=None) -> int:
    """The run year of a sample's year or date; a date falls in the year that holds it under
    ``periods.year_start`` (``10-01``: 2018-11-05 is in 2019)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"{where}: empty date/year")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, datetime):
        day = value.date()
    elif isinstance(value, date):
        day = value
    else:
        text = str(value).strip()
        if text.isdigit() and len(text) == 4:
            return int(text)
        try:
            day = date.fromisoformat(text[:10])
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is neither a year nor an ISO date (YYYY-MM-DD)") from None
    if periods_cfg is None:
        return day.year
    from .sources import year_of

    return year_of(day, periods_cfg)


def _class_codes(values, path: Path, class_field: str) -> np.ndarray:
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        try:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                raise ValueError
            f = float(v)
            if not f.is_integer():
                raise ValueError
            out[i] = int(f)
        except (TypeError, ValueError):
            raise ConfigError(
                f"samples {path}: feature {i} has class {v!r} in field {class_field!r}; class codes must be integers"
            ) from None
    return out


def _target_values(values, path: Path, field_name: str) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            out[i] = np.nan
        if not math.isfinite(out[i]):
            raise ConfigError(f"samples {path}: feature {i} has value {v!r} in field {field_name!r}; "
                              "a regression target must be a finite number")
    return out


def _pick_field(names: list[str], wanted: str | None, candidates: tuple[str, ...], path: Path, what: str) -> str | None:
    lower = {n.lower(): n for n in names}
    if wanted is not None:
        if wanted in names:
            return wanted
        if wanted.lower() in lower:
            return lower[wanted.lower()]
        raise ConfigError(f"samples {path} have no {what} field {wanted!r}; fields: {', '.join(names)}")
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


def _read_table(path: Path, crs: str | None) -> tuple[dict[str, list], np.ndarray, str]:
    """Columns (name -> values), shapely geometries and the CRS of a samples file."""
    import shapely

    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        if not crs:
            raise ConfigError(f"samples {path}: a CSV file needs its CRS (--crs, e.g. EPSG:4326)")
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            names = list(reader.fieldnames or [])
        xname = _pick_field(names, None, ("x", "lon", "longitude", "easting"), path, "x")
        yname = _pick_field(names, None, ("y", "lat", "latitude", "northing"), path, "y")
        if xname is None or yname is None:
            raise ConfigError(f"samples {path}: a CSV file needs columns x and y; columns: {', '.join(names)}")
        try:
            xs = np.array([float(r[xname]) for r in rows])
            ys = np.array([float(r[yname]) for r in rows])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"samples {path}: non-numeric coordinate ({exc})") from None
        cols = {n: [r[n] for r in rows] for n in names}
        return cols, shapely.points(xs, ys), crs
    if suffix in (".parquet", ".geoparquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise ConfigError(f"cannot read samples {path}: {exc}") from None
        geo = json.loads((table.schema.metadata or {}).get(b"geo", b"{}") or b"{}")
        gcol = geo.get("primary_column", "geometry")
        if gcol not in table.column_names:
            raise ConfigError(f"samples {path}: no geometry column {gcol!r} (not a GeoParquet file?)")
        meta = geo.get("columns", {}).get(gcol, {})
        if meta.get("encoding", "WKB").upper() != "WKB":
            raise ConfigError(f"samples {path}: geometry encoding {meta.get('encoding')!r} is not supported (use WKB)")
        file_crs = meta.get("crs", "OGC:CRS84")
        if isinstance(file_crs, dict):
            file_crs = json.dumps(file_crs)
        file_crs = crs or file_crs or "OGC:CRS84"
        geoms = shapely.from_wkb(np.asarray(table.column(gcol).to_pylist(), dtype=object))
        cols = {n: table.column(n).to_pylist() for n in table.column_names if n != gcol}
        return cols, geoms, file_crs
    import pyogrio

    try:
        meta, _, wkb, field_data = pyogrio.raw.read(str(path), read_geometry=True)
    except Exception as exc:  # pyogrio's DataSourceError and friends
        raise ConfigError(f"cannot read samples {path}: {exc}") from None
    file_crs = crs or meta.get("crs")
    if not file_crs:
        raise ConfigError(f"samples {path} have no CRS; give one (--crs)")
    names = [str(n) for n in meta["fields"]]
    cols = {n: list(v) for n, v in zip(names, field_data)}
    return cols, shapely.from_wkb(wkb), file_crs


def load_samples(path: str | Path, class_field: str, *, crs: str | None = None,
                 date_field: str | None = None, periods_cfg=None, task: str = "classification") -> Samples:
    """Read labelled points/polygons (see the module docstring for the formats).

    ``task="regression"``: ``class_field`` holds a continuous target (``Samples.values``).

    ``periods_cfg`` (``cfg.inputs.periods``) maps sample dates to run years under
    ``year_start``; without it a date's year is its calendar year."""
    import shapely

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"samples file not found: {path}")
    cols, geoms, file_crs = _read_table(path, crs)
    names = list(cols)
    cname = _pick_field(names, class_field, (), path, "class")
    dname = _pick_field(names, date_field, ("year", "date"), path, "date/year")
    geoms = np.asarray(geoms, dtype=object)
    if geoms.size == 0:
        raise ConfigError(f"samples {path} hold no feature")
    ids = np.arange(geoms.size, dtype=np.int64)
    empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    if empty.any():
        raise ConfigError(f"samples {path}: features {ids[empty][:10].tolist()} have no geometry")
    types = set(shapely.get_type_id(geoms).tolist())
    bad = types - {0, 3, 6}  # Point, Polygon, MultiPolygon
    if bad:
        raise ConfigError(f"samples {path}: only Point, Polygon and MultiPolygon geometries are supported, "
                          f"found {sorted(shapely.GeometryType(t).name for t in bad)}")
    values = None
    if task == "regression":
        values = _target_values(cols[cname], path, cname)
        classes = np.zeros(values.size, dtype=np.int64)
    else:
        classes = _class_codes(cols[cname], path, cname)
    years = None
    if dname is not None:
        years = np.array([_year_of(v, f"samples {path}: feature {i} field {dname!r}", periods_cfg)
                          for i, v in enumerate(cols[dname])], dtype=np.int64)
    return Samples(path=path, geometries=geoms, classes=classes, years=years, ids=ids, crs=str(file_crs),
                   sha256=sha256_file(path), date_field=dname, values=values)


def _to_grid_crs(geoms: np.ndarray, src: str, dst: str) -> np.ndarray:
    import shapely
    from rasterio.crs import CRS
    from rasterio.warp import transform

    if CRS.from_user_input(src) == CRS.from_user_input(dst):
        return geoms

    def _fn(xy: np.ndarray) -> np.ndarray:
        xs, ys = transform(src, dst, xy[:, 0].tolist(), xy[:, 1].tolist())
        return np.column_stack([xs, ys])

    return shapely.transform(geoms, _fn)


# ---------------------------------------------------------------------- pixels


@dataclass
class PixelTable:
    """One row per sampled pixel and year."""

    sample_id: np.ndarray  # int64: feature number in the samples file
    cls: np.ndarray  # int64 class code
    year: np.ndarray  # int64
    gx: np.ndarray  # int64 pixel column from the grid origin
    gy: np.ndarray  # int64 pixel row from the grid origin
    x: np.ndarray  # float64 pixel centre, grid CRS
    y: np.ndarray
    group: np.ndarray  # str CV group ("P12" polygon, "B3_-2" block)
    kind: np.ndarray  # str "point" | "polygon"
    value: np.ndarray | None = None  # float64 regression target, None for classification

    def __len__(self) -> int:
        return int(self.cls.size)

    def take(self, idx) -> PixelTable:
        return PixelTable(**{k: None if getattr(self, k) is None else getattr(self, k)[idx]
                             for k in self.__dataclass_fields__})


def sample_pixels(samples: Samples, grid: TileGrid, *, years: list[int], max_pixels_per_polygon: int,
                  cv_block_size: float, cv_groups: str = "auto", random_state: int = 0) -> PixelTable:
    """Pixels of the samples on the grid, with CV groups; one row per (pixel, year).

    ``years`` is used for samples without their own year (one copy per year).
    """
    import shapely

    geoms = _to_grid_crs(samples.geometries, samples.crs, grid.crs)
    rng = np.random.default_rng(random_state)
    ps, ox, oy = grid.pixel_size, grid.origin_x, grid.origin_y
    rows: dict[str, list] = {k: [] for k in ("sample_id", "cls", "gx", "gy", "group", "kind", "year", "value")}

    def _block(x: float, y: float) -> str:
        return f"B{math.floor((x - ox) / cv_block_size)}_{math.floor((oy - y) / cv_block_size)}"

    for i, g in enumerate(geoms):
        sid = int(samples.ids[i])
        if shapely.get_type_id(g) == 0:
            gx = np.array([math.floor((g.x - ox) / ps)])
            gy = np.array([math.floor((oy - g.y) / ps)])
            group = np.array([f"P{sid}" if cv_groups == "polygon" else _block(g.x, g.y)])
            kind = "point"
        else:
            minx, miny, maxx, maxy = g.bounds
            cx0, cx1 = math.floor((minx - ox) / ps), math.ceil((maxx - ox) / ps)
            cy0, cy1 = math.floor((oy - maxy) / ps), math.ceil((oy - miny) / ps)
            cgx, cgy = np.meshgrid(np.arange(cx0, cx1), np.arange(cy0, cy1))
            cgx, cgy = cgx.ravel(), cgy.ravel()
            inside = shapely.contains_xy(g, ox + (cgx + 0.5) * ps, oy - (cgy + 0.5) * ps)
            gx, gy = cgx[inside], cgy[inside]
            if gx.size == 0:
                p = g.representative_point()
                gx = np.array([math.floor((p.x - ox) / ps)])
                gy = np.array([math.floor((oy - p.y) / ps)])
            if gx.size > max_pixels_per_polygon:
                keep = np.sort(rng.choice(gx.size, max_pixels_per_polygon, replace=False))
                gx, gy = gx[keep], gy[keep]
            if cv_groups == "block":
                p = g.representative_point()
                gid = _block(p.x, p.y)
            else:  # auto / polygon: the polygon is the group
                gid = f"P{sid}"
            group = np.full(gx.size, gid, dtype=object)
            kind = "polygon"
        sample_years = [int(samples.years[i])] if samples.years is not None else years
        for yr in sample_years:
            rows["sample_id"].append(np.full(gx.size, sid, np.int64))
            rows["cls"].append(np.full(gx.size, samples.classes[i], np.int64))
            rows["gx"].append(gx.astype(np.int64))
            rows["gy"].append(gy.astype(np.int64))
            rows["group"].append(np.asarray(group, dtype=object))
            rows["kind"].append(np.full(gx.size, kind, dtype=object))
            rows["year"].append(np.full(gx.size, yr, np.int64))
            rows["value"].append(np.full(gx.size, np.nan if samples.values is None else samples.values[i]))
    cat = {k: np.concatenate(v) for k, v in rows.items()}
    return PixelTable(sample_id=cat["sample_id"], cls=cat["cls"], year=cat["year"], gx=cat["gx"], gy=cat["gy"],
                      x=ox + (cat["gx"] + 0.5) * ps, y=oy - (cat["gy"] + 0.5) * ps,
                      group=cat["group"].astype(str), kind=cat["kind"].astype(str),
                      value=None if samples.values is None else cat["value"].astype(np.float64))


def resolve_block_size(cfg, samples: Samples, grid: TileGrid) -> tuple[float, dict]:
    """The spatial CV block edge: ``model.cv_block_size`` when a number, else chosen from the
    samples that are blocked (points; all samples with ``cv_groups: block``) by
    :func:`ecocube.evaluation.choose_block_size`. Returns the edge and how it was chosen."""
    import shapely

    from .evaluation import choose_block_size

    configured = cfg.model.cv_block_size
    if configured != "auto":
        return float(configured), {"rule": "configured (model.cv_block_size)", "block_size": float(configured)}
    geoms = _to_grid_crs(samples.geometries, samples.crs, grid.crs)
    points = shapely.get_type_id(geoms) == 0
    blocked = np.ones(points.size, bool) if cfg.model.cv_groups == "block" else points
    if cfg.model.cv_groups == "polygon" or not blocked.any():
        return 1000.0, {"rule": "polygon groups: every polygon is a CV group, no blocks", "block_size": None}
    reps = shapely.point_on_surface(geoms[blocked])
    choice = choose_block_size(shapely.get_x(reps), shapely.get_y(reps), samples.classes[blocked],
                               folds=cfg.model.cv_folds, pixel_size=grid.pixel_size,
                               random_state=cfg.model.random_state)
    log.info("spatial CV block size %.0f (%s)", choice["block_size"], choice["rule"])
    return float(choice["block_size"]), choice


# ---------------------------------------------------------------------- overlay


@dataclass(frozen=True)
class _OverlayJob:
    tile_index: tuple[int, int]
    rows: np.ndarray  # indices into the pixel table
    row0: int
    col0: int
    height: int
    width: int


#: a tile's samples are read in one window when its bounding box holds at most this many
#: processing blocks' worth of pixels; otherwise one window per processing block
MERGE_BLOCKS = 4


def _overlay_jobs(pixels: PixelTable, grid: TileGrid, block_size: int) -> list[_OverlayJob]:
    """Windows to read: per tile, the bounding box of its pixels, split by processing block
    when that box is larger than ``MERGE_BLOCKS`` blocks (memory stays bounded by the block size)."""
    ts = grid.tile_size
    ix, iy = np.floor_divide(pixels.gx, ts), np.floor_divide(pixels.gy, ts)
    row, col = pixels.gy - iy * ts, pixels.gx - ix * ts
    tiles, tile_of = np.unique(np.stack([iy, ix], axis=1), axis=0, return_inverse=True)
    tile_of = tile_of.ravel()
    jobs = []

    def _job(tix, tiy, idx):
        r, c = row[idx], col[idx]
        return _OverlayJob((int(tix), int(tiy)), idx, int(r.min()), int(c.min()),
                           int(r.max() - r.min() + 1), int(c.max() - c.min() + 1))

    for t, (tiy, tix) in enumerate(tiles):
        idx = np.flatnonzero(tile_of == t)
        whole = _job(tix, tiy, idx)
        if whole.height * whole.width <= MERGE_BLOCKS * block_size * block_size:
            jobs.append(whole)
            continue
        keys = np.stack([row[idx] // block_size, col[idx] // block_size], axis=1)
        _, block_of = np.unique(keys, axis=0, return_inverse=True)
        block_of = block_of.ravel()
        for b in range(int(block_of.max()) + 1):
            jobs.append(_job(tix, tiy, idx[block_of == b]))
    return jobs


def _run_overlay_job(cfg, grid: TileGrid, job: _OverlayJob, pixels: PixelTable, threads: int):
    from rasterio.windows import Window

    from . import gapfill, read
    from .features import features_for_year

    tile = grid.tile(job.tile_index)
    window = Window(job.col0, job.row0, job.width, job.height)
    result = read.read_block(cfg, tile, window, threads=threads)
    filled, _flags = gapfill.fill_gaps_config(result.data, cfg, threads=threads)
    start = int(cfg.inputs.periods.start_year)
    ts = grid.tile_size
    local = (pixels.gy[job.rows] - job.tile_index[1] * ts - job.row0) * job.width + \
            (pixels.gx[job.rows] - job.tile_index[0] * ts - job.col0)
    years = pixels.year[job.rows]
    season = int(cfg.inputs.periods.season_size)
    count = np.asarray(result.count).reshape(result.count.shape[0], result.count.shape[1], -1)
    out = None
    observed: dict[int, list[int]] = {}
    for yr in np.unique(years):
        feats = year_features(cfg, filled, result.bands, int(yr) - start, tile, window, features_for_year)
        if out is None:
            out = np.empty((job.rows.size, feats.shape[1]), np.float32)
        sel = years == yr
        out[sel] = feats[local[sel]]
        t0 = (int(yr) - start) * season
        c = count[t0:t0 + season][:, :, local[sel]]  # valid observations behind each period value
        observed[int(yr)] = [int((c > 0).sum()), int(c.size)]
    return job.rows, out, tuple(result.bands), {"tile": tile.id, "window": [job.col0, job.row0, job.width,
                                                                             job.height],
                                                "missing_hrefs": list(result.missing), "read": dict(result.stats),
                                                "observed": observed}


def extract_features(cfg, pixels: PixelTable, *, threads: int | None = None) -> tuple[np.ndarray, list[str], dict]:
    """Overlay the pixels on the gap-filled cube: ``(n_pixels, n_features)`` float32, names, stats."""
    from joblib import delayed

    from .progress import parallel_with_progress

    grid = TileGrid.from_config(cfg.grid)
    jobs = _overlay_jobs(pixels, grid, cfg.processing.block_size)
    n_threads = available_threads(threads or cfg.processing.threads)
    n_outer = max(1, min(len(jobs), n_threads))
    inner = max(1, n_threads // n_outer)
    t0 = time.perf_counter()
    results = parallel_with_progress((delayed(_run_overlay_job)(cfg, grid, job, pixels, inner) for job in jobs),
                                     n_jobs=n_outer, total=len(jobs), desc="overlay", unit="window")
    bands = results[0][2]
    names = run_feature_names(cfg, bands, make_feature_names)
    X = np.full((len(pixels), len(names)), np.nan, np.float32)
    for rows, feats, _, _ in results:
        X[rows] = feats
    stats = {
        "windows": len(jobs),
        "tiles": sorted({r[3]["tile"] for r in results}),
        "threads": n_threads,
        "parallel_windows": n_outer,
        "seconds": round(time.perf_counter() - t0, 3),
        "missing_inputs": sorted({m for r in results for m in r[3]["missing_hrefs"]}),
    }
    seen: dict[int, list[int]] = {}
    for r in results:
        for yr, (n_obs, n_all) in r[3]["observed"].items():
            acc = seen.setdefault(int(yr), [0, 0])
            acc[0] += n_obs
            acc[1] += n_all
    # per year: share of the samples' (period, band) values that rest on at least one
    # valid observation of that period (the rest were gap-filled, e.g. from other years)
    stats["observed_share_by_year"] = {str(yr): (n_obs / n_all if n_all else 0.0)
                                       for yr, (n_obs, n_all) in sorted(seen.items())}
    return X, names, stats


#: below this share of observed (not gap-filled) values, a training year is warned about
MIN_OBSERVED_SHARE = 0.5


def check_year_observations(overlay_stats: dict, samples_path: Path) -> list[str]:
    """Refuse a training year whose sample values are all gap-filled; warn below
    :data:`MIN_OBSERVED_SHARE`. Returns the warnings (also logged)."""
    shares = overlay_stats.get("observed_share_by_year") or {}
    empty = sorted(int(y) for y, v in shares.items() if v == 0)
    if empty:
        raise ModelError(f"samples {samples_path}: year(s) {empty} have no valid observation at any sample "
                         "(every feature value is gap-filled from other years); train with --year or give the "
                         "samples a date/year column")
    out = []
    for yr, v in sorted(shares.items()):
        if v < MIN_OBSERVED_SHARE:
            msg = (f"year {yr}: only {v:.0%} of the samples' period values rest on an observation of that "
                   f"period; the rest are gap-filled (from other periods or years)")
            log.warning("%s", msg)
            out.append(msg)
    return out


# ---------------------------------------------------------------------- feature table


def write_feature_table(path: Path, pixels: PixelTable, X: np.ndarray, names: list[str], metadata: dict) -> None:
    """The feature table as Parquet (one row per pixel and year), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {
        "sample_id": pa.array(pixels.sample_id), "class": pa.array(pixels.cls), "year": pa.array(pixels.year),
        "group": pa.array(pixels.group.tolist(), pa.string()), "kind": pa.array(pixels.kind.tolist(), pa.string()),
        "gx": pa.array(pixels.gx), "gy": pa.array(pixels.gy), "x": pa.array(pixels.x), "y": pa.array(pixels.y),
    }
    if pixels.value is not None:
        cols["value"] = pa.array(pixels.value)
    for j, n in enumerate(names):
        cols[n] = pa.array(X[:, j])
    table = pa.table(cols).replace_schema_metadata({b"ecocube": json.dumps(metadata).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_feature_table(path: Path) -> tuple[PixelTable, np.ndarray, list[str], dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"ecocube", b"{}"))
    names = list(meta.get("feature_names", []))
    pixels = PixelTable(
        sample_id=np.asarray(table.column("sample_id")), cls=np.asarray(table.column("class")),
        year=np.asarray(table.column("year")), gx=np.asarray(table.column("gx")), gy=np.asarray(table.column("gy")),
        x=np.asarray(table.column("x")), y=np.asarray(table.column("y")),
        group=np.asarray(table.column("group").to_pylist(), dtype=str),
        kind=np.asarray(table.column("kind").to_pylist(), dtype=str),
        value=np.asarray(table.column("value"), dtype=np.float64) if "value" in table.column_names else None,
    )
    X = np.column_stack([np.asarray(table.column(n), dtype=np.float32) for n in names]) if names else \
        np.empty((len(pixels), 0), np.float32)
    return pixels, X, names, meta


# ---------------------------------------------------------------------- metrics


def evaluate(y_true: np.ndarray, proba: np.ndarray, classes: list[int], class_names: list[str] | None = None,
             *, majority_class: int | None = None) -> dict:
    """Accuracy figures of held-out probabilities ``proba`` (columns in ``classes`` order)."""
    from sklearn.metrics import (
        accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    classes = [int(c) for c in classes]
    class_names = class_names or [str(c) for c in classes]
    codes = np.asarray(classes)
    y_pred = codes[np.argmax(proba, axis=1)]
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=codes, zero_division=0)
    per_class = []
    for k, c in enumerate(classes):
        pos = y_true == c
        auc = float(roc_auc_score(pos, proba[:, k])) if 0 < pos.sum() < pos.size else None
        per_class.append({"code": c, "name": class_names[k], "precision": float(p[k]), "recall": float(r[k]),
                          "f1": float(f[k]), "support": int(s[k]), "roc_auc": auc})
    clipped = np.clip(proba, 1e-15, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    out = {
        "n": int(y_true.size),
        "overall_accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=codes, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=codes, average="macro", zero_division=0)),
        "kappa": float(cohen_kappa_score(y_true, y_pred, labels=codes)),
        "log_loss": float(log_loss(y_true, clipped, labels=codes)),
        "per_class": per_class,
        "confusion_matrix": {"labels": classes, "rows": "true", "columns": "predicted",
                             "matrix": confusion_matrix(y_true, y_pred, labels=codes).tolist()},
    }
    if majority_class is not None:
        base = np.full(y_true.size, majority_class)
        prior = np.array([np.mean(y_true == c) for c in classes])
        out["baseline"] = {
            "rule": f"always the majority class {majority_class}",
            "overall_accuracy": float(accuracy_score(y_true, base)),
            "f1_weighted": float(f1_score(y_true, base, labels=codes, average="weighted", zero_division=0)),
            "f1_macro": float(f1_score(y_true, base, labels=codes, average="macro", zero_division=0)),
            "log_loss": float(log_loss(y_true, np.tile(np.clip(prior, 1e-15, 1), (y_true.size, 1)), labels=codes)),
        }
    return out


def _cv_fold(make_model, X, y, groups, classes, k, train, test, threads):
    model = make_model(threads)
    inner_groups = groups[train]
    if np.unique(inner_groups).size < 2:
        inner_groups = None
    model.fit(X[train], y[train], groups=inner_groups)
    cols = np.searchsorted(classes, model.classes_)
    base = {}
    if hasattr(model, "predict_proba_with_base") and hasattr(model, "learner_names_"):
        # each final base learner of the fold's ensemble was fitted on the same training
        # rows: its held-out probabilities are that learner alone, on the same fold
        p, bp = model.predict_proba_with_base(X[test])
        for name, b in zip(_unique_names(model.learner_names_), bp):
            full = np.zeros((test.size, classes.size))
            full[:, cols] = b
            base[name] = full
    else:
        p = model.predict_proba(X[test])
    block = np.zeros((test.size, classes.size))
    block[:, cols] = p
    acc = float(np.mean(classes[np.argmax(block, axis=1)] == y[test]))
    info = {"fold": k, "n_train": int(train.size), "n_test": int(test.size),
            "groups_test": int(np.unique(groups[test]).size), "overall_accuracy": acc,
            "classes_in_train": [int(c) for c in model.classes_], **_search_record(model)}
    from .evaluation import majority_proba

    base["__majority__"] = majority_proba(y[train], test.size, classes)
    return test, block, info, base


def _unique_names(names) -> list[str]:
    """Learner names made unique (``rf``, ``rf#2``) for the comparison tables."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def cross_validate(make_model, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, folds: int,
                   random_state: int, threads: int = 1, return_baselines: bool = False):
    """Held-out probabilities from a grouped, stratified K-fold (``classes`` = sorted codes of ``y``).

    ``make_model(n_threads)`` returns a fresh estimator with ``fit(X, y, groups=)``. The
    folds run on joblib threads (at most ``threads`` of them), the allocation's threads
    shared between them. Returns ``(proba (n, n_classes), fold (n,), per-fold dicts)``;
    every row is predicted by a model that saw none of its group. With
    ``return_baselines`` a fourth item maps each base learner of the ensemble (alone) and
    ``"majority class"`` (the majority of each fold's training rows) to their held-out
    probabilities on the same folds.
    """
    from joblib import delayed
    from sklearn.model_selection import StratifiedGroupKFold

    from .progress import parallel_with_progress

    classes = np.unique(y)
    n_groups = np.unique(groups).size
    n_splits = min(folds, n_groups)
    if n_splits < 2:
        raise ModelError(f"spatial cross-validation needs at least 2 groups, got {n_groups}: "
                         "lower model.cv_block_size or add samples")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(X, y, groups))
    n_outer = max(1, min(int(threads), len(splits)))
    inner = max(1, int(threads) // n_outer)
    results = parallel_with_progress(
        (delayed(_cv_fold)(make_model, X, y, groups, classes, k, train, test, inner)
         for k, (train, test) in enumerate(splits)), n_jobs=n_outer, total=len(splits), desc="CV", unit="fold")
    proba = np.full((y.size, classes.size), np.nan)
    fold_of = np.full(y.size, -1, np.int64)
    per_fold = []
    baselines: dict[str, np.ndarray] = {}
    for k, (test, block, info, base) in enumerate(results):
        proba[test] = block
        fold_of[test] = k
        per_fold.append(info)
        for name, p in base.items():
            name = "majority class" if name == "__majority__" else name
            baselines.setdefault(name, np.full((y.size, classes.size), np.nan))[test] = p
    if return_baselines:
        complete = {n: p for n, p in baselines.items() if not np.isnan(p).any()}
        return proba, fold_of, per_fold, complete
    return proba, fold_of, per_fold


# ---------------------------------------------------------------------- report


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:  # the temp name keeps ".png": matplotlib picks the format by suffix
        fig.savefig(tmp, format="png", bbox_inches="tight")


def _importance_png(report: dict, folder: Path) -> str:
    """The 25 most important features of the final model, as ``feature_importance.png``."""
    imp = report["feature_importance"][:25]
    fig = _figure(6.0, 0.8 + 0.25 * max(len(imp), 1))
    ax = fig.add_subplot()
    ax.barh(range(len(imp))[::-1], [d["importance"] for d in imp], color="#4c72b0")
    ax.set_yticks(range(len(imp))[::-1], [d["feature"] for d in imp], fontsize=8)
    ax.set_xlabel("mean normalised importance of the base learners")
    ax.set_title("Feature importance (final model)")
    _save_png(fig, folder / "feature_importance.png")
    return "feature_importance.png"


def write_plots(report: dict, folder: Path) -> dict[str, str]:
    """Confusion matrix, per-class F1 and feature importance as PNG (matplotlib, Agg)."""
    metrics = report["metrics"]
    names = [c["name"] for c in metrics["per_class"]]
    out = {}

    cm = np.asarray(metrics["confusion_matrix"]["matrix"], dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(names)
    fig = _figure(1.2 + 0.7 * n, 1.0 + 0.6 * n)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title("Confusion matrix (spatial CV, row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save_png(fig, folder / "confusion_matrix.png")
    out["confusion_matrix"] = "confusion_matrix.png"

    f1 = [c["f1"] for c in metrics["per_class"]]
    colors = [c.get("color", "#888888") for c in report["classes"]]
    fig = _figure(1.5 + 0.6 * n, 3.5)
    ax = fig.add_subplot()
    ax.bar(range(n), f1, color=colors, edgecolor="black")
    ax.axhline(metrics["f1_weighted"], color="black", linestyle="--", label=f"weighted F1 {metrics['f1_weighted']:.2f}")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1 (spatial CV)")
    ax.legend(loc="lower right")
    _save_png(fig, folder / "per_class_f1.png")
    out["per_class_f1"] = "per_class_f1.png"

    out["feature_importance"] = _importance_png(report, folder)

    cal = report.get("calibration")
    if cal and cal["bins"]:
        fig = _figure(4.0, 4.0)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1)
        ax.plot([b["confidence"] for b in cal["bins"]], [b["accuracy"] for b in cal["bins"]], marker="o",
                color="#4c72b0")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability of the top class")
        ax.set_ylabel("share correct")
        ax.set_title(f"Reliability (spatial CV), ECE {cal['ece']:.3f}")
        _save_png(fig, folder / "reliability.png")
        out["reliability"] = "reliability.png"
    return out


def _block_text(cv: dict) -> str:
    choice = cv.get("block_size_choice") or {}
    if cv.get("block_size") is None:
        return choice.get("rule", "none (polygon groups)")
    extra = ""
    if choice.get("range") is not None:
        extra = f"; label autocorrelation range {choice['range']:.0f}, extent cap {choice['cap']:.0f}"
    return f"{cv['block_size']:.0f} CRS units ({choice.get('rule', 'configured')}{extra})"


def report_markdown(report: dict) -> str:
    m, b = report["metrics"], report["metrics"].get("baseline", {})
    cv = report["cv"]
    lines = [
        f"# Training report: {report['run']}",
        "",
        f"Samples: `{report['samples']['file']}` (field `{report['samples']['class_field']}`, sha256 "
        f"`{report['samples']['sha256'][:16]}…`): {report['samples']['features']} features → "
        f"{report['samples']['pixels_used']} pixel samples used ({report['samples']['pixels_dropped_nan']} dropped "
        f"for unfilled gaps), years {', '.join(map(str, report['samples']['years']))}.",
        "",
        f"Accuracy from **{cv['scheme']}** cross-validation: {cv['folds']} folds over {cv['groups']} groups; "
        "every figure below comes from predictions of models that never saw the group of the pixel.",
        "",
        "| metric | model | majority-class baseline |",
        "|---|---|---|",
        f"| overall accuracy | {m['overall_accuracy']:.3f} | {b.get('overall_accuracy', float('nan')):.3f} |",
        f"| weighted F1 | {m['f1_weighted']:.3f} | {b.get('f1_weighted', float('nan')):.3f} |",
        f"| macro F1 | {m['f1_macro']:.3f} | {b.get('f1_macro', float('nan')):.3f} |",
        f"| log loss | {m['log_loss']:.3f} | {b.get('log_loss', float('nan')):.3f} |",
        f"| Cohen's kappa | {m['kappa']:.3f} | 0 |",
        "",
        f"Spatial CV block size: {_block_text(cv)}.",
        "",
    ]
    cmp_ = report.get("comparison")
    if cmp_:
        codes = [c["code"] for c in m["per_class"]]
        cname = {c["code"]: c["name"] for c in m["per_class"]}
        lines += ["## The ensemble against each base learner alone and the majority class (same folds)", "",
                  "| model | weighted F1 | OA | macro F1 | log loss | " + " | ".join(f"F1 {cname[c]}" for c in codes)
                  + " |", "|---" * (5 + len(codes)) + "|"]
        for name, sc in cmp_["models"].items():
            bold = "**" if name == cmp_["best"] else ""
            lines.append(f"| {bold}{name}{bold} | {sc['f1_weighted']:.3f} | {sc['overall_accuracy']:.3f} | "
                         f"{sc['f1_macro']:.3f} | {sc['log_loss']:.3f} | "
                         + " | ".join(f"{sc['per_class_f1'][str(c)]:.3f}" for c in codes) + " |")
        lines.append("")
    for w in report.get("warnings", []):
        lines.append(f"**Warning:** {w}.")
    if report.get("warnings"):
        lines.append("")
    cal = report.get("calibration")
    if cal:
        lines += [(f"Calibration of the top-class probability: expected calibration error {cal['ece']:.3f}, "
                   f"log loss {m['log_loss']:.3f} ![reliability](reliability.png)"), ""]
    lines += [
        "## Per class",
        "",
        "| code | class | precision | recall | F1 | ROC AUC (one vs all) | support |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in m["per_class"]:
        auc = "–" if c["roc_auc"] is None else f"{c['roc_auc']:.3f}"
        lines.append(f"| {c['code']} | {c['name']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | "
                     f"{auc} | {c['support']} |")
    cm = m["confusion_matrix"]
    names = {c["code"]: c["name"] for c in m["per_class"]}
    lines += ["", "## Confusion matrix (rows: reference, columns: predicted)", "",
              "| | " + " | ".join(names[c] for c in cm["labels"]) + " |",
              "|---" * (len(cm["labels"]) + 1) + "|"]
    for code, row in zip(cm["labels"], cm["matrix"]):
        lines.append(f"| **{names[code]}** | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "![confusion matrix](confusion_matrix.png)", "", "![per-class F1](per_class_f1.png)", "",
              "## Most important features", "", "| feature | importance |", "|---|---|"]
    lines += [f"| {d['feature']} | {d['importance']:.4f} |" for d in report["feature_importance"][:15]]
    lines += ["", "![feature importance](feature_importance.png)", "", "## Folds", "",
              "| fold | train | test | test groups | OA |", "|---|---|---|---|---|"]
    lines += [f"| {f['fold']} | {f['n_train']} | {f['n_test']} | {f['groups_test']} | {f['overall_accuracy']:.3f} |"
              for f in cv["per_fold"]]
    mdl = report["model"]
    lines += ["", "## Model", "",
              f"Ensemble of {', '.join(mdl['base_learners'])} ({mdl['n_estimators']} trees per tree learner"
              f"{_leaf_text(mdl)}), "
              f"{_COMBINER_TEXT.get(mdl.get('meta_chosen', 'logistic'), mdl.get('meta_chosen'))} "
              f"(model.meta: {mdl.get('meta', 'auto')}; {_inner_cv_text(mdl)}), "
              f"class weights {mdl['class_weight']}. {report['n_features']} features; "
              f"versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".", ""]
    if mdl.get("tuning", {}).get("method", "none") != "none":
        lines += [f"Hyperparameters tuned on the inner folds of every fit (score: {mdl['tuning']['metric']}); "
                  "the final model's choice: " + "; ".join(f"{k} " + ", ".join(f"{p}={v}" for p, v in c.items())
                                                           for k, c in mdl["tuning"].get("chosen", {}).items()) + ".", ""]
    fs = mdl.get("feature_selection", {})
    if fs.get("method", "none") != "none" and "selected" in fs:
        lines += [f"Feature selection ({fs['method']}, share chosen on the inner folds: {fs['share']}): "
                  f"{len(fs['selected'])} of {report['n_features']} features kept: "
                  + ", ".join(fs["selected"]) + ".", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- training


@dataclass
class TrainResult:
    bundle: ModelBundle
    report: dict
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def _cache_key(cfg, samples: Samples, class_field: str, years: list[int]) -> str:
    parts = {
        "samples": samples.sha256, "class_field": class_field, "date_field": samples.date_field,
        "task": cfg.model.task,
        "crs": samples.crs, "years": years,
        "cfg": cfg.model_dump(mode="json", include={"grid", "inputs", "gapfill", "features"}),
        "pixels": cfg.model.model_dump(mode="json", include={"max_pixels_per_polygon", "cv_block_size", "cv_groups",
                                                             "random_state"}),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _forest_leaves(model) -> dict[str, int]:
    """``min_samples_leaf`` of the final random forest / extra trees learners (after any tuning)."""
    return {name: int(est.get_params()["min_samples_leaf"])
            for name, est in zip(getattr(model, "learner_names_", ()), getattr(model, "estimators_", ()))
            if name in ("rf", "et") and "min_samples_leaf" in est.get_params()}


def _leaf_text(mdl: dict) -> str:
    """``; forest leaves of at least N pixels`` (per learner when they differ), "" without forests."""
    leaves = mdl.get("forest_min_samples_leaf") or {}
    if not leaves:
        return ""
    sizes = set(leaves.values())
    if len(sizes) == 1:
        (n,) = sizes
        return f"; forest leaves of at least {n} pixel{'s' if n != 1 else ''}"
    return "; forest leaves of at least " + ", ".join(f"{k} {v}" for k, v in leaves.items()) + " pixels"


def _inner_cv_text(mdl: dict) -> str:
    """What the inner (stacking) folds of the final fit were used for, in the report's words."""
    k = mdl["cv_folds"]
    chosen, meta = mdl.get("meta_chosen", "logistic"), mdl.get("meta", "auto")
    uses = []
    if meta == "auto":
        uses.append(f"the combiner chosen on {k}-fold out-of-fold probabilities"
                    + (" and fitted on them" if chosen != "mean" else ""))
    elif chosen != "mean":
        uses.append(f"the combiner fitted on {k}-fold out-of-fold probabilities")
    else:
        uses.append("nothing fitted on top of the learners")
    if "lgbm" in mdl.get("base_learners", ()):
        uses.append(f"LightGBM's tree count from its {k}-fold out-of-fold log loss")
    return "; ".join(uses)


#: the report's words for each combiner (``EnsembleClassifier.meta_``)
_COMBINER_TEXT = {"mean": "combined by the mean of their probabilities",
                  "logistic": "multinomial logistic meta-learner",
                  "greedy": "combined by a weighted mean (greedy ensemble selection)",
                  "best": "reduced to the learner with the best out-of-fold score"}


def _make_model(cfg, threads: int, *, cv_folds: int | None = None) -> EnsembleClassifier:
    m = cfg.model
    tuning = None
    if m.tuning.method == "grid":
        tuning = "grid" if m.tuning.grids is None else {k: dict(v) for k, v in m.tuning.grids.items()}
    return EnsembleClassifier(
        base_learners=tuple(m.base_learners), n_estimators=m.n_estimators, max_depth=m.max_depth,
        learning_rate=m.learning_rate, cv_folds=cv_folds or m.cv_folds,
        class_weight=None if m.class_weight == "none" else "balanced", meta=m.meta,
        tuning=tuning, tuning_metric=m.tuning.metric,
        feature_selection=None if m.feature_selection.method == "none" else m.feature_selection.method,
        feature_keep=tuple(m.feature_selection.keep),
        nan_policy="impute" if m.nan_policy == "impute" else "raise", n_jobs=threads, random_state=m.random_state,
    )


def _tuning_record(cfg, model) -> dict:
    """The report's and bundle's record of tuning: settings, the final model's choice, every candidate."""
    out: dict = {"method": cfg.model.tuning.method, "metric": cfg.model.tuning.metric}
    if getattr(model, "tuning_", None):
        out["chosen"] = {k: v["chosen"] for k, v in model.tuning_.items()}
        out["candidates"] = model.tuning_
    return out


def _selection_record(cfg, model, names) -> dict:
    """The report's and bundle's record of feature selection: settings and the kept features by name."""
    out: dict = {"method": cfg.model.feature_selection.method, "keep": list(cfg.model.feature_selection.keep)}
    if getattr(model, "feature_selection_", None):
        out.update(model.feature_selection_)
        out["selected"] = [str(names[c]) for c in model.selected_features_]
    return out


def _search_record(model, names: list[str] | None = None) -> dict:
    """What tuning chose per learner and which features selection kept (empty without them)."""
    out: dict = {}
    if getattr(model, "tuning_", None):
        out["tuning"] = {k: v["chosen"] for k, v in model.tuning_.items()}
    sel = getattr(model, "feature_selection_", None)
    if sel:
        cols = [int(c) for c in model.selected_features_]
        out["feature_selection"] = {"method": sel["method"], "share": sel["share"], "n_selected": len(cols),
                                    **({"selected": [names[c] for c in cols]} if names is not None else {})}
    return out


def train_model(cfg, samples_path: str | Path, class_field: str, *, out_dir: str | Path | None = None,
                year: int | None = None, threads: int | None = None, samples_crs: str | None = None,
                date_field: str | None = None, overwrite: bool = False) -> TrainResult:
    """Train the ensemble on labelled samples, evaluate it by spatial CV, save bundle + report.

    ``out_dir`` defaults to ``cfg.model.path``. An existing bundle there is replaced only with
    ``overwrite=True`` (:class:`FileOverwriteError` otherwise). A ``features.parquet`` left by
    an earlier run with the same samples and settings is reused instead of reading again.
    """
    t_start = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else Path(cfg.model.path)
    if (out / META_FILE).exists() and not overwrite:
        raise FileOverwriteError(f"a model bundle exists in {out}; use --overwrite to replace it")
    n_threads = available_threads(threads or cfg.processing.threads)
    samples, years = _checked_samples(cfg, samples_path, class_field, year=year, crs=samples_crs,
                                      date_field=date_field or cfg.model.date_field)
    table = _feature_table(cfg, samples, class_field, years, out / FEATURE_TABLE, threads=n_threads)
    t_overlay = time.perf_counter() - t_start
    year_warnings = check_year_observations(table.overlay_stats, samples.path)
    rows = _training_rows(cfg, table, samples)
    if cfg.model.task == "regression":
        return _train_regression(cfg, samples, class_field, table, rows, out, threads=n_threads,
                                 warnings_=year_warnings, t_overlay=t_overlay)
    cv = _spatial_cv(cfg, rows, threads=n_threads)
    model, t_fit = _fit_final(cfg, rows, threads=n_threads)
    report = _training_report(cfg, samples, class_field, table, rows, cv, model, threads=n_threads,
                              timings={"overlay": t_overlay, "cross_validation": cv.seconds, "final_fit": t_fit})
    report["warnings"] += year_warnings
    report["samples"]["observed_share_by_year"] = table.overlay_stats.get("observed_share_by_year")
    bundle = _make_bundle(cfg, samples, class_field, model, table.names, report)
    if cfg.model.engine == "auto":  # fast inference engines, chosen per learner by measurement
        from .engines import build_engines

        bundle.engine_set = build_engines(model, rows.X)
        report["engines"] = bundle.engine_set.report
    files = _write_outputs(out, bundle, report, table.path)
    log.info("trained on %d pixels: OA %.3f, weighted F1 %.3f (spatial CV; baseline OA %.3f) -> %s", rows.y.size,
             cv.metrics["overall_accuracy"], cv.metrics["f1_weighted"], cv.metrics["baseline"]["overall_accuracy"],
             out)
    return TrainResult(bundle=bundle, report=report, out_dir=out, files=files)


def _checked_samples(cfg, samples_path: str | Path, class_field: str, *, year: int | None, crs: str | None,
                     date_field: str | None) -> tuple[Samples, list[int]]:
    """The samples, checked against the run's years and class legend, and the years to overlay."""
    periods = cfg.inputs.periods
    run_years = list(range(periods.start_year, periods.end_year + 1))
    if year is not None and year not in run_years:
        raise ConfigError(f"year {year} is outside the run's years {run_years[0]}..{run_years[-1]}")

    samples = load_samples(samples_path, class_field, crs=crs, date_field=date_field,
                           periods_cfg=cfg.inputs.periods, task=cfg.model.task)
    if samples.years is not None:
        outside = sorted(set(samples.years.tolist()) - set(run_years))
        if outside:
            raise ConfigError(f"samples {samples.path}: years {outside} are outside the run's years "
                              f"{run_years[0]}..{run_years[-1]} (field {samples.date_field!r})")
    legend = _legend(cfg)
    unknown = sorted(set(samples.classes.tolist()) - set(legend)) if cfg.model.task == "classification" else []
    if unknown:
        raise ConfigError(f"samples {samples.path}: class codes {unknown} in field {class_field!r} are not in "
                          f"model.classes ({', '.join(str(c) for c in legend)})")
    return samples, ([year] if year is not None else run_years)


def _legend(cfg) -> dict:
    return {c.code: c for c in cfg.model.classes}


@dataclass
class _FeatureTable:
    """The overlay's result: one row of features per sampled pixel and year."""

    path: Path
    pixels: PixelTable
    X: np.ndarray
    names: list[str]
    overlay_stats: dict
    reused: bool
    block_size: float  # spatial CV block edge (used for points / cv_groups: block)
    block_choice: dict  # how it was chosen


def _feature_table(cfg, samples: Samples, class_field: str, years: list[int], table_path: Path, *,
                   threads: int) -> _FeatureTable:
    """The feature table at ``table_path`` when it was made from the same samples and settings,
    else a new overlay (sample pixels, read, gap-fill, features), written there for next time."""
    grid = TileGrid.from_config(cfg.grid)
    block_size, block_choice = resolve_block_size(cfg, samples, grid)
    key = _cache_key(cfg, samples, class_field, years)
    reused = False
    overlay_stats: dict = {}
    if table_path.exists():
        try:
            pixels, X, names, meta = read_feature_table(table_path)
            reused = meta.get("cache_key") == key
        except Exception as exc:  # an unreadable old table is simply rebuilt
            log.warning("ignoring unreadable feature table %s: %s", table_path, exc)
    if reused:
        overlay_stats = meta.get("overlay", {})
        log.info("reusing feature table %s (%d rows)", table_path, len(pixels))
    else:
        pixels = sample_pixels(samples, grid, years=years, max_pixels_per_polygon=cfg.model.max_pixels_per_polygon,
                               cv_block_size=block_size, cv_groups=cfg.model.cv_groups,
                               random_state=cfg.model.random_state)
        log.info("overlaying %d pixel samples from %d features", len(pixels), len(samples))
        X, names, overlay_stats = extract_features(cfg, pixels, threads=threads)
        write_feature_table(table_path, pixels, X, names,
                            {"cache_key": key, "feature_names": names, "overlay": overlay_stats,
                             "samples_sha256": samples.sha256})
    return _FeatureTable(path=table_path, pixels=pixels, X=X, names=names, overlay_stats=overlay_stats,
                         reused=reused, block_size=block_size, block_choice=block_choice)


@dataclass
class _TrainingRows:
    """The rows the model is trained and evaluated on, with their CV groups."""

    pixels: PixelTable
    X: np.ndarray
    y: np.ndarray  # class codes
    groups: np.ndarray  # int64 CV group code per row
    present: np.ndarray  # sorted class codes with samples
    n_dropped: int  # rows dropped for unfilled gaps


def _outside_aoi(cfg, pixels: PixelTable) -> np.ndarray:
    """True for the pixel samples whose tile is not one of the run's (``aoi``)."""
    grid = TileGrid.from_config(cfg.grid)
    ts = grid.tile_size
    run_tiles = {(t.index.ix, t.index.iy) for t in grid.tiles_for_aoi(cfg.aoi)}
    tile_of = zip(np.floor_divide(pixels.gx, ts).tolist(), np.floor_divide(pixels.gy, ts).tolist())
    return np.fromiter((t not in run_tiles for t in tile_of), bool, count=len(pixels.gx))


def _training_rows(cfg, table: _FeatureTable, samples: Samples) -> _TrainingRows:
    """Drop the rows the NaN policy cannot use; refuse a table with fewer than 2 classes."""
    X = table.X
    finite = np.isfinite(X).all(axis=1)
    n_dropped = 0
    if cfg.model.nan_policy == "drop":
        n_dropped = int((~finite).sum())
        keep = finite
    else:
        keep = ~np.isnan(X).all(axis=1)  # a pixel without any value has nothing to impute from
        n_dropped = int((~keep).sum())
    if n_dropped:
        outside = _outside_aoi(cfg, table.pixels) & ~keep
        n_outside = int(outside.sum())
        if n_outside:
            n_samples = np.unique(table.pixels.sample_id[outside]).size
            log.warning("%d pixel samples of %d sample(s) lie outside the run's tiles (aoi), have no input data "
                        "and are dropped", n_outside, n_samples)
        if n_dropped - n_outside:
            log.warning("%d of %d pixel samples keep unfilled gaps and are %s", n_dropped - n_outside,
                        len(table.pixels),
                        "dropped" if cfg.model.nan_policy == "drop" else "dropped (all features missing)")
    pixels, X = table.pixels.take(np.flatnonzero(keep)), X[keep]
    group_codes = np.unique(pixels.group, return_inverse=True)[1].ravel()
    if cfg.model.task == "regression":
        return _TrainingRows(pixels=pixels, X=X, y=pixels.value, groups=group_codes,
                             present=np.array([], np.int64), n_dropped=n_dropped)
    y = pixels.cls
    present = np.unique(y)
    if present.size < 2:
        raise ModelError(f"samples {samples.path}: after the overlay only class(es) {present.tolist()} remain; "
                         "training needs at least 2 classes")
    return _TrainingRows(pixels=pixels, X=X, y=y, groups=group_codes, present=present, n_dropped=n_dropped)


@dataclass
class _CVResult:
    """Held-out predictions of the spatial CV and the metrics computed on them."""

    proba: np.ndarray
    per_fold: list[dict]
    metrics: dict
    counts: dict[int, int]  # class code -> rows
    seconds: float
    comparison: dict  # the ensemble vs each base learner alone vs the majority class, same folds
    calibration: dict  # reliability bins and ECE


def _spatial_cv(cfg, rows: _TrainingRows, *, threads: int) -> _CVResult:
    """Grouped CV of complete ensembles; metrics against the majority-class baseline."""
    t0 = time.perf_counter()
    proba, _, per_fold, baselines = cross_validate(
        lambda t: _make_model(cfg, t), rows.X, rows.y, rows.groups, folds=cfg.model.cv_folds,
        random_state=cfg.model.random_state, threads=threads, return_baselines=True)
    seconds = time.perf_counter() - t0
    y, present = rows.y, rows.present
    counts = {int(c): int((y == c).sum()) for c in present}
    majority = max(counts, key=lambda c: (counts[c], -c))
    legend = _legend(cfg)
    class_names = [legend[int(c)].name for c in present]
    metrics = evaluate(y, proba, present.tolist(), class_names, majority_class=majority)
    from .evaluation import compare_models, reliability

    comparison = compare_models(y, present, proba, {k: v for k, v in baselines.items() if k != "majority class"},
                                baselines["majority class"])
    for message in comparison["warnings"]:
        log.warning("%s", message)
    calibration = reliability(y, proba, present)
    return _CVResult(proba=proba, per_fold=per_fold, metrics=metrics, counts=counts, seconds=seconds,
                     comparison=comparison, calibration=calibration)


def _fit_final(cfg, rows: _TrainingRows, *, threads: int) -> tuple[EnsembleClassifier, float]:
    """The ensemble fitted on all rows, and the seconds it took."""
    t0 = time.perf_counter()
    model = _make_model(cfg, threads).fit(rows.X, rows.y, groups=rows.groups)
    return model, time.perf_counter() - t0


def _cv_scheme(cfg, kinds: list[str]) -> str:
    scheme = {"auto": "polygon" if kinds == ["polygon"] else "spatial-block"}.get(cfg.model.cv_groups,
                                                                                  cfg.model.cv_groups)
    if cfg.model.cv_groups == "auto" and len(kinds) > 1:
        scheme = "polygon (polygons) + spatial-block (points)"
    elif scheme == "block":
        scheme = "spatial-block"
    return scheme


def _training_report(cfg, samples: Samples, class_field: str, table: _FeatureTable, rows: _TrainingRows,
                     cv: _CVResult, model: EnsembleClassifier, *, threads: int, timings: dict[str, float]) -> dict:
    """The report (``report.json``): data, CV scheme, held-out metrics, model, timings, versions."""
    names, y, metrics, counts = table.names, rows.y, cv.metrics, cv.counts
    legend = _legend(cfg)
    periods = cfg.inputs.periods
    importance = sorted(({"feature": n, "importance": float(v)} for n, v in zip(names, model.feature_importances_)),
                        key=lambda d: -d["importance"])
    codes = [int(c) for c in model.classes_]
    kinds = sorted(set(rows.pixels.kind.tolist()))
    table_hash = hashlib.sha256(np.ascontiguousarray(rows.X).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()
    return {
        "run": cfg.name,
        # headline figures (spatial CV), repeated from "metrics" for quick access
        **{k: metrics[k] for k in ("overall_accuracy", "f1_weighted", "f1_macro", "kappa", "log_loss")},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "samples": {
            "file": samples.path.name, "sha256": samples.sha256, "class_field": class_field,
            "date_field": samples.date_field, "features": len(samples), "kinds": kinds,
            "years": sorted(set(rows.pixels.year.tolist())), "pixels_used": int(y.size),
            "pixels_dropped_nan": rows.n_dropped, "class_counts": {str(k): v for k, v in counts.items()},
            "training_table_sha256": table_hash,
            "classes_without_samples": [c.code for c in cfg.model.classes if c.code not in counts],
        },
        "cv": {"scheme": _cv_scheme(cfg, kinds),
               "block_size": table.block_size if "point" in kinds or cfg.model.cv_groups == "block" else None,
               "block_size_choice": table.block_choice, "folds": len(cv.per_fold),
               "groups": int(np.unique(rows.groups).size), "per_fold": cv.per_fold},
        "metrics": metrics,
        "comparison": cv.comparison,
        "warnings": list(cv.comparison["warnings"]),
        "calibration": cv.calibration,
        "classes": [{"code": c, "name": legend[c].name, "color": legend[c].color} for c in codes],
        "n_features": len(names),
        "feature_importance": importance,
        "model": {"base_learners": list(cfg.model.base_learners), "n_estimators": cfg.model.n_estimators,
                  "cv_folds": cfg.model.cv_folds, "class_weight": cfg.model.class_weight, "meta": cfg.model.meta,
                  "meta_chosen": str(model.meta_), "max_depth": cfg.model.max_depth,
                  "forest_min_samples_leaf": _forest_leaves(model),
                  "learning_rate": cfg.model.learning_rate, "nan_policy": cfg.model.nan_policy,
                  "random_state": cfg.model.random_state, "stacking_folds_used": len(model.cv_test_folds_),
                  "tuning": _tuning_record(cfg, model), "feature_selection": _selection_record(cfg, model, names)},
        "features": {"bands": [n[:-3] for n in names if n.endswith("_s1") and n[:-3] not in cfg.features.indices],
                     "season_size": periods.season_size, "indices": list(cfg.features.indices),
                     "statistics": list(cfg.features.statistics)},
        "overlay": {**table.overlay_stats, "reused_feature_table": table.reused},
        "timing_seconds": {k: round(v, 3) for k, v in timings.items()},
        "threads": threads,
        "versions": package_versions(),
    }


def _make_bundle(cfg, samples: Samples, class_field: str, model: EnsembleClassifier, names: list[str],
                 report: dict) -> ModelBundle:
    """The model with its feature names, legend and the report's headline metadata."""
    legend = _legend(cfg)
    codes = [int(c) for c in model.classes_]
    metrics = report["metrics"]
    return ModelBundle(
        model=model, feature_names=list(names), classes=codes,
        class_names=[legend[c].name for c in codes], colors=[legend[c].color for c in codes],
        metadata={
            "run": cfg.name, "training_samples_sha256": samples.sha256,
            "training_table_sha256": report["samples"]["training_table_sha256"],
            "samples_file": samples.path.name, "class_field": class_field,
            "season_size": cfg.inputs.periods.season_size, "indices": list(cfg.features.indices),
            "years": report["samples"]["years"], "cv": {k: v for k, v in report["cv"].items() if k != "per_fold"},
            "metrics": {k: metrics[k] for k in ("overall_accuracy", "f1_weighted", "f1_macro", "kappa", "log_loss")},
            "baseline": metrics.get("baseline"), "model": report["model"],
            # what the model predicts from (None: every feature) and the tuned hyperparameters
            "selected_features": report["model"]["feature_selection"].get("selected"),
            "tuned_parameters": report["model"]["tuning"].get("chosen"),
        },
    )


def _write_outputs(out: Path, bundle: ModelBundle, report: dict, table_path: Path) -> dict[str, Path]:
    """Plots, ``report.json``, ``report.md``, then the bundle (``model.json`` last of all)."""
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, out)
    report["plots"] = plots
    write_text_atomic(out / "report.json", strict_json(report), fsync="file")
    write_text_atomic(out / "report.md", report_markdown(report), fsync="file")
    save_bundle(bundle, out)
    return {"model": out / MODEL_FILE, "metadata": out / META_FILE, "report_json": out / "report.json",
            "report_md": out / "report.md", "features": table_path, **{k: out / v for k, v in plots.items()}}


# ---------------------------------------------------------------------- regression (model.task: regression)


def _make_regressor(cfg, threads: int):
    from .ensemble import EnsembleRegressor

    m = cfg.model
    learners = tuple(b for b in m.base_learners if b in ("rf", "lgbm", "et")) or ("rf", "lgbm")
    return EnsembleRegressor(base_learners=learners, n_estimators=m.n_estimators, max_depth=m.max_depth,
                             learning_rate=m.learning_rate, cv_folds=m.cv_folds,
                             nan_policy="impute" if m.nan_policy == "impute" else "raise", n_jobs=threads,
                             random_state=m.random_state)


def _regression_fold(cfg, X, y, groups, k, train, test, threads, coverage):
    from sklearn.ensemble import RandomForestRegressor

    from .ensemble import conformal_quantile

    inner = groups[train] if np.unique(groups[train]).size >= 2 else None
    model = _make_regressor(cfg, threads).fit(X[train], y[train], groups=inner)
    mean, lower, upper = model.predict_with_interval(X[test], coverage=coverage)
    preds = {"ensemble": (mean, lower, upper)}
    for name, p in zip(_unique_names(model.learner_names_), model.predict_base(X[test]).T):
        preds[name] = (p, None, None)
    # baselines: a plain random forest (default settings, n_estimators trees) and the training mean
    # with the conformal quantile of the training rows' absolute deviations as its interval
    rf = RandomForestRegressor(n_estimators=cfg.model.n_estimators, n_jobs=threads,
                               random_state=cfg.model.random_state)
    if cfg.model.nan_policy == "impute":
        rf = _imputing(rf)
    preds["plain rf"] = (rf.fit(X[train], y[train]).predict(X[test]), None, None)
    mu = float(y[train].mean())
    q = conformal_quantile(np.abs(y[train] - mu), coverage)
    preds["training mean"] = (np.full(test.size, mu), np.full(test.size, mu - q), np.full(test.size, mu + q))
    info = {"fold": k, "n_train": int(train.size), "n_test": int(test.size),
            "groups_test": int(np.unique(groups[test]).size),
            "rmse": float(np.sqrt(np.mean((mean - y[test]) ** 2)))}
    return test, preds, info


def _imputing(estimator):
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    return make_pipeline(SimpleImputer(strategy="median"), estimator)


def regression_cross_validate(cfg, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, threads: int = 1,
                              coverage: float = 0.9) -> tuple[dict[str, tuple], list[dict]]:
    """Held-out predictions of a grouped K-fold: the ensemble's ``(mean, lower, upper)``, each base
    learner alone, a plain random forest and the training mean (with an interval), on the same folds."""
    from joblib import delayed
    from sklearn.model_selection import GroupKFold

    from .progress import parallel_with_progress

    n_groups = np.unique(groups).size
    n_splits = min(cfg.model.cv_folds, n_groups)
    if n_splits < 2:
        raise ModelError(f"spatial cross-validation needs at least 2 groups, got {n_groups}: "
                         "lower model.cv_block_size or add samples")
    splits = list(GroupKFold(n_splits=n_splits, shuffle=True, random_state=cfg.model.random_state)
                  .split(X, y, groups))
    n_outer = max(1, min(int(threads), len(splits)))
    results = parallel_with_progress(
        (delayed(_regression_fold)(cfg, X, y, groups, k, tr, te, max(1, threads // n_outer), coverage)
         for k, (tr, te) in enumerate(splits)), n_jobs=n_outer, total=len(splits), desc="CV", unit="fold")
    held: dict[str, list[np.ndarray]] = {}
    per_fold = []
    for test, preds, info in results:
        per_fold.append(info)
        for name, triple in preds.items():
            slot = held.setdefault(name, [np.full(y.size, np.nan) for _ in range(3)])
            for arr, part in zip(slot, triple):
                if part is not None:
                    arr[test] = part
    out = {n: (a[0], a[1] if not np.isnan(a[1]).all() else None, a[2] if not np.isnan(a[2]).all() else None)
           for n, a in held.items()}
    return out, sorted(per_fold, key=lambda f: f["fold"])


def _train_regression(cfg, samples: Samples, class_field: str, table: _FeatureTable, rows: _TrainingRows,
                      out: Path, *, threads: int, warnings_: list[str], t_overlay: float) -> TrainResult:
    """``model.task: regression``: grouped CV scores against baselines, final EnsembleRegressor, bundle."""
    from .evaluation import regression_scores

    coverage = cfg.model.interval_coverage
    t0 = time.perf_counter()
    held, per_fold = regression_cross_validate(cfg, rows.X, rows.y, rows.groups, threads=threads, coverage=coverage)
    t_cv = time.perf_counter() - t0
    scores = {name: regression_scores(rows.y, *triple) for name, triple in held.items()}
    ens = scores["ensemble"]
    singles = {n: s for n, s in scores.items() if n not in ("ensemble", "training mean")}
    best = min(scores, key=lambda n: scores[n]["rmse"])
    report_warnings = list(warnings_)
    if best != "ensemble":
        report_warnings.append(f"the ensemble (RMSE {ens['rmse']:.4g}) is not the best model on the same folds: "
                               f"{best} has RMSE {scores[best]['rmse']:.4g}")
    if abs(ens["interval_coverage"] - coverage) > 0.05:
        report_warnings.append(f"the {coverage:.0%} intervals cover {ens['interval_coverage']:.1%} of held-out "
                               "pixels (more than 5 points off)")
    for w in report_warnings:
        log.warning("%s", w)
    t1 = time.perf_counter()
    model = _make_regressor(cfg, threads).fit(rows.X, rows.y, groups=rows.groups)
    t_fit = time.perf_counter() - t1
    kinds = sorted(set(rows.pixels.kind.tolist()))
    table_hash = hashlib.sha256(np.ascontiguousarray(rows.X).tobytes()
                                + np.ascontiguousarray(rows.y).tobytes()).hexdigest()
    importance = sorted(({"feature": n, "importance": float(v)}
                         for n, v in zip(table.names, model.feature_importances_)), key=lambda d: -d["importance"])
    report = {
        "run": cfg.name, "task": "regression",
        **{k: ens[k] for k in ("rmse", "mae", "r2", "ccc", "interval_coverage")},
        "interval_level": coverage,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "samples": {
            "file": samples.path.name, "sha256": samples.sha256, "target_field": class_field,
            "date_field": samples.date_field, "features": len(samples), "kinds": kinds,
            "years": sorted(set(rows.pixels.year.tolist())), "pixels_used": int(rows.y.size),
            "pixels_dropped_nan": rows.n_dropped, "training_table_sha256": table_hash,
            "target": {"min": float(rows.y.min()), "max": float(rows.y.max()), "mean": float(rows.y.mean()),
                       "std": float(rows.y.std()), "unit": cfg.model.target_unit},
            "observed_share_by_year": table.overlay_stats.get("observed_share_by_year"),
        },
        "cv": {"scheme": _cv_scheme(cfg, kinds),
               "block_size": table.block_size if "point" in kinds or cfg.model.cv_groups == "block" else None,
               "block_size_choice": table.block_choice, "folds": len(per_fold),
               "groups": int(np.unique(rows.groups).size), "per_fold": per_fold},
        "metrics": ens,
        "comparison": {"models": scores, "best": best, "best_single": min(singles, key=lambda n: singles[n]["rmse"]),
                       "rmse_ratio_to_plain_rf": ens["rmse"] / scores["plain rf"]["rmse"],
                       "rmse_ratio_to_mean": ens["rmse"] / scores["training mean"]["rmse"]},
        "warnings": report_warnings,
        "n_features": len(table.names),
        "feature_importance": importance,
        "model": {"kind": "EnsembleRegressor", "base_learners": list(model.learner_names_),
                  "n_estimators": cfg.model.n_estimators, "cv_folds": cfg.model.cv_folds,
                  "max_depth": cfg.model.max_depth, "learning_rate": cfg.model.learning_rate,
                  "nan_policy": cfg.model.nan_policy, "random_state": cfg.model.random_state,
                  "interval": model.interval, "interval_scale": model.interval_scale_,
                  "meta_weights": [float(w) for w in model.meta_learner_.coef_]},
        "features": {"season_size": cfg.inputs.periods.season_size, "indices": list(cfg.features.indices),
                     "statistics": list(cfg.features.statistics)},
        "overlay": {**table.overlay_stats, "reused_feature_table": table.reused},
        "timing_seconds": {"overlay": round(t_overlay, 3), "cross_validation": round(t_cv, 3),
                           "final_fit": round(t_fit, 3)},
        "threads": threads,
        "versions": package_versions(),
    }
    bundle = ModelBundle(
        model=model, feature_names=list(table.names), classes=[], class_names=[], colors=[],
        metadata={
            "run": cfg.name, "task": "regression", "interval_coverage": coverage, "target_unit": cfg.model.target_unit,
            "training_samples_sha256": samples.sha256, "training_table_sha256": table_hash,
            "samples_file": samples.path.name, "target_field": class_field,
            "season_size": cfg.inputs.periods.season_size, "indices": list(cfg.features.indices),
            "years": report["samples"]["years"], "cv": {k: v for k, v in report["cv"].items() if k != "per_fold"},
            "metrics": {k: ens[k] for k in ("rmse", "mae", "r2", "ccc", "interval_coverage")},
            "baseline": scores["training mean"], "model": report["model"],
        })
    out.mkdir(parents=True, exist_ok=True)
    plots = _regression_plots(rows.y, held["ensemble"], report, out)
    report["plots"] = plots
    write_text_atomic(out / "report.json", strict_json(report), fsync="file")
    write_text_atomic(out / "report.md", regression_report_markdown(report), fsync="file")
    save_bundle(bundle, out)
    log.info("trained a regression on %d pixels: RMSE %.4g, R² %.3f, %.0f%% interval coverage %.3f (spatial CV; "
             "plain RF RMSE %.4g, training mean %.4g) -> %s", rows.y.size, ens["rmse"], ens["r2"], coverage * 100,
             ens["interval_coverage"], scores["plain rf"]["rmse"], scores["training mean"]["rmse"], out)
    files = {"model": out / MODEL_FILE, "metadata": out / META_FILE, "report_json": out / "report.json",
             "report_md": out / "report.md", "features": table.path, **{k: out / v for k, v in plots.items()}}
    return TrainResult(bundle=bundle, report=report, out_dir=out, files=files)


def _regression_plots(y: np.ndarray, held: tuple, report: dict, folder: Path) -> dict[str, str]:
    """Held-out predicted vs observed (with the intervals) and feature importance as PNG."""
    mean, lower, upper = held
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot()
    order = np.argsort(y)[:: max(1, y.size // 2000)]
    ax.vlines(y[order], lower[order], upper[order], color="#cccccc", linewidth=0.5,
              label=f"{report['interval_level']:.0%} interval")
    ax.scatter(y[order], mean[order], s=4, color="#4c72b0", label="held-out prediction")
    lo, hi = float(min(y.min(), mean.min())), float(max(y.max(), mean.max()))
    ax.plot([lo, hi], [lo, hi], color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("observed")
    ax.set_ylabel("predicted (spatial CV)")
    m = report["metrics"]
    ax.set_title(f"RMSE {m['rmse']:.3g}, R² {m['r2']:.2f}, coverage {m['interval_coverage']:.1%}")
    ax.legend(loc="upper left", fontsize=8)
    _save_png(fig, folder / "predicted_vs_observed.png")
    return {"predicted_vs_observed": "predicted_vs_observed.png", "feature_importance": _importance_png(report, folder)}


def regression_report_markdown(report: dict) -> str:
    cv, cmp_ = report["cv"], report["comparison"]
    s = report["samples"]
    unit = f" {s['target']['unit']}" if s["target"].get("unit") else ""
    lines = [
        f"# Training report: {report['run']} (regression)", "",
        f"Samples: `{s['file']}` (target `{s['target_field']}`, sha256 `{s['sha256'][:16]}…`): {s['features']} "
        f"features → {s['pixels_used']} pixel samples ({s['pixels_dropped_nan']} dropped for unfilled gaps), years "
        f"{', '.join(map(str, s['years']))}; target {s['target']['min']:.4g}..{s['target']['max']:.4g}{unit}.", "",
        f"Scores from **{cv['scheme']}** cross-validation: {cv['folds']} folds over {cv['groups']} groups "
        f"(block size: {_block_text(cv)}); every figure comes from models that never saw the pixel's group. "
        f"Intervals: split-conformal, nominal {report['interval_level']:.0%}.", "",
        "| model | RMSE | MAE | R² | CCC | interval coverage | mean interval width |", "|---|---|---|---|---|---|---|",
    ]
    for name, sc in cmp_["models"].items():
        bold = "**" if name == cmp_["best"] else ""
        cov = f"{sc['interval_coverage']:.3f}" if "interval_coverage" in sc else "–"
        width = f"{sc['interval_mean_width']:.4g}" if "interval_mean_width" in sc else "–"
        lines.append(f"| {bold}{name}{bold} | {sc['rmse']:.4g} | {sc['mae']:.4g} | {sc['r2']:.3f} | {sc['ccc']:.3f} | "
                     f"{cov} | {width} |")
    lines += ["", f"RMSE of the ensemble / plain random forest: {cmp_['rmse_ratio_to_plain_rf']:.3f}; / training "
              f"mean: {cmp_['rmse_ratio_to_mean']:.3f}.", ""]
    lines += [f"**Warning:** {w}." for w in report["warnings"]]
    lines += ["", "![predicted vs observed](predicted_vs_observed.png)", "", "## Most important features", "",
              "| feature | importance |", "|---|---|"]
    lines += [f"| {d['feature']} | {d['importance']:.4f} |" for d in report["feature_importance"][:15]]
    lines += ["", "![feature importance](feature_importance.png)", "", "## Folds", "",
              "| fold | train | test | test groups | RMSE |", "|---|---|---|---|---|"]
    lines += [f"| {f['fold']} | {f['n_train']} | {f['n_test']} | {f['groups_test']} | {f['rmse']:.4g} |"
              for f in cv["per_fold"]]
    return "\n".join(lines) + "\n"
