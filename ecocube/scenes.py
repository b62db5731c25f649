"""Scenes per tile: STAC API search (cached in the store) and scene selection.

For every ``stac-api`` source, :func:`search_tile` asks the API (pystac-client) for the
items of the source's collections that intersect the tile (its bounds in EPSG:4326, the
CRS of STAC API searches) in each period (the period's datetime range), page after page,
with retries. The result is written to the store (``scenes/{tile}/{source}.json``, with
the search parameters) so that the array task that processes the tile, and every block
of it, reads it from there instead of hitting the API again; a changed search (other
collections, query, periods) searches again.

:func:`select_scenes` then keeps, per tile and period, all scenes, the ``n`` least cloudy
or the ``n`` most recent below ``max_cloud``, with cloud from the item
(``eo:cloud_cover``) or measured on the tile from the source's mask
(:func:`ecocube.read.mask_cover`, passed in as ``measure``). Every decision carries its reason, which
``ecocube scenes`` prints.

:func:`tile_catalog` is what ``read.py`` calls: the input catalog of one tile with the
searched and selected scenes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from .errors import ConfigError, EcocubeError, ReadError
from .sources import (
    Acquisition,
    Observation,
    Period,
    SourceCatalog,
    acquisitions_of,
    item_cloud,
    period_of,
    periods_from_config,
    source_catalog,
)

log = logging.getLogger(__name__)

CACHE_PREFIX = "scenes/"
CACHE_SCHEMA = 1

#: media types of assets that GDAL cannot read as rasters
_NOT_RASTER = ("application/json", "application/geo+json", "text/", "application/xml", "application/x-hdf",
               "application/vnd+zarr", "application/x-netcdf")


def tile_bbox_4326(tile) -> tuple[float, float, float, float]:
    """The tile's bounds in EPSG:4326 (densified edges), the CRS of STAC API ``bbox``."""
    from rasterio.warp import transform_bounds

    b = tile.bounds
    return tuple(float(v) for v in transform_bounds(tile.crs, "EPSG:4326", b[0], b[1], b[2], b[3], densify_pts=21))


def period_datetime(p: Period) -> str:
    """The RFC 3339 interval of a period (its end is exclusive: the last second before it)."""
    return f"{p.start.isoformat()}T00:00:00Z/{(p.end - timedelta(days=1)).isoformat()}T23:59:59Z"


def search_params(src_cfg, periods: Sequence[Period], tile) -> dict:
    api = src_cfg.stac_api
    query = api.query
    return {"url": api.url, "collections": list(api.collections), "query": query,
            "bbox": [round(v, 9) for v in tile_bbox_4326(tile)], "periods": [p.id for p in periods],
            "period_ends": [p.end.isoformat() for p in periods], "max_items": api.max_items}


def _cache_key(tile_id: str, source: str) -> str:
    return f"{CACHE_PREFIX}{tile_id}/{source}.json"


def _client(api):
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO
    from urllib3 import Retry

    retry = Retry(total=api.retries, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=None, raise_on_status=False)
    io = StacApiIO(max_retries=retry, timeout=api.timeout)
    return Client.open(api.url, stac_io=io)


def _api_error(api, exc: BaseException, what: str) -> ReadError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ReadError(f"STAC API {api.url}: {what} failed: {text}", url=api.url)


def open_api(src_cfg):
    """A pystac-client ``Client`` of the source's API, its collections checked.

    Raises :class:`ReadError` naming the URL when the API cannot be reached or is not a
    STAC API with item search, and :class:`ConfigError` for collections it does not have.
    """
    api = src_cfg.stac_api
    try:
        client = _client(api)
    except Exception as exc:  # noqa: BLE001 - pystac_client raises APIError, requests errors, STACTypeError
        raise _api_error(api, exc, "opening the landing page") from None
    if not client.conforms_to("ITEM_SEARCH"):
        raise ReadError(f"STAC API {api.url} does not offer item search (conformance "
                        "'https://api.stacspec.org/v1.0.0/item-search')", url=api.url)
    if api.query and not client.conforms_to("QUERY"):
        raise ConfigError(f"inputs.sources[{src_cfg.name}].stac_api.query: the STAC API {api.url} does not "
                          "support the query extension")
    try:
        known = {c.id for c in client.get_collections()}
    except Exception as exc:  # noqa: BLE001 - named below
        raise _api_error(api, exc, "listing collections") from None
    missing = [c for c in api.collections if c not in known]
    if missing:
        raise ConfigError(f"inputs.sources[{src_cfg.name}].stac_api.collections: {api.url} has no collection "
                          f"{', '.join(map(repr, missing))}; it has {', '.join(sorted(known)) or 'none'}")
    return client


