"""Forwarding: real aiohttp upstreams on loopback, a real client, the proxy in between."""

from __future__ import annotations

import asyncio
import gc
import gzip
import logging
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import brotli
import orjson
import pytest
from aiohttp import ClientSession, WSMsgType, web
from yarl import URL

from graygate.errors import ConfigError
from proxy.app import make_proxy_app
from proxy.codec import decode_body
from tests.proxy.harness import (
    Sink,
    closed_port,
    counting_echo,
    echo,
    handler_app,
    make_cfg,
    proxy_between,
    proxy_for,
    raw_request,
    send_and_hang_up,
    serve_app,
    serve_proxy,
)

# --- harness: real servers on random loopback ports ------------------------------------


def header_map(pairs: list[list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k.lower(), []).append(v)
    return out


# --- the client gets the primary's answer, exactly ------------------------------------


async def test_client_gets_primary_status_headers_and_bytes(client: ClientSession) -> None:
    payload = gzip.compress(b'{"ok": true, "n": 1}' * 50)

    async def primary(request: web.Request) -> web.Response:
        resp = web.Response(status=201, reason="Made It", body=payload)
        resp.headers["Content-Type"] = "application/json"
        resp.headers["Content-Encoding"] = "gzip"
        resp.headers["X-Custom"] = "a"
        resp.headers.add("Set-Cookie", "a=1; Path=/")
        resp.headers.add("Set-Cookie", "b=2; Path=/")
        resp.headers["Vary"] = "Accept-Encoding"
        return resp

    sink = Sink()
    async with (
        serve_app(handler_app(primary)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c), sink) as proxy,
    ):
        async with client.get(proxy + "/x", headers={"Accept-Encoding": "gzip"}) as resp:
            body = await resp.read()
            assert resp.status == 201
            assert resp.reason == "Made It"
            assert body == payload  # the compressed bytes, untouched
            assert resp.headers["Content-Encoding"] == "gzip"
            assert resp.headers["Content-Length"] == str(len(payload))
            assert resp.headers["Content-Type"] == "application/json"
            assert resp.headers["X-Custom"] == "a"
            assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
            assert resp.headers["Vary"] == "Accept-Encoding"
            trace_id = resp.headers["X-Trace-ID"]
        (rec,) = await sink.wait()
    assert rec.trace_id == trace_id
    assert rec.primary is not None
    assert rec.primary.status == 201
    assert rec.primary.body == b'{"ok": true, "n": 1}' * 50  # decoded for storage
    assert rec.primary.headers is not None
    assert rec.primary.headers["set-cookie"] == "[REDACTED], [REDACTED]"


async def test_query_and_body_intact_for_every_method() -> None:
    sink = Sink()
    query = "a=1&b=%zz+x&&c=%2F&d=%E2%82%AC&e"
    body = bytes(range(256)) * 3
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c), sink) as proxy,
    ):
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            head = (
                f"{method} /api/items/9?{query} HTTP/1.1\r\nHost: shop.example\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            raw = await raw_request(proxy, head + body)
            status_line, _, rest = raw.partition(b"\r\n")
            assert status_line == b"HTTP/1.1 200 OK"
            seen = orjson.loads(rest.partition(b"\r\n\r\n")[2])
            assert seen["method"] == method
            assert seen["raw_path"] == f"/api/items/9?{query}"
            assert seen["body"].encode("latin-1") == body
        head = f"HEAD /h?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        raw = await raw_request(proxy, head)
        assert raw.startswith(b"HTTP/1.1 200 OK")
        assert raw.endswith(b"\r\n\r\n")  # no body for HEAD
        records = await sink.wait(7)
    assert {r.query for r in records} == {query}


async def test_chunked_request_body_is_forwarded(client: ClientSession) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"part-{i};".encode()

    sink = Sink()
    async with proxy_between(sink) as proxy:
        async with client.put(proxy + "/c", data=chunks()) as resp:
            seen = await resp.json()
        assert seen["body"] == "part-0;part-1;part-2;part-3;part-4;"
        (rec,) = await sink.wait()
    assert rec.request_body == b"part-0;part-1;part-2;part-3;part-4;"


async def test_hop_by_hop_headers_are_stripped_both_ways() -> None:
    async def primary(request: web.Request) -> web.Response:
        resp = await echo(request)
        resp.headers["Connection"] = "X-Resp-Hop"
        resp.headers["X-Resp-Hop"] = "drop me"
        resp.headers["Keep-Alive"] = "timeout=5"
        resp.headers["Proxy-Authenticate"] = "Basic"
        resp.headers["Trailer"] = "X-Checksum"
        resp.headers["X-Resp-Kept"] = "keep me"
        return resp

    sink = Sink()
    async with (
        serve_app(handler_app(primary)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c), sink) as proxy,
    ):
        raw = await raw_request(
            proxy,
            b"GET /hop HTTP/1.1\r\nHost: a.example\r\n"
            b"Connection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\n"
            b"Keep-Alive: timeout=9\r\nTE: trailers\r\nTrailer: X-T\r\n"
            b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\n"
            b"X-Kept: yes\r\n\r\n",
        )
    head, _, body = raw.partition(b"\r\n\r\n")
    resp_headers = {
        line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")[1:]
    }
    for hop in (b"x-resp-hop", b"keep-alive", b"proxy-authenticate", b"trailer"):
        assert hop not in resp_headers
    assert resp_headers[b"x-resp-kept"] == b"keep me"
    if b"transfer-encoding" in resp_headers:  # aiohttp's own framing, not the upstream's
        assert resp_headers[b"transfer-encoding"] == b"chunked"
    seen = header_map(orjson.loads(body)["headers"])
    for name in (
        "connection",
        "x-secret-hop",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
    ):
        assert name not in seen, name
    assert seen["x-kept"] == ["yes"]


