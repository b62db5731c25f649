"""Feature derivation: names, column order, row order, index formulas, band-name mapping."""

from __future__ import annotations

import numpy as np
import pytest

from ecocube.errors import ConfigError
from ecocube.features import BAND_ALIASES, band_roles, feature_names, features_for_year


def test_feature_names_order():
    names = feature_names(["red", "nir"], 4, ["ndvi"])
    assert names == ["red_s1", "red_s2", "red_s3", "red_s4", "nir_s1", "nir_s2", "nir_s3", "nir_s4",
                     "ndvi_s1", "ndvi_s2", "ndvi_s3", "ndvi_s4"]
    assert feature_names(["B04", "B08"], 1) == ["B04_s1", "B08_s1"]


def test_missing_band_names_the_role_and_the_accepted_names():
    with pytest.raises(ConfigError, match=r"index 'ndvi' needs the red band.*B04"):
        feature_names(["blue", "nir"], 2, ["ndvi"])
    with pytest.raises(ConfigError, match="unknown spectral index 'foo'"):
        feature_names(["red", "nir"], 2, ["foo"])
    with pytest.raises(ConfigError, match="unique"):
        feature_names(["red", "red"], 2)


def test_sentinel2_and_common_names_map_to_the_same_roles():
    s2 = band_roles(["B02", "B03", "B04", "B08", "B11", "B12"], ["evi", "ndwi", "nbr", "ndmi"])
    common = band_roles(["Blue", "GREEN", "red", "nir", "swir1", "swir2"], ["evi", "ndwi", "nbr", "ndmi"])
    assert s2 == common == {"nir": 3, "red": 2, "blue": 0, "green": 1, "swir2": 5, "swir1": 4}
    # B08 is preferred over B8A when both are present
    assert band_roles(["B8A", "B04", "B08"], ["ndvi"])["nir"] == 2
    assert set(BAND_ALIASES) == {"blue", "green", "red", "nir", "swir1", "swir2"}


def _cube(years=2, season=4, bands=6, h=3, w=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.01, 0.6, (years * season, bands, h, w)).astype(np.float32)


def test_columns_rows_and_index_values():
    bands = ["B02", "B03", "B04", "B08", "B11", "B12"]
    indices = ["ndvi", "ndwi", "nbr", "ndmi", "evi", "savi"]
    cube = _cube()
    X = features_for_year(cube, bands=bands, season_size=4, year_index=1, indices=indices)
    names = feature_names(bands, 4, indices)
    assert X.shape == (15, len(names)) and X.dtype == np.float32 and X.flags.c_contiguous
    col = {n: i for i, n in enumerate(names)}
    # pixel (y=2, x=3) is row 2*5+3; season 3 of year 1 is time 4+2
    r, t = 2 * 5 + 3, 6
    blue, green, red, nir, sw1, sw2 = (float(cube[t, b, 2, 3]) for b in range(6))
    assert X[r, col["B08_s3"]] == cube[t, 3, 2, 3]
    expected = {
        "ndvi": (nir - red) / (nir + red),
        "ndwi": (green - nir) / (green + nir),
        "nbr": (nir - sw2) / (nir + sw2),
        "ndmi": (nir - sw1) / (nir + sw1),
        "evi": 2.5 * (nir - red) / (nir + 6 * red - 7.5 * blue + 1),
        "savi": 1.5 * (nir - red) / (nir + red + 0.5),
    }
    for index, value in expected.items():
        assert X[r, col[f"{index}_s3"]] == pytest.approx(value, rel=1e-5), index
    # the whole band block equals a transpose of the year's cube
    year = cube[4:8]
    np.testing.assert_array_equal(X[:, :24], year.transpose(1, 0, 2, 3).reshape(24, 15).T)


