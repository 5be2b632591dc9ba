"""DESIGN's layering rules, checked on the source: no import cycles between packages,
store is a leaf, and diff's pure parts import neither aiohttp nor a database."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, *, runtime_only: bool = False) -> set[str]:
    """Top-level module names imported anywhere in ``path``; with ``runtime_only``, leave
    out ``if TYPE_CHECKING:`` blocks (types only: nothing is loaded when it runs)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


# package -> packages of this project it must never import
FORBIDDEN = {
    "config": {"proxy", "diff", "store"},
    "store": {"proxy", "diff"},
    "diff": {"proxy"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package: str) -> None:
    bad = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN[package])
        for p in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize(
    "module", ["compare", "verdict", "rules", "paths", "noise", "endpoints", "stats"]
)
def test_pure_diff_modules_do_no_io(module: str) -> None:
    found = _imports(ROOT / "diff" / f"{module}.py", runtime_only=True)
    assert not found & {"aiohttp", "sqlalchemy", "asyncpg", "store"}, found
