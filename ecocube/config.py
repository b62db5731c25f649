"""The run configuration: one YAML file, validated into frozen models.

Unknown or mistyped keys, wrong types and missing files raise :class:`ConfigError`
naming the key (as a dotted path) and the allowed keys or values. Relative paths in
the file are resolved against the folder of the YAML file. This module never reads
``os.environ``.

Sections (all keys are listed by ``ecocube config example``):

``grid``        the tile grid (CRS, origin, pixel size, tile size in pixels)
``aoi``         which tiles to process (bbox, vector file or explicit tile ids)
``inputs``      periods, sources (URL templates or STAC), mask rules, missing-input policy
``gapfill``     TMWM / linear interpolation parameters
``features``    spectral indices to derive
``model``       the model bundle and the class legend
``processing``  block size and threads of tile processing
``output``      the store (local folder or ``s3://bucket/prefix``), layers, S3 options
``slurm``       resources of array tasks and of the finalize job
``finalize``    mosaics, COG options, STAC catalog
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import products
from .errors import ConfigError

HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


class _Model(BaseModel):
    """Base: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


# --------------------------------------------------------------------------- grid / aoi


class GridConfig(_Model):
    """A regular tile grid. ``origin`` is the upper-left corner (x, y) of tile (0, 0)."""

    crs: str = "EPSG:3035"
    origin: tuple[float, float] = (900000.0, 5500000.0)
    pixel_size: float = Field(30.0, gt=0)
    tile_size: int = Field(1000, gt=0, description="tile width and height in pixels")

    @field_validator("crs")
    @classmethod
    def _check_crs(cls, value: str) -> str:
        from rasterio.crs import CRS
        from rasterio.errors import CRSError

        try:
            CRS.from_user_input(value)
        except CRSError as exc:
            raise ValueError(f"not a CRS that PROJ knows: {value!r} ({exc})") from None
        return value


class AOIConfig(_Model):
    """Which tiles to process. Without any of these, every tile of ``tiles`` is needed."""

    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str | None = Field(None, description="CRS of bbox; default: the grid CRS")
    path: Path | None = Field(None, description="vector file (GeoPackage, GeoJSON) of the area")
    tiles: tuple[str, ...] | None = Field(None, description="explicit tile ids")

    @model_validator(mode="after")
    def _one_of(self) -> AOIConfig:
        given = [k for k in ("bbox", "path", "tiles") if getattr(self, k) is not None]
        if not given:
            raise ValueError("give one of bbox, path or tiles")
        if self.bbox is not None:
            x0, y0, x1, y1 = self.bbox
            if not (x1 > x0 and y1 > y0):
                raise ValueError(f"bbox must be (minx, miny, maxx, maxy) with max > min, got {self.bbox}")
        return self


# --------------------------------------------------------------------------- inputs


def _date_text(value: Any) -> Any:
    """YAML dates (``2018-08-04`` unquoted) and datetimes as ISO strings; anything else as is."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


#: a date in a config: an ISO string or an unquoted YAML date
DateText = Annotated[str, BeforeValidator(_date_text)]


class PeriodsConfig(_Model):
    """Regular periods: ``season_size`` periods per year (4 quarters, 12 months, 1 year).

    ``year_start`` (``MM-DD``, default ``01-01``) is the first day of each year; when it
    is not 1 January, year ``Y`` is the one that *ends* in ``Y`` (``year_start: 10-01``:
    2019 = 2018-10-01..2019-09-30, an agricultural or hydrological year).
    """

    start_year: int = Field(2018, ge=1900, le=2200)
    end_year: int = Field(2020, ge=1900, le=2200)
    season_size: Literal[1, 2, 3, 4, 6, 12] = 4
    year_start: str = Field("01-01", description="MM-DD: first day of each year (10-01: Oct-Sep years)")

    @field_validator("year_start", mode="before")
    @classmethod
    def _check_year_start(cls, value: Any) -> Any:
        if isinstance(value, date):  # an unquoted YAML date: take its month and day
            return f"{value.month:02d}-{value.day:02d}"
        text = str(value).strip()
        m = re.fullmatch(r"(\d{1,2})-(\d{1,2})", text)
        try:
            if m is None:
                raise ValueError
            month, day = int(m.group(1)), int(m.group(2))
            date(2001, month, day)
        except ValueError:
            raise ValueError(f"year_start must be a month and day MM-DD (e.g. 10-01), got {value!r}") from None
        if day > 28:
            raise ValueError(f"year_start day must be 1..28 so that every month has it, got {value!r}")
        return f"{month:02d}-{day:02d}"

    @model_validator(mode="after")
    def _order(self) -> PeriodsConfig:
        if self.end_year < self.start_year:
            raise ValueError(f"end_year {self.end_year} is before start_year {self.start_year}")
        return self

    @property
    def year_start_md(self) -> tuple[int, int]:
        month, day = self.year_start.split("-")
        return int(month), int(day)


class MaskConfig(_Model):
    """Turns a quality layer into valid/invalid observations.

    ``kind``: ``classes`` (the listed values are invalid, e.g. Sentinel-2 SCL 3,8,9,10),
    ``bits`` (a set bit among ``values`` is invalid, e.g. Landsat QA_PIXEL bits 1,3,4),
    ``threshold`` (a cloud probability above ``threshold`` is invalid).
    """

    href: str | None = Field(None, description="URL template of the quality layer")
    asset: str | None = Field(None, description="STAC asset key of the quality layer (stac_items sources)")
    kind: Literal["classes", "bits", "threshold"] = "classes"
    values: tuple[int, ...] = ()
    threshold: float | None = None
    band_index: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _needs(self) -> MaskConfig:
        if self.href is None and self.asset is None:
            raise ValueError("mask needs 'href' (URL template) or 'asset' (STAC asset key)")
        if self.kind in ("classes", "bits") and not self.values:
            raise ValueError(f"mask kind {self.kind!r} needs 'values'")
        if self.kind == "threshold" and self.threshold is None:
            raise ValueError("mask kind 'threshold' needs 'threshold'")
        return self


class StacApiConfig(_Model):
    """A STAC API searched per tile and period (``kind: stac-api``)."""

    url: str = Field(..., pattern=r"^https?://", description="the API's root (landing page) URL")
    collections: tuple[str, ...] = Field(..., min_length=1)
    query: dict[str, dict[str, Any]] | None = Field(
        None, description="STAC query extension: ['eo:cloud_cover<60'] or {'eo:cloud_cover': {'lt': 60}}")
    limit: int = Field(100, ge=1, le=10000, description="items per page")
    max_items: int | None = Field(None, ge=1, description="stop after this many items per tile and period")
    timeout: float = Field(30.0, gt=0, description="seconds per request")
    retries: int = Field(3, ge=0, le=20, description="retries of a failed request (5xx, 429, connection)")

    @field_validator("query", mode="before")
    @classmethod
    def _query_dict(cls, value: Any) -> Any:
        return parse_query(value)


_QUERY_OPS = (("<=", "lte"), (">=", "gte"), ("!=", "neq"), ("<", "lt"), (">", "gt"), ("=", "eq"))
_QUERY_KEYS = {"eq", "neq", "lt", "lte", "gt", "gte", "startsWith", "endsWith", "contains", "in"}


def parse_query(value: Any) -> Any:
    """STAC query-extension filters from ``'eo:cloud_cover<60'`` strings (or a list of them)
    as a mapping ``{'eo:cloud_cover': {'lt': 60}}``, numbers as numbers (a string "60"
    would be compared as text by the API). A mapping is checked and returned as is."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        for prop, cond in value.items():
            if not isinstance(cond, dict) or not cond or set(cond) - _QUERY_KEYS:
                raise ValueError(f"query {prop!r}: expected a mapping of operators among "
                                 f"{', '.join(sorted(_QUERY_KEYS))}, got {cond!r}")
        return value
    if not isinstance(value, list | tuple):
        raise ValueError(f"query must be strings like 'eo:cloud_cover<60' or a mapping, got {value!r}")
    out: dict[str, dict[str, Any]] = {}
    for text in value:
        m = re.fullmatch(r"\s*([A-Za-z0-9_:.\-]+)\s*(<=|>=|!=|<|>|=)\s*(.+?)\s*", str(text))
        if m is None:
            raise ValueError(f"query {text!r} is not 'property<op>value' with op among <, <=, >, >=, =, !=")
        prop, op, raw = m.groups()
        parsed = yaml.safe_load(raw)
        val = parsed if isinstance(parsed, int | float | bool) else raw.strip("'\"")
        out.setdefault(prop, {})[dict(_QUERY_OPS)[op]] = val
    return out


