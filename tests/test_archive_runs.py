"""From an archive to a run: the real Sentinel-2 series configured without hand-listed dates.

Each run trains on the 40 labelled parcels and predicts the patch, through the CLI, as a
user would: scenes found by a glob, scenes searched in a STAC API served on 127.0.0.1,
and a run with a DEM covariate.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner

from ecocube.cli import cli

pytestmark = pytest.mark.slow

BANDS = ["B02", "B03", "B04", "B08"]
BBOX = [574680.0, 5621800.0, 575320.0, 5622440.0]


@pytest.fixture(scope="module")
def belgium(tmp_path_factory, data_dir) -> Path:
    dst = tmp_path_factory.mktemp("archive") / "worldcereal-be-2019"
    shutil.copytree(data_dir / "worldcereal-be-2019", dst)
    return dst


def run_config(folder: Path, source: dict, **extra) -> dict:
    cfg = {
        "name": "be-archive",
        "grid": {"crs": "EPSG:32631", "origin": [574680.0, 5622440.0], "pixel_size": 10.0, "tile_size": 32},
        "aoi": {"bbox": BBOX},
        "inputs": {"periods": {"start_year": 2019, "end_year": 2019, "season_size": 4, "year_start": "10-01"},
                   "sources": [source]},
        "gapfill": {"h_same": 0, "h_neib": 0, "h_annual": 2},
        "features": {"indices": ["ndvi"], "statistics": []},  # per-period values: the layout checked here
        "model": {"path": "model", "classes": [{"code": 11, "name": "cropland"}, {"code": 13, "name": "grassland"},
                                               {"code": 99, "name": "other"}],
                  "n_estimators": 20, "cv_folds": 4, "max_pixels_per_polygon": 30, "base_learners": ["rf"]},
        "processing": {"threads": 2},
        "output": {"store": "out", "layers": ["class", "composite"]},
    }
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def train_and_predict(folder: Path, cfg: dict, run_dir: Path) -> dict:
    """``ecocube train`` then ``ecocube run`` over every tile; returns facts to check."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run_yaml = run_dir / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(cfg, sort_keys=False))
    runner = CliRunner()
    out = runner.invoke(cli, ["train", str(run_yaml), "--samples", str(folder / "labels_polygons.gpkg"),
                              "--class-field", "LC", "--year", "2019"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli, ["config", "check", str(run_yaml)])  # the pre-flight: inputs, model, store
    assert out.exit_code == 0, out.output
    meta = json.loads((run_dir / "model" / "model.json").read_text())
    out = runner.invoke(cli, ["run", str(run_yaml), "--no-progress"])
    assert out.exit_code == 0, out.output
    store = run_dir / "out"
    tiles = sorted(p.name for p in (store / "class").iterdir())
    assert tiles == ["X0000_Y0000", "X0000_Y0001", "X0001_Y0000", "X0001_Y0001"]
    # the agricultural year 2019 starts 2018-10-01: its outputs are named by that day
    classes = np.zeros((64, 64), np.uint16)
    for t in tiles:
        assert sorted(p.name for p in (store / "class" / t).iterdir()) == ["2018-10-01"]
        with rasterio.open(store / "class" / t / "2018-10-01" / "class.tif") as src:
            c0 = (src.bounds.left - BBOX[0]) / 10
            r0 = (BBOX[3] - src.bounds.top) / 10
            classes[int(r0):int(r0) + 32, int(c0):int(c0) + 32] = src.read(1)
        composites = sorted(p.name for p in (store / "composite" / t).iterdir())
        assert composites == [f"{b}.tif" for b in sorted(BANDS)]  # one stacked file per band
        with rasterio.open(store / "composite" / t / composites[0]) as src:
            assert src.descriptions == ("2018-10-01", "2019-01-01", "2019-04-01", "2019-07-01")
    with rasterio.open(folder / "labels_LC_CT_10m.tif") as src:
        labels = src.read(1)
    labelled = labels > 0
    agree = float((classes[labelled] == labels[labelled]).mean())
    return {"meta": meta, "classes": classes, "agreement": agree, "store": store}


def s2_glob_source(folder: Path) -> dict:
    return {"name": "s2", "kind": "acquisitions", "glob": str(folder / "S2L2A_*_10m.tif"),
            "date_pattern": "S2L2A_{yyyymmdd}_10m.tif", "bands": BANDS,
            "band_indexes": {b: i for i, b in enumerate(BANDS, 1)}, "scale": 0.0001, "nodata": 0,
            "resampling": "nearest",
            "mask": {"href": str(folder / "S2L2A_{yyyymmdd}_SCL.tif"), "kind": "classes", "values": [3, 8, 9, 10]}}


@pytest.fixture(scope="module")
def glob_run(belgium, tmp_path_factory) -> dict:
    return train_and_predict(belgium, run_config(belgium, s2_glob_source(belgium)),
                             tmp_path_factory.mktemp("glob-run"))


def test_glob_run_trains_and_predicts(glob_run):
    res = glob_run
    names = res["meta"]["feature_names"]
    assert names[:4] == ["B02_s1", "B02_s2", "B02_s3", "B02_s4"] and names[-1] == "ndvi_s4" and len(names) == 20
    assert set(np.unique(res["classes"])) <= {11, 13, 99}
    # the majority class covers 56 % of the labelled pixels; predictions on the training
    # parcels agree far more often
    assert res["agreement"] > 0.8


# ---------------------------------------------------------------------- STAC API


def _patch_geometry() -> dict:
    from rasterio.warp import transform_geom

    x0, y0, x1, y1 = BBOX
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return transform_geom("EPSG:32631", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})


