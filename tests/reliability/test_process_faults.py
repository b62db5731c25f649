"""Faults of the process running a tile: SIGTERM as Slurm sends it at the time limit, SIGKILL
while the outputs are uploaded, and a task that runs out of memory (an address-space limit, as
``ulimit -v`` sets, in the child).

What must hold: SIGTERM stops the tile after the current block, exit 143, record
``interrupted``, nothing published; running out of memory fails the tile with one line naming
it and ``MemoryError``, exit 1, record ``failed``, nothing published, the scratch removed.
Either way the rerun finishes byte-identical to a clean run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from faults import HoldingProxy, assert_rerun_matches, clean_run, published
from rangeserver import RangeServer
from test_tile import cfg_dict, scene, write_yaml  # noqa: F401 - fixtures

from ecocube.status import read_status
from ecocube.store import LocalStore, S3Store

pytestmark = pytest.mark.slow  # real processes and tiles

TILE = "X0001_Y0000"
LAYERS = {"layers": ["composite", "flags", "count"]}
PRODUCTS = ("composite", "flags", "count")


def _cmd(run_yaml) -> list[str]:
    return [sys.executable, "-m", "ecocube", "run-tile", str(run_yaml), "--tile", TILE]


def run_tile(run_yaml, *, prefix=(), timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *prefix, "-m", "ecocube", "run-tile", str(run_yaml), "--tile", TILE],
                          capture_output=True, text=True, timeout=timeout)


def _reference(scene, tmp_path) -> dict[str, str]:
    return clean_run(cfg_dict(scene["root"], str(tmp_path / "unused"), tiles=(TILE,), output=LAYERS), tmp_path, TILE)


def test_sigterm_at_the_time_limit_records_interrupted_and_the_rerun_matches_a_clean_run(scene, tmp_path):  # noqa: F811
    with RangeServer(scene["root"]) as srv:
        srv.add_fault("/inputs/", "stall", seconds=0.3)  # slow reads: the tile is still running when TERM comes
        data = cfg_dict(scene["root"], str(tmp_path / "out"), tiles=(TILE,), output=LAYERS)
        data["inputs"]["sources"][0]["href"] = srv.url + "/inputs/{year}/Q{quarter}/{band}.tif"
        run_yaml = write_yaml(tmp_path / "run.yaml", data)
        record = tmp_path / "out" / "status" / f"{TILE}.json"
        proc = subprocess.Popen([sys.executable, "-m", "ecocube", "run-tile", str(run_yaml), "--tile", TILE],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None and not record.exists():
                time.sleep(0.05)
            assert proc.poll() is None and json.loads(record.read_text())["state"] == "running"
            proc.send_signal(signal.SIGTERM)  # what Slurm sends at the time limit (then KILL after KillWait)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        srv.clear_faults()
        assert proc.returncode == 143, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert f"tile {TILE}" in last and "stopped by SIGTERM after" in last and "nothing was published" in last, last
        assert "Traceback" not in err
        store = LocalStore(tmp_path / "out")
        rec = read_status(store, TILE)
        assert rec["state"] == "interrupted" and "SIGTERM" in rec["error"] and rec["outputs"] == {}
        assert published(store) == []
        assert_rerun_matches(_cmd(run_yaml), store, TILE, PRODUCTS, _reference(scene, tmp_path))
    assert read_status(store, TILE)["attempt"] == 2


# The child imports everything first, then limits its address space to what it has mapped
# plus LIMIT_MIB (as `ulimit -v` in a job script caps a task), then runs the tile: the
# tile's first large allocation fails.
LIMITED = """
import resource, sys
import numpy, rasterio, ecocube.cli, ecocube.tile, ecocube.read, ecocube.gapfill
with open("/proc/self/status") as fh:
    vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
