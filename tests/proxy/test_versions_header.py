"""``versions: {header: X-Build-Version}``: real upstreams answer the header, the real proxy
forwards and mirrors, the real recorder tallies what each side named into the real store;
the run's versions are the first seen, and a canary that changes build mid-run is shown by
the admin API, ``graygate runs list`` and the report as a change."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from config.load import config_from_mapping
from proxy.app import make_proxy_app
from proxy.recorder import Recorder
from store.exchanges import count_exchanges
from store.lifecycle import list_run_details
from store.reports import run_overview
from store.run_versions import VersionSeen, add_versions, version_changes, versions_seen
from store.runs import ensure_run
from store.tables import run_versions, runs
from tests.diff.reportseed import serve_admin
from tests.proxy.harness import handler_app, serve_app, serve_proxy

HEADER = "X-Build-Version"


def versioned(version: object) -> web.Application:
    """An upstream answering an order with ``version()`` in ``X-Build-Version``."""

    async def handler(request: web.Request) -> web.Response:
        v = version() if callable(version) else version
        headers = {HEADER: str(v)} if v is not None else {}
        return web.json_response({"id": request.path}, headers=headers)

    return handler_app(handler)


async def test_versions_named_by_the_answers(engine: AsyncEngine, run_name: str) -> None:
    canary_calls = 0

    def canary_version() -> str:
        nonlocal canary_calls
        canary_calls += 1
        return "2.0.0-rc1" if canary_calls <= 10 else "2.0.0-rc2"

    async with (
        serve_app(versioned("1.14.2")) as primary,
        serve_app(versioned(canary_version)) as canary,
    ):
        cfg = config_from_mapping(
            {
                "run": run_name,
                "upstreams": {"primary": primary, "canary": canary},
                "versions": {"header": HEADER},
            },
            env={},
        )
        run_id = await ensure_run(
            engine,
            run_name,
            primary_url=primary,
            canary_url=canary,
            config_json=cfg.model_dump(mode="json"),
        )
        async with Recorder(engine, cfg.record, version_header=cfg.versions.header) as rec:
            app = make_proxy_app(cfg, recorder=rec, run_id=run_id)
            async with (
                serve_proxy(app) as proxy,
                aiohttp.ClientSession() as http,
            ):
                for i in range(25):  # one at a time: the canary's 11th answer is the change
                    async with http.get(f"{proxy}/api/orders/{i}") as resp:
                        assert resp.status == 200
                        assert resp.headers[HEADER] == "1.14.2"  # the client's answer
                    for _ in range(200):  # the mirror's answer is in before the next one
                        if canary_calls > i:
                            break
                        await asyncio.sleep(0.01)
            await rec.flush()
            for _ in range(200):
                if await count_exchanges(engine, run_id) == 25:
                    break
                await rec.flush()
                await asyncio.sleep(0.02)
            await rec.flush()

    async with engine.connect() as conn:
        got = (
            await conn.execute(
                sa.select(runs.c.primary_version, runs.c.canary_version).where(runs.c.id == run_id)
            )
        ).one()
        tallied = {
            (r.role, r.version): r.exchanges
            for r in await conn.execute(
                sa.select(run_versions).where(run_versions.c.run_id == run_id)
            )
        }
        seen = (await versions_seen(conn, [run_id]))[run_id]
    assert tuple(got) == ("1.14.2", "2.0.0-rc1")  # the first seen of each side
    assert tallied == {
        ("primary", "1.14.2"): 25,
        ("canary", "2.0.0-rc1"): 10,
        ("canary", "2.0.0-rc2"): 15,
    }
    change = "canary version changed: 2.0.0-rc1 -> 2.0.0-rc2 (10 then 15 exchanges)"
    assert version_changes(seen) == (change,)

    async with serve_admin(engine) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/v1/runs?limit=1000") as resp:
            body = await resp.json()
    (shown,) = [r for r in body["runs"] if r["name"] == run_name]
    assert (shown["primary_version"], shown["canary_version"]) == ("1.14.2", "2.0.0-rc1")
    assert shown["version_changes"] == [change]
    (listed,) = [r for r in await list_run_details(engine) if r.name == run_name]
    assert listed.as_dict()["version_changes"] == [change]
    assert (await run_overview(engine, run_name)).version_changes == (change,)


async def test_configured_versions_stay_and_tallies_add_up(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await ensure_run(
        engine,
        run_name,
        primary_url=None,
        canary_url=None,
        config_json={"versions": {"canary": "2.0.0"}},
    )
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    # Two processes' tallies of the same versions, flushed at different times.
    await add_versions(engine, {(run_id, "canary", "2.0.1"): VersionSeen(3, t0, t0)})
    later = t0 + timedelta(minutes=1)
    await add_versions(
        engine,
        {
            (run_id, "canary", "2.0.1"): VersionSeen(2, later, later),
            (run_id, "primary", "1.0"): VersionSeen(5, later, later),
        },
    )
    async with engine.connect() as conn:
        got = (
            await conn.execute(
                sa.select(runs.c.primary_version, runs.c.canary_version).where(runs.c.id == run_id)
            )
        ).one()
        (seen,) = (await versions_seen(conn, [run_id])).values()
    # The configured canary version stays; the primary's was unknown: the first seen.
    assert tuple(got) == ("1.0", "2.0.0")
    assert [(s.role, s.version, s.exchanges) for s in seen] == [
        ("canary", "2.0.1", 5),
        ("primary", "1.0", 5),
    ]
    (canary,) = [s for s in seen if s.role == "canary"]
    assert (canary.first_seen_at, canary.last_seen_at) == (t0, later)
    assert version_changes(seen) == ()
