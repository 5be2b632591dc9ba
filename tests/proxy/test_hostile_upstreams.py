"""Misbehaving canaries never cost the proxy more than what it records (issue 10 items 3
and 5): raw asyncio upstreams on loopback that stream endless bodies."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator

from aiohttp import ClientSession, web

from proxy.capture import Capture
from proxy.upstream import _Connection
from tests.proxy.harness import (
    LOAD_SCRIPT,
    Sink,
    delayed_upstream,
    handler_app,
    make_cfg,
    proxy_for,
    serve_app,
)

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
    # The mirror keeps what record.max_body_bytes allows, reads on (not keeping it) up to
    # the pool's max_discard_bytes to time the end, then closes the connection: the
    # canary's answer is recorded truncated and untimed, not as a timeout after
    # mirror.timeout_ms.
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


async def test_a_mirrored_body_over_the_record_bound_is_timed_to_its_end() -> None:
    # 1 MB answers, 64 KiB recorded: the rest is read without being kept, so the answer is
    # recorded truncated and timed (first byte written to last byte read) like the served
    # side, not left out of the latency check.
    big = b"[" + b"1," * 500_000 + b"1]"

    async def _big(request: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/json")

    async with serve_app(handler_app(_ok)) as primary, serve_app(handler_app(_big)) as canary:
        cfg = make_cfg(primary, canary, record={"max_body_bytes": 65_536})
        sink = Sink()
        async with proxy_for(cfg, sink) as url, ClientSession() as session:
            for _ in range(3):
                await _get(session, f"{url}/x")
            records = await sink.wait(3)
    for record in records:
        canary_answer = record.canary
        assert canary_answer is not None and canary_answer.error is None
        assert canary_answer.body_truncated
        assert canary_answer.body is not None and len(canary_answer.body) == 65_536
        assert canary_answer.latency_ms is not None and canary_answer.latency_ms > 0


def _alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)


def _closed_connections() -> int:
    """Closed upstream connections still in memory (pooled ones stay: they are open)."""
    return sum(1 for o in gc.get_objects() if type(o) is _Connection and o.transport is None)


async def test_timed_out_mirrors_leave_nothing_for_the_collector() -> None:
    # A canary that sends part of a body and then nothing: every mirror times out holding a
    # captured body. With the collector off, what the timeout path leaves in reference
    # cycles stays; nothing may (each would hold its body until a full collection).
    n = 60
    async with serve_app(handler_app(_ok)) as primary, endless_body(then_stall_after=2) as canary:
        cfg = make_cfg(
            primary,
            canary,
            record={"max_body_bytes": 1_048_576},
            mirror={"timeout_ms": 100},
        )
        sink = Sink()
        async with proxy_for(cfg, sink) as url, ClientSession() as session:
            for _ in range(10):  # the primary's pool fills: its connections stay
                await _get(session, f"{url}/warm")
            await sink.wait(10)
            sink.records.clear()
            gc.collect()
            gc.disable()
            try:
                captures = _alive(Capture)
                connections = _closed_connections()
                for i in range(n // 10):
                    async with asyncio.TaskGroup() as tg:
                        for _ in range(10):
                            tg.create_task(_get(session, f"{url}/x"))
                    await sink.wait((i + 1) * 10)
                await asyncio.sleep(0.2)  # the closed connections' callbacks
                records = sink.records
                assert len(records) == n
                assert all(r.canary is not None and r.canary.error == "timeout" for r in records)
                left_captures = _alive(Capture) - captures
                left_connections = _closed_connections() - connections
            finally:
                gc.enable()
        assert left_captures <= 2, left_captures
        assert left_connections <= 2, left_connections


async def _get(session: ClientSession, url: str) -> None:
    async with session.get(url) as resp:
        assert resp.status == 200
        await resp.read()


async def test_both_sides_are_timed_the_same_way() -> None:
    # Identical services in processes of their own: the served side and the mirrored side
    # are timed from the request's first byte written to the answer's last byte read, in
    # the connection's callbacks, so both include the upstream's own delay and every
    # exchange has both. How closely the two medians agree under load is a timing figure:
    # bench/bench_latency_symmetry.py measures it (no timing assertion in a test).
    n, concurrency = 150, 10
    with delayed_upstream() as primary, delayed_upstream() as canary:
        cfg = make_cfg(primary, canary, mirror={"timeout_ms": 10_000})
        sink = Sink()
        async with proxy_for(cfg, sink) as url:
            load = await asyncio.create_subprocess_exec(
                sys.executable, "-c", LOAD_SCRIPT, f"{url}/d", str(n), str(concurrency)
            )  # fmt: skip
            async with asyncio.timeout(120):
                assert await load.wait() == 0
            await sink.wait(n)
    served = sorted(
        r.primary.latency_ms for r in sink.records if r.primary and r.primary.latency_ms
    )
    mirrored = sorted(r.canary.latency_ms for r in sink.records if r.canary and r.canary.latency_ms)
    assert len(served) == len(mirrored) == n
    p50_served, p50_mirrored = served[n // 2], mirrored[n // 2]
    assert p50_served >= 20.0 and p50_mirrored >= 20.0  # the delay is in both


@contextlib.asynccontextmanager
async def head_of(size: int) -> AsyncIterator[str]:
    """A server whose every answer's head is exactly ``size`` bytes (padded in one field)."""
    base = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: \r\n\r\n"
    head = base.replace(b"X-Pad: ", b"X-Pad: " + b"p" * (size - len(base)))
    assert len(head) == size

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(head + b"ok")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def test_upstream_head_bound_is_the_configured_one() -> None:
    """``upstreams.max_head_bytes``: a head of exactly the bound is served, one byte more
    is a 502 for the client and an ``error`` for the mirror."""
    bound = 2_048
    for size, status in ((bound, 200), (bound + 1, 502)):
        async with head_of(size) as primary, head_of(size) as canary:
            cfg = make_cfg(primary, canary, upstreams={"max_head_bytes": bound})
            sink = Sink()
            async with proxy_for(cfg, sink) as url, ClientSession() as session:
                async with session.get(f"{url}/x") as resp:
                    assert resp.status == status
                    if status == 200:
                        assert await resp.read() == b"ok"
                (record,) = await sink.wait(1)
            assert record.canary is not None
            if status == 200:
                assert record.canary.status == 200 and record.canary.error is None
            else:
                assert record.canary.error == "error" and record.canary.status is None
