"""The first faults of issue #12 on the demo campaign itself (``ecocube demo``'s inputs, grid
and settings): a full scratch disk, a stale finalize, two runs at once, a run with other
settings, a broken configuration.

The tiles make the demo's cube layers (composite, flags, count) and leave the prediction
layers out: these faults are about reading, writing, the store and finalize, not the model
(``tests/test_demo.py`` runs the whole demo with its model). One clean run of the campaign,
finalized, is the reference every rerun is compared with, byte for byte."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import yaml
from faults import assert_rerun_matches, output_checksums, published, remount, run_at_once, run_cli

from ecocube.demo import demo_config_dict, make_demo_inputs
from ecocube.status import read_status
from ecocube.store import LocalStore

pytestmark = pytest.mark.slow  # the demo campaign's tiles, processes and mosaics

LAYERS = ["composite", "flags", "count"]
TILE = "X0001_Y0000"  # tile ids of the demo's grid: 3 x 2 tiles of 96 px
TILES = [f"X{x:04d}_Y{y:04d}" for y in range(2) for x in range(3)]


def _config(root, store, **sections) -> dict:
    data = demo_config_dict(_SPECS[root])
    data["output"] = {**data["output"], "store": str(store), "layers": LAYERS}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return data


def _write(root, name: str, data: dict):
    path = root / name  # beside inputs/: the demo's relative hrefs resolve against the YAML's folder
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


_SPECS: dict = {}


@pytest.fixture(scope="module")
def demo_inputs(tmp_path_factory):
    """The folder of the demo's inputs (``ecocube demo``'s generator)."""
    root = tmp_path_factory.mktemp("demo-campaign")
    _SPECS[root] = make_demo_inputs(root)
    return root


@pytest.fixture(scope="module")
def demo(demo_inputs):
    """The demo's inputs and one clean, finalized run of its campaign."""
    root = demo_inputs
    clean = _write(root, "clean.yaml", _config(root, root / "clean"))
    run = run_cli("run", clean, "--no-progress", "--workers", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "6 tiles: 6 done (0 skipped as already done), 0 failed" in run.stdout
    fin = run_cli("finalize", clean)
    assert fin.returncode == 0, fin.stderr[-3000:]
    store = LocalStore(root / "clean")
    return {"root": root, "clean": clean, "store": store,
            "reference": {t: output_checksums(store, t) for t in TILES}}


def test_demo_full_scratch_disk_fails_the_tile_and_the_rerun_matches_the_clean_run(demo, small_disk, tmp_path):
    # a demo tile writes 12 stacked cube files (12 periods x 4 bands x 5 bytes x 96² px = 2,160 KiB
    # before compression, several hundred KiB after) and its per-year files: a disk of 256 KiB
    # fills up while they are written
    disk = small_disk("256k")
    root = demo["root"]
    run_yaml = _write(root, "disk.yaml", _config(root, tmp_path / "out", processing={"tmp_dir": str(disk)}))
    proc = run_cli("run-tile", run_yaml, "--tile", TILE)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ecocube: error: tile {TILE} failed: StoreError: ") and f"cannot write {disk}" in last, last
    assert last.endswith("[errno 28 ENOSPC: No space left on device]"), last
    assert proc.stderr.count("No space left on device") == 1, proc.stderr[:3000]
    store = LocalStore(tmp_path / "out")
    rec = read_status(store, TILE)
    assert rec["state"] == "failed" and rec["outputs"] == {}
    assert published(store) == [] and list(disk.iterdir()) == []
    remount(disk, "20m")
    assert_rerun_matches([sys.executable, "-m", "ecocube", "run-tile", run_yaml, "--tile", TILE], store, TILE,
                         LAYERS, demo["reference"][TILE])


def test_demo_two_runs_at_once_make_each_tile_once_and_like_the_clean_run(demo, tmp_path):
    root = demo["root"]
    run_yaml = _write(root, "two.yaml", _config(root, tmp_path / "out"))
    args = [sys.executable, "-m", "ecocube", "run", run_yaml, "--no-progress"]
    procs = run_at_once(args, args)
    assert [p.returncode for p in procs] == [0, 0], [p.stderr[-2000:] for p in procs]
    store = LocalStore(tmp_path / "out")
    for t in TILES:
        rec = read_status(store, t)
        assert rec["state"] == "done" and rec["attempt"] == 1, rec  # made once, by one of the two
        assert output_checksums(store, t) == demo["reference"][t], t


def test_demo_run_with_other_settings_on_the_finished_campaign_is_refused(demo):
    root, store = demo["root"], demo["store"]
    before = {t: read_status(store, t) for t in TILES}
    other = _write(root, "other.yaml", _config(root, root / "clean", gapfill={"h_same": 1}))
    proc = run_cli("run", other, "--no-progress")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ecocube: error: 6 of 6 tiles are done in {root / 'clean'} with other settings than this run's (differing: "
        f"gapfill.h_same; tiles {', '.join(sorted(TILES)[:5])} ...); refusing to mix them: use --overwrite to redo "
        "them with these settings, or another output.store")
    assert {t: read_status(store, t) for t in TILES} == before


