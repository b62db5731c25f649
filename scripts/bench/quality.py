#!/usr/bin/env python
"""Map quality on the real data: the ensemble vs each single learner vs the majority class.

Two real Sentinel-2 datasets of ``tests/data`` go through ecocube's own path (catalog ->
windowed read + SCL/cloud mask -> per-period composite -> TMWM gap-fill -> features,
i.e. :func:`ecocube.train.sample_pixels` + :func:`ecocube.train.extract_features`):

* ``worldcereal-be-2019``: 72 dates of B02/B03/B04/B08 with SCL masks, 40 parcel
  polygons (LC 11 cropland / 13 grassland / 99 other), labels of 2019;
* ``eolearn-si-ndvi``: 67 dates of NDVI with a cloud mask and a DEM, 84 land-cover
  polygons with a class (1 cultivated, 2 forest, 3 grassland, 4 shrubland, 8 artificial),
  labels of 2017. The .npy arrays are written as per-date GeoTIFFs first, so the read path
  is the real one.

Every model is scored on the same polygon-grouped, stratified K-fold (no polygon on
both sides of a split; ``--repeats`` different fold draws), by weighted F1, overall
accuracy, macro F1 and log loss of the held-out predictions.

Feature sets (from the monthly gap-filled cube unless said otherwise):

* ``quarterly``: bands + NDVI per quarter (the old default, ``season_size: 4``);
* ``monthly``: bands + NDVI per month (what a "plain RF on monthly medians" sees);
* ``monthly+indices``: bands + every index the bands allow, per month;
* ``stats``: per band/index over the year: min, max, mean, std, p10/p25/p50/p75/p90,
  amplitude, month of max, month of min;
* ``monthly+indices+stats``: both (the candidate default);
* ``+dem``: the static covariate where the dataset has one.

Models: the majority class; RF, LightGBM, ExtraTrees, MLP alone; a plain 200-tree RF on
``monthly``; ``EnsembleClassifier`` with its defaults and variants (``--models``).

``--regression``: :class:`ecocube.ensemble.EnsembleRegressor` on a real continuous target
(the Slovenian DEM from the NDVI features), same polygon-grouped CV: RMSE, R², CCC and
the coverage of its 90 % conformal intervals on unseen polygons.

Every ensemble is also compared, paired by fold draw, with each of its learners alone and with
every other run (``paired`` in the JSON): the mean difference of weighted F1, its standard
error, and in how many draws the ensemble was ahead. ``--first-draw`` starts the draws
elsewhere, so a choice made on some draws can be checked on fresh ones.

Usage: ``python scripts/bench/quality.py [--datasets be,si] [--repeats 1] [--first-draw 0] [--regression] [--out bench-quality.json]``.
Runtime: a few minutes on 2 cores (the feature tables are cached in ``--cache``).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


# ---------------------------------------------------------------------- datasets


def _be_config(folder: Path, season_size: int, indices, extra_percentiles=()) -> dict:
    dates = [t[:10] for t in json.loads((folder / "timestamps.json").read_text())]
    bands = ["B02", "B03", "B04", "B08"]
    return {
        "name": "worldcereal-be",
        "grid": {"crs": "EPSG:32631", "origin": [574680.0, 5622440.0], "pixel_size": 10.0, "tile_size": 64},
        "aoi": {"bbox": [574680.0, 5621800.0, 575320.0, 5622440.0]},
        "inputs": {
            "periods": {"start_year": 2018, "end_year": 2019, "season_size": season_size},
            "composite": {"extra_percentiles": list(extra_percentiles)},
            "sources": [{
                "name": "s2", "kind": "acquisitions", "href": str(folder / "S2L2A_{yyyymmdd}_10m.tif"),
                "bands": bands, "band_indexes": {b: i for i, b in enumerate(bands, 1)}, "dates": dates,
                "scale": 0.0001, "nodata": 0, "resampling": "nearest",
                "mask": {"href": str(folder / "S2L2A_{yyyymmdd}_SCL.tif"), "kind": "classes",
                         "values": [3, 8, 9, 10]},
            }],
        },
        "features": {"indices": list(indices)},
        "model": {"classes": [{"code": 11, "name": "cropland"}, {"code": 13, "name": "grassland"},
                              {"code": 99, "name": "other"}],
                  "max_pixels_per_polygon": 60, "random_state": 0},
        "processing": {"threads": 2},
    }


def _si_tiffs(src: Path, dst: Path) -> tuple[list[str], Path]:
    """Per-date NDVI (float32, NaN nodata) and cloud-mask GeoTIFFs from the eo-learn arrays."""
    import rasterio
    from rasterio.transform import Affine

    ndvi = np.load(src / "NDVI.npy")[..., 0]
    clm = np.load(src / "CLM.npy")[..., 0]
    is_data = np.load(src / "IS_DATA.npy")[..., 0]
    stamps = [t[:10] for t in json.loads((src / "timestamps.json").read_text())]
    transform = Affine(9.99479222, 0, 465181.0522318204, 0, -9.99744847, 5080254.63349641)
    profile = {"driver": "GTiff", "height": ndvi.shape[1], "width": ndvi.shape[2], "count": 1,
               "crs": "EPSG:32633", "transform": transform}
    dates = []
    for i, d in enumerate(stamps):
        if d in dates:  # 2015-12-08 appears twice: keep the first
            continue
        dates.append(d)
        day = d.replace("-", "")
        with rasterio.open(dst / f"NDVI_{day}.tif", "w", dtype="float32", nodata=float("nan"), **profile) as f:
            f.write(np.where(is_data[i] == 1, ndvi[i], np.nan).astype(np.float32)[None])
        with rasterio.open(dst / f"CLM_{day}.tif", "w", dtype="uint8", **profile) as f:
            f.write(clm[i][None])
    with rasterio.open(dst / "DEM.tif", "w", dtype="float32", **profile) as f:
        f.write(np.load(src / "DEM.npy")[..., 0][None].astype(np.float32))
    # labelled polygons (class 0 = no label is dropped), with the label year
    import pyogrio

    meta, _, wkb, fields = pyogrio.raw.read(str(src / "LULC_polygons.gpkg"))
    names = list(meta["fields"])
    lulc = np.asarray(fields[names.index("LULC_ID")], dtype=np.int64)
    keep = lulc > 0
    out = dst / "labels.gpkg"
    pyogrio.raw.write(str(out), np.asarray(wkb, dtype=object)[keep], [lulc[keep]], ["LULC"],
                      geometry_type="Polygon", crs="EPSG:32633", driver="GPKG")
    return dates, out


def _si_config(folder: Path, dates: list[str], season_size: int, extra_percentiles=()) -> dict:
    return {
        "name": "eolearn-si",
        "grid": {"crs": "EPSG:32633", "origin": [465181.0522318204, 5080254.63349641], "pixel_size": 10.0,
                 "tile_size": 128},
        "aoi": {"bbox": [465181.06, 5079244.9, 466180.5, 5080254.6]},
        "inputs": {
            "periods": {"start_year": 2015, "end_year": 2017, "season_size": season_size},
            "composite": {"extra_percentiles": list(extra_percentiles)},
            "sources": [{
                "name": "s2", "kind": "acquisitions", "href": str(folder / "NDVI_{yyyymmdd}.tif"),
                "bands": ["NDVI"], "dates": dates, "resampling": "nearest",
                "mask": {"href": str(folder / "CLM_{yyyymmdd}.tif"), "kind": "classes", "values": [1]},
            }],
        },
        "features": {"indices": []},
        "model": {"classes": [{"code": 1, "name": "cultivated"}, {"code": 2, "name": "forest"},
                              {"code": 3, "name": "grassland"}, {"code": 4, "name": "shrubland"},
                              {"code": 8, "name": "artificial"}],
                  "max_pixels_per_polygon": 60, "random_state": 0},
        "processing": {"threads": 2},
    }


def _overlay(cfg_dict: dict, samples: Path, class_field: str, year: int):
    """Pixels + monthly (or quarterly) features through ecocube's read/gap-fill/features path."""
    from ecocube.config import config_from_dict
    from ecocube.grid import TileGrid
    from ecocube.train import extract_features, load_samples, sample_pixels

    cfg = config_from_dict(cfg_dict)
    s = load_samples(samples, class_field)
    grid = TileGrid.from_config(cfg.grid)
    px = sample_pixels(s, grid, years=[year], max_pixels_per_polygon=cfg.model.max_pixels_per_polygon,
                       cv_block_size=1000.0, random_state=0)
    X, names, _ = extract_features(cfg, px, threads=2)
    return px, X, names


