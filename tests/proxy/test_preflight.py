"""Preflight against real services: the Python primary, the Go canary (or its Python
stand-in), a dead port; findings stored in a real PostgreSQL."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import (
    GraygateConfig,
    PreflightConfig,
    RuntimeConfig,
    RuntimeSource,
    UpstreamsConfig,
)
from graygate.preflight import PPROF_PATH, Finding, preflight
from store.runs import ensure_run
from store.runtime_samples import fetch_findings
from tests.proxy.harness import closed_port
from tests.services import go_canary, python_orders, service


@contextlib.asynccontextmanager
async def canary(kind: str, binary: Path | None, fault: str = "") -> AsyncIterator[str]:
    """The canary's base URL: the Go build, or the Python stand-in."""
    if kind == "go":
        assert binary is not None
        async with go_canary(binary, fault) as url:
            yield url
    else:
        async with python_orders("canary-standin", fault or None) as url:
            yield url


@pytest.fixture(params=["go", "python-standin"])
def canary_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def binary(canary_kind: str, request: pytest.FixtureRequest) -> Path | None:
    if canary_kind == "go":
        return Path(request.getfixturevalue("canary_bin"))
    return None


def config(primary: str, canary_url: str, *, runtime: bool = True, **pre: object) -> GraygateConfig:
    return GraygateConfig(
        run=f"run-{uuid.uuid4().hex[:10]}",
        upstreams=UpstreamsConfig(primary=primary, canary=canary_url),
        runtime=RuntimeConfig(
            canary=RuntimeSource(expvar=f"{canary_url}/debug/vars") if runtime else None
        ),
        preflight=PreflightConfig.model_validate({"timeout_ms": 1500, **pre}),
    )


async def new_run(engine: AsyncEngine) -> int:
    return await ensure_run(
        engine, f"run-{uuid.uuid4().hex[:10]}", primary_url=None, canary_url=None
    )


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


async def test_healthy_pair_all_ok(
    engine: AsyncEngine, canary_kind: str, binary: Path | None
) -> None:
    run_id = await new_run(engine)
    async with python_orders("primary") as primary, canary(canary_kind, binary) as can:
        cfg = config(primary, can)
        findings = await preflight(cfg, None, engine, run_id)
    got = by_check(findings)
    assert set(got) == {
        "primary.health",
        "canary.health",
        "canary.pprof_exposed",
        "canary.runtime.expvar",
    }
    assert all(f.ok for f in findings), findings
    assert "-> 200" in got["canary.health"].detail
    assert "-> 404" in got["canary.pprof_exposed"].detail
    assert "goroutines" in got["canary.runtime.expvar"].detail
    stored = await fetch_findings(engine, run_id)
    assert [(f.check, f.ok, f.detail) for f in stored] == [
        (f.check, f.ok, f.detail) for f in findings
    ]


async def test_dead_canary(engine: AsyncEngine) -> None:
    run_id = await new_run(engine)
    dead = f"http://127.0.0.1:{closed_port()}"
    async with python_orders("primary") as primary, aiohttp.ClientSession() as session:
        findings = await preflight(config(primary, dead), session, engine, run_id)
        assert not session.closed  # the caller's session is the caller's
    got = by_check(findings)
    assert got["primary.health"].ok
    assert not got["canary.health"].ok and "refused" in got["canary.health"].detail
    assert not got["canary.pprof_exposed"].ok
    assert got["canary.pprof_exposed"].detail.startswith("not checked")
    assert not got["canary.runtime.expvar"].ok
    stored = by_check(await fetch_findings(engine, run_id))
    assert stored["canary.health"].ok is False


async def test_pprof_on_the_serving_port(
    engine: AsyncEngine, canary_kind: str, binary: Path | None
) -> None:
    run_id = await new_run(engine)
    async with (
        python_orders("primary") as primary,
        canary(canary_kind, binary, "pprof_on_serving_port") as can,
    ):
        findings = await preflight(config(primary, can), None, engine, run_id)
    got = by_check(findings)
    assert got["canary.health"].ok and got["primary.health"].ok
    pprof = got["canary.pprof_exposed"]
    assert not pprof.ok
    assert PPROF_PATH == "/debug/pprof/" and PPROF_PATH in pprof.detail
    assert "debug port" in pprof.detail


async def test_pprof_on_a_debug_port_is_fine(engine: AsyncEngine, canary_bin: Path) -> None:
    cmd = [str(canary_bin), "-listen", "127.0.0.1:0", "-debug-listen", "127.0.0.1:0"]
    async with python_orders("primary") as primary, service(cmd, listeners=2) as urls:
        debug, serving = urls  # the debug listener is announced first
        async with aiohttp.ClientSession() as s, s.get(f"{debug}/debug/pprof/") as resp:
            assert resp.status == 200  # pprof is there, on the debug port
        findings = await preflight(config(primary, serving), None, None, 0)
    assert all(f.ok for f in findings), findings


async def test_unhealthy_status_and_unreadable_runtime(engine: AsyncEngine) -> None:
    async def unhealthy(request: web.Request) -> web.Response:
        return web.Response(status=503, text="draining")

    async def not_expvar(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>")

    app = web.Application()
    app.router.add_get("/ready", unhealthy)
    app.router.add_get("/debug/vars", not_expvar)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with python_orders("primary") as primary:
            findings = await preflight(config(primary, base, health_path="/ready"), None, None, 0)
    finally:
        await runner.cleanup()
    got = by_check(findings)
    assert not got["canary.health"].ok and "-> 503" in got["canary.health"].detail
    assert not got["primary.health"].ok  # the primary has no /ready: 404
    assert got["canary.pprof_exposed"].ok
    assert not got["canary.runtime.expvar"].ok and "not JSON" in got["canary.runtime.expvar"].detail


async def test_disabled(engine: AsyncEngine) -> None:
    run_id = await new_run(engine)
    dead = f"http://127.0.0.1:{closed_port()}"
    assert await preflight(config(dead, dead, enabled=False), None, engine, run_id) == []
    assert await fetch_findings(engine, run_id) == []
