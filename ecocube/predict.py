"""Block-wise prediction with bounded memory and a fixed thread budget.

:func:`predict_block` takes the feature matrix of one processing block, splits it into
row chunks and predicts them in parallel with joblib (threads, so the model is shared,
not copied), writing into preallocated compact outputs:

- ``proba``        uint8 ``(n_classes, n)``, 0..100 (probability × 100, rounded)
- ``hard``         uint16 ``(n,)``, class codes of the most probable class
- ``uncertainty``  uint8 ``(n,)``, 0..100: std of the base learners' probability of the
  chosen class × 100

Rows with any non-finite feature (pixels the gap-filling could not fill) are **not**
predicted: they get the nodata values below and are reported by :func:`predicted_mask`.
While a block is predicted, every learner of the bundle that has an ``n_jobs``
parameter (scikit-learn forests, LightGBM) is set to one thread and the native pools
(OpenMP, BLAS) are limited to one thread per chunk, so the total never exceeds
``threads`` — whatever ``n_jobs`` the model was trained with. (Do not call
:func:`predict_block` on the same bundle from two threads at once.)
"""

from __future__ import annotations

import contextlib

import numpy as np

from .products import PRODUCTS

#: nodata codes of the three model outputs (from the products registry)
PROBA_NODATA = int(PRODUCTS["proba"].nodata)
CLASS_NODATA = int(PRODUCTS["class"].nodata)
UNCERTAINTY_NODATA = int(PRODUCTS["uncertainty"].nodata)

#: rows per prediction chunk; small enough to keep per-chunk copies in cache-sized memory
DEFAULT_CHUNK_ROWS = 16384


def predicted_mask(X: np.ndarray) -> np.ndarray:
    """``True`` for rows whose features are all finite (these are predicted)."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"features must be 2-D (pixels, features), got shape {X.shape}")
    return np.isfinite(X).all(axis=1)


def _to_percent(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(values, dtype=np.float64) * 100.0), 0, 100).astype(np.uint8)


def _predict_chunk(bundle, X: np.ndarray, rows: np.ndarray, codes: np.ndarray,
                   proba_out: np.ndarray, hard_out: np.ndarray, unc_out: np.ndarray, controller=None) -> None:
    """Predict ``X[rows]`` and write into the outputs at ``rows`` (disjoint between chunks).

    ``controller``: a ``threadpoolctl.ThreadpoolController`` (finding the native libraries
    is the slow part of ``threadpool_limits``: ~4 ms, serial, so it is done once per block).
    """
    if controller is None:
        from threadpoolctl import ThreadpoolController

        controller = ThreadpoolController()
    Xc = X[rows]
    # OpenMP limits are per thread (libgomp ICVs), so each worker thread sets its own
    with controller.limit(limits=1, user_api="openmp"):
        both = getattr(bundle, "predict_proba_and_uncertainty", None)
        if both is not None:  # one pass of the base learners instead of two
            proba, unc = both(Xc)
        else:
            proba, unc = bundle.predict_proba(Xc), bundle.predict_uncertainty(Xc)
        proba = np.asarray(proba, dtype=np.float64)
        unc = np.asarray(unc, dtype=np.float64)
    n_classes = codes.shape[0]
    if proba.shape != (rows.shape[0], n_classes):
        raise ValueError(f"model returned probabilities of shape {proba.shape}, "
                         f"expected {(rows.shape[0], n_classes)}")
    if not np.isfinite(proba).all():
        raise ValueError("model returned non-finite probabilities")
    best = np.argmax(proba, axis=1)
    proba_out[:, rows] = _to_percent(proba.T)
    hard_out[rows] = codes[best]
    if unc.ndim == 2:
        if unc.shape != proba.shape:
            raise ValueError(f"model returned uncertainty of shape {unc.shape}, expected {proba.shape}")
        unc = unc[np.arange(unc.shape[0]), best]
    elif unc.shape != (rows.shape[0],):
        raise ValueError(f"model returned uncertainty of shape {unc.shape}")
    unc_out[rows] = _to_percent(unc)


def _estimators(bundle) -> list:
    model = getattr(bundle, "model", bundle)
    found = [model]
    for est in getattr(model, "estimators_", None) or ():
        found.append(est[1] if isinstance(est, tuple) else est)
    for name in ("meta_learner_", "final_estimator_"):
        if getattr(model, name, None) is not None:
            found.append(getattr(model, name))
    return found


@contextlib.contextmanager
def learner_threads(bundle, n_jobs: int = 1):
    """Temporarily set ``n_jobs`` of the bundle's learners (those that have it)."""
    changed = []
    try:
        for est in _estimators(bundle):
            get_params = getattr(est, "get_params", None)
            if get_params is None:
                continue
            try:
                params = get_params(deep=False)
            except Exception:  # noqa: BLE001 - not a scikit-learn estimator after all
                continue
            if "n_jobs" in params and params["n_jobs"] != n_jobs:
                est.set_params(n_jobs=n_jobs)
                changed.append((est, params["n_jobs"]))
        yield
    finally:
        for est, old in changed:
            est.set_params(n_jobs=old)


