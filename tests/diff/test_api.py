"""The admin API (graygate.admin.api) served by the real admin application on a loopback port."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from graygate.admin.api import render_body
from store.aggregates import latest_verdicts
from store.engine import create_engine
from tests.diff.reportseed import (
    ORDERS,
    Seeded,
    seed_go,
    seed_inconclusive,
    seed_no_go,
    serve_admin,
)

LOGO = "GET /static/logo.png"


def _name(kind: str) -> str:
    return f"api-{kind}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def no_go(engine: AsyncEngine) -> Seeded:
    return await seed_no_go(engine, _name("nogo"))


@pytest.fixture(scope="module")
async def go(engine: AsyncEngine) -> Seeded:
    return await seed_go(engine, _name("go"))


@pytest.fixture(scope="module")
async def inconclusive(engine: AsyncEngine) -> Seeded:
    return await seed_inconclusive(engine, _name("inc"))


@pytest.fixture(scope="module")
async def runs(go: Seeded, no_go: Seeded, inconclusive: Seeded) -> dict[str, Seeded]:
    return {"go": go, "no_go": no_go, "inconclusive": inconclusive}


@pytest.fixture(scope="module")
async def base(engine: AsyncEngine) -> AsyncIterator[str]:
    async with serve_admin(engine) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def _json(http: aiohttp.ClientSession, method: str, url: str, status: int, **kw: Any) -> Any:
    async with http.request(method, url, **kw) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        return await resp.json()


async def _not_found(http: aiohttp.ClientSession, url: str, needle: str) -> None:
    body = await _json(http, "GET", url, 404)
    assert body["status"] == 404
    assert needle in body["error"]


# --------------------------------------------------------------------------- runs


async def test_runs_list(http: aiohttp.ClientSession, base: str, no_go: Seeded, go: Seeded) -> None:
    body = await _json(http, "GET", f"{base}/api/v1/runs?limit=1000", 200)
    runs = {r["name"]: r for r in body["runs"]}
    assert runs[no_go.run]["exchanges"] == 21
    assert runs[no_go.run]["differing"] == 4
    assert runs[go.run]["judged"] == 16
    assert runs[go.run]["canary_version"] == "v2.0.0-rc1"
    assert isinstance(runs[go.run]["created_at"], str)
    bad = await _json(http, "GET", f"{base}/api/v1/runs?limit=zero", 400)
    assert bad == {"error": "limit must be an integer, got 'zero'", "status": 400}


# --------------------------------------------------------------------------- verdict, gate


@pytest.mark.parametrize(
    ("kind", "verdict"), [("go", "GO"), ("no_go", "NO_GO"), ("inconclusive", "INCONCLUSIVE")]
)
async def test_verdict_is_always_200(
    http: aiohttp.ClientSession, base: str, kind: str, verdict: str, runs: dict[str, Seeded]
) -> None:
    seeded = runs[kind]
    body = await _json(http, "GET", f"{base}/api/v1/runs/{seeded.run}/verdict", 200)
    assert body["run"] == seeded.run
    assert body["verdict"] == verdict  # Argo Rollouts: jsonPath "{$.verdict}"
    names = [c["name"] for c in body["checks"]]
    assert "evidence" in names and "strict" in names
    for check in body["checks"]:
        assert set(check) >= {"name", "passed", "observed", "threshold", "detail", "blocking"}


@pytest.mark.parametrize(
    ("kind", "status", "verdict", "gate"),
    [
        ("go", 200, "GO", "open"),
        ("no_go", 412, "NO_GO", "closed"),
        ("inconclusive", 503, "INCONCLUSIVE", "wait"),
    ],
)
async def test_gate_status_codes(
    engine: AsyncEngine,
    http: aiohttp.ClientSession,
    base: str,
    kind: str,
    status: int,
    verdict: str,
    gate: str,
    runs: dict[str, Seeded],
) -> None:
    seeded = runs[kind]
    url = f"{base}/api/v1/runs/{seeded.run}/gate"
    body = await _json(http, "GET", url, status)
    assert (body["verdict"], body["gate"]) == (verdict, gate)
    assert body["reason"]
    # Flagger: a POST with its webhook payload, judged by the status code alone.
    payload = {"name": "orders", "namespace": "shop", "phase": "Progressing", "metadata": {}}
    body = await _json(http, "POST", url, status, json=payload)
    assert body["verdict"] == verdict
    # Argo Rollouts' web metric: 200 always, judged on {$.verdict}.
    body = await _json(http, "GET", f"{url}?always_200=true", 200)
    assert (body["verdict"], body["gate"]) == (verdict, gate)
    # The gate's answers are kept in the run's history.
    listing = await _json(http, "GET", f"{base}/api/v1/runs?limit=1000", 200)
    [row] = [r for r in listing["runs"] if r["name"] == seeded.run]
    assert row["last_verdict"] == verdict
    # ... once per change of verdict, not once per poll.
    assert [h.verdict for h in await latest_verdicts(engine, seeded.run)] == [verdict]


async def test_gate_names_the_failing_check(
    http: aiohttp.ClientSession, base: str, no_go: Seeded
) -> None:
    body = await _json(http, "GET", f"{base}/api/v1/runs/{no_go.run}/gate", 412)
    assert "strict" in body["reason"] and "$.total" in body["reason"]


async def test_unknown_run_is_404_everywhere(http: aiohttp.ClientSession, base: str) -> None:
    for path in ("verdict", "gate", "endpoints", "differences"):
        await _not_found(http, f"{base}/api/v1/runs/no-such-run/{path}", "unknown run")
    body = await _json(http, "POST", f"{base}/api/v1/runs/no-such-run/gate", 404, json={})
    assert body["error"] == "unknown run 'no-such-run'"
    await _not_found(http, f"{base}/runs/no-such-run", "unknown run")
    await _not_found(http, f"{base}/api/v1/runs/no-such-run/gate?always_200=1", "unknown run")


# --------------------------------------------------------------------------- endpoints


async def test_endpoints(http: aiohttp.ClientSession, base: str, no_go: Seeded) -> None:
    body = await _json(http, "GET", f"{base}/api/v1/runs/{no_go.run}/endpoints", 200)
    stats = {e["endpoint"]: e for e in body["endpoints"]}
    assert set(stats) == {ORDERS, LOGO, "GET /ping"}
    orders = stats[ORDERS]
    assert (orders["pairs"], orders["differ"], orders["error"]) == (14, 4, 1)
    assert orders["strict_mismatches"] == 4
    assert orders["strict_mismatch_rate"] == pytest.approx(4 / 14)
    assert orders["noise"] == 14
    assert orders["primary_p50_ms"] > 0 and orders["canary_p99_ms"] > 0
    fields = {(f["field"], f["judgement"]): f for f in body["fields"]}
    total = fields[("$.total", "strict")]
    assert total["exchanges"] == 4
    assert total["example"]["trace_id"] in no_go.traces["wrong_total"]
    assert (total["example"]["primary_value"], total["example"]["other_value"]) == (10.5, 10.75)
    assert ("$.ts", "noise") in fields


# --------------------------------------------------------------------------- differences


async def test_differences_pagination(
    http: aiohttp.ClientSession, base: str, no_go: Seeded
) -> None:
    url = f"{base}/api/v1/runs/{no_go.run}/differences"
    ids: list[int] = []
    after: int | None = None
    while True:
        params = {"limit": "7"} | ({"after": str(after)} if after is not None else {})
        page = await _json(http, "GET", url, 200, params=params)
        assert page["run"] == no_go.run
        ids += [d["id"] for d in page["items"]]
        if page["next"] is None:
            break
        after = page["next"]
    # 18 canary differences and 14 primary-vs-secondary ones
    assert len(ids) == len(set(ids)) == 32 and ids == sorted(ids)


async def test_differences_filters(http: aiohttp.ClientSession, base: str, no_go: Seeded) -> None:
    url = f"{base}/api/v1/runs/{no_go.run}/differences"
    page = await _json(http, "GET", url, 200, params={"field": "$.total"})
    assert len(page["items"]) == 4 and page["next"] is None
    item = page["items"][0]
    assert set(item) >= {
        "id",
        "trace_id",
        "endpoint",
        "path",
        "field",
        "kind",
        "primary_value",
        "other_value",
        "judgement",
        "rule",
        "against",
    }
    assert {i["trace_id"] for i in page["items"]} == set(no_go.traces["wrong_total"])
    params = {"endpoint": ORDERS, "path": "$.ts", "against": "canary"}
    page = await _json(http, "GET", url, 200, params=params)
    assert len(page["items"]) == 14 and {i["against"] for i in page["items"]} == {"canary"}
    page = await _json(http, "GET", url, 200, params={"endpoint": LOGO})
    assert page == {"run": no_go.run, "items": [], "next": None}
    page = await _json(http, "GET", url, 200, params={"judgement": "strict", "limit": "2"})
    assert len(page["items"]) == 2 and page["next"] == page["items"][-1]["id"]


async def test_differences_bad_parameters(
    http: aiohttp.ClientSession, base: str, no_go: Seeded
) -> None:
    url = f"{base}/api/v1/runs/{no_go.run}/differences"
    for params, needle in (
        ({"limit": "0"}, "limit must be between 1 and 1000"),
        ({"limit": "5000"}, "limit must be between"),
        ({"after": "abc"}, "after must be an integer"),
        ({"after": "-1"}, "after must be between"),
    ):
        body = await _json(http, "GET", url, 400, params=params)
        assert needle in body["error"] and body["status"] == 400


# --------------------------------------------------------------------------- exchanges


async def test_exchange_with_json_bodies(
    http: aiohttp.ClientSession, base: str, no_go: Seeded
) -> None:
    trace = no_go.traces["wrong_total"][0]
    body = await _json(http, "GET", f"{base}/api/v1/exchanges/{trace}", 200)
    assert (body["trace_id"], body["run"], body["endpoint"]) == (trace, no_go.run, ORDERS)
    assert body["request"]["method"] == "GET"
    assert set(body["responses"]) == {"primary", "canary", "secondary"}
    primary, canary = body["responses"]["primary"], body["responses"]["canary"]
    assert primary["status"] == 200 and primary["headers"]["content-type"] == "application/json"
    assert primary["body"]["encoding"] == "json"
    assert primary["body"]["value"]["total"] == 10.5
    assert canary["body"]["value"]["total"] == 10.75
    assert body["judgement"]["outcome"] == "differ"
    assert sorted((d["against"], d["field"]) for d in body["differences"]) == [
        ("canary", "$.total"),
        ("canary", "$.ts"),
        ("secondary", "$.ts"),
    ]


async def test_exchange_with_binary_text_and_error(
    http: aiohttp.ClientSession, base: str, no_go: Seeded
) -> None:
    logo = await _json(http, "GET", f"{base}/api/v1/exchanges/{no_go.traces['logo'][0]}", 200)
    raw = base64.b64decode(logo["responses"]["primary"]["body"]["value"])
    assert logo["responses"]["primary"]["body"]["encoding"] == "base64"
    assert raw.startswith(b"\x89PNG")
    assert set(logo["responses"]) == {"primary", "canary"}
    ping = await _json(
        http, "GET", f"{base}/api/v1/exchanges/{no_go.traces['ping'][0]}?run={no_go.run}", 200
    )
    assert ping["responses"]["canary"]["body"] == {
        "encoding": "text",
        "value": "pong",
        "size": 4,
        "truncated": False,
    }
    timeout = await _json(http, "GET", f"{base}/api/v1/exchanges/{no_go.traces['timeout'][0]}", 200)
    assert timeout["responses"]["canary"]["error"] == "timeout"
    assert timeout["responses"]["canary"]["body"] is None
    assert timeout["judgement"]["outcome"] == "error"


async def test_exchange_not_found(http: aiohttp.ClientSession, base: str, no_go: Seeded) -> None:
    await _not_found(http, f"{base}/api/v1/exchanges/{'f' * 32}", "no exchange with trace id")
    trace = no_go.traces["logo"][0]
    await _not_found(http, f"{base}/api/v1/exchanges/{trace}?run=no-such-run", "unknown run")


def test_render_body() -> None:
    assert render_body(None) is None
    assert render_body(b'{"a": [1, 2]}') == {
        "encoding": "json",
        "value": {"a": [1, 2]},
        "size": 13,
        "truncated": False,
    }
    assert render_body(b'{"a": [1,', truncated=True)["encoding"] == "text"  # type: ignore[index]
    assert render_body(b"")["encoding"] == "text"  # type: ignore[index]
    assert render_body(b"\xff\x00")["value"] == "/wA="  # type: ignore[index]


# --------------------------------------------------------------------------- report


async def test_html_report(http: aiohttp.ClientSession, base: str, no_go: Seeded) -> None:
    async with http.get(f"{base}/runs/{no_go.run}") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
    assert 'class="banner NO_GO"' in page and "$.total" in page and no_go.run in page


# --------------------------------------------------------------------------- database away


async def test_database_away_is_503(http: aiohttp.ClientSession, no_go: Seeded) -> None:
    away = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/graygate", pool_size=1)
    try:
        async with serve_admin(away) as url:
            for path in (
                "/api/v1/runs",
                f"/api/v1/runs/{no_go.run}/verdict",
                f"/api/v1/runs/{no_go.run}/gate",
                f"/api/v1/runs/{no_go.run}/differences",
                f"/api/v1/exchanges/{no_go.traces['ping'][0]}",
                f"/runs/{no_go.run}",
            ):
                body = await _json(http, "GET", url + path, 503)
                assert body["status"] == 503 and "unavailable" in body["error"], path
    finally:
        await away.dispose()
