"""Tests of ecocube.gapfill: property tests against a slow reference, real-data errors."""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
import tarfile
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ecocube.errors import ConfigError
from ecocube.gapfill import (
    FLAG_LEGEND,
    FLAG_OBSERVED,
    FLAG_OUTLIER_UNFILLED,
    FLAG_UNFILLED,
    MAX_H,
    candidate_windows,
    decode_flag,
    fill_gaps,
    fill_gaps_config,
    flag_code,
    flag_legend,
    flag_phase,
)

# --------------------------------------------------------------------------- reference
# A slow, obviously correct implementation of the specification in the module docstring:
# windows are built as plain sets of offsets, medians via statistics.median on floats.


def ref_windows(S, h_same, h_neib, h_annual, direction):
    def side(offs):
        if direction == "past":
            return {o for o in offs if o < 0}
        if direction == "future":
            return {o for o in offs if o > 0}
        return set(offs)

    wins = []
    for h in range(1, h_same + 1):  # same season, years t-h..t+h except t
        wins.append((h, side({j * S for j in range(-h, h + 1) if j != 0})))
    for h in range(1, h_neib + 1):  # season before/after the same season of years t-h..t+h
        wins.append((40 + h, side({j * S + d for j in range(-h, h + 1) for d in (-1, 1)} - {0})))
    for h in range(1, h_annual + 1):  # contiguous +-h periods
        wins.append((80 + h, side(set(range(-h, h + 1)) - {0})))
    return wins


def ref_percentile(sorted_vals, q):
    n = len(sorted_vals)
    pos = q / 100.0 * (n - 1)
    i0 = math.floor(pos)
    i1 = min(i0 + 1, n - 1)
    return sorted_vals[i0] + (sorted_vals[i1] - sorted_vals[i0]) * (pos - i0)


def ref_fill(cube, *, method="tmwm", season_size=4, h_same=2, h_neib=1, h_annual=2, direction="both",
             shared_flags=False, outlier_percentiles=None):
    cube = np.asarray(cube, np.float32)
    c4 = cube if cube.ndim == 4 else cube[:, None]
    T, B, Y, X = c4.shape
    out = c4.copy()
    flags = np.zeros(c4.shape, np.uint8)
    wins = ref_windows(season_size, h_same, h_neib, h_annual, direction)
    for y in range(Y):
        for x in range(X):
            vals = [[None if math.isnan(float(c4[t, b, y, x])) else float(c4[t, b, y, x]) for t in range(T)]
                    for b in range(B)]
            fl = [[0 if vals[b][t] is not None else 255 for t in range(T)] for b in range(B)]
            if outlier_percentiles is not None:
                for b in range(B):
                    ok = sorted(v for v in vals[b] if v is not None)
                    if not ok:
                        continue
                    lo, hi = ref_percentile(ok, outlier_percentiles[0]), ref_percentile(ok, outlier_percentiles[1])
                    for t in range(T):
                        if vals[b][t] is not None and not (lo <= vals[b][t] <= hi):
                            vals[b][t] = None
                            fl[b][t] = 254
                            out[t, b, y, x] = np.nan
            groups = [list(range(B))] if (shared_flags and B > 1) else [[b] for b in range(B)]
            for bands in groups:
                ok = [all(vals[b][t] is not None for b in bands) for t in range(T)]
                for t in range(T):
                    if ok[t]:
                        continue
                    gap_bands = [b for b in bands if vals[b][t] is None]
                    if method == "linear":
                        before = [i for i in range(t) if ok[i]] if direction != "future" else []
                        after = [i for i in range(t + 1, T) if ok[i]] if direction != "past" else []
                        if not before and not after:
                            continue
                        for b in gap_bands:
                            if before and after:
                                a, c = before[-1], after[0]
                                value, code = vals[b][a] + (vals[b][c] - vals[b][a]) * (t - a) / (c - a), 121
                            else:
                                value, code = vals[b][(before or [None])[-1] if before else after[0]], 122
                            out[t, b, y, x] = np.float32(value)
                            flags_code = code | 128 if fl[b][t] == 254 else code
                            fl[b][t] = flags_code
                        continue
                    for code, offs in wins:
                        idx = sorted(t + o for o in offs if 0 <= t + o < T and ok[t + o])
                        if idx:
                            for b in gap_bands:
                                out[t, b, y, x] = np.float32(statistics.median(vals[b][i] for i in idx))
                                fl[b][t] = code | 128 if fl[b][t] == 254 else code
                            break
            for b in range(B):
                for t in range(T):
                    flags[t, b, y, x] = fl[b][t]
    return out.reshape(cube.shape), flags.reshape(cube.shape)


