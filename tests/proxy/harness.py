"""The proxy tests' harness: real aiohttp servers on random loopback ports, a proxy in
front of them, and a sink in place of the recorder (the proxy calls only its submit())."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from yarl import URL

from config.load import config_from_mapping
from config.schema import GraygateConfig
from graygate.processes import free_port
from graygate.values import RecordedExchange
from proxy.app import make_proxy_app
from proxy.server import ProxyServer

__all__ = [
    "DELAYED_SCRIPT",
    "LOAD_SCRIPT",
    "Handler",
    "Sink",
    "closed_port",
    "counting_echo",
    "delayed_upstream",
    "echo",
    "handler_app",
    "make_cfg",
    "proxy_between",
    "proxy_for",
    "raw_request",
    "send_and_hang_up",
    "serve_app",
    "serve_proxy",
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
async def serve_app(app: web.Application, **settings: Any) -> AsyncIterator[str]:
    """Serve an aiohttp app (the tests' upstreams); ``settings``: ``web.AppRunner``'s."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, **settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve_proxy(app: web.Application) -> AsyncIterator[str]:
    """Serve the proxy app (``make_proxy_app``) as ``graygate serve`` does."""
    server = ProxyServer(app, shutdown_timeout=1.0)
    await server.setup()
    try:
        host, port = await server.start("127.0.0.1", 0)
        yield f"http://{host}:{port}"
    finally:
        await server.cleanup()


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


def counting_echo(hits: list[str]) -> Handler:
    """``echo`` that first appends the request's path to ``hits``."""

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return await echo(request)

    return handler


async def raw_request(base: str, data: bytes) -> bytes:
    """Send ``data`` as is on a new connection, read the answer to the end."""
    url = URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(20):
            return await reader.read()
    finally:
        writer.close()


async def send_and_hang_up(base: str, data: bytes) -> None:
    """Send ``data`` as is on a new connection and close it without reading an answer."""
    url = URL(base)
    _, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


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
    async with serve_proxy(make_proxy_app(cfg, recorder=sink, run_id=7)) as url:
        yield url


@asynccontextmanager
async def proxy_between(
    sink: Sink, primary: Handler = echo, canary: Handler = echo, **extra: Any
) -> AsyncIterator[str]:
    """The proxy, recording into ``sink``, in front of a primary and a canary served by
    these handlers (both ``echo`` by default); ``extra`` as for ``make_cfg``."""
    async with (
        serve_app(handler_app(primary)) as p,
        serve_app(handler_app(canary)) as c,
        proxy_for(make_cfg(p, c, **extra), sink) as proxy,
    ):
        yield proxy


# Identical slow upstreams in processes of their own, and a load process (the latency
# timing test and bench/bench_latency_symmetry.py).
DELAYED_SCRIPT = """
import asyncio, sys
from aiohttp import web

async def delayed(request):
    await asyncio.sleep(0.02)
    return web.Response(body=b"z" * 200_000)

app = web.Application()
app.router.add_route("*", "/{tail:.*}", delayed)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


LOAD_SCRIPT = """
import asyncio, sys
from aiohttp import ClientSession

async def main(url, n, concurrency):
    async with ClientSession() as session:
        async def one():
            async with session.get(url) as resp:
                assert resp.status == 200
                await resp.read()
        for _ in range(n // concurrency):
            await asyncio.gather(*(one() for _ in range(concurrency)))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


@contextlib.contextmanager
def delayed_upstream() -> Iterator[str]:
    """An upstream process answering every request after 20 ms with 200 kB (its own
    process: timed by the proxy, never slowed by the test's event loop)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", DELAYED_SCRIPT, str(port)])
    try:
        for _ in range(200):  # up to 20 s for it to listen
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
