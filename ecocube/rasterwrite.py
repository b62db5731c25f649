"""Verified raster writes: a GeoTIFF is published only once it is known to hold what was written.

rasterio's ``close()`` does not raise on libtiff write errors: on a full disk GDAL prints
``_tiffWriteProc: No space left on device`` and the file is left truncated or unreadable,
while the writer carries on. Every raster ecocube writes therefore goes through:

- :class:`WriteDigest`: the SHA-256 of every window as it is written (window order, the
  file's dtype), kept beside the open dataset (no copy of the data);
- :func:`write_window`: ``dst.write`` whose GDAL error becomes :class:`StoreError` naming
  the file and the errno;
- :func:`close_checked`: ``dst.close()`` with GDAL's last error checked afterwards
  (``CPLGetLastErrorType`` through the loaded libgdal; errors of type ≥ CE_Failure fail);
- :func:`verify_written`: the file re-opened, its size/shape/dtype checked and the same
  windows read back and hashed: a mismatch, a read error or a short file fails;
- :func:`verify_strips`: the same check for a file written from data that is still at hand:
  the windows read back are compared with the data itself, so nothing is hashed;
- :class:`WindowChecksums` / :func:`verify_checksums`: the CRC-32 of each window as it is
  written and of the same window read back (a tile's outputs: ~3x cheaper than SHA-256 and
  it names the first window that differs).

A failure raises :class:`~ecocube.errors.StoreError` ``cannot write PATH: CAUSE [errno 28
ENOSPC: No space left on device]`` (the errno found in GDAL's messages or, failing that,
from a file system with no free space left); its ``errno`` attribute is set.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as errno_mod
import hashlib
import logging
import os
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError

#: errnos looked for in GDAL's messages, most specific first
_ERRNOS = (errno_mod.ENOSPC, errno_mod.EDQUOT, errno_mod.EFBIG, errno_mod.EROFS, errno_mod.EIO, errno_mod.EACCES)
#: a file system with less than this free is taken as the cause of an unexplained write failure
_NEARLY_FULL = 1 << 20

log = logging.getLogger(__name__)

_lib_lock = threading.Lock()
_lib: Any = None
_lib_loaded = False


def _libgdal():
    """The libgdal rasterio loaded (ctypes), or None where it cannot be found."""
    global _lib, _lib_loaded
    with _lib_lock:
        if _lib_loaded:
            return _lib
        _lib_loaded = True
        import rasterio._base  # noqa: F401 - loads libgdal into the process

        path = tiff = None
        try:
            with open("/proc/self/maps") as fh:
                for line in fh:
                    name = line.rsplit(None, 1)[-1]
                    if "/libgdal" in name and ".so" in name and path is None:
                        path = name
                    elif "/libtiff" in name and ".so" in name and tiff is None:
                        tiff = name
        except OSError:
            path = None
        _libtiff_errors_to_log(tiff)
        if path is None:
            path = ctypes.util.find_library("gdal")
        if path is None:
            return None
        try:
            lib = ctypes.CDLL(path)
            lib.CPLGetLastErrorMsg.restype = ctypes.c_char_p
            lib.CPLGetLastErrorType.restype = ctypes.c_int
            lib.CPLGetLastErrorNo.restype = ctypes.c_int
            lib.CPLPushErrorHandler.argtypes = [_HANDLER]
            lib.CPLPopErrorHandler.argtypes = []
        except (OSError, AttributeError):
            return None
        _lib = lib
        return lib


_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_char_p)


@_HANDLER
def _to_debug_log(kind: int, number: int, message: bytes | None) -> None:
    log.debug("GDAL error %d/%d while writing: %s", kind, number,
              message.decode("utf-8", "replace") if message else "")


@contextlib.contextmanager
def gdal_errors_to_log() -> Iterator[None]:
    """GDAL's messages inside the block go to this module's debug log instead of stderr.

    A write to a full disk makes libtiff report every failed seek and write
    (``_tiffSeekProc: No space left on device``, hundreds per tile) straight to stderr,
    before ecocube's one-line error; the errors themselves are still taken from GDAL's
    last-error state afterwards (the handler is per thread and does not clear it)."""
    lib = _libgdal()
    if lib is None:
        yield
        return
    lib.CPLPushErrorHandler(_to_debug_log)
    try:
        yield
    finally:
        lib.CPLPopErrorHandler()


_TIFF_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
_libc = None


@_TIFF_HANDLER
def _tiff_to_debug_log(module: bytes | None, fmt: bytes | None, args) -> None:
    try:
        buf = ctypes.create_string_buffer(512)
        _libc.vsnprintf(buf, len(buf), fmt, args)  # x86-64/aarch64: the va_list arrives as a pointer
        text = buf.value.decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a log line must never fail a write
        text = (fmt or b"").decode("utf-8", "replace")
    log.debug("libtiff: %s: %s", (module or b"").decode("utf-8", "replace"), text)


def _libtiff_errors_to_log(path: str | None) -> None:
    """libtiff's process-wide error handler (it prints ``_tiffSeekProc: No space left on
    device.`` straight to stderr, once per failed seek, for I/O errors GDAL does not route
    through its own handler) is replaced by this module's debug log. The failures still fail
    the write: they are found by GDAL's last error and by re-reading the file."""
    global _libc
    if path is None:
        return
    try:
        _libc = ctypes.CDLL(None)
        _libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        tiff = ctypes.CDLL(path)
        tiff.TIFFSetErrorHandler.argtypes = [_TIFF_HANDLER]
        tiff.TIFFSetErrorHandler.restype = ctypes.c_void_p
        tiff.TIFFSetErrorHandler(_tiff_to_debug_log)
    except (OSError, AttributeError):
        log.debug("libtiff's error handler left as it is (%s)", path)


