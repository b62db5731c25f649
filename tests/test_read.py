"""Reads of the real Sentinel-2 series into an EPSG:3035 tile grid: file, nginx, SeaweedFS S3,
fault injection with the in-process Range server, and the ``ecocube read`` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from ecocube.config import config_from_dict
from ecocube.errors import InputMissingError, ReadError
from ecocube.grid import TileGrid
from ecocube.read import fetch_block, gdal_path, nan_percentile, read_block
from ecocube.sources import REASON_MASKED, REASON_MISSING, REASON_NODATA, REASON_VALID
from rangeserver import RangeServer

BANDS = ("B02", "B03", "B04", "B08")
INVALID_SCL = (3, 8, 9, 10)
# a cloudy mix: Q2 and Q3 2019 (Q1 and Q4 have no acquisition in this list)
DATES = ("2019-04-26", "2019-05-01", "2019-06-15", "2019-07-10", "2019-08-14", "2019-08-19", "2019-09-13")
# 48x48 px at 10 m in EPSG:3035; its upper-left corner pokes out of the UTM patch (footprint edge)
GRID = {"crs": "EPSG:3035", "origin": [3902140.0, 3087810.0], "pixel_size": 10.0, "tile_size": 48}
TILE = "X0000_Y0000"


def _cfg(href_10m: str, href_scl: str, *, dates=DATES, resampling="nearest", s3=None, **inputs):
    inputs.setdefault("retries", 2)
    inputs.setdefault("backoff_seconds", 0.01)
    src = {
        "name": "s2", "kind": "acquisitions", "href": href_10m, "bands": list(BANDS),
        "band_indexes": {b: i for i, b in enumerate(BANDS, start=1)}, "dates": list(dates),
        "scale": 0.0001, "nodata": 0, "resampling": resampling,
        "mask": {"href": href_scl, "kind": "classes", "values": list(INVALID_SCL)},
    }
    data = {
        "grid": GRID, "aoi": {"tiles": [TILE]},
        "inputs": {"periods": {"start_year": 2019, "end_year": 2019, "season_size": 4}, "sources": [src], **inputs},
        "model": {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]},
    }
    if s3 is not None:
        data["inputs"]["s3"] = s3
    return config_from_dict(data)


def _templates(base: str) -> tuple[str, str]:
    return f"{base}/S2L2A_{{yyyymmdd}}_10m.tif", f"{base}/S2L2A_{{yyyymmdd}}_SCL.tif"


@pytest.fixture(scope="module")
def tile():
    return TileGrid(crs=GRID["crs"], origin_x=GRID["origin"][0], origin_y=GRID["origin"][1],
                    pixel_size=GRID["pixel_size"], tile_size=GRID["tile_size"]).tile(TILE)


@pytest.fixture(scope="module")
def series(tmp_path_factory, data_dir) -> Path:
    """The files of DATES (copied once for the module; nobody writes into tests/data)."""
    dst = tmp_path_factory.mktemp("s2")
    for d in DATES:
        for kind in ("10m", "SCL"):
            name = f"S2L2A_{d.replace('-', '')}_{kind}.tif"
            shutil.copy(data_dir / "worldcereal-be-2019" / name, dst / name)
    return dst


def _reference(folder: Path, tile, resampling=Resampling.nearest, dates=DATES, percentile=50.0):
    """Direct local read + rasterio.warp.reproject + mask rule + percentile, per quarter."""
    h, w = tile.height, tile.width
    per_q: dict[int, list] = {0: [], 1: [], 2: [], 3: []}
    for d in dates:
        q = (int(d[5:7]) - 1) // 3
        ymd = d.replace("-", "")
        with rasterio.open(folder / f"S2L2A_{ymd}_10m.tif") as src:
            dn = np.zeros((4, h, w), np.uint16)
            reproject(src.read(), dn, src_transform=src.transform, src_crs=src.crs, dst_transform=tile.transform,
                      dst_crs=tile.crs, resampling=resampling, src_nodata=0, dst_nodata=0)
        with rasterio.open(folder / f"S2L2A_{ymd}_SCL.tif") as src:
            scl = np.zeros((h, w), np.uint8)
            reproject(src.read(1), scl, src_transform=src.transform, src_crs=src.crs, dst_transform=tile.transform,
                      dst_crs=tile.crs, resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
        cloud = np.isin(scl, INVALID_SCL)
        nodata = (dn == 0) | (scl == 0)[None]
        valid = ~nodata & ~cloud[None]
        vals = np.where(valid, (dn.astype(np.float64) * 0.0001).astype(np.float32), np.float32(np.nan))
        per_q[q].append((vals, valid, cloud & ~nodata))
    out = {}
    for q, obs in per_q.items():
        if not obs:
            out[q] = None
            continue
        stack = np.stack([o[0] for o in obs])
        valid = np.stack([o[1] for o in obs])
        masked = np.stack([o[2] for o in obs])
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning) if (valid.sum(0) == 0).any() else _nullctx():
            value = np.nanpercentile(stack, percentile, axis=0).astype(np.float32)
        out[q] = (value, valid.sum(0).astype(np.uint16), masked.any(0))
    return out


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _assert_matches_reference(result, ref, *, exact_values=True):
    assert result.bands == BANDS
    assert [p.id for p in result.periods] == ["2019-01-01", "2019-04-01", "2019-07-01", "2019-10-01"]
    assert result.data.dtype == np.float32 and result.reason.dtype == np.uint8 and result.count.dtype == np.uint16
    for q, r in ref.items():
        if r is None:  # no acquisition in this quarter: no value, reason nodata, count 0
            assert np.isnan(result.data[q]).all()
            assert (result.reason[q] == REASON_NODATA).all()
            assert (result.count[q] == 0).all()
            continue
        value, count, any_masked = r
        np.testing.assert_array_equal(result.count[q], count)
        if exact_values:
            np.testing.assert_allclose(result.data[q], value, rtol=1e-6, atol=0, equal_nan=True)
        else:
            np.testing.assert_allclose(result.data[q], value, rtol=0, atol=2e-3, equal_nan=True)
        expected_reason = np.where(count > 0, REASON_VALID, np.where(any_masked, REASON_MASKED, REASON_NODATA))
        np.testing.assert_array_equal(result.reason[q], expected_reason)
        # NaN exactly where there is no valid observation: never silently
        np.testing.assert_array_equal(np.isnan(result.data[q]), count == 0)


@pytest.mark.slow
def test_file_read_matches_direct_reproject(series, tile):
    result = read_block(_cfg(*_templates(str(series))), tile, threads=2)
    ref = _reference(series, tile)
    _assert_matches_reference(result, ref)
    # the real series: clouds, footprint edge and clear pixels all occur
    q2 = result.reason[1]
    assert (q2 == REASON_VALID).mean() > 0.5
    assert (result.reason[2] == REASON_MASKED).any()
    assert (q2 == REASON_NODATA).any()  # the corner outside the UTM patch
    assert result.missing == []
    assert result.stats["files"] == 2 * len(DATES) and result.stats["retries"] == 0
    assert 0.01 < np.nanmedian(result.data[1, 3]) < 0.8  # NIR reflectance, scaled


@pytest.mark.slow
def test_bilinear_matches_reproject(series, tile):
    result = read_block(_cfg(*_templates(str(series)), resampling="bilinear"), tile, threads=1)
    ref = _reference(series, tile, resampling=Resampling.bilinear)
    # GDAL approximates the transformation (error threshold 0.125 px), and a WarpedVRT read of
    # 4 bands at once and reproject() of an array place the kernel slightly differently: the
    # two agree closely, not bit for bit (nearest does, see above).
    for q in (1, 2):
        value, count, _ = ref[q]
        assert (count != result.count[q]).mean() < 0.02
        both = (count > 0) & (result.count[q] > 0)
        assert both.mean() > 0.4
        diff = np.abs(result.data[q][both] - value[both])
        assert np.median(diff) < 5e-4 and np.percentile(diff, 99) < 0.02, (np.median(diff), diff.max())


def test_window_equals_slice_of_whole_tile(series, tile):
    cfg = _cfg(*_templates(str(series)))
    whole = read_block(cfg, tile, threads=1)
    part = read_block(cfg, tile, Window(16, 8, 24, 32), threads=1)
    assert part.data.shape == (4, 4, 32, 24)
    np.testing.assert_array_equal(part.data, whole.data[:, :, 8:40, 16:40])
    np.testing.assert_array_equal(part.reason, whole.reason[:, :, 8:40, 16:40])
    np.testing.assert_array_equal(part.count, whole.count[:, :, 8:40, 16:40])


def test_fetched_files_composite_to_the_same_block(series, tile):
    """A read-ahead (fetch_block, then read_block(fetched=)) gives the block a plain read gives:
    warped acquisitions with a cloud mask, composited to the median."""
    cfg = _cfg(*_templates(str(series)))
    window = Window(16, 8, 24, 32)
    plain = read_block(cfg, tile, window, threads=2)
    fetched = fetch_block(cfg, tile, window, threads=1)
    assert fetched.stats["files"] == 2 * len(DATES) and fetched.periods[1]  # decoded, not composited
    ahead = read_block(cfg, tile, window, threads=2, fetched=fetched)
    np.testing.assert_array_equal(ahead.data, plain.data)
    np.testing.assert_array_equal(ahead.reason, plain.reason)
    np.testing.assert_array_equal(ahead.count, plain.count)
    assert (ahead.reason == REASON_MASKED).any() and (ahead.count > 1).any()  # masks and composites were exercised
    assert ahead.files == plain.files and ahead.resampled == plain.resampled and ahead.missing == []
    assert ahead.stats["files"] == plain.stats["files"] == 2 * len(DATES)
    assert all(p is None for p in fetched.periods)  # each period freed once composited
    with pytest.raises(ReadError, match=f"tile {TILE}: the files fetched for window .* were given for window"):
        read_block(cfg, tile, Window(0, 0, 24, 32), fetched=fetch_block(cfg, tile, window, threads=1))


def test_same_over_file_http_and_s3(series, tile, nginx_factory, seaweed, s3_bucket, tmp_path):
    by_file = read_block(_cfg(*_templates(str(series))), tile, threads=2)

    server = nginx_factory(_world_readable_copy(series, tmp_path))
    by_http = read_block(_cfg(*_templates(server.url)), tile, threads=2)

    client = seaweed.client()
    for f in sorted(series.iterdir()):
        client.upload_file(str(f), s3_bucket, f"s2/{f.name}")
    s3cfg = {"endpoint_url": seaweed.endpoint_url, "region": seaweed.region}
    by_s3 = read_block(_cfg(*_templates(f"s3://{s3_bucket}/s2"), s3=s3cfg), tile, threads=2)

    for other in (by_http, by_s3):
        np.testing.assert_array_equal(other.data, by_file.data)
        np.testing.assert_array_equal(other.reason, by_file.reason)
        np.testing.assert_array_equal(other.count, by_file.count)
    assert np.isfinite(by_file.data).mean() > 0.3
    # only ranges were read over HTTP: a few requests per file, no directory listings
    lines = server.access_log.read_text().splitlines()
    assert lines and not any('GET / ' in ln or ".aux.xml" in ln or ".ovr" in ln for ln in lines)
    assert len(lines) <= 3 * 2 * len(DATES)


def _world_readable_copy(folder: Path, tmp_path: Path) -> Path:
    """nginx workers run as an unprivileged user: serve a copy outside pytest's 0700 folders."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="ecocube-read-www-"))
    root.chmod(0o755)
    for f in folder.iterdir():
        shutil.copy(f, root / f.name)
        (root / f.name).chmod(0o644)
    (tmp_path / "www-root.txt").write_text(str(root))  # for debugging a failure
    return root


