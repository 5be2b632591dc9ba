"""The upstream client: real aiohttp servers and raw asyncio servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from graygate.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from proxy.capture import header_fields
from proxy.upstream import AnswerSink, Pool, UpstreamAnswer, UpstreamReset, retryable

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# --- harness ----------------------------------------------------------------------------


@asynccontextmanager
async def aiohttp_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port: int = runner.addresses[0][1]
        yield port
    finally:
        await runner.cleanup()


@asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[int]:
    """A server that runs ``handler`` per connection (and closes the connection after)."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@asynccontextmanager
async def pool_for(port: int, **kw: float) -> AsyncIterator[Pool]:
    pool = Pool(
        "http",
        "127.0.0.1",
        port,
        f"127.0.0.1:{port}",
        max_connections=int(kw.pop("max_connections", 8)),
        connect_timeout=kw.pop("connect_timeout", 2.0),
        **kw,
    )
    try:
        yield pool
    finally:
        await pool.close()


async def read_all(resp: UpstreamAnswer) -> bytes:
    out = b""
    while chunk := await resp.read():
        out += chunk
    return out


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# --- requests go out exactly as given ---------------------------------------------------


async def test_request_bytes_are_exact_and_nothing_is_added() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        seen.append(head + await reader.readexactly(5))
        writer.write(OK)
        await writer.drain()

    async with raw_server(handler) as port, pool_for(port) as pool:
        headers = [("X-B", "2"), ("x-a", "1"), ("X-B", "3"), ("Cookie", "c=é")]
        resp = await pool.send("POST", "/p?q=1&q=2", headers, b"hello", limit=2, idle=False)
        assert (resp.status, await read_all(resp)) == (200, b"ok")
    assert seen == [
        b"POST /p?q=1&q=2 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-B: 2\r\nx-a: 1\r\nX-B: 3\r\n"
        b"Cookie: c=\xc3\xa9\r\nContent-Length: 5\r\n\r\nhello" % port
    ]


async def test_line_breaks_in_headers_are_refused() -> None:
    async with pool_for(1) as pool:
        with pytest.raises(UpstreamError):
            await pool.send("GET", "/", [("X", "a\r\nEvil: 1")], None, limit=1, idle=False)


async def test_streamed_body_is_chunked_unless_its_length_is_given() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"defg"

    async def echo(request: web.Request) -> web.Response:
        return web.Response(
            body=await request.read(),
            headers={"X-TE": request.headers.get("Transfer-Encoding", "-")},
        )

    async with aiohttp_server(echo) as port, pool_for(port) as pool:
        resp = await pool.send("POST", "/", [], body(), limit=2, idle=True)
        assert resp.headers["X-TE"] == "chunked"
        assert await read_all(resp) == b"abcdefg"
        resp = await pool.send("POST", "/", [("Content-Length", "7")], body(), limit=2, idle=True)
        assert resp.headers["X-TE"] == "-"
        assert await read_all(resp) == b"abcdefg"
        assert pool.size == 1  # one connection, reused


async def test_a_body_that_fails_before_its_first_chunk_sends_nothing() -> None:
    connected = asyncio.Event()
    done = asyncio.Event()
    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        got.append(await reader.read())
        done.set()

    async def broken() -> AsyncIterator[bytes]:
        await connected.wait()
        raise ConnectionResetError("the client went away")
        yield b""  # pragma: no cover

    async with raw_server(handler) as port, pool_for(port) as pool:
        with pytest.raises(ConnectionResetError):
            await pool.send("POST", "/", [], broken(), limit=2, idle=True)
        assert pool.size == 0
        async with asyncio.timeout(2):
            await done.wait()
    assert got == [b""]


# --- answers ----------------------------------------------------------------------------


async def test_headers_in_order_repeated_kept_and_connection_reused() -> None:
    async def handler(request: web.Request) -> web.Response:
        resp = web.Response(body=b"x" * 100_000, headers={"Content-Encoding": "identity"})
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        return resp

    async with aiohttp_server(handler) as port, pool_for(port) as pool:
        for _ in range(3):
            resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
            assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]
            assert resp.headers["Content-Encoding"] == "identity"  # not decoded
            assert await read_all(resp) == b"x" * 100_000
            assert resp.at_eof
        assert (pool.size, pool.idle) == (1, 1)


