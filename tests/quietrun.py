"""The check that a demo run printed nothing but its steps (tests/test_demo*.py)."""
from __future__ import annotations

import re
import subprocess


def assert_quiet_demo(proc: subprocess.CompletedProcess) -> None:
    """A clean run prints nothing on stderr: no GDAL message, no Python warning
    (NotGeoreferencedWarning, BLOCKSIZE, ...), no log line of any level; its four steps
    and the summary go to stdout."""
    assert proc.stderr == "", proc.stderr[-3000:]
    assert [ln[:5] for ln in proc.stdout.splitlines() if re.match(r"^\[\d/4\] ", ln)] == [
        "[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert "warning" not in proc.stdout.lower()
