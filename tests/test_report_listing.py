"""``ecocube report`` at campaign scale: 3,000 tiles (records written as a run leaves them) give
a page whose per-tile table lists failed and running tiles first, then a page of done tiles,
the rest folded, checked in headless Chromium; every tile is in tiles.csv."""

from __future__ import annotations

import csv
import io

import pytest
from browser import chromium_page

from ecocube.config import config_from_dict
from ecocube.report import write_report
from ecocube.status import now_iso, write_status
from ecocube.store import LocalStore

pytestmark = pytest.mark.slow  # headless Chromium

# 60 x 50 tiles of 100 m: the bbox spans columns 0-59 and rows 0-49 of the grid
IDS = [f"X{ix:04d}_Y{iy:04d}" for iy in range(50) for ix in range(60)]
FAILED = IDS[-30:]  # the last 30 in grid order: listing them first is a real reordering
RUNNING = IDS[1000:1003]
PENDING = IDS[2000:2017]
DONE = [t for t in IDS if t not in set(FAILED) | set(RUNNING) | set(PENDING)]


@pytest.fixture(scope="module")
def big_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("big-report")
    cfg = config_from_dict({
        "name": "big", "grid": {"crs": "EPSG:3035", "origin": [0, 30000], "pixel_size": 10, "tile_size": 10},
        "aoi": {"bbox": [0, 25000, 6000, 30000]},
        "inputs": {"sources": [{"name": "s", "href": "in/{band}.tif", "bands": ["red"]}]},
        "model": {"path": str(root / "no-model"), "classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]},
        "output": {"store": str(root / "out")},
    }, base_dir=root, source="test")
    store = LocalStore(root / "out")
    for i, t in enumerate(DONE):
        write_status(store, {"tile": t, "state": "done", "attempt": 1, "seconds": 10.0 + i % 7, "completeness": 1.0,
                             "host": "node1", "peak_rss_bytes": 300 * 2**20})
    for t in FAILED:
        write_status(store, {"tile": t, "state": "failed", "attempt": 2, "seconds": 3.0, "host": "node2", "pid": 7,
                             "error": f"tile {t} failed: ReadError: cannot read in/red.tif for tile {t}"})
    for t in RUNNING:
        write_status(store, {"tile": t, "state": "running", "attempt": 1, "host": "node3", "pid": 9,
                             "started": now_iso(), "heartbeat": now_iso()})
    report = write_report(cfg, root / "report")
    return root / "report", report


def test_tiles_csv_holds_every_tile_once(big_report):
    out, report = big_report
    rows = list(csv.DictReader(io.StringIO((out / "tiles.csv").read_text())))
    assert [r["tile"] for r in rows] == IDS
    states = {r["tile"]: r["state"] for r in rows}
    assert {t for t, s in states.items() if s == "failed"} == set(FAILED)
    assert {t for t, s in states.items() if s == "running"} == set(RUNNING)
    assert {t for t, s in states.items() if s == "pending"} == set(PENDING)
    assert rows[IDS.index(FAILED[0])]["error"].endswith(f"cannot read in/red.tif for tile {FAILED[0]}")
    assert report["files"]["tiles.csv"] == str(out / "tiles.csv")


def test_the_page_lists_attention_first_then_pages_of_the_rest(big_report):
    out, _ = big_report
    page_text = (out / "report.html").read_text()
    assert "<script" not in page_text  # still a page without a script
    with chromium_page(viewport={"width": 1280, "height": 900}) as watched:
        page, errors, requests = watched.page, watched.errors, watched.requests
        page.goto((out / "report.html").resolve().as_uri(), wait_until="load")
        blocks = page.eval_on_selector_all("div.state-tiles", "els => els.map(e => e.dataset.state)")
        assert blocks == ["failed", "running", "done", "pending"]
        visible = "rs => rs.filter(r => r.checkVisibility()).map(r => r.dataset.tile)"
        shown = page.eval_on_selector_all("table.tiles tr[data-tile]", visible)
        # every failed and running tile, the first 100 done ones, the 17 pending
        assert shown == FAILED + RUNNING + DONE[:100] + PENDING
        every = page.eval_on_selector_all("table.tiles tr[data-tile]", "rs => rs.map(r => r.dataset.tile)")
        assert sorted(every) == sorted(IDS)  # each tile once, the folded pages included
        summaries = page.eval_on_selector_all('details.page[data-state="done"] > summary',
                                              "els => els.map(e => e.innerText)")
        assert len(summaries) == 29  # 2,950 done tiles: 30 pages of 100, the first one open
        assert summaries[0] == f"done: rows 101–200 ({DONE[100]} … {DONE[199]})"
        assert summaries[-1] == f"done: rows 2901–2950 ({DONE[2900]} … {DONE[2949]})"
        page.locator('details.page[data-state="done"][data-page="2"] > summary').click()
        shown = page.eval_on_selector_all("table.tiles tr[data-tile]", visible)
        assert shown == FAILED + RUNNING + DONE[:200] + PENDING
        # the failure group: its 30 tiles in one row, 20 of their logs and a count of the rest
        (group,) = page.eval_on_selector_all("tr.failure", "rs => rs.map(r => r.cells[3].innerText)")
        assert group.count("local run on node2") == 20 and group.endswith("… 10 more: report.json")
        assert errors == []
    assert all(r.startswith(("file://", "data:")) for r in requests), requests
