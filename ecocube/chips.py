"""Chips: cut an image into ``(n, bands, size, size)`` chips, stitch per-pixel scores back.

Pure arrays in, arrays out; the model is any callable ``run(chips) -> scores`` with
``chips`` float32 ``(n, bands, size, size)`` and ``scores`` ``(n, classes, size, size)``
(:class:`ecocube.chipmodel.ChipBundle` runs an ONNX file).

Chips start every ``stride = size - overlap`` pixels along each axis; the last one is
moved back to end at the image edge, so every chip lies inside the image (an image
smaller than a chip is padded with zeros, the normalised mean, and cropped back).

Two ways to stitch, ``stitch``:

``crop`` (default)
    each output pixel is taken from the one chip where it lies in the centre, at least
    ``margin = overlap // 2`` pixels from the chip's edges (pixels within ``margin`` of the
    image edge come from the chip at that edge). For a convolutional model whose
    receptive field radius is at most ``margin`` the result equals predicting the whole
    image at once (exactly, up to float rounding) everywhere but the outer ``margin`` band,
    which a tile halo of at least ``margin`` keeps outside the tile: no seams, and the same
    values on both sides of a tile border.
``blend``
    overlapping chips' scores are averaged with weights falling linearly towards each
    chip's edges (a pyramid), which hides seams of models with wider context.

A chip filter picks the chips to run (see :func:`chip_filter`): chips with no target pixel
(e.g. outside an elevation range) are not *targeted*; targeted chips with too few valid
(observed) pixels are not *predicted*. Pixels of chips not predicted get no score (NaN).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ChipCounts", "ChipGrid", "chip_filter", "chip_grid", "chip_starts", "predict_chips"]


def chip_starts(length: int, size: int, stride: int) -> list[int]:
    """Chip start offsets covering ``[0, length)``: ``0, stride, ...``, the last ending at ``length``."""
    if size <= 0 or stride <= 0:
        raise ValueError(f"chip size and stride must be positive, got {size} and {stride}")
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    starts.append(length - size)
    return sorted(set(starts))


def _own_ranges(starts: list[int], size: int, length: int, margin: int) -> list[tuple[int, int]]:
    """The output range each chip owns under centre cropping: ``[lo, hi)``, disjoint, covering
    ``[0, length)``; inner boundaries lie halfway between the centre regions of neighbours."""
    out = []
    for i, s in enumerate(starts):
        lo = 0 if i == 0 else max(s + margin, out[-1][1])
        hi = min(length, s + size) if i == len(starts) - 1 else min(s + size - margin, starts[i + 1] + margin)
        hi = max(hi, lo)
        out.append((lo, hi))
    return out


@dataclass(frozen=True)
class ChipGrid:
    """The chips of an image of ``height`` × ``width`` pixels: start rows/cols and, for
    centre cropping, the output rows/cols each chip owns (disjoint, covering the image)."""

    height: int
    width: int
    size: int
    overlap: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    own_rows: tuple[tuple[int, int], ...]
    own_cols: tuple[tuple[int, int], ...]

    @property
    def margin(self) -> int:
        return self.overlap // 2

    @property
    def n(self) -> int:
        return len(self.rows) * len(self.cols)

    def chips(self):
        """``(i, j, row, col)`` of every chip, row-major."""
        for i, r in enumerate(self.rows):
            for j, c in enumerate(self.cols):
                yield i, j, r, c


def chip_grid(height: int, width: int, *, size: int, overlap: int) -> ChipGrid:
    """The chip layout of an image (see the module docstring)."""
    if not 0 <= overlap < size:
        raise ValueError(f"chip overlap must be in 0..size-1 ({size - 1}), got {overlap}")
    stride = size - overlap
    ph, pw = max(height, size), max(width, size)
    rows, cols = chip_starts(ph, size, stride), chip_starts(pw, size, stride)
    m = overlap // 2
    own_r = [(lo, min(hi, height)) for lo, hi in _own_ranges(rows, size, ph, m)]
    own_c = [(lo, min(hi, width)) for lo, hi in _own_ranges(cols, size, pw, m)]
    return ChipGrid(height, width, size, overlap, tuple(rows), tuple(cols), tuple(own_r), tuple(own_c))


@dataclass
class ChipCounts:
    """Chips of a block: all, targeted (passing the covariate filter), predicted (targeted
    and valid enough, and run)."""

    total: int = 0
    targeted: int = 0
    predicted: int = 0

    def add(self, other: ChipCounts) -> None:
        self.total += other.total
        self.targeted += other.targeted
        self.predicted += other.predicted


def chip_filter(grid: ChipGrid, *, target: np.ndarray | None, valid: np.ndarray | None, min_valid: float,
                inner: tuple[slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(targeted, predicted)`` bool arrays ``(len(rows), len(cols))`` of a chip grid.

    A chip is judged on the pixels it owns (centre cropping) inside ``inner`` (the tile's
    part of a haloed block; default the whole image); a chip owning none of them is
    neither. ``target`` (``(H, W)`` bool, e.g. elevation 0-40 m; None: every pixel) makes a
    chip targeted when any of its pixels is a target; ``valid`` (``(H, W)`` bool, e.g.
    observed; None: every pixel) makes a targeted chip predicted when the valid fraction of
    its target pixels is at least ``min_valid``.
    """
    H, W = grid.height, grid.width
    inner = inner or (slice(0, H), slice(0, W))
    r0, r1 = inner[0].start or 0, inner[0].stop if inner[0].stop is not None else H
    c0, c1 = inner[1].start or 0, inner[1].stop if inner[1].stop is not None else W
    targeted = np.zeros((len(grid.rows), len(grid.cols)), bool)
    predicted = np.zeros_like(targeted)
    for i, j, _, _ in grid.chips():
        (a, b), (c, d) = grid.own_rows[i], grid.own_cols[j]
        a, b, c, d = max(a, r0), min(b, r1), max(c, c0), min(d, c1)
        if a >= b or c >= d:
            continue
        t = np.ones((b - a, d - c), bool) if target is None else np.asarray(target[a:b, c:d], bool)
        n_t = int(t.sum())
        if n_t == 0:
            continue
        targeted[i, j] = True
        n_v = n_t if valid is None else int((np.asarray(valid[a:b, c:d], bool) & t).sum())
        predicted[i, j] = n_v / n_t >= min_valid
    return targeted, predicted