def test_s3_missing_key_is_missing_not_cloud(series, tile, seaweed, s3_bucket):
    client = seaweed.client()
    for f in sorted(series.iterdir()):
        if "20190501_10m" not in f.name:
            client.upload_file(str(f), s3_bucket, f"s2/{f.name}")
    s3cfg = {"endpoint_url": seaweed.endpoint_url, "region": seaweed.region}
    with pytest.raises(InputMissingError) as err:
        read_block(_cfg(*_templates(f"s3://{s3_bucket}/s2"), s3=s3cfg), tile, threads=2)
    assert f"s3://{s3_bucket}/s2/S2L2A_20190501_10m.tif" in str(err.value) and TILE in str(err.value)


@pytest.mark.slow
def test_bilinear_window_and_threads_do_not_change_values(series, tile):
    """The warp's kernel scale is set from the source grid, not estimated by GDAL from the
    clipped source window (which widened the kernel near file edges): threads change nothing,
    and a bilinear window agrees with the slice of the whole tile up to GDAL's approximate
    transformer (0.125 px error threshold, interpolated over the block: rare 1-DN changes)."""
    cfg = _cfg(*_templates(str(series)), resampling="bilinear")
    whole = read_block(cfg, tile, threads=1)
    many = read_block(cfg, tile, threads=4)
    np.testing.assert_array_equal(many.data, whole.data)
    part = read_block(cfg, tile, Window(16, 8, 24, 32), threads=4)
    ref = whole.data[:, :, 8:40, 16:40]
    np.testing.assert_array_equal(part.count, whole.count[:, :, 8:40, 16:40])
    np.testing.assert_array_equal(np.isnan(part.data), np.isnan(ref))
    differ = ~np.isnan(ref) & (part.data != ref)
    assert differ.mean() < 1e-3
    assert np.nanmax(np.abs(part.data - ref)) <= 1.5e-4  # one DN at scale 1e-4


