"""Class maps → polygons, dissolved across tile borders; duplicated instances merged.

Pure geometry, no I/O (:mod:`ecocube.vectorize` reads the tiles and writes the files).

Polygons are built in *global pixel coordinates* of the tile grid (column, row from the grid
origin, integers), so the edge two tiles share has exactly the same coordinates on both
sides and unions are exact; :func:`to_crs_transform` maps them to the grid CRS at the end.

:class:`BorderMerger` takes the tiles one at a time (any order). Each tile's class map is
split into 4-connected regions of one class (the grouping ``rasterio.features.shapes``
uses); a region that touches no tile edge is final at once. A region touching an edge is
carried, and joined (union-find) to the regions of the same class on the other side of the
edge, read pixel by pixel from the two tiles' edge rows/columns; a group of joined regions
is final when every tile across the edges it touches has been seen. Memory is bounded by
the carried border regions (about one row of tiles in row-major order), not the map.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BorderMerger", "Polygon", "label_regions", "merge_instances", "simplify_polygons", "to_crs_transform"]

# sides of a tile: index into (top, bottom, left, right)
TOP, BOTTOM, LEFT, RIGHT = 0, 1, 2, 3
_OPPOSITE = {TOP: BOTTOM, BOTTOM: TOP, LEFT: RIGHT, RIGHT: LEFT}
_STEP = {TOP: (0, -1), BOTTOM: (0, 1), LEFT: (-1, 0), RIGHT: (1, 0)}  # (dix, diy)


@dataclass
class Polygon:
    """One output polygon in global pixel coordinates, with its pixel statistics."""

    geometry: object  # shapely Polygon (pixel coordinates: x = column, y = row)
    value: int  # class code
    pixels: int
    proba_sum: float  # sum over its pixels of the probability of its class (NaN: none)
    tiles: tuple[str, ...] = ()

    @property
    def mean_proba(self) -> float:
        return self.proba_sum / self.pixels if self.pixels else float("nan")


def label_regions(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected regions of equal value: ``(labels int32 (0 = invalid), value per label)``.

    ``value_of[label]`` is the class of region ``label`` (index 0 unused).
    """
    from scipy import ndimage

    labels = np.zeros(values.shape, np.int32)
    value_of = [0]
    n = 0
    for v in np.unique(values[valid]):
        lab, k = ndimage.label(valid & (values == v))  # default structure: 4-connectivity
        labels[lab > 0] = lab[lab > 0] + n
        value_of.extend([int(v)] * k)
        n += k
    return labels, np.asarray(value_of, np.int64)


def _region_polygons(labels: np.ndarray, offset_xy: tuple[int, int]) -> dict[int, object]:
    """label -> shapely Polygon in global pixel coordinates (one polygon per 4-connected region)."""
    import shapely
    from rasterio.features import shapes
    from rasterio.transform import Affine

    out: dict[int, object] = {}
    transform = Affine.translation(*offset_xy)
    for geom, lab in shapes(labels, mask=labels > 0, connectivity=4, transform=transform):
        out[int(lab)] = shapely.geometry.shape(geom)
    return out


@dataclass
class _Tile:
    ix: int
    iy: int
    edges_labels: list[np.ndarray]  # per side, labels along that edge
    edges_values: list[np.ndarray]


@dataclass
class _Piece:
    key: tuple[str, int]  # (tile id, label)
    geometry: object
    value: int
    pixels: int
    proba_sum: float
    open_sides: set[tuple[int, int]] = field(default_factory=set)  # neighbour tile indices not seen yet