async def test_forwarded_headers_and_host(client: ClientSession) -> None:
    sink = Sink()
    async with proxy_between(sink) as proxy:
        async with client.get(
            proxy + "/f",
            headers={
                "Host": "shop.example",
                "X-Forwarded-For": "10.0.0.1",
                "X-Forwarded-Proto": "https-spoofed",
                "X-Forwarded-Host": "spoofed.example",
                "X-Gray-Shadow": "1",  # a client cannot pass its request off as shadow
            },
        ) as resp:
            seen = header_map((await resp.json())["headers"])
    # the peer is not in trusted_proxies: its X-Forwarded-For is not believed
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["shop.example"]
    assert seen["host"] == ["shop.example"]  # the client's, as Envoy and Caddy do
    # no header the client did not send
    assert "user-agent" in seen  # the test client sends one
    assert "x-gray-shadow" not in seen


async def test_no_default_headers_added() -> None:
    sink = Sink()
    async with proxy_between(sink) as proxy:
        raw = await raw_request(
            proxy,
            b"POST /n HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        )
    seen = header_map(orjson.loads(raw.partition(b"\r\n\r\n")[2])["headers"])
    for name in ("accept", "accept-encoding", "user-agent", "content-type"):
        assert name not in seen, name
    assert seen["content-length"] == ["2"]


async def test_trace_id_returned_and_sent_upstream(client: ClientSession) -> None:
    sink = Sink()
    async with proxy_between(sink) as proxy:
        async with client.get(proxy + "/t") as resp:
            trace_id = resp.headers["X-Trace-ID"]
            seen = header_map((await resp.json())["headers"])
        (rec,) = await sink.wait()
    assert len(trace_id) == 32
    assert seen["x-trace-id"] == [trace_id]
    assert seen["traceparent"][0].split("-")[1] == trace_id
    assert seen["x-gray-tag"] == ["stable"]
    assert rec.trace_id == trace_id


async def test_incoming_traceparent_continues_upstream(client: ClientSession) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    sink = Sink()
    async with proxy_between(sink) as proxy:
        async with client.get(
            proxy + "/tp",
            headers={"traceparent": f"00-{trace_id}-{parent}-00", "tracestate": "k=v"},
        ) as resp:
            assert resp.headers["X-Trace-ID"] == trace_id
            seen = header_map((await resp.json())["headers"])
        (rec,) = await sink.wait()
    version, tid, span, flags = seen["traceparent"][0].split("-")
    assert (version, tid, flags) == ("00", trace_id, "00")
    assert span != parent and span == rec.span_id  # the proxy's span is the parent now
    assert seen["tracestate"] == ["k=v"]
    assert seen["x-trace-id"] == [trace_id]
    assert rec.trace_id == trace_id


# --- steering: only the configured upstream is ever asked -----------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://evil.example/abs?q=1", "/abs?q=1"),
        ("//evil.example/x?y=2", "//evil.example/x?y=2"),
        ("/../../etc/passwd", "/../../etc/passwd"),
        ("/@evil.example/p", "/@evil.example/p"),
        ("https://127.0.0.2:1/other", "/other"),
    ],
)
async def test_steering_attempts_reach_the_configured_upstream(target: str, expected: str) -> None:
    hits: list[str] = []

    async def primary(request: web.Request) -> web.Response:
        hits.append(request.raw_path)
        return web.Response(text="primary")

    sink = Sink()
    async with (
        serve_app(handler_app(primary)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c, mirror={"enabled": False}), sink) as proxy,
    ):
        raw = await raw_request(
            proxy,
            f"GET {target} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".encode(),
        )
        await sink.wait()
    assert raw.startswith(b"HTTP/1.1 200")
    assert raw.endswith(b"primary")
    assert hits == [expected]


# --- failures of the serving upstream ---------------------------------------------------


async def test_primary_down_gives_502_json_with_trace_id(client: ClientSession) -> None:
    sink = Sink()
    async with (
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(f"http://127.0.0.1:{closed_port()}", c), sink) as proxy,
    ):
        async with client.get(proxy + "/down") as resp:
            assert resp.status == 502
            assert resp.content_type == "application/json"
            doc = await resp.json()
            assert doc == {
                "error": "refused",
                "upstream": "primary",
                "trace_id": resp.headers["X-Trace-ID"],
            }
        (rec,) = await sink.wait()
    assert rec.primary is not None and rec.primary.error == "refused"
    assert rec.primary.status is None
    assert rec.canary is not None and rec.canary.status == 200