def test_bytes_read_are_the_compressed_blocks_of_the_window(series, tile):
    result = read_block(_cfg(*_templates(str(series))), tile, threads=2)
    blocks = files = 0
    for f in series.glob("*.tif"):  # one 64x64 block per file, pixel-interleaved: the tile needs it
        with rasterio.open(f) as src:
            assert src.block_shapes[0] == (64, 64)
            blocks += src.block_size(1, 0, 0)
        files += f.stat().st_size
    assert result.stats["bytes_read"] == blocks and 0.5 * files < blocks < files
    assert result.stats["files_without_block_sizes"] == 0
    assert result.stats["attempts"] == result.stats["files"] == 2 * len(DATES)


def test_aligned_source_is_read_without_warp(tmp_path, make_cog, tile):
    """A source already on the tile grid: exact values, footprint outside is nodata."""
    arr = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) + 1)
    t = tile.transform
    from affine import Affine

    path = make_cog("aligned/2019-04-01.tif", arr, crs=tile.crs,
                    transform=Affine(t.a, 0, t.c + 8 * t.a, 0, t.e, t.f + 8 * t.e), nodata=None, blocksize=16)
    cfg = config_from_dict({
        "grid": GRID, "aoi": {"tiles": [TILE]},
        "inputs": {"periods": {"start_year": 2019, "end_year": 2019, "season_size": 4},
                   "sources": [{"name": "a", "href": str(path.parent / "{date}.tif"), "bands": ["v"],
                                "scale": 0.5, "offset": 1.0}]},
        "model": {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]},
    })
    with pytest.raises(InputMissingError, match="2019-01-01.tif"):
        read_block(cfg, tile, threads=1)
    cfg = cfg.model_copy(update={"inputs": cfg.inputs.model_copy(update={"on_missing": "record"})})
    r = read_block(cfg, tile, threads=1)
    np.testing.assert_array_equal(r.data[1, 0, 8:48, 8:48], arr * 0.5 + 1.0)
    assert np.isnan(r.data[1, 0, :8]).all() and (r.reason[1, 0, :8] == REASON_NODATA).all()
    assert (r.count[1, 0, 8:, 8:] == 1).all() and (r.count[1, 0, :8] == 0).all()
    # the other quarters have no file: recorded as missing, never as cloud or nodata
    for q in (0, 2, 3):
        assert (r.reason[q] == REASON_MISSING).all() and np.isnan(r.data[q]).all()
    assert len(r.missing) == 3 and all(m.endswith(".tif") for m in r.missing)
    with rasterio.open(path) as src:  # 40x40 px in 16 px blocks: 3x3 blocks, all under the tile
        sizes = {(i, j): src.block_size(1, i, j) for i in range(3) for j in range(3)}
    assert r.stats["bytes_read"] == sum(sizes.values())
    # tile pixels 8..24 are file pixels 0..16: only the first block
    part = read_block(cfg, tile, Window(0, 0, 24, 24), threads=1)
    assert part.stats["bytes_read"] == sizes[0, 0]


