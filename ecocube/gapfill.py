"""Temporal gap-filling of regular image time series, with a flag for every value.

Pure functions on arrays: no I/O. Arrays are ``(time, y, x)`` or ``(time, band, y, x)``,
float32, NaN = gap. Only NaN is a gap; every other value (infinities included) is an
observation and is copied to the output unchanged, bit for bit.

Methods
=======

``tmwm`` — temporal moving-window median
----------------------------------------
The series has ``S`` = ``season_size`` regular periods per year (4 quarters, 12 months,
1 year). Only *offsets* between time indices matter, so the series may start in any
season; index ``k`` and index ``k + S`` are the same season one year apart.

For a gap at index ``k``, the candidate windows are tried in this order, and the gap gets
the **median of the valid values of the first window that has any** (the median of an
even count is the mean of the two middle values, computed in float64 and rounded once
to float32). A window is a *set* of time indices ``k + o`` for a set of offsets ``o``
(``o != 0``); indices outside ``0 .. T-1`` are dropped. For ``h = 1, 2, ...``:

1. **same season**, ``h = 1 .. h_same``:
   ``{ j*S : 1 <= |j| <= h }`` — the same season of the years ``t-h .. t+h`` other than
   the gap's year ``t`` itself (``h = 1``: years ``t-1`` and ``t+1``; ``h = 2``: years
   ``t-2, t-1, t+1, t+2``);
2. **neighbouring seasons**, ``h = 1 .. h_neib``:
   ``{ j*S - 1, j*S + 1 : |j| <= h } \\ {0}`` — the periods just before and just after the
   same season of the years ``t-h .. t+h``, *including* the gap's own year (``j = 0``:
   the adjacent periods ``k-1`` and ``k+1``). Offsets are plain index offsets, so the
   season before the first season of a year is the last season of the previous year.
3. **contiguous**, ``h = 1 .. h_annual``: ``{ o : 1 <= |o| <= h }`` — the ``h`` periods
   before and after the gap.

``direction`` restricts every window to one side of the gap: ``past`` keeps only offsets
``o < 0``, ``future`` only ``o > 0``, ``both`` keeps all. Windows are sets, so an index
reached twice (e.g. ``S = 2``: ``-S+1 == -1``) counts once in the median. A window that
becomes empty after the restriction is skipped, and ``h_* = 0`` skips a phase. Windows of
different phases may overlap: with ``h_neib >= 1`` the contiguous window ``h = 1``
(``k-1, k+1``) lies inside the neighbouring-season window ``h = 1``, so it can never be
the first with data and its code (81) does not occur.

``linear`` — temporal linear interpolation
------------------------------------------
With ``direction="both"`` a gap between a previous valid value at ``a < k`` and a next one
at ``b > k`` gets ``v_a + (v_b - v_a) * (k - a) / (b - a)`` (float64, rounded once); a gap
with valid values on one side only (before the first or after the last observation) gets
the nearest valid value. ``past`` carries the last valid value forward, ``future`` carries
the next valid value backward (nothing is extrapolated along a slope).

Outliers (optional, both methods)
---------------------------------
``outlier_percentiles=(lo, hi)``: per pixel and band, the percentiles ``P_lo`` and ``P_hi``
of the pixel's own valid values (linear interpolation between order statistics, as numpy's
default ``percentile``, in float64) form an envelope; observed values strictly below
``P_lo`` or strictly above ``P_hi`` are removed (become gaps) *before* filling and are
flagged. Note that with few observations the percentiles fall between the extreme order
statistics, so the extremes are removed: choose the envelope for the length of the series.

``shared_flags``
----------------
For ``(time, band, y, x)`` cubes: a period of a pixel counts as valid only if **all**
bands are valid there (after outlier removal). The window is chosen once per pixel and
period from this joint validity, and every band that is a gap there is filled from the
jointly valid periods of that window (linear: from the same jointly valid neighbours), so
the bands of a filled value always come from the same dates. Observed band values are
kept even where another band of the same period is a gap (flag 0 for them).

Flag codes (uint8, :data:`FLAG_LEGEND`, :func:`flag_legend`)
============================================================
========== =============================================================================
code       meaning
========== =============================================================================
0          observed, unchanged
1 .. 40    TMWM phase 1 (same season), ``h = code``
41 .. 80   TMWM phase 2 (neighbouring seasons), ``h = code - 40``
81 .. 120  TMWM phase 3 (contiguous periods), ``h = code - 80``
121        linear: interpolated between the previous and next valid values
122        linear: copied from the nearest valid value on one side
+128       (129 .. 250) the same fill, but the observed value was removed as an outlier
254        observed value removed as an outlier, and no window had data: NaN
255        gap, and no window had data: NaN (unfilled)
========== =============================================================================

So ``code & 127`` tells how a value was filled and ``code & 128`` (below 254) that it
replaced an outlier; ``flag_phase`` and :func:`decode_flag` decode codes.

Performance: compiled kernels (numba, ``nogil``, cached on disk: the first call in a
fresh environment compiles for a few seconds, later processes load the cache in well under
a second) run over chunks of image rows on a thread pool with the allocation's threads.
Each row is copied into a small buffer padded in time, and every loop runs over x, the
contiguous axis. Because the windows of one phase are nested and every window tried
before was empty, only the offsets that a window adds to all earlier windows are looked
at (precomputed once per call). A row's windows are searched once per validity pattern:
a band whose gaps lie where the previous band's do (clouds and nodata usually hit every
band) reuses the previous band's windows, and only the values are taken per band; in
place, observed values are not rewritten. Extra memory: the output (the input's size, or
nothing with ``inplace=True``) plus the uint8 flags (a quarter of it), plus a few rows
and one row's windows (``time × x × widest window`` int32) per thread.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from numba import njit

from .env import available_threads
from .errors import ConfigError
from .products import FLAG_OBSERVED, FLAG_UNFILLED

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig

log = logging.getLogger(__name__)

__all__ = [
    "FLAG_LEGEND",
    "FLAG_LINEAR",
    "FLAG_NEAREST",
    "FLAG_OBSERVED",
    "FLAG_OUTLIER",
    "FLAG_OUTLIER_UNFILLED",
    "FLAG_UNFILLED",
    "MAX_H",
    "PHASE_CONTIGUOUS",
    "PHASE_LINEAR",
    "PHASE_NEIGHBOUR_SEASONS",
    "PHASE_SAME_SEASON",
    "FlagInfo",
    "Window",
    "candidate_windows",
    "decode_flag",
    "fill_gaps",
    "fill_gaps_config",
    "flag_code",
    "flag_legend",
    "flag_legend_config",
    "flag_phase",
]

Method = Literal["tmwm", "linear"]
Direction = Literal["both", "past", "future"]

#: the largest ``h`` of any phase (each phase has 40 codes)
MAX_H = 40
PHASE_SAME_SEASON = 1
PHASE_NEIGHBOUR_SEASONS = 2
PHASE_CONTIGUOUS = 3
PHASE_LINEAR = 4

FLAG_LINEAR = 121
FLAG_NEAREST = 122
FLAG_OUTLIER = 128
FLAG_OUTLIER_UNFILLED = 254

_PHASE_NAMES = {
    PHASE_SAME_SEASON: "same season",
    PHASE_NEIGHBOUR_SEASONS: "neighbouring seasons",
    PHASE_CONTIGUOUS: "contiguous periods",
    PHASE_LINEAR: "linear",
}
_DIRECTIONS = ("both", "past", "future")
_METHODS = ("tmwm", "linear")


def _check_params(method, season_size, h_same, h_neib, h_annual, direction, outlier_percentiles) -> None:
    if method not in _METHODS:
        raise ConfigError(f"gap-fill method must be one of {', '.join(_METHODS)}, got {method!r}")
    if direction not in _DIRECTIONS:
        raise ConfigError(f"direction must be one of {', '.join(_DIRECTIONS)}, got {direction!r}")
    if not isinstance(season_size, (int, np.integer)) or season_size < 1:
        raise ConfigError(f"season_size must be a positive integer, got {season_size!r}")
    for name, h in (("h_same", h_same), ("h_neib", h_neib), ("h_annual", h_annual)):
        if not isinstance(h, (int, np.integer)) or not 0 <= h <= MAX_H:
            raise ConfigError(f"{name} must be an integer in 0..{MAX_H}, got {h!r}")
    if outlier_percentiles is not None:
        try:
            lo, hi = (float(q) for q in outlier_percentiles)
        except (TypeError, ValueError):
            raise ConfigError(f"outlier_percentiles must be (low, high), got {outlier_percentiles!r}") from None
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"outlier_percentiles must satisfy 0 <= low < high <= 100, got {outlier_percentiles!r}")


# --------------------------------------------------------------------------- flag codes


def flag_code(phase: int, h: int) -> int:
    """The flag code of a TMWM fill from window ``h`` of ``phase`` (1, 2 or 3)."""
    if phase not in (PHASE_SAME_SEASON, PHASE_NEIGHBOUR_SEASONS, PHASE_CONTIGUOUS):
        raise ConfigError(f"TMWM phase must be 1, 2 or 3, got {phase}")
    if not 1 <= h <= MAX_H:
        raise ConfigError(f"window h must be in 1..{MAX_H}, got {h}")
    return (phase - 1) * MAX_H + h


@dataclass(frozen=True, slots=True)
class FlagInfo:
    """A decoded flag code. ``phase`` 0 = observed, 1..3 TMWM, 4 linear, None = unfilled."""

    code: int
    phase: int | None
    h: int | None
    outlier: bool
    filled: bool
    observed: bool


def decode_flag(code: int) -> FlagInfo:
    """Decode one flag code (see the module docstring); unknown codes raise ConfigError."""
    code = int(code)
    if code == FLAG_OBSERVED:
        return FlagInfo(code, 0, None, False, False, True)
    if code == FLAG_UNFILLED:
        return FlagInfo(code, None, None, False, False, False)
    if code == FLAG_OUTLIER_UNFILLED:
        return FlagInfo(code, None, None, True, False, False)
    outlier = bool(code & FLAG_OUTLIER)
    base = code & 127
    if 1 <= base <= 3 * MAX_H:
        return FlagInfo(code, (base - 1) // MAX_H + 1, (base - 1) % MAX_H + 1, outlier, True, False)
    if base in (FLAG_LINEAR, FLAG_NEAREST):
        return FlagInfo(code, PHASE_LINEAR, None, outlier, True, False)
    raise ConfigError(f"{code} is not a gap-fill flag code")


def flag_phase(flags: np.ndarray) -> np.ndarray:
    """Phase of every flag as uint8: 0 observed, 1..3 TMWM phases, 4 linear, 255 unfilled."""
    flags = np.asarray(flags, dtype=np.uint8)
    base = flags & np.uint8(127)
    phase = np.full(flags.shape, 255, np.uint8)
    phase[flags == FLAG_OBSERVED] = 0
    filled = (flags != FLAG_OBSERVED) & (flags < FLAG_OUTLIER_UNFILLED)
    tm = filled & (base >= 1) & (base <= 3 * MAX_H)
    phase[tm] = ((base[tm].astype(np.int16) - 1) // MAX_H + 1).astype(np.uint8)
    phase[filled & ((base == FLAG_LINEAR) | (base == FLAG_NEAREST))] = PHASE_LINEAR
    return phase


def _years_text(h: int, direction: str, *, own_year: bool) -> str:
    lo = f"t-{h}" if direction != "future" else ("t" if own_year else "t+1")
    hi = f"t+{h}" if direction != "past" else ("t" if own_year else "t-1")
    text = f"years {lo}..{hi}" if lo != hi else f"year {lo}"
    if not own_year and direction == "both":
        text += " except t"
    return text


def _describe(code: int, direction: str) -> str:
    info = decode_flag(code)
    if info.observed:
        return "observed value, unchanged"
    if code == FLAG_UNFILLED:
        return "gap; no candidate window had a valid value (NaN)"
    if code == FLAG_OUTLIER_UNFILLED:
        return "observed value removed as outlier; no candidate window had a valid value (NaN)"
    base = code & 127
    side = {"both": "", "past": ", earlier periods only", "future": ", later periods only"}[direction]
    if info.phase == PHASE_SAME_SEASON:
        text = (f"median of the same season in {_years_text(info.h, direction, own_year=False)}"
                f" (TMWM phase 1, h={info.h})")
    elif info.phase == PHASE_NEIGHBOUR_SEASONS:
        text = (f"median of the periods just before and after the same season in "
                f"{_years_text(info.h, direction, own_year=True)}{side} (TMWM phase 2, h={info.h})")
    elif info.phase == PHASE_CONTIGUOUS:
        n = f"{info.h} period" + ("s" if info.h > 1 else "")
        where = {"both": "on each side of the gap", "past": "before the gap", "future": "after the gap"}[direction]
        text = f"median of the {n} {where} (TMWM phase 3, h={info.h})"
    elif base == FLAG_LINEAR:
        text = "linear interpolation between the previous and next valid values"
    else:
        text = "copied from the nearest valid value on one side" + side
    if info.outlier:
        text = "outlier removed, then filled: " + text
    return text


def flag_legend(
    method: str = "tmwm",
    *,
    h_same: int = MAX_H,
    h_neib: int = MAX_H,
    h_annual: int = MAX_H,
    direction: str = "both",
    outliers: bool = True,
    season_size: int | None = None,
) -> dict[int, str]:
    """Flag code -> human description, for the STAC metadata of a flag layer.

    Only codes the given settings can produce are listed (default: every TMWM code);
    with ``season_size``, windows that add no period to earlier ones are left out too.
    ``method="none"`` gives observed/unfilled only.
    """
    _check_params(method if method != "none" else "tmwm", season_size or 1, h_same, h_neib, h_annual,
                  direction, None)
    codes = [FLAG_OBSERVED]
    fills: list[int] = []
    if method == "tmwm":
        if season_size is not None:
            fills += [int(c) for c in _window_plan(candidate_windows(season_size, h_same, h_neib, h_annual,
                                                                      direction))[0]]
        else:
            fills += [flag_code(1, h) for h in range(1, h_same + 1)]
            fills += [flag_code(2, h) for h in range(1, h_neib + 1)]
            fills += [flag_code(3, h) for h in range(1, h_annual + 1)]
    elif method == "linear":
        fills += [FLAG_LINEAR, FLAG_NEAREST] if direction == "both" else [FLAG_NEAREST]
    codes += fills
    if outliers and method != "none":
        codes += [c | FLAG_OUTLIER for c in fills] + [FLAG_OUTLIER_UNFILLED]
    codes.append(FLAG_UNFILLED)
    return {c: _describe(c, direction) for c in sorted(codes)}


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True, slots=True)
class Window:
    """One candidate window: its flag code, phase, h and offsets (full set, sorted)."""

    code: int
    phase: int
    h: int
    offsets: tuple[int, ...]


def _side(offsets: set[int], direction: str) -> set[int]:
    if direction == "past":
        return {o for o in offsets if o < 0}
    if direction == "future":
        return {o for o in offsets if o > 0}
    return offsets


def candidate_windows(
    season_size: int, h_same: int, h_neib: int, h_annual: int, direction: str = "both"
) -> list[Window]:
    """The TMWM candidate windows in priority order, as full offset sets (see module doc)."""
    _check_params("tmwm", season_size, h_same, h_neib, h_annual, direction, None)
    S = season_size
    out: list[Window] = []
    for h in range(1, h_same + 1):
        offs = {j * S for j in range(-h, h + 1) if j != 0}
        out.append(Window(flag_code(1, h), 1, h, tuple(sorted(_side(offs, direction)))))
    for h in range(1, h_neib + 1):
        offs = {j * S + d for j in range(-h, h + 1) for d in (-1, 1)} - {0}
        out.append(Window(flag_code(2, h), 2, h, tuple(sorted(_side(offs, direction)))))
    for h in range(1, h_annual + 1):
        offs = {o for o in range(-h, h + 1) if o != 0}
        out.append(Window(flag_code(3, h), 3, h, tuple(sorted(_side(offs, direction)))))
    return out


def _window_plan(windows: Sequence[Window]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Windows as (codes, starts, offsets) of the offsets *new* to each window.

    The kernel only reaches window i when every earlier window had no valid value, so
    the valid values of window i are exactly those at offsets no earlier window had.
    Windows that add nothing are dropped. Returns (codes, starts, offsets, pad, widest):
    pad is the largest |offset|, widest the most offsets of one window.
    """
    seen: set[int] = set()
    codes: list[int] = []
    starts: list[int] = [0]
    flat: list[int] = []
    widest = 1
    for w in windows:
        new = sorted(set(w.offsets) - seen, key=lambda o: (abs(o), o))
        seen.update(w.offsets)
        if not new:
            continue
        codes.append(w.code)
        flat.extend(new)
        starts.append(len(flat))
        widest = max(widest, len(new))
    pad = max((abs(o) for o in flat), default=0)
    return (np.asarray(codes, np.uint8), np.asarray(starts, np.int64), np.asarray(flat, np.int64), pad, widest)