class ScenesConfig(_Model):
    """Which acquisitions of a tile and period are composited.

    ``select``: ``all``; ``least-cloudy`` (the ``n`` with least cloud); ``most-recent`` (the
    ``n`` latest whose cloud is at most ``max_cloud``). ``max_cloud`` (percent) also drops
    cloudier scenes under ``all`` and ``least-cloudy``. ``cloud_from``: ``item`` (the STAC
    item's ``eo:cloud_cover``, for the whole scene) or ``mask`` (measured on the tile from
    the source's mask: the percentage of the tile's pixels the mask marks invalid).
    """

    select: Literal["all", "least-cloudy", "most-recent"] = "all"
    n: int = Field(1, ge=1, description="scenes kept by least-cloudy and most-recent")
    max_cloud: float | None = Field(None, ge=0, le=100, description="percent")
    cloud_from: Literal["item", "mask"] = "item"


class SourceConfig(_Model):
    """One input product.

    ``href`` is a URL template (local path, ``https://``, ``s3://``) with fields among
    ``{band}``, ``{year}``, ``{season}`` (1-based), ``{quarter}``, ``{month}``, ``{date}``
    (YYYY-MM-DD), ``{yyyymmdd}``, ``{tile}``, ``{period}``. When several bands share one
    file, map them to band indexes with ``band_indexes``.

    ``kind``: ``composite`` — one raster per regular period (e.g. quarterly composites);
    ``acquisitions`` — irregular dates, which are composited into the regular periods with
    the ``composite`` percentile(s); the dates are listed (``dates``), found by a ``glob``
    (the date from ``date_pattern`` in the file name or from the tag ``date_tag``), or
    read from a STAC ItemCollection file (``stac_items``); ``stac-api`` — acquisitions
    searched in a STAC API (``stac_api``) per tile and period, bands from the items' assets.
    """

    name: str = Field(..., pattern=r"^[A-Za-z0-9_\-]+$")
    href: str | None = Field(None, description="URL template; optional with stac_items/stac-api (assets are used)")
    bands: tuple[str, ...] = Field(..., min_length=1)
    band_indexes: dict[str, int] | None = None
    assets: dict[str, str] | None = Field(None, description="band -> STAC asset key (default: the band name)")
    kind: Literal["composite", "acquisitions", "stac-api"] = "composite"
    dates: tuple[DateText, ...] | None = None
    glob: str | None = Field(None, description="local files of the acquisitions, e.g. data/S2L2A_*_10m.tif")
    date_pattern: str | None = Field(
        None, description="where the date is in a file name: {yyyymmdd}, {date}, {yyyy}{mm}{dd}, {yyyy}{doy}")
    date_tag: str | None = Field(None, description="raster tag holding the date, e.g. TIFFTAG_DATETIME")
    stac_items: Path | None = None
    stac_api: StacApiConfig | None = None
    scenes: ScenesConfig = ScenesConfig()
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    resampling: Literal["nearest", "bilinear", "cubic", "average", "mode"] = "bilinear"
    mask: MaskConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> SourceConfig:
        if self.band_indexes is not None:
            missing = [b for b in self.bands if b not in self.band_indexes]
            if missing:
                raise ValueError(f"band_indexes lacks bands {missing}")
        given = [k for k in ("dates", "glob", "stac_items") if getattr(self, k) is not None]
        if self.kind == "acquisitions":
            if len(given) != 1:
                raise ValueError("kind 'acquisitions' needs exactly one of 'dates', 'glob' or 'stac_items'"
                                 + (f", got {' and '.join(given)}" if given else ""))
        elif given:
            raise ValueError(f"{' and '.join(given)} belong to kind 'acquisitions', not {self.kind!r}")
        if self.kind == "stac-api":
            if self.stac_api is None:
                raise ValueError("kind 'stac-api' needs a 'stac_api' section (url, collections)")
        elif self.stac_api is not None:
            raise ValueError(f"'stac_api' belongs to kind 'stac-api', not {self.kind!r}")
        if self.glob is None and (self.date_pattern or self.date_tag):
            raise ValueError("date_pattern and date_tag need 'glob'")
        if self.date_pattern and self.date_tag:
            raise ValueError("give date_pattern or date_tag, not both")
        if self.glob is not None and "://" in self.glob:
            raise ValueError(f"glob finds local files only, got {self.glob!r}; list remote files with "
                             "'dates' and a URL template, or search a STAC API")
        from_assets = self.stac_items is not None or self.kind == "stac-api"
        if self.href is None and not from_assets and self.glob is None:
            raise ValueError("a source needs 'href' (URL template) unless it reads 'glob', 'stac_items' or a STAC API")
        if self.mask is not None and self.mask.href is None and not from_assets:
            raise ValueError("mask 'asset' needs 'stac_items' or kind 'stac-api'; give mask 'href' instead")
        if self.kind == "composite" and self.scenes != ScenesConfig():
            raise ValueError("'scenes' selects acquisitions; kind 'composite' has one raster per period")
        if self.scenes.select != "all" or self.scenes.max_cloud is not None:
            if self.scenes.cloud_from == "item" and not from_assets:
                raise ValueError("scenes.cloud_from 'item' needs STAC items (eo:cloud_cover); "
                                 "use cloud_from: mask")
            if self.scenes.cloud_from == "mask" and self.mask is None:
                raise ValueError("scenes.cloud_from 'mask' needs a 'mask'")
        return self


