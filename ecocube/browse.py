"""A static HTML browser for a STAC catalog folder, and a loopback-only file server.

:func:`write_browser` writes ``index.html`` next to ``catalog.json``: one self-contained page
(inline CSS and SVG, no script, no CDN, no network) listing the collections, their items by
period with thumbnails and legends, footprints, and the assets with sizes, checksums and
download links. A collection split into child catalogs per year (large collections, see
:data:`ecocube.stac.YEAR_CATALOGS_ABOVE`) links one page per year instead
(``{collection}/{collection}-{year}/index.html``, next to that year's ``catalog.json``), so no page grows
with the number of items. It reads only the catalog's JSON files.

:func:`write_map` writes ``map.html`` and the bundled ``map.js`` (OpenLayers + geotiff.js, built
from ``scripts/web-map`` by ``scripts/build-map.sh`` and shipped in the package) next to it: the COGs on
an interactive map read client-side by HTTP range requests, with the legend's class colours, a
layer and year selector, a swipe between two years and a pixel inspector (every layer's values at
the clicked pixel through the years). It needs no server of its own: any static host with Range
and CORS (``ecocube browse``, S3) serves it, and it fetches nothing outside the catalog.

:func:`serve` serves a catalog folder on ``127.0.0.1`` with HTTP Range requests (single and
multiple ranges), so GDAL/QGIS can stream the COGs, and CORS headers, so STAC Browser or a
web map served elsewhere can load the catalog. Only ``GET``, ``HEAD`` and ``OPTIONS`` are
answered; any path that resolves outside the root (``..``, encoded ``%2e%2e``/``%2f``/``%5c``,
symlinks) is refused with 403; nothing is ever executed and no directory is listed.
"""

from __future__ import annotations

