"""Process one tile end to end — the one place that sequences the stages.

For each processing block (``tile.blocks(cfg.processing.block_size)``), in
:meth:`_TileRun.run`, one method per step::

    read_block -> fill_gaps_config (in place) -> features_for_year (per year) -> predict_block
               -> write the year's prediction windows into the tile's local GeoTIFFs
    (beside features/predict, a second thread writes the block's cube layers;
    with ``processing.read_ahead`` a third reads the next block's files)

Every output GeoTIFF is opened once per tile and written window by window (see
:class:`TileWriter`): the few per-year prediction files, and one stacked file per cube
product and band holding every period (one raster band each: 18 files for 84 periods ×
6 bands, not 1,512), so compression runs inside the block loop and only closing and
verifying the files is left after it. Memory is bounded by the block size, not by the
tile size: one block's cube (read data filled in place, reasons, counts, flags: about
``8 × periods × bands × block_size²`` bytes, 265 MB for 84 × 6 at 256²; the reasons are
freed once counted) plus the model, the open files and the libraries
(``scripts/bench/tile.py``). When every output is written and verified the files are
published to the store (atomic per object), stale objects of earlier attempts are removed, and the status record ``status/<tile>.json`` is
written **last** (:class:`ecocube.status.TileStatus` is its lifecycle and its one writer;
a stacked output's entry lists its periods in band order). A rerun skips a tile whose
record says ``done`` and whose outputs still match the record's checksums.

SIGTERM/SIGINT (see :func:`stop_on_signals`) stop the tile after the current block:
nothing is published, the record says ``interrupted`` and :class:`Interrupted` is raised.
Any other failure writes a ``failed`` record with the error and raises
:class:`TileError` naming the tile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, products
from .chips import ChipCounts
from .covariates import predict_where, run_feature_names, year_features
from .errors import EcocubeError, Interrupted, ModelError, ReadError, StoreError, TileError
from .predict import (
    CLASS_NODATA,
    PROBA_NODATA,
    UNCERTAINTY_NODATA,
    VALUE_NODATA,
    predict_block,
    predict_regression_block,
)
from .fingerprint import FingerprintMismatch
from .rasterwrite import WindowChecksums, close_checked, gdal_errors_to_log, verify_checksums, write_window
from .status import (HEARTBEAT_SECONDS, LeaseError, TileStatus, claim_campaign, holder_text, read_status_versioned,
                     stale_reason, verify_outputs)

#: input files named in a tile's warning about misplaced inputs (and its record)
MISPLACED_SHOWN = 3

log = logging.getLogger(__name__)

PREDICTION_LAYERS = products.names(source="model")
CUBE_LAYERS = products.names(source="cube")  # stacked per band, written beside prediction: see TileWriter
COMPOSITE_NODATA = int(products.PRODUCTS["composite"].nodata)
FLAG_UNFILLED = products.FLAG_UNFILLED


# --------------------------------------------------------------------------- stages


def _read_block(cfg, tile, window, *, threads=None, fetched=None):
    from .read import read_block

    return read_block(cfg, tile, window, threads=threads, fetched=fetched)


def _fetch_block(cfg, tile, window, *, threads=None):
    from .read import fetch_block

    return fetch_block(cfg, tile, window, threads=threads)


def _fill_gaps(cube, cfg, *, threads=None):
    from .gapfill import fill_gaps_config

    # in place when possible: the tile never needs the unfilled cube again (saves a cube)
    inplace = (isinstance(cube, np.ndarray) and cube.dtype == np.float32 and cube.flags.c_contiguous
               and cube.flags.writeable)
    return fill_gaps_config(cube, cfg, threads=threads, inplace=inplace)


def _features_for_year(filled, *, bands, season_size, year_index, indices, statistics=()):
    from .features import features_for_year

    return features_for_year(filled, bands=bands, season_size=season_size, year_index=year_index, indices=indices,
                             statistics=statistics)


def _feature_names(bands, season_size, indices, statistics=()):
    from .features import feature_names

    return feature_names(bands, season_size, indices, statistics)


def _load_bundle(path, *, expected_features=None, engine="auto"):
    from .bundle import load_bundle

    return load_bundle(path, expected_features=expected_features, engine=engine)


@dataclass(frozen=True)
class Stages:
    """The stage functions :func:`process_tile` calls; the defaults are the real modules.

    Swapping one (in tests, or to plug in another gap-filler) keeps the sequencing,
    publishing and status logic unchanged.
    """

    read_block: Callable = _read_block  # returns a fresh cube: the default fill_gaps overwrites it
    fill_gaps: Callable = _fill_gaps
    features_for_year: Callable = _features_for_year
    feature_names: Callable = _feature_names
    load_bundle: Callable = _load_bundle
    predict_block: Callable = predict_block
    predict_regression_block: Callable = predict_regression_block


# --------------------------------------------------------------------------- stop flag


class StopFlag:
    """Set by a signal handler; :func:`process_tile` checks it between blocks.

    Wraps a ``threading.Event`` or a ``multiprocessing`` event (to share it with worker
    processes of :func:`run_tiles`).
    """

    def __init__(self, event=None):
        self._event = event if event is not None else threading.Event()
        self.signum: int | None = None

    def set(self, signum: int | None = None) -> None:
        self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str:
        if self.signum is None:
            return "a stop request"
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag | None = None, signals=(signal.SIGTERM, signal.SIGINT)) -> Iterator[StopFlag]:
    """Turn SIGTERM/SIGINT into ``flag.set()`` for the duration of the block.

    A second SIGINT while stopping raises ``KeyboardInterrupt`` (abort now). Outside the
    main thread signals cannot be handled; the flag is then only set by the caller.
    """
    flag = flag if flag is not None else StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def _handler(signum, frame):
        if flag.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("received %s: stopping after the current block", signal.Signals(signum).name)
        flag.set(signum)

    previous = {s: signal.signal(s, _handler) for s in signals}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class OutputSpec:
    """One output GeoTIFF of a tile. A stacked one (a per-period product) holds every period
    of the tile, raster band ``i`` the ``i``-th of ``periods`` (its band description)."""

    product: str
    period: str
    layer: str
    dtype: str
    count: int = 1
    nodata: float | None = None
    scale: float | None = None
    descriptions: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    periods: tuple[str, ...] = ()  # stacked: the period of each raster band, in band order

    def key(self, tile_id: str) -> str:
        return products.tile_key(self.product, tile_id, self.layer, self.period)

    def record_entry(self) -> dict[str, Any]:
        """What the tile's record says about this output besides its checksum and size."""
        return {"periods": list(self.periods)} if self.periods else {}


def output_key(product: str, tile_id: str, period: str | None, layer: str) -> str:
    """The store key of one output (:func:`ecocube.products.tile_key`)."""
    return products.tile_key(product, tile_id, layer, period)


def year_period(year: int, periods=None) -> str:
    """The period id of a year's outputs: its first day (``periods.year_start`` moves it)."""
    for p in periods or ():
        if getattr(p, "year", None) is not None and int(p.year) == int(year):
            return p.id
    return f"{int(year):04d}-01-01"


def plan_outputs(layers: Sequence[str], *, periods, bands: Sequence[str], years: Sequence[int],
                 classes: Sequence[int] = (), class_names: Sequence[str] = (),
                 composite_scale: float = 0.0001) -> list[OutputSpec]:
    """Every output of one tile, in a stable order: per year the model products, then per
    band the stacked per-period products (each in registry order, see :mod:`ecocube.products`):
    one file per product and band, one raster band per period."""
    legend = json.dumps({str(int(c)): str(n) for c, n in zip(classes, class_names)})
    options = {"composite_scale": composite_scale}  # output config fields a product may scale by
    chosen = [products.get(n) for n in products.names(among=layers)]
    period_ids = tuple(p.id for p in periods)

    def spec(p: products.Product, period: str, layer: str) -> OutputSpec:
        tags = {"classes": legend} if p.class_tag else {}
        if p.per_band:
            tags["band"] = layer
        tags.update(p.tags)
        scale = options[p.scale_option] if p.scale_option else p.scale
        if p.stacked:
            return OutputSpec(p.name, "", layer, p.dtype, len(period_ids), p.nodata, scale, period_ids,
                              {**tags, "periods": ",".join(period_ids)}, period_ids)
        return OutputSpec(p.name, period, layer, p.dtype, p.band_count(len(classes)), p.nodata, scale,
                          p.band_descriptions(layer, class_names), tags)

    def per(cadence: str, period: str) -> list[OutputSpec]:
        of_cadence = [p for p in chosen if p.cadence == cadence]
        out = [spec(p, period, p.name) for p in of_cadence if not p.per_band]
        for band in bands:
            out += [spec(p, period, band) for p in of_cadence if p.per_band]
        return out

    specs: list[OutputSpec] = []
    for year in years:
        specs += per("year", year_period(year, periods))
    if period_ids:
        specs += per("period", "")
    return specs


