"""The package's import graph: no import circles inside ``ecocube/``, boto3 only in ``store.py``.

The graph is read statically from the source (``ast``), with every import counted: at
module level, inside functions, under ``TYPE_CHECKING`` and in ``try`` blocks alike, since
a function-level import hides a circle rather than removing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "ecocube"
#: top-level packages that only ecocube/store.py may import (the AWS SDK)
AWS_PACKAGES = ("boto3", "botocore", "s3transfer")
AWS_MODULE = "ecocube.store"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> tuple[set[str], set[str]]:
    """(package modules imported by the file, all absolute top-level names it imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    internal: set[str] = set()
    external: set[str] = set()

    def _add(target: str) -> None:
        # the deepest known module that ``target`` names (``a.b.c`` -> ``a.b`` if c is a name)
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target:
            internal.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                external.add(alias.name.split(".")[0])
                _add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
                external.add(base_name.split(".")[0])
            for alias in node.names:
                full = f"{base_name}.{alias.name}"
                _add(full if full in known else base_name)
    internal.discard(name)
    return internal, external


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``({module: package modules it imports}, {module: top-level names it imports})``."""
    mods = _modules(root)
    known = set(mods)
    graph, external = {}, {}
    for name, path in mods.items():
        graph[name], external[name] = _imports(path, name, known)
    return graph, external


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (or a self-import), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_path(graph, g) for g in groups]


def _cycle_path(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """One concrete circle through the group's first module: ``[a, b, ..., a]``."""
    members, start = set(group), group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return group  # pragma: no cover - a strongly connected group always closes


# ---------------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def package_graph():
    """The package's graph, parsed once for the module's checks of the package."""
    return import_graph(PACKAGE_DIR)


def test_ecocube_has_no_import_circles(package_graph):
    graph, _ = package_graph
    assert len(graph) > 20 and "ecocube.bundle" in graph  # the whole package was read
    cycles = find_cycles(graph)
    assert not cycles, "import circles in ecocube/: " + "; ".join(" -> ".join(c) for c in cycles)


def test_boto3_is_imported_only_by_store(package_graph):
    _, external = package_graph
    assert "boto3" in external[AWS_MODULE]
    users = sorted(m for m, names in external.items() if m != AWS_MODULE and names & set(AWS_PACKAGES))
    assert not users, f"{', '.join(AWS_PACKAGES)} imported outside {AWS_MODULE}: {', '.join(users)}"


@pytest.mark.parametrize(("low", "high"), [
    ("ecocube.bundle", "ecocube.train"), ("ecocube.bundle", "ecocube.ensemble"), ("ecocube.bundle", "ecocube.tile"),
    ("ecocube.manifest", "ecocube.mosaic"), ("ecocube.manifest", "ecocube.stac"),
    ("ecocube.stac", "ecocube.mosaic"), ("ecocube.mosaic", "ecocube.finalize"), ("ecocube.stac", "ecocube.finalize"),
    ("ecocube.tile", "ecocube.train"), ("ecocube.predict", "ecocube.train"),
])
def test_layering(low, high, package_graph):
    """``low`` never reaches ``high`` through any chain of imports."""
    graph, _ = package_graph
    seen, todo = set(), [low]
    while todo:
        v = todo.pop()
        for w in graph[v] - seen:
            seen.add(w)
            todo.append(w)
    assert high not in seen


# ---------------------------------------------------------------------- the checker itself


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_circle_hidden_in_a_function(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from .b import x\n",
        "b.py": "x = 1\ndef f():\n    from . import c\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import y\n",
        "d.py": "from .a import x\n",
        "sub/__init__.py": "",
        "sub/e.py": "from .. import d\nfrom ..sub import f\n",
        "sub/f.py": "def g():\n    import pkg.sub.e\n",
    })
    graph, external = import_graph(root)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.sub.e"] == {"pkg.d", "pkg.sub.f"} and graph["pkg.sub.f"] == {"pkg.sub.e"}
    assert external["pkg.c"] == {"typing", "pkg"}
    cycles = find_cycles(graph)
    assert sorted(cycles) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"], ["pkg.sub.e", "pkg.sub.f", "pkg.sub.e"]]


def test_checker_finds_no_circle_in_a_tree(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "", "a.py": "from . import b, c\n", "b.py": "from .c import x\n", "c.py": "import os\nx = 1\n",
    })
    graph, _ = import_graph(root)
    assert graph["pkg.a"] == {"pkg.b", "pkg.c"}
    assert find_cycles(graph) == []
