"""Status records: read/write, verification against checksums, summaries."""

from __future__ import annotations

import json

import pytest

from ecocube.config import config_from_dict
from ecocube.errors import StoreError
from ecocube.status import (
    format_summary,
    format_table,
    read_status,
    status_key,
    summarize,
    tile_states,
    verify_outputs,
    write_status,
)
from ecocube.store import LocalStore


def _cfg(tmp_path, tiles):
    return config_from_dict({
        "grid": {"crs": "EPSG:3035", "origin": [0, 0], "pixel_size": 10, "tile_size": 10},
        "aoi": {"tiles": list(tiles)},
        "inputs": {"sources": [{"name": "s", "href": "/nowhere/{band}.tif", "bands": ["red"]}]},
        "model": {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]},
        "output": {"store": str(tmp_path / "out")},
    })


def test_write_read_round_trip_and_key(tmp_path):
    store = LocalStore(tmp_path)
    rec = {"tile": "X0001_Y0002", "state": "done", "attempt": 2, "completeness": 0.75}
    write_status(store, rec)
    assert status_key("X0001_Y0002") == "status/X0001_Y0002.json"
    assert (tmp_path / "status" / "X0001_Y0002.json").is_file()
    assert read_status(store, "X0001_Y0002") == rec
    assert read_status(store, "X0009_Y0009") is None
    with pytest.raises(ValueError, match="invalid tile state"):
        write_status(store, {"tile": "X0001_Y0002", "state": "pending"})


def test_corrupt_or_foreign_record_is_an_error(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes(b"{not json", "status/X0001_Y0001.json")
    with pytest.raises(StoreError, match="X0001_Y0001.json is not valid JSON"):
        read_status(store, "X0001_Y0001")
    store.put_bytes(json.dumps({"tile": "X0005_Y0005", "state": "done"}).encode(), "status/X0002_Y0002.json")
    with pytest.raises(StoreError, match="does not describe tile X0002_Y0002"):
        read_status(store, "X0002_Y0002")


def test_verify_outputs_detects_missing_changed_and_resized(tmp_path):
    store = LocalStore(tmp_path)
    a = store.put_bytes(b"aaaa", "class/T/2019-01-01/class.tif")
    b = store.put_bytes(b"bbbb", "proba/T/2019-01-01/proba.tif")
    c = store.put_bytes(b"cccc", "uncertainty/T/2019-01-01/uncertainty.tif")
    rec = {"outputs": {i.key: {"sha256": i.sha256, "size": i.size} for i in (a, b, c)}}
    assert verify_outputs(store, rec) == []
    (tmp_path / "proba/T/2019-01-01/proba.tif").write_bytes(b"bbbX")
    (tmp_path / "uncertainty/T/2019-01-01/uncertainty.tif").write_bytes(b"cc")
    store.delete("class/T/2019-01-01/class.tif")
    problems = verify_outputs(store, rec)
    assert len(problems) == 3
    assert problems[0].startswith("class/T/2019-01-01/class.tif: no such object")
    assert "sha256" in problems[1] and problems[1].startswith("proba/")
    assert "size 2 != 4" in problems[2]


def test_tile_states_and_summary(tmp_path):
    cfg = _cfg(tmp_path, ["X0000_Y0000", "X0001_Y0000", "X0002_Y0000", "X0003_Y0000", "X0004_Y0000"])
    store = LocalStore(tmp_path / "out")
    write_status(store, {"tile": "X0000_Y0000", "state": "done", "completeness": 1.0, "attempt": 1, "seconds": 3.2})
    write_status(store, {"tile": "X0001_Y0000", "state": "done", "completeness": 0.5, "attempt": 1})
    write_status(store, {"tile": "X0002_Y0000", "state": "failed", "error": "ReadError: 404 http://x/a.tif",
                         "attempt": 3})
    write_status(store, {"tile": "X0003_Y0000", "state": "running", "attempt": 1, "host": "node7"})
    write_status(store, {"tile": "X0099_Y0000", "state": "done", "completeness": 1.0})  # not in this run
    states = tile_states(cfg)
    assert list(states) == ["X0000_Y0000", "X0001_Y0000", "X0002_Y0000", "X0003_Y0000", "X0004_Y0000"]
    assert states["X0004_Y0000"] is None and states["X0002_Y0000"]["attempt"] == 3
    s = summarize(states)
    assert s.counts == {"done": 2, "failed": 1, "interrupted": 0, "running": 1, "pending": 1}
    assert s.failed == ["X0002_Y0000"] and s.running == ["X0003_Y0000"] and s.pending == ["X0004_Y0000"]
    assert s.completeness["X0001_Y0000"] == 0.5 and s.completeness["X0002_Y0000"] == 0.0
    assert s.overall_completeness == pytest.approx(1.5 / 5)
    assert not s.all_done
    assert s.errors == {"X0002_Y0000": "ReadError: 404 http://x/a.tif"}
    text = format_summary(s)
    assert text.startswith("5 tiles: 2 done, 1 failed, 0 interrupted, 1 running, 1 pending; completeness 30.0 %")
    assert text.endswith("failed: X0002_Y0000")
    table = format_table(states).splitlines()
    assert table[0].split() == ["tile", "state", "attempt", "complete", "seconds", "host", "error"]
    assert table[1].split() == ["X0000_Y0000", "done", "1", "100.0", "%", "3.2"]
    assert "ReadError: 404 http://x/a.tif" in table[3]
    assert table[5].split() == ["X0004_Y0000", "pending"]
    assert json.loads(json.dumps(s.to_dict()))["counts"]["done"] == 2


def test_tile_states_of_an_empty_store(tmp_path):
    cfg = _cfg(tmp_path, ["X0000_Y0000"])
    s = summarize(tile_states(cfg))
    assert s.pending == ["X0000_Y0000"] and s.overall_completeness == 0.0
