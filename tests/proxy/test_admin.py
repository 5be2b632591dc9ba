"""The admin application: probes, metrics, token, errors as JSON; real app, real database."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from store.engine import create_engine
from store.migrate import head_revision, revisions, upgrade
from tests.diff.reportseed import Seeded, seed_go, seed_no_go, serve_admin

TOKEN = "s3cret-admin-token"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture(scope="module")
async def go(engine: AsyncEngine) -> Seeded:
    return await seed_go(engine, f"admin-go-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
async def no_go(engine: AsyncEngine) -> Seeded:
    return await seed_no_go(engine, f"admin-nogo-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def away() -> AsyncIterator[AsyncEngine]:
    """An engine whose database is away: nothing listens on port 1."""
    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/graygate", pool_size=1)
    yield engine
    await engine.dispose()


async def _get(
    http: aiohttp.ClientSession, url: str, status: int, **kw: Any
) -> tuple[Any, aiohttp.ClientResponse]:
    async with http.get(url, **kw) as resp:
        text = await resp.text()
        assert resp.status == status, text
        body = await resp.json() if resp.content_type == "application/json" else text
        return body, resp


# --------------------------------------------------------------------------- probes


async def test_healthz_and_readyz(http: aiohttp.ClientSession, engine: AsyncEngine) -> None:
    async with serve_admin(engine) as base:
        body, _ = await _get(http, f"{base}/healthz", 200)
        assert body == {"status": "ok"}
        body, _ = await _get(http, f"{base}/readyz", 200)
        assert body == {"ready": True, "revision": head_revision(), "head": head_revision()}


async def test_database_away(http: aiohttp.ClientSession, away: AsyncEngine) -> None:
    async with serve_admin(away) as base:
        body, _ = await _get(http, f"{base}/healthz", 200)  # alive all the same
        body, _ = await _get(http, f"{base}/readyz", 503)
        assert body["ready"] is False and body["status"] == 503
        assert "127.0.0.1:1" in body["error"] and "unavailable" in body["error"]
        assert body["head"] == head_revision()


async def test_readyz_on_an_empty_database(http: aiohttp.ClientSession, make_database: Any) -> None:
    url: str = await make_database()
    engine = create_engine(url, pool_size=1)
    try:
        async with serve_admin(engine) as base:
            body, _ = await _get(http, f"{base}/readyz", 503)
            assert body["revision"] is None
            assert "none (empty database)" in body["error"]
            assert "graygate db upgrade" in body["error"]
    finally:
        await engine.dispose()


async def test_readyz_on_an_older_migration(
    http: aiohttp.ClientSession, make_database: Any
) -> None:
    url: str = await make_database()
    older = revisions()[-2]
    await asyncio.to_thread(upgrade, url, older)
    engine = create_engine(url, pool_size=1)
    try:
        async with serve_admin(engine) as base:
            body, _ = await _get(http, f"{base}/readyz", 503)
            assert body["revision"] == older and body["head"] == head_revision()
            assert f"revision {older}" in body["error"]
            await asyncio.to_thread(upgrade, url)
            body, _ = await _get(http, f"{base}/readyz", 200)
            assert body["ready"] is True
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- metrics


async def test_metrics(http: aiohttp.ClientSession, engine: AsyncEngine) -> None:
    async with serve_admin(engine) as base:
        text, resp = await _get(http, f"{base}/metrics", 200)
        assert resp.content_type == "text/plain"
        assert "python_info" in text
        text, resp = await _get(
            http,
            f"{base}/metrics",
            200,
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        assert resp.content_type == "application/openmetrics-text"
        assert text.rstrip().endswith("# EOF")


async def test_metrics_multiprocess(
    http: aiohttp.ClientSession,
    engine: AsyncEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, /metrics shows what other processes counted."""
    writer = textwrap.dedent(
        """
        from prometheus_client import Counter
        Counter("graygate_mp_probe", "written by another process").inc(3)
        """
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", writer], env=env, check=True, timeout=60
    )
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    async with serve_admin(engine) as base:
        text, _ = await _get(http, f"{base}/metrics", 200)
    assert "graygate_mp_probe_total 3.0" in text


# --------------------------------------------------------------------------- token


async def test_token_required(http: aiohttp.ClientSession, engine: AsyncEngine, go: Seeded) -> None:
    async with serve_admin(engine, token=TOKEN) as base:
        runs = f"{base}/api/v1/runs"
        body, resp = await _get(http, runs, 401)
        assert body == {
            "error": "the admin token is required: Authorization: Bearer <token>",
            "status": 401,
        }
        challenges = resp.headers.getall("WWW-Authenticate")
        assert any(c.startswith("Bearer") for c in challenges)
        assert any(c.startswith("Basic") for c in challenges)
        body, _ = await _get(http, runs, 401, headers={"Authorization": "Bearer nope"})
        assert body["error"] == "the admin token is wrong"
        await _get(http, runs, 200, headers={"Authorization": f"Bearer {TOKEN}"})
        basic = base64.b64encode(f"ops:{TOKEN}".encode()).decode()
        await _get(http, f"{base}/runs/{go.run}", 200, headers={"Authorization": f"Basic {basic}"})
        await _get(http, f"{base}/runs/{go.run}", 401)
        # Probes and metrics stay open, as the kubelet and Prometheus call them.
        await _get(http, f"{base}/healthz", 200)
        await _get(http, f"{base}/readyz", 200)
        await _get(http, f"{base}/metrics", 200)


async def test_flagger_webhook_token(
    http: aiohttp.ClientSession, engine: AsyncEngine, go: Seeded, no_go: Seeded
) -> None:
    """Flagger cannot set headers: the token may come in the webhook's metadata."""
    async with serve_admin(engine, token=TOKEN) as base:
        payload: dict[str, Any] = {"name": "orders", "namespace": "shop", "metadata": {}}
        async with http.post(f"{base}/api/v1/runs/{go.run}/gate", json=payload) as resp:
            assert resp.status == 401
        payload["metadata"] = {"token": TOKEN}
        async with http.post(f"{base}/api/v1/runs/{go.run}/gate", json=payload) as resp:
            assert resp.status == 200
            assert (await resp.json())["verdict"] == "GO"
        async with http.post(f"{base}/api/v1/runs/{no_go.run}/gate", json=payload) as resp:
            assert resp.status == 412
        payload["metadata"] = {"token": "wrong"}
        async with http.post(f"{base}/api/v1/runs/{go.run}/gate", json=payload) as resp:
            assert resp.status == 401
        # The body token is for the gate only.
        async with http.get(f"{base}/api/v1/runs/{go.run}/verdict", json=payload) as resp:
            assert resp.status == 401


# --------------------------------------------------------------------------- errors


def _boom(app: web.Application) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret detail that must not leak")

    app.router.add_get("/boom", boom)


async def test_errors_are_json(http: aiohttp.ClientSession, engine: AsyncEngine) -> None:
    async with serve_admin(engine, extra=_boom) as base:
        body, _ = await _get(http, f"{base}/no/such/route", 404)
        assert body == {"error": "Not Found", "status": 404}
        async with http.delete(f"{base}/api/v1/runs") as resp:
            assert resp.status == 405
            assert "GET" in resp.headers["Allow"]
            assert await resp.json() == {"error": "Method Not Allowed", "status": 405}
        body, _ = await _get(http, f"{base}/boom", 500)
        assert body["status"] == 500 and "secret" not in body["error"]
