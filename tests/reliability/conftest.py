"""Fixtures of the fault suite: real small file systems (tmpfs), mounted and always unmounted."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from faults import mounted_tmpfs


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)`` → a fresh tmpfs folder of that size, unmounted after the test."""
    stack = contextlib.ExitStack()

    def _make(size: str, name: str = "disk") -> Path:
        return stack.enter_context(mounted_tmpfs(tmp_path / name, size))

    with stack:
        yield _make


@pytest.fixture(params=[False, True], ids=["block-by-block", "read-ahead"])
def read_ahead(request) -> bool:
    """``processing.read_ahead`` off and on: a read fault must end the same way with both (one
    line naming the file and the tile, exit 1, nothing published)."""
    return request.param
