"""The input catalog: periods, URL templates, STAC item collections, mask rules (pure logic)."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pytest

from ecocube.config import PeriodsConfig, SourceConfig, config_from_dict
from ecocube.errors import ConfigError
from ecocube.sources import (
    MaskRule,
    period_of,
    periods_from_config,
    source_catalog,
    stac_acquisitions,
)

MODEL = {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]}


def test_quarters_have_ids_bounds_and_indexes():
    ps = periods_from_config(PeriodsConfig(start_year=2018, end_year=2019, season_size=4))
    assert [p.id for p in ps] == ["2018-01-01", "2018-04-01", "2018-07-01", "2018-10-01",
                                  "2019-01-01", "2019-04-01", "2019-07-01", "2019-10-01"]
    assert [p.index for p in ps] == list(range(8))
    assert ps[3].end == date(2019, 1, 1) and ps[5].season == 2 and ps[5].year == 2019
    # k = (year - start) * S + (season - 1)
    assert all(p.index == (p.year - 2018) * 4 + p.season - 1 for p in ps)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 6, 12])
def test_periods_tile_the_years_without_gaps(size):
    ps = periods_from_config(PeriodsConfig(start_year=2019, end_year=2020, season_size=size))
    assert len(ps) == 2 * size
    assert ps[0].start == date(2019, 1, 1) and ps[-1].end == date(2021, 1, 1)
    assert all(a.end == b.start for a, b in zip(ps, ps[1:]))
    for day in (date(2019, 1, 1), date(2019, 12, 31), date(2020, 2, 29), date(2020, 7, 15)):
        p = period_of(day, ps)
        assert p is not None and p.contains(day)
    assert period_of(date(2018, 12, 31), ps) is None and period_of(date(2021, 1, 1), ps) is None


def _src(**kw) -> SourceConfig:
    base = {"name": "s", "href": "/d/{year}/Q{quarter}/{band}.tif", "bands": ["red", "nir"]}
    base.update(kw)
    return SourceConfig(**base)


def test_composite_templates_fill_every_field():
    ps = periods_from_config(PeriodsConfig(start_year=2019, end_year=2019, season_size=4))
    src = _src(href="s3://b/{tile}/{year}/{season}/Q{quarter}/{month:02d}/{date}/{yyyymmdd}/{period}_{band}.tif")
    cat = source_catalog(src, ps, "X0001_Y0002")
    obs = cat.observations[2][0]
    assert obs.bands["nir"] == ("s3://b/X0001_Y0002/2019/3/Q3/07/2019-07-01/20190701/2019-07-01_nir.tif", 1)
    assert cat.n_observations == 4 and obs.mask is None


def test_acquisitions_fall_into_their_period_and_outside_dates_are_dropped():
    ps = periods_from_config(PeriodsConfig(start_year=2019, end_year=2019, season_size=4))
    src = _src(kind="acquisitions", href="https://h/S2_{yyyymmdd}.tif", band_indexes={"red": 3, "nir": 4},
               dates=["2019-03-31T10:00:00Z", "2019-04-01", "2019-04-01", "2018-12-30", "2019-12-31"],
               mask={"href": "https://h/S2_{date}_SCL.tif", "kind": "classes", "values": [3, 8, 9, 10]})
    cat = source_catalog(src, ps)
    assert {k: [o.day.isoformat() for o in v] for k, v in cat.observations.items()} == {
        0: ["2019-03-31"], 1: ["2019-04-01"], 3: ["2019-12-31"]}
    obs = cat.observations[1][0]
    assert obs.bands == {"red": ("https://h/S2_20190401.tif", 3), "nir": ("https://h/S2_20190401.tif", 4)}
    assert obs.mask == ("https://h/S2_2019-04-01_SCL.tif", 1)
    # one file holds both bands: read once
    refs = obs.file_refs()
    assert len(refs) == 1 and refs[0].indexes == (3, 4)


def test_repeated_dates_are_read_once_with_a_warning_and_order_does_not_matter(caplog):
    ps = periods_from_config(PeriodsConfig(start_year=2019, end_year=2019, season_size=4))
    days = ["2019-02-01", "2019-05-03", "2019-05-20", "2019-08-09", "2019-11-30"]
    plain = source_catalog(_src(name="messy", kind="acquisitions", href="https://h/S2_{yyyymmdd}_{band}.tif",
                                dates=days), ps)
    messy = ["2019-11-30", "2019-05-20", "2019-02-01", "2019-05-03", "2019-05-20", "2019-08-09", "2019-02-01"]
    with caplog.at_level("WARNING", logger="ecocube.sources"):
        cat = source_catalog(_src(name="messy", kind="acquisitions", href="https://h/S2_{yyyymmdd}_{band}.tif",
                                  dates=messy), ps)
    assert cat.observations == plain.observations  # shuffled and repeated: the sorted list's catalog
    assert [o.day.isoformat() for o in cat.observations[1]] == ["2019-05-03", "2019-05-20"]  # time order
    assert sum(len(v) for v in cat.observations.values()) == 5  # none counted twice
    assert [r.getMessage() for r in caplog.records] == [
        "inputs.sources[messy].dates: 2 date(s) listed more than once are read once: 2019-02-01, 2019-05-20"]


def test_template_errors_are_config_errors_listing_fields():
    ps = periods_from_config(PeriodsConfig(start_year=2019, end_year=2019, season_size=4))
    with pytest.raises(ConfigError, match=r"\{week\}.*allowed: \{band\}"):
        source_catalog(_src(href="/d/{week}/{band}.tif"), ps)
    with pytest.raises(ConfigError, match="no {band} field and no band_indexes"):
        source_catalog(_src(href="/d/{year}.tif"), ps)
    with pytest.raises(ConfigError, match="mask.href"):
        source_catalog(_src(mask={"href": "/d/{band}_qa.tif", "kind": "bits", "values": [3]}), ps)


def test_config_requires_href_or_stac():
    with pytest.raises(ValueError, match="needs 'href'"):
        SourceConfig(name="s", bands=["a"])
    with pytest.raises(ValueError, match="'href' \\(URL template\\) or 'asset'"):
        _src(mask={"kind": "classes", "values": [1]})


def test_mask_rules():
    qa = np.array([[0, 3, 4], [8, 9, 10]], np.uint8)
    assert MaskRule("classes", (3, 8, 9, 10)).invalid(qa).tolist() == [[False, True, False], [True, True, True]]
    # Landsat QA_PIXEL: bit 1 dilated cloud, bit 3 cloud, bit 4 shadow
    qa_pixel = np.array([21824, 21890, 22280, 23826, 54596, 0], np.uint16)
    bits = MaskRule("bits", (1, 3, 4)).invalid(qa_pixel)
    expected = [(int(v) >> 1 & 1) | (int(v) >> 3 & 1) | (int(v) >> 4 & 1) == 1 for v in qa_pixel]
    assert bits.tolist() == expected and bits.any() and not bits.all()
    prob = np.array([0, 50, 51, 100], np.uint8)
    assert MaskRule("threshold", threshold=50).invalid(prob).tolist() == [False, False, True, True]
    with pytest.raises(ConfigError, match="do not fit"):
        MaskRule("bits", (9,)).invalid(np.zeros(2, np.uint8))


def _write_items(path: Path, days: list[str], *, relative: bool) -> Path:
    import pystac

    items = []
    for d in days:
        ymd = d.replace("-", "")
        item = pystac.Item(id=f"S2_{ymd}", geometry={"type": "Point", "coordinates": [3.9, 50.7]},
                           bbox=[3.9, 50.7, 3.91, 50.71], datetime=datetime(
                           int(d[:4]), int(d[5:7]), int(d[8:10]), 10, 50), properties={})
        base = "" if relative else f"{path.parent}/"
        item.add_asset("reflectance", pystac.Asset(href=f"{base}S2L2A_{ymd}_10m.tif"))
        item.add_asset("scl", pystac.Asset(href=f"{base}S2L2A_{ymd}_SCL.tif"))
        items.append(item)
    path.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    return path


def test_stac_item_collection_assets(tmp_path):
    path = _write_items(tmp_path / "items.json", ["2019-07-10", "2019-04-26"], relative=True)
    acq = stac_acquisitions(path)
    assert [a[0].isoformat() for a in acq] == ["2019-04-26", "2019-07-10"]
    assert acq[0][2]["scl"] == str(tmp_path / "S2L2A_20190426_SCL.tif")
    ps = periods_from_config(PeriodsConfig(start_year=2019, end_year=2019, season_size=4))
    src = SourceConfig(name="s2", kind="acquisitions", stac_items=path, bands=["B04", "B08"],
                       band_indexes={"B04": 3, "B08": 4}, assets={"B04": "reflectance", "B08": "reflectance"},
                       mask={"asset": "scl", "kind": "classes", "values": [3, 8, 9, 10]})
    cat = source_catalog(src, ps)
    obs = cat.observations[2][0]
    assert obs.bands["B08"] == (str(tmp_path / "S2L2A_20190710_10m.tif"), 4)
    assert obs.mask == (str(tmp_path / "S2L2A_20190710_SCL.tif"), 1)
    bad = src.model_copy(update={"assets": {"B04": "nope", "B08": "reflectance"}})
    with pytest.raises(ConfigError, match="no asset 'nope'.*reflectance"):
        source_catalog(bad, ps)
    (tmp_path / "broken.json").write_text('{"type": "FeatureCollection", "features": [{"type": "Feature"}]}')
    with pytest.raises(ConfigError, match="broken.json"):
        stac_acquisitions(tmp_path / "broken.json")


def test_stac_read_equals_dates_read(tmp_path, data_dir):
    """A STAC ItemCollection and a list of dates give the same cube."""
    import shutil

    from ecocube.grid import TileGrid
    from ecocube.read import read_block

    days = ["2019-04-26", "2019-07-10"]
    for d in days:
        for kind in ("10m", "SCL"):
            name = f"S2L2A_{d.replace('-', '')}_{kind}.tif"
            shutil.copy(data_dir / "worldcereal-be-2019" / name, tmp_path / name)
    items = _write_items(tmp_path / "items.json", days, relative=True)
    common = {"bands": ["B04", "B08"], "band_indexes": {"B04": 3, "B08": 4}, "scale": 0.0001, "nodata": 0,
              "kind": "acquisitions", "name": "s2"}
    grid = {"crs": "EPSG:3035", "origin": [3902240.0, 3087720.0], "pixel_size": 10.0, "tile_size": 32}
    periods = {"start_year": 2019, "end_year": 2019, "season_size": 4}
    by_stac = config_from_dict({"grid": grid, "aoi": {"tiles": ["X0000_Y0000"]}, "model": MODEL, "inputs": {
        "periods": periods, "sources": [{**common, "stac_items": str(items),
                                         "assets": {"B04": "reflectance", "B08": "reflectance"},
                                         "mask": {"asset": "scl", "kind": "classes", "values": [3, 8, 9, 10]}}]}})
    by_dates = config_from_dict({"grid": grid, "aoi": {"tiles": ["X0000_Y0000"]}, "model": MODEL, "inputs": {
        "periods": periods, "sources": [{**common, "dates": days, "href": str(tmp_path / "S2L2A_{yyyymmdd}_10m.tif"),
                                         "mask": {"href": str(tmp_path / "S2L2A_{yyyymmdd}_SCL.tif"),
                                                  "kind": "classes", "values": [3, 8, 9, 10]}}]}})
    tile = TileGrid.from_config(by_stac.grid).tile("X0000_Y0000")
    a, b = read_block(by_stac, tile, threads=1), read_block(by_dates, tile, threads=1)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.reason, b.reason)
    assert np.isfinite(a.data[1]).mean() > 0.5


# ---------------------------------------------------------------------- file discovery


def _belgium_dates(data_dir) -> list[str]:
    return sorted({t[:10] for t in json.loads((data_dir / "worldcereal-be-2019" / "timestamps.json").read_text())})


def test_glob_finds_every_real_scene_with_its_date(data_dir):
    from ecocube.sources import discover_files

    folder = data_dir / "worldcereal-be-2019"
    found = discover_files(str(folder / "S2L2A_*_10m.tif"), date_pattern="S2L2A_{yyyymmdd}_10m.tif")
    assert len(found) == 72
    assert [f.day.isoformat() for f in found] == _belgium_dates(data_dir)
    assert found[0].path == str(folder / "S2L2A_20180804_10m.tif") and found[0].stem == "S2L2A_20180804_10m"
    # the default pattern {yyyymmdd} is searched anywhere in the name
    assert [f.day for f in discover_files(str(folder / "S2L2A_*_10m.tif"))] == [f.day for f in found]


def test_glob_catalog_equals_listed_dates_catalog(data_dir):
    folder = data_dir / "worldcereal-be-2019"
    ps = periods_from_config(PeriodsConfig(start_year=2018, end_year=2019, season_size=4))
    common = {"name": "s2", "kind": "acquisitions", "bands": ["B04", "B08"], "band_indexes": {"B04": 3, "B08": 4},
              "mask": {"href": str(folder / "S2L2A_{yyyymmdd}_SCL.tif"), "kind": "classes", "values": [3, 8, 9, 10]}}
    by_glob = source_catalog(SourceConfig(**common, glob=str(folder / "S2L2A_*_10m.tif")), ps)
    by_dates = source_catalog(SourceConfig(**common, href=str(folder / "S2L2A_{yyyymmdd}_10m.tif"),
                                           dates=_belgium_dates(data_dir)), ps)
    assert by_glob.n_observations == by_dates.n_observations == 72
    strip = lambda cat: {k: [(o.day, o.bands, o.mask) for o in v] for k, v in cat.observations.items()}  # noqa: E731
    assert strip(by_glob) == strip(by_dates)
    # a glob source with several bands in one file needs band_indexes
    with pytest.raises(ConfigError, match="give band_indexes"):
        source_catalog(SourceConfig(name="s2", kind="acquisitions", bands=["B04", "B08"],
                                    glob=str(folder / "S2L2A_*_10m.tif")), ps)


def test_glob_with_a_band_template_and_day_of_year_names(tmp_path):
    from ecocube.sources import discover_files

    for name in ("LC08_2019100_red.tif", "LC08_2019101_red.tif", "LC08_2019100_nir.tif", "LC08_2019101_nir.tif"):
        (tmp_path / name).write_bytes(b"x")
    found = discover_files(str(tmp_path / "LC08_*_red.tif"), date_pattern="LC08_{yyyy}{doy}_")
    assert [f.day for f in found] == [date(2019, 4, 10), date(2019, 4, 11)]
    ps = periods_from_config(PeriodsConfig(start_year=2019, end_year=2019, season_size=4))
    src = SourceConfig(name="l8", kind="acquisitions", bands=["red", "nir"], glob=str(tmp_path / "LC08_*_red.tif"),
                       date_pattern="LC08_{yyyy}{doy}_", href=str(tmp_path / "LC08_{item}.tif"))
    with pytest.raises(ConfigError, match="no {band} field"):
        source_catalog(src, ps)
    src = src.model_copy(update={"href": str(tmp_path / "LC08_{year}{yyyymmdd}_{band}.tif")})
    obs = source_catalog(src, ps).observations[1][0]
    assert obs.bands["nir"] == (str(tmp_path / "LC08_201920190410_nir.tif"), 1) and obs.item == "LC08_2019100_red"


def test_glob_errors_name_the_pattern_or_the_file(tmp_path):
    from ecocube.sources import date_regex, discover_files

    with pytest.raises(ConfigError, match=r"glob '.*S2_\*\.tif' matches no file"):
        discover_files(str(tmp_path / "S2_*.tif"))
    (tmp_path / "S2_20190105.tif").write_bytes(b"x")
    (tmp_path / "S2_latest.tif").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"S2_latest\.tif matches glob .* but its name has no date"):
        discover_files(str(tmp_path / "S2_*.tif"))
    (tmp_path / "S2_latest.tif").unlink()
    (tmp_path / "S2_20191332.tif").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"cannot read a date from the name of .*S2_20191332\.tif: month must be"):
        discover_files(str(tmp_path / "S2_*.tif"))
    (tmp_path / "S2_20191332.tif").unlink()
    (tmp_path / "S2_2019-01-05.tif").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"S2_2019-01-05\.tif and .*S2_20190105\.tif have the same date 2019-01-05"):
        discover_files(str(tmp_path / "S2_*.tif"), date_pattern="S2_*{yyyy}*{mm}*{dd}")
    with pytest.raises(ConfigError, match=r"unknown field \{week\}"):
        date_regex("S2_{week}")
    with pytest.raises(ConfigError, match="does not give a whole date"):
        date_regex("S2_{yyyy}{mm}")


def _tagged_tif(path: Path, **tags) -> Path:
    import rasterio

    from affine import Affine

    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint16", crs="EPSG:32631",
                       transform=Affine(10, 0, 574680, 0, -10, 5622440)) as dst:
        dst.write(np.ones((1, 8, 8), np.uint16))
        dst.update_tags(**tags)
    return path


def test_glob_dates_from_tags(tmp_path):
    from ecocube.sources import discover_files

    a = _tagged_tif(tmp_path / "scene_a.tif", TIFFTAG_DATETIME="2019:07:10 10:56:31")
    _tagged_tif(tmp_path / "scene_b.tif", TIFFTAG_DATETIME="2019:04:26 10:50:00", DATETIME="2019-04-27T00:10:00Z")
    pattern = str(tmp_path / "scene_*.tif")
    assert [f.day for f in discover_files(str(tmp_path / "scene_b.tif"), date_tag="DATETIME")] == [date(2019, 4, 27)]
    assert [(f.day, Path(f.path).name) for f in discover_files(pattern, date_tag="TIFFTAG_DATETIME")] == [
        (date(2019, 4, 26), "scene_b.tif"), (date(2019, 7, 10), "scene_a.tif")]
    with pytest.raises(ConfigError, match=r"scene_a\.tif has no tag DATETIME"):
        discover_files(pattern, date_tag="DATETIME")
    Path(a).with_name("scene_c.tif").write_text("not a raster")
    with pytest.raises(ConfigError, match=r"date tag TIFFTAG_DATETIME of .*scene_c\.tif: not a raster"):
        discover_files(pattern, date_tag="TIFFTAG_DATETIME")


# ---------------------------------------------------------------------- year_start


def test_year_start_moves_years_and_their_periods():
    from ecocube.sources import year_bounds, year_of

    cfg = PeriodsConfig(start_year=2019, end_year=2020, season_size=4, year_start="10-01")
    ps = periods_from_config(cfg)
    assert [p.id for p in ps[:5]] == ["2018-10-01", "2019-01-01", "2019-04-01", "2019-07-01", "2019-10-01"]
    assert ps[0].year == 2019 and ps[0].season == 1 and ps[3].end == date(2019, 10, 1) and ps[4].year == 2020
    assert ps[-1].end == date(2020, 10, 1) and all(a.end == b.start for a, b in zip(ps, ps[1:]))
    assert year_bounds(2019, cfg) == (date(2018, 10, 1), date(2019, 10, 1))
    assert year_of(date(2018, 10, 1), cfg) == 2019 and year_of(date(2018, 9, 30), cfg) == 2018
    assert period_of(date(2018, 9, 30), ps) is None and period_of(date(2018, 10, 1), ps) is ps[0]
    assert period_of(date(2020, 9, 30), ps) is ps[-1]
    # a day inside the month: every period starts on that day
    mid = periods_from_config(PeriodsConfig(start_year=2019, end_year=2019, season_size=12, year_start="03-15"))
    assert mid[0].start == date(2018, 3, 15) and mid[10].start == date(2019, 1, 15) and mid[-1].end == date(2019, 3, 15)
    # the default is the calendar year, as before
    assert periods_from_config(PeriodsConfig(start_year=2019, end_year=2019, season_size=1))[0].end == date(2020, 1, 1)


@pytest.mark.parametrize("bad", ["13-01", "10", "x", "02-30", "10-31"])
def test_year_start_that_is_not_a_month_and_day_fails(bad):
    with pytest.raises(ValueError, match="year_start"):
        PeriodsConfig(year_start=bad)


def test_year_start_accepts_an_unquoted_yaml_date():
    import yaml

    assert PeriodsConfig(**yaml.safe_load("year_start: 2000-10-01")).year_start == "10-01"
    assert PeriodsConfig(year_start="7-1").year_start == "07-01"