async def test_primary_unresolvable_gives_502(client: ClientSession) -> None:
    sink = Sink()
    async with (
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg("http://graygate-no-such-host.invalid", c), sink) as proxy,
    ):
        async with client.get(proxy + "/dns") as resp:
            assert resp.status == 502
            assert (await resp.json())["error"] == "refused"
        (rec,) = await sink.wait()
    assert rec.primary is not None and rec.primary.error == "refused"


async def test_primary_slow_gives_504(client: ClientSession) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    sink = Sink()
    try:
        async with (
            serve_app(handler_app(slow)) as p,
            serve_app(handler_app(echo)) as c,
            proxy_for(make_cfg(p, c, upstreams={"timeout_ms": 200}), sink) as proxy,
        ):
            async with client.get(proxy + "/slow") as resp:
                assert resp.status == 504
                doc = await resp.json()
                assert doc["error"] == "timeout"
                assert doc["upstream"] == "primary"
                assert doc["trace_id"] == resp.headers["X-Trace-ID"]
            (rec,) = await sink.wait()
            assert rec.primary is not None and rec.primary.error == "timeout"
            release.set()
    finally:
        release.set()


async def test_primary_reset_mid_body_closes_client_connection(client: ClientSession) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100"})
        await resp.prepare(request)
        await resp.write(b"x" * 10)
        assert request.transport is not None
        request.transport.close()
        return resp

    sink = Sink()
    async with (
        serve_app(handler_app(broken)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c), sink) as proxy,
    ):
        async with client.get(proxy + "/broken") as resp:
            assert resp.status == 200
            with pytest.raises(Exception):  # noqa: B017 - any payload error will do
                await resp.read()
        (rec,) = await sink.wait()
    assert rec.primary is not None
    assert rec.primary.status == 200
    assert rec.primary.error == "reset"
    assert rec.primary.body_truncated


# --- streaming and bounds ---------------------------------------------------------------


async def test_response_is_streamed_chunk_by_chunk(client: ClientSession) -> None:
    first_seen = asyncio.Event()

    async def streaming(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"first;")
        await first_seen.wait()  # only the client reading chunk one lets chunk two go
        await resp.write(b"second")
        await resp.write_eof()
        return resp

    sink = Sink()
    async with (
        serve_app(handler_app(streaming)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c), sink) as proxy,
    ):
        async with client.get(proxy + "/stream") as resp:
            got = b""
            while not got.endswith(b"first;"):
                got += await resp.content.readany()
            first_seen.set()
            got += await resp.content.read()
        assert got == b"first;second"
        (rec,) = await sink.wait()
    assert rec.primary is not None and rec.primary.body == b"first;second"


async def test_large_request_body_is_served_not_mirrored(client: ClientSession) -> None:
    canary_hits: list[str] = []
    big = b"0123456789" * 1000  # 10 000 bytes
    sink = Sink()
    bounds: dict[str, Any] = {
        "mirror": {"max_body_bytes": 1000, "allow_side_effects": True},
        "record": {"max_body_bytes": 500},
    }
    async with proxy_between(sink, canary=counting_echo(canary_hits), **bounds) as proxy:
        async with client.post(proxy + "/upload", data=big) as resp:
            assert (await resp.json())["body"].encode() == big

        async def chunked() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 700):
                yield big[i : i + 700]

        async with client.post(proxy + "/upload-chunked", data=chunked()) as resp:
            assert (await resp.json())["body"].encode() == big
        small = b"tiny"
        async with client.post(proxy + "/upload-small", data=small) as resp:
            assert (await resp.json())["body"].encode() == small
        records = await sink.wait(3)
    by_path = {r.path: r for r in records}
    for path in ("/upload", "/upload-chunked"):
        rec = by_path[path]
        assert rec.mirror_skipped == "body_too_large"
        assert rec.canary is None
        assert rec.request_body == big[:500]
        assert rec.request_body_truncated
    assert canary_hits == ["/upload-small"]
    assert by_path["/upload-small"].mirror_skipped is None