class CompositeConfig(_Model):
    """How irregular acquisitions become one value per period and band."""

    percentile: float = Field(50.0, ge=0, le=100, description="the value kept (P50 = median)")
    extra_percentiles: tuple[float, ...] = Field((), description="e.g. [25, 75], kept as extra bands")


class CovariateConfig(_Model):
    """A static layer (DEM, slope, climate grid) read into the tile grid once per tile and
    added to every year's features under its ``name``.

    ``href``: local path, ``https://`` or ``s3://`` (``{tile}`` allowed); any CRS, warped
    onto the tile grid with ``resampling``. ``derive: slope`` computes the slope in degrees
    from an elevation layer (in the grid's units; the grid CRS must be projected).
    """

    name: str = Field(..., pattern=r"^[A-Za-z0-9_\-]+$")
    href: str
    band_index: int = Field(1, ge=1)
    resampling: Literal["nearest", "bilinear", "cubic", "average", "mode"] = "bilinear"
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = Field(None, description="default: the file's own nodata")
    derive: Literal["value", "slope"] = "value"


class InputsConfig(_Model):
    periods: PeriodsConfig = PeriodsConfig()
    sources: tuple[SourceConfig, ...] = Field(..., min_length=1)
    composite: CompositeConfig = CompositeConfig()
    on_missing: Literal["fail", "record"] = "fail"
    on_empty: Literal["fail", "record"] = Field(
        "fail", description="a tile without any valid observation: fail it, or record it as 'empty' (no outputs)")
    on_misplaced: Literal["warn", "fail"] = Field(
        "warn", description="an input file whose footprint overlaps no part of a tile (another CRS than it says, "
                            "a wrong georeference): one warning per tile naming it, or fail the tile")
    unobserved_years: Literal["predict", "skip"] = Field(
        "predict", description="a pixel without any observation in a year: predict it from gap-filled values, "
                               "or leave it unpredicted (nodata) that year")
    retries: int = Field(3, ge=0, le=20)
    backoff_seconds: float = Field(0.5, ge=0)
    threads: int | None = Field(None, ge=1, description="read threads; default: the allocation")
    http_timeout: float = Field(30.0, gt=0, description="seconds before a stalled HTTP/S3 request fails")
    s3: S3Config | None = Field(None, description="S3 endpoint of the inputs; default: output.s3")
    covariates: tuple[CovariateConfig, ...] = Field((), description="static layers added to the features")

    @model_validator(mode="after")
    def _unique(self) -> InputsConfig:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        bands = [b for s in self.sources for b in s.bands]
        if len(set(bands)) != len(bands):
            raise ValueError(f"band names must be unique across sources, got {bands}")
        covs = [c.name for c in self.covariates]
        if len(set(covs)) != len(covs) or set(covs) & set(bands):
            raise ValueError(f"covariate names must be unique and differ from band names, got {covs}")
        return self

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(b for s in self.sources for b in s.bands)


# --------------------------------------------------------------------------- compute


class GapfillConfig(_Model):
    """Temporal moving-window median (TMWM) or linear interpolation (see gapfill.py)."""

    method: Literal["tmwm", "linear", "none"] = "tmwm"
    h_same: int = Field(2, ge=0, le=40, description="same-season windows: years t-h..t+h, h=1..h_same")
    h_neib: int = Field(1, ge=0, le=40, description="neighbouring-season windows, h=1..h_neib")
    h_annual: int = Field(2, ge=0, le=40, description="contiguous windows of +-h periods, h=1..h_annual")
    direction: Literal["both", "past", "future"] = "both"
    shared_flags: bool = False
    outlier_percentiles: tuple[float, float] | None = None


class FeaturesConfig(_Model):
    """Which features the model sees: ``bands`` (read bands, percentile bands such as
    ``B02_p25`` included; default all) per period, spectral ``indices``, the temporal
    ``statistics`` of each band and index over the year (features.py; empty: none), static
    ``covariates`` (names from ``inputs.covariates``; default all)."""

    indices: tuple[Literal["ndvi", "ndwi", "nbr", "ndmi", "evi", "savi"], ...] = ("ndvi",)
    statistics: tuple[Literal["min", "max", "mean", "std", "p10", "p25", "p50", "p75", "p90", "amplitude",
                              "argmax", "argmin"], ...] = (
        "min", "max", "mean", "std", "p10", "p25", "p50", "p75", "p90", "amplitude", "argmax", "argmin")
    bands: tuple[str, ...] | None = Field(None, description="bands used as features; default: every read band")
    covariates: tuple[str, ...] | None = Field(None, description="covariates used as features; default: all")