class BorderMerger:
    """Streams tiles in, yields final polygons; regions crossing tile edges come out whole.

    ``tiles``: every tile index ``(ix, iy)`` that will be added (a region is only held back
    for neighbours in this set). ``tile_size``: pixels per tile edge.
    """

    def __init__(self, tiles: Iterable[tuple[int, int]], tile_size: int):
        self.expected = {tuple(t) for t in tiles}
        self.tile_size = int(tile_size)
        self.seen: dict[tuple[int, int], _Tile] = {}
        self.pieces: dict[tuple[str, int], _Piece] = {}
        self.parent: dict[tuple[str, int], tuple[str, int]] = {}
        self.carried_max = 0  # most pieces held at once (memory check)
        self._ids: dict[tuple[int, int], str] = {}

    # union-find ---------------------------------------------------------------------
    def _find(self, k):
        root = k
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[k] != root:
            self.parent[k], k = root, self.parent[k]
        return root

    def _union(self, a, b) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    # --------------------------------------------------------------------------------
    def add_tile(self, tile_id: str, index: tuple[int, int], values: np.ndarray, valid: np.ndarray,
                 proba: np.ndarray | None = None) -> list[Polygon]:
        """Add one tile's class map (``values``, ``valid`` 2-D; ``proba``: probability of the
        pixel's class, 2-D float, or None) and return the polygons that became final."""
        ix, iy = index
        h, w = values.shape
        if (h, w) != (self.tile_size, self.tile_size):
            raise ValueError(f"tile {tile_id}: class map is {h}x{w}, the grid's tiles are {self.tile_size} px")
        if (ix, iy) not in self.expected:
            raise ValueError(f"tile {tile_id}: not among the tiles given to the merger")
        if (ix, iy) in self.seen:
            raise ValueError(f"tile {tile_id}: added twice")
        labels, value_of = label_regions(values, valid)
        n = len(value_of) - 1
        pixels = np.bincount(labels.ravel(), minlength=n + 1)
        if proba is not None:
            sums = np.bincount(labels.ravel(), weights=np.where(labels > 0, proba, 0).ravel(), minlength=n + 1)
        else:
            sums = np.full(n + 1, np.nan)
        geoms = _region_polygons(labels, (ix * self.tile_size, iy * self.tile_size))
        edges_l = [labels[0], labels[-1], labels[:, 0], labels[:, -1]]
        edges_v = [values[0], values[-1], values[:, 0], values[:, -1]]
        border: dict[int, set[tuple[int, int]]] = {}
        for side in (TOP, BOTTOM, LEFT, RIGHT):
            dix, diy = _STEP[side]
            nb = (ix + dix, iy + diy)
            if nb not in self.expected:
                continue
            for lab in np.unique(edges_l[side]):
                if lab:
                    border.setdefault(int(lab), set()).add(nb)
        final: list[Polygon] = []
        for lab in range(1, n + 1):
            if lab not in border:
                final.append(Polygon(geoms[lab], int(value_of[lab]), int(pixels[lab]), float(sums[lab]), (tile_id,)))
                continue
            key = (tile_id, lab)
            self.pieces[key] = _Piece(key, geoms[lab], int(value_of[lab]), int(pixels[lab]), float(sums[lab]),
                                      {nb for nb in border[lab] if nb not in self.seen})
            self.parent[key] = key
        self.seen[(ix, iy)] = _Tile(ix, iy, edges_l, edges_v)
        self._ids[(ix, iy)] = tile_id
        # join with the regions of tiles already seen, across each shared edge
        for side in (TOP, BOTTOM, LEFT, RIGHT):
            dix, diy = _STEP[side]
            nb = (ix + dix, iy + diy)
            other = self.seen.get(nb)
            if other is None:
                continue
            mine_l, mine_v = edges_l[side], edges_v[side]
            theirs_l, theirs_v = other.edges_labels[_OPPOSITE[side]], other.edges_values[_OPPOSITE[side]]
            touch = (mine_l > 0) & (theirs_l > 0) & (mine_v == theirs_v)
            nb_id = self._tile_id_of(nb)
            for a, b in set(zip(mine_l[touch].tolist(), theirs_l[touch].tolist())):
                self._union((tile_id, a), (nb_id, b))
            for k, piece in self.pieces.items():  # that neighbour is now seen by its pieces
                if k[0] == nb_id:
                    piece.open_sides.discard((ix, iy))
        final.extend(self._close(done=False))
        self._forget_edges((ix, iy))
        self.carried_max = max(self.carried_max, len(self.pieces))
        return final

    def _tile_id_of(self, index: tuple[int, int]) -> str:
        return self._ids[index]

    def _forget_edges(self, index: tuple[int, int]) -> None:
        # a tile's edges are needed until all its expected neighbours are seen: check the tile
        # just added and its neighbours (the only ones whose answer can have changed)
        for dx, dy in ((0, 0), *_STEP.values()):
            idx = (index[0] + dx, index[1] + dy)
            t = self.seen.get(idx)
            if t is None or not t.edges_labels:
                continue
            if all((idx[0] + a, idx[1] + b) in self.seen or (idx[0] + a, idx[1] + b) not in self.expected
                   for a, b in _STEP.values()):
                t.edges_labels, t.edges_values = [], []

    def finish(self) -> list[Polygon]:
        """The polygons still held (call after the last tile)."""
        missing = self.expected - set(self.seen)
        if missing:
            raise ValueError(f"{len(missing)} tiles were never added, e.g. {min(missing)}")
        return self._close(done=True)

    def _close(self, *, done: bool) -> list[Polygon]:
        import shapely

        groups: dict[tuple[str, int], list[_Piece]] = {}
        for k, piece in self.pieces.items():
            groups.setdefault(self._find(k), []).append(piece)
        out = []
        for root, members in groups.items():
            if not done and any(p.open_sides for p in members):
                continue
            geom = members[0].geometry if len(members) == 1 else shapely.union_all([p.geometry for p in members])
            geom = shapely.simplify(geom, 0)  # drop the collinear vertices left on the seams
            parts = shapely.get_parts(geom)
            if len(parts) != 1:  # cannot happen for edge-joined 4-connected regions
                raise AssertionError(f"regions joined across tile edges gave {len(parts)} polygons")
            pixels = sum(p.pixels for p in members)
            out.append(Polygon(parts[0], members[0].value, pixels, float(sum(p.proba_sum for p in members)),
                               tuple(sorted({p.key[0] for p in members}))))
            for p in members:
                del self.pieces[p.key]
                del self.parent[p.key]
        # parents of deleted keys are gone with them: every remaining key's root is a remaining key
        return out


