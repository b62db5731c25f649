"""pyproject.toml and environment.yml must list the same dependencies (conda cannot be solved here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    conda = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str) and _name(dep) not in ("python", "pip"):
            name = CONDA_TO_PYPI.get(_name(dep), _name(dep))
            conda[name] = dep
    pypi = {_name(d): d for d in project["dependencies"]}
    assert set(conda) == set(pypi), (
        f"only in environment.yml: {sorted(set(conda) - set(pypi))}; "
        f"only in pyproject.toml: {sorted(set(pypi) - set(conda))}"
    )
    # the same lower bounds
    for name, req in pypi.items():
        lower = re.search(r">=([\w.]+)", req)
        if lower:
            assert f">={lower.group(1)}" in conda[name], f"{name}: {req} vs {conda[name]}"
    py = next(d for d in env["dependencies"] if isinstance(d, str) and _name(d) == "python")
    assert project["requires-python"].replace(" ", "") in py.replace(" ", "")


def test_console_script_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["ecocube"] == "ecocube.cli:main"
    assert {"test", "dev"} <= set(project["optional-dependencies"])
