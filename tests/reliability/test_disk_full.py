"""Fault: a disk fills up while a tile is written — for real, on a small tmpfs.

What must hold: the tile fails with StoreError naming the file and errno 28 (exit 1 from the
CLI), its record says failed, nothing is published, the scratch is cleaned up, and a rerun
once there is room finishes with outputs byte-identical to a clean run."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from faults import assert_outputs_match, assert_rerun_matches, clean_run, published, remount
from test_tile import bundle, cfg_dict, model_dir, scene, tile_of, write_yaml  # noqa: F401 - fixtures

from ecocube.config import config_from_dict, load_config
from ecocube.errors import TileError
from ecocube.status import read_status
from ecocube.store import LocalStore
from ecocube.tile import process_tile

pytestmark = pytest.mark.slow  # real processes, tiles, models

PRODUCTS = ("proba", "class", "uncertainty", "composite", "flags", "count")
TILE = "X0001_Y0000"
# the scene's tile writes 15 GeoTIFFs (6 per year, 9 stacked cube files: ~90 KiB): a disk of
# 64 KiB fills up while they are written
SMALL = "64k"

# whole tiles processed and re-run: every test here is slow
pytestmark = pytest.mark.slow


def _assert_enospc(text: str, folder) -> None:
    assert "StoreError" in text and "of tile X0001_Y0000 failed; first: cannot write " in text, text
    assert f"cannot write {folder}" in text and text.rstrip().endswith(
        "[errno 28 ENOSPC: No space left on device]"), text


def test_full_tmp_dir_fails_the_tile_and_the_rerun_matches_a_clean_run(scene, model_dir, tmp_path, small_disk):
    disk = small_disk(SMALL)
    data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir, processing={"tmp_dir": str(disk)})
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    proc = subprocess.run([sys.executable, "-m", "ecocube", "run-tile", str(run_yaml), "--tile", TILE],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ecocube: error: tile X0001_Y0000 failed: StoreError: "), last
    # libtiff's own complaints (_tiffSeekProc/_tiffWriteProc, one per failed write) go to the
    # debug log, not before the one clean line
    assert "_tiff" not in proc.stderr and "ERROR 1:" not in proc.stderr, proc.stderr[:3000]
    assert proc.stderr.count("No space left on device") == 1, proc.stderr[:3000]
    _assert_enospc(last, disk)
    store = LocalStore(tmp_path / "out")
    rec = read_status(store, TILE)
    assert rec["state"] == "failed" and rec["error_type"] == "StoreError" and rec["outputs"] == {}
    _assert_enospc(rec["error"], disk)
    assert published(store) == []  # nothing half-written reached the store
    assert list(disk.iterdir()) == []  # the scratch folder was removed

    remount(disk, "20m")  # room again: the rerun redoes the tile
    assert_rerun_matches([sys.executable, "-m", "ecocube", "run-tile", run_yaml, "--tile", TILE], store, TILE,
                         PRODUCTS, clean_run(data, tmp_path, TILE))


def test_full_local_store_fails_the_tile_and_the_rerun_matches_a_clean_run(scene, bundle, tmp_path,  # noqa: F811
                                                                             small_disk):
    disk = small_disk(SMALL)
    data = cfg_dict(scene["root"], str(disk / "out"))
    cfg = config_from_dict(data)
    with pytest.raises(TileError) as info:
        process_tile(tile_of(cfg, TILE), cfg, bundle=bundle)
    _assert_enospc(str(info.value), disk / "out" / ".ecocube-tmp")
    store = LocalStore(disk / "out")
    assert read_status(store, TILE)["state"] == "failed"
    assert published(store) == []
    assert list((disk / "out" / ".ecocube-tmp").iterdir()) == []

    remount(disk, "20m")
    rec = process_tile(tile_of(cfg, TILE), cfg, bundle=bundle)
    assert rec["state"] == "done" and not rec.get("skipped")
    assert_outputs_match(store, TILE, PRODUCTS, clean_run(data, tmp_path, TILE, bundle=bundle))


def test_store_too_full_to_take_the_published_files(scene, model_dir, tmp_path, small_disk):  # noqa: F811
    """Scratch on a roomy disk, the store on a full one: publishing (a copy across file
    systems) fails naming the file, and nothing of the tile is left in the store."""
    disk = small_disk("64k")
    data = cfg_dict(scene["root"], str(disk / "out"), model=model_dir, processing={"tmp_dir": str(tmp_path / "scratch")})
    proc = subprocess.run([sys.executable, "-m", "ecocube", "run-tile", str(write_yaml(tmp_path / "run.yaml", data)),
                           "--tile", TILE], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert re.fullmatch(rf"ecocube: error: tile X0001_Y0000 failed: StoreError: cannot publish \S+ as "
                        rf"{disk / 'out'}/\S+: .*No space left on device.*", proc.stderr.strip().splitlines()[-1])
    store = LocalStore(disk / "out")
    assert published(store) == []
    assert list((tmp_path / "scratch").iterdir()) == []
    # the objects published before the disk filled up were removed again, which made room
    # for the failed record
    rec = read_status(store, TILE)
    assert rec["state"] == "failed" and "No space left on device" in rec["error"]


def test_preflight_names_a_scratch_disk_too_small_for_one_tile(scene, model_dir, tmp_path, small_disk):  # noqa: F811
    disk = small_disk("64k")
    data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir, processing={"tmp_dir": str(disk)})
    proc = subprocess.run([sys.executable, "-m", "ecocube", "config", "check", "--no-inputs",
                           str(write_yaml(tmp_path / "run.yaml", data))], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert (f"  processing.tmp_dir {disk}: a tile writes up to 120.0 KiB of cube layers there "
            "(uncompressed, before publishing), only 64.0 KiB are free (set processing.tmp_dir to a larger local disk)") in proc.stderr.splitlines()
    assert load_config(tmp_path / "run.yaml").processing.tmp_dir == disk
