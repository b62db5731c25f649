"""Honest evaluation: spatial CV block size from the data, baselines on the same folds, metrics.

Pure functions (arrays in, dicts out); :mod:`ecocube.train` calls them and writes the report.

**Block size** (:func:`choose_block_size`). Points close to each other look alike (spatial
autocorrelation), so random K-fold CV of a map is optimistic: the held-out points have
near-identical neighbours in the training folds. Spatial-block CV holds out whole blocks;
the blocks must be at least as large as the distance over which the labels stay
correlated, yet small enough that the sample extent holds enough of them for the folds.
The rule:

1. the *range* of the labels' spatial autocorrelation is read from an indicator
   semivariogram: for pairs of samples in distance bins, the share of pairs whose labels
   differ, ``γ(h)``. Its *sill* is the share at large distances (the median of the bins in
   the upper half of the distances); the range is the smallest bin distance where ``γ``
   reaches 95 % of the sill (the usual "practical range");
2. the block edge is that range, capped so that the sample extent holds at least
   ``min_blocks`` (default ``3 × folds``) blocks, and at least one pixel;
3. with too few samples or pairs to estimate a range, the cap is used (and said so).

The returned dict (recorded in the report) holds the range, the cap, the extent and the
rule that decided. Polygons are not blocked: their pixels are grouped by polygon.

**Comparison** (:func:`compare_models`): the ensemble's held-out probabilities next to those
of each base learner alone and of the majority class, all on the same folds, with a
warning for each that scores better than the ensemble (weighted F1).
"""

from __future__ import annotations

import math

import numpy as np

#: share of the sill where the practical range is read
RANGE_SILL_SHARE = 0.95
#: at most this many samples enter the semivariogram (drawn at random, seeded)
VARIOGRAM_MAX_SAMPLES = 2000


def label_semivariogram(x: np.ndarray, y: np.ndarray, labels: np.ndarray, *, n_bins: int = 15,
                        max_samples: int = VARIOGRAM_MAX_SAMPLES, random_state: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                                 np.ndarray]:
    """Indicator semivariogram of class labels: bin centres, share of differing pairs, pair counts."""
    x, y, labels = np.asarray(x, float), np.asarray(y, float), np.asarray(labels)
    if x.size > max_samples:
        pick = np.random.default_rng(random_state).choice(x.size, max_samples, replace=False)
        x, y, labels = x[pick], y[pick], labels[pick]
    i, j = np.triu_indices(x.size, k=1)
    d = np.hypot(x[i] - x[j], y[i] - y[j])
    diff = (labels[i] != labels[j]).astype(np.float64)
    if d.size == 0 or d.max() <= 0:
        return np.empty(0), np.empty(0), np.empty(0, np.int64)
    edges = np.linspace(0.0, d.max() / 2.0, n_bins + 1)  # beyond half the extent too few pairs per bin
    which = np.digitize(d, edges) - 1
    ok = (which >= 0) & (which < n_bins)
    counts = np.bincount(which[ok], minlength=n_bins)
    sums = np.bincount(which[ok], weights=diff[ok], minlength=n_bins)
    with np.errstate(invalid="ignore"):
        gamma = sums / counts
    centres = (edges[:-1] + edges[1:]) / 2
    return centres, gamma, counts


