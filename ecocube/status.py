"""Per-tile status records: ``status/<tile>.json`` in the output store.

A record is a small JSON document. :class:`TileStatus` is its lifecycle during one
attempt at a tile and the one place that writes it: ``process_tile`` creates one and
publishes it with ``state: running`` when it starts, refreshes its ``heartbeat`` between
blocks, and publishes the final one (``done``, ``failed`` or ``interrupted``) **last**,
after every output of the tile is published. A tile is done only when its record says so and
its outputs still match the checksums listed in the record (:func:`verify_outputs`).

Record fields (schema version 1)::

    schema, tile, run, state, attempt, host, pid, task {job_id, array_job_id,
    array_task_id}, started, finished (ISO 8601 UTC), seconds, timings {stage: s},
    peak_rss_bytes, threads, block_size, blocks, bytes_read, bytes_written, requests,
    gaps {...}, predicted_pixels, target_pixels, completeness, missing_inputs,
    outputs {key: {sha256, size}}, error, ecocube, heartbeat (ISO 8601 UTC, refreshed by
    a running tile at most every :data:`HEARTBEAT_SECONDS` between blocks)

Stale records: a tile whose process was killed with SIGKILL, whose node died or whose Slurm
job was cancelled keeps ``state: running`` for ever. :func:`stale_reason` tells such a
record apart from a live one: on the host that wrote it, the process ``pid`` is gone (or
the pid now belongs to a younger process); elsewhere, the heartbeat (else ``started``) is
older than ``stale_after`` seconds (default :data:`DEFAULT_STALE_AFTER`). Summaries report
stale tiles separately and count them among the tiles to redo.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import products as products_registry
from .errors import EcocubeError, StoreError, redact

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATUS_PREFIX = "status/"

#: every state a record can hold; ``pending`` means "no record"
STATES = ("done", "failed", "interrupted", "running", "empty", "pending")
#: the states a summary reports: ``stale`` is a ``running`` record whose process is gone
SUMMARY_STATES = ("done", "failed", "interrupted", "running", "stale", "empty", "pending")
#: finished states: nothing left to do for the tile (``empty``: no input data, by policy)
FINISHED_STATES = ("done", "empty")
#: a running tile refreshes its record's ``heartbeat`` at most this often (between blocks)
HEARTBEAT_SECONDS = 60.0
#: a running record from another host without a heartbeat for this long is stale
DEFAULT_STALE_AFTER = 3600.0


def status_key(tile_id: str) -> str:
    return f"{STATUS_PREFIX}{tile_id}.json"


def read_status(store, tile_id: str) -> dict[str, Any] | None:
    """The record of one tile, or ``None`` if there is none.

    A record that is not valid JSON (impossible with atomic writes, but a person may have
    edited it) raises :class:`StoreError` naming the key.
    """
    return _parse_record(store, tile_id, store.get_bytes_or_none(status_key(tile_id)))


def read_status_versioned(store, tile_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """The record and its store version (for a compare-and-set of the next record)."""
    data, version = store.get_versioned(status_key(tile_id))
    return _parse_record(store, tile_id, data), version


class LeaseError(StoreError):
    """Another live process holds the tile (its ``running`` record), or took it over."""

    def __init__(self, message: str, *, holder: dict[str, Any] | None = None):
        super().__init__(message)
        self.holder = holder


def holder_text(record: Mapping[str, Any]) -> str:
    """``host:pid (attempt N, heartbeat T)`` of a running record."""
    return (f"{record.get('host') or '?'}:{record.get('pid') or '?'} (attempt {record.get('attempt')}, "
            f"heartbeat {record.get('heartbeat') or record.get('started')})")


def _parse_record(store, tile_id: str, data: bytes | None) -> dict[str, Any] | None:
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


def write_status_if(store, record: Mapping[str, Any], *, version: str | None) -> str | None:
    """:func:`write_status` as a compare-and-set (see ``Store.put_bytes_if``)."""
    if record.get("state") not in STATES[:-1]:
        raise ValueError(f"invalid tile state {record.get('state')!r}; expected one of {STATES[:-1]}")
    payload = json.dumps(dict(record), indent=2, sort_keys=True, default=_json_default).encode()
    return store.put_bytes_if(payload, status_key(str(record["tile"])), version=version)


def now_iso() -> str:
    """The current UTC time as a record stores it (ISO 8601, whole seconds)."""
    from datetime import timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class TileStatus:
    """The status record of one attempt at a tile, through its whole lifecycle.

    ``create`` → ``running`` (published when the attempt starts) → ``heartbeat`` (between
    blocks, at most every ``heartbeat_seconds``) → one of ``done`` / ``failed`` /
    ``interrupted`` (published **last**). Every write of the record during processing goes
    through :meth:`_publish`; :attr:`record` is the plain dict that is written (and that
    :func:`ecocube.tile.process_tile` returns), so ``ecocube status`` and ``slurm status``
    read plain JSON. What else an attempt holds while it runs (a lease on the tile, the
    run's fingerprint) belongs in this object too.

    A missed heartbeat only logs a warning; a ``failed``/``interrupted`` record that cannot
    be written is logged (the tile's own error matters more); a ``done`` record that cannot
    be written raises :class:`StoreError` (the tile is not done without it).
    """

    def __init__(self, store, record: dict[str, Any], *, heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 clock=time.monotonic, version: str | None = None, conditional: bool = False):
        self.store = store
        self.record = record
        self.heartbeat_seconds = float(heartbeat_seconds)
        self._clock = clock
        self._last_beat = clock()
        #: the store version of the record this attempt replaces / last wrote (the lease)
        self.version = version
        self.conditional = conditional

    @classmethod
    def create(cls, store, tile_id: str, *, run: str, attempt: int, threads: int, block_size: int,
               shape: tuple[int, int], version: str, heartbeat_seconds: float = HEARTBEAT_SECONDS,
               clock=time.monotonic) -> TileStatus:
        """A new ``running`` record for attempt ``attempt`` of ``tile_id`` by this process
        (host, pid, Slurm job and task); nothing is written until :meth:`running`."""
        import os

        from .env import slurm_context

        ctx = slurm_context()
        started = now_iso()
        record = {
            "schema": SCHEMA_VERSION,
            "tile": tile_id,
            "run": run,
            "state": "running",
            "attempt": attempt,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "task": {"job_id": ctx.job_id, "array_job_id": ctx.array_job_id, "array_task_id": ctx.array_task_id},
            "started": started,
            "heartbeat": started,
            "finished": None,
            "seconds": None,
            "threads": threads,
            "block_size": block_size,
            "shape": [shape[0], shape[1]],
            "ecocube": version,
            "error": None,
        }
        return cls(store, record, heartbeat_seconds=heartbeat_seconds, clock=clock)

    @property
    def tile_id(self) -> str:
        return str(self.record["tile"])

    @property
    def state(self) -> str:
        return str(self.record["state"])

    def running(self) -> None:
        """Publish the ``running`` record (the attempt has started). Raises StoreError.

        With ``conditional`` (a lease) the record is written only if the one this attempt
        read is still there (``version``; ``None``: none at all): create-if-absent or
        compare-and-set in the store. If another process wrote in between,
        :class:`LeaseError` is raised naming it, and nothing of this attempt is written."""
        self._publish()
        self._last_beat = self._clock()

    def acquire(self, version: str | None) -> None:
        """Take the tile's lease: the ``running`` record replaces the record of ``version``."""
        self.conditional = True
        self.version = version
        self.running()

    def heartbeat(self, blocks_done: int) -> bool:
        """Refresh ``heartbeat`` and ``blocks_done`` (at most every ``heartbeat_seconds``) so
        that ``ecocube status`` can tell a live tile on another node from a dead one.
        Returns whether the record was rewritten; a failed write only logs a warning."""
        now = self._clock()
        if now - self._last_beat < self.heartbeat_seconds:
            return False
        self._last_beat = now
        self.record.update(heartbeat=now_iso(), blocks_done=blocks_done)
        try:
            self._publish()
        except LeaseError:  # another process took the tile over: stop this attempt
            raise
        except EcocubeError as exc:  # a missed heartbeat must not fail the tile
            log.warning("tile %s: could not refresh the heartbeat: %s", self.tile_id, exc)
        return True

    def done(self, results: Mapping[str, Any], measures: Mapping[str, Any]) -> dict[str, Any]:
        """Record the tile's ``results`` (outputs with checksums, counts) and ``measures``
        (``seconds``, ``timings``, ``cpu_seconds``, ``peak_rss_bytes``) and publish the ``done``
        record. Raises StoreError when it cannot be written."""
        self.record.update(results)
        self._finish("done", measures, None)
        self._publish()
        return self.record

    def empty(self, results: Mapping[str, Any], measures: Mapping[str, Any]) -> dict[str, Any]:
        """Publish an ``empty`` record: the tile has no input data at all and
        ``inputs.on_empty: record`` says so is fine; no outputs. Raises StoreError."""
        self.record.update(results)
        self._finish("empty", measures, None)
        self._publish()
        return self.record

    def failed(self, exc: BaseException, measures: Mapping[str, Any]) -> dict[str, Any]:
        """Publish a ``failed`` record with ``exc`` as the error (no outputs)."""
        return self._end("failed", exc, measures)

    def interrupted(self, exc: BaseException, measures: Mapping[str, Any]) -> dict[str, Any]:
        """Publish an ``interrupted`` record (a signal stopped the tile; nothing was published)."""
        return self._end("interrupted", exc, measures)

    def _end(self, state: str, exc: BaseException, measures: Mapping[str, Any]) -> dict[str, Any]:
        self._finish(state, measures, exc)
        try:
            self._publish()
        except Exception as err:  # noqa: BLE001 - the tile's own error matters more
            log.error("tile %s: could not write the %s status record: %s", self.tile_id, state, err)
        return self.record

    def _finish(self, state: str, measures: Mapping[str, Any], exc: BaseException | None) -> None:
        self.record["state"] = state
        self.record["finished"] = now_iso()
        self.record.update(measures)
        if exc is not None:
            self.record["error"] = redact(f"{type(exc).__name__}: {exc}")
            self.record["error_type"] = type(exc).__name__
        if state not in ("done",):
            self.record["outputs"] = {}

    def _publish(self) -> None:
        """The one place a tile's record is written during processing."""
        if not self.conditional:
            write_status(self.store, self.record)
            return
        new = write_status_if(self.store, self.record, version=self.version)
        if new is None:
            current = read_status(self.store, self.tile_id)
            who = holder_text(current) if current else "a process that has since removed it"
            raise LeaseError(f"tile {self.tile_id}: its status record was written by another process "
                             f"({who}) since this one read it; this attempt stops", holder=current)
        self.version = new


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


def tile_states(cfg, store=None, *, tiles: Iterable | None = None, threads: int = 8,
                light: bool = False) -> dict[str, dict | None]:
    """``{tile_id: record or None}`` for the tiles of the run (or ``tiles``), in grid order.

    One paged listing of ``status/`` finds the records (no request per tile without one);
    the records found are read in parallel. With ``light``, each record's ``outputs`` (one
    entry per output file: ~1,500 per tile of a real campaign, most of a record's size) is
    replaced by its count ``n_outputs`` as it is read, so the memory of a status over
    thousands of tiles does not grow with the files per tile.
    """
    from .grid import TileGrid
    from .store import store_for

    store = store_for(cfg, store)
    if tiles is None:
        tiles = TileGrid.from_config(cfg.grid).tiles_for_aoi(cfg.aoi)
    ids = [t if isinstance(t, str) else t.id for t in tiles]
    present = {k[len(STATUS_PREFIX):-len(".json")] for k in store.list(STATUS_PREFIX) if k.endswith(".json")}
    wanted = [t for t in ids if t in present]
    records: dict[str, dict | None] = dict.fromkeys(ids)
    if wanted:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(wanted)))) as pool:
            for tile_id, rec in zip(wanted, pool.map(lambda t: _read(store, t, light), wanted)):
                records[tile_id] = rec
    return records