def load_dataset(name: str, cache: Path) -> dict:
    """Raw per-period feature tables of one dataset (cached as .npz)."""
    f = cache / f"quality-{name}.npz"
    if f.exists():
        z = np.load(f, allow_pickle=True)
        return {k: z[k] for k in z.files}
    t0 = time.perf_counter()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if name == "be":
            folder, samples, field, year = DATA / "worldcereal-be-2019", \
                DATA / "worldcereal-be-2019" / "labels_polygons.gpkg", "LC", 2019
            mk = lambda season, extra=(), idx=("ndvi", "ndwi", "evi", "savi"): _be_config(folder, season, idx, extra)  # noqa: E731
        else:
            dates, samples = _si_tiffs(DATA / "eolearn-si-ndvi", tmp)
            field, year = "LULC", 2017
            mk = lambda season, extra=(), idx=(): _si_config(tmp, dates, season, extra)  # noqa: E731
        px, Xm, names_m = _overlay(mk(12), samples, field, year)
        _, Xq, names_q = _overlay(mk(4, idx=("ndvi",) if name == "be" else ()), samples, field, year)
        _, Xp, names_p = _overlay(mk(12, extra=(10, 90)), samples, field, year)
        out.update(y=px.cls, groups=px.group, gx=px.gx, gy=px.gy, X_month=Xm, names_month=np.array(names_m),
                   X_quarter=Xq, names_quarter=np.array(names_q), X_pct=Xp, names_pct=np.array(names_p))
        if name == "si":
            import rasterio

            with rasterio.open(tmp / "DEM.tif") as src:
                dem = src.read(1)
            gy = np.clip(px.gy, 0, dem.shape[0] - 1)
            gx = np.clip(px.gx, 0, dem.shape[1] - 1)
            out["dem"] = dem[gy, gx].astype(np.float32)
    out["seconds"] = np.array(time.perf_counter() - t0)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(f, **out)
    return out


