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


def test_read_ahead_is_a_validated_processing_setting(example):
    assert load_config(example).processing.read_ahead is False  # the default
    assert load_config(example, {"processing.read_ahead": True}).processing.read_ahead is True
    with pytest.raises(ConfigError, match=r"processing.read_ahead.*'sometimes'"):
        load_config(example, {"processing.read_ahead": "sometimes"})


def test_meta_is_a_validated_model_setting_passed_to_the_ensemble(example):
    from ecocube.train import _make_model

    cfg = load_config(example)
    assert cfg.model.meta == "mean" and _make_model(cfg, 1).meta == "mean"  # the default
    assert _make_model(load_config(example, {"model.meta": "auto"}), 1).meta == "auto"
    with pytest.raises(ConfigError, match=r"model.meta.*'median'"):
        load_config(example, {"model.meta": "median"})


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


# ---------------------------------------------------------------------- ergonomics


@pytest.mark.parametrize("kind", ["composite", "acquisitions", "stac-api"])
def test_every_example_kind_validates(kind, tmp_path):
    out = CliRunner().invoke(cli, ["config", "example", "--kind", kind])
    assert out.exit_code == 0, out.output
    p = tmp_path / "run.yaml"
    p.write_text(out.output)
    cfg = load_config(p)
    src = cfg.inputs.sources[0]
    assert src.kind == kind
    assert out.output.count("#") > 15  # commented
    if kind == "acquisitions":
        assert src.glob == str(tmp_path / "data" / "S2L2A_*_10m.tif") and src.dates is None
        assert src.mask.href == str(tmp_path / "data" / "S2L2A_{yyyymmdd}_SCL.tif")
    if kind == "stac-api":
        assert src.stac_api.collections == ("sentinel-2-l2a",) and src.stac_api.query == {"eo:cloud_cover": {"lt": 60}}
        assert src.mask.asset == "scl" and src.scenes.select == "least-cloudy"


def _acq_yaml(dates_yaml: str) -> str:
    data = yaml.safe_load(EXAMPLE_YAML)
    text = yaml.safe_dump({k: v for k, v in data.items() if k != "inputs"})
    return text + f"""inputs:
  sources:
    - name: s2
      kind: acquisitions
      href: /d/S2_{{yyyymmdd}}.tif
      bands: [red]
      dates: {dates_yaml}
"""