def _search_items(client, src_cfg, periods: Sequence[Period], bbox) -> list[dict]:
    api = src_cfg.stac_api
    query = dict(api.query) if api.query else None
    items: dict[str, dict] = {}
    for p in periods:
        try:
            search = client.search(collections=list(api.collections), bbox=list(bbox), datetime=period_datetime(p),
                                   query=query, limit=api.limit, max_items=api.max_items)
            for item in search.items_as_dicts():  # follows the 'next' links: every page
                items.setdefault(item["id"], item)
        except Exception as exc:  # noqa: BLE001 - APIError, requests errors: named below
            raise _api_error(api, exc, f"search of period {p.id}") from None
    return list(items.values())


def _acquisitions_from_items(src_cfg, items: list[dict]) -> list[Acquisition]:
    from .sources import parse_day

    out = []
    for item in items:
        props = item.get("properties") or {}
        dt = props.get("datetime") or props.get("start_datetime")
        if not dt:
            raise ConfigError(f"STAC API {src_cfg.stac_api.url}: item {item.get('id')!r} has no datetime")
        assets = {}
        for key, asset in (item.get("assets") or {}).items():
            assets[key] = asset["href"]
        _check_raster_assets(src_cfg, item)
        out.append(Acquisition(parse_day(dt), str(item["id"]), assets, cloud=item_cloud(props), datetime=dt))
    out.sort(key=lambda a: (a.day, a.item))
    return out


def _check_raster_assets(src_cfg, item: dict) -> None:
    keys = [(src_cfg.assets or {}).get(b, b) for b in src_cfg.bands]
    if src_cfg.mask is not None and src_cfg.mask.asset:
        keys.append(src_cfg.mask.asset)
    for key in dict.fromkeys(keys):
        asset = (item.get("assets") or {}).get(key)
        if asset is None:
            raise ConfigError(
                f"inputs.sources[{src_cfg.name}]: STAC item {item.get('id')!r} ({src_cfg.stac_api.url}) has no asset "
                f"{key!r}; its assets are {sorted(item.get('assets') or {})}")
        media = str(asset.get("type") or "")
        if media and media.startswith(_NOT_RASTER):
            raise ConfigError(
                f"inputs.sources[{src_cfg.name}]: asset {key!r} of STAC item {item.get('id')!r} "
                f"({src_cfg.stac_api.url}) is {media!r}, not a raster")


class _Memo(OrderedDict):
    """A small LRU: the last tiles of this process (an array task works on a few)."""

    def __init__(self, size: int = 16):
        super().__init__()
        self.size = size
        self.lock = threading.Lock()

    def put(self, key, value) -> None:
        with self.lock:
            self[key] = value
            self.move_to_end(key)
            while len(self) > self.size:
                self.popitem(last=False)

    def take(self, key):
        with self.lock:
            return super().get(key)


_MEMO = _Memo()


def search_tile(src_cfg, periods: Sequence[Period], tile, *, store=None, refresh: bool = False) -> tuple[list[Acquisition], str]:
    """The scenes of a ``stac-api`` source over one tile, and where they came from
    (``"api"``, ``"store"`` or ``"memory"``).

    Cached in the process and, with ``store``, in the store under
    ``scenes/{tile}/{source}.json`` together with the search parameters.
    """
    params = search_params(src_cfg, periods, tile)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    memo_key = (tile.id, src_cfg.name, digest)
    items = None if refresh else _MEMO.take(memo_key)
    origin = "memory"
    if items is None and store is not None and not refresh:
        raw = store.get_bytes_or_none(_cache_key(tile.id, src_cfg.name))
        if raw is not None:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {}
            if doc.get("schema") == CACHE_SCHEMA and doc.get("sha256") == digest:
                items, origin = doc["items"], "store"
    if items is None:
        client = open_api(src_cfg)
        items = _search_items(client, src_cfg, periods, params["bbox"])
        origin = "api"
        log.info("tile %s: %d items from %s", tile.id, len(items), src_cfg.stac_api.url)
        if store is not None:
            doc = {"schema": CACHE_SCHEMA, "sha256": digest, "search": params, "items": items}
            store.put_bytes(json.dumps(doc).encode(), _cache_key(tile.id, src_cfg.name))
    _MEMO.put(memo_key, items)
    return _acquisitions_from_items(src_cfg, items), origin


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class SceneChoice:
    """One candidate scene of a tile and period: kept or not, and why."""

    observation: Observation
    cloud: float | None
    kept: bool
    reason: str


