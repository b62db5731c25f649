"""STAC catalog: built from the mosaics, valid offline, readable by pystac, published to S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pystac
import pytest
import yaml
from click.testing import CliRunner

from ecocube.cli import cli
from ecocube.config import config_from_dict
from ecocube.errors import ConfigError
from ecocube.finalize import finalize
from ecocube.stac import (
    CLASSIFICATION,
    PACKAGED_SCHEMAS,
    PACKAGED_TEMPLATES,
    load_templates,
    period_interval,
    schema_registry,
    validate_catalog,
)
from ecocube.store import open_store
from test_mosaic import CLASSES, DONE_TILES, _cfg_dict, run_config, write_tile_outputs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run with every product mosaicked and catalogued once for the module (local store)."""
    tmp = tmp_path_factory.mktemp("stac-run")
    (tmp / "model").mkdir()
    (tmp / "model" / "model.json").write_text(json.dumps({
        "classes": [1, 2, 5], "feature_names": [f"f{i}" for i in range(80)],
        "metrics": {"overall_accuracy": 0.91}, "created": "2024-01-01T00:00:00Z"}))
    cfg = run_config(tmp, str(tmp / "store"))
    store = open_store(cfg.output)
    write_tile_outputs(store, cfg)
    result = finalize(cfg, store=store, threads=2)
    return cfg, store, result


def test_catalog_validates_and_reads_back(finished_run):
    cfg, store, result = finished_run
    catalog_path = result["catalog"]
    assert catalog_path == Path(store.url("catalog/catalog.json"))
    assert validate_catalog(catalog_path) == []
    cat = pystac.Catalog.from_file(str(catalog_path))
    assert cat.id == "ecocube"
    colls = {c.id: c for c in cat.get_collections()}
    assert set(colls) == {"proba", "class", "uncertainty", "composite-blue", "composite-nir", "flags"}
    # pystac's own validation would fetch schemas from the network; ours is offline, so
    # check the parts pystac parses instead
    cls = colls["class"]
    assert cls.license == "CC-BY-4.0" and cls.title == "test-run: land cover class"
    assert cls.extra_fields["ecocube:model"]["metrics"]["overall_accuracy"] == 0.91
    assert cls.extra_fields["ecocube:model"]["feature_names"]["count"] == 80
    assert cls.extra_fields["ecocube:software"]["gdal"]
    assert any(link.rel == "license" for link in cls.links)
    (item,) = list(cls.get_items())
    assert item.id == "class-2019-01-01"
    assert item.properties["start_datetime"] == "2019-01-01T00:00:00Z"
    assert item.properties["end_datetime"] == "2019-12-31T23:59:59Z"
    assert item.properties["proj:code"] == "EPSG:3035"
    assert item.properties["proj:shape"] == [128, 192]
    asset = item.assets["class"]
    assert asset.media_type == pystac.MediaType.COG
    assert asset.href == "./class.tif"
    local = Path(asset.get_absolute_href())
    assert asset.extra_fields["file:size"] == local.stat().st_size
    import hashlib

    assert asset.extra_fields["file:checksum"] == "1220" + hashlib.sha256(local.read_bytes()).hexdigest()
    classes = asset.extra_fields["classification:classes"]
    assert [(c["value"], c["name"], c["color_hint"]) for c in classes] == [
        (c["code"], c["name"], c["color"].lstrip("#").upper()) for c in CLASSES]
    # the file declares the versions whose schemas ship (pystac migrates on read, to v2.0.0)
    raw = json.loads(Path(item.get_self_href()).read_text())
    assert CLASSIFICATION in raw["stac_extensions"]
    assert any("classification" in e for e in item.stac_extensions)
    band = asset.extra_fields["raster:bands"][0]
    assert band["data_type"] == "uint16" and band["nodata"] == 65535 and band["spatial_resolution"] == 10.0
    assert Path(item.assets["thumbnail"].get_absolute_href()).is_file()
    # the footprint covers the five finished tiles, not the bounding box of all six
    import shapely

    from rasterio.warp import transform_geom

    from ecocube.grid import TileGrid

    geom = shapely.geometry.shape(item.geometry)
    assert geom.is_valid
    back = shapely.geometry.shape(transform_geom("EPSG:4326", "EPSG:3035", item.geometry))
    grid = TileGrid.from_config(cfg.grid)
    tiles = shapely.union_all([shapely.box(*grid.tile(t).bounds) for t in DONE_TILES])
    assert back.symmetric_difference(tiles).area < 0.001 * tiles.area
    assert item.bbox == pytest.approx(list(geom.bounds))


