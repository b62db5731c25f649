"""Slurm: array jobs over the tile grid, a dependent finalize job, status and resubmission.

What a campaign does on a cluster::

    ecocube slurm submit RUN.yaml          # array over the tiles left to do + finalize afterok
    ecocube slurm status RUN.yaml          # tasks and tiles by state, logs and error lines
    ecocube slurm resubmit RUN.yaml --failed   # a new array over failed/missing tiles only

Design (after submitit):

- Rendering is pure: :func:`render_array_script` and :func:`render_finalize_script` turn
  the templates in ``slurm/`` (or ``slurm.templates`` of the run) and ``cfg.slurm`` into
  the text of an sbatch script, with every directive, path and quote in one place.
- Each submission gets an id and a fixed tile list in the store,
  ``slurm/<submission>/tiles.txt``: line *i* holds the tiles of array task *i*, so the
  task → tiles mapping never changes even when the grid, the AOI or the statuses do.
  :func:`task_tiles` reads it back inside the task (``ecocube run-task --tiles-file``).
- Job ids of every submission are recorded in ``slurm/jobs.json`` in the store.
- The Slurm commands (``sbatch``, ``squeue``, ``scontrol``, ``sacct``, ``scancel``) run as
  subprocesses; their output is parsed by pure functions (:func:`parse_squeue`,
  :func:`parse_scontrol_jobs`, :func:`parse_sacct`, :func:`parse_jobcomp`) tested on
  recorded outputs. Any failure becomes a :class:`~ecocube.errors.SlurmError` carrying
  Slurm's own message, and a submission is all or nothing: when the finalize job cannot
  be submitted, the array just submitted is cancelled.

This module never reads ``os.environ``; the Slurm client commands inherit the
environment (``SLURM_CONF`` and friends) of the process.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import re
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, EcocubeError, GridError, SlurmError
from .preflight import estimate_output_bytes, format_bytes
from .store import store_for

log = logging.getLogger(__name__)

#: the packaged templates: a copy of ``slurm/`` at the top of the source tree, shipped in the
#: package so that a wheel install has them (tests/test_slurm.py checks the copies agree)
DEFAULT_TEMPLATE_DIR = Path(__file__).resolve().parent / "data" / "slurm-templates"
ARRAY_TEMPLATE = "array.sbatch"
FINALIZE_TEMPLATE = "finalize.sbatch"

#: store keys
JOBS_KEY = "slurm/jobs.json"
SUBMISSION_PREFIX = "slurm"

#: Slurm job states in which a job still holds or waits for resources
ACTIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
     "REQUEUE_HOLD", "RESV_DEL_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
)
#: Slurm job states that mean the task did not finish its work
FAILED_STATES = frozenset(
    {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED",
     "REVOKED", "SPECIAL_EXIT"}
)

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SBATCH_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")


# =========================================================================== rendering


def render_template(text: str, values: Mapping[str, str], *, name: str = "template") -> str:
    """Replace every ``{{ key }}`` in ``text`` by ``values[key]``.

    A placeholder without a value raises :class:`SlurmError` naming it and the template,
    so a site template with a typo fails at submission, not on the cluster.
    """
    missing: list[str] = []

    def _sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            missing.append(key)
            return m.group(0)
        return str(values[key])

    out = _PLACEHOLDER.sub(_sub, text)
    if missing:
        raise SlurmError(
            f"{name}: unknown placeholder(s) {', '.join(sorted(set(missing)))}; "
            f"known: {', '.join(sorted(values))}"
        )
    return out


def directive_value(value: str | Path, *, what: str, pattern_suffix: str | None = None) -> str:
    """A value for an ``#SBATCH`` line, double-quoted when it holds spaces or quotes.

    sbatch reads ``#SBATCH --output="/a b/c.log"`` with the quotes removed. With
    ``pattern_suffix`` (``--output``/``--error``), a literal ``%`` in ``value`` is doubled,
    since Slurm reads ``%j``/``%A``/``%a`` there, and the suffix (holding such patterns) is
    appended. Double quotes, backslashes and line breaks cannot be expressed in a
    directive and are refused.
    """
    text = str(value)
    bad = [c for c in ('"', "\\", "\n", "\r") if c in text]
    if bad:
        raise ConfigError(f"{what} {text!r} contains {bad[0]!r}, which an #SBATCH line cannot hold")
    if pattern_suffix is not None:
        text = text.replace("%", "%%") + pattern_suffix
    if re.search(r"[\s'#$`;&|<>()*?\[\]{}]", text):
        return f'"{text}"'
    return text


def _directive(option: str, value: Any = None) -> str:
    return f"#SBATCH --{option}" if value is None else f"#SBATCH --{option}={value}"


def minutes_from_time(text: str) -> int:
    """Minutes in a Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM[:SS]``)."""
    if not _SBATCH_TIME.match(text):
        raise ConfigError(f"not a Slurm time limit: {text!r}")
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        parts = [int(p) for p in text.split(":")]
        h, m, s = (parts + [0, 0, 0])[:3]
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts
    return days * 1440 + h * 60 + m + math.ceil(s / 60)


def job_name(cfg) -> str:
    """The array job's name: ``ecocube-<run name>`` (the finalize job adds ``-finalize``)."""
    return f"ecocube-{cfg.name}"


def log_dir(cfg) -> Path:
    """Folder of the job logs (``slurm.log_dir``, relative to the run YAML's folder)."""
    d = Path(cfg.slurm.log_dir)
    if not d.is_absolute() and cfg.base_dir is not None:
        d = Path(cfg.base_dir) / d
    return d


def array_log_path(cfg, array_job_id: str | int, task_id: int) -> Path:
    return log_dir(cfg) / f"{job_name(cfg)}-{array_job_id}_{task_id}.log"


def finalize_log_path(cfg, job_id: str | int) -> Path:
    return log_dir(cfg) / f"{job_name(cfg)}-finalize-{job_id}.log"


def ecocube_command(cfg) -> str:
    """How jobs start ecocube: ``slurm.command``, default this Python's ``-m ecocube``."""
    if cfg.slurm.command:
        return cfg.slurm.command
    return f"{shlex.quote(sys.executable)} -m ecocube"


def _resource_directives(*, partition, account, qos, time, cpus, mem, mem_per_cpu) -> list[str]:
    lines = []
    if partition:
        lines.append(_directive("partition", directive_value(partition, what="partition")))
    if account:
        lines.append(_directive("account", directive_value(account, what="account")))
    if qos:
        lines.append(_directive("qos", directive_value(qos, what="qos")))
    lines.append(_directive("time", time))
    lines.append(_directive("nodes", 1))
    lines.append(_directive("ntasks", 1))
    lines.append(_directive("cpus-per-task", cpus))
    if mem:
        lines.append(_directive("mem", mem))
    elif mem_per_cpu:
        lines.append(_directive("mem-per-cpu", mem_per_cpu))
    return lines


def _site_lines(cfg) -> str:
    lines = [str(x).rstrip("\n") for x in cfg.slurm.site_lines]
    return "\n".join(lines) if lines else "# (none: set slurm.site_lines, e.g. module load / source venv/bin/activate)"


def _extra_directives(cfg) -> list[str]:
    out = []
    for d in cfg.slurm.extra_directives:
        d = str(d).strip()
        if "\n" in d:
            raise ConfigError(f"slurm.extra_directives: {d!r} spans several lines")
        out.append(d if d.startswith("#SBATCH") else f"#SBATCH {d}")
    return out


def _workdir(cfg) -> Path:
    return Path(cfg.base_dir) if cfg.base_dir is not None else Path.cwd()


def load_template(cfg, name: str) -> tuple[str, str]:
    """The text and path of template ``name`` (``slurm.templates`` folder, else packaged)."""
    folder = Path(cfg.slurm.templates) if cfg.slurm.templates else DEFAULT_TEMPLATE_DIR
    if not folder.is_absolute() and cfg.base_dir is not None:
        folder = Path(cfg.base_dir) / folder
    path = folder / name
    try:
        return path.read_text(), str(path)
    except FileNotFoundError:
        raise SlurmError(f"sbatch template not found: {path}") from None
    except OSError as exc:
        raise SlurmError(f"cannot read sbatch template {path}: {exc}") from None


#: "Due to the resolution of event handling by Slurm, the signal may be sent up to 60 seconds
#: earlier than specified" (sbatch(1), --signal)
SIGNAL_EARLY_SECONDS = 60


