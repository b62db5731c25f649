"""Fault: a corrupt input GeoTIFF (truncated on disk, as an interrupted copy leaves it).

What must hold: the tile fails with one line naming the file and the tile, exit 1, record
``failed``, nothing published; once the file is whole again the rerun finishes byte-identical
to a clean run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from faults import clean_run, file_checksums, output_checksums, published
from test_tile import cfg_dict, scene, write_yaml  # noqa: F401 - fixtures

from ecocube.status import read_status
from ecocube.store import LocalStore

pytestmark = pytest.mark.slow  # real processes and tiles

TILE = "X0000_Y0000"
LAYERS = {"layers": ["composite", "flags", "count"]}
PRODUCTS = ("composite", "flags", "count")


def test_a_corrupt_input_fails_in_one_line_naming_it_and_the_rerun_matches_a_clean_run(scene, tmp_path):  # noqa: F811
    data = cfg_dict(scene["root"], str(tmp_path / "out"), tiles=(TILE,), output=LAYERS)
    reference = clean_run(data, tmp_path, TILE)
    bad = scene["root"] / "inputs/2019/Q2/red.tif"
    whole = bad.read_bytes()
    bad.write_bytes(whole[: len(whole) // 2])  # the header survives, the image data is cut
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    cmd = [sys.executable, "-m", "ecocube", "run-tile", str(run_yaml), "--tile", TILE]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ecocube: error: tile {TILE} failed: ReadError: cannot read {bad} for tile {TILE}"), last
    assert "Read error" in last or "failed" in last.split(str(bad), 1)[1], last
    assert "Traceback" not in proc.stderr
    store = LocalStore(tmp_path / "out")
    rec = read_status(store, TILE)
    assert rec["state"] == "failed" and rec["error_type"] == "ReadError" and rec["outputs"] == {}
    assert published(store) == []

    bad.write_bytes(whole)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert output_checksums(store, TILE) == file_checksums(store, TILE, PRODUCTS) == reference
