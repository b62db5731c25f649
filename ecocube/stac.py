"""The STAC catalog of a run, and its offline validation.

:func:`build_catalog` turns the mosaic manifest (``catalog/mosaics.json``, :mod:`ecocube.manifest`,
written by :func:`ecocube.mosaic.mosaic_run`) into a pystac catalog without opening a raster:

- one collection per product — ``proba``, ``class``, ``uncertainty``, ``composite-{band}``
  (assets ``{band}`` and ``count``) and ``flags`` (one asset per band) — with title,
  description, licence, providers and keywords from the templates (``stac/``, or
  ``finalize.stac.templates``), the software versions and the model's metadata;
- one item per period, with the COGs as assets (relative hrefs, or absolute under
  ``finalize.stac.href_base`` for a published catalog), a PNG thumbnail with a legend, and
  the projection, raster, classification, eo and file (size, multihash checksum) extensions.

The catalog is written to a staging folder, validated offline against the JSON schemas that
ship with the package (:func:`validate_catalog`), given an ``index.html`` browser
(:mod:`ecocube.browse`) and only then published object by object under ``catalog/`` in the
store.

Extension versions are those whose schemas are shipped (``ecocube/data/stac-schemas``):
projection v2.0.0, raster v1.1.0, eo v1.1.0, classification v1.1.0, file v2.1.0. Software
versions and model metadata use the ``ecocube:`` prefix (the processing extension's schema
is not available offline).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from . import products
from .errors import ConfigError, EcocubeError, StoreError
from .manifest import (CATALOG_PREFIX, MANIFEST_KEY, VECTORS_KEY, MosaicLayer, VectorLayer, read_manifest,
                       read_vectors)
from .store import store_for

log = logging.getLogger(__name__)

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
PACKAGED_SCHEMAS = Path(__file__).parent / "data" / "stac-schemas"
PACKAGED_TEMPLATES = Path(__file__).parent / "data" / "stac-templates"

#: eo common band names (eo v1.1.0 enum); other band names get no common_name
EO_COMMON_NAMES = frozenset({
    "pan", "coastal", "blue", "green", "green05", "yellow", "red", "rededge", "rededge071", "rededge075",
    "rededge078", "nir", "nir08", "nir09", "cirrus", "swir16", "swir22", "lwir", "lwir11", "lwir12",
})
_BAND_ALIASES = {"swir1": "swir16", "swir2": "swir22", "nir08": "nir08", "re1": "rededge071",
                 "re2": "rededge075", "re3": "rededge078", "aerosol": "coastal"}

TEMPLATE_KEYS = {"title", "description", "keywords", "license", "license_url", "providers"}


# --------------------------------------------------------------------------- templates


def _template_dir(cfg) -> Path:
    return Path(cfg.finalize.stac.templates) if cfg.finalize.stac.templates else PACKAGED_TEMPLATES


def load_templates(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``{"catalog": {...}, "proba": {...}, ...}`` from the YAML files of a template folder."""
    folder = Path(folder)
    out: dict[str, dict[str, Any]] = {}
    for name in ("catalog", *dict.fromkeys(p.template for p in products.PRODUCTS.values())):
        path = folder / f"{name}.yaml"
        if not path.exists():
            out[name] = {}
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"STAC template {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"STAC template {path} must be a mapping")
        unknown = set(data) - TEMPLATE_KEYS
        if unknown:
            raise ConfigError(f"STAC template {path}: unknown keys {sorted(unknown)}; "
                              f"allowed: {', '.join(sorted(TEMPLATE_KEYS))}")
        out[name] = data
    if not out["catalog"].get("license"):
        raise ConfigError(f"STAC templates in {folder}: catalog.yaml needs a 'license' (an SPDX id or 'other')")
    return out


def _fill(text: str, values: dict[str, Any]) -> str:
    try:
        return str(text).format(**values).strip()
    except (KeyError, IndexError) as exc:
        raise ConfigError(f"STAC template text {text!r} uses an unknown field {exc}; "
                          f"known: {', '.join(sorted(values))}") from None


def _template_for(templates, product_family: str, values: dict[str, Any]) -> dict[str, Any]:
    base, own = templates["catalog"], templates.get(product_family, {})
    keywords = list(dict.fromkeys([*base.get("keywords", []), *own.get("keywords", [])]))
    return {
        "title": _fill(own.get("title", product_family), values),
        "description": _fill(own.get("description", base.get("description", product_family)), values),
        "keywords": keywords,
        "license": own.get("license", base["license"]),
        "license_url": own.get("license_url", base.get("license_url")),
        "providers": own.get("providers", base.get("providers", [])),
    }


