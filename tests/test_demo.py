"""End to end: `ecocube demo` runs the whole flow and its outputs are right."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from quietrun import assert_quiet_demo

# the module fixture runs the whole demo twice (land cover, canopy cover): pytest's 600 s
# default is a hang guard, too short for it on a busy machine; the subprocess has its own
pytestmark = pytest.mark.timeout(2000)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "ecocube-demo"
    proc = subprocess.run(
        [sys.executable, "-m", "ecocube", "demo", "--out", str(out), "--workers", "2", "--no-progress"],
        capture_output=True, text=True, timeout=1800,  # two runs: land cover, then canopy cover
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc


def test_demo_prints_summary(demo_run):
    out, proc = demo_run
    assert "tiles:     6/6 done" in proc.stdout
    assert "catalog:" in proc.stdout and "accuracy:" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiles_done"] == summary["tiles"] == 6


def test_demo_accuracy_above_floor(demo_run):
    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    # five well-separated classes: spatial-CV accuracy and agreement with the true map
    assert summary["overall_accuracy"] > 0.85
    assert summary["truth_accuracy"] > 0.85
    report = json.loads((out / "model" / "report.json").read_text())
    # the accuracy recounted from the report's raw tallies, not copied from one of its figures:
    # the confusion matrix's diagonal over all held-out pixels, and the per-fold accuracies
    # weighted by fold size (every pixel is held out exactly once)
    cm = np.asarray(report["metrics"]["confusion_matrix"]["matrix"])
    assert cm.shape == (5, 5) and cm.sum() == report["samples"]["pixels_used"]
    recounted = np.trace(cm) / cm.sum()
    folds = report["cv"]["per_fold"]
    assert sum(f["n_test"] for f in folds) == cm.sum()
    by_fold = sum(f["overall_accuracy"] * f["n_test"] for f in folds) / cm.sum()
    assert by_fold == pytest.approx(recounted, abs=1e-12)
    assert summary["overall_accuracy"] == pytest.approx(recounted, abs=1e-12)
    assert report["overall_accuracy"] == pytest.approx(recounted, abs=1e-12)


def test_demo_tiles_have_status_and_outputs(demo_run):
    out, _ = demo_run
    store = out / "output"
    records = sorted((store / "status").glob("X*_Y*.json"))  # tile records, not campaign.json
    assert len(records) == 6
    for path in records:
        rec = json.loads(path.read_text())
        assert rec["state"] == "done"
        # a pixel is left unpredicted only where no gap-fill window holds a clear value
        assert rec["completeness"] > 0.99
    tile = records[0].stem
    with rasterio.open(store / "proba" / tile / "2020-01-01" / "proba.tif") as ds:
        assert ds.count == 5 and ds.dtypes[0] == "uint8"
        proba = ds.read()
        valid = proba[0] != ds.nodata
        sums = proba[:, valid].astype(int).sum(axis=0)
        assert np.all(np.abs(sums - 100) <= 5)  # probabilities in percent add up to ~100
    with rasterio.open(store / "class" / tile / "2020-01-01" / "class.tif") as ds:
        classes = ds.read(1)
        assert set(np.unique(classes)) <= {1, 2, 3, 4, 5}
    # the almost fully clouded winter of 2020 was gap-filled: no NaN-like nodata left, flags say how
    # (per-period layers: one stacked file per band, raster band i = the i-th period, named by it)
    with rasterio.open(store / "flags" / tile / "nir.tif") as ds:
        flags = ds.read(ds.descriptions.index("2020-01-01") + 1)
    assert (flags == 0).mean() < 0.3  # most values of that quarter were not observed
    assert (flags == 255).mean() < 0.01  # and nearly all were filled
    with rasterio.open(store / "composite" / tile / "nir.tif") as ds:
        nir = ds.read(ds.descriptions.index("2020-01-01") + 1)
        assert (nir == ds.nodata).mean() < 0.01


def test_demo_cogs_valid_and_catalog_validates(demo_run):
    from rio_cogeo.cogeo import cog_validate

    from ecocube.stac import validate_catalog

    out, _ = demo_run
    catalog = out / "output" / "catalog" / "catalog.json"
    assert catalog.exists() and (catalog.parent / "index.html").exists()
    cogs = sorted(catalog.parent.rglob("*.tif"))
    assert len(cogs) >= 3 * 3  # proba, class, uncertainty × 3 years at least
    for cog in cogs:
        assert cog_validate(str(cog))[0], cog
    assert validate_catalog(catalog) == []


def test_demo_maps_canopy_cover_with_intervals(demo_run):
    """The demo's continuous product: a regression run (tree canopy cover, %) with its own
    store and catalog; mean/lower/upper mosaics that follow the true cover and hold it."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from ecocube.stac import validate_catalog

    out, proc = demo_run
    assert "canopy:    6/6 tiles" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())["canopy"]
    report = json.loads((out / "model-canopy" / "report.json").read_text())
    assert report["task"] == "regression" and report["samples"]["target_field"] == "canopy"
    assert summary["rmse"] == report["rmse"] and summary["interval_coverage"] == report["interval_coverage"]
    # spatial-block CV: far better than predicting the mean, intervals near their 90 %
    assert report["r2"] > 0.8
    assert abs(report["interval_coverage"] - 0.9) <= 0.05
    records = sorted((out / "output-canopy" / "status").glob("X*_Y*.json"))  # tile records, not campaign.json
    assert len(records) == 6 and all(json.loads(p.read_text())["state"] == "done" for p in records)
    catalog = out / "output-canopy" / "catalog" / "catalog.json"
    assert validate_catalog(catalog) == []
    layers = {}
    for name in ("mean", "lower", "upper"):
        cogs = sorted(catalog.parent.glob(f"*/*-2019-01-01/{name}.tif"))
        assert len(cogs) == 1, (name, cogs)
        with rasterio.open(cogs[0]) as ds:
            assert ds.dtypes[0] == "float32" and ds.nodata == -9999.0
            layers[name] = ds.read(1)
            crs, transform, shape = ds.crs, ds.transform, (ds.height, ds.width)
    with rasterio.open(out / "truth_canopy.tif") as src, \
            WarpedVRT(src, crs=crs, transform=transform, width=shape[1], height=shape[0],
                      resampling=Resampling.nearest) as vrt:
        truth = vrt.read(1)
    ok = (layers["mean"] != -9999.0) & (truth != -9999.0)
    assert ok.mean() > 0.95
    lo, mean, up, t = layers["lower"][ok], layers["mean"][ok], layers["upper"][ok], truth[ok]
    assert (lo <= mean).all() and (mean <= up).all()
    assert np.corrcoef(mean, t)[0, 1] > 0.9
    inside = ((t >= lo) & (t <= up)).mean()
    assert inside == pytest.approx(summary["truth_interval_coverage"], abs=0.02)  # recounted on the mosaic
    # the promise holds on the map, not only on CV: 90 % ± 5 points of the mapped pixels
    assert abs(inside - 0.9) <= 0.05


