"""ecocube vectorize: polygons unbroken across tile borders, formats, catalog, CLI errors;
the border merger against whole-map vectorisation; duplicated instances merged by overlap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pytest
import rasterio
import shapely
import yaml
from pyproj import CRS

from ecocube.atomic import sha256_file
from ecocube.config import config_from_dict
from ecocube.errors import FileOverwriteError
from ecocube.grid import TileGrid
from ecocube.polygons import BorderMerger, merge_instances, simplify_polygons
from ecocube.stac import validate_catalog
from ecocube.store import open_store
from ecocube.vectorize import output_key, vectorize_run

CLASSES = [
    {"code": 1, "name": "cropland", "color": "#f2d16b"},
    {"code": 2, "name": "forest", "color": "#1a7f37"},
    {"code": 5, "name": "water", "color": "#2b6cb0"},
]
T = 16  # tile size (px)
PX = 10.0  # pixel size (m)
GRID = dict(crs="EPSG:3035", origin=[3900000.0, 3200000.0], pixel_size=PX, tile_size=T)
TILES = [f"X{ix:04d}_Y{iy:04d}" for iy in range(2) for ix in range(3)]  # 3 x 2 tiles, 48 x 32 px
YEAR = "2019-01-01"


def class_map() -> np.ndarray:
    """The whole 32 x 48 px map (rows, cols), 65535 = nodata."""
    m = np.ones((2 * T, 3 * T), np.uint16)  # background: cropland
    m[3:9, 10:22] = 2  # A: forest 6 x 12 px across the X0/X1 edge of row Y0
    m[12:20, 28:38] = 5  # B: water 8 x 10 px over the corner of X1/X2/Y0/Y1
    # C: a forest U crossing the X0/X1 edge twice in row Y1 (two bars, closed in X1 only)
    m[20, 12:20] = 2
    m[26, 12:20] = 2
    m[21:26, 19] = 2
    m[28:32, 44:48] = 65535  # a nodata corner
    return m


def proba_map(klass: np.ndarray) -> np.ndarray:
    """3 bands (%): the pixel's class gets 80 in tile column X0, 60 elsewhere."""
    p = np.zeros((3, *klass.shape), np.uint8)
    level = np.full(klass.shape, 60, np.uint8)
    level[:, :T] = 80
    for b, code in enumerate((1, 2, 5)):
        p[b][klass == code] = level[klass == code]
    p[:, klass == 65535] = 255
    return p


def run_config(tmp_path: Path, store: str, **output):
    data = {
        "name": "vec-run", "grid": GRID, "aoi": {"tiles": TILES},
        "inputs": {"periods": {"start_year": 2019, "end_year": 2019, "season_size": 4},
                   "sources": [{"name": "s2", "href": "in/{band}.tif", "bands": ["blue", "nir"]}]},
        "model": {"path": str(tmp_path / "model"), "classes": CLASSES},
        "output": {"store": store, "layers": ["proba", "class"], **output},
    }
    return data, config_from_dict(data, base_dir=tmp_path, source="test")


def _write(path: Path, array: np.ndarray, tile, nodata, descriptions, tags=None):
    with rasterio.open(path, "w", driver="GTiff", width=T, height=T, count=array.shape[0], dtype=array.dtype,
                       crs=tile.crs, transform=tile.transform, nodata=nodata) as dst:
        dst.write(array)
        for b, d in enumerate(descriptions, start=1):
            dst.set_band_description(b, d)
        if tags:
            dst.update_tags(**tags)


def write_tiles(store, cfg, klass=None, tiles=TILES, period=YEAR, proba=True):
    grid = TileGrid.from_config(cfg.grid)
    klass = class_map() if klass is None else klass
    pmap = proba_map(klass)
    work = Path(store.work_dir("fixture"))
    legend = json.dumps({str(c["code"]): c["name"] for c in CLASSES})
    for tile_id in tiles:
        tile = grid.tile(tile_id)
        ix, iy = tile.index
        sl = (slice(iy * T, (iy + 1) * T), slice(ix * T, (ix + 1) * T))
        _write(work / f"{tile_id}-c.tif", klass[sl][None], tile, 65535, ["class"], {"classes": legend})
        store.put_file(work / f"{tile_id}-c.tif", f"class/{tile_id}/{period}/class.tif", move=True)
        if proba:
            _write(work / f"{tile_id}-p.tif", pmap[(slice(None), *sl)], tile, 255, [c["name"] for c in CLASSES])
            store.put_file(work / f"{tile_id}-p.tif", f"proba/{tile_id}/{period}/proba.tif", move=True)
        store.put_bytes(json.dumps({"schema": 1, "tile": tile_id, "state": "done"}).encode(), f"status/{tile_id}.json")


