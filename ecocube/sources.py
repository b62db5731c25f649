"""The input catalog: which file holds which band of which period, and which pixels are valid.

Pure logic, no pixel I/O (``read.py`` reads). A source is either

- ``composite``: one raster per regular period (e.g. quarterly composites), or
- ``acquisitions``: irregular dates (from ``dates`` or a STAC ItemCollection file), which
  ``read.py`` composites into the regular periods with a percentile.

Hrefs come from URL templates (local paths, ``https://``, ``s3://``, ``/vsi…``) with the
fields of :data:`TEMPLATE_FIELDS`, or, for STAC items, from the items' assets. Mask rules
(:class:`MaskRule`) turn a quality layer into valid/invalid observations.

Periods are regular: ``season_size`` S per year, ``start_year..end_year``; the time index
is ``k = (year - start_year) * S + (season - 1)``, the period id its start date.
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

#: reason codes (uint8) behind each value of a read
REASON_VALID = 0
REASON_MASKED = 1  # the source's mask rule (cloud, shadow, …) marked it invalid
REASON_NODATA = 2  # nodata in the file, outside the file's footprint, or no observation in the period
REASON_MISSING = 3  # the input file is missing (404 / no such file) and on_missing="record"

REASON_NAMES = {
    REASON_VALID: "valid",
    REASON_MASKED: "masked",
    REASON_NODATA: "nodata",
    REASON_MISSING: "missing",
}

#: fields a URL template may use
TEMPLATE_FIELDS = ("band", "year", "season", "quarter", "month", "date", "yyyymmdd", "tile", "period", "item")


# --------------------------------------------------------------------------- periods


@dataclass(frozen=True, slots=True)
class Period:
    """One regular period. ``end`` is exclusive; ``index`` is the time index in a read."""

    id: str
    start: date
    end: date
    year: int
    season: int
    index: int

    def contains(self, day: date) -> bool:
        return self.start <= day < self.end


def periods_from_config(periods_cfg) -> list[Period]:
    """All periods of a :class:`ecocube.config.PeriodsConfig`, in time order."""
    size = int(periods_cfg.season_size)
    if 12 % size:
        raise ConfigError(f"season_size must divide 12, got {size}")
    months = 12 // size
    out: list[Period] = []
    for year in range(int(periods_cfg.start_year), int(periods_cfg.end_year) + 1):
        for season in range(1, size + 1):
            m0 = 1 + (season - 1) * months
            start = date(year, m0, 1)
            m1 = m0 + months
            end = date(year + 1, 1, 1) if m1 > 12 else date(year, m1, 1)
            out.append(Period(start.isoformat(), start, end, year, season, len(out)))
    return out


def period_of(day: date, periods: Sequence[Period]) -> Period | None:
    """The period holding ``day`` (None outside the configured years)."""
    if not periods or day < periods[0].start or day >= periods[-1].end:
        return None
    size = len([p for p in periods if p.year == periods[0].year])
    months = 12 // size
    k = (day.year - periods[0].year) * size + (day.month - 1) // months
    return periods[k]


# --------------------------------------------------------------------------- templates


def template_fields(template: str) -> list[str]:
    """The field names a template uses (``{year}``, ``{month:02d}`` → year, month)."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"invalid URL template {template!r}: {exc}") from None


def check_template(template: str, *, what: str, allowed: Sequence[str] = TEMPLATE_FIELDS) -> None:
    """Raise :class:`ConfigError` for fields that are not among ``allowed``."""
    bad = [f for f in template_fields(template) if f.split(".")[0].split("[")[0] not in allowed or f == ""]
    if bad:
        raise ConfigError(
            f"{what}: unknown field(s) {', '.join('{' + b + '}' for b in bad)} in template {template!r}; "
            f"allowed: {', '.join('{' + a + '}' for a in allowed)}"
        )


def format_href(template: str, fields: dict) -> str:
    """Fill a URL template; a field the template needs but ``fields`` lacks is a ConfigError."""
    try:
        return template.format(**fields)
    except KeyError as exc:
        raise ConfigError(f"URL template {template!r} uses {{{exc.args[0]}}}, which is not known here") from None
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"cannot fill URL template {template!r}: {exc}") from None


