"""``ecocube doctor [RUN.yaml]``: is this machine (and this run) ready? One line per check.

Each :class:`Check` is ``OK``, ``FAIL`` (with the fix) or ``--`` (not applicable here, e.g.
no Slurm on a laptop when the run names no partition). The environment checks need no
configuration: GDAL and PROJ versions, PROJ's data (a real transformation), the raster
drivers the flow uses (COG, GTiff, GPKG; netCDF when an input is a ``.nc``), the threads of
the allocation, the Slurm commands and the partition's limits, S3 credentials (their source
only; keys are never printed). With a run configuration the run's pre-flight
(:func:`ecocube.preflight.preflight`: area, templates, model, a sample of inputs opened,
the store written and read back, free scratch space) is added, one line per finding.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import EcocubeError

#: the lowest GDAL whose COG driver and options the writers rely on
MIN_GDAL = (3, 4)
SLURM_COMMANDS = ("sbatch", "squeue", "sacct", "scontrol", "scancel")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not applicable here
    text: str
    fix: str = ""

    def line(self) -> str:
        state = {True: "OK  ", False: "FAIL", None: "--  "}[self.ok]
        tail = f" — fix: {self.fix}" if self.ok is False and self.fix else ""
        return f"{state} {self.name:<9} {self.text}{tail}"


def check_gdal() -> Check:
    import rasterio

    version = rasterio.__gdal_version__
    parts = tuple(int(p) for p in version.split(".")[:2])
    text = f"GDAL {version}, rasterio {rasterio.__version__}"
    if parts < MIN_GDAL:
        return Check("gdal", False, text, f"install rasterio built on GDAL >= {'.'.join(map(str, MIN_GDAL))}")
    return Check("gdal", True, text)


def check_proj(environ: Mapping[str, str]) -> Check:
    import rasterio
    from rasterio.warp import transform

    where = next((f"{k}={environ[k]}" for k in ("PROJ_DATA", "PROJ_LIB") if environ.get(k)), None)
    if where is None:
        try:
            where = f"data {rasterio.env.PROJDataFinder().search()}"
        except Exception:  # noqa: BLE001 - only a description
            where = "data from the system"
    text = f"PROJ {getattr(rasterio, '__proj_version__', '?')}, {where}"
    try:
        xs, ys = transform("EPSG:4326", "EPSG:3035", [10.0], [52.0])
        if not (4_000_000 < xs[0] < 5_000_000 and 3_000_000 < ys[0] < 4_000_000):
            raise ValueError(f"EPSG:4326 → EPSG:3035 gave {xs[0]:.0f}, {ys[0]:.0f}")
    except Exception as exc:  # noqa: BLE001 - reported as the failure
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Check("proj", False, f"{text}: cannot transform EPSG:4326 → EPSG:3035 ({msg})",
                     "unset PROJ_DATA/PROJ_LIB or point them at a folder holding proj.db of this PROJ version")
    return Check("proj", True, f"{text}: EPSG:4326 → EPSG:3035 transforms")


def check_drivers(cfg=None) -> list[Check]:
    import rasterio

    with rasterio.Env() as env:
        drivers = env.drivers()
    needs_nc = cfg is not None and any(".nc" in str(getattr(s, "href", "") or "") for s in cfg.inputs.sources)
    out = []
    for name, why, required in (("COG", "mosaics", True), ("GTiff", "tiles", True),
                                ("GPKG", "grid export, vector labels", True), ("netCDF", "netCDF inputs", needs_nc)):
        if name in drivers:
            out.append(Check("driver", True, f"{name} ({why})"))
        elif required:
            out.append(Check("driver", False, f"{name} ({why}) is not available in this GDAL",
                             f"remove {name} from GDAL_SKIP, or install a GDAL/rasterio build with {name}"))
        else:
            out.append(Check("driver", None, f"{name} not available (no input needs it)"))
    return out


def check_threads(cfg, environ: Mapping[str, str]) -> Check:
    from .env import available_threads, slurm_context, slurm_variable

    ctx = slurm_context(environ)
    requested = cfg.processing.threads if cfg is not None else None
    threads = available_threads(requested, environ)
    source = ("processing.threads" if requested else
              "SLURM_CPUS_PER_TASK" if ctx.cpus_per_task else "CPU affinity of this process")
    raw_cpus = slurm_variable("SLURM_CPUS_PER_TASK", environ)
    if ctx.job_id and ctx.cpus_per_task is None and raw_cpus:
        return Check("threads", False, f"SLURM_CPUS_PER_TASK={raw_cpus!r} is not a number",
                     "submit with --cpus-per-task N")
    if requested and ctx.cpus_per_task and requested > ctx.cpus_per_task:
        return Check("threads", False, f"processing.threads={requested} exceeds the allocation's "
                     f"{ctx.cpus_per_task} CPUs (SLURM_CPUS_PER_TASK)",
                     f"remove processing.threads (the allocation decides) or ask for --cpus-per-task {requested}")
    return Check("threads", True, f"{threads} (from {source}), shared by GDAL, joblib and LightGBM")


def _partition_info(partition: str | None, environ: Mapping[str, str]) -> dict[str, str] | None:
    """``scontrol show partition NAME`` as a dict; with ``partition`` None, the cluster's
    default partition (``Default=YES``), or None when it has none."""
    cmd = ["scontrol", "show", "partition", *([partition] if partition else []), "--oneliner"]
    proc = subprocess.run(cmd, capture_output=True, check=False, text=True, timeout=30, env=dict(environ))
    if proc.returncode != 0:
        text = "; ".join(ln.strip() for ln in (proc.stderr or proc.stdout).strip().splitlines())
        raise EcocubeError(text or f"scontrol exited {proc.returncode}")
    parts = [dict(tok.split("=", 1) for tok in line.split() if "=" in tok) for line in proc.stdout.splitlines()
             if line.strip()]
    if partition:
        return parts[0] if parts else {}
    return next((p for p in parts if p.get("Default") == "YES"), None)


def _check_partition(cfg, partition: str | None, keys: tuple[str, ...], environ: Mapping[str, str]) -> Check:
    """One partition (None: the cluster's default) against the time limits in ``keys``."""
    from .slurm import minutes_from_time

    try:
        info = _partition_info(partition, environ)
    except (EcocubeError, OSError, subprocess.SubprocessError) as exc:
        if partition is None:  # no Slurm run configured: the controller not answering is context, not a failure
            return Check("partition", None, f"slurm.partition not set; the default partition is unknown: {exc}")
        return Check("partition", False, f"{partition}: {exc}", "set slurm.partition to one listed by `sinfo -s`")
    if info is None:
        return Check("partition", None, "slurm.partition not set and the cluster names no default partition")
    name = partition or f"{info.get('PartitionName', '?')} (the default partition)"
    max_time = info.get("MaxTime", "UNLIMITED")
    state = info.get("State", "?")
    text = f"{name}: state {state}, MaxTime {max_time}, MaxNodes {info.get('MaxNodes', '?')}"
    if state != "UP":
        return Check("partition", False, text, "wait for it to be UP or choose another partition (slurm.partition)")
    if max_time not in ("UNLIMITED", "INFINITE", "NONE"):
        for key in keys:
            value = getattr(cfg.slurm, key.split(".", 1)[1])
            if minutes_from_time(value) > minutes_from_time(max_time):
                return Check("partition", False, f"{text}: {key} {value} is longer",
                             f"lower {key} to at most {max_time} (or more tiles per task on another partition)")
    return Check("partition", True, text)


def check_slurm(cfg, environ: Mapping[str, str]) -> list[Check]:
    path = environ.get("PATH", "")
    missing = [c for c in SLURM_COMMANDS if shutil.which(c, path=path) is None]
    partition = cfg.slurm.partition if cfg is not None else None
    if missing:
        if partition:
            return [Check("slurm", False, f"{', '.join(missing)} not found on PATH (slurm.partition is {partition})",
                          "run on a login node of the cluster, or load its Slurm module (slurm.site_lines)")]
        return [Check("slurm", None, f"{', '.join(missing)} not found (local runs only)")]
    out = [Check("slurm", True, f"{', '.join(SLURM_COMMANDS)} found")]
    if cfg is None:
        return out
    fin = cfg.slurm.finalize_partition
    if fin is None or fin == partition:  # the finalize job runs on the array's partition
        return [*out, _check_partition(cfg, partition, ("slurm.time", "slurm.finalize_time"), environ)]
    return [*out, _check_partition(cfg, partition, ("slurm.time",), environ),
            _check_partition(cfg, fin, ("slurm.finalize_time",), environ)]


def _s3_settings(cfg):
    out = []
    if cfg.output.store.startswith("s3://") and cfg.output.s3 is not None:
        out.append(("output", cfg.output.s3))
    if cfg.inputs.s3 is not None or any("s3://" in str(getattr(s, "href", "") or "") for s in cfg.inputs.sources):
        out.append(("inputs", cfg.inputs.s3 if cfg.inputs.s3 is not None else cfg.output.s3))
    return out


def check_s3(cfg) -> list[Check]:
    if cfg is None:
        return []
    out = []
    from .store import aws_session

    for what, s3 in _s3_settings(cfg):
        endpoint = (s3.endpoint_url if s3 is not None else None) or "AWS (default endpoint)"
        profile = s3.profile if s3 is not None else None
        try:
            creds = aws_session(profile=profile).get_credentials()
        except Exception as exc:  # noqa: BLE001 - botocore's ProfileNotFound and friends
            creds, error = None, str(exc)
        else:
            error = "none found"
        if creds is None or not creds.access_key:
            out.append(Check("s3", False, f"{what}: endpoint {endpoint}, credentials: {error}",
                             "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials "
                             "(s3.profile)"))
        else:  # the source only: keys are never printed
            out.append(Check("s3", True, f"{what}: endpoint {endpoint}, credentials from {creds.method}"))
    return out


_PREFLIGHT_NAMES = (("inputs", "inputs"), ("output.store", "store"), ("store ", "store"),
                    ("processing.tmp_dir", "scratch"), ("scratch ", "scratch"), ("model", "model"),
                    ("source", "sources"), ("aoi", "aoi"), ("covariates", "inputs"))
#: the fix for a pre-flight problem that does not name one itself
_PREFLIGHT_FIXES = {
    "inputs": "check the URL templates and read access (`ecocube scenes RUN.yaml` lists what is found)",
    "store": "check output.store: the folder or bucket exists, is writable, endpoint and credentials (output.s3)",
    "scratch": "set processing.tmp_dir to a local disk with room for a tile",
    "model": "train one (`ecocube train`) or set model.path to the bundle for these features and classes",
    "config": "fix the key named (`ecocube config check RUN.yaml`)",
}


def _preflight_name(text: str) -> str:
    return next((name for prefix, name in _PREFLIGHT_NAMES if text.startswith(prefix)), "config")


def check_run(cfg, *, inputs: bool = True, sample: int = 6) -> list[Check]:
    """The run's pre-flight as checks: its facts OK, its problems FAIL (they name the fix)."""
    from .preflight import preflight

    report = preflight(cfg, inputs=inputs, sample=sample)
    failed = {_preflight_name(p) for p in report.problems}
    # a fact beside a failure of the same check is context, not an OK
    out = [Check(_preflight_name(f), None if _preflight_name(f) in failed else True, f) for f in report.facts]
    out += [Check(_preflight_name(w), True, f"warning: {w}") for w in report.warnings]
    out += [Check(name, False, p, _PREFLIGHT_FIXES.get(name, _PREFLIGHT_FIXES["config"]))
            for p in report.problems for name in [_preflight_name(p)]]
    return out


def run_doctor(cfg=None, *, environ: Mapping[str, str] | None = None, inputs: bool = True) -> list[Check]:
    """Every check, in order; ``cfg`` (a loaded run configuration) adds the run's checks."""
    env = os.environ if environ is None else environ
    checks = [check_gdal(), check_proj(env), *check_drivers(cfg), check_threads(cfg, env), *check_slurm(cfg, env)]
    if cfg is not None:
        checks += check_s3(cfg)
        checks += check_run(cfg, inputs=inputs)
    else:
        import tempfile

        from .preflight import format_bytes, free_bytes

        where, free = free_bytes(tempfile.gettempdir())
        checks.append(Check("scratch", free > 1 << 30, f"{where}: {format_bytes(free)} free",
                            "set TMPDIR (or processing.tmp_dir) to a local disk with room for a tile"))
    return checks