async def test_chunked_answer_is_streamed_chunk_by_chunk() -> None:
    step = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst;\r\n")
        await writer.drain()
        await step.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await read_head(reader)  # the connection is kept: a second request comes
        writer.write(OK)
        await writer.drain()

    async with raw_server(handler) as port, pool_for(port) as pool:
        resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
        assert await resp.read() == b"first;"
        step.set()
        assert await read_all(resp) == b"second"
        resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
        assert await read_all(resp) == b"ok"
        assert pool.size == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
async def test_connection_close_is_not_reused(answer: bytes) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_head(reader)
        writer.write(answer)
        await writer.drain()
        await reader.read()

    async with raw_server(handler) as port, pool_for(port) as pool:
        for _ in range(2):
            resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
            assert await read_all(resp) == b"ok"
            assert (pool.size, pool.idle) == (0, 0)
    assert connections == 2


async def test_body_until_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
        await writer.drain()
        writer.write(b"part two")

    async with raw_server(handler) as port, pool_for(port) as pool:
        resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
        assert await read_all(resp) == b"part one, part two"
        assert pool.size == 0


async def test_head_204_304_have_no_body_and_1xx_is_skipped() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-N: 1\r\n\r\n",  # to HEAD
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",  # to HEAD
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK,
        OK,
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_head(reader)
            writer.write(answer)
            await writer.drain()

    async with raw_server(handler) as port, pool_for(port) as pool:
        got = []
        for method in ("HEAD", "HEAD", "GET", "GET", "GET", "GET"):
            resp = await pool.send(method, "/", [], None, limit=2, idle=True)
            got.append((resp.status, await read_all(resp)))
            assert pool.size == 1  # every one on the same connection
        assert resp.headers.get("Link") is None
    assert got == [(200, b""), (200, b""), (204, b""), (304, b""), (200, b"ok"), (200, b"ok")]


async def test_unread_body_discards_the_connection() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"y" * 1_000_000)

    async with aiohttp_server(handler) as port, pool_for(port) as pool:
        resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
        assert await resp.read()
        resp.release()
        resp.release()  # idempotent
        assert (pool.size, pool.idle) == (0, 0)
        resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
        assert len(await read_all(resp)) == 1_000_000
        assert (pool.size, pool.idle) == (1, 1)


# --- failures ---------------------------------------------------------------------------


async def test_refused_and_unresolvable() -> None:
    async with pool_for(1) as pool:
        with pytest.raises(UpstreamUnreachable) as info:
            await pool.send("GET", "/", [], None, limit=2, idle=True)
        assert info.value.kind == "refused"
        assert pool.size == 0
    pool = Pool("http", "no-such-host.invalid", 80, "x", max_connections=1, connect_timeout=2)
    with pytest.raises(UpstreamUnreachable) as info:
        await pool.send("GET", "/", [], None, limit=2, idle=True)
    assert info.value.kind == "refused"


async def test_reset_mid_body_and_malformed_answer() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()

    async def junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"SPDY/9 what\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(cut) as port, pool_for(port) as pool:
        resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
        with pytest.raises(UpstreamReset) as info:
            await read_all(resp)
        assert info.value.kind == "reset"
        assert pool.size == 0
    async with raw_server(junk) as port, pool_for(port) as pool:
        with pytest.raises(UpstreamError) as err:
            await pool.send("GET", "/", [], None, limit=2, idle=True)
        assert err.value.kind == "error"
        assert pool.size == 0