def period_fields(period: Period, tile_id: str | None) -> dict:
    return {
        "year": period.year,
        "season": period.season,
        "quarter": (period.start.month - 1) // 3 + 1,
        "month": period.start.month,
        "date": period.id,
        "yyyymmdd": period.start.strftime("%Y%m%d"),
        "period": period.id,
        "tile": tile_id,
    }


def acquisition_fields(day: date, period: Period, tile_id: str | None, item: str | None = None) -> dict:
    return {
        "year": day.year,
        "season": period.season,
        "quarter": (day.month - 1) // 3 + 1,
        "month": day.month,
        "date": day.isoformat(),
        "yyyymmdd": day.strftime("%Y%m%d"),
        "period": period.id,
        "tile": tile_id,
        "item": item,
    }


# --------------------------------------------------------------------------- masks


@dataclass(frozen=True, slots=True)
class MaskRule:
    """Turns a quality layer into invalid observations.

    ``classes``: the listed values are invalid (Sentinel-2 SCL 3, 8, 9, 10);
    ``bits``: any of the listed bit positions set is invalid (Landsat QA_PIXEL 1, 3, 4);
    ``threshold``: values above ``threshold`` are invalid (cloud probability).
    """

    kind: str
    values: tuple[int, ...] = ()
    threshold: float | None = None
    band_index: int = 1

    @classmethod
    def from_config(cls, mask_cfg) -> MaskRule:
        return cls(kind=mask_cfg.kind, values=tuple(int(v) for v in mask_cfg.values),
                   threshold=mask_cfg.threshold, band_index=int(mask_cfg.band_index))

    def invalid(self, qa: np.ndarray) -> np.ndarray:
        """Boolean array, True where the rule marks the observation invalid."""
        if self.kind == "classes":
            return np.isin(qa, np.asarray(self.values))
        if self.kind == "bits":
            if not np.issubdtype(qa.dtype, np.integer):
                raise ConfigError(f"mask kind 'bits' needs an integer quality layer, got {qa.dtype}")
            bad = [b for b in self.values if not 0 <= b < qa.dtype.itemsize * 8]
            if bad:
                raise ConfigError(f"mask bits {bad} do not fit a {qa.dtype} quality layer")
            bitmask = 0
            for b in self.values:
                bitmask |= 1 << int(b)
            return (qa.astype(np.uint64) & np.uint64(bitmask)) != 0
        if self.kind == "threshold":
            return qa > self.threshold
        raise ConfigError(f"unknown mask kind {self.kind!r}")


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True, slots=True)
class FileRef:
    """One raster to read: href and the 1-based band indexes wanted from it."""

    href: str
    indexes: tuple[int, ...]


@dataclass(frozen=True)
class Observation:
    """One date (or one period composite) of one source, for one period.

    ``files`` maps each band of the source to ``(href, band_index)``; ``mask`` is the
    quality layer (href, band index) or None.
    """

    source: str
    period: Period
    day: date | None
    bands: dict[str, tuple[str, int]]
    mask: tuple[str, int] | None = None

    def file_refs(self) -> list[FileRef]:
        """The distinct files of this observation, each with the band indexes needed."""
        by_href: dict[str, list[int]] = {}
        for href, idx in self.bands.values():
            by_href.setdefault(href, [])
            if idx not in by_href[href]:
                by_href[href].append(idx)
        return [FileRef(h, tuple(ix)) for h, ix in by_href.items()]


@dataclass
class SourceCatalog:
    """The observations of one source, grouped by period (index)."""

    name: str
    kind: str
    bands: tuple[str, ...]
    scale: float
    offset: float
    nodata: float | None
    resampling: str
    mask_rule: MaskRule | None
    observations: dict[int, list[Observation]] = field(default_factory=dict)

    @property
    def n_observations(self) -> int:
        return sum(len(v) for v in self.observations.values())


def parse_day(text: str) -> date:
    """A date from ``YYYY-MM-DD`` or an ISO datetime (``2019-01-01T10:56:55Z``)."""
    text = str(text).strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError as exc:
        raise ConfigError(f"not a date: {text!r} ({exc}; use YYYY-MM-DD or an ISO datetime)") from None


