"""Long-running commands stop on SIGINT and SIGTERM whatever signal dispositions they inherit.

A non-interactive shell starts background jobs with SIGINT ignored; Python then installs no
KeyboardInterrupt handler. Each process here is started that way (``preexec_fn`` ignores
SIGINT, as ``sh -c 'cmd &'`` does) and is always ended, even when an assertion fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rangeserver import RangeServer
from test_browse import catalog_dir  # noqa: F401 - fixture
from test_tile import cfg_dict, scene, write_yaml  # noqa: F401 - fixtures

from ecocube.signals import Stopped, handle_stop_signals

pytestmark = pytest.mark.slow  # real processes, tiles, models


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "ecocube", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=_ignore_sigint, **kw)


def end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_browse_stops_on_a_signal_although_sigint_was_ignored_at_start(catalog_dir, signum):  # noqa: F811
    proc = start("browse", str(catalog_dir), "--port", "0")
    try:
        line = proc.stdout.readline()
        assert "serving" in line, line
        proc.send_signal(signum)
        rc = proc.wait(timeout=15)
        out = proc.stdout.read()
        assert rc == 0, out
        assert f"stopped by {signal.Signals(signum).name}" in out
    finally:
        end(proc)


@pytest.mark.slow
def test_run_tile_stops_after_sigint_although_it_was_ignored_at_start(scene, tmp_path):  # noqa: F811
    with RangeServer(scene["root"]) as srv:
        srv.add_fault("/inputs/", "stall", seconds=0.5)  # every read is slow: the tile runs for a while
        data = cfg_dict(scene["root"], str(tmp_path / "out"), output={"layers": ["composite", "flags", "count"]})
        data["inputs"]["sources"][0]["href"] = srv.url + "/inputs/{year}/Q{quarter}/{band}.tif"
        run_yaml = write_yaml(tmp_path / "run.yaml", data)
        proc = start("run-tile", str(run_yaml), "--tile", "X0000_Y0000")
        try:
            record = tmp_path / "out" / "status" / "X0000_Y0000.json"
            deadline = time.monotonic() + 120
            while not record.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert json.loads(record.read_text())["state"] == "running"
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=120)
            out = proc.stdout.read()
        finally:
            end(proc)
    assert rc == 143, out
    assert "stopped by SIGINT after" in out and "nothing was published" in out
    assert json.loads(record.read_text())["state"] == "interrupted"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".ecocube-tmp", "status"]


def test_processes_started_here_inherit_sigint_ignored():
    """What the tests above rely on: Python itself would not handle SIGINT in them."""
    out = subprocess.run([sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"],
                         capture_output=True, text=True, preexec_fn=_ignore_sigint, timeout=60).stdout
    assert out.strip() == "True"


def test_handle_stop_signals_restores_the_previous_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as info, handle_stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_browse_cli_test_ends_its_server(catalog_dir):  # noqa: F811
    """The helper used above ends a process that ignores the signal it was sent."""
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                             "signal.SIG_IGN); print('up', flush=True); time.sleep(600)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        proc.terminate()
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
    finally:
        end(proc)
    assert proc.returncode == -signal.SIGKILL
    assert not Path(f"/proc/{proc.pid}").exists()