def assert_same(got, want):
    gf, gl = got
    wf, wl = want
    assert gf.dtype == np.float32 and gl.dtype == np.uint8
    assert gf.shape == wf.shape and gl.shape == wl.shape
    np.testing.assert_array_equal(gl, wl)
    np.testing.assert_array_equal(gf, wf)  # NaN == NaN here; values bit-exact


def assert_contract(cube, filled, flags):
    """Properties that hold whatever the settings (without outlier removal)."""
    obs = ~np.isnan(cube)
    # observed values untouched, bit for bit
    np.testing.assert_array_equal(filled[obs].view(np.uint32), np.asarray(cube, np.float32)[obs].view(np.uint32))
    assert (flags[obs] == FLAG_OBSERVED).all()
    # NaN exactly where unfilled
    np.testing.assert_array_equal(np.isnan(filled), flags == FLAG_UNFILLED)
    assert set(np.unique(flags).tolist()) <= set(FLAG_LEGEND)


# --------------------------------------------------------------------------- strategies

values = st.one_of(st.just(np.nan), st.sampled_from([0.0, 0.25, 1.0, -2.5, 3.0]),
                   st.floats(-100, 100, width=32, allow_nan=False))


@st.composite
def cubes(draw, min_bands=0, max_bands=3):
    T = draw(st.integers(1, 30))
    bands = draw(st.integers(min_bands, max_bands))
    shape = (T, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if bands:
        shape = (T, bands) + shape[1:]
    gap_p = draw(st.sampled_from([0.0, 0.2, 0.5, 0.8, 0.95, 1.0]))
    arr = draw(hnp.arrays(np.float32, shape, elements=values))
    seed = draw(st.integers(0, 2**16))
    gaps = np.random.default_rng(seed).random(shape) < gap_p
    arr[gaps] = np.nan
    return arr


params = st.fixed_dictionaries({
    "season_size": st.sampled_from([1, 2, 3, 4, 6, 12]),
    "h_same": st.integers(0, 4),
    "h_neib": st.integers(0, 3),
    "h_annual": st.integers(0, 4),
    "direction": st.sampled_from(["both", "past", "future"]),
})

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- property tests


@SETTINGS
@given(cube=cubes(), p=params, threads=st.sampled_from([1, 2]))
@pytest.mark.slow
def test_tmwm_matches_reference(cube, p, threads):
    got = fill_gaps(cube, method="tmwm", threads=threads, **p)
    assert_same(got, ref_fill(cube, method="tmwm", **p))
    assert_contract(cube, *got)
    assert set(np.unique(got[1]).tolist()) <= set(flag_legend("tmwm", outliers=False, **p))


@SETTINGS
@given(cube=cubes(min_bands=2, max_bands=3), p=params)
@pytest.mark.slow
def test_shared_flags_match_reference_and_agree_across_bands(cube, p):
    filled, flags = fill_gaps(cube, shared_flags=True, threads=2, **p)
    assert_same((filled, flags), ref_fill(cube, shared_flags=True, **p))
    assert_contract(cube, filled, flags)
    # every band that is a gap at (t, y, x) carries the same flag: one window for all
    gaps = np.isnan(cube)
    for t, y, x in zip(*np.nonzero(gaps.any(axis=1))):
        codes = {int(flags[t, b, y, x]) for b in range(cube.shape[1]) if gaps[t, b, y, x]}
        assert len(codes) == 1


@SETTINGS
@given(cube=cubes(), direction=st.sampled_from(["both", "past", "future"]), shared=st.booleans())
@pytest.mark.slow
def test_linear_matches_reference(cube, direction, shared):
    got = fill_gaps(cube, method="linear", direction=direction, shared_flags=shared, threads=1)
    assert_same(got, ref_fill(cube, method="linear", direction=direction, shared_flags=shared))
    assert_contract(cube, *got)


@SETTINGS
@given(cube=cubes(), p=params, method=st.sampled_from(["tmwm", "linear"]), shared=st.booleans(),
       q=st.sampled_from([(10.0, 90.0), (0.0, 50.0), (25.0, 75.0), (2.0, 98.0)]))
@pytest.mark.slow
def test_outlier_removal_matches_reference(cube, p, method, shared, q):
    filled, flags = fill_gaps(cube, method=method, shared_flags=shared, outlier_percentiles=q, threads=1, **p)
    assert_same((filled, flags), ref_fill(cube, method=method, shared_flags=shared, outlier_percentiles=q, **p))
    removed = (flags == FLAG_OUTLIER_UNFILLED) | ((flags >= 129) & (flags <= 250))
    assert not np.isnan(cube[removed]).any()  # only observed values are removed as outliers
    np.testing.assert_array_equal(np.isnan(filled), (flags == FLAG_UNFILLED) | (flags == FLAG_OUTLIER_UNFILLED))


@settings(max_examples=80, deadline=None)
@given(cube=cubes(max_bands=0), p=params, method=st.sampled_from(["tmwm", "linear"]), cut=st.integers(0, 30))
@pytest.mark.slow
def test_direction_past_and_future_see_one_side_only(cube, p, method, cut):
    """past: a value at t depends on periods <= t only; future: on periods >= t only."""
    p = dict(p, direction="past")
    T = cube.shape[0]
    cut = min(cut, T)
    full = fill_gaps(cube, method=method, **p)
    prefix = fill_gaps(cube[:cut], method=method, **p)
    np.testing.assert_array_equal(full[0][:cut], prefix[0])
    np.testing.assert_array_equal(full[1][:cut], prefix[1])
    p["direction"] = "future"
    full = fill_gaps(cube, method=method, **p)
    suffix = fill_gaps(cube[cut:], method=method, **p)
    np.testing.assert_array_equal(full[0][cut:], suffix[0])
    np.testing.assert_array_equal(full[1][cut:], suffix[1])


@pytest.mark.parametrize("q", [(2.0, 98.0), (25.0, 75.0), (0.0, 100.0), (40.0, 41.0)])
@pytest.mark.parametrize("shared", [False, True])
def test_outliers_long_series_match_reference(q, shared):
    """84 periods: both the partial-selection and the sorting path of the percentiles."""
    rng = np.random.default_rng(7)
    cube = rng.normal(0.3, 0.05, (84, 2, 3, 4)).astype(np.float32)
    cube[rng.random(cube.shape) < 0.3] = np.nan
    cube[5, 0, 1, 1] = 9.0  # a clear outlier
    kw = {"season_size": 4, "h_same": 2, "h_neib": 1, "h_annual": 2, "outlier_percentiles": q,
          "shared_flags": shared}
    got = fill_gaps(cube, threads=2, **kw)
    assert_same(got, ref_fill(cube, **kw))
    if q == (2.0, 98.0):
        assert got[1][5, 0, 1, 1] & 128 and got[0][5, 0, 1, 1] < 1.0


# --------------------------------------------------------------------------- worked examples


def series(*vals):
    return np.array(vals, np.float32)[:, None, None]


N = np.nan


def test_worked_example_quarters():
    # 3 years of quarters; gap at year 1, Q2 (index 5)
    s = series(1, 10, 3, 4,
               5, N, 7, 8,
               9, 30, 11, 12)
    f, fl = fill_gaps(s, season_size=4, h_same=2, h_neib=1, h_annual=2)
    assert f[5, 0, 0] == 20.0 and fl[5, 0, 0] == flag_code(1, 1)  # median(10, 30)
    s[1] = s[9] = N  # no Q2 in any other year: neighbouring seasons of years 0..2
    f, fl = fill_gaps(s, season_size=4, h_same=2, h_neib=1, h_annual=2)
    # offsets -5,-3,-1,1,3,5 -> indices 0,2,4,6,8,10 -> values 1,3,5,7,9,11 -> median 6
    assert f[5, 0, 0] == 6.0 and fl[5, 0, 0] == flag_code(2, 1)
    f, fl = fill_gaps(s, season_size=4, h_same=2, h_neib=1, h_annual=2, direction="past")
    assert f[5, 0, 0] == 3.0 and fl[5, 0, 0] == flag_code(2, 1)  # indices 0, 2, 4 -> median(1, 3, 5)
    assert f[1, 0, 0] == 1.0 and fl[1, 0, 0] == flag_code(2, 1)  # Q2 of year 0: only index 0 is earlier


def test_worked_example_edges_and_unfilled():
    s = series(N, N, N, N)
    f, fl = fill_gaps(s, season_size=4)
    assert np.isnan(f).all() and (fl == FLAG_UNFILLED).all()
    s = series(N, 2, N, N, N, N, N, N, N, N)  # S=4: index 9 reaches index 1 only at h=2 (offset -8)
    f, fl = fill_gaps(s, season_size=4, h_same=2, h_neib=0, h_annual=0)
    assert fl[9, 0, 0] == flag_code(1, 2) and f[9, 0, 0] == 2.0
    assert fl[5, 0, 0] == flag_code(1, 1) and fl[0, 0, 0] == FLAG_UNFILLED
    f, fl = fill_gaps(s, season_size=4, h_same=1, h_neib=0, h_annual=0)
    assert fl[9, 0, 0] == FLAG_UNFILLED and np.isnan(f[9, 0, 0])


def test_worked_example_set_semantics_two_seasons():
    # S=2: neighbouring offsets -3,-1,+1,+3 (j*S±1 reaches -1 and +1 twice: counted once)
    s = series(N, 1, N, N, N, 4, N, 100)
    f, fl = fill_gaps(s, season_size=2, h_same=0, h_neib=1, h_annual=0)
    assert fl[4, 0, 0] == flag_code(2, 1)
    assert f[4, 0, 0] == 4.0  # median of {1 (idx 1), 4 (idx 5), 100 (idx 7)}, not of a multiset


def test_worked_example_linear():
    s = series(N, 1, N, N, 4, N)
    f, fl = fill_gaps(s, method="linear")
    np.testing.assert_array_equal(f[:, 0, 0], np.array([1, 1, 2, 3, 4, 4], np.float32))
    assert fl[:, 0, 0].tolist() == [122, 0, 121, 121, 0, 122]
    f, fl = fill_gaps(s, method="linear", direction="past")
    assert np.isnan(f[0, 0, 0]) and f[:, 0, 0][1:].tolist() == [1, 1, 1, 4, 4]
    assert fl[:, 0, 0].tolist() == [255, 0, 122, 122, 0, 122]


def test_outlier_flags_worked_example():
    s = series(1, 1.1, 0.9, 1.0, 50.0, 1.05, 0.95, 1.0)
    f, fl = fill_gaps(s, season_size=4, h_same=1, h_neib=0, h_annual=0, outlier_percentiles=(0, 90))
    assert fl[4, 0, 0] == flag_code(1, 1) | 128  # 50 removed, refilled from index 0
    assert f[4, 0, 0] == 1.0
    assert decode_flag(int(fl[4, 0, 0])).outlier


# --------------------------------------------------------------------------- API details


def test_inplace_equals_copy_and_4d_shape(synthetic_cube):
    want = fill_gaps(synthetic_cube, season_size=4, threads=2)
    cube = synthetic_cube.copy()
    got = fill_gaps(cube, season_size=4, threads=1, inplace=True)
    assert got[0] is cube or np.shares_memory(got[0], cube)
    assert_same(got, want)
    assert want[0].shape == synthetic_cube.shape == want[1].shape
    # float64 input is accepted and gives the float32 result
    assert_same(fill_gaps(synthetic_cube.astype(np.float64), season_size=4), want)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "spline"}, "method"),
    ({"direction": "sideways"}, "direction"),
    ({"season_size": 0}, "season_size"),
    ({"h_same": MAX_H + 1}, "h_same"),
    ({"h_neib": -1}, "h_neib"),
    ({"outlier_percentiles": (90, 10)}, "outlier_percentiles"),
    ({"outlier_percentiles": (5,)}, "outlier_percentiles"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        fill_gaps(np.zeros((4, 2, 2), np.float32), **kwargs)


def test_bad_shapes_and_inplace():
    with pytest.raises(ConfigError, match="time, y, x"):
        fill_gaps(np.zeros((4, 2), np.float32))
    with pytest.raises(ConfigError, match="inplace"):
        fill_gaps(np.zeros((4, 2, 2), np.float64), inplace=True)
    f, fl = fill_gaps(np.zeros((0, 2, 2), np.float32))
    assert f.shape == fl.shape == (0, 2, 2)


def test_flag_legend_and_decoding():
    leg = flag_legend("tmwm", h_same=2, h_neib=1, h_annual=2, outliers=False)
    assert list(leg) == [0, 1, 2, 41, 81, 82, 255]
    assert "same season" in leg[2] and "t-2..t+2" in leg[2]
    past = flag_legend("tmwm", h_same=1, h_neib=0, h_annual=0, direction="past")
    assert past[1] == "median of the same season in year t-1 (TMWM phase 1, h=1)"
    assert 129 in past and 254 in past
    assert list(flag_legend("linear", outliers=False)) == [0, 121, 122, 255]
    assert list(flag_legend("none")) == [0, 255]
    # with the season size, windows that add nothing new are left out (81 lies inside 41)
    assert list(flag_legend("tmwm", h_same=2, h_neib=1, h_annual=2, season_size=4, outliers=False)) == [
        0, 1, 2, 41, 82, 255]
    # S=1: neighbouring windows h=2, 3 add offsets ±3, ±4
    assert list(flag_legend("tmwm", h_same=2, h_neib=3, h_annual=3, season_size=1, outliers=False)) == [
        0, 1, 2, 42, 43, 255]
    json.dumps(FLAG_LEGEND)  # serialisable for STAC
    for code in FLAG_LEGEND:
        info = decode_flag(code)
        assert info.code == code
        if info.phase in (1, 2, 3):
            assert flag_code(info.phase, info.h) == code & 127
    with pytest.raises(ConfigError):
        decode_flag(126)
    phases = flag_phase(np.array([0, 1, 40, 41, 81, 121, 122, 129, 249, 254, 255], np.uint8))
    assert phases.tolist() == [0, 1, 1, 2, 3, 4, 4, 1, 4, 255, 255]


def test_candidate_windows_documented_offsets():
    w = candidate_windows(4, 2, 1, 2)
    assert [(x.code, x.offsets) for x in w] == [
        (1, (-4, 4)), (2, (-8, -4, 4, 8)), (41, (-5, -3, -1, 1, 3, 5)), (81, (-1, 1)), (82, (-2, -1, 1, 2))]
    w = candidate_windows(12, 1, 1, 0, "future")
    assert [x.offsets for x in w] == [(12,), (1, 11, 13)]


def _run_config(tmp_path, gapfill):
    from ecocube.config import config_from_dict

    data = {
        "aoi": {"tiles": ["X0000_Y0000"]},
        "inputs": {"periods": {"start_year": 2018, "end_year": 2023, "season_size": 4},
                   "sources": [{"name": "s2", "href": "x/{band}.tif", "bands": ["red", "nir"]}]},
        "gapfill": gapfill,
        "model": {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]},
    }
    return config_from_dict(data, base_dir=tmp_path)


