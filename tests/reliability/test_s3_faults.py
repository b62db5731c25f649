"""Faults of the S3 store (a real SeaweedFS server on 127.0.0.1 with SigV4 auth).

What must hold: wrong credentials and a missing bucket fail with one line naming the
``s3://`` URL, exit non-zero, the secret never echoed; a server stopped mid-run fails the tile
(nothing published under a final key) and once it is back the rerun completes byte-identical
to a clean run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from faults import assert_rerun_matches, clean_run, output_checksums
from rangeserver import RangeServer
from servers import SeaweedS3
from test_tile import cfg_dict, scene, write_yaml  # noqa: F401 - fixtures

from ecocube.store import S3Store

pytestmark = pytest.mark.slow  # real processes, tiles and S3 servers

TILE = "X0000_Y0000"
LAYERS = {"layers": ["composite", "flags", "count"]}
WRONG = "not-the-secret-0123456789"


def _data(root, bucket: str, endpoint: str, read_ahead: bool) -> dict:
    return cfg_dict(root, f"s3://{bucket}/run", tiles=(TILE,), processing={"read_ahead": read_ahead},
                    output={**LAYERS, "s3": {"endpoint_url": endpoint, "region": "us-east-1"}})


def run_tile(run_yaml, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecocube", "run-tile", str(run_yaml), "--tile", TILE],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _reference(scene, tmp_path) -> dict[str, str]:
    return clean_run(cfg_dict(scene["root"], str(tmp_path / "unused"), tiles=(TILE,), output=LAYERS), tmp_path, TILE)


def test_wrong_credentials_fail_in_one_line_without_echoing_them(scene, seaweed, s3_bucket, tmp_path,  # noqa: F811
                                                                 read_ahead):
    run_yaml = write_yaml(tmp_path / "run.yaml", _data(scene["root"], s3_bucket, seaweed.endpoint_url, read_ahead))
    proc = run_tile(run_yaml, env=dict(os.environ, AWS_SECRET_ACCESS_KEY=WRONG))
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("ecocube: error: ") and f"s3://{s3_bucket}/run/" in lines[-1], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert WRONG not in proc.stderr + proc.stdout and seaweed.secret_key not in proc.stderr + proc.stdout
    assert seaweed.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0  # nothing written


def test_a_missing_bucket_fails_in_one_line(scene, seaweed, s3_bucket, tmp_path, read_ahead):  # noqa: F811
    run_yaml = write_yaml(tmp_path / "run.yaml", _data(scene["root"], "no-such-bucket-ecocube", seaweed.endpoint_url,
                                                       read_ahead))
    proc = run_tile(run_yaml)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ecocube: error: ") and "s3://no-such-bucket-ecocube/run/" in last, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert seaweed.secret_key not in proc.stderr + proc.stdout


def test_s3_stopped_mid_run_and_restarted_then_the_rerun_completes(scene, tmp_path, monkeypatch,  # noqa: F811
                                                                   read_ahead):
    """The store's server goes down while the tile reads, and comes back on the same ports
    with the same data: the failed attempt published nothing, the rerun completes."""
    server = SeaweedS3(root=tmp_path / "weed")
    server.__enter__()
    srv = RangeServer(scene["root"]).start()
    try:
        server.create_bucket("campaign")
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        env = dict(os.environ)
        srv.add_fault("/inputs/", "stall", seconds=0.25)  # slow reads: S3 goes down before the publish
        data = _data(scene["root"], "campaign", server.endpoint_url, read_ahead)
        data["inputs"]["sources"][0]["href"] = srv.url + "/inputs/{year}/Q{quarter}/{band}.tif"
        run_yaml = write_yaml(tmp_path / "run.yaml", data)
        proc = subprocess.Popen([sys.executable, "-m", "ecocube", "run-tile", str(run_yaml), "--tile", TILE],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            client = server.client()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                listed = client.list_objects_v2(Bucket="campaign", Prefix=f"run/status/{TILE}.json")
                if listed.get("KeyCount", 0):
                    break  # the lease record exists: the tile is running
                time.sleep(0.1)
            while time.monotonic() < deadline and proc.poll() is None and srv.requests < 4:
                time.sleep(0.05)  # the attempt has started and reads its inputs
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            rec = json.loads(client.get_object(Bucket="campaign", Key=f"run/status/{TILE}.json")["Body"].read())
            assert rec["state"] == "running"
            server.__exit__(None, None, None)  # down (TERM, then KILL)
            _, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        assert proc.returncode == 1, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"ecocube: error: tile {TILE} failed: StoreError: ") and "s3://campaign/run/" in last, \
            err[-3000:]
        assert "Traceback" not in err

        srv.clear_faults()
        server.__enter__()  # back, on the same ports over the same data
        store = S3Store("campaign", "run", endpoint_url=server.endpoint_url, region="us-east-1")
        keys = [k for k in store.list("") if not k.startswith("status/")]
        assert keys == []  # nothing of the failed attempt under a final key
        assert_rerun_matches([sys.executable, "-m", "ecocube", "run-tile", run_yaml, "--tile", TILE], store, TILE,
                             LAYERS["layers"], _reference(scene, tmp_path), timeout=300, env=env)
        # exactly the tile's files and records: no stray object, no multipart upload left open
        assert sorted(k for k in store.list("") if not k.startswith("status/")) == sorted(output_checksums(store, TILE))
        assert store.incomplete_uploads("") == []
    finally:
        srv.stop()
        server.__exit__(None, None, None)