def _read(store, tile_id: str, light: bool) -> dict[str, Any] | None:
    rec = read_status(store, tile_id)
    if light and rec is not None and "outputs" in rec:
        rec["n_outputs"] = len(rec.pop("outputs") or ())
    return rec


def check_done_outputs(store, states: Mapping[str, Mapping[str, Any] | None],
                       products: Iterable[str]) -> dict[str, dict | None]:
    """``states`` with every ``done`` record whose outputs are not all in the store turned
    into a ``failed`` one (its error names a missing file), so that a summary does not
    count as done a tile whose output was deleted. One listing per product prefix; works
    on light records (``n_outputs``), reading the full record only of a damaged tile."""
    per_tile: Counter[str] = Counter()
    for product in products:
        for key in store.list(f"{product}/"):
            parsed = products_registry.parse_tile_key(key)
            if parsed is not None:
                per_tile[parsed[1]] += 1
    out: dict[str, dict | None] = {}
    for tile_id, rec in states.items():
        if rec is not None and rec.get("state") == "done":
            n = rec.get("n_outputs", len(rec.get("outputs") or ()))
            if per_tile[tile_id] < n:
                full = read_status(store, tile_id) or {}
                present = {k for p in {k.split("/", 1)[0] for k in full.get("outputs") or ()}
                           for k in store.list(f"{p}/{tile_id}/")}
                missing = sorted(k for k in (full.get("outputs") or ()) if k not in present)
                if missing:
                    rec = {**rec, "state": "failed", "error": (
                        f"recorded done, but {len(missing)} of {n} outputs are missing from the store "
                        f"(first: {store.url(missing[0])}); redo it with 'ecocube run-tile'")}
        out[tile_id] = dict(rec) if rec is not None else None
    return out


