"""Mosaics: VRT over tile outputs → valid COGs with overviews, equal to the tiles."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from ecocube.config import config_from_dict
from ecocube.errors import FileOverwriteError
from ecocube.grid import TileGrid
from ecocube.manifest import read_manifest
from ecocube.mosaic import (
    collection_for,
    find_layers,
    mosaic_run,
    output_key,
    render_thumbnail,
)
from ecocube.store import open_store

CLASSES = [
    {"code": 1, "name": "cropland", "color": "#f2d16b"},
    {"code": 2, "name": "forest", "color": "#1a7f37"},
    {"code": 5, "name": "water", "color": "#2b6cb0"},
]
GRID = dict(crs="EPSG:3035", origin=[3900000.0, 3200000.0], pixel_size=10.0, tile_size=64)
DONE_TILES = ("X0000_Y0000", "X0001_Y0000", "X0002_Y0000", "X0000_Y0001", "X0001_Y0001")
RUNNING_TILE = "X0002_Y0001"  # has outputs but no 'done' record: must be left out
YEAR = "2019-01-01"
PERIODS = ("2019-01-01", "2019-04-01")


def run_config(tmp_path: Path, store: str, **finalize) -> object:
    data = {
        "name": "test-run",
        "grid": GRID,
        "aoi": {"tiles": [*DONE_TILES, RUNNING_TILE]},
        "inputs": {"periods": {"start_year": 2019, "end_year": 2019, "season_size": 4},
                   "sources": [{"name": "s2", "href": "in/{band}.tif", "bands": ["blue", "nir"]}]},
        "model": {"path": str(tmp_path / "model"), "classes": CLASSES},
        "output": {"store": store},
        "finalize": {"blocksize": 128, **finalize},
    }
    return config_from_dict(data, base_dir=tmp_path, source="test")


def _write_tif(path: Path, array: np.ndarray, tile, *, nodata, scale=1.0, descriptions=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=tile.width, height=tile.height, count=array.shape[0],
                   dtype=array.dtype, crs=tile.crs, transform=tile.transform, nodata=nodata, tiled=True,
                   blockxsize=32, blockysize=32, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
        if scale != 1.0:
            dst.scales = [scale] * array.shape[0]
        for b, desc in enumerate(descriptions or [], start=1):
            dst.set_band_description(b, desc)


def tile_arrays(tile_id: str, seed: int = 0) -> dict[tuple[str, str, str], np.ndarray]:
    """Deterministic outputs of one tile, keyed by (product, period, layer)."""
    rng = np.random.default_rng(zlib.crc32(tile_id.encode()) + seed)
    shape = (64, 64)
    proba = rng.integers(0, 101, (3, *shape)).astype(np.uint8)
    proba[:, :4, :4] = 255  # a nodata corner
    klass = np.array([1, 2, 5], np.uint16)[rng.integers(0, 3, shape)][None]
    klass[:, :4, :4] = 65535
    out = {("proba", YEAR, "proba"): proba, ("class", YEAR, "class"): klass,
           ("uncertainty", YEAR, "uncertainty"): rng.integers(0, 60, (1, *shape)).astype(np.uint8)}
    for period in PERIODS:
        for band in ("blue", "nir"):
            comp = rng.integers(100, 4000, (1, *shape)).astype(np.int16)
            comp[:, 10:12, :] = -32768
            out[("composite", period, band)] = comp
            out[("flags", period, band)] = rng.choice(np.array([0, 1, 2, 255], np.uint8), (1, *shape))
            out[("count", period, band)] = rng.integers(0, 9, (1, *shape)).astype(np.uint16)
    return out


NODATA = {"proba": 255, "class": 65535, "uncertainty": 255, "composite": -32768, "flags": None, "count": None}


def write_tile_outputs(store, cfg, tile_ids=DONE_TILES, running=(RUNNING_TILE,), seed=0, *,
                       with_outputs=False) -> dict:
    """Tile outputs with the layout of CONTRACT.md, written through the store. With
    ``with_outputs`` the records list every file's size and sha256, as a tile's do."""
    import hashlib

    grid = TileGrid.from_config(cfg.grid)
    arrays = {}
    work = Path(store.work_dir("fixture"))
    for tile_id in (*tile_ids, *running):
        tile = grid.tile(tile_id)
        outputs = {}
        files: dict[tuple[str, str | None, str], list[tuple[str, np.ndarray]]] = {}
        for (product, period, layer), arr in tile_arrays(tile_id, seed).items():
            arrays[(product, tile_id, period, layer)] = arr
            # per-period products: one stacked file per layer, raster band i = period i
            stacked = product in ("composite", "flags", "count")
            files.setdefault((product, None if stacked else period, layer), []).append((period, arr))
        for (product, period, layer), parts in files.items():
            local = work / f"{tile_id}-{product}-{period}-{layer}.tif"
            if period is None:
                descriptions = [per for per, _ in parts]
            else:
                descriptions = [c["name"] for c in CLASSES] if product == "proba" else [layer]
            _write_tif(local, np.concatenate([a for _, a in parts]), tile, nodata=NODATA[product],
                       scale=0.0001 if product == "composite" else 1.0, descriptions=descriptions)
            key = f"{product}/{tile_id}/{layer}.tif" if period is None else f"{product}/{tile_id}/{period}/{layer}.tif"
            outputs[key] = {"sha256": hashlib.sha256(local.read_bytes()).hexdigest(), "size": local.stat().st_size,
                            **({"periods": descriptions} if period is None else {})}
            store.put_file(local, key)
        state = "done" if tile_id in tile_ids else "running"
        record = {"schema": 1, "tile": tile_id, "state": state, **({"outputs": outputs} if with_outputs else {})}
        store.put_bytes(json.dumps(record).encode(), f"status/{tile_id}.json")
    return arrays


@pytest.fixture
def local_run(tmp_path):
    cfg = run_config(tmp_path, str(tmp_path / "store"))
    store = open_store(cfg.output)
    arrays = write_tile_outputs(store, cfg)
    return cfg, store, arrays


def _assert_equals_tiles(path, product, period, layer, arrays, grid, nodata):
    with rasterio.open(path) as src:
        mosaic = src.read()
        transform = src.transform
    seen = np.zeros(mosaic.shape[1:], bool)
    for tile_id in DONE_TILES:
        tile = grid.tile(tile_id)
        col = round((tile.bounds.left - transform.c) / transform.a)
        row = round((transform.f - tile.bounds.top) / -transform.e)
        part = mosaic[:, row:row + 64, col:col + 64]
        np.testing.assert_array_equal(part, arrays[(product, tile_id, period, layer)], err_msg=f"{tile_id} {path}")
        seen[row:row + 64, col:col + 64] = True
    if nodata is not None:
        # the hole where the unfinished tile would be is nodata, not zeros or stale data
        assert (mosaic[:, ~seen] == nodata).all()


def test_mosaic_run_local(local_run):
    cfg, store, arrays = local_run
    grid = TileGrid.from_config(cfg.grid)
    layers = mosaic_run(cfg, store=store, threads=2)
    # 3 yearly layers + (composite, flags, count) × 2 bands × 2 periods
    assert len(layers) == 3 + 3 * 2 * 2
    assert {x.collection for x in layers} == {"proba", "class", "uncertainty", "composite-blue",
                                               "composite-nir", "flags"}
    for layer in layers:
        path = Path(store.url(layer.key))
        ok, errors, _ = cog_validate(str(path))
        assert ok, (path, errors)
        assert layer.tiles == sorted(DONE_TILES)
        assert layer.shape == [128, 192]
        with rasterio.open(path) as src:
            assert src.overviews(1) == [2], path
            assert src.block_shapes[0] == (128, 128)
            assert src.nodata == NODATA[layer.product] or (src.nodata is None and NODATA[layer.product] is None)
            assert src.profile["compress"] == "deflate"
            assert src.tags()["ECOCUBE_SOURCES_SHA256"] == layer.sources_digest
            if layer.product == "composite":
                assert src.scales == (0.0001,)
            if layer.product == "proba":
                assert src.descriptions == ("cropland", "forest", "water")
            if layer.product == "class":
                cmap = src.colormap(1)
                assert cmap[1] == (0xF2, 0xD1, 0x6B, 255) and cmap[5] == (0x2B, 0x6C, 0xB0, 255)
        assert layer.size == path.stat().st_size
        import hashlib

        assert layer.checksum == "1220" + hashlib.sha256(path.read_bytes()).hexdigest()
        # one thumbnail per STAC item: none for count layers, only the first band's for flags
        if layer.product == "count" or (layer.product == "flags" and layer.layer != cfg.bands[0]):
            assert layer.thumbnail_key is None
        else:
            assert Path(store.url(layer.thumbnail_key)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        _assert_equals_tiles(path, layer.product, layer.period, layer.layer, arrays, grid, NODATA[layer.product])
        # the published VRT opens and holds the same pixels (relative paths into the store)
        with rasterio.open(store.url(layer.vrt_key)) as vrt, rasterio.open(path) as cog:
            np.testing.assert_array_equal(vrt.read(), cog.read())


def test_vrt_from_the_grid_and_records_opens_one_tile_file_and_equals_the_mosaic(tmp_path):
    """Records that list their outputs: each layer's VRT is built from one tile header and the
    grid; the other tile files are not opened (removing them does not change the XML), the
    XML equals the one built from every header, and GDAL reads the published VRT as the COG
    and the tiles."""
    from ecocube import mosaic as M

    cfg = run_config(tmp_path, str(tmp_path / "store"))
    store = open_store(cfg.output)
    arrays = write_tile_outputs(store, cfg, with_outputs=True)
    grid = TileGrid.from_config(cfg.grid)
    layers = mosaic_run(cfg, store=store, threads=2, products=["class", "proba", "composite"])
    assert len(layers) == 2 + 4
    for layer in layers:
        path = store.url(layer.key)
        _assert_equals_tiles(path, layer.product, layer.period, layer.layer, arrays, grid, NODATA[layer.product])
        with rasterio.open(store.url(layer.vrt_key)) as vrt, rasterio.open(path) as cog:
            assert (vrt.width, vrt.height, vrt.count, vrt.dtypes, vrt.nodata) == \
                (192, 128, cog.count, cog.dtypes, cog.nodata)
            assert vrt.transform == cog.transform and vrt.crs == cog.crs
            np.testing.assert_array_equal(vrt.read(), cog.read())
            if layer.product == "proba":
                assert vrt.descriptions == ("cropland", "forest", "water")
            if layer.product == "composite":
                assert vrt.scales == (0.0001,)
    (src,) = [x for x in find_layers(cfg, store, products=["proba"])]
    assert all(src.expected) and len(src.tiles) == 5
    paths = [store.gdal_path(k) for k in src.keys]
    every = M.vrt_xml(M._read_tile_meta(paths, src.keys, 1, lambda: M._mosaic_env(store, 1, 2**26)))
    for key in src.keys[1:]:
        Path(store.url(key)).unlink()
    from_grid = M.vrt_xml(M._layer_meta_from_grid(cfg, src, paths, lambda: M._mosaic_env(store, 1, 2**26)))
    assert from_grid == every
    assert from_grid.count("<ComplexSource>") == 5 * 3


def test_vrt_from_the_grid_refuses_a_tile_file_off_the_grid(tmp_path):
    """A tile file whose header does not fit the run's grid is named before any VRT is made."""
    import hashlib

    from ecocube.errors import StoreError

    cfg = run_config(tmp_path, str(tmp_path / "store"))
    store = open_store(cfg.output)
    grid = TileGrid.from_config(cfg.grid)
    for tile_id, shift in (("X0000_Y0000", 5.0), ("X0001_Y0000", 0.0)):  # the first one half a pixel off
        tile = grid.tile(tile_id)
        local = tmp_path / f"{tile_id}.tif"
        from affine import Affine

        shifted = type(tile)(tile.id, tile.index, tile.crs, tile.bounds, tile.transform @ Affine.translation(
            shift / 10, 0), tile.shape)
        _write_tif(local, tile_arrays(tile_id)[("class", YEAR, "class")], shifted, nodata=65535)
        key = f"class/{tile_id}/{YEAR}/class.tif"
        store.put_file(local, key)
        rec = {"schema": 1, "tile": tile_id, "state": "done",
               "outputs": {key: {"sha256": hashlib.sha256(local.read_bytes()).hexdigest(),
                                 "size": local.stat().st_size}}}
        store.put_bytes(json.dumps(rec).encode(), f"status/{tile_id}.json")
    with pytest.raises(StoreError) as err:
        mosaic_run(cfg, store=store, products=["class"])
    assert str(err.value) == ("tile output class/X0000_Y0000/2019-01-01/class.tif does not fit the run's grid: "
                              "bounds (3900005.0, 3199360.0, 3900645.0, 3200000.0), the grid's tile has "
                              "(3900000.0, 3199360.0, 3900640.0, 3200000.0)")
    assert not store.list("catalog/class/")


