"""model.kind: chip end to end: real COG inputs, an ONNX conv model built here with onnx.helper,
tile halos (the same values on both sides of a tile border), the chip filter and its counts."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from pathlib import Path

from affine import Affine

from ecocube.config import config_from_dict
from ecocube.features import feature_names
from ecocube.grid import TileGrid
from ecocube.tile import process_tile

from test_chips import conv_softmax_onnx
from test_tile import BANDS, CLASSES, ORIGIN, TILE, YEARS, cfg_dict, clean_cube

pytestmark = pytest.mark.slow

FEATURES = feature_names(BANDS, 4, ("ndvi",))  # 16 channels: 3 bands x 4 seasons + ndvi x 4


@pytest.fixture(scope="module")
def chip_model(tmp_path_factory):
    """Two 3x3 conv layers (receptive radius 2) + softmax, normalised on the clean cube."""
    from ecocube.chipmodel import save_chip_bundle
    from ecocube.features import features_for_year

    cube = clean_cube(32, 64, seed=1)
    X = features_for_year(cube, bands=BANDS, season_size=4, year_index=0, indices=("ndvi",))
    mean, std = X.mean(axis=0), X.std(axis=0) + 1e-3
    rng = np.random.default_rng(7)
    weight = rng.normal(0, 0.6, size=(len(CLASSES), len(FEATURES), 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.2, size=len(CLASSES)).astype(np.float32)
    folder = tmp_path_factory.mktemp("chip") / "model"
    save_chip_bundle(folder, conv_softmax_onnx(weight, bias, layers=2), feature_names=FEATURES,
                     classes=[c for c, _, _ in CLASSES], class_names=[n for _, n, _ in CLASSES],
                     mean=mean, std=std, receptive_radius=2)
    return folder


@pytest.fixture
def chip_scene(tmp_path, make_cog):
    """Quarterly composites over 2x1 tiles of 32 px, ~25 % random gaps, and every 2019 period
    missing in the top-left 16x16 block of X0000; an elevation layer: 10 m up to column 47, 100 m after."""
    h, w = TILE, 2 * TILE
    cube = clean_cube(h, w)
    dn = np.rint(cube / 0.0001).astype(np.uint16)
    gaps = np.random.default_rng(5).random((cube.shape[0], 1, h, w)) < 0.25
    gaps[:4, :, :16, :16] = True  # 2019: never observed there
    dn[np.broadcast_to(gaps, dn.shape)] = 0
    transform = Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1])
    for t in range(cube.shape[0]):
        year, quarter = YEARS[t // 4], t % 4 + 1
        for b, band in enumerate(BANDS):
            make_cog(f"inputs/{year}/Q{quarter}/{band}.tif", dn[t, b], transform=transform, crs="EPSG:32631",
                     nodata=0, blocksize=128)
    dem = np.where(np.arange(w)[None, :] < 48, 10.0, 100.0).repeat(h, axis=0).astype(np.float32)
    make_cog("dem.tif", dem, transform=transform, crs="EPSG:32631", nodata=-9999.0)
    return tmp_path


def chip_cfg(root, model, store, *, tile_size=TILE, chip=None, model_keys=None, **sections):
    data = cfg_dict(root, str(store), model=model, **sections)
    data["model"].update(model_keys or {})
    data["grid"]["tile_size"] = tile_size
    data["model"]["kind"] = "chip"
    data["model"]["chip"] = {"size": 16, "overlap": 4, **(chip or {})}
    data["output"]["layers"] = ["proba", "class"]
    return config_from_dict(data)


def run_tiles_of(cfg, tile_ids):
    grid = TileGrid.from_config(cfg.grid)
    records = {t: process_tile(grid.tile(t), cfg, threads=2) for t in tile_ids}
    outs = {}
    for t in tile_ids:
        for year in YEARS:
            with rasterio.open((Path(cfg.output.store) / f"class/{t}/{year}-01-01/class.tif")) as src:
                cls = src.read(1)
            with rasterio.open((Path(cfg.output.store) / f"proba/{t}/{year}-01-01/proba.tif")) as src:
                proba = src.read()
            outs[t, year] = cls, proba
    return records, outs


def test_chip_tiles_equal_one_whole_prediction_and_agree_at_the_border(chip_scene, chip_model, tmp_path):
    """Two 32-px tiles, 16-px chips stitched by centre cropping with a 2-px halo, equal one
    64-px tile predicted as a single chip (no stitching) on the 32 rows the scene covers."""
    two = chip_cfg(chip_scene, chip_model, tmp_path / "two")
    whole = chip_cfg(chip_scene, chip_model, tmp_path / "whole", tile_size=2 * TILE, chip={"size": 96})
    recs, outs = run_tiles_of(two, ["X0000_Y0000", "X0001_Y0000"])
    _, ref = run_tiles_of(whole, ["X0000_Y0000"])
    assert all(r["state"] == "done" for r in recs.values())
    for year in YEARS:
        cls = np.concatenate([outs["X0000_Y0000", year][0], outs["X0001_Y0000", year][0]], axis=1)
        proba = np.concatenate([outs["X0000_Y0000", year][1], outs["X0001_Y0000", year][1]], axis=2)
        ref_cls, ref_proba = ref["X0000_Y0000", year][0][:TILE], ref["X0000_Y0000", year][1][:, :TILE]
        assert (cls != 65535).mean() > 0.95  # nodata only where gap-filling left a gap
        assert len(np.unique(cls[cls != 65535])) == 3  # the model is not constant: the comparison can fail
        np.testing.assert_array_equal(cls, ref_cls)
        assert np.abs(proba.astype(int) - ref_proba.astype(int)).max() <= 1
        # the border columns of both tiles, specifically
        np.testing.assert_array_equal(cls[:, TILE - 2:TILE + 2], ref_cls[:, TILE - 2:TILE + 2])


def test_without_a_halo_the_tile_border_shows(chip_scene, chip_model, tmp_path):
    """The same run with model.chip.halo: 0 differs from the whole prediction at the border."""
    nohalo = chip_cfg(chip_scene, chip_model, tmp_path / "nohalo", chip={"halo": 0})
    whole = chip_cfg(chip_scene, chip_model, tmp_path / "whole", tile_size=2 * TILE, chip={"size": 96})
    _, outs = run_tiles_of(nohalo, ["X0000_Y0000", "X0001_Y0000"])
    _, ref = run_tiles_of(whole, ["X0000_Y0000"])
    year = YEARS[1]
    proba = np.concatenate([outs["X0000_Y0000", year][1], outs["X0001_Y0000", year][1]], axis=2)
    diff = np.abs(proba.astype(int) - ref["X0000_Y0000", year][1][:, :TILE].astype(int)).max(axis=0)
    assert diff[:, TILE - 2:TILE + 2].max() > 1  # seams at the tile border
    # without a halo every 16-px block stands alone: inside the blocks it agrees
    assert diff[4:12, 4:12].max() <= 1 and diff[20:28, 36:44].max() <= 1


def test_chip_filter_counts_chips_and_pixels_by_hand(chip_scene, chip_model, tmp_path):
    """Elevation 0-40 m targets X0000 and the left half of X0001; min_valid 0.8 drops the 4
    chips of X0000's top-left block in 2019 (never observed there)."""
    covs = {"covariates": [{"name": "dem", "href": str(chip_scene / "dem.tif"), "resampling": "nearest"}]}
    cfg_data = dict(inputs=covs, features={"covariates": []},
                    model_keys={"predict_where": [{"covariate": "dem", "min": 0, "max": 40}]})
    cfg = chip_cfg(chip_scene, chip_model, tmp_path / "filter", chip={"min_valid": 0.8}, **cfg_data)
    recs, outs = run_tiles_of(cfg, ["X0000_Y0000", "X0001_Y0000"])
    a, b = recs["X0000_Y0000"], recs["X0001_Y0000"]
    # block 16 px + 2-px halo = 20 px: chips of 16 with overlap 4 start at 0 and 4 -> 2x2 chips per block,
    # 4 blocks per tile, 2 years -> 32 chips per tile
    assert a["chips"] == {"total": 32, "targeted": 32, "predicted": 28, "completeness": 28 / 32}
    assert b["chips"] == {"total": 32, "targeted": 16, "predicted": 16, "completeness": 1.0}
    assert (a["target_pixels"], a["predicted_pixels"]) == (2 * 32 * 32, 2 * 32 * 32 - 16 * 16)
    assert (b["target_pixels"], b["predicted_pixels"]) == (2 * 32 * 16, 2 * 32 * 16)
    assert a["completeness"] == pytest.approx(1792 / 2048)
    cls19 = outs["X0000_Y0000", 2019][0]
    assert (cls19[:16, :16] == 65535).all() and (cls19[16:] != 65535).all() and (cls19[:, 16:] != 65535).all()
    assert (outs["X0000_Y0000", 2020][0] != 65535).all()
    clsb = outs["X0001_Y0000", 2020][0]
    assert (clsb[:, :16] != 65535).all() and (clsb[:, 16:] == 65535).all()


def test_blend_stitching_runs_across_tiles_close_to_the_whole(chip_scene, chip_model, tmp_path):
    """stitch: blend (pyramid weights, halo = overlap) is not exact but close, border included."""
    blend = chip_cfg(chip_scene, chip_model, tmp_path / "blend", chip={"overlap": 8, "stitch": "blend"})
    assert blend.model.chip.halo_pixels == 8
    whole = chip_cfg(chip_scene, chip_model, tmp_path / "whole", tile_size=2 * TILE, chip={"size": 96})
    recs, outs = run_tiles_of(blend, ["X0000_Y0000", "X0001_Y0000"])
    _, ref = run_tiles_of(whole, ["X0000_Y0000"])
    year = YEARS[1]
    cls = np.concatenate([outs["X0000_Y0000", year][0], outs["X0001_Y0000", year][0]], axis=1)
    proba = np.concatenate([outs["X0000_Y0000", year][1], outs["X0001_Y0000", year][1]], axis=2).astype(int)
    ok = cls != 65535
    assert abs(proba.sum(axis=0)[ok] - 100).max() <= 2  # blended probabilities still sum to 100 %
    assert (cls == ref["X0000_Y0000", year][0][:TILE])[ok].mean() > 0.9
