"""The run report: one self-contained HTML page (``report.html``) and its PNGs and numbers.

``ecocube report RUN.yaml`` answers "what happened?" during a run and after it, from what
the run left in its store (local or S3, through :mod:`ecocube.store`) and beside its config:

- the tile grid coloured by state (done, failed, interrupted, running, stale, empty, pending)
  and the counts per state (the same effective states as ``ecocube status``: a done tile
  whose outputs are gone counts as failed, a running tile whose process is gone as stale);
- completeness per tile and per region (:mod:`ecocube.completeness`);
- time (``seconds``) and peak RSS (``peak_rss_bytes``) of the finished attempts, as
  histograms and the slowest / largest tiles (running tiles: time since they started);
- failures grouped by error message (tile ids in the text replaced by ``<tile>``), with
  the tiles, a full message and the Slurm log of each attempt (from the record's ``task``);
- inputs recorded missing (``missing_inputs``) with the tiles that missed them;
- gap-fill statistics: the share of the tiles' cube values observed, filled by each
  gap-fill phase (from the flag codes counted in each record's ``gaps.flag_counts``), and
  left unfilled;
- the model's cross-validated accuracy and plots (``report.json`` + PNGs of the bundle in
  ``model.path``, written by ``ecocube train``);
- links into the STAC catalog once ``ecocube finalize`` has published it.

The page inlines its CSS, its SVG tile grid and its PNGs (as ``data:`` URIs): it can be
mailed or copied alone, and uses no script. Its per-tile table lists the tiles that need
attention first (failed, interrupted, stale, running), then the others by state, a page of
rows each, the further pages folded (:func:`tile_listing`), so thousands of tiles stay
readable. ``report.json`` holds every number the page shows, ``tiles.csv`` every tile.
:func:`build_report` is pure (records and metadata in, a plain dict out);
:func:`render_html` turns that dict into the page; :func:`write_report` is the I/O edge.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EcocubeError

log = logging.getLogger(__name__)

__all__ = ["REPORT_STATES", "STATE_COLORS", "build_report", "error_group", "gapfill_shares", "render_html",
           "tile_listing", "tiles_csv", "write_report"]

#: the states a report shows, in this order
REPORT_STATES = ("done", "failed", "interrupted", "running", "stale", "empty", "pending")
STATE_COLORS = {"done": "#2e9e44", "failed": "#d62728", "interrupted": "#ff7f0e", "running": "#1f77b4",
                "stale": "#9467bd", "empty": "#bdbdbd", "pending": "#f2f2f2"}
#: gap-fill phases in the order a report lists them (``gapfill.flag_phase`` codes)
PHASES = (("observed", 0), ("TMWM phase 1 (same season)", 1), ("TMWM phase 2 (neighbouring seasons)", 2),
          ("TMWM phase 3 (contiguous periods)", 3), ("linear", 4), ("unfilled", 255))
_TILE_ID = re.compile(r"\bX-?\d+_Y-?\d+\b")


# ---------------------------------------------------------------------------- pure parts


def error_group(message: str) -> str:
    """The message a failure is grouped by: its first line, tile ids replaced by ``<tile>``."""
    first = (message or "unknown error").strip().splitlines()[0] if (message or "").strip() else "unknown error"
    return _TILE_ID.sub("<tile>", first)


def gapfill_shares(flag_counts: Mapping[str, int]) -> dict[str, Any]:
    """Counts and shares of cube values per gap-fill phase from a record's ``gaps.flag_counts``
    (flag code -> values); ``outlier_replaced`` counts the values removed as outliers."""
    from .gapfill import FLAG_OUTLIER, FLAG_OUTLIER_UNFILLED, flag_phase

    codes = np.array([int(k) for k in flag_counts], dtype=np.uint8)
    counts = np.array([int(v) for v in flag_counts.values()], dtype=np.int64)
    phase = flag_phase(codes) if codes.size else codes
    total = int(counts.sum())
    out: dict[str, Any] = {"values": total, "phases": {}}
    for name, code in PHASES:
        n = int(counts[phase == code].sum()) if codes.size else 0
        out["phases"][name] = {"values": n, "share": n / total if total else 0.0}
    outlier = (codes == FLAG_OUTLIER_UNFILLED) | ((codes & FLAG_OUTLIER).astype(bool) & (codes < FLAG_OUTLIER_UNFILLED))
    out["outlier_replaced"] = int(counts[outlier].sum()) if codes.size else 0
    return out


def _epoch(text: Any) -> float | None:
    from datetime import datetime

    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _log_path(rec: Mapping[str, Any], log_path_for) -> str | None:
    task = rec.get("task") or {}
    array_job, task_id = task.get("array_job_id"), task.get("array_task_id")
    if array_job is not None and task_id is not None and log_path_for is not None:
        return str(log_path_for(array_job, task_id))
    return None


def build_report(records: Mapping[str, Mapping[str, Any] | None], tiles: Sequence, summary, completeness, *,
                 run: str, store_url: str, train_report: Mapping[str, Any] | None = None,
                 catalog: Mapping[str, str] | None = None, log_path_for=None,
                 now: float | None = None) -> dict[str, Any]:
    """Every number of the report as plain data.

    ``records``: ``{tile: record or None}`` (``status.tile_states``, outputs checked);
    ``tiles``: the run's :class:`ecocube.grid.Tile` in grid order; ``summary``: the
    :class:`ecocube.status.StatusSummary` of ``records``; ``completeness``: its
    :class:`ecocube.completeness.CompletenessReport`; ``train_report``: the bundle's
    ``report.json``; ``catalog``: ``{"index": href, "map": href, ...}`` when published;
    ``log_path_for(array_job_id, task_id)``: the Slurm log of an array task."""
    now = time.time() if now is None else now
    states = summary.states
    counts = {s: sum(1 for t in tiles if states.get(t.id) == s) for s in REPORT_STATES}
    tile_rows = []
    for t in tiles:
        rec = records.get(t.id) or {}
        state = states.get(t.id, "pending")
        seconds = rec.get("seconds")
        if state in ("running", "stale") and seconds is None:
            started = _epoch(rec.get("started"))
            seconds_running = None if started is None else max(0.0, now - started)
        else:
            seconds_running = None
        tile_rows.append({
            "tile": t.id, "state": state, "bounds": [float(v) for v in t.bounds],
            "attempt": rec.get("attempt"), "host": rec.get("host"),
            "seconds": seconds, "running_seconds": seconds_running,
            "peak_rss_bytes": rec.get("peak_rss_bytes"),
            "completeness": summary.completeness.get(t.id, 0.0),
            "error": rec.get("error") if state in ("failed", "interrupted") else None,
            "stale_reason": summary.stale_reasons.get(t.id),
            "heartbeat": rec.get("heartbeat"), "started": rec.get("started"), "finished": rec.get("finished"),
        })

    # failures grouped by message
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for t in tiles:
        state = states.get(t.id)
        if state not in ("failed", "interrupted", "stale"):
            continue
        rec = records.get(t.id) or {}
        message = (summary.stale_reasons.get(t.id) if state == "stale" else rec.get("error")) or "unknown error"
        key = (state, error_group(str(message)))
        g = groups.setdefault(key, {"state": state, "error": key[1], "example": str(message), "tiles": [],
                                    "logs": []})
        g["tiles"].append(t.id)
        lp = _log_path(rec, log_path_for)
        g["logs"].append({"tile": t.id, "log": lp, "host": rec.get("host"), "pid": rec.get("pid"),
                          "attempt": rec.get("attempt")})
    failures = sorted(groups.values(), key=lambda g: (-len(g["tiles"]), g["state"], g["error"]))

    # inputs missing
    missing: dict[str, list[str]] = defaultdict(list)
    for t in tiles:
        for href in (records.get(t.id) or {}).get("missing_inputs") or ():
            missing[str(href)].append(t.id)

    # gap-filling over the finished tiles
    total_flags: Counter[str] = Counter()
    per_tile_gaps = {}
    for t in tiles:
        rec = records.get(t.id) or {}
        if states.get(t.id) not in ("done", "empty"):
            continue
        fc = (rec.get("gaps") or {}).get("flag_counts") or {}
        if fc:
            total_flags.update({str(k): int(v) for k, v in fc.items()})
            per_tile_gaps[t.id] = gapfill_shares(fc)
    gapfill = {**gapfill_shares(dict(total_flags)), "tiles": len(per_tile_gaps), "per_tile": per_tile_gaps}

    finished = [r for r in tile_rows if r["seconds"] is not None]
    secs = [float(r["seconds"]) for r in finished]
    rss = [float(r["peak_rss_bytes"]) for r in tile_rows if r["peak_rss_bytes"]]
    resources = {
        "tiles_timed": len(secs),
        "seconds": _stats(secs),
        "peak_rss_mib": _stats([v / 2**20 for v in rss]),
        "slowest": [{"tile": r["tile"], "seconds": r["seconds"], "state": r["state"]}
                    for r in sorted(finished, key=lambda r: -float(r["seconds"]))[:5]],
        "running": [{"tile": r["tile"], "running_seconds": r["running_seconds"], "host": r["host"],
                     "heartbeat": r["heartbeat"]} for r in tile_rows if r["state"] == "running"],
    }
    regions = [{"name": r.name, "tiles": r.tiles, "completeness": r.completeness} for r in completeness.regions]
    return {
        "run": run,
        "store": store_url,
        "generated": _iso(now),
        "tiles_total": len(tiles),
        "counts": counts,
        "finished": counts["done"] + counts["empty"] == len(tiles),
        "completeness": {"unit": completeness.unit, "overall": completeness.overall, "regions": regions},
        "tiles": tile_rows,
        "failures": failures,
        "missing_inputs": [{"href": h, "tiles": ts} for h, ts in sorted(missing.items())],
        "gapfill": gapfill,
        "resources": resources,
        "model": _model_summary(train_report),
        "catalog": dict(catalog) if catalog else None,
    }


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "min": float(a.min()), "median": float(np.median(a)), "mean": float(a.mean()),
            "max": float(a.max()), "sum": float(a.sum())}


def _iso(epoch: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def _model_summary(rep: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The headline figures of a training report (classification or regression)."""
    if not rep:
        return None
    m = rep.get("metrics") or {}
    cv = rep.get("cv") or {}
    task = rep.get("task") or ("regression" if "rmse" in m else "classification")
    keys = (("rmse", "mae", "r2", "ccc", "interval_coverage") if task == "regression"
            else ("overall_accuracy", "f1_weighted", "f1_macro", "kappa", "log_loss"))
    baseline = m.get("baseline") or {}
    out = {
        "task": task,
        "metrics": {k: m[k] for k in keys if isinstance(m.get(k), (int, float))},
        "baseline": {k: baseline[k] for k in keys if isinstance(baseline.get(k), (int, float))},
        "cv": {k: cv.get(k) for k in ("scheme", "folds", "groups", "block_size") if k in cv},
        "per_class": [{k: c.get(k) for k in ("code", "name", "precision", "recall", "f1", "support")}
                      for c in m.get("per_class") or ()],
        "samples": {k: (rep.get("samples") or {}).get(k) for k in ("file", "pixels_used", "years")},
        "warnings": list(rep.get("warnings") or ()),
        "comparison": {name: sc.get("f1_weighted", sc.get("rmse"))
                       for name, sc in ((rep.get("comparison") or {}).get("models") or {}).items()},
        "plots": {},
    }
    return out