def select_scenes(obs: Sequence[Observation], scenes_cfg, clouds: Sequence[float | None]) -> list[SceneChoice]:
    """Which of one period's scenes to keep (pure: ``clouds`` are given, percent).

    ``all`` keeps every scene (below ``max_cloud`` when set); ``least-cloudy`` the ``n``
    with least cloud (ties: the earlier); ``most-recent`` the ``n`` latest (below
    ``max_cloud`` when set). A scene whose cloud is unknown is kept only under ``all``
    without ``max_cloud``.
    """
    sel, n, max_cloud = scenes_cfg.select, int(scenes_cfg.n), scenes_cfg.max_cloud
    rows = list(zip(obs, clouds))
    if sel == "all" and max_cloud is None:
        return [SceneChoice(o, c, True, "kept: all scenes") for o, c in rows]
    eligible, out = [], {}
    for i, (o, c) in enumerate(rows):
        if c is None:
            out[i] = SceneChoice(o, c, False, "dropped: cloud cover unknown")
        elif max_cloud is not None and c > max_cloud:
            out[i] = SceneChoice(o, c, False, f"dropped: cloud {c:.1f}% > max_cloud {max_cloud:g}%")
        else:
            eligible.append(i)
    if sel == "all":
        keep = set(eligible)
        why = f"kept: cloud <= max_cloud {max_cloud:g}%"
    elif sel == "least-cloudy":
        order = sorted(eligible, key=lambda i: (rows[i][1], rows[i][0].day, i))
        keep = set(order[:n])
        rank = {i: r for r, i in enumerate(order, 1)}
        why = None
    else:  # most-recent
        order = sorted(eligible, key=lambda i: (rows[i][0].day, i), reverse=True)
        keep = set(order[:n])
        rank = {i: r for r, i in enumerate(order, 1)}
        why = None
    for i in eligible:
        o, c = rows[i]
        if why is not None:
            out[i] = SceneChoice(o, c, True, why)
        elif sel == "least-cloudy":
            out[i] = SceneChoice(o, c, i in keep, f"{'kept' if i in keep else 'dropped'}: {rank[i]}. least cloudy "
                                                  f"({c:.1f}%) of {len(eligible)}, n={n}")
        else:
            out[i] = SceneChoice(o, c, i in keep, f"{'kept' if i in keep else 'dropped'}: {rank[i]}. most recent "
                                                  f"of {len(eligible)} below the cloud limit, n={n}")
    return [out[i] for i in range(len(rows))]


# --------------------------------------------------------------------------- tile catalog


@dataclass
class TileScenes:
    """The input catalog of one tile and the scene choices behind it."""

    periods: list[Period]
    catalogs: list[SourceCatalog]
    choices: dict[str, dict[int, list[SceneChoice]]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)


_TILE_MEMO = _Memo()


def _config_digest(cfg) -> str:
    data = cfg.inputs.model_dump(mode="json")
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def tile_scenes(cfg, tile, *, store=None, refresh: bool = False, threads: int | None = None,
                measure=None) -> TileScenes:
    """Periods, per-source catalogs (scenes searched and selected) and choices of one tile.

    ``measure(cfg, src_cfg, catalog, observations, tile, threads=)`` returns the cloud
    percentage per mask (href, band index) of the observations on the tile
    (:func:`ecocube.read.mask_cover`); it is needed by ``cloud_from: mask`` only.
    Memoised per process and tile (every block of a tile sees the same scenes).
    """
    key = (tile.id, str(tile.crs), tuple(tile.bounds), _config_digest(cfg), str(cfg.output.store))
    with _KEY_LOCKS_LOCK:  # threads reading blocks of one tile wait for one search, not one each
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        cached = None if refresh else _TILE_MEMO.take(key)
        if cached is not None:
            return cached
        return _tile_scenes(cfg, tile, key, store=store, refresh=refresh, threads=threads, measure=measure)


_KEY_LOCKS: dict = {}
_KEY_LOCKS_LOCK = threading.Lock()


