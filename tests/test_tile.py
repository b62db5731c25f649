"""process_tile / run_tiles end to end: real COG inputs, real read → gap-fill → features →
predict path, a local folder and a real S3 server (SeaweedFS), reruns, kills, signals."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from ecocube.config import config_from_dict
from ecocube.errors import Interrupted, ReadError, TileError
from ecocube.grid import TileGrid
from ecocube.status import read_status, verify_outputs
from ecocube.store import LocalStore, S3Store, sha256_file
from ecocube.tile import Stages, StopFlag, plan_outputs, process_tile, run_tiles, stop_on_signals

ORIGIN = (574680.0, 5622440.0)
TILE = 32
BANDS = ("blue", "red", "nir")
YEARS = (2019, 2020)
CLASSES = ((10, "crop", "#f2d16b"), (20, "forest", "#1a7f37"), (30, "water", "#1f5fbf"))
# reflectance per class, band and season (4 seasons)
SPECTRA = {
    10: {"blue": [0.06, 0.04, 0.04, 0.06], "red": [0.15, 0.05, 0.04, 0.14], "nir": [0.22, 0.45, 0.50, 0.24]},
    20: {"blue": [0.03, 0.03, 0.03, 0.03], "red": [0.04, 0.03, 0.03, 0.04], "nir": [0.30, 0.38, 0.38, 0.31]},
    30: {"blue": [0.08, 0.08, 0.08, 0.08], "red": [0.05, 0.05, 0.05, 0.05], "nir": [0.02, 0.02, 0.02, 0.02]},
}
# per year proba/class/uncertainty; per band one stacked file of composite/flags/count (8 periods each)
N_OUTPUTS_PER_TILE = len(YEARS) * 3 + len(BANDS) * 3
PERIODS = ["2019-01-01", "2019-04-01", "2019-07-01", "2019-10-01", "2020-01-01", "2020-04-01", "2020-07-01",
           "2020-10-01"]


def truth(height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return np.array([c for c, _, _ in CLASSES])[((rows // 8) + (cols // 8)) % 3]


def clean_cube(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(time, band, y, x) reflectance without gaps."""
    rng = np.random.default_rng(seed)
    lc = truth(height, width)
    cube = np.zeros((len(YEARS) * 4, len(BANDS), height, width), np.float32)
    for t in range(cube.shape[0]):
        for b, band in enumerate(BANDS):
            for code, spec in SPECTRA.items():
                cube[t, b][lc == code] = spec[band][t % 4]
    cube += rng.normal(0, 0.008, cube.shape).astype(np.float32)
    return np.clip(cube, 0.001, 1.0)


@pytest.fixture(scope="module")
def bundle():
    """A small real stacked ensemble trained on features of the clean cube."""
    from ecocube.bundle import ModelBundle
    from ecocube.ensemble import EnsembleClassifier
    from ecocube.features import feature_names, features_for_year

    cube = clean_cube(48, 48, seed=1)
    X = np.concatenate([features_for_year(cube, bands=BANDS, season_size=4, year_index=y, indices=("ndvi",))
                        for y in range(len(YEARS))])
    y = np.tile(truth(48, 48).ravel(), len(YEARS))
    pick = np.random.default_rng(0).choice(X.shape[0], 1200, replace=False)
    model = EnsembleClassifier(base_learners=("rf", "lgbm"), n_estimators=15, cv_folds=3, n_jobs=2,
                               random_state=0).fit(X[pick], y[pick])
    return ModelBundle(model=model, feature_names=feature_names(BANDS, 4, ("ndvi",)),
                       classes=[c for c, _, _ in CLASSES], class_names=[n for _, n, _ in CLASSES],
                       colors=[k for _, _, k in CLASSES], metadata={"test": True})


@pytest.fixture(scope="module")
def model_dir(bundle, tmp_path_factory):
    """The bundle saved by ecocube.bundle.save_bundle, as `ecocube train` would."""
    from ecocube.bundle import save_bundle

    return save_bundle(bundle, tmp_path_factory.mktemp("model") / "model")


