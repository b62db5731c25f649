"""Windowed reads of the input time series into the tile grid.

:func:`read_block` reads, for one tile (or one block of it), every file the catalog
(``sources.py``) lists, reprojecting with a ``WarpedVRT`` of exactly the block when the
source grid differs from the tile grid (only the source window under the block is
fetched), applies nodata and mask rules, composites irregular acquisitions into the
regular periods, and returns a ``(time, band, y, x)`` float32 cube with NaN where there is
no valid value, a per-value reason code and a count of valid observations.

Reads run on a pool of worker threads sized from the allocation
(:func:`ecocube.env.available_threads`); each worker holds one scoped GDAL environment
from :mod:`ecocube.env` for its lifetime. Periods are read and composited in time order
with a bounded number of files in flight, so memory is bounded by the block, not by the
length of the series.

Errors: transient failures (HTTP 5xx/429, timeouts, connection resets, truncated
bodies) are retried with exponential backoff, each retry bypassing GDAL's HTTP cache.
A missing input (HTTP 404/410, no such key or file) raises :class:`InputMissingError`
under ``on_missing: fail`` or is recorded (reason ``REASON_MISSING``, href in
``ReadResult.missing``) under ``on_missing: record``. Anything else raises
:class:`ReadError`. Every error names the URL and the tile. Nothing that failed to read is
ever returned as NaN without a reason saying why.

S3 endpoint: ``inputs.s3`` when given, else ``output.s3`` (inputs and outputs often live
on the same object store; a campaign reading a public archive sets ``inputs.s3``).
"""

from __future__ import annotations

import contextlib

import logging
import mmap
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import env as ecoenv
from .errors import ConfigError, GridError, InputMissingError, ReadError
from .sources import (
    REASON_MASKED,
    REASON_MISSING,
    REASON_NODATA,
    REASON_VALID,
    Observation,
    Period,
    SourceCatalog,
)
from .store import gdal_env, probe_s3_object

log = logging.getLogger(__name__)

__all__ = ["FetchedBlock", "ReadResult", "fetch_block", "read_block", "gdal_path", "nan_percentile", "band_names", "norm_window", "footprint_note"]


@dataclass
class ReadResult:
    """One block of the input time series on the tile grid.

    ``data`` (time, band, y, x) float32, scaled (DN*scale+offset), NaN where not valid;
    ``reason`` the same shape, uint8 reason codes (``sources.REASON_*``); ``count`` uint16,
    the valid observations behind each value (1/0 for composite sources).

    ``stats``: ``files`` read, ``attempts`` (file reads tried, retries included) and
    ``retries``; ``bytes_read``: compressed bytes of the image blocks (TIFF tiles/strips)
    the source windows intersect, from the files' block sizes — the image data fetched,
    without headers, overviews or GDAL's read-ahead (over HTTP the bytes on the wire are
    somewhat more; GDAL does not expose its request and byte counts to rasterio);
    ``files_without_block_sizes``: files whose format reports no block sizes, not counted
    in ``bytes_read`` (0 for GeoTIFF/COG); ``bytes_decoded``: bytes of the decoded source
    windows; ``threads``, ``jobs``, ``seconds``, ``missing``.
    """

    data: np.ndarray
    reason: np.ndarray
    count: np.ndarray
    bands: tuple[str, ...]
    periods: list[Period]
    missing: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    #: every input file (data and mask) the block's plan lists
    files: frozenset[str] = frozenset()
    #: files whose footprint does not reach the block, href → what is odd about it ("" if nothing)
    outside: dict[str, str] = field(default_factory=dict)
    #: files read through a reprojection/resampling onto the block (another grid, CRS or resolution)
    resampled: frozenset[str] = frozenset()


# --------------------------------------------------------------------------- paths


def gdal_path(href: str) -> str:
    """The GDAL path of an href: ``https://`` → ``/vsicurl/``, ``s3://`` → ``/vsis3/``, local as is."""
    href = str(href)
    if href.startswith("/vsi"):
        return href
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if href.startswith("gs://"):
        return "/vsigs/" + href[5:]
    if href.startswith("file://"):
        return href[7:]
    return href


def _is_local(path: str) -> bool:
    return not path.startswith("/vsi")


# --------------------------------------------------------------------------- compositing


def nan_percentile(stack: np.ndarray, q: float) -> np.ndarray:
    """Percentile ``q`` along axis 0, ignoring NaN (numpy's 'linear' method), vectorised.

    Same values as ``np.nanpercentile(stack, q, axis=0)`` (all-NaN → NaN, no warning), but
    without numpy's per-pixel Python loop.
    """
    stack = np.asarray(stack)
    srt = np.sort(stack, axis=0)  # NaN sorts last
    n = np.sum(~np.isnan(stack), axis=0)
    rank = (q / 100.0) * np.maximum(n - 1, 0)
    lo = np.floor(rank).astype(np.intp)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    frac = (rank - lo).astype(np.float64)
    v_lo = np.take_along_axis(srt, lo[None], axis=0)[0].astype(np.float64)
    v_hi = np.take_along_axis(srt, hi[None], axis=0)[0].astype(np.float64)
    out = v_lo + (v_hi - v_lo) * frac
    out = np.where(frac == 0, v_lo, out)
    out[n == 0] = np.nan
    return out.astype(stack.dtype if np.issubdtype(stack.dtype, np.floating) else np.float64)


def _pct_label(q: float) -> str:
    return f"p{q:g}".replace(".", "_")


def band_names(inputs_cfg) -> tuple[str, ...]:
    """Bands of a read: every source band in config order, then ``{band}_p{q}`` for the
    ``composite.extra_percentiles`` of acquisition sources."""
    names = list(inputs_cfg.bands)
    for q in inputs_cfg.composite.extra_percentiles:
        for src in inputs_cfg.sources:
            if src.kind == "acquisitions":
                names.extend(f"{b}_{_pct_label(q)}" for b in src.bands)
    return tuple(names)


# --------------------------------------------------------------------------- file reads


@dataclass(frozen=True, slots=True)
class _Job:
    """One file to read for one period."""

    period: int
    href: str
    indexes: tuple[int, ...]
    resampling: str
    nodata: float | None  # override (source config); None: the file's own
    role: str  # "data" or "mask"


