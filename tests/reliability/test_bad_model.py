"""Faults of the model side: training samples with class codes outside the legend, a bundle
trained for another legend, on other features, or written by another ecocube bundle format.

What must hold: training refuses unknown classes in one line naming the file, the field and
the codes, exit 2, no bundle written; pre-flight (``ecocube config check``) lists a foreign
bundle's problem, exit 2; a tile run with it fails in one line naming the bundle, exit 1,
record ``failed``, nothing published; once the configuration or bundle is right the rerun
finishes byte-identical to a clean run."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from faults import assert_rerun_matches, clean_run, published, run_cli
from test_tile import CLASSES, ORIGIN, bundle, cfg_dict, model_dir, scene, write_yaml  # noqa: F401 - fixtures

from ecocube.bundle import BUNDLE_VERSION
from ecocube.status import read_status
from ecocube.store import LocalStore

pytestmark = pytest.mark.slow  # real processes, tiles and models

TILE = "X0000_Y0000"
LAYERS = {"layers": ["class", "composite"]}
PRODUCTS = ("class", "composite")
LEGEND = [{"code": c, "name": n, "color": k} for c, n, k in CLASSES]


def _assert_tile_refused(proc, store, *needles: str) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ecocube: error: tile {TILE} failed: ModelError: "), last
    for needle in needles:
        assert needle in last, last
    assert "Traceback" not in proc.stderr
    rec = read_status(store, TILE)
    assert rec["state"] == "failed" and rec["error_type"] == "ModelError" and rec["outputs"] == {}
    assert published(store) == []
    return last


def test_unknown_class_codes_in_the_samples_are_refused_before_anything_is_written(scene, tmp_path):  # noqa: F811
    samples = tmp_path / "samples.csv"
    x, y = ORIGIN[0] + 55, ORIGIN[1] - 55
    samples.write_text("x,y,cls\n" + "".join(f"{x + 10 * i},{y},{c}\n" for i, c in enumerate((10, 20, 99, 30, 7))))
    run_yaml = write_yaml(tmp_path / "run.yaml", cfg_dict(scene["root"], str(tmp_path / "out")))
    out = tmp_path / "trained"
    proc = run_cli("train", run_yaml, "--samples", samples, "--class-field", "cls", "--crs", "EPSG:32631",
                   "--out", out, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ecocube: error: samples {samples}: class codes [7, 99] in field 'cls' are not in model.classes (10, 20, 30)")
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("fault", ["legend", "features", "format_version", "format"])
def test_a_foreign_bundle_is_refused_by_preflight_and_by_the_tile(scene, model_dir, tmp_path, fault):  # noqa: F811
    good = cfg_dict(scene["root"], str(tmp_path / "out"), tiles=(TILE,), model=model_dir, output=LAYERS)
    bad = json.loads(json.dumps(good))
    foreign = tmp_path / "foreign-model"
    if fault == "legend":  # the bundle predicts 10/20/30; this campaign's legend has 40 instead of 30
        bad["model"]["classes"] = [*LEGEND[:2], {"code": 40, "name": "urban", "color": "#ff0000"}]
        preflight = f"model.classes: the bundle {model_dir} predicts classes [10, 20, 30], the configuration " \
                    "lists [10, 20, 40]"
        tile = (f"model bundle {model_dir} predicts classes [10, 20, 30], model.classes lists [10, 20, 40]: a "
                "bundle trained for another legend")
    elif fault == "features":  # trained on 4 seasons x (3 bands + NDVI), run without indices
        bad["features"]["indices"] = []
        preflight = tile = (f"model bundle {model_dir}: features do not match: the model needs 16, the data has 12; "
                            "missing from the data: ndvi_s1, ndvi_s2, ndvi_s3, ndvi_s4")
    else:
        shutil.copytree(model_dir, foreign)
        meta = json.loads((foreign / "model.json").read_text())
        if fault == "format_version":
            meta["format_version"] = BUNDLE_VERSION + 1
            tile = (f"model bundle {foreign} has format version {BUNDLE_VERSION + 1}; this ecocube reads up to "
                    f"{BUNDLE_VERSION}: upgrade ecocube")
        else:
            meta["format"] = "another-tool-model"
            tile = f"{foreign / 'model.json'} is not an ecocube model bundle (format 'another-tool-model')"
        (foreign / "model.json").write_text(json.dumps(meta))
        bad["model"]["path"] = str(foreign)
        preflight = tile
    run_yaml = write_yaml(tmp_path / "run.yaml", bad)
    check = run_cli("config", "check", "--no-inputs", run_yaml, timeout=300)
    assert check.returncode == 2, check.stderr[-3000:]
    assert any(preflight in ln for ln in check.stderr.splitlines()), check.stderr[-3000:]

    store = LocalStore(tmp_path / "out")
    _assert_tile_refused(run_cli("run-tile", run_yaml, "--tile", TILE, timeout=300), store, tile)

    reference = clean_run(good, tmp_path, TILE)
    fixed = write_yaml(tmp_path / "run.yaml", good)
    assert_rerun_matches([sys.executable, "-m", "ecocube", "run-tile", fixed, "--tile", TILE], store, TILE, PRODUCTS,
                         reference)
