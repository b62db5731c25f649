"""Faults of an HTTP input server (a real one with Range support, tests/rangeserver.py).

What must hold: a burst of 500/503 is retried and the tile comes out byte-identical to a clean
run; a stall, truncated bodies and a server that goes away mid-run fail the tile with one line
naming the URL and the tile, exit 1, nothing published; once the server is back the rerun
finishes byte-identical to a clean run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from faults import assert_rerun_matches, clean_run, file_checksums, output_checksums, published
from rangeserver import RangeServer
from test_tile import cfg_dict, scene, write_yaml  # noqa: F401 - fixtures

from ecocube.status import read_status
from ecocube.store import LocalStore

pytestmark = pytest.mark.slow  # real processes and tiles

TILE = "X0000_Y0000"
LAYERS = {"layers": ["composite", "flags", "count"]}
PRODUCTS = ("composite", "flags", "count")
FILE = "/inputs/2019/Q2/red.tif"


def _data(root, srv_url: str, store, read_ahead: bool, **inputs) -> dict:
    data = cfg_dict(root, str(store), tiles=(TILE,), output=LAYERS, processing={"read_ahead": read_ahead})
    data["inputs"]["sources"][0]["href"] = srv_url + "/inputs/{year}/Q{quarter}/{band}.tif"
    data["inputs"].update(inputs)
    return data


def _cmd(run_yaml) -> list[str]:
    return [sys.executable, "-m", "ecocube", "run-tile", str(run_yaml), "--tile", TILE]


def run_tile(run_yaml, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecocube", "run-tile", str(run_yaml), "--tile", TILE],
                          capture_output=True, text=True, timeout=timeout)


def _reference(scene, tmp_path) -> dict[str, str]:
    """The tile read from the local files, without any server."""
    return clean_run(cfg_dict(scene["root"], str(tmp_path / "unused"), tiles=(TILE,), output=LAYERS), tmp_path, TILE)


def _assert_one_line_failure(proc, url: str, *needles: str) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    last = lines[-1]
    assert last.startswith(f"ecocube: error: tile {TILE} failed: ReadError: "), proc.stderr[-3000:]
    assert url in last and TILE in last, last
    for needle in needles:
        assert needle in last, last
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return last


def _fetched(srv) -> set[str]:
    return {r.path for r in srv.log if r.method == "GET" and r.status in (200, 206)}


def _assert_failed_and_nothing_published(store) -> None:
    rec = read_status(store, TILE)
    assert rec["state"] == "failed" and rec["error_type"] == "ReadError" and rec["outputs"] == {}
    assert published(store) == []


@pytest.mark.parametrize("kind", ["500", "503"])
def test_a_burst_of_server_errors_is_retried_and_the_tile_matches_a_clean_run(scene, tmp_path, kind,  # noqa: F811
                                                                             read_ahead):
    with RangeServer(scene["root"]) as srv:
        srv.add_fault(FILE, kind, times=3, skip=1)  # after the header probe: 3 errors in a row
        run_yaml = write_yaml(tmp_path / "run.yaml", _data(scene["root"], srv.url, tmp_path / "out", read_ahead,
                                                           retries=3))
        proc = run_tile(run_yaml)
        errors = [r for r in srv.log if r.status == int(kind)]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(errors) == 3 and all(r.path == FILE for r in errors)
    store = LocalStore(tmp_path / "out")
    assert output_checksums(store, TILE) == file_checksums(store, TILE, PRODUCTS) == _reference(scene, tmp_path)


def test_a_stalled_server_times_out_naming_the_url_and_the_rerun_completes(scene, tmp_path, read_ahead):  # noqa: F811
    with RangeServer(scene["root"]) as srv:
        srv.add_fault(FILE, "stall", skip=1, seconds=4)  # every data request of that file hangs
        run_yaml = write_yaml(tmp_path / "run.yaml", _data(scene["root"], srv.url, tmp_path / "out", read_ahead,
                                                           retries=1, http_timeout=1))
        t0 = time.monotonic()
        proc = run_tile(run_yaml)
        took = time.monotonic() - t0
        _assert_one_line_failure(proc, srv.url + FILE, "after 2 attempts")
        assert took < 120  # bounded by the timeout and the retries, not by the server
        store = LocalStore(tmp_path / "out")
        _assert_failed_and_nothing_published(store)
        srv.clear_faults()
        assert_rerun_matches(_cmd(run_yaml), store, TILE, PRODUCTS, _reference(scene, tmp_path))


def test_truncated_bodies_are_an_error_never_data_and_the_rerun_completes(scene, tmp_path, read_ahead):  # noqa: F811
    with RangeServer(scene["root"]) as srv:
        srv.add_fault(FILE, "truncate", skip=1)  # every data request of that file is cut in half
        run_yaml = write_yaml(tmp_path / "run.yaml", _data(scene["root"], srv.url, tmp_path / "out", read_ahead,
                                                           retries=1))
        proc = run_tile(run_yaml)
        _assert_one_line_failure(proc, srv.url + FILE)
        store = LocalStore(tmp_path / "out")
        _assert_failed_and_nothing_published(store)
        srv.clear_faults()
        assert_rerun_matches(_cmd(run_yaml), store, TILE, PRODUCTS, _reference(scene, tmp_path))


def test_a_server_that_goes_away_mid_run_fails_the_tile_and_the_rerun_completes(scene, tmp_path,  # noqa: F811
                                                                                 read_ahead):
    srv = RangeServer(scene["root"]).start()
    port, url = srv.port, srv.url
    srv.add_fault("/inputs/", "stall", seconds=0.2)  # slow reads: the tile is still reading when it goes
    run_yaml = write_yaml(tmp_path / "run.yaml", _data(scene["root"], url, tmp_path / "out", read_ahead, retries=1))
    record = tmp_path / "out" / "status" / f"{TILE}.json"
    proc = subprocess.Popen([sys.executable, "-m", "ecocube", "run-tile", str(run_yaml), "--tile", TILE],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 120
        # 24 input files, each fetched once (GDAL caches small files whole): go after the third
        while time.monotonic() < deadline and proc.poll() is None and len(_fetched(srv)) < 3:
            time.sleep(0.02)
        assert len(_fetched(srv)) < 24
        assert proc.poll() is None and json.loads(record.read_text())["state"] == "running"
        srv.go_away()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        srv.stop()
    _assert_one_line_failure(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), url)
    store = LocalStore(tmp_path / "out")
    _assert_failed_and_nothing_published(store)
    with RangeServer(scene["root"], port=port):  # the server is back where it was
        assert_rerun_matches(_cmd(run_yaml), store, TILE, PRODUCTS, _reference(scene, tmp_path))
    assert read_status(store, TILE)["attempt"] == 2