def test_composite_and_flags_items(finished_run):
    _, _, result = finished_run
    cat = pystac.Catalog.from_file(str(result["catalog"]))
    comp = cat.get_child("composite-nir")
    items = sorted(comp.get_items(), key=lambda i: i.id)
    assert [i.id for i in items] == ["composite-nir-2019-01-01", "composite-nir-2019-04-01"]
    second = items[1]
    assert second.properties["start_datetime"] == "2019-04-01T00:00:00Z"
    assert second.properties["end_datetime"] == "2019-06-30T23:59:59Z"
    assert set(second.assets) == {"nir", "count", "thumbnail"}
    nir = second.assets["nir"]
    assert nir.extra_fields["eo:bands"] == [{"name": "nir", "common_name": "nir"}]
    band = nir.extra_fields["raster:bands"][0]
    assert band["scale"] == 0.0001 and band["nodata"] == -32768 and band["data_type"] == "int16"
    assert 0.01 <= band["statistics"]["minimum"] < band["statistics"]["mean"] < band["statistics"]["maximum"] <= 0.4
    flags = cat.get_child("flags")
    fitem = next(iter(flags.get_items()))
    assert set(fitem.assets) == {"blue", "nir", "thumbnail"}
    legend = {c["value"]: c["description"] for c in fitem.assets["blue"].extra_fields["classification:classes"]}
    assert 0 in legend and 255 in legend
    # written out by hand for this run's gap-fill settings (TMWM h_same=2, h_neib=1, h_annual=2,
    # both directions, no outlier screening, 4 periods a year): observed, same season ±1 and ±2
    # years (codes 1, 2), neighbouring periods ±1 year (41), the 2 periods either side (82; its
    # h=1 window, code 81, adds no period to 41's), unfilled (255)
    assert sorted(legend) == [0, 1, 2, 41, 82, 255]
    assert legend[0].startswith("observed value")
    for code, phase, h in ((1, 1, 1), (2, 1, 2), (41, 2, 1), (82, 3, 2)):
        assert legend[code].endswith(f"(TMWM phase {phase}, h={h})"), (code, legend[code])
    assert legend[255].startswith("gap; no candidate window had a valid value")
    proba = next(iter(cat.get_child("proba").get_items())).assets["proba"]
    assert [b["name"] for b in proba.extra_fields["raster:bands"]] == ["cropland", "forest", "water"]
    assert all(b["unit"] == "%" for b in proba.extra_fields["raster:bands"])


