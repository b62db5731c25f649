"""The completeness report against a hand count on a 3 x 2 grid, per region, CSV, PNG, and
'ecocube run --below' redoing exactly the low tiles."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import shapely
from click.testing import CliRunner

from ecocube.completeness import completeness_report, read_regions
from ecocube.config import config_from_dict
from ecocube.grid import TileGrid
from ecocube.status import read_status, write_status
from ecocube.store import LocalStore

from test_tile import cfg_dict

ORIGIN = (574680.0, 5622440.0)  # tiles of 10 px x 10 m = 100 m
TILES = ["X0000_Y0000", "X0001_Y0000", "X0002_Y0000", "X0000_Y0001", "X0001_Y0001", "X0002_Y0001"]
# tile: (state, target, predicted) ; X0002_Y0001 has no record (pending)
RECORDS = {
    "X0000_Y0000": ("done", 100, 100),   # 1.0
    "X0001_Y0000": ("done", 100, 50),    # 0.5
    "X0002_Y0000": ("done", 0, 0),       # nothing targeted: 1.0
    "X0000_Y0001": ("failed", 0, 0),     # 0
    "X0001_Y0001": ("done", 200, 150),   # 0.75
}
HAND = {"X0000_Y0000": 1.0, "X0001_Y0000": 0.5, "X0002_Y0000": 1.0, "X0000_Y0001": 0.0, "X0001_Y0001": 0.75,
        "X0002_Y0001": 0.0}


def _cfg(tmp_path):
    data = cfg_dict(tmp_path, str(tmp_path / "store"), tiles=TILES)
    data["grid"]["tile_size"] = 10
    data["output"]["layers"] = ["class"]
    return config_from_dict(data)


def _records():
    out = {}
    for tile, (state, target, predicted) in RECORDS.items():
        rec = {"tile": tile, "state": state, "attempt": 1, "outputs": {}}
        if state == "done":
            rec.update(target_pixels=target, predicted_pixels=predicted,
                       completeness=predicted / target if target else 1.0,
                       chips={"targeted": target // 10, "predicted": predicted // 20})
        else:
            rec["error"] = "TileError: boom"
        out[tile] = rec
    return out


def _regions():
    x0, y0 = ORIGIN
    west = shapely.box(x0, y0 - 200, x0 + 100, y0)  # column X0000: both rows
    half = shapely.box(x0 + 100, y0 - 100, x0 + 250, y0)  # X0001_Y0000 whole + half of X0002_Y0000
    nowhere = shapely.box(x0 + 5000, y0, x0 + 5100, y0 + 100)
    return [("west", west), ("east-half", half), ("nowhere", nowhere)]


def test_report_matches_a_hand_count(tmp_path):
    cfg = _cfg(tmp_path)
    tiles = TileGrid.from_config(cfg.grid).tiles_for_aoi(cfg.aoi)
    records = {**dict.fromkeys(TILES), **_records()}
    rep = completeness_report(records, tiles, regions=_regions())
    assert {t.tile: t.completeness for t in rep.tiles} == HAND
    assert {t.tile: t.state for t in rep.tiles}["X0002_Y0001"] == "pending"
    assert rep.overall == pytest.approx(3.25 / 6)
    regions = {r.name: (r.tiles, r.completeness) for r in rep.regions}
    assert regions["west"] == (2, pytest.approx(0.5))
    # area-weighted: (0.5 x 100 x 100 + 1.0 x 50 x 100) / (150 x 100)
    assert regions["east-half"] == (2, pytest.approx(10000 / 15000))
    assert regions["nowhere"] == (0, None)
    assert rep.below(0.8) == ["X0001_Y0000", "X0000_Y0001", "X0001_Y0001", "X0002_Y0001"]
    chips = completeness_report(records, tiles, unit="chips")
    # X0000_Y0000: 5 of 10 chips; X0001_Y0000: 2 of 10; X0001_Y0001: 7 of 20
    assert [t.completeness for t in chips.tiles][:2] == [0.5, 0.2]
    assert chips.tiles[4].completeness == pytest.approx(7 / 20)


def _write_regions(path, crs="EPSG:32631"):
    import pyogrio

    regions = _regions()
    geoms = [g for _, g in regions]
    if crs != "EPSG:32631":
        from rasterio.warp import transform_geom

        geoms = [shapely.geometry.shape(transform_geom("EPSG:32631", crs, shapely.geometry.mapping(g)))
                 for g in geoms]
    pyogrio.raw.write(str(path), geometry=shapely.to_wkb(geoms),
                      field_data=[np.array([n for n, _ in regions], dtype=object)], fields=["name"], crs=crs,
                      geometry_type="Polygon", driver="GeoJSON" if path.suffix == ".geojson" else "GPKG")
    return path


def test_regions_in_another_crs_are_reprojected(tmp_path):
    path = _write_regions(tmp_path / "regions.gpkg", crs="EPSG:4326")
    regions = dict(read_regions(path, "EPSG:32631"))
    assert regions["west"].area == pytest.approx(100 * 200, rel=1e-4)
    with pytest.raises(ValueError, match="no field 'region'"):
        read_regions(path, "EPSG:32631", name_field="region")


def _write_yaml(tmp_path, cfg_data):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg_data))
    return path


def test_cli_status_completeness_prints_and_writes_csv_and_png(tmp_path):
    from ecocube.cli import cli

    data = cfg_dict(tmp_path, str(tmp_path / "store"), tiles=TILES)
    data["grid"]["tile_size"] = 10
    data["output"]["layers"] = ["class"]
    run_yaml = _write_yaml(tmp_path, data)
    store = LocalStore(str(tmp_path / "store"))
    for rec in _records().values():
        write_status(store, rec)
    regions = _write_regions(tmp_path / "regions.geojson")
    out = tmp_path / "report"
    res = CliRunner().invoke(cli, ["status", str(run_yaml), "--completeness", "--regions", str(regions),
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "X0001_Y0000   done" in res.output and "50.0%" in res.output
    assert "east-half" in res.output and "66.7%" in res.output
    assert "overall: 54.2 % over 6 tiles" in res.output
    rows = list(csv.DictReader((out / "completeness.csv").open()))
    got = {r["id"]: float(r["completeness"]) for r in rows if r["kind"] == "tile"}
    assert got == HAND
    reg = {r["id"]: r["completeness"] for r in rows if r["kind"] == "region"}
    assert float(reg["west"]) == pytest.approx(0.5) and reg["nowhere"] == ""
    assert (out / "completeness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = CliRunner().invoke(cli, ["status", str(run_yaml), "--below", "0.8", "--json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["below"] == ["X0001_Y0000", "X0000_Y0001", "X0001_Y0001", "X0002_Y0001"]


@pytest.mark.slow
def test_cli_run_below_redoes_only_the_low_tiles(tmp_path):
    """The tiles below 80 % are attempted again (here they fail: no inputs exist); the others
    keep their records untouched."""
    from ecocube.cli import cli

    data = cfg_dict(tmp_path, str(tmp_path / "store"), tiles=TILES)
    data["grid"]["tile_size"] = 10
    data["output"]["layers"] = ["class"]
    run_yaml = _write_yaml(tmp_path, data)
    store = LocalStore(str(tmp_path / "store"))
    for rec in _records().values():
        write_status(store, rec)
    res = CliRunner().invoke(cli, ["run", str(run_yaml), "--below", "0.8", "--no-progress"])
    assert res.exit_code != 0  # the redone tiles fail: their inputs do not exist
    assert "4 tiles below 80 % completeness: X0001_Y0000 X0000_Y0001 X0001_Y0001 X0002_Y0001" in res.output
    for tile in ("X0001_Y0000", "X0000_Y0001", "X0001_Y0001", "X0002_Y0001"):
        rec = read_status(store, tile)
        assert rec["state"] == "failed" and rec.get("attempt", 0) >= 2 - (tile == "X0002_Y0001"), rec
    for tile in ("X0000_Y0000", "X0002_Y0000"):
        assert read_status(store, tile) == _records()[tile]