def test_fill_gaps_config(tmp_path, synthetic_cube):
    cfg = _run_config(tmp_path, {"method": "tmwm", "h_same": 3, "h_neib": 1, "h_annual": 1, "shared_flags": True})
    got = fill_gaps_config(synthetic_cube, cfg, threads=1)
    assert_same(got, fill_gaps(synthetic_cube, season_size=4, h_same=3, h_neib=1, h_annual=1, shared_flags=True))
    work = synthetic_cube.copy()
    assert_same(fill_gaps_config(work, cfg, inplace=True), got)
    np.testing.assert_array_equal(work, got[0])
    sub = np.ascontiguousarray(synthetic_cube[:, :, :3, :3])
    assert_same(fill_gaps_config(sub, cfg), ref_fill(sub, season_size=4, h_same=3, h_neib=1, h_annual=1,
                                                     shared_flags=True))
    from ecocube.gapfill import flag_legend_config

    assert list(flag_legend_config(cfg)) == [0, 1, 2, 3, 41, 255]
    none = fill_gaps_config(synthetic_cube, _run_config(tmp_path, {"method": "none"}))
    np.testing.assert_array_equal(none[0], synthetic_cube)
    np.testing.assert_array_equal(none[1], np.where(np.isnan(synthetic_cube), 255, 0))
    assert none[1].dtype == np.uint8


