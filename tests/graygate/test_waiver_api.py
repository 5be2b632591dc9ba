"""The waivers through the admin API: the real admin application over real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import evaluate_run
from graygate.values import Verdict
from tests.diff.reportseed import serve_admin
from tests.diff.test_waivers import planted


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_add_list_revoke_over_http(
    http: aiohttp.ClientSession, engine: AsyncEngine, run_name: str
) -> None:
    await planted(engine, run_name)
    waiver = {
        "endpoint": "GET /api/orders/{id}",
        "field": "$.status",
        "reason": "renamed on purpose",
        "expires": "14d",
    }
    async with serve_admin(engine) as base:
        async with http.post(f"{base}/api/v1/runs/{run_name}/waivers", json=waiver) as resp:
            assert resp.status == 201, await resp.text()
            added = await resp.json()
        assert (added["source"], added["by"], added["state"]) == ("api", "anonymous", "active")
        assert added["expires_at"] is not None
        assert (await evaluate_run(engine, run_name)).verdict is Verdict.GO

        async with http.get(f"{base}/api/v1/runs/{run_name}/waivers") as resp:
            body = await resp.json()
        assert [w["id"] for w in body["waivers"]] == [added["id"]]
        assert body["waivers"][0]["trail"][0]["action"] == "add"

        url = f"{base}/api/v1/waivers/{added['id']}/revoke"
        async with http.post(url, json={"reason": "reverted"}) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["state"] == "revoked"
        async with http.post(url, json={"reason": "again"}) as resp:
            assert resp.status == 409
            assert "already revoked" in (await resp.json())["error"]
        assert (await evaluate_run(engine, run_name)).verdict is Verdict.NO_GO

        async with http.get(f"{base}/api/v1/runs/{run_name}/waivers?all=true") as resp:
            (w,) = (await resp.json())["waivers"]
        assert [e["action"] for e in w["trail"]] == ["add", "revoke"]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"field": "$.a", "reason": "r"}, 400, "endpoint is required"),
        ({"endpoint": "*", "field": "a", "reason": "r"}, 400, "is not a field"),
        ({"endpoint": "*", "field": "$.a", "reason": "r", "kind": "color"}, 400, "kind 'color'"),
        ({"endpoint": "*", "field": "$.a", "reason": "r", "expires": "1y"}, 400, "expires '1y'"),
        ({"endpoint": "*", "field": "$.a", "reason": 3}, 400, "reason must be a string"),
        ({"endpoint": "*", "field": "$.a", "reason": "x" * 17_000}, 413, "body above 16384"),
    ],
)
async def test_bad_waivers_are_named(
    http: aiohttp.ClientSession,
    engine: AsyncEngine,
    run_name: str,
    body: dict[str, object],
    status: int,
    says: str,
) -> None:
    await planted(engine, run_name)
    async with serve_admin(engine) as base:
        async with http.post(f"{base}/api/v1/runs/{run_name}/waivers", json=body) as resp:
            assert resp.status == status
            assert says in (await resp.json())["error"]
        async with http.post(f"{base}/api/v1/runs/nope-{run_name}/waivers", json={
            "endpoint": "*", "field": "$.a", "reason": "r"}) as resp:  # fmt: skip
            assert resp.status == 404
        async with http.post(f"{base}/api/v1/waivers/99999999999999999999/revoke",
                             json={"reason": "r"}) as resp:  # fmt: skip
            assert resp.status == 404