# ---------------------------------------------------------------------------- pictures


def grid_svg(rows: Sequence[Mapping[str, Any]], *, width: int = 640) -> str:
    """The tile grid as an inline SVG: one ``rect`` per tile, coloured by state, with a
    ``<title>`` (tile, state, completeness) and ``data-tile`` / ``data-state``."""
    if not rows:
        return '<svg class="grid" xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    b = np.array([r["bounds"] for r in rows], dtype=np.float64)
    x0, y0, x1, y1 = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    scale = width / max(x1 - x0, 1e-9)
    height = max(1, round((y1 - y0) * scale))
    if height > 900:  # a tall area: fit the height instead
        scale *= 900 / height
        height = 900
    w_px = round((x1 - x0) * scale)
    parts = [(f'<svg class="grid" xmlns="http://www.w3.org/2000/svg" width="{w_px}" height="{height}" '
              f'viewBox="0 0 {w_px} {height}">')]
    for r in rows:
        left, bottom, right, top = r["bounds"]
        x, y = (left - x0) * scale, (y1 - top) * scale
        w, h = (right - left) * scale, (top - bottom) * scale
        state = r["state"]
        title = f'{r["tile"]}: {state}, completeness {100 * float(r["completeness"] or 0):.1f} %'
        parts.append(f'<rect x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}" fill="{STATE_COLORS[state]}" '
                     f'stroke="#555" stroke-width="0.5" data-tile="{r["tile"]}" data-state="{state}">'
                     f'<title>{html.escape(title)}</title></rect>')
        if len(rows) <= 64 and w > 60:
            parts.append(f'<text x="{x + w / 2:.2f}" y="{y + h / 2:.2f}" text-anchor="middle" font-size="11" '
                         f'fill="{"#222" if state in ("pending", "empty") else "#fff"}">{html.escape(r["tile"])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def make_pngs(report: Mapping[str, Any], completeness, regions=()) -> dict[str, bytes]:
    """The report's PNGs as bytes: ``tiles.png`` (grid by state), ``completeness.png``,
    ``seconds.png`` / ``memory.png`` (histograms, when some tile has them), ``gapfill.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Patch, Rectangle

    pngs: dict[str, bytes] = {}
    rows = report["tiles"]
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    # one collection, not a patch per tile: add_patch updates the axes' limits tile by tile (seconds for thousands)
    ax.add_collection(PatchCollection(
        [Rectangle((r["bounds"][0], r["bounds"][1]), r["bounds"][2] - r["bounds"][0], r["bounds"][3] - r["bounds"][1])
         for r in rows], facecolors=[STATE_COLORS[r["state"]] for r in rows], edgecolors="#555555",
        linewidths=0.4), autolim=False)
    if rows:
        b = np.array([r["bounds"] for r in rows])
        ax.set_xlim(b[:, 0].min(), b[:, 2].max())
        ax.set_ylim(b[:, 1].min(), b[:, 3].max())
    ax.set_aspect("equal")
    c = report["counts"]
    ax.legend(handles=[Patch(facecolor=STATE_COLORS[s], edgecolor="#555555", label=f"{s} ({c[s]})")
                       for s in REPORT_STATES if c[s]], loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    ax.set_title(f"{report['run']}: tiles by state")
    pngs["tiles.png"] = _png(fig)

    pngs["completeness.png"] = _completeness_png(completeness, regions, report["run"])

    for name, values, label in (
            ("seconds.png", [r["seconds"] for r in rows if r["seconds"] is not None], "seconds per tile"),
            ("memory.png", [r["peak_rss_bytes"] / 2**20 for r in rows if r["peak_rss_bytes"]], "peak RSS per tile (MiB)")):
        if not values:
            continue
        fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
        ax.hist(values, bins=min(30, max(5, len(values) // 2)), color="#4c72b0", edgecolor="white")
        ax.set_xlabel(label)
        ax.set_ylabel("tiles")
        pngs[name] = _png(fig)

    gf = report["gapfill"]
    if gf["values"]:
        names = [n for n, _ in PHASES]
        shares = [100 * gf["phases"][n]["share"] for n in names]
        fig, ax = plt.subplots(figsize=(6, 2.8), dpi=100)
        ax.barh(names[::-1], shares[::-1], color="#55a868")
        for y, v in enumerate(shares[::-1]):
            ax.text(v, y, f" {v:.1f} %", va="center", fontsize=8)
        ax.set_xlabel("share of cube values (%)")
        ax.set_xlim(0, 110)
        pngs["gapfill.png"] = _png(fig)
    return pngs


def _completeness_png(completeness, regions, title: str) -> bytes:
    import tempfile

    from .completeness import write_map

    with tempfile.TemporaryDirectory() as tmp:
        return write_map(completeness, Path(tmp) / "c.png", regions=regions, title=title).read_bytes()


# ---------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#264653;color:#fff;padding:14px 24px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}header code{background:#1d3640;color:#fff}nav{padding:6px 24px;background:#e9eef0;font-size:13px}
nav a{margin-right:14px;color:#264653}main{padding:8px 24px 40px;max-width:1200px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;margin:14px 0;padding:10px 16px}
h2{font-size:17px;margin:6px 0 10px}table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}.sw{display:inline-block;width:12px;height:12px;
border:1px solid #555;vertical-align:middle;margin-right:4px}img{max-width:100%}.muted{color:#777}
code{font-size:12px;background:#f3f3f3;padding:0 3px;word-break:break-all}.warn{color:#a15c00}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
h3{font-size:14px;margin:10px 0 4px}details.page>summary{cursor:pointer;font-size:13px;color:#264653;margin:2px 0}
"""

SECTIONS = (("states", "Tiles by state"), ("completeness", "Completeness"), ("resources", "Time and memory"),
            ("failures", "Failures"), ("inputs", "Inputs missing"), ("gapfill", "Gap-filling"),
            ("model", "Model accuracy"), ("catalog", "Catalog"))


def _e(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else ""


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _img(pngs: Mapping[str, bytes], name: str, alt: str) -> str:
    data = pngs.get(name)
    if not data:
        return ""
    return (f'<img class="fig" data-name="{_e(name)}" alt="{_e(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode()}">')


#: the per-tile listing: states in this order (what needs attention first), rows per page, and
#: the most rows of one state the page holds (the rest: ``tiles.csv``, ``report.json``)
LISTING_ORDER = ("failed", "interrupted", "stale", "running", "done", "empty", "pending")
PAGE_ROWS = 100
STATE_ROWS_MAX = 5000
#: the most log paths shown per failure group
GROUP_LOGS_MAX = 20
_TILE_HEADER = ('<tr><th>tile</th><th>state</th><th>attempt</th><th>completeness</th><th>seconds</th>'
                '<th>peak RSS</th><th>host</th></tr>')


def _tile_row(r: Mapping[str, Any]) -> str:
    secs = r["seconds"] if r["seconds"] is not None else r["running_seconds"]
    secs_text = "" if secs is None else (f"{secs:.1f}" + (" (running)" if r["seconds"] is None else ""))
    rss = f'{r["peak_rss_bytes"] / 2**20:.0f} MiB' if r["peak_rss_bytes"] else ""
    return (f'<tr data-tile="{_e(r["tile"])}"><td>{_e(r["tile"])}</td><td>{_e(r["state"])}</td>'
            f'<td class="num">{_e(r["attempt"] or "")}</td><td class="num">{_pct(r["completeness"])}</td>'
            f'<td class="num">{secs_text}</td><td class="num">{rss}</td><td>{_e(r["host"] or "")}</td></tr>')


def tile_listing(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The per-tile table as HTML parts, usable for thousands of tiles without a script: one
    block per state in :data:`LISTING_ORDER` (failed, interrupted, stale and running first),
    each showing its first :data:`PAGE_ROWS` rows, the next pages folded (``<details>``, found
    by the browser's find-in-page), at most :data:`STATE_ROWS_MAX` rows of a state; every
    tile is in ``tiles.csv`` and ``report.json``."""
    by_state: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        by_state[r["state"]].append(r)
    out = [f'<details class="tiles" open><summary>per tile: {len(rows)} tiles, those that need attention first '
           f'(every tile with every field: <code>tiles.csv</code>, <code>report.json</code>)</summary>']
    for state in LISTING_ORDER:
        tiles = by_state.get(state, [])
        if not tiles:
            continue
        shown = tiles[:STATE_ROWS_MAX]
        out.append(f'<div class="state-tiles" data-state="{state}"><h3><span class="sw" '
                   f'style="background:{STATE_COLORS[state]}"></span>{state}: {len(tiles)} '
                   f'tile{"s" if len(tiles) != 1 else ""}</h3>')
        for start in range(0, len(shown), PAGE_ROWS):
            page = shown[start:start + PAGE_ROWS]
            table = (f'<table class="tiles" data-state="{state}" data-page="{start // PAGE_ROWS + 1}">{_TILE_HEADER}'
                     + "".join(_tile_row(r) for r in page) + "</table>")
            if start == 0:
                out.append(table)
            else:
                out.append(f'<details class="page" data-state="{state}" data-page="{start // PAGE_ROWS + 1}"><summary>'
                           f'{state}: rows {start + 1}–{start + len(page)} ({_e(page[0]["tile"])} … '
                           f'{_e(page[-1]["tile"])})</summary>{table}</details>')
        if len(tiles) > len(shown):
            out.append(f'<p class="muted more">… and {len(tiles) - len(shown)} more {state} tiles: see '
                       "<code>tiles.csv</code></p>")
        out.append("</div>")
    out.append("</details>")
    return out


def tiles_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every tile of the report, one CSV row each, in grid order (for a spreadsheet or a filter)."""
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["tile", "state", "attempt", "completeness", "seconds", "running_seconds", "peak_rss_bytes", "host",
                "started", "finished", "heartbeat", "stale_reason", "error"])
    for r in rows:
        w.writerow([r["tile"], r["state"], r["attempt"] if r["attempt"] is not None else "", r["completeness"],
                    *("" if r[k] is None else r[k] for k in ("seconds", "running_seconds", "peak_rss_bytes", "host",
                                                             "started", "finished", "heartbeat", "stale_reason",
                                                             "error"))])
    return buf.getvalue()


def render_html(report: Mapping[str, Any], pngs: Mapping[str, bytes]) -> str:
    """The report page: inline CSS, inline SVG grid, PNGs as ``data:`` URIs, no script."""
    c = report["counts"]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>ecocube report: {_e(report['run'])}</title>",
           '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<style>{_CSS}</style></head><body>",
           (f"<header><h1>ecocube report: {_e(report['run'])}</h1>"
            f"<p>{report['tiles_total']} tiles · store <code>{_e(report['store'])}</code> · generated "
            f"{_e(report['generated'])} · {'finished' if report['finished'] else 'in progress or incomplete'}</p>"
            "</header>"),
           "<nav>" + "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS) + "</nav><main>"]

    # states
    out.append('<section id="states"><h2>Tiles by state</h2><div class="figs"><div>')
    out.append('<table class="counts"><tr><th>state</th><th>tiles</th></tr>')
    for s in REPORT_STATES:
        out.append(f'<tr data-state="{s}"><td><span class="sw" style="background:{STATE_COLORS[s]}"></span>{s}</td>'
                   f'<td class="num">{c[s]}</td></tr>')
    out.append(f'<tr><th>total</th><th class="num">{report["tiles_total"]}</th></tr></table></div>')
    out.append(f"<div>{grid_svg(report['tiles'])}</div></div></section>")

    # completeness
    comp = report["completeness"]
    out.append(f'<section id="completeness"><h2>Completeness</h2><p>Overall <b class="overall">'
               f'{_pct(comp["overall"])}</b> ({_e(comp["unit"])}: predicted ÷ target per tile, mean over the '
               f'{report["tiles_total"]} tiles; a tile not done counts 0).</p><div class="figs">')
    out.append(_img(pngs, "completeness.png", "completeness per tile"))
    if comp["regions"]:
        out.append('<table class="regions"><tr><th>region</th><th>tiles</th><th>completeness</th></tr>')
        for r in comp["regions"]:
            out.append(f'<tr><td>{_e(r["name"])}</td><td class="num">{r["tiles"]}</td>'
                       f'<td class="num">{_pct(r["completeness"])}</td></tr>')
        out.append("</table>")
    out.append("</div>")
    out.extend(tile_listing(report["tiles"]))
    out.append("</section>")

    # resources
    res = report["resources"]
    out.append('<section id="resources"><h2>Time and memory</h2>')
    if res["seconds"]:
        s, m = res["seconds"], res["peak_rss_mib"]
        out.append(f'<p class="timing">{res["tiles_timed"]} attempts timed: median {s["median"]:.1f} s, max '
                   f'{s["max"]:.1f} s, total {s["sum"]:.0f} s'
                   + (f'; peak RSS median {m["median"]:.0f} MiB, max {m["max"]:.0f} MiB' if m else "")
                   + ' <span class="muted">(peak RSS is of the process that ran the tile, up to its end)</span></p>')
        out.append('<div class="figs">' + _img(pngs, "seconds.png", "seconds per tile")
                   + _img(pngs, "memory.png", "peak RSS per tile") + "</div>")
        out.append('<table class="slowest"><tr><th>slowest tiles</th><th>seconds</th><th>state</th></tr>'
                   + "".join(f'<tr><td>{_e(r["tile"])}</td><td class="num">{r["seconds"]:.1f}</td>'
                             f'<td>{_e(r["state"])}</td></tr>' for r in res["slowest"]) + "</table>")
    else:
        out.append('<p class="muted">No finished attempt yet.</p>')
    if res["running"]:
        out.append('<table class="running"><tr><th>running tile</th><th>for</th><th>host</th><th>heartbeat</th></tr>')
        for r in res["running"]:
            rs = "" if r["running_seconds"] is None else f'{r["running_seconds"]:.0f} s'
            out.append(f'<tr data-tile="{_e(r["tile"])}"><td>{_e(r["tile"])}</td><td class="num">{rs}</td>'
                       f'<td>{_e(r["host"] or "")}</td><td>{_e(r["heartbeat"] or "")}</td></tr>')
        out.append("</table>")
    out.append("</section>")

    # failures
    out.append('<section id="failures"><h2>Failures</h2>')
    if report["failures"]:
        out.append('<table class="failures"><tr><th>state</th><th>tiles</th><th>error</th><th>logs</th></tr>')
        for g in report["failures"]:
            logs = "<br>".join(
                (f'{_e(lg["tile"])}: <code>{_e(lg["log"])}</code>' if lg["log"]
                 else f'{_e(lg["tile"])}: local run on {_e(lg["host"] or "?")} (pid {_e(lg["pid"] or "?")}), '
                      f"no job log") for lg in g["logs"][:GROUP_LOGS_MAX])
            if len(g["logs"]) > GROUP_LOGS_MAX:
                logs += (f'<br><span class="muted more">… {len(g["logs"]) - GROUP_LOGS_MAX} more: '
                         "<code>report.json</code></span>")
            out.append(f'<tr class="failure" data-state="{_e(g["state"])}" data-tiles="{len(g["tiles"])}">'
                       f'<td>{_e(g["state"])}</td><td class="num">{len(g["tiles"])}<br>'
                       f'<span class="muted">{_e(" ".join(g["tiles"][:20]))}{" …" if len(g["tiles"]) > 20 else ""}'
                       f'</span></td><td class="error">{_e(g["error"])}'
                       + (f'<br><span class="muted">e.g. {_e(g["example"])}</span>' if g["example"] != g["error"]
                          else "") + f"</td><td>{logs}</td></tr>")
        out.append("</table><p class=\"muted\">Redo them with <code>ecocube run</code> (local) or "
                   "<code>ecocube slurm resubmit</code>.</p>")
    else:
        out.append('<p class="none">No failed, interrupted or stale tile.</p>')
    out.append("</section>")

    # inputs
    out.append('<section id="inputs"><h2>Inputs missing</h2>')
    if report["missing_inputs"]:
        out.append('<table class="missing"><tr><th>input</th><th>tiles</th></tr>'
                   + "".join(f'<tr><td><code>{_e(m["href"])}</code></td><td>{_e(" ".join(m["tiles"]))}</td></tr>'
                             for m in report["missing_inputs"]) + "</table>")
    else:
        out.append('<p class="none">No tile recorded a missing input (with <code>inputs.on_missing: fail</code> '
                   "a missing input fails its tile: see Failures).</p>")
    out.append("</section>")

    # gap-filling
    gf = report["gapfill"]
    out.append('<section id="gapfill"><h2>Gap-filling</h2>')
    if gf["values"]:
        out.append(f'<p>{gf["values"]:,} cube values (periods × bands × pixels) of {gf["tiles"]} finished tiles'
                   f'; {gf["outlier_replaced"]:,} observed values removed as outliers.</p><div class="figs">'
                   '<table class="phases"><tr><th>how the value was made</th><th>values</th><th>share</th></tr>')
        for name, _ in PHASES:
            p = gf["phases"][name]
            out.append(f'<tr><td>{_e(name)}</td><td class="num">{p["values"]:,}</td>'
                       f'<td class="num">{_pct(p["share"])}</td></tr>')
        out.append("</table>" + _img(pngs, "gapfill.png", "share of values per gap-fill phase") + "</div>")
    else:
        out.append('<p class="muted">No finished tile with gap-fill counts yet.</p>')
    out.append("</section>")

    # model
    mdl = report["model"]
    out.append('<section id="model"><h2>Model accuracy</h2>')
    if mdl:
        cv = mdl["cv"]
        out.append(f'<p>{_e(mdl["task"])}; {_e(cv.get("scheme", "spatial"))} cross-validation, '
                   f'{_e(cv.get("folds", "?"))} folds over {_e(cv.get("groups", "?"))} groups'
                   + (f', block size {float(cv["block_size"]):.0f}' if isinstance(cv.get("block_size"), (int, float))
                      else "") + ".</p>")
        base = mdl["baseline"]
        out.append('<table class="metrics"><tr><th>metric</th><th>model</th><th>baseline</th></tr>'
                   + "".join(f'<tr data-metric="{_e(k)}"><td>{_e(k)}</td><td class="num">{v:.3f}</td>'
                             f'<td class="num">{_num(base.get(k))}</td></tr>' for k, v in mdl["metrics"].items())
                   + "</table>")
        if mdl["comparison"]:
            out.append('<table class="comparison"><tr><th>model (same folds)</th><th>score</th></tr>'
                       + "".join(f"<tr><td>{_e(n)}</td><td class=\"num\">{v:.3f}</td></tr>"
                                 for n, v in mdl["comparison"].items() if isinstance(v, (int, float))) + "</table>")
        if mdl["per_class"]:
            out.append('<table class="per-class"><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>'
                       "<th>support</th></tr>" + "".join(
                           f'<tr><td>{_e(c["name"])}</td><td class="num">{c["precision"]:.3f}</td>'
                           f'<td class="num">{c["recall"]:.3f}</td><td class="num">{c["f1"]:.3f}</td>'
                           f'<td class="num">{c["support"]}</td></tr>' for c in mdl["per_class"]) + "</table>")
        for w in mdl["warnings"]:
            out.append(f'<p class="warn">warning: {_e(w)}</p>')
        out.append('<div class="figs">' + "".join(_img(pngs, f"model-{p}", p) for p in mdl["plots"]) + "</div>")
    else:
        out.append('<p class="muted">No training report (report.json) in the model folder.</p>')
    out.append("</section>")

    # catalog
    cat = report["catalog"]
    out.append('<section id="catalog"><h2>Catalog</h2>')
    if cat:
        out.append("<ul>" + "".join(f'<li><a class="catalog-link" href="{_e(href)}">{_e(name)}</a></li>'
                                    for name, href in cat.items()) + "</ul>")
    else:
        out.append('<p class="none">Not finalized yet: <code>ecocube finalize</code> publishes the mosaics and '
                   "the STAC catalog once every tile is done.</p>")
    out.append("</section></main></body></html>")
    return "\n".join(out)


# ---------------------------------------------------------------------------- I/O edge


def _train_report(cfg) -> tuple[dict | None, dict[str, bytes]]:
    folder = Path(cfg.model.path)
    path = folder / "report.json"
    if not path.is_file():
        return None, {}
    try:
        rep = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EcocubeError(f"training report {path} cannot be read: {exc}") from None
    plots = {}
    for name in sorted(folder.glob("*.png")):
        plots[name.name] = name.read_bytes()
    return rep, plots


def _catalog_links(store, out_dir: Path, href_base: str | None) -> dict[str, str] | None:
    from .store import LocalStore

    if not store.exists("catalog/catalog.json"):
        return None
    names = {"catalog page": "catalog/index.html", "map": "catalog/map.html", "catalog.json": "catalog/catalog.json"}
    links = {}
    for name, key in names.items():
        if key != "catalog/catalog.json" and not store.exists(key):
            continue
        if href_base:
            links[name] = f"{href_base.rstrip('/')}/{key.removeprefix('catalog/')}"
        elif isinstance(store, LocalStore):
            import os

            links[name] = os.path.relpath(store.root / key, out_dir.resolve())
        else:
            links[name] = store.url(key)
    return links


def _store_text(store) -> str:
    """Where the store is: its folder, or ``s3://bucket/prefix/``."""
    from .store import LocalStore

    if isinstance(store, LocalStore):
        return str(store.root)
    return store.url("catalog.json").removesuffix("catalog.json")


def write_report(cfg, out_dir: str | Path, *, store=None, regions_path: str | None = None,
                 region_field: str = "name", unit: str = "pixels", stale_after: float | None = None,
                 tiles=None) -> dict[str, Any]:
    """Write ``report.html``, ``report.json``, ``tiles.csv`` and the PNGs into ``out_dir``; returns the
    report dict with ``files``. Reads the run's records (one listing + a GET per record),
    its model's training report and whether a catalog is published."""
    from .atomic import write_bytes_atomic, write_text_atomic
    from .completeness import completeness_report, read_regions
    from .grid import TileGrid
    from .slurm import array_log_path
    from .status import DEFAULT_STALE_AFTER, check_done_outputs, summarize, tile_states
    from .store import store_for

    store = store_for(cfg, store)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tiles is None:
        tiles = TileGrid.from_config(cfg.grid).tiles_for_aoi(cfg.aoi)
    records = check_done_outputs(store, tile_states(cfg, store, tiles=tiles, light=True), cfg.output.layers)
    summary = summarize(records, stale_after=DEFAULT_STALE_AFTER if stale_after is None else stale_after)
    regions = read_regions(regions_path, cfg.grid.crs, name_field=region_field) if regions_path else []
    comp = completeness_report(records, tiles, regions=regions, unit=unit, states=summary.states)
    train_rep, plots = _train_report(cfg)
    report = build_report(records, tiles, summary, comp, run=cfg.name, store_url=_store_text(store),
                          train_report=train_rep, catalog=_catalog_links(store, out, cfg.finalize.stac.href_base),
                          log_path_for=lambda job, task: array_log_path(cfg, job, task))
    pngs = make_pngs(report, comp, regions)
    if report["model"] is not None:
        report["model"]["plots"] = {name: f"model-{name}" for name in plots}
        pngs.update({f"model-{name}": data for name, data in plots.items()})
    files = {}
    for name, data in pngs.items():
        files[name] = str(write_bytes_atomic(out / name, data))
    files["tiles.csv"] = str(write_text_atomic(out / "tiles.csv", tiles_csv(report["tiles"])))
    report["files"] = files
    write_text_atomic(out / "report.json", json.dumps(report, indent=2, sort_keys=True, default=str))
    page = write_text_atomic(out / "report.html", render_html(report, pngs))
    files["report.json"] = str(out / "report.json")
    files["report.html"] = str(page)
    return report