# ----------------------------------------------------------------------------- faults


FEW = ("2019-04-26", "2019-07-10")


@pytest.fixture
def rangeserver(series):
    with RangeServer(series) as srv:
        yield srv


def _few_cfg(base, **kw):
    return _cfg(*_templates(base), dates=FEW, **kw)


@pytest.fixture(scope="module")
def few_expected(series, tile):
    return read_block(_cfg(*_templates(str(series)), dates=FEW), tile, threads=1)


@pytest.mark.parametrize("kind", ["500", "503", "reset", "truncate"])
def test_transient_fault_recovers_by_retry(rangeserver, tile, few_expected, kind):
    target = "S2L2A_20190426_10m.tif"
    # skip=1: the fault hits the data requests after the header probe (HEAD). GDAL itself
    # re-requests once after a 5xx while opening, so two 5xx make ecocube's retry necessary.
    times = 2 if kind in ("500", "503") else 1
    rangeserver.add_fault(target, kind, times=times, skip=1 if kind != "reset" else 0)
    result = read_block(_few_cfg(rangeserver.url), tile, threads=2)
    np.testing.assert_array_equal(result.data, few_expected.data)
    np.testing.assert_array_equal(result.reason, few_expected.reason)
    assert result.stats["retries"] >= 1
    assert sum(1 for r in rangeserver.log if target in r.path) > 2


