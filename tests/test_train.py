"""Training: samples, pixels, overlay, spatial CV, metrics, bundle I/O, report, CLI, real data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine

from ecocube.bundle import ModelBundle, load_bundle, save_bundle
from ecocube.config import config_from_dict
from ecocube.ensemble import EnsembleClassifier
from ecocube.errors import ConfigError, FileOverwriteError, ModelError
from ecocube.features import feature_names
from ecocube.grid import TileGrid
from ecocube.train import (
    cross_validate,
    evaluate,
    load_samples,
    read_feature_table,
    sample_pixels,
    sha256_file,
    train_model,
)

# ---------------------------------------------------------------------- synthetic scene
# Two 16x16-px tiles side by side (EPSG:32631, 10 m). Composite rasters per period and band
# whose value encodes band, period and pixel: v = 10000*b + 1000*t + 32*gy + gx (red) or
# 32*gx + gy (nir, so that west/east are separable by one threshold), so every
# feature of every sampled pixel can be checked exactly.
ORIGIN = (500000.0, 5600160.0)
PS, TS = 10.0, 16
BANDS = ("red", "nir")
PERIODS = ["2019-01-01", "2019-07-01", "2020-01-01", "2020-07-01"]


def _value(b: int, t: int, gx, gy):
    gx, gy = np.asarray(gx), np.asarray(gy)
    pixel = 32 * gy + gx if b == 0 else 32 * gx + gy  # red row-major, nir column-major
    return 10000 * b + 1000 * t + pixel


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scene")
    gy, gx = np.mgrid[0:TS, 0:2 * TS]
    for t, period in enumerate(PERIODS):
        for b, band in enumerate(BANDS):
            arr = _value(b, t, gx, gy).astype(np.float32)[None]
            with rasterio.open(root / f"{band}_{period}.tif", "w", driver="GTiff", width=2 * TS, height=TS,
                               count=1, dtype="float32", crs="EPSG:32631",
                               transform=Affine(PS, 0, ORIGIN[0], 0, -PS, ORIGIN[1])) as dst:
                dst.write(arr)
    return root


def _scene_cfg(root: Path, **model):
    model.setdefault("classes", [{"code": 1, "name": "west", "color": "#ff0000"},
                                 {"code": 2, "name": "east", "color": "#0000ff"}])
    model.setdefault("n_estimators", 5)
    model.setdefault("cv_folds", 3)
    model.setdefault("cv_block_size", 40.0)
    return {
        "name": "synthetic",
        "grid": {"crs": "EPSG:32631", "origin": list(ORIGIN), "pixel_size": PS, "tile_size": TS},
        "aoi": {"tiles": ["X0000_Y0000", "X0001_Y0000"]},
        "inputs": {"periods": {"start_year": 2019, "end_year": 2020, "season_size": 2},
                   "sources": [{"name": "syn", "kind": "composite", "href": str(root / "{band}_{period}.tif"),
                                "bands": list(BANDS), "resampling": "nearest"}]},
        "gapfill": {"method": "none"},
        "features": {"indices": [], "statistics": []},
        "model": model,
        "processing": {"threads": 2, "block_size": 16},
    }


def _center(gx, gy):
    return ORIGIN[0] + (gx + 0.5) * PS, ORIGIN[1] - (gy + 0.5) * PS


def _points_csv(path: Path, pixels, *, year=None) -> Path:
    lines = ["x,y,cls" + (",year" if year is not None else "")]
    for gx, gy in pixels:
        x, y = _center(gx, gy)
        lines.append(f"{x},{y},{1 if gx < TS else 2}" + (f",{year}" if year is not None else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_overlay_reads_exact_features_across_tiles_and_years(scene, tmp_path):
    cfg = config_from_dict(_scene_cfg(scene))
    pixels = [(0, 0), (3, 15), (15, 7), (16, 0), (31, 15), (20, 9)]
    samples = load_samples(_points_csv(tmp_path / "p.csv", pixels), "cls", crs="EPSG:32631")
    grid = TileGrid.from_config(cfg.grid)
    table = sample_pixels(samples, grid, years=[2019, 2020], max_pixels_per_polygon=10, cv_block_size=40.0)
    assert len(table) == 12  # 6 points x 2 years (no year column: every year of the run)
    from ecocube.train import extract_features

    X, names, stats = extract_features(cfg, table, threads=2)
    # composite sources: every period value of the samples is an observation
    assert stats["observed_share_by_year"] == {"2019": 1.0, "2020": 1.0}
    assert names == ["red_s1", "red_s2", "nir_s1", "nir_s2"]
    assert stats["tiles"] == ["X0000_Y0000", "X0001_Y0000"] and stats["windows"] == 2
    for i in range(len(table)):
        gx, gy, yr = table.gx[i], table.gy[i], table.year[i]
        y0 = (yr - 2019) * 2
        expected = [_value(b, y0 + s, gx, gy) for b in range(2) for s in range(2)]
        np.testing.assert_array_equal(X[i], np.asarray(expected, np.float32))
    # blocks of 40 m = 4 px: groups follow the pixel's block
    assert list(table.group[::2]) == ["B0_0", "B0_3", "B3_1", "B4_0", "B7_3", "B5_2"]


def test_polygons_cap_groups_and_tiny_polygons(tmp_path):
    grid = TileGrid(crs="EPSG:32631", origin_x=ORIGIN[0], origin_y=ORIGIN[1], pixel_size=PS, tile_size=TS)
    big = shapely.box(ORIGIN[0], ORIGIN[1] - 100, ORIGIN[0] + 100, ORIGIN[1])  # 10x10 px
    tiny = shapely.box(ORIGIN[0] + 201, ORIGIN[1] - 204, ORIGIN[0] + 203, ORIGIN[1] - 202)  # no pixel centre
    import pyogrio.raw

    path = tmp_path / "poly.gpkg"
    pyogrio.raw.write(str(path), geometry=shapely.to_wkb(np.array([big, tiny])), field_data=[np.array([1, 2])],
                      fields=["LC"], crs="EPSG:32631", geometry_type="Polygon", driver="GPKG", layer="labels")
    samples = load_samples(path, "LC")
    assert samples.years is None and list(samples.classes) == [1, 2]
    table = sample_pixels(samples, grid, years=[2019], max_pixels_per_polygon=30, cv_block_size=1000.0,
                          random_state=3)
    assert (table.sample_id == 0).sum() == 30 and (table.sample_id == 1).sum() == 1
    assert set(table.group[table.sample_id == 0]) == {"P0"}
    inside = shapely.contains_xy(big, table.x[table.sample_id == 0], table.y[table.sample_id == 0])
    assert inside.all()
    assert (table.gx[table.sample_id == 1][0], table.gy[table.sample_id == 1][0]) == (20, 20)
    again = sample_pixels(samples, grid, years=[2019], max_pixels_per_polygon=30, cv_block_size=1000.0,
                          random_state=3)
    np.testing.assert_array_equal(table.gx, again.gx)  # the cap draw is seeded
    blocks = sample_pixels(samples, grid, years=[2019], max_pixels_per_polygon=30, cv_block_size=150.0,
                           cv_groups="block")
    assert set(blocks.group[blocks.sample_id == 0]) == {"B0_0"}  # a polygon never splits across groups


def test_sample_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rasterio.crs import CRS

    pts = shapely.points([4.5, 4.6], [50.7, 50.8])
    table = pa.table({"geometry": shapely.to_wkb(pts).tolist(), "code": [1, 2], "date": ["2019-05-01", "2020-01-31"]})
    geo = {"version": "1.0.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "crs": CRS.from_epsg(4326).to_dict(projjson=True)}}}
    pq.write_table(table.replace_schema_metadata({b"geo": json.dumps(geo).encode()}), tmp_path / "s.parquet")
    s = load_samples(tmp_path / "s.parquet", "code")
    assert list(s.years) == [2019, 2020] and s.date_field == "date" and CRS.from_user_input(s.crs).to_epsg() == 4326
    grid = TileGrid(crs="EPSG:32631", origin_x=600000, origin_y=5700000, pixel_size=10, tile_size=100)
    t = sample_pixels(s, grid, years=[2018], max_pixels_per_polygon=5, cv_block_size=1000)
    assert list(t.year) == [2019, 2020]  # the samples' own years win
    x_utm, y_utm = rasterio.warp.transform("EPSG:4326", "EPSG:32631", [4.5], [50.7])
    assert abs(t.x[0] - x_utm[0]) <= 5 and abs(t.y[0] - y_utm[0]) <= 5

    (tmp_path / "a.csv").write_text("x,y,cls\n1,2,3\n")
    with pytest.raises(ConfigError, match="CRS"):
        load_samples(tmp_path / "a.csv", "cls")
    with pytest.raises(ConfigError, match="no class field 'lc'"):
        load_samples(tmp_path / "a.csv", "lc", crs="EPSG:32631")
    (tmp_path / "b.csv").write_text("x,y,cls\n1,2,grass\n")
    with pytest.raises(ConfigError, match="integers"):
        load_samples(tmp_path / "b.csv", "cls", crs="EPSG:32631")
    (tmp_path / "c.csv").write_text("x,y,cls,year\n1,2,3,May\n")
    with pytest.raises(ConfigError, match="neither a year nor an ISO date"):
        load_samples(tmp_path / "c.csv", "cls", crs="EPSG:32631")
    with pytest.raises(ConfigError, match="not found"):
        load_samples(tmp_path / "nope.gpkg", "cls")


def test_evaluate_known_values():
    y = np.array([1, 1, 1, 2, 2, 3])
    proba = np.array([[.8, .1, .1], [.6, .3, .1], [.2, .7, .1], [.1, .8, .1], [.3, .6, .1], [.1, .2, .7]])
    m = evaluate(y, proba, [1, 2, 3], ["a", "b", "c"], majority_class=1)
    assert m["overall_accuracy"] == pytest.approx(5 / 6)
    assert m["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 2, 0], [0, 0, 1]]
    a, b, c = m["per_class"]
    assert (a["precision"], a["recall"]) == (1.0, pytest.approx(2 / 3))
    assert (b["precision"], b["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert c["f1"] == 1.0 and c["roc_auc"] == 1.0
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([.8, .6, .2, .8, .6, .7])))
    assert m["baseline"]["overall_accuracy"] == pytest.approx(0.5)


@pytest.mark.slow
def test_cross_validation_keeps_groups_apart():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    X = (y[:, None] + rng.normal(0, 0.25, (120, 3))).astype(np.float32)
    groups = np.arange(120) // 8
    seen = []

    class Recorder(EnsembleClassifier):
        def fit(self, X, y, groups=None):
            seen.append(set(groups.tolist()))
            return super().fit(X, y, groups=groups)

    proba, fold, per_fold = cross_validate(
        lambda t: Recorder(base_learners=("rf",), n_estimators=5, cv_folds=3, n_jobs=t, random_state=0),
        X, y, groups, folds=4, random_state=0, threads=1)
    assert len(per_fold) == 4 and (fold >= 0).all()
    for k, train_groups in enumerate(seen):
        assert not train_groups & set(groups[fold == k].tolist())
    assert (proba.argmax(1) == y).mean() > 0.9
    with pytest.raises(ModelError, match="at least 2 groups"):
        cross_validate(lambda t: None, X, y, np.zeros(120), folds=3, random_state=0)


# ---------------------------------------------------------------------- bundle


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    rng = np.random.default_rng(1)
    y = np.repeat([11, 13, 99], 30)
    X = (np.c_[y == 11, y == 13, y == 99] + rng.normal(0, 0.4, (90, 3))).astype(np.float32)
    model = EnsembleClassifier(base_learners=("rf", "lgbm"), n_estimators=5, cv_folds=3, n_jobs=1,
                               random_state=0).fit(X, y)
    bundle = ModelBundle(model=model, feature_names=["a_s1", "b_s1", "c_s1"], classes=[11, 13, 99],
                         class_names=["crop", "grass", "other"], colors=["#f2d16b", "#9ad36a", "#888888"],
                         metadata={"metrics": {"overall_accuracy": 1.0}})
    folder = save_bundle(bundle, tmp_path_factory.mktemp("b") / "model")
    return bundle, folder, X


def _copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def test_bundle_round_trip_predicts_identically(small_bundle):
    bundle, folder, X = small_bundle
    meta = json.loads((folder / "model.json").read_text())
    assert meta["feature_names"] == ["a_s1", "b_s1", "c_s1"]
    assert meta["classes"] == [{"code": 11, "name": "crop", "color": "#f2d16b"},
                               {"code": 13, "name": "grass", "color": "#9ad36a"},
                               {"code": 99, "name": "other", "color": "#888888"}]
    assert meta["versions"]["scikit-learn"] and meta["versions"]["lightgbm"] and meta["metrics"]
    assert meta["model_sha256"] == sha256_file(folder / "model.joblib")
    loaded = load_bundle(folder, expected_features=["a_s1", "b_s1", "c_s1"])
    np.testing.assert_array_equal(loaded.predict_proba(X), bundle.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict_uncertainty(X), bundle.predict_uncertainty(X))
    assert loaded.classes == [11, 13, 99] and loaded.class_names == ["crop", "grass", "other"]
    assert not list(folder.glob("*.part")) and not list(folder.glob(".*"))


def test_bundle_mismatches_fail_clearly(small_bundle, tmp_path):
    _, folder, _ = small_bundle
    with pytest.raises(ModelError, match="another order.*shuffled"):
        load_bundle(folder, expected_features=["b_s1", "a_s1", "c_s1"])
    with pytest.raises(ModelError, match="missing from the data: c_s1"):
        load_bundle(folder, expected_features=["a_s1", "b_s1"])
    with pytest.raises(ModelError, match="model bundle not found"):
        load_bundle(tmp_path / "nowhere")

    old = _copy(folder, tmp_path)
    meta = json.loads((old / "model.json").read_text())
    meta["versions"]["scikit-learn"] = "0.24.2"
    (old / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"scikit-learn 0\.24\.2.*retrain"):
        load_bundle(old)
    assert load_bundle(old, check_versions=False).classes == [11, 13, 99]

    (old / "model.joblib").write_bytes((old / "model.joblib").read_bytes()[:-10])
    with pytest.raises(ModelError, match="checksum"):
        load_bundle(old, check_versions=False)


# ---------------------------------------------------------------------- train_model + CLI (synthetic)


@pytest.mark.slow
def test_train_on_synthetic_points_and_cli(scene, tmp_path):
    import yaml
    from click.testing import CliRunner

    from ecocube.cli import cli

    rng = np.random.default_rng(0)
    picks = {(int(a), int(b)) for a, b in zip(rng.integers(0, 2 * TS, 80), rng.integers(0, TS, 80))}
    csv = _points_csv(tmp_path / "pts.csv", sorted(picks), year=2020)
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump(_scene_cfg(scene)))
    out = tmp_path / "model"
    args = ["train", str(run), "--samples", str(csv), "--class-field", "cls", "--crs", "EPSG:32631",
            "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "spatial-block CV" in res.output and "overall accuracy" in res.output
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["overall_accuracy"] > 0.9  # west/east are separable by the encoded x
    assert report["samples"]["years"] == [2020] and report["cv"]["scheme"] == "spatial-block"
    for name in ("model.joblib", "model.json", "report.md", "features.parquet", "confusion_matrix.png",
                 "per_class_f1.png", "feature_importance.png"):
        assert (out / name).stat().st_size > 0, name
    bundle = load_bundle(out, expected_features=feature_names(BANDS, 2, ()))
    pixels, X, names, _ = read_feature_table(out / "features.parquet")
    assert names == bundle.feature_names and len(pixels) == len(picks)
    assert (bundle.predict(X) == pixels.cls).mean() > 0.95
    # the default combiner (model.meta: mean) is what the bundle predicts with and what the report says
    assert report["model"]["meta"] == "mean" and report["model"]["meta_chosen"] == "mean"
    proba, base = bundle.model.predict_proba_with_base(X)
    assert base.shape[0] == 3 and np.abs(proba - base.mean(axis=0)).max() < 1e-12
    n, k = report["model"]["n_estimators"], report["model"]["cv_folds"]
    # a small table (under 100 pixels per class): forest leaves of rows // (5 x classes), not 20
    leaf = len(pixels) // (5 * len(bundle.classes))
    assert leaf < 20 and report["model"]["forest_min_samples_leaf"] == {"rf": leaf, "et": leaf}
    assert [e.min_samples_leaf for e in bundle.model.estimators_[::2]] == [leaf, leaf]
    line = [t for t in (out / "report.md").read_text().splitlines() if t.startswith("Ensemble of")]
    assert line and line[0].startswith(
        f"Ensemble of rf, lgbm, et ({n} trees per tree learner; forest leaves of at least {leaf} pixels), "
        "combined by the mean of their probabilities "
        f"(model.meta: mean; nothing fitted on top of the learners; LightGBM's tree count from its {k}-fold "
        "out-of-fold log loss), class weights balanced."), line

    # again without --overwrite: refused; a CSV without --crs: a config error (exit 2)
    res = CliRunner().invoke(cli, args)
    assert isinstance(res.exception, FileOverwriteError)
    from ecocube.cli import main

    with pytest.raises(SystemExit) as info:
        main(["train", str(run), "--samples", str(csv), "--class-field", "cls", "--out", str(tmp_path / "m2")])
    assert info.value.code == 2


def test_train_rejects_unknown_classes_and_years(scene, tmp_path):
    cfg = config_from_dict(_scene_cfg(scene))
    bad = tmp_path / "bad.csv"
    bad.write_text(f"x,y,cls\n{_center(1, 1)[0]},{_center(1, 1)[1]},7\n")
    with pytest.raises(ConfigError, match=r"class codes \[7\].*not in model.classes"):
        train_model(cfg, bad, "cls", out_dir=tmp_path / "m", samples_crs="EPSG:32631")
    with pytest.raises(ConfigError, match="outside the run's years"):
        train_model(cfg, bad, "cls", out_dir=tmp_path / "m", samples_crs="EPSG:32631", year=2021)
    late = _points_csv(tmp_path / "late.csv", [(1, 1)], year=2022)
    with pytest.raises(ConfigError, match=r"years \[2022\]"):
        train_model(cfg, late, "cls", out_dir=tmp_path / "m", samples_crs="EPSG:32631")


def test_samples_outside_the_run_tiles_are_named_not_called_gaps(scene, tmp_path, caplog):
    rng = np.random.default_rng(1)
    picks = sorted({(int(a), int(b)) for a, b in zip(rng.integers(0, 2 * TS, 60), rng.integers(0, TS, 60))})
    south = [(3, TS + 2), (TS + 4, TS + 5)]  # tiles X0000_Y0001 and X0001_Y0001: not in the aoi, no input there
    csv = _points_csv(tmp_path / "pts.csv", picks + south, year=2020)
    cfg = config_from_dict(_scene_cfg(scene))
    with caplog.at_level("WARNING", logger="ecocube.train"):
        train_model(cfg, csv, "cls", out_dir=tmp_path / "m", samples_crs="EPSG:32631")
    messages = [r.getMessage() for r in caplog.records if r.name == "ecocube.train"]
    assert "2 pixel samples of 2 sample(s) lie outside the run's tiles (aoi), have no input data and are dropped" \
        in messages
    assert not any("unfilled gaps" in m for m in messages), messages
    assert json.loads((tmp_path / "m" / "report.json").read_text())["samples"]["pixels_used"] == len(picks)


# ---------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def belgium(tmp_path_factory, data_dir):
    """A copy of the real Sentinel-2 series (72 dates) and its label polygons."""
    dst = tmp_path_factory.mktemp("be") / "worldcereal-be-2019"
    shutil.copytree(data_dir / "worldcereal-be-2019", dst)
    return dst


def _belgium_cfg(folder: Path) -> dict:
    dates = [t[:10] for t in json.loads((folder / "timestamps.json").read_text())]
    bands = ["B02", "B03", "B04", "B08"]
    return {
        "name": "worldcereal-be",
        # the patch's own UTM grid, cut into 4 tiles of 32x32 px so the overlay spans tiles
        "grid": {"crs": "EPSG:32631", "origin": [574680.0, 5622440.0], "pixel_size": 10.0, "tile_size": 32},
        "aoi": {"bbox": [574680.0, 5621800.0, 575320.0, 5622440.0]},
        "inputs": {
            "periods": {"start_year": 2018, "end_year": 2019, "season_size": 4},
            "sources": [{
                "name": "s2", "kind": "acquisitions", "href": str(folder / "S2L2A_{yyyymmdd}_10m.tif"),
                "bands": bands, "band_indexes": {b: i for i, b in enumerate(bands, 1)}, "dates": dates,
                "scale": 0.0001, "nodata": 0, "resampling": "nearest",
                "mask": {"href": str(folder / "S2L2A_{yyyymmdd}_SCL.tif"), "kind": "classes", "values": [3, 8, 9, 10]},
            }],
        },
        "features": {"indices": ["ndvi", "ndwi"]},
        "model": {
            "classes": [{"code": 11, "name": "cropland", "color": "#f2d16b"},
                        {"code": 13, "name": "grassland", "color": "#9ad36a"},
                        {"code": 99, "name": "other", "color": "#888888"}],
            "n_estimators": 20, "cv_folds": 4, "max_pixels_per_polygon": 60, "random_state": 0,
        },
        "processing": {"threads": 2},
    }


@pytest.fixture(scope="module")
def belgium_model(belgium, tmp_path_factory):
    cfg = config_from_dict(_belgium_cfg(belgium))
    out = tmp_path_factory.mktemp("be-model") / "model"
    return cfg, train_model(cfg, belgium / "labels_polygons.gpkg", "LC", out_dir=out, year=2019)


def test_real_series_spatial_cv_beats_the_majority_baseline(belgium_model, belgium):
    cfg, result = belgium_model
    report = result.report
    m, base = report["metrics"], report["metrics"]["baseline"]
    # polygon-grouped CV over all 40 parcels: no parcel is on both sides of a split
    assert report["cv"]["scheme"] == "polygon" and report["cv"]["groups"] == 40 and report["cv"]["folds"] == 4
    assert report["samples"]["pixels_dropped_nan"] == 0  # 2018 + 2019 gap-filled: no unfilled quarter
    assert report["samples"]["years"] == [2019]
    # the majority class (cropland) gives OA ~0.56 and weighted F1 ~0.40
    assert base["overall_accuracy"] == pytest.approx(607 / 1080, abs=1e-9)
    assert m["f1_weighted"] >= base["f1_weighted"] + 0.2
    assert m["kappa"] >= 0.3
    assert m["overall_accuracy"] > base["overall_accuracy"]
    assert m["log_loss"] < base["log_loss"]
    auc = {c["code"]: c["roc_auc"] for c in m["per_class"]}
    assert auc[11] > 0.75 and auc[13] > 0.8  # cropland and grassland separate well; "other" is mixed
    # pixel cap per polygon, polygon ids as groups
    pixels, X, names, _ = read_feature_table(result.out_dir / "features.parquet")
    assert np.bincount(pixels.sample_id).max() == 60 and len(pixels) == 1080
    assert set(pixels.group) == {f"P{i}" for i in range(40)}
    assert names == feature_names(["B02", "B03", "B04", "B08"], 4, ["ndvi", "ndwi"], cfg.features.statistics)
    assert len(cfg.features.statistics) == 12  # the default: every temporal statistic
    assert np.isfinite(X).all() and 0 < np.nanmedian(X[:, names.index("B08_s3")]) < 0.6  # reflectance
    # model.json: the contract for prediction
    meta = json.loads((result.out_dir / "model.json").read_text())
    assert meta["feature_names"] == names
    assert [c["code"] for c in meta["classes"]] == [11, 13, 99]
    assert meta["training_samples_sha256"] == sha256_file(belgium / "labels_polygons.gpkg")
    assert meta["metrics"]["f1_weighted"] == pytest.approx(m["f1_weighted"])
    md = (result.out_dir / "report.md").read_text()
    assert "polygon** cross-validation" in md and "![confusion matrix](confusion_matrix.png)" in md
    for png in ("confusion_matrix.png", "per_class_f1.png", "feature_importance.png"):
        assert (result.out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the bundle predicts identically after reload
    loaded = load_bundle(result.out_dir, expected_features=names)
    np.testing.assert_array_equal(loaded.predict_proba(X), result.bundle.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), result.bundle.predict(X))


def test_real_series_rerun_reuses_the_feature_table_and_reproduces(belgium_model, belgium):
    cfg, first = belgium_model
    with pytest.raises(FileOverwriteError):
        train_model(cfg, belgium / "labels_polygons.gpkg", "LC", out_dir=first.out_dir, year=2019)
    again = train_model(cfg, belgium / "labels_polygons.gpkg", "LC", out_dir=first.out_dir, year=2019,
                        overwrite=True)
    assert again.report["overlay"]["reused_feature_table"] is True
    assert again.report["metrics"] == first.report["metrics"]  # seeded: the same figures


@pytest.mark.slow
def test_overlay_windows_merge_per_tile_and_split_by_block_when_spread():
    from ecocube.train import PixelTable, _overlay_jobs

    grid = TileGrid(crs="EPSG:32631", origin_x=0, origin_y=0, pixel_size=1, tile_size=100)
    gx, gy = np.array([0, 99, 5, 150, 160]), np.array([0, 99, 5, 10, 12])
    n = gx.size
    table = PixelTable(sample_id=np.arange(n), cls=np.ones(n, int), year=np.ones(n, int), gx=gx, gy=gy,
                       x=gx * 1.0, y=gy * 1.0, group=np.array(["g"] * n), kind=np.array(["point"] * n))
    jobs = [(j.tile_index, j.rows.tolist(), j.row0, j.col0, j.height, j.width) for j in _overlay_jobs(table, grid, 16)]
    # tile (0,0): samples spread over 100x100 px > 4 blocks of 16x16 -> one window per block;
    # tile (1,0): two close samples -> one 3x11 window
    assert jobs == [((0, 0), [0, 2], 0, 0, 6, 6), ((0, 0), [1], 99, 99, 1, 1), ((1, 0), [3, 4], 10, 50, 3, 11)]
    merged = _overlay_jobs(table, grid, 64)  # 4 blocks of 64x64 hold the whole tile
    assert [(j.tile_index, j.height, j.width) for j in merged] == [((0, 0), 100, 100), ((1, 0), 3, 11)]


def test_sample_dates_fall_in_the_year_that_year_start_defines():
    from datetime import date

    from ecocube.config import PeriodsConfig
    from ecocube.train import _year_of

    oct_years = PeriodsConfig(start_year=2019, end_year=2020, year_start="10-01")
    assert [_year_of(v, "s", oct_years) for v in ("2018-11-05", "2018-09-30", date(2019, 10, 1), 2019, "2020",
                                                   np.datetime64("2018-10-01"))] == [2019, 2018, 2020, 2019, 2020, 2019]
    assert _year_of("2018-11-05", "s", PeriodsConfig()) == 2018 == _year_of("2018-11-05", "s")


def test_years_without_observations_are_refused_and_thin_years_warned(caplog):
    from ecocube.train import MIN_OBSERVED_SHARE, check_year_observations

    assert check_year_observations({"observed_share_by_year": {"2019": 0.9, "2020": 0.6}}, Path("s.gpkg")) == []
    with caplog.at_level("WARNING", logger="ecocube.train"):
        out = check_year_observations({"observed_share_by_year": {"2019": 0.9, "2020": 0.2}}, Path("s.gpkg"))
    assert out == ["year 2020: only 20% of the samples' period values rest on an observation of that period; "
                   "the rest are gap-filled (from other periods or years)"]
    assert "year 2020: only 20%" in caplog.text and MIN_OBSERVED_SHARE == 0.5
    with pytest.raises(ModelError, match=r"samples s.gpkg: year\(s\) \[2018\] have no valid observation"):
        check_year_observations({"observed_share_by_year": {"2018": 0.0, "2019": 1.0}}, Path("s.gpkg"))



@pytest.mark.timeout(1800)  # tuning multiplies the stacking fits (2 candidates); the shared machine ran at load 28
def test_train_records_tuning_and_the_selected_features_the_bundle_predicts_with(scene, tmp_path):
    """model.tuning / model.feature_selection: the report and bundle name the choice per fold
    and for the final model, and the bundle predicts from the recorded features only."""
    rng = np.random.default_rng(1)
    picks = {(int(a), int(b)) for a, b in zip(rng.integers(0, 2 * TS, 80), rng.integers(0, TS, 80))}
    csv = _points_csv(tmp_path / "pts.csv", sorted(picks), year=2020)
    cfg = config_from_dict(_scene_cfg(scene, base_learners=["lgbm", "rf"],
                                      tuning={"method": "grid", "grids": {"lgbm": {"num_leaves": [3, 7]}}},
                                      feature_selection={"method": "importance", "keep": [0.5]}))
    result = train_model(cfg, csv, "cls", out_dir=tmp_path / "model", samples_crs="EPSG:32631")
    report = result.report
    mdl = report["model"]
    assert mdl["tuning"]["method"] == "grid" and set(mdl["tuning"]["chosen"]) == {"0:lgbm"}
    assert mdl["tuning"]["chosen"]["0:lgbm"]["num_leaves"] in (3, 7)
    assert len(mdl["tuning"]["candidates"]["0:lgbm"]["candidates"]) == 2
    for fold in report["cv"]["per_fold"]:  # every outer fold tuned and selected on its own rows
        assert set(fold["tuning"]) == {"0:lgbm"} and fold["feature_selection"]["n_selected"] == 2
    names = result.bundle.feature_names
    assert len(names) == 4  # red/nir x 2 seasons
    model = result.bundle.model
    assert mdl["feature_selection"]["selected"] == [names[c] for c in model.selected_features_]
    assert len(mdl["feature_selection"]["selected"]) == 2
    saved = json.loads((tmp_path / "model" / "model.json").read_text())
    assert saved["selected_features"] == saved["model"]["feature_selection"]["selected"] == \
        mdl["feature_selection"]["selected"]
    assert saved["tuned_parameters"] == mdl["tuning"]["chosen"]
    assert "2 of 4 features kept" in (tmp_path / "model" / "report.md").read_text()
    bundle = load_bundle(tmp_path / "model", expected_features=feature_names(BANDS, 2, ()))
    _, X, _, _ = read_feature_table(tmp_path / "model" / "features.parquet")
    dropped = [i for i, n in enumerate(names) if n not in mdl["feature_selection"]["selected"]]
    scrambled = X.copy()
    scrambled[:, dropped] = rng.permutation(scrambled[:, dropped])  # the features selection dropped
    assert np.array_equal(bundle.predict_proba(scrambled), bundle.predict_proba(X))


def test_report_says_what_the_inner_folds_were_used_for():
    from ecocube.train import _inner_cv_text

    assert _inner_cv_text({"cv_folds": 4, "meta": "logistic", "meta_chosen": "logistic", "base_learners": ["rf"]}) \
        == "the combiner fitted on 4-fold out-of-fold probabilities"
    # auto chose the mean on the inner folds: they were used for that choice, nothing was fitted
    assert _inner_cv_text({"cv_folds": 5, "meta": "auto", "meta_chosen": "mean", "base_learners": ["rf", "lgbm"]}) \
        == ("the combiner chosen on 5-fold out-of-fold probabilities; "
            "LightGBM's tree count from its 5-fold out-of-fold log loss")
    assert _inner_cv_text({"cv_folds": 3, "meta": "auto", "meta_chosen": "logistic", "base_learners": ["et"]}) \
        == "the combiner chosen on 3-fold out-of-fold probabilities and fitted on them"
    assert _inner_cv_text({"cv_folds": 5, "meta": "mean", "meta_chosen": "mean", "base_learners": ["rf", "et"]}) \
        == "nothing fitted on top of the learners"
