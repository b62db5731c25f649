"""Covariates, predict masks and the choice of feature bands (percentile feature sets)."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.windows import Window

from ecocube.config import config_from_dict
from ecocube.covariates import feature_bands, run_feature_names, slope_degrees, year_features
from ecocube.features import feature_names, features_for_year

MODEL = {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]}


def _cfg(**extra) -> object:
    data = {
        "aoi": {"tiles": ["X0000_Y0000"]},
        "grid": {"crs": "EPSG:32631", "origin": [0, 640], "pixel_size": 10, "tile_size": 8},
        "inputs": {"periods": {"start_year": 2019, "end_year": 2020, "season_size": 2},
                   "composite": {"extra_percentiles": [25, 75]},
                   "sources": [{"name": "s2", "kind": "acquisitions", "href": "/d/{yyyymmdd}_{band}.tif",
                                "bands": ["B04", "B08"], "dates": ["2019-01-05"]}]},
        "model": MODEL,
        "features": {"statistics": []},  # per-period values only: the column layout these tests check
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data)


def test_slope_of_planes_is_their_gradient_angle():
    y, x = np.mgrid[0:7, 0:9].astype(np.float64)
    assert np.allclose(slope_degrees(3.0 * x * 10, 10, 10), np.degrees(np.arctan(3.0)))  # 3 m per 1 m
    assert np.allclose(slope_degrees(0.5 * y * 20 + 100, 10, 20), np.degrees(np.arctan(0.5)))
    assert slope_degrees(np.zeros((4, 4)), 10, 10).shape == (2, 2)
    dem = 0.1 * x * 10
    dem[3, 4] = np.nan
    s = slope_degrees(dem, 10, 10)
    # Horn's gradient leaves the centre out: the 8 outputs around the NaN are NaN
    ring = np.isnan(s[1:4, 2:5])
    assert ring.sum() == 8 and not ring[1, 1] and np.isfinite(s).sum() == s.size - 8


def test_percentile_bands_are_feature_sets_chosen_in_features():
    cfg = _cfg(features={"indices": ["ndvi"], "bands": ["B04", "B08", "B04_p25", "B08_p75"]})
    read_bands = ("B04", "B08", "B04_p25", "B08_p25", "B04_p75", "B08_p75")
    sel, chosen = feature_bands(cfg, read_bands)
    assert sel == [0, 1, 2, 5] and chosen == ("B04", "B08", "B04_p25", "B08_p75")
    names = run_feature_names(cfg, read_bands, feature_names)
    assert names == ["B04_s1", "B04_s2", "B08_s1", "B08_s2", "B04_p25_s1", "B04_p25_s2", "B08_p75_s1", "B08_p75_s2",
                     "ndvi_s1", "ndvi_s2"]
    rng = np.random.default_rng(0)
    cube = rng.random((4, 6, 3, 5)).astype(np.float32)  # 2 years x 2 seasons
    X = year_features(cfg, cube, read_bands, 1, None, Window(0, 0, 5, 3), features_for_year)
    assert X.shape == (15, 10)
    np.testing.assert_array_equal(X[:, 4], cube[2, 2].ravel())  # B04_p25, 2020 season 1
    np.testing.assert_array_equal(X[:, 7], cube[3, 5].ravel())  # B08_p75, 2020 season 2
    red, nir = cube[3, 0].ravel(), cube[3, 1].ravel()
    np.testing.assert_allclose(X[:, 9], (nir - red) / (nir + red), rtol=1e-6)  # ndvi_s2 from B04/B08
    # an index needs a band recognised as nir among the chosen ones ("B08_p75" is not one)
    with pytest.raises(Exception, match="needs the nir band"):
        year_features(_cfg(features={"indices": ["ndvi"], "bands": ["B04", "B04_p25"]}), cube, read_bands, 0, None,
                      Window(0, 0, 5, 3), features_for_year)


def test_default_features_are_every_read_band_then_the_covariates():
    cfg = _cfg(inputs={"periods": {"start_year": 2019, "end_year": 2019, "season_size": 1},
                       "sources": [{"name": "s2", "href": "/d/{year}_{band}.tif", "bands": ["B04"]}],
                       "covariates": [{"name": "elevation", "href": "/d/dem.tif"},
                                      {"name": "slope", "href": "/d/dem.tif", "derive": "slope"}]},
               features={"indices": [], "covariates": ["slope"]})
    assert run_feature_names(cfg, ("B04",), feature_names) == ["B04_s1", "slope"]


def test_config_refuses_unknown_feature_bands_and_covariates():
    from ecocube.errors import ConfigError

    with pytest.raises(ConfigError, match=r"features.bands \['B04_p50'\]: choose among the bands read: B04, B08, "
                                          r"B04_p25, B08_p25, B04_p75, B08_p75"):
        _cfg(features={"bands": ["B04_p50"]})
    with pytest.raises(ConfigError, match=r"covariates \['dem'\] are not in inputs.covariates \(none\)"):
        _cfg(model={**MODEL, "predict_where": [{"covariate": "dem", "max": 40}]})
    with pytest.raises(ConfigError, match="needs 'min' and/or 'max'"):
        _cfg(model={**MODEL, "predict_where": [{"covariate": "dem"}]})