def reset_gdal_error() -> None:
    """Clear this thread's last GDAL error."""
    lib = _libgdal()
    if lib is not None:
        lib.CPLErrorReset()


def last_gdal_error() -> tuple[int, int, str] | None:
    """This thread's last GDAL error ``(type, number, message)`` if of type ≥ CE_Failure (3)."""
    lib = _libgdal()
    if lib is None:
        return None
    kind = int(lib.CPLGetLastErrorType())
    if kind < 3:
        return None
    msg = lib.CPLGetLastErrorMsg()
    return kind, int(lib.CPLGetLastErrorNo()), (msg.decode("utf-8", "replace") if msg else "")


def errno_of(path: str | Path, message: str) -> int | None:
    """The errno behind a failed write of ``path``: named in ``message``, else ENOSPC when
    the file system holding it is (nearly) full, else None."""
    for code in _ERRNOS:
        if os.strerror(code) in message:
            return code
    folder = Path(path).parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_bavail * st.f_frsize < _NEARLY_FULL:
        return errno_mod.ENOSPC
    return None


def write_error(path: str | Path, message: str) -> StoreError:
    """``StoreError("cannot write PATH: MESSAGE [errno N NAME: strerror]")`` with ``.errno``."""
    code = errno_of(path, message)
    suffix = f" [errno {code} {errno_mod.errorcode.get(code, '?')}: {os.strerror(code)}]" if code else ""
    err = StoreError(f"cannot write {path}: {message}{suffix}")
    err.errno = code  # (OSError's filename is not set: it would replace the message in str())
    err.path = str(path)
    return err