def test_stall_times_out_and_recovers(rangeserver, tile, few_expected):
    rangeserver.add_fault("S2L2A_20190710_SCL.tif", "stall", times=1, seconds=3)
    result = read_block(_few_cfg(rangeserver.url, http_timeout=1), tile, threads=2)
    np.testing.assert_array_equal(result.data, few_expected.data)
    assert result.stats["retries"] >= 1


def test_persistent_500_fails_naming_url_and_tile(rangeserver, tile):
    rangeserver.add_fault("S2L2A_20190710_10m.tif", "500")
    with pytest.raises(ReadError) as err:
        read_block(_few_cfg(rangeserver.url), tile, threads=2)
    assert not isinstance(err.value, InputMissingError)
    msg = str(err.value)
    assert f"{rangeserver.url}/S2L2A_20190710_10m.tif" in msg and TILE in msg and "500" in msg
    assert err.value.url.endswith("S2L2A_20190710_10m.tif") and err.value.tile == TILE


def test_persistent_truncation_is_an_error_never_nan(rangeserver, tile):
    rangeserver.add_fault("S2L2A_20190426_SCL.tif", "truncate", skip=1)
    with pytest.raises(ReadError, match="S2L2A_20190426_SCL.tif") as err:
        read_block(_few_cfg(rangeserver.url, on_missing="record"), tile, threads=1)
    assert not isinstance(err.value, InputMissingError)


def test_404_fails_under_fail_policy(rangeserver, tile):
    rangeserver.add_fault("S2L2A_20190710_SCL.tif", "404")
    with pytest.raises(InputMissingError) as err:
        read_block(_few_cfg(rangeserver.url), tile, threads=2)
    assert f"{rangeserver.url}/S2L2A_20190710_SCL.tif" in str(err.value) and TILE in str(err.value)
    # a 404 is final: not retried
    assert sum(1 for r in rangeserver.log if "20190710_SCL" in r.path) == 1


def test_404_is_recorded_as_missing_not_cloud(rangeserver, tile, few_expected):
    rangeserver.add_fault("S2L2A_20190710_SCL.tif", "404")
    result = read_block(_few_cfg(rangeserver.url, on_missing="record"), tile, threads=2)
    assert result.missing == [f"{rangeserver.url}/S2L2A_20190710_SCL.tif"]
    # Q2 is untouched; Q3 had only that date: every value is "missing", none "masked"
    np.testing.assert_array_equal(result.data[1], few_expected.data[1])
    assert (result.reason[2] == REASON_MISSING).all() and np.isnan(result.data[2]).all()
    assert (result.count[2] == 0).all()
    assert not (few_expected.reason[2] == REASON_MISSING).any()


def test_gdal_paths():
    assert gdal_path("https://h/x.tif") == "/vsicurl/https://h/x.tif"
    assert gdal_path("s3://b/k/x.tif") == "/vsis3/b/k/x.tif"
    assert gdal_path("/vsis3/b/x.tif") == "/vsis3/b/x.tif"
    assert gdal_path("file:///tmp/x.tif") == "/tmp/x.tif"
    assert gdal_path("rel/x.tif") == "rel/x.tif"