@pytest.fixture
def local_run(tmp_path):
    data, cfg = run_config(tmp_path, str(tmp_path / "store"))
    store = open_store(cfg.output)
    write_tiles(store, cfg)
    return data, cfg, store


def read_gpkg(path):
    meta, _, wkb, fields = pyogrio.raw.read(str(path))
    rows = [dict(zip(meta["fields"], vals)) for vals in zip(*fields)]
    for r, g in zip(rows, shapely.from_wkb(wkb)):
        r["geometry"] = g
    return meta, rows


def _box(col0, row0, col1, row1):
    """Grid-CRS box of pixel columns [col0, col1) and rows [row0, row1)."""
    x0, y0 = GRID["origin"]
    return shapely.box(x0 + col0 * PX, y0 - row1 * PX, x0 + col1 * PX, y0 - row0 * PX)


# --------------------------------------------------------------------------- the run


def test_polygons_cross_tile_borders_unbroken(local_run):
    _, cfg, store = local_run
    (layer,) = vectorize_run(cfg, store=store, years=[2019])
    assert layer.features == 4 and set(layer.assets) == {"gpkg", "parquet", "geojson"}
    _, rows = read_gpkg(store.root / output_key("class", YEAR, "gpkg"))
    by_class = {}
    for r in rows:
        by_class.setdefault(int(r["class"]), []).append(r)
    assert {k: len(v) for k, v in by_class.items()} == {1: 1, 2: 2, 5: 1}
    # A: 6 x 12 px across the X0/X1 edge: one polygon, exactly the box, 72 px x 100 m²
    a = next(r for r in by_class[2] if r["pixels"] == 72)
    assert a["area"] == 7200.0 and a["class_name"] == "forest"
    assert a["geometry"].equals(_box(10, 3, 22, 9)) and len(a["geometry"].exterior.coords) == 5
    assert a["tiles"] == "X0000_Y0000,X0001_Y0000"
    assert a["mean_proba"] == pytest.approx((36 * 0.8 + 36 * 0.6) / 72, abs=1e-12)
    # B: 8 x 10 px over the corner of 4 tiles
    (b,) = by_class[5]
    assert b["pixels"] == 80 and b["area"] == 8000.0 and b["geometry"].equals(_box(28, 12, 38, 20))
    assert b["tiles"] == "X0001_Y0000,X0001_Y0001,X0002_Y0000,X0002_Y0001"
    assert b["mean_proba"] == pytest.approx(0.6)
    # C: the U (8 + 8 + 5 px) whose two arms are separate in X0 and join in X1
    c = next(r for r in by_class[2] if r["pixels"] == 21)
    assert c["area"] == 2100.0 and c["geometry"].is_valid and c["geometry"].geom_type == "Polygon"
    # background: one polygon, everything else (the nodata corner is cut from its outline),
    # with a hole for each of A, B and C
    (bg,) = by_class[1]
    assert bg["pixels"] == 48 * 32 - 72 - 80 - 21 - 16 and len(bg["geometry"].interiors) == 3
    assert bg["area"] == bg["pixels"] * 100.0
    # the polygons tile the valid area exactly: no gap, no overlap
    geoms = [r["geometry"] for r in rows]
    assert shapely.union_all(geoms).area == sum(g.area for g in geoms) == (48 * 32 - 16) * 100.0