def _epoch(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.timestamp() if t.tzinfo is not None else None


def stale_reason(record: Mapping[str, Any] | None, *, stale_after: float = DEFAULT_STALE_AFTER,
                 now: float | None = None, host: str | None = None) -> str | None:
    """Why a ``running`` record is stale, or ``None`` (not running, or plausibly alive).

    On the host that wrote the record (``host``, default this machine's name) the process
    decides: a missing pid, a zombie, or a pid now held by a process created after the tile
    started means stale. A record from another host is stale when its ``heartbeat`` (else
    ``started``) is older than ``stale_after`` seconds, or when it has neither timestamp.
    """
    if record is None or record.get("state") != "running":
        return None
    host = host if host is not None else socket.gethostname()
    now = time.time() if now is None else now
    pid = record.get("pid")
    started = _epoch(record.get("started"))
    if record.get("host") == host and isinstance(pid, int) and pid > 0:
        import psutil

        try:
            proc = psutil.Process(pid)
            created = proc.create_time()
            zombie = proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return f"process {pid} on {host} is gone"
        except psutil.AccessDenied:  # another user's live process: it exists
            return None
        if zombie:
            return f"process {pid} on {host} has exited"
        if started is not None and created > started + 1.0:  # ``started`` has 1 s resolution
            return f"pid {pid} on {host} now belongs to another process"
        return None
    beat = _epoch(record.get("heartbeat"))
    what = "heartbeat"
    if beat is None:
        beat, what = started, "start"
    where = f"{record.get('host') or 'unknown host'}:{pid}"
    if beat is None:
        return f"no heartbeat or start time from {where}"
    age = now - beat
    if age > stale_after:
        return f"no heartbeat from {where} for {age:.0f} s (last {what} {_iso(beat)}, limit {stale_after:.0f} s)"
    return None


def _iso(epoch: float) -> str:
    from datetime import timezone

    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def effective_state(record: Mapping[str, Any] | None, **stale_kw: Any) -> str:
    """The state a summary reports: the record's, ``stale`` for a dead ``running`` record,
    ``pending`` without a record (or with an unknown state)."""
    state = _recorded_state(record)
    if state == "running" and stale_reason(record, **stale_kw) is not None:
        return "stale"
    return state


def _recorded_state(record: Mapping[str, Any] | None) -> str:
    state = "pending" if record is None else str(record.get("state", "pending"))
    return state if state in STATES else "pending"


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
    stale: list[str] = field(default_factory=list)
    stale_reasons: dict[str, str] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)

    @property
    def all_done(self) -> bool:
        return self.counts.get("done", 0) == self.total

    @property
    def to_redo(self) -> list[str]:
        """Failed, interrupted and stale tiles, in grid order (what a resubmission takes
        besides the pending ones)."""
        return [t for t, s in self.states.items() if s in ("failed", "interrupted", "stale")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "counts": self.counts,
            "overall_completeness": self.overall_completeness,
            "completeness": self.completeness,
            "failed": self.failed,
            "interrupted": self.interrupted,
            "running": self.running,
            "stale": self.stale,
            "stale_reasons": self.stale_reasons,
            "pending": self.pending,
            "errors": self.errors,
        }