def test_validation_reports_object_and_path(finished_run, tmp_path):
    _, store, result = finished_run
    copy = tmp_path / "catalog"
    shutil.copytree(Path(result["catalog"]).parent, copy)
    item_path = copy / "class" / "class-2019-01-01" / "class-2019-01-01.json"
    item = json.loads(item_path.read_text())
    del item["assets"]["class"]["classification:classes"][1]["description"]
    item["assets"]["class"]["raster:bands"][0]["data_type"] = "uint13"
    item_path.write_text(json.dumps(item))
    (copy / "flags" / "flags-2019-01-01" / "blue.tif").unlink()
    issues = validate_catalog(copy)
    text = "\n".join(map(str, issues))
    assert str(item_path) in text
    # each problem names its object and the JSON path of the offending value, not just its schema
    where = {(Path(i.href).resolve(), i.json_path): i.message for i in issues}
    flags_item = (copy / "flags" / "flags-2019-01-01" / "flags-2019-01-01.json").resolve()
    item_path = item_path.resolve()
    assert "'description' is a required property" in where[
        (item_path, "$.assets.class['classification:classes'][1]")]
    assert "'uint13' is not one of" in where[(item_path, "$.assets.class['raster:bands'][0].data_type")]
    assert where[(flags_item, "$.assets.blue.href")] == "asset file ./blue.tif does not exist"
    assert "'description' is a required property" in text
    assert "'uint13' is not one of" in text
    assert "asset file ./blue.tif does not exist" in text
    # the CLI names the object and exits non-zero
    result_cli = CliRunner().invoke(cli, ["stac", "validate", str(copy / "catalog.json")])
    assert result_cli.exit_code != 0
    assert "class-2019-01-01.json" in result_cli.output + str(result_cli.exception)
    ok = CliRunner().invoke(cli, ["stac", "validate", str(Path(result["catalog"]))])
    assert ok.exit_code == 0, ok.output
    assert "valid" in ok.output


def test_validation_without_schema_and_broken_link(tmp_path):
    cat = {"type": "Catalog", "stac_version": "1.1.0", "id": "x", "description": "d",
           "stac_extensions": ["https://stac-extensions.github.io/unknown/v9.9.9/schema.json"],
           "links": [{"rel": "child", "href": "./missing/collection.json"}]}
    (tmp_path / "catalog.json").write_text(json.dumps(cat))
    issues = validate_catalog(tmp_path / "catalog.json")
    messages = [i.message for i in issues]
    assert any("schema not available offline" in m for m in messages)
    assert any("file not found" in m for m in messages)


def test_registry_handles_common_json_id_quirk():
    from jsonschema import Draft7Validator

    registry = schema_registry()
    url = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"
    schema = registry.resolver().lookup(url).contents
    good = {"type": "Feature", "stac_version": "1.1.0", "id": "a", "geometry": None, "links": [],
            "assets": {}, "properties": {"datetime": "2020-01-01T00:00:00Z"}}
    assert list(Draft7Validator(schema, registry=registry).iter_errors(good)) == []
    bad = dict(good, properties={"datetime": "2020-01-01T00:00:00Z", "start_datetime": 5})
    assert list(Draft7Validator(schema, registry=registry).iter_errors(bad))


@pytest.mark.slow
def test_href_base_makes_absolute_asset_hrefs(tmp_path):
    cfg = run_config(tmp_path, str(tmp_path / "store"))
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"layers": ("class",)}),
                                 "finalize": cfg.finalize.model_copy(update={
        "stac": cfg.finalize.stac.model_copy(update={"href_base": "https://data.example.org/run1/"})})})
    store = open_store(cfg.output)
    write_tile_outputs(store, cfg, tile_ids=DONE_TILES[:1], running=())
    result = finalize(cfg, store=store)
    root = json.loads(Path(result["catalog"]).read_text())
    assert [ln["href"] for ln in root["links"] if ln["rel"] == "self"] == ["https://data.example.org/run1/catalog.json"]
    item = json.loads((Path(result["catalog"]).parent / "class/class-2019-01-01/class-2019-01-01.json").read_text())
    assert item["assets"]["class"]["href"] == "https://data.example.org/run1/class/class-2019-01-01/class.tif"
    assert validate_catalog(result["catalog"]) == []  # links under the self URL map to the local files
    index = (Path(result["catalog"]).parent / "index.html").read_text()
    assert 'src="class/class-2019-01-01/class.png"' in index  # the page still works offline


