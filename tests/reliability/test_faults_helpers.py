"""The fault suite's own helpers (tests/reliability/faults.py) where they hold logic of their own."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from faults import run_at_once

# each child writes its own file, then waits for the other's: run one after the other, the
# first would wait forever (and the call time out); started at once, both finish
_MEET = ("import pathlib, sys, time\n"
         "d = pathlib.Path(sys.argv[1]); (d / sys.argv[2]).write_text('here')\n"
         "while not (d / sys.argv[3]).exists(): time.sleep(0.01)\n"
         "print('met', sys.argv[3]); sys.stderr.write('err ' + sys.argv[2]); sys.exit(int(sys.argv[4]))\n")


def test_run_at_once_starts_every_command_before_waiting(tmp_path):
    a = [sys.executable, "-c", _MEET, tmp_path, "a", "b", 0]
    b = [sys.executable, "-c", _MEET, tmp_path, "b", "a", 3]
    done = run_at_once(a, b, timeout=300)
    assert [(p.returncode, p.stdout, p.stderr) for p in done] == [(0, "met b\n", "err a"), (3, "met a\n", "err b")]
    assert done[0].args == [str(x) for x in a]


def _children() -> set[int]:
    """Pids of this process's children, zombies included (from /proc)."""
    me, kids = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == me:
                kids.add(int(stat.parent.name))
    return kids


def test_run_at_once_kills_what_outlives_the_timeout():
    before = _children()
    with pytest.raises(subprocess.TimeoutExpired):
        run_at_once(["sleep", "3600"], [sys.executable, "-c", "print('quick')"], timeout=2)
    assert _children() == before  # the sleeper was killed and reaped: no child left, not even a zombie
