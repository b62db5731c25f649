"""The run configuration: valid files load, bad ones fail with the key and allowed values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ecocube.cli import cli
from ecocube.config import EXAMPLE_YAML, RunConfig, load_config
from ecocube.errors import ConfigError


@pytest.fixture
def example(tmp_path) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(EXAMPLE_YAML)
    return p


def _edit(path: Path, fn) -> Path:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data))
    return path


def test_example_is_valid_and_frozen(example):
    cfg = load_config(example)
    assert isinstance(cfg, RunConfig)
    assert cfg.grid.crs == "EPSG:3035" and cfg.grid.tile_size == 1000
    assert cfg.bands == ("blue", "green", "red", "nir", "swir1", "swir2")
    assert [c.code for c in cfg.model.classes] == [1, 2, 3]
    with pytest.raises(Exception):
        cfg.grid.tile_size = 5  # frozen
    # relative paths are resolved against the file's folder
    assert cfg.model.path == example.parent / "model"


def test_unknown_key_names_key_and_allowed(example):
    _edit(example, lambda d: d["gapfill"].update(h_sam=3))
    with pytest.raises(ConfigError) as err:
        load_config(example)
    msg = str(err.value)
    assert "gapfill.h_sam: unknown key" in msg
    assert "h_same" in msg and "direction" in msg  # the allowed keys are listed


def test_wrong_literal_lists_allowed_values(example):
    _edit(example, lambda d: d["gapfill"].update(direction="sideways"))
    with pytest.raises(ConfigError) as err:
        load_config(example)
    assert "gapfill.direction" in str(err.value)
    assert "'both'" in str(err.value) and "'past'" in str(err.value)


def test_wrong_type_and_missing_key(example):
    _edit(example, lambda d: (d["grid"].update(tile_size="big"), d.pop("model")))
    with pytest.raises(ConfigError) as err:
        load_config(example)
    msg = str(err.value)
    assert "grid.tile_size" in msg and "'big'" in msg
    assert "model: required key is missing" in msg


def test_bad_crs_and_colour(example):
    def fn(d):
        d["grid"]["crs"] = "EPSG:999999"
        d["model"]["classes"][0]["color"] = "red"

    _edit(example, fn)
    with pytest.raises(ConfigError) as err:
        load_config(example)
    msg = str(err.value)
    assert "grid.crs" in msg and "EPSG:999999" in msg
    assert "model.classes.0.color" in msg and "#rrggbb" in msg


def test_missing_aoi_file(example):
    _edit(example, lambda d: d.update(aoi={"path": "nowhere.gpkg"}))
    with pytest.raises(ConfigError, match=r"aoi.path: no such file .*nowhere.gpkg"):
        load_config(example)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_are_validated(example):
    cfg = load_config(example, {"processing.threads": 3})
    assert cfg.processing.threads == 3
    with pytest.raises(ConfigError, match="processing.thread: unknown key"):
        load_config(example, {"processing.thread": 3})


def test_config_check_cli(example):
    runner = CliRunner()
    ok = runner.invoke(cli, ["config", "check", "--no-preflight", str(example)])
    assert ok.exit_code == 0, ok.output
    assert "valid — 9 tiles" in ok.output


@pytest.mark.slow
def test_config_check_cli_exit_code_2(example):
    _edit(example, lambda d: d["slurm"].update(cpus=4))
    proc = subprocess.run([sys.executable, "-m", "ecocube", "config", "check", str(example)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "slurm.cpus: unknown key" in proc.stderr
    assert "cpus_per_task" in proc.stderr


def test_config_example_cli_roundtrip(tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli, ["config", "example"])
    assert out.exit_code == 0
    p = tmp_path / "run.yaml"
    p.write_text(out.output)
    assert load_config(p).name == "landcover-2019"