@pytest.fixture
def scene(tmp_path, make_cog):
    """Quarterly composites (uint16 DN, nodata 0, ~25 % gaps) covering 2×1 tiles of 32 px."""
    h, w = TILE, 2 * TILE
    cube = clean_cube(h, w)
    dn = np.rint(cube / 0.0001).astype(np.uint16)
    gaps = np.random.default_rng(5).random((cube.shape[0], 1, h, w)) < 0.25
    dn[np.broadcast_to(gaps, dn.shape)] = 0
    transform = Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1])
    for t in range(cube.shape[0]):
        year, quarter = YEARS[t // 4], t % 4 + 1
        for b, band in enumerate(BANDS):
            make_cog(f"inputs/{year}/Q{quarter}/{band}.tif", dn[t, b], transform=transform, crs="EPSG:32631",
                     nodata=0, blocksize=128)
    return {"dn": dn, "inputs": tmp_path / "inputs", "root": tmp_path}


def make_cfg(root: Path, store: str, **kw):
    return config_from_dict(cfg_dict(root, store, **kw))


def cfg_dict(root: Path, store: str, *, tiles=("X0000_Y0000", "X0001_Y0000"), model: Path | None = None,
             **sections) -> dict:
    data = {
        "name": "tile-test",
        "grid": {"crs": "EPSG:32631", "origin": list(ORIGIN), "pixel_size": 10, "tile_size": TILE},
        "aoi": {"tiles": list(tiles)},
        "inputs": {
            "periods": {"start_year": YEARS[0], "end_year": YEARS[-1], "season_size": 4},
            "sources": [{"name": "s2", "href": str(root / "inputs" / "{year}" / "Q{quarter}" / "{band}.tif"),
                         "bands": list(BANDS), "scale": 0.0001, "nodata": 0, "resampling": "nearest"}],
            "threads": 2,
        },
        "features": {"indices": ["ndvi"], "statistics": []},
        "model": {"path": str(model or root / "model"),
                  "classes": [{"code": c, "name": n, "color": k} for c, n, k in CLASSES]},
        "processing": {"block_size": 16, "threads": 2},
        "output": {"store": store, "fsync": False},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return data


def tile_of(cfg, tile_id="X0000_Y0000"):
    return TileGrid.from_config(cfg.grid).tile(tile_id)


def read_tif(path_or_bytes):
    with rasterio.open(path_or_bytes) as src:
        return src.read(), src.profile, src.descriptions, src.scales, src.tags()


# --------------------------------------------------------------------------- real path, local store


@pytest.mark.slow
def test_process_tile_real_path_writes_every_output(scene, bundle, tmp_path):
    cfg = make_cfg(scene["root"], str(tmp_path / "out"))
    tile = tile_of(cfg, "X0001_Y0000")  # the east half of the inputs
    rec = process_tile(tile, cfg, bundle=bundle)
    store = LocalStore(tmp_path / "out")

    assert rec["state"] == "done" and rec["attempt"] == 1 and rec["tile"] == "X0001_Y0000"
    assert rec["blocks"] == 4 and rec["bands"] == list(BANDS) and rec["years"] == list(YEARS)
    assert len(rec["outputs"]) == N_OUTPUTS_PER_TILE
    assert sorted(store.list("")) == sorted([*rec["outputs"], "status/X0001_Y0000.json"])
    assert read_status(store, tile.id) == json.loads(json.dumps(rec))
    for key, meta in rec["outputs"].items():
        assert sha256_file(store.url(key)) == meta["sha256"]
    assert set(rec["timings"]) >= {"read", "gapfill", "features", "predict", "write", "publish"}
    assert set(rec["cpu_seconds"]) == set(rec["timings"]) and all(v >= 0 for v in rec["cpu_seconds"].values())
    assert rec["peak_rss_bytes"] > 50 * 2**20 and rec["bytes_written"] > 0

    # gap statistics match the planted gaps of this tile
    dn = scene["dn"][:, :, :, TILE:]
    gaps = rec["gaps"]
    assert gaps["values"] == dn.size
    assert gaps["observed"] == int((dn != 0).sum())
    assert gaps["reason_counts"] == {"valid": int((dn != 0).sum()), "nodata": int((dn == 0).sum())}
    assert gaps["observed"] + gaps["filled"] + gaps["unfilled"] == gaps["values"]

    # classes: nearly all pixels right, in the original codes, with declared nodata
    cls, prof, desc, _, tags = read_tif(store.url("class/X0001_Y0000/2019-01-01/class.tif"))
    assert prof["dtype"] == "uint16" and prof["nodata"] == 65535 and prof["tiled"] and prof["compress"] == "zstd"
    assert prof["transform"] == tile.transform and prof["crs"] == "EPSG:32631"
    assert json.loads(tags["classes"]) == {"10": "crop", "20": "forest", "30": "water"}
    predicted = cls[0] != 65535
    assert (cls[0][predicted] == truth(TILE, 2 * TILE)[:, TILE:][predicted]).mean() > 0.95
    n_pred = sum(int((read_tif(store.url(f"class/X0001_Y0000/{y}-01-01/class.tif"))[0] != 65535).sum())
                 for y in YEARS)
    assert rec["predicted_pixels"] == n_pred and rec["target_pixels"] == TILE * TILE * len(YEARS)
    assert rec["completeness"] == pytest.approx(n_pred / (TILE * TILE * len(YEARS))) and rec["completeness"] > 0.99

    proba, prof, desc, _, _ = read_tif(store.url("proba/X0001_Y0000/2020-01-01/proba.tif"))
    assert proba.shape == (3, TILE, TILE) and prof["dtype"] == "uint8" and prof["nodata"] == 255
    assert desc == ("crop", "forest", "water")
    ok = proba[0] != 255
    assert (np.abs(proba[:, ok].astype(int).sum(axis=0) - 100) <= 2).all()
    cls20 = read_tif(store.url("class/X0001_Y0000/2020-01-01/class.tif"))[0][0]
    p_ok = proba[:, ok]
    unique_max = p_ok.max(axis=0) > np.sort(p_ok, axis=0)[-2]  # rounding to % can tie
    np.testing.assert_array_equal(np.array([10, 20, 30])[p_ok.argmax(axis=0)][unique_max], cls20[ok][unique_max])
    unc, prof, desc, _, _ = read_tif(store.url("uncertainty/X0001_Y0000/2020-01-01/uncertainty.tif"))
    assert prof["dtype"] == "uint8" and unc[0][ok].max() <= 100

    # composites: one file per product and band, raster band t = period t (its description);
    # observed values are the input DN exactly; flags and counts agree
    for b, band in enumerate(BANDS):
        key = f"composite/X0001_Y0000/{band}.tif"
        comp, prof, desc, scales, ctags = read_tif(store.url(key))
        flags, fprof, fdesc, *_ = read_tif(store.url(f"flags/X0001_Y0000/{band}.tif"))
        count, cprof, *_ = read_tif(store.url(f"count/X0001_Y0000/{band}.tif"))
        assert prof["dtype"] == "int16" and prof["nodata"] == -32768 and scales == (0.0001,) * len(PERIODS)
        assert prof["count"] == fprof["count"] == cprof["count"] == len(PERIODS)
        assert desc == fdesc == tuple(PERIODS) and cprof["dtype"] == "uint16" and ctags["band"] == band
        assert rec["outputs"][key]["periods"] == PERIODS
        for t in range(len(PERIODS)):
            obs = dn[t, b] != 0
            np.testing.assert_array_equal(comp[t][obs], dn[t, b][obs].astype(np.int16))
            np.testing.assert_array_equal(flags[t] == 0, obs)
            np.testing.assert_array_equal(count[t], obs.astype(np.uint16))
            assert ((comp[t] == -32768) == (flags[t] == 255)).all()


@pytest.mark.slow
def test_outputs_do_not_depend_on_block_size(scene, bundle, tmp_path):
    # outputs staged on "node-local" scratch, then copied into the store
    small = make_cfg(scene["root"], str(tmp_path / "a"),
                     processing={"block_size": 16, "tmp_dir": str(tmp_path / "scratch")})
    whole = make_cfg(scene["root"], str(tmp_path / "b"), processing={"block_size": 32})
    ra = process_tile(tile_of(small), small, bundle=bundle)
    rb = process_tile(tile_of(whole), whole, bundle=bundle)
    assert ra["blocks"] == 4 and rb["blocks"] == 1
    assert set(ra["outputs"]) == set(rb["outputs"])
    for key in ["class/X0000_Y0000/2019-01-01/class.tif", "proba/X0000_Y0000/2020-01-01/proba.tif",
                "composite/X0000_Y0000/nir.tif", "flags/X0000_Y0000/red.tif", "count/X0000_Y0000/blue.tif"]:
        np.testing.assert_array_equal(read_tif(tmp_path / "a" / key)[0], read_tif(tmp_path / "b" / key)[0])
    assert ra["gaps"] == rb["gaps"] and ra["predicted_pixels"] == rb["predicted_pixels"]
    assert list((tmp_path / "scratch").iterdir()) == []  # scratch cleaned
    assert not (tmp_path / "a" / ".ecocube-tmp").exists() or not any((tmp_path / "a" / ".ecocube-tmp").iterdir())


READ_AHEAD = pytest.mark.parametrize("read_ahead", [False, True], ids=["block-by-block", "read-ahead"])


@pytest.mark.slow
@READ_AHEAD
def test_read_ahead_gives_the_outputs_of_block_by_block_reads_and_its_errors_fail_the_tile(
        scene, bundle, tmp_path, monkeypatch, read_ahead):
    """With processing.read_ahead the next block's files are read (fetch_block, on a thread of its own)
    while the current one is computed, and without it block by block: either way every output is
    byte-identical to reads through a swapped read stage (which is never read ahead), and a failed
    read of a later block fails the tile naming the file and the tile, nothing published."""
    import threading

    import ecocube.read

    real_fetch, real_read_files, fetched = ecocube.read.fetch_block, ecocube.read._read_files, []

    def counting_fetch(cfg_, tile, window, **kw):
        fetched.append((int(window.col_off), int(window.row_off)))
        return real_fetch(cfg_, tile, window, **kw)

    monkeypatch.setattr(ecocube.read, "fetch_block", counting_fetch)
    ahead_cfg = make_cfg(scene["root"], str(tmp_path / "a"), processing={"block_size": 16, "read_ahead": read_ahead})
    plain_cfg = make_cfg(scene["root"], str(tmp_path / "b"), processing={"block_size": 16, "read_ahead": read_ahead})
    ahead = process_tile(tile_of(ahead_cfg), ahead_cfg, bundle=bundle)
    # on: blocks 2..4 read ahead, block 1 read in turn; off: none
    assert fetched == ([(16, 0), (0, 16), (16, 16)] if read_ahead else [])
    n_fetched, reads = len(fetched), []
    plain = process_tile(tile_of(plain_cfg), plain_cfg, bundle=bundle, stages=_fake_stages(
        read_block=lambda *a, **k: reads.append(1) or Stages().read_block(*a, **k)))
    assert len(reads) == 4 and len(fetched) == n_fetched  # a swapped read stage: block by block, no read-ahead
    assert ahead["blocks"] == plain["blocks"] == 4 and set(ahead["outputs"]) == set(plain["outputs"])
    assert {k.split("/")[0] for k in ahead["outputs"]} >= {"class", "proba", "composite", "flags", "count"}
    assert {k: o["sha256"] for k, o in ahead["outputs"].items()} == {k: o["sha256"] for k, o in plain["outputs"].items()}
    assert ahead["gaps"] == plain["gaps"] and ahead["bytes_read"] == plain["bytes_read"] > 0

    failed_on = []

    def failing_read_files(cfg_, tile, window, *a, **kw):  # under fetch_block and read_block alike
        if int(window.row_off) == 16:
            failed_on.append(threading.current_thread().name)
            raise ReadError(f"cannot read {scene['inputs']}/2020/Q3/red.tif for tile {tile.id}: simulated",
                            url="red.tif", tile=tile.id)
        return real_read_files(cfg_, tile, window, *a, **kw)

    monkeypatch.setattr(ecocube.read, "_read_files", failing_read_files)
    bad_cfg = make_cfg(scene["root"], str(tmp_path / "c"), processing={"block_size": 16, "read_ahead": read_ahead})
    with pytest.raises(TileError, match=r"^tile X0000_Y0000 failed: ReadError: cannot read .*2020/Q3/red.tif "
                                        r"for tile X0000_Y0000: simulated$"):
        process_tile(tile_of(bad_cfg), bad_cfg, bundle=bundle)
    assert len(failed_on) == 1 and failed_on[0].startswith("ecocube-readahead") == read_ahead, failed_on
    store = LocalStore(tmp_path / "c")
    rec = read_status(store, "X0000_Y0000")
    assert rec["state"] == "failed" and rec["error_type"] == "ReadError" and rec["outputs"] == {}
    assert store.list("") == ["status/X0000_Y0000.json"]
    assert list((tmp_path / "c" / ".ecocube-tmp").iterdir()) == []  # work folder removed


@pytest.mark.slow
def test_rerun_skips_verified_tiles_and_redoes_changed_ones(scene, bundle, tmp_path):
    cfg = make_cfg(scene["root"], str(tmp_path / "out"), output={"layers": ["class", "composite"]})
    tile = tile_of(cfg)
    first = process_tile(tile, cfg, bundle=bundle)
    assert len(first["outputs"]) == 2 + 3  # class per year; composite: one stacked file per band
    key = "class/X0000_Y0000/2019-01-01/class.tif"
    mtime = os.stat(tmp_path / "out" / key).st_mtime_ns

    calls = []
    counting = Stages(read_block=lambda *a, **k: calls.append(1) or Stages().read_block(*a, **k))
    again = process_tile(tile, cfg, bundle=bundle, stages=counting)
    assert again["skipped"] is True and again["attempt"] == 1 and calls == []
    assert os.stat(tmp_path / "out" / key).st_mtime_ns == mtime

    # a damaged output makes the record untrustworthy: the tile is redone
    (tmp_path / "out" / key).write_bytes(b"garbage")
    redo = process_tile(tile, cfg, bundle=bundle, stages=counting)
    assert redo["state"] == "done" and redo["attempt"] == 2 and "skipped" not in redo and len(calls) == 4
    assert verify_outputs(LocalStore(tmp_path / "out"), redo) == []

    forced = process_tile(tile, cfg, bundle=bundle, overwrite=True)
    assert forced["attempt"] == 3
    assert forced["outputs"] == redo["outputs"]  # deterministic outputs, same checksums


@pytest.mark.slow
@READ_AHEAD
def test_missing_input_fails_the_tile_with_a_clear_record(scene, bundle, tmp_path, read_ahead):
    missing = scene["inputs"] / "2020" / "Q3" / "red.tif"
    missing.unlink()
    cfg = make_cfg(scene["root"], str(tmp_path / "out"), processing={"read_ahead": read_ahead})
    with pytest.raises(TileError, match=r"tile X0000_Y0000 failed: InputMissingError.*2020/Q3/red.tif") as info:
        process_tile(tile_of(cfg), cfg, bundle=bundle)
    assert info.value.tile == "X0000_Y0000"
    store = LocalStore(tmp_path / "out")
    rec = read_status(store, "X0000_Y0000")
    assert rec["state"] == "failed" and rec["error_type"] == "InputMissingError"
    assert "2020/Q3/red.tif" in rec["error"] and rec["outputs"] == {}
    assert store.list("") == ["status/X0000_Y0000.json"]  # nothing else published
    assert list((tmp_path / "out" / ".ecocube-tmp").iterdir()) == []  # work folder removed

    # the 'record' policy: the tile is done, the missing file is recorded, its values are gaps
    rec_cfg = make_cfg(scene["root"], str(tmp_path / "out2"), inputs={"on_missing": "record"},
                       processing={"read_ahead": read_ahead})
    rec2 = process_tile(tile_of(rec_cfg), rec_cfg, bundle=bundle)
    assert rec2["state"] == "done" and rec2["missing_inputs"] == [str(missing)]
    assert rec2["gaps"]["reason_counts"]["missing"] == TILE * TILE


def test_process_tile_on_s3_then_rerun_skips(scene, bundle, seaweed, s3_bucket):
    cfg = make_cfg(scene["root"], f"s3://{s3_bucket}/run1",
                   output={"s3": {"endpoint_url": seaweed.endpoint_url, "region": "us-east-1"}})
    tile = tile_of(cfg)
    rec = process_tile(tile, cfg, bundle=bundle)
    assert rec["state"] == "done"
    client = seaweed.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, MaxKeys=1000)["Contents"])
    assert keys == sorted(f"run1/{k}" for k in [*rec["outputs"], "status/X0000_Y0000.json"])
    head = client.head_object(Bucket=s3_bucket, Key="run1/class/X0000_Y0000/2019-01-01/class.tif")
    assert head["Metadata"]["sha256"] == rec["outputs"]["class/X0000_Y0000/2019-01-01/class.tif"]["sha256"]
    store = S3Store(s3_bucket, "run1", endpoint_url=seaweed.endpoint_url, region="us-east-1")
    # GDAL reads the published tile straight from S3
    with store.rasterio_env():
        cls = read_tif(store.gdal_path("class/X0000_Y0000/2019-01-01/class.tif"))[0][0]
    assert (cls == truth(TILE, TILE)).mean() > 0.95
    again = process_tile(tile, cfg, bundle=bundle)
    assert again.get("skipped") is True