async def test_idle_connection_closed_by_server_is_retried_once_for_idempotent() -> None:
    """The server takes the next request on a kept connection and closes it unanswered (it
    timed the connection out as the request came): GET is retried on a fresh connection,
    POST is not (the server may have acted on it)."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_head(reader)
        writer.write(OK)
        await writer.drain()
        await read_head(reader)  # the second request on this connection: closed unanswered

    async with raw_server(handler) as port, pool_for(port) as pool:
        resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
        assert await read_all(resp) == b"ok"
        resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
        assert await read_all(resp) == b"ok"
        assert connections == 2
        with pytest.raises(UpstreamReset):
            await pool.send("POST", "/", [], b"x", limit=2, idle=True)
        assert connections == 2
        assert pool.size == 0


async def test_fresh_connection_closed_unanswered_is_not_retried() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_head(reader)

    async with raw_server(handler) as port, pool_for(port) as pool:
        with pytest.raises(UpstreamReset):
            await pool.send("GET", "/", [], None, limit=2, idle=True)
    assert connections == 1


async def test_idle_connection_closed_by_server_leaves_the_pool() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(OK)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    async with raw_server(handler) as port, pool_for(port) as pool:
        resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
        assert await read_all(resp) == b"ok"
        await closed.wait()
        await asyncio.sleep(0.05)  # the FIN's way back
        assert (pool.size, pool.idle) == (0, 0)


async def test_slow_body_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        for _ in range(4):  # a byte every 0.1 s: never idle for 0.3 s, 0.4 s in all
            await asyncio.sleep(0.1)
            writer.write(b"d")
            await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(handler) as port, pool_for(port) as pool:
        # the whole exchange within 0.25 s
        resp = await pool.send("GET", "/", [], None, limit=0.25, idle=False)
        with pytest.raises(UpstreamTimeout):
            await read_all(resp)
        # every wait within 0.3 s: the body keeps coming for 0.4 s, then stops
        resp = await pool.send("GET", "/", [], None, limit=0.3, idle=True)
        got = b""
        with pytest.raises(UpstreamTimeout) as info:
            while chunk := await resp.read():
                got += chunk
        assert info.value.kind == "timeout"
        assert got == b"abcdddd"
        assert pool.size == 0


async def test_no_head_in_time() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with raw_server(handler) as port, pool_for(port) as pool:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(UpstreamTimeout):
            await pool.send("GET", "/", [], None, limit=0.2, idle=True)
        assert 0.15 < loop.time() - start < 1.0
        assert pool.size == 0


def _answers_after(delays: list[float | None]) -> tuple[RawHandler, list[int]]:
    """A raw handler that answers the n-th request on a connection after ``delays[n]``
    seconds (None: never), and the count of connections it saw."""
    connections = [0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        for delay in delays:
            await read_head(reader)
            if delay is None:
                await reader.read()
                return
            await asyncio.sleep(delay)
            writer.write(OK)
            await writer.drain()

    return handler, connections


async def test_a_kept_connection_times_its_next_request_at_that_request_s_deadline() -> None:
    """A completed answer leaves its connection's timer running (no cancel per request):
    a later request with a shorter limit still times out at its own deadline."""
    handler, connections = _answers_after([0.0, None])
    async with raw_server(handler) as port, pool_for(port) as pool:
        resp = await pool.send("GET", "/", [], None, limit=30.0, idle=True)
        assert await read_all(resp) == b"ok"
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(UpstreamTimeout):
            await pool.send("GET", "/", [], None, limit=0.2, idle=False)
        assert 0.15 < loop.time() - start < 5.0  # its own 0.2 s, not the first one's 30 s
        assert connections == [1]


async def test_a_timer_left_from_an_earlier_request_does_not_time_out_the_next() -> None:
    """The timer of a request that completed fires while a later one, with a longer limit,
    waits on the same connection: the later one is answered."""
    handler, connections = _answers_after([0.0, 0.5])
    async with raw_server(handler) as port, pool_for(port) as pool:
        resp = await pool.send("GET", "/", [], None, limit=0.2, idle=False)
        assert await read_all(resp) == b"ok"
        resp = await pool.send("GET", "/", [], None, limit=5.0, idle=False)  # 0.5 s to answer
        assert await read_all(resp) == b"ok"
        assert connections == [1]


async def test_pool_limit_bounds_connections() -> None:
    active = peak = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1
        return web.Response(text=request.path)

    async with aiohttp_server(handler) as port, pool_for(port, max_connections=2) as pool:

        async def one(i: int) -> bytes:
            resp = await pool.send("GET", f"/{i}", [], None, limit=5, idle=True)
            return await read_all(resp)

        got = await asyncio.gather(*(one(i) for i in range(8)))
        assert got == [f"/{i}".encode() for i in range(8)]
        assert peak == 2
        assert pool.size == 2

        # all busy: a request that cannot get a connection in time times out
        held = await pool.send("GET", "/a", [], None, limit=5, idle=True)
        held2 = await pool.send("GET", "/b", [], None, limit=5, idle=True)
        with pytest.raises(UpstreamTimeout):
            await pool.send("GET", "/c", [], None, limit=0.1, idle=True)
        held.release()  # not read to the end: closed, its slot freed
        resp = await pool.send("GET", "/d", [], None, limit=1, idle=True)
        assert await read_all(resp) == b"/d"
        held2.release()


async def test_cancelled_request_frees_its_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with raw_server(handler) as port, pool_for(port) as pool:
        task = asyncio.ensure_future(pool.send("GET", "/", [], None, limit=5, idle=False))
        await asyncio.sleep(0.05)
        assert pool.size == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.size == 0


async def test_idle_connections_are_swept() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async with aiohttp_server(handler) as port, pool_for(port, idle_timeout=0.1) as pool:
        resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
        assert await read_all(resp) == b"ok"
        assert pool.idle == 1
        await asyncio.sleep(0.3)
        assert (pool.size, pool.idle) == (0, 0)


def test_on_uvloop() -> None:
    """The proxy runs on uvloop (whose transports are not asyncio's classes)."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[bytes]:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=request.path.encode() * 1000)

        async with aiohttp_server(handler) as port, pool_for(port) as pool:
            out = []
            for path in ("/a", "/b"):
                resp = await pool.send("GET", path, [], None, limit=2, idle=False)
                out.append(await read_all(resp))
            assert (pool.size, pool.idle) == (1, 1)
            return out

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == [b"/a" * 1000, b"/b" * 1000]


# --- issue 9: no parser state carried from one answer to the next ------------------------


TRAILED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
    b"5\r\nalice\r\n0\r\nX-Checksum: secret-of-alice\r\n\r\n"
)