class WriteDigest:
    """SHA-256 of the windows written into one raster, in write order, as the file's dtype."""

    __slots__ = ("dtype", "windows", "_hash")

    def __init__(self, dtype: str):
        self.dtype = np.dtype(dtype)
        self.windows: list[tuple[int, int, int, int]] = []  # (row_off, col_off, height, width)
        self._hash = hashlib.sha256()

    def add(self, arr: np.ndarray, window) -> None:
        arr = np.ascontiguousarray(arr if arr.ndim == 3 else arr[None], dtype=self.dtype)
        self.windows.append((int(window.row_off), int(window.col_off), int(window.height), int(window.width)))
        self._hash.update(memoryview(arr).cast("B"))

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class WindowChecksums:
    """The CRC-32 of every window written into one raster (the file's dtype, ``(count, h, w)``).

    What the read-back check catches: a file that is empty, truncated or does not open, a
    header with another size, band count or dtype, a block that does not decode, and any
    pixel read back other than written (CRC-32 misses a random change with probability
    2**-32 per window; it is a check against faults, not against tampering).
    """

    __slots__ = ("crcs", "dtype", "windows")

    def __init__(self, dtype: str):
        self.dtype = np.dtype(dtype)
        self.windows: list[tuple[int, int, int, int]] = []  # (row_off, col_off, height, width)
        self.crcs: list[int] = []

    def add(self, arr: np.ndarray, window) -> None:
        arr = np.ascontiguousarray(arr if arr.ndim == 3 else arr[None], dtype=self.dtype)
        self.windows.append((int(window.row_off), int(window.col_off), int(window.height), int(window.width)))
        self.crcs.append(zlib.crc32(memoryview(arr).cast("B")))


def write_window(dst, arr: np.ndarray, window, path: str | Path,
                 digest: WriteDigest | WindowChecksums | None = None) -> None:
    """``dst.write(arr, window=window)`` (arr ``(count, h, w)``); a GDAL error becomes
    :class:`StoreError` naming ``path`` and the errno."""
    import rasterio.errors

    reset_gdal_error()
    try:
        with gdal_errors_to_log():
            dst.write(arr, window=window)
    except (rasterio.errors.RasterioError, OSError) as exc:
        raise _error_after(path, str(exc)) from exc
    err = last_gdal_error()
    if err is not None:
        raise write_error(path, err[2])
    if digest is not None:
        digest.add(arr, window)


def _error_after(path, text: str) -> StoreError:
    err = last_gdal_error()
    return write_error(path, f"{text} ({err[2]})" if err is not None and err[2] not in text else text)


def close_checked(dst, path: str | Path) -> None:
    """Close a dataset opened for writing; GDAL errors while flushing raise StoreError."""
    import rasterio.errors

    reset_gdal_error()
    try:
        with gdal_errors_to_log():
            dst.close()
    except (rasterio.errors.RasterioError, OSError) as exc:
        raise _error_after(path, str(exc)) from exc
    err = last_gdal_error()
    if err is not None:
        raise write_error(path, err[2])


def _check_not_empty(path, name) -> None:
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise write_error(name, f"cannot stat the written file: {exc}") from exc
    if size == 0:
        raise write_error(name, "the written file is empty")


def verify_written(path: str | Path, digest: WriteDigest, *, width: int, height: int, count: int,
                   what: str | Path | None = None) -> None:
    """Re-open ``path`` and check it holds exactly what ``digest`` saw written.

    ``what`` names the file in errors (default ``path``; e.g. the final name of a
    temporary file). Reads only the written windows, in their order (block-aligned when
    the writer's windows are): the cost is one decode of the file.
    """
    import rasterio

    name = what if what is not None else path
    _check_not_empty(path, name)
    h = hashlib.sha256()
    try:
        with rasterio.open(path) as src:
            if (src.width, src.height, src.count) != (width, height, count) or np.dtype(src.dtypes[0]) != digest.dtype:
                raise write_error(name, f"the written file is {src.width}x{src.height}x{src.count} {src.dtypes[0]}, "
                                        f"expected {width}x{height}x{count} {digest.dtype}")
            for r, c, hh, ww in digest.windows:
                data = src.read(window=((r, r + hh), (c, c + ww)))
                h.update(memoryview(np.ascontiguousarray(data, dtype=digest.dtype)).cast("B"))
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - any read failure means the file is not what was written
        raise write_error(name, f"the written file does not read back: {exc}") from exc
    if h.hexdigest() != digest.hexdigest():
        raise write_error(name, "the written file reads back different pixels than were written")