def test_unquoted_yaml_dates_are_dates(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(_acq_yaml("[2018-08-04, '2018-08-14', 2018-08-19T10:56:55Z]"))
    assert load_config(p).inputs.sources[0].dates[:2] == ("2018-08-04", "2018-08-14")


@pytest.mark.slow
def test_a_list_error_is_one_line_with_the_first_bad_item_and_the_count(tmp_path):
    p = tmp_path / "run.yaml"
    days = ", ".join(f"2018-08-{d:02d}" for d in range(1, 29))
    p.write_text(_acq_yaml(f"[{days}, 2018-8-4x, '2019-02-30', tomorrow]"))
    cfg = load_config(p)  # strings: the file is valid, the pre-flight checks the dates
    assert cfg.inputs.sources[0].dates[28:] == ("2018-8-4x", "2019-02-30", "tomorrow")
    proc = subprocess.run([sys.executable, "-m", "ecocube", "config", "check", str(p), "--no-inputs"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [line.strip() for line in proc.stderr.splitlines() if "dates" in line]
    assert lines == ["inputs.sources[s2].dates[28]: not a date: '2018-8-4x' (Invalid isoformat string: "
                     "'2018-8-4x'; use YYYY-MM-DD or an ISO datetime) — and 2 more of the 31 dates"]
    p.write_text(_acq_yaml("[" + ", ".join(str(i) for i in range(40)) + "]"))
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    lines = str(exc.value).splitlines()
    assert lines[1:] == ["  inputs.sources.0.dates.0: Input should be a valid string (got 0) — and the same in 39 "
                         "more item(s) of this list"]
    # a rule across keys names the rule, never dumps the section
    p.write_text(_acq_yaml("null"))
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value).splitlines()[1:] == [
        "  inputs.sources.0: kind 'acquisitions' needs exactly one of 'dates', 'glob' or 'stac_items'"]
    p.write_text(_acq_yaml("[2019-13-01]"))
    with pytest.raises(ConfigError, match="an unquoted date in it is not a date: month must be in 1..12"):
        load_config(p)


@pytest.mark.slow
def test_config_check_runs_the_glob_and_exits_2_when_it_matches_nothing(tmp_path, data_dir):
    from ecocube.config import EXAMPLES

    from test_archive_runs import write_ramp_dem

    folder = data_dir / "worldcereal-be-2019"
    text = EXAMPLES["acquisitions"].replace("data/S2L2A_", f"{folder}/S2L2A_")
    (tmp_path / "data").mkdir()
    write_ramp_dem(tmp_path / "data" / "dem.tif")  # the example's covariates
    p = tmp_path / "run.yaml"
    p.write_text(text)
    check = [sys.executable, "-m", "ecocube", "config", "check", str(p), "--config", "output.layers=[composite]"]
    ok = subprocess.run(check, capture_output=True, text=True)  # no prediction: no model needed yet
    assert ok.returncode == 0, ok.stderr
    assert "source s2: 72 acquisitions from glob" in ok.stderr and "2018-08-04..2019-11-27" in ok.stderr
    p.write_text(text.replace("S2L2A_*_10m.tif", "S2L2A_*_60m.tif"))
    bad = subprocess.run(check, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "S2L2A_*_60m.tif' matches no file" in bad.stderr


def test_stac_query_strings_become_numeric_filters():
    from ecocube.config import StacApiConfig

    api = StacApiConfig(url="http://127.0.0.1:1", collections=["c"],
                        query=["eo:cloud_cover<=60.5", "platform=sentinel-2a", "s2:nodata_pixel_percentage < 5"])
    assert api.query == {"eo:cloud_cover": {"lte": 60.5}, "platform": {"eq": "sentinel-2a"},
                         "s2:nodata_pixel_percentage": {"lt": 5}}
    assert StacApiConfig(url="http://h", collections=["c"], query="eo:cloud_cover>=1").query == {
        "eo:cloud_cover": {"gte": 1}}
    with pytest.raises(ValueError, match="is not 'property<op>value'"):
        StacApiConfig(url="http://h", collections=["c"], query=["cloudy"])
    with pytest.raises(ValueError, match="expected a mapping of operators"):
        StacApiConfig(url="http://h", collections=["c"], query={"eo:cloud_cover": {"below": 3}})


def test_tuning_and_feature_selection_keys(example):
    cfg = load_config(example)
    assert cfg.model.tuning.method == "none" and cfg.model.tuning.grids is None
    assert cfg.model.feature_selection.method == "none" and cfg.model.feature_selection.keep == (1.0, 0.5, 0.25)
    _edit(example, lambda d: d["model"].update(
        tuning={"method": "grid", "grids": {"lgbm": {"num_leaves": [7, 31], "learning_rate": [0.05]}},
                "metric": "f1_weighted"},
        feature_selection={"method": "rfe", "keep": [0.3, 1]}))
    cfg = load_config(example)
    assert cfg.model.tuning.grids == {"lgbm": {"num_leaves": (7, 31), "learning_rate": (0.05,)}}
    assert cfg.model.tuning.metric == "f1_weighted"
    assert cfg.model.feature_selection.method == "rfe" and cfg.model.feature_selection.keep == (0.3, 1.0)


@pytest.mark.parametrize("model, where, text", [
    ({"tuning": {"method": "grid", "grids": {"lgbm": {"num_leaf": [7]}}}}, "model.tuning",
     "tuning grid for 'lgbm': 'num_leaf' cannot be tuned; choose among num_leaves"),
    ({"tuning": {"method": "grid", "grids": {"rf": {"min_samples_leaf": []}}}}, "model.tuning",
     "min_samples_leaf needs a non-empty list of values"),
    ({"tuning": {"method": "grid", "grids": {"mlp": {"mlpclassifier__alpha": [0.01]}}}}, "model",
     "model.tuning.grids: mlp not among model.base_learners (rf, lgbm, et)"),
    ({"tuning": {"grids": {"rf": {"min_samples_leaf": [1]}}}}, "model.tuning",
     "grids are set but method is 'none' (use method: grid)"),
    ({"tuning": {"method": "random"}}, "model.tuning.method", "'grid'"),
    ({"feature_selection": {"method": "rfe", "keep": [0.5, 1.5]}}, "model.feature_selection",
     "feature selection keep: 1.5 is not a share in (0, 1]"),
    ({"feature_selection": {"method": "lasso"}}, "model.feature_selection.method", "'importance'"),
])
def test_bad_tuning_and_feature_selection_are_named(example, model, where, text):
    _edit(example, lambda d: d["model"].update(model))
    with pytest.raises(ConfigError) as err:
        load_config(example)
    msg = str(err.value)
    assert f"{where}:" in msg and text in msg, msg


def test_config_choices_of_learners_and_combiners_are_the_ensembles():
    from typing import get_args

    from ecocube.config import ModelConfig
    from ecocube.ensemble import BASE_LEARNERS, META_LEARNERS

    assert set(get_args(ModelConfig.model_fields["meta"].annotation)) == set(META_LEARNERS)
    (learner,) = get_args(ModelConfig.model_fields["base_learners"].annotation)[:1]
    assert set(get_args(learner)) == set(BASE_LEARNERS)
