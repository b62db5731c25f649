"""Status records: read/write, verification against checksums, summaries."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import psutil
import pytest
from click.testing import CliRunner

from ecocube.config import config_from_dict
from ecocube.errors import StoreError
from ecocube.status import (
    TileStatus,
    format_summary,
    format_table,
    read_status,
    stale_reason,
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
    write_status(store, {"tile": "X0003_Y0000", "state": "running", "attempt": 1, "host": "node7", "pid": 42,
                         "started": _iso(time.time() - 60), "heartbeat": _iso(time.time() - 5)})
    write_status(store, {"tile": "X0099_Y0000", "state": "done", "completeness": 1.0})  # not in this run
    states = tile_states(cfg)
    assert list(states) == ["X0000_Y0000", "X0001_Y0000", "X0002_Y0000", "X0003_Y0000", "X0004_Y0000"]
    assert states["X0004_Y0000"] is None and states["X0002_Y0000"]["attempt"] == 3
    s = summarize(states)
    assert s.counts == {"done": 2, "failed": 1, "interrupted": 0, "running": 1, "stale": 0, "pending": 1}
    assert s.failed == ["X0002_Y0000"] and s.running == ["X0003_Y0000"] and s.pending == ["X0004_Y0000"]
    assert s.completeness["X0001_Y0000"] == 0.5 and s.completeness["X0002_Y0000"] == 0.0
    assert s.overall_completeness == pytest.approx(1.5 / 5)
    assert not s.all_done
    assert s.errors == {"X0002_Y0000": "ReadError: 404 http://x/a.tif"}
    text = format_summary(s)
    assert text.startswith("5 tiles: 2 done, 1 failed, 0 interrupted, 1 running, 0 stale, 1 pending; "
                           "completeness 30.0 %")
    assert s.to_redo == ["X0002_Y0000"]
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


# --------------------------------------------------------------------------- stale running records


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def _running(**kw):
    return {"tile": "X0000_Y0000", "state": "running", "attempt": 1, **kw}


def _lifecycle(store, **kw):
    return TileStatus.create(store, "X0000_Y0000", run="r", attempt=2, threads=3, block_size=64, shape=(10, 20),
                             version="9.9", **kw)


def test_tile_status_lifecycle_running_heartbeat_done(tmp_path):
    store = LocalStore(tmp_path)
    clock = [100.0]
    status = _lifecycle(store, heartbeat_seconds=60.0, clock=lambda: clock[0])
    assert read_status(store, "X0000_Y0000") is None  # create writes nothing
    status.running()
    rec = read_status(store, "X0000_Y0000")
    assert rec["state"] == "running" and rec["attempt"] == 2 and rec["pid"] == os.getpid()
    assert rec["host"] == socket.gethostname() and rec["shape"] == [10, 20] and rec["threads"] == 3
    assert rec["heartbeat"] == rec["started"] and rec["finished"] is None and rec["ecocube"] == "9.9"

    clock[0] = 159.0
    assert status.heartbeat(1) is False  # throttled: under a minute since the last write
    assert "blocks_done" not in read_status(store, "X0000_Y0000")
    clock[0] = 161.0
    assert status.heartbeat(2) is True
    assert read_status(store, "X0000_Y0000")["blocks_done"] == 2

    measures = {"seconds": 1.5, "timings": {"read": 1.0}, "cpu_seconds": {"read": 0.5}, "peak_rss_bytes": 7}
    out = {"a/X0000_Y0000/p/b.tif": {"sha256": "ab", "size": 3}}
    record = status.done({"completeness": 0.5, "outputs": out}, measures)
    on_disk = read_status(store, "X0000_Y0000")
    assert on_disk == json.loads(json.dumps(record))
    assert on_disk["state"] == "done" and on_disk["outputs"] == out and on_disk["seconds"] == 1.5
    assert on_disk["finished"] >= on_disk["started"] and "error_type" not in on_disk


def test_tile_status_failed_and_interrupted_drop_outputs_and_survive_a_store_error(tmp_path, caplog):
    store = LocalStore(tmp_path)
    status = _lifecycle(store)
    status.running()
    status.record["outputs"] = {"k": {"sha256": "x", "size": 1}}
    rec = status.failed(ValueError("bad pixel"), {"seconds": 2.0})
    assert read_status(store, "X0000_Y0000") == rec
    assert rec["state"] == "failed" and rec["error"] == "ValueError: bad pixel" and rec["error_type"] == "ValueError"
    assert rec["outputs"] == {} and rec["seconds"] == 2.0

    class BrokenStore:
        def put_bytes(self, data, key):
            raise StoreError("disk full")

    broken = _lifecycle(BrokenStore(), heartbeat_seconds=0.0)
    assert broken.heartbeat(1) is True  # a missed heartbeat only warns
    assert "could not refresh the heartbeat: disk full" in caplog.text
    with pytest.raises(StoreError, match="disk full"):
        broken.done({}, {"seconds": 0.1})  # without its record the tile is not done
    rec = broken.interrupted(KeyboardInterrupt(), {"seconds": 0.1})  # logged, not raised
    assert rec["state"] == "interrupted" and rec["error"] == "KeyboardInterrupt: "
    assert "could not write the interrupted status record: disk full" in caplog.text


def test_stale_reason_other_host_uses_the_heartbeat_then_the_start_time():
    now = 1_700_000_000.0
    old, fresh = _iso(now - 7200), _iso(now - 30)
    rec = _running(host="node7", pid=123, started=old, heartbeat=fresh)
    assert stale_reason(rec, now=now, host="login1") is None
    rec["heartbeat"] = _iso(now - 3700)
    reason = stale_reason(rec, now=now, host="login1")
    assert reason.startswith("no heartbeat from node7:123 for 3700 s") and "limit 3600 s" in reason
    assert stale_reason(rec, now=now, host="login1", stale_after=4000) is None  # configurable
    # records written before heartbeats existed: the start time decides
    assert "last start" in stale_reason(_running(host="node7", pid=1, started=old), now=now, host="login1")
    assert stale_reason(_running(host="node7", pid=1, started=fresh), now=now, host="login1") is None
    assert stale_reason(_running(host="node7"), now=now, host="login1") == "no heartbeat or start time from node7:None"
    # only running records can be stale
    assert stale_reason({**rec, "state": "failed"}, now=now, host="login1") is None
    assert stale_reason(None) is None


def test_stale_reason_same_host_asks_the_process_table():
    host = socket.gethostname()
    me = psutil.Process()
    started = _iso(me.create_time() + 2)
    # a live process that started before the tile: running, however old its heartbeat
    rec = _running(host=host, pid=os.getpid(), started=started, heartbeat=_iso(0))
    assert stale_reason(rec) is None
    # the pid was reused: the process holding it is younger than the tile
    rec["started"] = _iso(me.create_time() - 600)
    assert stale_reason(rec) == f"pid {os.getpid()} on {host} now belongs to another process"
    # a pid that is not there
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    gone = _running(host=host, pid=proc.pid, started=_iso(time.time()), heartbeat=_iso(time.time()))
    assert stale_reason(gone) == f"process {proc.pid} on {host} is gone"


SLOW_TILE = textwrap.dedent("""
    import sys, time
    from ecocube.config import config_from_dict
    from ecocube.grid import TileGrid
    from ecocube.tile import Stages, process_tile

    cfg = config_from_dict({
        "grid": {"crs": "EPSG:3035", "origin": [0, 0], "pixel_size": 10, "tile_size": 10},
        "aoi": {"tiles": ["X0000_Y0000", "X0001_Y0000"]},
        "inputs": {"sources": [{"name": "s", "href": "/nowhere/{band}.tif", "bands": ["red"]}]},
        "model": {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]},
        "output": {"store": sys.argv[1], "layers": ["composite"]},
    })

    def read_forever(cfg, tile, window, *, threads=None):
        time.sleep(600)

    process_tile(TileGrid.from_config(cfg.grid).tile("X0000_Y0000"), cfg, stages=Stages(read_block=read_forever))