def test_formats_read_back_with_crs(local_run):
    _, cfg, store = local_run
    vectorize_run(cfg, store=store)
    gpkg = store.root / output_key("class", YEAR, "gpkg")
    info = pyogrio.read_info(str(gpkg))
    assert CRS.from_user_input(info["crs"]).to_epsg() == 3035 and info["features"] == 4
    assert info["geometry_type"] == "Polygon"
    # GeoParquet 1.1: WKB column, PROJJSON of the grid CRS, bbox
    pfile = pq.ParquetFile(store.root / output_key("class", YEAR, "parquet"))
    geo = json.loads(pfile.metadata.metadata[b"geo"])
    col = geo["columns"]["geometry"]
    assert geo["primary_column"] == "geometry" and col["encoding"] == "WKB"
    assert CRS.from_json_dict(col["crs"]).to_epsg() == 3035
    table = pfile.read()
    assert table.num_rows == 4 and sorted(table.column("pixels").to_pylist()) == [21, 72, 80, 48 * 32 - 189]
    parquet_geoms = shapely.from_wkb(table.column("geometry").to_pylist())
    _, rows = read_gpkg(gpkg)
    assert all(g.equals(r["geometry"]) for g, r in zip(parquet_geoms, rows))
    assert col["bbox"] == list(_box(0, 0, 48, 32).bounds)
    # GeoJSON: RFC 7946, WGS84 lon/lat, counter-clockwise exteriors, no 'crs' member
    gj_path = store.root / output_key("class", YEAR, "geojson")
    doc = json.loads(gj_path.read_text())
    assert "crs" not in doc and len(doc["features"]) == 4
    ginfo = pyogrio.read_info(str(gj_path))
    assert CRS.from_user_input(ginfo["crs"]).to_epsg() == 4326
    for f in doc["features"]:
        g = shapely.geometry.shape(f["geometry"])
        assert g.is_valid and shapely.is_ccw(g.exterior)
        assert all(not shapely.is_ccw(r) for r in g.interiors)
    forest = next(f for f in doc["features"] if f["properties"]["pixels"] == 72)
    from pyproj import Transformer

    lon, lat = Transformer.from_crs(3035, 4326, always_xy=True).transform(*_box(10, 3, 22, 9).centroid.coords[0])
    centre = shapely.geometry.shape(forest["geometry"]).centroid
    assert abs(centre.x - lon) < 1e-5 and abs(centre.y - lat) < 1e-5 and 0 < lon < 40 and 30 < lat < 60


def test_stac_item_validates(local_run, tmp_path):
    from ecocube.mosaic import mosaic_run

    _, cfg, store = local_run
    mosaic_run(cfg, store=store, threads=1)
    vectorize_run(cfg, store=store, formats=["gpkg", "geojson"])
    root = store.root / "catalog" / "catalog.json"
    assert validate_catalog(root) == []
    item_path = store.root / "catalog/class-polygons/class-polygons-2019-01-01/class-polygons-2019-01-01.json"
    item = json.loads(item_path.read_text())
    assert set(item["assets"]) == {"gpkg", "geojson"} and item["properties"]["ecocube:features"] == 4
    assert item["assets"]["gpkg"]["type"] == "application/geopackage+sqlite3"
    assert item["assets"]["geojson"]["proj:code"] == "EPSG:4326" and item["properties"]["proj:code"] == "EPSG:3035"
    for asset in item["assets"].values():
        f = item_path.parent / asset["href"]
        assert asset["file:checksum"] == "1220" + sha256_file(f) and asset["file:size"] == f.stat().st_size
    cat = json.loads(root.read_text())
    children = {ln["href"].split("/")[1] for ln in cat["links"] if ln["rel"] == "child"}
    assert {"class", "proba", "class-polygons"} <= children
    # a later finalize (catalog rebuilt from the mosaics) keeps the polygons item and its files
    from ecocube.stac import publish_catalog

    publish_catalog(cfg, store=store)
    assert item_path.exists() and (item_path.parent / "class-polygons.gpkg").exists()
    assert validate_catalog(root) == []


def test_rerun_keeps_and_overwrite_is_needed(local_run):
    _, cfg, store = local_run
    first = vectorize_run(cfg, store=store, catalog=False)
    again = vectorize_run(cfg, store=store, catalog=False)
    assert [v.state for v in first] == ["written"] and [v.state for v in again] == ["up-to-date"]
    # an up-to-date rerun leaves catalog/vectors.json alone: the same layers written compactly stay compact
    manifest = store.get_bytes("catalog/vectors.json")
    compact = json.dumps(json.loads(manifest), separators=(",", ":")).encode()
    assert compact != manifest
    store.put_bytes(compact, "catalog/vectors.json")
    (kept,) = vectorize_run(cfg, store=store, catalog=False)
    assert kept.state == "up-to-date" and store.get_bytes("catalog/vectors.json") == compact
    klass = class_map()
    klass[0:2, 0:2] = 5
    write_tiles(store, cfg, klass=klass, tiles=["X0000_Y0000"])
    with pytest.raises(FileOverwriteError, match="--overwrite"):
        vectorize_run(cfg, store=store, catalog=False)
    (redone,) = vectorize_run(cfg, store=store, catalog=False, overwrite=True)
    assert redone.state == "written" and redone.features == 5