def _band_index(src_cfg, band: str) -> int:
    if src_cfg.band_indexes is not None:
        return int(src_cfg.band_indexes[band])
    return 1


def check_source_templates(src_cfg) -> None:
    what = f"inputs.sources[{src_cfg.name}]"
    if src_cfg.href is not None:
        allowed = TEMPLATE_FIELDS if src_cfg.stac_items else tuple(f for f in TEMPLATE_FIELDS if f != "item")
        check_template(src_cfg.href, what=f"{what}.href", allowed=allowed)
        if (len(src_cfg.bands) > 1 and src_cfg.band_indexes is None
                and "band" not in template_fields(src_cfg.href)):
            raise ConfigError(
                f"{what}.href {src_cfg.href!r} has no {{band}} field and no band_indexes: "
                f"cannot tell where bands {list(src_cfg.bands)} are"
            )
    if src_cfg.mask is not None and src_cfg.mask.href is not None:
        allowed = tuple(f for f in TEMPLATE_FIELDS if f != "band" and (src_cfg.stac_items or f != "item"))
        check_template(src_cfg.mask.href, what=f"{what}.mask.href", allowed=allowed)


def source_catalog(src_cfg, periods: Sequence[Period], tile_id: str | None = None) -> SourceCatalog:
    """The observations of one :class:`ecocube.config.SourceConfig` for one tile."""
    check_source_templates(src_cfg)
    cat = SourceCatalog(
        name=src_cfg.name, kind=src_cfg.kind, bands=tuple(src_cfg.bands), scale=float(src_cfg.scale),
        offset=float(src_cfg.offset), nodata=src_cfg.nodata, resampling=src_cfg.resampling,
        mask_rule=MaskRule.from_config(src_cfg.mask) if src_cfg.mask is not None else None,
    )
    mask_index = src_cfg.mask.band_index if src_cfg.mask is not None else 1

    if src_cfg.kind == "composite":
        for p in periods:
            f = period_fields(p, tile_id)
            bands = {b: (format_href(src_cfg.href, {**f, "band": b}), _band_index(src_cfg, b)) for b in src_cfg.bands}
            mask = (format_href(src_cfg.mask.href, f), mask_index) if src_cfg.mask is not None else None
            cat.observations.setdefault(p.index, []).append(Observation(src_cfg.name, p, None, bands, mask))
        return cat

    dropped: list[date] = []
    if src_cfg.stac_items is not None:
        for day, item_id, assets in stac_acquisitions(src_cfg.stac_items):
            p = period_of(day, periods)
            if p is None:
                dropped.append(day)
                continue
            f = acquisition_fields(day, p, tile_id, item_id)
            bands = {}
            for b in src_cfg.bands:
                key = (src_cfg.assets or {}).get(b, b)
                if key in assets:
                    bands[b] = (assets[key], _band_index(src_cfg, b))
                elif src_cfg.href is not None:
                    bands[b] = (format_href(src_cfg.href, {**f, "band": b}), _band_index(src_cfg, b))
                else:
                    raise ConfigError(
                        f"inputs.sources[{src_cfg.name}]: STAC item {item_id!r} ({src_cfg.stac_items}) has no asset "
                        f"{key!r} for band {b!r}; its assets are {sorted(assets)}"
                    )
            mask = None
            if src_cfg.mask is not None:
                if src_cfg.mask.asset is not None and src_cfg.mask.asset in assets:
                    mask = (assets[src_cfg.mask.asset], mask_index)
                elif src_cfg.mask.href is not None:
                    mask = (format_href(src_cfg.mask.href, f), mask_index)
                else:
                    raise ConfigError(
                        f"inputs.sources[{src_cfg.name}]: STAC item {item_id!r} has no mask asset "
                        f"{src_cfg.mask.asset!r}; its assets are {sorted(assets)}"
                    )
            cat.observations.setdefault(p.index, []).append(Observation(src_cfg.name, p, day, bands, mask))
    else:
        seen: set[date] = set()
        for text in src_cfg.dates:
            day = parse_day(text)
            if day in seen:
                continue
            seen.add(day)
            p = period_of(day, periods)
            if p is None:
                dropped.append(day)
                continue
            f = acquisition_fields(day, p, tile_id)
            bands = {b: (format_href(src_cfg.href, {**f, "band": b}), _band_index(src_cfg, b)) for b in src_cfg.bands}
            mask = (format_href(src_cfg.mask.href, f), mask_index) if src_cfg.mask is not None else None
            cat.observations.setdefault(p.index, []).append(Observation(src_cfg.name, p, day, bands, mask))
    for obs in cat.observations.values():
        obs.sort(key=lambda o: o.day)
    if dropped:
        _warn_dropped(src_cfg, dropped, periods)
    return cat


