"""The terminal report at 80 columns: stacked blocks, no line wider than the terminal, no
escape sequence when piped."""

from __future__ import annotations

import io
import uuid

import pytest
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.report_model import build_report
from graygate.report_command import _console
from graygate.report_terminal import render_terminal
from tests.diff.reportseed import ORDERS, seed_no_go


async def test_report_reads_at_80_columns(engine: AsyncEngine) -> None:
    seeded = await seed_no_go(engine, f"narrow-{uuid.uuid4().hex[:8]}")
    report = await build_report(engine, seeded.run)
    buf = io.StringIO()
    render_terminal(report, Console(file=buf, width=80))
    text = buf.getvalue()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "\x1b" not in text  # piped: plain text
    for check in report.verdict.checks:
        assert any(line.split()[1:2] == [check.name] for line in lines if line.split()), check.name
    assert ORDERS in text and "$.total" in text and "10.5 → 10.75" in text
    assert "0.286 (28.6% of pairs)" in text  # the strict check's observed value, with units
    assert "GC pause p99 (run / worst window)" in text  # the runtime check's figures


@pytest.mark.parametrize(
    ("columns", "width"),
    [("", 120), ("80", 80), ("39", 40), ("40", 40), ("400", 400), ("401", 400), ("x", 120)],
)
def test_piped_width_follows_columns_within_bounds(
    monkeypatch: pytest.MonkeyPatch, columns: str, width: int
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    assert _console(io.StringIO()).width == width