def test_mosaic_statistics_and_manifest(local_run):
    cfg, store, arrays = local_run
    layers = {x.key: x for x in mosaic_run(cfg, store=store, threads=1, products=["composite", "class"])}
    comp = layers[output_key("composite", "blue", "2019-04-01")]
    values = np.concatenate([arrays[("composite", t, "2019-04-01", "blue")].ravel() for t in DONE_TILES])
    valid = values[values != -32768].astype(np.float64) * 0.0001
    stats = comp.statistics[0]
    assert stats["minimum"] == pytest.approx(valid.min())
    assert stats["maximum"] == pytest.approx(valid.max())
    assert stats["mean"] == pytest.approx(valid.mean())
    assert stats["stddev"] == pytest.approx(valid.std(), rel=1e-6)
    # valid share of the whole mosaic: 5 of 6 tiles, minus the planted nodata rows
    assert stats["valid_percent"] == pytest.approx(100 * valid.size / (128 * 192), abs=1e-3)
    manifest = read_manifest(store)
    assert set(manifest) == set(layers)
    assert manifest[comp.key].checksum == comp.checksum


def test_rerun_skips_up_to_date_and_refuses_changed_tiles(local_run, tmp_path):
    cfg, store, _ = local_run
    first = mosaic_run(cfg, store=store, products=["class"])
    mtime = Path(store.url(first[0].key)).stat().st_mtime_ns
    again = mosaic_run(cfg, store=store, products=["class"])
    assert [x.state for x in again] == ["up-to-date"]
    assert Path(store.url(first[0].key)).stat().st_mtime_ns == mtime
    # the unfinished tile finishes: the mosaic is stale and must not be silently kept
    store.put_bytes(json.dumps({"schema": 1, "tile": RUNNING_TILE, "state": "done"}).encode(),
                    f"status/{RUNNING_TILE}.json")
    with pytest.raises(FileOverwriteError, match="tiles changed"):
        mosaic_run(cfg, store=store, products=["class"])
    redone = mosaic_run(cfg, store=store, products=["class"], overwrite=True)
    assert redone[0].state == "written" and len(redone[0].tiles) == 6
    with rasterio.open(store.url(redone[0].key)) as src:
        assert (src.read(1) != 65535).sum() == 6 * (64 * 64 - 16)


