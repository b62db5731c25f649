"""The input catalog: which file holds which band of which period, and which pixels are valid.

No pixel I/O (``read.py`` reads; listing a glob and reading a date tag are the only file
accesses here). A source is

- ``composite``: one raster per regular period (e.g. quarterly composites),
- ``acquisitions``: irregular dates (listed in ``dates``, found by a ``glob`` with the
  date from the file name or a raster tag, or read from a STAC ItemCollection file), or
- ``stac-api``: acquisitions searched per tile in a STAC API (``scenes.py`` searches and
  hands the scenes in as :class:`Acquisition` records),

and acquisitions are composited by ``read.py`` into the regular periods with a percentile.

Hrefs come from URL templates (local paths, ``https://``, ``s3://``, ``/vsi…``) with the
fields of :data:`TEMPLATE_FIELDS`, from the files a glob found, or from STAC items' assets.
Mask rules (:class:`MaskRule`) turn a quality layer into valid/invalid observations.

Periods are regular: ``season_size`` S per year, ``start_year..end_year``, each year
starting on ``periods.year_start`` (default 1 January; otherwise year Y is the one that
ends in Y); the time index is ``k = (year - start_year) * S + (season - 1)``, the period
id its start date.
"""

from __future__ import annotations

import bisect
import glob as globlib
import json
import logging
import os
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