# --------------------------------------------------------------------------- failures and signals


def _fake_stages(**over):
    return dataclasses.replace(Stages(), **over)


def test_stage_failure_writes_failed_record_and_names_the_tile(scene, bundle, tmp_path):
    cfg = make_cfg(scene["root"], str(tmp_path / "out"))
    calls = []

    def broken_predict(bundle, X, *, threads=None):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("simulated out of memory")
        return Stages().predict_block(bundle, X, threads=threads)

    with pytest.raises(TileError, match="tile X0000_Y0000 failed: MemoryError: simulated out of memory") as info:
        process_tile(tile_of(cfg), cfg, bundle=bundle, stages=_fake_stages(predict_block=broken_predict))
    assert isinstance(info.value.__cause__, MemoryError)
    store = LocalStore(tmp_path / "out")
    rec = read_status(store, "X0000_Y0000")
    assert rec["state"] == "failed" and rec["error"] == "MemoryError: simulated out of memory"
    assert store.list("") == ["status/X0000_Y0000.json"]


@pytest.mark.slow
def test_sigterm_stops_after_the_current_block_and_publishes_nothing(scene, bundle, tmp_path):
    cfg = make_cfg(scene["root"], str(tmp_path / "out"))
    blocks = []

    def read_then_signal(cfg_, tile, window, *, threads=None):
        blocks.append(window)
        if len(blocks) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what Slurm sends before the time limit
        return Stages().read_block(cfg_, tile, window, threads=threads)

    with stop_on_signals() as flag, pytest.raises(Interrupted, match="SIGTERM after 2 of 4 blocks"):
        process_tile(tile_of(cfg), cfg, bundle=bundle, stages=_fake_stages(read_block=read_then_signal), stop=flag)
    assert len(blocks) == 2  # the second block was finished, the third never started
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    store = LocalStore(tmp_path / "out")
    rec = read_status(store, "X0000_Y0000")
    assert rec["state"] == "interrupted" and "SIGTERM" in rec["error"] and rec["outputs"] == {}
    assert store.list("") == ["status/X0000_Y0000.json"]
    # the next run completes the tile (attempt 2)
    rec2 = process_tile(tile_of(cfg), cfg, bundle=bundle)
    assert rec2["state"] == "done" and rec2["attempt"] == 2


