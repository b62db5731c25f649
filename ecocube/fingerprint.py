"""The run fingerprint: what made a tile's outputs, so that runs with other settings never mix.

Every status record carries ``fingerprint = {"sha256": H, "keys": {dotted key: short hash}}``
over the configuration fields that change a tile's outputs (grid, periods, sources, gap-fill,
features, classes, products, compression, the missing/empty-input policies), the model
bundle's checksum and the ecocube version. Fields that only change *where* or *how fast*
(store, threads, block size, Slurm, finalize, the AOI) are not part of it. Values are
hashed, never stored (an href may hold a credential).

:func:`fingerprint_diff` names the keys in which two fingerprints differ; a run refuses
to add tiles to a store whose done tiles were made otherwise (exit 2) unless
``--overwrite`` redoes them. Pure: configuration in, dict out.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .errors import ConfigError

#: configuration sections/keys (dotted) whose values change a tile's outputs
OUTPUT_FIELDS = (
    "grid", "inputs.periods", "inputs.sources", "inputs.composite", "inputs.on_missing", "inputs.on_empty",
    "inputs.unobserved_years", "gapfill", "features", "model.classes", "model.chip", "output.layers", "output.composite_scale",
    "processing.compress",
)


class FingerprintMismatch(ConfigError):
    """Done tiles of the store were made with other settings, model or version (exit 2)."""


def _short(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        for v in value:  # e.g. inputs.sources[s2].href
            _flatten(f"{prefix}[{v['name']}]", {k: x for k, x in v.items() if k != "name"}, out)
        out[f"{prefix}.names"] = [v["name"] for v in value]
    else:
        out[prefix] = value


def output_fields(cfg) -> dict[str, Any]:
    """The output-changing configuration values, by dotted key."""
    data = cfg.model_dump(mode="json", exclude={"base_dir"})
    out: dict[str, Any] = {}
    for dotted in OUTPUT_FIELDS:
        node: Any = data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            _flatten(dotted, node, out)
    return out


def run_fingerprint(cfg, *, model_sha256: str | None, version: str) -> dict[str, Any]:
    """The fingerprint of a run: ``{"sha256": ..., "keys": {dotted key: hash}}``."""
    keys = {k: _short(v) for k, v in output_fields(cfg).items()}
    keys["model.bundle"] = _short(model_sha256)
    keys["ecocube.version"] = _short(version)
    return {"sha256": hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest(), "keys": keys}


def fingerprint_diff(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    """Dotted keys in which two fingerprints differ (sorted); ``[]`` when they are equal."""
    if not a or not b or a.get("sha256") == b.get("sha256"):
        return []
    ka, kb = a.get("keys") or {}, b.get("keys") or {}
    return sorted(k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k))


def summarize_keys(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")
