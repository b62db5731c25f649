"""The catalog browser: static index.html in headless Chromium, and the loopback Range/CORS server."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from ecocube.browse import BackgroundServer, footprint_svg, human_size, make_server, parse_ranges, write_browser
from ecocube.errors import ConfigError, EcocubeError
from ecocube.finalize import finalize
from ecocube.store import open_store
from test_mosaic import run_config, write_tile_outputs

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browse-run")
    cfg = run_config(tmp, str(tmp / "store"))
    store = open_store(cfg.output)
    write_tile_outputs(store, cfg)
    result = finalize(cfg, store=store, threads=2)
    return Path(result["catalog"]).parent


def _request(url: str, path: str, method: str = "GET", headers: dict | None = None):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)  # path sent verbatim, no normalisation
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_index_is_self_contained(catalog_dir):
    page = (catalog_dir / "index.html").read_text()
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page.replace("https://creativecommons.org", "")  # only the licence link
    for coll in ("proba", "class", "uncertainty", "composite-blue", "composite-nir", "flags"):
        assert f'data-collection="{coll}"' in page
    assert 'src="class/class-2019-01-01/class.png"' in page
    assert 'href="composite-nir/composite-nir-2019-04-01/count.tif" download' in page
    size = (catalog_dir / "class/class-2019-01-01/class.tif").stat().st_size
    assert human_size(size) in page


def test_range_reads_of_a_cog_through_the_server(catalog_dir):
    cog = catalog_dir / "composite-blue/composite-blue-2019-04-01/blue.tif"
    with BackgroundServer(catalog_dir) as url:
        assert url.startswith("http://127.0.0.1:")
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_HTTP_MULTIRANGE="YES",
                          GDAL_HTTP_MERGE_CONSECUTIVE_RANGES="NO", CPL_VSIL_CURL_CHUNK_SIZE="16384"):
            with rasterio.open(f"/vsicurl/{url}/composite-blue/composite-blue-2019-04-01/blue.tif") as remote, \
                    rasterio.open(cog) as local:
                window = rasterio.windows.Window(70, 10, 60, 50)
                np.testing.assert_array_equal(remote.read(1, window=window), local.read(1, window=window))
                np.testing.assert_array_equal(remote.read(1, out_shape=(64, 96)), local.read(1, out_shape=(64, 96)))
                assert remote.overviews(1) == local.overviews(1) == [2]
                assert remote.scales == (0.0001,)

        data = cog.read_bytes()
        resp, body = _request(url, "/composite-blue/composite-blue-2019-04-01/blue.tif",
                              headers={"Range": "bytes=100-199"})
        assert resp.status == 206 and body == data[100:200]
        assert resp.getheader("Content-Range") == f"bytes 100-199/{len(data)}"
        assert resp.getheader("Accept-Ranges") == "bytes"
        assert resp.getheader("Access-Control-Allow-Origin") == "*"
        assert "Content-Range" in resp.getheader("Access-Control-Expose-Headers")
        resp, body = _request(url, "/composite-blue/composite-blue-2019-04-01/blue.tif", headers={"Range": "bytes=-10"})
        assert resp.status == 206 and body == data[-10:]
        resp, body = _request(url, "/composite-blue/composite-blue-2019-04-01/blue.tif",
                              headers={"Range": "bytes=0-3,50-59"})
        assert resp.status == 206 and resp.getheader("Content-Type").startswith("multipart/byteranges; boundary=")
        assert data[0:4] in body and data[50:60] in body and f"bytes 50-59/{len(data)}".encode() in body
        assert int(resp.getheader("Content-Length")) == len(body)
        resp, _ = _request(url, "/composite-blue/composite-blue-2019-04-01/blue.tif",
                           headers={"Range": f"bytes={len(data) + 5}-"})
        assert resp.status == 416 and resp.getheader("Content-Range") == f"bytes */{len(data)}"
        resp, body = _request(url, "/catalog.json", method="HEAD")
        assert resp.status == 200 and body == b"" and resp.getheader("Content-Type") == "application/json"
        resp, _ = _request(url, "/catalog.json", method="OPTIONS",
                           headers={"Origin": "https://radiantearth.github.io", "Access-Control-Request-Method": "GET",
                                    "Access-Control-Request-Headers": "range"})
        assert resp.status == 204 and "Range" in resp.getheader("Access-Control-Allow-Headers")
        resp, _ = _request(url, "/catalog.json", method="POST")
        assert resp.status == 405
        resp, body = _request(url, "/")
        assert resp.status == 200 and b"<!DOCTYPE html>" in body


def test_server_refuses_paths_outside_the_root(catalog_dir, tmp_path):
    secret = catalog_dir.parent / "secret.txt"
    secret.write_text("do not serve")
    outside = tmp_path / "outside.txt"
    outside.write_text("nor this")
    link = catalog_dir / "link-out.txt"
    link.symlink_to(outside)
    try:
        with BackgroundServer(catalog_dir) as url:
            for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E%2Fsecret.txt", "/..%2fsecret.txt",
                         "/class/../../secret.txt", "/class/%2e%2e/%2e%2e/secret.txt", "/%252e%252e/secret.txt",
                         "/class/..%5c..%5csecret.txt", "/..\\secret.txt", "/link-out.txt"):
                resp, body = _request(url, path)
                assert resp.status in (400, 403, 404), (path, resp.status)
                assert b"do not serve" not in body and b"nor this" not in body, path
            resp, _ = _request(url, "/%00catalog.json")
            assert resp.status == 400
            resp, _ = _request(url, "/no/such/file.json")
            assert resp.status == 404
            resp, _ = _request(url, "/class/class-2019-01-01/")  # folders are never listed
            assert resp.status == 404
    finally:
        link.unlink()


def test_server_binds_loopback_only(catalog_dir):
    server = make_server(catalog_dir, 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
    with pytest.raises(ConfigError, match="catalog folder not found"):
        make_server(catalog_dir / "nope", 0)


def test_browse_cli_serves(catalog_dir):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "ecocube", "browse", str(catalog_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "serving" in line, line
        url = line.split(" at ")[1].split("/ ")[0].strip()
        assert url.startswith("http://127.0.0.1:")
        resp, body = _request(url, "/catalog.json")
        assert resp.status == 200 and b'"type": "Catalog"' in body
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        finally:  # never leak the server, even when it ignored the signal
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            proc.stdout.close()


def test_page_in_headless_chromium(catalog_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with BackgroundServer(catalog_dir) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/index.html", wait_until="load")
            assert page.title() == "ecocube catalog"
            ids = page.eval_on_selector_all("section.collection", "els => els.map(e => e.dataset.collection)")
            assert sorted(ids) == sorted(["class", "composite-blue", "composite-nir", "flags", "proba", "uncertainty"])
            assert page.locator("nav a").count() == 6
            assert page.locator("section#class .legend").inner_text().count("forest") == 1
            assert page.locator("svg.fp").count() == 6  # one footprint map per collection
            assert page.locator("svg.fp polygon").count() == 9  # one footprint per item
            thumbs = page.locator("img.thumb")
            assert thumbs.count() == 9
            for i in range(thumbs.count()):  # lazy images load when scrolled to
                thumbs.nth(i).scroll_into_view_if_needed()
            page.wait_for_function("() => [...document.images].every(i => i.complete)")
            widths = page.eval_on_selector_all("img.thumb", "els => els.map(e => e.naturalWidth)")
            assert all(w > 100 for w in widths), widths
            page.evaluate("window.scrollTo(0, 0)")
            shot = tmp_path / "browser.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
            assert errors == []
        finally:
            browser.close()
    assert requests and all(r.startswith(url) for r in requests), [r for r in requests if not r.startswith(url)]
    keep = os.environ.get("ECOCUBE_KEEP_SCREENSHOT")
    if keep:
        Path(keep).write_bytes(shot.read_bytes())


def test_parse_ranges():
    assert parse_ranges("bytes=0-9", 100) == [(0, 9)]
    assert parse_ranges("bytes=90-", 100) == [(90, 99)]
    assert parse_ranges("bytes=-5", 100) == [(95, 99)]
    assert parse_ranges("bytes=0-1,5-6", 100) == [(0, 1), (5, 6)]
    assert parse_ranges("bytes=0-1000", 100) == [(0, 99)]
    assert parse_ranges("bytes=200-300", 100) == []
    assert parse_ranges("bytes=9-1", 100) is None
    assert parse_ranges("items=0-1", 100) is None
    assert parse_ranges("bytes=abc", 100) is None


def test_footprint_svg_and_errors(tmp_path):
    svg = footprint_svg([{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}])
    assert svg.startswith("<svg") and svg.count("<polygon") == 1
    assert footprint_svg([None]).startswith("<svg")
    with pytest.raises(EcocubeError, match="no catalog.json"):
        write_browser(tmp_path)


# WebGL in headless Chromium without a GPU: SwiftShader (software), which Chromium only allows when asked
MAP_ARGS = [a for a in CHROMIUM_ARGS if a != "--disable-gpu"] + ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


def _shot_rgb(locator) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB"))


def _wait_render(page, before: int) -> int:
    page.wait_for_function(f"() => Number(document.body.dataset.rendered || 0) > {before}", timeout=60_000)
    return int(page.evaluate("() => Number(document.body.dataset.rendered)"))


def test_map_in_headless_chromium(catalog_dir):
    """The map reads the COGs client-side: non-blank tiles in the legend's colours, in the classes'
    proportions; the inspector shows, for a known pixel, the values rasterio reads there."""
    from playwright.sync_api import sync_playwright

    from ecocube.browse import MAP_BUNDLE

    assert (catalog_dir / "map.js").read_bytes() == (MAP_BUNDLE / "map.js").read_bytes()
    assert 'href="map.html"' in (catalog_dir / "index.html").read_text()
    cls_path = catalog_dir / "class/class-2019-01-01/class.tif"
    with rasterio.open(cls_path) as src:
        cls = src.read(1)
        row, col = 40, 100
        assert cls[row, col] != 65535
        x, y = src.xy(row, col)  # the pixel's centre
    expected = {("class", "class", "2019-01-01"): [int(cls[row, col])]}
    for coll, asset, periods in (("proba", "proba", ["2019-01-01"]), ("uncertainty", "uncertainty", ["2019-01-01"]),
                                 ("flags", "blue", ["2019-01-01", "2019-04-01"]),
                                 ("flags", "nir", ["2019-01-01", "2019-04-01"])):
        for period in periods:
            with rasterio.open(catalog_dir / f"{coll}/{coll}-{period}/{asset}.tif") as src:
                r, c = src.index(x, y)
                expected[(coll, asset, period)] = [int(v) for v in src.read(window=((r, r + 1), (c, c + 1)))[:, 0, 0]]
    assert len(expected[("proba", "proba", "2019-01-01")]) == 3

    requests: list[str] = []
    errors: list[str] = []
    with BackgroundServer(catalog_dir) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=MAP_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/map.html", wait_until="load")
            n = _wait_render(page, 0)
            assert page.evaluate("() => document.body.dataset.layer") == "class/class/1"
            assert page.locator("#legend").inner_text().count("forest") == 1
            rgb = _shot_rgb(page.locator("#map"))
            legend = {1: (0xF2, 0xD1, 0x6B), 2: (0x1A, 0x7F, 0x37), 5: (0x2B, 0x6C, 0xB0)}
            counts = {v: int(np.all(rgb == colour, axis=-1).sum()) for v, colour in legend.items()}
            drawn = sum(counts.values())
            assert drawn > 20_000, counts  # non-blank: the tiles were read and drawn
            valid = cls[cls != 65535]
            for v, k in counts.items():  # the map shows the classes in the raster's proportions
                assert abs(k / drawn - np.mean(valid == v)) < 0.03, (v, k / drawn, np.mean(valid == v))

            # swipe between two periods of the gap-fill flags: left = first, right = second
            idx = page.evaluate("() => window.ecocubeMap.layers.findIndex(l => l.id === 'flags/blue/1')")
            page.select_option("#layer", str(idx))
            n = _wait_render(page, n)
            assert page.locator("#year-a-label").inner_text() == "2019-01-01"
            assert page.locator("#year-b-label").inner_text() == "2019-04-01"
            page.fill("#swipe", "100")
            n = _wait_render(page, n)
            left = _shot_rgb(page.locator("#map"))
            page.fill("#swipe", "0")
            n = _wait_render(page, n)
            right = _shot_rgb(page.locator("#map"))
            assert np.any(left != right, axis=-1).mean() > 0.05  # the two years differ where the flags do

            # the inspector at a known pixel
            page.evaluate(f"() => window.ecocubeMap.inspect([{x}, {y}])")
            page.wait_for_function("() => document.getElementById('inspector').dataset.done === '1'", timeout=60_000)
            for (coll, asset, period), values in expected.items():
                cells = page.locator(f'#inspector table[data-collection="{coll}"][data-asset="{asset}"] '
                                     f'tr[data-period="{period}"] td[data-band]')
                assert [int(v) for v in cells.evaluate_all("els => els.map(e => e.dataset.raw)")] == values, \
                    (coll, asset, period)
            text = page.locator('#inspector table[data-collection="class"]').inner_text()
            name = {1: "cropland", 2: "forest", 5: "water"}[int(cls[row, col])]
            assert f"{int(cls[row, col])} {name}" in text
            row_text = page.locator('#inspector table[data-collection="flags"][data-asset="blue"] '
                                    'tr[data-period="2019-04-01"]').inner_text()
            assert f"flag_{expected[('flags', 'blue', '2019-04-01')][0]}" in row_text

            # a real click on the map fills it too
            page.locator("#map").click(position={"x": 400, "y": 300})
            page.wait_for_function("() => document.getElementById('inspector').dataset.done === '2'", timeout=60_000)
            assert page.locator("#inspector p.where").inner_text().startswith("x ")
        finally:
            browser.close()
    assert errors == []
    # nothing but the catalog's files (and the decoders' blob: workers made from the bundle)
    outside = [r for r in requests if not r.startswith((url + "/", f"blob:{url}/"))]
    assert requests and outside == [], outside
    assert any(r.endswith("/class/class-2019-01-01/class.tif") for r in requests)