def _pyramid(size: int) -> np.ndarray:
    ramp = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5)
    w1 = ramp / ramp.max()
    return np.outer(w1, w1).astype(np.float64)


def predict_chips(image: np.ndarray, run: Callable[[np.ndarray], np.ndarray], *, size: int, overlap: int,
                  stitch: str = "crop", batch: int = 16, which: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel scores ``(classes, H, W)`` float32 of ``image`` ``(bands, H, W)`` (finite).

    ``which`` (``(len(rows), len(cols))`` bool from :func:`chip_filter`) selects the chips
    to run; pixels no chip run covers are NaN. ``batch`` chips go to ``run`` at once.
    """
    if stitch not in ("crop", "blend"):
        raise ValueError(f"stitch must be 'crop' or 'blend', got {stitch!r}")
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be (bands, height, width), got shape {image.shape}")
    C, H, W = image.shape
    grid = chip_grid(H, W, size=size, overlap=overlap)
    if H < size or W < size:
        padded = np.zeros((C, max(H, size), max(W, size)), np.float32)
        padded[:, :H, :W] = image
        image = padded
    chosen = [(i, j, r, c) for i, j, r, c in grid.chips() if which is None or which[i, j]]
    acc = weight = None
    out = None
    wchip = _pyramid(size) if stitch == "blend" else None
    for k in range(0, len(chosen), max(1, batch)):
        part = chosen[k:k + batch]
        x = np.stack([image[:, r:r + size, c:c + size] for _, _, r, c in part])
        scores = np.asarray(run(x))
        if scores.ndim != 4 or scores.shape[0] != len(part) or scores.shape[2:] != (size, size):
            raise ValueError(f"chip model returned scores of shape {scores.shape} for chips of shape {x.shape}; "
                             f"expected ({len(part)}, classes, {size}, {size})")
        if out is None:
            K = scores.shape[1]
            out = np.full((K, H, W), np.nan, np.float32)
            if stitch == "blend":
                acc = np.zeros((K, image.shape[1], image.shape[2]), np.float64)
                weight = np.zeros(image.shape[1:], np.float64)
        for (i, j, r, c), s in zip(part, scores):
            if stitch == "crop":
                (a, b), (cc, d) = grid.own_rows[i], grid.own_cols[j]
                out[:, a:b, cc:d] = s[:, a - r:b - r, cc - c:d - c]
            else:
                acc[:, r:r + size, c:c + size] += s * wchip
                weight[r:r + size, c:c + size] += wchip
    if out is None:  # nothing run: the class count is unknown, the caller fills nodata
        return np.full((0, H, W), np.nan, np.float32)
    if stitch == "blend":
        with np.errstate(invalid="ignore", divide="ignore"):
            blended = (acc / weight)[:, :H, :W]
        out[...] = np.where(weight[:H, :W] > 0, blended, np.nan)
    return out
