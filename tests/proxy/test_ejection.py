"""Outlier ejection of a broken mirror target (issue 10): after ``mirror.eject.consecutive``
broken answers in a row the canary gets no mirror for a while, each exchange is recorded
as skipped (``ejected``), and the client is served as ever. Raw asyncio canaries on
loopback that misbehave; the ejection's own clock is a plain counter the test moves."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import ClientSession, web
from prometheus_client import REGISTRY

from graygate.vocabulary import ErrorKind, SkipReason
from proxy.app import make_proxy_app
from proxy.capture import Capture
from proxy.ejection import DiscardGate, Ejection
from proxy.forward import fetch
from proxy.route_match import UNMATCHED
from proxy.upstream import Pool
from proxy.upstream_pools import UPSTREAMS_KEY, Upstream
from tests.proxy.harness import Sink, handler_app, make_cfg, proxy_for, serve_app, serve_proxy

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ejected_after_consecutive_broken_answers_not_before() -> None:
    clock = Clock()
    ej = Ejection("canary", 3, 2.0, 16.0, clock)
    assert ej.outcome(ErrorKind.ERROR) == 0.0
    assert ej.outcome(ErrorKind.RESET) == 0.0
    assert not ej.ejected()
    assert ej.outcome(ErrorKind.REFUSED) == 2.0
    assert ej.ejected() and ej.total == 1
    clock.now += 1.999
    assert ej.ejected()
    clock.now += 0.001
    assert not ej.ejected()


def test_a_sound_answer_or_a_timeout_starts_the_count_over() -> None:
    ej = Ejection("canary", 3, 2.0, 16.0, Clock())
    for sound in (None, ErrorKind.TIMEOUT):
        ej.outcome(ErrorKind.ERROR)
        ej.outcome(ErrorKind.ERROR)
        assert ej.outcome(sound) == 0.0
        assert ej.broken == 0 and not ej.ejected()
    assert ej.total == 0


def test_a_broken_probe_ejects_again_for_twice_as_long_up_to_the_bound() -> None:
    clock = Clock()
    ej = Ejection("canary", 2, 2.0, 10.0, clock)
    ej.outcome(ErrorKind.ERROR)
    seconds = [ej.outcome(ErrorKind.ERROR)]
    for _ in range(4):
        clock.now = ej.until  # the ejection is over: the next mirror is a probe
        assert not ej.ejected()
        seconds.append(ej.outcome(ErrorKind.ERROR))
    assert seconds == [2.0, 4.0, 8.0, 10.0, 10.0]
    # Broken answers of mirrors started before the ejection change nothing.
    assert ej.outcome(ErrorKind.ERROR) == 0.0 and ej.ejections == 5
    # A sound probe: the next ejection needs the full count again, and starts at the base.
    clock.now = ej.until
    ej.outcome(None)
    assert ej.outcome(ErrorKind.ERROR) == 0.0
    assert ej.outcome(ErrorKind.ERROR) == 2.0


def test_consecutive_zero_never_ejects_and_bounds_are_checked() -> None:
    ej = Ejection("canary", 0, 1.0, 1.0, Clock())
    for _ in range(1000):
        assert ej.outcome(ErrorKind.ERROR) == 0.0
    assert not ej.ejected() and ej.total == 0
    for bad in ((-1, 1.0, 1.0), (1, 0.0, 1.0), (1, 2.0, 1.0)):
        with pytest.raises(ValueError, match="bad ejection bounds"):
            Ejection("canary", *bad)


@contextlib.asynccontextmanager
async def raw_canary(serve: Serve) -> AsyncIterator[tuple[str, list[int]]]:
    """A raw server answering with ``serve``; yields its URL and a list with the number of
    requests it has read (one per head)."""
    got = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                got[0] += 1
                await serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", got
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"\x00" + os.urandom(4095))  # never "HTTP/"
    await writer.drain()
    await reader.read()  # keeps the connection open until the proxy drops it


async def many_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(2_000))
    writer.write(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok")
    await writer.drain()


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def _ejections(role: str) -> float:
    return REGISTRY.get_sample_value("graygate_mirror_ejections_total", {"role": role}) or 0.0


@pytest.mark.parametrize(
    ("serve", "error"),
    [(garbage, ErrorKind.ERROR), (many_headers, ErrorKind.ERROR), (reset, ErrorKind.RESET)],
    ids=["garbage", "many_headers", "reset"],
)
async def test_a_broken_canary_is_ejected_and_its_mirrors_recorded_as_skipped(
    serve: Serve, error: str
) -> None:
    before = _ejections("canary")
    async with serve_app(handler_app(_ok)) as primary, raw_canary(serve) as (canary, got):
        cfg = make_cfg(
            primary,
            canary,
            # A long ejection: no probe within the test.
            mirror={"eject": {"consecutive": 3, "base_ms": 3_600_000, "max_ms": 3_600_000}},
        )
        sink = Sink()
        async with proxy_for(cfg, sink) as url, ClientSession() as session:
            for i in range(8):
                async with session.get(f"{url}/x") as resp:
                    assert resp.status == 200  # the user is served whatever the canary does
                    assert await resp.json() == {"ok": True}
                await sink.wait(i + 1)  # the mirror is in: the next one sees its outcome
    records = sink.records
    assert [r.mirror_skipped for r in records] == [None] * 3 + [SkipReason.EJECTED] * 5
    for r in records[:3]:
        assert r.canary is not None and r.canary.error == error
    for r in records[3:]:
        assert r.canary is None or r.canary.status is None
        assert r.primary is not None and r.primary.status == 200
    assert got[0] == 3  # the ejected canary was asked nothing more
    assert _ejections("canary") == before + 1


async def test_eject_consecutive_zero_keeps_mirroring_a_broken_canary() -> None:
    async with serve_app(handler_app(_ok)) as primary, raw_canary(garbage) as (canary, got):
        cfg = make_cfg(primary, canary, mirror={"eject": {"consecutive": 0}})
        sink = Sink()
        async with proxy_for(cfg, sink) as url, ClientSession() as session:
            for i in range(6):
                async with session.get(f"{url}/x") as resp:
                    assert resp.status == 200
                await sink.wait(i + 1)
    assert [r.mirror_skipped for r in sink.records] == [None] * 6
    assert got[0] == 6


async def test_a_sound_canary_is_never_ejected() -> None:
    async with serve_app(handler_app(_ok)) as primary, serve_app(handler_app(_ok)) as canary:
        cfg = make_cfg(primary, canary, mirror={"eject": {"consecutive": 1}})
        sink = Sink()
        async with proxy_for(cfg, sink) as url, ClientSession() as session:
            for i in range(5):
                async with session.get(f"{url}/x") as resp:
                    assert resp.status == 200
                await sink.wait(i + 1)
    assert all(r.mirror_skipped is None for r in sink.records)
    assert all(r.canary is not None and r.canary.status == 200 for r in sink.records)


# --- reading on past the record bound (DiscardGate) -------------------------------------


def test_the_discard_gate_pauses_after_answers_outrun_the_bound() -> None:
    clock = Clock()
    gate = DiscardGate(2, 1.0, 3.0, clock)
    assert gate.ended("GET /a", within=False) == 0.0
    assert gate.reads_on("GET /a")
    assert gate.ended("GET /a", within=False) == 1.0
    assert not gate.reads_on("GET /a")
    assert gate.reads_on("GET /b")  # per endpoint
    seconds = []
    for _ in range(3):
        clock.now += 5.0
        assert gate.reads_on("GET /a")  # a probe
        seconds.append(gate.ended("GET /a", within=False))
    assert seconds == [2.0, 3.0, 3.0]
    clock.now += 5.0
    assert gate.ended("GET /a", within=True) == 0.0  # ended within: the count starts over
    assert gate.ended("GET /a", within=False) == 0.0 and gate.reads_on("GET /a")


def test_the_discard_gate_with_consecutive_zero_always_reads_on() -> None:
    gate = DiscardGate(0, 1.0, 1.0, Clock())
    for _ in range(100):
        assert gate.ended("GET /a", within=False) == 0.0
    assert gate.reads_on("GET /a")
    with pytest.raises(ValueError, match="bad discard bounds"):
        DiscardGate(1, 2.0, 1.0)


def _stalling(head: bytes, closed: asyncio.Event) -> Serve:
    """Answers with ``head`` and 256 KiB of body, then sends nothing until the client
    closes the connection (and sets ``closed``)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(head + b"z" * 262_144)
            await writer.drain()
            await reader.read()
        finally:  # closed (or reset: the client left bytes unread)
            closed.set()
        raise ConnectionResetError  # this connection is done

    return serve


