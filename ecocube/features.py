"""Cube -> pixel × feature matrix, with stable feature names. No I/O.

The features of year ``Y`` are the ``S`` seasonal values (``season_size`` periods per year)
of every band, then of every spectral index, in this order::

    <band1>_s1 .. <band1>_sS, <band2>_s1 .. <band2>_sS, ..., <index1>_s1 .. <index1>_sS, ...

then, with ``statistics`` (``features.statistics``), the statistics of every band and index
over the year's periods (:func:`temporal_statistics`)::

    <band1>_min, <band1>_max, ..., <band1>_argmin, <band2>_min, ..., <index1>_min, ...

Band names are kept as the run configuration spells them; index names are lower case.

**Default set** (chosen by ``scripts/bench/quality.py``: polygon-grouped CV on the two real
datasets of ``tests/data``): the per-period values of the bands and indices plus all twelve
temporal statistics. With monthly periods (``season_size: 12``) a 200-tree random forest
scored weighted F1 0.655 (Flanders) and 0.619 (Slovenia) on them, against 0.633/0.545 for
quarterly values and 0.613/0.610 for monthly values without statistics (README table).
Rows are pixels in row-major ``(y, x)`` order, so ``row = y * width + x``.

Spectral indices need to know which band is which. A band is recognised by its name,
case-insensitively, through :data:`BAND_ALIASES`:

==========  ==========================================  ============================
role        accepted band names                          Sentinel-2 / Landsat 8-9
==========  ==========================================  ============================
``blue``    blue, B02, B2                                 S2 B02 / L8 B2
``green``   green, B03, B3                                S2 B03 / L8 B3
``red``     red, B04, B4                                  S2 B04 / L8 B4
``nir``     nir, B08, B8, B8A                             S2 B08 (B8A if B08 absent) / L8 B5 is *not* mapped
``swir1``   swir1, swir16, B11                            S2 B11 / L8 B6 is *not* mapped
``swir2``   swir2, swir22, B12                            S2 B12 / L8 B7 is *not* mapped
==========  ==========================================  ============================

Landsat numeric band names (B5, B6, B7) are ambiguous between sensors and are therefore
not mapped: name those bands ``nir``/``swir1``/``swir2`` in the configuration.

Index formulas (inputs are reflectances, i.e. already scaled):

- ``ndvi`` = (nir - red) / (nir + red)
- ``ndwi`` = (green - nir) / (green + nir)                (McFeeters 1996)
- ``nbr``  = (nir - swir2) / (nir + swir2)
- ``ndmi`` = (nir - swir1) / (nir + swir1)
- ``evi``  = 2.5 (nir - red) / (nir + 6 red - 7.5 blue + 1)
- ``savi`` = 1.5 (nir - red) / (nir + red + 0.5)

A gap (NaN) in an input band gives NaN in the index: gaps are never hidden here. Where a
denominator is exactly zero (e.g. both bands 0 for a normalised difference) the index is
0, a defined value rather than ``inf``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import ConfigError

#: role -> band names that play it (case-insensitive), in order of preference
BAND_ALIASES: dict[str, tuple[str, ...]] = {
    "blue": ("blue", "B02", "B2"),
    "green": ("green", "B03", "B3"),
    "red": ("red", "B04", "B4"),
    "nir": ("nir", "B08", "B8", "B8A"),
    "swir1": ("swir1", "swir16", "B11"),
    "swir2": ("swir2", "swir22", "B12"),
}

#: index -> band roles it needs
INDEX_BANDS: dict[str, tuple[str, ...]] = {
    "ndvi": ("nir", "red"),
    "ndwi": ("green", "nir"),
    "nbr": ("nir", "swir2"),
    "ndmi": ("nir", "swir1"),
    "evi": ("nir", "red", "blue"),
    "savi": ("nir", "red"),
}


def band_roles(bands: Sequence[str], indices: Sequence[str]) -> dict[str, int]:
    """Map each band role the ``indices`` need to the position of its band in ``bands``.

    Raises :class:`ConfigError` naming the index and the missing role (with the band names
    that would satisfy it) when a band is absent, or when an index is unknown.
    """
    lower = [b.lower() for b in bands]
    roles: dict[str, int] = {}
    for index in indices:
        if index not in INDEX_BANDS:
            raise ConfigError(f"unknown spectral index {index!r}; known: {', '.join(sorted(INDEX_BANDS))}")
        for role in INDEX_BANDS[index]:
            if role in roles:
                continue
            pos = next((lower.index(a.lower()) for a in BAND_ALIASES[role] if a.lower() in lower), None)
            if pos is None:
                raise ConfigError(
                    f"index {index!r} needs the {role} band, but none of the bands {list(bands)} is "
                    f"recognised as {role} (accepted names: {', '.join(BAND_ALIASES[role])}, any case)"
                )
            roles[role] = pos
    return roles


def _check_statistics(statistics: Sequence[str]) -> None:
    unknown = [s for s in statistics if s not in TEMPORAL_STATISTICS]
    if unknown:
        raise ConfigError(f"unknown temporal statistic(s) {unknown}; known: {', '.join(TEMPORAL_STATISTICS)}")


def feature_names(bands: Sequence[str], season_size: int, indices: Sequence[str] = (),
                  statistics: Sequence[str] = ()) -> list[str]:
    """Names of the feature columns, in the order :func:`features_for_year` returns them."""
    if season_size < 1:
        raise ConfigError(f"season_size must be >= 1, got {season_size}")
    if len(set(bands)) != len(bands):
        raise ConfigError(f"band names must be unique, got {list(bands)}")
    band_roles(bands, indices)  # validate early: same error as features_for_year
    _check_statistics(statistics)
    names = [f"{b}_s{s}" for b in bands for s in range(1, season_size + 1)]
    names += [f"{i}_s{s}" for i in indices for s in range(1, season_size + 1)]
    names += [f"{v}_{s}" for v in list(bands) + list(indices) for s in statistics]
    return names


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (NaN inputs stay NaN)."""
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float32)
    np.divide(num, den, out=out, where=den != 0)
    gap = np.isnan(num) | np.isnan(den)
    out[gap] = np.nan
    return out


