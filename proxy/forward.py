"""Forwarding (request path step 4): one request to one upstream, its answer to the client.

- One ``aiohttp.ClientSession`` (keep-alive pool of ``upstreams.max_connections``) per
  upstream, owned by the app (``upstreams_ctx``), closed on cleanup. Sessions never
  decompress (the client gets the upstream's exact bytes), never follow redirects, never
  keep cookies (``DummyCookieJar``: one user's cookies must not reach another), and add no
  header the client did not send (no default ``Accept``, ``Accept-Encoding``,
  ``User-Agent``, ``Content-Type``).
- The upstream URL is built from the configured base and the request's path and raw query
  only (``URL.build`` with the base's authority): an absolute-form request target gives
  its path only, ``//host`` and ``..`` stay a path on the configured upstream.
- Hop-by-hop headers (RFC 9110 7.6.1, and every header the ``Connection`` header names)
  are dropped both ways; ``X-Forwarded-For`` is appended to, ``X-Forwarded-Proto`` and
  ``X-Forwarded-Host`` set; ``Host`` is the upstream's.
- The answer is streamed to the client chunk by chunk, with a bounded copy kept for the
  record (:class:`Capture`). A failure before the answer's head gives the client a 502
  (refused, reset, DNS) or 504 (timeout) with a JSON body; after it, the client connection
  is closed so that a cut body is never taken for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import Final

import orjson
from aiohttp import (
    ClientConnectorCertificateError,
    ClientConnectorError,
    ClientError,
    ClientOSError,
    ClientPayloadError,
    ClientRequest,
    ClientSession,
    ClientTimeout,
    DummyCookieJar,
    ServerDisconnectedError,
    TCPConnector,
    web,
)
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from config.schema import MirrorConfig, UpstreamsConfig
from proxy.tagging import TRACEPARENT, X_TRACE_ID, Tags

__all__ = [
    "HOP_BY_HOP",
    "UPSTREAMS_KEY",
    "X_GRAY_SHADOW",
    "Capture",
    "RequestBody",
    "Upstream",
    "client_headers",
    "error_kind",
    "error_response",
    "fetch",
    "forward",
    "request_drop",
    "split_target",
    "upstream_headers",
    "upstreams_ctx",
]

logger = logging.getLogger(__name__)

X_GRAY_SHADOW: Final = "X-Gray-Shadow"

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Request headers the proxy drops or sets itself. An incoming X-Gray-Shadow is dropped: a
# client must not be able to have the primary treat its real request as shadow traffic.
_REQUEST_DROP: Final = HOP_BY_HOP | {
    "host",
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "traceparent",
    "x-trace-id",
    "x-gray-shadow",
}
_RESPONSE_DROP: Final = HOP_BY_HOP | {"x-trace-id"}
_SKIP_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_SKIP_AUTO_HEADERS_CI: Final[CIMultiDict[None]] = CIMultiDict(
    (name, None) for name in _SKIP_AUTO_HEADERS
)

_perf = time.perf_counter


def _connection_named(value: str | None, base: frozenset[str]) -> frozenset[str]:
    if not value:
        return base
    return base | {token.strip().lower() for token in value.split(",")}


def split_target(request: web.BaseRequest) -> tuple[str, str]:
    """The request's raw path and raw query string, exactly as the client sent them.

    An absolute-form target (``GET http://host/x``) gives its path and query only: the
    authority never picks the upstream.
    """
    raw = request.raw_path
    if raw.startswith("/"):
        if "#" in raw:
            raw = raw.partition("#")[0]
        path, _, query = raw.partition("?")
        return path, query
    url = request.rel_url
    return url.raw_path or "/", url.raw_query_string


def request_drop(gray_header: str) -> frozenset[str]:
    """The request headers :func:`upstream_headers` drops (it sets the gray header itself)."""
    return _REQUEST_DROP | {gray_header.lower()}


def upstream_headers(
    request: web.BaseRequest,
    tags: Tags,
    gray_header: str,
    label: str,
    drop: frozenset[str] = _REQUEST_DROP,
) -> list[tuple[str, str]]:
    """The headers sent upstream: the client's minus hop-by-hop (and ``drop``), plus the
    proxy's own: the gray label, ``X-Forwarded-*``, ``X-Trace-ID``, ``traceparent``.

    ``Host`` is left out: the client library sets it from each upstream's URL.
    """
    headers = request.headers
    drop = _connection_named(headers.get("Connection"), drop)
    out = [(k, v) for k, v in headers.items() if k.lower() not in drop]
    out.append((gray_header, label))
    xff = headers.getall("X-Forwarded-For", None)
    remote = request.remote or "unknown"
    out.append(("X-Forwarded-For", f"{', '.join(xff)}, {remote}" if xff else remote))
    out.append(("X-Forwarded-Proto", request.scheme))
    host = headers.get("Host")
    if host is not None:
        out.append(("X-Forwarded-Host", host))
    out.append((X_TRACE_ID, tags.trace_id))
    out.append((TRACEPARENT, tags.traceparent))
    return out


def client_headers(upstream: Mapping[str, str], trace_id: str) -> list[tuple[str, str]]:
    """The upstream's response headers for the client, in order: hop-by-hop dropped,
    X-Trace-ID set."""
    drop = _connection_named(upstream.get("Connection"), _RESPONSE_DROP)
    out = [(k, v) for k, v in upstream.items() if k.lower() not in drop]
    out.append((X_TRACE_ID, trace_id))
    return out


def error_kind(exc: BaseException) -> str:
    """What an upstream failure is recorded as: timeout | refused | reset | error."""
    if isinstance(exc, TimeoutError):  # asyncio's, and aiohttp's ServerTimeoutError family
        return "timeout"
    if isinstance(exc, ClientConnectorCertificateError):
        return "error"
    if isinstance(exc, ClientConnectorError):  # refused, unreachable, DNS
        return "refused"
    if isinstance(
        exc, (ServerDisconnectedError, ClientPayloadError, ClientOSError, ConnectionError)
    ):
        return "reset"
    return "error"


_ERROR_STATUS: Final = {"timeout": 504}


def error_response(kind: str, role: str, trace_id: str) -> web.Response:
    """The client's answer when the serving upstream failed: 504 on timeout, else 502."""
    return web.Response(
        status=_ERROR_STATUS.get(kind, 502),
        body=orjson.dumps({"error": kind, "upstream": role, "trace_id": trace_id}),
        content_type="application/json",
        headers={X_TRACE_ID: trace_id},
    )


class Capture:
    """What one upstream answered, as it came (headers as sent, body still encoded),
    with a copy of the body bounded at ``limit`` bytes."""

    __slots__ = (
        "chunks",
        "client_gone",
        "error",
        "headers",
        "latency",
        "limit",
        "size",
        "status",
        "truncated",
    )

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status: int | None = None
        self.headers: CIMultiDictProxy[str] | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.latency: float | None = None  # seconds
        self.error: str | None = None
        self.client_gone = False

    def add(self, chunk: bytes) -> None:
        room = self.limit - self.size
        if len(chunk) > room:
            self.truncated = True
            if room <= 0:
                return
            chunk = chunk[:room]
        self.chunks.append(chunk)
        self.size += len(chunk)

    @property
    def body(self) -> bytes:
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)


