"""Tile grid: pure geometry, round trips, AOIs, task splits, export."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecocube.errors import GridError
from ecocube.grid import (
    TileGrid,
    TileIndex,
    index_from_tile_id,
    split_balanced,
    task_count,
    tile_id_from_index,
    tiles_for_task,
    write_grid,
)

EU = TileGrid(crs="EPSG:3035", origin_x=900000.0, origin_y=5500000.0, pixel_size=30.0, tile_size=1000)

indices = st.builds(TileIndex, st.integers(-999, 9999), st.integers(-999, 9999))


@given(indices)
def test_tile_id_round_trip(index):
    assert index_from_tile_id(tile_id_from_index(index)) == index


@given(indices, st.floats(0.01, 0.99), st.floats(0.01, 0.99))
def test_point_inside_tile_maps_back(index, fx, fy):
    b = EU.tile_bounds(index)
    x = b.left + fx * (b.right - b.left)
    y = b.bottom + fy * (b.top - b.bottom)
    assert EU.index_at(x, y) == index


@given(indices)
@settings(max_examples=50)
def test_tile_transform_matches_bounds(index):
    t = EU.tile(index)
    assert t.transform @ (0, 0) == (t.bounds.left, t.bounds.top)
    right, bottom = t.transform @ (t.width, t.height)
    assert right == pytest.approx(t.bounds.right) and bottom == pytest.approx(t.bounds.bottom)
    assert t.bounds.right - t.bounds.left == 30000.0


def test_neighbours_share_edges():
    a, b, c = EU.tile((3, 4)), EU.tile((4, 4)), EU.tile((3, 5))
    assert a.bounds.right == b.bounds.left
    assert a.bounds.bottom == c.bounds.top


def test_bad_tile_id():
    with pytest.raises(GridError, match="not a tile id: 'T12'"):
        EU.tile("T12")


def test_bbox_excludes_touching_tiles():
    b = EU.tile_bounds((2, 3))
    tiles = EU.tiles_for_bbox(b)
    assert [t.id for t in tiles] == ["X0002_Y0003"]
    tiles = EU.tiles_for_bbox((b.left + 1, b.bottom + 1, b.right + 1, b.top - 1))
    assert sorted(t.id for t in tiles) == ["X0002_Y0003", "X0003_Y0003"]


def test_continental_grid():
    # 2520 km × 2520 km of Europe in EPSG:3035, 30 km tiles at 30 m: 84 × 84 = 7,056 tiles
    # (its speed is measured by scripts/bench/grid.py, not here)
    bbox = (2610000.0, 1420000.0, 5130000.0, 3940000.0)  # aligned with the grid
    tiles = EU.tiles_for_bbox(bbox)
    assert len(tiles) == 84 * 84
    assert len({t.id for t in tiles}) == len(tiles)
    assert tiles[0].id == "X0057_Y0052" and tiles[-1].id == "X0140_Y0135"


def test_seven_thousand_tiles_from_geometry():
    import shapely

    # a rough "continent": a 2600 km disc, about 7,000 tiles of 30 km
    # (its speed is measured by scripts/bench/grid.py, not here)
    disc = shapely.Point(4300000, 3200000).buffer(1420000, 64)
    tiles = EU.tiles_for_geometries([disc])
    assert 6500 < len(tiles) < 7500
    # every tile really intersects the disc, and none that does is left out
    got = {t.id for t in tiles}
    ref = {t.id for t in EU.tiles_for_bbox(disc.bounds)
           if shapely.box(*t.bounds).intersects(disc) and not shapely.box(*t.bounds).touches(disc)}
    assert got == ref


def test_bbox_in_other_crs(small_grid):
    # the grid's tile X0001_Y0001 expressed in WGS84, shrunk slightly inwards
    from rasterio.warp import transform_bounds

    b = small_grid.tile_bounds((1, 1))
    inner = (b.left + 50, b.bottom + 50, b.right - 50, b.top - 50)
    lonlat = transform_bounds("EPSG:3035", "EPSG:4326", *inner)
    ids = [t.id for t in small_grid.tiles_for_bbox(lonlat, "EPSG:4326")]
    assert "X0001_Y0001" in ids and len(ids) <= 4


@given(st.integers(0, 500), st.integers(1, 17))
def test_task_split_covers_every_tile_once(n, k):
    tiles = [f"t{i}" for i in range(n)]
    n_tasks = task_count(n, k)
    got = [t for i in range(n_tasks) for t in tiles_for_task(tiles, i, k)]
    assert got == tiles
    assert all(len(tiles_for_task(tiles, i, k)) <= k for i in range(n_tasks))


@given(st.integers(0, 500), st.integers(1, 40))
def test_balanced_split(n, parts):
    items = list(range(n))
    chunks = [split_balanced(items, parts, p) for p in range(parts)]
    assert [x for c in chunks for x in c] == items
    sizes = [len(c) for c in chunks]
    assert max(sizes) - min(sizes) <= 1


def test_task_out_of_range():
    with pytest.raises(GridError, match="task id 3 out of range"):
        tiles_for_task(list(range(5)), 3, 2)


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_write_grid_reads_back(tmp_path, small_grid, suffix):
    import pyogrio
    import shapely

    tiles = small_grid.tiles_for_bbox((3900000.0, 3200000.0 - 1280.0, 3900000.0 + 1920.0, 3200000.0))
    assert len(tiles) == 6
    path = write_grid(tiles, tmp_path / f"grid{suffix}", small_grid.crs)
    meta, _, geom, fields = pyogrio.raw.read(str(path))
    assert list(meta["fields"]) == ["tile_id", "ix", "iy"]
    assert sorted(fields[0]) == sorted(t.id for t in tiles)
    areas = shapely.area(shapely.from_wkb(geom))
    np.testing.assert_allclose(areas, 640.0 * 640.0)
    assert "3035" in meta["crs"]
    assert not list(tmp_path.glob(".*part*"))


def test_aoi_from_vector_file(tmp_path, small_grid):
    import pyogrio
    import shapely

    # a small triangle inside tile X0000_Y0000 and one inside X0002_Y0001
    t0, t1 = small_grid.tile((0, 0)), small_grid.tile((2, 1))
    g = [shapely.box(t0.bounds.left + 10, t0.bounds.bottom + 10, t0.bounds.left + 100, t0.bounds.bottom + 100),
         shapely.Point(t1.bounds.left + 300, t1.bounds.bottom + 300).buffer(50)]
    path = tmp_path / "aoi.gpkg"
    pyogrio.raw.write(str(path), geometry=shapely.to_wkb(np.array(g)), field_data=[np.array([1, 2])],
                      fields=["id"], crs="EPSG:3035", geometry_type="Polygon", driver="GPKG")
    tiles = small_grid.tiles_for_vector_file(path)
    assert sorted(t.id for t in tiles) == ["X0000_Y0000", "X0002_Y0001"]


def test_grid_cli(tmp_path):
    from click.testing import CliRunner

    from ecocube.cli import cli
    from ecocube.config import EXAMPLE_YAML

    run = tmp_path / "run.yaml"
    run.write_text(EXAMPLE_YAML)
    out = tmp_path / "grid.gpkg"
    runner = CliRunner()
    res = runner.invoke(cli, ["grid", str(run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote 9 tiles" in res.output
    res = runner.invoke(cli, ["grid", str(run), "--out", str(out)])
    assert res.exit_code != 0 and "use --overwrite" in str(res.exception or res.output)


def test_grid_cli_dry_run_says_what_it_would_write_and_writes_nothing(tmp_path, capsys):
    from ecocube.cli import main
    from ecocube.config import EXAMPLE_YAML

    def _main(*argv):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in argv])
        out = capsys.readouterr()
        return exc.value.code, out.out.splitlines(), out.err

    run = tmp_path / "run.yaml"
    run.write_text(EXAMPLE_YAML)
    out = tmp_path / "grid.gpkg"
    # the example's bbox (4,000-4,060 km E, 3,000-3,060 km N) in 30 km tiles from (900 km, 5,500 km):
    # columns 103-105, rows 81-83
    plan = ("9 tiles to write to {out} (GPKG, EPSG:3035): X0103_Y0081 X0104_Y0081 X0105_Y0081 ... "
            "X0103_Y0083 X0104_Y0083 X0105_Y0083; bounds (3990000, 2980000, 4080000, 3070000)")
    code, lines, err = _main("grid", run, "--out", out, "--dry-run")
    assert code == 0, err
    assert lines == [plan.format(out=out), "(dry run: nothing written)"]
    assert list(tmp_path.iterdir()) == [run]
    assert _main("grid", run, "--out", out)[0] == 0
    before = out.read_bytes()
    code, lines, _ = _main("grid", run, "--out", out, "--dry-run")
    assert code == 0 and lines[1:] == [f"{out} exists: refused without --overwrite", "(dry run: nothing written)"]
    code, lines, _ = _main("grid", run, "--out", out, "--dry-run", "--overwrite")
    assert code == 0 and lines[1] == f"{out} exists: it would be replaced (--overwrite)"
    assert out.read_bytes() == before
    code, lines, _ = _main("grid", run, "--out", out)  # the real run refuses as the dry run said
    assert code == 1
    code, _, err = _main("grid", run, "--out", tmp_path / "grid.shp", "--dry-run")
    assert code == 2 and err.strip() == "ecocube: error: unsupported grid file type '.shp': use .gpkg, .geojson or .fgb"
    assert sorted(tmp_path.iterdir()) == [out, run]
