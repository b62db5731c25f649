"""Scene selection (pure) and cloud measured on the tile from the mask (real scenes)."""

from __future__ import annotations

import csv
from datetime import date

import pytest

from ecocube.config import ScenesConfig, config_from_dict
from ecocube.grid import TileGrid
from ecocube.scenes import period_datetime, select_scenes, tile_scenes
from ecocube.sources import Observation, Period

P = Period("2019-01-01", date(2019, 1, 1), date(2019, 4, 1), 2019, 1, 0)


def _obs(days: list[int]) -> list[Observation]:
    return [Observation("s2", P, date(2019, 1, d), {}, None, item=f"S2_{d:02d}") for d in days]


def test_select_all_least_cloudy_and_most_recent():
    obs = _obs([3, 8, 13, 18, 23])
    clouds = [40.0, 5.0, None, 5.0, 90.0]
    keep = lambda cfg: [c.observation.item for c in select_scenes(obs, cfg, clouds) if c.kept]
    assert keep(ScenesConfig()) == ["S2_03", "S2_08", "S2_13", "S2_18", "S2_23"]
    assert keep(ScenesConfig(max_cloud=50)) == ["S2_03", "S2_08", "S2_18"]
    # ties go to the earlier scene
    assert keep(ScenesConfig(select="least-cloudy", n=1)) == ["S2_08"]
    assert keep(ScenesConfig(select="least-cloudy", n=3)) == ["S2_03", "S2_08", "S2_18"]
    assert keep(ScenesConfig(select="most-recent", n=1)) == ["S2_23"]
    assert keep(ScenesConfig(select="most-recent", n=1, max_cloud=30)) == ["S2_18"]
    assert keep(ScenesConfig(select="most-recent", n=2, max_cloud=30)) == ["S2_08", "S2_18"]
    why = {c.observation.item: c.reason for c in select_scenes(obs, ScenesConfig(select="least-cloudy", n=1,
                                                                                 max_cloud=50), clouds)}
    assert why == {"S2_03": "dropped: 3. least cloudy (40.0%) of 3, n=1",
                   "S2_08": "kept: 1. least cloudy (5.0%) of 3, n=1",
                   "S2_13": "dropped: cloud cover unknown",
                   "S2_18": "dropped: 2. least cloudy (5.0%) of 3, n=1",
                   "S2_23": "dropped: cloud 90.0% > max_cloud 50%"}


def test_period_datetime_covers_the_period_and_stops_before_its_end():
    assert period_datetime(P) == "2019-01-01T00:00:00Z/2019-03-31T23:59:59Z"


def test_scenes_config_needs_a_cloud_source():
    base = {"name": "s2", "kind": "acquisitions", "href": "/d/{yyyymmdd}.tif", "bands": ["red"],
            "dates": ["2019-01-01"]}
    from ecocube.config import SourceConfig

    with pytest.raises(ValueError, match="cloud_from 'item' needs STAC items"):
        SourceConfig(**base, scenes={"select": "least-cloudy"})
    with pytest.raises(ValueError, match="cloud_from 'mask' needs a 'mask'"):
        SourceConfig(**base, scenes={"select": "least-cloudy", "cloud_from": "mask"})
    with pytest.raises(ValueError, match="kind 'composite' has one raster per period"):
        SourceConfig(name="c", href="/d/{band}.tif", bands=["red"], scenes={"max_cloud": 10})


def test_cloud_measured_on_the_tile_equals_the_scene_statistics(data_dir, tmp_path):
    """One 64x64 tile holds the whole patch: the mask's cloud share is the published one."""
    folder = data_dir / "worldcereal-be-2019"
    cfg = config_from_dict({
        "grid": {"crs": "EPSG:32631", "origin": [574680.0, 5622440.0], "pixel_size": 10.0, "tile_size": 64},
        "aoi": {"tiles": ["X0000_Y0000"]},
        "inputs": {"periods": {"start_year": 2019, "end_year": 2019, "season_size": 4},
                   "sources": [{"name": "s2", "kind": "acquisitions", "glob": str(folder / "S2L2A_*_10m.tif"),
                                "bands": ["B04"], "band_indexes": {"B04": 3}, "nodata": 0,
                                "mask": {"href": str(folder / "S2L2A_{yyyymmdd}_SCL.tif"), "values": [3, 8, 9, 10]},
                                "scenes": {"select": "most-recent", "n": 1, "max_cloud": 10, "cloud_from": "mask"}}]},
        "model": {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]},
        "output": {"store": str(tmp_path / "out")},
    })
    tile = TileGrid.from_config(cfg.grid).tile("X0000_Y0000")
    from ecocube.read import mask_cover

    ts = tile_scenes(cfg, tile, measure=mask_cover)
    with open(folder / "scene_cloud_stats.csv") as fh:
        published = {r["date"]: 100 * float(r["frac_cloud_or_shadow_SCL_3_8_9_10"]) for r in csv.DictReader(fh)}
    choices = [c for per in ts.choices["s2"].values() for c in per]
    assert len(choices) == sum(1 for d in published if d.startswith("2019"))
    for c in choices:
        assert c.cloud == pytest.approx(published[c.observation.day.isoformat()], abs=0.05)  # csv: 3 decimals
    for k, per in ts.choices["s2"].items():
        clear = [c for c in per if c.cloud <= 10]
        kept = [c for c in per if c.kept]
        assert kept == ([max(clear, key=lambda c: c.observation.day)] if clear else [])
        assert [o.day for o in ts.catalogs[0].observations[k]] == [c.observation.day for c in kept]


class _FlakyApi:
    """A loopback HTTP server answering 503 to the first ``failures`` requests, then a
    minimal STAC API landing page and collection list (fault injection for the retries)."""

    def __init__(self, failures: int):
        import http.server
        import json
        import threading

        self.failures, self.requests = failures, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests += 1
                if outer.requests <= outer.failures:
                    self.send_response(503)
                    self.end_headers()
                    return
                base = f"http://127.0.0.1:{outer.port}"
                if self.path.startswith("/collections"):
                    body = {"collections": [{"type": "Collection", "stac_version": "1.0.0", "id": "s2",
                                             "description": "d", "license": "proprietary", "links": [],
                                             "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                                                        "temporal": {"interval": [[None, None]]}}}],
                            "links": []}
                else:
                    body = {"type": "Catalog", "stac_version": "1.0.0", "id": "flaky", "description": "d",
                            "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                           "https://api.stacspec.org/v1.0.0/item-search",
                                           "https://api.stacspec.org/v1.0.0/collections"],
                            "links": [{"rel": "self", "href": base + "/"}, {"rel": "root", "href": base + "/"},
                                      {"rel": "search", "href": base + "/search", "method": "GET"},
                                      {"rel": "data", "href": base + "/collections"}]}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("retries, ok", [(3, True), (1, False)])
def test_stac_api_requests_are_retried_then_fail_naming_the_url(retries, ok):
    from ecocube.config import SourceConfig
    from ecocube.errors import ReadError
    from ecocube.scenes import open_api

    with _FlakyApi(failures=2) as api:
        url = f"http://127.0.0.1:{api.port}"
        src = SourceConfig(name="s2", kind="stac-api", bands=["red"],
                           stac_api={"url": url, "collections": ["s2"], "retries": retries, "timeout": 5})
        if ok:
            client = open_api(src)  # two 503 answers, then the landing page and the collections
            assert client.id == "flaky" and api.requests > 2  # the 503s were retried, then answered
        else:
            with pytest.raises(ReadError, match=f"STAC API {url}: opening the landing page failed"):
                open_api(src)
            assert api.requests == 2  # the first try and one retry