async def test_large_response_is_truncated_in_the_record_only(client: ClientSession) -> None:
    big = bytes(range(256)) * 100  # 25 600 bytes

    async def primary(request: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/octet-stream")

    sink = Sink()
    async with (
        serve_app(handler_app(primary)) as p,
        serve_app(handler_app(primary)) as c,
        proxy_for(make_cfg(p, c, record={"max_body_bytes": 1000}), sink) as proxy,
    ):
        async with client.get(proxy + "/big") as resp:
            assert await resp.read() == big
        (rec,) = await sink.wait()
    assert rec.primary is not None and rec.canary is not None
    assert rec.primary.body == big[:1000] and rec.primary.body_truncated
    assert rec.canary.body == big[:1000] and rec.canary.body_truncated


async def test_client_disconnect_mid_stream_is_quiet(
    client: ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    gone = asyncio.Event()
    finished = asyncio.Event()

    async def streaming(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"a" * 1000)
        await gone.wait()
        try:
            for _ in range(200):
                await resp.write(b"b" * 65536)
        except ConnectionError:
            pass
        finally:
            finished.set()
        return resp

    sink = Sink()
    caplog.set_level(logging.WARNING)
    async with (
        serve_app(handler_app(streaming)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c), sink) as proxy,
    ):
        resp = await client.get(proxy + "/gone")
        await resp.content.readany()
        resp.close()  # the client goes away mid-body
        gone.set()
        (rec,) = await sink.wait()
        async with asyncio.timeout(10):
            await finished.wait()
    assert rec.extra.get("client_disconnected") == "true"
    assert rec.primary is not None and rec.primary.status == 200
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []


async def test_expect_100_continue() -> None:
    sink = Sink()
    async with proxy_between(sink) as proxy:
        url = URL(proxy)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            writer.write(
                b"PUT /e HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100")
            writer.write(b"hello")
            raw = await reader.read()
        finally:
            writer.close()
    assert raw.startswith(b"HTTP/1.1 200")
    seen = orjson.loads(raw.partition(b"\r\n\r\n")[2])
    assert seen["body"] == "hello"
    assert "expect" not in header_map(seen["headers"])


GRAYGATE_LOGGERS = frozenset({"proxy", "graygate", "diff", "store", "config"})


async def test_client_abandoning_its_body_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    hits: list[str] = []
    sink = Sink()
    caplog.set_level(logging.WARNING)
    async with proxy_between(sink, primary=counting_echo(hits)) as proxy:
        await send_and_hang_up(
            proxy, b"POST /cut HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\nabc"
        )
        # the same beyond mirror.max_body_bytes, where the body is streamed upstream
        await send_and_hang_up(
            proxy,
            b"POST /cut-big HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\n"
            + b"x" * 200_000,
        )
        # the proxy is still fine
        raw = await raw_request(
            proxy, b"GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        assert raw.startswith(b"HTTP/1.1 200")
        await sink.wait(2)  # /after, and /cut-big (streamed: the primary saw part of it)
    assert "/cut" not in hits
    # graygate's own loggers only: the test upstreams (aiohttp) may complain about the cut body
    ours = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.split(".")[0] in GRAYGATE_LOGGERS
    ]
    assert ours == []


async def test_gc_is_tuned_while_serving_and_restored_after() -> None:
    before = gc.get_threshold()
    cfg = make_cfg("http://127.0.0.1:1", "http://127.0.0.1:2")
    async with serve_proxy(make_proxy_app(cfg, recorder=Sink(), run_id=1)):
        assert gc.get_threshold()[0] >= 50_000
    assert gc.get_threshold() == before
    async with serve_proxy(make_proxy_app(cfg, recorder=Sink(), run_id=1, tune_gc=False)):
        assert gc.get_threshold() == before


# --- codec ------------------------------------------------------------------------------


def test_decode_body_encodings() -> None:
    data = b'{"a": 1}' * 100
    assert decode_body(gzip.compress(data), "gzip", 10_000) == (data, False)
    assert decode_body(zlib.compress(data), "deflate", 10_000) == (data, False)
    raw = zlib.compressobj(wbits=-15)
    raw_deflate = raw.compress(data) + raw.flush()
    assert decode_body(raw_deflate, "deflate", 10_000) == (data, False)
    assert decode_body(brotli.compress(data), "br", 10_000) == (data, False)
    assert decode_body(data, None, 10_000) == (data, False)
    assert decode_body(data, "identity", 10_000) == (data, False)
    # gzip over br, applied in order: undone in reverse
    assert decode_body(gzip.compress(brotli.compress(data)), "br, gzip", 10_000) == (
        data,
        False,
    )


def test_decode_body_bounds_and_failures() -> None:
    bomb = gzip.compress(b"\0" * 5_000_000)
    out, cut = decode_body(bomb, "gzip", 1000)
    assert out == b"\0" * 1000 and cut
    out, cut = decode_body(brotli.compress(b"z" * 100_000), "br", 10)
    assert out == b"z" * 10 and cut
    # a cut compressed body decodes as far as it goes
    whole = gzip.compress(bytes(range(256)) * 40)
    out, _ = decode_body(whole[: len(whole) // 2], "gzip", 100_000)
    assert (bytes(range(256)) * 40).startswith(out) and out
    # undecodable or unknown: kept as it came
    assert decode_body(b"not gzip", "gzip", 100) == (b"not gzip", False)
    assert decode_body(b"zstd bytes", "zstd", 100) == (b"zstd bytes", False)
    assert decode_body(b"abcdef", None, 3) == (b"abc", True)


# --- failure paths: a malformed request, a recorder that refuses or breaks ------------------


async def test_malformed_request_is_refused_without_reaching_an_upstream() -> None:
    seen: list[str] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="ok")

    sink = Sink()
    async with (
        serve_app(handler_app(upstream)) as primary,
        serve_app(handler_app(upstream)) as canary,
    ):
        async with proxy_for(make_cfg(primary, canary), sink) as url:
            port = URL(url).port
            for raw in (
                b"GARBAGE\r\n\r\n",
                b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
                b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n",
            ):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(raw)
                await writer.drain()
                head = await asyncio.wait_for(reader.readline(), 5)
                writer.close()
                assert head.split(b" ")[1] == b"400", (raw, head)
            # The proxy still serves well-formed requests afterwards.
            async with ClientSession() as session, session.get(f"{url}/fine") as resp:
                assert resp.status == 200
    assert seen.count("/fine") == 2  # served and mirrored; the malformed ones reached nobody
    assert len(seen) == 2


class _RefusingSink(Sink):
    def submit(self, record: Any) -> bool:
        super().submit(record)
        return False  # the recorder's queue is full: dropped and counted by the recorder


class _BrokenSink(Sink):
    def submit(self, record: Any) -> bool:
        super().submit(record)
        raise RuntimeError("recorder broke")


@pytest.mark.parametrize("sink_cls", [_RefusingSink, _BrokenSink])
async def test_client_is_served_whatever_the_recorder_does(
    client: ClientSession, sink_cls: type[Sink], caplog: pytest.LogCaptureFixture
) -> None:
    sink = sink_cls()
    async with serve_app(handler_app(echo)) as primary, serve_app(handler_app(echo)) as canary:
        async with proxy_for(make_cfg(primary, canary), sink) as url:
            for _ in range(3):
                async with client.get(f"{url}/orders/1") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["raw_path"] == "/orders/1"
            await sink.wait(3)


# --- issue 9: the upstreams get the client's bytes -------------------------------------


def _smuggling_gzip() -> tuple[bytes, bytes]:
    """A gzip body whose inflated bytes start with as many bytes as it is long, followed
    by a second request: a proxy that forwards the inflated bytes under the compressed
    length has the upstream execute that second request."""
    smuggled = b"DELETE /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    for n in range(1, 400):
        body = gzip.compress(b"a" * n + smuggled, mtime=0)
        if len(body) == n:
            return body, b"a" * n + smuggled
    raise AssertionError("no self-sized gzip body found")


async def test_compressed_request_body_is_forwarded_as_sent_and_smuggles_nothing() -> None:
    body, inflated = _smuggling_gzip()
    seen: list[tuple[str, str, bytes]] = []

    async def primary(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, await request.read()))
        return web.Response(text="ok")

    sink = Sink()
    async with (
        serve_app(handler_app(primary), auto_decompress=False) as p,
        serve_app(handler_app(echo), auto_decompress=False) as c,
        proxy_for(
            make_cfg(p, c, mirror={"methods": ["POST"], "allow_side_effects": True}), sink
        ) as proxy,
    ):
        raw = await raw_request(
            proxy,
            b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body),
        )
        (rec,) = await sink.wait()
        assert raw.startswith(b"HTTP/1.1 200 OK")
        assert raw.count(b"HTTP/1.1 ") == 1
        # One request reached the primary, with the compressed bytes; none was smuggled.
        await asyncio.sleep(0.05)
        assert seen == [("POST", "/upload", body)]
    # The canary got the same bytes (echo decodes them as latin-1).
    assert rec.canary is not None and rec.canary.body is not None
    assert orjson.loads(rec.canary.body)["body"].encode("latin-1") == body
    assert rec.request_body == inflated  # the record stores the decoded copy


