"""The output store: a local folder or an S3 bucket/prefix, with atomic publishing.

Every output of ecocube goes through a :class:`Store`. Keys are relative POSIX paths such
as ``class/X0012_Y0034/2019-01-01/class.tif`` (see the output-key convention in
STYLE.md). Publishing is atomic per object:

- :class:`LocalStore` writes into ``<root>/.ecocube-tmp/`` (same file system) and
  ``os.replace``-s the file under its final name, so a reader never sees half a file.
- :class:`S3Store` uploads with one ``PUT`` (atomic by nature) or, above
  ``multipart_threshold``, a multipart upload that only becomes visible on
  ``CompleteMultipartUpload``. A process killed mid-upload leaves at most an *incomplete
  upload* (never an object under the final key); :meth:`S3Store.cleanup_stale` aborts
  them.

Each uploaded object carries its SHA-256 (``x-amz-meta-sha256`` on S3), so a rerun can
check outputs against a status record without downloading them. This module is the only
user of boto3; credentials come from the usual AWS chain (environment, profile, role)
and are never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .atomic import atomic_path, sha256_file
from .errors import ConfigError, StoreError

log = logging.getLogger(__name__)

#: folder (inside a local store root) that holds temporary files before they are published
LOCAL_TMP_DIR = ".ecocube-tmp"


class ObjectNotFound(StoreError, FileNotFoundError):
    """The key does not exist in the store."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store knows about one object without reading it."""

    key: str
    size: int
    sha256: str | None  # None when the object was not written by ecocube


@dataclass(frozen=True, slots=True)
class ListedObject:
    """What a listing says of one object: its size and when the server last wrote it."""

    size: int
    modified: float  # POSIX seconds, the server's clock


def norm_key(key: str) -> str:
    """Check and normalise a store key: relative, POSIX, no ``..``, no empty parts."""
    if not isinstance(key, str) or not key or key.strip() != key:
        raise StoreError(f"invalid store key {key!r}")
    if "\\" in key or key.startswith("/") or "\x00" in key:
        raise StoreError(f"invalid store key {key!r}: must be a relative POSIX path")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid store key {key!r}: empty, '.' or '..' parts")
    if parts[0] == LOCAL_TMP_DIR:
        raise StoreError(f"invalid store key {key!r}: {LOCAL_TMP_DIR} is reserved")
    return key


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Store(ABC):
    """Common interface of :class:`LocalStore` and :class:`S3Store`."""

    #: ``True`` when :meth:`put_file` with ``move=True`` can rename instead of copying
    local: bool = False

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def info(self, key: str) -> ObjectInfo:
        """Size and SHA-256 of an object; :class:`ObjectNotFound` if missing."""

    @abstractmethod
    def put_file(self, local: str | Path, key: str, *, sha256: str | None = None, move: bool = False) -> ObjectInfo:
        """Publish a local file under ``key`` atomically; returns its size and checksum."""

    @abstractmethod
    def put_bytes(self, data: bytes, key: str) -> ObjectInfo: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """``(content, version)`` of an object, ``(None, None)`` if it does not exist. The
        version is what :meth:`put_bytes_if` compares (the ETag on S3, a SHA-256 locally)."""

    @abstractmethod
    def put_bytes_if(self, data: bytes, key: str, *, version: str | None) -> str | None:
        """Compare-and-set: write ``data`` only if the object's current version is
        ``version`` (``None``: only if it does not exist). Returns the new version, or
        ``None`` when the precondition failed (another writer got there first)."""

    @abstractmethod
    def get_file(self, key: str, local: str | Path) -> Path: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (a plain string prefix), sorted."""

    def list_stats(self, prefix: str = "") -> dict[str, ListedObject] | None:
        """``{key: ListedObject}`` under ``prefix`` from the listing alone (no request per
        object), or ``None`` where the store's listing gives no sizes and times (then
        callers ask :meth:`info` per object)."""
        return None

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; missing keys are not an error."""

    @abstractmethod
    def url(self, key: str) -> str:
        """A local path or ``s3://bucket/key`` for humans and catalogs."""

    @abstractmethod
    def gdal_path(self, key: str) -> str:
        """A path GDAL opens: local path or ``/vsis3/bucket/key``."""

    @abstractmethod
    def rasterio_env(self, *, threads: int = 1):
        """A scoped ``rasterio.Env`` able to read this store's objects."""

    @abstractmethod
    def work_dir(self, name: str) -> Path:
        """A fresh local folder for temporary files of one job (caller removes it)."""

    def cleanup_stale(self, prefixes: Iterable[str]) -> int:
        """Remove leftovers of killed writers under ``prefixes``; returns how many."""
        return 0

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode("utf-8")

    def get_bytes_or_none(self, key: str) -> bytes | None:
        try:
            return self.get_bytes(key)
        except ObjectNotFound:
            return None

    def delete_many(self, keys: Iterable[str]) -> None:
        for k in keys:
            self.delete(k)