def _internal_blocksize(block_size: int) -> int:
    """The largest power of two <= 512 that divides the processing block (>= 16)."""
    for bs in (512, 256, 128, 64, 32, 16):
        if bs <= block_size and block_size % bs == 0:
            return bs
    return 256


def _tile_predictor(product: str) -> int:
    """The TIFF predictor of a product's per-tile files: horizontal differencing (2) for
    continuous values, none (1) for codes and counts (``flags``, ``count``, ``class``),
    which it makes larger and slower to write and read (1000² layers: flags 0.33 -> 0.28 MB,
    count 0.29 -> 0.27 MB; ``scripts/bench/README.md``)."""
    return 2 if products.get(product).kind == "continuous" else 1


class TileWriter:
    """The output GeoTIFFs of one tile, written window by window into a local folder.

    Every output is opened once and written block by block as the blocks come: the per-year
    prediction layers (from the main thread) and the stacked per-period cube layers —
    ``composite``, ``flags``, ``count``: one file per product and band, one raster band per
    period — from the staging thread beside prediction, so compressing them happens inside
    the block loop and nothing is left to write after it (no scratch copy, no second pass).
    A 1000² tile of 84 periods × 6 bands has 18 cube files (was 1,512 single-band files).
    Each window's CRC-32 is taken as it is written; :meth:`close` closes the files and
    re-reads every window of each (``threads`` files at a time), comparing the CRCs
    (:func:`ecocube.rasterwrite.verify_checksums`: an empty, truncated or undecodable file,
    a wrong header or a changed pixel fails; each file re-opened every
    :data:`~ecocube.rasterwrite.VERIFY_REOPEN_BYTES` read, or the re-reads fill GDAL's block
    cache). Peak memory: the open files' compression state and the block arrays, not the
    tile size.
    """

    def __init__(self, folder: Path, tile, specs: Sequence[OutputSpec], *, block_size: int,
                 compress: str | None = None, threads: int = 1):
        self.folder = folder
        self.tile = tile
        self.specs = list(specs)
        self.threads = max(1, threads)
        self._datasets: dict[str, Any] = {}
        self._paths: dict[str, Path] = {}
        self._blocksize = _internal_blocksize(block_size)
        self._compress = compress
        self._sums: dict[str, WindowChecksums] = {}
        self._specs_by_key = {s.key(tile.id): s for s in self.specs}
        self._ensure_file_limit(len(self.specs) + self.threads + 64)
        try:
            for spec in self.specs:
                self._open(spec)
        except BaseException:
            self.abort()
            raise

    @staticmethod
    def _ensure_file_limit(needed: int) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            if hard != resource.RLIM_INFINITY and hard < needed:
                raise TileError(f"a tile has {needed} outputs open at once but the open-file limit is {hard}; "
                                "raise 'ulimit -n' or write fewer layers")
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))

    def _path(self, spec: OutputSpec) -> Path:
        key = spec.key(self.tile.id)
        path = self.folder.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _create(self, spec: OutputSpec, path: Path):
        import rasterio

        from .profiles import profile

        dst = rasterio.open(path, "w", **profile(
            "tile", width=self.tile.width, height=self.tile.height, count=spec.count, dtype=spec.dtype,
            crs=self.tile.crs, transform=self.tile.transform, nodata=spec.nodata,
            blockxsize=self._blocksize, blockysize=self._blocksize, predictor=_tile_predictor(spec.product),
            **({"compress": self._compress} if self._compress else {})))
        try:
            for i, desc in enumerate(spec.descriptions[: spec.count], start=1):
                dst.set_band_description(i, desc)
            if spec.scale is not None:
                dst.scales = (spec.scale,) * spec.count
                dst.offsets = (0.0,) * spec.count
            dst.update_tags(tile=self.tile.id, product=spec.product, ecocube_version=__version__,
                            **({"period": spec.period} if spec.period else {}), **spec.tags)
        except BaseException:
            dst.close()
            raise
        return dst

    def _open(self, spec: OutputSpec) -> None:
        key = spec.key(self.tile.id)
        path = self._path(spec)
        self._datasets[key] = self._create(spec, path)
        self._sums[key] = WindowChecksums(spec.dtype)
        self._paths[key] = path

    def write(self, items: Sequence[tuple[str, np.ndarray]], window) -> None:
        """Write ``(key, array (count, h, w) or (h, w))`` pairs into ``window``, ``threads``
        files at a time. Two threads may write at once (prediction and cube layers), each
        to its own files."""

        def _one(item):
            key, arr = item
            write_window(self._datasets[key], arr if arr.ndim == 3 else arr[None], window, self._paths[key],
                         self._sums[key])

        if self.threads == 1 or len(items) < 4:
            for it in items:
                _one(it)
        else:
            with ThreadPoolExecutor(max_workers=self.threads) as pool:
                list(pool.map(_one, items))

    @property
    def paths(self) -> dict[str, Path]:
        return dict(self._paths)

    def record_entries(self) -> dict[str, dict[str, Any]]:
        """Per output key, what its record entry says besides checksum and size (stacked: periods)."""
        return {k: s.record_entry() for k, s in self._specs_by_key.items() if s.record_entry()}

    def _finish(self, key: str) -> None:
        """Close one output (GDAL errors while flushing fail it), then check every window it
        was written with reads back with the same CRC-32."""
        dst = self._datasets[key]
        close_checked(dst, self._paths[key])
        verify_checksums(self._paths[key], self._sums[key], width=int(self.tile.width),
                         height=int(self.tile.height), count=self._specs_by_key[key].count)

    def close(self) -> None:
        """Close and verify every output, ``threads`` at a time (largest files first)."""
        errors = []
        keys = sorted(self._datasets, key=lambda k: -self._specs_by_key[k].count)
        with ThreadPoolExecutor(max_workers=max(1, min(self.threads, len(keys) or 1))) as pool:
            futures = [pool.submit(self._finish, k) for k in keys]
            for fut in futures:
                exc = fut.exception()
                if exc is not None:
                    errors.append(exc)
        self._datasets.clear()
        if errors:
            first = errors[0]
            msg = f"{len(errors)} of {len(self.specs)} outputs of tile {self.tile.id} failed; first: {first}"
            if isinstance(first, StoreError):  # a write error: keep its type, errno and file
                err = StoreError(msg)
                err.errno, err.path = first.errno, getattr(first, "path", None)
                raise err from first
            raise TileError(msg, tile=self.tile.id) from first

    def abort(self) -> None:
        """Close everything without verifying and delete the files (the tile is abandoned)."""
        for dst in list(self._datasets.values()):
            with contextlib.suppress(Exception), gdal_errors_to_log():
                dst.close()
        self._datasets.clear()
        for path in self._paths.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._paths.clear()


# --------------------------------------------------------------------------- process_tile


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _tile_prefixes(tile_id: str) -> list[str]:
    return [f"{p}/{tile_id}/" for p in products.NAMES]


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    t = os.times()
    return t.user + t.system