def test_catalog_on_s3(s3_bucket, seaweed, tmp_path):
    cfg = config_from_dict({**_cfg_dict(tmp_path), "output": {
        "store": f"s3://{s3_bucket}/run", "s3": {"endpoint_url": seaweed.endpoint_url, "region": seaweed.region},
        "layers": ["class", "composite", "count"]}}, base_dir=tmp_path, source="test")
    store = open_store(cfg.output)
    write_tile_outputs(store, cfg, tile_ids=DONE_TILES[:2], running=())
    result = finalize(cfg, store=store, threads=2)
    assert result["catalog"] == f"s3://{s3_bucket}/run/catalog/catalog.json"
    keys = store.list("catalog/")
    assert "catalog/index.html" in keys and "catalog/class/collection.json" in keys
    for key, ctype in (("catalog/map.html", "text/html"), ("catalog/map.js", "text/javascript"),
                       ("catalog/map.css", "text/css")):  # the map view, served as such by S3
        assert store.client.head_object(Bucket=store.bucket, Key=store._key(key))["ContentType"] == ctype
    # download the JSON objects and validate them offline
    local = tmp_path / "dl"
    for key in keys:
        if key.endswith((".json", ".html")):
            dst = local / key.removeprefix("catalog/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(key, dst)
    assert validate_catalog(local / "catalog.json", check_assets=False) == []


def test_templates_packaged_copy_matches_repo():
    repo = {p.name: p.read_text() for p in (ROOT / "stac").glob("*.yaml")}
    packaged = {p.name: p.read_text() for p in PACKAGED_TEMPLATES.glob("*.yaml")}
    assert repo == packaged
    schemas_repo = sorted(p.relative_to(ROOT / "tests/data/stac-schemas").as_posix()
                          for p in (ROOT / "tests/data/stac-schemas").rglob("*") if p.is_file())
    schemas_pkg = sorted(p.relative_to(PACKAGED_SCHEMAS).as_posix() for p in PACKAGED_SCHEMAS.rglob("*") if p.is_file())
    assert schemas_repo == schemas_pkg


def test_template_errors(tmp_path):
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump({"license": "MIT", "colour": "red"}))
    with pytest.raises(ConfigError, match="unknown keys \\['colour'\\]"):
        load_templates(tmp_path)
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump({"description": "x"}))
    with pytest.raises(ConfigError, match="needs a 'license'"):
        load_templates(tmp_path)


@pytest.mark.slow
def test_custom_templates_and_cli(tmp_path):
    tpl = tmp_path / "tpl"
    shutil.copytree(ROOT / "stac", tpl)
    (tpl / "class.yaml").write_text(yaml.safe_dump({"title": "Mangroves {start_year}", "license": "CC0-1.0"}))
    data = _cfg_dict(tmp_path)
    data["output"] = {"store": str(tmp_path / "store"), "layers": ["class", "flags"]}
    data["finalize"]["stac"] = {"templates": str(tpl), "catalog_id": "mangroves"}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data))
    from ecocube.config import load_config

    cfg = load_config(tmp_path / "run.yaml")
    write_tile_outputs(open_store(cfg.output), cfg, tile_ids=DONE_TILES[:1], running=())
    runner = CliRunner()
    out = runner.invoke(cli, ["mosaic", str(tmp_path / "run.yaml"), "--product", "class"])
    assert out.exit_code == 0, out.output
    assert "written" in out.output and "catalog/class/class-2019-01-01/class.tif" in out.output
    out = runner.invoke(cli, ["stac", str(tmp_path / "run.yaml")])  # short for `stac build`
    assert out.exit_code == 0, out.output
    coll = json.loads((tmp_path / "store/catalog/class/collection.json").read_text())
    assert coll["title"] == "Mangroves 2019" and coll["license"] == "CC0-1.0"
    assert json.loads((tmp_path / "store/catalog/catalog.json").read_text())["id"] == "mangroves"
    out = runner.invoke(cli, ["stac", "build", str(tmp_path / "run.yaml")])
    assert out.exit_code == 0, out.output
    # the mosaic exists and its tiles are unchanged: finalize keeps it
    out = runner.invoke(cli, ["finalize", str(tmp_path / "run.yaml")])
    assert out.exit_code == 0, out.output
    assert "up to date" in out.output


