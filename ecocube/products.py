"""The one registry of output products: what each layer ecocube writes *is*.

A :class:`Product` says everything the rest of the package needs to know about one
product, and every module reads it from here instead of spelling it out:

- ``config`` validates ``output.layers`` against :data:`NAMES`;
- ``tile`` plans a tile's GeoTIFFs (:func:`ecocube.tile.plan_outputs`: data type, nodata,
  scale, band count and descriptions, tags), writes the per-period products stacked (one
  file per band) and removes stale objects under every product's prefix;
- ``predict`` takes its nodata codes from here;
- ``mosaic`` matches tile keys, names collections and assets, picks the overview and
  reprojection resampling, the colour table and the thumbnail style;
- ``stac`` takes units, asset roles and titles, the classification legend, the template
  file, the period length and the asset order;
- ``preflight`` estimates output and scratch sizes; the CLI offers :data:`NAMES` as choices.

Fields (all plain data, no I/O):

``name``
    config and store name: a tile's outputs are ``{name}/{tile}/{period}/{layer}.tif`` for
    per-year products and ``{name}/{tile}/{layer}.tif`` for per-period ones (*stacked*: one
    file per tile and layer, one raster band per period; see :func:`tile_key`).
``source``
    ``"model"`` (needs a model bundle; computed from the features of one year) or
    ``"cube"`` (computed from the gap-filled cube, per input period; written block by
    block while the tile runs, see :class:`ecocube.tile.TileWriter`).
``cadence``
    ``"year"`` (one output per year, period id ``YYYY-01-01``) or ``"period"`` (one per
    input period, all of a tile's periods *stacked* in one multi-band file: raster band
    ``i`` is the ``i``-th period, its description the period id; the record lists the
    periods, see :func:`tile_key`). The published mosaics, VRTs and STAC items stay one
    per period either way.
``per_band``
    one output per input band (layer = band name), else one output whose layer is ``name``.
``per_class``
    one raster band per model class (else one band).
``dtype``, ``nodata``, ``scale``, ``offset``
    the stored encoding: value = stored × scale + offset; ``scale=None`` stores no scale.
    ``scale_option`` names the ``output`` config field that overrides ``scale``.
``kind``
    ``"categorical"`` (codes with a legend: nearest resampling, no predictor where it
    does not pay), ``"discrete"`` (tallies whose values must stay exact: nearest) or
    ``"continuous"`` (measurements: averaged overviews, bilinear reprojection).
``legend``
    where the colour table / classification legend comes from: ``"classes"`` (the model's
    classes, written as the COG colour table too), ``"flags"`` (the gap-fill flag legend)
    or ``None`` (a colour ramp).
``unit``
    the STAC ``raster:bands`` unit of the *scaled* value, or ``None``.
``roles``
    STAC asset roles.
``collection``, ``asset``
    ``str.format`` templates (fields ``name`` and ``layer``) of the catalog collection id
    and the asset key; products sharing a collection become assets of one item.
``template``
    the STAC template file (``stac/{template}.yaml``) of the collection.
``title``
    asset title template (field ``layer``); ``description`` says what the values mean.
``band_description``
    GeoTIFF band description template (fields ``layer``, ``class_name``).
``class_tag``
    the tile GeoTIFFs carry the model's class legend (tag ``classes``: code → name).
``tags``
    fixed GeoTIFF tags of every tile output (after ``classes`` and, for per-band
    products, ``band``).
``thumbnail``
    ``"every"``, ``"first-band"`` (only the first band's layer, e.g. one flags thumbnail per
    item) or ``"none"``; ``ramp`` / ``ramp_label`` / ``ramp_range`` / ``reduce`` style the
    colour-bar thumbnails of products without a legend (``ramp_range=None``: the 2–98th
    percentile; ``reduce="max"``: the maximum over the raster bands).
``asset_order``
    sort key of the asset within its item (lower first).
``predictor``
    whether the mosaic COG uses a compression predictor (class codes do not vary smoothly).

``task``
    the ``model.task`` a model product belongs to (``"classification"``: proba, class,
    uncertainty; ``"regression"``: mean, lower, upper); ``None`` for cube products. A run's
    default ``output.layers`` are the cube products and those of its task.

Adding a product is one entry in :data:`PRODUCTS` below (the regression ``mean``,
``lower`` and ``upper`` are three such entries), plus the values themselves: the compute
that makes them (an estimator, a stage) and one line in the name -> array mapping of the
tile (the ``values`` of ``ecocube.tile._TileRun.predict`` for model products,
``ecocube.tile._stage_cube`` for cube products); optionally a ``stac/{template}.yaml`` with
its title and description. Plans, keys, config validation, CLI choices, mosaics, catalog assets and size estimates follow from the entry. A vector product (e.g. parcels)
would add a ``format`` field here, with its own writer; none exists yet.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = [
    "MODEL_PRODUCTS",
    "NAMES",
    "PRODUCTS",
    "Product",
    "default_layers",
    "get",
    "names",
    "parse_tile_key",
    "tile_key",
    "tile_key_pattern",
]


@dataclass(frozen=True)
class Product:
    """One output product (see the module docstring for every field)."""

    name: str
    source: Literal["model", "cube"]
    cadence: Literal["year", "period"]
    dtype: str
    nodata: float | None
    kind: Literal["categorical", "discrete", "continuous"]
    collection: str
    asset: str
    template: str
    title: str
    band_description: str
    description: str
    per_band: bool = False
    per_class: bool = False
    scale: float | None = None
    offset: float = 0.0
    scale_option: str | None = None
    legend: Literal["classes", "flags"] | None = None
    unit: str | None = None
    roles: tuple[str, ...] = ("data",)
    class_tag: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    thumbnail: Literal["every", "first-band", "none"] = "every"
    ramp: str = "gray"
    ramp_label: str = "value"
    ramp_range: tuple[float, float] | None = None
    reduce: Literal["max"] | None = None
    asset_order: int = 0
    predictor: bool = True
    task: Literal["classification", "regression"] | None = None

    def __post_init__(self):
        allowed = {"source": ("model", "cube"), "cadence": ("year", "period"),
                   "kind": ("categorical", "discrete", "continuous"), "legend": ("classes", "flags", None),
                   "thumbnail": ("every", "first-band", "none"), "reduce": ("max", None),
                   "task": ("classification", "regression", None)}
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise ValueError(f"product {self.name!r}: {name} must be one of {values}, "
                                 f"got {getattr(self, name)!r}")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"product name {self.name!r}: lower-case letters, digits and '_' only")
        if self.per_band and "{layer}" not in self.collection + self.asset:
            raise ValueError(f"product {self.name!r} has one output per band: its collection or asset "
                             "template must contain '{layer}'")
        if (self.source == "model") != (self.task is not None):
            raise ValueError(f"product {self.name!r}: a model product names its task, a cube product none")
        object.__setattr__(self, "tags", MappingProxyType(dict(self.tags)))

    # derived ------------------------------------------------------------------------

    @property
    def categorical(self) -> bool:
        """Values that must not be mixed (codes or tallies): nearest-neighbour resampling."""
        return self.kind != "continuous"

    @property
    def overview_resampling(self) -> str:
        """GDAL ``OVERVIEW_RESAMPLING`` of the mosaic COG."""
        return "NEAREST" if self.categorical else "AVERAGE"

    @property
    def warp_resampling(self) -> str:
        """rasterio ``Resampling`` member name for reprojecting the mosaic."""
        return "nearest" if self.categorical else "bilinear"

    @property
    def staged(self) -> bool:
        """A cube product: written block by block from the gap-filled cube (beside prediction)."""
        return self.source == "cube"

    @property
    def stacked(self) -> bool:
        """One tile file per layer holding every period, one raster band each (per-period products)."""
        return self.cadence == "period"

    @property
    def itemsize(self) -> int:
        import numpy as np

        return int(np.dtype(self.dtype).itemsize)

    def collection_for(self, layer: str) -> str:
        return self.collection.format(name=self.name, layer=layer)

    def asset_for(self, layer: str) -> str:
        return self.asset.format(name=self.name, layer=layer)

    def title_for(self, layer: str) -> str:
        return self.title.format(name=self.name, layer=layer)

    def layers(self, bands: Iterable[str]) -> list[str]:
        """The layer names of one tile and period: the bands, or the product's own name."""
        return list(bands) if self.per_band else [self.name]

    def band_descriptions(self, layer: str, class_names: Iterable[str] = ()) -> tuple[str, ...]:
        if self.per_class:
            return tuple(self.band_description.format(layer=layer, class_name=str(n)) for n in class_names)
        return (self.band_description.format(layer=layer, class_name=""),)

    def band_count(self, n_classes: int) -> int:
        return n_classes if self.per_class else 1

    def period_months(self, season_size: int) -> int:
        """Length in months of one output's period."""
        return 12 if self.cadence == "year" else 12 // season_size