@pytest.mark.parametrize(
    ("head", "read_on"),
    [
        # No length, not read on: the answer is cut at the record bound.
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", False),
        # A length past the record bound plus what a mirror may read on: not read on either.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\n\r\n", True),
    ],
    ids=["read_on_false", "length_past_the_discard_bound"],
)
async def test_a_mirror_that_cannot_time_its_answer_does_not_read_on(
    head: bytes, read_on: bool
) -> None:
    # The canary stalls after 256 KiB: reading on would wait until the mirror's timeout
    # (30 s here) and record a timeout; not reading on, the answer is recorded as it is,
    # truncated, untimed, without error, and its connection closed at once.
    closed = asyncio.Event()
    async with raw_canary(_stalling(head, closed)) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        pool = Pool("http", "127.0.0.1", port, f"127.0.0.1:{port}", max_connections=4,
                    connect_timeout=5)  # fmt: skip
        upstream = Upstream("canary", url, pool, 30.0, 30.0)
        try:
            async with asyncio.timeout(20):
                cap = await fetch(upstream, "GET", "/", [], None, Capture(65_536), read_on=read_on)
                await closed.wait()
        finally:
            await pool.close()
    assert cap.error is None and cap.status == 200
    assert cap.truncated and cap.size == 65_536
    assert cap.latency is None
    assert pool.size == 0


