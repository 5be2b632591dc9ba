"""Conformance: the same raw request sent to a real server directly and through graygate
must give the same answer byte for byte (after hop-by-hop fields, Date and X-Trace-ID),
and the record must hold what the upstreams answered (issue 9).

Servers: httpbin under gunicorn (PyPI), and a Go net/http server (``goserver/``) for
trailers, 103 Early Hints, redirects built from Host, header bytes outside UTF-8, and an
echo of what it received.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson
import pytest

from config.schema import GraygateConfig
from graygate.values import RecordedExchange
from tests.proxy.harness import Sink, make_cfg, proxy_for, raw_request

# Fields that belong to one hop or one moment, not to the answer.
_HOP: frozenset[bytes] = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"trailer", b"date", b"x-trace-id"}
)


@dataclass
class Answer:
    interim: list[bytes] = field(default_factory=list)  # raw 1xx heads
    status_line: bytes = b""
    fields: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.fields if k.lower() == name), None)

    def comparable(self) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
        kept = [(k, v) for k, v in self.fields if k.lower() not in _HOP]
        return self.status_line, kept, self.body


def _fields(block: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name, value.strip()))
    return out


def parse(raw: bytes, method: bytes) -> Answer:
    """One answer (after its 1xx heads) read to the end of the connection."""
    answer = Answer()
    rest = raw
    while True:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"no complete head in {raw[:200]!r}"
        status_line, _, block = head.partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        if 100 <= status < 200 and status != 101:
            answer.interim.append(head + b"\r\n\r\n")
            continue
        break
    answer.status_line = status_line
    answer.fields = _fields(block)
    if method == b"HEAD" or status in (204, 304):
        assert rest == b"", rest[:100]
        return answer
    te = answer.header(b"transfer-encoding")
    if te is not None and te.lower() == b"chunked":
        body = bytearray()
        for _ in range(100_000):
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                trailer_block, _, rest = (
                    rest.partition(b"\r\n\r\n")
                    if not rest.startswith(b"\r\n")
                    else (b"", b"", rest[2:])
                )
                answer.trailers = _fields(trailer_block)
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        answer.body = bytes(body)
        assert rest == b"", rest[:100]
        return answer
    length = answer.header(b"content-length")
    if length is not None:
        assert len(rest) == int(length), (len(rest), length)
    answer.body = rest
    return answer


def request_bytes(method: bytes, target: bytes, host: bytes, extra: bytes = b"") -> bytes:
    return b"%b %b HTTP/1.1\r\nHost: %b\r\n%bConnection: close\r\n\r\n" % (
        method,
        target,
        host,
        extra,
    )


@asynccontextmanager
async def through(cfg: GraygateConfig) -> AsyncIterator[tuple[str, Sink]]:
    sink = Sink()
    async with proxy_for(cfg, sink) as proxy:
        yield proxy, sink


async def record_of(sink: Sink, trace_id: bytes | None) -> RecordedExchange:
    assert trace_id is not None
    async with asyncio.timeout(10):
        while True:
            for rec in sink.records:
                if rec.trace_id == trace_id.decode():
                    return rec
            await asyncio.sleep(0.01)


# --- httpbin under gunicorn ----------------------------------------------------------------

HTTPBIN_CASES: list[tuple[bytes, bytes, bytes]] = [
    (b"GET", b"/bytes/4096?seed=7", b""),
    (b"HEAD", b"/bytes/100?seed=1", b""),
    (b"GET", b"/status/418", b""),
    (b"GET", b"/status/204", b""),
    (b"GET", b"/response-headers?X-A=1&X-A=2&Content-Type=text/x-odd", b""),
    (b"GET", b"/absolute-redirect/2", b""),
    (b"GET", b"/redirect-to?url=%2Fget&status_code=307", b""),
    (b"GET", b"/range/2048", b"Range: bytes=10-99\r\n"),
    (b"GET", b"/stream-bytes/3000?seed=2&chunk_size=128", b""),
    (b"GET", b"/etag/abc", b'If-None-Match: "abc"\r\n'),
    (b"GET", b"/cache", b"If-Modified-Since: Sat, 29 Oct 1994 19:43:31 GMT\r\n"),
    (b"GET", b"/html", b""),
    (b"GET", b"/robots.txt", b""),
    (b"GET", b"/image/png", b""),
    (b"GET", b"/encoding/utf8", b""),
    (b"GET", b"/base64/SGVsbG8sIGdyYXlnYXRl", b""),
    (b"GET", b"/cookies/set?a=1&b=2", b""),
    (b"OPTIONS", b"/get", b"Origin: http://shop.example\r\n"),
    (b"GET", b"/" + b"x" * 9000, b""),  # a 9 KB target (404, but answered by httpbin)
    (b"GET", b"/status/200", b"Cookie: c=" + b"v" * 10_000 + b"\r\n"),  # a 10 KB cookie
]


@pytest.mark.parametrize(
    ("method", "target", "extra"), HTTPBIN_CASES, ids=[c[1][:40].decode() for c in HTTPBIN_CASES]
)
async def test_httpbin_direct_and_proxied_answers_are_the_same(
    httpbin_url: str, method: bytes, target: bytes, extra: bytes
) -> None:
    cfg = make_cfg(httpbin_url, httpbin_url)
    host = b"shop.example:8080"
    req = request_bytes(method, target, host, extra)
    direct = parse(await raw_request(httpbin_url, req), method)
    async with through(cfg) as (proxy, sink):
        proxied = parse(await raw_request(proxy, req), method)
        rec = await record_of(sink, proxied.header(b"x-trace-id"))
    assert proxied.comparable() == direct.comparable()
    status = int(direct.status_line.split(b" ")[1])
    assert rec.primary is not None and rec.primary.status == status
    if method in (b"GET", b"HEAD"):  # mirrored by default: the canary got the same request
        assert rec.canary is not None and rec.canary.status == status


async def test_httpbin_gzip_request_body_reaches_both_as_sent(httpbin_url: str) -> None:
    body = gzip.compress(b'{"a": 1}' * 1000, mtime=0)
    cfg = make_cfg(
        httpbin_url, httpbin_url, mirror={"methods": ["POST"], "allow_side_effects": True}
    )
    req = (
        b"POST /anything HTTP/1.1\r\nHost: h\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b"
        % (len(body), body)
    )
    async with through(cfg) as (proxy, sink):
        proxied = parse(await raw_request(proxy, req), b"POST")
        rec = await record_of(sink, proxied.header(b"x-trace-id"))
    for side in (rec.primary, rec.canary):
        assert side is not None and side.body is not None
        seen = orjson.loads(side.body)
        assert seen["headers"]["Content-Length"] == str(len(body))
        assert seen["headers"]["Content-Encoding"] == "gzip"


# --- a Go net/http server ----------------------------------------------------------------


async def test_go_trailers_never_reach_the_next_answer(go_url: str) -> None:
    cfg = make_cfg(go_url, go_url, mirror={"enabled": False})
    te = b"TE: trailers\r\n"
    async with through(cfg) as (proxy, sink):
        answers = []
        for who, extra in ((b"alice", te), (b"", te), (b"carol", b""), (b"", b"")):
            target = b"/trailers?who=" + who if who else b"/plain"
            answers.append(
                parse(await raw_request(proxy, request_bytes(b"GET", target, b"h", extra)), b"GET")
            )
        records = await sink.wait(4)
    alice, plain1, carol, plain2 = answers
    direct = parse(
        await raw_request(go_url, request_bytes(b"GET", b"/trailers?who=alice", b"h", te)), b"GET"
    )
    assert alice.comparable() == direct.comparable()
    assert alice.trailers == direct.trailers == [(b"X-Checksum", b"secret-of-alice")]
    assert carol.trailers == []  # the client did not send TE: trailers
    for plain in (plain1, plain2):
        assert plain.body == b"plain" and plain.trailers == []
        assert all(b"secret" not in v for _, v in plain.fields)
    for rec in records:
        assert rec.primary is not None and rec.primary.headers is not None
        assert "x-checksum" not in rec.primary.headers


@pytest.mark.parametrize("target", [b"/early", b"/redirect", b"/latin", b"/plain"])
async def test_go_direct_and_proxied_answers_are_the_same(go_url: str, target: bytes) -> None:
    cfg = make_cfg(go_url, go_url)
    req = request_bytes(b"GET", target, b"shop.example")
    direct = parse(await raw_request(go_url, req), b"GET")
    async with through(cfg) as (proxy, sink):
        proxied = parse(await raw_request(proxy, req), b"GET")
        rec = await record_of(sink, proxied.header(b"x-trace-id"))
    assert proxied.comparable() == direct.comparable()
    assert proxied.interim == direct.interim  # 103 Early Hints forwarded
    assert rec.primary is not None and rec.canary is not None
    assert rec.primary.status == rec.canary.status == int(direct.status_line.split(b" ")[1])


async def test_go_echo_sees_the_clients_host_and_body_and_so_does_the_canary(go_url: str) -> None:
    body = gzip.compress(b"x" * 100_000, mtime=0)
    cfg = make_cfg(go_url, go_url, mirror={"methods": ["POST"], "allow_side_effects": True})
    req = (
        b"POST /echo HTTP/1.1\r\nHost: shop.example\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body)
    )
    async with through(cfg) as (proxy, sink):
        proxied = parse(await raw_request(proxy, req), b"POST")
        rec = await record_of(sink, proxied.header(b"x-trace-id"))
    sha = hashlib.sha256(body).hexdigest()
    seen = orjson.loads(proxied.body)
    assert (seen["host"], seen["body_len"], seen["body_sha256"]) == ("shop.example", len(body), sha)
    assert seen["headers"]["content-encoding"] == ["gzip"]
    assert rec.canary is not None and rec.canary.body is not None
    canary_seen = orjson.loads(rec.canary.body)
    assert canary_seen["body_sha256"] == sha and canary_seen["headers"]["x-gray-shadow"] == ["1"]
