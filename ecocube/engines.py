"""Fast inference engines for the ensemble's tree learners, verified against the stock ones.

An *engine* computes one fitted base learner's class probabilities faster than its own
``predict_proba``, and equal to it (max abs difference <= :data:`TOLERANCE`):

``numba-forest``  scikit-learn random forests / extra trees. The trees are packed into
    flat arrays (float32 threshold; int64 ``left << 16 | feature`` with the index of the
    left child, the right child being the next node: one load a step), 12 bytes a node
    instead of sklearn's 64 (+8 for the packed word while loaded), so one
    deep tree (~24 k nodes) stays in the L2 cache while a block of rows runs through it
    (tree-outer loop). A step is branch-free (``node = left + (x > t)``) and leaves loop
    onto themselves, so 8 rows walk a tree together, their 8 node indices in registers,
    until all 8 are at a leaf: the CPU overlaps their loads instead of mispredicting every
    second split (measured on one core, realistic forest: 2.8x stock, against 1.2x for a
    per-row loop with branches). A pure leaf stores
    its class index, an impure one a row of probabilities. Thresholds are rounded *down*
    to float32, which keeps ``x <= t`` exact for the float32 features scikit-learn compares.
    Walked in the *keyed* layout (:class:`_Keyed`) where the forest fits it (<= 512
    features, trees of <= 2**20 nodes): a node is one int64 ``key(threshold) << 32 |
    left << 12 | feature * 8``, the rows are int32 keys with the float order
    (:func:`float_keys`), interleaved by groups of 8 (:func:`_interleaved_at`) so the 8
    lanes read at constant offsets from one base, and indices are unsigned (no wraparound
    code): 8 bytes and ~8 instructions a step instead of 12 bytes and ~13 (realistic forest,
    1 thread, CPU time: 1.3x the 12-byte float walk, which remains the fallback).
``numba-gbdt``    LightGBM multiclass/binary models: the same layout, 8 rows walking each
    small tree for exactly its depth (no test: 1.1x the walk-until-leaves here), float64
    thresholds and leaf values, raw scores summed per class in float64 in tree order, then
    softmax (or sigmoid) as LightGBM does.
``numba-forest-bins``, ``numba-gbdt-bins``  the same walks on *binned* rows (:class:`_Bins`):
    a row's value is replaced once by its rank among the feature's distinct thresholds
    (uint8 for LightGBM's <= 255 a feature, uint16 for a deep forest's ~40 k), so ``x > t``
    becomes an exact integer comparison, a node is one int64 word with constant shifts
    (no threshold array, no variable shift) and a row 1-2 bytes a feature, the rows
    interleaved by groups of 8 and indexed unsigned as in the keyed forest. Realistic model,
    1 thread, CPU time: LightGBM 1.5x ``numba-gbdt``, then 1.4x from the interleaved rows
    and unsigned indices; float32 rows are ranked by a bucket table
    (:meth:`_Bins.rank_table`, 5.8x the binary search that float64 rows keep);
    the forest's walk gains ~20 % but ranking against 40 k thresholds a feature costs more,
    so ``numba-forest`` stays the forest's choice there (decided per learner by
    :func:`build_engines`).

:func:`build_engines` measures the candidates for every learner of a fitted
:class:`~ecocube.ensemble.EnsembleClassifier` on a sample of rows and keeps the fastest
one that equals the stock predictor (or stock when none is faster); the result, an
:class:`EngineSet`, is what a model bundle records. :meth:`EngineSet.verify` re-checks
every engine on the sample it keeps (at load time): an engine that fails to load or
differs by more than the tolerance is dropped with a warning naming the learner, and that
learner predicts with its stock ``predict_proba``.

Engines run on the calling thread (the numba kernels release the GIL), so
:func:`ecocube.predict.predict_block`'s row chunks give the parallelism and the thread
budget stays that of the allocation.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: max abs difference of an engine's probabilities from the stock predictor's
TOLERANCE = 1e-5
#: the values of the run config's ``model.engine``
ENGINE_MODES = ("stock", "auto")
#: rows run through one tree before the next (tree-outer loop). A deep forest tree (~290 kB
#: packed) is reloaded into L2 once per block, so its blocks are long (measured on the
#: realistic forest, 1 thread: 1,024 / 2,048 / 4,096 rows: 2.5x / 2.9x / 3.25x stock);
#: a LightGBM tree (~1 kB) stays in L1 and short blocks keep the rows there too (interleaved
#: binned rows, realistic LightGBM, 1 thread: 64 / 128 / 256 / 512 rows: 0.221 / 0.217 /
#: 0.227-0.236 / 0.245 CPU s for 8,192 rows).
FOREST_BLOCK_ROWS = 4096
GBDT_BLOCK_ROWS = 128


class EngineWarning(UserWarning):
    """An engine could not be used; the learner falls back to its stock predictor."""


# ---------------------------------------------------------------------- numba kernels


def _njit(**kw):
    import numba

    return numba.njit(nogil=True, cache=True, **kw)


_kernels: dict = {}


def _kernel(name: str):
    """Compile (once per process, cached on disk by numba) and return a kernel."""
    fn = _kernels.get(name)
    if fn is None:
        if not _kernels:  # the helpers, inlined into the kernels (module globals the kernels call)
            for helper in _HELPERS:
                globals()[helper.__name__] = _njit(inline="always")(helper)
        fn = _kernels[name] = _njit()(_KERNEL_SOURCES[name])
    return fn


def _walk8(X, g, fl, thr, root, depth):
    """The leaves reached by rows ``g .. g+7`` in one tree: 8 independent chains in registers.

    Every step is ``node = left + (x > t)``, no branch; leaves loop onto themselves, so
    ``depth`` (the tree's depth) steps bring every row to its leaf.
    """
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = root
    for _ in range(depth):
        a = fl[n0]
        n0 = (a >> 16) + (X[g, a & 0xFFFF] > thr[n0])
        a = fl[n1]
        n1 = (a >> 16) + (X[g + 1, a & 0xFFFF] > thr[n1])
        a = fl[n2]
        n2 = (a >> 16) + (X[g + 2, a & 0xFFFF] > thr[n2])
        a = fl[n3]
        n3 = (a >> 16) + (X[g + 3, a & 0xFFFF] > thr[n3])
        a = fl[n4]
        n4 = (a >> 16) + (X[g + 4, a & 0xFFFF] > thr[n4])
        a = fl[n5]
        n5 = (a >> 16) + (X[g + 5, a & 0xFFFF] > thr[n5])
        a = fl[n6]
        n6 = (a >> 16) + (X[g + 6, a & 0xFFFF] > thr[n6])
        a = fl[n7]
        n7 = (a >> 16) + (X[g + 7, a & 0xFFFF] > thr[n7])
    return n0, n1, n2, n3, n4, n5, n6, n7


def _walk8_until(X, g, fl, thr, root):
    """As :func:`_walk8`, stepping until all 8 rows are at a leaf: for deep, unbalanced trees
    (a forest's leaves lie at depths 10..38), where a fixed depth would waste half the steps."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = root
    while True:
        a = fl[n0]
        m0 = (a >> 16) + (X[g, a & 0xFFFF] > thr[n0])
        a = fl[n1]
        m1 = (a >> 16) + (X[g + 1, a & 0xFFFF] > thr[n1])
        a = fl[n2]
        m2 = (a >> 16) + (X[g + 2, a & 0xFFFF] > thr[n2])
        a = fl[n3]
        m3 = (a >> 16) + (X[g + 3, a & 0xFFFF] > thr[n3])
        a = fl[n4]
        m4 = (a >> 16) + (X[g + 4, a & 0xFFFF] > thr[n4])
        a = fl[n5]
        m5 = (a >> 16) + (X[g + 5, a & 0xFFFF] > thr[n5])
        a = fl[n6]
        m6 = (a >> 16) + (X[g + 6, a & 0xFFFF] > thr[n6])
        a = fl[n7]
        m7 = (a >> 16) + (X[g + 7, a & 0xFFFF] > thr[n7])
        done = ((m0 == n0) & (m1 == n1) & (m2 == n2) & (m3 == n3)
                & (m4 == n4) & (m5 == n5) & (m6 == n6) & (m7 == n7))
        n0, n1, n2, n3, n4, n5, n6, n7 = m0, m1, m2, m3, m4, m5, m6, m7
        if done:
            return n0, n1, n2, n3, n4, n5, n6, n7


def _walk1(X, r, fl, thr, root, depth):
    nd = root
    for _ in range(depth):
        a = fl[nd]
        nd = (a >> 16) + (X[r, a & 0xFFFF] > thr[nd])
    return nd


def _bstep(Xi, base, j, w, n):
    """One step of lane ``j`` on interleaved binned rows (:func:`_bin_rows`), node word
    ``w = left << 32 | (feature * 8) << 16 | rank``. The indices are unsigned: numba then
    emits no negative-index wraparound (3 instructions a step), and the 8 lanes of a group
    share one base pointer (lane ``j`` is a constant displacement)."""
    a = w[np.uint64(n)]
    return (a >> 32) + (Xi[np.uint64(base + ((a >> 16) & 0xFFFF) + j)] > (a & 0xFFFF))


def _bwalk8(Xi, base, w, root, depth):
    """As :func:`_walk8` on the interleaved binned rows of one group of 8 (see :func:`_bstep`)."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = root
    for _ in range(depth):
        n0 = _bstep(Xi, base, 0, w, n0)
        n1 = _bstep(Xi, base, 1, w, n1)
        n2 = _bstep(Xi, base, 2, w, n2)
        n3 = _bstep(Xi, base, 3, w, n3)
        n4 = _bstep(Xi, base, 4, w, n4)
        n5 = _bstep(Xi, base, 5, w, n5)
        n6 = _bstep(Xi, base, 6, w, n6)
        n7 = _bstep(Xi, base, 7, w, n7)
    return n0, n1, n2, n3, n4, n5, n6, n7


def _bwalk8_until(Xi, base, w, root):
    """As :func:`_walk8_until` on the interleaved binned rows of one group of 8."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = root
    while True:
        m0 = _bstep(Xi, base, 0, w, n0)
        m1 = _bstep(Xi, base, 1, w, n1)
        m2 = _bstep(Xi, base, 2, w, n2)
        m3 = _bstep(Xi, base, 3, w, n3)
        m4 = _bstep(Xi, base, 4, w, n4)
        m5 = _bstep(Xi, base, 5, w, n5)
        m6 = _bstep(Xi, base, 6, w, n6)
        m7 = _bstep(Xi, base, 7, w, n7)
        done = ((m0 == n0) & (m1 == n1) & (m2 == n2) & (m3 == n3)
                & (m4 == n4) & (m5 == n5) & (m6 == n6) & (m7 == n7))
        n0, n1, n2, n3, n4, n5, n6, n7 = m0, m1, m2, m3, m4, m5, m6, m7
        if done:
            return n0, n1, n2, n3, n4, n5, n6, n7


def _interleaved_at(r, f, n_features):
    """Position of row ``r``, feature ``f`` in the interleaved layout: groups of 8 rows, each
    group feature-major (``[group][feature][lane]``), so the 8 lanes of a group read their
    values at constant offsets from one base."""
    return (r >> 3) * n_features * 8 + f * 8 + (r & 7)


def _bin_rows(XT, cuts, offsets, out):
    """``out`` (interleaved, :func:`_interleaved_at`; padding rows stay as given): how many of
    feature ``f``'s sorted thresholds ``cuts[offsets[f]:offsets[f + 1]]`` lie below ``XT[f, r]``
    (the rows transposed: one feature's values are read in order) (NaN: 0, i.e. left at
    every split, as ``NaN > t`` is false). ``x > cuts[j]`` iff ``rank(x) > j``: the binned
    comparison is exact. Branch-free binary search (a fixed number of halvings, the step
    chosen by a conditional move)."""
    n = XT.shape[1]
    n_feat = offsets.shape[0] - 1
    for f in range(n_feat):
        lo0 = offsets[f]
        cnt = offsets[f + 1] - lo0
        if cnt == 0:
            for r in range(n):
                out[_interleaved_at(r, f, n_feat)] = 0
            continue
        for r in range(n):
            x = XT[f, r]
            base = lo0
            size = cnt
            while size > 1:
                half = size >> 1
                base += half * (cuts[base + half - 1] < x)
                size -= half
            out[_interleaved_at(r, f, n_feat)] = base - lo0 + (cuts[base] < x)  # NaN: rank 0


def _float_key(x, b):
    """The int32 key of float32 ``x`` whose bits are ``b`` (see :func:`_float_keys`)."""
    if np.isnan(x):
        return -2147483648
    if b >= 0:
        return b
    if b == -2147483648:  # -0.0: the key of +0.0
        return 0
    return b ^ 0x7FFFFFFF  # negative: the more negative, the smaller


def _rank_rows(XT, BT, table, ukeys, offsets, out):
    """As :func:`_bin_rows` for float32 rows (``BT``: their bits) by bucket table
    (:meth:`_Bins.rank_table`): the rank at the start of the value's key bucket, plus the
    cuts of that bucket below the value."""
    n = XT.shape[1]
    n_feat = offsets.shape[0] - 1
    for f in range(n_feat):
        lo0 = offsets[f]
        hi = offsets[f + 1]
        tb = f * 65536
        for r in range(n):
            u = _float_key(XT[f, r], BT[f, r]) + 2147483648  # 0 .. 2**32 - 1, in float order
            k = lo0 + table[tb + (u >> 16)]
            while k < hi and ukeys[k] < u:
                k += 1
            out[_interleaved_at(r, f, n_feat)] = k - lo0


def _float_keys(X, B, out):
    """``out`` (interleaved, :func:`_interleaved_at`; padding rows stay as given): the float32
    ``X`` (``B``: its bits, ``X.view(np.int32)``) as int32 keys whose signed order is the float
    order (``x > t`` iff ``key(x) > key(t)``, :func:`float_keys`); NaN becomes the least key
    (left at every split, as ``NaN > t`` is false)."""
    n, n_feat = X.shape
    for r in range(n):
        for f in range(n_feat):
            out[_interleaved_at(r, f, n_feat)] = _float_key(X[r, f], B[r, f])


def _kstep(Xk, base, j, w, n):
    """One step of lane ``j`` of the keyed forest walk (:class:`_Keyed`): node word
    ``key(threshold) << 32 | left << 12 | feature * 8`` (``left`` relative to the tree's
    root), unsigned indices (see :func:`_bstep`)."""
    a = w[np.uint64(n)]
    return ((a >> 12) & 0xFFFFF) + (Xk[np.uint64(base + (a & 0xFFF) + j)] > (a >> 32))


def _kwalk8_until(Xk, base, w):
    """As :func:`_walk8_until` for the keyed layout: 8 lanes from the root (0) of the tree ``w``
    until all 8 are at a leaf."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = 0
    while True:
        m0 = _kstep(Xk, base, 0, w, n0)
        m1 = _kstep(Xk, base, 1, w, n1)
        m2 = _kstep(Xk, base, 2, w, n2)
        m3 = _kstep(Xk, base, 3, w, n3)
        m4 = _kstep(Xk, base, 4, w, n4)
        m5 = _kstep(Xk, base, 5, w, n5)
        m6 = _kstep(Xk, base, 6, w, n6)
        m7 = _kstep(Xk, base, 7, w, n7)
        done = ((m0 == n0) & (m1 == n1) & (m2 == n2) & (m3 == n3)
                & (m4 == n4) & (m5 == n5) & (m6 == n6) & (m7 == n7))
        n0, n1, n2, n3, n4, n5, n6, n7 = m0, m1, m2, m3, m4, m5, m6, m7
        if done:
            return n0, n1, n2, n3, n4, n5, n6, n7


def _kwalk_accumulate_proba(Xk, n_feat, w, roots, ends, payload, leaf_proba, out, block):
    """:func:`_walk_accumulate_proba` on keyed rows (:func:`_float_keys`) and keyed trees
    (tree ``t``: ``w[roots[t]:ends[t]]``, children relative to its root)."""
    n = out.shape[0]
    n_groups = (n + 7) // 8
    group_block = max(1, block // 8)
    for g0 in range(0, n_groups, group_block):
        g1 = min(n_groups, g0 + group_block)
        for t in range(roots.shape[0]):
            wt = w[roots[t]:ends[t]]
            pt = payload[roots[t]:ends[t]]
            for g in range(g0, g1):
                leaves = _kwalk8_until(Xk, g * n_feat * 8, wt)
                r = g * 8
                for j in range(min(8, n - r)):
                    _add_leaf_proba(out, r + j, pt[leaves[j]], leaf_proba)


def _add_leaf_proba(out, r, p, leaf_proba):
    if p >= 0:  # pure leaf: its class
        out[r, p] += 1.0
    else:
        row = -p - 1
        for c in range(out.shape[1]):
            out[r, c] += leaf_proba[row, c]


def _bwalk_accumulate_proba(Xi, n_feat, w, roots, depths, payload, leaf_proba, out, block):
    """:func:`_walk_accumulate_proba` on interleaved binned rows (:func:`_bin_rows`)."""
    n = out.shape[0]
    n_groups = (n + 7) // 8
    group_block = max(1, block // 8)
    for g0 in range(0, n_groups, group_block):
        g1 = min(n_groups, g0 + group_block)
        for t in range(roots.shape[0]):
            root = roots[t]
            for g in range(g0, g1):
                leaves = _bwalk8_until(Xi, g * n_feat * 8, w, root)
                r = g * 8
                for j in range(min(8, n - r)):
                    _add_leaf_proba(out, r + j, payload[leaves[j]], leaf_proba)


def _bwalk_accumulate_raw(Xi, n_feat, w, roots, depths, leaf_value, n_per_iter, out, block):
    """:func:`_walk_accumulate_raw` on interleaved binned rows (:func:`_bin_rows`)."""
    n = out.shape[0]
    n_groups = (n + 7) // 8
    group_block = max(1, block // 8)
    for g0 in range(0, n_groups, group_block):
        g1 = min(n_groups, g0 + group_block)
        for t in range(roots.shape[0]):
            root = roots[t]
            depth = depths[t]
            k = t % n_per_iter
            for g in range(g0, g1):
                leaves = _bwalk8(Xi, g * n_feat * 8, w, root, depth)
                r = g * 8
                if r + 8 <= n:
                    for j in range(8):
                        out[r + j, k] += leaf_value[leaves[j]]
                else:
                    for j in range(n - r):
                        out[r + j, k] += leaf_value[leaves[j]]


def _walk_accumulate_proba(X, fl, thr, roots, depths, payload, leaf_proba, out, block):
    """Sum over trees of the leaf probabilities of every row of ``X`` into ``out`` (float64).

    Tree-outer loop over blocks of ``block`` rows: one tree stays in cache for the block.
    """
    n = X.shape[0]
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        for t in range(roots.shape[0]):
            root = roots[t]
            depth = depths[t]
            g = b0
            while g + 8 <= b1:
                leaves = _walk8_until(X, g, fl, thr, root)
                for j in range(8):
                    _add_leaf_proba(out, g + j, payload[leaves[j]], leaf_proba)
                g += 8
            for r in range(g, b1):
                _add_leaf_proba(out, r, payload[_walk1(X, r, fl, thr, root, depth)], leaf_proba)


def _walk_accumulate_raw(X, fl, thr, roots, depths, leaf_value, n_per_iter, out, block):
    """Sum of the trees' leaf values per class (tree ``t`` adds to class ``t % n_per_iter``), in tree order."""
    n = X.shape[0]
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        for t in range(roots.shape[0]):
            root = roots[t]
            depth = depths[t]
            k = t % n_per_iter
            g = b0
            while g + 8 <= b1:
                leaves = _walk8(X, g, fl, thr, root, depth)
                for j in range(8):
                    out[g + j, k] += leaf_value[leaves[j]]
                g += 8
            for r in range(g, b1):
                out[r, k] += leaf_value[_walk1(X, r, fl, thr, root, depth)]


def _pair_order(children_left, children_right):
    """Breadth-first order in which the two children of a node are adjacent.

    Returns ``order`` (new position -> old node id), ``left`` (new position of the left
    child, or the node's own position for a leaf) and the tree's depth.
    """
    n = children_left.shape[0]
    order = np.empty(n, dtype=np.int64)
    left = np.empty(n, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    order[0] = 0
    nxt = 1
    for head in range(n):
        if head >= nxt:
            break
        old = order[head]
        cl = children_left[old]
        if cl < 0:
            left[head] = head
        else:
            order[nxt] = cl
            order[nxt + 1] = children_right[old]
            depth[nxt] = depth[nxt + 1] = depth[head] + 1
            left[head] = nxt
            nxt += 2
    return order[:nxt], left[:nxt], depth[:nxt].max()


_HELPERS = (_walk8, _walk8_until, _walk1, _add_leaf_proba, _bstep, _bwalk8, _bwalk8_until, _interleaved_at,
            _float_key, _kstep, _kwalk8_until)
_KERNEL_SOURCES = {
    "proba": _walk_accumulate_proba,
    "raw": _walk_accumulate_raw,
    "pair_order": _pair_order,
    "bin_rows": _bin_rows,
    "bproba": _bwalk_accumulate_proba,
    "braw": _bwalk_accumulate_raw,
    "float_keys": _float_keys,
    "rank_rows": _rank_rows,
    "kproba": _kwalk_accumulate_proba,
}


def floor_float32(values: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 value: ``x <= t`` iff ``x <= floor_float32(t)`` for float32 ``x``."""
    values = np.asarray(values, dtype=np.float64)
    out = values.astype(np.float32)
    over = out.astype(np.float64) > values
    out[over] = np.nextafter(out[over], np.float32(-np.inf))
    return out


def float_keys(values: np.ndarray) -> np.ndarray:
    """int64 keys of float32 ``values`` whose order is the float order: ``x > t`` iff
    ``key(x) > key(t)`` for non-NaN float32 ``x``, ``t`` (-0.0 and +0.0 get the same key).

    The float's bits as a signed int32 are already ordered for values >= 0; for negative
    values the magnitude bits are flipped (``b ^ 0x7FFFFFFF``), so a larger magnitude gives
    a smaller key. NaN gets the least int32 (it compares greater than no threshold).
    """
    v = np.asarray(values, dtype=np.float32) + np.float32(0.0)  # -0.0 -> +0.0
    b = v.view(np.int32).astype(np.int64)
    keys = np.where(b >= 0, b, b ^ 0x7FFFFFFF)
    keys[np.isnan(v)] = -2**31
    return keys


# ---------------------------------------------------------------------- engines


@dataclass
class _PackedTrees:
    """Trees in pair layout (see the module docstring), concatenated."""

    feat: np.ndarray     # int32: split feature (0 at leaves)
    thr: np.ndarray      # float32 or float64: split threshold (+inf at leaves: never go right)
    left: np.ndarray     # int32: global index of the left child (own index at leaves)
    roots: np.ndarray    # int64: global index of every tree's root
    depths: np.ndarray   # int64: every tree's depth (steps from the root to its deepest leaf)

    @property
    def n_nodes(self) -> int:
        return int(self.feat.shape[0])

    @property
    def node(self) -> np.ndarray:
        """int64 per node: ``left << 16 | feature``, one load a step instead of two
        (LightGBM, 1 thread: 1.4x the separate arrays)."""
        node = getattr(self, "_node", None)
        if node is None:
            node = self._node = (self.left.astype(np.int64) << 16) | self.feat.astype(np.int64)
        return node

    def keyed(self) -> _Keyed | None:
        """The trees in the keyed layout (:class:`_Keyed`), built once from ``feat``/``thr``/``left``;
        None when they do not fit it (thresholds not float32, > 512 features, or a tree of
        more than 2**20 nodes)."""
        if not hasattr(self, "_keyed"):
            self._keyed = _Keyed.build(self)
        return self._keyed

    def binned(self) -> _Bins | None:
        """The trees on binned features (:class:`_Bins`), built once from ``feat``/``thr``/``left``
        (so a changed threshold changes them too); None when a feature has more than 65,535
        distinct thresholds."""
        if not hasattr(self, "_binned"):
            self._binned = _Bins.build(self)
        return self._binned

    def __getstate__(self):  # derived arrays are rebuilt after loading, not stored
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass
class _Keyed:
    """A forest in one int64 word a node: ``key(threshold) << 32 | left << 12 | feature * 8``.

    ``key`` is :func:`float_keys` (an order-preserving int32 for the float32 threshold,
    INT32_MAX at leaves: never right), ``left`` the left child's index relative to its
    tree's root (the right child is the next node; a leaf is its own left child), and
    ``feature * 8`` the feature's offset in a group of 8 interleaved keyed rows
    (:func:`_float_keys`). A step is one 8-byte load, a row load at a constant offset from
    the group's base, one integer compare and an add: 8 bytes a node instead of 12, and no
    float compare (the rows are keyed once, a cheap pass, unlike ranking them against a
    deep forest's ~40 k thresholds a feature: see :class:`_Bins`).
    """

    word: np.ndarray      # int64 per node
    ends: np.ndarray      # int64 per tree: one past its last node (its nodes: roots[t]:ends[t])
    n_features: int       # features of the keyed rows (1 + the largest split feature)

    MAX_FEATURES = 512    # feature * 8 in 12 bits
    MAX_TREE_NODES = 2**20

    @classmethod
    def build(cls, packed: _PackedTrees) -> _Keyed | None:
        if packed.thr.dtype != np.float32:
            return None
        n = packed.n_nodes
        roots = packed.roots.astype(np.int64)
        ends = np.append(roots[1:], n).astype(np.int64)
        if n == 0 or int((ends - roots).max()) > cls.MAX_TREE_NODES:
            return None
        left = packed.left.astype(np.int64)
        leaf = left == np.arange(n)
        feat = np.where(leaf, 0, packed.feat.astype(np.int64))
        n_features = int(feat.max()) + 1
        if n_features > cls.MAX_FEATURES:
            return None
        tree = np.repeat(np.arange(roots.size), ends - roots)
        key = float_keys(np.where(leaf, np.float32(0.0), packed.thr))
        key[leaf] = 2**31 - 1  # no key is greater: a leaf's step stays on it
        word = (key << 32) | ((left - roots[tree]) << 12) | (feat * 8)
        return cls(word, ends, n_features)

    def rows(self, X: np.ndarray) -> np.ndarray:
        """``X``'s int32 keys, interleaved by groups of 8 rows (padded), for the walk."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.shape[1] < self.n_features:
            raise ValueError(f"{X.shape[1]} features, the trees split on {self.n_features}")
        X = X[:, :self.n_features]
        out = np.zeros(-(-X.shape[0] // 8) * 8 * self.n_features, dtype=np.int32)
        _kernel("float_keys")(X, X.view(np.int32), out)
        return out


@dataclass
class _Bins:
    """Trees whose splits compare a feature's *rank* among its sorted distinct thresholds.

    A row is binned once (:func:`_rank_rows` / :func:`_bin_rows`: ``rank(x)`` = how many of
    the feature's thresholds lie below ``x``); then ``x > t_j`` iff ``rank(x) > j``, exactly. The ranks fit
    in uint8 (LightGBM: at most 255 thresholds a feature) or uint16 (a deep forest: ~40 k),
    so a row takes 1-2 bytes a feature instead of 4-8 and a node is one int64 word
    ``left << 32 | (feature * 8) << 16 | rank`` (constant shifts; a leaf: its own index, rank
    65,535, never exceeded; ``feature * 8``: the feature's offset in a group of 8 interleaved
    rows, :func:`_interleaved_at`): one load a step and no threshold array.
    """

    cuts: np.ndarray      # float64: every feature's sorted distinct thresholds, concatenated
    offsets: np.ndarray   # int64 (n_features + 1): feature f's cuts are cuts[offsets[f]:offsets[f + 1]]
    word: np.ndarray      # int64 per node
    dtype: type

    @classmethod
    def build(cls, packed: _PackedTrees) -> _Bins | None:
        n = packed.n_nodes
        left = packed.left.astype(np.int64)
        feat = packed.feat.astype(np.int64)
        internal = left != np.arange(n)
        f = feat[internal]
        t = packed.thr[internal].astype(np.float64)
        n_feat = int(f.max()) + 1 if f.size else 1
        order = np.lexsort((t, f))
        fs, ts = f[order], t[order]
        first = np.ones(fs.size, dtype=bool)
        first[1:] = (fs[1:] != fs[:-1]) | (ts[1:] != ts[:-1])
        cuts = ts[first]
        offsets = np.searchsorted(fs[first], np.arange(n_feat + 1)).astype(np.int64)
        most = int(np.diff(offsets).max()) if cuts.size else 0
        if most > 0xFFFF or n_feat * 8 > 0x10000:
            return None
        dtype = np.uint8 if most <= 0xFF else np.uint16
        rank_sorted = np.cumsum(first) - 1 - offsets[fs]
        rank = np.full(n, 0xFFFF, dtype=np.int64)  # leaves: never go right (a row's rank <= 65,535)
        idx = np.flatnonzero(internal)
        rank[idx[order]] = rank_sorted
        word = (left << 32) | (np.where(internal, feat * 8, 0) << 16) | rank
        return cls(cuts, offsets, word, dtype)

    @property
    def n_features(self) -> int:
        return int(self.offsets.size - 1)

    #: the bucket tables of :meth:`rank_table` take at most this many bytes (else: binary search)
    MAX_TABLE_BYTES = 64 << 20
    #: ... and their buckets hold at most this many cuts (each is a compare of the scan)
    MAX_BUCKET_CUTS = 64

    def rank_table(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per feature, the rank at the start of each of 65,536 buckets of the int32 key space
        (:func:`float_keys`, its top 16 bits), and the cuts' keys after rounding down to float32.

        For float32 ``x``, ``x > c`` iff ``x > floor_float32(c)`` (the largest float32 <= ``c``),
        so the cuts' float32 keys rank a float32 row exactly: its rank is the bucket's start
        plus the cuts of its own bucket below it (a few at most; usually none). One table load
        and a compare a value instead of an 8-step binary search. Built once (a cumulative
        count per feature); None when the tables would exceed :data:`MAX_TABLE_BYTES` or a
        bucket holds more than :data:`MAX_BUCKET_CUTS` cuts (a deep forest's ~40 k thresholds
        a feature: the scan would cost more than the binary search).
        """
        if not hasattr(self, "_table"):
            itemsize = np.dtype(self.dtype).itemsize
            if self.n_features * 65536 * itemsize > self.MAX_TABLE_BYTES:
                self._table = None
            else:
                ukeys = float_keys(floor_float32(self.cuts)) + 2**31  # uint32 order, as int64
                table = np.zeros((self.n_features, 65536), dtype=self.dtype)
                crowded = False
                for f in range(self.n_features):
                    u = ukeys[self.offsets[f]:self.offsets[f + 1]]
                    counts = np.bincount(u >> 16, minlength=65536)
                    crowded |= bool(counts.max() > self.MAX_BUCKET_CUTS)
                    table[f] = np.cumsum(counts) - counts  # cuts in the buckets below
                self._table = None if crowded else (table.ravel(), ukeys)
        return self._table

    def interleaved(self, X: np.ndarray) -> np.ndarray:
        """``X``'s ranks, interleaved by groups of 8 rows (:func:`_interleaved_at`, padded with 0), for the walk."""
        if X.shape[1] < self.n_features:
            raise ValueError(f"{X.shape[1]} features, the trees split on {self.n_features}")
        out = np.zeros(-(-X.shape[0] // 8) * 8 * self.n_features, dtype=self.dtype)
        XT = np.ascontiguousarray(X[:, :self.n_features].T)
        table = self.rank_table() if XT.dtype == np.float32 else None
        if table is not None:
            _kernel("rank_rows")(XT, XT.view(np.int32), table[0], table[1], self.offsets, out)
        else:  # float64 rows: compared with the float64 cuts
            _kernel("bin_rows")(XT, self.cuts, self.offsets, out)
        return out

    def rows(self, X: np.ndarray) -> np.ndarray:
        """``X``'s ranks (n, n_features of the trees): :meth:`interleaved` read back row by row."""
        n, f = X.shape[0], self.n_features
        flat = self.interleaved(X)
        return flat.reshape(-1, f, 8).transpose(0, 2, 1).reshape(-1, f)[:n]


def _pack(trees, thr_dtype) -> tuple[_PackedTrees, list[np.ndarray]]:
    """``trees``: iterable of (children_left, children_right, feature, threshold) with -1 children at leaves.

    Returns the packed trees and, per tree, ``order`` (packed position -> original node id).
    """
    pair_order = _kernel("pair_order")
    feats, thrs, lefts, roots, orders, depths = [], [], [], [], [], []
    base = 0
    for cl, cr, feature, threshold in trees:
        order, left, depth = pair_order(np.asarray(cl, dtype=np.int64), np.asarray(cr, dtype=np.int64))
        depths.append(depth)
        is_leaf = left == np.arange(left.size)
        f = np.where(is_leaf, 0, np.asarray(feature)[order]).astype(np.int32)
        if thr_dtype == np.float32:
            t = floor_float32(np.asarray(threshold, dtype=np.float64)[order])
        else:
            t = np.asarray(threshold, dtype=np.float64)[order]
        t[is_leaf] = np.inf
        feats.append(f)
        thrs.append(t)
        lefts.append((left + base).astype(np.int32))
        roots.append(base)
        orders.append(order)
        base += order.size
    if base >= 2**31:
        raise ValueError(f"too many nodes for int32 indices ({base})")
    if any(f.size and f.max() >= 2**16 for f in feats):
        raise ValueError("more than 65,536 features (the packed node holds a 16-bit feature index)")
    packed = _PackedTrees(np.concatenate(feats), np.concatenate(thrs).astype(thr_dtype, copy=False),
                          np.concatenate(lefts), np.asarray(roots, dtype=np.int64),
                          np.asarray(depths, dtype=np.int64))
    return packed, orders


class ForestEngine:
    """``numba-forest``: a scikit-learn forest classifier's ``predict_proba`` (see module docstring)."""

    name = "numba-forest"
    binned = False

    def __init__(self, packed: _PackedTrees, payload: np.ndarray, leaf_proba: np.ndarray, n_classes: int,
                 n_trees: int):
        self.packed = packed
        self.payload = payload          # int32 per node: class index (pure leaf) or -(row + 1) into leaf_proba
        self.leaf_proba = leaf_proba    # float64 (n_impure_leaves, n_classes)
        self.n_classes = int(n_classes)
        self.n_trees = int(n_trees)

    @classmethod
    def supports(cls, estimator) -> bool:
        from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

        return (isinstance(estimator, (RandomForestClassifier, ExtraTreesClassifier))
                and getattr(estimator, "n_outputs_", 1) == 1)

    @classmethod
    def from_estimator(cls, estimator, n_classes: int) -> ForestEngine:
        """Pack a fitted forest; probability columns follow ``estimator.classes_`` mapped onto 0..n_classes-1."""
        cols = np.asarray(estimator.classes_, dtype=np.int64)
        trees = [e.tree_ for e in estimator.estimators_]
        packed, orders = _pack(((t.children_left, t.children_right, t.feature, t.threshold) for t in trees),
                               np.float32)
        payload = np.zeros(packed.n_nodes, dtype=np.int32)
        impure = []
        n_impure = 0
        base = 0
        for tree, order in zip(trees, orders):
            value = tree.value[:, 0, :].astype(np.float64)[order]
            is_leaf = tree.children_left[order] < 0
            # DecisionTreeClassifier.predict_proba: value / its sum (a zero sum stays zero)
            norm = value.sum(axis=1, keepdims=True)
            norm[norm == 0.0] = 1.0
            proba = value / norm
            full = np.zeros((proba.shape[0], n_classes))
            full[:, cols] = proba
            pure = is_leaf & ((full > 0).sum(axis=1) == 1) & (full.max(axis=1) == 1.0)
            mixed = is_leaf & ~pure
            local = np.zeros(order.size, dtype=np.int64)
            local[pure] = np.argmax(full[pure], axis=1)
            rows = np.flatnonzero(mixed)
            local[rows] = -(n_impure + np.arange(rows.size)) - 1
            n_impure += rows.size
            impure.append(full[rows])
            payload[base:base + order.size] = local
            base += order.size
        leaf_proba = np.concatenate(impure) if impure else np.zeros((0, n_classes))
        if leaf_proba.shape[0] == 0:
            leaf_proba = np.zeros((1, n_classes))  # numba wants a non-empty 2-D array
        return cls(packed, payload, leaf_proba, n_classes, len(trees))

    @property
    def classes_(self) -> np.ndarray:
        """Columns of :meth:`predict_proba`: all the ensemble's encoded classes."""
        return np.arange(self.n_classes)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)  # scikit-learn compares float32 features too
        out = np.zeros((X.shape[0], self.n_classes))
        p = self.packed
        bins = p.binned() if self.binned else None
        keyed = None if self.binned else p.keyed()
        if bins is not None:
            _kernel("bproba")(bins.interleaved(X), bins.n_features, bins.word, p.roots, p.depths, self.payload,
                              self.leaf_proba, out, FOREST_BLOCK_ROWS)
        elif keyed is not None:
            _kernel("kproba")(keyed.rows(X), keyed.n_features, keyed.word, p.roots, keyed.ends, self.payload,
                              self.leaf_proba, out, FOREST_BLOCK_ROWS)
        else:
            _kernel("proba")(X, p.node, p.thr, p.roots, p.depths, self.payload, self.leaf_proba, out,
                             FOREST_BLOCK_ROWS)
        out /= self.n_trees
        return out

    def describe(self) -> dict:
        return {"engine": self.name, "trees": self.n_trees, "nodes": self.packed.n_nodes,
                "bytes": int(self.packed.feat.nbytes + self.packed.thr.nbytes + self.packed.left.nbytes
                             + self.payload.nbytes + self.leaf_proba.nbytes)}


_TREE_KEYS = ("split_feature", "threshold", "decision_type", "left_child", "right_child", "leaf_value")


def _lgbm_model(estimator):
    """(model text, objective, n_classes, trees) of a fitted LGBMClassifier, or raise ValueError."""
    booster = estimator.booster_
    text = booster.model_to_string()
    head = text.split("\nTree=", 1)[0]
    m = re.search(r"^objective=(.*)$", head, flags=re.M)
    objective = m.group(1).split() if m else []
    if not objective or objective[0] not in ("multiclass", "binary"):
        raise ValueError(f"objective {' '.join(objective) or '?'} is not supported (multiclass, binary)")
    if objective[0] == "binary" and "sigmoid:1" not in objective:
        raise ValueError(f"binary objective with {' '.join(objective)} is not supported (sigmoid:1 only)")
    n_per_iter = int(re.search(r"^num_tree_per_iteration=(\d+)$", head, flags=re.M).group(1))
    trees = []
    for block in text.split("\nTree=")[1:]:
        block = block.split("\nend of trees", 1)[0]
        fields = dict(line.split("=", 1) for line in block.splitlines()[1:] if "=" in line)
        n_leaves = int(fields["num_leaves"])
        leaf_value = np.array(fields["leaf_value"].split(), dtype=np.float64)
        if n_leaves == 1:
            trees.append((np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64),
                          leaf_value[:1]))
            continue
        if int(fields.get("num_cat", "0")) > 0:
            raise ValueError("categorical splits are not supported")
        decision = np.array(fields["decision_type"].split(), dtype=np.int64)
        if (decision & 1).any():
            raise ValueError("categorical splits are not supported")
        missing = (decision >> 2) & 3
        if (missing == 1).any():  # zero as missing: |x| <= 1e-35 goes the default way
            raise ValueError("zero-as-missing splits are not supported")
        trees.append((np.array(fields["split_feature"].split(), dtype=np.int64),
                      np.array(fields["threshold"].split(), dtype=np.float64),
                      np.array(fields["left_child"].split(), dtype=np.int64),
                      np.array(fields["right_child"].split(), dtype=np.int64), leaf_value))
    return text, objective[0], n_per_iter, trees


class GBDTEngine:
    """``numba-gbdt``: a LightGBM classifier's ``predict_proba`` (see module docstring)."""

    name = "numba-gbdt"
    binned = False

    def __init__(self, packed: _PackedTrees, leaf_value: np.ndarray, n_per_iter: int, objective: str,
                 cols: np.ndarray, n_classes: int):
        self.packed = packed
        self.leaf_value = leaf_value    # float64 per node (0 at internal nodes)
        self.n_per_iter = int(n_per_iter)
        self.objective = objective
        self.cols = cols
        self.n_classes = int(n_classes)

    @classmethod
    def supports(cls, estimator) -> bool:
        return type(estimator).__name__ == "LGBMClassifier" and hasattr(estimator, "booster_")

    @classmethod
    def from_estimator(cls, estimator, n_classes: int) -> GBDTEngine:
        _, objective, n_per_iter, trees = _lgbm_model(estimator)

        def as_sklearn(tree):
            # LightGBM: node i >= 0 internal, child < 0 is leaf ~child. sklearn layout: internal
            # nodes 0..n_int-1, leaves n_int.. with children -1.
            split_feature, threshold, lc, rc, leaf_value = tree
            n_int = split_feature.size
            n = n_int + leaf_value.size
            cl = np.full(n, -1, dtype=np.int64)
            cr = np.full(n, -1, dtype=np.int64)
            cl[:n_int] = np.where(lc >= 0, lc, n_int + ~lc)
            cr[:n_int] = np.where(rc >= 0, rc, n_int + ~rc)
            feature = np.zeros(n, dtype=np.int64)
            feature[:n_int] = split_feature
            thr = np.zeros(n)
            thr[:n_int] = threshold
            value = np.zeros(n)
            value[n_int:] = leaf_value
            return cl, cr, feature, thr, value

        converted = [as_sklearn(t) for t in trees]
        packed, orders = _pack(((cl, cr, f, t) for cl, cr, f, t, _ in converted), np.float64)
        leaf_value = np.concatenate([c[4][order] for c, order in zip(converted, orders)])
        cols = np.asarray(estimator.classes_, dtype=np.int64)
        return cls(packed, leaf_value, n_per_iter, objective, cols, n_classes)

    @property
    def classes_(self) -> np.ndarray:
        """Columns of :meth:`predict_proba`: all the ensemble's encoded classes."""
        return np.arange(self.n_classes)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)  # float32 or float64, compared with float64 thresholds as LightGBM does
        X = np.ascontiguousarray(X, dtype=X.dtype if X.dtype in (np.float32, np.float64) else np.float64)
        raw = self._raw(X)
        if self.objective == "binary":
            p1 = 1.0 / (1.0 + np.exp(-raw[:, 0]))
            proba = np.stack([1.0 - p1, p1], axis=1)
        else:
            raw -= raw.max(axis=1, keepdims=True)
            np.exp(raw, out=raw)
            raw /= raw.sum(axis=1, keepdims=True)
            proba = raw
        return _full_columns(proba, self.cols, self.n_classes)

    def _raw(self, X: np.ndarray) -> np.ndarray:
        """Per class, the sum of the trees' leaf values (LightGBM's raw score), in tree order."""
        raw = np.zeros((X.shape[0], self.n_per_iter))
        p = self.packed
        bins = p.binned() if self.binned else None
        if bins is not None:
            _kernel("braw")(bins.interleaved(X), bins.n_features, bins.word, p.roots, p.depths, self.leaf_value,
                            self.n_per_iter, raw, GBDT_BLOCK_ROWS)
        else:
            _kernel("raw")(X, p.node, p.thr, p.roots, p.depths, self.leaf_value, self.n_per_iter, raw,
                           GBDT_BLOCK_ROWS)
        return raw

    def describe(self) -> dict:
        return {"engine": self.name, "trees": int(self.packed.roots.size), "nodes": self.packed.n_nodes}


def _full_columns(proba: np.ndarray, cols: np.ndarray, n_classes: int) -> np.ndarray:
    if cols.size == n_classes and np.array_equal(cols, np.arange(n_classes)):
        return proba
    out = np.zeros((proba.shape[0], n_classes))
    out[:, cols] = proba
    return out


class ForestBinsEngine(ForestEngine):
    """``numba-forest-bins``: :class:`ForestEngine` on binned rows (:class:`_Bins`)."""

    name = "numba-forest-bins"
    binned = True


class GBDTBinsEngine(GBDTEngine):
    """``numba-gbdt-bins``: :class:`GBDTEngine` on binned rows (:class:`_Bins`)."""

    name = "numba-gbdt-bins"
    binned = True


#: candidate engines per learner, tried in this order
CANDIDATES = {"numba-forest": ForestEngine, "numba-forest-bins": ForestBinsEngine,
              "numba-gbdt": GBDTEngine, "numba-gbdt-bins": GBDTBinsEngine}
DEFAULT_CANDIDATES = tuple(CANDIDATES)


# ---------------------------------------------------------------------- per-model engine set


def stock_proba(estimator, X: np.ndarray, n_classes: int) -> np.ndarray:
    """The stock predictor's probabilities on all ``n_classes`` columns (as the ensemble uses them)."""
    p = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    return _full_columns(p, np.asarray(estimator.classes_, dtype=np.int64), n_classes)


def _best_time(fn, repeat: int) -> float:
    """Least thread CPU time of ``repeat`` calls (CPU time: robust on a shared machine)."""
    best = np.inf
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return max(best, 1e-9)


def learner_keys(model) -> list[str]:
    """A unique key per final base learner: its name (``rf``, ``lgbm``), suffixed ``_k`` when repeated."""
    names = [str(n) for n in getattr(model, "learner_names_", [type(e).__name__ for e in model.estimators_])]
    return [n if names.count(n) == 1 else f"{n}_{k}" for k, n in enumerate(names)]


@dataclass
class EngineSet:
    """The engine chosen for each base learner of one fitted ensemble (``None``: stock).

    ``sample`` holds the rows every engine is verified on at load; ``report`` what was
    measured when the engines were chosen (per learner: candidates, CPU seconds, max abs
    difference from stock, the choice).
    """

    engines: list
    keys: list[str]
    sample: np.ndarray
    report: list[dict] = field(default_factory=list)
    verified: bool = False

    def names(self) -> list[str]:
        """The engine of every learner (``"stock"`` where none)."""
        return ["stock" if e is None else e.name for e in self.engines]

    def verify(self, model, *, tolerance: float = TOLERANCE) -> EngineSet:
        """Check every engine against its stock learner on ``sample``; drop failures with an :class:`EngineWarning`."""
        if len(self.engines) != len(model.estimators_):
            raise ValueError(f"{len(self.engines)} engines for {len(model.estimators_)} learners")
        n_classes = int(model.classes_.size)
        X = np.ascontiguousarray(self.sample, dtype=np.float32)
        for k, (engine, est) in enumerate(zip(self.engines, model.estimators_)):
            if engine is None:
                continue
            try:
                if X.shape[0] == 0:
                    raise ValueError("no sample rows to verify it on")
                got = engine.predict_proba(X)
                if got.shape != (X.shape[0], n_classes):
                    raise ValueError(f"output of shape {got.shape}, expected {(X.shape[0], n_classes)}")
                diff = float(np.max(np.abs(got - stock_proba(est, X, n_classes))))
                if not diff <= tolerance:  # also catches NaN
                    raise ValueError(f"max abs difference from stock {diff:.3g} > {tolerance:g} "
                                     f"on {X.shape[0]} sample rows")
            except Exception as exc:  # noqa: BLE001 - any engine failure means: use stock, loudly
                self.drop(k, str(exc))
        self.verified = True
        return self

    def drop(self, k: int, reason: str) -> None:
        """Fall back to stock for learner ``k`` with an :class:`EngineWarning` saying why."""
        engine = self.engines[k]
        name = "?" if engine is None else engine.name
        warnings.warn(f"learner {self.keys[k]!r}: inference engine {name} not used ({reason}); "
                      f"it predicts with its stock predict_proba", EngineWarning, stacklevel=3)
        self.engines[k] = None

    def base_predictors(self, model) -> list:
        """Per learner, what the ensemble calls ``predict_proba`` on: the engine, or the stock estimator."""
        if not self.verified:
            self.verify(model)
        return [est if eng is None else eng for eng, est in zip(self.engines, model.estimators_)]

    def records(self) -> dict[str, dict]:
        """What a bundle's ``model.json`` records per learner with an engine (the choice and its figures)."""
        out = {}
        for k, engine in enumerate(self.engines):
            if engine is None:
                continue
            entry = self.report[k] if k < len(self.report) else {}
            rec = {"engine": engine.name, "index": k, **engine.describe()}
            if entry:
                cand = entry.get("candidates", {}).get(engine.name, {})
                rec.update({"chosen_by": "measurement", "rows_timed": entry.get("rows"),
                            "stock_cpu_s": entry.get("stock_s"), "engine_cpu_s": cand.get("seconds"),
                            "speedup": entry.get("speedup"), "max_abs_diff": cand.get("max_abs_diff")})
            out[self.keys[k]] = rec
        return out


def build_engines(model, X_sample: np.ndarray, *, candidates=DEFAULT_CANDIDATES, sample_rows: int = 512,
                  time_rows: int = 4096, repeat: int = 2, tolerance: float = TOLERANCE, seed: int = 0) -> EngineSet:
    """Choose, by measurement on ``X_sample`` (rows like the training features), each learner's engine.

    For every final base learner of the fitted ensemble ``model``, every candidate that
    supports it is built, checked against the stock ``predict_proba`` (max abs difference
    <= ``tolerance``) and timed (thread CPU time, best of ``repeat``) on up to
    ``time_rows`` rows on one thread; the fastest one that equals stock and beats it wins,
    else the learner stays on stock. ``sample_rows`` of those rows are kept for the
    load-time check (:meth:`EngineSet.verify`).
    """
    from threadpoolctl import threadpool_limits

    from .predict import learner_threads

    X_sample = np.ascontiguousarray(X_sample, dtype=np.float32)
    if X_sample.ndim != 2 or X_sample.shape[0] == 0:
        raise ValueError(f"build_engines needs sample rows (n, features), got shape {X_sample.shape}")
    if hasattr(model, "_prepared"):  # the rows the learners see (imputed, checked)
        X_sample = np.ascontiguousarray(model._prepared(X_sample), dtype=np.float32)
    rng = np.random.default_rng(seed)
    pick = rng.choice(X_sample.shape[0], size=min(time_rows, X_sample.shape[0]), replace=False)
    X_time = X_sample[pick]
    keep = X_time[: min(sample_rows, X_time.shape[0])].copy()
    n_classes = int(model.classes_.size)
    keys = learner_keys(model)
    engines, report = [], []
    with threadpool_limits(1), learner_threads(model, 1):
        for k, est in enumerate(model.estimators_):
            stock = stock_proba(est, X_time, n_classes)
            entry = {"learner": keys[k], "rows": int(X_time.shape[0]),
                     "stock_s": _best_time(lambda: stock_proba(est, X_time, n_classes), repeat), "candidates": {}}
            best, best_s = None, entry["stock_s"]
            for cand in candidates:
                cls = CANDIDATES[cand]
                if not cls.supports(est):
                    continue
                info: dict = {}
                try:
                    t0 = time.perf_counter()
                    engine = cls.from_estimator(est, n_classes)
                    got = engine.predict_proba(X_time)  # the first call also loads the numba kernel
                    info["build_s"] = round(time.perf_counter() - t0, 2)
                    info["max_abs_diff"] = float(np.max(np.abs(got - stock)))
                    info["seconds"] = _best_time(lambda: engine.predict_proba(X_time), repeat)
                except Exception as exc:  # noqa: BLE001 - a candidate that fails is reported, not used
                    info["error"] = f"{type(exc).__name__}: {exc}"
                    entry["candidates"][cand] = info
                    continue
                entry["candidates"][cand] = info
                if info["max_abs_diff"] <= tolerance and info["seconds"] < best_s:
                    best, best_s = engine, info["seconds"]
            entry["chosen"] = "stock" if best is None else best.name
            entry["speedup"] = round(entry["stock_s"] / best_s, 2)
            engines.append(best)
            report.append(entry)
    return EngineSet(engines=engines, keys=keys, sample=keep, report=report, verified=True)


# ---------------------------------------------------------------------- files


def engine_file(key: str) -> str:
    return f"engine-{key}.joblib"


def save_engines(engine_set: EngineSet, folder) -> dict[str, dict]:
    """Write one ``engine-<learner>.joblib`` per engine into the bundle ``folder``; return the records.

    Each file holds the engine and the verification sample; its SHA-256 goes into the
    record, which the bundle writes into ``model.json``.
    """
    import joblib

    from .atomic import atomic_path, sha256_file

    folder = Path(folder)
    records = engine_set.records()
    for key, rec in records.items():
        path = folder / engine_file(key)
        with atomic_path(path) as tmp:
            joblib.dump({"engine": engine_set.engines[rec["index"]], "sample": engine_set.sample}, tmp, compress=3)
        rec["file"] = path.name
        rec["sha256"] = sha256_file(path)
    return records


def load_engines(model, folder, records: dict[str, dict], *, tolerance: float = TOLERANCE) -> EngineSet | None:
    """The verified engines of a bundle's ``records`` (see :func:`save_engines`); None when there are none.

    A missing, corrupt or unreadable engine file, an engine kind this version does not
    know, or an engine that differs from stock on its sample: :class:`EngineWarning`
    naming the learner, and that learner runs on its stock ``predict_proba``.
    """
    import joblib

    from .atomic import sha256_file

    folder = Path(folder)
    if not records:
        return None
    if not hasattr(model, "estimators_") or not hasattr(model, "predict_proba_and_uncertainty"):
        warnings.warn(f"model bundle {folder}: inference engines {', '.join(records)} not used (the model, a "
                      f"{type(model).__name__}, has no base learners to run them for); it predicts natively",
                      EngineWarning, stacklevel=2)
        return None
    keys = learner_keys(model)
    engines: list = [None] * len(keys)
    sample = None
    es = EngineSet(engines=engines, keys=keys, sample=np.zeros((0, 0), np.float32))
    for key, rec in records.items():
        if key not in keys:
            warnings.warn(f"model bundle {folder}: engine record for unknown learner {key!r} ignored "
                          f"(learners: {', '.join(keys)})", EngineWarning, stacklevel=2)
            continue
        k = keys.index(key)
        path = folder / str(rec.get("file", engine_file(key)))
        try:
            if rec.get("engine") not in CANDIDATES:
                raise ValueError(f"unknown engine kind {rec.get('engine')!r}")
            if not path.exists():
                raise ValueError(f"{path.name} is missing")
            if rec.get("sha256") and sha256_file(path) != rec["sha256"]:
                raise ValueError(f"{path.name} does not match its checksum in model.json (corrupt)")
            content = joblib.load(path)
            engine = content["engine"]
            if getattr(engine, "name", None) != rec["engine"]:
                raise ValueError(f"{path.name} holds {getattr(engine, 'name', type(engine).__name__)!r}")
        except Exception as exc:  # noqa: BLE001 - unusable engine: stock, loudly
            es.engines[k] = None
            warnings.warn(f"learner {key!r}: inference engine {rec.get('engine')} not used ({exc}); "
                          f"it predicts with its stock predict_proba", EngineWarning, stacklevel=2)
            continue
        es.engines[k] = engine
        if sample is None or content["sample"].shape[0] > sample.shape[0]:
            sample = content["sample"]
    if sample is not None:
        es.sample = sample
    return es.verify(model, tolerance=tolerance)