@contextlib.asynccontextmanager
async def endless_chunked() -> AsyncIterator[str]:
    frame = b"%x\r\n%b\r\n" % (65_536, b"y" * 65_536)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(100_000):  # 6 GiB at most: far past any bound
            writer.write(frame)
            await writer.drain()

    async with raw_canary(serve) as (url, _):
        yield url


async def test_endless_answers_stop_being_read_on_then_a_probe_reads_on() -> None:
    async with serve_app(handler_app(_ok)) as primary, endless_chunked() as canary:
        cfg = make_cfg(
            primary,
            canary,
            record={"max_body_bytes": 65_536},
            mirror={"timeout_ms": 30_000, "eject": {"consecutive": 2, "base_ms": 3_600_000,
                                                    "max_ms": 3_600_000}},
        )  # fmt: skip
        sink = Sink()
        app = make_proxy_app(cfg, recorder=sink, run_id=7)
        async with serve_proxy(app) as url, ClientSession() as session:
            gate = app[UPSTREAMS_KEY]["canary"].discard_gate
            endpoint = UNMATCHED.endpoint
            for i in range(4):
                async with session.get(f"{url}/x") as resp:
                    assert resp.status == 200
                await sink.wait(i + 1)
                assert gate.reads_on(endpoint) == (i == 0)
    for record in sink.records:
        assert record.mirror_skipped is None  # recorded, never ejected: it is HTTP
        c = record.canary
        assert c is not None and c.error is None and c.status == 200
        assert c.body_truncated and c.latency_ms is None  # untimed, read on or not


async def test_an_ejected_secondary_is_left_out_and_the_canary_still_mirrored() -> None:
    async with (
        serve_app(handler_app(_ok)) as primary,
        serve_app(handler_app(_ok)) as canary,
        raw_canary(garbage) as (secondary, got),
    ):
        cfg = make_cfg(
            primary,
            canary,
            upstreams={"secondary": secondary},
            mirror={"eject": {"consecutive": 2, "base_ms": 3_600_000, "max_ms": 3_600_000}},
        )
        sink = Sink()
        async with proxy_for(cfg, sink) as url, ClientSession() as session:
            for i in range(5):
                async with session.get(f"{url}/x") as resp:
                    assert resp.status == 200
                await sink.wait(i + 1)
    records = sink.records
    assert [r.mirror_skipped for r in records] == [None] * 5  # the canary was always asked
    assert all(r.canary is not None and r.canary.status == 200 for r in records)
    assert [r.secondary is not None and r.secondary.error for r in records[:2]] == ["error"] * 2
    assert all(r.secondary is None or r.secondary.status is None for r in records[2:])
    assert got[0] == 2


async def test_shadow_mode_records_the_exchanges_skipped_while_the_canary_is_ejected() -> None:
    """In shadow mode too the primary is asked and the exchange recorded as skipped
    ``ejected`` (the verdict's errors check counts it as the canary's failure): a skip
    nobody records would hide how long the canary was broken."""
    async with serve_app(handler_app(_ok)) as primary, raw_canary(garbage) as (canary, got):
        cfg = make_cfg(
            primary,
            canary,
            mode="shadow",
            mirror={"eject": {"consecutive": 2, "base_ms": 3_600_000, "max_ms": 3_600_000}},
        )
        sink = Sink()
        async with proxy_for(cfg, sink) as url, ClientSession() as session:
            for i in range(5):
                async with session.get(f"{url}/x") as resp:
                    assert resp.status == 202  # answered at once, whatever the canary does
                await sink.wait(i + 1)
    records = sink.records
    assert [r.mirror_skipped for r in records] == [None] * 2 + [SkipReason.EJECTED] * 3
    for r in records:
        assert r.primary is not None and r.primary.status == 200
    for r in records[2:]:
        assert r.canary is None or r.canary.status is None
    assert got[0] == 2  # the ejected canary was asked nothing more