class PredictWhere(_Model):
    """Predict only where a covariate lies in [min, max] (e.g. elevation below 40 m)."""

    covariate: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> PredictWhere:
        if self.min is None and self.max is None:
            raise ValueError(f"predict_where {self.covariate!r} needs 'min' and/or 'max'")
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError(f"predict_where {self.covariate!r}: max {self.max} < min {self.min}")
        return self


class ClassDef(_Model):
    code: int = Field(..., ge=0, le=65534)
    name: str
    color: str = Field("#888888", description="#rrggbb")

    @field_validator("color")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not HEX_COLOR.match(value):
            raise ValueError(f"colour must be #rrggbb, got {value!r}")
        return value


class ChipConfig(_Model):
    """How a chip model (``model.kind: chip``) is run: see :mod:`ecocube.chips`."""

    size: int = Field(64, ge=4, le=4096, description="chip edge in pixels: chips are (n, channels, size, size)")
    overlap: int = Field(16, ge=0, description="pixels shared by neighbouring chips; crop keeps overlap // 2 "
                                               "from each edge (at least the model's receptive radius: no seams)")
    stitch: Literal["crop", "blend"] = Field(
        "crop", description="crop: each pixel from the chip where it is central (equal to predicting the whole "
                            "tile at once); blend: pyramid-weighted average of the overlapping chips")
    halo: int | None = Field(None, ge=0, description="pixels read around each block so that results do not "
                                                     "change at tile borders; default: overlap // 2 (crop) or "
                                                     "overlap (blend)")
    min_valid: float = Field(0.0, ge=0.0, le=1.0, description="a targeted chip is predicted only when at least "
                                                              "this fraction of its target pixels is observed "
                                                              "in the year (model.predict_where gives the target)")
    batch: int = Field(16, ge=1, le=4096, description="chips per onnxruntime call")

    @model_validator(mode="after")
    def _overlap(self) -> ChipConfig:
        if self.overlap >= self.size:
            raise ValueError(f"model.chip.overlap ({self.overlap}) must be smaller than model.chip.size ({self.size})")
        return self

    @property
    def halo_pixels(self) -> int:
        if self.halo is not None:
            return self.halo
        return self.overlap // 2 if self.stitch == "crop" else self.overlap


GridValue = int | float | str | None


class TuningConfig(_Model):
    """Per-learner hyperparameter tuning on the stacking folds (ecocube.tuning)."""

    method: Literal["none", "grid"] = Field(
        "none", description="grid: every base learner with a grid is tuned on the inner (stacking) folds of "
                            "each fit, never on a CV test fold; none: the fixed settings")
    grids: dict[str, dict[str, tuple[GridValue, ...]]] | None = Field(
        None, description="learner -> {parameter: [values]}; default: ecocube.tuning.DEFAULT_GRIDS for the base "
                          "learners (lgbm num_leaves x min_child_samples, rf/et max_features x min_samples_leaf, "
                          "mlp alpha, logreg C)")
    metric: Literal["log_loss", "f1_weighted"] = Field(
        "log_loss", description="how tuning and feature selection score candidates on the out-of-fold rows")

    @model_validator(mode="after")
    def _grids(self) -> TuningConfig:
        from .tuning import check_grids

        if self.grids is not None:
            if self.method == "none":
                raise ValueError("grids are set but method is 'none' (use method: grid)")
            try:
                check_grids(self.grids)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return self


class FeatureSelectionConfig(_Model):
    """Optional feature selection inside every fit (ecocube.selection)."""

    method: Literal["none", "importance", "rfe"] = Field(
        "none", description="importance: a random forest's importance ranking; rfe: recursive feature elimination; "
                            "the share kept is chosen on the inner (stacking) folds, scored by model.tuning.metric")
    keep: tuple[float, ...] = Field((1.0, 0.5, 0.25), min_length=1,
                                    description="shares of the features to choose among (each in (0, 1])")

    @model_validator(mode="after")
    def _keep(self) -> FeatureSelectionConfig:
        from .selection import check_keep

        try:
            check_keep(self.keep)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return self