async def test_gzip_bomb_is_forwarded_compressed_and_mirror_bound_applies_to_sent_bytes() -> None:
    bomb = gzip.compress(b"\0" * 20_000_000, mtime=0)  # ~20 KB that inflate to 20 MB
    sizes: list[int] = []

    async def upstream(request: web.Request) -> web.Response:
        sizes.append(len(await request.read()))
        return web.Response(text="ok")

    sink = Sink()
    limit = len(bomb) + 10  # the compressed body fits the mirror bound, the inflated not
    async with (
        serve_app(handler_app(upstream), auto_decompress=False) as p,
        serve_app(handler_app(upstream), auto_decompress=False) as c,
    ):
        cfg = make_cfg(
            p,
            c,
            mirror={"methods": ["POST"], "allow_side_effects": True, "max_body_bytes": limit},
            record={"max_body_bytes": 1024},
        )
        async with proxy_for(cfg, sink) as proxy:
            raw = await raw_request(
                proxy,
                b"POST /bomb HTTP/1.1\r\nHost: h\r\nContent-Encoding: gzip\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(bomb), bomb),
            )
            (rec,) = await sink.wait()
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert sizes == [len(bomb), len(bomb)]  # primary and canary: the compressed bytes
    assert rec.mirror_skipped is None
    assert rec.request_body == b"\0" * 1024 and rec.request_body_truncated