# ---------------------------------------------------------------------- feature sets


_PER_PERIOD = re.compile(r"_s\d+$")


def _per_period(X: np.ndarray, names) -> tuple[np.ndarray, list[str]]:
    """The per-period columns (``<variable>_s<k>``) of a feature table: ``extract_features``
    also returns the temporal statistics (``<variable>_<statistic>``) when the config asks
    for them, and the feature sets below compute those themselves, once."""
    names = [str(n) for n in names]
    keep = [i for i, n in enumerate(names) if _PER_PERIOD.search(n)]
    return X[:, keep], [names[i] for i in keep]


def feature_sets(d: dict, name: str) -> dict[str, tuple[np.ndarray, list[str]]]:
    from ecocube.features import temporal_statistics, temporal_statistic_names

    Xm, nm = _per_period(d["X_month"], d["names_month"])
    Xq, nq = _per_period(d["X_quarter"], d["names_quarter"])
    Xp, npct = _per_period(d["X_pct"], d["names_pct"])
    variables = list(dict.fromkeys(n.rsplit("_s", 1)[0] for n in nm))
    n_var = len(variables)
    cube = Xm.reshape(Xm.shape[0], n_var, 12)
    stats = temporal_statistics(cube)
    snames = temporal_statistic_names(variables)
    base = [v for v in variables if v.lower() in ("b02", "b03", "b04", "b08", "ndvi")]
    sel = [i for i, n in enumerate(nm) if n.rsplit("_s", 1)[0] in base]
    out = {
        "quarterly": (Xq, nq),
        "monthly": (Xm[:, sel], [nm[i] for i in sel]),
        "monthly+indices": (Xm, nm),
        "stats": (stats, snames),
        "monthly+indices+stats": (np.hstack([Xm, stats]), nm + snames),
        "monthly+pct+stats": (np.hstack([Xp, stats]), npct + snames),
    }
    if "dem" in d:
        X, n = out["monthly+indices+stats"]
        out["monthly+indices+stats+dem"] = (np.hstack([X, d["dem"][:, None]]), n + ["dem"])
    return out