def verify_strips(path: str | Path, strips, *, width: int, height: int, count: int, dtype,
                  what: str | Path | None = None) -> None:
    """Re-open ``path`` and check it holds exactly the data of ``strips``.

    ``strips`` yields ``(window, array (count, h, w))`` pairs, e.g. re-read from the scratch
    file the raster was written from; each window is read back and compared with its array
    (``np.array_equal``: every pixel, cheaper than hashing both sides). ``what`` names the
    file in errors (default ``path``). Errors as :func:`verify_written`.
    """
    import rasterio

    name = what if what is not None else path
    dtype = np.dtype(dtype)
    _check_not_empty(path, name)
    try:
        with rasterio.open(path) as src:
            if (src.width, src.height, src.count) != (width, height, count) or np.dtype(src.dtypes[0]) != dtype:
                raise write_error(name, f"the written file is {src.width}x{src.height}x{src.count} {src.dtypes[0]}, "
                                        f"expected {width}x{height}x{count} {dtype}")
            for window, expected in strips:
                r, c, hh, ww = (int(window.row_off), int(window.col_off), int(window.height), int(window.width))
                data = src.read(window=((r, r + hh), (c, c + ww)))
                if data.shape != expected.shape or not np.array_equal(data, expected):
                    raise write_error(name, "the written file reads back different pixels than were written")
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - any read failure means the file is not what was written
        raise write_error(name, f"the written file does not read back: {exc}") from exc


#: bytes :func:`verify_checksums` reads through one open dataset before it re-opens the
#: file. GDAL keeps every block read in its block cache until the dataset is closed (up to
#: ``GDAL_CACHEMAX``, 256 MB in a tile's environment), and a verification reads each block
#: once: re-reading a tile's 84-band cube files filled the cache and raised the tile's peak
#: RSS from ~470 to 833 MiB (1000² px, 84 periods × 6 bands; ``scripts/bench/README.md``).
#: Re-opening after this many bytes keeps a verifying thread's cached blocks below it plus
#: one window, for a few ms an open (4 ms at load 8).
VERIFY_REOPEN_BYTES = 16 * 2**20


def verify_checksums(path: str | Path, sums: WindowChecksums, *, width: int, height: int, count: int,
                     what: str | Path | None = None) -> None:
    """Re-open ``path`` and check each window ``sums`` saw written reads back with the same
    CRC-32 (what it catches: :class:`WindowChecksums`). Errors as :func:`verify_written`,
    naming the first window that differs. The file is re-opened every
    :data:`VERIFY_REOPEN_BYTES` read, so GDAL's block cache holds at most that much of it."""
    import rasterio

    name = what if what is not None else path
    _check_not_empty(path, name)
    src = None
    try:
        src = rasterio.open(path)
        if (src.width, src.height, src.count) != (width, height, count) or np.dtype(src.dtypes[0]) != sums.dtype:
            raise write_error(name, f"the written file is {src.width}x{src.height}x{src.count} {src.dtypes[0]}, "
                                    f"expected {width}x{height}x{count} {sums.dtype}")
        since_open = 0
        for (r, c, hh, ww), crc in zip(sums.windows, sums.crcs):
            if since_open >= VERIFY_REOPEN_BYTES:  # drops the blocks it cached
                src.close()
                src = None
                src = rasterio.open(path)
                since_open = 0
            data = np.ascontiguousarray(src.read(window=((r, r + hh), (c, c + ww))), dtype=sums.dtype)
            since_open += data.nbytes
            if zlib.crc32(memoryview(data).cast("B")) != crc:
                raise write_error(name, f"the written file reads back different pixels than were written "
                                        f"(window at row {r}, column {c}, {ww}x{hh} px)")
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - any read failure means the file is not what was written
        raise write_error(name, f"the written file does not read back: {exc}") from exc
    finally:
        if src is not None:
            src.close()