@pytest.mark.slow
def test_nan_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    stack = rng.random((7, 3, 20, 20)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.5] = np.nan
    stack[:, 0, 0, 0] = np.nan
    for q in (0, 25, 50, 75, 100):
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            expected = np.nanpercentile(stack, q, axis=0)
        np.testing.assert_allclose(nan_percentile(stack, q), expected, rtol=1e-6, equal_nan=True)


# ----------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_read_dumps_tile(series, tmp_path, tile):
    from click.testing import CliRunner

    from ecocube.cli import cli

    href, scl = _templates(str(series))
    run = tmp_path / "run.yaml"
    import yaml

    cfg = _cfg(href, scl)
    run.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"base_dir"})))
    out = tmp_path / "dump"
    res = CliRunner().invoke(cli, ["read", str(run), "--tile", TILE, "--out", str(out), "--threads", "2"])
    assert res.exit_code == 0, res.output
    npz = np.load(out / TILE / "read.npz")
    direct = read_block(cfg, tile, threads=1)
    np.testing.assert_array_equal(npz["data"], direct.data)
    summary = json.loads((out / TILE / "summary.json").read_text())
    assert summary["shape"] == [4, 4, 48, 48] and summary["missing"] == []
    with rasterio.open(out / TILE / "2019-04-01.tif") as ds:
        assert ds.descriptions == BANDS and ds.crs.to_epsg() == 3035
        np.testing.assert_array_equal(ds.read(), direct.data[1])
    # again without --overwrite: refused with a clear error
    res = CliRunner().invoke(cli, ["read", str(run), "--tile", TILE, "--out", str(out)])
    assert res.exit_code != 0 and "overwrite" in str(res.exception or res.output)


def _numpy_layers(cat, obs, results, shape):
    """The reference: the numpy formulation of one observation's values and reasons
    (before the compiled per-band pass), written out here."""
    from ecocube.read import _Missing

    def nodata_mask(arr, nodata):
        bad = np.zeros(arr.shape, bool)
        if np.issubdtype(arr.dtype, np.floating):
            bad |= np.isnan(arr)
        if nodata is not None:
            bad |= np.isnan(arr) if np.isnan(nodata) else (arr == nodata)
        return bad

    nb, (h, w) = len(cat.bands), shape
    values = np.full((nb, h, w), np.nan, np.float32)
    reason = np.full((nb, h, w), REASON_NODATA, np.uint8)
    mask_invalid = mask_nodata = None
    mask_missing = False
    if obs.mask is not None:
        res = results[(obs.mask[0], (obs.mask[1],), "nearest", None, "mask")]
        if isinstance(res, _Missing):
            mask_missing = True
        else:
            qa = res.array[0]
            mask_nodata = nodata_mask(qa, res.nodata)
            if res.outside is not None:
                mask_nodata |= res.outside
            mask_invalid = cat.mask_rule.invalid(qa)
    refs = {ref.href: ref for ref in obs.file_refs()}
    for bi, band in enumerate(cat.bands):
        href, idx = obs.bands[band]
        res = results[(href, refs[href].indexes, cat.resampling, cat.nodata, "data")]
        if isinstance(res, _Missing) or mask_missing:
            reason[bi] = REASON_MISSING
            continue
        dn = res.array[refs[href].indexes.index(idx)]
        nodata = nodata_mask(dn, res.nodata)
        if res.outside is not None:
            nodata |= res.outside
        r = np.full((h, w), REASON_VALID, np.uint8)
        if mask_invalid is not None:
            r[mask_invalid] = REASON_MASKED
            nodata |= mask_nodata
        r[nodata] = REASON_NODATA
        scaled = (dn.astype(np.float64) * cat.scale + cat.offset).astype(np.float32)
        values[bi] = np.where(r == REASON_VALID, scaled, np.float32(np.nan))
        reason[bi] = r
    return values, reason


@pytest.mark.parametrize("case", ["uint16-all-values", "int64-mask", "float32-nan", "float32-inexact-nodata",
                                  "missing"])
