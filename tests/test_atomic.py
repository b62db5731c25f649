"""Atomic writes: the target is the old file or the complete new one, temporaries never leak."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from ecocube.atomic import (
    VerifyError,
    atomic_open,
    atomic_path,
    norm_fsync,
    sha256_file,
    temp_path_for,
    write_bytes_atomic,
    write_text_atomic,
)
from ecocube.errors import FileOverwriteError, StoreError


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_sha256_file_known_digests(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    (tmp_path / "empty").write_bytes(b"")
    # FIPS 180-2 test vectors
    assert sha256_file(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(tmp_path / "empty") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    # a file spanning several read chunks gives the same digest as one read
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 10_000)
    assert sha256_file(big, chunk=4096) == sha256_file(big, chunk=1 << 22)


def test_temp_names_are_unique_hidden_and_beside_the_target(tmp_path):
    target = tmp_path / "sub" / "layer.tif"
    names = {temp_path_for(target) for _ in range(2000)}
    assert len(names) == 2000
    for p in list(names)[:20]:
        assert p.parent == target.parent
        assert p.name.startswith(".layer.tif.") and p.name.endswith(".tif")
        assert f".{os.getpid()}-" in p.name
    assert temp_path_for(target, suffix=".png").suffix == ".png"
    assert temp_path_for(target, suffix="").name.endswith(".tmp")


def test_bytes_and_text_land_with_no_leftovers(tmp_path):
    out = write_bytes_atomic(tmp_path / "a" / "b.bin", b"\x00\x01payload")  # creates the folder
    assert out.read_bytes() == b"\x00\x01payload"
    write_text_atomic(tmp_path / "a" / "c.json", '{"é": 1}')
    assert (tmp_path / "a" / "c.json").read_bytes() == '{"é": 1}'.encode()
    with atomic_open(tmp_path / "a" / "d.txt", "w", fsync="full") as fh:
        fh.write("line\n")
    assert (tmp_path / "a" / "d.txt").read_text() == "line\n"
    assert _names(tmp_path / "a") == ["b.bin", "c.json", "d.txt"]


def test_replaces_an_existing_file(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    write_text_atomic(target, "new", fsync=True)
    assert target.read_text() == "new"
    assert _names(tmp_path) == ["x.txt"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt(), SystemExit(3)])
def test_any_exception_removes_the_temp_and_keeps_the_old_file(tmp_path, exc):
    target = tmp_path / "x.tif"
    target.write_bytes(b"old")
    seen = []
    with pytest.raises(type(exc)), atomic_path(target) as tmp:
        seen.append(tmp)
        tmp.write_bytes(b"half a fi")
        Path(str(tmp) + ".aux.xml").write_text("<PAMDataset/>")  # a GDAL sidecar
        raise exc
    assert not seen[0].exists()
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["x.tif"]


def test_failing_verify_hook_publishes_nothing(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    checked = []

    def must_be_long(path: Path) -> None:
        checked.append(path.read_bytes())  # the hook sees the finished temporary file
        if path.stat().st_size < 10:
            raise ValueError("too short")

    with pytest.raises(VerifyError, match=r"x\.bin: verification failed, not written: too short"):
        write_bytes_atomic(target, b"short", verify=must_be_long)
    assert checked == [b"short"]
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["x.bin"]

    with pytest.raises(VerifyError, match="verification failed"):  # returning False rejects too
        write_bytes_atomic(target, b"whatever", verify=lambda p: False)
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["x.bin"]

    write_bytes_atomic(target, b"long enough!", verify=must_be_long)
    assert target.read_bytes() == b"long enough!" and _names(tmp_path) == ["x.bin"]


def test_no_overwrite_is_checked_at_the_rename(tmp_path):
    target = tmp_path / "x.txt"
    write_text_atomic(target, "first", overwrite=False)
    with pytest.raises(FileOverwriteError, match=r"x\.txt exists"):
        write_text_atomic(target, "second", overwrite=False)
    assert target.read_text() == "first" and _names(tmp_path) == ["x.txt"]


def test_a_writer_that_writes_nothing_fails(tmp_path):
    with pytest.raises(StoreError, match="produced no file"), atomic_path(tmp_path / "x.tif"):
        pass
    assert _names(tmp_path) == []


def test_bad_fsync_policy_is_rejected():
    assert norm_fsync(True) == "file" and norm_fsync(False) == "none" and norm_fsync("full") == "full"
    with pytest.raises(ValueError, match="fsync must be one of none, file, full"):
        norm_fsync("always")


def test_gdal_writes_through_the_temp_path(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    target = tmp_path / "r.tif"
    data = np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64)

    def has_data(path: Path) -> None:
        with rasterio.open(path) as ds:
            assert ds.read().sum() == data.sum()

    with atomic_path(target, verify=has_data) as tmp:
        with rasterio.open(tmp, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16",
                           crs="EPSG:3035", transform=from_origin(0, 640, 10, 10)) as ds:
            ds.write(data)
    with rasterio.open(target) as ds:
        assert np.array_equal(ds.read(), data)
    assert _names(tmp_path) == ["r.tif"]


def test_concurrent_writers_never_collide_and_readers_never_see_a_partial_file(tmp_path):
    """Threads of this process and other processes rewrite one target while a reader polls
    it: every read is one complete version, and no temporary file is left."""
    target = tmp_path / "shared.bin"
    size = 256 * 1024
    write_bytes_atomic(target, b"\xff" * size)
    stop = threading.Event()
    bad: list[str] = []
    reads = [0]

    def reader():
        while not stop.is_set():
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                bad.append("target vanished")
                continue
            reads[0] += 1
            if len(data) != size or len(set(data)) != 1:
                bad.append(f"partial/mixed read: {len(data)} bytes, {len(set(data))} distinct values")

    def writer(value: int):
        for _ in range(40):
            with atomic_open(target) as fh:
                for _ in range(4):  # several writes, so a non-atomic writer would show halves
                    fh.write(bytes([value]) * (size // 4))

    code = (
        "import sys\n"
        "from ecocube.atomic import atomic_open\n"
        "v, size = int(sys.argv[2]), int(sys.argv[3])\n"
        "for _ in range(40):\n"
        "    with atomic_open(sys.argv[1]) as fh:\n"
        "        for _ in range(4): fh.write(bytes([v]) * (size // 4))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target), str(v), str(size)], env=env)
             for v in (100, 101)]
    r = threading.Thread(target=reader)
    r.start()
    threads = [threading.Thread(target=writer, args=(v,)) for v in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    stop.set()
    r.join()
    assert bad == []
    assert reads[0] > 0
    final = target.read_bytes()
    assert len(final) == size and final[0] in (0, 1, 2, 3, 100, 101) and len(set(final)) == 1
    assert _names(tmp_path) == ["shared.bin"]