def test_period_interval():
    assert period_interval("2019-10-01", 3)[1].isoformat() == "2019-12-31T23:59:59+00:00"
    assert period_interval("2020-01-01", 12)[1].isoformat() == "2020-12-31T23:59:59+00:00"
    assert period_interval("2020-02-01", 1)[1].isoformat() == "2020-02-29T23:59:59+00:00"


@pytest.mark.slow
def test_rerun_removes_catalog_files_no_longer_referenced(tmp_path, monkeypatch):
    """A finalize rerun after a period disappeared leaves no orphaned item/COG behind,
    and never deletes files that ecocube did not publish."""
    cfg = run_config(tmp_path, str(tmp_path / "store"))
    store = open_store(cfg.output)
    write_tile_outputs(store, cfg)
    finalize(cfg, store=store, threads=2)
    root = Path(store.url("catalog"))
    gone_item = root / "composite-blue" / "composite-blue-2019-04-01"
    assert (gone_item / "composite-blue-2019-04-01.json").is_file() and (gone_item / "blue.tif").is_file()
    (root / "notes.txt").write_text("a person's own file")

    # the second period of every per-period product disappears from the tiles: their stacked
    # files are written again without it (and their records list the periods left)
    import test_mosaic

    monkeypatch.setattr(test_mosaic, "PERIODS", [p for p in test_mosaic.PERIODS if p != "2019-04-01"])
    write_tile_outputs(store, cfg)
    finalize(cfg, store=store, threads=2, overwrite=True)

    assert not gone_item.exists() or not any(gone_item.iterdir())
    assert not list(root.rglob("*2019-04-01*.json"))
    assert (root / "composite-blue" / "composite-blue-2019-01-01" / "blue.tif").is_file()
    assert (root / "notes.txt").read_text() == "a person's own file"
    assert validate_catalog(root / "catalog.json") == []
    published = json.loads((root / "published.json").read_text())["keys"]
    assert all((root.parent / k).is_file() for k in published)


