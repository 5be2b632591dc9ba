"""``graygate report RUN [--html FILE]`` as a real subprocess against the session's database."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.diff.reportseed import Seeded, seed_no_go

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def no_go(engine: AsyncEngine) -> Seeded:
    return await seed_no_go(engine, f"cli-nogo-{uuid.uuid4().hex[:8]}")


async def _graygate(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYGATE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "200"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "graygate",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_report_html(database_url: str, no_go: Seeded, tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    code, out, err = await _graygate(
        "report", no_go.run, "--database-url", database_url, "--html", str(target)
    )
    assert code == 0, err
    assert str(target) in out and "NO_GO" in out
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert 'class="banner NO_GO"' in page and "$.total" in page
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temp file left


async def test_report_terminal(database_url: str, no_go: Seeded) -> None:
    code, out, err = await _graygate("report", no_go.run, "--database-url", database_url)
    assert code == 0, err
    assert "NO_GO" in out and "$.total" in out and "GET /api/orders/{id}" in out
    assert "\x1b[" not in out  # not a terminal: no colour codes


async def test_report_unknown_run(database_url: str, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    code, out, err = await _graygate(
        "report", "no-such-run", "--database-url", database_url, "--html", str(target)
    )
    assert code == 3
    assert "unknown run 'no-such-run'" in out + err
    assert len((out + err).strip().splitlines()) == 1
    assert not target.exists()


async def test_report_database_away(tmp_path: Path) -> None:
    code, out, err = await _graygate(
        "report",
        "any",
        "--database-url",
        "postgresql://postgres@127.0.0.1:1/graygate",
        "--html",
        str(tmp_path / "r.html"),
    )
    assert code == 3
    assert "unavailable" in out + err
    assert len((out + err).strip().splitlines()) == 1