class ModelConfig(_Model):
    """The model bundle used for prediction, and how ``ecocube train`` makes one."""

    path: Path = Field(Path("model"), description="model bundle folder (written by train)")
    kind: Literal["ensemble", "chip"] = Field(
        "ensemble", description="ensemble: per-pixel stacked trees (ecocube train); chip: an ONNX model on image "
                                "chips of the feature channels (ecocube.chipmodel bundle)")
    chip: ChipConfig | None = Field(None, description="chip size, overlap, stitching, halo, filter (kind: chip)")
    task: Literal["classification", "regression"] = Field(
        "classification", description="classification: class codes -> proba/class/uncertainty; regression: a "
                                      "continuous target -> mean/lower/upper (EnsembleRegressor, conformal intervals)")
    classes: tuple[ClassDef, ...] = Field((), description="the class legend (classification: at least 2)")
    interval_coverage: float = Field(0.9, gt=0, lt=1, description="regression: nominal coverage of lower..upper")
    target_unit: str | None = Field(None, description="regression: unit of the target (STAC raster:bands unit)")
    base_learners: tuple[Literal["rf", "lgbm", "et", "mlp", "logreg"], ...] = ("rf", "lgbm", "et")
    n_estimators: int = Field(200, ge=1)
    cv_folds: int = Field(5, ge=2)
    cv_block_size: float | Literal["auto"] = Field(
        "auto", description="spatial CV block edge in CRS units; auto: from the samples' extent and the range of "
                            "their labels' spatial autocorrelation (ecocube.evaluation.choose_block_size)")
    max_pixels_per_polygon: int = Field(100, ge=1)
    random_state: int = 0
    cv_groups: Literal["auto", "block", "polygon"] = Field(
        "auto", description="CV groups: auto = polygon id for polygons, spatial block for points")
    max_depth: int | None = Field(None, ge=1, description="tree depth limit; default: unlimited")
    learning_rate: float = Field(0.1, gt=0, description="LightGBM learning rate")
    class_weight: Literal["balanced", "none"] = Field(
        "balanced", description="balanced: weight classes inversely to their frequency; none: equal weights")
    meta: Literal["mean", "auto", "logistic", "greedy", "best"] = Field(
        "mean", description="how the base learners' probabilities are combined: mean = their average (the "
                            "default: ahead of auto on both real datasets, 3 fold draws, README 'Map quality'); "
                            "auto = mean or a logistic meta-learner, chosen on the stacking folds; logistic; "
                            "greedy = weighted mean by greedy ensemble selection; best = the best learner alone")
    nan_policy: Literal["drop", "impute"] = Field(
        "drop", description="training samples with unfilled gaps: drop them, or impute the feature median")
    date_field: str | None = Field(None, description="sample date/year column; default: 'year' or 'date' if present")
    predict_where: tuple[PredictWhere, ...] = Field(
        (), description="predict only where these covariates are in range; the rest is class nodata")
    tuning: TuningConfig = Field(TuningConfig(), description="per-learner hyperparameter tuning inside the CV")
    feature_selection: FeatureSelectionConfig = Field(
        FeatureSelectionConfig(), description="optional feature selection inside the CV (importance or RFE)")
    engine: Literal["stock", "auto"] = Field(
        "auto", description="inference engines: auto = train builds per-learner fast engines (kept when faster and "
                            "equal to stock within 1e-5) and prediction uses them after a check at load; "
                            "stock = every learner's own predict_proba")

    @model_validator(mode="after")
    def _codes(self) -> ModelConfig:
        if self.task == "classification" and len(self.classes) < 2:
            raise ValueError(f"model.classes: a classification needs at least 2 classes, got {len(self.classes)}")
        if self.task == "regression" and self.classes:
            raise ValueError("model.classes: a regression has no class legend (model.task: regression)")
        codes = [c.code for c in self.classes]
        if len(set(codes)) != len(codes):
            raise ValueError(f"class codes must be unique, got {codes}")
        if self.kind == "chip" and self.chip is None:
            object.__setattr__(self, "chip", ChipConfig())
        if self.kind != "chip" and self.chip is not None:
            raise ValueError("model.chip is set but model.kind is not 'chip'")
        if self.kind == "chip" and self.task == "regression":
            raise ValueError("model.task: regression needs model.kind: ensemble (a chip model classifies)")
        if self.tuning.grids:
            unused = [n for n in self.tuning.grids if n not in self.base_learners]
            if unused:
                raise ValueError(f"model.tuning.grids: {', '.join(unused)} not among model.base_learners "
                                 f"({', '.join(self.base_learners)})")
        if self.task == "regression" and (self.tuning.method != "none" or self.feature_selection.method != "none"):
            raise ValueError("model.tuning / model.feature_selection apply to classification only (model.task: "
                             "regression)")
        return self


class ProcessingConfig(_Model):
    block_size: int = Field(256, ge=16, le=8192, description="rows/cols per processing block")
    threads: int | None = Field(None, ge=1, description="default: the allocation")
    tmp_dir: Path | None = Field(None, description="local scratch for tile outputs before upload; default: $TMPDIR")
    compress: Literal["zstd", "deflate", "lzw"] = Field(
        "zstd", description="compression of tile GeoTIFFs (zstd at level 1: the fastest to write and verify)")
    publish_threads: int = Field(8, ge=1, le=64, description="parallel uploads/renames when publishing a tile")
    read_ahead: bool = Field(
        False, description="read the next block's input files on a background thread while the current block is "
                           "computed (holds one block's decoded inputs more: 2 bytes a value for uint16 inputs)")


class S3Config(_Model):
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    multipart_threshold_mb: float = Field(64, ge=5, description="files above this size upload in parts")
    multipart_chunksize_mb: float = Field(32, ge=5, description="part size of multipart uploads")
    max_concurrency: int = Field(4, ge=1, description="parallel parts per multipart upload")


#: every product, in planning order (the registry: :mod:`ecocube.products`)
LAYERS = products.default_layers("classification")  # the default; regression: default_layers("regression")
ProductName = Literal[products.NAMES]  # type: ignore[valid-type]  # built from the registry


class OutputConfig(_Model):
    store: str = Field("output", description="local folder or s3://bucket/prefix")
    layers: tuple[ProductName, ...] = LAYERS
    s3: S3Config = S3Config()
    fsync: bool = Field(True, description="local store: fsync files before renaming them into place")
    composite_scale: float = Field(0.0001, gt=0, description="composite int16 value = reflectance / scale")


