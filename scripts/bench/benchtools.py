"""Helpers shared by the benchmarks: timing, and the machine and load a figure ran on."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def timed(fn):
    """``(wall s, process CPU s, fn())`` of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def best_thread_cpu(fn, repeat: int) -> float:
    """Least CPU time of the calling thread over ``repeat`` calls of ``fn`` (CPU time: robust on a
    shared machine; one thread: what a kernel costs, whoever else runs)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def load_average() -> list[float]:
    return [round(x, 1) for x in os.getloadavg()]


def machine(load_before: list[float]) -> dict:
    """The machine a run measured on, with the load average before and after it."""
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "load_avg_before": load_before, "load_avg_after": load_average()}


def emit(result: dict, out: str | None) -> None:
    """Print ``result`` as one JSON line, and write it to ``out`` when given."""
    line = json.dumps(result)
    print(line)
    if out:
        Path(out).write_text(line + "\n")
