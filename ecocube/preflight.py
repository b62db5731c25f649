"""Pre-flight: everything that would fail every tile later, checked before anything runs.

``ecocube config check`` and ``ecocube slurm submit`` (before anything is submitted) call
:func:`preflight`. It collects **every** problem instead of stopping at the first, so a
campaign is fixed in one round:

- the area of interest holds tiles of the grid;
- URL templates use known fields only (``{quartr}`` is a typo, not a field);
- acquisition dates exist (``2020-02-30`` does not) and fall inside the periods (those
  outside are reported as warnings: they would be dropped);
- the model bundle exists, loads, and was trained on the features and classes this
  configuration produces (only when a prediction product is written);
- a sample of the input files opens (``inputs=False`` skips it: no network);
- the store is reachable and writable (a probe object is written, read back, deleted);
- the scratch folder has room for one tile's output files (written there, compressed, before
  publishing; the stacked cube layers at least, uncompressed, else a problem).

The result is a :class:`PreflightReport`; :meth:`PreflightReport.raise_for_problems`
raises one :class:`ConfigError` (exit code 2) listing the problems one per line.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import products
from .errors import ConfigError, EcocubeError

log = logging.getLogger(__name__)

PROBE_PREFIX = "_ecocube_preflight/"


def format_bytes(n: float) -> str:
    """``512 B``, ``3.4 MiB``, ``1.2 GiB``: never "0.0 GiB" for a small non-zero amount."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


@dataclass
class PreflightReport:
    """What :func:`preflight` found: ``problems`` fail the run, ``warnings`` do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    n_tiles: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self, source: str) -> None:
        if self.problems:
            raise ConfigError(f"pre-flight of {source} found {len(self.problems)} problem(s):\n  "
                              + "\n  ".join(self.problems))


def _output_bytes_per_pixel(cfg) -> int:
    p = cfg.inputs.periods
    n_years = p.end_year - p.start_year + 1
    n_time = n_years * p.season_size
    n_band = len(cfg.bands)
    n_cls = len(cfg.model.classes)

    def per_pixel(prod: products.Product) -> int:
        return (prod.itemsize * prod.band_count(n_cls) * (n_years if prod.cadence == "year" else n_time)
                * (n_band if prod.per_band else 1))

    return sum(per_pixel(products.get(layer)) for layer in cfg.output.layers)


def estimate_output_bytes(cfg, n_tiles: int) -> int:
    """Uncompressed size (bytes) of the per-tile outputs of ``n_tiles`` tiles (an upper bound)."""
    return n_tiles * cfg.grid.tile_size**2 * _output_bytes_per_pixel(cfg)


def staged_bytes_per_tile(cfg) -> int:
    """Scratch bytes one tile's cube layers may take there, uncompressed (an upper bound: they are
    written zstd-compressed into one stacked file per product and band, see ``TileWriter``)."""
    p = cfg.inputs.periods
    n_time = (p.end_year - p.start_year + 1) * p.season_size
    n_band = len(_band_names(cfg))
    staged = [products.get(layer) for layer in cfg.output.layers if products.get(layer).staged]
    per = sum(prod.itemsize * (n_band if prod.per_band else 1) for prod in staged)
    return per * n_time * cfg.grid.tile_size ** 2


def _band_names(cfg) -> tuple[str, ...]:
    from .read import band_names

    return band_names(cfg.inputs)


def scratch_folder(cfg, store) -> Path:
    """Where a tile's outputs are written before publishing (see ``tile._work_dir``)."""
    if cfg.processing.tmp_dir is not None:
        return Path(cfg.processing.tmp_dir)
    if getattr(store, "local", False):
        return Path(store.tmp_root)
    return Path(getattr(store, "tmp_dir", None) or tempfile.gettempdir())


