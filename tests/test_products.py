"""The products registry and the raster profile registry: one list, read everywhere."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType, SimpleNamespace

import numpy as np
import pytest

from ecocube import products
from ecocube.products import PRODUCTS, Product

PACKAGED_TEMPLATES = __import__("pathlib").Path(products.__file__).parent / "data" / "stac-templates"


def test_the_registered_products_and_their_encoding():
    assert products.NAMES == ("proba", "class", "uncertainty", "mean", "lower", "upper", "composite", "flags",
                              "count")
    assert products.MODEL_PRODUCTS == ("proba", "class", "uncertainty", "mean", "lower", "upper")
    assert products.names(task="regression") == ("mean", "lower", "upper")
    assert products.default_layers() == ("proba", "class", "uncertainty", "composite", "flags", "count")
    assert products.default_layers("regression") == ("mean", "lower", "upper", "composite", "flags", "count")
    assert products.names(source="cube") == ("composite", "flags", "count")
    assert products.names(among=["count", "proba", "nope"]) == ("proba", "count")  # registry order
    encoding = {p.name: (p.dtype, p.nodata, p.scale) for p in PRODUCTS.values()}
    assert encoding == {"proba": ("uint8", 255, None), "class": ("uint16", 65535, None),
                        "uncertainty": ("uint8", 255, None), "composite": ("int16", -32768, 0.0001),
                        "mean": ("float32", -9999.0, None), "lower": ("float32", -9999.0, None),
                        "upper": ("float32", -9999.0, None),
                        "flags": ("uint8", None, None), "count": ("uint16", None, None)}


def test_unknown_product_error_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown product 'nope'; known products: proba, class, uncertainty"):
        products.get("nope")


@pytest.mark.parametrize("name", products.NAMES)
def test_every_entry_is_consistent(name):
    p = products.get(name)
    dtype = np.dtype(p.dtype)
    if p.nodata is not None:  # nodata is a value of the data type
        info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
        assert info.min <= p.nodata <= info.max
    assert (PACKAGED_TEMPLATES / f"{p.template}.yaml").is_file()
    assert p.collection_for("red") and p.asset_for("red") and p.title_for("red")
    assert set(p.roles) >= {"data"}
    if p.legend == "classes":
        assert p.categorical
    # products sharing a collection share what a collection is made from
    for other in PRODUCTS.values():
        if other.collection_for("red") == p.collection_for("red"):
            assert (other.template, other.source, other.cadence) == (p.template, p.source, p.cadence)
            if other is not p:
                assert other.asset_for("red") != p.asset_for("red")


def test_flag_codes_in_the_tags_are_the_gapfill_codes():
    from ecocube.gapfill import FLAG_OBSERVED, FLAG_UNFILLED

    assert PRODUCTS["flags"].tags == {"unfilled": str(FLAG_UNFILLED), "observed": str(FLAG_OBSERVED)}


def test_resampling_follows_the_kind():
    assert {n: PRODUCTS[n].overview_resampling for n in products.NAMES} == {
        "proba": "AVERAGE", "class": "NEAREST", "uncertainty": "AVERAGE", "composite": "AVERAGE",
        "mean": "AVERAGE", "lower": "AVERAGE", "upper": "AVERAGE",
        "flags": "NEAREST", "count": "NEAREST"}
    assert PRODUCTS["count"].warp_resampling == "nearest" and PRODUCTS["proba"].warp_resampling == "bilinear"


def test_tile_key_pattern():
    pat = products.tile_key_pattern()
    m = pat.match("composite/X0001_Y-0002/2020-04-01/nir.tif")
    assert m and (m["product"], m["tile"], m["period"], m["layer"]) == ("composite", "X0001_Y-0002", "2020-04-01", "nir")
    assert pat.match("mean/X0001_Y0002/2020-01-01/mean.tif")["product"] == "mean"
    assert not pat.match("biomass/X0001_Y0002/2020-01-01/biomass.tif")  # not a registered product
    assert not pat.match("class/X0001_Y0002/2020-01-01/class.tiff")
    # per-period products: one stacked file per tile and layer, no period in the key
    assert products.tile_key("composite", "X0001_Y0002", "nir") == "composite/X0001_Y0002/nir.tif"
    assert products.tile_key("class", "X0001_Y0002", "class", "2020-01-01") == "class/X0001_Y0002/2020-01-01/class.tif"
    with pytest.raises(ValueError, match="product 'class' has one file per period"):
        products.tile_key("class", "X0001_Y0002", "class")
    assert products.parse_tile_key("flags/X0001_Y-0002/red.tif") == ("flags", "X0001_Y-0002", None, "red")
    assert products.parse_tile_key("class/X0001_Y0002/2020-01-01/class.tif") == (
        "class", "X0001_Y0002", "2020-01-01", "class")
    assert products.parse_tile_key("composite/X0001_Y0002/2020-04-01/nir.tif") is None  # the old layout
    assert products.parse_tile_key("class/X0001_Y0002/class.tif") is None
    assert [n for n in products.NAMES if PRODUCTS[n].stacked] == ["composite", "flags", "count"]


def test_config_accepts_exactly_the_registered_products():
    from ecocube.config import OutputConfig

    assert OutputConfig().layers == products.default_layers("classification")
    with pytest.raises(ValueError, match="'proba', 'class', 'uncertainty', 'mean', 'lower', 'upper', 'composite', "
                                         "'flags' or 'count'"):
        OutputConfig(layers=["proba", "biomass"])


def test_cli_offers_the_registered_products():
    from click.testing import CliRunner

    from ecocube.cli import cli

    res = CliRunner().invoke(cli, ["mosaic", "--help"])
    assert res.exit_code == 0, res.output
    assert "proba|class|uncertainty|mean|lower|upper|composite|flags|count" in res.output.replace("\n", "").replace(" ", "")


def test_mosaic_cog_options_per_product():
    from ecocube.mosaic import _cog_options

    base = {"driver": "COG", "COMPRESS": "DEFLATE", "BLOCKSIZE": "512", "BIGTIFF": "IF_SAFER", "NUM_THREADS": "2"}
    assert _cog_options("class", "deflate", 512, 2, "uint16") == {
        **base, "PREDICTOR": "NO", "OVERVIEW_RESAMPLING": "NEAREST"}
    assert _cog_options("proba", "deflate", 512, 2, "uint8") == {
        **base, "PREDICTOR": "STANDARD", "OVERVIEW_RESAMPLING": "AVERAGE"}
    assert _cog_options("count", "zstd", 256, 2, "uint16") == {
        **base, "COMPRESS": "ZSTD", "BLOCKSIZE": "256", "PREDICTOR": "STANDARD", "OVERVIEW_RESAMPLING": "NEAREST",
        "LEVEL": "9"}
    assert _cog_options("composite", "deflate", 512, 2, "float32")["PREDICTOR"] == "FLOATING_POINT"


def test_adding_a_product_is_one_entry(monkeypatch):
    """A regression-style per-year product added to the registry is planned, keyed and
    named in the catalog with no other change."""
    from ecocube.mosaic import collection_for
    from ecocube.stac import _months
    from ecocube.tile import plan_outputs

    mean = Product("biomass", source="model", cadence="year", dtype="int16", nodata=-32768, scale=0.01,
                   kind="continuous", unit="t/ha", collection="{name}", asset="{name}", template="biomass",
                   title="predicted biomass", band_description="{layer}", description="mean prediction",
                   task="regression")
    entries = (*products._ENTRIES, mean)
    monkeypatch.setattr(products, "_ENTRIES", entries)
    monkeypatch.setattr(products, "PRODUCTS", MappingProxyType({p.name: p for p in entries}))

    specs = plan_outputs(("class", "biomass", "count"), periods=[SimpleNamespace(id="2020-01-01")], bands=["red"],
                         years=[2020], classes=[1, 2], class_names=["a", "b"])
    assert [(s.key("X0000_Y0000"), s.dtype, s.nodata, s.scale, s.descriptions) for s in specs] == [
        ("class/X0000_Y0000/2020-01-01/class.tif", "uint16", 65535, None, ("class",)),
        ("biomass/X0000_Y0000/2020-01-01/biomass.tif", "int16", -32768, 0.01, ("biomass",)),
        ("count/X0000_Y0000/red.tif", "uint16", None, None, ("2020-01-01",)),
    ]
    assert collection_for("biomass", "biomass") == ("biomass", "biomass")
    assert _months("biomass", SimpleNamespace(inputs=SimpleNamespace(periods=SimpleNamespace(season_size=4)))) == 12
    assert products.tile_key_pattern().match("biomass/X0000_Y0000/2020-01-01/biomass.tif")


def test_products_are_frozen():
    with pytest.raises(TypeError):
        PRODUCTS["nope"] = PRODUCTS["class"]  # type: ignore[index]
    with pytest.raises(TypeError):
        PRODUCTS["flags"].tags["unfilled"] = "0"  # type: ignore[index]
    changed = replace(PRODUCTS["class"], nodata=0)
    assert changed.nodata == 0 and PRODUCTS["class"].nodata == 65535


def test_a_bad_entry_is_refused_with_its_name():
    good = dict(source="cube", cadence="period", dtype="uint8", nodata=None, kind="continuous",
                collection="x-{layer}", asset="{layer}", template="x", title="x", band_description="x",
                description="x", per_band=True)
    assert Product("x", **good).staged
    with pytest.raises(ValueError, match="product 'x': cadence must be one of"):
        Product("x", **{**good, "cadence": "month"})
    with pytest.raises(ValueError, match="product 'x' has one output per band"):
        Product("x", **{**good, "collection": "x", "asset": "x"})
    with pytest.raises(ValueError, match="product name 'X-1'"):
        Product("X-1", **good)
    with pytest.raises(ValueError, match="product 'x': a model product names its task"):
        Product("x", **{**good, "source": "model", "cadence": "year", "per_band": False, "collection": "x"})
    with pytest.raises(ValueError, match="product 'x': task must be one of"):
        Product("x", **{**good, "task": "clustering"})


# ----------------------------------------------------------------------- raster profiles


def test_profile_returns_a_copy_and_names_the_known_ones():
    from ecocube.profiles import PROFILES, profile

    p = profile("tile")
    p["compress"] = "lzw"
    p["extra"] = 1
    assert profile("tile")["compress"] == "zstd" and "extra" not in profile("tile")
    with pytest.raises(TypeError):
        PROFILES["tile"]["compress"] = "lzw"  # type: ignore[index]
    with pytest.raises(KeyError, match="unknown raster profile 'tiles'; known profiles: tile, mosaic-stage, cog"):
        profile("tiles")


def test_profile_overrides_are_case_insensitive_and_keep_the_spelling():
    from ecocube.profiles import profile

    cog = profile("cog", compress="ZSTD", NUM_THREADS="4")
    assert cog["COMPRESS"] == "ZSTD" and "compress" not in cog and cog["NUM_THREADS"] == "4"
    gap = profile("gapfill", bigtiff="YES", width=10)
    assert gap["BIGTIFF"] == "YES" and "bigtiff" not in gap and gap["width"] == 10


@pytest.mark.parametrize("name,dtype,expect", [
    ("tile", "uint16", {"COMPRESSION": "ZSTD", "PREDICTOR": "2", "INTERLEAVE": "BAND"}),
    ("mosaic-stage", "int16", {"COMPRESSION": "ZSTD"}),
    ("gapfill", "uint8", {"COMPRESSION": "DEFLATE"}),
    ("read-dump", "float32", {"COMPRESSION": "DEFLATE"}),
])
def test_gtiff_profiles_write_what_they_say(tmp_path, name, dtype, expect):
    import rasterio
    from rasterio.transform import from_origin

    from ecocube.profiles import profile

    kw = dict(width=512, height=512, count=1, crs="EPSG:3035", transform=from_origin(0, 5120, 10, 10))
    if name != "read-dump":
        kw["dtype"] = dtype
    path = tmp_path / f"{name}.tif"
    with rasterio.open(path, "w", **profile(name, **kw)) as dst:
        dst.write(np.ones((1, 512, 512), dtype=dtype))
    with rasterio.open(path) as src:
        structure = src.tags(ns="IMAGE_STRUCTURE")
        assert {k: structure.get(k) for k in expect} == expect
        assert src.dtypes[0] == dtype
        if profile(name).get("tiled"):
            assert src.block_shapes[0] == (profile(name)["blockysize"], profile(name)["blockxsize"])


def test_cog_profile_makes_a_cog(tmp_path):
    import rasterio
    import rasterio.shutil
    from rasterio.transform import from_origin

    from ecocube.profiles import profile

    src = tmp_path / "src.tif"
    with rasterio.open(src, "w", driver="GTiff", width=1024, height=1024, count=1, dtype="uint8",
                       crs="EPSG:3035", transform=from_origin(0, 10240, 10, 10)) as dst:
        dst.write(np.arange(1024 * 1024, dtype=np.uint32).reshape(1, 1024, 1024).astype(np.uint8))
    rasterio.shutil.copy(src, tmp_path / "cog.tif", **profile("cog"))
    with rasterio.open(tmp_path / "cog.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert cog.block_shapes[0] == (512, 512) and cog.overviews(1) == [2]
