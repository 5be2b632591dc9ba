"""Misbehaving canaries never cost the proxy more than what it records (issue 10 items 3
and 5): raw asyncio upstreams on loopback that stream endless bodies."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import ClientSession, web

from tests.proxy.harness import Sink, handler_app, make_cfg, proxy_for, serve_app

CHUNK = b"y" * 65_536
MAX_CHUNKS = 200_000  # 12.5 GiB: far more than any mirror may read (bounded nonetheless)


@contextlib.asynccontextmanager
async def endless_body(*, then_stall_after: int | None = None) -> AsyncIterator[str]:
    """A server whose answers' bodies never end (chunked, 64 KiB chunks), or that sends
    ``then_stall_after`` chunks and then nothing (until the client goes away)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n")
            writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
            frame = b"%x\r\n%b\r\n" % (len(CHUNK), CHUNK)
            for i in range(MAX_CHUNKS):
                if then_stall_after is not None and i >= then_stall_after:
                    await reader.read()  # until the client closes
                    break
                writer.write(frame)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def test_an_endless_mirrored_body_is_cut_at_the_record_bound() -> None:
    # The mirror stops reading past record.max_body_bytes and closes the connection: the
    # canary's answer is recorded truncated, not as a timeout after mirror.timeout_ms.
    async with serve_app(handler_app(_ok)) as primary, endless_body() as canary:
        cfg = make_cfg(
            primary,
            canary,
            record={"max_body_bytes": 65_536},
            mirror={"timeout_ms": 30_000},
        )
        sink = Sink()
        async with proxy_for(cfg, sink) as url, ClientSession() as session:
            for _ in range(3):
                async with session.get(f"{url}/x") as resp:
                    assert resp.status == 200
            async with asyncio.timeout(25):  # before the mirror timeout
                records = await sink.wait(3)
        for record in records:
            canary_answer = record.canary
            assert canary_answer is not None
            assert canary_answer.error is None, canary_answer.error
            assert canary_answer.status == 200
            assert canary_answer.body_truncated
            assert canary_answer.body is not None and len(canary_answer.body) == 65_536
            assert canary_answer.latency_ms is None  # its end is unknown
            assert record.primary is not None and record.primary.latency_ms is not None
