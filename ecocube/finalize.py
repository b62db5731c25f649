"""Finalize a run: mosaic → manifest → STAC catalog → browser, the job after the tile array.

:func:`finalize` only sequences the steps; each lives in its own module:

1. :func:`ecocube.mosaic.mosaic_run` makes a COG (+ VRT, thumbnail) per finished
   product/layer/period, keeping those whose source tiles are unchanged, and records
   every layer in the manifest (:mod:`ecocube.manifest`, ``catalog/mosaics.json``);
2. :func:`ecocube.stac.publish_catalog` builds the STAC catalog from those layers,
   validates it offline, adds the static HTML browser (:mod:`ecocube.browse`) and
   publishes it under ``catalog/``.

A catalog that does not validate stops the run before anything of it is published.
This module computes no pixel and opens no raster.
"""

from __future__ import annotations

from typing import Any

from .mosaic import mosaic_run
from .stac import publish_catalog
from .store import store_for


def finalize(cfg, *, store=None, overwrite: bool = False, threads: int | None = None,
             validate: bool = True) -> dict[str, Any]:
    """The last job of a run: mosaics, STAC catalog (validated offline) and the HTML browser.

    Returns ``{"layers": [MosaicLayer...], "catalog": path or URL of catalog.json,
    "index": path or URL of index.html, "objects": number of catalog files}``. Raises
    :class:`EcocubeError` (nothing published) if the catalog does not validate.
    """
    store = store_for(cfg, store)
    layers = mosaic_run(cfg, store=store, overwrite=overwrite, threads=threads)
    built = publish_catalog(cfg, store=store, layers=layers, validate=validate, browser=True)
    return {"layers": layers, "catalog": built.catalog, "index": built.index, "objects": built.objects}
