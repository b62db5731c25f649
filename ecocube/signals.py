"""Stop signals for long-running commands: SIGINT and SIGTERM handled explicitly.

A process started in the background by a non-interactive shell (``scripts/test.sh &``,
``nohup``, some schedulers) inherits SIGINT *ignored*; Python then installs no
``KeyboardInterrupt`` handler, and a command that relies on it ignores Ctrl-C and
``kill -INT`` for ever. :func:`handle_stop_signals` installs handlers whatever the
inherited dispositions are. (Tile processing stops more gently, after the current block:
``ecocube.tile.stop_on_signals``, installed on top of these while tiles run.)
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """Raised in the main thread by SIGINT/SIGTERM while :func:`handle_stop_signals` is active.

    A ``KeyboardInterrupt`` so that ``except Exception`` in library code does not swallow
    it, while ``finally`` blocks (temporary files, servers) still run. ``128 + signum`` is
    the conventional exit code.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def handle_stop_signals(signals=STOP_SIGNALS) -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` in the main thread inside the block.

    The previous handlers are restored afterwards (commands may run in-process, e.g. in
    tests). Outside the main thread signals cannot be handled; the block then runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _stop(signum, frame):
        raise Stopped(signum)

    previous = {s: signal.signal(s, _stop) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
