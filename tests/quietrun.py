"""The check that a demo run printed nothing but its steps (tests/test_demo*.py)."""
from __future__ import annotations

import re
import subprocess


def assert_quiet_demo(proc: subprocess.CompletedProcess, steps: int) -> None:
    """A clean run prints nothing on stderr: no GDAL message, no Python warning
    (NotGeoreferencedWarning, BLOCKSIZE, ...), no log line of any level; its ``steps``
    numbered steps (``[1/N] ...``) and the summary go to stdout."""
    assert proc.stderr == "", proc.stderr[-3000:]
    printed = [ln.split("]", 1)[0] + "]" for ln in proc.stdout.splitlines() if re.match(r"^\[\d+/\d+\] ", ln)]
    assert printed == [f"[{i}/{steps}]" for i in range(1, steps + 1)], printed
    assert "warning" not in proc.stdout.lower()