limit = vm + int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = ["ecocube", *sys.argv[2:]]
ecocube.cli.main(sys.argv[1:])
"""


def test_out_of_memory_in_one_task_fails_the_tile_cleanly_and_the_rerun_matches_a_clean_run(scene, tmp_path):  # noqa: F811
    scratch = tmp_path / "scratch"
    data = cfg_dict(scene["root"], str(tmp_path / "out"), tiles=(TILE,), output=LAYERS,
                    processing={"tmp_dir": str(scratch)})
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    proc = subprocess.run([sys.executable, "-c", LIMITED, "40", "run-tile", str(run_yaml), "--tile", TILE],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    # 40 MiB above the imports: the first worker thread's stack (or an array) cannot be mapped
    assert re.fullmatch(rf"ecocube: error: tile {TILE} failed: (MemoryError|RuntimeError): .* \(out of memory; "
                        r"the process's address space is limited to \d+ MiB \(ulimit -v\); give the task more "
                        r"memory, or lower processing.threads or processing.block_size\)", last), last
    assert "Traceback" not in proc.stderr
    store = LocalStore(tmp_path / "out")
    rec = read_status(store, TILE)
    assert rec["state"] == "failed" and rec["error_type"] in ("MemoryError", "RuntimeError") and rec["outputs"] == {}
    assert published(store) == []
    assert list(scratch.iterdir()) == []
    assert_rerun_matches(_cmd(run_yaml), store, TILE, PRODUCTS, _reference(scene, tmp_path))


def test_sigkill_mid_publish_to_s3_publishes_nothing_partial_and_the_rerun_matches_a_clean_run(  # noqa: F811
        scene, tmp_path, seaweed, s3_bucket):
    """SIGKILL (no handler, no cleanup: the OOM killer, a node lost) while the tile's files are
    uploaded one at a time: the record never says done, and the rerun takes over the dead
    attempt, leaving exactly the tile's objects, byte-identical to a clean run."""
    data = cfg_dict(scene["root"], f"s3://{s3_bucket}/run", tiles=(TILE,),
                    output={**LAYERS, "s3": {"endpoint_url": seaweed.endpoint_url, "region": "us-east-1"}},
                    processing={"publish_threads": 1})
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    # the killed attempt uploads through a proxy that lets its first output through and holds
    # the second unanswered: it is killed mid-publish every time, whatever the upload speed
    proxy = HoldingProxy(seaweed.port, s3_bucket, "run", allow=1)
    held_yaml = write_yaml(tmp_path / "held.yaml", {**data, "output": {
        **data["output"], "s3": {**data["output"]["s3"], "endpoint_url": proxy.endpoint_url}}})
    client = seaweed.client()

    def keys() -> list[str]:
        resp = client.list_objects_v2(Bucket=s3_bucket, Prefix="run/")
        return sorted(o["Key"][len("run/"):] for o in resp.get("Contents", ()))

    proc = subprocess.Popen([sys.executable, "-m", "ecocube", "run-tile", str(held_yaml), "--tile", TILE],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not proxy.held.wait(0.05):
            pass
        proc.kill()  # the first output is up, the second upload hangs in the proxy
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proxy.close()
    assert proxy.held.is_set(), proc.stderr.read().decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    n_outputs = 3 * len(PRODUCTS)  # bands x cube layers (one stacked file each, every period in it)
    assert len([k for k in keys() if not k.startswith("status/")]) == 1  # killed mid-publish
    store = S3Store(s3_bucket, "run", endpoint_url=seaweed.endpoint_url, region="us-east-1")
    assert read_status(store, TILE)["state"] == "running"  # never claimed done

    assert_rerun_matches(_cmd(run_yaml), store, TILE, PRODUCTS, _reference(scene, tmp_path))
    rec = read_status(store, TILE)
    assert rec["state"] == "done" and rec["attempt"] == 2 and len(rec["outputs"]) == n_outputs
    # exactly the tile's objects, its record and the store's campaign marker: no duplicates, no strays
    assert keys() == sorted([*rec["outputs"], f"status/{TILE}.json", "status/campaign.json"])
    assert store.incomplete_uploads("") == []