class SlurmConfig(_Model):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = Field("02:00:00", pattern=r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")
    cpus_per_task: int = Field(2, ge=1)
    mem_per_cpu: str | None = Field("2G", pattern=r"^\d+[KMGT]?$")
    mem: str | None = Field(None, pattern=r"^\d+[KMGT]?$")
    tiles_per_task: int = Field(1, ge=1)
    throttle: int | None = Field(None, ge=1)
    signal_seconds: int = Field(120, ge=0)
    finalize_time: str = Field("04:00:00", pattern=r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")
    finalize_cpus: int = Field(2, ge=1)
    site_lines: tuple[str, ...] = Field((), description="lines run before ecocube (module load, activate)")
    log_dir: Path = Path("logs")
    extra_directives: tuple[str, ...] = ()
    finalize_partition: str | None = Field(None, description="partition of the finalize job; default: partition")
    finalize_mem: str | None = Field(None, pattern=r"^\d+[KMGT]?$", description="memory of the finalize job")
    templates: Path | None = Field(None, description="folder with array.sbatch/finalize.sbatch; default: packaged")
    command: str | None = Field(None, description="how jobs start ecocube; default: this Python's -m ecocube")
    max_tasks: int | None = Field(None, ge=1, description="at most this many array tasks per submission "
                                  "(besides the cluster's MaxJobCount/MaxSubmitJobs); tiles per task rise to fit")
    tile_minutes: float | None = Field(None, gt=0, description="estimated minutes per tile, for packing tiles "
                                       "into tasks of task_minutes and checking them against time")
    task_minutes: float | None = Field(None, gt=0, description="target length of an array task in minutes "
                                       "(with tile_minutes: tiles per task = task_minutes // tile_minutes)")
    poll_seconds: float = Field(10.0, ge=0, description="Slurm job states are reused for this long by status "
                                "(one batched squeue + sacct/scontrol call per interval)")
    log_format: Literal["text", "json"] = Field("text", description="what array tasks print per tile into their "
                                                 "logs: a text line, or one JSON line (run-task --log-format)")


class StacConfig(_Model):
    templates: Path | None = Field(None, description="folder of collection templates; default: packaged")
    catalog_id: str = "ecocube"
    title: str = "ecocube catalog"
    href_base: str | None = Field(None, description="public base URL of the published catalog")


class FinalizeConfig(_Model):
    compress: Literal["deflate", "zstd"] = "deflate"
    blocksize: int = Field(512, ge=128, le=4096, description="COG tile size in pixels (GDAL COG driver: >= 128)")
    reproject: str | None = Field(None, description="e.g. EPSG:4326; default: keep the grid CRS")
    stac: StacConfig = StacConfig()


class RunConfig(_Model):
    name: str = Field("ecocube-run", pattern=r"^[A-Za-z0-9_\-.]+$")
    grid: GridConfig = GridConfig()
    aoi: AOIConfig
    inputs: InputsConfig
    gapfill: GapfillConfig = GapfillConfig()
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig
    processing: ProcessingConfig = ProcessingConfig()
    output: OutputConfig = OutputConfig()
    slurm: SlurmConfig = SlurmConfig()
    finalize: FinalizeConfig = FinalizeConfig()
    #: folder of the YAML file; relative paths were resolved against it
    base_dir: Path | None = Field(None, exclude=True)

    @property
    def bands(self) -> tuple[str, ...]:
        return self.inputs.bands

    @model_validator(mode="after")
    def _task_layers(self) -> RunConfig:
        task = self.model.task
        if "layers" not in self.output.model_fields_set:  # the default follows the task
            object.__setattr__(self.output, "layers", products.default_layers(task))
        other = [n for n in self.output.layers if products.get(n).task not in (None, task)]
        if other:
            raise ValueError(f"output.layers {other} belong to another task than model.task {task!r}; "
                             f"choose among {', '.join(products.default_layers(task))}")
        return self

    @model_validator(mode="after")
    def _covariate_names(self) -> RunConfig:
        known = [c.name for c in self.inputs.covariates]
        used = list(self.features.covariates or ()) + [w.covariate for w in self.model.predict_where]
        unknown = [n for n in used if n not in known]
        if unknown:
            raise ValueError(f"covariates {unknown} are not in inputs.covariates ({', '.join(known) or 'none'})")
        if self.model.kind == "chip" and "layers" not in self.output.model_fields_set:
            # the default layers of a chip model: every product it makes (not the ensemble's uncertainty)
            object.__setattr__(self.output, "layers", tuple(x for x in self.output.layers if x != "uncertainty"))
        if self.model.kind == "chip" and "uncertainty" in self.output.layers:
            raise ValueError("output.layers: a chip model (model.kind: chip) makes proba and class, not uncertainty")
        if self.features.bands is not None:
            read = list(self.inputs.bands)
            for q in self.inputs.composite.extra_percentiles:
                label = f"p{q:g}".replace(".", "_")
                read += [f"{b}_{label}" for s in self.inputs.sources if s.kind != "composite" for b in s.bands]
            bad = [b for b in self.features.bands if b not in read]
            if bad or not self.features.bands:
                raise ValueError(f"features.bands {bad or '[]'}: choose among the bands read: {', '.join(read)}")
        return self


# --------------------------------------------------------------------------- loading


def _allowed_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The valid keys of the model that ``loc`` (minus its last part) points into."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        ann = fields[part].annotation
        current = _inner_model(ann)
        if current is None:
            return None
    fields = getattr(current, "model_fields", None)
    return sorted(k for k, f in fields.items() if not f.exclude) if fields else None


def _inner_model(ann: Any) -> type[BaseModel] | None:
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _short(value: Any, limit: int = 80) -> str:
    """A value for an error line: mappings and long lists are not dumped."""
    if isinstance(value, dict):
        return f"a mapping with keys {', '.join(map(str, list(value)[:8]))}" + (", …" if len(value) > 8 else "")
    if isinstance(value, list | tuple) and len(value) > 3:
        return f"a list of {len(value)} items"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_line(err: dict, model: type[BaseModel]) -> tuple[str, str]:
    loc = tuple(p for p in err["loc"])
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_at(model, loc)
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return dotted, f"unknown key{hint}"
    if err["type"] == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return dotted, f"{err['input']!r} is not allowed; allowed values: {expected}"
    if err["type"] == "missing":
        return dotted, "required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if isinstance(err.get("input"), dict | list | tuple) and err["type"] in ("value_error", "assertion_error"):
        return dotted, msg  # a rule across keys or items: the message says which
    return dotted, f"{msg} (got {_short(err.get('input'))})"


def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel] = RunConfig) -> str:
    """One line per problem; errors in the items of one list become one line with the
    first bad item and the count."""
    lines = [f"invalid configuration {source}:"]
    groups: dict[tuple, list[tuple[dict, int]]] = {}
    errors = exc.errors()
    locs = [tuple(e["loc"]) for e in errors]
    for err in errors:
        loc = tuple(err["loc"])
        if err["type"] == "too_short" and any(len(o) > len(loc) and o[:len(loc)] == loc for o in locs):
            continue  # a list whose bad items were dropped: the items' errors say why
        # the last list index in the location: items of one list with the same error group
        idx = max((i for i, p in enumerate(loc) if isinstance(p, int)), default=None)
        if idx is None:
            groups.setdefault((loc, err["type"], None), []).append((err, -1))
        else:
            key = (loc[:idx] + ("*",) + loc[idx + 1:], err["type"], err["msg"] if err["type"] != "string_type" else "")
            groups.setdefault(key, []).append((err, loc[idx]))
    for errs in groups.values():
        err = errs[0][0]
        dotted, text = _error_line(err, model)
        if len(errs) > 1:
            text = f"{text} — and the same in {len(errs) - 1} more item(s) of this list"
        lines.append(f"  {dotted}: {text}")
    return "\n".join(lines)