def _check_signal(time: str, signal_seconds: int, what: str) -> None:
    if signal_seconds and signal_seconds >= minutes_from_time(time) * 60:
        raise ConfigError(f"slurm.signal_seconds ({signal_seconds} s) must be shorter than {what} ({time}): "
                          "the job would be told to stop as soon as it starts")
    if signal_seconds and signal_seconds + SIGNAL_EARLY_SECONDS >= minutes_from_time(time) * 60:
        log.warning("slurm.signal_seconds (%d s) + the %d s by which Slurm may send the TERM early (sbatch(1), "
                    "--signal) is not shorter than %s (%s): tasks may be told to stop when they start",
                    signal_seconds, SIGNAL_EARLY_SECONDS, what, time)


def array_directives(cfg, *, n_tasks: int, throttle: int | None, after: str | None = None) -> list[str]:
    """The ``#SBATCH`` lines of the array job; ``after``: a job it starts after (``afterany``),
    how the arrays of a throttled campaign run one after the other."""
    s = cfg.slurm
    if n_tasks < 1:
        raise SlurmError(f"an array needs at least one task, got {n_tasks}")
    array = f"0-{n_tasks - 1}" + (f"%{throttle}" if throttle else "")
    logs = directive_value(log_dir(cfg) / job_name(cfg), what="slurm.log_dir", pattern_suffix="-%A_%a.log")
    _check_signal(s.time, s.signal_seconds, "slurm.time")
    lines = [_directive("job-name", job_name(cfg))]
    lines += _resource_directives(partition=s.partition, account=s.account, qos=s.qos, time=s.time,
                                  cpus=s.cpus_per_task, mem=s.mem, mem_per_cpu=s.mem_per_cpu)
    lines.append(_directive("array", array))
    if after is not None:
        lines.append(_directive("dependency", f"afterany:{after}"))
    lines.append(_directive("output", logs))
    lines.append(_directive("error", logs))
    lines.append(_directive("open-mode", "append"))
    if s.signal_seconds:
        lines.append(_directive("signal", f"B:TERM@{s.signal_seconds}"))
    lines.append(_directive("chdir", directive_value(_workdir(cfg), what="run folder")))
    lines += _extra_directives(cfg)
    return lines


def _job_list(array_job_id: str | Sequence[str] | None) -> list[str]:
    if array_job_id is None:
        return []
    if isinstance(array_job_id, str):
        return [array_job_id]
    return [str(j) for j in array_job_id]


def finalize_directives(cfg, *, array_job_id: str | Sequence[str] | None) -> list[str]:
    """The ``#SBATCH`` lines of the finalize job (``afterok`` on every array job given)."""
    arrays = _job_list(array_job_id)
    s = cfg.slurm
    logs = directive_value(log_dir(cfg) / job_name(cfg), what="slurm.log_dir", pattern_suffix="-finalize-%j.log")
    _check_signal(s.finalize_time, s.signal_seconds, "slurm.finalize_time")
    lines = [_directive("job-name", f"{job_name(cfg)}-finalize")]
    lines += _resource_directives(partition=s.finalize_partition or s.partition, account=s.account, qos=s.qos,
                                  time=s.finalize_time, cpus=s.finalize_cpus, mem=s.finalize_mem,
                                  mem_per_cpu=None if s.finalize_mem else s.mem_per_cpu)
    if arrays:
        lines.append(_directive("dependency", "afterok:" + ":".join(arrays)))
        # a failed task makes afterok impossible: end the finalize job instead of leaving it pending
        lines.append(_directive("kill-on-invalid-dep", "yes"))
    lines.append(_directive("output", logs))
    lines.append(_directive("error", logs))
    lines.append(_directive("open-mode", "append"))
    if s.signal_seconds:
        lines.append(_directive("signal", f"B:TERM@{s.signal_seconds}"))
    lines.append(_directive("chdir", directive_value(_workdir(cfg), what="run folder")))
    lines += _extra_directives(cfg)
    return lines


def render_array_script(
    cfg,
    *,
    run_yaml: str | Path,
    tiles_file: str,
    n_tasks: int,
    throttle: int | None = None,
    submission: str = "SUBMISSION",
    command: str | None = None,
    after: str | None = None,
) -> str:
    """The sbatch script of the array job (pure: nothing is read but the template).

    ``tiles_file`` is the store key of the submission's tile list; ``command`` how the
    job starts ecocube (default :func:`ecocube_command`).
    """
    template, name = load_template(cfg, ARRAY_TEMPLATE)
    values = {
        "directives": "\n".join(array_directives(cfg, n_tasks=n_tasks, throttle=throttle, after=after)),
        "site_lines": _site_lines(cfg),
        "ecocube": command or ecocube_command(cfg),
        "run_yaml": shlex.quote(str(run_yaml)),
        "tiles_file": shlex.quote(tiles_file),
        "submission": submission,
        "run_name": cfg.name,
        "n_tasks": str(n_tasks),
        "signal_seconds": str(cfg.slurm.signal_seconds),
    }
    return render_template(template, values, name=name)


def render_finalize_script(
    cfg,
    *,
    run_yaml: str | Path,
    array_job_id: str | Sequence[str] | None,
    submission: str = "SUBMISSION",
    command: str | None = None,
) -> str:
    """The sbatch script of the finalize job, depending (afterok) on the array job(s) ``array_job_id``."""
    template, name = load_template(cfg, FINALIZE_TEMPLATE)
    values = {
        "directives": "\n".join(finalize_directives(cfg, array_job_id=array_job_id)),
        "site_lines": _site_lines(cfg),
        "ecocube": command or ecocube_command(cfg),
        "run_yaml": shlex.quote(str(run_yaml)),
        "submission": submission,
        "run_name": cfg.name,
        "array_job_id": ",".join(_job_list(array_job_id)) or "none",
        "signal_seconds": str(cfg.slurm.signal_seconds),
    }
    return render_template(template, values, name=name)


# =========================================================================== tile lists


def split_tasks(tile_ids: Sequence[str], tiles_per_task: int) -> list[list[str]]:
    """Contiguous groups of ``tiles_per_task`` tiles: group *i* is array task *i*."""
    if tiles_per_task < 1:
        raise ConfigError(f"tiles per task must be >= 1, got {tiles_per_task}")
    return [list(tile_ids[i : i + tiles_per_task]) for i in range(0, len(tile_ids), tiles_per_task)]


# =========================================================================== fitting the cluster

#: Slurm's defaults when ``scontrol show config`` does not say
DEFAULT_MAX_ARRAY_SIZE = 1001
DEFAULT_MAX_JOB_COUNT = 10000


@dataclass(frozen=True)
class ClusterLimits:
    """What a cluster allows one submission: read by :func:`read_cluster_limits`.

    ``max_array_size`` is Slurm's ``MaxArraySize`` (task indices 0 .. MaxArraySize-1, so an
    array holds at most that many tasks); ``max_job_count`` the controller's ``MaxJobCount``
    (jobs it holds at once, every array task counted as one: conservative, since a pending
    array is one record until its tasks start); ``max_submit_jobs`` the association's or
    QOS's ``MaxSubmitJobs`` (``None`` when unknown or unlimited); ``queued`` the jobs already
    in the queue and ``queued_user`` those of this user, which count against the limits.
    ``notes`` says where each figure came from.
    """

    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE
    max_job_count: int = DEFAULT_MAX_JOB_COUNT
    max_submit_jobs: int | None = None
    queued: int = 0
    queued_user: int = 0
    notes: tuple[str, ...] = ()

    def task_budget(self) -> tuple[int, str]:
        """Array tasks one submission may add, and the limit that decides it."""
        cands = [(self.max_job_count - self.queued, f"MaxJobCount {self.max_job_count} - {self.queued} queued")]
        if self.max_submit_jobs is not None:
            cands.append((self.max_submit_jobs - self.queued_user,
                          f"MaxSubmitJobs {self.max_submit_jobs} - {self.queued_user} of yours queued"))
        return min(cands)


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    m = re.match(r"^\s*(\d+)", text)
    return int(m.group(1)) if m else None


