"""``ecocube doctor``: each misconfiguration the tests create is found, one FAIL line with the fix,
exit 1; a sound machine and run pass. Real parts: the console script in a subprocess (GDAL and
PROJ read their environment once per process), COG inputs on disk, a local store, SeaweedFS."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_tile import cfg_dict, scene, write_yaml  # noqa: F401 - fixtures

from ecocube.doctor import Check

AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


def doctor(*args: str, env: dict | None = None, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "ecocube", "doctor", *args], capture_output=True, text=True, check=False,
                          timeout=300, env=full)


def lines(proc, state: str) -> list[str]:
    return [ln for ln in proc.stdout.splitlines() if ln.startswith(state)]


def _run_yaml(scene, tmp_path, **sections) -> Path:  # noqa: F811 - the fixture's value
    data = cfg_dict(scene["root"], str(tmp_path / "out"), output={"layers": ["composite", "count"]}, **sections)
    return write_yaml(tmp_path / "run.yaml", data)


def test_check_line_format():
    assert Check("proj", True, "PROJ 9").line() == "OK   proj      PROJ 9"
    assert Check("proj", False, "broken", "unset PROJ_DATA").line() == "FAIL proj      broken — fix: unset PROJ_DATA"
    assert Check("slurm", None, "not found").line().startswith("--   slurm")


@pytest.mark.slow
def test_a_sound_run_passes(scene, tmp_path):  # noqa: F811
    proc = doctor(str(_run_yaml(scene, tmp_path)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines(proc, "FAIL") == []
    text = proc.stdout
    assert "OK   gdal      GDAL " in text and "OK   proj      PROJ " in text
    for driver in ("COG", "GTiff", "GPKG"):
        assert f"OK   driver    {driver} " in text
    assert "OK   threads   2 (from processing.threads)" in text
    assert "OK   inputs    inputs: opened 6 of 6 sampled files" in text
    assert f"OK   store     store {tmp_path / 'out'}: writable" in text
    assert "OK   scratch   scratch " in text
    assert text.strip().splitlines()[-1].startswith("all ") and text.strip().endswith("checks passed")


def test_broken_proj_data_and_a_skipped_driver_are_found(tmp_path):
    empty = tmp_path / "no-proj"
    empty.mkdir()
    proc = doctor(env={"PROJ_DATA": str(empty), "PROJ_LIB": str(empty), "GDAL_SKIP": "GPKG"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fails = lines(proc, "FAIL")
    assert len(fails) == 2, fails
    assert fails[0].startswith("FAIL proj      PROJ ") and f"PROJ_DATA={empty}" in fails[0]
    assert "cannot transform EPSG:4326 → EPSG:3035" in fails[0] and "fix: unset PROJ_DATA/PROJ_LIB" in fails[0]
    assert fails[1].startswith("FAIL driver    GPKG ") and "fix: remove GPKG from GDAL_SKIP" in fails[1]
    assert proc.stdout.strip().endswith("2 of 9 checks failed")


@pytest.mark.slow
def test_run_misconfigurations_are_found(scene, tmp_path):  # noqa: F811
    data = cfg_dict(scene["root"], str(tmp_path / "out"), output={"layers": ["composite", "count"]},
                    processing={"threads": 4}, slurm={"partition": "gpu-long"})
    src = data["inputs"]["sources"][0]
    src["href"] = src["href"].replace("inputs", "moved-away")  # every input file is missing
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    data["output"]["store"] = str(blocker / "out")  # the store cannot be created
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    bare = tmp_path / "bin"  # a PATH without Slurm's commands
    bare.mkdir()
    proc = doctor(str(run_yaml), env={"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "1",
                                      "PATH": f"{bare}:{Path(sys.executable).parent}"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fails = {ln.split()[1]: ln for ln in lines(proc, "FAIL")}
    assert "processing.threads=4 exceeds the allocation's 1 CPUs" in fails["threads"]
    assert "fix: remove processing.threads" in fails["threads"]
    assert "sbatch, squeue, sacct, scontrol, scancel not found on PATH (slurm.partition is gpu-long)" in fails["slurm"]
    assert "inputs: cannot open " in fails["inputs"] and "moved-away" in fails["inputs"]
    assert "fix: check the URL templates" in fails["inputs"]
    assert "--   inputs    inputs: opened 0 of 6 sampled files" in proc.stdout  # context, not an OK
    assert f"output.store {blocker / 'out'}" in fails["store"] or "output.store:" in fails["store"]
    assert set(fails) == {"threads", "slurm", "inputs", "store"}, fails


def test_too_little_scratch_space_is_found(tmp_path):
    # a 100 000 px tile writes hundreds of GiB of cube layers: more than this disk has free
    data = cfg_dict(tmp_path, str(tmp_path / "out"), output={"layers": ["composite", "count"]},
                    grid={"tile_size": 100_000}, processing={"tmp_dir": str(tmp_path / "scratch")})
    proc = doctor("--no-inputs", str(write_yaml(tmp_path / "run.yaml", data)))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fails = lines(proc, "FAIL")
    assert len(fails) == 1, fails
    assert fails[0].startswith(f"FAIL scratch   processing.tmp_dir {tmp_path / 'scratch'}: a tile writes up to ")
    assert "GiB are free" in fails[0] and "fix: set processing.tmp_dir" in fails[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_s3_credentials_and_endpoint(scene, tmp_path, s3_bucket, seaweed):  # noqa: F811
    s3 = {"endpoint_url": seaweed.endpoint_url, "region": seaweed.region}
    data = cfg_dict(scene["root"], f"s3://{s3_bucket}/run", output={"layers": ["composite", "count"], "s3": s3})
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]

    proc = doctor(str(run_yaml))  # the bucket's credentials are in the environment (the fixture)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"OK   s3        output: endpoint {seaweed.endpoint_url}, credentials from env" in proc.stdout
    assert f"OK   store     store s3://{s3_bucket}/run: writable" in proc.stdout
    assert secret not in proc.stdout + proc.stderr and os.environ["AWS_ACCESS_KEY_ID"] not in proc.stdout

    nowhere = tmp_path / "none"
    proc = doctor(str(run_yaml), drop=AWS_VARS, env={"AWS_SHARED_CREDENTIALS_FILE": str(nowhere),
                                                     "AWS_CONFIG_FILE": str(nowhere)})
    assert proc.returncode == 1
    fails = {ln.split()[1]: ln for ln in lines(proc, "FAIL")}
    assert "credentials: none found" in fails["s3"] and "fix: set AWS_ACCESS_KEY_ID" in fails["s3"]
    assert "store" in fails  # and the store cannot be written without them

    data["output"]["s3"]["endpoint_url"] = f"http://127.0.0.1:{_closed_port()}"
    write_yaml(run_yaml, data)
    proc = doctor(str(run_yaml))
    assert proc.returncode == 1
    fails = {ln.split()[1]: ln for ln in lines(proc, "FAIL")}
    assert set(fails) == {"store"}, fails
    assert f"s3://{s3_bucket}/run" in fails["store"]
    assert secret not in proc.stdout + proc.stderr


def test_threads_check_quotes_an_unparsable_allocation():
    from ecocube.doctor import check_threads

    bad = check_threads(None, {"SLURM_JOB_ID": "41", "SLURM_CPUS_PER_TASK": "2(x3)"})
    assert bad.line() == ("FAIL threads   SLURM_CPUS_PER_TASK='2(x3)' is not a number — fix: submit with "
                          "--cpus-per-task N")
    good = check_threads(None, {"SLURM_JOB_ID": "41", "SLURM_CPUS_PER_TASK": "3"})
    assert good.ok is True and good.text.startswith("3 (from SLURM_CPUS_PER_TASK)")


# ---------------------------------------------------------------------- the partition, on the local Slurm

from test_slurm import local_slurm  # noqa: E402,F401 - the fixture


def _scontrol(*args: str) -> None:
    proc = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"scontrol {' '.join(args)}: {proc.stderr}"


@pytest.fixture
def small_partitions(local_slurm):  # noqa: F811
    """Two partitions on the local Slurm's node next to its default one: 'ecodoc-short'
    (MaxTime 5 minutes, UP) and 'ecodoc-down' (DOWN); deleted afterwards. Neither is the
    default, so other jobs on the cluster do not land there."""
    names = ("ecodoc-short", "ecodoc-down")
    for name in names:  # left over by an interrupted run
        subprocess.run(["scontrol", "delete", f"PartitionName={name}"], capture_output=True, timeout=60, check=False)
    _scontrol("create", "PartitionName=ecodoc-short", "Nodes=localhost", "MaxTime=5", "State=UP", "Default=NO")
    _scontrol("create", "PartitionName=ecodoc-down", "Nodes=localhost", "State=DOWN", "Default=NO")
    yield local_slurm
    for name in names:
        _scontrol("delete", f"PartitionName={name}")


@pytest.mark.slurm
def test_partition_limits_on_a_real_slurm(tmp_path, small_partitions):
    conf = {"SLURM_CONF": small_partitions}

    def partition_line(**slurm) -> tuple[int, str]:
        data = cfg_dict(tmp_path, str(tmp_path / "out"), output={"layers": ["composite", "count"]},
                        slurm={"time": "10", "finalize_time": "10", **slurm})
        proc = doctor("--no-inputs", str(write_yaml(tmp_path / "run.yaml", data)), env=conf)
        found = [ln for ln in proc.stdout.splitlines() if ln.split()[1:2] == ["partition"]]
        assert found, proc.stdout + proc.stderr
        return proc.returncode, found

    code, lines_ = partition_line()  # no slurm.partition: the cluster's default, checked all the same
    assert code == 0 and len(lines_) == 1, lines_
    assert lines_[0].startswith("OK   partition debug (the default partition): state UP, MaxTime UNLIMITED")

    code, lines_ = partition_line(partition="ecodoc-short")  # 10 minutes asked, 5 allowed
    assert code == 1
    assert lines_ == ["FAIL partition ecodoc-short: state UP, MaxTime 00:05:00, MaxNodes UNLIMITED: slurm.time 10 is "
                      "longer — fix: lower slurm.time to at most 00:05:00 (or more tiles per task on another "
                      "partition)"]

    code, lines_ = partition_line(partition="ecodoc-short", time="4")  # the tasks fit, the finalize job does not
    assert code == 1 and "slurm.finalize_time 10 is longer" in lines_[0], lines_

    code, lines_ = partition_line(partition="ecodoc-short", time="4", finalize_partition="debug")
    assert code == 0 and [ln.split()[0] for ln in lines_] == ["OK", "OK"], lines_
    assert lines_[0].startswith("OK   partition ecodoc-short: state UP, MaxTime 00:05:00")
    assert lines_[1].startswith("OK   partition debug: state UP")

    code, lines_ = partition_line(partition="ecodoc-down")
    assert code == 1 and lines_[0].startswith("FAIL partition ecodoc-down: state DOWN"), lines_
    assert "fix: wait for it to be UP or choose another partition (slurm.partition)" in lines_[0]

    code, lines_ = partition_line(partition="no-such-partition")
    assert code == 1
    assert lines_[0].startswith("FAIL partition no-such-partition: ") and "not found" in lines_[0], lines_
    assert lines_[0].endswith("fix: set slurm.partition to one listed by `sinfo -s`")
