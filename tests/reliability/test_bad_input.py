"""Faults of the input files: a corrupt GeoTIFF (truncated on disk, as an interrupted copy
leaves it), a wrong CRS label or none, another resolution than the grid's.

What must hold: a corrupt file fails the tile with one line naming the file and the tile, exit
1, record ``failed``, nothing published; files whose footprint reaches no part of the tile (a
projected file labelled EPSG:4326, another UTM zone) are never ignored silently: one warning
per tile naming the first few and their count, the count in the record, or the tile fails
under ``inputs.on_misplaced: fail``; a file without a CRS fails the tile naming it; a file of
another resolution is resampled onto the grid, equal to an independent aggregate. Once the
files are right the rerun finishes byte-identical to a clean run."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from affine import Affine
from faults import assert_rerun_matches, clean_run, published, run_cli
from test_tile import BANDS, ORIGIN, cfg_dict, scene, tile_of, write_yaml  # noqa: F401 - fixtures

from ecocube.config import config_from_dict
from ecocube.read import read_block
from ecocube.status import read_status
from ecocube.store import LocalStore

pytestmark = pytest.mark.slow  # real processes and tiles

TILE = "X0000_Y0000"
LAYERS = {"layers": ["composite", "flags", "count"]}
PRODUCTS = ("composite", "flags", "count")


def test_a_corrupt_input_fails_in_one_line_naming_it_and_the_rerun_matches_a_clean_run(scene, tmp_path,  # noqa: F811
                                                                                       read_ahead):
    data = cfg_dict(scene["root"], str(tmp_path / "out"), tiles=(TILE,), output=LAYERS,
                    processing={"read_ahead": read_ahead})
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
    assert_rerun_matches(cmd, store, TILE, PRODUCTS, reference)


def test_a_corrupt_block_of_a_later_window_fails_like_one_of_the_first(scene, tmp_path, read_ahead):  # noqa: F811
    """The file is whole up to the image block under the tile's fourth processing block (16 px
    blocks: that read is the one read ahead, on its own thread, with processing.read_ahead):
    the first three blocks read fine, the fourth fails the tile with the same one line."""
    import rasterio

    bad = scene["root"] / "inputs/2019/Q2/red.tif"
    with rasterio.open(bad) as src:
        profile, pixels = src.profile, src.read()
    profile.update(driver="GTiff", tiled=True, blockxsize=16, blockysize=16, compress="deflate")
    bad.unlink()
    with rasterio.open(bad, "w", **profile) as dst:  # 4 x 2 image blocks; tile X0000 covers the left two columns
        dst.write(pixels)
    with rasterio.open(bad) as src:
        offset = {(x, y): int(src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1)) for x in range(4)
                  for y in range(2)}
        size = {(x, y): int(src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=1)) for x in range(4)
                for y in range(2)}
    cut = offset[(1, 1)]  # the image block of processing block 4 (col 16, row 16) and every one after it
    assert all(offset[b] + size[b] <= cut for b in [(0, 0), (1, 0), (0, 1)])  # blocks 1..3 whole
    data = cfg_dict(scene["root"], str(tmp_path / "out"), tiles=(TILE,), output=LAYERS,
                    processing={"read_ahead": read_ahead})
    reference = clean_run(data, tmp_path, TILE)
    whole = bad.read_bytes()
    bad.write_bytes(whole[:cut])
    cmd = [sys.executable, "-m", "ecocube", "run-tile", str(write_yaml(tmp_path / "run.yaml", data)), "--tile", TILE]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ecocube: error: tile {TILE} failed: ReadError: cannot read {bad} for tile {TILE}"), last
    assert "Traceback" not in proc.stderr
    store = LocalStore(tmp_path / "out")
    rec = read_status(store, TILE)
    assert rec["state"] == "failed" and rec["error_type"] == "ReadError" and rec["outputs"] == {}
    assert "X offset 1, Y offset 1" in last, last  # the image block under processing block 4, as cut
    assert published(store) == []

    bad.write_bytes(whole)
    assert_rerun_matches(cmd, store, TILE, PRODUCTS, reference)


def _relabel(path, crs) -> bytes:
    """Rewrite ``path`` with the same pixels and transform but another CRS label (None: none);
    returns the original bytes."""
    import rasterio

    whole = path.read_bytes()
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    profile.update(driver="GTiff", crs=crs)
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return whole


def _misplaced_warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "overlap no part of the tile" in ln]


def test_inputs_in_a_wrong_crs_are_named_once_per_tile_or_fail_it_by_policy(scene, tmp_path, read_ahead):  # noqa: F811
    data = cfg_dict(scene["root"], str(tmp_path / "out"), tiles=(TILE,), output=LAYERS,
                    processing={"read_ahead": read_ahead})
    reference = clean_run(data, tmp_path, TILE)
    geo = scene["root"] / "inputs/2019/Q2/red.tif"  # UTM metres labelled degrees: an impossible footprint
    zone = scene["root"] / "inputs/2020/Q3/nir.tif"  # the neighbouring UTM zone: 420 km east
    originals = {geo: _relabel(geo, "EPSG:4326"), zone: _relabel(zone, "EPSG:32632")}
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    proc = run_cli("run-tile", run_yaml, "--tile", TILE, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = _misplaced_warnings(proc.stderr)  # once per tile, not once per block (4 blocks)
    assert line.endswith(
        f"tile {TILE}: 2 of 24 input files overlap no part of the tile and contribute nothing: "
        f"{geo} (bounds (574680, 5.62212e+06, 575320, 5.62244e+06) are impossible in EPSG:4326: projected "
        f"coordinates labelled geographic?), {zone}; check their CRS and georeference "
        "(inputs.on_misplaced: fail makes this an error)"), line
    store = LocalStore(tmp_path / "out")
    rec = read_status(store, TILE)
    assert rec["state"] == "done"
    assert (rec["input_files"], rec["misplaced_inputs"], rec["resampled_inputs"]) == (24, 2, 0)
    assert rec["misplaced_examples"] == sorted([str(geo), str(zone)])

    strict = write_yaml(tmp_path / "strict.yaml", {**data, "inputs": {**data["inputs"], "on_misplaced": "fail"},
                                                   "output": {**data["output"], "store": str(tmp_path / "strict")}})
    failed = run_cli("run-tile", strict, "--tile", TILE, timeout=300)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert failed.stderr.strip().splitlines()[-1].startswith(
        f"ecocube: error: tile {TILE} failed: ReadError: tile {TILE}: 2 of 24 input files overlap no part of the "
        f"tile and contribute nothing: {geo} (bounds"), failed.stderr[-3000:]
    assert failed.stderr.strip().endswith("check their CRS and georeference (inputs.on_misplaced: fail)")
    assert "Traceback" not in failed.stderr
    store = LocalStore(tmp_path / "strict")
    assert read_status(store, TILE)["state"] == "failed" and published(store) == []

    for path, body in originals.items():
        path.unlink()
        path.write_bytes(body)
    rerun = assert_rerun_matches([sys.executable, "-m", "ecocube", "run-tile", strict, "--tile", TILE], store, TILE,
                                 PRODUCTS, reference)
    assert _misplaced_warnings(rerun.stderr) == []
    assert read_status(store, TILE)["misplaced_inputs"] == 0


def test_many_inputs_outside_a_tile_are_summed_up_in_one_line(scene, tmp_path, read_ahead):  # noqa: F811
    # X0005_Y0000 lies east of the scene: none of its 24 files reaches it
    data = cfg_dict(scene["root"], str(tmp_path / "out"), tiles=("X0005_Y0000",), output=LAYERS,
                    inputs={"on_empty": "record"}, processing={"read_ahead": read_ahead})
    proc = run_cli("run-tile", write_yaml(tmp_path / "run.yaml", data), "--tile", "X0005_Y0000", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = _misplaced_warnings(proc.stderr)
    first = [str(scene["root"] / f"inputs/2019/Q1/{b}.tif") for b in ("blue", "nir", "red")]
    assert f"tile X0005_Y0000: 24 of 24 input files overlap no part of the tile and contribute nothing: " \
           f"{', '.join(first)} (+21 more); check their CRS" in line, line
    rec = read_status(LocalStore(tmp_path / "out"), "X0005_Y0000")
    assert rec["state"] == "empty" and rec["misplaced_inputs"] == 24 and rec["misplaced_examples"] == first


def test_an_input_without_a_crs_fails_the_tile_naming_it(scene, tmp_path, read_ahead):  # noqa: F811
    data = cfg_dict(scene["root"], str(tmp_path / "out"), tiles=(TILE,), output=LAYERS,
                    processing={"read_ahead": read_ahead})
    reference = clean_run(data, tmp_path, TILE)
    bad = scene["root"] / "inputs/2020/Q1/blue.tif"
    whole = _relabel(bad, None)
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    cmd = [sys.executable, "-m", "ecocube", "run-tile", str(run_yaml), "--tile", TILE]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ecocube: error: tile {TILE} failed: ReadError: cannot read {bad} for tile {TILE}: the file has no CRS: "
        "cannot reproject it onto the tile grid")
    store = LocalStore(tmp_path / "out")
    assert read_status(store, TILE)["state"] == "failed" and published(store) == []
    bad.unlink()
    bad.write_bytes(whole)
    assert_rerun_matches(cmd, store, TILE, PRODUCTS, reference)


@pytest.mark.parametrize(("res", "resampling"), [(20.0, "nearest"), (5.0, "average")])
def test_an_input_of_another_resolution_is_resampled_to_the_grid_like_a_hand_made_aggregate(tmp_path, make_cog,
                                                                                             res, resampling):
    """20 m inputs onto the 10 m grid (nearest: each pixel repeated 2 x 2), 5 m inputs (average:
    the mean of each 2 x 2), both on the grid's origin; the expected values are numpy's."""
    factor = 10.0 / res  # input pixels per grid pixel along an axis (2 or 0.5)
    h, w = int(32 * factor), int(64 * factor)
    rng = np.random.default_rng(7)
    values = {}
    for year in (2019, 2020):
        for q in range(1, 5):
            for band in BANDS:
                arr = rng.uniform(0.01, 0.6, (h, w)).astype(np.float32)
                values[(year, q, band)] = arr
                make_cog(f"inputs/{year}/Q{q}/{band}.tif", arr, transform=Affine(res, 0, ORIGIN[0], 0, -res, ORIGIN[1]),
                         crs="EPSG:32631", blocksize=128)
    data = cfg_dict(tmp_path, str(tmp_path / "out"), tiles=(TILE,))
    data["inputs"]["sources"][0].update(scale=1.0, nodata=None, resampling=resampling)
    cfg = config_from_dict(data)
    tile = tile_of(cfg, TILE)
    res_ = read_block(cfg, tile)
    assert res_.data.shape == (8, 3, 32, 32)
    assert res_.resampled == res_.files and len(res_.files) == 24 and res_.outside == {}
    for t, (year, q) in enumerate((y, q) for y in (2019, 2020) for q in range(1, 5)):
        for b, band in enumerate(BANDS):
            arr = values[(year, q, band)].astype(np.float64)
            if res > 10:
                expected = np.repeat(np.repeat(arr, 2, axis=0), 2, axis=1)[:32, :32]
            else:
                expected = arr.reshape(32, 2, 64, 2).mean(axis=(1, 3))[:32, :32]
            np.testing.assert_allclose(res_.data[t, b], expected, rtol=1e-6, atol=0, err_msg=f"{year} Q{q} {band}")
