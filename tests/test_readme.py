"""The README's YAML examples are valid: each parses as YAML and, put into a run configuration
(a whole one as it is, a source list as inputs.sources, a section fragment merged into a small
run), passes the configuration's validation."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from ecocube.config import config_from_dict

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^(?P<indent> *)```ya?ml\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)

#: the run a fragment is merged into: one composite source, two classes, a local store
BASE = {
    "name": "readme",
    "grid": {"crs": "EPSG:3035", "origin": [3900000, 3200000], "pixel_size": 10, "tile_size": 64},
    "aoi": {"tiles": ["X0000_Y0000"]},
    "inputs": {"sources": [{"name": "s2", "href": "in/{year}/{band}.tif", "bands": ["red", "nir"]}]},
    "model": {"classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}]},
    "output": {"store": "out"},
}


def yaml_blocks(text: str) -> list[tuple[int, str]]:
    """``(line, body)`` of every fenced yaml block, a list item's indentation removed."""
    blocks = []
    for m in _BLOCK.finditer(text):
        n = len(m["indent"])
        body = "\n".join(ln[n:] if ln[:n].strip() == "" else ln for ln in m["body"].splitlines())
        blocks.append((text[:m.start()].count("\n") + 1, body))
    return blocks


def _merge(into: dict, part: dict) -> dict:
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


BLOCKS = yaml_blocks(README.read_text())


def test_the_blocks_are_found():
    assert len(BLOCKS) >= 6
    bodies = "\n".join(b for _, b in BLOCKS)
    # the tutorial's run, the three source kinds, covariates, a chip model
    for text in ("name: flanders", "kind: composite", "date_pattern:", "kind: stac-api", "covariates:", "kind: chip"):
        assert text in bodies, text


def test_yaml_blocks_extracted_from_a_list_item_lose_its_indentation():
    text = "- item:\n\n  ```yaml\n  a:\n    b: 1\n  ```\n"
    assert yaml_blocks(text) == [(3, "a:\n  b: 1")]


@pytest.mark.parametrize("line, body", BLOCKS, ids=[f"README.md:{ln}" for ln, _ in BLOCKS])
def test_readme_yaml_example_is_valid(line, body, tmp_path):
    try:
        doc = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        pytest.fail(f"README.md:{line}: not valid YAML: {exc}")
    if isinstance(doc, dict) and {"name", "grid"} <= set(doc):
        data = doc
    elif isinstance(doc, list):
        data = copy.deepcopy(BASE)
        data["inputs"]["sources"] = doc
    else:
        assert isinstance(doc, dict), f"README.md:{line}: neither a run, a source list nor sections"
        data = _merge(copy.deepcopy(BASE), doc)
    config_from_dict(data, base_dir=tmp_path, source=f"README.md:{line}")
