"""A real browser opens the served report and an exchange page: Debian's ``chromium``,
headless, against the real admin application on loopback. Skips when chromium is absent."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.diff.reportseed import seed_no_go, serve_admin

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not on PATH (Debian's chromium package provides it)"
)
PNG = b"\x89PNG\r\n\x1a\n"


async def _chromium(profile: Path, *args: str) -> str:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # tests may run as root, where chromium's sandbox refuses to start
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


async def test_browser_renders_the_report_and_an_exchange_page(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    seeded = await seed_no_go(engine, f"browser-{uuid.uuid4().hex[:8]}")
    trace = seeded.traces["wrong_total"][0]
    async with serve_admin(engine) as base:
        report_url = f"{base}/runs/{seeded.run}"
        exchange_url = f"{report_url}/exchanges/{trace}"
        dom = await _chromium(tmp_path / "p1", "--dump-dom", report_url)
        assert "NO-GO" in dom
        assert dom.count('<svg class="chart"') >= 5  # latency, failing pairs, 3 runtime
        assert "<circle" in dom and "<polyline" in dom
        assert f"/exchanges/{trace}" in dom
        shot = tmp_path / "report.png"
        await _chromium(
            tmp_path / "p2", f"--screenshot={shot}", "--window-size=1280,2000", report_url
        )
        assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 10_000
        dom = await _chromium(tmp_path / "p3", "--dump-dom", exchange_url)
        assert trace in dom and "<mark" in dom and "$.total" in dom
        shot = tmp_path / "exchange.png"
        await _chromium(
            tmp_path / "p4", f"--screenshot={shot}", "--window-size=1280,1400", exchange_url
        )
        assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 5_000