# --------------------------------------------------------------------------- real data
# Mask real clear values, fill, compare with the truth, per flag phase.


def _monthly_ndvi(data_dir):
    d = data_dir / "eolearn-si-ndvi"
    ndvi = np.load(d / "NDVI.npy")[..., 0]
    clm = np.load(d / "CLM.npy")[..., 0]
    is_data = np.load(d / "IS_DATA.npy")[..., 0]
    stamps = [dt.datetime.fromisoformat(s) for s in json.loads((d / "timestamps.json").read_text())]
    first = stamps[0].year * 12 + stamps[0].month - 1
    months = np.array([s.year * 12 + s.month - 1 - first for s in stamps])
    ndvi = np.where((clm == 0) & (is_data == 1), ndvi, np.nan)
    cube = np.full((months.max() + 1,) + ndvi.shape[1:], np.nan, np.float32)
    for m in range(cube.shape[0]):
        sel = ndvi[months == m]
        if len(sel):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-cloudy pixels stay NaN
                cube[m] = np.nanmedian(sel, axis=0)
    return cube, stamps[0].month  # (30 months, 101, 100), first month (July)


def _quarterly_landsat(data_dir, tmp_path):
    import rasterio

    with tarfile.open(data_dir / "landsat-pixel-series" / "p035r032_testdata.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    by_quarter: dict[int, list[np.ndarray]] = {}
    for path in sorted((tmp_path / "p035r032" / "images").glob("*/*_stack.gtif")):
        day = dt.datetime.strptime(path.parent.name[9:16], "%Y%j").date()
        with rasterio.open(path) as src:
            a = src.read().astype(np.float32)
        red, nir, fmask = a[2], a[3], a[7]
        ok = (fmask == 0) & (red > 0) & (nir > 0)
        ndvi = np.where(ok, (nir - red) / (nir + red), np.nan)
        by_quarter.setdefault((day.year - 1984) * 4 + (day.month - 1) // 3, []).append(ndvi)
    cube = np.full((30 * 4, 5, 5), np.nan, np.float32)
    for q, stack in by_quarter.items():
        s = np.stack(stack)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            cube[q] = np.nanmedian(s, axis=0)
    return cube


def holdout_errors(cube, season_size, *, frac=0.2, seed=0, **kw):
    """Hide a fraction of real observed values, fill, and return the errors per phase."""
    rng = np.random.default_rng(seed)
    obs = ~np.isnan(cube)
    hide = obs & (rng.random(cube.shape) < frac)
    masked = cube.copy()
    masked[hide] = np.nan
    filled, flags = fill_gaps(masked, season_size=season_size, **kw)
    lin, _ = fill_gaps(masked, method="linear", season_size=season_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        naive = np.broadcast_to(np.nanmean(masked, axis=0), cube.shape)  # the pixel's mean
    err = np.abs(filled - cube)[hide]
    phase = flag_phase(flags)[hide]
    table = {}
    for p, name in [(1, "same season"), (2, "neighbouring seasons"), (3, "contiguous")]:
        sel = phase == p
        if sel.any():
            table[name] = (int(sel.sum()), float(err[sel].mean()))
    ok = ~np.isnan(err)
    table["TMWM all"] = (int(ok.sum()), float(err[ok].mean()))
    table["unfilled"] = (int((phase == 255).sum()), float("nan"))
    both = ok & ~np.isnan(naive[hide]) & ~np.isnan(lin[hide])
    table["linear (same values)"] = (int(both.sum()), float(np.abs(lin - cube)[hide][both].mean()))
    table["TMWM (same values)"] = (int(both.sum()), float(err[both].mean()))
    table["pixel mean (same values)"] = (int(both.sum()), float(np.abs(naive - cube)[hide][both].mean()))
    return table


def format_table(title, table):
    lines = [f"{title}", f"{'phase':28s} {'n':>7s} {'MAE':>8s}"]
    lines += [f"{k:28s} {n:7d} {m:8.4f}" for k, (n, m) in table.items()]
    return "\n".join(lines)


def test_real_ndvi_sentinel2_monthly(data_dir):
    cube, _ = _monthly_ndvi(data_dir)
    assert cube.shape == (30, 101, 100)
    table = holdout_errors(cube, 12, h_same=2, h_neib=1, h_annual=2)
    print(format_table("eo-learn S2 NDVI, monthly composites, 20 % of clear values hidden", table))
    n_hidden = table["TMWM all"][0] + table["unfilled"][0]
    assert table["unfilled"][0] <= 0.01 * n_hidden
    assert table["TMWM (same values)"][1] < 0.7 * table["pixel mean (same values)"][1]
    assert table["same season"][1] < table["pixel mean (same values)"][1]
    assert 0.0 < table["TMWM all"][1] < 0.12  # NDVI units


@pytest.mark.slow
def test_real_landsat_quarterly(data_dir, tmp_path):
    cube = _quarterly_landsat(data_dir, tmp_path)
    assert 0.3 < np.isnan(cube).mean() < 0.8  # real cloud and acquisition gaps
    table = holdout_errors(cube, 4, h_same=3, h_neib=1, h_annual=2)
    print(format_table("Landsat p035r032 NDVI, quarterly composites 1984-2013, 20 % hidden", table))
    assert table["unfilled"][0] == 0
    assert table["TMWM (same values)"][1] < 0.8 * table["pixel mean (same values)"][1]
    assert table["same season"][1] < table["pixel mean (same values)"][1]


# --------------------------------------------------------------------------- CLI


def _write_stack(folder, cube, *, dtype="float32", nodata=None, scale=None):
    import rasterio
    from affine import Affine

    folder.mkdir(parents=True, exist_ok=True)
    transform = Affine(9.99479222, 0, 465181.0522318204, 0, -9.99744847, 5080254.63349641)
    paths = []
    for k, band in enumerate(cube):
        path = folder / f"ndvi_{k:02d}.tif"
        data = band
        if np.dtype(dtype).kind == "i":
            data = np.where(np.isnan(band), nodata, np.rint(band / scale)).astype(dtype)
        with rasterio.open(path, "w", driver="GTiff", width=band.shape[1], height=band.shape[0], count=1,
                           dtype=dtype, crs="EPSG:32633", transform=transform, nodata=nodata) as dst:
            dst.write(data, 1)
            if scale:
                dst.scales = (scale,)
        paths.append(path)
    return paths


def _read(path):
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1), src.profile, src.tags(), src.scales


@pytest.mark.slow
def test_cli_real_geotiffs_float(data_dir, tmp_path):
    from click.testing import CliRunner

    from ecocube.cli import cli

    cube, _ = _monthly_ndvi(data_dir)
    paths = _write_stack(tmp_path / "in", cube)
    out = tmp_path / "out"
    args = ["gapfill", *map(str, paths), "--season-size", "12", "--out", str(out), "--block-size", "32",
            "--h-same", "2", "--threads", "2"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    want_f, want_fl = fill_gaps(cube, season_size=12, h_same=2, h_neib=1, h_annual=2)
    for k, p in enumerate(paths):
        filled, prof, tags, _ = _read(out / "filled" / p.name)
        flags, fprof, ftags, _ = _read(out / "flags" / p.name)
        np.testing.assert_array_equal(filled, want_f[k])
        np.testing.assert_array_equal(flags, want_fl[k])
        assert prof["dtype"] == "float32" and fprof["dtype"] == "uint8" and fprof["nodata"] is None
        assert json.loads(ftags["ECOCUBE_FLAG_LEGEND"])["1"].startswith("median of the same season")
        assert json.loads(tags["ECOCUBE_GAPFILL"])["season_size"] == 12
    n_gaps = int(np.isnan(cube).sum())
    assert f"of {n_gaps} gaps filled" in res.output
    assert sorted(p.name for p in out.rglob(".*")) == []  # no temporary files left
    # outputs exist: refused without --overwrite, replaced with it
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0 and isinstance(res.exception, FileExistsError)
    assert "--overwrite" in str(res.exception)
    res = CliRunner().invoke(cli, [*args, "--overwrite", "--method", "linear"], catch_exceptions=False)
    assert res.exit_code == 0
    np.testing.assert_array_equal(_read(out / "flags" / paths[3].name)[0],
                                  fill_gaps(cube, method="linear")[1][3])


@pytest.mark.slow
def test_cli_int16_scaled_nodata(data_dir, tmp_path):
    from ecocube.gapfill_stack import fill_raster_stack

    cube, _ = _monthly_ndvi(data_dir)
    cube = cube[:, :40, :37]
    paths = _write_stack(tmp_path / "in", cube, dtype="int16", nodata=-32768, scale=0.0001)
    raw = np.stack([_read(p)[0] for p in paths])
    summary = fill_raster_stack(paths, tmp_path / "out", season_size=12, block_size=16, threads=1)
    dn = np.where(raw == -32768, np.nan, raw.astype(np.float32))
    want_f, want_fl = fill_gaps(dn, season_size=12)
    assert summary["gaps"] == int((raw == -32768).sum()) and summary["unfilled"] == int((want_fl == 255).sum())
    for k, p in enumerate(paths):
        got, prof, _, scales = _read(tmp_path / "out" / "filled" / p.name)
        assert prof["dtype"] == "int16" and prof["nodata"] == -32768 and scales == (0.0001,)
        obs = raw[k] != -32768
        np.testing.assert_array_equal(got[obs], raw[k][obs])  # observed DN exactly as read
        fill = want_fl[k] != 0
        expect = np.where(np.isnan(want_f[k]), -32768, np.rint(np.nan_to_num(want_f[k]))).astype(np.int16)
        np.testing.assert_array_equal(got[fill], expect[fill])


@pytest.mark.slow
def test_cli_rejects_bad_stacks(tmp_path):
    import subprocess
    import sys

    import rasterio
    from affine import Affine

    good = _write_stack(tmp_path / "a", np.ones((2, 8, 8), np.float32))
    other = tmp_path / "b" / "other.tif"
    other.parent.mkdir()
    with rasterio.open(other, "w", driver="GTiff", width=9, height=8, count=1, dtype="float32",
                       crs="EPSG:32633", transform=Affine(10, 0, 0, 0, -10, 80)) as dst:
        dst.write(np.ones((1, 8, 9), np.float32))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "ecocube", "gapfill", *map(str, args)],
                              check=False, capture_output=True, text=True, timeout=120)

    res = run(*good, other, "--season-size", 4, "--out", tmp_path / "o")
    assert res.returncode == 2 and "ecocube: error:" in res.stderr
    assert "size 9x8 differs" in res.stderr and "other.tif" in res.stderr
    res = run(good[0], good[0], "--season-size", 4, "--out", tmp_path / "o")
    assert res.returncode == 2 and "unique" in res.stderr
    assert not list((tmp_path / "o").rglob("*.tif"))


def test_cli_integer_masked_without_nodata_and_options(tmp_path):
    """uint16 inputs with an internal mask and no nodata: unfilled pixels go to the mask."""
    import rasterio
    from affine import Affine
    from click.testing import CliRunner

    from ecocube.cli import cli

    rng = np.random.default_rng(3)
    truth = rng.integers(100, 2000, (12, 5, 6)).astype(np.uint16)
    masks = np.where(rng.random(truth.shape) < 0.4, 0, 255).astype(np.uint8)
    masks[:, 0, 0] = 0  # a pixel never observed
    paths = []
    for k in range(12):
        path = tmp_path / "in" / f"p{k:02d}.tif"
        path.parent.mkdir(exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", width=6, height=5, count=1, dtype="uint16",
                           crs="EPSG:32633", transform=Affine(10, 0, 0, 0, -10, 50)) as dst:
            dst.write(truth[k], 1)
            dst.write_mask(masks[k])
        paths.append(path)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["gapfill", *map(str, paths), "--season-size", "4", "--out", str(out),
                                   "--direction", "past", "--outlier-percentiles", "5", "95", "--h-neib", "2"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    cube = np.where(masks == 0, np.nan, truth.astype(np.float32))
    want_f, want_fl = fill_gaps(cube, season_size=4, direction="past", outlier_percentiles=(5, 95), h_neib=2)
    for k, p in enumerate(paths):
        with rasterio.open(out / "filled" / p.name) as src:
            got, got_mask = src.read(1), src.read_masks(1)
            assert src.nodata is None
        flags = _read(out / "flags" / p.name)[0]
        np.testing.assert_array_equal(flags, want_fl[k])
        np.testing.assert_array_equal(got_mask == 0, np.isnan(want_f[k]))
        ok = ~np.isnan(want_f[k])
        expect = np.where(want_fl[k] == 0, truth[k], np.rint(np.nan_to_num(want_f[k])).astype(np.uint16))
        np.testing.assert_array_equal(got[ok], expect[ok])
    assert flags[0, 0] == FLAG_UNFILLED
    outliers = [(f >= 129) & (f <= 254) for f in (_read(out / "flags" / p.name)[0] for p in paths)]
    assert sum(int(o.sum()) for o in outliers) == int(((want_fl >= 129) & (want_fl <= 254)).sum()) > 0