def stac_items(folder: Path, base_url: str) -> tuple[dict, list[dict]]:
    """A collection and one item per real scene: assets on nginx, eo:cloud_cover from the
    scene statistics that ship with the data (cloud or shadow share of the patch)."""
    import csv

    import shapely

    geom = _patch_geometry()
    bbox = list(shapely.geometry.shape(geom).bounds)
    collection = {
        "type": "Collection", "stac_version": "1.0.0", "id": "sentinel-2-l2a", "description": "test scenes",
        "license": "proprietary", "links": [],
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [["2018-08-01T00:00:00Z", None]]}},
    }
    items = []
    with open(folder / "scene_cloud_stats.csv") as fh:
        for row in csv.DictReader(fh):
            ymd = row["date"].replace("-", "")
            items.append({
                "type": "Feature", "stac_version": "1.0.0", "id": f"S2_{ymd}", "collection": "sentinel-2-l2a",
                "geometry": geom, "bbox": bbox, "links": [],
                "properties": {"datetime": row["datetime_utc"],
                               "eo:cloud_cover": round(100 * float(row["frac_cloud_or_shadow_SCL_3_8_9_10"]), 1)},
                "assets": {
                    "reflectance": {"href": f"{base_url}/S2L2A_{ymd}_10m.tif",
                                    "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                                    "roles": ["data"]},
                    "scl": {"href": f"{base_url}/S2L2A_{ymd}_SCL.tif", "type": "image/tiff; application=geotiff",
                            "roles": ["data"]},
                    "metadata": {"href": f"{base_url}/timestamps.json", "type": "application/json",
                                 "roles": ["metadata"]},
                },
            })
    return collection, items


@pytest.fixture(scope="module")
def stac_api(belgium):
    from servers import Nginx, PgStacApi

    with Nginx(belgium) as http:
        collection, items = stac_items(belgium, http.url)
        with PgStacApi([collection], items) as api:
            api.http = http
            yield api


def s2_stac_source(api_url: str, **stac) -> dict:
    return {"name": "s2", "kind": "stac-api",
            "stac_api": {"url": api_url, "collections": ["sentinel-2-l2a"], "limit": 4, **stac},
            "bands": BANDS, "assets": {b: "reflectance" for b in BANDS},
            "band_indexes": {b: i for i, b in enumerate(BANDS, 1)}, "scale": 0.0001, "nodata": 0,
            "resampling": "nearest", "mask": {"asset": "scl", "kind": "classes", "values": [3, 8, 9, 10]}}


def test_stac_api_run_over_http_equals_the_glob_run(belgium, stac_api, glob_run, tmp_path):
    """Search (4 items a page) -> read COGs by HTTP ranges -> gap-fill -> train -> predict."""
    served_before = stac_api.http.access_log.read_text().count("_10m.tif")
    cfg = run_config(belgium, s2_stac_source(stac_api.url, query=["eo:cloud_cover<=100"]))
    res = train_and_predict(belgium, cfg, tmp_path / "stac")
    assert stac_api.http.access_log.read_text().count("_10m.tif") > served_before  # read over HTTP
    assert res["meta"]["feature_names"] == glob_run["meta"]["feature_names"]
    # the same scenes, the same cube: the same model and the same map
    np.testing.assert_array_equal(res["classes"], glob_run["classes"])
    assert res["meta"]["metrics"] == glob_run["meta"]["metrics"]
    # the search results of each tile are in the store: the tile jobs did not search again
    cached = sorted((res["store"] / "scenes").glob("*/s2.json"))
    assert [p.parent.name for p in cached] == ["X0000_Y0000", "X0000_Y0001", "X0001_Y0000", "X0001_Y0001"]
    doc = json.loads(cached[0].read_text())
    assert doc["search"]["url"] == stac_api.url and len(doc["items"]) == 54  # scenes of 2018-10..2019-09


def test_scenes_command_shows_the_query_and_the_selection(belgium, stac_api, tmp_path):
    import csv

    with open(belgium / "scene_cloud_stats.csv") as fh:
        clouds = {r["date"]: round(100 * float(r["frac_cloud_or_shadow_SCL_3_8_9_10"]), 1) for r in csv.DictReader(fh)}
    src = s2_stac_source(stac_api.url, query=["eo:cloud_cover<60"])
    src["scenes"] = {"select": "least-cloudy", "n": 2, "cloud_from": "item"}
    cfg = run_config(belgium, src)
    cfg["output"]["store"] = str(tmp_path / "out")
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    out = runner.invoke(cli, ["scenes", str(run_yaml), "--tile", "X0000_Y0000", "--json"])
    assert out.exit_code == 0, out.output
    rep = json.loads(out.output)
    (src_rep,) = rep["sources"]
    assert src_rep["from"] == "api"
    periods = {p["period"]: p for p in src_rep["periods"]}
    assert list(periods) == ["2018-10-01", "2019-01-01", "2019-04-01", "2019-07-01"]
    for p in src_rep["periods"]:
        end = {"2018-10-01": "2019-01-01", "2019-01-01": "2019-04-01", "2019-04-01": "2019-07-01",
               "2019-07-01": "2019-10-01"}[p["period"]]
        expected = sorted(d for d, c in clouds.items() if p["period"] <= d < end and c < 60)
        assert [s["date"] for s in p["scenes"]] == expected  # the API applied the query
        assert all(s["cloud"] == clouds[s["date"]] for s in p["scenes"])
        kept = [s for s in p["scenes"] if s["kept"]]
        least = sorted(expected, key=lambda d: (clouds[d], d))[:2]
        assert sorted(s["date"] for s in kept) == sorted(least)
        assert all(s["reason"].startswith("kept: ") and "least cloudy" in s["reason"] for s in kept)
    # another process (an array task) reads the store's cache instead of the API
    from ecocube import scenes

    scenes._TILE_MEMO.clear()
    scenes._MEMO.clear()
    again = runner.invoke(cli, ["scenes", str(run_yaml), "--tile", "X0000_Y0000"])
    assert again.exit_code == 0, again.output
    lines = again.output.splitlines()
    assert lines[0] == "tile X0000_Y0000 source s2 (stac-api, from store): 32 scenes, 8 kept (least-cloudy n=2, " \
                       "cloud from item)"
    n_q1 = sum(1 for d, c in clouds.items() if "2018-10-01" <= d < "2019-01-01" and c < 60)
    assert lines[1] == f"  2018-10-01 (year 2019 season 1): {n_q1} scenes, 2 kept"
    assert any(line.startswith("    + 2018-") and "kept: 1. least cloudy" in line for line in lines[2:10])


def test_stac_api_errors_name_the_url_item_and_asset(belgium, stac_api, tmp_path):
    from servers import free_port

    def check(src: dict, *patterns: str) -> None:
        cfg = run_config(belgium, src)
        cfg["output"]["store"] = str(tmp_path / "out")
        run_yaml = tmp_path / "run.yaml"
        run_yaml.write_text(yaml.safe_dump(cfg))
        out = CliRunner().invoke(cli, ["scenes", str(run_yaml), "--tile", "X0000_Y0000", "--refresh"])
        assert out.exit_code != 0
        text = str(out.exception) if out.exception else out.output
        for pat in patterns:
            assert pat in text, text

    dead = f"http://127.0.0.1:{free_port()}"
    check(s2_stac_source(dead), f"STAC API {dead}: opening the landing page failed")
    check(s2_stac_source(stac_api.url, collections=["landsat"]),
          f"{stac_api.url} has no collection 'landsat'; it has sentinel-2-l2a")
    nomask = s2_stac_source(stac_api.url)
    nomask["mask"]["asset"] = "cloud_mask"
    check(nomask, "STAC item 'S2_2018", f"({stac_api.url}) has no asset 'cloud_mask'", "'reflectance', 'scl'")
    notraster = s2_stac_source(stac_api.url)
    notraster["assets"]["B02"] = "metadata"
    check(notraster, "asset 'metadata' of STAC item", "is 'application/json', not a raster")
    # config check knows an unreachable API before any job starts: exit 2
    import subprocess
    import sys

    cfg = run_config(belgium, s2_stac_source(dead))
    run_yaml = tmp_path / "dead.yaml"
    run_yaml.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "ecocube", "config", "check", str(run_yaml)], check=False,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and f"STAC API {dead}" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------- covariates