# ---------------------------------------------------------------------- models


class _Grouped:
    """A plain estimator behind the ``fit(X, y, groups=)`` signature cross_validate uses."""

    def __init__(self, est):
        self.est = est

    def fit(self, X, y, groups=None):
        self.est.fit(X, y)
        self.classes_ = self.est.classes_
        return self

    def predict_proba(self, X):
        return self.est.predict_proba(X)


class _Majority:
    def fit(self, X, y, groups=None):
        vals, counts = np.unique(y, return_counts=True)
        self.classes_ = vals
        self.prior_ = counts / counts.sum()
        self.k_ = int(np.argmax(counts))
        return self

    def predict_proba(self, X):
        p = np.zeros((X.shape[0], self.classes_.size))
        p[:, self.k_] = 1.0
        return p


def make_model(spec: str, threads: int, seed: int):
    from ecocube.ensemble import EnsembleClassifier, make_base_learner

    if spec == "majority":
        return _Majority()
    if spec == "rf200-plain":
        from sklearn.ensemble import RandomForestClassifier

        return _Grouped(RandomForestClassifier(n_estimators=200, n_jobs=threads, random_state=seed))
    if spec.startswith("single:"):
        name = spec.split(":", 1)[1]
        return _Grouped(make_base_learner(name, n_estimators=200, class_weight="balanced", n_threads=threads,
                                          random_state=seed))
    if spec.startswith("ens"):
        kw: dict = {}
        for part in spec.split(":")[1:]:
            k, v = part.split("=")
            if k == "base_learners":
                kw[k] = tuple(v.split("+"))
            elif k in ("class_weight", "meta", "meta_class_weight"):
                kw[k] = None if v == "none" else v
            elif k in ("meta_C",):
                kw[k] = float(v)
            elif k in ("early_stopping",):
                kw[k] = v == "1"
            elif k in ("tuning", "feature_selection"):
                kw[k] = None if v == "none" else v
            elif k == "feature_keep":
                kw[k] = tuple(float(x) for x in v.split("+"))
            else:
                kw[k] = int(v)
        return EnsembleClassifier(n_jobs=threads, random_state=seed, **kw)
    raise ValueError(spec)


def _scores(y, proba, codes) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    pred = codes[np.argmax(proba, axis=1)]
    p = np.clip(proba, 1e-15, 1)
    return {"f1_weighted": f1_score(y, pred, average="weighted", labels=codes, zero_division=0),
            "overall_accuracy": accuracy_score(y, pred),
            "f1_macro": f1_score(y, pred, average="macro", labels=codes, zero_division=0),
            "log_loss": log_loss(y, p / p.sum(1, keepdims=True), labels=codes),
            "per_class_f1": f1_score(y, pred, average=None, labels=codes, zero_division=0).tolist()}


#: the feature set whose rows are scored: pixels with every feature of it finite
SCORED_SET = "monthly+indices+stats"