# --- issue 9: answers as the upstream sent them, nothing leaked or invented --------------


@asynccontextmanager
async def scripted_upstream(
    answers: list[bytes], seen: list[bytes] | None = None
) -> AsyncIterator[str]:
    """A raw HTTP/1.1 server that answers the n-th request it reads (on any connection)
    with ``answers[n]``, byte for byte; the request heads it read go to ``seen``."""
    count = 0

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        try:
            while count < len(answers):
                head = await reader.readuntil(b"\r\n\r\n")
                if seen is not None:
                    seen.append(head)
                answer = answers[count]
                count += 1
                writer.write(answer)
                await writer.drain()
            await reader.read()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def head_fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    head = raw.partition(b"\r\n\r\n")[0]
    return [
        (k.strip().lower(), v.strip())
        for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    ]


_TRAILED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
    b"5\r\nalice\r\n0\r\nX-Checksum: secret-of-alice\r\n\r\n"
)
_PLAIN = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbob"


async def test_trailers_go_to_who_asked_and_never_to_the_next_answer() -> None:
    sink = Sink()
    async with (
        scripted_upstream([_TRAILED, _PLAIN, _TRAILED, _PLAIN]) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c, mirror={"enabled": False}), sink) as proxy,
    ):
        got = []
        for te in (b"TE: trailers\r\n", b"TE: trailers\r\n", b"", b""):
            got.append(
                await raw_request(
                    proxy, b"GET /t HTTP/1.1\r\nHost: h\r\n%bConnection: close\r\n\r\n" % te
                )
            )
        records = await sink.wait(4)
    alice, bob, alice_no_te, bob2 = got
    assert alice.endswith(b"\r\n5\r\nalice\r\n0\r\nX-Checksum: secret-of-alice\r\n\r\n")
    assert alice_no_te.endswith(b"\r\n5\r\nalice\r\n0\r\n\r\n")  # dropped: not asked for
    for raw in (bob, bob2):
        assert b"secret" not in raw and raw.endswith(b"\r\n\r\nbob")
    for rec in records:
        assert rec.primary is not None and rec.primary.headers is not None
        assert "x-checksum" not in rec.primary.headers


async def test_extra_bytes_after_an_answer_are_not_served() -> None:
    injected = b"HTTP/1.1 200 OK\r\nX-Injected: 1\r\nContent-Length: 4\r\n\r\nEVIL"
    sink = Sink()
    async with (
        scripted_upstream([_PLAIN + injected, _PLAIN]) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c, mirror={"enabled": False}), sink) as proxy,
    ):
        first = await raw_request(proxy, b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        second = await raw_request(
            proxy, b"GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
    for raw in (first, second):
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\nbob")
        assert b"EVIL" not in raw and b"X-Injected" not in raw


async def test_non_utf8_header_bytes_travel_exactly_and_are_recorded() -> None:
    seen: list[bytes] = []
    answer = b"HTTP/1.1 200 OK\r\nX-Latin: caf\xe9\r\nContent-Length: 2\r\n\r\nok"
    sink = Sink()
    async with (
        scripted_upstream([answer], seen) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c, mirror={"enabled": False}), sink) as proxy,
    ):
        raw = await raw_request(
            proxy,
            b"GET /l HTTP/1.1\r\nHost: h\r\nX-Latin: na\xefve\r\nConnection: close\r\n\r\n",
        )
        (rec,) = await sink.wait()
    assert (b"x-latin", b"caf\xe9") in head_fields(raw)
    assert b"\r\nX-Latin: na\xefve\r\n" in seen[0]
    assert rec.request_headers is not None and rec.request_headers["x-latin"] == "na\\xefve"
    assert rec.primary is not None and rec.primary.headers is not None
    assert rec.primary.headers["x-latin"] == "caf\\xe9"


async def test_nothing_is_added_to_an_answer_but_the_trace_id() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 10\r\n\r\n',
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ]
    sink = Sink()
    async with (
        scripted_upstream(answers) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c, mirror={"enabled": False}), sink) as proxy,
    ):
        got = [
            await raw_request(
                proxy, b"GET /%d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % i
            )
            for i in range(3)
        ]
    plain, not_modified, hinted = got
    assert [k for k, _ in head_fields(plain)] == [b"content-length", b"x-trace-id", b"connection"]
    assert plain.endswith(b"\r\n\r\nok")
    assert head_fields(not_modified)[:2] == [(b"etag", b'"x"'), (b"content-length", b"10")]
    assert not_modified.endswith(b"\r\n\r\n")  # no body
    assert hinted.startswith(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"
    )


