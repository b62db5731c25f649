"""The embedded demo: a small but realistic data cube, then the whole flow on it.

:func:`make_demo_inputs` writes, into a folder:

- quarterly composites (``inputs/{year}/Q{quarter}/{band}.tif``, uint16 COGs, scale
  0.0001, nodata 0) in UTM zone 32N, so that reading reprojects into the EPSG:3035
  tile grid just as a real campaign does;
- a cloud-probability layer per quarter (``cloud.tif``, 0–100) with spatially
  clustered clouds that are more frequent in winter, and one almost fully clouded
  quarter; the run configuration masks values above 50 %;
- a land-cover map with five classes whose seasonal spectral profiles differ
  (cropland, forest, grassland, water, built-up), stable over the years;
- labelled sample points (GeoJSON in WGS84, field ``lc``) drawn inside homogeneous
  patches, with a little label noise;
- a continuous variable, tree canopy cover in percent (``truth_canopy.tif``): a level per
  class (forest dense, built-up sparse, water none) that varies with the surface's
  brightness (denser canopy, darker red), plus noise the spectra do not tell; and its own
  reference points (``samples_canopy.geojson``, field ``canopy``): a simple random sample of
  the AOI's pixels, class edges included, so that they stand for the pixels of the map
  (the land-cover points, inside homogeneous patches and as many per class, do not).

:func:`run_demo` then writes ``run.yaml`` and calls exactly what a campaign calls:
``train_model`` → ``run_tiles`` (read → gap-fill → features → predict → write) →
``finalize`` (mosaic COGs → STAC → browser), for the land-cover classes and then, as a
second run (``run-canopy.yaml``, ``model.task: regression``, its own store and catalog
in ``output-canopy/``), for the canopy cover with its 90 % interval (``mean``, ``lower``,
``upper``). Nothing in the library depends on this module.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import write_text_atomic

log = logging.getLogger(__name__)

BANDS = ("blue", "green", "red", "nir")
SCALE = 0.0001

#: code, name, colour, red reflectance per quarter, NDVI per quarter
CLASSES = (
    (1, "cropland", "#e6c229", (0.12, 0.06, 0.04, 0.10), (0.20, 0.62, 0.80, 0.30)),
    (2, "forest", "#1b7837", (0.03, 0.03, 0.03, 0.03), (0.62, 0.80, 0.86, 0.70)),
    (3, "grassland", "#a6d96a", (0.07, 0.05, 0.05, 0.06), (0.45, 0.70, 0.58, 0.50)),
    (4, "water", "#2166ac", (0.03, 0.03, 0.035, 0.03), (-0.30, -0.25, -0.20, -0.30)),
    (5, "built-up", "#b2182b", (0.15, 0.16, 0.17, 0.15), (0.08, 0.14, 0.15, 0.10)),
)
#: tree canopy cover (%) per class code: the level, and its change per standard deviation of
#: the surface texture (brighter red: sparser canopy)
CANOPY = {1: (4.0, -2.0), 2: (78.0, -12.0), 3: (12.0, -5.0), 4: (0.0, 0.0), 5: (8.0, -4.0)}
#: share of cloud cover per quarter (winter is cloudier)
CLOUD_SHARE = (0.45, 0.25, 0.15, 0.35)


@dataclass(frozen=True)
class DemoSpec:
    """What the demo generator made, and the grid it fits."""

    root: Path
    grid_origin: tuple[float, float]
    pixel_size: float
    tile_size: int
    tiles_x: int
    tiles_y: int
    start_year: int
    end_year: int
    samples: Path
    truth: Path  # land-cover map in the source grid (GeoTIFF)
    canopy: Path | None = None  # tree canopy cover (%) in the source grid (GeoTIFF, float32)
    canopy_samples: Path | None = None  # points with the true ``canopy`` cover: a random sample of the AOI


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    f -= f.mean()
    f /= f.std() + 1e-12
    return f


def _land_cover(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Patchy classes: argmax of smooth random fields, with a river and a town."""
    fields = np.stack([_smooth_field(rng, shape, 9.0) for _ in CLASSES])
    fields[3] -= 1.2  # water is rarer
    fields[4] -= 0.9  # so is built-up
    codes = np.array([c[0] for c in CLASSES], dtype=np.uint8)
    lc = codes[np.argmax(fields, axis=0)]
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    river = np.abs(yy - (0.55 * h + 0.12 * h * np.sin(xx / w * 2 * np.pi))) < 2.5
    lc[river] = 4
    town = (yy - 0.3 * h) ** 2 + (xx - 0.7 * w) ** 2 < (0.08 * min(h, w)) ** 2
    lc[town] = 5
    return lc