@dataclass
class _FileData:
    array: np.ndarray  # (len(indexes), h, w) native dtype
    nodata: float | None
    outside: np.ndarray | None  # (h, w) bool, True outside the file's footprint
    nbytes: int  # decoded bytes read from the file
    block_bytes: int | None = 0  # compressed bytes of the image blocks read; None: unknown
    placed: bool = True  # False: the file's footprint does not reach the block
    note: str = ""  # why the file cannot be placed where it says it is ("" if nothing odd)


@dataclass
class _Patch:
    """The source window a worker read, to be warped onto the block by :meth:`_Reader.warp`."""

    array: np.ndarray  # (len(indexes), rows, cols) native dtype
    transform: object  # Affine of the window
    crs: object
    nodata: float | None
    resampling: str
    scale: tuple[float, float]  # XSCALE, YSCALE of the warp
    block_bytes: int | None  # compressed bytes of the image blocks read; None: unknown

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


@contextlib.contextmanager
def _mem_dataset(array: np.ndarray, transform, crs):
    """A GDAL MEM dataset holding a copy of ``array`` (bands, y, x), created with its
    transform and CRS (so it never exists without a geotransform)."""
    import rasterio

    count, height, width = array.shape
    with rasterio.open("ecocube-warp", "w+", driver="MEM", width=width, height=height, count=count,
                       dtype=array.dtype, crs=crs, transform=transform) as ds:
        ds.write(array)
        yield ds


def _warp_dtype(dtype, nodata) -> np.dtype:
    """The file's dtype, or float64 when its nodata value does not fit in it."""
    dtype = np.dtype(dtype)
    if nodata is None or np.isnan(nodata) and dtype.kind == "f":
        return dtype
    with np.errstate(all="ignore"):
        fits = not np.isnan(nodata) and np.asarray(nodata).astype(dtype) == nodata
    return dtype if fits else np.dtype(np.float64)


#: decoded files at least this large get their own memory map (see _decoded_array)
_MAPPED_BYTES = 256 * 1024