#: every code the TMWM method can produce with the largest windows, plus the linear ones
FLAG_LEGEND: dict[int, str] = {
    **flag_legend("tmwm"),
    **flag_legend("linear"),
}
FLAG_LEGEND = dict(sorted(FLAG_LEGEND.items()))


# --------------------------------------------------------------------------- kernel


@njit(nogil=True, cache=True)
def _load_row(cube, y, row, frow, P, do_outlier, q_lo, q_hi, srt):  # pragma: no cover - compiled
    """Copy row y of cube into row[P:P+T] (time, band, x); initial flags; outliers -> NaN."""
    T, B, _, X = cube.shape
    for t in range(T):
        for b in range(B):
            for x in range(X):
                v = cube[t, b, y, x]
                row[P + t, b, x] = v
                frow[t, b, x] = 255 if np.isnan(v) else 0
    if not do_outlier:
        return
    SEL = 16
    sel_lo = np.empty(SEL, np.float64)
    sel_hi = np.empty(SEL, np.float64)
    for b in range(B):
        for x in range(X):
            n = 0
            for t in range(T):
                v = row[P + t, b, x]
                if not np.isnan(v):
                    srt[n] = v
                    n += 1
            if n == 0:
                continue
            # numpy's default (linear) percentiles of srt[:n], in float64: order statistics
            # a0, a1 (low) and c0, c1 (high) by partial selection when they lie near the
            # ends (the usual envelope), else by sorting
            pos_lo = q_lo / 100.0 * (n - 1)
            a0 = int(np.floor(pos_lo))
            a1 = min(a0 + 1, n - 1)
            pos_hi = q_hi / 100.0 * (n - 1)
            c0 = int(np.floor(pos_hi))
            c1 = min(c0 + 1, n - 1)
            kl = a1 + 1
            kh = n - c0
            if kl <= SEL and kh <= SEL:
                ml = 0
                mh = 0
                for i in range(n):
                    v64 = srt[i]
                    j = -1
                    if ml < kl:
                        j = ml
                        ml += 1
                    elif v64 < sel_lo[kl - 1]:
                        j = kl - 1
                    if j >= 0:
                        while j > 0 and sel_lo[j - 1] > v64:
                            sel_lo[j] = sel_lo[j - 1]
                            j -= 1
                        sel_lo[j] = v64
                    j = -1
                    if mh < kh:
                        j = mh
                        mh += 1
                    elif v64 > sel_hi[kh - 1]:
                        j = kh - 1
                    if j >= 0:
                        while j > 0 and sel_hi[j - 1] < v64:
                            sel_hi[j] = sel_hi[j - 1]
                            j -= 1
                        sel_hi[j] = v64
                s_a0 = sel_lo[a0]
                s_a1 = sel_lo[a1]
                s_c0 = sel_hi[n - 1 - c0]
                s_c1 = sel_hi[n - 1 - c1]
            else:
                for gap in (57, 23, 10, 4, 1):  # shell sort of srt[:n] (Ciura gaps)
                    for i in range(gap, n):
                        v64 = srt[i]
                        j = i
                        while j >= gap and srt[j - gap] > v64:
                            srt[j] = srt[j - gap]
                            j -= gap
                        srt[j] = v64
                s_a0 = srt[a0]
                s_a1 = srt[a1]
                s_c0 = srt[c0]
                s_c1 = srt[c1]
            lo = s_a0 + (s_a1 - s_a0) * (pos_lo - a0)
            hi = s_c0 + (s_c1 - s_c0) * (pos_hi - c0)
            for t in range(T):
                v64 = np.float64(row[P + t, b, x])
                if v64 < lo or v64 > hi:  # False for NaN
                    row[P + t, b, x] = np.nan
                    frow[t, b, x] = 254