@pytest.mark.slow
def test_running_record_heartbeat_is_refreshed_between_blocks(scene, tmp_path, monkeypatch):
    import ecocube.tile

    cfg = make_cfg(scene["root"], str(tmp_path / "out"), output={"layers": ["composite"]})
    store = LocalStore(tmp_path / "out")
    seen = []

    def read_and_look(cfg_, tile, window, *, threads=None):
        seen.append(read_status(store, tile.id))
        return Stages().read_block(cfg_, tile, window, threads=threads)

    monkeypatch.setattr(ecocube.tile, "HEARTBEAT_SECONDS", 0.0)  # every block (default: at most once a minute)
    rec = process_tile(tile_of(cfg), cfg, stages=_fake_stages(read_block=read_and_look))
    assert [r["state"] for r in seen] == ["running"] * 4
    assert seen[0]["heartbeat"] == seen[0]["started"] and "blocks_done" not in seen[0]
    assert [r.get("blocks_done") for r in seen[1:]] == [1, 2, 3]
    assert all(r["heartbeat"] >= r["started"] for r in seen)
    assert rec["state"] == "done" and rec["blocks_done"] == 4

    monkeypatch.setattr(ecocube.tile, "HEARTBEAT_SECONDS", 3600.0)
    seen.clear()
    process_tile(tile_of(cfg), cfg, stages=_fake_stages(read_block=read_and_look), overwrite=True)
    assert [r.get("blocks_done") for r in seen] == [None] * 4  # throttled: no rewrite between blocks