def summarize(states: Mapping[str, Mapping[str, Any] | None], *, stale_after: float = DEFAULT_STALE_AFTER,
              now: float | None = None, host: str | None = None) -> StatusSummary:
    """Summarise :func:`tile_states`. Tiles not done count as completeness 0 overall;
    ``running`` records whose process is gone are reported as ``stale`` (:func:`stale_reason`)."""
    counts: Counter[str] = Counter({s: 0 for s in SUMMARY_STATES})
    completeness: dict[str, float] = {}
    by_state: dict[str, list[str]] = {s: [] for s in SUMMARY_STATES}
    errors: dict[str, str] = {}
    stale_reasons: dict[str, str] = {}
    effective: dict[str, str] = {}
    host = host if host is not None else socket.gethostname()
    now = time.time() if now is None else now
    for tile_id, rec in states.items():
        state = _recorded_state(rec)
        if state == "running":
            reason = stale_reason(rec, stale_after=stale_after, now=now, host=host)
            if reason is not None:
                state = "stale"
                stale_reasons[tile_id] = reason
        counts[state] += 1
        by_state[state].append(tile_id)
        effective[tile_id] = state
        if rec is not None and state == "done":
            completeness[tile_id] = float(rec.get("completeness") or 0.0)
        else:
            completeness[tile_id] = 0.0
        if rec is not None and rec.get("error"):
            errors[tile_id] = str(rec["error"])
    total = len(states)
    overall = sum(completeness.values()) / total if total else 0.0
    return StatusSummary(
        # 'empty' (a policy state) is listed only when it occurs: the counts keep their old keys
        counts={k: v for k, v in counts.items() if k != "empty" or v},
        completeness=completeness,
        overall_completeness=overall,
        failed=by_state["failed"],
        interrupted=by_state["interrupted"],
        running=by_state["running"],
        pending=by_state["pending"],
        total=total,
        errors=errors,
        stale=by_state["stale"],
        stale_reasons=stale_reasons,
        states=effective,
    )