class Upstream:
    """One configured upstream: its role, where it is, its session and timeouts."""

    __slots__ = (
        "_authority",
        "_prefix",
        "_scheme",
        "base",
        "mirror_timeout",
        "role",
        "serve_timeout",
        "session",
    )

    def __init__(
        self,
        role: str,
        base: str,
        session: ClientSession,
        serve_timeout: ClientTimeout,
        mirror_timeout: ClientTimeout,
    ) -> None:
        url = URL(base)
        self.role = role
        self.base = base
        self.session = session
        self.serve_timeout = serve_timeout
        self.mirror_timeout = mirror_timeout
        self._scheme = url.scheme
        self._authority = url.raw_authority
        self._prefix = url.raw_path.rstrip("/")

    def url(self, path: str, query: str) -> URL:
        """The upstream URL of a request: this upstream's base, the request's path + query."""
        return URL.build(
            scheme=self._scheme,
            authority=self._authority,
            path=self._prefix + path if self._prefix else path,
            query_string=query,
            encoded=True,
        )

    def __repr__(self) -> str:
        return f"Upstream({self.role!r}, {self.base!r})"


UPSTREAMS_KEY: web.AppKey[dict[str, Upstream]] = web.AppKey(
    "graygate.proxy.upstreams", dict
)


class _UpstreamRequest(ClientRequest):
    """A request that adds no header of its own (Host aside).

    The session skips every auto header there is (``_SKIP_AUTO_HEADERS``); aiohttp's own
    ``update_auto_headers`` would still copy the headers and build the skip list on every
    request to find that out. This records the (shared, never mutated) skip list, which is
    what keeps a default ``Content-Type`` out, and adds nothing.
    ``test_no_default_headers_added`` guards the behaviour.
    """

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _SKIP_AUTO_HEADERS_CI


def _session(cfg: UpstreamsConfig) -> ClientSession:
    connector = TCPConnector(
        limit=cfg.max_connections,
        limit_per_host=0,
        ttl_dns_cache=60,
        keepalive_timeout=30.0,
    )
    return ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=DummyCookieJar(),
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        request_class=_UpstreamRequest,
        trust_env=False,
        raise_for_status=False,
        max_line_size=65536,
        max_field_size=65536,
    )


