"""Pre-flight (``ecocube config check``, ``ecocube slurm submit``): every problem that would
fail every tile later is found up front and listed, one per line, with exit code 2.

Real parts: COG inputs on disk, a real model bundle, a local store, the console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_tile import bundle, cfg_dict, model_dir, scene, write_yaml  # noqa: F401 - fixtures

from ecocube.config import config_from_dict, load_config
from ecocube.preflight import format_bytes, preflight

pytestmark = pytest.mark.slow  # real processes, tiles, models


def ecocube(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecocube", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def _problem_lines(stderr: str) -> list[str]:
    lines = stderr.strip().splitlines()
    assert lines[0].startswith("ecocube: error: pre-flight of "), stderr
    return [ln.strip() for ln in lines[1:] if ln.startswith("  ")]


@pytest.mark.slow
def test_a_sound_run_passes_with_what_was_checked(scene, model_dir, tmp_path):
    run_yaml = write_yaml(tmp_path / "run.yaml", cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir))
    proc = ecocube("config", "check", str(run_yaml))
    assert proc.returncode == 0, proc.stderr
    assert "valid — 2 tiles of 32×32 px" in proc.stdout
    assert "inputs: opened 6 of 6 sampled files (24 in the catalogs of the first and last tile)" in proc.stderr
    assert f"store {tmp_path / 'out'}: writable" in proc.stderr
    # the probe object is gone, and so is its folder
    assert not (tmp_path / "out" / "_ecocube_preflight").exists()


@pytest.mark.slow
def test_every_problem_is_listed_one_per_line_with_exit_2(scene, tmp_path):
    data = cfg_dict(scene["root"], str(tmp_path / "out"), model=tmp_path / "no-model")
    src = data["inputs"]["sources"][0]
    src["href"] = src["href"].replace("{quarter}", "{quartr}")
    data["inputs"]["sources"].append({"name": "acq", "kind": "acquisitions", "bands": ["swir"],
                                      "href": str(scene["root"] / "acq" / "{date}_{band}.tif"),
                                      "dates": ["2020-02-30", "2019-05-02"]})
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    proc = ecocube("config", "check", str(run_yaml))
    assert proc.returncode == 2, proc.stderr
    problems = _problem_lines(proc.stderr)
    assert f"pre-flight of {run_yaml} found {len(problems)} problem(s):" in proc.stderr
    assert any(p.startswith("inputs.sources[s2].href: unknown field(s) {quartr}") for p in problems), problems
    assert any(p.startswith("inputs.sources[acq].dates[0]: not a date: '2020-02-30' (day is out of range")
               for p in problems), problems
    assert any(p.startswith(f"model.path: model bundle not found: {tmp_path / 'no-model'}") for p in problems)
    assert len(problems) == 3, problems
    # slurm submit runs the same pre-flight first and submits nothing (no Slurm is contacted)
    for args in (["--dry-run"], []):
        sub = ecocube("slurm", "submit", str(run_yaml), *args)
        assert sub.returncode == 2, sub.stderr
        assert _problem_lines(sub.stderr) == problems
    assert not (tmp_path / "out" / "slurm").exists()


@pytest.mark.slow
def test_a_bundle_of_other_features_or_classes_is_refused(scene, model_dir, tmp_path):
    data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir, features={"indices": []})
    proc = ecocube("config", "check", "--no-inputs", str(write_yaml(tmp_path / "a.yaml", data)))
    assert proc.returncode == 2
    (problem,) = _problem_lines(proc.stderr)
    assert problem.startswith(f"model.path: model bundle {model_dir}") and "feature" in problem, problem

    data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir)
    data["model"]["classes"] = [{"code": 10, "name": "crop"}, {"code": 40, "name": "urban"}]
    proc = ecocube("config", "check", "--no-inputs", str(write_yaml(tmp_path / "b.yaml", data)))
    assert proc.returncode == 2
    assert _problem_lines(proc.stderr) == [
        f"model.classes: the bundle {model_dir} predicts classes [10, 20, 30], the configuration lists [10, 40]"]


@pytest.mark.slow
def test_missing_inputs_are_opened_and_named_unless_no_inputs(scene, model_dir, tmp_path):
    for f in (scene["inputs"] / "2020").rglob("nir.tif"):
        f.unlink()
    data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir)
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    cfg = load_config(run_yaml)
    report = preflight(cfg, sample=100)
    assert len(report.problems) == 4, report.problems  # 4 quarters of 2020 lack nir
    for p in report.problems:
        assert p.startswith(f"inputs: cannot open {scene['inputs'] / '2020'}/Q") and "/nir.tif (tile X0000_Y0000" in p
    assert ecocube("config", "check", "--no-inputs", str(run_yaml)).returncode == 0


def test_store_that_cannot_be_written_and_scratch_too_small(scene, model_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    data = cfg_dict(scene["root"], str(blocker / "out"), model=model_dir)
    cfg = config_from_dict(data)
    report = preflight(cfg, inputs=False)
    (problem,) = report.problems
    assert problem.startswith(f"output.store {blocker / 'out'}: not writable: cannot create the store's temporary "
                              f"folder {blocker / 'out' / '.ecocube-tmp'}"), problem

    cfg = config_from_dict(cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir,
                                    grid={"tile_size": 4096}))
    real = os.statvfs(tmp_path)
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((real.f_bsize, real.f_frsize, 0, 0,
                                                                     1000, 0, 0, 0, 0, 255)))
    report = preflight(cfg, inputs=False)
    # 8 periods x 3 bands x 5 bytes x 4096² px
    assert report.problems == [
        f"processing.tmp_dir {tmp_path / 'out' / '.ecocube-tmp'}: a tile writes up to "
        f"{format_bytes(8 * 3 * 5 * 4096**2)} of cube layers there (uncompressed, before publishing), only {format_bytes(1000 * real.f_frsize)} are free "
        "(set processing.tmp_dir to a larger local disk)"]
    assert format_bytes(8 * 3 * 5 * 4096**2) == "1.9 GiB" and format_bytes(512) == "512 B"


def test_dates_outside_the_periods_are_a_warning_that_names_them(scene, model_dir, tmp_path, caplog):
    from ecocube.sources import input_catalog

    data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir)
    data["inputs"]["sources"][0].update(kind="acquisitions", dates=["2019-02-01", "2002-05-03", "2020-08-01",
                                                                    "2030-01-01"],
                                        href=str(scene["root"] / "inputs" / "{year}" / "Q{quarter}" / "{band}.tif"))
    cfg = config_from_dict(data)
    report = preflight(cfg, inputs=False)
    assert report.problems == []
    assert report.warnings == ["inputs.sources[s2]: 2 acquisition date(s) outside the periods 2019-01-01..2021-01-01 "
                               "are not read: 2002-05-03, 2030-01-01"]
    with caplog.at_level("WARNING", logger="ecocube.sources"):
        input_catalog(cfg.inputs, "X0000_Y0000")
        input_catalog(cfg.inputs, "X0001_Y0000")
    assert [r.getMessage() for r in caplog.records] == report.warnings  # once per process, not per tile


@pytest.mark.slow
def test_an_empty_area_of_interest_is_an_error(scene, model_dir, tmp_path):
    data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir)
    data["aoi"] = {"tiles": []}
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    proc = ecocube("config", "check", "--no-inputs", str(run_yaml))
    assert proc.returncode == 2
    assert _problem_lines(proc.stderr)[0] == "aoi: the area of interest holds no tile of the grid (tiles [])"
    run = ecocube("run", str(run_yaml))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == ("ecocube: error: the area of interest holds no tile of the grid: "
                                                   "nothing to do (check aoi and grid.origin)")


def test_relative_tmp_dir_is_resolved_against_the_yaml_folder(scene, model_dir, tmp_path):
    data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir, processing={"tmp_dir": "scratch"})
    (tmp_path / "campaign").mkdir()
    cfg = load_config(write_yaml(tmp_path / "campaign" / "run.yaml", data))
    assert cfg.processing.tmp_dir == tmp_path / "campaign" / "scratch"


@pytest.mark.slow
def test_credentials_inside_an_endpoint_url_never_reach_the_error(scene, model_dir, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = cfg_dict(scene["root"], "s3://bucket/run", model=model_dir)
    data["output"]["s3"] = {"endpoint_url": f"http://AKIDSECRETKEY:wJalr/XUtnFEMI@127.0.0.1:{port}"}
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", AWS_MAX_ATTEMPTS="1")
    proc = subprocess.run([sys.executable, "-m", "ecocube", "config", "check", "--no-inputs", str(run_yaml)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    (problem,) = [p for p in _problem_lines(proc.stderr) if p.startswith("output.store")]
    assert "not writable" in problem and f"http://***@127.0.0.1:{port}" in problem, problem
    assert "AKIDSECRETKEY" not in proc.stderr + proc.stdout and "wJalr" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("text", ["http://k:s@h/x", "s3://bucket/a@b", "https://user:p/a@ss@host:9/x"])
def test_redact(text):
    from ecocube.errors import StoreError, redact

    out = redact(text)
    assert ":s@" not in out and "p/a@ss" not in out and "user" not in out
    assert str(StoreError(f"cannot read {text}")) == f"cannot read {out}"
    if text.startswith("s3"):
        assert out == text  # no credentials: unchanged