class _Timer:
    """Wall and process CPU seconds per stage (CPU / wall ≈ the cores a stage kept busy)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t0, c0 = time.perf_counter(), _cpu_seconds()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
            self.cpu[stage] = self.cpu.get(stage, 0.0) + _cpu_seconds() - c0

    def measures(self, t_start: float) -> dict[str, Any]:
        """The record's ``seconds`` since ``t_start``, ``timings``, ``cpu_seconds`` and ``peak_rss_bytes``."""
        return {
            "seconds": round(time.perf_counter() - t_start, 3),
            "timings": {k: round(v, 3) for k, v in self.seconds.items()},
            "cpu_seconds": {k: round(v, 3) for k, v in self.cpu.items()},
            "peak_rss_bytes": peak_rss_bytes(),
        }


def _count_codes(codes: np.ndarray) -> np.ndarray:
    """Histogram of uint8 codes, slice by slice: ``np.bincount`` casts its input to int64,
    which for a whole block's cube (84 × 6 × 256² values) is a 264 MB temporary."""
    arr = np.asarray(codes, dtype=np.uint8)
    counts = np.zeros(256, dtype=np.int64)
    for part in (arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr[None]):
        counts += np.bincount(part, minlength=256)
    return counts


class _GapStats:
    """Counts of flag codes, read reasons and clipped composite values over the tile."""

    def __init__(self):
        self.flags = np.zeros(256, dtype=np.int64)
        self.reasons = np.zeros(256, dtype=np.int64)
        self.clipped = 0

    def add(self, flags: np.ndarray, reason: np.ndarray | None) -> None:
        self.flags += _count_codes(flags)
        if reason is not None:
            self.reasons += _count_codes(reason)

    def to_dict(self) -> dict[str, Any]:
        total = int(self.flags.sum())
        observed = int(self.flags[0])
        unfilled = int(self.flags[FLAG_UNFILLED])
        reason_names = {0: "valid", 1: "masked", 2: "nodata", 3: "missing"}
        return {
            "values": total,
            "observed": observed,
            "filled": total - observed - unfilled,
            "unfilled": unfilled,
            "observed_fraction": observed / total if total else 0.0,
            "unfilled_fraction": unfilled / total if total else 0.0,
            "flag_counts": {str(i): int(n) for i, n in enumerate(self.flags) if n},
            "reason_counts": {reason_names.get(i, str(i)): int(n) for i, n in enumerate(self.reasons) if n},
            "composite_clipped": int(self.clipped),
        }


def _to_composite(filled: np.ndarray, scale: float, stats: _GapStats) -> np.ndarray:
    scaled = np.rint(filled / np.float32(scale))
    finite = np.isfinite(scaled)
    over = finite & ((scaled > 32767) | (scaled < -32767))
    stats.clipped += int(over.sum())
    out = np.clip(np.where(finite, scaled, 0), -32767, 32767).astype(np.int16)
    out[~finite] = COMPOSITE_NODATA
    return out


def _stage_cube(writer: TileWriter, tile_id: str, window, periods, bands, layers, filled: np.ndarray,
                flags: np.ndarray, count: np.ndarray | None, scale: float, stats: _GapStats) -> None:
    """Write one block's cube layers (``composite``, ``flags``, ``count``): per band, one
    ``(periods, h, w)`` window of each product's stacked file.

    The int16 composite is made one ``(h, w)`` slice at a time into the band's output:
    converting a whole band at once held about four float32 copies of it.
    """
    def composite(b: int) -> np.ndarray:
        out = np.empty((filled.shape[0],) + filled.shape[2:], np.int16)
        for t in range(filled.shape[0]):
            out[t] = _to_composite(filled[t, b], scale, stats)
        return out

    # the values of each cube product for band b, all periods: the one place a new cube
    # product (see ecocube.products) plugs in what it computes
    values = {
        "composite": composite,
        "flags": lambda b: np.ascontiguousarray(flags[:, b]),
        "count": lambda b: np.ascontiguousarray(count[:, b], dtype=np.uint16),
    }
    wanted = products.names(source="cube", among=layers)
    for b, band in enumerate(bands):
        writer.write([(output_key(name, tile_id, None, band), values[name](b)) for name in wanted], window)