# --------------------------------------------------------------------------- helpers


def period_interval(period: str, months: int) -> tuple[datetime, datetime]:
    """Start and end (inclusive, last second) of a period that starts on ``period``."""
    start = date.fromisoformat(period)
    total = start.month - 1 + months
    end = date(start.year + total // 12, total % 12 + 1, start.day)  # periods.year_start may move the day
    to_dt = lambda d: datetime(d.year, d.month, d.day, tzinfo=timezone.utc)  # noqa: E731
    return to_dt(start), to_dt(end) - timedelta(seconds=1)


def _months(product: str, cfg) -> int:
    return products.get(product).period_months(cfg.inputs.periods.season_size)


def footprint(layer: MosaicLayer, *, max_points: int = 200) -> dict[str, Any]:
    """GeoJSON (EPSG:4326) of the union of the layer's tiles, densified before reprojection."""
    import shapely
    from rasterio.warp import transform_geom

    boxes = [shapely.box(*b) for b in layer.tile_bounds]
    union = shapely.union_all(boxes)
    union = shapely.simplify(union, 0)  # merge collinear tile edges
    (minx, miny, maxx, maxy) = union.bounds
    seg = max(maxx - minx, maxy - miny) / 32
    union = shapely.segmentize(union, seg)
    geom = transform_geom(layer.extra.get("grid_crs", layer.crs), "EPSG:4326", shapely.geometry.mapping(union))
    shape = shapely.geometry.shape(geom)
    if shapely.get_num_coordinates(shape) > max_points:
        shape = shapely.simplify(shape, 1e-5, preserve_topology=True)
    shape = shapely.set_precision(shape, 1e-7)
    return shapely.geometry.mapping(shapely.geometry.polygon.orient(shape) if shape.geom_type == "Polygon" else shape)


def _json_geom(mapping) -> dict[str, Any]:
    return json.loads(json.dumps(mapping))  # tuples -> lists


def _band_common_name(band: str) -> str | None:
    name = _BAND_ALIASES.get(band.lower(), band.lower())
    return name if name in EO_COMMON_NAMES else None


def _software() -> dict[str, str]:
    import numpy
    import rasterio

    from . import __version__

    return {"ecocube": __version__, "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__,
            "numpy": numpy.__version__}


def model_metadata(cfg) -> dict[str, Any] | None:
    """A compact copy of ``<model.path>/model.json`` (long lists summarised), if present."""
    path = Path(cfg.model.path) / "model.json"
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model metadata {path} is not readable JSON: {exc}") from None

    def _compact(value, depth=0):
        if isinstance(value, dict):
            return {str(k): _compact(v, depth + 1) for k, v in value.items()} if depth < 4 else "..."
        if isinstance(value, list):
            if len(value) > 50:
                return {"count": len(value), "first": [_compact(v, depth + 1) for v in value[:5]]}
            return [_compact(v, depth + 1) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return _compact(meta) if isinstance(meta, dict) else {"value": _compact(meta)}


def _raster_band(layer: MosaicLayer, b: int, target_unit: str | None = None) -> dict[str, Any]:
    """``raster:bands`` entry; ``target_unit`` is the unit of regression products (``model.target_unit``)."""
    band: dict[str, Any] = {"data_type": layer.dtype}
    if layer.nodata is not None:
        band["nodata"] = layer.nodata if not math.isnan(layer.nodata) else "nan"
    if layer.scales[b] != 1.0 or layer.offsets[b] != 0.0:
        band["scale"] = layer.scales[b]
        band["offset"] = layer.offsets[b]
    if not layer.crs.upper().startswith("EPSG:4326"):
        band["spatial_resolution"] = abs(layer.transform[0])
    stats = {k: v for k, v in layer.statistics[b].items() if v is not None and math.isfinite(v)}
    if stats:
        band["statistics"] = stats
    prod = products.get(layer.product)
    unit = prod.unit or (target_unit if prod.task == "regression" else None)
    if unit:
        band["unit"] = unit
    if layer.descriptions[b]:
        band["name"] = layer.descriptions[b]
    return band


def _classes(cfg) -> list[dict[str, Any]]:
    return [{"value": int(c.code), "name": c.name, "description": c.name, "color_hint": c.color.lstrip("#").upper()}
            for c in cfg.model.classes]


def _flag_classes(cfg) -> list[dict[str, Any]]:
    from .gapfill import flag_legend_config

    return [{"value": int(code), "name": f"flag_{code}", "description": str(text)}
            for code, text in sorted(flag_legend_config(cfg).items())]


# --------------------------------------------------------------------------- build


def _collection_product(items: dict[str, list[MosaicLayer]]) -> products.Product:
    """The product a collection is made for (its template, model and legend): the one of its
    first item's first layer; products sharing a collection share these."""
    first = min(items)
    return products.get(min(items[first], key=_asset_order).product)


#: a collection with more items than this gets one child catalog per year
#: (``{collection}/{collection}-{year}/catalog.json``) holding that year's items, so that no
#: collection lists thousands of item links and a browser (STAC Browser, ``index.html``) shows
#: one year at a time. Items keep their place (``{collection}/{item}/{item}.json``, next to their
#: COGs) either way.
YEAR_CATALOGS_ABOVE = 40


def _year_of_period(cfg) -> dict[str, int]:
    """Period id -> the year it belongs to (``periods.year_start`` may start a year in the
    calendar year before), for every input period and every year's output period."""
    from .sources import periods_from_config

    out: dict[str, int] = {}
    for p in periods_from_config(cfg.inputs.periods):
        out.setdefault(p.id, int(p.year))
    return out


def _item_href_strategy():
    """pystac layout: items of a year catalog stay in their collection's folder (next to their
    COGs, which their assets name relatively); everything else as pystac's best practice."""
    import pystac
    from pystac.layout import BestPracticesLayoutStrategy, CustomLayoutStrategy

    def item_func(item, parent_dir: str) -> str | None:
        if isinstance(item.get_parent(), pystac.Collection) or item.get_parent() is None:
            return None  # the fallback: {collection}/{item}/{item}.json
        return f"{parent_dir.rstrip('/').rsplit('/', 1)[0]}/{item.id}/{item.id}.json"

    return CustomLayoutStrategy(item_func=item_func, fallback_strategy=BestPracticesLayoutStrategy())


def make_catalog(cfg, layers: list[MosaicLayer], *, href_base: str | None = None,
                 vectors: list[VectorLayer] = (), year_catalogs_above: int = YEAR_CATALOGS_ABOVE):
    """The pystac :class:`~pystac.Catalog` of the run's mosaic layers and the polygons of
    ``ecocube vectorize`` (in memory, no I/O). A collection with more than
    ``year_catalogs_above`` items holds them in one child catalog per year."""
    import pystac

    stac_cfg = cfg.finalize.stac
    templates = load_templates(_template_dir(cfg))
    software = _software()
    model = model_metadata(cfg)
    periods = cfg.inputs.periods
    base_values = {"run": cfg.name, "start_year": periods.start_year, "end_year": periods.end_year,
                   "season_size": periods.season_size}

    catalog = pystac.Catalog(
        id=stac_cfg.catalog_id, title=stac_cfg.title,
        description=_fill(templates["catalog"].get("description", stac_cfg.title), base_values))

    year_of = _year_of_period(cfg)
    by_collection: dict[str, dict[str, list[MosaicLayer]]] = defaultdict(lambda: defaultdict(list))
    for layer in layers:
        by_collection[layer.collection][layer.item_id].append(layer)

    for coll_id in sorted(by_collection):
        items = by_collection[coll_id]
        product = _collection_product(items)
        # {band}: the band of a per-band collection (composite-{layer}), else the collection id
        any_layer = next(iter(items.values()))[0].layer
        values = dict(base_values, band=any_layer if "{layer}" in product.collection else coll_id)
        tpl = _template_for(templates, product.template, values)
        built_items = [_make_item(cfg, coll_id, item_id, sorted(group, key=_asset_order), href_base)
                       for item_id, group in sorted(items.items())]
        bboxes = [it.bbox for it in built_items]
        starts = [datetime.fromisoformat(it.properties["start_datetime"].replace("Z", "+00:00")) for it in built_items]
        ends = [datetime.fromisoformat(it.properties["end_datetime"].replace("Z", "+00:00")) for it in built_items]
        extent = pystac.Extent(
            pystac.SpatialExtent([[min(b[0] for b in bboxes), min(b[1] for b in bboxes),
                                   max(b[2] for b in bboxes), max(b[3] for b in bboxes)]]),
            pystac.TemporalExtent([[min(starts), max(ends)]]),
        )
        providers = [pystac.Provider(name=p["name"], roles=p.get("roles"), url=p.get("url"),
                                     description=p.get("description")) for p in tpl["providers"]]
        collection = pystac.Collection(
            id=coll_id, title=tpl["title"], description=tpl["description"], extent=extent,
            license=tpl["license"], keywords=tpl["keywords"] or None, providers=providers or None,
            extra_fields={"ecocube:run": cfg.name, "ecocube:software": software},
        )
        if tpl["license_url"]:
            collection.add_link(pystac.Link("license", tpl["license_url"], media_type="text/html",
                                            title=f"licence {tpl['license']}"))
        if model is not None and product.source == "model":
            collection.extra_fields["ecocube:model"] = model
        if product.legend == "classes":
            collection.extra_fields["ecocube:classes"] = _classes(cfg)
        collection.summaries = pystac.Summaries({"ecocube:periods": sorted({it.properties["ecocube:period"]
                                                                           for it in built_items})})
        if len(built_items) > year_catalogs_above:
            _add_by_year(collection, built_items, year_of)
        else:
            for item in built_items:
                collection.add_item(item)
        catalog.add_child(collection)
    _add_vector_collections(catalog, cfg, list(vectors), templates, base_values, software, href_base)
    return catalog


def _add_by_year(collection, items, year_of: dict[str, int]) -> None:
    """The items under one child catalog per year (id ``{collection}-{year}``), each item still
    of ``collection`` (its ``collection`` field and link)."""
    import pystac

    by_year: dict[int, list] = defaultdict(list)
    for item in items:
        period = item.properties["ecocube:period"]
        by_year[year_of.get(period, int(period[:4]))].append(item)
    for year in sorted(by_year):
        group = by_year[year]
        child = pystac.Catalog(
            id=f"{collection.id}-{year}", title=f"{collection.title or collection.id} {year}",
            description=f"The {len(group)} items of collection {collection.id} in {year}.",
            extra_fields={"ecocube:year": year, "ecocube:items": len(group)})
        collection.add_child(child)
        for item in group:
            child.add_item(item)
            item.set_collection(collection)


def _add_vector_collections(catalog, cfg, vectors: list[VectorLayer], templates, base_values, software,
                            href_base) -> None:
    """One ``{product}-polygons`` collection per vectorised product, one item per year, the
    GeoPackage / GeoParquet / GeoJSON files as assets (file and projection extensions)."""
    import pystac
    import shapely

    by_collection: dict[str, list[VectorLayer]] = defaultdict(list)
    for v in vectors:
        by_collection[v.collection].append(v)
    for coll_id in sorted(by_collection):
        group = sorted(by_collection[coll_id], key=lambda v: v.period)
        product = products.get(group[0].product)
        tpl = _template_for(templates, product.template, dict(base_values, band=coll_id))
        items = []
        for v in group:
            start, end = period_interval(v.period, _months(v.product, cfg))
            geometry = _json_geom(footprint(v))
            item = pystac.Item(
                id=v.item_id, geometry=geometry, bbox=list(shapely.geometry.shape(geometry).bounds), datetime=None,
                properties={"start_datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "end_datetime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "ecocube:period": v.period, "ecocube:tiles": len(v.tiles),
                            "ecocube:features": v.features, "ecocube:simplify": v.simplify,
                            "proj:code": v.crs if v.crs.upper().startswith("EPSG:") else None,
                            **({} if v.crs.upper().startswith("EPSG:") else {"proj:wkt2": v.crs})},
                collection=coll_id)
            for fmt, a in v.assets.items():
                rel = a["key"].removeprefix(f"{CATALOG_PREFIX}/")
                href = f"{href_base.rstrip('/')}/{rel}" if href_base else f"./{rel.rsplit('/', 1)[-1]}"
                fields = {"file:size": int(a["size"]), "file:checksum": a["checksum"]}
                if a.get("crs") and a["crs"] != v.crs:
                    fields["proj:code"] = a["crs"]
                item.add_asset(fmt, pystac.Asset(href=href, media_type=a["media_type"], roles=["data"],
                                                 title=f"{v.title} ({_VECTOR_FORMAT_TITLES.get(fmt, fmt)})",
                                                 extra_fields=fields))
            item.stac_extensions = sorted({PROJECTION, FILE})
            items.append(item)
        bboxes = [it.bbox for it in items]
        starts = [period_interval(v.period, _months(v.product, cfg)) for v in group]
        collection = pystac.Collection(
            id=coll_id, title=f"{tpl['title']} (polygons)",
            description=(f"{tpl['description']} As polygons: one per 4-connected region of one class, "
                         "dissolved across tile borders, with area, pixel count and mean class probability."),
            extent=pystac.Extent(
                pystac.SpatialExtent([[min(b[0] for b in bboxes), min(b[1] for b in bboxes),
                                       max(b[2] for b in bboxes), max(b[3] for b in bboxes)]]),
                pystac.TemporalExtent([[min(s for s, _ in starts), max(e for _, e in starts)]])),
            license=tpl["license"], keywords=[*tpl["keywords"], "polygons"],
            extra_fields={"ecocube:run": cfg.name, "ecocube:software": software,
                          "ecocube:classes": _classes(cfg)})
        collection.summaries = pystac.Summaries({"ecocube:periods": [v.period for v in group]})
        for item in items:
            collection.add_item(item)
        catalog.add_child(collection)


_VECTOR_FORMAT_TITLES = {"gpkg": "GeoPackage", "parquet": "GeoParquet", "geojson": "GeoJSON, WGS84"}


def _asset_order(layer: MosaicLayer) -> tuple[int, str]:
    return (products.get(layer.product).asset_order, layer.asset)


def _make_item(cfg, coll_id: str, item_id: str, group: list[MosaicLayer], href_base: str | None):
    import pystac

    first = group[0]
    start, end = period_interval(first.period, _months(first.product, cfg))
    geometry = _json_geom(footprint(first))
    import shapely

    bbox = list(shapely.geometry.shape(geometry).bounds)
    item = pystac.Item(
        id=item_id, geometry=geometry, bbox=bbox, datetime=None,
        properties={"start_datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "end_datetime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "ecocube:period": first.period, "ecocube:tiles": len(first.tiles)},
        collection=coll_id,
    )
    if any(products.get(layer.product).task == "regression" for layer in group):
        # the nominal coverage of the lower..upper interval (a conformal interval: see ecocube.ensemble)
        item.properties["ecocube:interval_coverage"] = float(cfg.model.interval_coverage)
    fraction = (first.extra or {}).get("observed_fraction")
    if fraction is not None:  # share of the year's values that were observed (not gap-filled) in the tiles
        item.properties["ecocube:observed_fraction"] = fraction
    extensions = {PROJECTION, RASTER, FILE}
    # projection: every asset of an item shares the mosaic grid
    if first.crs.upper().startswith("EPSG:"):
        item.properties["proj:code"] = first.crs.upper()
    else:
        item.properties["proj:code"] = None
        item.properties["proj:wkt2"] = first.crs
    item.properties["proj:shape"] = list(first.shape)
    item.properties["proj:transform"] = list(first.transform)
    item.properties["proj:bbox"] = list(first.bounds)

    def _href(key: str) -> str:
        rel = key.removeprefix(f"{CATALOG_PREFIX}/")
        return f"{href_base.rstrip('/')}/{rel}" if href_base else f"./{rel.rsplit('/', 1)[-1]}"

    thumb = None
    for layer in group:
        prod = products.get(layer.product)
        fields: dict[str, Any] = {
            "raster:bands": [_raster_band(layer, b, cfg.model.target_unit) for b in range(layer.count)],
            "file:size": int(layer.size),
            "file:checksum": layer.checksum,
        }
        roles = list(prod.roles)
        if prod.legend == "classes":
            fields["classification:classes"] = _classes(cfg)
            extensions.add(CLASSIFICATION)
        elif prod.legend == "flags":
            fields["classification:classes"] = _flag_classes(cfg)
            extensions.add(CLASSIFICATION)
        if prod.per_band:
            eo_band = {"name": layer.layer}
            common = _band_common_name(layer.layer)
            if common:
                eo_band["common_name"] = common
            fields["eo:bands"] = [eo_band]
            extensions.add(EO)
        item.add_asset(layer.asset, pystac.Asset(href=_href(layer.key), media_type=COG_MEDIA_TYPE,
                                                 title=prod.title_for(layer.layer), roles=roles,
                                                 extra_fields=fields))
        if thumb is None and layer.thumbnail_key and prod.thumbnail != "none":
            thumb = layer
    if thumb is not None:
        item.add_asset("thumbnail", pystac.Asset(href=_href(thumb.thumbnail_key), media_type="image/png",
                                                 title="thumbnail with legend", roles=["thumbnail"]))
    item.stac_extensions = sorted(extensions)
    return item


@dataclass(frozen=True)
class BuiltCatalog:
    catalog: Path | str  # local path (local store) or URL of catalog.json
    index: Path | str | None
    objects: int


def build_catalog(cfg, *, store=None, layers: list[MosaicLayer] | None = None, validate: bool = True,
                  browser: bool = True) -> Path | str:
    """Build, validate and publish the run's STAC catalog under ``catalog/`` in the store.

    ``layers`` default to the mosaic manifest. Returns the path (local store) or URL of
    ``catalog.json``. Raises :class:`EcocubeError` naming the objects and JSON paths if the
    catalog does not validate; nothing is published then.
    """
    return publish_catalog(cfg, store=store, layers=layers, validate=validate, browser=browser).catalog


def publish_catalog(cfg, *, store=None, layers: list[MosaicLayer] | None = None, validate: bool = True,
                    browser: bool = True) -> BuiltCatalog:
    """:func:`build_catalog` with the details (index.html, number of objects)."""
    import pystac

    store = store_for(cfg, store)
    if layers is None:
        layers = list(read_manifest(store).values())
    vectors = list(read_vectors(store).values())
    if not layers and not vectors:
        raise StoreError(f"no mosaics to catalog in {store!r}: {MANIFEST_KEY} lists none (run `ecocube mosaic` first)")
    href_base = cfg.finalize.stac.href_base
    catalog = make_catalog(cfg, layers, href_base=href_base, vectors=vectors)
    work = store.work_dir("stac")
    staging = work / "catalog"  # a plain folder name: pystac takes "a.b" for a file
    staging.mkdir()
    try:
        if href_base:
            catalog.normalize_hrefs(href_base.rstrip("/"), strategy=_item_href_strategy())
            catalog.save(pystac.CatalogType.RELATIVE_PUBLISHED, dest_href=str(staging))
        else:
            catalog.normalize_hrefs(str(staging), strategy=_item_href_strategy())
            catalog.save(pystac.CatalogType.SELF_CONTAINED)
        if validate:
            issues = validate_catalog(staging / "catalog.json", check_assets=False)
            if issues:
                raise EcocubeError(f"the STAC catalog of run {cfg.name} does not validate "
                                   f"({len(issues)} problems):\n  " + "\n  ".join(map(str, issues[:20])))
        index = None
        if browser:
            from .browse import write_browser

            write_browser(staging)
            index = f"{CATALOG_PREFIX}/index.html"
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        # children first, catalog.json last: a reader never sees a root that links to nothing
        files.sort(key=lambda p: (p.name in ("catalog.json", "index.html"), len(p.parts) * -1, str(p)))
        published = []
        for path in files:
            key = f"{CATALOG_PREFIX}/{path.relative_to(staging).as_posix()}"
            store.put_file(path, key, move=True)
            published.append(key)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _remove_unpublished(store, published, layers, vectors)
    root = store.url(f"{CATALOG_PREFIX}/catalog.json")
    index_url = store.url(index) if index else None
    if getattr(store, "local", False):
        return BuiltCatalog(Path(root), Path(index_url) if index_url else None, len(files))
    return BuiltCatalog(root, index_url, len(files))


#: the keys the last publish wrote under catalog/ (its JSON and HTML plus every mosaic file)
PUBLISHED_LIST_KEY = f"{CATALOG_PREFIX}/published.json"


def _remove_unpublished(store, published: list[str], layers: list[MosaicLayer],
                        vectors: list[VectorLayer] = ()) -> list[str]:
    """Delete what the previous publish wrote and this one no longer references.

    Runs after ``catalog.json`` is in place, so a reader never sees a link to a deleted
    file. Only keys recorded by ecocube's previous publish are candidates: files a person
    put under ``catalog/`` are never touched.
    """
    current = set(published) | {MANIFEST_KEY, PUBLISHED_LIST_KEY}
    for vector in vectors:
        current.update([*vector.keys, VECTORS_KEY])
    for layer in layers:
        current.update(k for k in (layer.key, layer.vrt_key, layer.thumbnail_key) if k)
    raw = store.get_bytes_or_none(PUBLISHED_LIST_KEY)
    previous = set(json.loads(raw.decode())["keys"]) if raw else set()
    stale = sorted(k for k in previous - current if k.startswith(f"{CATALOG_PREFIX}/"))
    if stale:
        log.info("removing %d catalog files no longer referenced (e.g. %s)", len(stale), stale[0])
        store.delete_many(stale)
    store.put_bytes(json.dumps({"keys": sorted(current)}, indent=1).encode(), PUBLISHED_LIST_KEY)
    return stale


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidationIssue:
    """One problem: the object (file), the JSON path inside it, what is wrong, which schema."""

    href: str
    json_path: str
    message: str
    schema: str | None = None

    def __str__(self) -> str:
        where = f"{self.href} at {self.json_path}"
        return f"{where}: {self.message}" + (f" [{self.schema}]" if self.schema else "")


def schema_registry(schema_dir: str | Path = PACKAGED_SCHEMAS):
    """A ``referencing`` registry that reads schemas by URL from a local mirror (no network).

    ``https://HOST/PATH`` is read from ``schema_dir/HOST/PATH``. Resources are keyed by the
    URL they were asked for, not by their embedded ``$id`` (the published STAC v1.1.0
    ``common.json`` declares ``.../commonjson``).
    """
    from referencing import Registry, Resource
    from referencing.exceptions import NoSuchResource
    from referencing.jsonschema import DRAFT7

    root = Path(schema_dir).resolve()

    @functools.lru_cache(maxsize=None)  # each schema file is read and parsed once
    def retrieve(uri: str):
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise NoSuchResource(ref=uri)
        path = (root / parts.netloc / parts.path.lstrip("/")).resolve()
        if root not in path.parents or not path.is_file():
            raise NoSuchResource(ref=uri)
        return Resource.from_contents(json.loads(path.read_text()), default_specification=DRAFT7)

    return Registry(retrieve=retrieve)


def _core_schema(obj: dict[str, Any]) -> str | None:
    version = obj.get("stac_version")
    kind = {"Catalog": "catalog", "Collection": "collection", "Feature": "item"}.get(obj.get("type"))
    if not version or not kind:
        return None
    return f"https://schemas.stacspec.org/v{version}/{kind}-spec/json-schema/{kind}.json"


def _deepest_errors(error, limit: int = 5) -> list:
    """The most specific causes of an error: the deepest leaves of its oneOf/anyOf tree.

    Schemas like the extensions' ``oneOf: [item, collection]`` fail on both branches; the
    branch that got furthest into the object (``$.assets.x.raster:bands[0].data_type``)
    says what is wrong, not the shallow ``$.type: 'Collection' was expected``.
    """
    leaves = []
    stack = [error]
    while stack:
        err = stack.pop()
        if err.context:
            stack.extend(err.context)
        else:
            leaves.append(err)
    depth = max(len(e.absolute_path) for e in leaves)
    seen, out = set(), []
    for leaf in sorted((e for e in leaves if len(e.absolute_path) == depth), key=lambda e: e.json_path):
        sig = (leaf.json_path, leaf.message)
        if sig not in seen:
            seen.add(sig)
            out.append(leaf)
    return out[:limit]


def _validate_object(obj: dict[str, Any], href: str, registry,
                     validators: dict[str, Any] | None = None) -> list[ValidationIssue]:
    from jsonschema import Draft7Validator
    from referencing.exceptions import Unresolvable

    issues: list[ValidationIssue] = []
    core = _core_schema(obj)
    if core is None:
        return [ValidationIssue(href, "$", "not a STAC object (needs stac_version and type "
                                "Catalog, Collection or Feature)")]
    extensions = obj.get("stac_extensions", [])
    if not isinstance(extensions, list):
        return [ValidationIssue(href, "$.stac_extensions", "must be a list of schema URLs")]
    validators = {} if validators is None else validators
    for url in [core, *extensions]:
        validator = validators.get(url)
        if validator is None:
            try:
                resolved = registry.resolver().lookup(url)
            except Unresolvable:
                issues.append(ValidationIssue(href, "$", "schema not available offline (not in the shipped schemas)", url))
                continue
            validator = validators[url] = Draft7Validator(resolved.contents, registry=registry)
        try:
            for error in validator.iter_errors(obj):
                for leaf in _deepest_errors(error):
                    message = leaf.message if len(leaf.message) <= 300 else leaf.message[:300] + " ..."
                    issues.append(ValidationIssue(href, leaf.json_path, message, url))
        except Unresolvable as exc:
            issues.append(ValidationIssue(href, "$", f"schema reference cannot be resolved offline: {exc}", url))
    return issues


#: stands in for a geometry already validated (same JSON) in another item: the GeoJSON part of
#: the item schema (every position tried against every geometry type) is about half of an
#: item's validation time, and the items of one collection mostly share one footprint
_SEEN_GEOMETRY = {"Polygon": {"type": "Polygon", "coordinates": [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]]},
                  "MultiPolygon": {"type": "MultiPolygon",
                                   "coordinates": [[[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]]]}}


def _geometry_seen_before(obj: dict[str, Any], seen: set[str]) -> dict[str, Any]:
    """``obj``, or a copy whose geometry is a minimal one of the same type when the same
    geometry was validated before (its problems, if any, were reported with that object)."""
    geometry = obj.get("geometry")
    if obj.get("type") != "Feature" or not isinstance(geometry, dict) or geometry.get("type") not in _SEEN_GEOMETRY:
        return obj
    key = json.dumps(geometry, sort_keys=True)
    if key not in seen:
        seen.add(key)
        return obj
    return {**obj, "geometry": _SEEN_GEOMETRY[geometry["type"]]}


def validate_catalog(path: str | Path, *, schema_dir: str | Path = PACKAGED_SCHEMAS,
                     check_assets: bool = True) -> list[ValidationIssue]:
    """Validate a local catalog and everything it links to (children, items), offline.

    Each object is checked against the core schema of its type and STAC version and the
    schema of each extension it declares (a polygon geometry equal to one validated before is
    checked once). Broken child/item links and, with
    ``check_assets``, relative asset hrefs that point at no file are problems too. Returns
    the problems (empty: valid).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "catalog.json"
    registry = schema_registry(schema_dir)
    validators: dict[str, Any] = {}  # one compiled validator per schema URL for the whole walk
    issues: list[ValidationIssue] = []
    seen: set[Path] = set()
    geometries: set[str] = set()
    queue = [path.resolve()]
    root_self: str | None = None
    while queue:
        current = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        try:
            obj = json.loads(current.read_text())
        except FileNotFoundError:
            issues.append(ValidationIssue(str(current), "$", "file not found (linked from the catalog)"))
            continue
        except (OSError, ValueError) as exc:
            issues.append(ValidationIssue(str(current), "$", f"not readable JSON: {exc}"))
            continue
        if not isinstance(obj, dict):
            issues.append(ValidationIssue(str(current), "$", "not a JSON object"))
            continue
        issues.extend(_validate_object(_geometry_seen_before(obj, geometries), str(current), registry, validators))
        links = obj.get("links", []) if isinstance(obj.get("links"), list) else []
        if root_self is None:
            root_self = next((ln.get("href") for ln in links if isinstance(ln, dict) and ln.get("rel") == "self"), "")
        for i, link in enumerate(links):
            if not isinstance(link, dict) or link.get("rel") not in ("child", "item"):
                continue
            target = _local_target(str(link.get("href", "")), current, path, root_self)
            if target is None:
                issues.append(ValidationIssue(str(current), f"$.links[{i}].href",
                                              f"cannot follow {link.get('href')!r} offline"))
            else:
                queue.append(target)
        if check_assets and isinstance(obj.get("assets"), dict):
            for name, asset in obj["assets"].items():
                href = str(asset.get("href", "")) if isinstance(asset, dict) else ""
                if href and "://" not in href and not href.startswith("/"):
                    if not (current.parent / href).exists():
                        issues.append(ValidationIssue(str(current), f"$.assets.{name}.href",
                                                      f"asset file {href} does not exist"))
    return issues


def _local_target(href: str, current: Path, root: Path, root_self: str | None) -> Path | None:
    if "://" in href:
        # a published catalog: hrefs under the root's self URL map into the local folder
        if root_self and "://" in root_self:
            base = root_self.rsplit("/", 1)[0] + "/"
            if href.startswith(base):
                return (root.parent / href[len(base):]).resolve()
        if href.startswith("file://"):
            return Path(href[len("file://"):]).resolve()
        return None
    return (current.parent / href).resolve() if not os.path.isabs(href) else Path(href).resolve()