def test_demo_inputs_are_written_without_gdal_warnings(tmp_path, caplog):
    """The demo's input COGs use creation options GDAL accepts: its messages reach `logging`
    (rasterio's loggers) and none is logged; the COGs are tiled as asked."""
    import logging

    from ecocube.demo import make_demo_inputs

    with caplog.at_level(logging.DEBUG, logger="rasterio"):
        spec = make_demo_inputs(tmp_path, tiles_x=2, tiles_y=1, tile_size=32, start_year=2019, end_year=2019,
                                n_samples=50)
    gdal = [r.getMessage() for r in caplog.records if r.name.startswith("rasterio") and r.levelno >= logging.WARNING]
    assert gdal == []
    tifs = sorted(tmp_path.rglob("*.tif"))
    assert tifs and spec.samples.exists()
    with rasterio.open(tifs[0]) as src:
        assert src.block_shapes[0] == (128, 128) or src.block_shapes[0] == (src.height, src.width)


def _points_in(path, src):
    """(row, col) in ``src``'s grid and properties of the points of a GeoJSON file (WGS84)."""
    from rasterio.warp import transform

    feats = json.loads(path.read_text())["features"]
    lon, lat = zip(*(f["geometry"]["coordinates"] for f in feats))
    xs, ys = transform("EPSG:4326", src.crs, lon, lat)
    rows, cols = rasterio.transform.rowcol(src.transform, xs, ys)
    return np.asarray(rows), np.asarray(cols), [f["properties"] for f in feats]


def _aoi_population(spec, src):
    """Mask of the source pixels whose centre lies in the demo's AOI (the mapped area)."""
    from rasterio.warp import transform

    ox, oy = spec.grid_origin
    ext = spec.tile_size * spec.pixel_size
    rows, cols = np.mgrid[0:src.height, 0:src.width]
    xs, ys = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel())
    gx, gy = (np.asarray(v) for v in transform(src.crs, "EPSG:3035", xs, ys))
    inside = (gx > ox) & (gx < ox + spec.tiles_x * ext) & (gy > oy - spec.tiles_y * ext) & (gy < oy)
    return inside.reshape(src.height, src.width)


def test_demo_canopy_samples_stand_for_the_map(tmp_path):
    """The canopy points are a sample of the mapped pixels: their land-cover shares and their
    share of class-edge pixels match the AOI's (split-conformal intervals hold their coverage
    only for pixels like the calibration rows; the land-cover points, 100 per class inside
    homogeneous 5x5 patches, held 92.3 % on CV and 84.9 % on the map), and their target is the
    true cover at the point, without noise of its own."""
    from scipy.ndimage import maximum_filter, minimum_filter

    from ecocube.demo import make_demo_inputs

    spec = make_demo_inputs(tmp_path, start_year=2019, end_year=2019)
    with rasterio.open(spec.truth) as src:
        lc = src.read(1)
        aoi = _aoi_population(spec, src)
        rows, cols, props = _points_in(spec.canopy_samples, src)
    with rasterio.open(spec.canopy) as src:
        cover = src.read(1)
    assert len(props) == 500 and aoi[rows, cols].all()
    edge = maximum_filter(lc, 5) != minimum_filter(lc, 5)
    # binomial sd of a share over 500 points is at most 0.022: 3 sd
    assert edge[rows, cols].mean() == pytest.approx(edge[aoi].mean(), abs=0.066)
    for code in range(1, 6):
        assert (lc[rows, cols] == code).mean() == pytest.approx((lc[aoi] == code).mean(), abs=0.066), code
    canopy = np.array([p["canopy"] for p in props])
    np.testing.assert_allclose(canopy, cover[rows, cols], atol=0.005 + 1e-6)


def test_demo_prints_no_warning(demo_run):
    _, proc = demo_run
    assert_quiet_demo(proc, steps=5)  # land cover, then the canopy run