#: gap-fill flag codes of an observed and of an unfilled value: defined here, the module without
#: numba, and imported by ecocube.gapfill (which adds the codes of each fill phase) and ecocube.tile
FLAG_OBSERVED = 0
FLAG_UNFILLED = 255
_FLAG_UNFILLED = str(FLAG_UNFILLED)
_FLAG_OBSERVED = str(FLAG_OBSERVED)
#: nodata of the float32 regression products (a value no target takes in practice; NaN would
#: not compare equal to itself in the nodata checks of mosaics and statistics)
_FLOAT_NODATA = -9999.0

_ENTRIES = (
    Product(
        "proba", source="model", cadence="year", dtype="uint8", nodata=255, kind="continuous",
        per_class=True, collection="{name}", asset="{name}", template="proba",
        title="class probabilities (%)", band_description="{class_name}", unit="%",
        class_tag=True, tags={"units": "percent"}, ramp="viridis", ramp_label="max class probability (%)",
        ramp_range=(0.0, 100.0), reduce="max", task="classification",
        description="probability of each class in percent (one band per class), from the stacked ensemble"),
    Product(
        "class", source="model", cadence="year", dtype="uint16", nodata=65535, kind="categorical",
        collection="{name}", asset="{name}", template="class", title="class", band_description="class",
        legend="classes", class_tag=True, predictor=False, task="classification",
        description="the most probable class code"),
    Product(
        "uncertainty", source="model", cadence="year", dtype="uint8", nodata=255, kind="continuous",
        collection="{name}", asset="{name}", template="uncertainty", title="uncertainty (%)",
        band_description="uncertainty", unit="%", ramp="magma", ramp_label="uncertainty (%)",
        ramp_range=(0.0, 100.0), task="classification",
        tags={"units": "percent",
              "definition": "std of the base learners' probability of the chosen class x 100"},
        description="standard deviation of the base learners' probability of the chosen class, in percent"),
    Product(
        "mean", source="model", cadence="year", dtype="float32", nodata=_FLOAT_NODATA, kind="continuous",
        collection="regression", asset="{name}", template="regression", title="predicted mean",
        band_description="mean", task="regression", ramp="viridis", ramp_label="predicted mean",
        description="the stacked regression ensemble's prediction (units of the training target)"),
    Product(
        "lower", source="model", cadence="year", dtype="float32", nodata=_FLOAT_NODATA, kind="continuous",
        collection="regression", asset="{name}", template="regression", title="lower interval bound",
        band_description="lower", task="regression", ramp="viridis", ramp_label="lower bound", thumbnail="none",
        asset_order=1,
        roles=("data", "quality"),
        description="lower bound of the conformal prediction interval (level: model.interval_coverage)"),
    Product(
        "upper", source="model", cadence="year", dtype="float32", nodata=_FLOAT_NODATA, kind="continuous",
        collection="regression", asset="{name}", template="regression", title="upper interval bound",
        band_description="upper", task="regression", ramp="viridis", ramp_label="upper bound", thumbnail="none",
        asset_order=2,
        roles=("data", "quality"),
        description="upper bound of the conformal prediction interval (level: model.interval_coverage)"),
    Product(
        "composite", source="cube", cadence="period", dtype="int16", nodata=-32768, kind="continuous",
        per_band=True, scale=0.0001, scale_option="composite_scale", collection="composite-{layer}",
        asset="{layer}", template="composite", title="{layer} (gap-filled)", band_description="{layer}",
        description="gap-filled surface reflectance of one band (value x scale)"),
    Product(
        "flags", source="cube", cadence="period", dtype="uint8", nodata=None, kind="categorical",
        per_band=True, collection="flags", asset="{layer}", template="flags", title="{layer} gap-fill flags",
        band_description="{layer} gap-fill flag", legend="flags", roles=("data", "quality"),
        tags={"unfilled": _FLAG_UNFILLED, "observed": _FLAG_OBSERVED}, thumbnail="first-band",
        description="which gap-filling window filled each composite value (0: observed)"),
    Product(
        "count", source="cube", cadence="period", dtype="uint16", nodata=None, kind="discrete",
        per_band=True, collection="composite-{layer}", asset="count", template="composite",
        title="{layer} valid observations", band_description="{layer} valid observations",
        unit="observations", roles=("data", "quality"), thumbnail="none", ramp="viridis",
        ramp_label="valid observations", asset_order=1,
        description="number of valid observations behind each composite value"),
)