def _add_months(day: date, months: int) -> date:
    total = day.month - 1 + months
    return date(day.year + total // 12, total % 12 + 1, day.day)


def year_bounds(year: int, periods_cfg) -> tuple[date, date]:
    """First day and end (exclusive) of ``year`` under ``periods.year_start``.

    With the default ``01-01`` a year is the calendar year; otherwise year ``Y`` is the one
    that ends in ``Y`` (``10-01``: 2019 = 2018-10-01..2019-09-30).
    """
    month, day = _year_start_md(periods_cfg)
    start = date(int(year), month, day) if (month, day) == (1, 1) else date(int(year) - 1, month, day)
    return start, _add_months(start, 12)


def _year_start_md(periods_cfg) -> tuple[int, int]:
    text = getattr(periods_cfg, "year_start", "01-01") or "01-01"
    month, day = str(text).split("-")
    return int(month), int(day)


def year_of(day: date, periods_cfg) -> int:
    """The (possibly non-calendar) year holding ``day``."""
    month, dd = _year_start_md(periods_cfg)
    if (month, dd) == (1, 1):
        return day.year
    return day.year + 1 if (day.month, day.day) >= (month, dd) else day.year


def periods_from_config(periods_cfg) -> list[Period]:
    """All periods of a :class:`ecocube.config.PeriodsConfig`, in time order."""
    size = int(periods_cfg.season_size)
    if 12 % size:
        raise ConfigError(f"season_size must divide 12, got {size}")
    months = 12 // size
    out: list[Period] = []
    for year in range(int(periods_cfg.start_year), int(periods_cfg.end_year) + 1):
        y0, _ = year_bounds(year, periods_cfg)
        for season in range(1, size + 1):
            start = _add_months(y0, (season - 1) * months)
            end = _add_months(y0, season * months)
            out.append(Period(start.isoformat(), start, end, year, season, len(out)))
    return out


def period_of(day: date, periods: Sequence[Period]) -> Period | None:
    """The period holding ``day`` (None outside the configured years)."""
    if not periods or day < periods[0].start or day >= periods[-1].end:
        return None
    k = bisect.bisect_right([p.start for p in periods], day) - 1
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
    item: str | None = None  # STAC item id or file name stem
    cloud: float | None = None  # the item's eo:cloud_cover, percent

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
    named = src_cfg.stac_items or src_cfg.glob or src_cfg.kind == "stac-api"  # {item}: item id / file stem
    if src_cfg.glob is not None and src_cfg.href is None and len(src_cfg.bands) > 1 and src_cfg.band_indexes is None:
        raise ConfigError(f"{what}: the files of glob {src_cfg.glob!r} hold bands {list(src_cfg.bands)}: give "
                          "band_indexes, or an href template with {band} for one file per band")
    if src_cfg.href is not None:
        allowed = TEMPLATE_FIELDS if named else tuple(f for f in TEMPLATE_FIELDS if f != "item")
        check_template(src_cfg.href, what=f"{what}.href", allowed=allowed)
        if (len(src_cfg.bands) > 1 and src_cfg.band_indexes is None
                and "band" not in template_fields(src_cfg.href)):
            raise ConfigError(
                f"{what}.href {src_cfg.href!r} has no {{band}} field and no band_indexes: "
                f"cannot tell where bands {list(src_cfg.bands)} are"
            )
    if src_cfg.mask is not None and src_cfg.mask.href is not None:
        allowed = tuple(f for f in TEMPLATE_FIELDS if f != "band" and (named or f != "item"))
        check_template(src_cfg.mask.href, what=f"{what}.mask.href", allowed=allowed)


@dataclass(frozen=True)
class Acquisition:
    """One dated scene of an acquisitions source, before it becomes an :class:`Observation`.

    ``item``: STAC item id or file name stem; ``assets``: asset key -> href (STAC); ``path``:
    the file a glob found; ``cloud``: the item's ``eo:cloud_cover`` (percent) when known.
    """

    day: date
    item: str | None = None
    assets: dict[str, str] | None = None
    path: str | None = None
    cloud: float | None = None
    datetime: str | None = None


def _acquisition_observation(src_cfg, acq: Acquisition, p: Period, tile_id: str | None, where: str) -> Observation:
    f = acquisition_fields(acq.day, p, tile_id, acq.item)
    mask_index = src_cfg.mask.band_index if src_cfg.mask is not None else 1
    bands = {}
    for b in src_cfg.bands:
        key = (src_cfg.assets or {}).get(b, b)
        if acq.assets is not None and key in acq.assets:
            bands[b] = (acq.assets[key], _band_index(src_cfg, b))
        elif src_cfg.href is not None:
            bands[b] = (format_href(src_cfg.href, {**f, "band": b}), _band_index(src_cfg, b))
        elif acq.path is not None:
            bands[b] = (acq.path, _band_index(src_cfg, b))
        else:
            raise ConfigError(
                f"inputs.sources[{src_cfg.name}]: STAC item {acq.item!r} ({where}) has no asset "
                f"{key!r} for band {b!r}; its assets are {sorted(acq.assets or {})}"
            )
    mask = None
    if src_cfg.mask is not None:
        if src_cfg.mask.asset is not None and acq.assets is not None and src_cfg.mask.asset in acq.assets:
            mask = (acq.assets[src_cfg.mask.asset], mask_index)
        elif src_cfg.mask.href is not None:
            mask = (format_href(src_cfg.mask.href, f), mask_index)
        else:
            raise ConfigError(
                f"inputs.sources[{src_cfg.name}]: STAC item {acq.item!r} ({where}) has no mask asset "
                f"{src_cfg.mask.asset!r}; its assets are {sorted(acq.assets or {})}"
            )
    return Observation(src_cfg.name, p, acq.day, bands, mask, item=acq.item, cloud=acq.cloud)


def acquisitions_of(src_cfg) -> tuple[list[Acquisition], str]:
    """The dated scenes of a ``dates``/``glob``/``stac_items`` source, and where they came from."""
    if src_cfg.stac_items is not None:
        return ([Acquisition(day, item, assets, cloud=cloud)
                 for day, item, assets, cloud in _stac_file_items(src_cfg.stac_items)], str(src_cfg.stac_items))
    if src_cfg.glob is not None:
        found = discover_files(src_cfg.glob, date_pattern=src_cfg.date_pattern, date_tag=src_cfg.date_tag,
                               what=f"inputs.sources[{src_cfg.name}].glob")
        return [Acquisition(f.day, f.stem, path=f.path) for f in found], f"glob {src_cfg.glob}"
    out, seen, repeated = [], set(), []
    for text in src_cfg.dates or ():
        day = parse_day(text)
        if day not in seen:
            seen.add(day)
            out.append(Acquisition(day))
        elif day not in repeated:
            repeated.append(day)
    if repeated:  # one file per date: a repeated date is read once, never counted twice
        days = sorted(repeated)
        shown = ", ".join(d.isoformat() for d in days[:5]) + (" ..." if len(days) > 5 else "")
        _warn_once(src_cfg, f"inputs.sources[{src_cfg.name}].dates: {len(days)} date(s) listed more than once "
                            f"are read once: {shown}")
    return out, "dates"


def source_catalog(src_cfg, periods: Sequence[Period], tile_id: str | None = None,
                   acquisitions: Sequence[Acquisition] | None = None) -> SourceCatalog:
    """The observations of one :class:`ecocube.config.SourceConfig` for one tile.

    ``acquisitions``: the scenes of a ``stac-api`` source for this tile (searched by
    :mod:`ecocube.scenes`); other kinds find theirs from the config.
    """
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

    if acquisitions is not None:
        where = src_cfg.stac_api.url if src_cfg.stac_api is not None else "given"
    elif src_cfg.kind == "stac-api":
        raise ConfigError(f"inputs.sources[{src_cfg.name}]: a stac-api source needs its searched items "
                          "(ecocube.stacapi.search_source)")
    else:
        acquisitions, where = acquisitions_of(src_cfg)
    dropped: list[date] = []
    for acq in acquisitions:
        p = period_of(acq.day, periods)
        if p is None:
            dropped.append(acq.day)
            continue
        cat.observations.setdefault(p.index, []).append(_acquisition_observation(src_cfg, acq, p, tile_id, where))
    for obs in cat.observations.values():
        obs.sort(key=lambda o: (o.day, o.item or ""))
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
    _warn_once(src_cfg, dropped_dates_message(src_cfg, dropped, periods))


def _warn_once(src_cfg, msg: str) -> None:
    """Log once per process and source (a catalog is built for every tile)."""
    if (src_cfg.name, msg) not in _WARNED:
        _WARNED.add((src_cfg.name, msg))
        log.warning("%s", msg)


def dates_outside_periods(src_cfg, periods: Sequence[Period]) -> list[date]:
    """Acquisition dates of an ``acquisitions`` source (listed, globbed or in a STAC item
    file) that no period holds; may raise :class:`ConfigError` for a date that does not
    exist (2020-02-30), an empty glob or an undated file."""
    if src_cfg.kind != "acquisitions":
        return []
    acqs, _ = acquisitions_of(src_cfg)
    return sorted({a.day for a in acqs if period_of(a.day, periods) is None})


def input_catalog(inputs_cfg, tile_id: str | None = None) -> tuple[list[Period], list[SourceCatalog]]:
    """Periods and the catalog of every source of ``inputs_cfg`` for one tile."""
    periods = periods_from_config(inputs_cfg.periods)
    return periods, [source_catalog(s, periods, tile_id) for s in inputs_cfg.sources]


_ABS = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


def stac_acquisitions(path: str | Path) -> list[tuple[date, str, dict[str, str]]]:
    """(date, item id, {asset key: absolute href}) of each item in a STAC ItemCollection file.

    Relative asset hrefs are resolved against the file's folder. Items are sorted by date.
    """
    return [(day, item, assets) for day, item, assets, _ in _stac_file_items(path)]


def _stac_file_items(path: str | Path) -> list[tuple[date, str, dict[str, str], float | None]]:
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
        out.append((dt.date(), item.id, assets, item_cloud(item.properties)))
    out.sort(key=lambda t: (t[0], t[1]))
    return out


def item_cloud(properties: dict) -> float | None:
    """``eo:cloud_cover`` of a STAC item's properties, as a float (None if absent)."""
    value = properties.get("eo:cloud_cover")
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- file discovery

#: fields of a ``date_pattern`` and the digits each matches
DATE_FIELDS = {
    "yyyymmdd": r"\d{8}",
    "date": r"\d{4}-\d{2}-\d{2}",
    "yyyy": r"\d{4}",
    "mm": r"\d{2}",
    "dd": r"\d{2}",
    "doy": r"\d{3}",
}

DEFAULT_DATE_PATTERN = "{yyyymmdd}"


def date_regex(pattern: str) -> re.Pattern:
    """A regex for a file-name date pattern (``S2L2A_{yyyymmdd}_10m.tif``, ``{yyyy}{doy}``);
    ``*`` matches anything. The pattern is searched in the file name."""
    parts = re.split(r"(\{[^}]*\}|\*)", pattern)
    out, seen = [], set()
    for part in parts:
        if part == "*":
            out.append(".*?")
        elif part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            if name not in DATE_FIELDS:
                raise ConfigError(f"date_pattern {pattern!r}: unknown field {part}; "
                                  f"known: {', '.join('{' + f + '}' for f in DATE_FIELDS)}")
            if name in seen:
                raise ConfigError(f"date_pattern {pattern!r} uses {part} twice")
            seen.add(name)
            out.append(f"(?P<{name}>{DATE_FIELDS[name]})")
        else:
            out.append(re.escape(part))
    ok = {"yyyymmdd"} <= seen or {"date"} <= seen or {"yyyy", "mm", "dd"} <= seen or {"yyyy", "doy"} <= seen
    if not ok:
        raise ConfigError(f"date_pattern {pattern!r} does not give a whole date: use {{yyyymmdd}}, {{date}}, "
                          "{yyyy}{mm}{dd} or {yyyy}{doy}")
    return re.compile("".join(out))


def day_from_name(name: str, regex: re.Pattern) -> date | None:
    """The date a file name holds by ``regex`` (:func:`date_regex`); None if it does not match.
    Raises ValueError when the digits are not a date (``20181332``)."""
    from datetime import timedelta

    m = regex.search(name)
    if m is None:
        return None
    g = m.groupdict()
    if "yyyymmdd" in g:
        t = g["yyyymmdd"]
        return date(int(t[:4]), int(t[4:6]), int(t[6:]))
    if "date" in g:
        return date.fromisoformat(g["date"])
    if "doy" in g:
        doy = int(g["doy"])
        first = date(int(g["yyyy"]), 1, 1)
        day = first + timedelta(days=doy - 1)
        if not 1 <= doy or day.year != first.year:
            raise ValueError(f"day of year {doy} is not in {first.year}")
        return day
    return date(int(g["yyyy"]), int(g["mm"]), int(g["dd"]))


def day_from_tag(text: str) -> date:
    """A date from a raster tag: TIFF ``YYYY:MM:DD HH:MM:SS`` or ISO 8601."""
    text = str(text).strip()
    m = re.fullmatch(r"(\d{4}):(\d{2}):(\d{2})([ T].*)?", text)
    if m:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    try:
        return parse_day(text)
    except ConfigError:
        raise ValueError(f"{text!r} is not a date") from None


_TAG_CACHE: dict[tuple[str, int, str], str | None] = {}


def _read_tag(path: str, tag: str) -> str | None:
    """Tag ``tag`` of a raster (default domain, then band 1); cached per file and mtime."""
    import rasterio

    try:
        key = (path, os.stat(path).st_mtime_ns, tag)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if key not in _TAG_CACHE:
        try:
            with rasterio.open(path) as src:
                value = src.tags().get(tag)
                if value is None and src.count:
                    value = src.tags(1).get(tag)
        except rasterio.errors.RasterioIOError as exc:
            raise ConfigError(f"cannot read the date tag {tag} of {path}: not a raster GDAL can open ({exc})") from None
        _TAG_CACHE[key] = value
    return _TAG_CACHE[key]


@dataclass(frozen=True, slots=True)
class FoundFile:
    """One acquisition found by a glob: its date, path and name without extension."""

    day: date
    path: str
    stem: str


def discover_files(pattern: str, *, date_pattern: str | None = None, date_tag: str | None = None,
                   what: str = "glob") -> list[FoundFile]:
    """The files a glob matches, each with its date (from the name or a tag), in date order.

    Errors (:class:`ConfigError`, naming the pattern or file): nothing matched; a name
    without a date (or a file without the tag); a date that is not a date; two files with
    the same date.
    """
    paths = sorted(globlib.glob(os.path.expanduser(pattern)))
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        raise ConfigError(f"{what}: glob {pattern!r} matches no file")
    regex = None if date_tag else date_regex(date_pattern or DEFAULT_DATE_PATTERN)
    found: list[FoundFile] = []
    by_day: dict[date, str] = {}
    for path in paths:
        name = os.path.basename(path)
        try:
            if regex is not None:
                day = day_from_name(name, regex)
                if day is None:
                    raise ConfigError(f"{what}: file {path} matches glob {pattern!r} but its name has no date "
                                      f"by date_pattern {date_pattern or DEFAULT_DATE_PATTERN!r}")
            else:
                value = _read_tag(path, date_tag)
                if value is None:
                    raise ConfigError(f"{what}: file {path} has no tag {date_tag}")
                day = day_from_tag(value)
        except ConfigError:
            raise
        except ValueError as exc:
            source = f"tag {date_tag}" if date_tag else "name"
            raise ConfigError(f"{what}: cannot read a date from the {source} of {path}: {exc}") from None
        if day in by_day:
            raise ConfigError(f"{what}: files {by_day[day]} and {path} have the same date {day}; "
                              "narrow the glob so that one file per date matches")
        by_day[day] = path
        found.append(FoundFile(day, path, name.rsplit(".", 1)[0] if "." in name else name))
    found.sort(key=lambda f: f.day)
    return found
