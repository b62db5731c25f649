"""Per-learner hyperparameter tuning on the ensemble's own (grouped) stacking folds.

Pure model selection: arrays and fitted-estimator callbacks in, the chosen parameters and
their scores out; no I/O. :class:`ecocube.ensemble.EnsembleClassifier` calls
:func:`tune_learner` for every base learner that has a grid (``tuning=``), with the row
indices of its stacking folds: every candidate of the grid is fitted on the training part
of each fold and predicts that fold's held-out rows, and the candidate whose out-of-fold
probabilities score best (log loss by default) wins; its out-of-fold probabilities are the
ones the meta-learner is fitted on. The stacking folds are made from the rows ``fit``
receives, so inside :func:`ecocube.train.cross_validate` the tuner only ever sees the
training rows of an outer fold, never its test fold (``tests/test_tuning.py`` checks the
indices it receives).

LightGBM keeps its early stopping inside every fold (a tree count found on held-out groups
of the fold's training rows), so its grid holds the tree shape and the learning rate, not
the tree count.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: the default grids (small on purpose: every candidate costs one stacking CV of its learner)
DEFAULT_GRIDS: dict[str, dict[str, tuple]] = {
    "lgbm": {"num_leaves": (7, 15, 31), "min_child_samples": (5, 20)},
    "rf": {"max_features": ("sqrt", 0.3), "min_samples_leaf": (5, 20, 50)},
    "et": {"max_features": ("sqrt", 0.3), "min_samples_leaf": (5, 20, 50)},
    "mlp": {"mlpclassifier__alpha": (1e-4, 1e-3, 1e-2)},
    "logreg": {"logisticregression__C": (0.01, 0.1, 1.0)},
}

#: parameters a grid may set, per learner short name (anything else is refused by name)
TUNABLE: dict[str, tuple[str, ...]] = {
    "lgbm": ("num_leaves", "min_child_samples", "learning_rate", "colsample_bytree", "subsample", "reg_lambda",
             "max_depth"),
    "rf": ("max_features", "min_samples_leaf", "max_depth", "max_samples"),
    "et": ("max_features", "min_samples_leaf", "max_depth", "max_samples"),
    "mlp": ("mlpclassifier__alpha", "mlpclassifier__hidden_layer_sizes"),
    "logreg": ("logisticregression__C",),
}

#: how candidates are scored on the out-of-fold rows
METRICS = ("log_loss", "f1_weighted")


def check_grids(grids: Mapping[str, Mapping[str, Sequence]], learners: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` (one line, naming the learner and parameter) for a malformed grid."""
    if not isinstance(grids, Mapping):
        raise ValueError(f"tuning grids must be a mapping learner -> {{parameter: [values]}}, got {grids!r}")
    for name, grid in grids.items():
        if name not in TUNABLE:
            raise ValueError(f"tuning grid for unknown learner {name!r}; grids exist for {', '.join(TUNABLE)}")
        if learners is not None and name not in learners:
            raise ValueError(f"tuning grid for {name!r}, which is not among the base learners "
                             f"({', '.join(learners)})")
        if not isinstance(grid, Mapping) or not grid:
            raise ValueError(f"tuning grid for {name!r} must be a non-empty mapping parameter -> [values]")
        for param, values in grid.items():
            if param not in TUNABLE[name]:
                raise ValueError(f"tuning grid for {name!r}: {param!r} cannot be tuned; "
                                 f"choose among {', '.join(TUNABLE[name])}")
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
                raise ValueError(f"tuning grid for {name!r}: {param} needs a non-empty list of values, got {values!r}")
            for v in values:
                if v is not None and not isinstance(v, (numbers.Real, str, tuple, list)):
                    raise ValueError(f"tuning grid for {name!r}: {param} value {v!r} is not a number or name")