def test_simplify_keeps_valid_coverage(tmp_path):
    rng = np.random.default_rng(3)
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.normal(size=(2 * T, 3 * T)), 2.0)
    klass = np.digitize(noise, np.quantile(noise, [0.33, 0.66])).astype(np.uint16)
    klass = np.array([1, 2, 5], np.uint16)[klass]
    _, cfg = run_config(tmp_path, str(tmp_path / "store"))
    store = open_store(cfg.output)
    write_tiles(store, cfg, klass=klass)
    (exact,) = vectorize_run(cfg, store=store, catalog=False, formats=["gpkg"])
    _, rows = read_gpkg(store.root / exact.assets["gpkg"]["key"])
    (simple,) = vectorize_run(cfg, store=store, catalog=False, formats=["gpkg"], simplify=25.0, overwrite=True)
    _, srows = read_gpkg(store.root / simple.assets["gpkg"]["key"])
    assert len(srows) == len(rows) > 5
    geoms = [r["geometry"] for r in srows]
    assert all(g.is_valid and not g.is_empty and g.geom_type == "Polygon" for g in geoms)
    n_exact = sum(shapely.get_num_coordinates(r["geometry"]) for r in rows)
    assert sum(shapely.get_num_coordinates(g) for g in geoms) < 0.7 * n_exact
    # neighbours still share their edges: no gap, no overlap, same total area
    total = 48 * 32 * 100.0
    assert shapely.union_all(geoms).area == pytest.approx(total, rel=1e-9)
    assert sum(g.area for g in geoms) == pytest.approx(total, rel=1e-9)
    assert all(r["area"] == pytest.approx(r["geometry"].area) for r in srows)
    assert [r["pixels"] for r in srows] == [r["pixels"] for r in rows]


def test_geographic_grid_area_on_ellipsoid(tmp_path):
    data, _ = run_config(tmp_path, str(tmp_path / "store"))
    data["grid"] = dict(crs="EPSG:4326", origin=[10.0, 50.0], pixel_size=0.001, tile_size=T)
    cfg = config_from_dict(data, base_dir=tmp_path, source="test")
    store = open_store(cfg.output)
    write_tiles(store, cfg, proba=False)
    (layer,) = vectorize_run(cfg, store=store, catalog=False, formats=["gpkg"])
    _, rows = read_gpkg(store.root / layer.assets["gpkg"]["key"])
    a = next(r for r in rows if r["pixels"] == 72)
    # 12 x 6 pixels of 0.001°: ~71.6 m x 111.2 m each at 50° N
    assert a["area"] == pytest.approx(72 * 0.001 * 111_320 * 0.001 * 111_320 * np.cos(np.radians(49.995)), rel=5e-3)
    assert np.isnan(a["mean_proba"])  # no proba tiles


# --------------------------------------------------------------------------- CLI