def compute_index(index: str, get) -> np.ndarray:
    """Index ``index`` from ``get(role) -> float32 array``."""
    if index == "evi":
        nir, red, blue = get("nir"), get("red"), get("blue")
        return 2.5 * _ratio(nir - red, nir + 6.0 * red - 7.5 * blue + 1.0)
    if index == "savi":
        nir, red = get("nir"), get("red")
        return 1.5 * _ratio(nir - red, nir + red + 0.5)
    a, b = INDEX_BANDS[index]
    x, y = get(a), get(b)
    return _ratio(x - y, x + y)


def features_for_year(
    filled: np.ndarray,
    *,
    bands: Sequence[str],
    season_size: int,
    year_index: int,
    indices: Sequence[str] = (),
    statistics: Sequence[str] = (),
) -> np.ndarray:
    """Features of one year from a ``(time, band, y, x)`` cube.

    ``year_index`` 0 is the first year of the cube (``start_year``); the year's periods are
    ``time[year_index * season_size : (year_index + 1) * season_size]``. Returns a C-ordered
    ``(y * x, n_features)`` float32 array whose columns follow :func:`feature_names`.
    NaN gaps left in ``filled`` stay NaN (the caller decides what to do with them).
    """
    cube = np.asarray(filled)
    if cube.ndim != 4:
        raise ValueError(f"expected a (time, band, y, x) cube, got shape {cube.shape}")
    n_time, n_band, height, width = cube.shape
    if n_band != len(bands):
        raise ValueError(f"cube has {n_band} bands but {len(bands)} band names were given: {list(bands)}")
    names = feature_names(bands, season_size, indices, statistics)
    t0 = year_index * season_size
    if year_index < 0 or t0 + season_size > n_time:
        n_years = n_time // season_size
        raise ValueError(
            f"year_index {year_index} is outside the cube: {n_time} periods at {season_size} per year "
            f"hold {n_years} year(s)"
        )
    year = cube[t0 : t0 + season_size]
    n_pix = height * width
    out = np.empty((n_pix, len(names)), dtype=np.float32)
    col = 0
    for b in range(n_band):
        for s in range(season_size):
            out[:, col] = year[s, b].reshape(n_pix)
            col += 1
    if indices:
        roles = band_roles(bands, indices)
        for index in indices:
            for s in range(season_size):
                def get(role, _s=s):
                    return year[_s, roles[role]].astype(np.float32, copy=False).reshape(n_pix)

                out[:, col] = compute_index(index, get)
                col += 1
    if statistics:
        n_var = n_band + len(indices)
        series = out[:, :col].reshape(n_pix, n_var, season_size)
        picked = [TEMPORAL_STATISTICS.index(s) for s in statistics]
        stats = temporal_statistics(series).reshape(n_pix, n_var, len(TEMPORAL_STATISTICS))[:, :, picked]
        out[:, col:] = stats.reshape(n_pix, n_var * len(picked))
    return out


