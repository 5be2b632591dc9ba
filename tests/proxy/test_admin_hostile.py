"""The admin application with hostile input (issue 10, small ones): real app, real
database, raw sockets for paths a client library would normalise."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from config.load import config_from_mapping
from config.schema import GraygateConfig
from graygate.admin.exposure import check_admin_exposure
from graygate.errors import ConfigError
from tests.diff.reportseed import Seeded, seed_go, serve_admin


@pytest.fixture(scope="module")
async def go(engine: AsyncEngine) -> Seeded:
    return await seed_go(engine, f"admin-hostile-{uuid.uuid4().hex[:8]}")


async def _raw_get(base: str, target: str) -> tuple[int, bytes]:
    host, _, port = base.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/runs/%00/verdict",
        "/runs/a%00b",
        "/api/v1/exchanges/%00",
        "/api/v1/runs/x%ff%fe/verdict",  # not UTF-8
        "/api/v1/runs/{run}/differences?endpoint=%00",
        "/api/v1/runs/{run}/differences?field=a%00",
    ],
)
async def test_nul_and_bad_bytes_are_a_400_json(
    engine: AsyncEngine, go: Seeded, target: str
) -> None:
    async with serve_admin(engine) as base:
        status, body = await _raw_get(base, target.replace("{run}", go.run))
        assert status in (400, 404), body
        doc = orjson.loads(body)
        assert doc["status"] == status and "Traceback" not in body.decode("utf-8", "replace")
        # and the app still answers after it
        ok, _ = await _raw_get(base, "/healthz")
        assert ok == 200


def _cfg(listen: str, *, with_token: bool = False, **admin: object) -> GraygateConfig:
    return config_from_mapping(
        {
            "run": "r",
            "upstreams": {"primary": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"},
            "admin": {"listen": listen, **admin},
        },
        env={"GRAYGATE_ADMIN_TOKEN": "t"} if with_token else {},
    )


@pytest.mark.parametrize("listen", ["0.0.0.0:9090", "[::]:9090", "192.0.2.7:9090", "admin:9090"])
def test_open_admin_without_token_is_refused(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"admin\.listen.*allow_open"):
        check_admin_exposure(_cfg(listen))
    check_admin_exposure(_cfg(listen, allow_open=True))
    check_admin_exposure(_cfg(listen, with_token=True))


@pytest.mark.parametrize("listen", ["127.0.0.1:9090", "127.9.9.9:0", "[::1]:9090", "localhost:1"])
def test_loopback_admin_without_token_is_allowed(listen: str) -> None:
    check_admin_exposure(_cfg(listen))