async def test_trailers_stay_with_their_answer_on_a_pooled_connection() -> None:
    answers = [TRAILED, OK, TRAILED, OK]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_head(reader)
            writer.write(answer)
            await writer.drain()

    async with raw_server(handler) as port, pool_for(port) as pool:
        got = []
        for _ in answers:
            resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
            body = await read_all(resp)
            got.append((body, list(resp.headers.items()), resp.trailers))
            assert pool.size == 1  # one connection throughout
    alice = (
        b"alice",
        [("Transfer-Encoding", "chunked"), ("Trailer", "X-Checksum")],
        [("X-Checksum", "secret-of-alice")],
    )
    bob = (b"ok", [("Content-Length", "2")], [])
    assert got == [alice, bob, alice, bob]


async def test_bytes_after_a_complete_answer_are_not_merged_into_it() -> None:
    extra = b"HTTP/1.1 200 OK\r\nX-Injected: 1\r\nContent-Length: 2\r\n\r\nOK"
    for tail in (extra, b"garbage", extra[:10]):

        async def handler(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tail: bytes = tail
        ) -> None:
            await read_head(reader)
            writer.write(OK + tail)  # one segment
            await writer.drain()
            await reader.read()

        async with raw_server(handler) as port, pool_for(port) as pool:
            resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
            assert (resp.status, resp.reason) == (200, "OK")
            assert list(resp.headers.items()) == [("Content-Length", "2")]
            assert await read_all(resp) == b"ok"
            assert (pool.size, pool.idle) == (0, 0)  # the connection was dropped


async def test_non_utf8_header_bytes_are_kept_exactly() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Latin: caf\xe9\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with raw_server(handler) as port, pool_for(port) as pool:
        resp = await pool.send("GET", "/", [], None, limit=2, idle=True)
        value = resp.headers["X-Latin"]
        assert value.encode("utf-8", "surrogateescape") == b"caf\xe9"


# --- issue 10 item 4: the answer's head is bounded, and read in linear time --------------