def format_summary(summary: StatusSummary) -> str:
    """One line of counts, overall completeness, and the failed ids."""
    c = summary.counts
    line = (f"{summary.total} tiles: {c.get('done', 0)} done, "
            + (f"{c['empty']} empty (no input data), " if c.get("empty") else "")
            + f"{c.get('failed', 0)} failed, "
            f"{c.get('interrupted', 0)} interrupted, {c.get('running', 0)} running, "
            f"{c.get('stale', 0)} stale, {c.get('pending', 0)} pending; "
            f"completeness {100 * summary.overall_completeness:.1f} %")
    if summary.failed:
        line += "\nfailed: " + " ".join(summary.failed)
    if summary.stale:
        line += "\nstale (process gone, still recorded as running): " + " ".join(summary.stale)
    return line


def format_table(states: Mapping[str, Mapping[str, Any] | None],
                 stale_reasons: Mapping[str, str] | None = None) -> str:
    """A fixed-width table: tile, state, attempt, completeness, seconds, host, error.

    Tiles in ``stale_reasons`` (:attr:`StatusSummary.stale_reasons`) show state ``stale``
    and the reason in place of an error."""
    stale_reasons = stale_reasons or {}
    rows = [("tile", "state", "attempt", "complete", "seconds", "host", "error")]
    for tile_id, rec in states.items():
        if rec is None:
            rows.append((tile_id, "pending", "", "", "", "", ""))
            continue
        comp = rec.get("completeness")
        secs = rec.get("seconds")
        err = str(rec.get("error") or stale_reasons.get(tile_id) or "").splitlines()[0:1]
        rows.append((
            tile_id,
            "stale" if tile_id in stale_reasons else str(rec.get("state")),
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


# --------------------------------------------------------------------------- the store's campaign

#: the store's campaign marker: the fingerprint of the settings its tiles are made with
CAMPAIGN_KEY = f"{STATUS_PREFIX}campaign.json"


def read_campaign(store) -> tuple[dict[str, Any] | None, str | None]:
    """The store's campaign marker and its version (None, None when there is none)."""
    data, version = store.get_versioned(CAMPAIGN_KEY)
    if data is None:
        return None, None
    try:
        return json.loads(data), version
    except ValueError as exc:
        raise StoreError(f"campaign marker {store.url(CAMPAIGN_KEY)} is not valid JSON: {exc}") from None


def _campaign_marker(fingerprint: Mapping[str, Any], run: str) -> bytes:
    import os

    record = {"run": run, "fingerprint": dict(fingerprint), "host": socket.gethostname(), "pid": os.getpid(),
              "started": now_iso()}
    return json.dumps(record, indent=2, sort_keys=True).encode()


#: tile records read at once (in parallel) while looking for a tile that keeps a campaign in use
CAMPAIGN_CHECK_BATCH = 16


def _campaign_in_use(store, marker: Mapping[str, Any], *, overwrite: bool,
                     threads: int = CAMPAIGN_CHECK_BATCH) -> str | None:
    """Why the store's campaign ``marker`` may not be replaced (None: it may): its process
    still runs on this host, tiles of it are being made now, or (without ``overwrite``) tiles
    of it are done.

    Only when another campaign asks: the tile records are read ``threads`` at a time, in the
    listing's order, and the check stops after the first batch holding such a tile (a refused
    run on a finished store of thousands of tiles reads one batch). A store it may take over
    (only failed attempts, or done tiles with ``overwrite``) has every record read."""
    sha = (marker.get("fingerprint") or {}).get("sha256")
    if marker.get("host") == socket.gethostname() and stale_reason({**marker, "state": "running"}) is None:
        return f"its run {marker.get('host')}:{marker.get('pid')} is still running"
    ids = [k[len(STATUS_PREFIX):-len(".json")] for k in store.list(STATUS_PREFIX)
           if k.endswith(".json") and k != CAMPAIGN_KEY]
    batch = max(1, threads)
    with ThreadPoolExecutor(max_workers=max(1, min(batch, len(ids) or 1))) as pool:
        for start in range(0, len(ids), batch):
            records = [r for r in pool.map(lambda t: _read(store, t, True), ids[start:start + batch])
                       if r is not None and (r.get("fingerprint") or {}).get("sha256") == sha]
            more = start + batch < len(ids)  # records not read: the tiles named may not be all
            running = sorted(r["tile"] for r in records if r.get("state") == "running" and stale_reason(r) is None)
            if running:
                return f"its tiles are being made now ({_some(running, more)})"
            done = sorted(r["tile"] for r in records if r.get("state") in FINISHED_STATES)
            if done and not overwrite:
                return f"its tiles are done ({_some(done, more)})"
    return None


def _some(tiles: list[str], more: bool) -> str:
    """The first five of ``tiles``, with ' ...' when there are (or may be) others."""
    return ", ".join(tiles[:5]) + (" ..." if more or len(tiles) > 5 else "")


def claim_campaign(store, fingerprint: Mapping[str, Any], *, run: str, overwrite: bool = False,
                   takeover: bool = True) -> dict[str, Any]:
    """Make the store this campaign's, or refuse: one store prefix holds the tiles of one
    set of settings (:mod:`ecocube.fingerprint`), also while two runs start at once.

    The marker (:data:`CAMPAIGN_KEY`) is written create-if-absent; a marker of the same
    fingerprint is this campaign's (any number of processes share it). A marker of other
    settings is replaced (compare-and-set) only when ``takeover`` and nothing of that
    campaign is in use (:func:`_campaign_in_use`; ``overwrite`` lets its done tiles be
    redone), else :class:`~ecocube.fingerprint.FingerprintMismatch` (exit 2) names the
    differing keys. A run checks again before each tile with ``takeover=False``: a run
    whose store was claimed by another campaign meanwhile stops instead of mixing.
    Returns the marker in force."""
    from .fingerprint import FingerprintMismatch, fingerprint_diff, summarize_keys

    mine = _campaign_marker(fingerprint, run)
    for _ in range(5):
        marker, version = read_campaign(store)
        if marker is None:
            if store.put_bytes_if(mine, CAMPAIGN_KEY, version=None) is not None:
                return json.loads(mine)
            continue  # another process wrote it first: compare with theirs
        theirs = marker.get("fingerprint") or {}
        if theirs.get("sha256") == fingerprint.get("sha256"):
            return marker
        keys = fingerprint_diff(theirs, fingerprint) or ["(the marker has no fingerprint)"]
        where = store.url(CAMPAIGN_KEY).removesuffix("/" + CAMPAIGN_KEY)
        what = (f"store {where} holds campaign {marker.get('run')!r} with other settings than this run's "
                f"(differing: {summarize_keys(keys)}; claimed by {marker.get('host')}:{marker.get('pid')} at "
                f"{marker.get('started')})")
        if not takeover:
            raise FingerprintMismatch(f"{what}, claimed while this run was running; stopping rather than mixing "
                                      "two campaigns' tiles")
        busy = _campaign_in_use(store, marker, overwrite=overwrite)
        if busy:
            hint = "" if overwrite or "done" not in busy else ", or --overwrite to redo its tiles with these settings"
            raise FingerprintMismatch(f"{what}: {busy}; refusing to mix two campaigns in one store: use another "
                                      f"output.store{hint}")
        if store.put_bytes_if(mine, CAMPAIGN_KEY, version=version) is not None:
            log.warning("%s: nothing of it is in use; the store is this run's campaign now", what)
            return json.loads(mine)
    raise StoreError(f"cannot claim {store.url(CAMPAIGN_KEY)}: it kept changing (runs starting at the same time?)")