# ----------------------------------------------------------------------------- local


class LocalStore(Store):
    """A folder on a local or shared file system."""

    local = True

    def __init__(self, root: str | Path, *, fsync: bool = True):
        self.root = Path(root).expanduser().absolute()
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalStore) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # paths
    def _path(self, key: str) -> Path:
        return self.root.joinpath(*norm_key(key).split("/"))

    @property
    def tmp_root(self) -> Path:
        return self.root / LOCAL_TMP_DIR

    def _tmp_name(self) -> Path:
        try:
            self.tmp_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store's temporary folder {self.tmp_root}: {exc}") from exc
        return self.tmp_root / f"put.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}"

    def _atomic(self, key: str):
        """An :func:`~ecocube.atomic.atomic_path` onto the key's file, its temporary file
        under ``.ecocube-tmp`` (where :meth:`cleanup_stale` finds those of killed writers)."""
        return atomic_path(self._path(key), tmp=self._tmp_name(), fsync=self.fsync)

    # interface
    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def info(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            size = path.stat().st_size
            digest = sha256_file(path)
        except FileNotFoundError:
            raise ObjectNotFound(f"no such object: {path}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        return ObjectInfo(key, size, digest)

    def put_file(self, local: str | Path, key: str, *, sha256: str | None = None, move: bool = False) -> ObjectInfo:
        local = Path(local)
        digest = sha256 or sha256_file(local)
        size = local.stat().st_size
        try:
            with self._atomic(key) as tmp:
                if move:
                    try:
                        os.replace(local, tmp)  # same file system: a rename, no copy
                    except OSError:
                        shutil.copyfile(local, tmp)
                else:
                    shutil.copyfile(local, tmp)
        except StoreError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot publish {local} as {self._path(key)}: {exc}") from exc
        return ObjectInfo(key, size, digest)

    def put_bytes(self, data: bytes, key: str) -> ObjectInfo:
        try:
            with self._atomic(key) as tmp:
                tmp.write_bytes(data)
        except StoreError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot write {self._path(key)}: {exc}") from exc
        return ObjectInfo(key, len(data), hashlib.sha256(data).hexdigest())

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"no such object: {path}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc

    def get_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            data = self.get_bytes(key)
        except ObjectNotFound:
            return None, None
        return data, hashlib.sha256(data).hexdigest()

    @contextlib.contextmanager
    def _key_lock(self, key: str, *, timeout: float = 30.0, stale_after: float = 60.0):
        """An exclusive lock on one key across processes (and hosts sharing the folder):
        a lock file created with ``O_CREAT | O_EXCL`` under the store's temporary folder.
        A lock older than ``stale_after`` seconds (its holder died inside the few
        milliseconds it is held) is broken."""
        lock_dir = self.tmp_root / "locks"
        path = lock_dir / (norm_key(key).replace("/", "%") + ".lock")
        deadline = time.monotonic() + timeout
        while True:
            try:
                lock_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileNotFoundError:  # another holder removed the empty lock folder meanwhile
                continue
            except FileExistsError:
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age > stale_after:
                    path.unlink(missing_ok=True)
                    continue
                if time.monotonic() > deadline:
                    raise StoreError(f"cannot lock {self._path(key)}: {path} held for {age:.0f} s") from None
                time.sleep(0.005)
                continue
            except OSError as exc:
                raise StoreError(f"cannot lock {self._path(key)}: {exc}") from exc
            try:
                os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
            finally:
                os.close(fd)
            break
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not left behind in the store (others may hold locks)
                lock_dir.rmdir()

    def put_bytes_if(self, data: bytes, key: str, *, version: str | None) -> str | None:
        with self._key_lock(key):
            _, current = self.get_versioned(key)
            if current != version:
                return None
            self.put_bytes(data, key)
        return hashlib.sha256(data).hexdigest()

    def get_file(self, key: str, local: str | Path) -> Path:
        src, local = self._path(key), Path(local)
        try:
            with atomic_path(local, mkdir=False) as tmp:
                shutil.copyfile(src, tmp)
        except FileNotFoundError:
            raise ObjectNotFound(f"no such object: {src}") from None
        except OSError as exc:
            raise StoreError(f"cannot copy {src} to {local}: {exc}") from exc
        return local

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        # walk only the folder the prefix is in
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*base.split("/")) if base else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != LOCAL_TMP_DIR]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {path}: {exc}") from exc

    def url(self, key: str) -> str:
        return str(self._path(key))

    def gdal_path(self, key: str) -> str:
        return str(self._path(key))

    def rasterio_env(self, *, threads: int = 1):
        return gdal_env(threads=threads)

    def work_dir(self, name: str) -> Path:
        """Under ``<root>/.ecocube-tmp`` so that publishing is a rename, not a copy."""
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        path = self.tmp_root / f"{name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def cleanup_stale(self, prefixes: Iterable[str] = ()) -> int:
        """Remove temporary files and folders of dead processes of this host."""
        if not self.tmp_root.is_dir():
            return 0
        host = socket.gethostname()
        removed = 0
        for entry in self.tmp_root.iterdir():
            parts = entry.name.split(".")
            # <what>.<host>.<pid>.<random>; hosts may contain dots
            if len(parts) < 4 or not parts[-2].isdigit():
                continue
            if ".".join(parts[1:-2]) != host or _pid_alive(int(parts[-2])):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("removed %d stale temporary entries under %s", removed, self.tmp_root)
        return removed