_PATH_KEYS = (("aoi", "path"), ("model", "path"), ("slurm", "log_dir"), ("finalize", "stac", "templates"),
              ("processing", "tmp_dir"), ("slurm", "templates"))


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    def _fix(value: Any) -> Any:
        if isinstance(value, str) and value and "://" not in value:
            p = Path(value).expanduser()
            return str(p if p.is_absolute() else (base / p))
        return value

    for keys in _PATH_KEYS:
        node = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict) and keys[-1] in node:
            node[keys[-1]] = _fix(node[keys[-1]])
    out = data.get("output")
    if isinstance(out, dict) and "store" in out:
        out["store"] = _fix(out["store"])
    for src in (data.get("inputs") or {}).get("sources") or []:
        if isinstance(src, dict):
            if isinstance(src.get("href"), str) and "://" not in src["href"]:
                src["href"] = _fix(src["href"])
            if "stac_items" in src:
                src["stac_items"] = _fix(src["stac_items"])
            if isinstance(src.get("glob"), str):
                src["glob"] = _fix(src["glob"])
            mask = src.get("mask")
            if isinstance(mask, dict) and isinstance(mask.get("href"), str) and "://" not in mask["href"]:
                mask["href"] = _fix(mask["href"])
    for cov in (data.get("inputs") or {}).get("covariates") or []:
        if isinstance(cov, dict) and isinstance(cov.get("href"), str):
            cov["href"] = _fix(cov["href"])


def config_from_dict(data: dict[str, Any], *, base_dir: Path | None = None, source: str = "<dict>") -> RunConfig:
    """Validate a mapping into a :class:`RunConfig` (paths resolved against ``base_dir``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration {source}: the top level must be a mapping, got {type(data).__name__}")
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    if base_dir is not None:
        _resolve_paths(data, Path(base_dir))
        data["base_dir"] = str(base_dir)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    _check_files(cfg, source)
    return cfg


def _check_files(cfg: RunConfig, source: str) -> None:
    missing = []
    if cfg.aoi.path is not None and not Path(cfg.aoi.path).exists():
        missing.append(f"aoi.path: no such file {cfg.aoi.path}")
    for i, src in enumerate(cfg.inputs.sources):
        if src.stac_items is not None and not Path(src.stac_items).exists():
            missing.append(f"inputs.sources.{i}.stac_items: no such file {src.stac_items}")
    if cfg.finalize.stac.templates is not None and not Path(cfg.finalize.stac.templates).is_dir():
        missing.append(f"finalize.stac.templates: no such folder {cfg.finalize.stac.templates}")
    if missing:
        raise ConfigError(f"invalid configuration {source}:\n  " + "\n  ".join(missing))


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a run configuration YAML file.

    ``overrides`` maps dotted keys to values (from ``--config KEY=VAL``), applied before
    validation, so a wrong override is reported like a wrong key in the file.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration {path} is not valid YAML: {exc}") from None
    except ValueError as exc:  # an unquoted date that is not one (2019-13-01)
        raise ConfigError(f"configuration {path}: an unquoted date in it is not a date: {exc}") from None
    if data is None:
        data = {}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return config_from_dict(data, base_dir=path.resolve().parent, source=str(path))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating mappings as needed."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VAL`` with VAL parsed as YAML (``processing.threads=4``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--config expects KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(raw)


def dump_config(cfg: RunConfig) -> str:
    """The configuration as YAML (paths as strings, defaults included)."""
    data = cfg.model_dump(mode="json", exclude={"base_dir"})
    return yaml.safe_dump(data, sort_keys=False)


EXAMPLE_YAML = """\
# ecocube run configuration. Relative paths are relative to this file.
name: landcover-2019
grid:
  crs: EPSG:3035          # tile grid CRS
  origin: [900000, 5500000]  # upper-left corner (x, y) of tile X0000_Y0000
  pixel_size: 30          # metres
  tile_size: 1000         # pixels per tile edge (30 km tiles)
aoi:
  bbox: [4000000, 3000000, 4060000, 3060000]  # minx, miny, maxx, maxy
  bbox_crs: EPSG:3035     # default: the grid CRS
inputs:
  periods: {start_year: 2018, end_year: 2020, season_size: 4}
  on_missing: fail        # fail | record
  sources:
    - name: s2
      kind: composite     # composite | acquisitions
      href: https://data.example.org/s2/{year}/Q{quarter}/{tile}/{band}.tif
      bands: [blue, green, red, nir, swir1, swir2]
      scale: 0.0001
      nodata: 0
gapfill:
  method: tmwm            # tmwm | linear | none
  h_same: 2
  h_neib: 1
  h_annual: 2
  direction: both         # both | past | future
features:
  indices: [ndvi, nbr]
model:
  path: model             # bundle folder written by `ecocube train`
  # kind: chip            # an ONNX chip model instead (ecocube.chipmodel bundle), run as:
  # chip: {size: 256, overlap: 32, stitch: crop, min_valid: 0.8}   # halo: overlap / 2 by default
  classes:
    - {code: 1, name: cropland, color: "#f2d16b"}
    - {code: 2, name: forest, color: "#1a7f37"}
    - {code: 3, name: grassland, color: "#9ad36a"}
  # tuning: {method: grid}  # per-learner grids chosen on the inner folds of every fit (x5-10 training time)
  # feature_selection: {method: rfe, keep: [1.0, 0.5, 0.25]}   # or importance; share chosen on inner folds