#: every product by name, in the order outputs are planned and listed
PRODUCTS: Mapping[str, Product] = MappingProxyType({p.name: p for p in _ENTRIES})
#: product names (the values ``output.layers`` accepts), in registry order
NAMES: tuple[str, ...] = tuple(PRODUCTS)
#: products computed by a model (they need a model bundle)
MODEL_PRODUCTS: tuple[str, ...] = tuple(p.name for p in _ENTRIES if p.source == "model")


def default_layers(task: str = "classification") -> tuple[str, ...]:
    """The default ``output.layers`` of a run: the cube products and the model products of ``task``."""
    return tuple(p.name for p in _ENTRIES if p.task in (None, task))


def get(name: str) -> Product:
    """The product called ``name``; a ``KeyError`` lists the known ones."""
    try:
        return PRODUCTS[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown product {name!r}; known products: {', '.join(PRODUCTS)}") from None


def names(*, source: str | None = None, cadence: str | None = None,
          among: Iterable[str] | None = None, task: str | None = None) -> tuple[str, ...]:
    """Product names in registry order, filtered by ``source``/``cadence``/``task`` and to those in ``among``."""
    wanted = None if among is None else set(among)
    return tuple(p.name for p in _ENTRIES
                 if (source is None or p.source == source) and (cadence is None or p.cadence == cadence)
                 and (task is None or p.task == task) and (wanted is None or p.name in wanted))


def tile_key(product: str, tile_id: str, layer: str, period: str | None = None) -> str:
    """The store key of one tile output: ``{product}/{tile}/{period}/{layer}.tif``, or
    ``{product}/{tile}/{layer}.tif`` for a stacked product (every period in one file, so
    ``period`` is not part of the key). A 1000² tile of 84 periods × 6 bands is 18 cube
    files instead of 1,512 (S3 objects and requests of a campaign scale with it)."""
    if get(product).stacked:
        return f"{product}/{tile_id}/{layer}.tif"
    if not period:
        raise ValueError(f"product {product!r} has one file per period: a period is needed for its key")
    return f"{product}/{tile_id}/{period}/{layer}.tif"


def tile_key_pattern() -> re.Pattern[str]:
    """The tile output keys of the registered products (named groups ``product``, ``tile``,
    ``period``, ``layer``): ``{product}/{tile}/{period}/{layer}.tif``, or
    ``{product}/{tile}/{layer}.tif`` (``period`` None). :func:`parse_tile_key` also checks
    that the key's form is its product's."""
    return _key_pattern(tuple(PRODUCTS))


@functools.lru_cache(maxsize=4)
def _key_pattern(product_names: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(n) for n in product_names)
    return re.compile(
        rf"^(?P<product>{alternatives})/"
        r"(?P<tile>X-?\d{1,7}_Y-?\d{1,7})/(?:(?P<period>\d{4}-\d{2}-\d{2})/)?(?P<layer>[A-Za-z0-9_\-]+)\.tif$"
    )


def parse_tile_key(key: str) -> tuple[str, str, str | None, str] | None:
    """``(product, tile, period or None, layer)`` of a tile output key, or None when ``key`` is
    not one (another layout, or a period where its product stacks them, or none where it
    does not)."""
    m = tile_key_pattern().match(key)
    if m is None or (m["period"] is None) != PRODUCTS[m["product"]].stacked:
        return None
    return m["product"], m["tile"], m["period"], m["layer"]