def process_tile(tile, cfg, *, store=None, bundle=None, overwrite: bool = False, threads: int | None = None,
                 stages: Stages | None = None, stop: StopFlag | None = None,
                 campaign: str | None = None) -> dict[str, Any]:
    """Read, gap-fill, predict and write one tile; returns its status record.

    ``campaign``: ``"claim"`` makes the store this run's campaign first
    (:func:`ecocube.status.claim_campaign`: refused, exit 2, while another campaign with
    other settings uses it), ``"check"`` only checks that the store's campaign is still this
    run's (``run_tiles`` claims once, then checks before each tile); None (library use on a
    store of its own) neither.

    A tile already ``done`` whose outputs match the record is skipped (the record is
    returned with ``"skipped": True``) unless ``overwrite``. ``bundle`` defaults to
    ``load_bundle(cfg.model.path, expected_features=...)`` when a prediction layer is
    requested. ``threads`` defaults to ``cfg.processing.threads`` or the allocation, and is
    used by reading, gap-filling, prediction and the final GeoTIFF writing, which run one
    after the other; staging the cube layers runs beside features and prediction. The
    record's ``timings`` and ``cpu_seconds`` (process CPU per stage) show how many cores
    each stage kept busy.
    """
    from .env import available_threads
    from .store import store_for

    stages = stages or Stages()
    threads = available_threads(threads or cfg.processing.threads)
    store = store_for(cfg, store, tmp_dir=cfg.processing.tmp_dir)
    t_start = time.perf_counter()

    previous, version = _previous_record(store, tile)
    holder = _live_holder(previous)
    if holder is not None:  # another live process has the tile's lease: never trample it
        log.warning("tile %s: held by %s; skipped", tile.id, holder_text(holder))
        return {**holder, "held": True}
    fingerprint = run_fingerprint_of(cfg)
    check_fingerprint(tile.id, previous, fingerprint, overwrite=overwrite)
    if campaign is not None:
        claim_campaign(store, fingerprint, run=cfg.name, overwrite=overwrite, takeover=campaign == "claim")
    if _still_done(store, tile, previous, cfg, overwrite):
        return {**previous, "skipped": True}
    try:
        status, work = _start_attempt(store, tile, cfg, previous, threads, version=version, fingerprint=fingerprint)
    except LeaseError as exc:  # lost the race for the lease to another process
        log.warning("%s", exc)
        return {**(exc.holder or {"tile": tile.id, "state": "running"}), "held": True}

    run = _TileRun(tile, cfg, store, status, bundle=bundle, stages=stages, threads=threads, stop=stop)
    timer = run.timer
    try:
        try:
            results = run.run(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except Interrupted as exc:
        exc.record = status.interrupted(exc, timer.measures(t_start))  # type: ignore[attr-defined]
        raise
    except KeyboardInterrupt as exc:
        status.interrupted(exc, timer.measures(t_start))
        raise Interrupted(f"tile {tile.id}: aborted by a second SIGINT; nothing was published") from None
    except Exception as exc:
        record = status.failed(exc, timer.measures(t_start))
        err = TileError(f"tile {tile.id} failed: {type(exc).__name__}: {exc}{_memory_hint(exc)}", tile=tile.id)
        err.record = record  # type: ignore[attr-defined]
        raise err from exc
    if results.pop("empty", False):
        record = status.empty(results, timer.measures(t_start))
        log.info("tile %s: empty (no input data), recorded", tile.id)
        return record
    try:
        record = status.done(results, timer.measures(t_start))  # LAST: the tile is done only once this exists
    except EcocubeError as exc:
        raise TileError(f"tile {tile.id}: outputs published but the status record failed: {exc}",
                        tile=tile.id) from exc
    log.info("tile %s: done in %.1f s (completeness %.3f, %d outputs)", tile.id, record["seconds"],
             record.get("completeness", 0.0), len(record.get("outputs", {})))
    return record


def _previous_record(store, tile) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return read_status_versioned(store, tile.id)
    except EcocubeError as exc:
        raise TileError(f"cannot read the status of tile {tile.id}: {exc}", tile=tile.id) from exc


def _live_holder(previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """The previous record if it is a ``running`` record of another live process (its
    lease: the pid on this host, the heartbeat elsewhere; see ``status.stale_reason``)."""
    if previous is None or previous.get("state") != "running":
        return None
    if previous.get("host") == socket.gethostname() and previous.get("pid") == os.getpid():
        return None  # this very process (an earlier call that did not finish its record)
    return previous if stale_reason(previous) is None else None


def run_fingerprint_of(cfg) -> dict[str, Any]:
    """The fingerprint (:mod:`ecocube.fingerprint`) of this configuration, model bundle and version."""
    from .bundle import read_bundle_metadata
    from .fingerprint import run_fingerprint

    model_sha = None
    if any(layer in PREDICTION_LAYERS for layer in cfg.output.layers) and Path(cfg.model.path).exists():
        with contextlib.suppress(EcocubeError):
            model_sha = read_bundle_metadata(cfg.model.path).get("model_sha256")
    return run_fingerprint(cfg, model_sha256=model_sha, version=__version__)


def check_store_fingerprints(cfg, tiles, *, store=None) -> None:
    """Before a run starts anything: :class:`FingerprintMismatch` (exit 2) if any of the
    ``tiles`` is done in the store with other settings, model or version than ``cfg``."""
    from .fingerprint import FingerprintMismatch, fingerprint_diff, summarize_keys
    from .status import tile_states

    fingerprint = run_fingerprint_of(cfg)
    differing: dict[str, list[str]] = {}
    for tile_id, rec in tile_states(cfg, store, tiles=tiles, light=True).items():
        if rec is not None and rec.get("state") == "done":
            theirs = rec.get("fingerprint")
            keys = fingerprint_diff(theirs, fingerprint) if theirs else ["(no fingerprint: an older ecocube)"]
            if keys:
                differing[tile_id] = keys
    if differing:
        keys = sorted({k for ks in differing.values() for k in ks})
        ids = sorted(differing)
        raise FingerprintMismatch(
            f"{len(ids)} of {len(tiles)} tiles are done in {cfg.output.store} with other settings than this "
            f"run's (differing: {summarize_keys(keys)}; tiles {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}); "
            "refusing to mix them: use --overwrite to redo them with these settings, or another output.store")


def plan_run(cfg, tiles, *, store=None, overwrite: bool = False) -> dict[str, list[str]]:
    """Which of ``tiles`` a run would process and which it would skip, from their status
    records alone (``ecocube run --dry-run``; the run itself also re-checks a done tile's
    outputs against its record): ``{"process": [ids], "skip": [ids]}``, in the given order."""
    from .status import effective_state, tile_states

    records = tile_states(cfg, store, tiles=tiles, light=True)
    out: dict[str, list[str]] = {"process": [], "skip": []}
    for tile_id, rec in records.items():
        state = effective_state(rec)
        finished = state == "done" or (state == "empty" and cfg.inputs.on_empty == "record")
        out["skip" if finished and not overwrite else "process"].append(tile_id)
    return out


def check_fingerprint(tile_id: str, previous: dict[str, Any] | None, fingerprint: dict[str, Any], *,
                      overwrite: bool) -> None:
    """A done tile made with other settings, model or version is not mixed with this run:
    :class:`FingerprintMismatch` (exit 2) names the differing keys, unless ``overwrite``."""
    from .fingerprint import FingerprintMismatch, fingerprint_diff, summarize_keys

    if overwrite or previous is None or previous.get("state") != "done":
        return
    theirs = previous.get("fingerprint")
    keys = fingerprint_diff(theirs, fingerprint) if theirs else ["(no fingerprint: made by an older ecocube)"]
    if keys:
        raise FingerprintMismatch(
            f"tile {tile_id} is done with other settings than this run's (differing: {summarize_keys(keys)}); "
            "refusing to mix them in one store: use --overwrite to redo it with these, or another output.store")


def _still_done(store, tile, previous: dict[str, Any] | None, cfg, overwrite: bool) -> bool:
    """Whether the previous attempt is done and its outputs still match its record."""
    if previous is None or overwrite:
        return False
    if previous.get("state") == "empty" and cfg.inputs.on_empty == "record":
        log.info("tile %s: recorded empty (no input data); skipping", tile.id)
        return True
    if previous.get("state") != "done":
        return False
    problems = verify_outputs(store, previous, threads=cfg.processing.publish_threads)
    if not problems:
        log.info("tile %s: done (attempt %s), outputs verified; skipping", tile.id, previous.get("attempt"))
        return True
    log.warning("tile %s: record says done but %d outputs do not match (%s); redoing it",
                tile.id, len(problems), problems[0])
    return False


def _start_attempt(store, tile, cfg, previous: dict[str, Any] | None, threads: int, *, version: str | None,
                   fingerprint: dict[str, Any]) -> tuple[TileStatus, Path]:
    """Take the tile's lease (the ``running`` record, written only if the record read as
    ``version`` is still there: :class:`LeaseError` otherwise), clear leftovers of an
    earlier attempt, make the scratch folder."""
    attempt = int(previous.get("attempt") or 0) + 1 if previous else 1
    status = TileStatus.create(store, tile.id, run=cfg.name, attempt=attempt, threads=threads,
                               block_size=cfg.processing.block_size, shape=(tile.height, tile.width),
                               version=__version__, heartbeat_seconds=HEARTBEAT_SECONDS)
    status.record["fingerprint"] = fingerprint
    try:
        status.acquire(version)
        store.cleanup_stale(_tile_prefixes(tile.id))
        work = _work_dir(store, tile.id, cfg.processing.tmp_dir)
    except LeaseError:
        raise
    except EcocubeError as exc:
        raise TileError(f"cannot start tile {tile.id}: {exc}", tile=tile.id) from exc
    return status, work


def _work_dir(store, tile_id: str, tmp_dir) -> Path:
    """Local scratch for the tile's outputs: ``processing.tmp_dir`` (e.g. node-local disk)
    if set, else the store's own (inside a local store, so publishing is a rename)."""
    if tmp_dir is None:
        return store.work_dir(tile_id)
    import tempfile

    Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"ecocube-{tile_id}.", dir=tmp_dir))


def _check_stop(stop, tile, done_blocks: int, n_blocks: int) -> None:
    if stop is not None and stop.is_set():
        reason = getattr(stop, "reason", "a stop request")
        raise Interrupted(f"tile {tile.id}: stopped by {reason} after {done_blocks} of {n_blocks} blocks; "
                          "nothing was published")


class _Tally:
    """What the blocks of a tile add up to: bytes and requests read, missing inputs, gap
    statistics, predicted pixels."""

    def __init__(self):
        self.bytes_read = 0
        self.requests = 0
        self.missing: set[str] = set()
        self.gaps = _GapStats()
        self.predicted = 0
        self.target = 0  # pixels x years to predict (model.predict_where may exclude some)
        self.chips = ChipCounts()  # chips of a chip model (chips x years)
        #: per year: [observed values, all values] over every period and band of the year
        self.year_values: dict[int, list[int]] = {}
        self.files: set[str] = set()  # every input file of the tile's blocks
        self.outside: dict[str, str] | None = None  # files outside every block so far (href → note)
        self.resampled: set[str] = set()  # files reprojected/resampled onto the grid

    def add_years(self, flags: np.ndarray, periods) -> None:
        for year in sorted({int(p.year) for p in periods}):
            ts = [i for i, p in enumerate(periods) if int(p.year) == year]
            part = flags[ts[0]:ts[-1] + 1]
            counts = self.year_values.setdefault(year, [0, 0])
            counts[0] += int(np.count_nonzero(part == 0))
            counts[1] += int(part.size)

    def chips_record(self) -> dict[str, Any]:
        c = self.chips
        return {"total": c.total, "targeted": c.targeted, "predicted": c.predicted,
                "completeness": (c.predicted / c.targeted) if c.targeted else 1.0}

    def observed_by_year(self) -> dict[str, float]:
        return {str(y): (o / n if n else 0.0) for y, (o, n) in sorted(self.year_values.items())}

    def add_read(self, res) -> None:
        st = res.stats or {}
        self.bytes_read += int(st.get("bytes_read", st.get("bytes_decoded", 0)) or 0)
        self.requests += int(st.get("requests", st.get("attempts", 0)) or 0)
        self.missing.update(res.missing or ())
        files = getattr(res, "files", None)
        if files:
            self.files.update(files)
            outside = dict(getattr(res, "outside", None) or {})
            self.outside = outside if self.outside is None else {h: n for h, n in self.outside.items() if h in outside}
            self.resampled.update(getattr(res, "resampled", None) or ())

    def misplaced(self) -> dict[str, str]:
        """Input files whose footprint reaches no block of the tile (href → what is odd about it)."""
        return dict(sorted((self.outside or {}).items()))