@pytest.mark.slow
def test_run_tiles_runs_all_tiles_and_reports_failures(scene, bundle, tmp_path, monkeypatch):
    cfg = make_cfg(scene["root"], str(tmp_path / "out"), output={"layers": ["composite", "flags", "count"]})
    tiles = TileGrid.from_config(cfg.grid).tiles_for_aoi(cfg.aoi)
    records = run_tiles(cfg, tiles, workers=1, progress=False)
    assert [r["state"] for r in records] == ["done", "done"]
    assert records[0]["completeness"] == 1.0  # no prediction layer: nothing to predict
    again = run_tiles(cfg, tiles, workers=2, progress=False)
    assert [r.get("skipped") for r in again] == [True, True]

    # one tile failing does not stop the other
    (scene["inputs"] / "2019" / "Q1" / "nir.tif").unlink()
    redo = run_tiles(cfg, tiles, workers=2, overwrite=True, progress=False)
    assert [r["state"] for r in redo] == ["failed", "failed"]
    assert all("InputMissingError" in r["error"] for r in redo)


def test_stop_flag_before_start_interrupts_run_tiles(scene, tmp_path):
    cfg = make_cfg(scene["root"], str(tmp_path / "out"), output={"layers": ["count"]})
    tiles = TileGrid.from_config(cfg.grid).tiles_for_aoi(cfg.aoi)
    flag = StopFlag()
    flag.set()
    with pytest.raises(Interrupted, match="2 of 2 tiles not finished"):
        run_tiles(cfg, tiles, progress=False, stop=flag)


def test_plan_outputs_keys_follow_the_convention():
    from ecocube.sources import Period
    from datetime import date

    periods = [Period("2019-01-01", date(2019, 1, 1), date(2019, 7, 1), 2019, 1, 0),
               Period("2019-07-01", date(2019, 7, 1), date(2020, 1, 1), 2019, 2, 1)]
    specs = plan_outputs(("proba", "class", "uncertainty", "composite", "flags", "count"), periods=periods,
                         bands=("red",), years=[2019], classes=[1, 2], class_names=["a", "b"])
    assert [s.key("X0001_Y0002") for s in specs] == [
        "proba/X0001_Y0002/2019-01-01/proba.tif",
        "class/X0001_Y0002/2019-01-01/class.tif",
        "uncertainty/X0001_Y0002/2019-01-01/uncertainty.tif",
        "composite/X0001_Y0002/red.tif",
        "flags/X0001_Y0002/red.tif",
        "count/X0001_Y0002/red.tif",
    ]
    assert specs[0].count == 2 and specs[0].descriptions == ("a", "b") and specs[0].nodata == 255
    assert specs[0].record_entry() == {}
    for s in specs[3:]:  # stacked: one raster band per period, named by it; the record lists them
        assert s.count == 2 and s.descriptions == ("2019-01-01", "2019-07-01")
        assert s.record_entry() == {"periods": ["2019-01-01", "2019-07-01"]}