def choose_block_size(x: np.ndarray, y: np.ndarray, labels: np.ndarray, *, folds: int, pixel_size: float,
                      min_blocks: int | None = None, random_state: int = 0) -> dict:
    """Spatial CV block edge (CRS units) from the samples' extent and autocorrelation (module docstring)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    min_blocks = int(min_blocks or 3 * folds)
    extent_x = float(x.max() - x.min()) + pixel_size if x.size else pixel_size
    extent_y = float(y.max() - y.min()) + pixel_size if y.size else pixel_size
    # the largest block edge that still cuts the extent into >= min_blocks blocks
    cap = max(pixel_size, math.sqrt(extent_x * extent_y / min_blocks))
    cap = min(cap, max(extent_x, extent_y) / 2)  # at least 2 blocks along the longer side
    cap = max(cap, pixel_size)
    out = {"extent": [round(extent_x, 3), round(extent_y, 3)], "min_blocks": min_blocks, "cap": round(cap, 3),
           "range": None, "sill": None}
    centres, gamma, counts = label_semivariogram(x, y, labels, random_state=random_state)
    usable = counts >= 30
    if usable.sum() < 4 or np.unique(labels).size < 2:
        out.update(block_size=round(cap, 3), rule="too few sample pairs for a semivariogram: the extent cap")
        return out
    c, g = centres[usable], gamma[usable]
    sill = float(np.median(g[c >= np.median(c)]))
    out["sill"] = round(sill, 4)
    reached = np.flatnonzero(g >= RANGE_SILL_SHARE * sill)
    rng = float(c[reached[0]]) if reached.size else float(c[-1])
    out["range"] = round(rng, 3)
    if rng > cap:
        out.update(block_size=round(cap, 3),
                   rule=f"autocorrelation range {rng:.0f} exceeds the extent cap: the cap ({min_blocks} blocks)")
    else:
        out.update(block_size=round(max(rng, pixel_size), 3), rule="the labels' autocorrelation range")
    return out


# ---------------------------------------------------------------------- comparisons


def majority_proba(y_train_like: np.ndarray, n: int, classes: np.ndarray) -> np.ndarray:
    """Probabilities of the majority-class rule: 1 on the most frequent class of ``y_train_like``."""
    vals, counts = np.unique(y_train_like, return_counts=True)
    best = vals[np.argmax(counts)]
    p = np.zeros((n, classes.size))
    p[:, int(np.searchsorted(classes, best))] = 1.0
    return p


def classification_scores(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> dict:
    """OA, weighted and macro F1, log loss and per-class F1 of held-out probabilities."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    classes = np.asarray(classes)
    pred = classes[np.argmax(proba, axis=1)]
    p = np.clip(proba, 1e-15, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    return {
        "overall_accuracy": float(accuracy_score(y, pred)),
        "f1_weighted": float(f1_score(y, pred, labels=classes, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y, pred, labels=classes, average="macro", zero_division=0)),
        "log_loss": float(log_loss(y, p, labels=classes)),
        "per_class_f1": {str(int(c)): float(v) for c, v in
                         zip(classes, f1_score(y, pred, labels=classes, average=None, zero_division=0))},
    }


def compare_models(y: np.ndarray, classes: np.ndarray, ensemble_proba: np.ndarray,
                   base_proba: dict[str, np.ndarray], majority: np.ndarray) -> dict:
    """Scores of the ensemble, each base learner and the majority class on the same held-out rows.

    Returns ``{"models": {name: scores}, "best": name, "warnings": [...]}``; a warning names
    every model whose weighted F1 is above the ensemble's.
    """
    models = {"ensemble": classification_scores(y, ensemble_proba, classes)}
    for name, p in base_proba.items():
        models[f"{name} alone"] = classification_scores(y, p, classes)
    models["majority class"] = classification_scores(y, majority, classes)
    ens = models["ensemble"]["f1_weighted"]
    best = max(models, key=lambda k: (models[k]["f1_weighted"], k == "ensemble"))
    warnings = [f"{name} scores a higher weighted F1 than the ensemble on the same folds "
                f"({s['f1_weighted']:.3f} > {ens:.3f})" for name, s in models.items()
                if name != "ensemble" and s["f1_weighted"] > ens]
    return {"models": models, "best": best, "warnings": warnings}


# ---------------------------------------------------------------------- calibration


def reliability(y: np.ndarray, proba: np.ndarray, classes: np.ndarray, n_bins: int = 10) -> dict:
    """Reliability of the top-class probability: per confidence bin, mean confidence vs accuracy.

    ``ece`` is the expected calibration error (bin-size weighted mean |accuracy - confidence|).
    """
    classes = np.asarray(classes)
    conf = proba.max(axis=1)
    correct = classes[np.argmax(proba, axis=1)] == y
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(conf, edges) - 1, 0, n_bins - 1)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        sel = which == b
        if not sel.any():
            continue
        acc, mc = float(correct[sel].mean()), float(conf[sel].mean())
        ece += sel.mean() * abs(acc - mc)
        bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "n": int(sel.sum()),
                     "confidence": mc, "accuracy": acc})
    return {"bins": bins, "ece": float(ece)}


# ---------------------------------------------------------------------- regression


def regression_scores(y: np.ndarray, pred: np.ndarray, lower: np.ndarray | None = None,
                      upper: np.ndarray | None = None) -> dict:
    """RMSE, MAE, R², Lin's concordance correlation coefficient (CCC) and interval coverage/width."""
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    err = pred - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    my, mp = y.mean(), pred.mean()
    vy, vp = y.var(), pred.var()
    cov = float(((y - my) * (pred - mp)).mean())
    denom = vy + vp + (my - mp) ** 2
    out = {
        "n": int(y.size),
        "rmse": float(np.sqrt(np.mean(err ** 2))),
        "mae": float(np.mean(np.abs(err))),
        "bias": float(err.mean()),
        "r2": float(1 - (err ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        "ccc": float(2 * cov / denom) if denom > 0 else float("nan"),
    }
    if lower is not None and upper is not None:
        lower, upper = np.asarray(lower, float), np.asarray(upper, float)
        out["interval_coverage"] = float(np.mean((y >= lower) & (y <= upper)))
        out["interval_mean_width"] = float(np.mean(upper - lower))
    return out