async def test_host_is_the_clients_and_location_comes_back_through_the_proxy() -> None:
    async def primary(request: web.Request) -> web.Response:
        base = f"http://{request.transport.get_extra_info('sockname')[0]}"  # type: ignore[union-attr]
        port = request.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        resp = await echo(request)
        resp.headers["Location"] = f"{base}:{port}/next?a=1"
        resp.headers["Content-Location"] = "http://elsewhere.example/x"
        return resp

    sink = Sink()
    async with serve_app(handler_app(primary)) as p, serve_app(handler_app(echo)) as c:
        for host_header, expected in (
            ({}, "shop.example:8443"),
            ({"primary": "upstream"}, URL(p).raw_authority),
            ({"primary": "api.internal"}, "api.internal"),
        ):
            cfg = make_cfg(p, c, upstreams={"primary": p, "canary": c, "host_header": host_header})
            async with proxy_for(cfg, sink) as proxy:
                raw = await raw_request(
                    proxy,
                    b"GET /r HTTP/1.1\r\nHost: shop.example:8443\r\nConnection: close\r\n\r\n",
                )
            fields = dict(head_fields(raw))
            assert fields[b"location"] == b"http://shop.example:8443/next?a=1"
            assert fields[b"content-location"] == b"http://elsewhere.example/x"
            seen = header_map(orjson.loads(raw.partition(b"\r\n\r\n")[2])["headers"])
            assert seen["host"] == [expected]


# --- issue 9: listen limits no stricter than Envoy's, answered 414 / 431 -----------------


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


async def test_listen_limits_at_the_bound_and_one_past() -> None:
    limits = {
        "max_line_bytes": 1000,
        "max_field_bytes": 600,
        "max_header_bytes": 1500,
        "max_headers": 10,
    }
    sink = Sink()

    def request(target: bytes, fields: list[bytes]) -> bytes:
        # "Host: h" is one field of 5 name+value bytes.
        return b"GET %b HTTP/1.1\r\nHost: h\r\n%bConnection: close\r\n\r\n" % (
            target,
            b"".join(f + b"\r\n" for f in fields),
        )

    def field(name: bytes, size: int) -> bytes:  # a value of ``size`` bytes
        return name + b": " + b"v" * size

    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c, listen_limits=limits, mirror={"enabled": False}), sink) as proxy,
    ):
        cases = [
            (b"/" + b"a" * 999, [], 200),  # the target at its bound
            (b"/" + b"a" * 1000, [], 414),  # one past
            (b"/", [field(b"X-A", 600)], 200),  # a field's value at its bound
            (b"/", [field(b"X-A", 601)], 431),
            # 8 fields + Host + Connection = 10 fields: at the bound; 11 one past.
            (b"/", [field(b"X-%d" % i, 10) for i in range(8)], 200),
            (b"/", [field(b"X-%d" % i, 10) for i in range(9)], 431),
            # names + values: Host (5) + Connection (15) + 3 fields = 1500 at the bound
            (b"/", [field(b"X-A", 500), field(b"X-B", 500), field(b"X-C", 471)], 200),
            (b"/", [field(b"X-A", 500), field(b"X-B", 500), field(b"X-C", 472)], 431),
        ]
        for target, fields, expected in cases:
            raw = await raw_request(proxy, request(target, fields))
            assert _status(raw) == expected, (len(target), [len(f) for f in fields])


def test_listen_limit_defaults_are_no_stricter_than_envoys() -> None:
    cfg = make_cfg("http://127.0.0.1:1", "http://127.0.0.1:2")
    limits = cfg.listen_limits
    assert limits.max_header_bytes >= 60 * 1024
    assert limits.max_field_bytes == limits.max_header_bytes  # a field up to the total
    assert limits.max_headers >= 100
    assert limits.max_line_bytes >= 60 * 1024
    with pytest.raises(ConfigError, match="max_field_bytes"):
        make_cfg(
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            listen_limits={"max_field_bytes": 2000, "max_header_bytes": 1000},
        )


@pytest.mark.parametrize(
    "target",
    [
        b"/../internal/secret",
        b"/%2e%2e/internal/secret",
        b"/%2E%2E/internal/secret",
        b"/..%2finternal/secret",
        b"/a/../../internal/secret",
        b"/a/%252e%252e/../internal",
        b"/..;/internal",
        b"/..\\internal",
    ],
)
async def test_a_path_never_leaves_the_upstreams_base_path(target: bytes) -> None:
    seen: list[bytes] = []
    sink = Sink()
    async with (
        scripted_upstream([_PLAIN], seen) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p + "/api", c, mirror={"enabled": False}), sink) as proxy,
    ):
        raw = await raw_request(
            proxy, b"GET %b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % target
        )
    assert _status(raw) == 400
    assert seen == []


async def test_dot_segments_inside_the_base_path_and_options_asterisk_are_forwarded() -> None:
    seen: list[bytes] = []
    sink = Sink()
    async with (
        scripted_upstream([_PLAIN, _PLAIN], seen) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p + "/api", c, mirror={"enabled": False}), sink) as proxy,
    ):
        for target, method in ((b"/a/../b", b"GET"), (b"*", b"OPTIONS")):
            raw = await raw_request(
                proxy, b"%b %b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % (method, target)
            )
            assert _status(raw) == 200 and raw.endswith(b"bob")
    assert [head.partition(b"\r\n")[0] for head in seen] == [
        b"GET /api/a/../b HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
    ]


