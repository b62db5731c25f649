"""The one place that reads ``SLURM_*`` variables and builds GDAL/rasterio options.

Nothing here sets global state: callers get values or a scoped ``rasterio.Env``.
Threads always come from the allocation (``SLURM_CPUS_PER_TASK``), then from the
process's CPU affinity, never from ``os.cpu_count()`` alone, which counts the node.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: GDAL options for every read, remote or local. EMPTY_DIR avoids directory listings and
#: sidecar probes on remote COGs (3 requests instead of ~13 for an open + window read).
GDAL_READ_OPTIONS: dict[str, str | int] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.vrt,.jp2",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 * 1024 * 1024),
    "GDAL_HTTP_TIMEOUT": "30",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_MAX_RETRY": "0",  # ecocube retries itself, with backoff and typed errors
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "CPL_VSIL_CURL_CHUNK_SIZE": str(256 * 1024),
    "GDAL_CACHEMAX": 256 * 2**20,  # bytes, as an int: rasterio.Env rejects strings here
}


@dataclass(frozen=True, slots=True)
class SlurmContext:
    """What Slurm tells a task about itself; all ``None`` outside Slurm."""

    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: int | None = None
    cpus_per_task: int | None = None
    node: str | None = None


def slurm_context(environ: Mapping[str, str] | None = None) -> SlurmContext:
    """Read the ``SLURM_*`` variables of this process (or of ``environ``)."""
    env = os.environ if environ is None else environ

    def _int(name: str) -> int | None:
        value = env.get(name)
        if value is None or value == "":
            return None
        try:
            return int(value)
        except ValueError:
            log.warning("%s=%r is not a whole number; ignored", name, value)
            return None

    return SlurmContext(
        job_id=env.get("SLURM_JOB_ID"),
        array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
        array_task_id=_int("SLURM_ARRAY_TASK_ID"),
        cpus_per_task=_int("SLURM_CPUS_PER_TASK"),
        node=env.get("SLURMD_NODENAME"),
    )


def slurm_variable(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The raw text of one ``SLURM_*`` variable (None when unset), for messages that quote it."""
    if not name.startswith("SLURM"):
        raise ValueError(f"not a Slurm variable: {name}")
    return (os.environ if environ is None else environ).get(name)


def available_threads(requested: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Threads this process may use.

    ``requested`` (a positive number from a config or ``--threads``) wins; then
    ``SLURM_CPUS_PER_TASK``; then the CPU affinity of the process. Never less than 1.
    """
    if requested is not None and requested > 0:
        return int(requested)
    ctx = slurm_context(environ)
    if ctx.cpus_per_task:
        return max(1, ctx.cpus_per_task)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def gdal_options(
    *,
    threads: int = 1,
    s3_endpoint: str | None = None,
    s3_region: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """GDAL configuration options for reads, as a dict for ``rasterio.Env(**opts)``.

    ``s3_endpoint`` is an endpoint URL such as ``http://127.0.0.1:8333`` for an
    S3-compatible server; it becomes ``AWS_S3_ENDPOINT``/``AWS_HTTPS``/path-style access.
    Credentials are never put here: they come from the usual AWS configuration via a
    boto3 session (see :func:`ecocube.store.gdal_env`).
    """
    opts = dict(GDAL_READ_OPTIONS)
    opts["GDAL_NUM_THREADS"] = str(max(1, threads))
    if s3_endpoint:
        scheme, _, hostport = s3_endpoint.partition("://")
        if not hostport:
            scheme, hostport = "https", s3_endpoint
        opts["AWS_S3_ENDPOINT"] = hostport.rstrip("/")
        opts["AWS_HTTPS"] = "YES" if scheme == "https" else "NO"
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
    if s3_region:
        opts["AWS_REGION"] = s3_region
    if extra:
        opts.update({str(k): str(v) for k, v in extra.items()})
    return opts


def rasterio_env(
    *,
    threads: int = 1,
    s3_endpoint: str | None = None,
    s3_region: str | None = None,
    extra: Mapping[str, str] | None = None,
    session=None,
):
    """A scoped ``rasterio.Env`` with ecocube's GDAL options (:func:`gdal_options`).

    ``session`` is a ``rasterio.session`` object that hands credentials to GDAL; for S3,
    :func:`ecocube.store.gdal_env` makes one from boto3's usual chain (boto3 is used only
    behind :mod:`ecocube.store`). Credentials are never logged.
    """
    import rasterio

    opts = gdal_options(threads=threads, s3_endpoint=s3_endpoint, s3_region=s3_region, extra=extra)
    return rasterio.Env(session=session, **opts) if session else rasterio.Env(**opts)
