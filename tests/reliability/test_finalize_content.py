"""Faults: a tile redone with other content after finalize, and a tile file damaged on disk.

What must hold: finalize decides "up to date" from the tiles' checksums (their status
records), refuses to keep or silently replace a mosaic whose tiles changed, remakes exactly
those with --overwrite (each then equal to the tiles), and refuses a tile file that does not
match its record with one line naming tile and file, exit 1, publishing nothing new."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from faults import output_checksums
from test_tile import bundle, cfg_dict, scene, tile_of, write_yaml  # noqa: F401 - fixtures

from ecocube.config import config_from_dict
from ecocube.status import read_status
from ecocube.store import LocalStore
from ecocube.tile import process_tile

# whole tiles processed, finalized and re-run: every test here is slow
pytestmark = pytest.mark.slow

TILES = ("X0000_Y0000", "X0001_Y0000")


def finalize(run_yaml, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecocube", "finalize", str(run_yaml), *args],
                          capture_output=True, text=True, timeout=900)


def _mosaic_keys(tile_key: str, record: dict) -> list[str]:
    """The mosaics a tile file feeds: its period's, or each period of a stacked file."""
    parts = tile_key.removesuffix(".tif").split("/")
    if len(parts) == 3:  # stacked: {product}/{tile}/{layer}.tif, the record lists its periods
        product, _tile, layer = parts
        return [f"{product}/{period}/{layer}" for period in record["outputs"][tile_key]["periods"]]
    product, _tile, period, layer = parts
    return [f"{product}/{period}/{layer}"]


def _manifest(store) -> dict:
    return {f"{x['product']}/{x['period']}/{x['layer']}": x for x in json.loads(store.get_bytes(
        "catalog/mosaics.json"))["layers"]}


def test_finalize_remakes_exactly_the_mosaics_whose_tiles_changed(scene, bundle, tmp_path):  # noqa: F811
    data = cfg_dict(scene["root"], str(tmp_path / "out"), finalize={"blocksize": 128})
    cfg = config_from_dict(data)
    for t in TILES:
        process_tile(tile_of(cfg, t), cfg, bundle=bundle)
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    store = LocalStore(tmp_path / "out")
    first = finalize(run_yaml)
    assert first.returncode == 0, first.stderr[-2000:]
    n_layers = len(_manifest(store))
    assert f"mosaics: {n_layers} ({n_layers} written, 0 up to date)" in first.stdout

    # redo one tile with other gap-fill windows (the user's --overwrite)
    before = output_checksums(store, "X0001_Y0000")
    other = config_from_dict(cfg_dict(scene["root"], str(tmp_path / "out"), finalize={"blocksize": 128},
                                      gapfill={"method": "linear"}))
    process_tile(tile_of(other, "X0001_Y0000"), other, bundle=bundle, overwrite=True)
    after = output_checksums(store, "X0001_Y0000")
    record = read_status(store, "X0001_Y0000")
    changed = {m for k in after if after[k] != before.get(k) for m in _mosaic_keys(k, record)}
    assert changed and not any(k.startswith("count/") for k in changed)  # counts do not depend on gap-filling
    assert len(changed) < n_layers

    old = _manifest(store)
    refused = finalize(run_yaml)
    assert refused.returncode == 1
    assert f"{len(changed)} mosaics exist but their tiles changed since they were made" in refused.stderr
    assert _manifest(store) == old  # nothing was remade or dropped

    redone = finalize(run_yaml, "--overwrite")
    assert redone.returncode == 0, redone.stderr[-2000:]
    assert f"mosaics: {n_layers} ({len(changed)} written, {n_layers - len(changed)} up to date)" in redone.stdout
    new = _manifest(store)
    assert {k for k in new if new[k]["checksum"] != old[k]["checksum"]} == changed
    # every remade mosaic holds the redone tile's pixels
    for key in changed:
        product, period, layer = key.split("/")
        stacked = f"{product}/X0001_Y0000/{layer}.tif"
        path = stacked if stacked in record["outputs"] else f"{product}/X0001_Y0000/{period}/{layer}.tif"
        with rasterio.open(store.url(new[key]["key"])) as mos, rasterio.open(store.url(path)) as tile:
            win = mos.window(*tile.bounds)
            bands = [tile.descriptions.index(period) + 1] if path == stacked else None
            np.testing.assert_array_equal(mos.read(window=win), tile.read(bands), err_msg=key)
    # and a further finalize has nothing to do
    again = finalize(run_yaml)
    assert f"mosaics: {n_layers} (0 written, {n_layers} up to date)" in again.stdout


def test_finalize_refuses_a_tile_file_that_does_not_match_its_record(scene, bundle, tmp_path):  # noqa: F811
    data = cfg_dict(scene["root"], str(tmp_path / "out"), finalize={"blocksize": 128})
    cfg = config_from_dict(data)
    for t in TILES:
        process_tile(tile_of(cfg, t), cfg, bundle=bundle)
    store = LocalStore(tmp_path / "out")
    victim = "composite/X0001_Y0000/red.tif"  # every period of the band: one line
    path = tmp_path / "out" / victim
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # truncated, as a full disk or a killed copy leaves it
        fh.truncate(size // 2)
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    proc = finalize(run_yaml)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"ecocube: error: tile X0001_Y0000: {path} does not match its status record "
        f"(size {size // 2}, recorded {size})"]
    assert "Traceback" not in proc.stderr
    assert store.list("catalog/") == []  # no mosaic, no manifest, no catalog