_WARNED: set[tuple] = set()


def dropped_dates_message(src_cfg, dropped: Sequence[date], periods: Sequence[Period]) -> str:
    """The warning for acquisitions that fall outside every configured period."""
    days = sorted(set(dropped))
    shown = ", ".join(d.isoformat() for d in days[:5]) + (" ..." if len(days) > 5 else "")
    span = f"{periods[0].start.isoformat()}..{periods[-1].end.isoformat()}" if periods else "(no periods)"
    return (f"inputs.sources[{src_cfg.name}]: {len(days)} acquisition date(s) outside the periods {span} "
            f"are not read: {shown}")


def _warn_dropped(src_cfg, dropped: Sequence[date], periods: Sequence[Period]) -> None:
    """Log once per process and source (a catalog is built for every tile)."""
    msg = dropped_dates_message(src_cfg, dropped, periods)
    if (src_cfg.name, msg) not in _WARNED:
        _WARNED.add((src_cfg.name, msg))
        log.warning("%s", msg)


def dates_outside_periods(src_cfg, periods: Sequence[Period]) -> list[date]:
    """Acquisition dates of an ``acquisitions`` source that no period holds (pure; may raise
    :class:`ConfigError` for a date that does not exist, e.g. 2020-02-30)."""
    if src_cfg.kind != "acquisitions":
        return []
    if src_cfg.stac_items is not None:
        days = [d for d, _, _ in stac_acquisitions(src_cfg.stac_items)]
    else:
        days = [parse_day(t) for t in src_cfg.dates or ()]
    return sorted({d for d in days if period_of(d, periods) is None})


def input_catalog(inputs_cfg, tile_id: str | None = None) -> tuple[list[Period], list[SourceCatalog]]:
    """Periods and the catalog of every source of ``inputs_cfg`` for one tile."""
    periods = periods_from_config(inputs_cfg.periods)
    return periods, [source_catalog(s, periods, tile_id) for s in inputs_cfg.sources]


_ABS = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


def stac_acquisitions(path: str | Path) -> list[tuple[date, str, dict[str, str]]]:
    """(date, item id, {asset key: absolute href}) of each item in a STAC ItemCollection file.

    Relative asset hrefs are resolved against the file's folder. Items are sorted by date.
    """
    import pystac

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"STAC item collection not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read STAC item collection {path}: {exc}") from None
    try:
        if data.get("type") == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(data, preserve_dict=False))
        elif data.get("type") == "Feature":
            items = [pystac.Item.from_dict(data)]
        else:
            raise ConfigError(f"{path} is not a STAC ItemCollection (type {data.get('type')!r})")
    except ConfigError:
        raise
    except Exception as exc:  # pystac raises STACTypeError, KeyError, ValueError
        raise ConfigError(f"invalid STAC item collection {path}: {exc}") from None
    out = []
    for item in items:
        dt = item.datetime or item.common_metadata.start_datetime
        if dt is None:
            raise ConfigError(f"STAC item {item.id!r} in {path} has no datetime")
        assets = {}
        for key, asset in item.assets.items():
            href = asset.href
            if not _ABS.match(href) and not href.startswith("/"):
                href = str((path.parent / href).resolve())
            assets[key] = href
        out.append((dt.date(), item.id, assets))
    out.sort(key=lambda t: (t[0], t[1]))
    return out