def _decoded_array(shape: tuple[int, ...], dtype, fill) -> np.ndarray:
    """``np.full(shape, fill, dtype)``, in its own anonymous memory map when large: given
    back to the system as soon as it is freed. A block's decoded files are allocated on
    the reader threads and freed by the compositing thread; taken from malloc, glibc kept
    them in its per-thread arenas (its mmap threshold rises after the first large free),
    and a read-ahead holding a whole block of them raised the tile's peak RSS by several
    blocks' worth instead of one."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    if n * dtype.itemsize < _MAPPED_BYTES:
        return np.full(shape, fill, dtype)
    arr = np.frombuffer(mmap.mmap(-1, n * dtype.itemsize), dtype=dtype, count=n).reshape(shape)
    if fill != 0:  # the map starts zeroed
        arr.fill(fill)
    return arr


def _block_bytes(src, indexes, window) -> int | None:
    """Compressed bytes of the image blocks (TIFF tiles/strips) of ``indexes`` that ``window``
    intersects, from the TIFF block sizes (no I/O beyond the header GDAL already read);
    None when the format does not report them. Headers, overviews and GDAL's read-ahead are
    not included: over HTTP the bytes fetched are somewhat more."""
    if window is None:
        return 0
    try:
        bh, bw = src.block_shapes[0]
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        rows = range(r0 // bh, (r1 - 1) // bh + 1)
        cols = range(c0 // bw, (c1 - 1) // bw + 1)
        separate = src.count > 1 and src.interleaving is not None and src.interleaving.name == "band"
        bands = indexes if separate else indexes[:1]
        return int(sum(src.block_size(b, i, j) for b in bands for i in rows for j in cols))
    except Exception:  # noqa: BLE001 - not a TIFF (or no block sizes): unknown, not zero
        return None


class _Missing:
    """Marker result for an input recorded as missing."""

    def __init__(self, error: InputMissingError):
        self.error = error


_TRANSIENT_TEXT = re.compile(
    r"curl error|timed out|timeout|reset by peer|connection|partial file|transfer closed|"
    r"recv failure|send failure|ssl|empty reply|couldn't connect|could not connect|"
    r"failed writing|temporar|throttl|slow ?down|broken pipe",
    re.IGNORECASE,
)


def _status_kind(code: int) -> str:
    if code in (404, 410):
        return "missing"
    if code in (408, 425, 429) or 500 <= code < 600:
        return "transient"
    if 200 <= code < 300:
        return "transient"  # the server answers now: whatever failed may pass on retry
    return "fatal"


def _error_text(exc: BaseException) -> str:
    parts, seen = [], set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = str(cur).strip()
        if text and text not in parts and "See previous exception" not in text:
            parts.append(text)
        cur = cur.__cause__ or cur.__context__
    return " <- ".join(parts) or type(exc).__name__


class _Reader:
    """Reads files onto one block of the tile grid, with retries and typed errors."""

    def __init__(self, cfg, tile, window, cancel: threading.Event):
        from rasterio.crs import CRS

        self.tile_id = tile.id
        self.dst_crs = CRS.from_user_input(tile.crs)
        self.dst_transform = tile.window_transform(window)
        self.height, self.width = int(window.height), int(window.width)
        inputs = cfg.inputs
        self.retries = int(inputs.retries)
        self.backoff = float(inputs.backoff_seconds)
        self.http_timeout = float(inputs.http_timeout)
        s3 = inputs.s3 if inputs.s3 is not None else cfg.output.s3
        self.s3_endpoint, self.s3_region, self.s3_profile = s3.endpoint_url, s3.region, s3.profile
        self.cancel = cancel
        self._lock = threading.Lock()
        self._transform_lock = threading.Lock()
        self._windows: dict = {}
        from rasterio.transform import array_bounds

        west, south, east, north = array_bounds(self.height, self.width, self.dst_transform)
        self._dst_bounds = (west, south, east, north)
        self.stats = {"files": 0, "attempts": 0, "retries": 0, "bytes_read": 0, "bytes_decoded": 0,
                      "files_without_block_sizes": 0}

    # ------------------------------------------------------------------ environment
    def gdal_env(self):
        """The scoped GDAL environment a worker thread holds (ecocube.env, one per thread)."""
        extra = {"GDAL_HTTP_TIMEOUT": str(max(1, round(self.http_timeout))),
                 "GDAL_HTTP_CONNECTTIMEOUT": str(max(1, round(min(self.http_timeout, 10))))}
        kw = dict(threads=1, s3_endpoint=self.s3_endpoint, s3_region=self.s3_region,
                  s3_profile=self.s3_profile, extra=extra)
        return gdal_env(**kw)

    # ------------------------------------------------------------------ one file, retried
    def read(self, job: _Job) -> _FileData:
        path = gdal_path(job.href)
        attempt = 0
        while True:
            if self.cancel.is_set():
                raise _Cancelled()
            with self._lock:
                self.stats["attempts"] += 1
                if attempt:
                    self.stats["retries"] += 1
            try:
                result = self._read_once(path, job, fresh=attempt > 0)
                with self._lock:
                    self.stats["files"] += 1
                    self.stats["bytes_decoded"] += result.nbytes
                    if result.block_bytes is None:
                        self.stats["files_without_block_sizes"] += 1
                    else:
                        self.stats["bytes_read"] += result.block_bytes
                return result
            except _FATAL_PASSTHROUGH:
                raise
            except Exception as exc:  # rasterio raises RasterioIOError, CPLE_*, WarpOperationError
                kind, detail = self._classify(job.href, path, exc)
                if kind == "missing":
                    raise InputMissingError(f"input missing: {job.href} ({detail})", url=job.href,
                                            tile=self.tile_id) from None
                if kind == "fatal" or attempt >= self.retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise ReadError(f"cannot read {job.href} for tile {self.tile_id}{tries}: {detail}",
                                    url=job.href, tile=self.tile_id) from exc
                delay = self.backoff * (2 ** attempt) * (0.75 + 0.5 * random.random())
                log.warning("tile %s: transient error reading %s (%s); retry %d/%d in %.2fs",
                            self.tile_id, job.href, detail, attempt + 1, self.retries, delay)
                if self.cancel.wait(delay):
                    raise _Cancelled() from None
                attempt += 1

    def _read_once(self, path: str, job: _Job, *, fresh: bool) -> _FileData:
        import rasterio

        if fresh and not _is_local(path):
            # a retry must not see GDAL's cached failure (or cached partial blocks) of this file
            with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=path):
                return self._read_dataset(path, job)
        return self._read_dataset(path, job)

    def _read_dataset(self, path: str, job: _Job) -> "_FileData | _Patch":
        import rasterio

        if _is_local(path) and not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path}")
        with rasterio.open(path) as src:
            bad = [i for i in job.indexes if not 1 <= i <= src.count]
            if bad:
                raise _BandIndexError(f"band index {bad} out of range: the file has {src.count} band(s)")
            nodata = job.nodata if job.nodata is not None else src.nodata
            aligned = self._aligned_offsets(src)
            if aligned is not None:
                arr, outside, win = self._read_aligned(src, job, nodata, aligned)
                return _FileData(arr, nodata, outside, int(arr.nbytes) if win is not None else 0,
                                 _block_bytes(src, job.indexes, win), placed=win is not None)
            if src.crs is None:
                raise _BadInputError("the file has no CRS: cannot reproject it onto the tile grid")
            win, scale = self._source_window(src, job.resampling)
            if win is None:  # the block lies entirely outside the file
                out = self._outside(src.dtypes[0], len(job.indexes), nodata)
                out.note = footprint_note(src.crs, src.bounds)
                return out
            arr = src.read(list(job.indexes), window=win)
            return _Patch(arr, src.window_transform(win), src.crs, nodata, job.resampling, scale,
                          _block_bytes(src, job.indexes, win))

    def _source_window(self, src, resampling: str):
        """(window, (xscale, yscale)) of ``src`` for the block: the window the warp can touch
        (None: none), padded by the resampling kernel and clipped to the file, and the
        resampling scale (destination pixels per source pixel along each target axis).
        Computed once per source grid and block.

        The scale is set explicitly because GDAL otherwise estimates it per warp chunk from
        the size of the source window it reads, which shrinks where the window is clipped by
        the file's edge: bilinear/cubic kernels then widen as if downsampling, and a pixel's
        value would depend on how much of the file lies around the block.
        """
        from rasterio.windows import Window

        key = (src.crs.to_wkt(), tuple(src.transform)[:6], src.width, src.height, resampling)
        with self._lock:
            if key in self._windows:
                return self._windows[key]
        from rasterio.warp import transform, transform_bounds

        west, south, east, north = self._dst_bounds
        cx, cy = (west + east) / 2, (south + north) / 2
        px, py = abs(self.dst_transform.a), abs(self.dst_transform.e)
        with self._transform_lock:  # one coordinate transformation at a time (see warp())
            try:
                bounds = transform_bounds(self.dst_crs, src.crs, west, south, east, north, densify_pts=21)
                xs, ys = transform(self.dst_crs, src.crs, [cx, cx + px, cx], [cy, cy, cy - py])
            except Exception:  # noqa: BLE001 - the block cannot be located: read the whole file
                bounds = xs = ys = None
        scale = (1.0, 1.0)
        if xs is not None and np.all(np.isfinite(xs)) and np.all(np.isfinite(ys)):
            inv = ~src.transform
            (c, r), (cx1, rx1), (cy1, ry1) = (inv @ (x, y) for x, y in zip(xs, ys))
            step_x, step_y = float(np.hypot(cx1 - c, rx1 - r)), float(np.hypot(cy1 - c, ry1 - r))
            if step_x > 0 and step_y > 0:
                scale = (1.0 / step_x, 1.0 / step_y)
        full = (0, 0, src.width, src.height)
        if bounds is None or not np.all(np.isfinite(bounds)):
            c0, r0, c1, r1 = full
        else:
            left, bottom, right, top = bounds
            inv = ~src.transform
            pts = [inv @ (x, y) for x in (left, right) for y in (bottom, top)]
            cols, rows = [p[0] for p in pts], [p[1] for p in pts]
            ratio = max(1.0, (max(cols) - min(cols)) / self.width, (max(rows) - min(rows)) / self.height)
            # the largest GDAL kernel (lanczos, radius 3) scaled for downsampling, plus 2 px
            margin = int(np.ceil(3 * ratio)) + 2
            c0 = max(int(np.floor(min(cols))) - margin, 0)
            r0 = max(int(np.floor(min(rows))) - margin, 0)
            c1 = min(int(np.ceil(max(cols))) + margin, src.width)
            r1 = min(int(np.ceil(max(rows))) + margin, src.height)
        win = Window(c0, r0, c1 - c0, r1 - r0) if c1 > c0 and r1 > r0 else None
        with self._lock:
            self._windows[key] = (win, scale)
        return win, scale

    def _outside(self, dtype, n: int, nodata) -> _FileData:
        dtype = _warp_dtype(dtype, nodata)
        arr = np.full((n, self.height, self.width), nodata if nodata is not None else 0, dtype)
        return _FileData(arr, nodata, None if nodata is not None else np.ones((self.height, self.width), bool), 0, 0,
                         placed=False)

    def warp(self, patch: "_Patch") -> _FileData:
        """Reproject a source window read by a worker onto the block.

        Called from one thread (read_block's collector), never concurrently within a read:
        GDAL keeps one cached coordinate transformation per CRS pair and hands it to a single
        user at a time, so warps run at once each rebuild it from the PROJ database — a
        WarpedVRT per file on 8 threads read local files 4x slower than on one.
        """
        from rasterio import band
        from rasterio.enums import Resampling
        from rasterio.warp import reproject

        n = patch.array.shape[0]
        dtype = _warp_dtype(patch.array.dtype, patch.nodata)
        kw = dict(resampling=Resampling[patch.resampling], num_threads=1,
                  XSCALE=repr(patch.scale[0]), YSCALE=repr(patch.scale[1]))
        src = patch.array if patch.array.dtype == dtype else patch.array.astype(dtype)
        if patch.nodata is not None:
            arr = np.full((n, self.height, self.width), patch.nodata, dtype)
            kw.update(src_nodata=patch.nodata, dst_nodata=patch.nodata)
        else:
            arr = np.zeros((n + 1, self.height, self.width), dtype)  # + the alpha band: 0 outside the source
            kw.update(dst_alpha=n + 1)
        # the warp between in-memory datasets made with their transform and CRS: reproject() on
        # bare arrays wraps each in a MEM dataset that exists for a moment without a geotransform,
        # and hides the NotGeoreferencedWarning that raises with warnings.catch_warnings(), which
        # is not thread-safe: with warps or other catch_warnings() users on other threads (a
        # training overlay reads tiles in parallel) the warning escaped onto stderr
        with self._transform_lock, _mem_dataset(src, patch.transform, patch.crs) as s_ds, \
                _mem_dataset(arr, self.dst_transform, self.dst_crs) as d_ds:
            reproject(band(s_ds, list(range(1, n + 1))), band(d_ds, list(range(1, arr.shape[0] + 1))), **kw)
            arr = d_ds.read()
        if patch.nodata is not None:
            return _FileData(arr, patch.nodata, None, patch.nbytes, patch.block_bytes)
        outside = arr[-1] == 0
        return _FileData(arr[:-1], None, outside if outside.any() else None, patch.nbytes, patch.block_bytes,
                         placed=not outside.all())

    def _aligned_offsets(self, src) -> tuple[int, int] | None:
        """(col, row) offset of the block in the source when both grids coincide, else None."""
        if src.crs is None or src.crs != self.dst_crs:
            return None
        s, d = src.transform, self.dst_transform
        if s.b != 0 or s.d != 0 or d.b != 0 or d.d != 0:
            return None
        if not (np.isclose(s.a, d.a, rtol=0, atol=abs(d.a) * 1e-9) and np.isclose(s.e, d.e, rtol=0, atol=abs(d.e) * 1e-9)):
            return None
        col, row = (d.c - s.c) / s.a, (d.f - s.f) / s.e
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            return None
        return int(round(col)), int(round(row))

    def _read_aligned(self, src, job: _Job, nodata, offsets):
        from rasterio.windows import Window

        col, row = offsets
        h, w = self.height, self.width
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + w, src.width), min(row + h, src.height)
        fill = nodata if nodata is not None else 0
        # the file's dtype when its nodata fits (a uint16 file with nodata 0.0 stays uint16, not
        # float64: 4x less to allocate, copy and scan; the values are the same)
        dtype = _warp_dtype(src.dtypes[0], nodata)
        arr = _decoded_array((len(job.indexes), h, w), dtype, fill)
        outside = np.ones((h, w), bool)
        win = None
        if c1 > c0 and r1 > r0:
            win = Window(c0, r0, c1 - c0, r1 - r0)
            if (c0, r0, c1, r1) == (col, row, col + w, row + h):  # the whole block: decoded in place
                src.read(list(job.indexes), window=win, out=arr)
            else:
                arr[:, r0 - row:r1 - row, c0 - col:c1 - col] = src.read(list(job.indexes), window=win)
            outside[r0 - row:r1 - row, c0 - col:c1 - col] = False
        return arr, (outside if outside.any() else None), win

    # ------------------------------------------------------------------ error classes
    def _classify(self, href: str, path: str, exc: BaseException) -> tuple[str, str]:
        """("missing" | "transient" | "fatal", detail) for a failed read."""
        detail = _error_text(exc)
        if isinstance(exc, _BadInputError):
            return "fatal", detail
        if _is_local(path):
            return ("missing", f"no such file {path}") if not os.path.exists(path) else ("fatal", detail)
        m = re.search(r"HTTP (?:response )?code:? ?(\d{3})", detail, re.IGNORECASE)
        if m:
            return _status_kind(int(m.group(1))), detail
        if _TRANSIENT_TEXT.search(detail):
            return "transient", detail
        # GDAL's message is ambiguous ("not recognized as being in a supported file format",
        # "does not exist in the file system"): ask the server what it says about the href.
        code, probe = self._probe(href)
        if code is None:
            return "transient", f"{detail}; probe: {probe}"
        return _status_kind(code), f"{detail}; server answers {code}"

    def _probe(self, href: str) -> tuple[int | None, str]:
        try:
            if href.startswith(("http://", "https://")) or href.startswith("/vsicurl/"):
                import urllib.error
                import urllib.request

                url = href.removeprefix("/vsicurl/")
                req = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
                try:
                    with urllib.request.urlopen(req, timeout=self.http_timeout) as resp:  # noqa: S310
                        resp.read(1)
                        return int(resp.status), "ok"
                except urllib.error.HTTPError as err:
                    return int(err.code), str(err)
            if href.startswith("s3://") or href.startswith("/vsis3/"):
                return probe_s3_object(href, endpoint_url=self.s3_endpoint, region=self.s3_region,
                                       profile=self.s3_profile, timeout=self.http_timeout)
        except Exception as exc:  # noqa: BLE001 - a failed probe only means "unknown"
            return None, f"{type(exc).__name__}: {exc}"
        return None, "no probe for this scheme"


class _Cancelled(Exception):
    """Another file of the block failed; this worker stops early."""


class _BadInputError(Exception):
    """The file is readable but unusable (no CRS, band out of range): not worth a retry."""


class _BandIndexError(_BadInputError):
    pass


_FATAL_PASSTHROUGH = (_Cancelled, ConfigError, MemoryError)


# --------------------------------------------------------------------------- worker pool


class _Pool:
    """``n`` worker threads, each inside its own GDAL environment for its whole life.

    (rasterio's ``Env`` is thread-local, so a plain executor would read without the options.)
    """

    def __init__(self, n: int, env_factory: Callable, fn: Callable, cancel: threading.Event):
        self._in: queue.Queue = queue.Queue()
        self._out: queue.Queue = queue.Queue()
        self._fn, self._env_factory, self._cancel = fn, env_factory, cancel
        self._threads = [threading.Thread(target=self._work, name=f"ecocube-read-{i}", daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        try:
            ctx = self._env_factory()
            ctx.__enter__()
        except BaseException as exc:  # noqa: BLE001 - reported for every job
            self._drain(exc)
            return
        try:
            while True:
                job = self._in.get()
                if job is None:
                    return
                if self._cancel.is_set():
                    self._out.put((job, None, _Cancelled()))
                    continue
                try:
                    self._out.put((job, self._fn(job), None))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    self._out.put((job, None, exc))
        finally:
            ctx.__exit__(None, None, None)

    def _drain(self, exc: BaseException) -> None:
        while True:
            job = self._in.get()
            if job is None:
                return
            self._out.put((job, None, exc))

    def submit(self, job) -> None:
        self._in.put(job)

    def result(self):
        return self._out.get()

    def close(self) -> None:
        for _ in self._threads:
            self._in.put(None)
        for t in self._threads:
            t.join()


# --------------------------------------------------------------------------- read_block


def norm_window(tile, window):
    """``window`` (tile pixels; None: the whole tile) as a whole-pixel ``Window`` inside the tile."""
    from rasterio.windows import Window

    if window is None:
        return Window(0, 0, tile.width, tile.height)
    vals = (window.col_off, window.row_off, window.width, window.height)
    if any(float(v) != int(v) for v in vals):
        raise GridError(f"tile {tile.id}: window {window} must have whole-pixel offsets and sizes")
    col, row, w, h = (int(v) for v in vals)
    if w <= 0 or h <= 0 or col < 0 or row < 0 or col + w > tile.width or row + h > tile.height:
        raise GridError(f"tile {tile.id}: window {window} is not inside the tile ({tile.width}×{tile.height} px)")
    return Window(col, row, w, h)


def _jobs_for_period(obs_list: list[tuple[SourceCatalog, Observation]], period_index: int) -> list[_Job]:
    jobs: dict[tuple, _Job] = {}
    for cat, obs in obs_list:
        for ref in obs.file_refs():
            key = (ref.href, ref.indexes, cat.resampling, cat.nodata, "data")
            jobs.setdefault(key, _Job(period_index, ref.href, ref.indexes, cat.resampling, cat.nodata, "data"))
        if obs.mask is not None:
            href, idx = obs.mask
            key = (href, (idx,), "nearest", None, "mask")
            jobs.setdefault(key, _Job(period_index, href, (idx,), "nearest", None, "mask"))
    return list(jobs.values())


def _job_key(job: _Job) -> tuple:
    return (job.href, job.indexes, job.resampling, job.nodata, job.role)


def _nodata_mask(arr: np.ndarray, nodata) -> np.ndarray:
    bad = np.zeros(arr.shape, bool)
    if np.issubdtype(arr.dtype, np.floating):
        bad |= np.isnan(arr)
    if nodata is not None:
        bad |= np.isnan(arr) if np.isnan(nodata) else (arr == nodata)
    return bad


def _observation_layers(cat: SourceCatalog, obs: Observation, results: dict, shape,
                        out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(values (nb, h, w) float32 NaN-invalid, reason (nb, h, w) uint8) of one observation.

    ``out``: two arrays of those shapes to fill instead of new ones (e.g. views of the
    block's cube). Each band is classified and scaled in one compiled pass
    (:func:`_band_kernel`), with the same values and codes as the numpy formulation
    ``float32(float64(dn) * scale + offset)`` where valid (``tests/test_read.py``)."""
    nb = len(cat.bands)
    h, w = shape
    if out is None:
        values = np.empty((nb, h, w), np.float32)
        reason = np.empty((nb, h, w), np.uint8)
    else:
        values, reason = out
    mask_invalid = mask_nodata = None
    mask_missing = False
    if obs.mask is not None:
        href, idx = obs.mask
        res = results[(href, (idx,), "nearest", None, "mask")]
        if isinstance(res, _Missing):
            mask_missing = True
        else:
            qa = res.array[0]
            mask_nodata = _nodata_mask(qa, res.nodata)
            if res.outside is not None:
                mask_nodata |= res.outside
            mask_invalid = cat.mask_rule.invalid(qa)
    refs = {ref.href: ref for ref in obs.file_refs()}
    kernel = _band_kernel()
    none2d = np.zeros((1, 1), np.bool_)
    for bi, band in enumerate(cat.bands):
        href, idx = obs.bands[band]
        ref = refs[href]
        res = results[(href, ref.indexes, cat.resampling, cat.nodata, "data")]
        if isinstance(res, _Missing) or mask_missing:
            values[bi] = np.nan
            reason[bi] = REASON_MISSING
            continue
        dn = res.array[ref.indexes.index(idx)]
        nodata = res.nodata
        if nodata is not None and np.issubdtype(dn.dtype, np.floating):
            nodata = dn.dtype.type(nodata)  # compared in the array's precision, as numpy does
        if not dn.flags.c_contiguous:
            dn = np.ascontiguousarray(dn)
        kernel(dn, 0.0 if nodata is None else float(nodata), nodata is not None,
               nodata is not None and bool(np.isnan(nodata)),
               none2d if res.outside is None else res.outside, res.outside is not None,
               none2d if mask_invalid is None else mask_invalid,
               none2d if mask_nodata is None else mask_nodata, mask_invalid is not None,
               float(cat.scale), float(cat.offset), values[bi], reason[bi])
    return values, reason


_BAND_KERNEL = None


def _band_kernel():
    """The compiled per-band pass (numba, compiled on first use and cached on disk)."""
    global _BAND_KERNEL
    if _BAND_KERNEL is None:
        from numba import njit

        @njit(nogil=True, cache=True)
        def band_kernel(dn, nodata, has_nodata, nodata_nan, outside, has_outside, invalid, mask_nodata,
                        has_mask, scale, offset, values, reason):  # pragma: no cover - compiled
            """reason: nodata (NaN, == nodata, outside the file, or the mask's own nodata) >
            masked (the mask rule) > valid; values float32(float64(dn) * scale + offset) where
            valid, else NaN."""
            h, w = dn.shape
            for y in range(h):
                for x in range(w):
                    v = dn[y, x]
                    bad = v != v  # NaN (never for integers)
                    if has_nodata and not bad:
                        bad = v == nodata and not nodata_nan
                    if has_outside and outside[y, x]:
                        bad = True
                    r = REASON_VALID
                    if has_mask:
                        if invalid[y, x]:
                            r = REASON_MASKED
                        if mask_nodata[y, x]:
                            bad = True
                    if bad:
                        r = REASON_NODATA
                    reason[y, x] = r
                    if r == REASON_VALID:
                        values[y, x] = np.float32(np.float64(v) * scale + offset)
                    else:
                        values[y, x] = np.nan

        _BAND_KERNEL = band_kernel
    return _BAND_KERNEL


def _combine_reasons(reasons: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Reason of a composite: valid if any observation is; else missing > masked > nodata."""
    out = np.full(reasons.shape[1:], REASON_NODATA, np.uint8)
    out[np.any(reasons == REASON_MASKED, axis=0)] = REASON_MASKED
    out[np.any(reasons == REASON_MISSING, axis=0)] = REASON_MISSING
    out[count > 0] = REASON_VALID
    return out


@dataclass(frozen=True)
class _BlockPlan:
    """What one block reads: the periods, the source catalogs, the bands of the cube, and
    per period (in time order) its observations and the file jobs behind them."""

    periods: list[Period]
    catalogs: list[SourceCatalog]
    bands: tuple[str, ...]
    observations: list[list[tuple[SourceCatalog, Observation]]]
    jobs: list[list[_Job]]

    @classmethod
    def for_tile(cls, cfg, tile, *, threads: int | None = None) -> _BlockPlan:
        from .scenes import tile_catalog  # searched (STAC API) and selected scenes, once per tile

        inputs = cfg.inputs
        periods, cats = tile_catalog(cfg, tile, threads=threads, measure=mask_cover)
        observations = [[(cat, o) for cat in cats for o in cat.observations.get(p.index, [])] for p in periods]
        jobs = [_jobs_for_period(obs, p.index) for p, obs in zip(periods, observations)]
        return cls(list(periods), list(cats), band_names(inputs), observations, jobs)

    @property
    def n_jobs(self) -> int:
        return sum(len(j) for j in self.jobs)


class _BlockCube:
    """The ``(time, band, y, x)`` arrays of one block, composited period by period."""

    def __init__(self, plan: _BlockPlan, shape: tuple[int, int], composite_cfg):
        h, w = shape
        T, B = len(plan.periods), len(plan.bands)
        self.plan = plan
        self.shape = (h, w)
        self.data = np.full((T, B, h, w), np.nan, np.float32)
        self.reason = np.full((T, B, h, w), REASON_NODATA, np.uint8)
        self.count = np.zeros((T, B, h, w), np.uint16)
        self.band_slot = {b: i for i, b in enumerate(plan.bands)}
        self.percentile = float(composite_cfg.percentile)
        self.extras = tuple(float(q) for q in composite_cfg.extra_percentiles)

    def add_period(self, k: int, results: dict) -> None:
        """Composite period ``k`` from the files read for it (``results`` by job key)."""
        for cat in self.plan.catalogs:
            obs_list = [o for c, o in self.plan.observations[k] if c is cat]
            slots = [self.band_slot[b] for b in cat.bands]
            if not obs_list:
                continue  # no observation of this source in the period: NODATA, count 0
            direct = self._slot_range(slots) if cat.kind == "composite" else None
            if direct is not None:  # composites: each observation straight into the cube (the last wins)
                for o in obs_list:
                    _observation_layers(cat, o, results, self.shape, out=(self.data[k, direct], self.reason[k, direct]))
                np.equal(self.reason[k, direct], REASON_VALID, out=self.count[k, direct], casting="unsafe")
                continue
            layers = [_observation_layers(cat, o, results, self.shape) for o in obs_list]
            if cat.kind == "composite":
                self._put_composites(k, slots, layers)
            else:
                self._put_acquisitions(k, cat, slots, layers)

    def _put_composites(self, k: int, slots: list[int], layers) -> None:
        for values, rsn in layers:  # one per period (the last wins if listed twice)
            self.data[k, slots] = values
            self.reason[k, slots] = rsn
            self.count[k, slots] = (rsn == REASON_VALID).astype(np.uint16)

    def _slot_range(self, slots: list[int]) -> slice | None:
        """``slots`` as a slice when they are consecutive (a view of the cube, no copy)."""
        if slots and slots == list(range(slots[0], slots[0] + len(slots))):
            return slice(slots[0], slots[0] + len(slots))
        return None

    def _put_acquisitions(self, k: int, cat: SourceCatalog, slots: list[int], layers) -> None:
        """The period's percentile composite (and extra percentiles) of the acquisitions."""
        stack = np.stack([v for v, _ in layers])  # (n_obs, nb, h, w)
        rsn = np.stack([r for _, r in layers])
        n_valid = np.sum(rsn == REASON_VALID, axis=0).astype(np.uint16)
        combined = _combine_reasons(rsn, n_valid)
        self.data[k, slots] = nan_percentile(stack, self.percentile)
        self.reason[k, slots] = combined
        self.count[k, slots] = n_valid
        for q in self.extras:
            xs = [self.band_slot[f"{b}_{_pct_label(q)}"] for b in cat.bands]
            self.data[k, xs] = nan_percentile(stack, q)
            self.reason[k, xs] = combined
            self.count[k, xs] = n_valid



#: (tile, href) of the missing inputs this process has warned about: a tile reads an input
#: once per block, and one warning per tile and file says it (the record lists them all)
_MISSING_WARNED: set[tuple[str, str]] = set()
_MISSING_LOCK = threading.Lock()


def _warn_missing_once(tile_id: str, href: str) -> None:
    with _MISSING_LOCK:
        first = (tile_id, href) not in _MISSING_WARNED
        _MISSING_WARNED.add((tile_id, href))
    if first:
        log.warning("tile %s: input missing, recorded: %s", tile_id, href)
    else:
        log.debug("tile %s: input missing, recorded: %s", tile_id, href)


class _Scheduler:
    """Reads the file jobs of a block's periods on the worker pool, in time order with at
    most ``max_in_flight`` files in flight, and composites each period as soon as its last
    file is in (so memory is bounded by the block, not by the length of the series).

    The first failure cancels the other workers and is raised once they have stopped; an
    input missing under ``on_missing: record`` is recorded instead.
    """

    def __init__(self, plan: _BlockPlan, sink: Callable[[int, dict], None], reader: _Reader, pool: _Pool | None,
                 cancel: threading.Event, *, max_in_flight: int, record_missing: bool, tile_id: str):
        # sink(k, results): period k's files are in (a _BlockCube's add_period composites them)
        self.plan, self.sink, self.reader, self.pool, self.cancel = plan, sink, reader, pool, cancel
        self.max_in_flight = max_in_flight
        self.record_missing = record_missing
        self.tile_id = tile_id
        self.missing: list[str] = []
        self.outside: dict[str, str] = {}
        self.resampled: set[str] = set()
        self._results: dict[int, dict] = {}
        self._remaining: dict[int, int] = {}
        self._next_period = 0
        self._in_flight = 0
        self._failure: BaseException | None = None
        self._failed_href: str | None = None

    def run(self) -> list[str]:
        """Read and composite every period; returns the hrefs recorded as missing."""
        while True:
            self._submit_periods()
            if self._in_flight == 0:
                break
            job, res, exc = self.pool.result()
            self._in_flight -= 1
            self._collect(job, res, exc)
        self._raise_failure()
        return self.missing

    def _submit_periods(self) -> None:
        """Queue the next periods' files while there is room (at least one period at a time)."""
        while (self._failure is None and self._next_period < len(self.plan.periods)
               and (self._in_flight < self.max_in_flight or self._in_flight == 0)):
            k = self._next_period
            self._next_period += 1
            self._results[k] = {}
            self._remaining[k] = len(self.plan.jobs[k])
            if self._remaining[k] == 0:
                self.sink(k, self._results.pop(k))
                continue
            for job in self.plan.jobs[k]:
                self.pool.submit(job)
                self._in_flight += 1

    def _collect(self, job: _Job, res, exc: BaseException | None) -> None:
        """One finished file: a result, a recorded missing input, or a failure."""
        if exc is not None:
            if isinstance(exc, InputMissingError) and self.record_missing:
                res = _Missing(exc)
                if job.href not in self.missing:
                    self.missing.append(job.href)
                _warn_missing_once(self.tile_id, job.href)
            elif isinstance(exc, _Cancelled):
                return
            else:
                self._fail(exc, job.href)
                return
        if self._failure is not None:
            return  # draining the files still in flight
        if isinstance(res, _Patch):
            self.resampled.add(job.href)
            try:
                res = self.reader.warp(res)
            except Exception as err:  # noqa: BLE001 - names the file and the tile
                self._fail(ReadError(f"cannot reproject {job.href} onto tile {self.tile_id}: {_error_text(err)}",
                                     url=job.href, tile=self.tile_id), job.href)
                return
        if isinstance(res, _FileData) and not res.placed:
            self.outside[job.href] = res.note
        self._results[job.period][_job_key(job)] = res
        self._remaining[job.period] -= 1
        if self._remaining[job.period] == 0:
            self.sink(job.period, self._results.pop(job.period))

    def _fail(self, exc: BaseException, href: str) -> None:
        if self._failure is None:
            self._failure, self._failed_href = exc, href
            self.cancel.set()

    def _raise_failure(self) -> None:
        failure, href = self._failure, self._failed_href
        if failure is None:
            return
        if isinstance(failure, ReadError | ConfigError):
            raise failure
        raise ReadError(f"reading {href} for tile {self.tile_id} failed: {type(failure).__name__}: {failure}",
                        url=href, tile=self.tile_id) from failure


@dataclass
class FetchedBlock:
    """The files of one block read, decoded in their own data types (and warped onto the
    block) but not yet composited: what a read-ahead of the next block holds while the
    current one is computed (:func:`fetch_block`). For uint16 inputs that is 2 bytes a
    value, against 7 for the composited cube (float32 data, uint8 reason, uint16 count).
    """

    window: object
    plan: _BlockPlan
    #: per period (time order): job key -> what was read (consumed by read_block)
    periods: list
    scheduler: _Scheduler
    stats: dict
    seconds: float


def _window_key(window) -> tuple[int, int, int, int]:
    return int(window.col_off), int(window.row_off), int(window.width), int(window.height)


def _read_files(cfg, tile, window, plan: _BlockPlan, threads: int | None,
                sink: Callable[[int, dict], None]) -> tuple[_Scheduler, dict]:
    """Read every file of ``plan`` for ``window`` on a worker pool, handing each period's
    files to ``sink`` as soon as they are in; returns the scheduler (missing, outside and
    resampled files) and the read statistics."""
    inputs = cfg.inputs
    n_threads = max(1, min(ecoenv.available_threads(threads or inputs.threads), max(plan.n_jobs, 1)))
    cancel = threading.Event()
    reader = _Reader(cfg, tile, window, cancel)
    pool = _Pool(n_threads, reader.gdal_env, reader.read, cancel) if plan.n_jobs else None
    scheduler = _Scheduler(plan, sink, reader, pool, cancel, max_in_flight=max(4 * n_threads, 8),
                           record_missing=inputs.on_missing == "record", tile_id=tile.id)
    try:
        missing = scheduler.run()
    finally:
        cancel.set()  # nothing is pending after a normal end; after an error, workers stop early
        if pool is not None:
            pool.close()
    stats = dict(reader.stats)
    stats.update(threads=n_threads, jobs=plan.n_jobs, missing=len(missing))
    return scheduler, stats


def fetch_block(cfg, tile, window=None, *, threads: int | None = None) -> FetchedBlock:
    """Read and decode every file of one block without compositing it (the first half of
    :func:`read_block`, e.g. on a background thread for the next block); pass the result
    to ``read_block(..., fetched=)``. Raises what :func:`read_block` raises."""
    t0 = time.perf_counter()
    window = norm_window(tile, window)
    plan = _BlockPlan.for_tile(cfg, tile, threads=threads)
    periods: list = [None] * len(plan.periods)

    def keep(k: int, results: dict) -> None:
        periods[k] = results

    scheduler, stats = _read_files(cfg, tile, window, plan, threads, keep)
    return FetchedBlock(window, plan, periods, scheduler, stats, time.perf_counter() - t0)


def read_block(cfg, tile, window=None, *, threads: int | None = None,
               fetched: FetchedBlock | None = None) -> ReadResult:
    """Read one block (``window`` in tile pixels; None = the whole tile) of every input.

    Returns a :class:`ReadResult` with ``(time, band, y, x)`` arrays over the configured
    periods and :func:`band_names` bands. Raises :class:`InputMissingError` for a missing
    input under ``on_missing: fail`` and :class:`ReadError` for any other failure, both
    naming the URL and the tile. ``fetched``: the block's files already read by
    :func:`fetch_block` (same ``window``): only the compositing is left.
    """
    t0 = time.perf_counter()
    window = norm_window(tile, window)
    inputs = cfg.inputs
    shape = (int(window.height), int(window.width))
    if fetched is not None:
        if _window_key(fetched.window) != _window_key(window):
            raise ReadError(f"tile {tile.id}: the files fetched for window {fetched.window} were given for "
                            f"window {window}", tile=tile.id)
        plan, scheduler, stats = fetched.plan, fetched.scheduler, dict(fetched.stats)
        cube = _BlockCube(plan, shape, inputs.composite)
        for k, results in enumerate(fetched.periods):
            fetched.periods[k] = None  # each period's decoded files freed once composited
            cube.add_period(k, results)
        seconds = fetched.seconds + time.perf_counter() - t0
    else:
        plan = _BlockPlan.for_tile(cfg, tile, threads=threads)
        cube = _BlockCube(plan, shape, inputs.composite)
        scheduler, stats = _read_files(cfg, tile, window, plan, threads, cube.add_period)
        seconds = time.perf_counter() - t0
    stats.update(seconds=round(seconds, 4))
    return ReadResult(data=cube.data, reason=cube.reason, count=cube.count, bands=plan.bands,
                      periods=list(plan.periods), missing=list(scheduler.missing), stats=stats,
                      files=frozenset(j.href for jobs in plan.jobs for j in jobs),
                      outside=dict(scheduler.outside), resampled=frozenset(scheduler.resampled))


def footprint_note(crs, bounds) -> str:
    """What is impossible about a file's footprint in its declared CRS ("" if nothing): a
    geographic CRS with coordinates beyond ±180° / ±90° (a projected file labelled EPSG:4326)."""
    if crs is None:
        return "no CRS"
    if crs.is_geographic:
        left, bottom, right, top = bounds
        if min(left, right) < -360 or max(left, right) > 360 or min(bottom, top) < -90.5 or max(bottom, top) > 90.5:
            return (f"bounds ({left:.6g}, {bottom:.6g}, {right:.6g}, {top:.6g}) are impossible in "
                    f"{crs.to_string()}: projected coordinates labelled geographic?")
    return ""


def mask_cover(cfg, src_cfg, cat: SourceCatalog, observations: list[Observation], tile, *,
               threads: int | None = None) -> dict[tuple[str, int], float | None]:
    """Percentage of the tile's pixels that the source's mask marks invalid, per mask
    (href, band index) of ``observations``; None where the mask has no data on the tile.

    Reads each quality layer once over the whole tile (nearest), with the retries and
    errors of every read; a missing mask raises :class:`InputMissingError`.
    """
    window = norm_window(tile, None)
    masks = list(dict.fromkeys(o.mask for o in observations if o.mask is not None))
    if not masks or cat.mask_rule is None:
        return {}
    cancel = threading.Event()
    reader = _Reader(cfg, tile, window, cancel)
    n_threads = max(1, min(ecoenv.available_threads(threads or cfg.inputs.threads), len(masks)))
    pool = _Pool(n_threads, reader.gdal_env, reader.read, cancel)
    out: dict[tuple[str, int], float | None] = {}
    failure = None
    try:
        for href, idx in masks:
            pool.submit(_Job(-1, href, (idx,), "nearest", None, "mask"))
        for _ in masks:
            job, res, exc = pool.result()
            if exc is not None:
                if failure is None and not isinstance(exc, _Cancelled):
                    failure = exc
                    cancel.set()
                continue
            if failure is not None:
                continue
            if isinstance(res, _Patch):
                res = reader.warp(res)
            qa = res.array[0]
            nodata = _nodata_mask(qa, res.nodata)
            if res.outside is not None:
                nodata |= res.outside
            n = int((~nodata).sum())
            out[(job.href, job.indexes[0])] = (
                None if n == 0 else 100.0 * float((cat.mask_rule.invalid(qa) & ~nodata).sum()) / n)
    finally:
        cancel.set()
        pool.close()
    if failure is not None:
        if isinstance(failure, ReadError | ConfigError):
            raise failure
        raise ReadError(f"measuring cloud on tile {tile.id} from the masks of {src_cfg.name} failed: "
                        f"{type(failure).__name__}: {failure}", tile=tile.id) from failure
    return out