def make_demo_inputs(
    root: str | Path,
    *,
    tiles_x: int = 3,
    tiles_y: int = 2,
    tile_size: int = 96,
    pixel_size: float = 30.0,
    start_year: int = 2019,
    end_year: int = 2021,
    n_samples: int = 500,
    seed: int = 0,
) -> DemoSpec:
    """Write the demo's input COGs, cloud layers, truth map and sample points under ``root``."""
    import rasterio
    from affine import Affine
    from rasterio.warp import transform, transform_bounds

    from .profiles import profile as raster_profile

    root = Path(root)
    rng = np.random.default_rng(seed)
    grid_crs, src_crs = "EPSG:3035", "EPSG:32632"
    origin = (4321000.0, 3210000.0)  # southern Germany in EPSG:3035
    extent_x, extent_y = tiles_x * tile_size * pixel_size, tiles_y * tile_size * pixel_size
    aoi = (origin[0], origin[1] - extent_y, origin[0] + extent_x, origin[1])
    # the source grid: UTM 32N at 30 m, covering the AOI with a margin of 4 pixels
    left, bottom, right, top = transform_bounds(grid_crs, src_crs, *aoi, densify_pts=21)
    m = 4 * pixel_size
    left, top = np.floor((left - m) / pixel_size) * pixel_size, np.ceil((top + m) / pixel_size) * pixel_size
    width = int(np.ceil((right + m - left) / pixel_size))
    height = int(np.ceil((top - (bottom - m)) / pixel_size))
    src_transform = Affine(pixel_size, 0, left, 0, -pixel_size, top)
    shape = (height, width)

    lc = _land_cover(rng, shape)
    texture = 1.0 + 0.08 * _smooth_field(rng, shape, 2.0)
    class_idx = {c[0]: i for i, c in enumerate(CLASSES)}
    idx = np.vectorize(class_idx.get)(lc)
    red_q = np.array([c[3] for c in CLASSES])  # (class, quarter)
    ndvi_q = np.array([c[4] for c in CLASSES])

    profile = raster_profile("demo-input", width=width, height=height, crs=src_crs, transform=src_transform)
    inputs = root / "inputs"
    n_years = end_year - start_year + 1
    for yi, year in enumerate(range(start_year, end_year + 1)):
        year_shift = 0.015 * rng.standard_normal(len(CLASSES))  # inter-annual variability per class
        for q in range(4):
            red = red_q[idx, q] * texture
            ndvi = np.clip(ndvi_q[idx, q] + year_shift[idx] + 0.04 * rng.standard_normal(shape), -0.6, 0.95)
            nir = red * (1 + ndvi) / (1 - ndvi)
            # vegetation has a green bump, built-up is bright in the blue
            veg = (ndvi > 0.3).astype(float)
            green = red * (0.95 + 0.35 * veg) + 0.01
            blue = red * (0.75 - 0.15 * veg) + 0.01 + 0.02 * (lc == 5)
            refl = {"blue": blue, "green": green, "red": red, "nir": nir}
            # clustered clouds; the winter quarter of the middle year is almost fully clouded
            share = 0.93 if (yi == n_years // 2 and q == 0) else CLOUD_SHARE[q]
            field = _smooth_field(rng, shape, 6.0)
            thresh = np.quantile(field, 1 - share)
            cloud_prob = np.clip(50 + 40 * (field - thresh), 0, 100).astype(np.uint8)
            cloudy = cloud_prob > 50
            folder = inputs / str(year) / f"Q{q + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            for band in BANDS:
                value = refl[band] * (1 + 0.02 * rng.standard_normal(shape))
                value = np.where(cloudy, 0.45 + 0.1 * rng.random(shape), value)
                dn = np.clip(np.round(value / SCALE), 1, 65535).astype(np.uint16)
                with rasterio.open(folder / f"{band}.tif", "w", count=1, dtype="uint16", nodata=0,
                                   **profile) as dst:
                    dst.write(dn, 1)
                    dst.set_band_description(1, band)
                    dst.scales = (SCALE,)
            with rasterio.open(folder / "cloud.tif", "w", count=1, dtype="uint8", **profile) as dst:
                dst.write(cloud_prob, 1)

    truth = root / "truth_landcover.tif"
    with rasterio.open(truth, "w", count=1, dtype="uint8", nodata=0, **profile) as dst:
        dst.write(lc, 1)
    # canopy cover from the class and the texture (red = class red x texture), plus a smooth
    # field the spectra do not show; its own generator, so the land-cover inputs stay as they were
    crng = np.random.default_rng(seed + 1)
    level = np.vectorize(lambda c: CANOPY[int(c)][0])(lc)
    slope = np.vectorize(lambda c: CANOPY[int(c)][1])(lc)
    hidden = 3.0 * _smooth_field(crng, shape, 4.0)
    cover = np.clip(level + slope * (texture - 1.0) / 0.08 + np.where(lc == 4, 0.0, hidden), 0.0, 100.0)
    canopy = root / "truth_canopy.tif"
    with rasterio.open(canopy, "w", count=1, dtype="float32", nodata=-9999.0,
                       **{k: v for k, v in profile.items() if k not in ("dtype", "nodata", "count", "predictor")}
                       ) as dst:
        dst.write(cover.astype(np.float32), 1)

    # sample points: pixel centres inside homogeneous 5×5 patches, inside the AOI
    from scipy.ndimage import maximum_filter, minimum_filter

    homogeneous = (maximum_filter(lc, 5) == minimum_filter(lc, 5))
    rows, cols = np.nonzero(homogeneous)
    xs, ys = rasterio.transform.xy(src_transform, rows, cols)
    gx, gy = transform(src_crs, grid_crs, xs, ys)
    gx, gy = np.asarray(gx), np.asarray(gy)
    inside = (gx > aoi[0] + 60) & (gx < aoi[2] - 60) & (gy > aoi[1] + 60) & (gy < aoi[3] - 60)
    cand = np.flatnonzero(inside)
    # stratified: at most n/len(classes) per class, so rare classes are represented
    chosen = []
    per_class = n_samples // len(CLASSES)
    for code, *_ in CLASSES:
        pool = cand[lc[rows[cand], cols[cand]] == code]
        chosen.extend(rng.choice(pool, size=min(per_class, pool.size), replace=False).tolist())
    chosen = np.array(sorted(chosen))
    labels = lc[rows[chosen], cols[chosen]].astype(int)
    noisy = rng.random(labels.size) < 0.03
    labels[noisy] = rng.choice([c[0] for c in CLASSES], size=int(noisy.sum()))
    lon, lat = transform(src_crs, "EPSG:4326", [xs[i] for i in chosen], [ys[i] for i in chosen])
    features = [
        {"type": "Feature", "properties": {"id": int(i), "lc": int(code)},
         "geometry": {"type": "Point", "coordinates": [round(x, 7), round(y, 7)]}}
        for i, (x, y, code) in enumerate(zip(lon, lat, labels))
    ]
    samples = root / "samples.geojson"
    write_text_atomic(samples, json.dumps({"type": "FeatureCollection", "features": features}))

    # canopy reference points: a simple random sample of the source pixels whose centre lies in
    # the AOI. Split-conformal intervals hold their coverage for pixels exchangeable with the
    # calibration rows; the land-cover points (homogeneous 5x5 patches, as many per class) are
    # not a sample of the map: with them the 90 % intervals held 92.3 % on spatial CV but 84.9 %
    # of the mapped pixels (79.9 % of those on class edges, a third of the map)
    all_rows, all_cols = np.mgrid[0:height, 0:width]
    pxs, pys = rasterio.transform.xy(src_transform, all_rows.ravel(), all_cols.ravel())
    pgx, pgy = (np.asarray(v) for v in transform(src_crs, grid_crs, pxs, pys))
    in_aoi = np.flatnonzero((pgx > aoi[0]) & (pgx < aoi[2]) & (pgy > aoi[1]) & (pgy < aoi[3]))
    picked = np.sort(crng.choice(in_aoi, size=min(n_samples, in_aoi.size), replace=False))
    r_pick, c_pick = all_rows.ravel()[picked], all_cols.ravel()[picked]
    lon, lat = transform(src_crs, "EPSG:4326", [pxs[i] for i in picked], [pys[i] for i in picked])
    features = [
        {"type": "Feature", "properties": {"id": int(i), "canopy": round(float(c), 2)},
         "geometry": {"type": "Point", "coordinates": [round(x, 7), round(y, 7)]}}
        for i, (x, y, c) in enumerate(zip(lon, lat, cover[r_pick, c_pick]))
    ]
    canopy_samples = root / "samples_canopy.geojson"
    write_text_atomic(canopy_samples, json.dumps({"type": "FeatureCollection", "features": features}))

    return DemoSpec(root=root, grid_origin=origin, pixel_size=pixel_size, tile_size=tile_size,
                    tiles_x=tiles_x, tiles_y=tiles_y, start_year=start_year, end_year=end_year,
                    samples=samples, truth=truth, canopy=canopy, canopy_samples=canopy_samples)


def demo_config_dict(spec: DemoSpec) -> dict:
    """The run configuration of the demo, as plain data (written to ``run.yaml``)."""
    ox, oy = spec.grid_origin
    ext = spec.tile_size * spec.pixel_size
    return {
        "name": "ecocube-demo",
        "grid": {"crs": "EPSG:3035", "origin": [ox, oy], "pixel_size": spec.pixel_size,
                 "tile_size": spec.tile_size},
        "aoi": {"bbox": [ox, oy - spec.tiles_y * ext, ox + spec.tiles_x * ext, oy]},
        "inputs": {
            "periods": {"start_year": spec.start_year, "end_year": spec.end_year, "season_size": 4},
            "on_missing": "fail",
            "sources": [{
                "name": "demo",
                "kind": "composite",
                "href": "inputs/{year}/Q{quarter}/{band}.tif",
                "bands": list(BANDS),
                "scale": SCALE,
                "nodata": 0,
                "resampling": "bilinear",
                "mask": {"href": "inputs/{year}/Q{quarter}/cloud.tif", "kind": "threshold",
                         "threshold": 50},
            }],
        },
        "gapfill": {"method": "tmwm", "h_same": 2, "h_neib": 1, "h_annual": 3},
        "features": {"indices": ["ndvi"]},
        "model": {
            "path": "model",
            "classes": [{"code": c[0], "name": c[1], "color": c[2]} for c in CLASSES],
            "base_learners": ["rf", "lgbm"],
            "n_estimators": 60,
            "cv_folds": 5,
            "cv_block_size": 900.0,
        },
        "processing": {"block_size": 64},
        "output": {"store": "output"},
        "finalize": {"stac": {"catalog_id": "ecocube-demo", "title": "ecocube demo: land cover 2019–2021"}},
    }


def canopy_config_dict(spec: DemoSpec) -> dict:
    """The demo's second run: tree canopy cover (%) as a regression with 90 % intervals, on the
    same inputs, into its own store (``output-canopy``) and catalog."""
    data = demo_config_dict(spec)
    data["name"] = "ecocube-demo-canopy"
    model = data["model"]
    # the random forest alone: on the canopy points (a random sample of the AOI) it scored RMSE
    # 6.93 % on the spatial folds against LightGBM's 7.45 % and the stacked rf + lgbm's 7.39 %
    # (`ecocube train` rightly warns when the ensemble is not the best model); its tree spread
    # also makes the intervals wider where the trees disagree (LightGBM alone gets a constant width)
    data["model"] = {"task": "regression", "path": "model-canopy", "base_learners": ["rf"],
                     "n_estimators": model["n_estimators"], "cv_folds": model["cv_folds"],
                     "cv_block_size": model["cv_block_size"], "interval_coverage": 0.9, "target_unit": "%"}
    data["output"] = {"store": "output-canopy"}
    data["finalize"]["stac"] = {"catalog_id": "ecocube-demo-canopy",
                                "title": "ecocube demo: tree canopy cover 2019–2021 (%, 90 % intervals)"}
    return data


def chip_config_dict(spec: DemoSpec) -> dict:
    """The demo's run configuration in chip mode (``model.kind: chip``, an ONNX model)."""
    data = demo_config_dict(spec)
    data["name"] = "ecocube-demo-chip"
    model = data["model"]
    data["model"] = {"path": model["path"], "classes": model["classes"], "kind": "chip",
                     "chip": {"size": 64, "overlap": 4, "stitch": "crop"}}
    data["finalize"]["stac"] = {"catalog_id": "ecocube-demo-chip",
                                "title": "ecocube demo, chip model: land cover 2019–2021"}
    return data


def train_chip_model(cfg, samples_path: Path, class_field: str, *, threads: int = 1, smooth: int = 1) -> dict:
    """The demo's chip model: a multinomial logistic regression on the sample pixels'
    normalised features, written as an ONNX chip model (1×1 convolution, a 3×3 mean of the
    logits, softmax; :func:`ecocube.chipmodel.linear_chip_onnx`) with its normalisation.
    A fifth of the CV groups (spatial blocks) is held out for the accuracy it reports."""
    from sklearn.linear_model import LogisticRegression

    from .chipmodel import linear_chip_onnx, save_chip_bundle
    from .grid import TileGrid
    from .train import extract_features, load_samples, resolve_block_size, sample_pixels

    grid = TileGrid.from_config(cfg.grid)
    samples = load_samples(samples_path, class_field, periods_cfg=cfg.inputs.periods)
    years = list(range(cfg.inputs.periods.start_year, cfg.inputs.periods.end_year + 1))
    block, _ = resolve_block_size(cfg, samples, grid)
    pixels = sample_pixels(samples, grid, years=years, max_pixels_per_polygon=cfg.model.max_pixels_per_polygon,
                           cv_block_size=block, cv_groups=cfg.model.cv_groups, random_state=cfg.model.random_state)
    X, names, _ = extract_features(cfg, pixels, threads=threads)
    keep = np.isfinite(X).all(axis=1)
    X, y, groups = X[keep], np.asarray(pixels.cls)[keep], np.asarray(pixels.group)[keep]
    mean, std = X.mean(axis=0), X.std(axis=0) + 1e-6
    Z = (X - mean) / std
    rng = np.random.default_rng(cfg.model.random_state)
    unique = np.unique(groups)
    held = np.isin(groups, rng.choice(unique, max(1, unique.size // 5), replace=False))
    codes = [c.code for c in cfg.model.classes]
    holdout = LogisticRegression(max_iter=2000, C=1.0).fit(Z[~held], y[~held])
    accuracy = float((holdout.predict(Z[held]) == y[held]).mean()) if held.any() else None
    final = LogisticRegression(max_iter=2000, C=1.0).fit(Z, y)
    order = [list(final.classes_).index(c) for c in codes]  # every class must be sampled
    save_chip_bundle(cfg.model.path, linear_chip_onnx(final.coef_[order], final.intercept_[order], smooth=smooth),
                     feature_names=names, classes=codes, class_names=[c.name for c in cfg.model.classes],
                     mean=mean, std=std, receptive_radius=smooth)
    return {"overall_accuracy": accuracy, "pixels": int(y.size), "held_out": int(held.sum())}


def run_demo(out: str | Path = "ecocube-demo", *, workers: int = 2, overwrite: bool = False,
             progress: bool | None = None, echo=print, chip: bool = False) -> dict:
    """Make the demo inputs under ``out`` and run the whole flow on them; returns a summary.

    ``chip``: predict with an ONNX chip model (``model.kind: chip``) instead of the ensemble."""
    import yaml

    from .config import load_config
    from .errors import FileOverwriteError
    from .grid import TileGrid

    out = Path(out)
    run_yaml = out / "run.yaml"
    if run_yaml.exists() and not overwrite:
        raise FileOverwriteError(f"{out} already holds a demo; use --overwrite to make it anew")
    if overwrite and out.exists():
        import shutil

        for sub in ("inputs", "output", "model"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    echo(f"[1/{4 if chip else 5}] making the demo cube in {out}/inputs ...")
    spec = make_demo_inputs(out)
    write_text_atomic(run_yaml, yaml.safe_dump((chip_config_dict if chip else demo_config_dict)(spec),
                                               sort_keys=False))
    cfg = load_config(run_yaml)
    timings["inputs"] = time.perf_counter() - t0

    from .train import train_model

    t0 = time.perf_counter()
    if chip:
        echo(f"[2/{4 if chip else 5}] fitting the chip model (logistic regression as 1x1 + 3x3 convolutions, ONNX) ...")
        report = train_chip_model(cfg, spec.samples, "lc", threads=workers)
        model_dir = Path(cfg.model.path)
    else:
        echo("[2/5] training the ensemble (random forest + LightGBM, their probabilities averaged) with spatial CV ...")
        result = train_model(cfg, spec.samples, "lc", threads=workers)
        report, model_dir = result.report, result.out_dir
    timings["train"] = time.perf_counter() - t0

    from .tile import run_tiles

    t0 = time.perf_counter()
    grid = TileGrid.from_config(cfg.grid)
    tiles = grid.tiles_for_aoi(cfg.aoi)
    echo(f"[3/{4 if chip else 5}] processing {len(tiles)} tiles with {workers} workers ...")
    records = run_tiles(cfg, tiles, workers=workers, overwrite=overwrite, progress=progress)
    timings["tiles"] = time.perf_counter() - t0

    from .finalize import finalize

    steps = 4 if chip else 5
    t0 = time.perf_counter()
    echo(f"[4/{steps}] finalizing: COG mosaics, STAC catalog, browser ...")
    fin = finalize(cfg, overwrite=overwrite)
    timings["finalize"] = time.perf_counter() - t0

    canopy = None
    if not chip:
        t0 = time.perf_counter()
        echo(f"[5/{steps}] the continuous product: tree canopy cover (%) with 90 % intervals "
             "(regression, its own run: run-canopy.yaml) ...")
        canopy = _run_canopy(out, spec, tiles, workers=workers, overwrite=overwrite, progress=progress)
        timings["canopy"] = time.perf_counter() - t0

    summary = {
        "tiles": len(tiles),
        "tiles_done": sum(1 for r in records if r.get("state") == "done"),
        "overall_accuracy": report.get("overall_accuracy"),
        "f1_weighted": report.get("f1_weighted"),
        "catalog": str(_catalog_path(fin, cfg)),
        "model": str(model_dir),
        "model_kind": cfg.model.kind,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    summary["truth_accuracy"] = _truth_accuracy(cfg, spec)
    if canopy is not None:
        summary["canopy"] = canopy
    echo("")
    echo(f"tiles:     {summary['tiles_done']}/{summary['tiles']} done")
    oa, f1 = summary["overall_accuracy"], summary["f1_weighted"]
    if oa is not None and f1 is not None:
        echo(f"accuracy:  {oa:.3f} overall, {f1:.3f} weighted F1 (spatial-block CV)")
    elif oa is not None:
        echo(f"accuracy:  {oa:.3f} overall on held-out spatial blocks")
    if chip:
        chips = [r.get("chips") or {} for r in records]
        summary["chips"] = {k: sum(int(c.get(k, 0)) for c in chips) for k in ("total", "targeted", "predicted")}
        echo(f"chips:     {summary['chips']['predicted']}/{summary['chips']['targeted']} targeted chips predicted")
    if summary["truth_accuracy"] is not None:
        echo(f"map check: {summary['truth_accuracy']:.3f} of pixels agree with the demo's true land cover")
    if canopy is not None:
        echo(f"canopy:    {canopy['tiles_done']}/{canopy['tiles']} tiles; RMSE {canopy['rmse']:.2f} %, R² "
             f"{canopy['r2']:.2f}, 90 % intervals cover {canopy['interval_coverage']:.1%} (spatial-block CV); "
             f"map check: {canopy['truth_interval_coverage']:.1%} of pixels' true cover inside the interval")
    echo(f"model:     {summary['model']}")
    echo(f"catalog:   {summary['catalog']}")
    if canopy is not None:
        echo(f"canopy:    {canopy['catalog']}")
    echo(f"browse:    ecocube browse {Path(summary['catalog']).parent}")
    echo(f"time:      {sum(timings.values()):.0f} s ("
         + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def _run_canopy(out: Path, spec: DemoSpec, tiles, *, workers: int, overwrite: bool, progress: bool) -> dict:
    """The regression run of the demo (canopy cover): train, tiles, finalize; its figures."""
    import yaml

    from .config import load_config
    from .finalize import finalize
    from .tile import run_tiles
    from .train import train_model

    run_yaml = out / "run-canopy.yaml"
    write_text_atomic(run_yaml, yaml.safe_dump(canopy_config_dict(spec), sort_keys=False))
    cfg = load_config(run_yaml)
    result = train_model(cfg, spec.canopy_samples, "canopy", threads=workers, overwrite=overwrite)
    records = run_tiles(cfg, tiles, workers=workers, overwrite=overwrite, progress=progress)
    fin = finalize(cfg, overwrite=overwrite)
    scores = result.report
    return {"tiles": len(tiles), "tiles_done": sum(1 for r in records if r.get("state") == "done"),
            "rmse": scores["rmse"], "r2": scores["r2"], "interval_coverage": scores["interval_coverage"],
            "truth_interval_coverage": _truth_canopy_coverage(cfg, spec), "model": str(result.out_dir),
            "catalog": str(_catalog_path(fin, cfg))}


def _first_year_against_truth(cfg, spec: DemoSpec, truth_path, names: tuple[str, ...]):
    """Per tile of the run: ``({name: (array, nodata)}, truth)`` of the first year's outputs
    ``names`` and the truth raster reprojected (nearest) to the tile; ``None`` (instead of
    the list) when an output is missing."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from .grid import TileGrid
    from .tile import output_key, year_period

    grid = TileGrid.from_config(cfg.grid)
    store = Path(cfg.output.store)
    out = []
    with rasterio.open(truth_path) as src:
        for tile in grid.tiles_for_aoi(cfg.aoi):
            arrays = {}
            for name in names:
                path = store.joinpath(*output_key(name, tile.id, year_period(spec.start_year), name).split("/"))
                if not path.exists():
                    return None
                with rasterio.open(path) as ds:
                    arrays[name] = (ds.read(1), ds.nodata)
            with WarpedVRT(src, crs=cfg.grid.crs, transform=tile.transform, width=tile.width,
                           height=tile.height, resampling=Resampling.nearest) as vrt:
                out.append((arrays, vrt.read(1)))
    return out


def _truth_canopy_coverage(cfg, spec: DemoSpec) -> float | None:
    """Share of mapped pixels of the first year whose true canopy cover lies in ``lower..upper``."""
    tiles = _first_year_against_truth(cfg, spec, spec.canopy, ("lower", "upper"))
    if tiles is None:
        return None
    inside = total = 0
    for arrays, truth in tiles:
        (lo, nd), (up, _) = arrays["lower"], arrays["upper"]
        ok = (truth != -9999.0) & (lo != nd) & (up != nd)
        inside += int(((truth[ok] >= lo[ok]) & (truth[ok] <= up[ok])).sum())
        total += int(ok.sum())
    return inside / total if total else None


def _catalog_path(fin, cfg) -> Path:
    if isinstance(fin, dict) and fin.get("catalog"):
        return Path(fin["catalog"])
    if isinstance(fin, (str, Path)):
        return Path(fin)
    return Path(cfg.output.store) / "catalog" / "catalog.json"


def _truth_accuracy(cfg, spec: DemoSpec) -> float | None:
    """Share of mapped pixels of the first year whose class equals the (reprojected) truth."""
    tiles = _first_year_against_truth(cfg, spec, spec.truth, ("class",))
    if tiles is None:
        return None
    agree = total = 0
    for arrays, truth in tiles:
        pred, nodata = arrays["class"]
        ok = (truth > 0) & (pred != nodata)
        agree += int((pred[ok] == truth[ok]).sum())
        total += int(ok.sum())
    return agree / total if total else None
