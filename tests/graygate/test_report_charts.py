"""The HTML report's charts, field tree and exchange views over real rows: the SVG's data
points are read back and compared with figures computed here from what was seeded."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.report_model import Report, build_report
from diff.runtime_checks import percentile
from graygate.report_html import render_html
from tests.diff.reportseed import (
    ORDERS,
    Seeded,
    add_exchanges,
    judge,
    make_run,
    seed_go,
    seed_inconclusive,
    seed_no_go,
    serve_admin,
)

SVG = ""  # inline SVG in HTML5 needs no namespace declaration
SCRIPT = "<script>alert(1)</script>"


def _name(kind: str) -> str:
    return f"charts-{kind}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def no_go(engine: AsyncEngine) -> Seeded:
    return await seed_no_go(engine, _name("nogo"))


@pytest.fixture(scope="module")
async def no_go_report(engine: AsyncEngine, no_go: Seeded) -> tuple[Report, str]:
    report = await build_report(engine, no_go.run)
    return report, render_html(report)


def svgs(page: str) -> dict[str, ET.Element]:
    """Every chart of the page, parsed as XML (so they are well-formed), by id."""
    out = {}
    for text in re.findall(r"<svg .*?</svg>", page, flags=re.S):
        el = ET.fromstring(text)
        out[el.get("id", "")] = el
    return out


def chart_for(page: str, prefix: str, endpoint: str) -> ET.Element:
    for fig in re.findall(r"<figure[^>]*>.*?</figure>", page, flags=re.S):
        if f'data-endpoint="{endpoint}"' in fig and f'id="{prefix}' in fig:
            return ET.fromstring(re.search(r"<svg .*?</svg>", fig, flags=re.S).group(0))  # type: ignore[union-attr]
    raise AssertionError(f"no {prefix} chart for {endpoint}")


def series(svg: ET.Element, name: str) -> list[tuple[float, float]]:
    for g in svg.iter(f"{SVG}g"):
        if g.get("class") == "series" and g.get("data-series") == name:
            return [
                (float(c.get("data-x", "nan")), float(c.get("data-y", "nan")))
                for c in g.iter(f"{SVG}circle")
            ]
    raise AssertionError(f"no series {name!r}")


def ref(svg: ET.Element, role: str) -> float:
    for g in svg.iter(f"{SVG}g"):
        if g.get("class") == "ref" and g.get("data-role") == role:
            return float(g.get("data-value", "nan"))
    raise AssertionError(f"no reference line {role!r}")


def percentile_cont(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between closest ranks."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


async def test_latency_cdf_points_match_the_stored_latencies(
    no_go_report: tuple[Report, str],
) -> None:
    _, page = no_go_report
    svg = chart_for(page, "latency-", ORDERS)
    # reportseed: primary latency 10 + i % 7, canary 12 + i % 5 over the 14 judged pairs
    primary = [10.0 + i % 7 for i in range(14)]
    canary = [12.0 + i % 5 for i in range(14)]
    for name, values in (("primary", primary), ("canary", canary)):
        points = series(svg, name)
        assert len(points) == 42
        for ms_value, q in points:
            assert ms_value == pytest.approx(percentile_cont(values, q))
        assert ref(svg, f"p50-{name}") == pytest.approx(percentile_cont(values, 0.5))
        assert ref(svg, f"p99-{name}") == pytest.approx(percentile_cont(values, 0.99))


async def test_mismatch_rate_per_minute_matches_the_stored_differences(
    no_go_report: tuple[Report, str],
) -> None:
    _, page = no_go_report
    svg = chart_for(page, "mismatch-", ORDERS)
    # 4 of the 14 judged order pairs get $.total wrong; $.ts differs as noise (left out)
    assert [y for _, y in series(svg, "strict mismatch")] == [pytest.approx(4 / 14)]
    assert [y for _, y in series(svg, "tolerance violation")] == [0.0]
    assert "No strict mismatch or tolerance violation in any minute" in page
    assert "GET /ping" in page


async def test_runtime_charts_match_the_stored_samples(no_go_report: tuple[Report, str]) -> None:
    _, page = no_go_report
    charts = svgs(page)
    gor = series(charts["runtime-goroutines"], "goroutines")
    assert gor == [(10.0 * i, 40.0 + 5 * i) for i in range(5)]
    heap = series(charts["runtime-heap"], "heap in use (MiB)")
    assert [y for _, y in heap] == [pytest.approx(9_000_000 / 1024 / 1024)] * 5
    # all five samples are in one 60 s window: its p99 over every pause
    pauses = [p for i in range(5) for p in (150_000, 220_000 + 10_000 * i)]
    window = series(charts["runtime-pauses"], "GC pause p99")
    assert window == [(0.0, pytest.approx(percentile(pauses, 99) / 1e6))]


async def test_runtime_chart_draws_baseline_and_threshold(engine: AsyncEngine) -> None:
    from diff.runtime_checks import RuntimeSample
    from store.runtime_samples import insert_samples

    run = _name("gc")
    run_id = await make_run(engine, run)
    await add_exchanges(engine, run_id, ORDERS, [({"a": 1}, {"a": 1}, None)] * 3)
    await judge(engine, run_id)
    # a configured budget: the threshold is the budget itself
    from store.runs import ensure_run

    await ensure_run(
        engine,
        run,
        primary_url="http://127.0.0.1:8081",
        canary_url="http://127.0.0.1:8082",
        config_json={"runtime": {"gc_pause_budget_ms": 0.5, "window_s": 10}},
    )
    t0 = datetime.now(UTC) - timedelta(seconds=60)
    await insert_samples(
        engine,
        run_id,
        "canary",
        [
            RuntimeSample(
                taken_at=t0 + timedelta(seconds=10 * i),
                source="expvar",
                goroutines=10,
                heap_alloc=1,
                heap_inuse=1,
                num_gc=i,
                gc_cpu_fraction=0.0,
                pauses_ns=(100_000 if i < 2 else 900_000,),
            )
            for i in range(4)
        ],
    )
    page = render_html(await build_report(engine, run))
    svg = svgs(page)["runtime-pauses"]
    assert ref(svg, "threshold") == pytest.approx(0.5)
    failed = [
        c.get("data-failed") == "1" for c in svg.iter(f"{SVG}circle") if c.get("data-y") is not None
    ]
    assert failed == [False, False, True, True]


async def test_go_and_inconclusive_reports_render_their_charts(engine: AsyncEngine) -> None:
    for seed in (seed_go, seed_inconclusive):
        seeded = await seed(engine, _name(seed.__name__))
        page = render_html(await build_report(engine, seeded.run))
        charts = svgs(page)
        assert any(k.startswith("latency-") for k in charts)
        assert "runtime-pauses" not in charts  # no samples: no runtime charts


async def test_field_tree_counts_kinds_and_marks_noise(no_go_report: tuple[Report, str]) -> None:
    report, page = no_go_report
    (tree,) = [t for t in report.trees if t.endpoint == ORDERS]
    by_field = {f.field: f for f in tree.fields}
    total, ts = by_field["$.total"], by_field["$.ts"]
    assert (total.exchanges, total.kinds, total.noise) == (4, {"value": 4}, False)
    assert ts.noise and ts.kinds == {"value": 14}
    assert tree.fields[0].field == "$.total"  # failing fields before noise
    assert total.rate == pytest.approx(4 / 14)
    assert "4 (28.6% of pairs)" in page
    # the example links to the exchange the file carries as an anchor
    trace = total.examples[0].example_trace_id
    assert f'href="#x-{trace}"' in page and f'id="x-{trace}"' in page


async def test_root_cause_first_and_consequence_marked(engine: AsyncEngine) -> None:
    """$.stock differs in 6 exchanges from the start; $.left only ever with it, later:
    a likely consequence. $.note differs alone, later still."""
    run = _name("cause")
    run_id = await make_run(engine, run)
    bodies = []
    for i in range(10):
        p = {"stock": 5, "left": 5, "note": "x"}
        c = dict(p)
        if i < 6:
            c["stock"] = 4
        if 2 <= i < 5:
            c["left"] = 4
        if i == 8:
            c["note"] = "y"
        bodies.append((p, c, None))
    await add_exchanges(engine, run_id, ORDERS, bodies)
    await judge(engine, run_id)
    report = await build_report(engine, run)
    (tree,) = report.trees
    assert [(f.field, f.consequence_of) for f in tree.fields] == [
        ("$.stock", None),
        ("$.left", "$.stock"),
        ("$.note", None),
    ]
    assert "likely consequence of" in render_html(report)


async def test_upstream_text_is_escaped_everywhere(engine: AsyncEngine) -> None:
    run = _name("xss")
    run_id = await make_run(engine, run)
    traces = await add_exchanges(
        engine,
        run_id,
        ORDERS,
        [
            ({"note": "ok", "id": i}, {"note": SCRIPT + '"><svg onload=x>', "id": i}, None)
            for i in range(3)
        ],
    )
    await judge(engine, run_id)
    page = render_html(await build_report(engine, run))
    assert "<script" not in page and "onload=x>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    svgs(page)  # every chart still parses
    async with serve_admin(engine) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/runs/{run}/exchanges/{traces[0]}") as resp:
            assert resp.status == 200
            text = await resp.text()
        assert "<script" not in text and "&lt;script&gt;" in text
        assert "<mark" in text  # the differing value is highlighted
        assert "judged strict" in text


async def test_admin_pages_and_fields_api(engine: AsyncEngine, no_go: Seeded) -> None:
    async with serve_admin(engine) as base, aiohttp.ClientSession() as http:
        for path in ("/", "/runs"):
            async with http.get(base + path) as resp:
                assert resp.status == 200
                text = await resp.text()
                assert f'href="/runs/{no_go.run}"' in text
        async with http.get(f"{base}/runs/{no_go.run}") as resp:
            page = await resp.text()
        trace = no_go.traces["wrong_total"][0]
        assert f"/runs/{no_go.run}/exchanges/" in page
        assert 'id="x-' not in page  # served: examples link to the exchange pages instead
        async with http.get(f"{base}/runs/{no_go.run}/exchanges/{trace}") as resp:
            assert resp.status == 200
            assert "$.total" in await resp.text()
        async with http.get(f"{base}/runs/{no_go.run}/exchanges/nope") as resp:
            assert resp.status == 404
        async with http.get(
            f"{base}/api/v1/runs/{no_go.run}/fields", params={"endpoint": ORDERS}
        ) as resp:
            assert resp.status == 200
            body = await resp.json()
        (tree,) = body["endpoints"]
        assert tree["endpoint"] == ORDERS and tree["pairs"] == 14
        first = tree["fields"][0]
        assert first["field"] == "$.total" and first["kinds"]["value"] == 4
        assert first["kinds"]["missing"] == 0 and first["noise"] is False
        assert [c["segment"] for c in tree["tree"]["children"]] == ["total", "ts"]
        async with http.get(
            f"{base}/api/v1/runs/{no_go.run}/fields", params={"endpoint": "GET /nope"}
        ) as resp:
            assert resp.status == 404


async def test_checks_show_units_and_the_runtime_table(no_go_report: tuple[Report, str]) -> None:
    _, page = no_go_report
    assert "0.286 (28.6% of pairs)" in page  # the strict check's observed rate
    assert 'class="runtime-check"' in page
    assert "samples=" not in page and "pause_p99_ms=" not in page


def test_bucket_width_bounds() -> None:
    from store.report_series import MAX_BUCKETS, SHORT_RUN_S, bucket_seconds

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert bucket_seconds(None, None) == 60
    assert bucket_seconds(t0, t0 + timedelta(seconds=SHORT_RUN_S - 1)) == 10
    assert bucket_seconds(t0, t0 + timedelta(seconds=SHORT_RUN_S)) == 60
    at_bound = t0 + timedelta(seconds=MAX_BUCKETS * 60 - 1)  # MAX_BUCKETS one-minute buckets
    assert bucket_seconds(t0, at_bound) == 60
    assert bucket_seconds(t0, at_bound + timedelta(seconds=1)) == 120