@njit(nogil=True, cache=True)
def _store_row(row, frow, out, flags, y, P, store_values):  # pragma: no cover - compiled
    """Write the row's initial flags, and its values (observed, NaN at gaps) unless the
    output already holds them (in place without outlier removal: ``store_values`` False)."""
    T, B, X = frow.shape
    for t in range(T):
        for b in range(B):
            if store_values:
                for x in range(X):
                    out[t, b, y, x] = row[P + t, b, x]
            for x in range(X):
                flags[t, b, y, x] = frow[t, b, x]


@njit(nogil=True, cache=True)
def _validity(row, ok, b_lo, b_hi, P, T):  # pragma: no cover - compiled
    """ok[P+t, x] = bands b_lo..b_hi-1 are all valid at (t, x); the padding stays False."""
    X = row.shape[2]
    for t in range(P, P + T):
        for x in range(X):
            ok[t, x] = not np.isnan(row[t, b_lo, x])
        for b in range(b_lo + 1, b_hi):
            for x in range(X):
                ok[t, x] = ok[t, x] and not np.isnan(row[t, b, x])


@njit(nogil=True, cache=True)
def _same_validity(a, b, P, T):  # pragma: no cover - compiled
    """True when two validity rows are equal (the padding is False in both)."""
    X = a.shape[1]
    for t in range(P, P + T):
        for x in range(X):
            if a[t, x] != b[t, x]:
                return False
    return True