""")


@pytest.mark.slow
def test_sigkilled_tile_is_reported_stale_and_listed_for_redo(tmp_path):
    from ecocube.cli import cli
    from ecocube.slurm import tiles_to_do
    from ecocube.tile import Stages, process_tile

    out = tmp_path / "out"
    data = {
        "grid": {"crs": "EPSG:3035", "origin": [0, 0], "pixel_size": 10, "tile_size": 10},
        "aoi": {"tiles": ["X0000_Y0000", "X0001_Y0000"]},
        "inputs": {"sources": [{"name": "s", "href": "/nowhere/{band}.tif", "bands": ["red"]}]},
        "model": {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]},
        "output": {"store": str(out), "layers": ["composite"]},
    }
    cfg = config_from_dict(data)
    (tmp_path / "run.yaml").write_text(json.dumps(data))
    store = LocalStore(out)
    write_status(store, {"tile": "X0001_Y0000", "state": "done", "completeness": 1.0, "attempt": 1})
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TILE, str(out)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while read_status(store, "X0000_Y0000") is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        rec = read_status(store, "X0000_Y0000")
        assert rec["state"] == "running" and rec["pid"] == proc.pid and rec["host"] == socket.gethostname()
        assert rec["heartbeat"] == rec["started"]
        live = summarize(tile_states(cfg))
        assert live.running == ["X0000_Y0000"] and live.stale == [] and live.to_redo == []
    finally:
        proc.kill()  # SIGKILL: no handler runs, the record stays "running"
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert read_status(store, "X0000_Y0000")["state"] == "running"

    s = summarize(tile_states(cfg))
    assert s.stale == ["X0000_Y0000"] and s.running == [] and s.counts["stale"] == 1
    assert s.stale_reasons == {"X0000_Y0000": f"process {proc.pid} on {socket.gethostname()} is gone"}
    assert s.to_redo == ["X0000_Y0000"]

    runner = CliRunner()
    res = runner.invoke(cli, ["status", str(tmp_path / "run.yaml")], catch_exceptions=False)
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert lines[1].split()[:3] == ["X0000_Y0000", "stale", "1"] and "is gone" in lines[1]
    assert "2 tiles: 1 done, 0 failed, 0 interrupted, 0 running, 1 stale, 0 pending" in res.output
    assert lines[-1] == "stale (process gone, still recorded as running): X0000_Y0000"
    res = runner.invoke(cli, ["status", str(tmp_path / "run.yaml"), "--failed"], catch_exceptions=False)
    assert res.output.split() == ["X0000_Y0000"]
    res = runner.invoke(cli, ["status", str(tmp_path / "run.yaml"), "--json"], catch_exceptions=False)
    data = json.loads(res.output)
    assert data["stale"] == ["X0000_Y0000"] and data["tiles"]["X0000_Y0000"]["state"] == "stale"
    # the Slurm resubmission takes it (every tile not done)
    assert tiles_to_do(cfg)[0] == ["X0000_Y0000"]

    # a rerun does not skip it: it starts attempt 2 (here failing at once on purpose)
    def broken(cfg_, tile, window, *, threads=None):
        raise OSError("no inputs in this test")

    from ecocube.errors import TileError
    from ecocube.grid import TileGrid

    with pytest.raises(TileError, match="OSError: no inputs in this test"):
        process_tile(TileGrid.from_config(cfg.grid).tile("X0000_Y0000"), cfg, stages=Stages(read_block=broken))
    rec = read_status(store, "X0000_Y0000")
    assert rec["state"] == "failed" and rec["attempt"] == 2 and rec["pid"] == os.getpid()


# --------------------------------------------------------------------------- the campaign marker

FP_A = {"sha256": "a" * 64, "keys": {"gapfill.method": "tmwm"}}
FP_B = {"sha256": "b" * 64, "keys": {"gapfill.method": "linear"}}


class _CountingStore(LocalStore):
    """A local store that counts the tile records read from it."""

    def __init__(self, root):
        super().__init__(root)
        self.record_reads = 0

    def get_bytes_or_none(self, key):
        if key.startswith("status/X"):
            self.record_reads += 1
        return super().get_bytes_or_none(key)


def _campaign_a(store, n: int, *, state: str = "done") -> list[str]:
    """Campaign A's marker (claimed by a process on another host) and ``n`` tile records of it."""
    from ecocube.status import CAMPAIGN_KEY

    store.put_bytes(json.dumps({"run": "a", "fingerprint": FP_A, "host": "another-host", "pid": 1,
                                "started": "2026-01-01T00:00:00Z"}).encode(), CAMPAIGN_KEY)
    tiles = [f"X{i:04d}_Y0000" for i in range(n)]
    for t in tiles:
        write_status(store, {"tile": t, "state": state, "attempt": 1, "fingerprint": FP_A})
    return tiles


