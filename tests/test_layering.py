"""The layering rules of docs/ARCHITECTURE.md ("Layering rules"), checked on the source.

The module import graph is built with ``ast`` over graygate, proxy, diff, store, config and
migrations. Runtime imports only: an ``if TYPE_CHECKING:`` block loads nothing when the code
runs, so it is left out; an import inside a function counts (it runs when the function does).
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("graygate", "proxy", "diff", "store", "config", "migrations")
LAYERS = ("proxy", "diff", "store", "config", "migrations")  # the fixed top-level packages
DIFF_CORE = (
    "diff.paths",
    "diff.rules",
    "diff.compare",
    "diff.noise",
    "diff.stats",
    "diff.verdict",
    "diff.runtime_checks",
    "diff.write_compare",
    "diff.endpoints",
)
IO_LIBRARIES = frozenset({"aiohttp", "sqlalchemy", "asyncpg", "alembic", "store"})
# Record building and the values it reads: plain values in, a record out (it may run away
# from the server, in a writer process).
RECORD_BUILDING = ("proxy.recording.building", "proxy.exchange", "proxy.capture")
# The shell's bottom modules: the only part of graygate that the layers may import.
SHELL_BOTTOM = frozenset(
    {
        "graygate",
        "graygate.errors",
        "graygate.values",
        "graygate.vocabulary",
        "graygate.tasks",
        "graygate.processes",
    }
)
# Basenames that several packages may use: each is an aiohttp application of its own
# process role (proxy.app, graygate.admin.app), always imported by its qualified name.
SHARED_BASENAMES = frozenset({"__init__", "app"})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {
        _module_name(p): p
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def _is_type_checking(node: ast.If) -> bool:
    return ast.unparse(node.test).split(".")[-1] == "TYPE_CHECKING"


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except those under an ``if TYPE_CHECKING:`` body."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


@cache
def _imported_names(module: str) -> frozenset[str]:
    """The dotted names ``module`` imports at run time (``from a import b`` gives ``a.b``
    as well as ``a``: b may be a module or a name defined in a)."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return frozenset(names)


@cache
def _graph() -> dict[str, frozenset[str]]:
    """module -> the project modules it imports at run time: for each imported name, the
    longest prefix of it that is a module (``from store import reports`` gives ``store`` and
    ``store.reports``: a package's ``__init__`` runs before its submodule)."""
    known = _modules()
    graph: dict[str, frozenset[str]] = {}
    for module in known:
        targets: set[str] = set()
        for name in _imported_names(module):
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in known:
                    if candidate != module:
                        targets.add(candidate)
                    break
        graph[module] = frozenset(targets)
    return graph


def _cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


def _package_of(module: str) -> str:
    return _top(module)


def test_the_graph_sees_the_modules() -> None:
    """A guard for the checks below: the graph has the known modules and edges."""
    graph = _graph()
    assert "graygate.cli" in graph and "diff.verdict" in graph and "store.reports" in graph
    assert "graygate.supervise" in graph["graygate.cli"] or any(
        "graygate.supervise" in graph[m] for m in graph
    )
    assert "store.engine" in graph["store.reports"] or "store.engine" in set().union(
        *graph.values()
    )


def test_no_import_cycles_between_modules() -> None:
    assert _cycles(_graph()) == []


def test_cycle_detection_finds_a_cycle() -> None:
    assert _cycles({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}) == [
        ["a", "b", "c"]
    ]


def _reachable(start: str) -> set[str]:
    graph = _graph()
    seen: set[str] = set()
    todo = [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(graph.get(m, ()))
    return seen


def _io_reached(module: str) -> dict[str, list[str]]:
    """The modules ``module`` loads (itself included) that import an I/O library, and which."""
    bad = {
        m: sorted({_top(n) for n in _imported_names(m)} & IO_LIBRARIES)
        for m in sorted(_reachable(module))
    }
    return {m: libs for m, libs in bad.items() if libs}


@pytest.mark.parametrize("module", DIFF_CORE)
def test_diff_core_does_no_io(module: str) -> None:
    """diff's pure core imports no aiohttp, no database library and no store, neither
    itself nor through the project modules it loads."""
    assert _io_reached(module) == {}


@pytest.mark.parametrize("module", RECORD_BUILDING)
def test_record_building_does_no_io(module: str) -> None:
    """Record building imports no aiohttp, no database library and no store, neither
    itself nor through the project modules it loads."""
    assert _io_reached(module) == {}


# package -> project packages it must never import (TYPE_CHECKING blocks included: a type
# from an upper layer is a dependency on it all the same)
FORBIDDEN = {
    "config": {"proxy", "diff", "store"},
    "store": {"proxy", "diff"},
}


def _all_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(_top(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(_top(node.module))
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(package: str) -> None:
    bad = {
        m: sorted(_all_imports(p) & FORBIDDEN[package])
        for m, p in _modules().items()
        if _package_of(m) == package
    }
    assert {m: v for m, v in bad.items() if v} == {}


def test_nothing_imports_the_shell_but_its_bottom_modules() -> None:
    graph = _graph()
    bad = {
        m: sorted(t for t in targets if _package_of(t) == "graygate" and t not in SHELL_BOTTOM)
        for m, targets in graph.items()
        if _package_of(m) != "graygate"
    }
    assert {m: v for m, v in bad.items() if v} == {}


def test_the_shell_bottom_imports_no_other_shell_module() -> None:
    graph = _graph()
    bad = {
        m: sorted(t for t in graph[m] if _package_of(t) == "graygate" and t not in SHELL_BOTTOM)
        for m in SHELL_BOTTOM
        if m in graph
    }
    assert {m: v for m, v in bad.items() if v} == {}


def test_no_module_name_repeated_across_packages() -> None:
    where: dict[str, list[str]] = {}
    for module, path in _modules().items():
        if path.stem not in SHARED_BASENAMES and not module.startswith("migrations.versions"):
            where.setdefault(path.stem, []).append(module)
    assert {name: ms for name, ms in where.items() if len(ms) > 1} == {}


def test_only_graygate_and_the_layers_are_installed() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]
    tops = {_top(p) for p in packages}
    assert tops <= {"graygate", *LAYERS}, tops
    assert "examples" not in tops
    assert "graygate" in tops and set(LAYERS) <= tops


def test_architecture_document_names_the_rules() -> None:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    assert re.search(r"^## Layering rules", doc, re.MULTILINE)
    assert "tests/test_layering.py" in doc