def _tile_scenes(cfg, tile, key, *, store, refresh, threads, measure) -> TileScenes:
    inputs = cfg.inputs
    periods = periods_from_config(inputs.periods)
    needs_store = any(s.kind == "stac-api" for s in inputs.sources)
    if store is None and needs_store:
        from .store import open_store

        try:
            store = open_store(cfg.output, tmp_dir=cfg.processing.tmp_dir)
        except EcocubeError as exc:
            log.warning("tile %s: no store for the scene cache (%s); searching without it", tile.id, exc)
    result = TileScenes(periods, [])
    for src in inputs.sources:
        acqs = None
        if src.kind == "stac-api":
            acqs, origin = search_tile(src, periods, tile, store=store, refresh=refresh)
            result.origins[src.name] = origin
        elif src.kind == "acquisitions":
            acqs, where = acquisitions_of(src)
            result.origins[src.name] = where
        cat = source_catalog(src, periods, tile.id, acquisitions=acqs)
        if src.kind != "composite":
            result.choices[src.name] = _choose(cfg, src, cat, tile, threads=threads, measure=measure)
        result.catalogs.append(cat)
    _TILE_MEMO.put(key, result)
    return result


def _choose(cfg, src, cat: SourceCatalog, tile, *, threads=None, measure=None) -> dict[int, list[SceneChoice]]:
    scenes = src.scenes
    needs_cloud = scenes.select != "all" or scenes.max_cloud is not None
    choices: dict[int, list[SceneChoice]] = {}
    measured: dict[tuple, float] = {}
    if needs_cloud and scenes.cloud_from == "mask":
        if measure is None:
            raise ConfigError(f"inputs.sources[{src.name}].scenes: cloud_from 'mask' needs the masks read "
                              "(pass measure=ecocube.read.mask_cover)")
        all_obs = [o for obs in cat.observations.values() for o in obs]
        measured = measure(cfg, src, cat, all_obs, tile, threads=threads)
    for k, obs in cat.observations.items():
        if not needs_cloud:
            clouds = [o.cloud for o in obs]
        elif scenes.cloud_from == "mask":
            clouds = [measured.get(o.mask) for o in obs]
        else:
            clouds = [o.cloud for o in obs]
        choices[k] = select_scenes(obs, scenes, clouds)
        cat.observations[k] = [c.observation for c in choices[k] if c.kept]
    return choices


def tile_catalog(cfg, tile, *, threads: int | None = None, measure=None) -> tuple[list[Period], list[SourceCatalog]]:
    """The input catalog of one tile, as :func:`ecocube.sources.input_catalog` returns it."""
    ts = tile_scenes(cfg, tile, threads=threads, measure=measure)
    return ts.periods, ts.catalogs


def scenes_report(cfg, tile, *, refresh: bool = False, measure=None) -> dict:
    """What ``ecocube scenes`` prints: per source and period, each scene and the choice."""
    ts = tile_scenes(cfg, tile, refresh=refresh, measure=measure)
    out = {"tile": tile.id, "sources": []}
    for src, cat in zip(cfg.inputs.sources, ts.catalogs):
        entry = {"source": src.name, "kind": src.kind, "from": ts.origins.get(src.name),
                 "select": src.scenes.model_dump(mode="json"), "periods": []}
        for p in ts.periods:
            rows = []
            for c in ts.choices.get(src.name, {}).get(p.index, []):
                o = c.observation
                rows.append({"date": o.day.isoformat(), "item": o.item,
                             "cloud": None if c.cloud is None else round(float(c.cloud), 2),
                             "kept": c.kept, "reason": c.reason})
            entry["periods"].append({"period": p.id, "year": p.year, "season": p.season, "scenes": rows,
                                     "kept": sum(r["kept"] for r in rows)})
        out["sources"].append(entry)
    return out


def describe_sources(inputs_cfg) -> list[str]:
    """One line per source saying what it finds, for ``ecocube config check``.

    Runs the discovery that needs no tile (globs, STAC item files, listed dates), so that
    an empty glob or an undated file is a configuration error before any job starts.
    """
    periods = periods_from_config(inputs_cfg.periods)
    lines = []
    for src in inputs_cfg.sources:
        if src.kind == "composite":
            lines.append(f"source {src.name}: one raster per period ({len(periods)} periods)")
            continue
        if src.kind == "stac-api":
            api = src.stac_api
            try:
                open_api(src)  # reachable, item search, query support, the collections exist
            except ReadError as exc:
                raise ConfigError(f"inputs.sources[{src.name}].stac_api.url: {exc}") from None
            lines.append(f"source {src.name}: STAC API {api.url} collections {', '.join(api.collections)} "
                         "(reachable), searched per tile and period")
            continue
        acqs, where = acquisitions_of(src)
        inside = [a for a in acqs if period_of(a.day, periods) is not None]
        span = f", {inside[0].day}..{inside[-1].day}" if inside else ""
        lines.append(f"source {src.name}: {len(acqs)} acquisitions from {where}, "
                     f"{len(inside)} inside the periods{span}")
    return lines