import html
import json
import logging
import math
import mimetypes
import os
import posixpath
import re
import shutil
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .atomic import write_text_atomic
from .errors import ConfigError, EcocubeError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------- reading the catalog


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EcocubeError(f"catalog object not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise EcocubeError(f"cannot read catalog object {path}: {exc}") from None


def _links(obj: dict[str, Any], rel: str) -> list[str]:
    return [ln["href"] for ln in obj.get("links", []) if isinstance(ln, dict) and ln.get("rel") == rel and "href" in ln]


@dataclass
class _Node:
    obj: dict[str, Any]
    path: Path  # local file
    #: a collection's child catalogs (one per year in a large collection) with their items
    children: list[tuple[_Node, list[_Node]]] = field(default_factory=list)


def _resolve(href: str, base: Path, root: Path, root_base: str | None) -> Path | None:
    if "://" in href:
        if root_base and href.startswith(root_base):
            return (root / href[len(root_base):]).resolve()
        return None
    return (base.parent / href).resolve()


def read_catalog_tree(catalog_dir: str | Path) -> tuple[_Node, list[tuple[_Node, list[_Node]]]]:
    """The root and its collections with their items, read from local JSON files."""
    root_dir = Path(catalog_dir).resolve()
    root_path = root_dir / "catalog.json"
    root = _Node(_read_json(root_path), root_path)
    self_href = next(iter(_links(root.obj, "self")), None)
    root_base = self_href.rsplit("/", 1)[0] + "/" if self_href and "://" in self_href else None
    def child_nodes(node: _Node):
        for href in _links(node.obj, "child"):
            path = _resolve(href, node.path, root_dir, root_base)
            if path is None:
                log.warning("cannot follow %s from %s", href, node.path)
                continue
            yield _Node(_read_json(path), path)

    collections = []
    for coll in child_nodes(root):
        items = _items_of(coll, root_dir, root_base)
        for child in child_nodes(coll):  # e.g. one catalog per year of a large collection
            child_items = _items_of(child, root_dir, root_base)
            coll.children.append((child, child_items))
            items += child_items
        items.sort(key=_item_order)
        collections.append((coll, items))
    return root, collections


def _item_order(node: _Node) -> tuple[str, str]:
    props = node.obj.get("properties", {})
    return (props.get("start_datetime") or props.get("datetime") or "", node.obj.get("id", ""))


def _items_of(node: _Node, root_dir: Path, root_base: str | None) -> list[_Node]:
    items = []
    for ihref in _links(node.obj, "item"):
        ipath = _resolve(ihref, node.path, root_dir, root_base)
        if ipath is not None:
            items.append(_Node(_read_json(ipath), ipath))
    items.sort(key=_item_order)
    return items


# --------------------------------------------------------------------------- HTML


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    value = float(size)
    for unit in units:
        if value < 1024 or unit == units[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def _page_href(href: str, item_path: Path, root_dir: Path, root_base: str | None) -> str:
    """An href usable from index.html: relative within the catalog, else as published."""
    if "://" in href:
        if root_base and href.startswith(root_base):
            return href[len(root_base):]
        return href
    target = (item_path.parent / href).resolve()
    try:
        return target.relative_to(root_dir).as_posix()
    except ValueError:
        return os.path.relpath(target, root_dir).replace(os.sep, "/")


def _rings(geometry: dict[str, Any] | None) -> list[list[tuple[float, float]]]:
    if not geometry:
        return []
    t, coords = geometry.get("type"), geometry.get("coordinates", [])
    if t == "Polygon":
        return [[(float(x), float(y)) for x, y, *_ in coords[0]]] if coords else []
    if t == "MultiPolygon":
        return [[(float(x), float(y)) for x, y, *_ in poly[0]] for poly in coords if poly]
    return []


def footprint_svg(geometries: list[dict[str, Any] | None], *, width: int = 220, height: int = 150) -> str:
    """Inline SVG of footprints (lon/lat, x scaled by cos(latitude)), with a lon/lat frame."""
    rings = [r for g in geometries for r in _rings(g)]
    if not rings:
        return '<svg class="fp" width="%d" height="%d"></svg>' % (width, height)
    xs = [x for r in rings for x, _ in r]
    ys = [y for r in rings for _, y in r]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    k = math.cos(math.radians((y0 + y1) / 2)) or 1.0
    w, h = max((x1 - x0) * k, 1e-9), max(y1 - y0, 1e-9)
    pad = 10
    s = min((width - 2 * pad) / w, (height - 2 * pad - 12) / h)

    def _pt(x, y):
        return f"{pad + (x - x0) * k * s:.1f},{pad + (y1 - y) * s:.1f}"

    polys = "".join(f'<polygon points="{" ".join(_pt(x, y) for x, y in r)}"/>' for r in rings)
    label = html.escape(f"{x0:.4f}, {y0:.4f} – {x1:.4f}, {y1:.4f}")
    return (f'<svg class="fp" role="img" aria-label="footprint" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" '
            f'class="frame"/><g class="shape">{polys}</g><text x="{pad}" y="{height - 4}">{label}</text></svg>')


CSS = """
:root { --fg:#1d2733; --muted:#5b6775; --line:#d8dee6; --bg:#f6f8fa; --accent:#1a7f37; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:#fff; }
header { padding:18px 28px; background:var(--bg); border-bottom:1px solid var(--line); }
header h1 { margin:0 0 4px; font-size:22px; }
header p { margin:2px 0; color:var(--muted); max-width:70em; }
nav { padding:10px 28px; border-bottom:1px solid var(--line); }
nav a { display:inline-block; margin:2px 10px 2px 0; padding:2px 8px; border:1px solid var(--line); border-radius:12px; text-decoration:none; color:var(--fg); }
main { padding:8px 28px 40px; }
section.collection { border:1px solid var(--line); border-radius:8px; margin:18px 0; padding:14px 18px; }
section.collection h2 { margin:0 0 6px; font-size:18px; }
.meta { display:flex; gap:22px; flex-wrap:wrap; align-items:flex-start; }
.meta dl { margin:0; display:grid; grid-template-columns:max-content auto; gap:2px 12px; }
.meta dt { color:var(--muted); }
.meta dd { margin:0; }
.legend span.sw { display:inline-block; width:12px; height:12px; border:1px solid #0003; margin-right:5px; vertical-align:-1px; }
.legend { margin:4px 0; columns:2; max-width:30em; }
svg.fp .frame { fill:#fbfcfd; stroke:var(--line); }
svg.fp .shape polygon { fill:#1a7f3733; stroke:var(--accent); stroke-width:1; }
svg.fp text { font-size:9px; fill:var(--muted); }
.items { display:grid; grid-template-columns:repeat(auto-fill, minmax(340px, 1fr)); gap:14px; margin-top:12px; }
.item { border:1px solid var(--line); border-radius:6px; padding:10px; background:#fff; }
.item h3 { margin:0 0 6px; font-size:15px; }
.item img.thumb { display:block; width:100%; max-width:336px; height:auto; border:1px solid var(--line); background:#fff; }
table.assets { width:100%; border-collapse:collapse; margin-top:6px; font-size:13px; }
table.assets td, table.assets th { border-top:1px solid var(--line); padding:3px 4px; text-align:left; vertical-align:top; }
table.assets td.num { text-align:right; white-space:nowrap; }
code { font-size:12px; color:var(--muted); }
.years { display:flex; flex-wrap:wrap; gap:6px; margin-top:12px; }
.years a { padding:3px 10px; border:1px solid var(--line); border-radius:12px; text-decoration:none; color:var(--fg); }
.years a span, nav a[aria-current] { color:var(--muted); }
footer { padding:14px 28px; color:var(--muted); border-top:1px solid var(--line); font-size:12px; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page_head(title: str) -> list[str]:
    return [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # no network at all: everything is inline or in this folder
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'self'; "
        "style-src 'unsafe-inline'; img-src 'self' data:; script-src 'none'\">",
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>",
    ]


def _page_foot() -> list[str]:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [f"</main><footer>Generated by ecocube on {stamp}. Stream the COGs with GDAL/QGIS "
            "(<code>/vsicurl/</code>), or load <code>catalog.json</code> in any STAC client.</footer>",
            "</body></html>\n"]


def _from_page(href: str, up: str) -> str:
    """A root-relative href as seen from a page ``up`` (``"../../"``) below the root."""
    return href if "://" in href or href.startswith("/") else up + href


def _rel(path: Path, root_dir: Path) -> str:
    return path.relative_to(root_dir).as_posix() if root_dir in path.parents else path.name


def _legend(coll: _Node) -> str:
    classes = coll.obj.get("ecocube:classes")
    if not classes:
        return ""
    return '<div class="legend">' + "".join(
        f'<div><span class="sw" style="background:#{_esc(c.get("color_hint", "888888"))}"></span>'
        f'{_esc(c["value"])} {_esc(c.get("name", c.get("description", "")))}</div>' for c in classes) + "</div>"


def _unique_geometries(items: list[_Node]) -> list[dict[str, Any] | None]:
    """One footprint per distinct geometry (a large collection's items mostly share one)."""
    seen: dict[str, dict[str, Any] | None] = {}
    for it in items:
        geometry = it.obj.get("geometry")
        seen.setdefault(json.dumps(geometry, sort_keys=True), geometry)
    return list(seen.values())


def _item_cards(items: list[_Node], root_dir: Path, root_base: str | None, up: str = "") -> list[str]:
    """The item cards (thumbnail, assets with size and checksum, item JSON) for a page ``up``
    below the catalog root."""
    out = ['<div class="items">']
    for item in items:
        props = item.obj.get("properties", {})
        period = props.get("ecocube:period") or (props.get("start_datetime") or props.get("datetime") or "")[:10]
        out.append(f'<div class="item" data-item="{_esc(item.obj.get("id"))}">')
        out.append(f'<h3>{_esc(period)} <code>{_esc(item.obj.get("id"))}</code></h3>')
        assets = item.obj.get("assets", {})
        thumb = assets.get("thumbnail")
        if thumb:
            src = _from_page(_page_href(thumb["href"], item.path, root_dir, root_base), up)
            out.append(f'<img class="thumb" loading="lazy" src="{_esc(src)}" '
                       f'alt="thumbnail of {_esc(item.obj.get("id"))}">')
        out.append('<table class="assets"><tr><th>asset</th><th>size</th><th>sha2-256</th></tr>')
        for key, asset in assets.items():
            if "thumbnail" in (asset.get("roles") or []):
                continue
            href = _from_page(_page_href(asset["href"], item.path, root_dir, root_base), up)
            checksum = str(asset.get("file:checksum", ""))
            out.append(
                f'<tr><td><a href="{_esc(href)}" download>{_esc(key)}</a><br><code>{_esc(asset.get("title", ""))}</code></td>'
                f'<td class="num">{_esc(human_size(asset.get("file:size")))}</td>'
                f'<td><code title="{_esc(checksum)}">{_esc(checksum[4:16])}…</code></td></tr>')
        out.append(f'</table><p><a href="{_esc(up + _rel(item.path, root_dir))}">item JSON</a></p></div>')
    out.append("</div>")
    return out


def _child_page_path(child: _Node) -> Path:
    """Where the page of a collection's child catalog goes: ``index.html`` next to its JSON."""
    return child.path.parent / "index.html"


def render_index(catalog_dir: str | Path) -> str:
    """The HTML of the browser page for a local catalog folder.

    A collection with child catalogs (one per year, see :data:`ecocube.stac.YEAR_CATALOGS_ABOVE`)
    is shown by its metadata, footprint and legend with one link per year to that year's page
    (:func:`render_child_page`) instead of its items, so the page does not grow with the
    number of items; smaller collections show their items here.
    """
    root_dir = Path(catalog_dir).resolve()
    root, collections = read_catalog_tree(root_dir)
    self_href = next(iter(_links(root.obj, "self")), None)
    root_base = self_href.rsplit("/", 1)[0] + "/" if self_href and "://" in self_href else None
    n_items = sum(len(items) for _, items in collections)
    title = root.obj.get("title") or root.obj.get("id", "STAC catalog")
    out = _page_head(title) + [
        f"<header><h1>{_esc(title)}</h1><p>{_esc(root.obj.get('description', ''))}</p>",
        f'<p>{len(collections)} collections · {n_items} items · <a href="catalog.json">catalog.json</a>'
        ' · <a href="map.html" class="maplink">map</a>'
        f" (STAC {_esc(root.obj.get('stac_version', '?'))})</p></header>",
        "<nav>" + "".join(f'<a href="#{_esc(c.obj["id"])}">{_esc(c.obj.get("title") or c.obj["id"])}</a>'
                          for c, _ in collections) + "</nav><main>",
    ]
    for coll, items in collections:
        cid = coll.obj["id"]
        temporal = (coll.obj.get("extent", {}).get("temporal", {}).get("interval") or [[None, None]])[0]
        out.append(f'<section class="collection" id="{_esc(cid)}" data-collection="{_esc(cid)}">')
        out.append(f"<h2>{_esc(coll.obj.get('title') or cid)}</h2>")
        out.append(f"<p>{_esc(coll.obj.get('description', ''))}</p>")
        out.append('<div class="meta"><dl>')
        rows = [("id", f'<code>{_esc(cid)}</code> · <a href="{_esc(_rel(coll.path, root_dir))}">collection.json</a>'),
                ("licence", _esc(coll.obj.get("license", ""))),
                ("period", _esc(f"{(temporal[0] or '')[:10]} – {(temporal[1] or '')[:10]}")),
                ("items", str(len(items)))]
        if coll.obj.get("keywords"):
            rows.append(("keywords", _esc(", ".join(coll.obj["keywords"]))))
        providers = coll.obj.get("providers") or []
        if providers:
            rows.append(("providers", _esc(", ".join(p.get("name", "") for p in providers))))
        software = coll.obj.get("ecocube:software")
        if isinstance(software, dict):
            rows.append(("software", _esc(", ".join(f"{k} {v}" for k, v in software.items()))))
        out.extend(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
        out.append("</dl>")
        out.append(footprint_svg(_unique_geometries(items) if coll.children else
                                 [it.obj.get("geometry") for it in items]))
        out.append(_legend(coll))
        out.append("</div>")
        if coll.children:
            out.append('<div class="years">' + "".join(
                f'<a class="year" href="{_esc(_rel(_child_page_path(child), root_dir))}" '
                f'data-child="{_esc(child.obj.get("id"))}">{_esc(_child_label(child))} '
                f'<span>{len(child_items)} items</span></a>'
                for child, child_items in coll.children) + "</div>")
            in_children = {c.path for _, cits in coll.children for c in cits}
            direct = [it for it in items if it.path not in in_children]
            if direct:
                out.extend(_item_cards(direct, root_dir, root_base))
        else:
            out.extend(_item_cards(items, root_dir, root_base))
        out.append("</section>")
    out.extend(_page_foot())
    return "\n".join(out)


def _child_label(child: _Node) -> str:
    year = child.obj.get("ecocube:year")
    return str(year) if year is not None else str(child.obj.get("title") or child.obj.get("id"))


def render_child_page(catalog_dir: str | Path, coll: _Node, child: _Node, items: list[_Node],
                      siblings: list[_Node] = ()) -> str:
    """The page of one child catalog of a collection (one year): its items, with links to
    the catalog's index and the other years."""
    root_dir = Path(catalog_dir).resolve()
    root_json = _read_json(root_dir / "catalog.json")
    self_href = next(iter(_links(root_json, "self")), None)
    root_base = self_href.rsplit("/", 1)[0] + "/" if self_href and "://" in self_href else None
    page = _child_page_path(child)
    up = "../" * (len(page.relative_to(root_dir).parts) - 1)
    cid = coll.obj["id"]
    title = f"{coll.obj.get('title') or cid} · {_child_label(child)}"
    here = page.parent
    out = _page_head(title) + [
        f"<header><h1>{_esc(title)}</h1><p>{_esc(child.obj.get('description', ''))}</p>",
        f'<p><a href="{_esc(up)}index.html#{_esc(cid)}">catalog</a> · {len(items)} items · '
        f'<a href="{_esc(os.path.relpath(child.path, here))}">catalog JSON</a></p></header>',
        "<nav>" + "".join(
            f'<a href="{_esc(os.path.relpath(_child_page_path(s), here))}"'
            + (' aria-current="page"' if s.path == child.path else "") + f">{_esc(_child_label(s))}</a>"
            for s in siblings) + "</nav><main>",
        f'<section class="collection" id="{_esc(cid)}" data-collection="{_esc(cid)}" '
        f'data-child="{_esc(child.obj.get("id"))}">',
        '<div class="meta">' + footprint_svg(_unique_geometries(items)) + _legend(coll) + "</div>",
    ]
    out.extend(_item_cards(items, root_dir, root_base, up))
    out.append("</section>")
    out.extend(_page_foot())
    return "\n".join(out)


def write_browser(catalog_dir: str | Path) -> Path:
    """Write ``index.html`` next to ``catalog.json`` (atomically), with the map view
    (:func:`write_map`), and return the index's path."""
    root_dir = Path(catalog_dir)
    if not (root_dir / "catalog.json").is_file():
        raise EcocubeError(f"no catalog.json in {root_dir}")
    page = render_index(root_dir)
    _, collections = read_catalog_tree(root_dir.resolve())
    for coll, _items in collections:  # one page per child catalog (year) of a large collection
        siblings = [child for child, _ in coll.children]
        for child, child_items in coll.children:
            write_text_atomic(_child_page_path(child),
                              render_child_page(root_dir, coll, child, child_items, siblings))
    index = write_text_atomic(root_dir / "index.html", page)
    write_map(root_dir)
    return index


# --------------------------------------------------------------------------- map view

#: the bundle built from scripts/web-map by scripts/build-map.sh (committed; nothing is fetched at run time)
MAP_BUNDLE = Path(__file__).parent / "data" / "browse"
MAP_FILES = ("map.js", "map.css")
#: colours for classes whose legend gives none (gap-fill flags): distinct, colour-blind friendly
_FALLBACK_COLOURS = ["4477AA", "EE6677", "228833", "CCBB44", "66CCEE", "AA3377", "BBBBBB", "000000"]


def _band_info(band: dict[str, Any], index: int) -> dict[str, Any]:
    scale = float(band.get("scale", 1.0) or 1.0)
    offset = float(band.get("offset", 0.0) or 0.0)
    stats = band.get("statistics") or {}
    lo, hi = stats.get("minimum"), stats.get("maximum")
    nodata = band.get("nodata")
    info = {"name": str(band.get("name") or f"band {index + 1}"), "nodata": nodata, "scale": scale,
            "offset": offset, "unit": band.get("unit"), "min": lo, "max": hi}
    info["raw_min"] = (float(lo) - offset) / scale if lo is not None else 0.0
    info["raw_max"] = (float(hi) - offset) / scale if hi is not None else info["raw_min"] + 1.0
    return info


def map_layers(catalog_dir: str | Path) -> list[dict[str, Any]]:
    """The map's layers: one per band of each COG data asset, with its items by period.

    Each layer is ``{"id", "title", "collection", "asset", "asset_title", "band", "bands",
    "classes", "items": [{"period", "href"}]}``; hrefs are relative to the catalog root
    (or absolute when published so). Collections with a coloured class legend come first.
    """
    root_dir = Path(catalog_dir).resolve()
    root, collections = read_catalog_tree(root_dir)
    self_href = next(iter(_links(root.obj, "self")), None)
    root_base = self_href.rsplit("/", 1)[0] + "/" if self_href and "://" in self_href else None
    layers: list[dict[str, Any]] = []
    for coll, items in collections:
        assets: dict[str, dict[str, Any]] = {}
        for item in items:
            props = item.obj.get("properties", {})
            period = props.get("ecocube:period") or (props.get("start_datetime") or props.get("datetime") or "")[:10]
            for key, asset in item.obj.get("assets", {}).items():
                if "data" not in (asset.get("roles") or []) or "image/tiff" not in str(asset.get("type", "")):
                    continue
                entry = assets.setdefault(key, {"asset": asset, "items": []})
                entry["items"].append({"period": period,
                                       "href": _page_href(asset["href"], item.path, root_dir, root_base)})
        for key, entry in assets.items():
            asset = entry["asset"]
            classes = asset.get("classification:classes") or coll.obj.get("ecocube:classes") or []
            classes = [{"value": int(c["value"]), "name": str(c.get("name", c["value"])),
                        "description": str(c.get("description", "")),
                        "color": str(c.get("color_hint") or _FALLBACK_COLOURS[i % len(_FALLBACK_COLOURS)]).lstrip("#")}
                       for i, c in enumerate(classes)]
            bands = [_band_info(b, i) for i, b in enumerate(asset.get("raster:bands") or [{}])]
            base = coll.obj.get("title") or coll.obj["id"]
            for b in range(len(bands)):
                title = base if len(bands) == 1 and key == coll.obj["id"] else (
                    f"{base}: {bands[b]['name']}" if len(bands) > 1 else f"{base}: {asset.get('title') or key}")
                layers.append({"id": f"{coll.obj['id']}/{key}/{b + 1}", "title": title, "collection": coll.obj["id"],
                               "asset": key, "asset_title": f"{coll.obj['id']}: {asset.get('title') or key}",
                               "band": b, "bands": bands, "classes": classes,
                               "coloured": bool(classes) and all("color_hint" in c for c in
                                                                 (asset.get("classification:classes")
                                                                  or coll.obj.get("ecocube:classes") or [])),
                               "items": entry["items"]})
    layers.sort(key=lambda lay: not lay["coloured"])  # stable: class maps first, then catalog order
    return layers


MAP_CSS = """
body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:#1d2733; }
header { padding:10px 18px; background:#f6f8fa; border-bottom:1px solid #d8dee6; display:flex; gap:18px;
  align-items:center; flex-wrap:wrap; }
header h1 { margin:0; font-size:18px; }
header label { color:#5b6775; }
#wrap { display:flex; height:calc(100vh - 58px); }
#map { flex:1; position:relative; background:#fbfcfd; }
aside { width:380px; overflow:auto; border-left:1px solid #d8dee6; padding:8px 12px; font-size:13px; }
#legend .sw { display:inline-block; width:12px; height:12px; border:1px solid #0003; margin-right:5px; vertical-align:-1px; }
#legend .ramp { display:inline-block; width:90px; height:10px; vertical-align:-1px;
  background:linear-gradient(90deg,#440154,#3b528b,#21918c,#5ec962,#fde725); }
table.inspect { border-collapse:collapse; margin:8px 0; width:100%; }
table.inspect caption { text-align:left; font-weight:600; }
table.inspect td, table.inspect th { border-top:1px solid #d8dee6; padding:2px 4px; text-align:left; }
#map-error { color:#b42318; }
.swipe { display:flex; align-items:center; gap:6px; }
"""


def render_map(catalog_dir: str | Path) -> str:
    """The HTML of ``map.html`` for a local catalog folder."""
    root_dir = Path(catalog_dir).resolve()
    root, _ = read_catalog_tree(root_dir)
    layers = map_layers(root_dir)
    origins = sorted({"{0.scheme}://{0.netloc}".format(urlsplit(it["href"]))
                      for lay in layers for it in lay["items"] if "://" in it["href"]})
    connect = " ".join(["'self'", *origins])
    title = (root.obj.get("title") or root.obj.get("id", "STAC catalog")) + " — map"
    payload = json.dumps({"layers": layers}, separators=(",", ":")).replace("</", "<\\/")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # the catalog's own files only; geotiff.js decodes in blob: workers, OpenLayers draws with WebGL
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'self'; script-src 'self'; "
        f"worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src {connect}\">",
        f'<title>{_esc(title)}</title><link rel="stylesheet" href="map.css"><style>{MAP_CSS}</style></head><body>',
        f'<header><h1>{_esc(title)}</h1><a href="index.html">catalog</a>',
        '<label>layer <select id="layer"></select></label>',
        '<label>left <select id="year-a"></select></label>',
        '<span class="swipe"><span id="year-a-label"></span>'
        '<input id="swipe" type="range" min="0" max="100" value="50" aria-label="swipe between the two years">'
        '<span id="year-b-label"></span></span>',
        '<label>right <select id="year-b"></select></label><div id="legend"></div></header>',
        '<div id="wrap"><div id="map"></div><aside><p id="map-error" hidden></p>'
        '<h2>pixel</h2><div id="inspector"><p>click the map to read every layer at that pixel through the years</p>'
        '</div></aside></div>',
        f'<script id="ecocube-map-data" type="application/json">{payload}</script>',
        '<script src="map.js"></script>',
        "</body></html>\n",
    ])


def write_map(catalog_dir: str | Path) -> Path:
    """Write ``map.html`` and copy the bundled ``map.js`` next to ``catalog.json``; return the page."""
    root_dir = Path(catalog_dir)
    if not (root_dir / "catalog.json").is_file():
        raise EcocubeError(f"no catalog.json in {root_dir}")
    missing = [name for name in MAP_FILES if not (MAP_BUNDLE / name).is_file()]
    if missing:
        raise EcocubeError(f"the map bundle is missing from the package: {MAP_BUNDLE}/{missing[0]} "
                           "(run scripts/build-map.sh)")
    page = render_map(root_dir)
    for name in MAP_FILES:
        write_text_atomic(root_dir / name, (MAP_BUNDLE / name).read_text(encoding="utf-8"))
    return write_text_atomic(root_dir / "map.html", page)


# --------------------------------------------------------------------------- server

_RANGE_RE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
CONTENT_TYPES = {".json": "application/json", ".tif": "image/tiff", ".tiff": "image/tiff", ".png": "image/png",
                 ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".vrt": "application/xml", ".geojson": "application/geo+json"}


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """Byte ranges ``[(start, end_inclusive), ...]`` of a ``Range`` header for a file of ``size``.

    ``None`` means the header is not a bytes range we understand (serve the whole file);
    an empty list means no range is satisfiable (416).
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    ranges = []
    for part in spec.split(","):
        m = _RANGE_RE.match(part)
        if not m or (m.group(1) == "" and m.group(2) == ""):
            return None
        first, last = m.group(1), m.group(2)
        if first == "":  # suffix: the last N bytes
            n = int(last)
            if n == 0:
                continue
            start, end = max(0, size - n), size - 1
        else:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
            if last and int(last) < start:
                return None
        if start >= size:
            continue
        ranges.append((start, end))
    return ranges


class CatalogRequestHandler(BaseHTTPRequestHandler):
    """Read-only files under ``server.root`` with Range and CORS; everything else refused."""

    server_version = "ecocube-browse"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:  # to logging, not stderr
        log.debug("%s %s", self.address_string(), fmt % args)

    # CORS -----------------------------------------------------------------
    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Range, If-None-Match, If-Modified-Since, Content-Type")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges, ETag")
        self.send_header("Access-Control-Max-Age", "600")

    def _error(self, status: HTTPStatus, text: str | None = None) -> None:
        body = f"{status.value} {text or status.phrase}\n".encode()
        self.send_response(status)
        self._cors()
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_OPTIONS(self) -> None:  # noqa: N802
        self.send_response(HTTPStatus.NO_CONTENT)
        self._cors()
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _forbidden_methods(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self._cors()
        self.send_header("Allow", "GET, HEAD, OPTIONS")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = _forbidden_methods  # noqa: N815

    # path -----------------------------------------------------------------
    def resolve_path(self) -> Path | None:
        """The file for the request path, or ``None`` after sending 400/403/404."""
        raw = urlsplit(self.path).path
        decoded = raw
        for _ in range(3):  # reject double/triple-encoded traversal too
            nxt = unquote(decoded)
            if nxt == decoded:
                break
            decoded = nxt
        if "\x00" in decoded:
            self._error(HTTPStatus.BAD_REQUEST, "bad path")
            return None
        parts = decoded.replace("\\", "/").split("/")
        if any(p == ".." for p in parts):
            self._error(HTTPStatus.FORBIDDEN, "path outside the catalog")
            return None
        rel = unquote(raw).lstrip("/")
        if "\\" in rel or any(p == ".." for p in rel.split("/")):
            self._error(HTTPStatus.FORBIDDEN, "path outside the catalog")
            return None
        root: Path = self.server.root  # type: ignore[attr-defined]
        target = (root / posixpath.normpath(rel)) if rel else root
        try:
            resolved = target.resolve(strict=False)
        except (OSError, RuntimeError):
            self._error(HTTPStatus.FORBIDDEN, "path outside the catalog")
            return None
        if resolved != root and root not in resolved.parents:
            self._error(HTTPStatus.FORBIDDEN, "path outside the catalog")
            return None
        if resolved.is_dir():
            resolved = resolved / "index.html"
        if not resolved.is_file():
            self._error(HTTPStatus.NOT_FOUND)
            return None
        return resolved

    # GET / HEAD -------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _serve(self, *, head: bool) -> None:
        path = self.resolve_path()
        if path is None:
            return
        try:
            fh = open(path, "rb")
        except OSError:
            self._error(HTTPStatus.FORBIDDEN, "not readable")
            return
        with fh:
            stat = os.fstat(fh.fileno())
            size = stat.st_size
            ctype = CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            etag = f'"{stat.st_mtime_ns:x}-{size:x}"'
            header = self.headers.get("Range")
            ranges = parse_ranges(header, size) if header else None
            if header and ranges is not None and self.headers.get("If-Range") not in (None, etag):
                ranges = None  # the file changed: whole file
            if ranges == []:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self._cors()
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if not ranges:
                self.send_response(HTTPStatus.OK)
                self._common(ctype, etag, stat.st_mtime)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if not head:
                    shutil.copyfileobj(fh, self.wfile, 256 * 1024)
                return
            if len(ranges) == 1:
                start, end = ranges[0]
                self.send_response(HTTPStatus.PARTIAL_CONTENT)
                self._common(ctype, etag, stat.st_mtime)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if not head:
                    self._copy(fh, start, end)
                return
            boundary = f"ecocube-{os.urandom(8).hex()}"
            heads = [(f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {s}-{e}/{size}\r\n\r\n").encode()
                     for s, e in ranges]
            tail = f"--{boundary}--\r\n".encode()
            length = sum(len(h) + (e - s + 1) + 2 for h, (s, e) in zip(heads, ranges)) + len(tail)
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self._common(f"multipart/byteranges; boundary={boundary}", etag, stat.st_mtime)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if not head:
                for h, (s, e) in zip(heads, ranges):
                    self.wfile.write(h)
                    self._copy(fh, s, e)
                    self.wfile.write(b"\r\n")
                self.wfile.write(tail)

    def _common(self, ctype: str, etag: str, mtime: float) -> None:
        self._cors()
        self.send_header("Content-Type", ctype)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", self.date_time_string(mtime))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")

    def _copy(self, fh, start: int, end: int) -> None:
        fh.seek(start)
        remaining = end - start + 1
        while remaining > 0:
            chunk = fh.read(min(256 * 1024, remaining))
            if not chunk:
                break
            self.wfile.write(chunk)
            remaining -= len(chunk)


class CatalogServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path, port: int):
        self.root = Path(root).resolve()
        super().__init__((LOOPBACK, port), CatalogRequestHandler)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}"


def make_server(catalog_dir: str | Path, port: int = 0) -> CatalogServer:
    """A server for ``catalog_dir`` bound to 127.0.0.1 (``port=0``: any free port). Not started."""
    root = Path(catalog_dir)
    if not root.is_dir():
        raise ConfigError(f"catalog folder not found: {root}")
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"port must be 0..65535, got {port}")
    try:
        return CatalogServer(root, int(port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {LOOPBACK}:{port}: {exc}") from None


def serve(catalog_dir: str | Path, port: int = 8000, *, ready=None) -> None:
    """Serve ``catalog_dir`` on 127.0.0.1 until SIGINT or SIGTERM. ``ready(url)`` is called
    once listening. Both signals are handled explicitly (``ecocube.signals``), also when
    the process inherited SIGINT ignored; they raise :class:`ecocube.signals.Stopped` (a
    ``KeyboardInterrupt``) after the socket is closed."""
    from .signals import handle_stop_signals

    server = make_server(catalog_dir, port)
    try:
        with handle_stop_signals():
            if ready is not None:
                ready(server.url)
            server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()


class BackgroundServer:
    """``with BackgroundServer(folder) as url:`` serves in a thread (tests, notebooks)."""

    def __init__(self, catalog_dir: str | Path, port: int = 0):
        self.server = make_server(catalog_dir, port)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return self.server.url

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