def resolve_grids(tuning, learners: Sequence[str]) -> dict[str, dict[str, tuple]]:
    """The grid of every learner to tune: ``tuning`` None/False -> none; ``"grid"``/True -> the
    defaults of :data:`DEFAULT_GRIDS` for the learners present; a mapping -> those grids
    (``"default"`` as a learner's grid: its default grid)."""
    if tuning is None or tuning is False or tuning == "none":
        return {}
    if tuning is True or tuning == "grid":
        return {n: dict(DEFAULT_GRIDS[n]) for n in dict.fromkeys(learners) if n in DEFAULT_GRIDS}
    if isinstance(tuning, Mapping):
        grids = {n: (dict(DEFAULT_GRIDS[n]) if g == "default" and n in DEFAULT_GRIDS else g)
                 for n, g in tuning.items()}
        check_grids(grids, list(learners))
        return {n: {p: tuple(v) for p, v in g.items()} for n, g in grids.items()}
    raise ValueError(f"tuning must be None, 'grid' or a mapping learner -> grid, got {tuning!r}")


def candidates(grid: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """Every combination of a grid, in a fixed order (the first value of each parameter first)."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(tuple(grid[k]) for k in keys))]


def _json_value(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    return v


def score_proba(proba: np.ndarray, y_enc: np.ndarray, metric: str) -> float:
    """Higher is better: minus the log loss (probabilities clipped at 1e-6), or weighted F1."""
    if metric == "log_loss":
        p = np.clip(proba[np.arange(y_enc.size), y_enc], 1e-6, 1.0)
        return float(np.mean(np.log(p)))
    if metric == "f1_weighted":
        from sklearn.metrics import f1_score

        return float(f1_score(y_enc, proba.argmax(axis=1), average="weighted"))
    raise ValueError(f"tuning metric must be one of {METRICS}, got {metric!r}")


@dataclass
class TuningResult:
    """What :func:`tune_learner` chose, and how every candidate scored."""

    params: dict[str, Any]
    score: float
    oof: np.ndarray
    extra: Any = None
    scores: list[dict] = field(default_factory=list)

    def record(self) -> dict:
        """JSON-ready: the chosen parameters and every candidate's score."""
        return {"chosen": {k: _json_value(v) for k, v in self.params.items()}, "score": self.score,
                "candidates": [{"params": {k: _json_value(v) for k, v in c["params"].items()}, "score": c["score"]}
                               for c in self.scores]}


def tune_learner(proto, grid: Mapping[str, Sequence], X: np.ndarray, y_enc: np.ndarray,
                 folds: Sequence[tuple[np.ndarray, np.ndarray]],
                 oof_of: Callable[[Any, np.ndarray, Sequence[tuple[np.ndarray, np.ndarray]]], tuple[np.ndarray, Any]],
                 *, metric: str = "log_loss") -> TuningResult:
    """The best candidate of ``grid`` for the unfitted estimator ``proto``.

    ``folds``: ``(train_idx, test_idx)`` row indices of ``X`` (the stacking folds; every row
    in one test fold). ``oof_of(estimator, X, folds)`` fits copies of ``estimator`` on each
    fold's training rows and returns ``(out-of-fold probabilities (n_rows, n_classes), extra)``
    (``extra``: e.g. LightGBM's stopping rounds). Candidates are scored on the out-of-fold
    rows by ``metric`` (:func:`score_proba`); a tie keeps the earlier candidate.
    """
    from sklearn.base import clone

    if metric not in METRICS:
        raise ValueError(f"tuning metric must be one of {METRICS}, got {metric!r}")
    best: TuningResult | None = None
    scores = []
    for params in candidates(grid):
        est = clone(proto).set_params(**params)
        oof, extra = oof_of(est, X, folds)
        s = score_proba(oof, y_enc, metric)
        scores.append({"params": params, "score": s})
        if best is None or s > best.score:
            best = TuningResult(params=params, score=s, oof=oof, extra=extra)
    assert best is not None
    best.scores = scores
    return best