def upstreams_ctx(
    cfg: UpstreamsConfig, mirror: MirrorConfig
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context: a session per configured upstream under ``UPSTREAMS_KEY``."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        timeout_s = cfg.timeout_ms / 1000
        connect_s = cfg.connect_timeout_ms / 1000
        mirror_s = mirror.timeout_ms / 1000
        # Serving: the pool wait + connect is bounded by the timeout, the connect itself by
        # connect_timeout_ms, and every wait for the upstream's bytes (the head included) by
        # timeout_ms: a long streamed answer is fine as long as it keeps coming.
        serve_timeout = ClientTimeout(
            total=None, connect=timeout_s, sock_connect=connect_s, sock_read=timeout_s
        )
        # Mirroring: the whole exchange, body included, within mirror.timeout_ms.
        mirror_timeout = ClientTimeout(total=mirror_s, sock_connect=min(connect_s, mirror_s))
        bases = {"primary": cfg.primary, "canary": cfg.canary}
        if cfg.secondary is not None:
            bases["secondary"] = cfg.secondary
        upstreams: dict[str, Upstream] = {}
        try:
            for role, base in bases.items():
                upstreams[role] = Upstream(
                    role, base, _session(cfg), serve_timeout, mirror_timeout
                )
            app[UPSTREAMS_KEY] = upstreams
            yield
        finally:
            for up in upstreams.values():
                await up.session.close()

    return ctx


RequestBody = bytes | AsyncIterable[bytes] | None


class _CoalescedResponse(web.StreamResponse):
    """A StreamResponse whose head waits for the first body write (one write, not two)."""

    _send_headers_immediately = False


async def forward(
    request: web.BaseRequest,
    upstream: Upstream,
    url: URL,
    headers: Iterable[tuple[str, str]],
    body: RequestBody,
    trace_id: str,
    capture: Capture,
) -> web.StreamResponse:
    """Send the request to ``upstream`` and stream its answer to the client.

    Fills ``capture`` (status, headers, bounded body, latency, error) as it goes. Never
    raises for an upstream failure or a client that went away: the first gives a 502/504
    response, the second a response that aiohttp discards quietly.
    """
    start = _perf()
    try:
        resp = await upstream.session.request(
            request.method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=upstream.serve_timeout,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        capture.latency = _perf() - start
        capture.error = kind = error_kind(exc)
        logger.debug("%s %s failed: %s: %r", upstream.role, request.method, kind, exc)
        return error_response(kind, upstream.role, trace_id)
    try:
        capture.status = resp.status
        capture.headers = up_headers = resp.headers
        content = resp.content
        # What of the body is here already goes out with the head, in one write; when
        # nothing is, the head goes out at once (a slow stream still shows its head).
        try:
            first = content.read_nowait()
        except (ClientError, OSError) as exc:  # broken before the head went out: 502
            capture.latency = _perf() - start
            capture.error = kind = error_kind(exc)
            capture.truncated = True
            return error_response(kind, upstream.role, trace_id)
        cls = _CoalescedResponse if first or content.is_eof() else web.StreamResponse
        out = cls(
            status=resp.status, reason=resp.reason, headers=client_headers(up_headers, trace_id)
        )
        try:
            await out.prepare(request)
            if first:
                capture.add(first)
                await out.write(first)
        except ConnectionError:
            capture.client_gone = True
            capture.truncated = bool(first)
            resp.close()
            return out
        while True:
            try:
                chunk = await content.readany()
            except (ClientError, TimeoutError, OSError) as exc:
                # The head was sent: no 502 now. Close the client's connection, so that the
                # body it got cannot pass for a whole one.
                capture.latency = _perf() - start
                capture.error = error_kind(exc)
                capture.truncated = True
                transport = request.transport
                if transport is not None:
                    transport.close()
                return out
            if not chunk:
                break
            capture.add(chunk)
            try:
                await out.write(chunk)
            except ConnectionError:
                capture.client_gone = True
                capture.truncated = True
                capture.latency = _perf() - start
                resp.close()
                return out
        capture.latency = _perf() - start
        try:
            await out.write_eof()
        except ConnectionError:
            capture.client_gone = True
        return out
    finally:
        resp.release()


async def fetch(
    upstream: Upstream,
    method: str,
    url: URL,
    headers: Iterable[tuple[str, str]],
    body: bytes | None,
    capture: Capture,
) -> Capture:
    """Send a mirror to ``upstream`` and read its whole answer (a bounded copy kept) within
    the mirror timeout. Never raises for an upstream failure: ``capture.error`` says it."""
    start = _perf()
    try:
        async with upstream.session.request(
            method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=upstream.mirror_timeout,
        ) as resp:
            capture.status = resp.status
            capture.headers = resp.headers
            content = resp.content
            while chunk := await content.readany():
                capture.add(chunk)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        capture.error = error_kind(exc)
    capture.latency = _perf() - start
    return capture