# --------------------------------------------------------------------------- CLI


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str) -> tuple[int, str, str]:
    """Run ``ecocube ARGS`` in a subprocess (the real console entry point)."""
    proc = subprocess.run([sys.executable, "-m", "ecocube", *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


CUBE_LAYERS = {"layers": ["composite", "flags", "count"]}


@pytest.mark.slow
def test_cli_run_tile_run_status_and_run_task(scene, model_dir, tmp_path, monkeypatch, capsys):
    from ecocube.cli import main

    run_yaml = write_yaml(tmp_path / "run.yaml", cfg_dict(scene["root"], str(tmp_path / "out"), model=model_dir))

    def ecocube(*args) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as info:
            main(list(args))
        out = capsys.readouterr()
        return info.value.code, out.out, out.err

    code, out, err = ecocube("status", str(run_yaml))
    assert code == 0 and "2 tiles: 0 done, 0 failed, 0 interrupted, 0 running, 0 stale, 2 pending; completeness 0.0 %" in out

    code, out, err = ecocube("run-tile", str(run_yaml), "--tile", "X0000_Y0000")
    assert code == 0 and out.startswith("X0000_Y0000: done in ") and f"{N_OUTPUTS_PER_TILE} outputs" in out
    assert "completeness 100.0 %" in out or "completeness 99." in out
    code, out, err = ecocube("run-tile", str(run_yaml), "--tile", "X0000_Y0000", "--json")
    assert code == 0 and json.loads(out)["skipped"] is True

    code, out, err = ecocube("run-tile", str(run_yaml), "--tile", "X0005_Y0005")
    assert code == 2 and "tiles not in the run's area of interest: X0005_Y0005" in err

    # run-task: task 1 of 2 tiles at one tile per task is the second tile
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    code, out, err = ecocube("run-task", str(run_yaml), "--config", "slurm.tiles_per_task=1")
    assert code == 0 and "task 1: tiles X0001_Y0000" in err and out.startswith("X0001_Y0000: done")
    code, out, err = ecocube("run-task", str(run_yaml), "--task-id", "2", "--config", "slurm.tiles_per_task=1")
    assert code == 2 and "task id 2 out of range" in err
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    code, out, err = ecocube("run-task", str(run_yaml))
    assert code == 2 and "SLURM_ARRAY_TASK_ID" in err
    # a submission's tile list (line i = tiles of task i), as `ecocube slurm submit` writes it
    LocalStore(tmp_path / "out").put_bytes(b"X0001_Y0000\nX0000_Y0000 X0001_Y0000\n", "slurm/s1/tiles.txt")
    code, out, err = ecocube("run-task", str(run_yaml), "--task-id", "1", "--tiles-file", "slurm/s1/tiles.txt")
    assert code == 0 and "task 1: tiles X0000_Y0000 X0001_Y0000" in err
    assert out.splitlines() == ["X0000_Y0000: already done (attempt 1), outputs verified; skipped",
                                "X0001_Y0000: already done (attempt 1), outputs verified; skipped",
                                "2 tiles: 2 done (2 skipped as already done), 0 failed"]

    code, out, err = ecocube("run", str(run_yaml), "--no-progress")
    assert code == 0 and "2 tiles: 2 done (2 skipped as already done), 0 failed" in out

    code, out, err = ecocube("status", str(run_yaml), "--json")
    summary = json.loads(out)
    assert summary["counts"]["done"] == 2 and summary["overall_completeness"] == 1.0
    assert summary["tiles"]["X0001_Y0000"]["state"] == "done"

    # a failing tile: run exits non-zero naming it; status lists it
    (scene["inputs"] / "2020" / "Q2" / "blue.tif").unlink()
    code, out, err = ecocube("run", str(run_yaml), "--no-progress", "--overwrite", "--workers", "2")
    assert code == 1 and "2 of 2 tiles failed: X0000_Y0000 X0001_Y0000" in err
    assert "InputMissingError" in err and "2020/Q2/blue.tif" in err
    code, out, err = ecocube("status", str(run_yaml))
    assert "2 tiles: 0 done, 2 failed" in out and "failed: X0000_Y0000 X0001_Y0000" in out
    assert out.splitlines()[1].split()[:3] == ["X0000_Y0000", "failed", "2"]
    code, out, err = ecocube("status", str(run_yaml), "--failed")
    assert out.split() == ["X0000_Y0000", "X0001_Y0000"]


def test_cli_sigterm_exits_nonzero_and_records_interrupted(scene, tmp_path, monkeypatch, capsys):
    import ecocube.read
    from ecocube.cli import main

    run_yaml = write_yaml(tmp_path / "run.yaml", cfg_dict(scene["root"], str(tmp_path / "out"), output=CUBE_LAYERS))
    real = ecocube.read.read_block
    calls = []

    def read_block(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(ecocube.read, "read_block", read_block)
    with pytest.raises(SystemExit) as info:
        main(["run-tile", str(run_yaml), "--tile", "X0001_Y0000"])
    err = capsys.readouterr().err
    assert info.value.code == 143 and "stopped by SIGTERM after 1 of 4 blocks; nothing was published" in err
    store = LocalStore(tmp_path / "out")
    assert read_status(store, "X0001_Y0000")["state"] == "interrupted"
    # the record and the store's campaign marker (written before the tile started), nothing else
    assert store.list("") == ["status/X0001_Y0000.json", "status/campaign.json"]


def test_sigkill_mid_publish_then_rerun_leaves_a_clean_store(scene, model_dir, tmp_path, seaweed, s3_bucket):
    """``ecocube run-tile`` killed while uploading; the rerun completes with exactly the right objects."""
    data = cfg_dict(scene["root"], f"s3://{s3_bucket}/run", model=model_dir, output={
        "s3": {"endpoint_url": seaweed.endpoint_url, "region": "us-east-1"}},
        processing={"publish_threads": 1})
    run_yaml = write_yaml(tmp_path / "run.yaml", data)
    client = seaweed.client()

    def keys() -> list[str]:
        resp = client.list_objects_v2(Bucket=s3_bucket, Prefix="run/")
        return sorted(o["Key"][len("run/"):] for o in resp.get("Contents", ()))

    proc = subprocess.Popen([sys.executable, "-m", "ecocube", "-q", "run-tile", str(run_yaml), "--tile",
                             "X0000_Y0000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    seen: list[str] = []
    while time.monotonic() < deadline and proc.poll() is None:
        seen = [k for k in keys() if not k.startswith("status/")]
        if seen:
            proc.kill()  # SIGKILL: no handler, no cleanup
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    after_kill = keys()
    assert 0 < len([k for k in after_kill if not k.startswith("status/")]) < N_OUTPUTS_PER_TILE  # mid-publish
    store = S3Store(s3_bucket, "run", endpoint_url=seaweed.endpoint_url, region="us-east-1")
    assert read_status(store, "X0000_Y0000")["state"] == "running"  # never claimed done

    code, out, err = cli("run-tile", str(run_yaml), "--tile", "X0000_Y0000")
    assert code == 0, err
    rec = read_status(store, "X0000_Y0000")
    assert rec["state"] == "done" and rec["attempt"] == 2 and len(rec["outputs"]) == N_OUTPUTS_PER_TILE
    # no duplicates, no strays: the outputs, the record and the store's campaign marker
    assert keys() == sorted([*rec["outputs"], "status/X0000_Y0000.json", "status/campaign.json"])
    assert store.incomplete_uploads("") == []
    for key, meta in rec["outputs"].items():
        body = client.get_object(Bucket=s3_bucket, Key=f"run/{key}")["Body"].read()
        import hashlib

        assert hashlib.sha256(body).hexdigest() == meta["sha256"] and len(body) == meta["size"]
        with rasterio.MemoryFile(body) as mem, mem.open() as src:
            assert src.read().shape[1:] == (TILE, TILE)  # every object is a complete GeoTIFF
    code, out, err = cli("run-tile", str(run_yaml), "--tile", "X0000_Y0000")
    assert code == 0 and "already done" in out


def test_model_missing_or_mismatched_fails_clearly(scene, model_dir, tmp_path):
    cfg = make_cfg(scene["root"], str(tmp_path / "out"), model=tmp_path / "no-model")
    with pytest.raises(TileError, match="ModelError: model bundle not found: .*no-model"):
        process_tile(tile_of(cfg), cfg)
    # the bundle was trained with NDVI features; a run without indices must not use it
    cfg2 = make_cfg(scene["root"], str(tmp_path / "out2"), model=model_dir, features={"indices": []})
    with pytest.raises(TileError, match="ModelError") as info:
        process_tile(tile_of(cfg2), cfg2)
    rec = read_status(LocalStore(tmp_path / "out2"), "X0000_Y0000")
    assert rec["state"] == "failed" and rec["error_type"] == "ModelError"
    assert LocalStore(tmp_path / "out2").list("") == ["status/X0000_Y0000.json"]


@pytest.mark.slow
def test_the_model_loads_beside_the_first_block_and_again_when_its_bands_differ(scene, model_dir, tmp_path):
    """The model loads on a thread of its own while the first block is read and gap-filled,
    once, for the features of the configured bands; a first block with other bands (here the
    same in another order) loads it again for those, and the mismatch fails the tile."""
    import threading

    from ecocube.features import feature_names

    loads = []

    def recording_load(path, *, expected_features=None, engine="auto"):
        loads.append((threading.current_thread().name, list(expected_features)))
        return Stages().load_bundle(path, expected_features=expected_features, engine=engine)

    cfg = make_cfg(scene["root"], str(tmp_path / "out"), model=model_dir)
    rec = process_tile(tile_of(cfg), cfg, stages=_fake_stages(load_bundle=recording_load))
    assert rec["state"] == "done" and rec["predicted_pixels"] > 0
    assert [name.startswith("ecocube-model") for name, _ in loads] == [True]
    assert loads[0][1] == feature_names(BANDS, 4, ("ndvi",))

    loads.clear()

    def reordered_read(*a, **k):
        res = Stages().read_block(*a, **k)
        order = [2, 1, 0]
        return dataclasses.replace(res, data=np.ascontiguousarray(res.data[:, order]),
                                   bands=[res.bands[i] for i in order], reason=res.reason[:, order],
                                   count=res.count[:, order])

    cfg2 = make_cfg(scene["root"], str(tmp_path / "out2"), model=model_dir)
    with pytest.raises(TileError, match="ModelError: model bundle .*the features are the same but in another order"):
        process_tile(tile_of(cfg2), cfg2, stages=_fake_stages(load_bundle=recording_load, read_block=reordered_read))
    assert [name.startswith("ecocube-model") for name, _ in loads] == [True, False]  # preloaded, then again
    assert loads[1][1] == feature_names(tuple(reversed(BANDS)), 4, ("ndvi",))
    assert LocalStore(tmp_path / "out2").list("") == ["status/X0000_Y0000.json"]


def test_tile_writer_writes_every_output_block_by_block_and_stacks_the_periods(tmp_path):
    """Every output is open from the start and written window by window (edge blocks
    partial); after close each file holds exactly the data written, a stacked cube file one
    raster band per period, named by it, with the product's nodata, scale and tags."""
    from types import SimpleNamespace

    from rasterio.windows import Window

    from ecocube.tile import TileWriter

    h, w, block = 40, 56, 16  # edge blocks are partial
    tile = SimpleNamespace(id="X0001_Y0002", width=w, height=h, crs="EPSG:32632",
                           transform=Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1]))
    periods = [SimpleNamespace(id=f"2020-{m:02d}-01") for m in (1, 4)]
    specs = plan_outputs(("proba", "class", "composite", "flags", "count"), periods=periods, bands=BANDS,
                         years=[2020], classes=[10, 20, 30], class_names=["crop", "forest", "water"])
    rng = np.random.default_rng(3)
    data = {}
    for s in specs:
        info = np.iinfo(s.dtype)
        data[s.key(tile.id)] = rng.integers(info.min, info.max, (s.count, h, w), endpoint=True).astype(s.dtype)
    windows = [Window(c, r, min(block, w - c), min(block, h - r)) for r in range(0, h, block) for c in range(0, w, block)]
    folder = tmp_path / "out"
    writer = TileWriter(folder, tile, specs, block_size=block, threads=2)
    assert len(writer._datasets) == len(specs) == 2 + 3 * len(BANDS)  # proba + class; 3 stacked files a band
    for win in windows:
        sl = (slice(None), slice(win.row_off, win.row_off + win.height), slice(win.col_off, win.col_off + win.width))
        writer.write([(k, a[sl] if a.shape[0] > 1 else a[sl][0]) for k, a in data.items()], win)
    writer.close()
    paths = writer.paths
    assert sorted(paths) == sorted(data)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(data)
    for key, path in paths.items():
        with rasterio.open(path) as src:
            assert src.profile["compress"] == "zstd" and src.block_shapes == [(16, 16)] * src.count
            np.testing.assert_array_equal(src.read(), data[key])
            if key.startswith(("composite/", "flags/", "count/")):
                assert src.count == 2 and src.descriptions == ("2020-01-01", "2020-04-01")
                assert src.tags()["periods"] == "2020-01-01,2020-04-01" and src.tags()["band"] == key.rsplit("/", 1)[1][:-4]
            if key.startswith("composite/"):
                assert src.nodata == -32768 and src.scales == (0.0001, 0.0001)
    with rasterio.open(paths["proba/X0001_Y0002/2020-01-01/proba.tif"]) as src:
        assert src.descriptions == ("crop", "forest", "water") and src.tags()["period"] == "2020-01-01"


def test_tile_writer_abort_leaves_no_outputs(tmp_path):
    from types import SimpleNamespace

    from rasterio.windows import Window

    from ecocube.tile import TileWriter

    tile = SimpleNamespace(id="X0000_Y0000", width=32, height=32, crs="EPSG:32632",
                           transform=Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1]))
    specs = plan_outputs(("composite", "flags"), periods=[SimpleNamespace(id="2020-01-01")], bands=BANDS, years=[])
    writer = TileWriter(tmp_path, tile, specs, block_size=16, threads=2)
    writer.write([(s.key(tile.id), np.ones((16, 16), s.dtype)) for s in specs], Window(0, 0, 16, 16))
    assert len([p for p in tmp_path.rglob("*.tif")]) == 2 * len(BANDS)
    writer.abort()
    assert writer.paths == {} and [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("compress,expect", [(None, "ZSTD"), ("deflate", "DEFLATE"), ("lzw", "LZW")])
def test_tile_writer_compression_is_zstd_unless_configured(tmp_path, compress, expect):
    from types import SimpleNamespace

    import rasterio
    from rasterio.windows import Window

    from ecocube.tile import TileWriter

    tile = SimpleNamespace(id="X0000_Y0000", width=32, height=32, crs="EPSG:32632",
                           transform=Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1]))
    specs = plan_outputs(("class", "composite"), periods=[SimpleNamespace(id="2020-01-01")], bands=BANDS[:1],
                         years=[2020], classes=[1, 2], class_names=["a", "b"])
    writer = TileWriter(tmp_path, tile, specs, block_size=32, threads=2, compress=compress)
    data = {s.key(tile.id): np.arange(32 * 32, dtype=s.dtype).reshape(32, 32) for s in specs}
    writer.write(list(data.items()), Window(0, 0, 32, 32))
    writer.close()
    assert sorted(writer.paths) == sorted(data)  # one per-year (class), one stacked (composite)
    for key, path in writer.paths.items():
        with rasterio.open(path) as src:
            assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == expect
            # horizontal differencing for continuous values only: class codes are written without
            predictor = "2" if key.startswith("composite/") else None
            assert src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == predictor
            np.testing.assert_array_equal(src.read(1), data[key])