def test_find_layers_ignores_unfinished_and_foreign_keys(local_run):
    cfg, store, _ = local_run
    store.put_bytes(b"junk", "class/X0000_Y0000/2019-01-01/notes.txt")
    layers = find_layers(cfg, store, products=["class", "composite"])
    assert [(x.product, x.layer, x.period) for x in layers][:1] == [("class", "class", YEAR)]
    assert all(RUNNING_TILE not in x.tiles for x in layers)
    assert len(layers) == 1 + 2 * 2


@pytest.mark.slow
def test_reprojection_to_wgs84(tmp_path):
    cfg = run_config(tmp_path, str(tmp_path / "store"), reproject="EPSG:4326")
    store = open_store(cfg.output)
    arrays = write_tile_outputs(store, cfg)
    layers = mosaic_run(cfg, store=store, products=["class", "uncertainty"])
    for layer in layers:
        path = store.url(layer.key)
        assert cog_validate(path)[0]
        assert layer.crs == "EPSG:4326"
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 4326
            data = src.read(1)
            if layer.product == "class":
                # nearest neighbour: only real class codes (and nodata) appear
                assert set(np.unique(data)) <= {1, 2, 5, 65535}
                assert src.colormap(1)[2] == (0x1A, 0x7F, 0x37, 255)
            valid = data != src.nodata
            assert 0.5 < valid.mean() < 1.0
            # nearest neighbour: an output pixel holds the value of the tile pixel under its centre
            from rasterio.warp import transform as warp

            grid = TileGrid.from_config(cfg.grid)
            rows, cols = np.nonzero(valid)
            pick = np.linspace(0, rows.size - 1, 400).astype(int)
            xs, ys = src.xy(rows[pick], cols[pick])
            ex, ey = warp("EPSG:4326", "EPSG:3035", xs, ys)
            agree = 0
            for x, y, r, c in zip(ex, ey, rows[pick], cols[pick]):
                tile = grid.tile(grid.index_at(x, y))
                tr, tc = int((tile.bounds.top - y) // 10), int((x - tile.bounds.left) // 10)
                agree += data[r, c] == arrays[(layer.product, tile.id, YEAR, layer.layer)][0, tr, tc]
            if layer.product == "class":
                assert agree >= 0.97 * pick.size, agree
            else:  # bilinear: values stay in the range of the tiles, the mean is kept
                tiles_mean = np.mean([arrays[("uncertainty", t, YEAR, "uncertainty")] for t in DONE_TILES])
                assert data[valid].min() >= 0 and data[valid].max() <= 59
                assert abs(data[valid].mean() - tiles_mean) < 1.0


@pytest.mark.slow
def test_zstd_and_thumbnail_legend(tmp_path):
    cfg = run_config(tmp_path, str(tmp_path / "store"), compress="zstd")
    store = open_store(cfg.output)
    write_tile_outputs(store, cfg)
    (layer,) = mosaic_run(cfg, store=store, products=["class"])
    with rasterio.open(store.url(layer.key)) as src:
        assert src.profile["compress"] == "zstd"
    png = tmp_path / "t.png"
    render_thumbnail(store.url(layer.key), png, product="class", title="class 2019", classes=cfg.model.classes)
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[0] > 100 and img.shape[1] > 200
    # the legend shows the forest colour #1a7f37 somewhere
    rgb = (img[..., :3] * 255).round().astype(int).reshape(-1, 3)
    assert ((np.abs(rgb - [0x1A, 0x7F, 0x37]).sum(axis=1)) < 6).any()


def test_collection_naming():
    assert collection_for("composite", "nir") == ("composite-nir", "nir")
    assert collection_for("count", "nir") == ("composite-nir", "count")
    assert collection_for("flags", "nir") == ("flags", "nir")
    assert output_key("class", "class", YEAR) == "catalog/class/class-2019-01-01/class.tif"


def test_mosaic_on_s3(s3_bucket, seaweed, tmp_path):
    cfg = config_from_dict({**_cfg_dict(tmp_path), "output": {
        "store": f"s3://{s3_bucket}/run", "s3": {"endpoint_url": seaweed.endpoint_url, "region": seaweed.region}}},
        base_dir=tmp_path, source="test")
    store = open_store(cfg.output)
    arrays = write_tile_outputs(store, cfg, tile_ids=DONE_TILES[:2], running=())
    layers = mosaic_run(cfg, store=store, products=["class", "composite"], threads=2)
    assert len(layers) == 1 + 4
    keys = set(store.list("catalog/"))
    for layer in layers:
        assert {layer.key, layer.vrt_key} <= keys
        if layer.product != "count":
            assert layer.thumbnail_key in keys
        local = store.get_file(layer.key, tmp_path / f"{layer.item_id}-{layer.asset}.tif")
        assert cog_validate(str(local))[0]
        with rasterio.open(local) as src:
            data = src.read()
        np.testing.assert_array_equal(data[:, :, :64], arrays[(layer.product, "X0000_Y0000", layer.period, layer.layer)])
        np.testing.assert_array_equal(data[:, :, 64:], arrays[(layer.product, "X0001_Y0000", layer.period, layer.layer)])
        # the published VRT points at the tiles through /vsis3/
        assert f"/vsis3/{s3_bucket}/run/{layer.product}/X0000_Y0000/" in store.get_text(layer.vrt_key)
    assert isinstance(read_manifest(store), dict) and len(read_manifest(store)) == 5


def _cfg_dict(tmp_path):
    return {
        "name": "test-run", "grid": GRID, "aoi": {"tiles": list(DONE_TILES)},
        "inputs": {"periods": {"start_year": 2019, "end_year": 2019, "season_size": 4},
                   "sources": [{"name": "s2", "href": "in/{band}.tif", "bands": ["blue", "nir"]}]},
        "model": {"path": str(tmp_path / "model"), "classes": CLASSES},
        "finalize": {"blocksize": 128},
    }




def test_verify_sources_on_s3_from_listings_then_per_file_where_the_listing_is_not_enough(s3_bucket, seaweed):
    """A file written before its tile's done record, with the recorded size, is accepted from
    the listing (no HEAD); one rewritten after the record is checked by HEAD (its sha256), a
    wrong size is refused from the listing; each problem is one line naming tile and file."""
    import hashlib
    import time

    from ecocube.errors import StoreError
    from ecocube.mosaic import LayerSources, verify_sources
    from ecocube.store import S3Store

    store = S3Store(s3_bucket, prefix="run", endpoint_url=seaweed.endpoint_url, region="us-east-1")
    tiles = ("X0000_Y0000", "X0001_Y0000", "X0002_Y0000")
    keys = tuple(f"composite/{t}/2019-01-01/red.tif" for t in tiles)
    contents = {k: f"pixels of {k}".encode() for k in keys}
    for k, data in contents.items():
        store.put_bytes(data, k)
    time.sleep(1.1)  # S3 LastModified has whole seconds: the records come strictly later
    expected = tuple({"sha256": hashlib.sha256(contents[k]).hexdigest(), "size": len(contents[k])} for k in keys)
    for t, k, e in zip(tiles, keys, expected):
        store.put_bytes(json.dumps({"tile": t, "state": "done", "outputs": {k: e}}).encode(), f"status/{t}.json")
    src = LayerSources("composite", "red", "2019-01-01", tiles, keys, expected)
    assert verify_sources(store, [src]) == {"files": 3, "from_listing": 3, "checked_each": 0}

    # same size, other content, written after the record: only a HEAD can tell
    store.put_bytes(contents[keys[1]].upper(), keys[1])
    # truncated: the listing's size tells
    store.put_bytes(contents[keys[2]][:-3], keys[2])
    with pytest.raises(StoreError) as err:
        verify_sources(store, [src])
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert lines[0] == (f"tile X0002_Y0000: {store.url(keys[2])} does not match its status record "
                        f"(size {len(contents[keys[2]]) - 3}, recorded {len(contents[keys[2]])})")
    assert lines[1].startswith(f"tile X0001_Y0000: {store.url(keys[1])} does not match its status record (sha256 ")
    # a missing file
    store.delete(keys[0])
    with pytest.raises(StoreError, match=r"tile X0000_Y0000: .*red.tif cannot be read: not in the store's listing"):
        verify_sources(store, [src])