def write_ramp_dem(path: Path, *, shift_m: float = 0.0) -> Path:
    """A DEM in EPSG:3035 (20 m) over the patch whose elevation is 20 m + 5 % of the UTM
    easting from the patch's west edge: a plane in the tile grid, slope atan(0.05)."""
    from rasterio.transform import from_origin
    from rasterio.warp import transform as warp_xy
    from rasterio.warp import transform_bounds

    w, s, e, n = transform_bounds("EPSG:32631", "EPSG:3035", *BBOX)
    w, s, e, n = w - 200 + shift_m, s - 200, e + 200 + shift_m, n + 200
    res = 20.0
    width, height = int((e - w) / res) + 1, int((n - s) / res) + 1
    transform = from_origin(w, n, res, res)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xs, ys = transform * (cols.ravel(), rows.ravel())
    ux, _ = warp_xy("EPSG:3035", "EPSG:32631", xs, ys)
    dem = (20.0 + 0.05 * (np.asarray(ux) - BBOX[0])).reshape(height, width).astype(np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="float32",
                       crs="EPSG:3035", transform=transform, nodata=-9999.0) as dst:
        dst.write(dem, 1)
    return path


def test_dem_covariate_run_trains_and_predicts_below_40_m(belgium, tmp_path):
    dem = write_ramp_dem(tmp_path / "dem_3035.tif")
    cfg = run_config(belgium, s2_glob_source(belgium))
    cfg["inputs"]["covariates"] = [{"name": "elevation", "href": str(dem)},
                                   {"name": "slope", "href": str(dem), "derive": "slope"}]
    cfg["model"]["predict_where"] = [{"covariate": "elevation", "max": 40}]
    res = train_and_predict(belgium, cfg, tmp_path / "dem")
    names = res["meta"]["feature_names"]
    assert names[-2:] == ["elevation", "slope"] and len(names) == 22
    # 20 m + 0.05 * (5 + 10 c) < 40 m for the pixel columns c <= 39: those are predicted
    classes = res["classes"]
    assert set(np.unique(classes[:, :40])) <= {11, 13, 99}
    assert (classes[:, 40:] == 65535).all()
    records = {p.stem: json.loads(p.read_text()) for p in (res["store"] / "status").glob("X*_Y*.json")}  # not campaign.json
    assert {t: r["target_pixels"] for t, r in records.items()} == {
        "X0000_Y0000": 1024, "X0000_Y0001": 1024, "X0001_Y0000": 8 * 32, "X0001_Y0001": 8 * 32}
    assert all(r["completeness"] == 1.0 for r in records.values())
    # the covariates as the model saw them: warped from EPSG:3035 onto the 10 m UTM grid
    from ecocube.config import load_config
    from ecocube.covariates import tile_covariates
    from ecocube.grid import TileGrid

    run = load_config(tmp_path / "dem" / "run.yaml")
    tile = TileGrid.from_config(run.grid).tile("X0001_Y0000")
    cov = tile_covariates(run, tile)
    expected = 20.0 + 0.05 * (320 + 5 + 10 * np.arange(32))
    np.testing.assert_allclose(cov["elevation"], np.broadcast_to(expected, (32, 32)), atol=0.05)
    np.testing.assert_allclose(cov["slope"], np.degrees(np.arctan(0.05)), atol=0.05)


def test_a_covariate_that_misses_the_tile_fails_naming_it(belgium, tmp_path):
    dem = write_ramp_dem(tmp_path / "far.tif", shift_m=50_000)
    cfg = run_config(belgium, s2_glob_source(belgium))
    cfg["inputs"]["covariates"] = [{"name": "elevation", "href": str(dem)}]
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(cli, ["train", str(run_yaml), "--samples", str(belgium / "labels_polygons.gpkg"),
                                   "--class-field", "LC", "--year", "2019"])
    assert out.exit_code != 0
    text = str(out.exception) if out.exception else out.output
    assert f"covariate elevation ({dem}) does not overlap tile X000" in text, text
    # the pre-flight of config check knows it before any job: a ConfigError (exit 2), one line naming it
    from ecocube.errors import ConfigError

    check = CliRunner().invoke(cli, ["config", "check", str(run_yaml)])
    assert isinstance(check.exception, ConfigError) and check.exception.exit_code == 2
    text = str(check.exception)
    assert f"inputs.covariates: covariate elevation ({dem}) does not overlap tile X0000_Y0000" in text, text
