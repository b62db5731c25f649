"""Faults: two runs on one store at once, two campaigns (other settings) on one store at once or
one after the other, and a run with other settings on a finished store.

What must hold: a tile is processed by one process only (a lease: the running record,
written create-if-absent / compare-and-set, O_EXCL locally and a conditional PUT on S3);
the other process says it skipped a tile another live process holds; and a run whose
fingerprint (output-changing settings, model bundle, version) differs from the done tiles'
refuses to mix with exit 2 naming the differing keys, unless --overwrite; and one store prefix
holds one campaign (status/campaign.json, written create-if-absent): a run with other settings
is refused, exit 2, while the campaign's run is alive or any of its tiles is done or being made,
and a run stops if another campaign claimed the store while it ran."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
from faults import clean_run, output_checksums, run_at_once
from rangeserver import RangeServer
from test_tile import bundle, cfg_dict, model_dir, scene, write_yaml  # noqa: F401 - fixtures

from ecocube import __version__
from ecocube.config import config_from_dict
from ecocube.fingerprint import fingerprint_diff, run_fingerprint
from ecocube.status import read_status
from ecocube.store import LocalStore, S3Store

pytestmark = pytest.mark.slow  # real processes, tiles, models

TILES = ("X0000_Y0000", "X0001_Y0000")


def ecocube(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecocube", *args], capture_output=True, text=True, timeout=900)


def test_two_runs_on_one_empty_store_process_each_tile_once(scene, model_dir, tmp_path):  # noqa: F811
    with RangeServer(scene["root"]) as srv:
        srv.add_fault("/inputs/", "stall", seconds=0.15)  # slow reads: the two runs overlap for sure
        data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir)
        data["inputs"]["sources"][0]["href"] = srv.url + "/inputs/{year}/Q{quarter}/{band}.tif"
        run_yaml = write_yaml(tmp_path / "run.yaml", data)
        args = [sys.executable, "-m", "ecocube", "run", str(run_yaml), "--no-progress"]
        procs = run_at_once(args, args)
    outs = [(p.stdout, p.stderr) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    text = "\n".join(o[0] + o[1] for o in outs)
    store = LocalStore(tmp_path / "out")
    for t in TILES:
        rec = read_status(store, t)
        assert rec["state"] == "done" and rec["attempt"] == 1, rec  # made once, by one process
    # each process says what it did with the other's tiles: held (still running) or done
    summaries = [ln for o in outs for ln in o[0].splitlines() if ln.startswith("2 tiles: ")]
    assert len(summaries) == 2, text
    made = sum(int(s.split(": ")[1].split(" done")[0]) - int(s.split("(")[1].split(" skipped")[0])
               for s in summaries)
    held = sum(int(s.split(", ")[2].split(" held")[0]) for s in summaries if "held by another process" in s)
    assert made == 2, summaries
    assert held >= 1, summaries  # the overlap was real: one run met a tile the other held
    assert "held by another live process" in text


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_the_lease_has_exactly_one_winner(kind, tmp_path, request):
    if kind == "local":
        store = LocalStore(tmp_path / "store")
    else:
        seaweed = request.getfixturevalue("seaweed")
        bucket = request.getfixturevalue("s3_bucket")
        store = S3Store(bucket, "run", endpoint_url=seaweed.endpoint_url, region="us-east-1")
        assert store.conditional_writes()  # SeaweedFS honours If-None-Match / If-Match
    results: list = [None] * 8
    barrier = threading.Barrier(8)

    def _try(i: int) -> None:
        barrier.wait()
        results[i] = store.put_bytes_if(f"writer {i}".encode(), "status/T.json", version=None)

    threads = [threading.Thread(target=_try, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [i for i, r in enumerate(results) if r is not None]
    assert len(winners) == 1, results
    data, version = store.get_versioned("status/T.json")
    assert data == f"writer {winners[0]}".encode()
    # compare-and-set: only the holder of the current version may write
    assert store.put_bytes_if(b"stale", "status/T.json", version="0" * 32) is None
    new = store.put_bytes_if(b"next", "status/T.json", version=version)
    assert new is not None and new != version and store.get_bytes("status/T.json") == b"next"
    assert store.put_bytes_if(b"again", "status/T.json", version=version) is None
    assert store.list("") == ["status/T.json"]  # no lock or probe objects left behind


def test_a_run_with_other_settings_refuses_to_mix_unless_overwrite(scene, model_dir, tmp_path):  # noqa: F811
    data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir)
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    first = ecocube("run-tile", str(run_yaml), "--tile", "X0000_Y0000")
    assert first.returncode == 0, first.stderr[-2000:]
    store = LocalStore(tmp_path / "out")
    before = read_status(store, "X0000_Y0000")
    assert len(before["fingerprint"]["sha256"]) == 64

    other = write_yaml(tmp_path / "other.yaml", cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir,
                                                         gapfill={"method": "linear"}, features={"indices": []}))
    refused = ecocube("run", str(other), "--no-progress")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"ecocube: error: 1 of 2 tiles are done in {tmp_path / 'out'} with other settings than this run's "
        "(differing: features.indices, gapfill.method; tiles X0000_Y0000); refusing to mix them: "
        "use --overwrite to redo them with these settings, or another output.store")
    assert read_status(store, "X0001_Y0000") is None  # nothing was started
    assert read_status(store, "X0000_Y0000") == before
    tile = ecocube("run-tile", str(other), "--tile", "X0000_Y0000")
    assert tile.returncode == 2 and "tile X0000_Y0000 is done with other settings" in tile.stderr

    # the same settings again: skipped as done
    same = ecocube("run", str(run_yaml), "--no-progress", "--tile", "X0000_Y0000")
    assert same.returncode == 0 and "1 done (1 skipped as already done)" in same.stdout


def test_fingerprint_names_what_changes_outputs_only():
    base = cfg_dict(__import__("pathlib").Path("/campaign"), "/campaign/out")
    a = config_from_dict(base)
    fa = run_fingerprint(a, model_sha256="m1", version="1.0")
    # settings that change where or how fast, not what: same fingerprint
    fast = config_from_dict(cfg_dict(__import__("pathlib").Path("/campaign"), "s3://b/p",
                                     processing={"block_size": 32, "threads": 8, "tmp_dir": "/scratch",
                                                 "read_ahead": True},
                                     slurm={"cpus_per_task": 8}, finalize={"compress": "zstd"}))
    assert fingerprint_diff(fa, run_fingerprint(fast, model_sha256="m1", version="1.0")) == []
    other = config_from_dict(cfg_dict(__import__("pathlib").Path("/campaign"), "/campaign/out",
                                      gapfill={"h_same": 1}, output={"composite_scale": 0.001}))
    assert fingerprint_diff(fa, run_fingerprint(other, model_sha256="m2", version="1.1")) == [
        "ecocube.version", "gapfill.h_same", "model.bundle", "output.composite_scale"]
    moved = dict(base)
    moved["inputs"] = {**base["inputs"], "sources": [{**base["inputs"]["sources"][0], "href": "/elsewhere/{band}.tif"}]}
    assert fingerprint_diff(fa, run_fingerprint(config_from_dict(moved), model_sha256="m1", version="1.0")) == [
        "inputs.sources[s2].href"]


def test_overwrite_redoes_tiles_of_other_settings_and_matches_a_clean_run(scene, model_dir, tmp_path):  # noqa: F811
    data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir)
    assert ecocube("run-tile", str(write_yaml(tmp_path / "run.yaml", data)), "--tile", "X0000_Y0000").returncode == 0
    other_data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir, gapfill={"method": "linear"})
    other = write_yaml(tmp_path / "other.yaml", other_data)
    redo = ecocube("run", str(other), "--no-progress", "--overwrite")
    assert redo.returncode == 0, redo.stderr[-2000:]
    store = LocalStore(tmp_path / "out")
    recs = [read_status(store, t) for t in TILES]
    assert recs[0]["fingerprint"] == recs[1]["fingerprint"]
    assert recs[0]["attempt"] == 2 and recs[1]["attempt"] == 1
    assert output_checksums(store, "X0000_Y0000") == clean_run(other_data, tmp_path, "X0000_Y0000")


def _campaign_configs(root, store: str, srv_url: str, model_dir, **output) -> tuple[dict, dict]:
    """Two campaigns with other settings (gap-filling, name) pointed at one store."""
    a = cfg_dict(root, store, model=model_dir, output=output)
    b = cfg_dict(root, store, model=model_dir, output=output, gapfill={"method": "linear"})
    b["name"] = "campaign-b"
    for data in (a, b):
        data["inputs"]["sources"][0]["href"] = srv_url + "/inputs/{year}/Q{quarter}/{band}.tif"
    return a, b


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_two_campaigns_started_at_once_on_one_store_never_mix(kind, scene, model_dir, tmp_path, request):  # noqa: F811
    if kind == "local":
        store_url, s3 = str(tmp_path / "out"), {}
    else:
        seaweed = request.getfixturevalue("seaweed")
        bucket = request.getfixturevalue("s3_bucket")
        store_url, s3 = f"s3://{bucket}/run", {"s3": {"endpoint_url": seaweed.endpoint_url, "region": "us-east-1"}}
    with RangeServer(scene["root"]) as srv:
        srv.add_fault("/inputs/", "stall", seconds=0.1)  # slow reads: the two runs overlap
        a, b = _campaign_configs(scene["root"], store_url, srv.url, model_dir, **s3)
        yamls = [write_yaml(tmp_path / "a.yaml", a), write_yaml(tmp_path / "b.yaml", b)]
        procs = run_at_once(*([sys.executable, "-m", "ecocube", "run", y, "--no-progress"] for y in yamls))
    outs = [(p.stdout, p.stderr) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], [o[1][-2000:] for o in outs]
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    names = ["tile-test", "campaign-b"]
    refusal = outs[loser][1].strip().splitlines()[-1]
    assert refusal.startswith(f"ecocube: error: store {store_url} holds campaign "), refusal
    assert f"holds campaign {names[winner]!r} with other settings than this run's (differing: gapfill.method;" \
        in refusal, refusal
    assert "refusing to mix two campaigns in one store: use another output.store" in refusal, refusal
    assert "Traceback" not in outs[loser][1]

    store = LocalStore(tmp_path / "out") if kind == "local" else S3Store(
        bucket, "run", endpoint_url=seaweed.endpoint_url, region="us-east-1")
    winners_fp = run_fingerprint(config_from_dict(a if winner == 0 else b),
                                 model_sha256=json.loads((model_dir / "model.json").read_text())["model_sha256"],
                                 version=__version__)
    for t in TILES:  # every tile made once, by the winner, with its settings
        rec = read_status(store, t)
        assert rec["state"] == "done" and rec["attempt"] == 1, rec
        assert rec["fingerprint"]["sha256"] == winners_fp["sha256"], t
    assert json.loads(store.get_bytes("status/campaign.json"))["run"] == names[winner]


def test_a_second_campaign_on_a_finished_store_is_refused_even_on_other_tiles(scene, model_dir, tmp_path):  # noqa: F811
    a = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir, tiles=("X0000_Y0000",))
    b = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir, tiles=("X0001_Y0000",),
                 gapfill={"method": "linear"})
    assert ecocube("run", str(write_yaml(tmp_path / "a.yaml", a)), "--no-progress").returncode == 0
    b_yaml = write_yaml(tmp_path / "b.yaml", b)
    refused = ecocube("run", str(b_yaml), "--no-progress")
    assert refused.returncode == 2, refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ecocube: error: store {tmp_path / 'out'}") and \
        "holds campaign 'tile-test' with other settings than this run's (differing: gapfill.method;" in last, last
    assert last.endswith(": its tiles are done (X0000_Y0000); refusing to mix two campaigns in one store: use "
                         "another output.store, or --overwrite to redo its tiles with these settings"), last
    store = LocalStore(tmp_path / "out")
    assert read_status(store, "X0001_Y0000") is None  # nothing was started
    tile = ecocube("run-tile", str(b_yaml), "--tile", "X0001_Y0000")
    assert tile.returncode == 2 and "its tiles are done (X0000_Y0000)" in tile.stderr
    assert read_status(store, "X0001_Y0000") is None

    # a campaign whose attempts all failed holds nothing: the next settings take the store over
    c = cfg_dict(scene["root"], str(tmp_path / "fresh"), model=tmp_path / "no-model", tiles=("X0000_Y0000",))
    assert ecocube("run", str(write_yaml(tmp_path / "c.yaml", c)), "--no-progress").returncode == 1
    d = cfg_dict(scene["root"], str(tmp_path / "fresh"), model=model_dir, tiles=("X0000_Y0000",))
    took = ecocube("run", str(write_yaml(tmp_path / "d.yaml", d)), "--no-progress")
    assert took.returncode == 0, took.stderr[-2000:]
    assert "nothing of it is in use; the store is this run's campaign now" in took.stderr
    assert read_status(LocalStore(tmp_path / "fresh"), "X0000_Y0000")["attempt"] == 2