def _head_of(size: int, fields: int = 1) -> bytes:
    """An answer head of exactly ``size`` bytes with ``fields`` header fields."""
    start = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    lines = [b"X-%d: v" % i for i in range(fields - 2)]
    head = start + b"".join(line + b"\r\n" for line in lines)
    pad = size - len(head) - len(b"X-Pad: \r\n\r\n")
    assert pad >= 0
    return head + b"X-Pad: " + b"p" * pad + b"\r\n\r\n"


@pytest.mark.parametrize("piece", [100, None], ids=["in-pieces", "in-one-write"])
@pytest.mark.parametrize(
    ("size", "fields", "ok"),
    [
        (4096, 2, True),
        (4097, 2, False),  # one byte past the bound
        (1000, 20, True),
        (1000, 21, False),  # one field past the bound
    ],
)
async def test_answer_head_bounds(size: int, fields: int, ok: bool, piece: int | None) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        head = _head_of(size, fields)
        assert len(head) == size and head.count(b"\r\n") - 2 == fields
        if piece is None:  # the head, its body and more in one write (one read, mostly)
            writer.write(head + b"ok")
        else:
            for i in range(0, len(head), piece):
                writer.write(head[i : i + piece])
                await writer.drain()
            writer.write(b"ok")
        await reader.read()

    async with (
        raw_server(handler) as port,
        pool_for(port, max_connections=1, max_head_bytes=4096, max_head_fields=20) as pool,
    ):
        if ok:
            resp = await pool.send("GET", "/", [], None, limit=5, idle=True)
            assert await read_all(resp) == b"ok"
        else:
            with pytest.raises(UpstreamError) as info:
                await pool.send("GET", "/", [], None, limit=5, idle=True)
            assert info.value.kind == "error"
            assert "over 4096 bytes" in str(info.value) or "more than 20" in str(info.value)


async def test_endless_header_line_fails_at_the_bound() -> None:
    """An upstream that sends a header line that never ends, 1 KiB at a time: the answer
    fails once the default bound is passed (the bytes are collected, not re-copied)."""
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        for _ in range(8 * 1024):  # 8 MiB at most
            writer.write(b"e" * 1024)
            sent += 1024
            await writer.drain()

    async with raw_server(handler) as port, pool_for(port) as pool:
        with pytest.raises(UpstreamError) as info:
            await pool.send("GET", "/", [], None, limit=30, idle=True)
        assert "over 65536 bytes" in str(info.value)
    assert sent < 8 * 1024 * 1024


async def test_endless_trailers_fail_at_the_bound() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: ")
        for _ in range(64):
            writer.write(b"t" * 1024)
            await writer.drain()
        await reader.read()

    async with (
        raw_server(handler) as port,
        pool_for(port, max_connections=1, max_head_bytes=4096) as pool,
    ):
        with pytest.raises(UpstreamError) as info:
            # The head may find the answer failed already.
            await read_all(await pool.send("GET", "/", [], None, limit=5, idle=True))
        assert "trailers over 4096" in str(info.value)


# --- discard: the rest of a body read, not kept, to time its end -----------------------


@asynccontextmanager
async def body_server(size: int, *, chunked: bool, repeat: int = 1) -> AsyncIterator[int]:
    body = b"z" * size
    if chunked:  # 1000-byte chunks: the framing is not body
        frames = b"".join(
            b"%x\r\n%b\r\n" % (len(body[i : i + 1000]), body[i : i + 1000])
            for i in range(0, size, 1000)
        )
        answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + frames + b"0\r\n\r\n"
    else:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (size, body)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(repeat):
            await read_head(reader)
            writer.write(answer)
            await writer.drain()
        await reader.read()

    async with raw_server(handler) as port:
        yield port


@pytest.mark.parametrize("chunked", [False, True])
async def test_discard_times_a_body_that_ends_within_its_bound(chunked: bool) -> None:
    # 3 MB read, 1000 bytes kept: the rest, exactly the bound, is read to its end and timed
    # in the callbacks; the connection is reused. Chunk framing (MBs of it) is not body.
    size, kept = 3_000_000, 1000
    async with (
        body_server(size, chunked=chunked, repeat=2) as port,
        pool_for(port, max_discard_bytes=size - kept) as pool,
    ):
        for _ in range(2):
            resp = await pool.send("GET", "/", [], None, limit=5, idle=False)
            got = b""
            while len(got) < kept:
                got += await resp.read()
            assert resp.latency is None
            assert await resp.discard(size - len(got)) is True
            assert resp.latency is not None and resp.latency > 0
            assert (pool.size, pool.idle) == (1, 1)  # read to the end: kept


