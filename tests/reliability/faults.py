"""Helpers of the fault suite (tests/reliability/): clean reference runs and store checks."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from pathlib import Path

import pytest

from ecocube.config import config_from_dict
from ecocube.status import read_status
from ecocube.store import LocalStore


def output_checksums(store, tile_id: str) -> dict[str, str]:
    """``{key: sha256}`` of a done tile's outputs, from its record (the record was verified
    against the files by the caller or by the rerun's skip check)."""
    rec = read_status(store, tile_id)
    assert rec is not None and rec["state"] == "done", rec
    return {k: v["sha256"] for k, v in rec["outputs"].items()}


def file_checksums(store, tile_id: str, products) -> dict[str, str]:
    """``{key: sha256}`` of the files under the tile's prefixes, hashed from the store."""
    keys = [k for p in products for k in store.list(f"{p}/{tile_id}/")]
    return {k: store.info(k).sha256 for k in keys}


def clean_run(data: dict, tmp_path, tile_id: str, *, bundle=None) -> dict[str, str]:
    """Checksums of one tile processed without any fault, in a store of its own."""
    from ecocube.grid import TileGrid
    from ecocube.tile import process_tile

    ref = dict(data, output={**data["output"], "store": str(tmp_path / "clean-ref")})
    ref["processing"] = {k: v for k, v in data["processing"].items() if k != "tmp_dir"}
    cfg = config_from_dict(ref)
    tile = TileGrid.from_config(cfg.grid).tile(tile_id)
    process_tile(tile, cfg, bundle=bundle)
    return output_checksums(LocalStore(tmp_path / "clean-ref"), tile_id)


def published(store) -> list[str]:
    """Every key of the store except status records."""
    return [k for k in store.list("") if not k.startswith("status/")]


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str):
    """A tmpfs of ``size`` (e.g. ``"200k"``) at ``where``; needs root (CI runs as root)."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"ecocube-test-{uuid.uuid4().hex[:8]}",
                           str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {where} (the disk-full tests run as root, as CI does): "
                    f"{proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, text=True)


def remount(where: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True, capture_output=True)


def run_cli(*args: str, timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    """``python -m ecocube ARGS`` in a child process, its output captured."""
    import sys

    return subprocess.run([sys.executable, "-m", "ecocube", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_outputs_match(store, tile_id: str, products, reference: dict[str, str]) -> None:
    """The tile is done and its files (hashed from the store), their record and a clean run
    (``reference``, from :func:`clean_run`) agree."""
    assert output_checksums(store, tile_id) == file_checksums(store, tile_id, products) == reference


def assert_rerun_matches(cmd, store, tile_id: str, products, reference: dict[str, str], *,
                         timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    """The fault cleared: rerun ``cmd`` (argv) and check that it exits 0 and that the tile's
    files, their record and a clean run (``reference``, from :func:`clean_run`) agree."""
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_outputs_match(store, tile_id, products, reference)
    return proc


def run_at_once(*cmds, timeout: float = 900, env=None) -> list[subprocess.CompletedProcess]:
    """Start every command (argv) at once, then wait for all of them; their output captured.
    A command still running after ``timeout`` raises ``subprocess.TimeoutExpired``, and none of
    the children outlives the call."""
    procs = [subprocess.Popen(list(map(str, c)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for c in cmds]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=10)
    return [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


class HoldingProxy:
    """A real TCP proxy in front of an S3 server that lets the first ``allow`` uploads of
    objects outside ``status/`` through and then holds every further one unanswered, so a
    test can kill the uploading process while exactly ``allow`` outputs are up — no race
    with the upload speed. Requests start at the beginning of a read (the client waits for
    the response before it sends the next request on a connection), so a held request is
    recognised by its first line: ``PUT /{bucket}/{prefix}/... HTTP/1.1``."""

    def __init__(self, target_port: int, bucket: str, prefix: str, *, allow: int = 1):
        import socket
        import threading

        self._marker = f"PUT /{bucket}/{prefix}/".encode()
        self._status = f"PUT /{bucket}/{prefix}/status/".encode()
        self._target = target_port
        self._allow = allow
        self.passed = 0
        self._kept: list = []
        self.held = threading.Event()  # set once an upload is being held
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src, dst, upstream: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if upstream and data.startswith(self._marker) and not data.startswith(self._status):
                    with self._lock:
                        hold = self.passed >= self._allow
                        self.passed += not hold
                    if hold:
                        self._kept.append((src, dst))  # kept open: the client waits for an answer
                        self.held.set()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if (src, dst) not in self._kept:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.close()

    def close(self) -> None:
        self._sock.close()
