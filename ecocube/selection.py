"""Feature selection inside the CV: importance ranking or recursive feature elimination.

Pure model selection (arrays in, column indices out; no I/O), as in the reference workflow
(Witjes et al. 2022, PeerJ 10:e13573: a random forest's importance ranks the features and
the number kept is chosen by CV). :class:`ecocube.ensemble.EnsembleClassifier` calls
:func:`select_features` first in ``fit`` (``feature_selection=``) with the row indices of
its own grouped stacking folds, so inside :func:`ecocube.train.cross_validate` it sees only
an outer fold's training rows:

* ``"importance"``: in every fold a ranking forest is fitted on the fold's training rows;
  each share of ``keep`` (e.g. 1.0, 0.5, 0.25 of the features) keeps that fold's top
  features, a forest on them predicts the fold's held-out rows;
* ``"rfe"``: the same, but recursively: each smaller share is taken from the ranking of a
  forest refitted on the previous share's features (recursive feature elimination).

The share whose out-of-fold probabilities score best (log loss by default; a tie keeps
the larger share) is applied to a ranking made the same way on all the rows ``fit``
received. The kept columns stay in their input order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .tuning import METRICS, score_proba

#: ``feature_selection`` methods
METHODS = ("importance", "rfe")
#: the shares of the features tried by default
DEFAULT_KEEP = (1.0, 0.5, 0.25)
#: trees of the ranking forest
RANKING_TREES = 100


def check_keep(keep: Sequence[float]) -> tuple[float, ...]:
    """The shares sorted from the largest, or ``ValueError`` (one line) when one is not in (0, 1]."""
    if isinstance(keep, (str, bytes)) or not isinstance(keep, Sequence) or len(keep) == 0:
        raise ValueError(f"feature selection keep must be a non-empty list of shares in (0, 1], got {keep!r}")
    for s in keep:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < float(s) <= 1:
            raise ValueError(f"feature selection keep: {s!r} is not a share in (0, 1]")
    return tuple(sorted({float(s) for s in keep}, reverse=True))


def n_kept(share: float, n_features: int) -> int:
    return max(1, min(n_features, math.ceil(share * n_features)))


def _importance(est, n: int) -> np.ndarray:
    imp = np.asarray(getattr(est, "feature_importances_", np.zeros(n)), dtype=np.float64)
    return imp if imp.shape == (n,) and np.isfinite(imp).all() else np.zeros(n)


def _top(columns: np.ndarray, importance: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most important of ``columns`` (ties: the earlier column), in input order."""
    order = np.lexsort((columns, -importance))  # by importance desc, then column index
    return np.sort(columns[order[:k]])


def _proba_full(est, X: np.ndarray, n_classes: int) -> np.ndarray:
    p = np.asarray(est.predict_proba(X), dtype=np.float64)
    out = np.zeros((X.shape[0], n_classes))
    out[:, np.asarray(est.classes_, dtype=np.int64)] = p
    return out


def _path(X: np.ndarray, y_enc: np.ndarray, train: np.ndarray, shares: tuple[float, ...], method: str,
          make_ranker: Callable[[], object], test: np.ndarray | None, n_classes: int):
    """Columns kept at every share (fitted on ``train``) and, with ``test``, their held-out probabilities."""
    n = X.shape[1]
    current = np.arange(n)
    est = make_ranker().fit(X[np.ix_(train, current)], y_enc[train])
    first_importance = _importance(est, current.size)
    importance = first_importance
    cols, probas = [], []
    for share in shares:
        k = n_kept(share, n)
        if k < current.size:
            if method == "importance":
                current = _top(np.arange(n), first_importance, k)
            else:  # rfe: from the ranking of the forest on the previous share's features
                current = _top(current, importance, k)
            est = make_ranker().fit(X[np.ix_(train, current)], y_enc[train])
            importance = _importance(est, current.size)
        cols.append(current.copy())
        if test is not None:
            probas.append(_proba_full(est, X[np.ix_(test, current)], n_classes))
    return cols, probas


@dataclass
class SelectionResult:
    """The kept column indices (input order), the chosen share and every share's score."""

    columns: np.ndarray
    share: float
    method: str
    scores: dict[float, float] = field(default_factory=dict)

    def record(self, names: Sequence[str] | None = None) -> dict:
        out = {"method": self.method, "share": self.share, "n_selected": int(self.columns.size),
               "scores": {str(k): v for k, v in self.scores.items()}, "columns": [int(c) for c in self.columns]}
        if names is not None:
            out["selected"] = [str(names[c]) for c in self.columns]
        return out


def select_features(X: np.ndarray, y_enc: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]], *,
                    method: str, make_ranker: Callable[[], object], keep: Sequence[float] = DEFAULT_KEEP,
                    metric: str = "log_loss") -> SelectionResult:
    """The columns of ``X`` to keep, by ``method`` (:data:`METHODS`), the share chosen on ``folds``.

    ``y_enc``: labels 0..n_classes-1; ``folds``: ``(train_idx, test_idx)`` with every row
    in one test fold; ``make_ranker()``: a fresh classifier with ``feature_importances_``.
    """
    if method not in METHODS:
        raise ValueError(f"feature selection method must be one of {METHODS}, got {method!r}")
    if metric not in METRICS:
        raise ValueError(f"feature selection metric must be one of {METRICS}, got {metric!r}")
    shares = check_keep(keep)
    n_classes = int(y_enc.max()) + 1
    if len(shares) > 1:
        oof = [np.zeros((y_enc.size, n_classes)) for _ in shares]
        for train, test in folds:
            _, probas = _path(X, y_enc, train, shares, method, make_ranker, test, n_classes)
            for o, p in zip(oof, probas):
                o[test] = p
        scores = {s: score_proba(o, y_enc, metric) for s, o in zip(shares, oof)}
        share = max(shares, key=lambda s: (scores[s], s))  # a tie keeps more features
    else:
        scores, share = {}, shares[0]
    all_rows = np.arange(y_enc.size)
    cols, _ = _path(X, y_enc, all_rows, tuple(s for s in shares if s >= share), method, make_ranker, None,
                    n_classes)
    return SelectionResult(columns=cols[-1], share=share, method=method, scores=scores)
