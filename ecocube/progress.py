"""Progress bars with ETA for long local operations, shown only on a terminal.

A bar goes to stderr when stderr is a TTY (a person watching); in logs, CI and Slurm jobs
(stderr a file or a pipe) there is none, so a log holds no carriage-return noise. Callers
pass ``enabled=True/False`` to force it (``--progress/--no-progress``).
"""

from __future__ import annotations

import sys
from typing import IO


def stderr_is_terminal(stream: IO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def progress_bar(total: int | None, *, desc: str | None = None, unit: str = "it", enabled: bool | None = None,
                 stream: IO | None = None):
    """A ``tqdm`` bar (count, rate, elapsed and ETA) on stderr; disabled (no output at all)
    unless ``enabled`` or, with ``enabled=None``, stderr is a terminal."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    show = stderr_is_terminal(stream) if enabled is None else bool(enabled)
    # a terminal that reports no size (0 x 0, e.g. a fresh pseudo-terminal) gets 80 x 24: tqdm
    # would otherwise draw a bar 0 columns wide and hide it below a screen 0 rows high
    columns, rows = _size(stream)
    dynamic = show and columns > 0
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, file=stream, dynamic_ncols=dynamic,
                ncols=None if dynamic else 80, nrows=None if rows > 0 else 24, leave=False)


def _size(stream: IO) -> tuple[int, int]:
    import os

    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return 0, 0
    return size.columns, size.lines


def parallel_with_progress(calls, *, n_jobs: int, total: int, desc: str, unit: str = "job",
                           enabled: bool | None = None) -> list:
    """``joblib.Parallel(n_jobs, prefer="threads")(calls)`` as a list in the order of ``calls``,
    advancing a :func:`progress_bar` as results come."""
    from joblib import Parallel

    out = []
    with progress_bar(total, desc=desc, unit=unit, enabled=enabled) as bar:
        for result in Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(calls):
            out.append(result)
            bar.update(1)
    return out