def test_observation_layers_equal_the_numpy_formulation(case):
    """Every uint16 value (and float/int64 inputs, a quality mask, pixels outside the file, a
    missing file): the compiled pass gives the same float32 bits and reason codes."""
    from ecocube.read import _FileData, _Missing, _observation_layers
    from ecocube.sources import MaskRule, Observation, SourceCatalog

    rng = np.random.default_rng(7)
    h = w = 256
    bands = ("b1", "b2", "b3")
    nodata, outside, mask = 0, None, None
    scale, offset = 0.0001, -0.1
    if case == "uint16-all-values":
        arr = np.stack([np.arange(h * w, dtype=np.uint16).reshape(h, w), rng.integers(0, 65535, (h, w), np.uint16),
                        np.full((h, w), 7, np.uint16)])
    elif case == "int64-mask":
        arr = rng.integers(-5, 12000, (3, h, w)).astype(np.int64)
        outside = rng.random((h, w)) < 0.1
        mask = rng.integers(0, 12, (1, h, w)).astype(np.uint8)
        scale, offset = 2.75e-05, -0.2
    elif case == "float32-nan":
        arr = rng.normal(0.2, 0.1, (3, h, w)).astype(np.float32)
        arr[rng.random((3, h, w)) < 0.2] = np.nan
        nodata, scale, offset = float("nan"), 1.0, 0.0
    elif case == "float32-inexact-nodata":
        arr = rng.normal(0.2, 0.1, (3, h, w)).astype(np.float32)
        arr[:, :40] = np.float32(1e-4)
        nodata, scale, offset = 1e-4, 3.0, 0.5
    else:
        arr = rng.integers(0, 9000, (3, h, w)).astype(np.uint16)
        mask = rng.integers(0, 12, (1, h, w)).astype(np.uint8)
    obs = Observation("s", None, None, {b: ("data.tif", i + 1) for i, b in enumerate(bands)},
                      mask=("qa.tif", 1) if mask is not None else None)
    cat = SourceCatalog("s", "composite", bands, scale, offset, nodata, "nearest",
                        MaskRule("classes", (3, 8, 9, 10)) if mask is not None else None)
    results = {("data.tif", (1, 2, 3), "nearest", nodata, "data"): _FileData(arr, nodata, outside, 0, 0)}
    if mask is not None:
        mask_outside = np.zeros((h, w), bool)
        mask_outside[:, -30:] = True
        qa = _FileData(mask, 0, mask_outside, 0, 0)
        results[("qa.tif", (1,), "nearest", None, "mask")] = qa
    if case == "missing":
        results[("data.tif", (1, 2, 3), "nearest", nodata, "data")] = _Missing(InputMissingError("x"))
    values, reason = _observation_layers(cat, obs, results, (h, w))
    ref_values, ref_reason = _numpy_layers(cat, obs, results, (h, w))
    np.testing.assert_array_equal(reason, ref_reason)
    np.testing.assert_array_equal(values.view(np.uint32), ref_values.view(np.uint32))  # the same bits
    assert values.dtype == np.float32 and reason.dtype == np.uint8
    # the cases cover every reason code they can produce
    codes = set(np.unique(reason).tolist())
    expect = {"uint16-all-values": {REASON_VALID, REASON_NODATA}, "int64-mask": {0, 1, 2},
              "float32-nan": {0, 2}, "float32-inexact-nodata": {0, 2}, "missing": {REASON_MISSING}}[case]
    assert codes == expect


def test_the_warp_never_makes_a_dataset_without_geotransform(series, tile, monkeypatch):
    """#18: 'ecocube demo --chip' printed rasterio's NotGeoreferencedWarning. reproject() on bare
    arrays wraps each in a MEM dataset that exists for a moment without a geotransform and
    hides the warning with warnings.catch_warnings() + simplefilter('ignore'), which is not
    thread-safe, so with parallel reads it escaped. With that hiding disabled (simplefilter a
    no-op) and the warning an error, a warped read on two threads must not raise it and reads
    the same values as before."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    cfg = _cfg(*_templates(str(series)), resampling="bilinear")
    plain = read_block(cfg, tile, threads=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=NotGeoreferencedWarning)
        monkeypatch.setattr(warnings, "simplefilter", lambda *a, **k: None)
        strict = read_block(cfg, tile, threads=2)
    monkeypatch.undo()
    np.testing.assert_array_equal(strict.data, plain.data)
    np.testing.assert_array_equal(strict.count, plain.count)
    assert np.isfinite(strict.data).mean() > 0.3  # a real warp: the tile grid is EPSG:3035, the files UTM