def _cli(tmp_path, data, *args):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(data))
    return subprocess.run([sys.executable, "-m", "ecocube", "vectorize", str(run_yaml), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)


def test_cli_missing_year_and_product_are_one_line_exit_2(local_run, tmp_path):
    data, _, _ = local_run
    res = _cli(tmp_path, data, "--year", "2021")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "year 2021" in lines[0] and "years with tiles: 2019" in lines[0]
    res = _cli(tmp_path, data, "--product", "uncertainty")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "'uncertainty' is not a class map" in res.stderr
    res = _cli(tmp_path, data, "--product", "nope")
    assert res.returncode == 2 and "unknown product 'nope'" in res.stderr
    data2 = dict(data, output=dict(data["output"], store=str(tmp_path / "empty")))
    res = _cli(tmp_path, data2)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "no finished 'class' tiles" in res.stderr
    res = _cli(tmp_path, data, "--format", "gpkg", "--simplify", "5")
    assert res.returncode == 0, res.stderr
    assert "class-polygons-2019-01-01: 4 polygons from 6 tiles" in res.stdout


def _main(argv, capsys):
    from ecocube.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_dry_run_says_what_would_be_written_kept_or_refused_and_writes_nothing(local_run, tmp_path, capsys):
    data, cfg, store = local_run
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(data))
    root = tmp_path / "store"
    item = root / "catalog/class-polygons/class-polygons-2019-01-01"
    before = _tree(root)
    code, out, err = _main(["vectorize", run_yaml, "--dry-run"], capsys)
    assert code == 0, err
    assert out.splitlines() == [
        "years: 1 to write, 0 up to date, 0 changed since they were made",
        f"  write 2019 from 6 tiles: {item}/class-polygons.gpkg, {item}/class-polygons.parquet, "
        f"{item}/class-polygons.geojson",
        f"then {root}/catalog/vectors.json and the STAC catalog",
        "(dry run: nothing written)"]
    assert _tree(root) == before
    code, out, _ = _main(["vectorize", run_yaml, "--dry-run", "--format", "gpkg", "--no-catalog"], capsys)
    assert out.splitlines()[1:3] == [f"  write 2019 from 6 tiles: {item}/class-polygons.gpkg",
                                     f"then {root}/catalog/vectors.json"]

    vectorize_run(cfg, store=store, catalog=False)
    made = _tree(root)
    code, out, _ = _main(["vectorize", run_yaml, "--dry-run"], capsys)
    assert code == 0 and out.splitlines() == ["years: 0 to write, 1 up to date, 0 changed since they were made",
                                              "  up to date 2019: 4 polygons", "(dry run: nothing written)"]
    klass = class_map()
    klass[0:2, 0:2] = 5  # one tile redone with other content
    write_tiles(store, cfg, klass=klass, tiles=["X0000_Y0000"])
    changed = _tree(root)
    assert changed != made
    code, out, _ = _main(["vectorize", run_yaml, "--dry-run"], capsys)
    assert code == 0 and out.splitlines() == [
        "years: 0 to write, 0 up to date, 1 changed since they were made (refused without --overwrite)",
        f"  changed {item}/class-polygons.gpkg", "(dry run: nothing written)"]
    code, out, _ = _main(["vectorize", run_yaml, "--dry-run", "--overwrite"], capsys)
    assert code == 0 and out.splitlines()[0] == "years: 1 to write, 0 up to date, 0 changed since they were made"
    assert _tree(root) == changed
    # what the dry run cannot plan fails as the real run does: one line, exit 2
    code, _, err = _main(["vectorize", run_yaml, "--dry-run", "--year", "2021"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "year 2021" in err
    # and the real run refuses exactly what the dry run said it would
    code, _, err = _main(["vectorize", run_yaml], capsys)
    assert code == 1 and "1 polygon outputs exist but their tiles or settings changed" in err
    assert f"{item}/class-polygons.gpkg" in err


def test_vectorize_on_s3(s3_bucket, seaweed, tmp_path):
    data, _ = run_config(tmp_path, f"s3://{s3_bucket}/run",
                         s3={"endpoint_url": seaweed.endpoint_url, "region": seaweed.region})
    cfg = config_from_dict(data, base_dir=tmp_path, source="test")
    store = open_store(cfg.output)
    write_tiles(store, cfg)
    (layer,) = vectorize_run(cfg, store=store, formats=["gpkg", "parquet"])
    local = store.get_file(layer.assets["gpkg"]["key"], tmp_path / "x.gpkg")
    _, rows = read_gpkg(local)
    assert sorted(r["pixels"] for r in rows) == [21, 72, 80, 48 * 32 - 189]
    assert store.exists("catalog/catalog.json") and store.exists("catalog/vectors.json")


# --------------------------------------------------------------------------- pure logic


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_border_merger_equals_whole_map(seed):
    """Tile by tile, in a random order, gives exactly the polygons of the whole map at once."""
    from rasterio.features import shapes

    rng = np.random.default_rng(seed)
    nx, ny, t = 4, 3, 8
    m = rng.integers(0, 3, (ny * t, nx * t)).astype(np.uint16)
    m = np.repeat(np.repeat(m[::2, ::2], 2, 0), 2, 1)  # 2 x 2 blocks: regions of many sizes
    valid = rng.random(m.shape) > 0.05
    whole = sorted((int(v), shapely.normalize(shapely.geometry.shape(g)).wkt)
                   for g, v in shapes(m, mask=valid, connectivity=4))
    tiles = [(ix, iy) for iy in range(ny) for ix in range(nx)]
    merger = BorderMerger(tiles, t)
    out = []
    for k in rng.permutation(len(tiles)):
        ix, iy = tiles[k]
        sl = (slice(iy * t, (iy + 1) * t), slice(ix * t, (ix + 1) * t))
        out += merger.add_tile(f"X{ix:04d}_Y{iy:04d}", (ix, iy), m[sl], valid[sl])
    out += merger.finish()
    got = sorted((p.value, shapely.normalize(p.geometry).wkt) for p in out)
    assert got == whole
    assert sum(p.pixels for p in out) == valid.sum()


def test_border_merger_holds_only_border_regions():
    """Stripes one tile row high, across the map, with an interior blob per tile: blobs come
    out with their tile, each stripe once the row below it is read; at most two rows held."""
    t, nx, ny = 16, 6, 6
    m = np.repeat(np.arange(ny, dtype=np.uint16) % 2, t)[:, None].repeat(nx * t, 1)
    blob = np.zeros((ny * t, nx * t), bool)
    for iy in range(ny):
        for ix in range(nx):
            blob[iy * t + 4:iy * t + 12, ix * t + 4:ix * t + 12] = True
    m[blob] = 7
    merger = BorderMerger([(x, y) for y in range(ny) for x in range(nx)], t)
    emitted_at = {}
    for iy in range(ny):
        for ix in range(nx):
            sl = (slice(iy * t, (iy + 1) * t), slice(ix * t, (ix + 1) * t))
            got = merger.add_tile(f"X{ix:04d}_Y{iy:04d}", (ix, iy), m[sl], np.ones((t, t), bool))
            assert sum(p.value == 7 for p in got) == 1  # the tile's blob is final at once
            for p in got:
                if p.value != 7:
                    emitted_at[p.geometry.bounds[1]] = (ix, iy, p)
    for p in merger.finish():
        emitted_at[p.geometry.bounds[1]] = ("finish", None, p)
    assert len(emitted_at) == ny  # one whole polygon per stripe
    for iy in range(ny):
        when_x, when_y, p = emitted_at[float(iy * t)]
        assert p.pixels == nx * t * t - nx * 64 and len(p.tiles) == nx and len(p.geometry.interiors) == nx
        if iy < ny - 1:  # streamed: out when the last tile of the row below is read
            assert (when_x, when_y) == (nx - 1, iy + 1)
    assert merger.carried_max <= 2 * nx


def test_merger_rejects_wrong_tiles():
    merger = BorderMerger([(0, 0)], 4)
    with pytest.raises(ValueError, match="not among"):
        merger.add_tile("X0001_Y0000", (1, 0), np.zeros((4, 4)), np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="never added"):
        merger.finish()


def test_simplify_polygons_zero_tolerance_is_identity():
    g = [shapely.box(0, 0, 1, 1)]
    assert simplify_polygons(g, 0)[0] is g[0]


def test_merge_instances_by_overlap():
    a = shapely.box(0, 0, 10, 10)  # tile A
    b = shapely.box(1, 0, 11, 10)  # tile B: the same building, IoU 9/11 = 0.82
    c = shapely.box(8, 0, 18, 10)  # tile B: another one, IoU with a 2/18
    d = shapely.box(0.5, 0, 10.5, 10)  # tile A again: never merged with a (same tile)
    e = shapely.box(100, 100, 110, 110)
    out = merge_instances([a, b, c, d, e], ["A", "B", "B", "A", "C"], scores=[0.9, 0.7, 0.8, 0.6, 0.5],
                          classes=[1, 1, 1, 1, 1], iou=0.5)
    # a-b (0.82) and b-d (0.90) are cross-tile duplicates: one object; c and e stay
    assert [o["sources"] for o in out] == [[0, 1, 3], [2], [4]]
    assert out[0]["geometry"].equals(shapely.box(0, 0, 11, 10)) and out[0]["score"] == 0.9
    assert out[0]["tiles"] == ["A", "B"]
    # a higher threshold keeps b apart from a (0.82) but still joins b and d (0.905)
    out = merge_instances([a, b, d], ["A", "B", "A"], iou=0.85)
    assert [o["sources"] for o in out] == [[0], [1, 2]]
    # other class: never merged
    out = merge_instances([a, b], ["A", "B"], classes=[1, 2], iou=0.5)
    assert len(out) == 2
    with pytest.raises(ValueError, match="iou"):
        merge_instances([a], ["A"], iou=0)
    with pytest.raises(ValueError, match="same length"):
        merge_instances([a, b], ["A"])