def limits_from_config(config: Mapping[str, str], *, max_submit_jobs: int | None = None, queued: int = 0,
                       queued_user: int = 0, notes: Sequence[str] = ()) -> ClusterLimits:
    """:class:`ClusterLimits` from parsed ``scontrol show config`` (pure)."""
    notes = list(notes)
    mas = _int_or_none(config.get("MaxArraySize"))
    mjc = _int_or_none(config.get("MaxJobCount"))
    notes.append(f"MaxArraySize {mas}" if mas is not None else f"MaxArraySize not reported: Slurm's default {DEFAULT_MAX_ARRAY_SIZE}")
    notes.append(f"MaxJobCount {mjc}" if mjc is not None else f"MaxJobCount not reported: Slurm's default {DEFAULT_MAX_JOB_COUNT}")
    return ClusterLimits(
        max_array_size=mas if mas is not None else DEFAULT_MAX_ARRAY_SIZE,
        max_job_count=mjc if mjc is not None else DEFAULT_MAX_JOB_COUNT,
        max_submit_jobs=max_submit_jobs, queued=queued, queued_user=queued_user, notes=tuple(notes),
    )


def parse_sacctmgr_max_submit(text: str) -> int | None:
    """The smallest ``MaxSubmitJobs`` in ``sacctmgr -n -P show assoc|qos ... format=MaxSubmitJobs``
    output (one value per line, empty = unlimited); ``None`` when none is set."""
    values = [int(v) for v in (ln.strip().split("|")[0] for ln in text.splitlines()) if v.isdigit()]
    return min(values) if values else None


def read_cluster_limits(*, account: str | None = None, qos: str | None = None) -> ClusterLimits:
    """The limits of the cluster ``SLURM_CONF`` names: ``scontrol show config``, ``squeue``
    (jobs queued, all and this user's), and ``sacctmgr`` for ``MaxSubmitJobs`` of the user's
    associations (and ``qos``) when accounting is there; its absence is noted, not an error."""
    import getpass

    config = cached_config()
    user = getpass.getuser()
    notes: list[str] = []
    queue = run_slurm_command(["squeue", "-h", "-r", "-o", "%u"]).stdout.split()
    queued, queued_user = len(queue), sum(1 for u in queue if u == user)
    max_submit = None
    if config.get("AccountingStorageType", "accounting_storage/none") == "accounting_storage/none":
        notes.append("MaxSubmitJobs unknown: no accounting (AccountingStorageType none), not checked")
    else:
        args = ["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=MaxSubmitJobs"]
        if account:
            args.insert(5, f"account={account}")
        try:
            proc = run_slurm_command(args, check=False, timeout=30)
            if proc.returncode == 0:
                max_submit = parse_sacctmgr_max_submit(proc.stdout)
                if qos:
                    q = run_slurm_command(["sacctmgr", "-n", "-P", "show", "qos", qos, "format=MaxSubmitJobsPerUser"],
                                          check=False, timeout=30)
                    qmax = parse_sacctmgr_max_submit(q.stdout) if q.returncode == 0 else None
                    if qmax is not None:
                        max_submit = qmax if max_submit is None else min(max_submit, qmax)
                notes.append(f"MaxSubmitJobs {max_submit}" if max_submit is not None else "MaxSubmitJobs: unlimited")
            else:
                notes.append(f"MaxSubmitJobs unknown: sacctmgr failed ({proc.stderr.strip()[:120]})")
        except SlurmError as exc:
            notes.append(f"MaxSubmitJobs unknown: {exc}")
    return limits_from_config(config, max_submit_jobs=max_submit, queued=queued, queued_user=queued_user,
                              notes=notes)


@dataclass(frozen=True)
class ArrayPart:
    """One array job of a submission: tasks ``first`` .. ``first + n_tasks - 1`` of the campaign."""

    index: int
    first: int
    n_tasks: int


@dataclass(frozen=True)
class CampaignSplit:
    """How the tiles of a submission become array tasks and array jobs (pure result of
    :func:`split_campaign`); ``reasons`` says why, line by line."""

    tiles_per_task: int
    n_tasks: int
    parts: tuple[ArrayPart, ...]
    reasons: tuple[str, ...]

    @property
    def n_arrays(self) -> int:
        return len(self.parts)