@pytest.mark.slow
def test_cube_layers_are_written_beside_prediction_and_a_write_error_fails_the_tile(scene, bundle, tmp_path,
                                                                                    monkeypatch):
    import errno
    import threading

    from ecocube.tile import TileWriter

    cfg = make_cfg(scene["root"], str(tmp_path / "out"), processing={"block_size": 16,
                                                                      "tmp_dir": str(tmp_path / "scratch")})
    cube_in, predicted_in = set(), set()
    real_write, real_predict = TileWriter.write, Stages().predict_block
    cube = ("composite/", "flags/", "count/")

    def write(self, items, window):
        if any(k.startswith(cube) for k, _ in items):
            cube_in.add(threading.current_thread().name.split("_")[0])
        return real_write(self, items, window)

    def predict(bundle_, X, *, threads=None):
        predicted_in.add(threading.current_thread().name)
        return real_predict(bundle_, X, threads=threads)

    monkeypatch.setattr(TileWriter, "write", write)
    rec = process_tile(tile_of(cfg), cfg, bundle=bundle, stages=_fake_stages(predict_block=predict))
    assert rec["state"] == "done" and len(rec["outputs"]) == N_OUTPUTS_PER_TILE
    assert cube_in == {"ecocube-stage"} and predicted_in == {"MainThread"}

    calls = []

    def full_disk(self, items, window):
        if any(k.startswith(cube) for k, _ in items):
            calls.append(window)
            if len(calls) == 5:  # in the second block (one call per band a block)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, items, window)

    monkeypatch.setattr(TileWriter, "write", full_disk)
    with pytest.raises(TileError, match="tile X0000_Y0000 failed: OSError: .*No space left on device"):
        process_tile(tile_of(cfg), cfg, bundle=bundle, overwrite=True)
    store = LocalStore(tmp_path / "out")
    assert read_status(store, "X0000_Y0000")["state"] == "failed"
    assert sorted(k for k in store.list("") if not k.startswith("status/")) == sorted(rec["outputs"])  # attempt 1's
    assert [p for p in (tmp_path / "scratch").rglob("*") if p.is_file()] == []  # no partial file left

