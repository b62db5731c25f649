"""``ecocube report``: a real small run (the demo's generator) with a failure, a missing input,
a tile caught running and one interrupted, then the page rendered in headless Chromium;
after the rest is run and finalized, the same report with every tile done and catalog links.
The same records on SeaweedFS give the same report."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from browser import chromium_page

from ecocube.report import error_group, gapfill_shares

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # training, real tiles, Chromium: minutes

MISSING = "inputs/2019/Q3/nir.tif"  # removed before the run: recorded missing (inputs.on_missing: record)
BROKEN = "inputs/2019/Q2/red.tif"  # replaced by junk while the failing tile runs


def ecocube(*args, check=None, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "ecocube", *map(str, args)], capture_output=True, text=True,
                          timeout=600, check=False, **kw)
    if check is not None:
        assert proc.returncode == check, (args, proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def _record(root: Path, tile: str, folder: str = "output/status") -> dict | None:
    path = root / folder / f"{tile}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    import yaml

    from ecocube.config import load_config
    from ecocube.demo import demo_config_dict, make_demo_inputs
    from ecocube.grid import TileGrid

    root = tmp_path_factory.mktemp("report-run")
    spec = make_demo_inputs(root, tiles_x=3, tiles_y=2, tile_size=32, start_year=2019, end_year=2019, n_samples=200)
    data = demo_config_dict(spec)
    data["name"] = "report-test"
    data["inputs"]["on_missing"] = "record"
    data["model"].update({"n_estimators": 20, "cv_folds": 3, "engine": "stock"})
    data["processing"] = {"block_size": 16, "threads": 1}
    data["output"]["fsync"] = False
    run_yaml = root / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    (root / MISSING).unlink()
    cfg = load_config(run_yaml)
    train = ecocube("train", run_yaml, "--samples", spec.samples, "--class-field", "lc", check=0)
    train_report = json.loads((root / "model" / "report.json").read_text())
    tiles = [t.id for t in TileGrid.from_config(cfg.grid).tiles_for_aoi(cfg.aoi)]
    assert len(tiles) == 6
    done, failed, running, pending = tiles[:3], tiles[3], tiles[4], tiles[5]

    # three tiles done, one JSON line per tile on stdout
    run = ecocube("run", run_yaml, *[a for t in done for a in ("--tile", t)], "--log-format", "json", check=0)

    # one tile fails on an input that is not a raster
    good = (root / BROKEN).read_bytes()
    (root / BROKEN).write_bytes(b"this is not a GeoTIFF\n" * 50)
    fail = ecocube("run-tile", run_yaml, "--tile", failed, "--log-format", "json", check=1)
    (root / BROKEN).write_bytes(good)

    # one tile caught running (its process stopped), reported, then TERMed: interrupted
    proc = subprocess.Popen([sys.executable, "-m", "ecocube", "run-tile", str(run_yaml), "--tile", running],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and (_record(root, running) or {}).get(
                "state") != "running":
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGSTOP)
        assert _record(root, running)["state"] == "running"
        during = ecocube("report", run_yaml, "--out", root / "report-during", check=0)
        shutil.copytree(root / "output" / "status", root / "status-during")  # the records the report read
        os.kill(proc.pid, signal.SIGTERM)  # pending while stopped, delivered on SIGCONT
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 143, err[-3000:]
    interrupted = ecocube("report", run_yaml, "--out", root / "report-interrupted", check=0)

    # the pending tile as array task 5 (one tile per task) with slurm.log_format json
    task = ecocube("run-task", run_yaml, "--task-id", 5, "--config", "slurm.log_format=json", check=0)

    # the rest, with stderr on a pseudo-terminal (a progress bar), then finalize: the report after the run
    master, slave = pty.openpty()
    rest = subprocess.Popen([sys.executable, "-m", "ecocube", "run", str(run_yaml)], stdout=subprocess.PIPE,
                            stderr=slave, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    rest_out = rest.communicate(timeout=600)[0]
    assert rest.returncode == 0, rest_out
    ecocube("finalize", run_yaml, check=0)
    after = ecocube("report", run_yaml, "--out", root / "report-after", check=0)
    return {"root": root, "cfg": cfg, "tiles": tiles, "done": done, "failed": failed, "running": running,
            "pending": pending, "run": run, "fail": fail, "during": during, "interrupted": interrupted,
            "after": after, "train": train_report,
            "train_stderr": train.stderr, "tty": b"".join(chunks).decode("utf-8", "replace"), "rest_out": rest_out,
            "task": task}


def _flag_shares(root: Path, tiles) -> dict[str, float]:
    """Shares per gap-fill phase recounted from the published flags GeoTIFFs (the codes as the
    gapfill module's docstring defines them)."""
    counts = np.zeros(256, np.int64)
    for tile in tiles:
        for tif in sorted((root / "output" / "flags" / tile).rglob("*.tif")):
            with rasterio.open(tif) as src:
                counts += np.bincount(src.read().ravel(), minlength=256)  # every period (stacked bands)
    base = np.arange(256) & 127
    total = counts.sum()
    filled = (np.arange(256) > 0) & (np.arange(256) < 254)
    return {
        "observed": counts[0] / total,
        "TMWM phase 1 (same season)": counts[filled & (base >= 1) & (base <= 40)].sum() / total,
        "TMWM phase 2 (neighbouring seasons)": counts[filled & (base >= 41) & (base <= 80)].sum() / total,
        "TMWM phase 3 (contiguous periods)": counts[filled & (base >= 81) & (base <= 120)].sum() / total,
        "linear": counts[filled & ((base == 121) | (base == 122))].sum() / total,
        "unfilled": (counts[254] + counts[255]) / total,
    }


def _open(page, path: Path) -> None:
    page.goto(path.resolve().as_uri(), wait_until="load")
    page.wait_for_function("() => [...document.images].every(i => i.complete)")


def test_json_log_lines_one_per_tile(campaign):
    lines = [json.loads(line) for line in campaign["run"].stdout.splitlines() if line.startswith("{")]
    tiles = [x for x in lines if x.get("event") == "tile"]
    assert [x["tile"] for x in tiles] == campaign["done"]
    for x in tiles:
        rec = _record(campaign["root"], x["tile"])
        assert x["state"] == "done" == rec["state"]
        assert x["seconds"] == rec["seconds"] and x["peak_rss_bytes"] == rec["peak_rss_bytes"] > 2**20
        assert x["completeness"] == rec["completeness"] and x["error"] is None
    # a failed run-tile: its one JSON line on stdout, the one-line error on stderr
    (line,) = [json.loads(x) for x in campaign["fail"].stdout.splitlines()]
    rec = _record(campaign["root"], campaign["failed"], "status-during")
    assert line["event"] == "tile" and line["state"] == "failed" == rec["state"]
    assert line["error"] == rec["error"] and "red.tif" in line["error"] and line["seconds"] == rec["seconds"]
    assert campaign["fail"].stderr.strip().splitlines()[-1].startswith(f"ecocube: error: tile {campaign['failed']}")
    (summary,) = [x for x in lines if x.get("event") == "summary"]
    assert summary["tiles"] == 3 and summary["done"] == 3 and summary["failed"] == []
    assert campaign["run"].stderr.count("\r") == 0  # no progress bar when stderr is not a terminal
    # the missing input: one warning per tile (each tile reads it once per block: 4 blocks)
    warned = [x for x in campaign["run"].stderr.splitlines() if "input missing, recorded" in x]
    assert len(warned) == 3 and all(MISSING in x for x in warned), warned
    # an array task with slurm.log_format: json
    task_lines = [json.loads(x) for x in campaign["task"].stdout.splitlines()]
    rec = _record(campaign["root"], campaign["pending"])
    assert [x["event"] for x in task_lines] == ["tile", "summary"]
    assert task_lines[0]["tile"] == campaign["pending"] and task_lines[0]["state"] == "done" == rec["state"]
    assert task_lines[0]["attempt"] == rec["attempt"] == 1 and task_lines[0]["seconds"] == rec["seconds"]
    assert task_lines[1] == {"event": "summary", "tiles": 1, "done": 1, "skipped": 0, "failed": [], "held": []}


def test_progress_bars_only_on_a_terminal(campaign):
    # a terminal: the tile bar with its count and ETA, drawn in place (carriage returns)
    tty = campaign["tty"]
    assert "\r" in tty and re.search(r"tiles: +\d+%\|.*\| \d/6 \[\d\d:\d\d<\d\d:\d\d", tty), tty[-2000:]
    # pipes (logs, CI): no bar from training (overlay, CV) nor from the run
    for text in (campaign["train_stderr"], campaign["run"].stderr, campaign["rest_out"]):
        assert "\r" not in text and "it/s" not in text and "tile/s" not in text and "%|" not in text, text[-2000:]


def test_report_during_the_run(campaign, tmp_path):
    root, c = campaign["root"], campaign
    out = root / "report-during"
    assert "6 tiles: 3 done, 1 failed, 1 running, 1 pending" in c["during"].stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["counts"] == {"done": 3, "failed": 1, "interrupted": 0, "running": 1, "stale": 0, "empty": 0,
                             "pending": 1}
    (group,) = rep["failures"]
    assert group["tiles"] == [c["failed"]] and group["state"] == "failed"
    failed_rec = _record(root, c["failed"], "status-during")
    assert BROKEN.rsplit("/", 1)[-1] in failed_rec["error"] and group["example"] == failed_rec["error"]
    assert group["logs"][0]["log"] is None and group["logs"][0]["pid"] == failed_rec["pid"]  # a local run
    (missing,) = rep["missing_inputs"]
    assert missing["href"].endswith(MISSING) and missing["tiles"] == c["done"]
    # the gap-fill shares against a recount of the published flags rasters
    shares = _flag_shares(root, c["done"])
    for name, share in shares.items():
        assert rep["gapfill"]["phases"][name]["share"] == pytest.approx(share, abs=1e-12), name
    assert rep["gapfill"]["tiles"] == 3 and shares["observed"] < 0.95 and shares["unfilled"] < 1 - shares["observed"]
    assert rep["model"]["metrics"]["overall_accuracy"] == c["train"]["metrics"]["overall_accuracy"]
    assert rep["catalog"] is None
    done_secs = sorted(_record(root, t)["seconds"] for t in c["done"])
    assert rep["resources"]["tiles_timed"] == 4  # the failed attempt was timed too
    assert rep["resources"]["seconds"]["max"] == max(done_secs + [failed_rec["seconds"]])
    (run_row,) = rep["resources"]["running"]
    assert run_row["tile"] == c["running"] and run_row["running_seconds"] >= 0
    for name in ("tiles.png", "completeness.png", "seconds.png", "memory.png", "gapfill.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    page_text = (out / "report.html").read_text()
    assert "<script" not in page_text and "http://" not in page_text.replace("http://www.w3.org", "")
    with chromium_page(viewport={"width": 1280, "height": 900}) as watched:
        page, errors, requests = watched.page, watched.errors, watched.requests
        _open(page, out / "report.html")
        assert page.title() == "ecocube report: report-test"
        ids = page.eval_on_selector_all("main section", "els => els.map(e => e.id)")
        assert ids == ["states", "completeness", "resources", "failures", "inputs", "gapfill", "model", "catalog"]
        cells = dict(page.eval_on_selector_all(
            "table.counts tr[data-state]", "rs => rs.map(r => [r.dataset.state, r.cells[1].innerText])"))
        assert cells == {"done": "3", "failed": "1", "interrupted": "0", "running": "1", "stale": "0",
                         "empty": "0", "pending": "1"}
        states = dict(page.eval_on_selector_all("svg.grid rect",
                                                "rs => rs.map(r => [r.dataset.tile, r.dataset.state])"))
        assert states == {**{t: "done" for t in c["done"]}, c["failed"]: "failed", c["running"]: "running",
                          c["pending"]: "pending"}
        assert page.locator("svg.grid").bounding_box()["width"] > 300
        assert page.locator("tr.failure").count() == 1
        assert "red.tif" in page.locator("tr.failure td.error").inner_text()
        assert c["failed"] in page.locator("tr.failure").inner_text()
        assert MISSING in page.locator("table.missing").inner_text()
        assert page.locator("table.running tr[data-tile]").count() == 1
        assert page.locator("#catalog .none").count() == 1
        acc = c["train"]["metrics"]["overall_accuracy"]
        assert page.locator('table.metrics tr[data-metric="overall_accuracy"] td').nth(1).inner_text() == \
            f"{acc:.3f}"
        widths = page.eval_on_selector_all("img.fig", "els => els.map(e => [e.dataset.name, e.naturalWidth])")
        names = [n for n, _ in widths]
        assert {"completeness.png", "seconds.png", "memory.png", "gapfill.png"} <= set(names)
        assert "model-confusion_matrix.png" in names and all(w > 100 for _, w in widths), widths
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        assert errors == []
    assert all(r.startswith(("file://", "data:")) for r in requests), requests


def test_report_of_an_interrupted_tile(campaign):
    rep = json.loads((campaign["root"] / "report-interrupted" / "report.json").read_text())
    assert rep["counts"]["interrupted"] == 1 and rep["counts"]["running"] == 0 and rep["counts"]["failed"] == 1
    groups = {g["state"]: g for g in rep["failures"]}
    assert groups["interrupted"]["tiles"] == [campaign["running"]]
    assert "SIGTERM" in groups["interrupted"]["error"]


def test_report_after_the_run_links_the_catalog(campaign):
    out = campaign["root"] / "report-after"
    rep = json.loads((out / "report.json").read_text())
    assert rep["counts"]["done"] == 6 and rep["finished"] and rep["failures"] == []
    assert rep["completeness"]["overall"] == pytest.approx(
        np.mean([_record(campaign["root"], t)["completeness"] for t in campaign["tiles"]]))
    with chromium_page() as watched:
        page = watched.page
        _open(page, out / "report.html")
        assert page.locator("#failures .none").count() == 1
        hrefs = page.eval_on_selector_all("a.catalog-link", "els => els.map(e => e.href)")
        assert len(hrefs) == 3
        for href in hrefs:
            assert Path(href.removeprefix("file://")).is_file(), href
        page.locator("a.catalog-link", has_text="catalog page").click()
        page.wait_for_load_state("load")
        assert page.title() == campaign["cfg"].finalize.stac.title == "ecocube demo: land cover 2019–2021"


def test_report_from_s3(campaign, seaweed, s3_bucket, tmp_path):
    """The same records and catalog on SeaweedFS: the same counts, failures and gap-fill shares."""
    from ecocube.config import config_from_dict
    from ecocube.report import write_report

    root = campaign["root"]
    client = seaweed.client()
    for path in sorted((root / "output").rglob("*")):
        rel = path.relative_to(root / "output").as_posix()
        if path.is_file() and not rel.startswith("catalog/") or rel in ("catalog/catalog.json", "catalog/index.html"):
            client.upload_file(str(path), s3_bucket, f"run/{rel}")
    data = campaign["cfg"].model_dump(mode="json", exclude={"base_dir"})
    data["output"] = {**data["output"], "store": f"s3://{s3_bucket}/run",
                      "s3": {"endpoint_url": seaweed.endpoint_url, "region": "us-east-1"}}
    cfg = config_from_dict(data, base_dir=root, source="test")
    rep = write_report(cfg, tmp_path / "s3-report")
    local = json.loads((root / "report-after" / "report.json").read_text())
    assert rep["store"] == f"s3://{s3_bucket}/run/"
    assert rep["counts"] == local["counts"] and rep["gapfill"]["phases"] == local["gapfill"]["phases"]
    assert rep["catalog"]["catalog page"] == f"s3://{s3_bucket}/run/catalog/index.html"
    assert (tmp_path / "s3-report" / "report.html").stat().st_size > 10_000


def test_error_group_and_gapfill_shares_by_hand():
    assert error_group("tile X0003_Y0001 failed: ReadError: cannot open a.tif\ntraceback") == \
        "tile <tile> failed: ReadError: cannot open a.tif"
    assert error_group("") == "unknown error"
    # 6 observed, 2 phase-1 (h=1, h=2), 1 phase-3, 1 linear outlier-replaced, 2 unfilled (one an outlier)
    g = gapfill_shares({"0": 6, "1": 1, "2": 1, "81": 1, str(121 | 128): 1, "254": 1, "255": 1})
    assert g["values"] == 12 and g["outlier_replaced"] == 2
    assert {k: v["values"] for k, v in g["phases"].items()} == {
        "observed": 6, "TMWM phase 1 (same season)": 2, "TMWM phase 2 (neighbouring seasons)": 0,
        "TMWM phase 3 (contiguous periods)": 1, "linear": 1, "unfilled": 2}
    assert g["phases"]["observed"]["share"] == 0.5
