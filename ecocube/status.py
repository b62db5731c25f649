"""Per-tile status records: ``status/<tile>.json`` in the output store.

A record is a small JSON document. ``process_tile`` writes one with ``state: running``
when it starts and the final one (``done``, ``failed`` or ``interrupted``) **last**, after
every output of the tile is published. A tile is done only when its record says so and
its outputs still match the checksums listed in the record (:func:`verify_outputs`).

Record fields (schema version 1)::

    schema, tile, run, state, attempt, host, pid, task {job_id, array_job_id,
    array_task_id}, started, finished (ISO 8601 UTC), seconds, timings {stage: s},
    peak_rss_bytes, threads, block_size, blocks, bytes_read, bytes_written, requests,
    gaps {...}, predicted_pixels, target_pixels, completeness, missing_inputs,
    outputs {key: {sha256, size}}, error, ecocube
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .errors import StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATUS_PREFIX = "status/"

#: every state a record can hold; ``pending`` means "no record"
STATES = ("done", "failed", "interrupted", "running", "pending")


def status_key(tile_id: str) -> str:
    return f"{STATUS_PREFIX}{tile_id}.json"


def read_status(store, tile_id: str) -> dict[str, Any] | None:
    """The record of one tile, or ``None`` if there is none.

    A record that is not valid JSON (impossible with atomic writes, but a person may have
    edited it) raises :class:`StoreError` naming the key.
    """
    data = store.get_bytes_or_none(status_key(tile_id))
    if data is None:
        return None
    try:
        record = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"status record {store.url(status_key(tile_id))} is not valid JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("tile") != tile_id:
        raise StoreError(f"status record {store.url(status_key(tile_id))} does not describe tile {tile_id}")
    return record


def write_status(store, record: Mapping[str, Any]) -> None:
    """Publish a record atomically (temp + rename locally, one PUT on S3)."""
    if record.get("state") not in STATES[:-1]:
        raise ValueError(f"invalid tile state {record.get('state')!r}; expected one of {STATES[:-1]}")
    payload = json.dumps(dict(record), indent=2, sort_keys=True, default=_json_default).encode()
    store.put_bytes(payload, status_key(str(record["tile"])))


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def verify_outputs(store, record: Mapping[str, Any], *, threads: int = 8) -> list[str]:
    """Problems with the outputs a record lists (missing, other size, other checksum).

    An empty list means every output is present and matches. On S3 the checksum is the
    ``sha256`` metadata written with the object (no download); locally the file is hashed.
    """
    outputs: Mapping[str, Mapping[str, Any]] = record.get("outputs") or {}

    def _check(item: tuple[str, Mapping[str, Any]]) -> str | None:
        key, expected = item
        try:
            info = store.info(key)
        except StoreError as exc:
            return f"{key}: {exc}"
        if info.size != expected.get("size"):
            return f"{key}: size {info.size} != {expected.get('size')}"
        if info.sha256 != expected.get("sha256"):
            return f"{key}: sha256 {info.sha256} != {expected.get('sha256')}"
        return None

    if not outputs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(outputs)))) as pool:
        return [p for p in pool.map(_check, sorted(outputs.items())) if p]


def tile_states(cfg, store=None, *, tiles: Iterable | None = None, threads: int = 8) -> dict[str, dict | None]:
    """``{tile_id: record or None}`` for the tiles of the run (or ``tiles``), in grid order."""
    from .grid import TileGrid
    from .store import open_store

    store = store if store is not None else open_store(cfg.output)
    if tiles is None:
        tiles = TileGrid.from_config(cfg.grid).tiles_for_aoi(cfg.aoi)
    ids = [t if isinstance(t, str) else t.id for t in tiles]
    present = {k[len(STATUS_PREFIX):-len(".json")] for k in store.list(STATUS_PREFIX) if k.endswith(".json")}
    wanted = [t for t in ids if t in present]
    records: dict[str, dict | None] = dict.fromkeys(ids)
    if wanted:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(wanted)))) as pool:
            for tile_id, rec in zip(wanted, pool.map(lambda t: read_status(store, t), wanted)):
                records[tile_id] = rec
    return records


@dataclass
class StatusSummary:
    """Counts per state, completeness per tile and overall, failed tile ids."""

    counts: dict[str, int]
    completeness: dict[str, float]
    overall_completeness: float
    failed: list[str]
    interrupted: list[str]
    running: list[str]
    pending: list[str]
    total: int
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def all_done(self) -> bool:
        return self.counts.get("done", 0) == self.total

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "counts": self.counts,
            "overall_completeness": self.overall_completeness,
            "completeness": self.completeness,
            "failed": self.failed,
            "interrupted": self.interrupted,
            "running": self.running,
            "pending": self.pending,
            "errors": self.errors,
        }


def summarize(states: Mapping[str, Mapping[str, Any] | None]) -> StatusSummary:
    """Summarise :func:`tile_states`. Tiles not done count as completeness 0 overall."""
    counts: Counter[str] = Counter({s: 0 for s in STATES})
    completeness: dict[str, float] = {}
    by_state: dict[str, list[str]] = {s: [] for s in STATES}
    errors: dict[str, str] = {}
    for tile_id, rec in states.items():
        state = "pending" if rec is None else str(rec.get("state", "pending"))
        if state not in counts:
            state = "pending"
        counts[state] += 1
        by_state[state].append(tile_id)
        if rec is not None and state == "done":
            completeness[tile_id] = float(rec.get("completeness") or 0.0)
        else:
            completeness[tile_id] = 0.0
        if rec is not None and rec.get("error"):
            errors[tile_id] = str(rec["error"])
    total = len(states)
    overall = sum(completeness.values()) / total if total else 0.0
    return StatusSummary(
        counts=dict(counts),
        completeness=completeness,
        overall_completeness=overall,
        failed=by_state["failed"],
        interrupted=by_state["interrupted"],
        running=by_state["running"],
        pending=by_state["pending"],
        total=total,
        errors=errors,
    )


def format_summary(summary: StatusSummary) -> str:
    """One line of counts, overall completeness, and the failed ids."""
    c = summary.counts
    line = (f"{summary.total} tiles: {c.get('done', 0)} done, {c.get('failed', 0)} failed, "
            f"{c.get('interrupted', 0)} interrupted, {c.get('running', 0)} running, "
            f"{c.get('pending', 0)} pending; completeness {100 * summary.overall_completeness:.1f} %")
    if summary.failed:
        line += "\nfailed: " + " ".join(summary.failed)
    return line


def format_table(states: Mapping[str, Mapping[str, Any] | None]) -> str:
    """A fixed-width table: tile, state, attempt, completeness, seconds, host, error."""
    rows = [("tile", "state", "attempt", "complete", "seconds", "host", "error")]
    for tile_id, rec in states.items():
        if rec is None:
            rows.append((tile_id, "pending", "", "", "", "", ""))
            continue
        comp = rec.get("completeness")
        secs = rec.get("seconds")
        err = str(rec.get("error") or "").splitlines()[0:1]
        rows.append((
            tile_id,
            str(rec.get("state")),
            str(rec.get("attempt", "")),
            f"{100 * comp:.1f} %" if isinstance(comp, (int, float)) else "",
            f"{secs:.1f}" if isinstance(secs, (int, float)) else "",
            str(rec.get("host") or ""),
            (err[0][:80] if err else ""),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths)) + ("  " + r[-1] if r[-1] else "")
        for r in rows
    ).rstrip()