def to_crs_transform(origin_x: float, origin_y: float, pixel_size: float):
    """The affine ``(a, b, d, e, xoff, yoff)`` for ``shapely.affinity.affine_transform`` from
    global pixel coordinates to the grid CRS."""
    return (pixel_size, 0.0, 0.0, -pixel_size, origin_x, origin_y)


def simplify_polygons(geoms: Sequence, tolerance: float) -> np.ndarray:
    """Simplify polygons that tile the plane without gaps or overlaps, keeping it that way.

    ``shapely.coverage_simplify`` simplifies every edge two polygons share once, the same way
    for both; the outer boundary of ``geoms`` is kept as is, so batches simplified separately
    still fit each other. Every result is valid and non-empty (an edge is never collapsed).
    """
    import shapely

    geoms = np.asarray(geoms, dtype=object)
    if tolerance <= 0 or geoms.size == 0:
        return geoms
    out = shapely.coverage_simplify(geoms, tolerance, simplify_boundary=False)
    bad = ~shapely.is_valid(out) | shapely.is_empty(out)
    if bad.any():  # keep the original of any polygon the simplification broke
        out[bad] = geoms[bad]
    return out


def merge_instances(geoms: Sequence, tiles: Sequence[str], *, scores: Sequence[float] | None = None,
                    classes: Sequence[int] | None = None, iou: float = 0.5) -> list[dict]:
    """Merge instances detected twice on adjacent (overlapping) tiles.

    Two instances from *different* tiles, of the same class, whose intersection over union
    is at least ``iou`` are one object: joined transitively, the group becomes one instance
    whose geometry is the union, score the maximum, and ``sources`` the indices merged.
    Instances of the same tile are never merged (the model already separated them).
    Returns one dict per output instance: ``geometry``, ``score``, ``class``, ``tiles``,
    ``sources``, in the order of their first source.
    """
    import shapely

    geoms = np.asarray(geoms, dtype=object)
    n = len(geoms)
    if not 0 < iou <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    if len(tiles) != n or (scores is not None and len(scores) != n) or (classes is not None and len(classes) != n):
        raise ValueError("geoms, tiles, scores and classes must have the same length")
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    for i, j in zip(left.tolist(), right.tolist()):
        if i >= j or tiles[i] == tiles[j] or (classes is not None and classes[i] != classes[j]):
            continue
        inter = shapely.area(shapely.intersection(geoms[i], geoms[j]))
        union = shapely.area(geoms[i]) + shapely.area(geoms[j]) - inter
        if union > 0 and inter / union >= iou:
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    out = []
    for root in sorted(groups):
        members = groups[root]
        out.append({
            "geometry": geoms[members[0]] if len(members) == 1 else shapely.union_all(geoms[members]),
            "score": None if scores is None else float(max(scores[i] for i in members)),
            "class": None if classes is None else classes[members[0]],
            "tiles": sorted({tiles[i] for i in members}),
            "sources": members,
        })
    return out
