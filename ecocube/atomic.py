"""Atomic, verified file writes and the one file checksum.

Every writer of a local file goes through :func:`atomic_path` (or its byte/text
shortcuts): the content is written to a temporary name **beside** the target (same
folder, so the final step is a rename on one file system), optionally checked and
fsync-ed, then ``os.replace``-d onto the target. A reader therefore sees either the old
file or the complete new one, never a partial file, and a failure (any exception,
``KeyboardInterrupt`` and ``SystemExit`` included) removes the temporary file::

    with atomic_path(dst) as tmp:                 # tmp: a Path, e.g. for GDAL/rasterio
        with rasterio.open(tmp, "w", **profile) as ds:
            ds.write(data)

    write_text_atomic(dst, page)                  # bytes/text shortcuts
    with atomic_open(dst, "w", verify=check) as fh:   # a file object
        json.dump(obj, fh)

The temporary name is ``.{name}.{pid}-{random}.tmp{suffix}``: unique per process and
per call, so two writers of the same target never share a temporary file (the last
rename wins, and both files are complete). ``suffix`` defaults to the target's own
suffix, so that libraries picking a format by extension (matplotlib, GDAL's driver
guess, pyogrio) see the right one.

``verify`` is a callable given the temporary path once the writer is done and before the
rename; it raises (or returns ``False``) to reject the file, which is then removed and
:class:`VerifyError` raised: a writer can re-open what it wrote and check it (a COG's
layout, a checksum, a row count) before anything is published.

``fsync`` is the durability policy: ``"none"`` (default; the rename is atomic but a power
cut may lose the new content), ``"file"`` (the file's data reach the disk before the
rename) or ``"full"`` (also the folder entry, after the rename). ``True``/``False`` mean
``"file"``/``"none"``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Literal

from .errors import EcocubeError, FileOverwriteError, StoreError

__all__ = [
    "FsyncPolicy",
    "VerifyError",
    "atomic_open",
    "atomic_path",
    "fsync_path",
    "sha256_file",
    "temp_path_for",
    "write_bytes_atomic",
    "write_text_atomic",
]

FsyncPolicy = Literal["none", "file", "full"]
_FSYNC_POLICIES = ("none", "file", "full")
#: files GDAL may create next to a raster; removed with a failed temporary file
SIDECAR_SUFFIXES = (".aux.xml", ".msk", ".ovr")
HASH_CHUNK = 4 << 20


class VerifyError(EcocubeError, ValueError):
    """A freshly written file failed its verification; nothing was published."""


def sha256_file(path: str | Path, chunk: int = HASH_CHUNK) -> str:
    """Hex SHA-256 of a file, read in chunks (bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def norm_fsync(fsync: bool | str) -> FsyncPolicy:
    """``True``/``False`` or a policy name → the policy name; anything else is a ValueError."""
    if fsync is True:
        return "file"
    if fsync is False or fsync is None:
        return "none"
    if fsync not in _FSYNC_POLICIES:
        raise ValueError(f"fsync must be one of {', '.join(_FSYNC_POLICIES)} (or a bool), got {fsync!r}")
    return fsync  # type: ignore[return-value]


def temp_path_for(target: str | Path, suffix: str | None = None) -> Path:
    """A fresh temporary name beside ``target`` (hidden; pid + 64 random bits)."""
    target = Path(target)
    suffix = target.suffix if suffix is None else suffix
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(8)}.tmp{suffix}")


def fsync_path(path: str | Path, *, directory: bool = False) -> None:
    """fsync one file (or, with ``directory=True``, a folder entry where the OS allows it)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some platforms and file systems cannot open folders
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _remove(tmp: Path) -> None:
    for p in (tmp, *(Path(str(tmp) + s) for s in SIDECAR_SUFFIXES)):
        with contextlib.suppress(OSError):
            p.unlink(missing_ok=True)


def _run_verify(verify: Callable[[Path], object], tmp: Path, target: Path) -> None:
    try:
        ok = verify(tmp)
    except VerifyError:
        raise
    except Exception as exc:
        raise VerifyError(f"{target}: verification failed, not written: {exc}") from exc
    if ok is False:
        raise VerifyError(f"{target}: verification failed, not written")


def _publish(tmp: Path, target: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, target)
        return
    try:  # a hard link never replaces an existing file: no check-then-rename race
        os.link(tmp, target)
    except FileExistsError:
        raise FileOverwriteError(f"{target} exists; use --overwrite to replace it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if target.exists():  # no hard links on this file system: check, then rename
            raise FileOverwriteError(f"{target} exists; use --overwrite to replace it") from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(
    target: str | Path,
    *,
    suffix: str | None = None,
    fsync: bool | FsyncPolicy = "none",
    verify: Callable[[Path], object] | None = None,
    overwrite: bool = True,
    mkdir: bool = True,
    tmp: str | Path | None = None,
) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success move it onto ``target``.

    The body writes the temporary path (it does not exist yet). When the body returns,
    ``verify(tmp)`` runs (if given), the file is fsync-ed per ``fsync``, and it is renamed
    onto ``target``. On any exception, or if the body wrote nothing, the temporary file and
    its GDAL sidecars are removed and ``target`` is left as it was. ``overwrite=False``
    refuses to replace an existing target (:class:`~ecocube.errors.FileOverwriteError`),
    checked at the rename itself. Errors of the final steps raise
    :class:`~ecocube.errors.StoreError` naming ``target``.

    ``tmp`` overrides the temporary name (it must be on the target's file system and
    unique to this call): :class:`~ecocube.store.LocalStore` keeps its temporary files in
    one folder where ``cleanup_stale`` finds those of killed processes.
    """
    target = Path(target)
    policy = norm_fsync(fsync)
    if mkdir:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(target, suffix) if tmp is None else Path(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise StoreError(f"{target}: the writer produced no file")
        if verify is not None:
            _run_verify(verify, tmp, target)
        try:
            if policy != "none":
                fsync_path(tmp)
            _publish(tmp, target, overwrite)
            if policy == "full":
                fsync_path(target.parent, directory=True)
        except FileOverwriteError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot write {target}: {exc}") from exc
    finally:
        _remove(tmp)  # after a successful rename only sidecars could be left


@contextlib.contextmanager
def atomic_open(
    target: str | Path,
    mode: Literal["w", "wb"] = "wb",
    *,
    encoding: str | None = None,
    fsync: bool | FsyncPolicy = "none",
    verify: Callable[[Path], object] | None = None,
    overwrite: bool = True,
) -> Iterator[IO]:
    """Yield an open file for writing whose content replaces ``target`` atomically on success."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes only ('w' or 'wb'), got mode {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(target, fsync=fsync, verify=verify, overwrite=overwrite) as tmp:
        # "x": exclusive creation, a name collision fails instead of sharing a file
        with open(tmp, mode.replace("w", "x"), encoding=encoding) as fh:
            yield fh


def write_bytes_atomic(target: str | Path, data: bytes, **kwargs) -> Path:
    """Write ``data`` to ``target`` atomically (keywords as :func:`atomic_path`)."""
    with atomic_open(target, "wb", **kwargs) as fh:
        fh.write(data)
    return Path(target)


def write_text_atomic(target: str | Path, text: str, *, encoding: str = "utf-8", **kwargs) -> Path:
    """Write ``text`` to ``target`` atomically (keywords as :func:`atomic_path`)."""
    return write_bytes_atomic(target, text.encode(encoding), **kwargs)