def scored_rows(d: dict, sets: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, groups, keep)`` of one dataset: labels, polygon groups numbered 0..n-1, and the
    rows every model is scored on (:data:`SCORED_SET` finite)."""
    groups = np.unique(d["groups"], return_inverse=True)[1].ravel()
    return d["y"], groups, np.isfinite(sets[SCORED_SET][0]).all(axis=1)


def paired(results: dict[str, dict]) -> dict[str, dict]:
    """Each ensemble against every other model scored on the same fold draws: per draw the
    difference of their weighted F1 (ensemble minus other), its mean, its standard error
    (sd / sqrt(draws)) and in how many draws the ensemble was ahead. ``results``: name ->
    :func:`_summarise` entry; "other" is each of its learners alone and every non-ensemble run."""
    out: dict[str, dict] = {}
    ens = [n for n in results if n.split("@")[0].startswith("ens") and " > " not in n and " | " not in n]
    for e in ens:
        spec = e.split("@")[0]
        a = np.asarray(results[e]["f1_weighted_per_repeat"])
        for n, r in results.items():
            if n == e or n.split("@")[0].startswith("ens") and not n.startswith(spec + " > "):
                continue
            b = np.asarray(r["f1_weighted_per_repeat"])
            if b.size != a.size:
                continue
            d = a - b
            out[f"{e} vs {n}"] = {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1
                                  else 0.0, "ahead": int((d > 0).sum()), "draws": int(d.size)}
    return out


def score(spec: str, X, y, groups, *, repeats: int, threads: int, first_draw: int = 0) -> dict[str, dict]:
    """Scores of ``spec`` and, for an ensemble, of each of its base learners alone and of the
    majority class, all from the same folds (``cross_validate(return_baselines=True)``), over
    the fold draws ``first_draw .. first_draw + repeats - 1``."""
    from ecocube.train import cross_validate

    codes = np.unique(y)
    per: dict[str, list[dict]] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for r in range(first_draw, first_draw + repeats):
        proba, _, _, base = cross_validate(lambda t, _r=r: make_model(spec, t, 1000 + _r), X, y, groups, folds=5,
                                           random_state=r, threads=1, return_baselines=True)
        per.setdefault(spec, []).append(_scores(y, proba, codes))
        if spec.startswith("ens"):
            for name, p in base.items():
                per.setdefault(f"{spec} > {name}", []).append(_scores(y, p, codes))
        # one line per fold draw as it finishes (a long run on a loaded machine leaves the draws it finished)
        print(f"  draw {r}: " + ", ".join(f"{n.split(' > ')[-1] if ' > ' in n else 'ensemble'} "
                                         f"{runs[-1]['f1_weighted']:.3f}" for n, runs in per.items())
              + f" ({time.process_time() - c0:.0f} cpu s)", flush=True)
    return _summarise(per, codes, round(time.perf_counter() - t0, 2), cpu_seconds=round(time.process_time() - c0, 2))


def _summarise(per: dict[str, list[dict]], codes, seconds: float,
               chosen: dict[str, dict[str, int]] | None = None, *, cpu_seconds: float | None = None) -> dict[str, dict]:
    """Per model, the mean of its :func:`_scores` over the repeats (``per``: name -> one score
    dict per fold draw), its weighted F1 per draw and their standard deviation (ddof 1; 0 for
    one draw), the run's ``seconds`` (and ``cpu_seconds`` when given), and for a combiner variant
    (``"spec | label"``) how often each combiner was chosen (``chosen``: label -> {combiner: folds})."""
    out = {}
    for name, runs in per.items():
        r = {k: float(np.mean([x[k] for x in runs])) for k in ("f1_weighted", "overall_accuracy", "f1_macro",
                                                                "log_loss")}
        r["per_class_f1"] = {int(c): float(v) for c, v in zip(codes, np.mean([x["per_class_f1"] for x in runs], 0))}
        r["f1_weighted_per_repeat"] = [float(x["f1_weighted"]) for x in runs]
        r["f1_weighted_sd"] = float(np.std(r["f1_weighted_per_repeat"], ddof=1)) if len(runs) > 1 else 0.0
        r["seconds"] = seconds
        if cpu_seconds is not None:
            r["cpu_seconds"] = cpu_seconds
        label = name.split(" | ", 1)[1] if " | " in name else None
        if chosen and label in chosen:
            r["chosen_per_fold"] = chosen[label]
        out[name] = r
    return out


#: combiners scored on the same fitted base learners of every outer fold (``--meta-variants``):
#: label -> (combiners ``meta="auto"`` chooses among, selection metric, other meta parameters)
META_VARIANTS = {
    "auto: mean|logistic by wF1 (meta: auto)": (("logistic", "mean"), "f1_weighted", {}),
    "auto: mean|logistic|best by wF1": (("logistic", "mean", "best"), "f1_weighted", {}),
    "auto: mean|logistic|greedy|best by log loss": (("logistic", "mean", "greedy", "best"), "log_loss", {}),
    "auto: mean|logistic|greedy by log loss": (("logistic", "mean", "greedy"), "log_loss", {}),
    "best learner by inner-CV wF1": (("best",), "f1_weighted", {}),
    "best learner by inner-CV log loss": (("best",), "log_loss", {}),
    "greedy selection": (("greedy",), "f1_weighted", {}),
    "logistic (class weights by CV)": (("logistic",), "f1_weighted", {}),
    "logistic, no class weights": (("logistic",), "f1_weighted", {"meta_class_weight": None}),
    "logistic, balanced": (("logistic",), "f1_weighted", {"meta_class_weight": "same"}),
    "mean (the default)": (("mean",), "f1_weighted", {}),
}


def score_meta_variants(spec: str, X, y, groups, *, repeats: int, threads: int,
                        first_draw: int = 0) -> dict[str, dict]:
    """Like :func:`score` for an ensemble, with the same folds as ``cross_validate``, and in
    addition every combiner of :data:`META_VARIANTS` applied to the same fitted base learners
    of each outer fold (their out-of-fold probabilities inside the fold: no leakage), so the
    combiners are compared without the base learners' seed noise."""
    from sklearn.model_selection import StratifiedGroupKFold

    from ecocube.ensemble import _meta_features

    codes = np.unique(y)
    per: dict[str, list[dict]] = {}
    chosen: dict[str, dict[str, int]] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for r in range(first_draw, first_draw + repeats):
        splitter = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=r)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            splits = list(splitter.split(X, y, groups))
        held: dict[str, np.ndarray] = {}
        for train, test in splits:
            m = make_model(spec, threads, 1000 + r).fit(X[train], y[train], groups=groups[train])
            p, base = m.predict_proba_with_base(X[test])
            cols = np.searchsorted(codes, m.classes_)
            parts = {spec: p, **{f"{spec} > {n}": b for n, b in zip(m.learner_names_, base)}}
            L, C = len(m.learner_names_), m.classes_.size
            y_enc = np.searchsorted(m.classes_, y[train])
            feats = _meta_features(m.oof_proba_)
            defaults = {"meta_metric": m.meta_metric, "meta_class_weight": m.meta_class_weight}
            for label, (combiners, metric, extra) in META_VARIANTS.items():
                alt = m.set_params(**{**defaults, "meta_metric": metric, **extra})
                meta, cw, sel = alt._select_meta(feats, m.oof_proba_, y_enc, m.cv_test_folds_, 0, L, C,
                                                 combiners=combiners)
                comb = alt._fit_combiner(meta, cw, feats, m.oof_proba_, y_enc, L, C, 0)
                name = sel.get("chosen", meta)
                chosen.setdefault(label, {}).setdefault(name, 0)
                chosen[label][name] += 1
                if hasattr(comb, "coef_"):
                    q = comb.predict_proba(_meta_features(np.concatenate(list(base), axis=1)))
                else:
                    q = comb.predict_proba(base)
                parts[f"{spec} | {label}"] = q
            m.set_params(**defaults)
            maj = _Majority().fit(None, y[train]).predict_proba(X[test])
            parts[f"{spec} > majority class"] = maj
            for name, q in parts.items():
                full = np.zeros((test.size, codes.size))
                full[:, cols if q.shape[1] == cols.size else slice(None)] = q
                held.setdefault(name, np.full((y.size, codes.size), np.nan))[test] = full
        for name, q in held.items():
            per.setdefault(name, []).append(_scores(y, q, codes))
        # one line per fold draw as it finishes, as in score() (a run cut short keeps the draws it printed)
        print(f"  draw {r}: " + ", ".join(f"{n.replace(spec, '').lstrip(' >|') or 'ensemble'} "
                                         f"{runs[-1]['f1_weighted']:.3f}" for n, runs in per.items())
              + f" ({time.process_time() - c0:.0f} cpu s)", flush=True)
    return _summarise(per, codes, round(time.perf_counter() - t0, 2), chosen,
                      cpu_seconds=round(time.process_time() - c0, 2))