# --- issue 9: upgrades are tunnelled both ways when the client asked --------------------


async def test_websocket_is_tunnelled_and_its_handshake_recorded(client: ClientSession) -> None:
    async def ws_echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    sink = Sink()
    async with (
        serve_app(handler_app(ws_echo)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c), sink) as proxy,
    ):
        async with client.ws_connect(proxy + "/ws") as ws:
            trace_id = ws._response.headers["X-Trace-ID"]
            for i in range(3):
                await ws.send_str(f"hello {i}")
                assert await ws.receive_str() == f"echo:hello {i}"
            big = bytes(range(256)) * 4096  # 1 MiB, both ways
            await ws.send_bytes(big)
            assert await ws.receive_bytes() == big[::-1]
        (rec,) = await sink.wait()
    assert rec.trace_id == trace_id
    assert rec.primary is not None and rec.primary.status == 101
    assert rec.mirror_skipped == "upgrade_not_mirrored"
    assert rec.canary is None


async def test_a_switch_the_client_did_not_ask_for_is_not_relayed() -> None:
    answer = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n"
    sink = Sink()
    async with (
        scripted_upstream([answer]) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c, mirror={"enabled": False}), sink) as proxy,
    ):
        raw = await raw_request(proxy, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        (rec,) = await sink.wait()
    assert _status(raw) == 502
    assert rec.primary is not None and rec.primary.status == 101 and rec.primary.error == "error"


async def test_raw_upgrade_tunnel_carries_early_bytes_both_ways() -> None:
    """A hand-rolled upgrade: the upstream sends protocol bytes in the 101's segment, the
    client sends its own right after the request head (byte level: no frames needed)."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"\r\nUpgrade: websocket\r\n" in head and b"\r\nConnection: Upgrade\r\n" in head
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\nserver-hello;"
        )
        line = await reader.readuntil(b";")
        writer.write(b"got " + line)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    p = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    sink = Sink()
    try:
        async with (
            serve_app(handler_app(echo)) as c,
            proxy_for(make_cfg(p, c), sink) as proxy,
        ):
            raw = await raw_request(
                proxy,
                b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\n\r\nclient-hello;",
            )
            await sink.wait()
    finally:
        server.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert (b"upgrade", b"websocket") in head_fields(raw)
    assert rest == b"server-hello;got client-hello;"


# --- issue 9: each exchange records what happened ---------------------------------------


async def test_truncated_compressed_answer_fills_the_record_bound() -> None:
    """A brotli answer bigger than the record bound: the record holds the bound's worth of
    decoded bytes (not what a cut compressed stream decodes to), marked truncated."""
    import os

    text = os.urandom(200_000).hex().encode()  # 400 KB that compress about 2:1
    for coding, encode in (("br", brotli.compress), ("gzip", gzip.compress)):
        payload = encode(text)

        async def primary(
            request: web.Request, payload: bytes = payload, coding: str = coding
        ) -> web.Response:
            return web.Response(body=payload, headers={"Content-Encoding": coding})

        sink = Sink()
        limit = 100_000
        async with (
            serve_app(handler_app(primary)) as p,
            serve_app(handler_app(primary)) as c,
            proxy_for(make_cfg(p, c, record={"max_body_bytes": limit}), sink) as proxy,
        ):
            raw = await raw_request(
                proxy, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            )
            assert raw.endswith(payload)  # the client gets every byte
            (rec,) = await sink.wait()
        for side in (rec.primary, rec.canary):
            assert side is not None and side.body == text[:limit], coding
            assert side.body_truncated


async def test_canary_reset_mid_body_is_recorded_truncated() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly part of it")
        await writer.drain()
        writer.transport.abort()  # reset mid-body

    server = await asyncio.start_server(cut, "127.0.0.1", 0)
    c = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    sink = Sink()
    try:
        async with (
            serve_app(handler_app(echo)) as p,
            proxy_for(make_cfg(p, c), sink) as proxy,
        ):
            raw = await raw_request(
                proxy, b"GET /r HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            )
            assert _status(raw) == 200
            (rec,) = await sink.wait()
    finally:
        server.close()
    assert rec.canary is not None and rec.canary.status == 200
    assert rec.canary.error == "reset" and rec.canary.body_truncated
    assert rec.canary.body == b"only part of it"


async def test_client_breaking_off_its_upload_leaves_a_record() -> None:
    hits: list[str] = []
    sink = Sink()
    async with proxy_between(sink, primary=counting_echo(hits)) as proxy:
        await send_and_hang_up(
            proxy, b"POST /cut HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\nabc"
        )
        (rec,) = await sink.wait()
    assert hits == []
    assert rec.path == "/cut" and rec.mirror_skipped == "client_aborted"
    assert rec.primary is not None and rec.primary.error == "reset"
    assert rec.extra.get("client_disconnected") == "true"
    assert rec.request_body == b"abc" or rec.request_body_truncated