# ---------------------------------------------------------------------- temporal statistics

#: per-variable statistics over the periods of a year, in column order
TEMPORAL_STATISTICS: tuple[str, ...] = ("min", "max", "mean", "std", "p10", "p25", "p50", "p75", "p90",
                                        "amplitude", "argmax", "argmin")


def temporal_statistic_names(variables: Sequence[str]) -> list[str]:
    """Names of the columns :func:`temporal_statistics` returns: ``<variable>_<statistic>``."""
    return [f"{v}_{s}" for v in variables for s in TEMPORAL_STATISTICS]


def temporal_statistics(series: np.ndarray) -> np.ndarray:
    """Per-variable statistics over time of ``(n_pixels, n_variables, n_periods)`` values.

    Returns ``(n_pixels, n_variables * len(TEMPORAL_STATISTICS))`` float32, variables
    outer, statistics inner (:data:`TEMPORAL_STATISTICS`): min, max, mean, standard
    deviation (population), the 10/25/50/75/90th percentiles (linear interpolation, as
    ``numpy.percentile``), amplitude (max - min) and the period number (1-based) of the
    maximum and of the minimum. NaN values are left out of every statistic; a series with
    no value gives NaN everywhere.
    """
    a = np.asarray(series, dtype=np.float32)
    if a.ndim != 3:
        raise ValueError(f"expected (pixels, variables, periods) values, got shape {a.shape}")
    n_pix, n_var, _ = a.shape
    out = np.empty((n_pix, n_var, len(TEMPORAL_STATISTICS)), dtype=np.float32)
    srt = np.sort(a, axis=2)  # NaN last
    n_ok = (~np.isnan(a)).sum(axis=2)
    empty = n_ok == 0
    last = np.maximum(n_ok - 1, 0)
    lo_v = srt[:, :, 0]
    hi_v = np.take_along_axis(srt, last[:, :, None], axis=2)[:, :, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        filled0 = np.where(np.isnan(a), 0.0, a).astype(np.float64)
        mean = filled0.sum(axis=2) / n_ok
        var = (np.where(np.isnan(a), 0.0, (a - mean[:, :, None]) ** 2)).sum(axis=2) / n_ok
    out[:, :, 0] = lo_v
    out[:, :, 1] = hi_v
    out[:, :, 2] = mean
    out[:, :, 3] = np.sqrt(var)
    for k, q in enumerate((10, 25, 50, 75, 90)):
        pos = last * (q / 100.0)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, last)
        frac = (pos - i0).astype(np.float32)
        v0 = np.take_along_axis(srt, i0[:, :, None], axis=2)[:, :, 0]
        v1 = np.take_along_axis(srt, i1[:, :, None], axis=2)[:, :, 0]
        out[:, :, 4 + k] = v0 + (v1 - v0) * frac
    out[:, :, 9] = hi_v - lo_v
    out[:, :, 10] = np.argmax(np.where(np.isnan(a), -np.inf, a), axis=2) + 1
    out[:, :, 11] = np.argmin(np.where(np.isnan(a), np.inf, a), axis=2) + 1
    out[empty] = np.nan
    return out.reshape(n_pix, n_var * len(TEMPORAL_STATISTICS))