#: ``--tuning-variants``: the default ensemble, with inner-CV tuning, with each feature
#: selection, both, and the default ensemble on the statistics alone (same folds per repeat)
TUNING_RUNS = [
    ("ens:base_learners=rf+lgbm+et", "monthly+indices+stats"),
    ("ens:base_learners=rf+lgbm+et:tuning=grid", "monthly+indices+stats"),
    ("ens:base_learners=rf+lgbm+et:feature_selection=importance", "monthly+indices+stats"),
    ("ens:base_learners=rf+lgbm+et:feature_selection=rfe", "monthly+indices+stats"),
    ("ens:base_learners=rf+lgbm+et", "stats"),
]

DEFAULT_RUNS = [
    # the plain baseline of the issue: a 200-tree RF on monthly medians + NDVI
    ("rf200-plain", "monthly"),
    # single random forests on each feature set (the feature-set choice)
    ("single:rf", "quarterly"),
    ("single:rf", "monthly"),
    ("single:rf", "monthly+indices"),
    ("single:rf", "stats"),
    ("single:rf", "monthly+indices+stats"),
    ("single:rf", "monthly+pct+stats"),
    ("single:rf", "monthly+indices+stats+dem"),
    ("single:mlp", "monthly+indices+stats"),
    # the default ensemble: it reports rf/lgbm/et alone and the majority class on the same folds
    ("ens:base_learners=rf+lgbm+et", "monthly+indices+stats"),
]