async def test_discard_past_its_bound_leaves_the_answer_untimed() -> None:
    # One byte more than the bound: not timed, and the connection is closed.
    size = 3_000_000
    async with body_server(size, chunked=False) as port, pool_for(port) as pool:
        resp = await pool.send("GET", "/", [], None, limit=5, idle=False)
        got = await resp.read()
        assert await resp.discard(size - len(got) - 1) is False
        assert resp.latency is None
        assert (pool.size, pool.idle) == (0, 0)
    # The pool's bound is the default: a body over it is not read to its end.
    async with body_server(size, chunked=True) as port, pool_for(port) as pool:
        pool.max_discard_bytes = 1_000_000
        resp = await pool.send("GET", "/", [], None, limit=5, idle=False)
        await resp.read()
        assert await resp.discard() is False
        assert resp.latency is None
        assert await resp.discard() is False  # released: nothing more to read


async def test_discard_raises_when_the_body_breaks_off_or_outlasts_the_deadline() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 5000)
        await writer.drain()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # 1.5 s in all, never 0.15 s without a byte
        for _ in range(2):
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6000\r\n\r\n" + b"a" * 5000)
            for _ in range(10):
                await writer.drain()
                await asyncio.sleep(0.15)
                writer.write(b"b" * 100)
            await writer.drain()

    async with raw_server(cut) as port, pool_for(port) as pool:
        resp = await pool.send("GET", "/", [], None, limit=5, idle=False)
        await resp.read()
        with pytest.raises(UpstreamReset):
            await resp.discard()
        assert resp.latency is None and pool.size == 0
    async with raw_server(slow) as port, pool_for(port) as pool:
        # the whole exchange bounded (the mirror path): it outlasts the bound
        resp = await pool.send("GET", "/", [], None, limit=0.6, idle=False)
        await resp.read()
        with pytest.raises(UpstreamTimeout):
            await resp.discard()
        assert resp.latency is None and pool.size == 0
        # each wait bounded: discarded bytes that keep coming are not idleness
        resp = await pool.send("GET", "/", [], None, limit=0.6, idle=True)
        await resp.read()
        assert await resp.discard() is True
        assert resp.latency is not None


# --- send_nowait: the answer taken in the connection's callbacks ------------------------


class Taken(AnswerSink):
    """What a sink was told, and when it ended."""

    __slots__ = ("chunks", "ended", "error", "headers", "keep", "latency", "status")

    def __init__(self, keep: int = 1 << 30) -> None:
        super().__init__()
        self.keep = keep
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.error: UpstreamError | None = None
        self.latency: float | None = None
        self.ended = asyncio.get_running_loop().create_future()

    def head(self, status: int, block: bytes) -> None:
        self.status = status
        self.headers = dict(header_fields(block))

    def body(self, data: bytes) -> bool:
        self.chunks.append(data)
        return sum(map(len, self.chunks)) < self.keep

    def end(self, error: UpstreamError | None, latency: float | None) -> None:
        assert not self.ended.done(), "ended twice"
        self.error = error
        self.latency = latency
        self.ended.set_result(None)


async def test_send_nowait_needs_an_idle_connection_and_reuses_it() -> None:
    async with body_server(50_000, chunked=True, repeat=3) as port, pool_for(port) as pool:
        assert not pool.send_nowait("GET", "/", [], None, Taken(), limit=2)  # none idle
        assert pool.size == 0
        resp = await pool.send("GET", "/", [], None, limit=2, idle=False)
        assert len(await read_all(resp)) == 50_000
        for _ in range(2):
            sink = Taken()
            assert pool.send_nowait("GET", "/", [("X-A", "1")], None, sink, limit=2)
            assert (pool.size, pool.idle) == (1, 0)
            await asyncio.wait_for(sink.ended, 5)
            assert sink.error is None and sink.status == 200
            assert sink.headers["Transfer-Encoding"] == "chunked"
            assert b"".join(sink.chunks) == b"z" * 50_000
            assert sink.latency is not None and sink.latency > 0
            assert (pool.size, pool.idle) == (1, 1)  # read to its end: kept