@pytest.mark.parametrize("threads", [1, 2])
def test_native_thread_pools_are_limited_to_the_tile_threads_in_every_stage(scene, bundle, tmp_path, threads):
    """One thread budget: the BLAS/OpenMP pools seen inside read, gap-fill and prediction
    are the tile's ``threads``, not the machine's cores."""
    from threadpoolctl import threadpool_info, threadpool_limits

    cfg = make_cfg(scene["root"], str(tmp_path / "out"), processing={"block_size": 32})
    seen: dict[str, set] = {"read": set(), "gapfill": set(), "predict": set()}

    def pools(stage):
        seen[stage].update((i["user_api"], i["num_threads"]) for i in threadpool_info())

    def read(*a, **k):
        pools("read")
        return Stages().read_block(*a, **k)

    def fill(*a, **k):
        pools("gapfill")
        return Stages().fill_gaps(*a, **k)

    def predict(bundle_, X, *, threads=None):
        pools("predict")
        return Stages().predict_block(bundle_, X, threads=threads)

    stages = _fake_stages(read_block=read, fill_gaps=fill, predict_block=predict)
    with threadpool_limits(limits=5):  # pools larger than the tile's budget (as on a many-core node)
        before = sorted((i["user_api"], i["num_threads"]) for i in threadpool_info())
        assert {n for _, n in before} == {5}
        rec = process_tile(tile_of(cfg), cfg, bundle=bundle, stages=stages, threads=threads)
        after = sorted((i["user_api"], i["num_threads"]) for i in threadpool_info())
    assert rec["state"] == "done"
    for stage, found in seen.items():
        assert found, stage
        assert {n for _, n in found} == {threads}, (stage, found)
    assert {api for api, _ in seen["predict"]} >= {"openmp"}  # LightGBM's OpenMP is among them
    assert after == before  # restored after the tile