def regression_check(d: dict, *, repeats: int, first_draw: int = 0) -> dict:
    """EnsembleRegressor on a real continuous target: the Slovenian patch's elevation (DEM)
    from its NDVI features, polygon-grouped 5-fold CV: RMSE, R², CCC and the coverage of
    the 90 % conformal intervals on polygons the model never saw."""
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import GroupKFold

    from ecocube.ensemble import EnsembleRegressor
    from ecocube.evaluation import regression_scores

    X, _ = feature_sets(d, "si")["monthly+indices+stats"]
    y = d["dem"].astype(np.float64)
    groups = np.unique(d["groups"], return_inverse=True)[1].ravel()
    keep = np.isfinite(X).all(axis=1) & np.isfinite(y)
    X, y, groups = X[keep], y[keep], groups[keep]
    out = {}
    for interval in ("normalized", "absolute"):
        runs: dict[str, list[dict]] = {}
        for r in range(first_draw, first_draw + repeats):
            mean, lo, up = (np.empty_like(y) for _ in range(3))
            base = None
            for train, test in GroupKFold(n_splits=5, shuffle=True, random_state=r).split(X, y, groups):
                m = EnsembleRegressor(n_jobs=1, random_state=r, interval=interval).fit(X[train], y[train],
                                                                                     groups=groups[train])
                mean[test], lo[test], up[test] = m.predict_with_interval(X[test], coverage=0.9)
                if base is None:
                    base = {name: np.empty_like(y) for name in [*m.learner_names_, "nnls meta (before)"]}
                bp = m.predict_base(X[test])
                for name, p in zip(m.learner_names_, bp.T):
                    base[name][test] = p
                # the meta-learner before the convex one, on the same out-of-fold predictions
                old = LinearRegression(positive=True).fit(m.oof_predictions_, y[train])
                base["nnls meta (before)"][test] = old.predict(bp)
            runs.setdefault("ensemble", []).append(regression_scores(y, mean, lo, up))
            if interval == "normalized":  # the learners alone do not depend on the interval kind
                for name, p in base.items():
                    runs.setdefault(name, []).append(regression_scores(y, p))
        for name, rs in runs.items():
            key = "ensemble" if name == "ensemble" else name
            res = {k: float(np.mean([x[k] for x in rs])) for k in rs[0] if rs[0][k] is not None}
            res["rmse_sd"] = float(np.std([x["rmse"] for x in rs], ddof=1)) if len(rs) > 1 else 0.0
            res["rmse_per_repeat"] = [float(x["rmse"]) for x in rs]
            out.setdefault(interval, {})[key] = res
            print(f"regression (DEM from NDVI, {interval} intervals) {key}: " +
                  ", ".join(f"{k} {v:.3f}" for k, v in res.items() if not isinstance(v, list)), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="be,si")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--first-draw", type=int, default=0,
                    help="the first fold draw (draws first .. first + repeats - 1): fresh draws for a choice made on others")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default=None, help="model@featureset,... (default: the built-in list)")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "ecocube-bench-quality"))
    ap.add_argument("--out", default="bench-quality.json")
    ap.add_argument("--regression", action="store_true", help="also the EnsembleRegressor check on the DEM")
    ap.add_argument("--regression-only", action="store_true")
    ap.add_argument("--tuning-variants", action="store_true",
                    help="the runs of TUNING_RUNS: default ensemble, + tuning, + importance / RFE selection, stats only")
    ap.add_argument("--only", default=None, help="with --tuning-variants: the indices of TUNING_RUNS to run (0,2)")
    ap.add_argument("--meta-variants", action="store_true",
                    help="for ensembles: also every combiner of META_VARIANTS on the same fitted learners")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    runs = DEFAULT_RUNS if not args.runs else [tuple(r.split("@")) for r in args.runs.split(",")]
    if args.tuning_variants:
        runs = TUNING_RUNS if args.only is None else [TUNING_RUNS[int(i)] for i in args.only.split(",")]

    import os

    out: dict = {"machine": platform.platform(), "python": sys.version.split()[0], "repeats": args.repeats,
                 "first_draw": args.first_draw,
                 "load_average_start": list(os.getloadavg()),
                 "cv": "polygon-grouped stratified 5-fold", "datasets": {}}
    if args.regression or args.regression_only:
        out["regression"] = regression_check(load_dataset("si", Path(args.cache)), repeats=args.repeats,
                                             first_draw=args.first_draw)
    if args.regression_only:
        out["load_average_end"] = list(os.getloadavg())
        Path(args.out).write_text(json.dumps(out, indent=2))
        return
    for ds in args.datasets.split(","):
        d = load_dataset(ds, Path(args.cache))
        sets = feature_sets(d, ds)
        y, groups, keep = scored_rows(d, sets)
        info = {"pixels": int(keep.sum()), "polygons": int(np.unique(groups[keep]).size),
                "classes": {int(c): int((y[keep] == c).sum()) for c in np.unique(y[keep])}, "results": {}}
        print(f"\n{ds}: {info['pixels']} pixels, {info['polygons']} polygons, classes {info['classes']}")
        print(f"{'model':58s} {'features':28s} {'wF1':>6s} {'OA':>6s} {'mF1':>6s} {'logloss':>7s} {'s':>6s} "
              f"{'cpu s':>6s}")
        for spec, fs in runs:
            if fs not in sets:  # e.g. +dem where the dataset has no DEM
                continue
            X, names = sets[fs]
            scorer = score_meta_variants if (args.meta_variants and spec.startswith("ens")) else score
            for name, r in scorer(spec, X[keep], y[keep], groups[keep], repeats=args.repeats,
                                  threads=args.threads, first_draw=args.first_draw).items():
                r["n_features"] = len(names)
                info["results"][f"{name}@{fs}"] = r
                pc = " ".join(f"{c}:{v:.2f}" for c, v in r["per_class_f1"].items())
                print(f"{name:58s} {fs:28s} {r['f1_weighted']:6.3f}±{r['f1_weighted_sd']:.3f} {r['overall_accuracy']:6.3f} "
                      f"{r['f1_macro']:6.3f} {r['log_loss']:7.3f} {r['seconds']:6.1f} {r.get('cpu_seconds', 0):6.1f}  {pc}"
                      + (f"  chosen {r['chosen_per_fold']}" if "chosen_per_fold" in r else ""), flush=True)
        info["paired"] = paired(info["results"])
        if info["paired"]:
            print("paired, same fold draws (ensemble minus other, weighted F1):")
            for n, v in info["paired"].items():
                print(f"  {n:90s} {v['mean']:+.4f} ± {v['se']:.4f} (se), ahead in {v['ahead']}/{v['draws']}")
        out["datasets"][ds] = info
    out["load_average_end"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