async def test_send_nowait_discards_past_what_the_sink_keeps() -> None:
    size = 3_000_000
    async with (
        body_server(size, chunked=False, repeat=3) as port,
        pool_for(port, max_discard_bytes=size) as pool,
    ):
        await read_all(await pool.send("GET", "/", [], None, limit=5, idle=False))
        # Kept up to 1000 bytes (at least the first part), the rest read to time its end.
        sink = Taken(keep=1000)
        assert pool.send_nowait("GET", "/", [], None, sink, limit=5)
        await asyncio.wait_for(sink.ended, 5)
        assert sink.error is None and sink.latency is not None
        assert sum(map(len, sink.chunks)) < size
        assert (pool.size, pool.idle) == (1, 1)
        # Past the discard bound too: not timed, the connection closed.
        pool.max_discard_bytes = 100_000
        sink = Taken(keep=1000)
        assert pool.send_nowait("GET", "/", [], None, sink, limit=5)
        await asyncio.wait_for(sink.ended, 5)
        assert sink.error is None and sink.latency is None
        assert (pool.size, pool.idle) == (0, 0)


class NoReadOn(Taken):
    """Keeps ``keep`` bytes and reads nothing past them (``discard_limit`` below 0)."""

    def discard_limit(self, default: int) -> int:
        return -1


async def test_send_nowait_a_sink_that_reads_nothing_on_closes_at_once_untimed() -> None:
    """The mirror's callback path when its answer cannot be timed (a DiscardGate pause, a
    Content-Length past the discard bound): the rest is not read, the answer ends at once
    without error and untimed, and its connection is closed, not kept."""
    async with (
        body_server(3_000_000, chunked=False, repeat=2) as port,
        pool_for(port) as pool,
    ):
        await read_all(await pool.send("GET", "/", [], None, limit=5, idle=False))
        sink = NoReadOn(keep=1000)
        assert pool.send_nowait("GET", "/", [], None, sink, limit=30)
        await asyncio.wait_for(sink.ended, 5)
        assert sink.error is None and sink.latency is None
        assert sum(map(len, sink.chunks)) < 3_000_000
        assert (pool.size, pool.idle) == (0, 0)


async def test_send_nowait_failures_end_the_sink() -> None:
    async def stale(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(OK)
        await writer.drain()
        await read_head(reader)  # the next request: closed unanswered

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(OK)
        await writer.drain()
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()

    async with raw_server(stale) as port, pool_for(port) as pool:
        await read_all(await pool.send("GET", "/", [], None, limit=2, idle=True))
        sink = Taken()
        assert pool.send_nowait("GET", "/", [], None, sink, limit=2)
        await asyncio.wait_for(sink.ended, 5)
        assert isinstance(sink.error, UpstreamReset)
        assert retryable(sink.error, "GET") and not retryable(sink.error, "POST")
        assert (pool.size, pool.idle) == (0, 0)
    async with raw_server(stall) as port, pool_for(port) as pool:
        await read_all(await pool.send("GET", "/", [], None, limit=2, idle=True))
        sink = Taken()
        assert pool.send_nowait("GET", "/", [], None, sink, limit=0.3)
        await asyncio.wait_for(sink.ended, 5)
        assert isinstance(sink.error, UpstreamTimeout) and not retryable(sink.error, "GET")
        assert sink.status == 200 and sink.chunks == [b"abc"]
        assert (pool.size, pool.idle) == (0, 0)
    async with raw_server(stall) as port, pool_for(port) as pool:
        await read_all(await pool.send("GET", "/", [], None, limit=2, idle=True))
        sink = Taken()
        assert pool.send_nowait("GET", "/", [], None, sink, limit=5)
        await asyncio.sleep(0.1)
        sink.cancel()
        await asyncio.wait_for(sink.ended, 5)
        assert isinstance(sink.error, UpstreamReset)
        assert (pool.size, pool.idle) == (0, 0)
