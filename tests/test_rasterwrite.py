"""Verified writes (ecocube.rasterwrite): the read-back checks of written rasters and of a tile's outputs."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from ecocube.errors import StoreError
from ecocube.rasterwrite import WindowChecksums, verify_checksums, verify_strips


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


def _sums(arr, block=16):
    sums = WindowChecksums(arr.dtype)
    for r in range(0, arr.shape[-2], block):
        for c in range(0, arr.shape[-1], block):
            win = Window(c, r, min(block, arr.shape[-1] - c), min(block, arr.shape[-2] - r))
            sums.add(arr[..., r:r + block, c:c + block], win)
    return sums


def test_verify_checksums_accepts_the_written_data_and_names_the_window_of_one_changed_pixel(tmp_path):
    arr = np.arange(40 * 56, dtype=np.uint16).reshape(40, 56)
    path = tmp_path / "a.tif"
    _write(path, arr)
    verify_checksums(path, _sums(arr), width=56, height=40, count=1)
    other = arr.copy()
    other[33, 50] += 1  # in the last (partial) window
    with pytest.raises(StoreError, match=r"cannot write .*x\.tif: the written file reads back different pixels "
                                         r"than were written \(window at row 32, column 48, 8x8 px\)"):
        verify_checksums(path, _sums(other), width=56, height=40, count=1, what=tmp_path / "x.tif")


def test_verify_checksums_checks_the_header_and_an_empty_or_truncated_file(tmp_path):
    arr = np.ones((32, 32), np.uint8)
    path = tmp_path / "a.tif"
    _write(path, arr)
    with pytest.raises(StoreError, match="the written file is 32x32x1 uint8, expected 32x32x1 int16"):
        verify_checksums(path, _sums(arr.astype(np.int16)), width=32, height=32, count=1)
    with pytest.raises(StoreError, match="expected 32x32x2 uint8"):
        verify_checksums(path, _sums(arr), width=32, height=32, count=2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=r"a\.tif: the written file (does not read back|reads back different)"):
        verify_checksums(path, _sums(arr), width=32, height=32, count=1)
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="the written file is empty"):
        verify_checksums(path, _sums(arr), width=32, height=32, count=1)


def test_verify_checksums_reopens_the_file_so_the_block_cache_holds_at_most_its_budget(tmp_path):
    """GDAL keeps the blocks a dataset read until it closes: verifying a large multi-band
    file through one open filled the block cache (a tile's 84-band cube files: 256 MB).

    Measured in a fresh interpreter (this file run as a script): GDAL's block cache and its
    settings are process-wide, and in the whole suite an earlier test's state left the reads
    uncached, so the measurement said nothing (0 bytes cached; the limit alone was not it)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GDAL_", "CPL_", "VSI_", "GTIFF_"))}
    res = subprocess.run([sys.executable, __file__, "reopen-check", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().endswith("reopen-check ok"), res.stdout


def _reopen_check(tmp_path) -> None:
    """The body of the test above (run in its own process)."""
    import ctypes

    from ecocube import rasterwrite

    lib = rasterwrite._libgdal()
    lib.GDALGetCacheUsed64.restype = ctypes.c_int64
    lib.GDALSetCacheMax64.argtypes = [ctypes.c_int64]
    lib.GDALSetCacheMax64(64 * 2**20)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 60000, (8, 256, 256), dtype=np.uint16)  # 1 MiB; windows of 64 KiB
    path = tmp_path / "cube.tif"
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=8, dtype="uint16", crs="EPSG:32632",
                       transform=Affine(10.0, 0, 0, 0, -10.0, 0), tiled=True, blockxsize=64, blockysize=64,
                       compress="zstd", interleave="band") as dst:
        dst.write(arr)
    window_bytes = 8 * 64 * 64 * 2
    budget = 2 * window_bytes
    rasterwrite.VERIFY_REOPEN_BYTES = budget
    real_open, opens, cached = rasterio.open, [], []

    class _Recording:
        def __init__(self, ds):
            self._ds = ds

        def __getattr__(self, name):
            return getattr(self._ds, name)

        def read(self, *args, **kwargs):
            out = self._ds.read(*args, **kwargs)
            cached.append(lib.GDALGetCacheUsed64() - before)
            return out

    def recording_open(*args, **kwargs):
        opens.append(args[0])
        return _Recording(real_open(*args, **kwargs))

    rasterio.open = recording_open
    try:
        before = lib.GDALGetCacheUsed64()
        verify_checksums(path, _sums(arr, block=64), width=256, height=256, count=8)
        assert len(cached) == 16
        assert max(cached) <= budget + window_bytes // 2, cached  # 2 windows' blocks, not the file's 16
        assert len(opens) == 8  # every second window
        assert max(cached) >= window_bytes, cached  # the reads did go through the cache
        other = arr.copy()
        other[5, 250, 250] += 1  # the last window: read after the last re-open
        with pytest.raises(StoreError, match=r"\(window at row 192, column 192, 64x64 px\)"):
            verify_checksums(path, _sums(other, block=64), width=256, height=256, count=8)
    finally:
        rasterio.open = real_open


def test_a_tile_output_truncated_before_its_check_fails_the_close_naming_the_tile_and_file(tmp_path):
    from types import SimpleNamespace

    from ecocube.tile import TileWriter, plan_outputs

    tile = SimpleNamespace(id="X0003_Y0004", width=64, height=32, crs="EPSG:32632",
                           transform=Affine(10.0, 0, 500000.0, 0, -10.0, 6000000.0))
    periods = [SimpleNamespace(id="2020-01-01"), SimpleNamespace(id="2020-07-01")]
    specs = plan_outputs(("composite",), periods=periods, bands=("red", "nir"), years=[])
    writer = TileWriter(tmp_path, tile, specs, block_size=32, threads=2)
    rng = np.random.default_rng(0)
    for c in (0, 32):
        writer.write([(s.key(tile.id), rng.integers(0, 9000, (2, 32, 32)).astype(np.int16)) for s in specs],
                     Window(c, 0, 32, 32))
    victim = writer.paths["composite/X0003_Y0004/nir.tif"]
    writer._datasets["composite/X0003_Y0004/nir.tif"].close()  # flushed as the writer would, then damaged
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 1000])
    with pytest.raises(StoreError, match=r"1 of 2 outputs of tile X0003_Y0004 failed; first: cannot write "
                                         r".*composite/X0003_Y0004/nir\.tif: the written file "
                                         r"(does not read back|reads back different)"):
        writer.close()


if __name__ == "__main__" and sys.argv[1:2] == ["reopen-check"]:
    from pathlib import Path

    _reopen_check(Path(sys.argv[2]))
    print("reopen-check ok")