@njit(nogil=True, cache=True)
def _tmwm_search(ok, P, w_start, w_offs, win, nval, idx, ngap):  # pragma: no cover - compiled
    """The window of every gap of one row, from its validity ``ok`` (one band's or the joint
    one): ``win[t, x]`` (-1: observed or no window has data), the ``nval[t, x]`` valid
    time indices ``idx[t, x, :]`` of that window, ``ngap[t]`` the gaps with a window."""
    T, X = win.shape
    nwin = w_start.shape[0] - 1
    for t in range(T):
        tp = P + t
        ok_t = ok[tp]
        gaps = 0
        for x in range(X):
            win[t, x] = -1
            if ok_t[x]:
                continue
            n = 0
            w = 0
            while w < nwin:
                s0 = w_start[w]
                m = w_start[w + 1] - s0
                if m <= 2:
                    # one or two new offsets (most windows): no index list, few branches
                    k1 = tp + w_offs[s0]
                    k2 = tp + w_offs[s0 + m - 1]
                    ok1 = ok[k1, x]
                    ok2 = ok[k2, x] and m == 2
                    if ok1 or ok2:
                        idx[t, x, 0] = k1 if ok1 else k2
                        idx[t, x, 1] = k2
                        n = 2 if (ok1 and ok2) else 1
                        break
                else:
                    for i in range(s0, s0 + m):
                        k = tp + w_offs[i]
                        if ok[k, x]:
                            idx[t, x, n] = k
                            n += 1
                    if n > 0:
                        break
                w += 1
            if n > 0:
                win[t, x] = w
                nval[t, x] = n
                gaps += 1
        ngap[t] = gaps