def test_demo_finalize_refuses_stale_mosaics_and_remakes_exactly_the_changed_ones(demo, tmp_path):
    root = demo["root"]
    shutil.copytree(root / "clean", tmp_path / "out")
    run_yaml = _write(root, "stale.yaml", _config(root, tmp_path / "out"))
    other = _write(root, "stale-other.yaml", _config(root, tmp_path / "out", gapfill={"method": "linear"}))
    redo = run_cli("run-tile", other, "--tile", TILE, "--overwrite")
    assert redo.returncode == 0, redo.stderr[-3000:]
    store = LocalStore(tmp_path / "out")
    after = output_checksums(store, TILE)
    changed = {k for k, v in after.items() if v != demo["reference"][TILE][k]}
    assert changed and all(k.startswith(("composite/", "flags/")) for k in changed)  # counts do not change
    layers = json.loads(store.get_bytes("catalog/mosaics.json"))["layers"]
    changed_files = {tuple(k.removesuffix(".tif").split("/")) for k in changed}  # (product, tile, band)
    assert all(len(f) == 3 and f[1] == TILE for f in changed_files), changed_files
    # a stacked tile file holds every period of its band: each of those periods' mosaics is stale
    stale = {(la["product"], la["period"], la["layer"]) for la in layers
             if (la["product"], TILE, la["layer"]) in changed_files}
    assert stale
    refused = run_cli("finalize", run_yaml)
    assert refused.returncode == 1
    assert f"{len(stale)} mosaics exist but their tiles changed since they were made" in refused.stderr
    assert json.loads(store.get_bytes("catalog/mosaics.json"))["layers"] == layers  # nothing remade or dropped
    redone = run_cli("finalize", run_yaml, "--overwrite")
    assert redone.returncode == 0, redone.stderr[-3000:]
    assert f"mosaics: {len(layers)} ({len(stale)} written, {len(layers) - len(stale)} up to date)" in redone.stdout


def test_demo_preflight_lists_every_problem_and_submits_nothing(demo_inputs, tmp_path):
    root = demo_inputs
    data = _config(root, tmp_path / "out", output={"layers": ["class", *LAYERS]}, model={"path": str(tmp_path / "none")})
    data["inputs"]["sources"][0]["mask"]["href"] = "inputs/{year}/Q{quartr}/cloud.tif"
    run_yaml = _write(root, "broken.yaml", data)
    for cmd in (["config", "check", run_yaml], ["slurm", "submit", run_yaml, "--dry-run"]):
        proc = run_cli(*cmd, timeout=300)
        assert proc.returncode == 2, (cmd, proc.stderr[-3000:])
        lines = proc.stderr.splitlines()
        assert any("{quartr}" in ln for ln in lines), proc.stderr[-3000:]
        assert any(ln.strip().startswith("model.path: model bundle not found") for ln in lines), proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
    assert LocalStore(tmp_path / "out").list("") == []  # nothing written (the store probe was removed)