def test_gaps_stay_nan_and_zero_denominator_is_zero():
    cube = _cube(years=1, bands=2)
    cube[1, 0, 0, 0] = np.nan  # red gap in season 2
    cube[2, :, 1, 1] = 0.0  # red = nir = 0 in season 3
    X = features_for_year(cube, bands=["red", "nir"], season_size=4, year_index=0, indices=["ndvi"])
    names = feature_names(["red", "nir"], 4, ["ndvi"])
    assert np.isnan(X[0, names.index("red_s2")]) and np.isnan(X[0, names.index("ndvi_s2")])
    assert X[1 * 5 + 1, names.index("ndvi_s3")] == 0.0
    assert np.isfinite(np.delete(X, 0, axis=0)).all()


def test_bad_shapes_and_years():
    cube = _cube(years=2, bands=2)
    with pytest.raises(ValueError, match="outside the cube"):
        features_for_year(cube, bands=["red", "nir"], season_size=4, year_index=2)
    with pytest.raises(ValueError, match="2 bands"):
        features_for_year(cube, bands=["red"], season_size=4, year_index=0)
    with pytest.raises(ValueError, match="time, band, y, x"):
        features_for_year(cube[0], bands=["red", "nir"], season_size=4, year_index=0)


# ---------------------------------------------------------------------- temporal statistics


def test_temporal_statistics_match_numpy_and_skip_gaps():
    import warnings

    from ecocube.features import TEMPORAL_STATISTICS, temporal_statistics

    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 3, 12)).astype(np.float32)
    a[0, 0, 3] = np.nan  # one gap
    a[1, 1] = np.nan  # a series without any value
    got = temporal_statistics(a).reshape(40, 3, len(TEMPORAL_STATISTICS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = {"min": np.nanmin(a, 2), "max": np.nanmax(a, 2), "mean": np.nanmean(a, 2), "std": np.nanstd(a, 2),
               **{f"p{q}": np.nanpercentile(a, q, axis=2) for q in (10, 25, 50, 75, 90)}}
    ref["amplitude"] = ref["max"] - ref["min"]
    for k, name in enumerate(TEMPORAL_STATISTICS[:10]):
        np.testing.assert_allclose(got[..., k], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.isnan(got[1, 1]).all() and not np.isnan(got[0, 0]).any()
    # period numbers (1-based) of the maximum and minimum; the gap is never chosen
    b = np.array([[[0.1, 0.9, np.nan, 0.3]]], np.float32)
    s = temporal_statistics(b)[0]
    assert s[TEMPORAL_STATISTICS.index("argmax")] == 2 and s[TEMPORAL_STATISTICS.index("argmin")] == 1
    assert s[TEMPORAL_STATISTICS.index("p50")] == pytest.approx(0.3)


def test_statistics_columns_follow_the_per_period_values():
    cube = np.random.default_rng(1).uniform(0.01, 0.5, (8, 2, 3, 4)).astype(np.float32)  # 2 years x 4
    names = feature_names(["red", "nir"], 4, ["ndvi"], ["min", "argmax"])
    assert names[12:] == ["red_min", "red_argmax", "nir_min", "nir_argmax", "ndvi_min", "ndvi_argmax"]
    X = features_for_year(cube, bands=["red", "nir"], season_size=4, year_index=1, indices=["ndvi"],
                          statistics=["min", "argmax"])
    assert X.shape == (12, 18)
    year = cube[4:8]
    np.testing.assert_allclose(X[:, names.index("nir_min")], year[:, 1].min(axis=0).ravel())
    np.testing.assert_array_equal(X[:, names.index("red_argmax")], year[:, 0].argmax(axis=0).ravel() + 1)
    ndvi = (year[:, 1] - year[:, 0]) / (year[:, 1] + year[:, 0])
    np.testing.assert_allclose(X[:, names.index("ndvi_min")], ndvi.min(axis=0).ravel(), rtol=1e-6)
    # the config offers exactly these statistics, all by default
    from ecocube.config import FeaturesConfig
    from ecocube.features import TEMPORAL_STATISTICS

    assert FeaturesConfig().statistics == TEMPORAL_STATISTICS
    with pytest.raises(ConfigError, match="unknown temporal statistic"):
        feature_names(["red"], 4, (), ["median"])
