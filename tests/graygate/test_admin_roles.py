"""Named admin tokens with roles: the real admin application, configured through the real
loader (tokens from the environment), over real PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from config.load import config_from_mapping
from graygate.admin.app import make_admin_app
from graygate.errors import ConfigError
from store.waivers import waiver_trail
from tests.diff.test_waivers import planted

ENV = {
    "GRAYGATE_ADMIN_TOKEN": "the-write-token",
    "GRAYGATE_CI_TOKEN": "the-ci-read-token",
    "RELEASE_BOT_TOKEN": "the-bot-write-token",
}
ADMIN = {
    "listen": "127.0.0.1:0",
    "tokens": [
        {"name": "ci", "role": "read", "token_env": "GRAYGATE_CI_TOKEN"},
        {"name": "release-bot", "role": "write", "token_env": "RELEASE_BOT_TOKEN"},
        {"name": "unset", "role": "write", "token_env": "NOT_SET_ANYWHERE"},
    ],
}


def config(admin: dict[str, object], env: dict[str, str]) -> object:
    return config_from_mapping(
        {
            "run": "roles",
            "upstreams": {"primary": "http://127.0.0.1:8081", "canary": "http://127.0.0.1:8082"},
            "admin": admin,
        },
        env=env,
    )


@asynccontextmanager
async def serve(engine: AsyncEngine, env: dict[str, str] = ENV) -> AsyncIterator[str]:
    app = make_admin_app(config(ADMIN, env), engine)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


WAIVER = {"endpoint": "GET /api/orders/{id}", "field": "$.status", "reason": "accepted"}


async def test_a_read_token_reads_and_cannot_write(
    http: aiohttp.ClientSession,
    engine: AsyncEngine,
    run_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await planted(engine, run_name)
    caplog.set_level(logging.WARNING, logger="graygate.admin.app")
    async with serve(engine) as base:
        ci = bearer(ENV["GRAYGATE_CI_TOKEN"])
        for path in ("verdict", "endpoints", "waivers"):
            async with http.get(f"{base}/api/v1/runs/{run_name}/{path}", headers=ci) as resp:
                assert resp.status == 200, await resp.text()
        async with http.get(f"{base}/runs/{run_name}", headers=ci) as resp:
            assert resp.status == 200
        async with http.post(f"{base}/api/v1/runs/{run_name}/gate", headers=ci, json={}) as resp:
            assert resp.status == 412  # the webhook gate reads: NO_GO

        url = f"{base}/api/v1/runs/{run_name}/waivers"
        async with http.post(url, headers=ci, json=WAIVER) as resp:
            assert resp.status == 403
            assert (await resp.json())[
                "error"
            ] == "token 'ci' has role read: this needs a write token"
        async with http.post(f"{base}/api/v1/waivers/1/revoke", headers=ci, json={}) as resp:
            assert resp.status == 403
        async with http.post(url, headers=bearer("guess"), json=WAIVER) as resp:
            assert resp.status == 401
        async with http.post(url, json=WAIVER) as resp:
            assert resp.status == 401
        async with http.get(url, headers=bearer("")) as resp:
            assert resp.status == 401  # the unset named token opens nothing

        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 5, refused
        assert sum("token 'ci' has role read" in m and "(403)" in m for m in refused) == 2
        assert sum("wrong token (401)" in m for m in refused) == 2
        assert sum("no token (401)" in m for m in refused) == 1
        assert all(t not in m for m in refused for t in ENV.values())  # never the token

        async with http.get(url, headers=ci) as resp:
            assert (await resp.json())["waivers"] == []  # nothing was added


async def test_write_tokens_are_the_by_of_the_trail(
    http: aiohttp.ClientSession, engine: AsyncEngine, run_name: str
) -> None:
    await planted(engine, run_name)
    async with serve(engine) as base:
        url = f"{base}/api/v1/runs/{run_name}/waivers"
        async with http.post(url, headers=bearer(ENV["RELEASE_BOT_TOKEN"]), json=WAIVER) as resp:
            assert resp.status == 201, await resp.text()
            added = await resp.json()
        assert added["by"] == "release-bot"
        revoke = f"{base}/api/v1/waivers/{added['id']}/revoke"
        headers = bearer(ENV["GRAYGATE_ADMIN_TOKEN"])
        async with http.post(revoke, headers=headers, json={"reason": "done"}) as resp:
            assert resp.status == 200
    trail = await waiver_trail(engine, [added["id"]])
    assert [(e.action, e.by) for e in trail] == [("add", "release-bot"), ("revoke", "admin")]


async def test_named_tokens_alone_close_the_api(
    http: aiohttp.ClientSession, engine: AsyncEngine, run_name: str
) -> None:
    await planted(engine, run_name)
    async with serve(engine, {"GRAYGATE_CI_TOKEN": "only-this"}) as base:
        async with http.get(f"{base}/api/v1/runs/{run_name}/verdict") as resp:
            assert resp.status == 401
        async with http.get(
            f"{base}/api/v1/runs/{run_name}/verdict", headers=bearer("only-this")
        ) as resp:
            assert resp.status == 200


def test_token_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"admin.tokens\[0\].token: is not read from the file"):
        config({"tokens": [{"name": "ci", "token_env": "X", "token": "inline"}]}, {})
    with pytest.raises(ConfigError, match="distinct and not 'admin'"):
        config({"tokens": [{"name": "admin", "token_env": "X"}]}, {})
    with pytest.raises(ConfigError, match="distinct"):
        config({"tokens": [{"name": "a", "token_env": "X"}, {"name": "a", "token_env": "Y"}]}, {})
    with pytest.raises(ConfigError, match="role"):
        config({"tokens": [{"name": "a", "token_env": "X", "role": "owner"}]}, {})
    cfg = config(
        {"tokens": [{"name": "a", "token_env": "GRAYGATE_A_TOKEN"}]},
        {"GRAYGATE_A_TOKEN": "s3cr3t-a"},
    )
    (token,) = cfg.admin.tokens  # type: ignore[attr-defined]
    assert (token.name, token.role, token.token) == ("a", "read", "s3cr3t-a")
    assert "s3cr3t-a" not in repr(cfg) and "s3cr3t-a" not in str(cfg.model_dump())  # type: ignore[attr-defined]
    # 100 named tokens at most
    many = [{"name": f"t{i}", "token_env": f"T{i}"} for i in range(101)]
    with pytest.raises(ConfigError, match=r"admin\.tokens"):
        config({"tokens": many}, {})
    config({"tokens": many[:100]}, {})


def test_named_tokens_are_censored_by_key_and_read_back() -> None:
    from config.censor import censor_config

    cfg = config(
        {"tokens": [{"name": "ci", "role": "read", "token_env": "GRAYGATE_CI_TOKEN"}]},
        {"GRAYGATE_CI_TOKEN": "s3cr3t-ci"},
    )
    stored = censor_config(cfg.model_dump(mode="json"))  # type: ignore[attr-defined]
    assert stored["admin"]["tokens"] == [
        {"name": "ci", "role": "read", "token_env": "GRAYGATE_CI_TOKEN"}
    ]
    assert censor_config({"tokens": ["raw-secret"]}) == {"tokens": "***"}
    assert censor_config({"tokens": [{"token": "raw"}]}) == {"tokens": [{"token": "***"}]}
    config(stored["admin"], {})  # what is stored reads back