processing:
  block_size: 256
output:
  store: s3://my-bucket/landcover-2019   # or a local folder
  s3: {endpoint_url: null, region: eu-central-1}
slurm:
  partition: compute
  time: "02:00:00"
  cpus_per_task: 4
  mem_per_cpu: 4G
  tiles_per_task: 2
  throttle: 100
  site_lines:
    - module load python/3.11
    - source $HOME/venvs/ecocube/bin/activate
finalize:
  compress: deflate
  reproject: null         # e.g. EPSG:4326
"""


EXAMPLE_ACQUISITIONS_YAML = """\
# ecocube run configuration: Sentinel-2 L2A scenes found on disk by a glob.
# Relative paths are relative to this file.
name: crops-2019
grid:
  crs: EPSG:32631           # tile grid CRS (here the scenes' own UTM zone)
  origin: [574680, 5622440] # upper-left corner (x, y) of tile X0000_Y0000
  pixel_size: 10            # metres
  tile_size: 32             # pixels per tile edge
aoi:
  bbox: [574680, 5621800, 575320, 5622440]  # minx, miny, maxx, maxy in the grid CRS
inputs:
  periods:
    start_year: 2018
    end_year: 2019
    season_size: 4          # 4 quarters per year
    year_start: 01-01       # MM-DD; 10-01 makes 2019 = 2018-10-01..2019-09-30
  on_missing: fail          # fail | record: a missing file fails the tile or is recorded
  composite:
    percentile: 50          # the value kept per period (median of the valid scenes)
    extra_percentiles: [25, 75]  # kept as bands B02_p25 ... and usable as features
  sources:
    - name: s2
      kind: acquisitions    # irregular dates, composited into the periods
      glob: data/S2L2A_*_10m.tif       # one file per date; no dates to list
      date_pattern: S2L2A_{yyyymmdd}_10m.tif  # or {date}, {yyyy}{mm}{dd}, {yyyy}{doy};
                            # date_tag: TIFFTAG_DATETIME reads the date from a tag instead
      bands: [B02, B03, B04, B08]
      band_indexes: {B02: 1, B03: 2, B04: 3, B08: 4}  # all bands in one file
      scale: 0.0001         # reflectance = DN * scale + offset
      nodata: 0
      resampling: nearest
      mask:                 # the scene classification layer of the same date
        href: data/S2L2A_{yyyymmdd}_SCL.tif
        kind: classes       # classes | bits | threshold
        values: [3, 8, 9, 10]  # SCL cloud shadow, cloud medium/high, cirrus: invalid
      scenes:
        select: all         # all | least-cloudy | most-recent
        n: 1                # scenes kept by least-cloudy / most-recent
        max_cloud: null     # percent; drops cloudier scenes
        cloud_from: mask    # mask: measured on the tile | item: eo:cloud_cover (STAC)
  covariates:               # static layers, read once per tile, added to every year's features
    - name: elevation
      href: data/dem.tif    # any CRS: warped onto the tile grid
      resampling: bilinear
    - name: slope
      href: data/dem.tif
      derive: slope         # degrees, from the DEM
gapfill:
  method: tmwm              # tmwm | linear | none
  h_same: 2
  h_neib: 1
  h_annual: 2
features:
  indices: [ndvi, ndwi]
  bands: [B02, B03, B04, B08, B04_p25, B08_p75]  # per-period features; default: every band read
  covariates: [elevation, slope]  # default: every covariate
model:
  path: model               # bundle folder written by `ecocube train`
  classes:
    - {code: 11, name: cropland, color: "#f2d16b"}
    - {code: 13, name: grassland, color: "#9ad36a"}
    - {code: 99, name: other, color: "#888888"}
  predict_where:            # only these pixels are predicted (the rest: class nodata)
    - {covariate: elevation, max: 200}
output:
  store: output             # local folder or s3://bucket/prefix
"""

EXAMPLE_STAC_API_YAML = """\
# ecocube run configuration: Sentinel-2 L2A scenes searched in a STAC API per tile and period.
name: crops-2019-stac
grid:
  crs: EPSG:32631
  origin: [574680, 5622440]
  pixel_size: 10
  tile_size: 32
aoi:
  bbox: [574680, 5621800, 575320, 5622440]
inputs:
  periods: {start_year: 2018, end_year: 2019, season_size: 4, year_start: 01-01}
  on_missing: fail
  sources:
    - name: s2
      kind: stac-api        # searched per tile (its bbox) and period (its datetime)
      stac_api:
        url: https://earth-search.aws.element84.com/v1  # the API's landing page
        collections: [sentinel-2-l2a]
        query: ["eo:cloud_cover<60"]  # STAC query extension (or a mapping {eo:cloud_cover: {lt: 60}})
        limit: 100          # items per page; every page is read
        max_items: null     # at most this many items per tile and period
        timeout: 30         # seconds per request
        retries: 3          # of 5xx/429/connection failures, with backoff
      bands: [blue, green, red, nir]
      assets: {blue: blue, green: green, red: red, nir: nir}  # band -> asset key
      scale: 0.0001
      offset: -0.1          # earth-search L2A processing baseline >= 04.00
      nodata: 0
      mask:
        asset: scl          # the mask's asset key
        kind: classes
        values: [3, 8, 9, 10]
      scenes:
        select: least-cloudy  # all | least-cloudy | most-recent
        n: 6                # keep the 6 least cloudy scenes of each tile and period
        max_cloud: 80       # percent
        cloud_from: item    # item: eo:cloud_cover | mask: measured on the tile
features:
  indices: [ndvi]
model:
  path: model
  classes:
    - {code: 1, name: cropland, color: "#f2d16b"}
    - {code: 2, name: other, color: "#888888"}
output:
  store: output
"""

#: ``ecocube config example --kind KIND``
EXAMPLES = {
    "composite": EXAMPLE_YAML,
    "acquisitions": EXAMPLE_ACQUISITIONS_YAML,
    "stac-api": EXAMPLE_STAC_API_YAML,
}