def predict_block(bundle, X: np.ndarray, *, threads: int | None = None,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predict one block's pixels (see the module docstring for the outputs).

    ``bundle`` needs ``predict_proba(X) -> (n, n_classes)``, ``predict_uncertainty(X)``
    (``(n, n_classes)`` per-class std or ``(n,)``) and ``classes`` (the class codes in the
    column order of ``predict_proba``). ``threads`` defaults to the allocation
    (:func:`ecocube.env.available_threads`).
    """
    # scikit-learn's joblib wrappers: same joblib threads, with sklearn's config propagated
    from sklearn.utils.parallel import Parallel, delayed

    from .env import available_threads

    X = np.asarray(X)
    ok = predicted_mask(X)
    codes = np.asarray(bundle.classes)
    if codes.ndim != 1 or codes.size < 2:
        raise ValueError(f"bundle.classes must list at least two class codes, got {codes!r}")
    if codes.min() < 0 or codes.max() >= CLASS_NODATA:
        raise ValueError(f"class codes must lie in 0..{CLASS_NODATA - 1}, got {codes.tolist()}")
    codes = codes.astype(np.uint16)
    n = X.shape[0]
    proba = np.full((codes.size, n), PROBA_NODATA, dtype=np.uint8)
    hard = np.full(n, CLASS_NODATA, dtype=np.uint16)
    unc = np.full(n, UNCERTAINTY_NODATA, dtype=np.uint8)
    rows = np.flatnonzero(ok)
    if rows.size == 0:
        return proba, hard, unc
    threads = available_threads(threads)
    # at most chunk_rows rows per chunk, and a multiple of the threads so that every
    # thread gets the same number of equal chunks (3 chunks on 2 threads left one idle a third of the time)
    n_chunks = -(-max(1, -(-rows.size // max(1, chunk_rows))) // threads) * threads
    n_chunks = min(n_chunks, rows.size)
    chunks = [c for c in np.array_split(rows, n_chunks) if c.size]
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    # BLAS thread pools are process-wide: limit them once, around all chunks
    with controller.limit(limits=1, user_api="blas"), learner_threads(bundle, 1):
        if threads == 1 or len(chunks) == 1:
            for c in chunks:
                _predict_chunk(bundle, X, c, codes, proba, hard, unc, controller)
        else:
            Parallel(n_jobs=min(threads, len(chunks)), prefer="threads", require="sharedmem")(
                delayed(_predict_chunk)(bundle, X, c, codes, proba, hard, unc, controller) for c in chunks
            )
    return proba, hard, unc


#: nodata of the regression outputs mean / lower / upper (float32, from the products registry)
VALUE_NODATA = float(PRODUCTS["mean"].nodata)


def predict_regression_block(bundle, X: np.ndarray, *, threads: int | None = None,
                             chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A regression bundle's ``(mean, lower, upper)`` float32 ``(n,)`` for one block's pixels.

    ``bundle`` needs ``predict_with_interval(X) -> (mean, lower, upper)`` (the interval level
    is the bundle's ``interval_coverage``). Rows with a non-finite feature, and predictions
    that are not finite, get :data:`VALUE_NODATA`. Chunks run on at most ``threads`` joblib
    threads with every learner and native pool at one thread, as in :func:`predict_block`.
    """
    from sklearn.utils.parallel import Parallel, delayed

    from .env import available_threads

    X = np.asarray(X)
    ok = predicted_mask(X)
    n = X.shape[0]
    outs = tuple(np.full(n, VALUE_NODATA, dtype=np.float32) for _ in range(3))
    rows = np.flatnonzero(ok)
    if rows.size == 0:
        return outs
    threads = available_threads(threads)
    n_chunks = min(rows.size, -(-max(1, -(-rows.size // max(1, chunk_rows))) // threads) * threads)
    chunks = [c for c in np.array_split(rows, n_chunks) if c.size]

    def _one(c: np.ndarray) -> None:
        for out, values in zip(outs, bundle.predict_with_interval(X[c])):
            values = np.asarray(values, dtype=np.float32)
            out[c] = np.where(np.isfinite(values), values, np.float32(VALUE_NODATA))

    from threadpoolctl import ThreadpoolController

    with ThreadpoolController().limit(limits=1), learner_threads(bundle, 1):
        if threads == 1 or len(chunks) == 1:
            for c in chunks:
                _one(c)
        else:
            Parallel(n_jobs=min(threads, len(chunks)), prefer="threads", require="sharedmem")(
                delayed(_one)(c) for c in chunks)
    return outs
