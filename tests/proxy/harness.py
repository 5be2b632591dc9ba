"""The proxy tests' harness: real aiohttp servers on random loopback ports, a proxy in
front of them, and a sink in place of the recorder (the proxy calls only its submit())."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from config.load import config_from_mapping
from config.schema import GraygateConfig
from graygate.processes import free_port
from graygate.values import RecordedExchange
from proxy.app import ProxyRunner, make_proxy_app, server_settings

__all__ = [
    "Handler",
    "Sink",
    "closed_port",
    "echo",
    "handler_app",
    "make_cfg",
    "proxy_for",
    "serve_app",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Sink:
    """The recorder's part the proxy uses: submit(record) -> bool. Keeps what it got."""

    def __init__(self) -> None:
        self.records: list[RecordedExchange] = []
        self._added = asyncio.Event()

    def submit(self, record: RecordedExchange) -> bool:
        self.records.append(record)
        self._added.set()
        return True

    async def wait(self, n: int = 1) -> list[RecordedExchange]:
        """Until ``n`` records are in (an event per submit; 10 s before giving up)."""
        async with asyncio.timeout(10):
            while len(self.records) < n:
                self._added.clear()
                await self._added.wait()
        return self.records


@asynccontextmanager
async def serve_app(
    app: web.Application, runner_cls: type[web.AppRunner] = web.AppRunner, **settings: Any
) -> AsyncIterator[str]:
    runner = runner_cls(app, access_log=None, shutdown_timeout=1.0, **settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def handler_app(handler: Handler) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def echo(request: web.Request) -> web.Response:
    """What the upstream saw, as JSON."""
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("latin-1"),
        }
    )


def closed_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()


def make_cfg(primary: str, canary: str, **extra: Any) -> GraygateConfig:
    data: dict[str, Any] = {"run": "test", "upstreams": {"primary": primary, "canary": canary}}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return config_from_mapping(data, env={})


@asynccontextmanager
async def proxy_for(cfg: GraygateConfig, sink: Sink) -> AsyncIterator[str]:
    app = make_proxy_app(cfg, recorder=sink, run_id=7)
    async with serve_app(app, ProxyRunner, **server_settings(cfg)) as url:
        yield url