# ----------------------------------------------------------------------------- S3


_MB = 1024 * 1024


class S3Store(Store):
    """``s3://bucket/prefix`` on AWS or any S3-compatible server (``endpoint_url``).

    The boto3 client is made lazily in each process (the store itself pickles, so it can
    be handed to worker processes). Temporary files live under ``tmp_dir`` (default: the
    system temporary folder, e.g. ``$TMPDIR`` on a compute node).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        multipart_threshold: int = 64 * _MB,
        multipart_chunksize: int = 32 * _MB,
        max_concurrency: int = 4,
        max_attempts: int = 5,
        tmp_dir: str | Path | None = None,
    ):
        if not bucket:
            raise ConfigError("S3 store needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.profile = profile
        self.multipart_threshold = int(multipart_threshold)
        self.multipart_chunksize = int(multipart_chunksize)
        self.max_concurrency = int(max_concurrency)
        self.max_attempts = int(max_attempts)
        self.tmp_dir = Path(tmp_dir) if tmp_dir else None
        self._client = None
        self._conditional: bool | None = None

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}', endpoint_url={self.endpoint_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None  # boto3 clients do not pickle; each process makes its own
        return state

    # client
    @property
    def client(self):
        if self._client is None:
            from botocore.config import Config

            try:
                session = aws_session(profile=self.profile, region=self.region)
            except Exception as exc:  # botocore.exceptions.ProfileNotFound and friends
                raise StoreError(f"cannot set up AWS session for s3://{self.bucket}: {exc}") from None
            config = Config(
                s3={"addressing_style": "path" if self.endpoint_url else "auto"},
                retries={"max_attempts": self.max_attempts, "mode": "standard"},
                # S3-compatible servers do not all speak the newer flexible checksums
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                # parallel publishing (processing.publish_threads) × parts per upload
                max_pool_connections=max(32, 8 * self.max_concurrency),
            )
            self._client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def _key(self, key: str) -> str:
        key = norm_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def gdal_path(self, key: str) -> str:
        return f"/vsis3/{self.bucket}/{self._key(key)}"

    def _error(self, what: str, key: str, exc: Exception) -> StoreError:
        code = _client_error_code(exc)
        if code in ("404", "NoSuchKey", "NotFound"):
            return ObjectNotFound(f"no such object: {self.url(key)}")
        if code == "NoSuchBucket":
            return StoreError(f"cannot {what} {self.url(key)}: bucket {self.bucket!r} does not exist")
        # str(exc) of botocore errors names the operation and code, never the credentials
        return StoreError(f"cannot {what} {self.url(key)}: {exc}")

    def rasterio_env(self, *, threads: int = 1):
        return gdal_env(threads=threads, s3_endpoint=self.endpoint_url, s3_region=self.region,
                        s3_profile=self.profile)

    # interface
    def exists(self, key: str) -> bool:
        try:
            self.info(key)
        except ObjectNotFound:
            return False
        return True

    def info(self, key: str) -> ObjectInfo:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._error("stat", key, exc) from None
        meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        return ObjectInfo(key, int(head["ContentLength"]), meta.get("sha256"))

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=max(5 * _MB, self.multipart_chunksize),
            max_concurrency=self.max_concurrency,
            use_threads=self.max_concurrency > 1,
        )

    def put_file(self, local: str | Path, key: str, *, sha256: str | None = None, move: bool = False) -> ObjectInfo:
        local = Path(local)
        digest = sha256 or sha256_file(local)
        size = local.stat().st_size
        extra = {"Metadata": {"sha256": digest}, "ContentType": _content_type(key)}
        try:
            # single PUT below the threshold; above, a multipart upload that boto3 aborts
            # on error and that only becomes an object on CompleteMultipartUpload
            self.client.upload_file(str(local), self.bucket, self._key(key), ExtraArgs=extra,
                                    Config=self._transfer_config())
        except Exception as exc:
            raise self._error("upload to", key, exc) from None
        if move:
            local.unlink(missing_ok=True)
        return ObjectInfo(key, size, digest)

    def put_bytes(self, data: bytes, key: str) -> ObjectInfo:
        digest = hashlib.sha256(data).hexdigest()
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                   Metadata={"sha256": digest}, ContentType=_content_type(key))
        except Exception as exc:
            raise self._error("write", key, exc) from None
        return ObjectInfo(key, len(data), digest)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as exc:
            raise self._error("read", key, exc) from None

    def get_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return obj["Body"].read(), obj.get("ETag")
        except Exception as exc:
            err = self._error("read", key, exc)
            if isinstance(err, ObjectNotFound):
                return None, None
            raise err from None

    def conditional_writes(self) -> bool:
        """Whether the server honours ``If-None-Match``/``If-Match`` on PUT (AWS S3 since
        2024, SeaweedFS); probed once per store with a throw-away object."""
        if self._conditional is None:
            key = f"status/.conditional-put-probe-{uuid.uuid4().hex}"  # beside the records it is for
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=b"1")
                try:
                    self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=b"2", IfNoneMatch="*")
                    self._conditional = False
                except Exception as exc:
                    if _client_error_code(exc) not in ("PreconditionFailed", "412"):
                        raise self._error("probe conditional writes in", key, exc) from None
                    self._conditional = True
            except StoreError:
                raise
            except Exception as exc:
                raise self._error("probe conditional writes in", key, exc) from None
            finally:
                with contextlib.suppress(Exception):
                    self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
            if not self._conditional:
                log.warning("s3://%s does not honour conditional PUTs: tile leases are best effort there "
                            "(written, then read back)", self.bucket)
        return self._conditional

    def put_bytes_if(self, data: bytes, key: str, *, version: str | None) -> str | None:
        digest = hashlib.sha256(data).hexdigest()
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data,
                              "Metadata": {"sha256": digest}, "ContentType": _content_type(key)}
        if not self.conditional_writes():  # best effort: compare, write, read back
            _, current = self.get_versioned(key)
            if current != version:
                return None
            self.put_bytes(data, key)
            back, new = self.get_versioned(key)
            return new if back == data else None
        kw["IfNoneMatch" if version is None else "IfMatch"] = "*" if version is None else version
        try:
            return self.client.put_object(**kw).get("ETag")
        except Exception as exc:
            if _client_error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return None
            if version is not None and _client_error_code(exc) in ("NoSuchKey", "404"):
                return None  # the object we expected is gone
            raise self._error("write", key, exc) from None

    def get_file(self, key: str, local: str | Path) -> Path:
        local = Path(local)
        try:
            with atomic_path(local, mkdir=False) as tmp:
                self.client.download_file(self.bucket, self._key(key), str(tmp), Config=self._transfer_config())
        except Exception as exc:
            raise self._error("download", key, exc) from None
        return local

    def _listing_prefix(self, prefix: str) -> tuple[str, int]:
        """The bucket-level prefix for a store prefix, and how much of a bucket key to cut."""
        if not self.prefix:
            return prefix, 0
        return f"{self.prefix}/{prefix}", len(self.prefix) + 1

    def list(self, prefix: str = "") -> list[str]:
        full, strip = self._listing_prefix(prefix)
        keys = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", ()))
        except Exception as exc:
            raise StoreError(f"cannot list s3://{self.bucket}/{full}: {exc}") from None
        return sorted(keys)

    def list_stats(self, prefix: str = "") -> dict[str, ListedObject]:
        """One paged listing (up to 1,000 keys a request): size and LastModified per key."""
        full, strip = self._listing_prefix(prefix)
        out: dict[str, ListedObject] = {}
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", ()):
                    out[obj["Key"][strip:]] = ListedObject(int(obj["Size"]), obj["LastModified"].timestamp())
        except Exception as exc:
            raise StoreError(f"cannot list s3://{self.bucket}/{full}: {exc}") from None
        return out

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            err = self._error("delete", key, exc)
            if not isinstance(err, ObjectNotFound):
                raise err from None

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = [self._key(k) for k in keys]
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            try:
                resp = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:
                raise StoreError(f"cannot delete {len(batch)} objects in s3://{self.bucket}: {exc}") from None
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(f"cannot delete s3://{self.bucket}/{first.get('Key')}: {first.get('Message')}")

    def work_dir(self, name: str) -> Path:
        import tempfile

        base = self.tmp_dir
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"ecocube-{name}.", dir=base))

    def incomplete_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        """``(key, upload_id)`` of multipart uploads under ``prefix`` never completed or aborted."""
        full, strip = self._listing_prefix(prefix)
        found = []
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                found.extend((u["Key"][strip:], u["UploadId"]) for u in page.get("Uploads", ()))
        except Exception as exc:
            raise StoreError(f"cannot list multipart uploads of s3://{self.bucket}/{full}: {exc}") from None
        return found

    def cleanup_stale(self, prefixes: Iterable[str] = ()) -> int:
        """Abort incomplete multipart uploads under ``prefixes`` (left by killed uploads)."""
        removed = 0
        for prefix in prefixes:
            for key, upload_id in self.incomplete_uploads(prefix):
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
                    removed += 1
        if removed:
            log.info("aborted %d incomplete multipart uploads in s3://%s", removed, self.bucket)
        return removed


# ----------------------------------------------------------------------------- AWS for GDAL and probes


def aws_session(*, profile: str | None = None, region: str | None = None):
    """A boto3 session from the usual AWS chain (environment, profile, role)."""
    import boto3

    return boto3.Session(profile_name=profile, region_name=region)


def gdal_env(*, threads: int = 1, s3_endpoint: str | None = None, s3_region: str | None = None,
             s3_profile: str | None = None, extra: dict[str, str] | None = None):
    """:func:`ecocube.env.rasterio_env` with AWS credentials for GDAL's ``/vsis3/``.

    When S3 is configured (an endpoint or a profile), the credentials of a boto3 session
    (:func:`aws_session`) are handed to GDAL through ``rasterio.session.AWSSession``;
    otherwise GDAL gets no session, as for local and HTTP files.
    """
    from .env import gdal_options, rasterio_env

    session = None
    if s3_endpoint or s3_profile:
        from rasterio.session import AWSSession

        bsession = aws_session(profile=s3_profile, region=s3_region)
        endpoint = gdal_options(s3_endpoint=s3_endpoint).get("AWS_S3_ENDPOINT")
        session = AWSSession(bsession, endpoint_url=endpoint) if endpoint else AWSSession(bsession)
    return rasterio_env(threads=threads, s3_endpoint=s3_endpoint, s3_region=s3_region, extra=extra, session=session)


def probe_s3_object(url: str, *, endpoint_url: str | None = None, region: str | None = None,
                    profile: str | None = None, timeout: float = 10.0) -> tuple[int | None, str]:
    """``(HTTP status, detail)`` of a HEAD request on an ``s3://`` or ``/vsis3/`` URL.

    One attempt, path-style addressing: what a reader asks when GDAL's error does not say
    whether an input is missing or the server is failing. The status is None when the
    server's answer carries none; errors other than S3's own answers propagate.
    """
    import botocore.exceptions
    from botocore.config import Config

    rest = url.removeprefix("s3://").removeprefix("/vsis3/")
    bucket, _, key = rest.partition("/")
    client = aws_session(profile=profile, region=region).client("s3", endpoint_url=endpoint_url, config=Config(
        s3={"addressing_style": "path"}, retries={"max_attempts": 1},
        connect_timeout=timeout, read_timeout=timeout))
    try:
        client.head_object(Bucket=bucket, Key=key)
        return 200, "ok"
    except botocore.exceptions.ClientError as err:
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return (int(status) if status else None), str(err)


def _client_error_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code"))
    return None


def _content_type(key: str) -> str:
    suffix = PurePosixPath(key).suffix.lower()
    return {".tif": "image/tiff", ".tiff": "image/tiff", ".json": "application/json",
            ".html": "text/html", ".png": "image/png", ".vrt": "application/xml",
            # the catalog's map page: browsers refuse a stylesheet or script served as octet-stream
            ".js": "text/javascript", ".css": "text/css"}.get(suffix,
                                                                                      "application/octet-stream")


# ----------------------------------------------------------------------------- factory


def parse_store_url(store: str) -> tuple[str, str, str]:
    """``("s3", bucket, prefix)`` or ``("local", path, "")`` for a store string."""
    if store.startswith("s3://"):
        rest = store[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"output.store {store!r}: no bucket (expected s3://bucket/prefix)")
        return "s3", bucket, prefix.strip("/")
    if store.startswith("file://"):
        return "local", store[len("file://"):], ""
    if "://" in store:
        raise ConfigError(f"output.store {store!r}: unsupported scheme (use a folder or s3://bucket/prefix)")
    return "local", store, ""


def store_for(cfg, store: Store | None = None, *, tmp_dir: str | Path | None = None) -> Store:
    """``store`` when one is given, else the store of the run configuration ``cfg`` (``cfg.output``).

    The one way library functions that take an optional ``store=`` find the run's store.
    """
    if store is not None:
        return store
    return open_store(cfg.output, tmp_dir=tmp_dir)


def open_store(output_cfg, *, tmp_dir: str | Path | None = None) -> LocalStore | S3Store:
    """The store of an :class:`ecocube.config.OutputConfig` (``cfg.output``)."""
    kind, where, prefix = parse_store_url(str(output_cfg.store))
    if kind == "local":
        return LocalStore(where, fsync=getattr(output_cfg, "fsync", True))
    s3 = output_cfg.s3
    return S3Store(
        where,
        prefix,
        endpoint_url=s3.endpoint_url,
        region=s3.region,
        profile=s3.profile,
        multipart_threshold=int(getattr(s3, "multipart_threshold_mb", 64) * _MB),
        multipart_chunksize=int(getattr(s3, "multipart_chunksize_mb", 32) * _MB),
        max_concurrency=getattr(s3, "max_concurrency", 4),
        tmp_dir=tmp_dir,
    )
