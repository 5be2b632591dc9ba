"""The proxied port's server (``proxy.server``) under attack: raw sockets against a real
proxy and real upstreams on loopback; every bound at the bound and one byte past."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from yarl import URL

from proxy import server as server_module
from proxy.app import make_proxy_app
from proxy.client_answer import Answer
from proxy.server import (
    SERVING_KEY,
    ClientLimits,
    Connection,
    HeadLimits,
    ProxyServer,
    Request,
    Serving,
)
from tests.proxy.harness import (
    Sink,
    echo,
    handler_app,
    make_cfg,
    proxy_between,
    proxy_for,
    raw_request,
    serve_app,
    serve_proxy,
)

LIMITS = {
    "max_line_bytes": 1000,
    "max_field_bytes": 600,
    "max_header_bytes": 1500,
    "max_headers": 10,
}


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _live() -> float:
    return REGISTRY.get_sample_value("graygate_client_connections") or 0.0


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    u = URL(url)
    return await asyncio.open_connection(u.host, u.port)


async def _answers(reader: asyncio.StreamReader, n: int) -> list[tuple[bytes, bytes]]:
    """``n`` answers with a Content-Length (head, body) read off one connection."""
    out = []
    async with asyncio.timeout(20):
        for _ in range(n):
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            out.append((head, await reader.readexactly(length)))
    return out


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(10):
            return await reader.read() == b""
    except ConnectionError:
        return True


def _head(target: bytes = b"/", fields: tuple[bytes, ...] = ()) -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: h\r\n%bConnection: close\r\n\r\n" % (
        target,
        b"".join(f + b"\r\n" for f in fields),
    )


async def test_a_field_name_and_the_field_count_at_the_bound_and_one_past() -> None:
    async with proxy_between(Sink(), listen_limits=LIMITS, mirror={"enabled": False}) as url:
        for fields, expected in (
            ((b"N" * 600 + b": v",), 200),  # a name at max_field_bytes
            ((b"N" * 601 + b": v",), 431),
            # Host + Connection + 8: max_headers; 9: one past
            (tuple(b"X-%d: v" % i for i in range(8)), 200),
            (tuple(b"X-%d: v" % i for i in range(9)), 431),
        ):
            raw = await raw_request(url, _head(b"/", fields))
            assert _status(raw) == expected, [len(f) for f in fields]


async def test_the_whole_head_at_its_byte_bound_and_one_past() -> None:
    # White space after a value counts toward no field, only toward the head's bytes.
    bound = HeadLimits(max_line=1000, max_field=600, max_headers=10, max_header_bytes=1500)
    async with proxy_between(Sink(), listen_limits=LIMITS, mirror={"enabled": False}) as url:
        base = len(_head(b"/", (b"X-Pad: v",)))
        for extra, expected in ((0, 200), (1, 431)):
            pad = b" " * (bound.max_head_bytes - base + extra)
            raw = await raw_request(url, _head(b"/", (b"X-Pad: v" + pad,)))
            assert _status(raw) == expected
            # The same head, trickled: it is parsed once its empty line is in.
            u = URL(url)
            reader, writer = await asyncio.open_connection(u.host, u.port)
            data = _head(b"/", (b"X-Pad: v" + pad,))
            for i in range(0, len(data), 1000):
                writer.write(data[i : i + 1000])
                await writer.drain()
            raw = await reader.read()
            writer.close()
            assert _status(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        # Content-Length and Transfer-Encoding both
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\nHost: h\n\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A : a\r\n\r\n",  # white space before the colon
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        b"GET /\r\n\r\n",  # HTTP/0.9
        # an upgrade whose body the parser would skip (and parse as the next request)
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    ],
)
async def test_smuggling_shapes_are_refused_and_the_connection_closed(raw: bytes) -> None:
    seen: list[str] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="ok")

    async with (
        serve_app(handler_app(upstream)) as p,
        proxy_for(make_cfg(p, p, mirror={"enabled": False}), Sink()) as url,
    ):
        reader, writer = await _open(url)
        # a well-formed request after it on the same connection is never answered
        writer.write(raw + b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
        async with asyncio.timeout(10):
            answer = await reader.read()
        writer.close()
    assert _status(answer) in (400, 505), answer[:80]
    assert answer.count(b"HTTP/1.1 ") == 1
    assert seen == []


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with proxy_between(Sink(), mirror={"enabled": False}) as url:
        reader, writer = await _open(url)
        writer.write(
            b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /three HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nxy\r\n0\r\nX-Trailer: t\r\n\r\n"
            b"HEAD /four HTTP/1.1\r\nHost: h\r\n\r\n"
            b"GET /five HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        answers = await _answers(reader, 3)
        head = await reader.readuntil(b"\r\n\r\n")  # HEAD: a Content-Length, no body
        last = await reader.read()
        writer.close()
    seen = [orjson.loads(body) for _, body in answers]
    assert [s["raw_path"] for s in seen] == ["/one", "/two", "/three"]
    assert [s["body"] for s in seen] == ["", "abc", "xy"]
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: " in head
    assert last.startswith(b"HTTP/1.1 200") and b"Connection: close" in last
    assert orjson.loads(last.partition(b"\r\n\r\n")[2])["raw_path"] == "/five"


async def test_http_1_0_keep_alive_and_close() -> None:
    async with proxy_between(Sink(), mirror={"enabled": False}) as url:
        reader, writer = await _open(url)
        writer.write(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        ((head, _),) = await _answers(reader, 1)
        assert head.startswith(b"HTTP/1.0 200") and b"Connection: keep-alive" in head
        writer.write(b"GET /b HTTP/1.0\r\n\r\n")
        ((head, _),) = await _answers(reader, 1)
        assert b"keep-alive" not in head
        assert await _closed(reader)
        writer.close()


async def test_a_second_request_while_the_first_answer_streams() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        if request.path == "/small":
            return web.Response(text="small")
        resp = web.StreamResponse()
        resp.content_length = 6
        await resp.prepare(request)
        await resp.write(b"first ")
        await release.wait()
        return resp

    async with (
        serve_app(handler_app(slow)) as p,
        proxy_for(make_cfg(p, p, mirror={"enabled": False}), Sink()) as url,
    ):
        reader, writer = await _open(url)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        assert await reader.readexactly(6) == b"first "
        writer.write(b"GET /small HTTP/1.1\r\nHost: h\r\n\r\n")
        with pytest.raises(TimeoutError):  # not before the first answer is complete
            async with asyncio.timeout(0.3):
                await reader.readuntil(b"HTTP/1.1")
        release.set()
        ((head, body),) = await _answers(reader, 1)
        assert head.startswith(b"HTTP/1.1 200") and body == b"small"
        writer.close()


async def test_a_client_that_leaves_mid_body_leaks_nothing() -> None:
    seen: list[str] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="ok")

    sink = Sink()
    async with (
        serve_app(handler_app(upstream)) as p,
        proxy_for(make_cfg(p, p), sink) as url,
    ):
        before = _live()
        for _ in range(5):
            _, writer = await _open(url)
            writer.write(
                b"POST /gone HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
            )
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        records = await sink.wait(5)
        for _ in range(100):
            if _live() == before:
                break
            await asyncio.sleep(0.05)
        assert _live() == before
    assert seen == []
    assert all(r.mirror_skipped == "client_aborted" for r in records)


async def test_an_unread_body_is_dropped_and_the_connection_kept() -> None:
    # Shadow mode answers a body over the mirror bound without reading it.
    async with (
        serve_app(handler_app(echo)) as p,
        proxy_for(make_cfg(p, p, mode="shadow", mirror={"max_body_bytes": 1024}), Sink()) as url,
    ):
        reader, writer = await _open(url)
        body = b"b" * 500_000
        writer.write(b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        writer.write(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
        answers = await _answers(reader, 2)
        assert [_status(h) for h, _ in answers] == [202, 202]
        writer.close()


async def test_an_expectation_other_than_100_continue_is_417() -> None:
    async with proxy_between(Sink(), mirror={"enabled": False}) as url:
        raw = await raw_request(
            url,
            b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: something\r\nContent-Length: 1\r\n"
            b"Connection: close\r\n\r\nx",
        )
    assert _status(raw) == 417


@asynccontextmanager
async def _server(handler: object) -> AsyncIterator[tuple[str, ProxyServer]]:
    app = web.Application()
    app[SERVING_KEY] = Serving(
        handler,  # type: ignore[arg-type]
        ClientLimits(header_s=10, write_s=10, max_connections=100),
        HeadLimits(max_line=1000, max_field=1000, max_headers=10, max_header_bytes=1000),
    )
    server = ProxyServer(app, shutdown_timeout=5.0)
    await server.setup()
    try:
        host, port = await server.start("127.0.0.1", 0)
        yield f"http://{host}:{port}", server
    finally:
        await server.cleanup()


async def test_a_handler_that_raises_gives_500_and_leaks_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(request: Request) -> Answer:
        raise RuntimeError("bug")

    logged: list[str] = []
    # (a log record would hold the traceback, and so the connection, while pytest keeps it)
    monkeypatch.setattr(server_module.logger, "exception", lambda msg, *a: logged.append(msg % a))
    async with _server(broken) as (url, server):
        before = _live()
        reader, writer = await _open(url)
        writer.write(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
        raw = await reader.read()
        writer.close()
        assert _status(raw) == 500 and raw.count(b"HTTP/1.1") == 1
        for _ in range(100):
            if not server.connections:
                break
            await asyncio.sleep(0.05)
        assert not server.connections and _live() == before
    assert logged == ["the proxy's handler failed on GET /a"]
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, Connection)]


async def test_shutdown_finishes_the_request_in_flight_and_stops_accepting() -> None:
    started = asyncio.Event()

    async def slow(request: Request) -> Answer:
        started.set()
        await asyncio.sleep(0.5)
        return Answer(200, body=b"done")

    async with _server(slow) as (url, server):
        reader, writer = await _open(url)
        idle_r, idle_w = await _open(url)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        await started.wait()
        stopping = asyncio.create_task(server.cleanup())
        ((head, body),) = await _answers(reader, 1)
        assert body == b"done" and b"Connection: close" in head
        assert await _closed(idle_r)
        await stopping
        with pytest.raises(OSError):
            await _open(url)
        for w in (writer, idle_w):
            w.close()


async def test_the_app_is_served_by_the_proxy_server_only() -> None:
    cfg = make_cfg("http://127.0.0.1:1", "http://127.0.0.1:2")
    with pytest.raises(RuntimeError):
        ProxyServer(web.Application())
    async with serve_proxy(make_proxy_app(cfg, recorder=Sink(), run_id=1)) as url:
        raw = await raw_request(url, b"OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert _status(raw) == 502  # the primary is down: answered, as any target


async def test_an_endless_trailer_field_is_cut_off() -> None:
    # httptools collects a field until its end: the chunk framing and trailers are bounded
    # (the head's byte bound), so a trailer that never ends costs no more than a head.
    seen: list[str] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append(request.path)
        await request.read()
        return web.Response(text="ok")

    async with (
        serve_app(handler_app(upstream)) as p,
        proxy_for(make_cfg(p, p, listen_limits=LIMITS, mirror={"enabled": False}), Sink()) as url,
    ):
        reader, writer = await _open(url)
        writer.write(b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"3\r\nabc\r\n0\r\nX-Trailer: ")
        with pytest.raises(ConnectionError):
            for _ in range(2000):  # 2 MB
                writer.write(b"t" * 1000)
                await writer.drain()
                await asyncio.sleep(0)
                if reader.at_eof():
                    raise ConnectionResetError
        try:
            answer = await reader.read()
        except ConnectionResetError:  # closed with the client's bytes unread: a reset
            answer = b"HTTP/1.1 400 (reset)"
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400")
    assert seen == []


async def test_an_upgrade_to_another_protocol_is_a_plain_request_and_connect_is_answered() -> None:
    async with proxy_between(Sink(), mirror={"enabled": False}) as url:
        reader, writer = await _open(url)
        writer.write(
            b"GET /h2c HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        ((head, body),) = await _answers(reader, 1)
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
        seen = orjson.loads(body)
        assert seen["raw_path"] == "/h2c"
        assert "upgrade" not in {k.lower() for k, _ in seen["headers"]}
        assert await _closed(reader)  # what followed the head was not HTTP
        writer.close()
        raw = await raw_request(
            url, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )
    assert 200 <= _status(raw) < 600


async def test_a_body_past_the_read_buffer_but_within_the_mirror_bound_is_read_whole() -> None:
    # The proxy reads such a body whole (it is mirrored): the socket is not left paused.
    sink = Sink()
    mirror = {"max_body_bytes": 2_000_000, "methods": ["POST"], "allow_side_effects": True}
    async with proxy_between(sink, mirror=mirror) as url:
        body = bytes(range(256)) * 4096  # 1 MiB
        raw = await raw_request(
            url,
            b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(body)
            + body,
        )
        assert _status(raw) == 200
        assert len(orjson.loads(raw.partition(b"\r\n\r\n")[2])["body"]) == len(body)
        (record,) = await sink.wait()
    assert record.mirror_skipped is None