def free_bytes(folder: Path) -> tuple[Path, int]:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent)."""
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    return probe, st.f_bavail * st.f_frsize


# --------------------------------------------------------------------------- the checks


def _check_tiles(cfg, report: PreflightReport) -> list:
    from .grid import TileGrid

    try:
        tiles = TileGrid.from_config(cfg.grid).tiles_for_aoi(cfg.aoi)
    except EcocubeError as exc:
        report.problems.append(f"aoi: {exc}")
        return []
    if not tiles:
        report.problems.append(f"aoi: the area of interest holds no tile of the grid ({_aoi_text(cfg.aoi)})")
    report.n_tiles = len(tiles)
    return tiles


def _aoi_text(aoi) -> str:
    if aoi.bbox is not None:
        return f"bbox {list(aoi.bbox)} in {aoi.bbox_crs or 'the grid CRS'}"
    if aoi.path is not None:
        return f"path {aoi.path}"
    return f"tiles {list(aoi.tiles or ())}"


def _check_sources(cfg, report: PreflightReport) -> bool:
    """Templates and dates of every source; False if the catalog cannot be built."""
    from .sources import check_source_templates, dates_outside_periods, parse_day, periods_from_config

    periods = periods_from_config(cfg.inputs.periods)
    fine = True
    for src in cfg.inputs.sources:
        try:
            check_source_templates(src)
        except ConfigError as exc:
            report.problems.append(str(exc))
            fine = False
        bad_dates = []
        for i, text in enumerate(src.dates or ()):
            try:
                parse_day(text)
            except ConfigError as exc:
                bad_dates.append(f"inputs.sources[{src.name}].dates[{i}]: {exc}")
        if bad_dates:  # one line: the first bad date, and how many there are
            more = f" — and {len(bad_dates) - 1} more of the {len(src.dates)} dates" if len(bad_dates) > 1 else ""
            report.problems.append(bad_dates[0] + more)
            fine = False
            continue
        try:
            outside = dates_outside_periods(src, periods)
        except ConfigError as exc:
            report.problems.append(f"inputs.sources[{src.name}]: {exc}")
            fine = False
            continue
        if outside:
            from .sources import dropped_dates_message

            report.warnings.append(dropped_dates_message(src, outside, periods))
    return fine


def _describe_sources(cfg, report: PreflightReport) -> bool:
    """What each source finds (glob matches, item files, the STAC API reachable with its
    collections) as facts; False with a problem when that fails."""
    from .scenes import describe_sources

    try:
        report.facts.extend(describe_sources(cfg.inputs))
    except ConfigError as exc:
        report.problems.append(str(exc))
        return False
    return True


def _check_model(cfg, report: PreflightReport) -> None:
    if not any(layer in products.MODEL_PRODUCTS for layer in cfg.output.layers):
        return
    from .bundle import load_bundle
    from .covariates import run_feature_names
    from .features import feature_names

    try:
        expected = run_feature_names(cfg, _band_names(cfg), feature_names)
    except EcocubeError as exc:
        report.problems.append(f"features.indices: {exc}")
        return
    import warnings

    from .engines import EngineWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EngineWarning)
            if cfg.model.kind == "chip":
                from .chipmodel import load_chip_bundle

                bundle = load_chip_bundle(cfg.model.path, expected_features=expected)
            else:
                bundle = load_bundle(cfg.model.path, expected_features=expected, engine=cfg.model.engine)
    except EcocubeError as exc:
        report.problems.append(f"model.path: {exc}")
        return
    for w in caught:  # an engine that fails its check at load: the run works, on stock, slower
        if issubclass(w.category, EngineWarning):
            report.warnings.append(f"model.engine: {w.message}")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    task = getattr(bundle, "task", "classification")  # a chip bundle classifies
    if task != cfg.model.task:
        report.problems.append(f"model.task: the bundle {cfg.model.path} is a {task} model, the configuration "
                               f"says {cfg.model.task}")
        return
    if task == "regression":
        report.facts.append(f"model {cfg.model.path}: {len(expected)} features, regression with "
                            f"{bundle.metadata.get('interval_coverage', 0.9):.0%} intervals")
        return
    configured = [int(c.code) for c in cfg.model.classes]
    trained = [int(c) for c in bundle.classes]
    if sorted(configured) != sorted(trained):
        report.problems.append(f"model.classes: the bundle {cfg.model.path} predicts classes {trained}, "
                               f"the configuration lists {configured}")
    report.facts.append(f"model {cfg.model.path}: {len(expected)} features, classes {trained}")


def _sample_refs(cfg, tiles, n: int) -> tuple[list[tuple[str, int, str]], int]:
    """Up to ``n`` distinct input files (href, band index, what) spread over the catalog of
    the first and the last tile; and how many files those catalogs hold."""
    from .read import mask_cover
    from .scenes import tile_catalog  # STAC API sources: searched for these tiles (and cached)

    refs: dict[str, tuple[str, int, str]] = {}
    for tile in {t.id: t for t in (tiles[0], tiles[-1])}.values():
        _, cats = tile_catalog(cfg, tile, measure=mask_cover)
        for cat in cats:
            for index in sorted(cat.observations):
                for obs in cat.observations[index]:
                    for band, (href, bidx) in obs.bands.items():
                        refs.setdefault(href, (href, bidx, f"tile {tile.id}, {obs.period.id}, {band}"))
                    if obs.mask is not None:
                        href, bidx = obs.mask
                        refs.setdefault(href, (href, bidx, f"tile {tile.id}, {obs.period.id}, mask"))
    every = list(refs.values())
    if len(every) <= n:
        return every, len(every)
    step = (len(every) - 1) / (n - 1) if n > 1 else 0
    picks = sorted({round(i * step) for i in range(n)})
    return [every[i] for i in picks], len(every)


def _open_one(ref, env_factory) -> str | None:
    import rasterio

    from .read import gdal_path

    href, bidx, what = ref
    try:
        with env_factory(), rasterio.open(gdal_path(href)) as src:
            if bidx > src.count:
                return f"inputs: {href} ({what}) has {src.count} band(s), band {bidx} is configured"
            src.read(bidx, window=((0, 1), (0, 1)))
    except Exception as exc:  # noqa: BLE001 - every failure is a problem to list
        return f"inputs: cannot open {href} ({what}): {exc}"
    return None


def _check_inputs(cfg, tiles, report: PreflightReport, sample: int) -> None:
    from .store import gdal_env

    try:
        refs, total = _sample_refs(cfg, tiles, sample)
    except EcocubeError as exc:
        report.problems.append(f"inputs: {exc}")
        return
    if not refs:
        report.problems.append("inputs: the catalog lists no input file for the first tile "
                               "(no acquisition date inside the periods?)")
        return
    s3 = cfg.inputs.s3 if cfg.inputs.s3 is not None else cfg.output.s3
    timeout = str(max(1, round(cfg.inputs.http_timeout)))

    def env_factory():
        return gdal_env(threads=1, s3_endpoint=s3.endpoint_url, s3_region=s3.region, s3_profile=s3.profile,
                        extra={"GDAL_HTTP_TIMEOUT": timeout, "GDAL_HTTP_MAX_RETRY": "0"})

    with ThreadPoolExecutor(max_workers=min(8, len(refs))) as pool:
        found = [p for p in pool.map(lambda r: _open_one(r, env_factory), refs) if p]
    report.problems.extend(found)
    report.facts.append(f"inputs: opened {len(refs) - len(found)} of {len(refs)} sampled files "
                        f"({total} in the catalogs of the first and last tile)")


def _check_store(cfg, report: PreflightReport):
    from .store import open_store

    try:
        store = open_store(cfg.output, tmp_dir=cfg.processing.tmp_dir)
    except EcocubeError as exc:
        report.problems.append(f"output.store: {exc}")
        return None
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    payload = b"ecocube pre-flight probe\n"
    try:
        store.put_bytes(payload, key)
        try:
            back = store.get_bytes(key)
        finally:
            store.delete(key)
        if back != payload:
            report.problems.append(f"output.store {cfg.output.store}: a probe object read back differs")
            return store
    except (EcocubeError, OSError) as exc:
        report.problems.append(f"output.store {cfg.output.store}: not writable: {exc}")
        return None
    if getattr(store, "local", False):  # the probe's folder is not left behind
        import contextlib

        with contextlib.suppress(OSError):
            (Path(store.root) / PROBE_PREFIX.rstrip("/")).rmdir()
    report.facts.append(f"store {cfg.output.store}: writable")
    return store


def _check_scratch(cfg, store, report: PreflightReport) -> None:
    needed = staged_bytes_per_tile(cfg)
    outputs = estimate_output_bytes(cfg, 1)
    folder = scratch_folder(cfg, store)
    try:
        where, free = free_bytes(folder)
    except OSError as exc:
        report.problems.append(f"processing.tmp_dir {folder}: cannot check free space: {exc}")
        return
    on = "" if where == folder.absolute() else f" on {where}"
    if needed and free < needed:
        report.problems.append(
            f"processing.tmp_dir {folder}: a tile writes up to {format_bytes(needed)} of cube layers there "
            f"(uncompressed, before publishing), only "
            f"{format_bytes(free)} are free{on} (set processing.tmp_dir to a larger local disk)")
    elif free < outputs:  # the cube layers are among the outputs (one stacked file per product and band)
        report.warnings.append(
            f"processing.tmp_dir {folder}: a tile writes up to {format_bytes(outputs)} of outputs there "
            f"(uncompressed; cube layers {format_bytes(needed)}), {format_bytes(free)} are free{on}")
    report.facts.append(f"scratch {folder}: a tile's outputs up to {format_bytes(outputs)} uncompressed "
                        f"(cube layers {format_bytes(needed)}), {format_bytes(free)} free (on this machine)")


def preflight(cfg, *, inputs: bool = True, store: bool = True, sample: int = 6) -> PreflightReport:
    """Run every check on a loaded configuration; see the module docstring."""
    report = PreflightReport()
    tiles = _check_tiles(cfg, report)
    sources_ok = _check_sources(cfg, report)
    if inputs and sources_ok:
        sources_ok = _describe_sources(cfg, report)
    _check_model(cfg, report)
    if inputs and tiles and sources_ok:
        _check_inputs(cfg, tiles, report, sample)
    if inputs and tiles and cfg.inputs.covariates:
        from .covariates import check_covariates

        report.problems.extend(check_covariates(cfg, list({t.id: t for t in (tiles[0], tiles[-1])}.values())))
    st = _check_store(cfg, report) if store else None
    if st is not None:
        _check_scratch(cfg, st, report)
    return report