@njit(nogil=True, cache=True)
def _tmwm_values(row, frow, out, flags, y, b, P, w_codes, win, nval, idx, ngap, vals):  # pragma: no cover
    """Fill band ``b``'s gaps of one row from the windows found by :func:`_tmwm_search`
    (with shared flags a band observed where the joint validity has a gap keeps its value)."""
    T = frow.shape[0]
    X = frow.shape[2]
    row_b = row[:, b, :]
    for t in range(T):
        if ngap[t] == 0:
            continue
        tp = P + t
        out_v = out[t, b, y]
        flags_v = flags[t, b, y]
        frow_v = frow[t, b]
        win_t = win[t]
        for x in range(X):
            w = win_t[x]
            if w < 0 or not np.isnan(row_b[tp, x]):
                continue  # observed, unfillable, or (shared flags) this band observed
            n = nval[t, x]
            if n == 1:
                out_v[x] = row_b[idx[t, x, 0], x]
            elif n == 2:
                out_v[x] = (np.float64(row_b[idx[t, x, 0], x]) + np.float64(row_b[idx[t, x, 1], x])) * 0.5
            else:  # median of n > 2 values: insertion sort (n is small)
                for i in range(n):
                    v = np.float64(row_b[idx[t, x, i], x])
                    j = i - 1
                    while j >= 0 and vals[j] > v:
                        vals[j + 1] = vals[j]
                        j -= 1
                    vals[j + 1] = v
                if n % 2 == 1:
                    out_v[x] = vals[n // 2]
                else:
                    out_v[x] = (vals[n // 2 - 1] + vals[n // 2]) * 0.5
            code = w_codes[w]
            flags_v[x] = code if frow_v[x] == 255 else code | 128


@njit(nogil=True, cache=True)
def _linear_pass(row, frow, ok, out, flags, y, b_lo, b_hi, P, direction, prev, nxt,  # pragma: no cover
                 last):
    """Linear interpolation (or nearest value) of the gaps of bands b_lo..b_hi-1 of one row."""
    T = frow.shape[0]
    X = frow.shape[2]
    last[:] = -1
    for t in range(T):
        for x in range(X):
            prev[t, x] = last[x]
            if ok[P + t, x]:
                last[x] = t
    last[:] = -1
    for t in range(T - 1, -1, -1):
        for x in range(X):
            nxt[t, x] = last[x]
            if ok[P + t, x]:
                last[x] = t
    for t in range(T):
        for x in range(X):
            if ok[P + t, x]:
                continue
            a = prev[t, x] if direction != 2 else -1
            c = nxt[t, x] if direction != 1 else -1
            if a < 0 and c < 0:
                continue
            code = 121 if (a >= 0 and c >= 0) else 122
            for b in range(b_lo, b_hi):
                if not np.isnan(row[P + t, b, x]):
                    continue  # shared flags: this band was observed
                if a >= 0 and c >= 0:
                    va = np.float64(row[P + a, b, x])
                    vc = np.float64(row[P + c, b, x])
                    out[t, b, y, x] = va + (vc - va) * (t - a) / (c - a)
                elif a >= 0:
                    out[t, b, y, x] = row[P + a, b, x]
                else:
                    out[t, b, y, x] = row[P + c, b, x]
                flags[t, b, y, x] = code if frow[t, b, x] == 255 else code | 128


@njit(nogil=True, cache=True)
def _tmwm_rows(cube, out, flags, y0, y1, shared, w_codes, w_start, w_offs, pad, widest,  # pragma: no cover
               do_outlier, q_lo, q_hi, store_values):
    """TMWM of rows y0..y1 of cube (time, band, y, x) into out/flags (out may be cube).

    Row by row in the native layout (x innermost: every access is a contiguous run over
    x) on a private copy of the row, padded in time with ``pad`` gap periods on both
    sides so that window offsets need no bounds checks. The windows are searched once per
    validity pattern: a band whose gaps are where the previous band's are (clouds and
    nodata usually hit every band) reuses its windows, only the values are per band.
    """
    T, B, _, X = cube.shape
    P = pad
    row = np.full((T + 2 * P, B, X), np.nan, np.float32)
    frow = np.empty((T, B, X), np.uint8)
    ok = np.zeros((T + 2 * P, X), np.bool_)
    ok_next = np.zeros((T + 2 * P, X), np.bool_)
    srt = np.empty(T, np.float64)
    vals = np.empty(widest, np.float64)
    idx = np.empty((T, X, max(widest, 2)), np.int32)
    win = np.empty((T, X), np.int32)
    nval = np.empty((T, X), np.int32)
    ngap = np.empty(T, np.int64)
    for y in range(y0, y1):
        _load_row(cube, y, row, frow, P, do_outlier, q_lo, q_hi, srt)
        _store_row(row, frow, out, flags, y, P, store_values)
        if shared:
            _validity(row, ok, 0, B, P, T)
            _tmwm_search(ok, P, w_start, w_offs, win, nval, idx, ngap)
            for b in range(B):
                _tmwm_values(row, frow, out, flags, y, b, P, w_codes, win, nval, idx, ngap, vals)
            continue
        for b in range(B):
            _validity(row, ok_next, b, b + 1, P, T)
            if b == 0 or not _same_validity(ok, ok_next, P, T):
                ok, ok_next = ok_next, ok
                _tmwm_search(ok, P, w_start, w_offs, win, nval, idx, ngap)
            _tmwm_values(row, frow, out, flags, y, b, P, w_codes, win, nval, idx, ngap, vals)


@njit(nogil=True, cache=True)
def _linear_rows(cube, out, flags, y0, y1, shared, direction, pad, do_outlier, q_lo, q_hi,  # pragma: no cover
                 store_values):
    """Linear interpolation of rows y0..y1 (see :func:`_tmwm_rows`); ``pad`` is 0."""
    T, B, _, X = cube.shape
    P = pad
    row = np.full((T, B, X), np.nan, np.float32)
    frow = np.empty((T, B, X), np.uint8)
    ok = np.zeros((T, X), np.bool_)
    srt = np.empty(T, np.float64)
    prev = np.empty((T, X), np.int32)
    nxt = np.empty((T, X), np.int32)
    last = np.empty(X, np.int32)
    for y in range(y0, y1):
        _load_row(cube, y, row, frow, P, do_outlier, q_lo, q_hi, srt)
        _store_row(row, frow, out, flags, y, P, store_values)
        for g in range(1 if shared else B):
            b_lo = 0 if shared else g
            b_hi = B if shared else g + 1
            _validity(row, ok, b_lo, b_hi, P, T)
            _linear_pass(row, frow, ok, out, flags, y, b_lo, b_hi, P, direction, prev, nxt, last)


# --------------------------------------------------------------------------- public API


def fill_gaps(
    cube: np.ndarray,
    *,
    method: Method = "tmwm",
    season_size: int = 4,
    h_same: int = 2,
    h_neib: int = 1,
    h_annual: int = 2,
    direction: Direction = "both",
    shared_flags: bool = False,
    outlier_percentiles: tuple[float, float] | None = None,
    threads: int | None = None,
    inplace: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill the NaN gaps of a time series cube; returns ``(filled float32, flags uint8)``.

    ``cube`` is ``(time, y, x)`` or ``(time, band, y, x)``; both outputs have its shape.
    See the module docstring for the windows, the linear method, outliers, shared flags
    and the flag codes. ``threads`` defaults to the allocation
    (:func:`ecocube.env.available_threads`). ``inplace=True`` writes the filled values
    into ``cube`` (which must then be a writeable C-contiguous float32 array) and returns
    it, saving the memory of a second cube.
    """
    _check_params(method, season_size, h_same, h_neib, h_annual, direction, outlier_percentiles)
    arr = np.asarray(cube)
    if arr.ndim not in (3, 4):
        raise ConfigError(f"cube must be (time, y, x) or (time, band, y, x), got shape {arr.shape}")
    if inplace:
        if arr is not cube or arr.dtype != np.float32 or not arr.flags.c_contiguous or not arr.flags.writeable:
            raise ConfigError("inplace=True needs a writeable C-contiguous float32 numpy array")
    elif arr.dtype != np.float32 or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    cube4 = arr if arr.ndim == 4 else arr.reshape(arr.shape[0], 1, *arr.shape[1:])
    out4 = cube4 if inplace else np.empty_like(cube4)
    flags4 = np.empty(cube4.shape, np.uint8)
    _, B, Y, _ = cube4.shape
    if cube4.size == 0:
        return out4.reshape(arr.shape), flags4.reshape(arr.shape)

    q_lo, q_hi = (float(q) for q in outlier_percentiles) if outlier_percentiles is not None else (0.0, 100.0)
    shared = bool(shared_flags) and B > 1
    do_outlier = outlier_percentiles is not None
    store_values = not inplace or do_outlier  # in place, only removed outliers change observed values
    if method == "tmwm":
        windows = candidate_windows(season_size, h_same, h_neib, h_annual, direction)
        w_codes, w_start, w_offs, pad, widest = _window_plan(windows)
        kernel = _tmwm_rows
        args = (shared, w_codes, w_start, w_offs, pad, widest, do_outlier, q_lo, q_hi, store_values)
    else:
        kernel = _linear_rows
        args = (shared, _DIRECTIONS.index(direction), 0, do_outlier, q_lo, q_hi, store_values)

    n_threads = min(available_threads(threads), Y)
    if n_threads <= 1:
        kernel(cube4, out4, flags4, 0, Y, *args)
    else:
        # a few chunks per thread balance rows of uneven cost (cloudy vs clear areas)
        n_chunks = min(Y, n_threads * 4)
        edges = np.linspace(0, Y, n_chunks + 1).astype(np.int64)
        with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="ecocube-gapfill") as pool:
            futures = [pool.submit(kernel, cube4, out4, flags4, int(a), int(b), *args)
                       for a, b in itertools.pairwise(edges) if b > a]
            for f in futures:
                f.result()
    return out4.reshape(arr.shape), flags4.reshape(arr.shape)


def fill_gaps_config(
    cube: np.ndarray, cfg: RunConfig, threads: int | None = None, *, inplace: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fill_gaps` with the run's ``gapfill`` section and ``inputs.periods.season_size``.

    ``method: none`` returns the cube (as float32) unchanged, with flags 0 where observed
    and 255 at gaps. ``threads`` defaults to ``processing.threads``, then the allocation.
    ``inplace`` as in :func:`fill_gaps` (saves a cube's worth of memory).
    """
    g = cfg.gapfill
    if threads is None:
        threads = cfg.processing.threads
    if g.method == "none":
        arr = np.asarray(cube, dtype=np.float32)
        flags = np.where(np.isnan(arr), np.uint8(FLAG_UNFILLED), np.uint8(FLAG_OBSERVED)).astype(np.uint8)
        return arr, flags
    return fill_gaps(
        cube,
        method=g.method,
        season_size=int(cfg.inputs.periods.season_size),
        h_same=g.h_same,
        h_neib=g.h_neib,
        h_annual=g.h_annual,
        direction=g.direction,
        shared_flags=g.shared_flags,
        outlier_percentiles=g.outlier_percentiles,
        threads=threads,
        inplace=inplace,
    )


def flag_legend_config(cfg: RunConfig) -> dict[int, str]:
    """:func:`flag_legend` for a run configuration's ``gapfill`` section."""
    g = cfg.gapfill
    return flag_legend(g.method, h_same=g.h_same, h_neib=g.h_neib, h_annual=g.h_annual,
                       direction=g.direction, outliers=g.outlier_percentiles is not None,
                       season_size=int(cfg.inputs.periods.season_size))
