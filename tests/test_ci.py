"""CI runs exactly the README's test command, and the test lanes are what the README says."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"pip install -e '\.\[test\]' && (python -m pytest[^\n]*)", readme)
    assert found, "README.md has no `pip install -e '.[test]' && python -m pytest ...` line"
    return found.group(1).strip()


def test_ci_runs_the_readme_test_command() -> None:
    command = _readme_test_command()
    ci = (ROOT / ".ci" / "run").read_text()
    runs = [line.strip() for line in ci.splitlines() if line.strip().startswith("python -m pytest")]
    assert [r.split(" ||")[0] for r in runs] == [command]


def test_markers_are_strict_and_registered() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "--strict-markers" in pyproject
    for marker in ("unit", "db", "e2e"):
        assert re.search(rf'^\s*"{marker}: ', pyproject, re.MULTILINE), marker
    readme = (ROOT / "README.md").read_text()
    assert 'python -m pytest -m "not e2e"' in readme