def _alive(tile: str) -> dict:
    from ecocube.status import now_iso

    return {"tile": tile, "state": "running", "attempt": 1, "fingerprint": FP_A, "host": socket.gethostname(),
            "pid": os.getpid(), "started": now_iso(), "heartbeat": now_iso()}


def test_a_refused_campaign_reads_one_batch_of_records_not_every_record(tmp_path):
    from ecocube.fingerprint import FingerprintMismatch
    from ecocube.status import CAMPAIGN_KEY, claim_campaign

    store = _CountingStore(tmp_path / "out")
    _campaign_a(store, 200)
    marker = store.get_bytes(CAMPAIGN_KEY)
    with pytest.raises(FingerprintMismatch) as info:
        claim_campaign(store, FP_B, run="b")
    assert str(info.value).endswith(
        ": its tiles are done (X0000_Y0000, X0001_Y0000, X0002_Y0000, X0003_Y0000, X0004_Y0000 ...); refusing to "
        "mix two campaigns in one store: use another output.store, or --overwrite to redo its tiles with these "
        "settings"), str(info.value)
    assert "(differing: gapfill.method; claimed by another-host:1 at 2026-01-01T00:00:00Z)" in str(info.value)
    assert store.record_reads == 16  # one batch of 16 parallel reads, not 200
    assert store.get_bytes(CAMPAIGN_KEY) == marker


