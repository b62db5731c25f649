"""Faults: a tile with no input data at all, a year without any observation, a deleted output.

What must hold: no silent "done": the empty tile fails (default) or is recorded ``empty`` by
policy; the unobserved year is flagged in the record and the STAC item
(``ecocube:observed_fraction``) and, by policy, left unpredicted; ``ecocube status`` does not
call a tile done whose output file is gone."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine
from test_tile import BANDS, ORIGIN, bundle, cfg_dict, model_dir, scene, tile_of, write_yaml  # noqa: F401

from ecocube.config import config_from_dict
from ecocube.errors import TileError
from ecocube.status import read_status
from ecocube.store import LocalStore
from ecocube.tile import process_tile

pytestmark = pytest.mark.slow  # real tiles and models


def ecocube(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecocube", *args], capture_output=True, text=True, timeout=900)


def test_a_tile_without_any_input_data_fails_or_is_recorded_empty(scene, bundle, tmp_path):  # noqa: F811
    # X0005_Y0000 lies east of the scene's footprint: every value read is nodata
    data = cfg_dict(scene["root"], str(tmp_path / "out"), tiles=("X0005_Y0000",))
    cfg = config_from_dict(data)
    with pytest.raises(TileError, match=r"tile X0005_Y0000 failed: TileError: tile X0005_Y0000 has no input data at "
                                        r"all: not one valid observation in 2 years x 3 bands \(nodata 24576\); "):
        process_tile(tile_of(cfg, "X0005_Y0000"), cfg, bundle=bundle)
    store = LocalStore(tmp_path / "out")
    assert read_status(store, "X0005_Y0000")["state"] == "failed"
    assert store.list("") == ["status/X0005_Y0000.json"]

    data["inputs"]["on_empty"] = "record"
    cfg = config_from_dict(data)
    rec = process_tile(tile_of(cfg, "X0005_Y0000"), cfg, bundle=bundle)
    assert rec["state"] == "empty" and rec["outputs"] == {} and rec["gaps"]["observed"] == 0
    assert store.list("") == ["status/X0005_Y0000.json"]
    again = process_tile(tile_of(cfg, "X0005_Y0000"), cfg, bundle=bundle)
    assert again.get("skipped") and again["attempt"] == rec["attempt"]
    status = ecocube("status", str(write_yaml(tmp_path / "run.yaml", data)))
    assert "1 tiles: 0 done, 1 empty (no input data), 0 failed" in status.stdout


def _blank_year(scene, make_cog, year: int) -> None:
    transform = Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1])
    h, w = scene["dn"].shape[2:]
    for q in range(1, 5):
        for band in BANDS:
            make_cog(f"inputs/{year}/Q{q}/{band}.tif", np.zeros((h, w), np.uint16), transform=transform,
                     crs="EPSG:32631", nodata=0, blocksize=128)


@pytest.mark.parametrize("policy", ["predict", "skip"])
def test_a_year_without_observations_is_flagged_and_by_policy_not_predicted(scene, make_cog, model_dir,  # noqa: F811
                                                                             tmp_path, policy):
    _blank_year(scene, make_cog, 2020)
    data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir, finalize={"blocksize": 128})
    data["inputs"]["unobserved_years"] = policy
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    proc = ecocube("run", str(run_yaml), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    store = LocalStore(tmp_path / "out")
    for t in ("X0000_Y0000", "X0001_Y0000"):
        rec = read_status(store, t)
        assert rec["unobserved_years"] == [2020]
        assert rec["observed_fraction_by_year"]["2020"] == 0.0
        assert 0.6 < rec["observed_fraction_by_year"]["2019"] < 0.9  # ~25 % gaps planted
        with rasterio.open(tmp_path / "out" / f"class/{t}/2020-01-01/class.tif") as src:
            cls2020 = src.read(1)
            nodata = src.nodata
        with rasterio.open(tmp_path / "out" / f"class/{t}/2019-01-01/class.tif") as src:
            predicted2019 = int((src.read(1) != nodata).sum())
        if policy == "skip":
            assert (cls2020 == nodata).all()
            assert rec["completeness"] == predicted2019 / (2 * cls2020.size) and rec["completeness"] <= 0.5
        else:
            # predicted from gap-filled values wherever gap-filling reached (not flagged per pixel)
            assert (cls2020 != nodata).mean() > 0.5 and rec["completeness"] > 0.75
    fin = ecocube("finalize", str(run_yaml))
    assert fin.returncode == 0, fin.stderr[-2000:]
    item = json.loads((tmp_path / "out/catalog/class/class-2020-01-01/class-2020-01-01.json").read_text())
    assert item["properties"]["ecocube:observed_fraction"] == 0.0
    item19 = json.loads((tmp_path / "out/catalog/class/class-2019-01-01/class-2019-01-01.json").read_text())
    expected = np.mean([read_status(store, t)["observed_fraction_by_year"]["2019"]
                        for t in ("X0000_Y0000", "X0001_Y0000")])
    assert item19["properties"]["ecocube:observed_fraction"] == pytest.approx(expected, abs=1e-6)


def test_status_does_not_call_done_a_tile_whose_output_was_deleted(scene, model_dir, tmp_path):  # noqa: F811
    data = cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir, tiles=("X0000_Y0000",))
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    assert ecocube("run", str(run_yaml), "--no-progress").returncode == 0
    gone = tmp_path / "out" / "flags/X0000_Y0000/red.tif"  # every period of the band
    gone.unlink()
    status = ecocube("status", str(run_yaml))
    assert "1 tiles: 0 done, 1 failed" in status.stdout
    assert f"recorded done, but 1 of {len(read_status(LocalStore(tmp_path / 'out'), 'X0000_Y0000')['outputs'])} " \
           "outputs are missing from the store" in status.stdout
    assert ecocube("status", str(run_yaml), "--failed").stdout.split() == ["X0000_Y0000"]
    rerun = ecocube("run", str(run_yaml), "--no-progress")  # the rerun redoes it (outputs verified)
    assert rerun.returncode == 0 and gone.exists()