def split_campaign(n_tiles: int, *, limits: ClusterLimits, tiles_per_task: int | None = None,
                   default_tiles_per_task: int = 1, max_tasks: int | None = None,
                   tile_minutes: float | None = None, task_minutes: float | None = None,
                   time_minutes: int | None = None) -> CampaignSplit:
    """Pack ``n_tiles`` into tasks and the tasks into array jobs that the cluster accepts.

    Tiles per task: ``tiles_per_task`` when given (``--tiles-per-task``, fixed: a campaign
    that does not fit with it is refused); else the most of ``default_tiles_per_task`` and, with
    ``tile_minutes`` and ``task_minutes`` (target task length), ``task_minutes // tile_minutes``;
    then raised until the tasks fit the cluster's task budget (:meth:`ClusterLimits.task_budget`,
    less one job per array and the finalize job) and ``max_tasks``. With ``tile_minutes`` and the
    time limit ``time_minutes``, a task that would not finish in time is refused. Arrays hold at
    most ``MaxArraySize`` tasks each.
    """
    if n_tiles < 0:
        raise SlurmError(f"negative tile count {n_tiles}")
    reasons: list[str] = []
    budget, why = limits.task_budget()
    caps = [(budget, why)]
    if max_tasks is not None:
        caps.append((max_tasks, f"slurm.max_tasks {max_tasks}"))
    cap, cap_why = min(caps)
    fixed = tiles_per_task is not None
    if fixed:
        k = tiles_per_task
        reasons.append(f"{k} tiles per task: --tiles-per-task")
    else:
        k = default_tiles_per_task
        reasons.append(f"{k} tiles per task: slurm.tiles_per_task")
        if tile_minutes and task_minutes:
            k_target = max(1, int(task_minutes // tile_minutes))
            if k_target > k:
                k = k_target
                reasons[-1] = (f"{k} tiles per task: slurm.task_minutes {task_minutes:g} / "
                               f"slurm.tile_minutes {tile_minutes:g}")
    if k < 1:
        raise ConfigError(f"tiles per task must be >= 1, got {k}")
    if n_tiles == 0:
        return CampaignSplit(k, 0, (), tuple(reasons + ["no tiles to do: no array job"]))

    def _n_jobs(kk: int) -> tuple[int, int]:
        n_tasks = math.ceil(n_tiles / kk)
        n_arrays = math.ceil(n_tasks / limits.max_array_size)
        return n_tasks, n_arrays

    n_tasks, n_arrays = _n_jobs(k)
    # every array job and the finalize job also count as jobs for MaxSubmitJobs / MaxJobCount
    if n_tasks + n_arrays + 1 > cap:
        if fixed:
            raise SlurmError(
                f"{n_tiles} tiles at {k} per task make {n_tasks} array tasks (+{n_arrays} array and 1 finalize "
                f"job), more than the cluster takes now ({cap_why} = {cap}); use a larger --tiles-per-task "
                f"(at least {_min_k(n_tiles, cap, limits.max_array_size)}) or leave it to slurm.tiles_per_task")
        if cap < 2:
            raise SlurmError(f"the cluster takes no more jobs now ({cap_why} = {cap}); wait for queued jobs to end")
        k_new = _min_k(n_tiles, cap, limits.max_array_size)
        reasons.append(f"raised to {k_new} tiles per task: {math.ceil(n_tiles / k)} tasks would exceed {cap_why} = {cap}")
        k = k_new
        n_tasks, n_arrays = _n_jobs(k)
    if tile_minutes and time_minutes:
        need = k * tile_minutes
        if need > time_minutes:
            raise SlurmError(f"{k} tiles per task at ~{tile_minutes:g} min each need ~{need:g} min, more than "
                             f"slurm.time ({time_minutes} min); raise slurm.time or lower the tiles per task")
    per = math.ceil(n_tasks / n_arrays)  # balanced arrays, each <= MaxArraySize
    parts = []
    first = 0
    for j in range(n_arrays):
        size = min(per, n_tasks - first)
        parts.append(ArrayPart(j, first, size))
        first += size
    if n_arrays > 1:
        reasons.append(f"{n_tasks} tasks split into {n_arrays} array jobs of up to {per} tasks: "
                       f"MaxArraySize {limits.max_array_size}")
    else:
        reasons.append(f"{n_tasks} tasks fit one array job (MaxArraySize {limits.max_array_size})")
    return CampaignSplit(k, n_tasks, tuple(parts), tuple(reasons))


def _min_k(n_tiles: int, cap: int, max_array_size: int) -> int:
    """The fewest tiles per task for which tasks + arrays + finalize stay within ``cap``."""
    k = max(1, math.ceil(n_tiles / max(1, cap - 1)))
    while True:
        n_tasks = math.ceil(n_tiles / k)
        if n_tasks + math.ceil(n_tasks / max_array_size) + 1 <= cap:
            return k
        k += 1


def format_tiles_file(tasks: Sequence[Sequence[str]], *, submission: str, run_name: str) -> str:
    """The tile list of a submission: comment lines, then one line of tile ids per task."""
    n = sum(len(t) for t in tasks)
    head = [
        f"# ecocube tile list: run {run_name}, submission {submission}",
        f"# {n} tiles in {len(tasks)} array tasks; line i (not counting '#' lines) = tiles of task i",
    ]
    return "\n".join(head + [" ".join(t) for t in tasks]) + "\n"


def parse_tiles_file(text: str, *, source: str = "tile list") -> list[list[str]]:
    """Inverse of :func:`format_tiles_file`: tile ids per task, tile ids checked."""
    from .grid import index_from_tile_id

    tasks = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ids = line.split()
        for t in ids:
            try:
                index_from_tile_id(t)
            except GridError as exc:
                raise SlurmError(f"{source}, line {lineno}: {exc}") from None
        tasks.append(ids)
    return tasks


def tiles_file_key(submission: str) -> str:
    return f"{SUBMISSION_PREFIX}/{submission}/tiles.txt"


def task_tiles(cfg, tiles_file: str, task_id: int | None = None, *, store=None) -> list:
    """The :class:`~ecocube.grid.Tile` objects of array task ``task_id`` of a submission.

    ``tiles_file`` is the store key written by :func:`submit` (``slurm/<id>/tiles.txt``),
    or a local file when no such key exists in the store and the path exists.
    ``task_id`` defaults to ``SLURM_ARRAY_TASK_ID`` (read through :mod:`ecocube.env`).
    This is what ``ecocube run-task RUN.yaml --tiles-file KEY`` calls.
    """
    from .env import slurm_context
    from .grid import TileGrid

    if task_id is None:
        task_id = slurm_context().array_task_id
        if task_id is None:
            raise SlurmError("no task id: give --task-id or run inside a Slurm array job (SLURM_ARRAY_TASK_ID)")
    text = _read_tiles_file(cfg, tiles_file, store)
    tasks = parse_tiles_file(text, source=tiles_file)
    if not 0 <= task_id < len(tasks):
        raise GridError(f"task id {task_id} out of range: {tiles_file} lists {len(tasks)} tasks")
    grid = TileGrid.from_config(cfg.grid)
    return [grid.tile(t) for t in tasks[task_id]]


def _read_tiles_file(cfg, key: str, store) -> str:
    local = Path(key)
    if local.is_absolute() and local.is_file():  # a local file, not a store key
        return local.read_text()
    if store is None:
        store = store_for(cfg)
    try:
        if store.exists(key):
            return store.get_bytes(key).decode()
    except EcocubeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the store's own errors name the key
        raise SlurmError(f"cannot read tile list {key} from the store {cfg.output.store}: {exc}") from exc
    local = Path(key)
    if local.is_file():
        return local.read_text()
    raise SlurmError(f"tile list not found: {key} (neither in the store {cfg.output.store} nor a local file)")


# =========================================================================== store records


def read_jobs(store) -> dict:
    """The submissions recorded in the store (``slurm/jobs.json``); empty when none."""
    if not store.exists(JOBS_KEY):
        return {"version": 1, "submissions": []}
    raw = store.get_bytes(JOBS_KEY)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SlurmError(f"{store.url(JOBS_KEY)} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("submissions"), list):
        raise SlurmError(f"{store.url(JOBS_KEY)} has no 'submissions' list")
    return data


def write_jobs(store, data: dict) -> None:
    store.put_bytes(json.dumps(data, indent=2, sort_keys=False).encode() + b"\n", JOBS_KEY)


def new_submission_id(now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


# =========================================================================== tile states


def record_state(record: Mapping | None) -> str:
    """The state of a tile status record (``done``, ``failed``, ``interrupted``,
    ``running``, ``stale`` for a running record whose process is gone), or ``pending`` when
    the tile has no record (see :mod:`ecocube.status`)."""
    if record is None:
        return "pending"
    state = str(record.get("state") or "unknown").lower()
    if state == "running":
        from .status import stale_reason

        if stale_reason(record) is not None:  # its process is gone (SIGKILL, node failure)
            return "stale"
    return state


def tiles_to_do(cfg, store=None, *, states: Mapping[str, Mapping | None] | None = None) -> tuple[list[str], dict]:
    """Tile ids of the AOI that are not done (failed, interrupted, stale running or without a
    record), in grid order, and the records of all tiles of the AOI."""
    from .grid import TileGrid

    tiles = TileGrid.from_config(cfg.grid).tiles_for_aoi(cfg.aoi)
    if states is None:
        from .status import tile_states

        states = tile_states(cfg, store, light=True)
    todo = [t.id for t in tiles if record_state(states.get(t.id)) not in ("done", "empty")]
    return todo, {t.id: states.get(t.id) for t in tiles}


# =========================================================================== estimates


def _bytes_of_size(text: str) -> int:
    m = re.match(r"^(\d+)([KMGT]?)$", text)
    if not m:
        raise ConfigError(f"not a Slurm memory size: {text!r}")
    return int(m.group(1)) * 1024 ** {"": 2, "K": 1, "M": 2, "G": 3, "T": 4}[m.group(2)]


def requested_memory(cfg) -> int | None:
    """Bytes of memory an array task asks for (``mem`` or ``mem_per_cpu`` × cpus)."""
    s = cfg.slurm
    if s.mem:
        return _bytes_of_size(s.mem)
    if s.mem_per_cpu:
        return _bytes_of_size(s.mem_per_cpu) * s.cpus_per_task
    return None


def estimate_task_memory(cfg) -> int:
    """A rough upper bound (bytes) of the peak memory of one array task.

    One block of ``processing.block_size``² pixels in compute: the read cube (float32
    data, uint8 reason, uint16 count), the filled cube and its flags, two copies of the
    feature matrix; one tile of outputs held before writing (probabilities, class,
    uncertainty, composites, flags, counts); plus ~600 MiB for Python, GDAL's block cache
    (256 MiB) and the model.
    """
    p = cfg.inputs.periods
    n_time = (p.end_year - p.start_year + 1) * p.season_size
    n_band = len(cfg.bands)
    n_feat = (n_band + len(cfg.features.indices)) * (p.season_size + len(cfg.features.statistics))
    n_cls = len(cfg.model.classes)
    block = cfg.processing.block_size ** 2
    compute = block * n_time * n_band * (4 + 1 + 2 + 4 + 1) + block * n_feat * 4 * 2 + block * n_cls * 4 * 3
    outputs = estimate_output_bytes(cfg, 1)
    return int(compute + outputs + 600 * 1024**2)


# =========================================================================== running Slurm commands


def run_slurm_command(args: Sequence[str], *, input: str | None = None, timeout: float = 60,
                      check: bool = True) -> subprocess.CompletedProcess:
    """Run a Slurm client command; a missing program, a timeout or (``check``) a non-zero
    exit becomes a :class:`SlurmError` with the command's own message."""
    prog = args[0]
    try:
        proc = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{prog} not found: is Slurm installed and on PATH?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{prog} did not answer within {timeout:.0f} s: is slurmctld reachable?") from None
    if check and proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip() or "(no message)").replace("\n", " | ")
        raise SlurmError(f"{' '.join(shlex.quote(a) for a in args[:2])} failed (exit {proc.returncode}): {msg}")
    return proc


def parse_sbatch_parsable(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` output (``123`` or ``123;cluster``)."""
    line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = line.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise SlurmError(f"sbatch --parsable printed no job id: {stdout.strip()!r}")
    return job_id


def sbatch(script: str, *, extra_args: Sequence[str] = ()) -> str:
    """Submit ``script`` (the text, passed on stdin); returns the job id."""
    proc = run_slurm_command(["sbatch", "--parsable", *extra_args], input=script)
    return parse_sbatch_parsable(proc.stdout)


def scancel(job_ids: Iterable[str]) -> None:
    ids = [str(j) for j in job_ids if j]
    if ids:
        run_slurm_command(["scancel", *ids])


# =========================================================================== parsing job states


@dataclass
class TaskInfo:
    """What Slurm says about one job or array task."""

    job_id: str  # array job id for array tasks
    task_id: int | None
    state: str
    exit_code: str | None = None
    reason: str | None = None
    node: str | None = None
    source: str = ""

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.job_id, self.task_id)


def _norm_state(state: str) -> str:
    # sacct prints "CANCELLED by 0"; scontrol may print "CANCELLED+"
    return state.strip().split()[0].rstrip("+").upper() if state.strip() else "UNKNOWN"


def parse_task_ranges(text: str) -> list[int]:
    """``0-3,5,7-9%2`` (also ``[0-3]``) → [0, 1, 2, 3, 5, 7, 8, 9]."""
    text = text.strip().strip("[]").split("%", 1)[0]
    out: list[int] = []
    for part in filter(None, text.split(",")):
        if "-" in part:
            a, b = part.split("-", 1)
            step = 1
            if ":" in b:
                b, s = b.split(":", 1)
                step = int(s)
            out.extend(range(int(a), int(b) + 1, step))
        else:
            out.append(int(part))
    return out


def _split_job_id(job: str) -> tuple[str, list[int] | None]:
    """``12_3`` → ("12", [3]); ``12_[4-6%2]`` → ("12", [4, 5, 6]); ``13`` → ("13", None)."""
    if "_" in job:
        base, tasks = job.split("_", 1)
        return base, parse_task_ranges(tasks)
    return job, None


SQUEUE_FORMAT = "%i|%F|%K|%T|%r|%N"


def parse_squeue(text: str) -> list[TaskInfo]:
    """Parse ``squeue -h -r -o '%i|%F|%K|%T|%r|%N'`` (one line per job or array task)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < 6:
            raise SlurmError(f"unexpected squeue line: {line!r}")
        job, array_job, task, state, reason, node = (p.strip() for p in parts[:6])
        reason = None if reason in ("", "None", "(null)") else reason
        if task and task not in ("N/A", "(null)"):
            ids = parse_task_ranges(task)
            for t in ids:
                out.append(TaskInfo(array_job or job.split("_")[0], t, _norm_state(state), None,
                                    reason or None, node or None, "squeue"))
        else:
            out.append(TaskInfo(job, None, _norm_state(state), None, reason or None, node or None, "squeue"))
    return out


_KV_SPLIT = re.compile(r"\s+(?=[A-Za-z][A-Za-z0-9/:_]*=)")


def parse_key_values(line: str) -> dict[str, str]:
    """``Key=Value Key2=Value with spaces`` → dict (values may hold spaces, not ``Key=``)."""
    out = {}
    for part in _KV_SPLIT.split(line.strip()):
        key, sep, value = part.partition("=")
        if sep:
            out[key] = value.strip()
    return out


def _parse_key_value_jobs(text: str, source: str, *, with_reason: bool) -> list[TaskInfo]:
    """Records of ``Key=Value ...`` lines, one job or array-task range per line."""
    out = []
    for line in text.splitlines():
        if "JobId=" not in line:
            continue
        rec = parse_key_values(line)
        state = _norm_state(rec.get("JobState", "UNKNOWN"))
        reason = rec.get("Reason") if with_reason else None
        reason = None if reason in (None, "None", "(null)") else reason
        node = rec.get("NodeList")
        node = None if node in (None, "", "(null)") else node
        exit_code = rec.get("ExitCode")
        # 4294967294 (NO_VAL) is what jobcomp writes for a job that is not an array task
        if rec.get("ArrayJobId") and rec.get("ArrayTaskId") not in (None, "", "4294967294"):
            for t in parse_task_ranges(rec["ArrayTaskId"]):
                out.append(TaskInfo(rec["ArrayJobId"], t, state, exit_code, reason, node, source))
        else:
            out.append(TaskInfo(rec["JobId"], None, state, exit_code, reason, node, source))
    return out


def parse_scontrol_jobs(text: str) -> list[TaskInfo]:
    """Parse ``scontrol show job -o JOB`` output (one record per line)."""
    return _parse_key_value_jobs(text, "scontrol", with_reason=True)


SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Reason"


def parse_sacct(text: str) -> list[TaskInfo]:
    """Parse ``sacct -n -P -X -o JobID,State,ExitCode,NodeList,Reason``."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|")
        job, state = parts[0], parts[1] if len(parts) > 1 else "UNKNOWN"
        exit_code = parts[2] if len(parts) > 2 else None
        node = parts[3] if len(parts) > 3 and parts[3] not in ("", "None assigned") else None
        reason = parts[4] if len(parts) > 4 and parts[4] not in ("", "None") else None
        base, tasks = _split_job_id(job)
        for t in tasks if tasks is not None else [None]:
            out.append(TaskInfo(base, t, _norm_state(state), exit_code, reason, node, "sacct"))
    return out


def parse_jobcomp(text: str) -> list[TaskInfo]:
    """Parse a ``jobcomp/filetxt`` file (one ``Key=Value ...`` record per finished job)."""
    return _parse_key_value_jobs(text, "jobcomp", with_reason=False)


def parse_scontrol_config(text: str) -> dict[str, str]:
    """``scontrol show config`` → {key: value}."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


#: cache of Slurm answers in this process: {key: (monotonic time, value)}
_CACHE: dict[Any, tuple[float, Any]] = {}
#: seconds ``scontrol show config`` is reused (it changes only on reconfigure)
CONFIG_CACHE_SECONDS = 300.0


def clear_cache() -> None:
    """Forget cached Slurm answers (job states, config)."""
    _CACHE.clear()


def _cached(key: Any, max_age: float, compute):
    import time as _time

    now = _time.monotonic()
    hit = _CACHE.get(key)
    if hit is not None and max_age > 0 and now - hit[0] <= max_age:
        return hit[1]
    value = compute()
    _CACHE[key] = (now, value)
    return value


def cached_config(*, max_age: float = CONFIG_CACHE_SECONDS) -> dict[str, str]:
    """``scontrol show config``, parsed, asked at most once per ``max_age`` seconds."""
    return _cached(("config",), max_age,
                   lambda: parse_scontrol_config(run_slurm_command(["scontrol", "show", "config"]).stdout))


def query_jobs(job_ids: Sequence[str], *, max_age: float = 0.0) -> dict[tuple[str, int | None], TaskInfo]:
    """States of jobs and array tasks: one ``squeue`` call for all of them, then one call
    for the finished ones (``sacct`` with accounting, else ``scontrol show job`` while
    slurmctld remembers them, ``MinJobAge``, then the ``jobcomp/filetxt`` file).

    However many arrays and tasks, a status costs at most three calls to the controller
    (squeue, sacct or scontrol, and ``scontrol show config`` once per
    :data:`CONFIG_CACHE_SECONDS`), never one per task. With ``max_age`` > 0 the answer for the
    same job ids is reused for that many seconds (``slurm.poll_seconds``), so a watch loop or
    several status calls in a row do not poll a busy controller more often.
    """
    ids = tuple(sorted({str(j) for j in job_ids if j}))
    if not ids:
        return {}
    return dict(_cached(("jobs", ids), max_age, lambda: _query_jobs(list(ids))))


def _query_jobs(ids: list[str]) -> dict[tuple[str, int | None], TaskInfo]:
    found: dict[tuple[str, int | None], TaskInfo] = {}

    def _add(infos: Iterable[TaskInfo]) -> None:
        for info in infos:
            if info.job_id in ids and info.key not in found:
                found[info.key] = info

    proc = run_slurm_command(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", SQUEUE_FORMAT], check=False)
    if proc.returncode == 0:
        _add(parse_squeue(proc.stdout))
    elif "Invalid job id" not in proc.stderr:
        raise SlurmError(f"squeue failed (exit {proc.returncode}): {proc.stderr.strip()}")
    config = cached_config()
    if config.get("AccountingStorageType", "accounting_storage/none") != "accounting_storage/none":
        proc = run_slurm_command(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", SACCT_FIELDS], check=False)
        if proc.returncode == 0:
            _add(parse_sacct(proc.stdout))
        return found
    # no accounting: one `scontrol show job` for every job the controller still holds
    proc = run_slurm_command(["scontrol", "show", "job", "-o"], check=False)
    if proc.returncode == 0:
        _add(parse_scontrol_jobs(proc.stdout))
    if config.get("JobCompType") == "jobcomp/filetxt" and config.get("JobCompLoc"):
        path = Path(config["JobCompLoc"])
        try:
            text = path.read_text(errors="replace")
        except OSError:
            text = ""  # the jobcomp file lives on the controller; not readable from every host
        # later records (a requeued task) replace earlier ones: read newest first
        _add(reversed(parse_jobcomp(text)))
    return found


# =========================================================================== submit


@dataclass
class ArrayJob:
    """One array job of a submission: its tasks (tile ids per task), tile list and script."""

    index: int
    first_task: int
    tasks: list[list[str]]
    tiles_file: str
    script: str
    job_id: str | None = None

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)


@dataclass
class SubmitPlan:
    """What a submission will do (``--dry-run`` prints it)."""

    submission: str
    run_yaml: str
    tiles: list[str]
    tasks: list[list[str]]
    tiles_per_task: int
    throttle: int | None
    array_script: str | None
    finalize_script: str
    memory_per_task: int
    memory_requested: int | None
    output_bytes: int
    n_aoi_tiles: int
    array_job_id: str | None = None
    finalize_job_id: str | None = None
    cancelled: list[str] = field(default_factory=list)
    arrays: list[ArrayJob] = field(default_factory=list)
    split_reasons: tuple[str, ...] = ()
    limit_notes: tuple[str, ...] = ()

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def array_job_ids(self) -> list[str]:
        return [a.job_id for a in self.arrays if a.job_id]

    def summary(self) -> str:
        mem_req = format_bytes(self.memory_requested) if self.memory_requested else "site default"
        lines = [
            f"submission {self.submission}: {len(self.tiles)} of {self.n_aoi_tiles} tiles to do, "
            f"{self.n_tasks} array tasks of up to {self.tiles_per_task} tiles"
            + (f" in {len(self.arrays)} array jobs" if len(self.arrays) > 1 else "")
            + (f", at most {self.throttle} at once" if self.throttle else ""),
        ]
        if self.limit_notes:
            lines.append("cluster: " + "; ".join(self.limit_notes))
        if self.split_reasons:
            lines.append("split: " + "; ".join(self.split_reasons))
        if len(self.arrays) > 1:
            for a in self.arrays:
                n = sum(len(t) for t in a.tasks)
                lines.append(f"  array {a.index}: tasks {a.first_task}-{a.first_task + a.n_tasks - 1} of the campaign "
                             f"(--array=0-{a.n_tasks - 1}), {n} tiles, list {a.tiles_file}")
            if self.throttle:
                lines.append(f"  the arrays run one after the other (afterany), so at most {self.throttle} tasks "
                             "run at once over the whole campaign")
            lines.append(f"  finalize: afterok on all {len(self.arrays)} array jobs")
        lines += [
            f"memory per task: ~{format_bytes(self.memory_per_task)} estimated, {mem_req} requested",
            f"output volume: ~{format_bytes(self.output_bytes)} uncompressed for {len(self.tiles)} tiles",
        ]
        if self.memory_requested and self.memory_per_task > self.memory_requested:
            lines.append("warning: the estimate exceeds the memory requested; raise slurm.mem_per_cpu or "
                         "lower processing.block_size")
        return "\n".join(lines)


def part_tiles_file_key(submission: str, index: int, n_arrays: int) -> str:
    """The tile list of array ``index``: ``tiles.txt`` for a single array, else ``tiles-NNN.txt``."""
    if n_arrays <= 1:
        return tiles_file_key(submission)
    return f"{SUBMISSION_PREFIX}/{submission}/tiles-{index:03d}.txt"


def _render_arrays(cfg, arrays: Sequence[ArrayJob], *, run_yaml: str, throttle: int | None, submission: str,
                   command: str | None, job_ids: Sequence[str | None] | None = None) -> None:
    """(Re-)render each array's script; with ``throttle`` and several arrays, array j starts
    after array j-1 (``job_ids``: ids already known, else placeholders)."""
    for j, a in enumerate(arrays):
        after = None
        if throttle and j > 0:
            after = (job_ids[j - 1] if job_ids and job_ids[j - 1] else f"ARRAY_JOB_ID_{j - 1}")
        a.script = render_array_script(cfg, run_yaml=run_yaml, tiles_file=a.tiles_file, n_tasks=a.n_tasks,
                                       throttle=throttle, submission=submission, command=command, after=after)


def plan_submission(cfg, run_yaml: str | Path, *, store=None, tiles_per_task: int | None = None,
                    throttle: int | None = None, states=None, submission: str | None = None,
                    command: str | None = None, limits: ClusterLimits | None = None) -> SubmitPlan:
    """Work out a submission without submitting anything.

    Reads the tile statuses and (unless ``limits`` is given) the cluster's limits
    (:func:`read_cluster_limits`); the split itself is :func:`split_campaign`.
    """
    if tiles_per_task is not None and tiles_per_task < 1:
        raise ConfigError(f"--tiles-per-task must be >= 1, got {tiles_per_task}")
    throttle = throttle if throttle is not None else cfg.slurm.throttle
    if throttle is not None and throttle < 1:
        raise ConfigError(f"--throttle must be >= 1, got {throttle}")
    if store is None and states is None:
        store = store_for(cfg)
    todo, all_states = tiles_to_do(cfg, store, states=states)
    if limits is None:
        try:
            limits = read_cluster_limits(account=cfg.slurm.account, qos=cfg.slurm.qos)
        except SlurmError as exc:  # a dry run away from the cluster: say so, plan with Slurm's defaults
            limits = ClusterLimits(notes=(f"limits not read ({str(exc)[:160]}); Slurm's defaults assumed: "
                                          f"MaxArraySize {DEFAULT_MAX_ARRAY_SIZE}, MaxJobCount {DEFAULT_MAX_JOB_COUNT}",))
    s = cfg.slurm
    split = split_campaign(len(todo), limits=limits, tiles_per_task=tiles_per_task,
                           default_tiles_per_task=s.tiles_per_task, max_tasks=s.max_tasks,
                           tile_minutes=s.tile_minutes, task_minutes=s.task_minutes,
                           time_minutes=minutes_from_time(s.time))
    k = split.tiles_per_task
    tasks = split_tasks(todo, k)
    submission = submission or new_submission_id()
    run_yaml = str(Path(run_yaml).resolve())
    arrays = [ArrayJob(p.index, p.first, tasks[p.first:p.first + p.n_tasks],
                       part_tiles_file_key(submission, p.index, split.n_arrays), "")
              for p in split.parts]
    _render_arrays(cfg, arrays, run_yaml=run_yaml, throttle=throttle, submission=submission, command=command)
    placeholders = ["ARRAY_JOB_ID"] if len(arrays) == 1 else [f"ARRAY_JOB_ID_{a.index}" for a in arrays]
    finalize_script = render_finalize_script(cfg, run_yaml=run_yaml, array_job_id=placeholders if arrays else None,
                                             submission=submission, command=command)
    return SubmitPlan(
        submission=submission, run_yaml=run_yaml, tiles=todo, tasks=tasks, tiles_per_task=k, throttle=throttle,
        array_script=arrays[0].script if arrays else None, finalize_script=finalize_script,
        memory_per_task=estimate_task_memory(cfg), memory_requested=requested_memory(cfg),
        output_bytes=estimate_output_bytes(cfg, len(todo)), n_aoi_tiles=len(all_states),
        arrays=arrays, split_reasons=split.reasons, limit_notes=limits.notes,
    )


def submission_arrays(submission: Mapping) -> list[dict]:
    """The array jobs of a recorded submission (``arrays``; older records: the one
    ``array_job_id``/``tiles_file``)."""
    if submission.get("arrays"):
        return [dict(a) for a in submission["arrays"]]
    if submission.get("array_job_id"):
        return [{"job_id": submission["array_job_id"], "tiles_file": submission.get("tiles_file"),
                 "n_tasks": submission.get("n_tasks"), "first_task": 0}]
    return []


def submission_job_ids(submission: Mapping) -> list[str]:
    """Every job id of a submission: its array jobs, then its finalize job."""
    ids = [a["job_id"] for a in submission_arrays(submission) if a.get("job_id")]
    if submission.get("finalize_job_id"):
        ids.append(submission["finalize_job_id"])
    return ids


def _active_jobs(submission: Mapping) -> dict[tuple[str, int | None], TaskInfo]:
    return {k: v for k, v in query_jobs(submission_job_ids(submission)).items() if v.state in ACTIVE_STATES}


def submit(cfg, run_yaml: str | Path, *, store=None, tiles_per_task: int | None = None,
           throttle: int | None = None, kind: str = "submit", command: str | None = None,
           limits: ClusterLimits | None = None) -> SubmitPlan:
    """Submit the array job(s) over the tiles left to do and the finalize job behind them.

    Refuses while an earlier submission of this run still has tasks pending or running
    (their tiles would be processed twice). For ``kind="resubmit"``, a finalize job of
    the previous submission that is still pending is cancelled first; it is replaced by
    the new one. When an array or the finalize job cannot be submitted, the arrays already
    submitted are cancelled, and when the record cannot be written, everything is: nothing
    stays half-submitted.
    """
    store = store_for(cfg, store)
    jobs = read_jobs(store)
    previous = jobs["submissions"][-1] if jobs["submissions"] else None
    cancelled: list[str] = []
    if previous is not None:
        active = _active_jobs(previous)
        array_ids = {a["job_id"] for a in submission_arrays(previous)}
        array_active = [v for v in active.values() if v.job_id in array_ids]
        if array_active:
            busy = sorted({v.job_id for v in array_active})
            raise SlurmError(
                f"submission {previous['id']} (array job {', '.join(busy)}) still has "
                f"{len(array_active)} task(s) pending or running; wait for them (ecocube slurm status) "
                f"or cancel them (scancel {' '.join(busy)}) first"
            )
        fin = previous.get("finalize_job_id")
        fin_info = active.get((fin, None)) if fin else None
        if fin_info is not None:
            if fin_info.state != "PENDING":
                raise SlurmError(f"the finalize job {fin} of submission {previous['id']} is {fin_info.state}; "
                                 "wait for it or cancel it first")
            if kind != "resubmit":
                raise SlurmError(f"the finalize job {fin} of submission {previous['id']} is still pending; "
                                 "use `ecocube slurm resubmit --failed` to move it behind a new array")

    plan = plan_submission(cfg, run_yaml, store=store, tiles_per_task=tiles_per_task, throttle=throttle,
                           command=command, limits=limits)
    log_dir(cfg).mkdir(parents=True, exist_ok=True)
    prefix = f"{SUBMISSION_PREFIX}/{plan.submission}"
    for a in plan.arrays:
        store.put_bytes(format_tiles_file(a.tasks, submission=plan.submission, run_name=cfg.name).encode(),
                        a.tiles_file)
    # the old finalize goes only once the new array is accepted: cancel it just before
    if previous is not None and kind == "resubmit":
        fin = previous.get("finalize_job_id")
        if fin and _active_jobs({"finalize_job_id": fin}):
            scancel([fin])
            cancelled.append(fin)
    submitted: list[str] = []
    try:
        for j, a in enumerate(plan.arrays):
            if plan.throttle and j > 0:  # chained: render with the previous array's real id
                a.script = render_array_script(cfg, run_yaml=plan.run_yaml, tiles_file=a.tiles_file,
                                               n_tasks=a.n_tasks, throttle=plan.throttle,
                                               submission=plan.submission, command=command, after=submitted[-1])
            a.job_id = sbatch(a.script)
            submitted.append(a.job_id)
        plan.array_job_id = submitted[0] if submitted else None
        plan.array_script = plan.arrays[0].script if plan.arrays else None
        plan.finalize_script = render_finalize_script(cfg, run_yaml=plan.run_yaml, array_job_id=submitted or None,
                                                      submission=plan.submission, command=command)
        plan.finalize_job_id = sbatch(plan.finalize_script)
    except EcocubeError as exc:
        if submitted:
            _cancel_quietly(submitted)
            what = (f"the array job {submitted[0]} just submitted was" if len(submitted) == 1
                    else f"the array jobs {' '.join(submitted)} just submitted were")
            raise SlurmError(f"{exc}; {what} cancelled") from exc
        raise
    record = {
        "id": plan.submission,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run_yaml": plan.run_yaml,
        "array_job_id": plan.array_job_id,
        "finalize_job_id": plan.finalize_job_id,
        "n_tiles": len(plan.tiles),
        "n_tasks": plan.n_tasks,
        "tiles_per_task": plan.tiles_per_task,
        "throttle": plan.throttle,
        "tiles_file": plan.arrays[0].tiles_file if plan.arrays else None,
        "arrays": [{"job_id": a.job_id, "tiles_file": a.tiles_file, "n_tasks": a.n_tasks, "first_task": a.first_task}
                   for a in plan.arrays],
        "split": list(plan.split_reasons),
        "log_dir": str(log_dir(cfg)),
        "job_name": job_name(cfg),
        "cancelled": cancelled,
    }
    try:
        for a in plan.arrays:
            name = "array.sbatch" if len(plan.arrays) == 1 else f"array-{a.index:03d}.sbatch"
            store.put_bytes(a.script.encode(), f"{prefix}/{name}")
        store.put_bytes(plan.finalize_script.encode(), f"{prefix}/finalize.sbatch")
        jobs["submissions"].append(record)
        jobs["run"] = cfg.name
        write_jobs(store, jobs)
    except Exception as exc:
        _cancel_quietly([*submitted, plan.finalize_job_id])
        raise SlurmError(f"cannot record submission {plan.submission} in the store ({exc}); "
                         f"jobs {' '.join(submitted)} and {plan.finalize_job_id} were cancelled") from exc
    plan.cancelled = cancelled
    return plan


def _cancel_quietly(ids: Iterable[str | None]) -> None:
    try:
        scancel([i for i in ids if i])
    except SlurmError as exc:  # pragma: no cover - reported, the original error matters more
        log.error("could not cancel jobs %s: %s", list(ids), exc)


def resubmit_failed(cfg, run_yaml: str | Path, *, store=None, tiles_per_task: int | None = None,
                    throttle: int | None = None, command: str | None = None,
                    limits: ClusterLimits | None = None, dry_run: bool = False) -> SubmitPlan:
    """New array job(s) over the failed and missing tiles of the whole run (every array of
    every earlier submission), with the finalize job behind them; with ``dry_run`` only the
    plan (:func:`plan_submission`), nothing submitted."""
    store = store_for(cfg, store)
    if not read_jobs(store)["submissions"]:
        raise SlurmError(f"nothing to resubmit: no submission recorded in {store.url(JOBS_KEY)}; "
                         "use `ecocube slurm submit` first")
    if dry_run:
        return plan_submission(cfg, run_yaml, store=store, tiles_per_task=tiles_per_task, throttle=throttle,
                               command=command, limits=limits)
    return submit(cfg, run_yaml, store=store, tiles_per_task=tiles_per_task, throttle=throttle,
                  kind="resubmit", command=command, limits=limits)


# =========================================================================== status


@dataclass
class TaskStatus:
    task_id: int
    tiles: list[str]
    state: str
    exit_code: str | None
    reason: str | None
    log_path: str
    tile_states: dict[str, str]
    error_line: str | None = None
    array_job_id: str | None = None

    @property
    def label(self) -> str:
        """``<array job>_<task>``, as Slurm names the task."""
        return f"{self.array_job_id}_{self.task_id}" if self.array_job_id else str(self.task_id)


@dataclass
class RunStatus:
    submission: dict | None
    tasks: list[TaskStatus]
    finalize: TaskInfo | None
    tiles: dict[str, str]  # tile id -> done/failed/interrupted/running/pending
    tile_errors: dict[str, str]
    finalize_log: str | None = None
    finalize_error: str | None = None

    def counts(self) -> dict[str, dict[str, int]]:
        tasks: dict[str, int] = {}
        for t in self.tasks:
            tasks[t.state] = tasks.get(t.state, 0) + 1
        tiles: dict[str, int] = {}
        for s in self.tiles.values():
            tiles[s] = tiles.get(s, 0) + 1
        return {"tasks": tasks, "tiles": tiles}

    @property
    def active(self) -> bool:
        """Whether a job of the submission still waits, runs, or is not known to Slurm yet."""
        states = [t.state for t in self.tasks] + ([self.finalize.state] if self.finalize is not None else [])
        if self.submission is not None and self.submission.get("finalize_job_id") and self.finalize is None:
            states.append("UNKNOWN")
        return any(s in ACTIVE_STATES or s == "UNKNOWN" for s in states)

    def to_dict(self) -> dict:
        return {
            "submission": self.submission,
            "counts": self.counts(),
            "tasks": [asdict(t) for t in self.tasks],
            "finalize": asdict(self.finalize) if self.finalize else None,
            "finalize_log": self.finalize_log,
            "finalize_error": self.finalize_error,
            "tiles": self.tiles,
            "tile_errors": self.tile_errors,
        }


_ERROR_LINE = re.compile(r"(error|exception|traceback|killed|oom|cancelled|due to time limit)", re.I)


def last_error_line(path: str | Path, *, max_bytes: int = 65536) -> str | None:
    """The last line of a log that looks like an error (else its last non-empty line)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if _ERROR_LINE.search(ln):
            return ln
    return lines[-1] if lines else None


def _record_error(record: Mapping | None) -> str | None:
    if not record:
        return None
    err = record.get("error") or record.get("message")
    if isinstance(err, Mapping):
        err = err.get("message") or json.dumps(err)
    return str(err) if err else None


def slurm_status(cfg, *, store=None, states=None, submission: str | None = None,
                 max_age: float | None = None) -> RunStatus:
    """Tasks of every array job of the latest (or the given) submission joined with the tile
    status records. Slurm is asked once for all of them (:func:`query_jobs`), the answer
    reused for ``max_age`` seconds (default ``slurm.poll_seconds``)."""
    store = store_for(cfg, store)
    jobs = read_jobs(store)
    subs = jobs["submissions"]
    if submission is not None:
        subs = [s for s in subs if s["id"] == submission]
        if not subs:
            raise SlurmError(f"no submission {submission!r} in {store.url(JOBS_KEY)}")
    sub = subs[-1] if subs else None
    _, all_states = tiles_to_do(cfg, store, states=states)
    tiles = {t: record_state(r) for t, r in all_states.items()}
    tile_errors = {t: e for t, r in all_states.items() if (e := _record_error(r)) and tiles[t] != "done"}
    if sub is None:
        return RunStatus(None, [], None, tiles, tile_errors)
    infos = query_jobs(submission_job_ids(sub), max_age=cfg.slurm.poll_seconds if max_age is None else max_age)
    tasks = []
    logs = Path(sub.get("log_dir") or log_dir(cfg))
    name = sub.get("job_name") or job_name(cfg)
    for part in submission_arrays(sub):
        if not part.get("tiles_file"):
            continue
        arr = part.get("job_id")
        lists = parse_tiles_file(_read_tiles_file(cfg, part["tiles_file"], store), source=part["tiles_file"])
        for i, ids in enumerate(lists):
            info = infos.get((arr, i))
            state = info.state if info else "UNKNOWN"
            logp = str(logs / f"{name}-{arr}_{i}.log")
            ts = TaskStatus(i, ids, state, info.exit_code if info else None, info.reason if info else None, logp,
                            {t: tiles.get(t, "pending") for t in ids}, array_job_id=arr)
            if state in FAILED_STATES or any(v == "failed" for v in ts.tile_states.values()):
                ts.error_line = last_error_line(logp) or next((tile_errors[t] for t in ids if t in tile_errors), None)
            tasks.append(ts)
    fin_id = sub.get("finalize_job_id")
    fin = infos.get((fin_id, None)) if fin_id else None
    fin_log = fin_err = None
    if fin_id:
        fin_log = str(Path(sub.get("log_dir") or log_dir(cfg)) / f"{sub.get('job_name') or job_name(cfg)}-finalize-{fin_id}.log")
        if fin is not None and fin.state in FAILED_STATES:
            fin_err = last_error_line(fin_log)
    return RunStatus(sub, tasks, fin, tiles, tile_errors, fin_log, fin_err)


def wait_for_submission(cfg, *, store=None, submission: str | None = None, timeout: float = 3600.0,
                        poll: float | None = None, sleep=None) -> RunStatus:
    """Ask Slurm every ``poll`` seconds (default ``slurm.poll_seconds``, at least 1) until no
    job of the submission waits or runs any more; the last status. A submission still active
    after ``timeout`` seconds is a SlurmError naming its jobs."""
    import time

    sleep = time.sleep if sleep is None else sleep
    poll = max(1.0, cfg.slurm.poll_seconds if poll is None else poll)
    deadline = time.monotonic() + timeout
    while True:
        st = slurm_status(cfg, store=store, submission=submission, max_age=0)
        if st.submission is None:
            raise SlurmError("nothing to wait for: no Slurm submission recorded for this run")
        if not st.active:
            return st
        if time.monotonic() >= deadline:
            ids = " ".join(submission_job_ids(st.submission))
            raise SlurmError(f"submission {st.submission['id']}: jobs {ids} still active after {timeout:g} s")
        sleep(poll)


#: above this many tasks, ``format_status`` lists only the tasks that are not completed
TASK_TABLE_LIMIT = 100


def format_status(st: RunStatus, *, all_tasks: bool = False) -> str:
    """The human-readable table printed by ``ecocube slurm status`` (with more than
    :data:`TASK_TABLE_LIMIT` tasks, completed tasks whose tiles are all done are counted,
    not listed, unless ``all_tasks``)."""
    c = st.counts()
    order = ("done", "failed", "interrupted", "running", "stale", "pending")
    tile_counts = "  ".join(f"{k} {c['tiles'].get(k, 0)}" for k in order)
    others = "  ".join(f"{k} {v}" for k, v in sorted(c["tiles"].items()) if k not in order)
    lines = []
    if st.submission is None:
        lines.append("no Slurm submission recorded for this run")
    else:
        s = st.submission
        arrays = submission_arrays(s)
        if len(arrays) > 1:
            what = f"{len(arrays)} array jobs {' '.join(a['job_id'] for a in arrays)}"
        else:
            what = f"array job {s.get('array_job_id') or '-'}"
        lines.append(f"submission {s['id']} ({s.get('kind', 'submit')}, {s.get('created', '?')}): "
                     f"{what}, {s.get('n_tasks', 0)} tasks, {s.get('n_tiles', 0)} tiles")
        task_counts = "  ".join(f"{k} {v}" for k, v in sorted(c["tasks"].items())) or "-"
        lines.append(f"tasks: {task_counts}")
        if st.finalize is not None:
            fin = f"{st.finalize.job_id} {st.finalize.state}"
            if st.finalize.reason:
                fin += f" ({st.finalize.reason})"
        else:
            fin = f"{s.get('finalize_job_id') or '-'} UNKNOWN"
        lines.append(f"finalize: job {fin}")
        if st.finalize_error:
            lines.append(f"  log {st.finalize_log}")
            lines.append(f"  {st.finalize_error}")
    lines.append(f"tiles of the run: {len(st.tiles)}  {tile_counts}" + (f"  {others}" if others else ""))
    if st.tasks:
        multi = len({t.array_job_id for t in st.tasks}) > 1
        shown = st.tasks
        if not all_tasks and len(st.tasks) > TASK_TABLE_LIMIT:
            shown = [t for t in st.tasks
                     if t.state != "COMPLETED" or any(v != "done" for v in t.tile_states.values())]
        lines.append("")
        width = max(5, *(len(t.label) for t in shown)) if (multi and shown) else 5
        lines.append(f"{'task':>{width}}  {'state':<13} {'exit':<6} tiles")
        for t in shown:
            tiles = " ".join(f"{tid}:{state}" for tid, state in t.tile_states.items())
            label = t.label if multi else str(t.task_id)
            lines.append(f"{label:>{width}}  {t.state:<13} {t.exit_code or '-':<6} {tiles}")
        if len(shown) < len(st.tasks):
            lines.append(f"({len(st.tasks) - len(shown)} completed tasks with all tiles done not listed; --all lists them)")
    failed = [t for t in st.tasks if t.error_line is not None or t.state in FAILED_STATES]
    if failed:
        multi = len({t.array_job_id for t in st.tasks}) > 1
        lines.append("")
        lines.append("failures:")
        for t in failed:
            label = t.label if multi else str(t.task_id)
            lines.append(f"  task {label} ({t.state}, exit {t.exit_code or '-'}): {t.log_path}")
            if t.error_line:
                lines.append(f"    {t.error_line}")
    in_tasks = {tid for t in st.tasks for tid in t.tiles}
    orphan = sorted(t for t, e in st.tile_errors.items() if t not in in_tasks)
    if orphan:
        lines.append("")
        lines.append("failed tiles outside this submission:")
        for t in orphan:
            lines.append(f"  {t}: {st.tile_errors[t]}")
    return "\n".join(lines)
