"""model.task: regression end to end on real data: the Slovenian eo-learn patch's elevation (DEM)
predicted from its real Sentinel-2 NDVI series (real clouds, masked by its cloud mask):
train with polygon/block-grouped CV scores against baselines, tiles with mean/lower/upper,
mosaics and a STAC catalog whose items carry raster:bands and the interval level."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from ecocube.config import config_from_dict
from ecocube.grid import TileGrid

pytestmark = pytest.mark.slow

# the patch's grid (data README: 100 x 101 px of 9.9948 x 9.9974 m in EPSG:32633) written as exact 10 m
# pixels from the same origin: 0.5 m of stretch over the whole patch, and the run's grid aligned with it
ORIGIN = (465181.0522318204, 5080254.63349641)
TRANSFORM = Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1])
BOUNDS = (ORIGIN[0], ORIGIN[1] - 1010.0, ORIGIN[0] + 1000.0, ORIGIN[1])


@pytest.fixture(scope="module")
def slovenia(tmp_path_factory, data_dir):
    """The 2017 acquisitions of the real NDVI series as GeoTIFFs (int16 x 1e-4, nodata -32768) with
    their cloud masks (1 = cloud), and 400 points sampling the real DEM."""
    src = data_dir / "eolearn-si-ndvi"
    root = tmp_path_factory.mktemp("si")
    stamps = [t[:10] for t in json.loads((src / "timestamps.json").read_text())]
    ndvi, clm = np.load(src / "NDVI.npy")[..., 0], np.load(src / "CLM.npy")[..., 0]
    dates = []
    for t, day in enumerate(stamps):
        if not day.startswith("2017") or day in dates:
            continue
        dates.append(day)
        profile = dict(driver="GTiff", width=100, height=101, count=1, crs="EPSG:32633", transform=TRANSFORM)
        with rasterio.open(root / f"ndvi_{day.replace('-', '')}.tif", "w", dtype="int16", nodata=-32768,
                           **profile) as dst:
            dst.write(np.rint(np.clip(ndvi[t], -1, 1) * 10000).astype(np.int16)[None])
        with rasterio.open(root / f"clm_{day.replace('-', '')}.tif", "w", dtype="uint8", **profile) as dst:
            dst.write(clm[t].astype(np.uint8)[None])
    dem = np.load(src / "DEM.npy")[..., 0].astype(np.float64)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(2, 99, 400), rng.integers(2, 98, 400)
    x, y = rasterio.transform.xy(TRANSFORM, rows, cols)
    lines = ["x,y,elevation"] + [f"{a:.3f},{b:.3f},{dem[r, c]:.2f}" for a, b, r, c in zip(x, y, rows, cols)]
    (root / "dem_points.csv").write_text("\n".join(lines) + "\n")
    return root, dates, dem


def _cfg(root: Path, dates: list[str], store: Path, model: Path):
    return config_from_dict(_cfg_dict(root, dates, store, model))


def _cfg_dict(root: Path, dates: list[str], store: Path, model: Path) -> dict:
    return {
        "name": "si-elevation",
        "grid": {"crs": "EPSG:32633", "origin": list(ORIGIN), "pixel_size": 10.0, "tile_size": 64},
        "aoi": {"bbox": list(BOUNDS)},
        "inputs": {
            "periods": {"start_year": 2017, "end_year": 2017, "season_size": 4},
            "sources": [{
                "name": "s2", "kind": "acquisitions", "href": str(root / "ndvi_{yyyymmdd}.tif"), "bands": ["ndvi"],
                "dates": dates, "scale": 0.0001, "nodata": -32768, "resampling": "nearest",
                "mask": {"href": str(root / "clm_{yyyymmdd}.tif"), "kind": "classes", "values": [1]},
            }],
        },
        "features": {"indices": []},
        "model": {"task": "regression", "path": str(model), "n_estimators": 40, "cv_folds": 4,
                  "random_state": 0, "target_unit": "m", "engine": "stock"},
        "output": {"store": str(store)},
        "processing": {"threads": 2},
    }


@pytest.fixture(scope="module")
def trained(slovenia, tmp_path_factory):
    from ecocube.train import train_model

    root, dates, _ = slovenia
    tmp = tmp_path_factory.mktemp("si-run")
    cfg = _cfg(root, dates, tmp / "store", tmp / "model")
    result = train_model(cfg, root / "dem_points.csv", "elevation", samples_crs="EPSG:32633")
    return cfg, result


def test_regression_training_reports_scores_against_baselines(trained, slovenia):
    cfg, result = trained
    report = result.report
    assert cfg.output.layers == ("mean", "lower", "upper", "composite", "flags", "count")  # the task's default
    assert report["task"] == "regression" and report["interval_level"] == 0.9
    assert report["samples"]["pixels_used"] + report["samples"]["pixels_dropped_nan"] == 400
    assert report["cv"]["scheme"] == "spatial-block" and report["cv"]["folds"] == 4
    models = report["comparison"]["models"]
    assert set(models) >= {"ensemble", "rf", "lgbm", "plain rf", "training mean"}
    ens, mean_, rf = models["ensemble"], models["training mean"], models["plain rf"]
    # held-out pixels of unseen blocks: NDVI carries some of the elevation (forest upslope); on 400
    # points the stacked ensemble scored R² 0.08 and each learner alone 0.17-0.19 (the report warns)
    assert ens["r2"] > 0.05 and ens["rmse"] < mean_["rmse"] and mean_["r2"] <= 0.0 + 1e-9
    not_best = [w for w in report["warnings"] if "is not the best model" in w]
    assert bool(not_best) == (report["comparison"]["best"] != "ensemble")
    assert report["comparison"]["rmse_ratio_to_plain_rf"] == pytest.approx(ens["rmse"] / rf["rmse"])
    assert abs(ens["interval_coverage"] - 0.9) <= 0.1 and abs(mean_["interval_coverage"] - 0.9) <= 0.1
    assert ens["interval_mean_width"] < mean_["interval_mean_width"]  # informative intervals
    meta = json.loads((result.out_dir / "model.json").read_text())
    assert meta["task"] == "regression" and meta["interval_coverage"] == 0.9 and meta["classes"] == []
    md = (result.out_dir / "report.md").read_text()
    assert "| plain rf |" in md and "| training mean |" in md and "interval coverage" in md
    assert (result.out_dir / "predicted_vs_observed.png").read_bytes()[:4] == b"\x89PNG"


def test_regression_tiles_mosaics_and_stac(trained, slovenia):
    from ecocube.finalize import finalize
    from ecocube.stac import validate_catalog
    from ecocube.store import open_store
    from ecocube.tile import process_tile

    cfg, _ = trained
    _, _, dem = slovenia
    from ecocube.preflight import preflight

    report = preflight(cfg, inputs=False)
    assert report.problems == [] and any("regression with 90% intervals" in f for f in report.facts)
    data = _cfg_dict(slovenia[0], slovenia[1], Path(cfg.output.store), Path(cfg.model.path))
    data["model"].update(task="classification", classes=[{"code": 1, "name": "a", "color": "#000000"},
                                                         {"code": 2, "name": "b", "color": "#ffffff"}])
    wrong = config_from_dict(data)
    assert any(p.startswith("model.task: the bundle") and "is a regression model, the configuration says "
               "classification" in p for p in preflight(wrong, inputs=False).problems)
    store = open_store(cfg.output)
    tiles = TileGrid.from_config(cfg.grid).tiles_for_aoi(cfg.aoi)
    assert len(tiles) == 4
    for tile in tiles:
        rec = process_tile(tile, cfg, store=store)
        assert rec["state"] == "done"
        assert {f"{n}/{tile.id}/2017-01-01/{n}.tif" for n in ("mean", "lower", "upper")} <= set(rec["outputs"])
        assert not any(k.startswith(("class/", "proba/")) for k in rec["outputs"])
    out = finalize(cfg, store=store, threads=2)
    assert validate_catalog(out["catalog"]) == []
    by_product = {(lay.product, lay.period): lay for lay in out["layers"]}
    paths = {n: store.url(by_product[(n, "2017-01-01")].key) for n in ("mean", "lower", "upper")}
    with rasterio.open(paths["mean"]) as m, rasterio.open(paths["lower"]) as lo, rasterio.open(paths["upper"]) as up:
        assert m.dtypes[0] == "float32" and m.nodata == -9999.0
        assert m.transform.c == pytest.approx(ORIGIN[0]) and m.transform.f == pytest.approx(ORIGIN[1])
        mean, lower, upper = (d.read(1, window=((0, 101), (0, 100))) for d in (m, lo, up))
    valid = mean != -9999.0
    assert valid.mean() > 0.9
    assert (lower[valid] <= mean[valid]).all() and (mean[valid] <= upper[valid]).all()
    # the map follows the real elevation, pixel for pixel (the mosaic starts at the grid origin)
    truth = dem[:mean.shape[0], :mean.shape[1]]
    assert np.corrcoef(mean[valid], truth[valid])[0, 1] > 0.4
    inside = (truth[valid] >= lower[valid]) & (truth[valid] <= upper[valid])
    assert inside.mean() > 0.75  # in-sample pixels included, so at least near the nominal 90 %
    # STAC: one regression item with three assets, raster:bands fields and the interval level
    import pystac

    cat = pystac.Catalog.from_file(str(out["catalog"]))
    coll = {c.id: c for c in cat.get_collections()}["regression"]
    (item,) = list(coll.get_items())
    assert item.properties["ecocube:interval_coverage"] == 0.9
    assert list(item.assets) == ["mean", "lower", "upper", "thumbnail"]  # one thumbnail: of the mean
    band = item.assets["mean"].extra_fields["raster:bands"][0]
    assert band["data_type"] == "float32" and band["nodata"] == -9999.0 and band["unit"] == "m"
    assert "scale" not in band
    assert coll.extra_fields["ecocube:model"]["task"] == "regression"


def test_ecocube_train_cli_prints_the_regression_scores(slovenia, tmp_path):
    import yaml
    from click.testing import CliRunner

    from ecocube.cli import cli

    root, dates, _ = slovenia
    data = _cfg_dict(root, dates, tmp_path / "store", tmp_path / "model")
    data["model"].update(n_estimators=10, cv_folds=3)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(cli, ["train", str(tmp_path / "run.yaml"), "--samples", str(root / "dem_points.csv"),
                                   "--class-field", "elevation", "--crs", "EPSG:32633"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "model" / "report.json").read_text())
    ens = report["comparison"]["models"]["ensemble"]
    assert f"ensemble       RMSE {ens['rmse']:.4g}" in res.output
    assert "plain rf" in res.output and "training mean" in res.output and "90% interval coverage" in res.output
    # a classification layer asked of a regression run is refused, naming the task's layers
    data["output"]["layers"] = ["class", "mean"]
    with pytest.raises(ValueError, match=r"output.layers \['class'\] belong to another task than model.task "
                                         "'regression'; choose among mean, lower, upper"):
        config_from_dict(data)
