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
        "features": {"indices": ["ndvi"]},
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
    out = runner.invoke(cli, ["config", "check", str(run_yaml)])
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli, ["train", str(run_yaml), "--samples", str(folder / "labels_polygons.gpkg"),
                              "--class-field", "LC", "--year", "2019"])
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
        assert composites == ["2018-10-01", "2019-01-01", "2019-04-01", "2019-07-01"]
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


def test_glob_run_trains_and_predicts(belgium, tmp_path):
    res = train_and_predict(belgium, run_config(belgium, s2_glob_source(belgium)), tmp_path / "glob")
    names = res["meta"]["feature_names"]
    assert names[:4] == ["B02_s1", "B02_s2", "B02_s3", "B02_s4"] and names[-1] == "ndvi_s4" and len(names) == 20
    assert set(np.unique(res["classes"])) <= {11, 13, 99}
    # the majority class covers 56 % of the labelled pixels; predictions on the training
    # parcels agree far more often
    assert res["agreement"] > 0.8
