"""env: threads from the allocation, SLURM_* read in one place, scoped GDAL options."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio
from rasterio.env import get_gdal_config

from ecocube.env import (
    GDAL_READ_OPTIONS,
    SlurmContext,
    available_threads,
    gdal_options,
    rasterio_env,
    slurm_context,
)

ROOT = Path(__file__).resolve().parents[1]
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_CPUS_PER_TASK",
              "SLURMD_NODENAME")


@pytest.fixture
def no_slurm(monkeypatch):
    for var in SLURM_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def node_of_64(no_slurm):
    """A 64-core node on which this process may run on 3 of them."""
    no_slurm.setattr(os, "cpu_count", lambda: 64)
    no_slurm.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6})
    return no_slurm


# ---------------------------------------------------------------------- SLURM_* variables


def test_slurm_context_outside_slurm_is_all_none(no_slurm):
    assert slurm_context() == SlurmContext(None, None, None, None, None)


def test_slurm_context_reads_the_task_environment(no_slurm):
    no_slurm.setenv("SLURM_JOB_ID", "4812")
    no_slurm.setenv("SLURM_ARRAY_JOB_ID", "4800")
    no_slurm.setenv("SLURM_ARRAY_TASK_ID", "12")
    no_slurm.setenv("SLURM_CPUS_PER_TASK", "8")
    no_slurm.setenv("SLURMD_NODENAME", "node-017")
    ctx = slurm_context()
    assert ctx == SlurmContext(job_id="4812", array_job_id="4800", array_task_id=12, cpus_per_task=8,
                               node="node-017")
    assert isinstance(ctx.array_task_id, int) and isinstance(ctx.cpus_per_task, int)


def test_slurm_context_from_a_given_mapping_ignores_the_process(no_slurm):
    no_slurm.setenv("SLURM_ARRAY_TASK_ID", "3")
    ctx = slurm_context({"SLURM_ARRAY_TASK_ID": "7", "SLURM_CPUS_PER_TASK": "2"})
    assert ctx.array_task_id == 7 and ctx.cpus_per_task == 2 and ctx.job_id is None
    assert slurm_context({}) == SlurmContext()


@pytest.mark.parametrize("value", ["", "eight", "8.0", "2(x3)"])
def test_slurm_context_unparsable_numbers_are_none(value):
    ctx = slurm_context({"SLURM_ARRAY_TASK_ID": value, "SLURM_CPUS_PER_TASK": value, "SLURM_JOB_ID": "9"})
    assert ctx.array_task_id is None and ctx.cpus_per_task is None
    assert ctx.job_id == "9"  # ids stay strings, as Slurm writes them


def test_slurm_context_says_which_variable_it_ignored(caplog):
    with caplog.at_level("WARNING", logger="ecocube.env"):
        assert slurm_context({"SLURM_CPUS_PER_TASK": "2(x3)"}).cpus_per_task is None
    assert [r.getMessage() for r in caplog.records] == ["SLURM_CPUS_PER_TASK='2(x3)' is not a whole number; ignored"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="ecocube.env"):
        slurm_context({"SLURM_CPUS_PER_TASK": ""})  # unset by an empty value: nothing to say
    assert caplog.records == []


def test_slurm_context_is_frozen():
    with pytest.raises(AttributeError):
        SlurmContext().cpus_per_task = 4  # type: ignore[misc]


# ---------------------------------------------------------------------- threads


def test_threads_from_the_allocation_not_the_node(node_of_64):
    node_of_64.setenv("SLURM_CPUS_PER_TASK", "6")
    assert available_threads() == 6
    assert available_threads(environ={"SLURM_CPUS_PER_TASK": "2"}) == 2


def test_threads_from_affinity_outside_slurm(node_of_64):
    assert available_threads() == 3  # not os.cpu_count()'s 64


def test_requested_threads_win(node_of_64):
    node_of_64.setenv("SLURM_CPUS_PER_TASK", "6")
    assert available_threads(5) == 5
    assert available_threads(1) == 1


@pytest.mark.parametrize("requested", [None, 0, -1])
def test_unset_or_non_positive_request_falls_back(node_of_64, requested):
    assert available_threads(requested) == 3
    assert available_threads(requested, environ={"SLURM_CPUS_PER_TASK": "4"}) == 4


@pytest.mark.parametrize("value", ["0", "", "many"])
def test_unusable_slurm_cpus_fall_back_to_affinity(node_of_64, value):
    node_of_64.setenv("SLURM_CPUS_PER_TASK", value)
    assert available_threads() == 3


def test_never_less_than_one(no_slurm):
    no_slurm.setattr(os, "sched_getaffinity", lambda pid: set())
    no_slurm.setattr(os, "cpu_count", lambda: 64)
    assert available_threads() == 1


def test_affinity_of_a_real_pinned_process(no_slurm):
    """A process pinned to one CPU by the kernel (as Slurm's cgroups do) gets one thread,
    while os.cpu_count() still counts the whole machine (2 CPUs in CI)."""
    cpu = min(os.sched_getaffinity(0))
    code = (f"import os; os.sched_setaffinity(0, {{{cpu}}}); from ecocube.env import available_threads; "
            "print(available_threads(), os.cpu_count())")
    envvars = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    envvars["PYTHONPATH"] = os.pathsep.join([str(ROOT), envvars.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=envvars,
                         check=True, timeout=60).stdout.split()
    assert out[0] == "1" and int(out[1]) == os.cpu_count()


def test_no_other_module_counts_cpus_or_reads_slurm_variables():
    """Threads come from env.available_threads, SLURM_* from env.slurm_context: nowhere else."""
    banned = re.compile(r"cpu_count\(|sched_getaffinity|(environ|getenv)\W+[\"']SLURM")
    offenders = []
    for path in sorted((ROOT / "ecocube").rglob("*.py")):
        if path.name == "env.py" and path.parent.name == "ecocube":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if banned.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


# ---------------------------------------------------------------------- GDAL options


def test_gdal_options_defaults():
    opts = gdal_options()
    assert opts["GDAL_NUM_THREADS"] == "1"
    assert opts["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert opts["GDAL_HTTP_MAX_RETRY"] == "0"  # ecocube retries itself
    assert opts["GDAL_HTTP_MULTIRANGE"] == "YES"
    assert opts["VSI_CACHE_SIZE"] == str(64 * 2**20)
    assert opts["GDAL_CACHEMAX"] == 256 * 2**20 and isinstance(opts["GDAL_CACHEMAX"], int)
    assert not any(k.startswith("AWS_") for k in opts)


@pytest.mark.parametrize(("threads", "expected"), [(4, "4"), (1, "1"), (0, "1"), (-3, "1")])
def test_gdal_threads(threads, expected):
    assert gdal_options(threads=threads)["GDAL_NUM_THREADS"] == expected


@pytest.mark.parametrize(("endpoint", "host", "https"), [
    ("http://127.0.0.1:8333", "127.0.0.1:8333", "NO"),
    ("https://s3.example.org/", "s3.example.org", "YES"),
    ("minio.local:9000", "minio.local:9000", "YES"),  # no scheme: https
])
def test_s3_endpoint_options(endpoint, host, https):
    opts = gdal_options(s3_endpoint=endpoint, s3_region="eu-central-1")
    assert opts["AWS_S3_ENDPOINT"] == host
    assert opts["AWS_HTTPS"] == https
    assert opts["AWS_VIRTUAL_HOSTING"] == "FALSE"  # path-style, as S3-compatible servers need
    assert opts["AWS_REGION"] == "eu-central-1"


def test_extra_options_override_and_are_strings():
    opts = gdal_options(threads=2, extra={"GDAL_NUM_THREADS": 8, "GDAL_HTTP_TIMEOUT": 5, "CPL_DEBUG": "ON"})
    assert opts["GDAL_NUM_THREADS"] == "8" and opts["GDAL_HTTP_TIMEOUT"] == "5" and opts["CPL_DEBUG"] == "ON"


def test_gdal_options_never_carry_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-in-options")
    opts = gdal_options(s3_endpoint="http://127.0.0.1:8333")
    assert "AKIDEXAMPLE" not in repr(opts) and "not-in-options" not in repr(opts)


def test_gdal_options_are_copies():
    before = dict(GDAL_READ_OPTIONS)
    opts = gdal_options(threads=7, s3_endpoint="http://127.0.0.1:1", extra={"VSI_CACHE": "FALSE"})
    opts["GDAL_HTTP_TIMEOUT"] = "999"
    assert GDAL_READ_OPTIONS == before
    assert gdal_options()["GDAL_HTTP_TIMEOUT"] == "30"


def test_nothing_touches_the_process_environment(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    before = dict(os.environ)
    slurm_context()
    available_threads()
    gdal_options(threads=3, s3_endpoint="http://127.0.0.1:8333")
    with rasterio_env(threads=3):
        pass
    assert dict(os.environ) == before


# ---------------------------------------------------------------------- scoped rasterio.Env


def test_rasterio_env_is_scoped():
    assert get_gdal_config("GDAL_HTTP_MAX_RETRY") is None
    with rasterio_env(threads=3):
        assert get_gdal_config("GDAL_NUM_THREADS") == 3
        assert get_gdal_config("GDAL_HTTP_MAX_RETRY") == 0
        assert get_gdal_config("CPL_VSIL_CURL_ALLOWED_EXTENSIONS") == GDAL_READ_OPTIONS[
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS"]
        with rasterio.open(ROOT / "tests" / "data" / "worldcereal-be-2019" / "S2L2A_20191013_SCL.tif") as ds:
            assert ds.read(1, window=((0, 8), (0, 8))).shape == (8, 8)  # a real read works inside it
    assert get_gdal_config("GDAL_HTTP_MAX_RETRY") is None
    assert get_gdal_config("GDAL_NUM_THREADS") is None


def test_rasterio_env_hands_s3_settings_and_credentials_to_gdal(monkeypatch):
    # the AWS session (boto3) is made behind ecocube.store, the only boto3 user
    from ecocube.store import gdal_env as rasterio_env

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-example")
    with rasterio_env(threads=2, s3_endpoint="http://127.0.0.1:8333", s3_region="eu-west-1"):
        assert get_gdal_config("AWS_S3_ENDPOINT") == "127.0.0.1:8333"
        assert get_gdal_config("AWS_HTTPS") == "NO"
        assert get_gdal_config("AWS_VIRTUAL_HOSTING") == "FALSE"
        assert get_gdal_config("AWS_REGION") == "eu-west-1"
        assert rasterio.env.getenv()["AWS_ACCESS_KEY_ID"] == "AKIDEXAMPLE"
        assert rasterio.env.getenv()["AWS_SECRET_ACCESS_KEY"] == "secret-example"
    assert get_gdal_config("AWS_S3_ENDPOINT") is None

