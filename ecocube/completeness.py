"""The completeness report: per tile predicted ÷ target, averaged per region; CSV and PNG map.

Per tile (from its status record): ``target`` = the pixels × years the predict mask
(``model.predict_where``) asks for, ``predicted`` = those that got a class;
``completeness = predicted / target`` (1.0 when nothing is targeted). With ``unit="chips"``
(chip models) the counts are the record's ``chips.targeted`` / ``chips.predicted``. A tile
without a ``done`` record counts as completeness 0 (nothing predicted, target unknown).

Per region (a polygon with a name from a GeoPackage/GeoJSON file, in any CRS): the mean
of the completeness of the tiles it overlaps, each weighted by the area of the overlap
(a region covering a whole tile and half of another weighs them 2:1). Regions overlapping
no tile of the run are listed with no value.

:func:`completeness_report` is pure (records, tiles and geometries in, rows out);
:func:`read_regions`, :func:`write_csv` and :func:`write_map` are the I/O edges.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = ["CompletenessReport", "TileCompleteness", "completeness_report", "format_report", "read_regions",
           "write_csv", "write_map"]


@dataclass(frozen=True)
class TileCompleteness:
    tile: str
    state: str
    target: int
    predicted: int
    completeness: float
    bounds: tuple[float, float, float, float]


@dataclass(frozen=True)
class RegionCompleteness:
    name: str
    tiles: int
    completeness: float | None


@dataclass(frozen=True)
class CompletenessReport:
    unit: str
    tiles: tuple[TileCompleteness, ...]
    regions: tuple[RegionCompleteness, ...]

    @property
    def overall(self) -> float:
        """Mean tile completeness (every tile of the run weighs the same)."""
        return float(np.mean([t.completeness for t in self.tiles])) if self.tiles else 0.0

    def below(self, threshold: float) -> list[str]:
        """Ids of the tiles whose completeness is below ``threshold`` (to run again)."""
        return [t.tile for t in self.tiles if t.completeness < threshold]


def _counts(rec: Mapping[str, Any] | None, unit: str) -> tuple[str, int, int, float]:
    if rec is None:
        return "pending", 0, 0, 0.0
    state = str(rec.get("state"))
    if state != "done":
        return state, 0, 0, 0.0
    if unit == "chips":
        chips = rec.get("chips") or {}
        target, predicted = int(chips.get("targeted", 0)), int(chips.get("predicted", 0))
    else:
        target, predicted = int(rec.get("target_pixels", 0) or 0), int(rec.get("predicted_pixels", 0) or 0)
    return state, target, predicted, (predicted / target if target else 1.0)


def completeness_report(records: Mapping[str, Mapping[str, Any] | None], tiles: Sequence, *,
                        regions: Sequence[tuple[str, Any]] = (), unit: str = "pixels",
                        states: Mapping[str, str] | None = None) -> CompletenessReport:
    """The report for ``tiles`` (:class:`ecocube.grid.Tile`) from their ``records``;
    ``regions``: ``(name, shapely geometry in the grid CRS)`` pairs; ``states``: the
    effective state per tile (e.g. a done tile whose outputs are gone counts as failed)."""
    import shapely

    if unit not in ("pixels", "chips"):
        raise ValueError(f"unit must be 'pixels' or 'chips', got {unit!r}")
    rows = []
    for t in tiles:
        rec = records.get(t.id)
        state, target, predicted, comp = _counts(rec, unit)
        if states is not None and states.get(t.id, state) != state:
            state, target, predicted, comp = states[t.id], 0, 0, 0.0
        rows.append(TileCompleteness(t.id, state, target, predicted, comp, tuple(float(v) for v in t.bounds)))
    boxes = shapely.box(*np.array([r.bounds for r in rows], np.float64).reshape(-1, 4).T) if rows else None
    comps = np.array([r.completeness for r in rows], np.float64)
    out = []
    for name, geom in regions:
        if boxes is None:
            out.append(RegionCompleteness(str(name), 0, None))
            continue
        area = shapely.area(shapely.intersection(boxes, geom))
        hit = area > 0
        value = float((comps[hit] * area[hit]).sum() / area[hit].sum()) if hit.any() else None
        out.append(RegionCompleteness(str(name), int(hit.sum()), value))
    return CompletenessReport(unit, tuple(rows), tuple(out))


def read_regions(path: str | Path, grid_crs: str, *, name_field: str = "name") -> list[tuple[str, Any]]:
    """``(name, geometry in the grid CRS)`` of every feature of a vector file (GeoPackage,
    GeoJSON, ...); the name comes from ``name_field``."""
    import pyogrio
    import shapely

    path = Path(path)
    try:
        meta, _, wkb, field_data = pyogrio.raw.read(str(path), read_geometry=True)
    except Exception as exc:  # noqa: BLE001 - pyogrio's DataSourceError and friends
        raise ConfigError(f"cannot read regions file {path}: {exc}") from None
    fields = [str(f) for f in meta.get("fields", [])]
    if name_field not in fields:
        raise ConfigError(f"regions file {path} has no field {name_field!r} (fields: {', '.join(fields) or 'none'}); "
                          "choose one with --region-field")
    names = field_data[fields.index(name_field)]
    geoms = shapely.from_wkb(wkb)
    crs = meta.get("crs") or grid_crs
    keep = ~shapely.is_missing(geoms)
    geoms, names = geoms[keep], np.asarray(names, dtype=object)[keep]
    from rasterio.crs import CRS

    if CRS.from_user_input(crs) != CRS.from_user_input(grid_crs):
        from rasterio.warp import transform_geom

        geoms = [shapely.geometry.shape(transform_geom(crs, grid_crs, shapely.geometry.mapping(g))) for g in geoms]
    return [(str(n), g) for n, g in zip(names, geoms)]


def format_report(report: CompletenessReport, *, below: float | None = None) -> str:
    """Fixed-width tables: tiles (only those below ``below`` if given), then regions."""
    what = "chips" if report.unit == "chips" else "pixels"
    lines = [f"{'tile':<13} {'state':<12} {'target ' + what:>15} {'predicted':>10} {'completeness':>12}"]
    for t in report.tiles:
        if below is not None and t.completeness >= below:
            continue
        lines.append(f"{t.tile:<13} {t.state:<12} {t.target:>15} {t.predicted:>10} {100 * t.completeness:>11.1f}%")
    lines.append(f"overall: {100 * report.overall:.1f} % over {len(report.tiles)} tiles"
                 + (f"; {len(report.below(below))} below {100 * below:g} %" if below is not None else ""))
    if report.regions:
        lines.append("")
        lines.append(f"{'region':<24} {'tiles':>6} {'completeness':>12}")
        for r in report.regions:
            value = "-" if r.completeness is None else f"{100 * r.completeness:.1f}%"
            lines.append(f"{r.name:<24} {r.tiles:>6} {value:>12}")
    return "\n".join(lines)


def write_csv(report: CompletenessReport, path: str | Path) -> Path:
    """One row per tile, then one per region (``kind`` column: tile/region)."""
    from .atomic import write_text_atomic

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "id", "state", "tiles", f"target_{report.unit}", f"predicted_{report.unit}", "completeness"])
    for t in report.tiles:
        w.writerow(["tile", t.tile, t.state, 1, t.target, t.predicted, f"{t.completeness:.6f}"])
    for r in report.regions:
        w.writerow(["region", r.name, "", r.tiles, "", "", "" if r.completeness is None else f"{r.completeness:.6f}"])
    return write_text_atomic(Path(path), buf.getvalue())


def write_map(report: CompletenessReport, path: str | Path, *, regions: Sequence[tuple[str, Any]] = (),
              title: str = "completeness") -> Path:
    """A PNG map: tiles coloured by completeness (red 0 → green 1), region outlines and names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shapely
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    from .atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    cmap = plt.get_cmap("RdYlGn")
    # one collection, not a patch per tile: add_patch updates the axes' limits tile by tile (seconds for thousands)
    ax.add_collection(PatchCollection(
        [Rectangle((t.bounds[0], t.bounds[1]), t.bounds[2] - t.bounds[0], t.bounds[3] - t.bounds[1])
         for t in report.tiles], facecolors=[cmap(t.completeness) for t in report.tiles], edgecolors="#333333",
        linewidths=0.4), autolim=False)
    for t in report.tiles:
        left, bottom, right, top = t.bounds
        if len(report.tiles) <= 64:
            ax.text((left + right) / 2, (bottom + top) / 2, f"{100 * t.completeness:.0f}", ha="center",
                    va="center", fontsize=7)
    for name, geom in regions:
        for part in getattr(geom, "geoms", [geom]):
            if hasattr(part, "exterior"):
                x, y = part.exterior.xy
                ax.plot(x, y, color="black", linewidth=1.2)
        c = shapely.centroid(geom)
        ax.text(c.x, c.y, name, ha="center", va="bottom", fontsize=8, weight="bold")
    if report.tiles:
        b = np.array([t.bounds for t in report.tiles])
        ax.set_xlim(b[:, 0].min(), b[:, 2].max())
        ax.set_ylim(b[:, 1].min(), b[:, 3].max())
    ax.set_aspect("equal")
    ax.set_title(f"{title}: {100 * report.overall:.1f} % ({report.unit})")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 100))
    fig.colorbar(sm, ax=ax, label="completeness (%)", shrink=0.8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
