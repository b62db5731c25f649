"""Verified writes (ecocube.rasterwrite): the read-back check of a tile's staged layers."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from ecocube.errors import StoreError
from ecocube.rasterwrite import verify_strips


def _write(path, arr):
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[-1], height=arr.shape[-2], count=1,
                       dtype=arr.dtype, crs="EPSG:32632", transform=Affine(10.0, 0, 0, 0, -10.0, 0), tiled=True,
                       blockxsize=16, blockysize=16, compress="zstd") as dst:
        dst.write(arr[None])


def _strips(arr, rows=16):
    return [(Window(0, r, arr.shape[1], min(rows, arr.shape[0] - r)), arr[None, r:r + rows])
            for r in range(0, arr.shape[0], rows)]


def test_verify_strips_accepts_the_written_data_and_names_the_file_on_one_changed_pixel(tmp_path):
    arr = np.arange(40 * 56, dtype=np.uint16).reshape(40, 56)
    path = tmp_path / "a.tif"
    _write(path, arr)
    verify_strips(path, _strips(arr), width=56, height=40, count=1, dtype="uint16")
    other = arr.copy()
    other[33, 50] += 1  # in the last (partial) strip
    with pytest.raises(StoreError, match=r"cannot write .*x\.tif: the written file reads back different pixels"):
        verify_strips(path, _strips(other), width=56, height=40, count=1, dtype="uint16", what=tmp_path / "x.tif")


def test_verify_strips_checks_the_header_and_an_empty_or_truncated_file(tmp_path):
    arr = np.ones((32, 32), np.uint8)
    path = tmp_path / "a.tif"
    _write(path, arr)
    with pytest.raises(StoreError, match="the written file is 32x32x1 uint8, expected 32x32x1 int16"):
        verify_strips(path, _strips(arr), width=32, height=32, count=1, dtype="int16")
    with pytest.raises(StoreError, match="expected 33x32x1 uint8"):
        verify_strips(path, _strips(arr), width=33, height=32, count=1, dtype="uint8")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=r"a\.tif: the written file (does not read back|reads back different)"):
        verify_strips(path, _strips(arr), width=32, height=32, count=1, dtype="uint8")
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="the written file is empty"):
        verify_strips(path, _strips(arr), width=32, height=32, count=1, dtype="uint8")


def test_staged_windows_join_into_strips_per_block_row():
    from ecocube.tile import TileWriter

    writer = TileWriter.__new__(TileWriter)
    h, w, block = 40, 56, 16
    wins = [Window(c, r, min(block, w - c), min(block, h - r)) for r in range(0, h, block) for c in range(0, w, block)]
    writer._staged = {"k": [(win, i * 10, (1, int(win.height), int(win.width))) for i, win in enumerate(wins)]}
    strips = writer._strips("k")
    assert [tuple(int(v) for v in (s.col_off, s.row_off, s.width, s.height)) for s, _ in strips] == \
        [(0, 0, 56, 16), (0, 16, 56, 16), (0, 32, 56, 8)]
    assert [len(parts) for _, parts in strips] == [4, 4, 4]
    # windows that do not follow each other along x stay on their own
    writer._staged = {"k": [(Window(16, 0, 16, 16), 0, (1, 16, 16)), (Window(0, 0, 16, 16), 1, (1, 16, 16))]}
    assert len(writer._strips("k")) == 2


def test_a_truncated_staging_file_fails_the_finish_naming_the_tile_and_layer(tmp_path):
    from types import SimpleNamespace

    from ecocube.errors import TileError
    from ecocube.tile import TileWriter, plan_outputs

    tile = SimpleNamespace(id="X0003_Y0004", width=64, height=32, crs="EPSG:32632",
                           transform=Affine(10.0, 0, 500000.0, 0, -10.0, 6000000.0))
    specs = plan_outputs(("composite",), periods=[SimpleNamespace(id="2020-01-01")], bands=("red", "nir"), years=[])
    writer = TileWriter(tmp_path, tile, specs, block_size=32, threads=2)
    for c in (0, 32):
        writer.write([(s.key(tile.id), np.full((32, 32), 7, np.int16)) for s in specs], Window(c, 0, 32, 32))
    staging = tmp_path / ".composite.staging"
    writer._scratch["composite"].flush()
    assert staging.stat().st_size == 4 * 32 * 32 * 2  # 2 layers x 2 blocks of int16
    with open(staging, "r+b") as fh:
        fh.truncate(3 * 32 * 32 * 2)  # the last block of the second layer is gone
    with pytest.raises(TileError, match=r"1 of 2 outputs of tile X0003_Y0004 failed; first: tile X0003_Y0004: "
                                        r"staging file of composite is truncated \(0 of 2048 bytes at 6144\)"):
        writer.close()
    assert not staging.exists()