def _fabricated_layers(cfg, tile_ids) -> list:
    """Manifest entries of every layer of a 40-year monthly run (no raster behind them: the
    catalog is built from the manifest alone), 4 tiles."""
    from ecocube.grid import TileGrid
    from ecocube.manifest import MosaicLayer
    from ecocube.mosaic import collection_for, item_id_for, output_key
    from ecocube.sources import periods_from_config

    grid = TileGrid.from_config(cfg.grid)
    bounds = [list(grid.tile(t).bounds) for t in tile_ids]
    left, top = min(b[0] for b in bounds), max(b[3] for b in bounds)
    union = [left, min(b[1] for b in bounds), max(b[2] for b in bounds), top]

    def layer(product, name, period, dtype, count, nodata, scale):
        coll, asset = collection_for(product, name)
        return MosaicLayer(
            product=product, layer=name, period=period, collection=coll, item_id=item_id_for(coll, period),
            asset=asset, key=output_key(product, name, period), vrt_key=output_key(product, name, period, "vrt"),
            thumbnail_key=None, tiles=list(tile_ids), tile_bounds=bounds, crs="EPSG:3035",
            transform=[10.0, 0.0, left, 0.0, -10.0, top], shape=[128, 128], bounds=union, dtype=dtype, count=count,
            nodata=nodata, scales=[scale] * count, offsets=[0.0] * count, descriptions=[name] * count,
            statistics=[{"minimum": 0.0, "maximum": 1.0, "mean": 0.5, "stddev": 0.1, "valid_percent": 99.0}] * count,
            overviews=[2], size=1000, checksum="1220" + "ab" * 32, sources_digest="0" * 64, compress="deflate",
            extra={"grid_crs": "EPSG:3035"})

    periods = periods_from_config(cfg.inputs.periods)
    out = []
    for year in sorted({p.year for p in periods}):
        out += [layer("class", "class", f"{year}-01-01", "uint16", 1, 65535, 1.0),
                layer("proba", "proba", f"{year}-01-01", "uint8", 3, 255, 1.0)]
    for p in periods:
        for band in cfg.bands:
            out += [layer("composite", band, p.id, "int16", 1, -32768, 0.0001),
                    layer("count", band, p.id, "uint16", 1, None, 1.0),
                    layer("flags", band, p.id, "uint8", 1, None, 1.0)]
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_catalog_of_a_thousand_items_by_year_valid_and_paged(tmp_path):
    """41 years x 12 months x 1 band (1,066 items; offline validation costs ~25 ms of CPU an
    item): each collection over 40 items holds them in one child catalog per year, items stay
    next to their COGs, everything validates against the packaged schemas, pystac reads every
    item with its collection, and the HTML index links one page per year instead of listing
    the items."""
    from ecocube.stac import YEAR_CATALOGS_ABOVE, publish_catalog

    data = _cfg_dict(tmp_path)
    data["inputs"] = {"periods": {"start_year": 1983, "end_year": 2023, "season_size": 12},
                      "sources": [{"name": "s2", "href": "in/{band}.tif", "bands": ["red"]}]}
    data["output"] = {"store": str(tmp_path / "store")}
    cfg = config_from_dict(data, base_dir=tmp_path, source="test")
    store = open_store(cfg.output)
    layers = _fabricated_layers(cfg, DONE_TILES[:4])
    built = publish_catalog(cfg, store=store, layers=layers, validate=False, browser=True)  # validated below
    root = Path(built.catalog).parent
    n_items = 41 + 41 + 492 + 492  # class, proba, composite-red, flags
    assert YEAR_CATALOGS_ABOVE == 40
    assert validate_catalog(root / "catalog.json", check_assets=False) == []

    coll = json.loads((root / "composite-red" / "collection.json").read_text())
    assert [ln for ln in coll["links"] if ln["rel"] == "item"] == []
    children = [ln["href"] for ln in coll["links"] if ln["rel"] == "child"]
    assert children == [f"./composite-red-{y}/catalog.json" for y in range(1983, 2024)]
    year = json.loads((root / "composite-red" / "composite-red-1999" / "catalog.json").read_text())
    assert year["id"] == "composite-red-1999" and year["ecocube:items"] == 12
    items = [ln["href"] for ln in year["links"] if ln["rel"] == "item"]
    assert items == [f"../composite-red-1999-{m:02d}-01/composite-red-1999-{m:02d}-01.json" for m in range(1, 13)]
    item = json.loads((root / "composite-red" / "composite-red-1999-07-01" / "composite-red-1999-07-01.json").read_text())
    assert item["collection"] == "composite-red"
    rels = {ln["rel"]: ln["href"] for ln in item["links"]}
    assert rels["collection"] == "../collection.json" and rels["parent"] == "../composite-red-1999/catalog.json"
    assert item["assets"]["red"]["href"] == "./red.tif"  # still next to its COG
    # 41 items (one a year) are above the limit too: 41 year catalogs of one item
    cls = json.loads((root / "class" / "collection.json").read_text())
    assert not [ln for ln in cls["links"] if ln["rel"] == "item"]
    assert len([ln for ln in cls["links"] if ln["rel"] == "child"]) == 41

    cat = pystac.Catalog.from_file(str(root / "catalog.json"))
    read = list(cat.get_items(recursive=True))
    assert len(read) == n_items and len({i.id for i in read}) == n_items
    assert all(i.collection_id == i.id.rsplit("-", 3)[0] for i in read)

    index = (root / "index.html").read_text()
    assert index.count('class="item"') == 0  # one page per year instead
    assert index.count('class="year"') == 41 * 4  # class, proba, composite-red and flags
    assert f"{n_items} items" in index
    page = (root / "flags" / "flags-2023" / "index.html").read_text()
    assert page.count('class="item"') == 12 and 'data-item="flags-2023-12-01"' in page
    assert 'href="../../flags/flags-2023-12-01/red.tif" download' in page
    assert 'href="../../index.html#flags"' in page and 'href="../flags-1983/index.html"' in page
    assert 'href="flags/flags-1983/index.html"' in index
    assert len(index) < 200_000 and len(page) < 60_000