class _Stager:
    """A second thread that stages one block's cube layers while the main thread computes
    features and predicts; at most one block is in flight."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecocube-stage")
        self._pending = None

    def submit(self, fn: Callable, *args) -> None:
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        """Wait for the block in flight; re-raises an error of its staging."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        """Let a block still in flight (after an error elsewhere) finish, then stop the thread."""
        if self._pending is not None:
            with contextlib.suppress(BaseException):
                self._pending.result()
            self._pending = None
        self._pool.shutdown(wait=True)


class _ReadAhead:
    """Reads the next block's files on one background thread while the current block is
    gap-filled, predicted and staged: the files decoded in their own data types
    (:func:`ecocube.read.fetch_block`), not a second cube; compositing them stays with the
    block's own read. At most one block in flight, so the memory it holds is one block's
    decoded inputs (2 bytes a value for uint16 inputs: 66 MB at 256² × 84 × 6)."""

    def __init__(self, cfg, tile, threads: int):
        self.cfg, self.tile, self.threads = cfg, tile, threads
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecocube-readahead")
        self._pending: tuple[Any, Any] | None = None

    def start(self, window) -> None:
        self._pending = (window, self._pool.submit(_fetch_block, self.cfg, self.tile, window, threads=self.threads))

    def take(self, window):
        """The fetched files of ``window`` (waiting for them; re-raises the read's error), or
        None when that window was not read ahead."""
        if self._pending is None:
            return None
        ahead, future = self._pending
        self._pending = None
        if (ahead.col_off, ahead.row_off, ahead.width, ahead.height) != \
                (window.col_off, window.row_off, window.width, window.height):
            with contextlib.suppress(BaseException):
                future.result()
            return None
        return future.result()

    def close(self) -> None:
        """Let a read still in flight (after a stop or an error) finish, then stop the thread."""
        if self._pending is not None:
            with contextlib.suppress(BaseException):
                self._pending[1].result()
            self._pending = None
        self._pool.shutdown(wait=True)


def _settle(pending: tuple[Any, Any] | None) -> None:
    """Wait for the future of a ``(what, future)`` pair whose result is not wanted (its error
    is not the tile's: another one is raised, or the work is done again)."""
    if pending is not None:
        with contextlib.suppress(BaseException):
            pending[1].result()


class _TileRun:
    """One attempt at a tile's blocks: read → gap-fill → features → predict → stage/write,
    then publish. :meth:`run` is the sequence; each other method does one step.

    The first block fixes the bands, the years, the model and the tile's output files
    (:meth:`open_outputs`); later blocks must return the same bands. :attr:`timer` holds
    the wall and CPU seconds of each stage.
    """

    def __init__(self, tile, cfg, store, status: TileStatus, *, bundle, stages: Stages, threads: int, stop):
        self.tile, self.cfg, self.store, self.status = tile, cfg, store, status
        self.bundle, self.stages, self.threads, self.stop = bundle, stages, threads, stop
        self.timer = _Timer()
        self.work: Path | None = None
        self.layers = tuple(cfg.output.layers)
        self.want_pred = any(layer in self.layers for layer in PREDICTION_LAYERS)
        self.want_cube = any(layer in self.layers for layer in CUBE_LAYERS)
        self.season_size = cfg.inputs.periods.season_size
        self.start_year = cfg.inputs.periods.start_year
        self.indices = tuple(cfg.features.indices)
        self.statistics = tuple(cfg.features.statistics)
        self.block_size = cfg.processing.block_size
        self.tally = _Tally()
        self.stager: _Stager | None = None
        self.ahead: _ReadAhead | None = None
        #: the model loading beside the first block (:meth:`preload_model`): (features, future)
        self.preload: tuple[list[str], Any] | None = None
        self.writer: TileWriter | None = None
        self.bands: tuple[str, ...] = ()
        self.years: list[int] = []
        self.periods: list = []
        #: chip models read a halo around each block (the same pixels the neighbour tile reads)
        self.chip = cfg.model.chip if cfg.model.kind == "chip" and self.want_pred else None
        self.halo = self.chip.halo_pixels if self.chip is not None else 0
        self.read_tile = _haloed(tile, self.halo)

    def run(self, work: Path) -> dict[str, Any]:
        """Every block (outputs written in the scratch folder ``work``), then the tile's
        outputs published; returns the results for the record.

        One thread budget, ``threads`` (the allocation's share): the read workers, the
        gap-fill and finish pools and prediction each use at most that many, one stage at a
        time; beside them run the staging of the cube layers (one thread) and, with
        ``processing.read_ahead``, the read of the next block (half the threads, at least one: the
        cores a stage leaves idle), and the native
        pools (BLAS, OpenMP) are limited to it for the whole tile, so no library sizes its
        pool by the machine's cores."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.threads):
            return self._run(work)

    def _run(self, work: Path) -> dict[str, Any]:
        self.work = work
        windows = list(self.tile.blocks(self.block_size))
        self.check_model()
        self.preload_model()
        self.stager = _Stager()
        # the next block's files are read while this one is computed: with the real read
        # stage only (a swapped read_block is called block by block) and not for chip models'
        # haloed reads; half the threads (at least one) beside the stages' own
        if self.cfg.processing.read_ahead and self.stages.read_block is _read_block and not self.halo and len(windows) > 1:
            self.ahead = _ReadAhead(self.cfg, self.tile, max(1, self.threads // 2))
        try:
            for i, window in enumerate(windows):
                _check_stop(self.stop, self.tile, i, len(windows))
                if self.halo:  # chip model: the block and its halo, cropped back for the cube layers
                    res_h, filled_h, flags_h = self.read_haloed(window)
                    res, filled, flags = _crop_block(res_h, filled_h, flags_h, self.halo)
                    self.open_outputs(res, i)
                    self.stage(window, res, filled, flags)
                    items = self.predict_chips(filled_h, flags_h, window, res.periods)
                    del res_h, filled_h, flags_h
                else:
                    res = self.read(window)
                    filled, flags = self.gapfill(res)
                    if self.ahead is not None and i + 1 < len(windows):
                        self.ahead.start(windows[i + 1])  # beside features/predict/staging
                    self.open_outputs(res, i)
                    self.stage(window, res, filled, flags)  # on the second thread, beside features/predict
                    if self.chip is not None:
                        items = self.predict_chips(filled, flags, window, res.periods)
                    else:
                        items = self.predict(filled, window, i, flags=flags, periods=res.periods)
                self.write(items, window)
                del res, filled, flags, items
                self.status.heartbeat(i + 1)
            _check_stop(self.stop, self.tile, len(windows), len(windows))
            self.check_misplaced()
            if self.tally.gaps.flags[0] == 0:  # not one valid observation in the whole tile
                return self.no_data(len(windows))
            paths, entries = self.finish()
        finally:
            self.close()
        outputs = self.publish(paths, entries)
        return self.results(len(windows), outputs)

    def check_misplaced(self) -> None:
        """Inputs that overlap no part of the tile contribute nothing: never silently. One
        warning per tile naming the first few (``inputs.on_misplaced: warn``), or the tile
        fails (``fail``)."""
        misplaced = self.tally.misplaced()
        if not misplaced:
            return
        shown = [f"{h} ({note})" if note else h for h, note in list(misplaced.items())[:MISPLACED_SHOWN]]
        more = f" (+{len(misplaced) - MISPLACED_SHOWN} more)" if len(misplaced) > MISPLACED_SHOWN else ""
        what = (f"tile {self.tile.id}: {len(misplaced)} of {len(self.tally.files)} input files overlap no part of "
                f"the tile and contribute nothing: {', '.join(shown)}{more}; check their CRS and georeference")
        if self.cfg.inputs.on_misplaced == "fail":
            raise ReadError(f"{what} (inputs.on_misplaced: fail)", url=next(iter(misplaced)), tile=self.tile.id)
        log.warning("%s (inputs.on_misplaced: fail makes this an error)", what)

    def no_data(self, n_blocks: int) -> dict[str, Any]:
        """A tile without any valid observation: fail it (``inputs.on_empty: fail``) or
        return results marked ``empty`` (no outputs; earlier attempts' objects removed)."""
        gaps = self.tally.gaps.to_dict()
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(gaps.get("reason_counts", {}).items())) or "no values"
        what = (f"tile {self.tile.id} has no input data at all: not one valid observation in "
                f"{len(self.tally.year_values)} years x {len(self.bands)} bands ({reasons})")
        if self.cfg.inputs.on_empty == "fail":
            raise TileError(f"{what}; check inputs.sources and the tile's location, or set "
                            "inputs.on_empty: record to record such tiles as empty", tile=self.tile.id)
        log.warning("%s: recorded as empty (inputs.on_empty: record)", what)
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        _remove_stale(self.store, self.tile.id, {})
        return {**self.results(n_blocks, {}), "empty": True}

    def check_model(self) -> None:
        if self.want_pred and self.bundle is None and not Path(self.cfg.model.path).exists():
            raise ModelError(f"model bundle not found: {self.cfg.model.path} (train one with 'ecocube train')")

    def read(self, window):
        with self.timer("read"):
            fetched = self.ahead.take(window) if self.ahead is not None else None
            if fetched is not None:
                res = self.stages.read_block(self.cfg, self.tile, window, threads=self.threads, fetched=fetched)
            else:
                res = self.stages.read_block(self.cfg, self.tile, window, threads=self.threads)
            del fetched
        self.tally.add_read(res)
        return res

    def gapfill(self, res, *, tally: bool = True) -> tuple[np.ndarray, np.ndarray]:
        with self.timer("gapfill"):
            filled, flags = self.stages.fill_gaps(res.data, self.cfg, threads=self.threads)
        if filled.shape != res.data.shape or flags.shape != res.data.shape:
            raise TileError(f"gap-filling changed the cube shape {res.data.shape} -> "
                            f"{filled.shape}/{flags.shape}", tile=self.tile.id)
        if tally:
            self.tally.gaps.add(flags, getattr(res, "reason", None))
            self.tally.add_years(flags, res.periods)
            with contextlib.suppress(AttributeError):  # counted: freed (a quarter of the cube) before the read-ahead
                res.reason = None
        return filled, flags

    def read_haloed(self, window):
        """The block and ``halo`` pixels around it (outside the tile too), read on the tile's
        grid and gap-filled; the statistics count only the tile's own pixels."""
        from rasterio.windows import Window

        h = self.halo
        big = Window(int(window.col_off), int(window.row_off), int(window.width) + 2 * h, int(window.height) + 2 * h)
        with self.timer("read"):
            res = self.stages.read_block(self.cfg, self.read_tile, big, threads=self.threads)
        self.tally.add_read(res)
        filled, flags = self.gapfill(res, tally=False)
        inner = (Ellipsis, slice(h, h + int(window.height)), slice(h, h + int(window.width)))
        reason = getattr(res, "reason", None)
        self.tally.gaps.add(flags[inner], None if reason is None else reason[inner])
        self.tally.add_years(flags[inner], res.periods)
        return res, filled, flags

    def predict_chips(self, filled: np.ndarray, flags: np.ndarray, window, periods) -> list[tuple[str, np.ndarray]]:
        """The block's ``proba``/``class`` per year from the chip model (``filled``/``flags``
        include the halo): chips filtered, predicted, stitched, cropped to the block."""
        from rasterio.windows import Window

        from .chips import chip_filter, chip_grid, predict_chips
        from .predict import _to_percent

        chip, h = self.chip, self.halo
        bh, bw = int(window.height), int(window.width)
        H, W = filled.shape[-2:]
        big = Window(int(window.col_off), int(window.row_off), W, H)
        inner = (slice(h, h + bh), slice(h, h + bw))
        where = predict_where(self.cfg, self.read_tile, big)
        target = np.ones((H, W), bool) if where is None else where.reshape(H, W)
        codes = np.asarray(self.bundle.classes).astype(np.uint16)
        grid = chip_grid(H, W, size=chip.size, overlap=chip.overlap)
        items: list[tuple[str, np.ndarray]] = []
        for year in self.years:
            with self.timer("features"):
                X = year_features(self.cfg, filled, self.bands, year - self.start_year, self.read_tile, big,
                                  self.stages.features_for_year)
                image = np.ascontiguousarray(X.T.reshape(X.shape[1], H, W))
                del X
                finite = np.isfinite(image).all(axis=0)
                ts = [t for t, p in enumerate(periods) if int(p.year) == year]
                observed = (flags[ts[0]:ts[-1] + 1] == 0).any(axis=0).all(axis=0)
                targeted, chosen = chip_filter(grid, target=target, valid=observed & finite,
                                               min_valid=chip.min_valid, inner=inner)
            with self.timer("predict"):
                scores = predict_chips(self.bundle.normalise(image), self.bundle.run, size=chip.size,
                                       overlap=chip.overlap, stitch=chip.stitch, batch=chip.batch, which=chosen)
            del image
            counted = np.zeros_like(targeted)
            for i, j, _, _ in grid.chips():  # the chips owning a pixel of the block (the others are halo)
                (a, b), (c, d) = grid.own_rows[i], grid.own_cols[j]
                counted[i, j] = max(a, h) < min(b, h + bh) and max(c, h) < min(d, h + bw)
            self.tally.chips.add(ChipCounts(int(counted.sum()), int(targeted.sum()), int(chosen.sum())))
            proba = np.full((codes.size, bh * bw), PROBA_NODATA, np.uint8)
            hard = np.full(bh * bw, CLASS_NODATA, np.uint16)
            t_in = target[inner].reshape(-1)
            if scores.shape[0]:
                if scores.shape[0] != codes.size:
                    raise TileError(f"chip model returned {scores.shape[0]} class scores, the bundle lists "
                                    f"{codes.size} classes", tile=self.tile.id)
                s = scores[:, inner[0], inner[1]].reshape(codes.size, -1)
                ok = np.isfinite(s).all(axis=0) & t_in & finite[inner].reshape(-1)
                proba[:, ok] = _to_percent(s[:, ok])
                hard[ok] = codes[np.argmax(s[:, ok], axis=0)]
            unc = np.full(bh * bw, UNCERTAINTY_NODATA, np.uint8)
            self.tally.target += int(t_in.sum())
            self.tally.predicted += int((hard != CLASS_NODATA).sum())
            values = {"proba": proba.reshape(-1, bh, bw), "class": hard.reshape(bh, bw),
                      "uncertainty": unc.reshape(bh, bw)}
            items.extend(_prediction_items(self.tile.id, year_period(year, self.periods), self.layers, values))
        return items

    def open_outputs(self, res, i: int) -> None:
        """First block: bands, years, model and the tile's output files; later: same bands."""
        if self.writer is not None:
            if tuple(res.bands) != self.bands:
                raise TileError(f"block {i} returned bands {res.bands}, the first block {self.bands}",
                                tile=self.tile.id)
            return
        self.bands = tuple(res.bands)
        self.years = sorted({int(p.year) for p in res.periods})
        self.periods = list(res.periods)
        codes, names = self.model_classes()
        specs = plan_outputs(self.layers, periods=res.periods, bands=self.bands, years=self.years, classes=codes,
                             class_names=names, composite_scale=self.cfg.output.composite_scale)
        with self.timer("write"):
            self.writer = TileWriter(self.work, self.tile, specs, block_size=self.block_size,
                                     compress=self.cfg.processing.compress, threads=self.threads)

    def preload_model(self) -> None:
        """Start loading the model on a thread of its own, beside the first block's read and
        gap-fill (loading is single-threaded: 1.6 s for the bench model), with the features
        the configured bands give; :meth:`model_classes` takes it, or loads it again when the
        first block returned other bands."""
        if not self.want_pred or self.bundle is not None or self.chip is not None:
            return
        from .read import band_names

        expected = run_feature_names(self.cfg, band_names(self.cfg.inputs), self.stages.feature_names)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecocube-model")
        try:
            self.preload = (expected, pool.submit(self.stages.load_bundle, self.cfg.model.path,
                                                  expected_features=expected, engine=self.cfg.model.engine))
        finally:
            pool.shutdown(wait=False)  # the thread ends with the load

    def model_classes(self) -> tuple[np.ndarray, list[str]]:
        """Class codes and names of the model (loaded now unless given), or none."""
        if not self.want_pred:
            return np.array([], dtype=int), []
        if self.bundle is None:
            with self.timer("load_model"):
                expected = run_feature_names(self.cfg, self.bands, self.stages.feature_names)
                if self.chip is not None:
                    from .chipmodel import load_chip_bundle

                    self.bundle = load_chip_bundle(self.cfg.model.path, expected_features=expected,
                                                   threads=self.threads)
                else:
                    preload, self.preload = self.preload, None
                    if preload is not None and preload[0] == expected:
                        self.bundle = preload[1].result()  # re-raises the load's error
                    else:  # not started, or for other features than the first block's bands give
                        _settle(preload)
                        self.bundle = self.stages.load_bundle(self.cfg.model.path, expected_features=expected,
                                                              engine=self.cfg.model.engine)
        codes = np.asarray(self.bundle.classes)
        check_bundle_classes(self.cfg, self.bundle)
        names = list(getattr(self.bundle, "class_names", None) or [str(c) for c in codes])
        return codes, names

    def stage(self, window, res, filled: np.ndarray, flags: np.ndarray) -> None:
        if self.want_cube:
            self.stager.submit(_stage_cube, self.writer, self.tile.id, window, res.periods, self.bands,
                               self.layers, filled, flags, res.count, self.cfg.output.composite_scale,
                               self.tally.gaps)

    def predict(self, filled: np.ndarray, window, i: int, *, flags: np.ndarray | None = None,
                periods=None) -> list[tuple[str, np.ndarray]]:
        """The block's prediction layers, year by year, as ``(key, array)`` pairs.

        With ``inputs.unobserved_years: skip`` a pixel without any observation in a year
        (every period and band of it filled or unfilled) is left unpredicted (nodata)."""
        items: list[tuple[str, np.ndarray]] = []
        if not self.want_pred:
            return items
        h, w = int(window.height), int(window.width)
        where = predict_where(self.cfg, self.tile, window)  # model.predict_where; None: every pixel
        skip = self.cfg.inputs.unobserved_years == "skip" and flags is not None and periods is not None
        for year in self.years:
            with self.timer("features"):
                X = year_features(self.cfg, filled, self.bands, year - self.start_year, self.tile, window,
                                  self.stages.features_for_year)
                if where is not None:
                    X[~where] = np.nan  # not predicted: class nodata
            self.tally.target += h * w if where is None else int(where.sum())
            if X.shape[0] != h * w:
                raise TileError(f"features of block {i} have {X.shape[0]} rows for {h * w} pixels",
                                tile=self.tile.id)
            unseen = None
            if skip:
                ts = [t for t, p in enumerate(periods) if int(p.year) == year]
                unseen = ~(flags[ts[0]:ts[-1] + 1] == 0).any(axis=(0, 1)).reshape(-1)
            per = year_period(year, self.periods)
            if getattr(self.bundle, "task", "classification") == "regression":
                with self.timer("predict"):
                    mean, lower, upper = self.stages.predict_regression_block(self.bundle, X, threads=self.threads)
                if unseen is not None and unseen.any():
                    for a in (mean, lower, upper):
                        a[unseen] = VALUE_NODATA
                self.tally.predicted += int((mean != VALUE_NODATA).sum())
                values = {"mean": mean.reshape(h, w), "lower": lower.reshape(h, w), "upper": upper.reshape(h, w)}
            else:
                with self.timer("predict"):
                    proba, hard, unc = self.stages.predict_block(self.bundle, X, threads=self.threads)
                if unseen is not None and unseen.any():
                    proba[:, unseen] = PROBA_NODATA
                    hard[unseen] = CLASS_NODATA
                    unc[unseen] = UNCERTAINTY_NODATA
                self.tally.predicted += int((hard != CLASS_NODATA).sum())
                values = {"proba": proba.reshape(-1, h, w), "class": hard.reshape(h, w),
                          "uncertainty": unc.reshape(h, w)}
            items.extend(_prediction_items(self.tile.id, per, self.layers, values))
            del X
        return items

    def write(self, items: list[tuple[str, np.ndarray]], window) -> None:
        """Write the prediction layers, then wait for the block's staging (re-raising its error)."""
        with self.timer("write"):
            self.writer.write(items, window)
            self.stager.wait()

    def finish(self) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
        """Close and verify every output; returns their local paths and record entries."""
        with self.timer("finish"):
            self.writer.close()
        paths, entries = self.writer.paths, self.writer.record_entries()
        self.writer = None
        return paths, entries

    def close(self) -> None:
        """After the blocks (or an error): stop the staging thread, drop unfinished outputs."""
        _settle(self.preload)  # a model load never taken (the first block failed): let it end
        self.preload = None
        if self.ahead is not None:
            self.ahead.close()
        if self.stager is not None:
            self.stager.close()
        if self.writer is not None:
            self.writer.abort()

    def publish(self, paths: dict[str, Path], entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Every output under its final key, then the objects of earlier attempts removed.
        ``entries``: per key, what its record entry adds (a stacked file's periods)."""
        with self.timer("publish"):
            outputs = _publish(self.store, paths, threads=self.cfg.processing.publish_threads)
            for key, extra in entries.items():
                if key in outputs:
                    outputs[key].update(extra)
            _remove_stale(self.store, self.tile.id, outputs)
        return outputs

    def results(self, n_blocks: int, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        tally = self.tally
        target = self.tally.target if self.want_pred else 0
        return {
            "blocks": n_blocks,
            "bands": list(self.bands),
            "years": self.years,
            "layers": list(self.layers),
            "bytes_read": tally.bytes_read,
            "requests": tally.requests,
            "bytes_written": int(sum(o["size"] for o in outputs.values())),
            "gaps": tally.gaps.to_dict(),
            "observed_fraction_by_year": tally.observed_by_year(),
            "unobserved_years": [int(y) for y, f in tally.observed_by_year().items() if f == 0.0],
            "missing_inputs": sorted(tally.missing),
            "input_files": len(tally.files),
            "misplaced_inputs": len(tally.misplaced()),
            "misplaced_examples": list(tally.misplaced())[:MISPLACED_SHOWN],
            "resampled_inputs": len(tally.resampled),
            "predicted_pixels": tally.predicted,
            "target_pixels": target,
            "completeness": (tally.predicted / target) if target else 1.0,
            **({"chips": tally.chips_record()} if self.chip is not None else {}),
            "outputs": outputs,
        }


def check_bundle_classes(cfg, bundle) -> None:
    """A classification bundle predicts exactly the classes of ``model.classes``, or
    :class:`ModelError`: its codes would be written into class rasters whose legend, colours
    and STAC classes come from the configuration (a bundle of another campaign)."""
    if getattr(bundle, "task", "classification") != "classification" or cfg.model.task != "classification":
        return
    trained = sorted(int(c) for c in bundle.classes)
    configured = sorted(int(c.code) for c in cfg.model.classes)
    if trained != configured:
        raise ModelError(f"model bundle {cfg.model.path} predicts classes {trained}, model.classes lists "
                         f"{configured}: a bundle trained for another legend; retrain it, or fix model.classes")


def _haloed(tile, halo: int):
    """``tile`` grown by ``halo`` pixels on every side (same id and grid; pure)."""
    if not halo:
        return tile
    import dataclasses

    from .grid import Bounds, Shape2d

    t = tile.transform
    transform = t @ t.translation(-halo, -halo)
    px, py = halo * abs(t.a), halo * abs(t.e)
    b = tile.bounds
    return dataclasses.replace(tile, transform=transform,
                               bounds=Bounds(b.left - px, b.bottom - py, b.right + px, b.top + py),
                               shape=Shape2d(tile.height + 2 * halo, tile.width + 2 * halo))


def _crop_block(res, filled: np.ndarray, flags: np.ndarray, halo: int):
    """The tile's own part of a haloed block: the read result, filled cube and flags cropped."""
    import dataclasses

    inner = (Ellipsis, slice(halo, filled.shape[-2] - halo), slice(halo, filled.shape[-1] - halo))
    crop = {k: getattr(res, k)[inner] for k in ("data", "reason", "count") if getattr(res, k, None) is not None}
    return dataclasses.replace(res, **crop), filled[inner], flags[inner]


def _prediction_items(tile_id: str, per: str, layers, values: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """The year's model outputs wanted in ``layers``, in registry order. ``values`` maps each
    model product of the bundle's task (see ecocube.products) to its block raster: the one
    place a new model product meets what the model returns."""
    wanted = products.names(source="model", among=layers)
    missing = [n for n in wanted if n not in values]
    if missing:
        raise ModelError(f"output.layers {missing} are not made by this model (it makes {', '.join(values)}); "
                         "check model.task against the bundle")
    return [(output_key(name, tile_id, per, name), values[name]) for name in wanted]


def _publish(store, paths: dict[str, Path], *, threads: int) -> dict[str, dict[str, Any]]:
    """Publish every output (atomic per object). If any fails (a full store, an outage), the
    objects this attempt already published are deleted again (best effort) before the error
    is raised: a failed tile leaves no outputs behind, only its record."""
    from .atomic import sha256_file

    done: list[str] = []
    lock = threading.Lock()

    def _one(item):
        key, path = item
        info = store.put_file(path, key, sha256=sha256_file(path), move=True)
        with lock:
            done.append(key)
        return key, {"sha256": info.sha256, "size": info.size}

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths) or 1))) as pool:
            return dict(sorted(pool.map(_one, paths.items())))
    except BaseException:
        try:
            store.delete_many(sorted(done))
        except Exception as exc:  # noqa: BLE001 - the publishing error matters more
            log.error("could not remove %d objects of a failed publish: %s", len(done), exc)
        raise


def _remove_stale(store, tile_id: str, outputs: dict[str, dict[str, Any]]) -> None:
    """Delete the tile's objects that this attempt did not publish (earlier attempts' leftovers)."""
    stale = [k for p in _tile_prefixes(tile_id) for k in store.list(p) if k not in outputs]
    if stale:
        log.info("tile %s: removing %d stale objects of earlier attempts", tile_id, len(stale))
        store.delete_many(stale)


# --------------------------------------------------------------------------- run_tiles


_WORKER_STOP: StopFlag | None = None  # set once per worker process by _worker_init


def _worker_init(event) -> None:
    """Worker processes share the parent's stop event and set it on their own signals."""
    global _WORKER_STOP
    flag = StopFlag(event)
    _WORKER_STOP = flag

    def _handler(signum, frame):
        flag.set(signum)

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def _memory_hint(exc: BaseException) -> str:
    """What an allocation failure means for the user ("" for any other error). Python raises
    MemoryError, or RuntimeError for a thread whose stack could not be mapped."""
    if not (isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "can't start new thread" in str(exc))):
        return ""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    where = "" if limit == resource.RLIM_INFINITY else \
        f"; the process's address space is limited to {limit / 2**20:.0f} MiB (ulimit -v)"
    return (f" (out of memory{where}; give the task more memory, or lower processing.threads or "
            "processing.block_size)")


def _failed_record(exc: BaseException, tile_id: str) -> dict[str, Any]:
    rec = getattr(exc, "record", None)
    if isinstance(rec, dict):
        return rec
    state = "interrupted" if isinstance(exc, Interrupted) else "failed"
    return {"tile": tile_id, "state": state, "error": f"{type(exc).__name__}: {exc}"}


def _run_one(cfg, tile, overwrite: bool, threads: int, stop) -> dict[str, Any]:
    stop = stop if stop is not None else _WORKER_STOP
    try:
        return process_tile(tile, cfg, overwrite=overwrite, threads=threads, stop=stop, campaign="check")
    except (TileError, Interrupted) as exc:
        log.error("%s", exc)
        return _failed_record(exc, tile.id)


def run_tiles(cfg, tiles, *, workers: int = 1, overwrite: bool = False, progress: bool | None = None,
              threads: int | None = None, stop: StopFlag | None = None,
              on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Process ``tiles`` with ``workers`` local processes; returns their records in order.

    ``progress``: a bar with ETA on stderr (``None``: only when stderr is a terminal);
    ``on_record`` is called with each tile's record as it finishes (e.g. a JSON log line).
    Failed tiles do not stop the others: their records (``state: failed``) are returned.
    The threads of the allocation are split between workers. On SIGTERM/SIGINT no new
    tile starts, running tiles stop after their current block, and :class:`Interrupted`
    is raised once they have recorded it.
    """
    from .env import available_threads
    from .progress import progress_bar
    from .store import store_for

    tiles = list(tiles)
    if not overwrite:
        check_store_fingerprints(cfg, tiles)
    claim_campaign(store_for(cfg), run_fingerprint_of(cfg), run=cfg.name, overwrite=overwrite)
    workers = max(1, min(int(workers), len(tiles) or 1))
    total_threads = available_threads(cfg.processing.threads)
    per_tile = threads or max(1, total_threads // workers)
    records: dict[str, dict[str, Any]] = {}
    bar = progress_bar(len(tiles), unit="tile", desc="tiles", enabled=progress)

    def _done(rec: dict[str, Any]) -> None:
        records[rec["tile"]] = rec
        if on_record is not None:
            on_record(rec)
        states = [("skipped" if r.get("skipped") else r.get("state")) for r in records.values()]
        bar.set_postfix({s: states.count(s) for s in ("done", "skipped", "failed") if states.count(s)})
        bar.update(1)

    try:
        if workers == 1:
            with stop_on_signals(stop) as flag:
                for tile in tiles:
                    if flag.is_set():
                        break
                    _done(_run_one(cfg, tile, overwrite, per_tile, flag))
        else:
            from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

            ctx = multiprocessing.get_context("spawn")
            event = ctx.Event()
            flag = StopFlag(event)
            with stop_on_signals(flag), ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                                            initializer=_worker_init, initargs=(event,)) as pool:
                queue = list(tiles)
                running = {}
                while queue or running:
                    while queue and len(running) < workers and not flag.is_set():
                        tile = queue.pop(0)
                        running[pool.submit(_run_one, cfg, tile, overwrite, per_tile, None)] = tile
                    if not running:
                        break
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        tile = running.pop(fut)
                        try:
                            _done(fut.result())
                        except FingerprintMismatch:  # another campaign claimed the store meanwhile
                            flag.set(signal.SIGTERM)
                            raise
                        except Exception as exc:  # noqa: BLE001 - a worker died (OOM kill, segfault)
                            _done({"tile": tile.id, "state": "failed",
                                   "error": f"worker process failed: {type(exc).__name__}: {exc}"})
    finally:
        bar.close()

    if flag.is_set():
        left = [t.id for t in tiles if t.id not in records or records[t.id].get("state") == "interrupted"]
        raise Interrupted(f"stopped by {flag.reason}: {len(left)} of {len(tiles)} tiles not finished "
                          f"({', '.join(left[:5])}{' ...' if len(left) > 5 else ''})")
    return [records[t.id] for t in tiles if t.id in records]