def test_a_running_tile_refuses_even_with_overwrite_and_names_the_tiles_exactly_when_all_were_read(tmp_path):
    from ecocube.fingerprint import FingerprintMismatch
    from ecocube.status import claim_campaign

    store = _CountingStore(tmp_path / "out")
    tiles = _campaign_a(store, 40)
    write_status(store, _alive(tiles[-1]))  # the last record the listing gives
    with pytest.raises(FingerprintMismatch, match=r": its tiles are being made now \(X0039_Y0000\); refusing to mix "
                                                  r"two campaigns in one store: use another output.store$"):
        claim_campaign(store, FP_B, run="b", overwrite=True)
    assert store.record_reads == 40  # with --overwrite done tiles do not refuse: every record is read
    # a running tile and done ones in the first batch: the running one is named
    write_status(store, _alive(tiles[3]))
    store.record_reads = 0
    with pytest.raises(FingerprintMismatch, match=r"its tiles are being made now \(X0003_Y0000 \.\.\.\); "):
        claim_campaign(store, FP_B, run="b")
    assert store.record_reads == 16


def test_a_finished_campaign_is_taken_over_with_overwrite_after_every_record_was_read(tmp_path, caplog):
    from ecocube.status import CAMPAIGN_KEY, claim_campaign, read_campaign

    store = _CountingStore(tmp_path / "out")
    _campaign_a(store, 40)
    write_status(store, {"tile": "X0100_Y0000", "state": "running", "attempt": 1, "fingerprint": FP_B,
                         "host": socket.gethostname(), "pid": os.getpid()})  # another campaign's: not A's
    with caplog.at_level("WARNING", logger="ecocube.status"):
        claimed = claim_campaign(store, FP_B, run="b", overwrite=True)
    assert claimed["fingerprint"] == FP_B and read_campaign(store)[0]["run"] == "b"
    assert store.record_reads == 41
    assert "nothing of it is in use; the store is this run's campaign now" in caplog.text
    assert store.exists(CAMPAIGN_KEY)


@pytest.mark.slow
def test_a_refused_campaign_on_s3_makes_a_bounded_number_of_requests(s3_bucket, seaweed):
    from collections import Counter

    from ecocube.fingerprint import FingerprintMismatch
    from ecocube.status import claim_campaign
    from ecocube.store import S3Store

    store = S3Store(s3_bucket, "run", endpoint_url=seaweed.endpoint_url, region="us-east-1")
    _campaign_a(store, 120)
    calls: Counter = Counter()
    store.client.meta.events.register("before-call.s3", lambda model, **_: calls.update([model.name]))
    with pytest.raises(FingerprintMismatch, match=r"its tiles are done \(X0000_Y0000, .* \.\.\.\); refusing"):
        claim_campaign(store, FP_B, run="b")
    # the marker, one listing page, one batch of 16 records (was all 120)
    assert calls == Counter({"GetObject": 1 + 16, "ListObjectsV2": 1}), calls
