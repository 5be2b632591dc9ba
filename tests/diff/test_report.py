"""store.reports and diff.report_model over real rows in the session's PostgreSQL."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import assess_run
from diff.report_model import build_report, noise_fields_of
from graygate.errors import StoreUnavailable, UnknownRun
from graygate.report_html import render_html
from graygate.report_terminal import render_terminal
from graygate.values import (
    EndpointCounts,
    EndpointStats,
    FieldCount,
    MismatchCounts,
    RunAggregates,
    Verdict,
    VerdictResult,
)
from store import reports
from store.engine import create_engine
from tests.diff.reportseed import (
    ORDERS,
    Seeded,
    add_exchanges,
    judge,
    make_run,
    seed_go,
    seed_inconclusive,
    seed_no_go,
)

LOGO = "GET /static/logo.png"


def _name(kind: str) -> str:
    return f"report-{kind}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def no_go(engine: AsyncEngine) -> Seeded:
    return await seed_no_go(engine, _name("nogo"))


@pytest.fixture(scope="module")
async def go(engine: AsyncEngine) -> Seeded:
    return await seed_go(engine, _name("go"))


@pytest.fixture(scope="module")
async def inconclusive(engine: AsyncEngine) -> Seeded:
    return await seed_inconclusive(engine, _name("inc"))


@pytest.fixture
async def away() -> AsyncIterator[AsyncEngine]:
    """An engine whose database is away: nothing listens on port 1."""
    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/graygate", pool_size=1)
    yield engine
    await engine.dispose()


# --------------------------------------------------------------------------- store.reports


async def test_run_overview(engine: AsyncEngine, no_go: Seeded) -> None:
    info = await reports.run_overview(engine, no_go.run)
    assert info.name == no_go.run
    assert (info.primary_version, info.canary_version) == ("v1.4.2", "v2.0.0-rc1")
    assert info.exchanges == info.judged == 21
    assert info.first_received_at is not None
    assert info.first_received_at <= info.last_received_at  # type: ignore[operator]
    assert info.losses == {}


async def _endpoint_stats(engine: AsyncEngine, run: str) -> list[EndpointStats]:
    assessment = await assess_run(engine, run, record=False, endpoint_latency=True)
    return assessment.aggregates.endpoint_stats()


async def test_endpoint_stats(engine: AsyncEngine, no_go: Seeded) -> None:
    stats = {e.endpoint: e for e in await _endpoint_stats(engine, no_go.run)}
    assert sorted(stats) == sorted([ORDERS, LOGO, "GET /ping"])
    orders = stats[ORDERS]
    assert orders.exchanges == 15
    assert orders.pairs == 14
    assert (orders.match, orders.differ, orders.noise_only) == (0, 4, 10)
    assert (orders.skipped, orders.error, orders.pending) == (0, 1, 0)
    assert orders.strict_mismatches == 4
    assert orders.strict_mismatch_rate == pytest.approx(4 / 14)
    assert orders.tolerance_violations == 0
    assert orders.tolerance_violation_rate == 0
    assert orders.noise == 14
    assert (orders.primary_errors, orders.canary_errors) == (0, 1)
    assert orders.primary_p50_ms is not None and orders.primary_p99_ms is not None
    assert orders.primary_p50_ms <= orders.primary_p99_ms
    assert orders.canary_p50_ms is not None
    logo = stats[LOGO]
    assert (logo.pairs, logo.match, logo.strict_mismatches, logo.noise) == (3, 3, 0, 0)


def test_endpoint_stats_leave_noise_fields_out() -> None:
    """Fields the verdict calls noise do not count as strict mismatches (the mismatch
    counts that leave them out stand), and their differences count as noise."""
    counts = EndpointCounts(ORDERS, recorded=15, judged=15, pairs=14, strict_pairs=4)
    fields = (
        FieldCount(ORDERS, "$.total", "canary", "strict", exchanges=4, differences=4, kind="value"),
        FieldCount(ORDERS, "$.ts", "canary", "noise", exchanges=14, differences=14),
        FieldCount(ORDERS, "$.ts", "secondary", "strict", exchanges=14, differences=14),
        FieldCount(ORDERS, "$.status", "canary", "waived", exchanges=1, differences=1),
    )
    plain = RunAggregates("r", endpoints=(counts,), fields=fields)
    (row,) = plain.endpoint_stats()
    assert (row.strict_mismatches, row.noise, row.pending) == (4, 14, 0)
    noisy = replace(
        plain,
        noise_fields=frozenset({(ORDERS, "$.total")}),
        noise_keys=frozenset({(ORDERS, "$.total", "value")}),
        mismatches={ORDERS: MismatchCounts()},
    )
    (row,) = noisy.endpoint_stats()
    assert row.strict_mismatches == 0
    assert row.strict_mismatch_rate == 0
    assert row.noise == 14 + 4
    # noise for value differences only: a type difference in the field is not noise
    typed = replace(noisy, noise_keys=frozenset({(ORDERS, "$.total", "type")}))
    (row,) = typed.endpoint_stats()
    assert row.noise == 14


async def test_top_fields_with_one_example_each(engine: AsyncEngine, no_go: Seeded) -> None:
    fields = await reports.top_fields(engine, no_go.run)
    by_key = {(f.endpoint, f.field, f.judgement): f for f in fields}
    assert set(by_key) == {(ORDERS, "$.total", "strict"), (ORDERS, "$.ts", "noise")}
    total = by_key[(ORDERS, "$.total", "strict")]
    assert (total.differences, total.exchanges) == (4, 4)
    assert total.example.trace_id in no_go.traces["wrong_total"]
    assert (total.example.primary_value, total.example.other_value) == (10.5, 10.75)
    assert total.example.path == "$.total" and total.example.kind == "value"
    ts = by_key[(ORDERS, "$.ts", "noise")]
    assert ts.exchanges == 14
    assert ts.example.primary_value != ts.example.other_value
    only_strict = await reports.top_fields(engine, no_go.run, judgements=("strict",))
    assert [f.field for f in only_strict] == ["$.total"]


async def test_differences_paginate_by_id(engine: AsyncEngine, no_go: Seeded) -> None:
    seen: list[int] = []
    after = None
    pages = 0
    while True:
        page = await reports.list_differences(engine, no_go.run, limit=5, after=after)
        pages += 1
        seen += [d.id for d in page.items]
        if page.next is None:
            break
        assert page.next == page.items[-1].id
        after = page.next
    # 18 canary differences ($.total 4, $.ts 14) and the 14 primary-vs-secondary ones ($.ts)
    assert len(seen) == 32 and len(set(seen)) == 32
    assert seen == sorted(seen)
    assert pages == 7


async def test_differences_filters(engine: AsyncEngine, no_go: Seeded) -> None:
    total = await reports.list_differences(engine, no_go.run, field="$.total")
    assert len(total.items) == 4 and total.next is None
    assert {d.trace_id for d in total.items} == set(no_go.traces["wrong_total"])
    assert all(d.judgement == "strict" and d.endpoint == ORDERS for d in total.items)
    by_path = await reports.list_differences(engine, no_go.run, path="$.ts", limit=1000)
    assert len(by_path.items) == 28  # against the canary and against the secondary
    canary_ts = await reports.list_differences(
        engine, no_go.run, path="$.ts", against="canary", limit=1000
    )
    assert len(canary_ts.items) == 14 and {d.against for d in canary_ts.items} == {"canary"}
    noise = await reports.list_differences(engine, no_go.run, judgement="noise")
    assert len(noise.items) == 14
    other = await reports.list_differences(engine, no_go.run, endpoint=LOGO)
    assert other.items == [] and other.next is None
    both = await reports.list_differences(
        engine, no_go.run, endpoint=ORDERS, field="$.ts", limit=10
    )
    assert len(both.items) == 10 and both.next is not None


async def test_exchange_by_trace(engine: AsyncEngine, no_go: Seeded) -> None:
    trace = no_go.traces["wrong_total"][0]
    found = await reports.exchange_by_trace(engine, trace)
    assert found is not None
    assert (found.exchange.trace_id, found.run, found.exchange.endpoint) == (
        trace,
        no_go.run,
        ORDERS,
    )
    assert list(found.responses) == ["primary", "canary", "secondary"]
    assert found.responses["primary"].status == 200 and found.responses["primary"].body
    assert found.outcome == "differ" and found.strict_mismatches == 1
    assert sorted((d.against, d.field) for d in found.differences) == [
        ("canary", "$.total"),
        ("canary", "$.ts"),
        ("secondary", "$.ts"),
    ]
    # Without a secondary the response list has two sides.
    plain = await reports.exchange_by_trace(engine, no_go.traces["logo"][0], run=no_go.run)
    assert plain is not None and list(plain.responses) == ["primary", "canary"]
    assert await reports.exchange_by_trace(engine, "0" * 32) is None


async def test_runtime_and_preflight(engine: AsyncEngine, no_go: Seeded, go: Seeded) -> None:
    [canary] = await reports.runtime_summary(engine, no_go.run)
    assert canary.role == "canary" and canary.samples == 5 and canary.failed_samples == 0
    assert (canary.goroutines_first, canary.goroutines_last, canary.goroutines_max) == (
        40,
        60,
        60,
    )
    assert canary.heap_alloc_first == 8_000_000 and canary.heap_alloc_last == 12_000_000
    assert canary.gc_cycles == 12
    assert canary.gc_pauses == 10
    assert canary.gc_pause_max_ms == pytest.approx(0.26)
    findings = await reports.preflight(engine, no_go.run)
    assert [(f.check, f.ok) for f in findings] == [
        ("canary.pprof_exposed", False),
        ("canary.health", True),
    ]
    assert await reports.runtime_summary(engine, go.run) == []
    assert await reports.preflight(engine, go.run) == []


async def test_list_runs(engine: AsyncEngine, no_go: Seeded, go: Seeded) -> None:
    runs = {r.name: r for r in await reports.list_runs(engine, limit=1000)}
    assert runs[no_go.run].exchanges == 21
    assert runs[no_go.run].differing == 4
    assert runs[go.run].exchanges == runs[go.run].judged == 16
    assert runs[go.run].canary_version == "v2.0.0-rc1"


async def test_unknown_run(engine: AsyncEngine) -> None:
    for call in (
        reports.run_overview(engine, "no-such-run"),
        _endpoint_stats(engine, "no-such-run"),
        reports.top_fields(engine, "no-such-run"),
        reports.list_differences(engine, "no-such-run"),
        reports.runtime_summary(engine, "no-such-run"),
        reports.preflight(engine, "no-such-run"),
        build_report(engine, "no-such-run"),
    ):
        with pytest.raises(UnknownRun):
            await call


async def test_database_away(away: AsyncEngine) -> None:
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1"):
        await reports.list_runs(away)
    with pytest.raises(StoreUnavailable):
        await build_report(away, "any")


async def test_unmigrated_database(make_database: object) -> None:
    url: str = await make_database()  # type: ignore[operator]
    engine = create_engine(url, pool_size=1)
    try:
        with pytest.raises(StoreUnavailable, match="db upgrade"):
            await reports.list_runs(engine)
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- diff.report_model


async def test_report_model(engine: AsyncEngine, no_go: Seeded) -> None:
    report = await build_report(engine, no_go.run)
    assert report.verdict.verdict is Verdict.NO_GO
    assert [f.field for f in report.fields] == ["$.total"]
    assert [f.field for f in report.noise] == ["$.ts"]
    assert report.waived == []
    assert len(report.runtime) == 1 and len(report.preflight) == 2


async def test_terminal_report(engine: AsyncEngine, no_go: Seeded) -> None:
    report = await build_report(engine, no_go.run)
    buf = io.StringIO()
    render_terminal(report, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert "NO_GO" in text and no_go.run in text
    for check in report.verdict.checks:  # one line per check
        assert re.search(rf"^│ {re.escape(check.name)} ", text, re.M), check.name
    assert ORDERS in text and "$.total" in text
    example = report.fields[0].example
    assert example.trace_id in text and "10.5 → 10.75" in text
    assert "Noise" in text and "$.ts" in text
    assert "Runtime" in text and "Preflight" in text and "canary.pprof_exposed" in text


async def test_terminal_report_without_differences(engine: AsyncEngine, go: Seeded) -> None:
    buf = io.StringIO()
    render_terminal(await build_report(engine, go.run), Console(file=buf, width=200))
    text = buf.getvalue()
    assert " GO " in text
    assert "No strict or tolerance differences." in text
    assert "Runtime" not in text and "Preflight" not in text


_EXTERNAL = re.compile(
    r"<link|<script|<img|<iframe|\bsrc\s*=|\bhref\s*=\s*\"(?!#)|url\(|@import|https?://",
    re.I,  # an href to an anchor in the same file ("#x-<trace id>") is no external reference
)


async def test_html_report_is_one_self_contained_file(engine: AsyncEngine, no_go: Seeded) -> None:
    report = await build_report(engine, no_go.run)
    page = render_html(report)
    assert page.startswith("<!doctype html>") and page.count("<html") == 1
    assert "<style>" in page
    external = [m.group(0) for m in _EXTERNAL.finditer(page)]
    assert external == [], external
    assert 'class="banner NO_GO"' in page and "NO-GO" in page
    assert "$.total" in page and report.fields[0].example.trace_id in page
    assert "10.75" in page
    assert "<h2>Noise</h2>" in page and "$.ts" in page
    assert "<h2>Runtime</h2>" in page and "<h2>Preflight</h2>" in page
    for check in report.verdict.checks:
        assert f"<code>{check.name}</code>" in page


async def test_html_escapes_and_omits_empty_sections(
    engine: AsyncEngine, inconclusive: Seeded, go: Seeded
) -> None:
    page = render_html(await build_report(engine, inconclusive.run))
    assert 'class="banner INCONCLUSIVE"' in page
    assert "<h2>Runtime</h2>" not in page and "<h2>Preflight</h2>" not in page
    assert "<h2>Noise</h2>" not in page
    assert "GET /api/orders/{id}" in page
    go_page = render_html(await build_report(engine, go.run))
    assert 'class="banner GO"' in go_page
    assert "No strict or tolerance differences." in go_page


async def test_html_escapes_recorded_values(engine: AsyncEngine) -> None:
    """Recorded values are data, never markup."""
    run = _name("xss")
    run_id = await make_run(engine, run)
    evil = "<script>alert('x')</script>"
    endpoint = "GET /api/<b>notes</b>/{id}"
    await add_exchanges(engine, run_id, endpoint, [({"note": "fine"}, {"note": evil}, None)] * 2)
    await judge(engine, run_id)
    page = render_html(await build_report(engine, run))
    assert "<script" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and "&lt;b&gt;notes&lt;/b&gt;" in page


def test_noise_fields_of_the_verdict() -> None:
    """The verdict's noise fields (``extra["noise"]``), which the report lists apart."""
    bare = VerdictResult(run="r", verdict=Verdict.GO, checks=())
    assert noise_fields_of(bare) == frozenset()
    noisy = VerdictResult(
        run="r",
        verdict=Verdict.GO,
        checks=(),
        extra={
            "noise": [
                {"endpoint": ORDERS, "field": "$.ts", "canary_rate": 1.0, "secondary_rate": 1.0},
                {"field": "no endpoint: ignored"},
            ]
        },
    )
    assert noise_fields_of(noisy) == {(ORDERS, "$.ts")}
