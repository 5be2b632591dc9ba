"""Forwarding (request path step 4): one request to one upstream, its answer to the client.

- One ``proxy.upstream.Pool`` (keep-alive pool of ``upstreams.max_connections``) per
  upstream, owned by the app (``upstreams_ctx``), closed on cleanup. It never decompresses
  (the client gets the upstream's exact bytes), never follows redirects, keeps no cookies
  (one user's cookies must not reach another), and adds no header the client did not send
  but the proxy's own (``X-Forwarded-*``, trace, gray label).
- ``Host`` is the client's (``upstreams.host_header`` overrides per upstream); a
  ``Location`` naming the serving upstream is rewritten to the proxied address.
- The request target is the configured base's path and the request's raw path and query
  only: an absolute-form request target gives its path only, ``//host`` stays a path on
  the configured upstream, and with a base path a target whose dot-segments would leave
  it is refused (:func:`leaves_root`).
- Hop-by-hop headers (RFC 9110 7.6.1, and every header the ``Connection`` header names)
  are dropped both ways (a websocket upgrade the client asked for aside: tunnelled);
  ``X-Forwarded-For`` is appended to, ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` set.
- The client's answer (:class:`ClientAnswer`) is the upstream's status line and header fields
  as bytes, plus ``X-Trace-ID`` and the hop's framing; 1xx heads go ahead of it; trailers
  only to a client that sent ``TE: trailers``.
- The answer is streamed to the client chunk by chunk, with a bounded copy kept for the
  record (:class:`Capture`). A failure before the answer's head gives the client a 502
  (refused, reset, DNS) or 504 (timeout) with a JSON body; after it, the client connection
  is closed so that a cut body is never taken for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Final
from urllib.parse import unquote

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from config.schema import MirrorConfig, UpstreamsConfig
from graygate.errors import UpstreamError
from graygate.vocabulary import ErrorKind, Role
from proxy.tagging import TRACEPARENT, X_TRACE_ID, Tags
from proxy.trust import is_proxy_header, peer_is_trusted
from proxy.upstream import Pool, UpstreamAnswer

__all__ = [
    "HOP_BY_HOP",
    "UPSTREAMS_KEY",
    "X_GRAY_SHADOW",
    "Capture",
    "ClientAnswer",
    "ClientStalled",
    "RequestBody",
    "Upstream",
    "accepts_trailers",
    "asks_upgrade",
    "client_headers",
    "error_kind",
    "error_response",
    "fetch",
    "forward",
    "leaves_root",
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
    if raw == "*" and request.method == "OPTIONS":
        return "*", ""  # the asterisk form: the server as a whole
    if raw.startswith("/"):
        if "#" in raw:
            raw = raw.partition("#")[0]
        path, _, query = raw.partition("?")
        return path, query
    url = request.rel_url
    return url.raw_path or "/", url.raw_query_string


def leaves_root(path: str) -> bool:
    """Whether ``path``'s dot-segments would take it above the root, as any server along
    the way might read it: percent-decoded (twice: ``%252e``), ``\\`` as ``/``, and
    ``;params`` cut from a segment (``..;/``)."""
    view = path
    for _ in range(3):
        if "%" not in view:
            break
        view = unquote(view, errors="surrogateescape")
    if "." not in view:
        return False
    depth = 0
    for segment in view.replace("\\", "/").split("/"):
        segment = segment.partition(";")[0]
        if segment == "..":
            depth -= 1
            if depth < 0:
                return True
        elif segment not in ("", "."):
            depth += 1
    return False


def request_drop(gray_header: str) -> frozenset[str]:
    """The request headers :func:`upstream_headers` drops (it sets the gray header itself)."""
    return _REQUEST_DROP | {gray_header.lower()}


def upstream_headers(
    request: web.BaseRequest,
    tags: Tags,
    gray_header: str,
    label: str,
    drop: frozenset[str] = _REQUEST_DROP,
    *,
    trusted: Sequence[IPv4Network | IPv6Network] = (),
) -> list[tuple[str, str]]:
    """The headers sent upstream: the client's minus hop-by-hop (and ``drop``), plus the
    proxy's own: the gray label, ``X-Forwarded-*``, ``X-Trace-ID``, ``traceparent``.

    ``Host`` is left out: the pool sets it to its upstream's.

    Client-address and original-URL headers (``Forwarded``, every ``X-Forwarded-*``,
    ``X-Real-IP``, ``X-Client-IP``, ``True-Client-IP``, ``X-Original-URL``,
    ``X-Rewrite-URL``, ...: ``proxy.trust``) are believed only from a peer in ``trusted``
    (the ``trusted_proxies`` config): from it they pass, ``X-Forwarded-For`` is appended to
    and its ``X-Forwarded-Proto``/``-Host`` are kept. From any other peer they are dropped,
    ``X-Forwarded-For`` restarts at the peer's address, and ``X-Forwarded-Proto`` and
    ``X-Forwarded-Host`` are the proxy's own.
    """
    headers = request.headers
    remote = request.remote or "unknown"
    believed = peer_is_trusted(request.remote, trusted)
    drop = _connection_named(headers.get("Connection"), drop)
    if believed:
        out = [(k, v) for k, v in headers.items() if k.lower() not in drop]
    else:
        out = [
            (k, v)
            for k, v in headers.items()
            if (low := k.lower()) not in drop and not is_proxy_header(low)
        ]
    upgrade = asks_upgrade(request)
    if upgrade is not None:  # hop-by-hop, but the client asked for it to reach the origin
        out.append(("Connection", "Upgrade"))
        out.append(("Upgrade", upgrade))
    out.append((gray_header, label))
    xff = headers.getall("X-Forwarded-For", None) if believed else None
    out.append(("X-Forwarded-For", f"{', '.join(xff)}, {remote}" if xff else remote))
    proto = headers.get("X-Forwarded-Proto") if believed else None
    out.append(("X-Forwarded-Proto", proto or request.scheme))
    host = (headers.get("X-Forwarded-Host") if believed else None) or headers.get("Host")
    if host is not None:
        out.append(("X-Forwarded-Host", host))
    out.append((X_TRACE_ID, tags.trace_id))
    out.append((TRACEPARENT, tags.traceparent))
    return out


def client_headers(
    upstream: Mapping[str, str],
    trace_id: str,
    redirect: tuple[str, str] | None = None,
) -> list[tuple[str, str]]:
    """The upstream's response headers for the client, in order: hop-by-hop dropped,
    X-Trace-ID set. ``redirect``: (upstream origin, proxied origin): a ``Location`` that
    names the upstream's own address is rewritten to the proxied address (as nginx's
    ``proxy_redirect default``), so that the client comes back through graygate."""
    drop = _connection_named(upstream.get("Connection"), _RESPONSE_DROP)
    out = [(k, v) for k, v in upstream.items() if k.lower() not in drop]
    if redirect is not None:
        origin, proxied = redirect
        for i, (k, v) in enumerate(out):
            if k.lower() in ("location", "content-location") and _names_origin(v, origin):
                out[i] = (k, proxied + v[len(origin) :])
    out.append((X_TRACE_ID, trace_id))
    return out


def _names_origin(value: str, origin: str) -> bool:
    """``value`` is a URL at ``origin`` (scheme and authority, compared case-insensitively)."""
    n = len(origin)
    return (
        len(value) >= n and value[:n].lower() == origin and (len(value) == n or value[n] in "/?#")
    )


def asks_upgrade(request: web.BaseRequest) -> str | None:
    """The protocol the client asks to switch to (``Upgrade`` named in ``Connection``).

    Only ``websocket``: aiohttp's request parser hands the bytes that follow the head to
    the handler for that protocol only (others are parsed as HTTP, a guard against request
    smuggling), so a request asking for another one is forwarded as a plain request."""
    upgrade = request.headers.get("Upgrade")
    connection = request.headers.get("Connection")
    if not upgrade or not connection or upgrade.strip().lower() != "websocket":
        return None
    if "upgrade" not in {t.strip().lower() for t in connection.split(",")}:
        return None
    return upgrade


def accepts_trailers(request: web.BaseRequest) -> bool:
    """The client said it accepts trailer fields (``TE: trailers``)."""
    te = request.headers.get("TE")
    return te is not None and any(
        t.split(";", 1)[0].strip().lower() == "trailers" for t in te.split(",")
    )


class ClientAnswer(web.StreamResponse):
    """The upstream's answer as the client gets it: its status line and header fields as
    they came (bytes outside UTF-8 included: they travel as surrogate escapes), plus only
    what the hop needs: ``Transfer-Encoding: chunked`` toward an HTTP/1.1 client when the
    upstream gave no length, ``Connection: close`` when the connection ends. No
    ``Content-Type``, ``Date`` or ``Server`` is invented, and a ``Content-Length`` on a
    304 or a HEAD answer stays. The head waits for the first body write unless
    ``immediate``."""

    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str]], *, immediate: bool
    ) -> None:
        super().__init__(status=status, reason=reason)
        self._pairs = headers
        self._immediate = immediate
        self._framing: list[tuple[str, str]] = []
        length = None
        for k, v in headers:
            if k.lower() == "content-length":
                try:
                    length = int(v)
                except ValueError:
                    length = None
        self._declared = length

    @property
    def chunked_out(self) -> bool:
        """The answer goes to the client in chunks (so trailers can follow)."""
        return any(k == "Transfer-Encoding" for k, _ in self._framing)

    async def _prepare_headers(self) -> None:
        request = self._req
        writer = self._payload_writer
        assert request is not None and writer is not None
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = request.keep_alive
        framing = self._framing
        if self.status == 101:
            self._keep_alive = False  # the connection is the tunnel's now
            return
        if self._must_be_empty_body:
            pass
        elif self._declared is not None:
            writer.length = self._declared
        elif request.version >= (1, 1):
            writer.enable_chunking()
            framing.append(("Transfer-Encoding", "chunked"))
        else:
            keep_alive = False  # the end of the body is the end of the connection
        if not keep_alive:
            if request.version >= (1, 1):
                framing.append(("Connection", "close"))
        elif request.version < (1, 1):
            framing.append(("Connection", "keep-alive"))
        self._keep_alive = keep_alive

    async def _write_headers(self) -> None:
        request = self._req
        writer = self._payload_writer
        assert request is not None and writer is not None
        version = request.version
        status = f"HTTP/{version[0]}.{version[1]} {self.status} {self.reason}\r\n"
        fields = "".join([f"{k}: {v}\r\n" for k, v in (*self._pairs, *self._framing)])
        head = status.encode("latin-1") + fields.encode("utf-8", "surrogateescape") + b"\r\n"
        # aiohttp's serializer drops what is not UTF-8: hand the writer the exact bytes.
        writer._headers_buf = head  # type: ignore[attr-defined]
        writer._headers_written = False  # type: ignore[attr-defined]
        if self._immediate:
            writer.send_headers()

    async def write_trailers(self, trailers: list[tuple[str, str]]) -> None:
        """End a chunked answer with ``trailers`` (the last chunk and the fields)."""
        writer = self._payload_writer
        assert writer is not None and self.chunked_out
        block = "".join([f"{k}: {v}\r\n" for k, v in trailers])
        writer.chunked = False  # type: ignore[attr-defined]  # the last chunk is written here
        await self.write_eof(b"0\r\n" + block.encode("utf-8", "surrogateescape") + b"\r\n")


def error_kind(exc: BaseException) -> str:
    """What an upstream failure is recorded as: timeout | refused | reset | error."""
    if isinstance(exc, UpstreamError):  # what proxy.upstream raises: its kind
        return exc.kind
    if isinstance(exc, TimeoutError):
        return ErrorKind.TIMEOUT
    if isinstance(exc, ConnectionError):  # e.g. the client's streamed body broke off
        return ErrorKind.RESET
    return ErrorKind.ERROR


_ERROR_STATUS: Final[dict[str, int]] = {ErrorKind.TIMEOUT: 504}


def error_response(kind: str, role: str, trace_id: str) -> web.Response:
    """The client's answer when the serving upstream failed: 504 on timeout, else 502."""
    return web.Response(
        status=_ERROR_STATUS.get(kind, 502),
        body=orjson.dumps({"error": kind, "upstream": role, "trace_id": trace_id}),
        content_type="application/json",
        headers={X_TRACE_ID: trace_id},
    )


ENCODED_FACTOR: Final = 4


class ClientStalled(ConnectionResetError):
    """The client took no bytes of its answer for ``timeouts.client_write_s``: its
    connection was cut off (and the upstream's is released)."""


def _client_gone(capture: Capture, exc: ConnectionError) -> None:
    capture.client_gone = True
    if isinstance(exc, ClientStalled):
        capture.client_stalled = True


class Capture:
    """What one upstream answered, as it came (headers as sent, body still encoded),
    with a copy of the body bounded at ``limit`` bytes."""

    __slots__ = (
        "chunks",
        "client_gone",
        "client_stalled",
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
        self.client_stalled = False  # the client was cut off: it took no bytes in time

    def encoded(self, headers: Mapping[str, str]) -> None:
        """The body is compressed (``Content-Encoding``): keep up to ``ENCODED_FACTOR``
        times the bound of it, so that the decoded copy can fill the bound (a compressed
        stream cut at the bound decodes to far less, brotli to nothing of its last block)."""
        coding = headers.get("Content-Encoding")
        if coding and coding.strip().lower() != "identity":
            self.limit *= ENCODED_FACTOR

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
    """One configured upstream: its role, where it is, its pool and timeouts (seconds)."""

    __slots__ = (
        "_prefix",
        "base",
        "host_header",
        "mirror_timeout",
        "origin",
        "pool",
        "role",
        "serve_timeout",
    )

    def __init__(
        self,
        role: str,
        base: str,
        pool: Pool,
        serve_timeout: float,
        mirror_timeout: float,
        host_header: str | None = None,
    ) -> None:
        self.role = role
        self.base = base
        self.pool = pool
        self.serve_timeout = serve_timeout
        self.mirror_timeout = mirror_timeout
        # The Host sent upstream: None keeps the client's; "upstream" sends the upstream's
        # own authority; anything else is sent as given.
        self.host_header = host_header
        url = URL(base)
        self._prefix = url.raw_path.rstrip("/")
        # What a Location naming this upstream starts with (lowercased).
        self.origin = f"{url.scheme}://{url.raw_authority}{self._prefix}".lower()

    @property
    def prefixed(self) -> bool:
        """The upstream's base URL has a path that requests are joined under."""
        return bool(self._prefix)

    def host(self, client_host: str | None) -> str | None:
        """The ``Host`` header for this upstream (None: the upstream's authority)."""
        header = self.host_header
        if header is None:
            return client_host
        return None if header == "upstream" else header

    def target(self, path: str, query: str) -> str:
        """The request target upstream: this upstream's base path, the request's path and
        query."""
        if self._prefix and path != "*":
            path = self._prefix + path
        return f"{path}?{query}" if query else path

    def __repr__(self) -> str:
        return f"Upstream({self.role!r}, {self.base!r})"


UPSTREAMS_KEY: web.AppKey[dict[str, Upstream]] = web.AppKey("graygate.proxy.upstreams", dict)


def _pool(base: str, cfg: UpstreamsConfig) -> Pool:
    url = URL(base)
    assert url.host is not None and url.port is not None  # validated by the config
    return Pool(
        url.scheme,
        url.host,
        url.port,
        url.raw_authority,
        max_connections=cfg.max_connections,
        connect_timeout=cfg.connect_timeout_ms / 1000,
    )


def upstreams_ctx(
    cfg: UpstreamsConfig, mirror: MirrorConfig
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context: a pool per configured upstream under ``UPSTREAMS_KEY``."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        # Serving: the pool wait, the connect (also bounded by connect_timeout_ms) and every
        # wait for the upstream's bytes (the head included) are bounded by timeout_ms: a
        # long streamed answer is fine as long as it keeps coming.
        serve_timeout = cfg.timeout_ms / 1000
        # Mirroring: the whole exchange, body included, within mirror.timeout_ms.
        mirror_timeout = mirror.timeout_ms / 1000
        bases = {Role.PRIMARY: cfg.primary, Role.CANARY: cfg.canary}
        if cfg.secondary is not None:
            bases[Role.SECONDARY] = cfg.secondary
        hosts: dict[str, str] = {str(k): v for k, v in cfg.host_header.items()}
        upstreams: dict[str, Upstream] = {}
        try:
            for role, base in bases.items():
                upstreams[role] = Upstream(
                    role,
                    base,
                    _pool(base, cfg),
                    serve_timeout,
                    mirror_timeout,
                    hosts.get(role),
                )
            app[UPSTREAMS_KEY] = upstreams
            yield
        finally:
            for up in upstreams.values():
                await up.pool.close()

    return ctx


RequestBody = bytes | AsyncIterable[bytes] | None


async def forward(
    request: web.BaseRequest,
    upstream: Upstream,
    target: str,
    headers: list[tuple[str, str]],
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
    interim = None
    if request.version >= (1, 1):
        transport = request.transport

        def interim(head: bytes) -> None:
            # 1xx answers (103 Early Hints...) go to the client as they came (RFC 9110
            # 15.2: a proxy forwards them); 100 Continue is aiohttp's to send.
            if not head.startswith((b"HTTP/1.1 100 ", b"HTTP/1.0 100 ")):
                if transport is not None and not transport.is_closing():
                    transport.write(head)

    try:
        resp = await upstream.pool.send(
            request.method,
            target,
            headers,
            body,
            limit=upstream.serve_timeout,
            idle=True,
            host=upstream.host(request.headers.get("Host")),
            interim=interim,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        capture.latency = _perf() - start
        capture.error = kind = error_kind(exc)
        exc.__traceback__ = None  # its frames hold the request: no cycle left behind
        logger.debug("%s %s failed: %s: %r", upstream.role, request.method, kind, exc)
        return error_response(kind, upstream.role, trace_id)
    try:
        capture.status = resp.status
        capture.headers = up_headers = resp.headers
        capture.encoded(up_headers)
        if resp.status == 101:
            return await _switch(request, resp, upstream, trace_id, capture, start)
        # What of the body is here already goes out with the head, in one write; when
        # nothing is, the head goes out at once (a slow stream still shows its head).
        try:
            first = resp.read_nowait()
        except UpstreamError as exc:  # broken before the head went out: 502
            capture.latency = _perf() - start
            capture.error = kind = exc.kind
            capture.truncated = True
            return error_response(kind, upstream.role, trace_id)
        redirect = None
        client_host = request.headers.get("Host")
        if client_host and ("Location" in up_headers or "Content-Location" in up_headers):
            # (not request.host: without a Host header it asks the resolver for our name)
            redirect = (upstream.origin, f"{request.scheme}://{client_host}")
        out = ClientAnswer(
            resp.status,
            resp.reason,
            client_headers(up_headers, trace_id, redirect),
            immediate=not (first or resp.at_eof),
        )
        try:
            await out.prepare(request)
            if first:
                capture.add(first)
                await out.write(first)
        except ConnectionError as exc:
            _client_gone(capture, exc)
            capture.truncated = bool(first)
            return out
        while True:
            try:
                chunk = await resp.read()
            except UpstreamError as exc:
                # The head was sent: no 502 now. Close the client's connection, so that the
                # body it got cannot pass for a whole one.
                capture.latency = _perf() - start
                capture.error = exc.kind
                exc.__traceback__ = None
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
            except ConnectionError as exc:
                _client_gone(capture, exc)
                capture.truncated = True
                capture.latency = _perf() - start
                return out
        # Timed in the connection's callbacks, as a mirror is (never the client's writes).
        latency = resp.latency
        capture.latency = _perf() - start if latency is None else latency
        try:
            trailers = resp.trailers
            if trailers and out.chunked_out and accepts_trailers(request):
                await out.write_trailers(trailers)
            else:
                await out.write_eof()  # trailers are dropped for a client that did not ask
        except ConnectionError as exc:
            _client_gone(capture, exc)
        if request.transport is None:  # gone while the last bytes were on their way
            capture.client_gone = True
        return out
    finally:
        resp.release()


class _Pipe(asyncio.Protocol):
    """One direction of a tunnel: what arrives on the upstream's transport is written to
    the client's, with flow control both ways."""

    def __init__(self, peer: asyncio.Transport, done: asyncio.Future[None]) -> None:
        self.peer = peer
        self.done = done
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.peer.is_closing():
            self.peer.write(data)

    def eof_received(self) -> bool:
        if self.peer.can_write_eof() and not self.peer.is_closing():
            self.peer.write_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.close()
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self) -> None:  # the upstream is full: stop reading the client
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()


class _ClientFeed:
    """Takes the client's bytes from aiohttp (its payload parser's place) to the upstream."""

    def __init__(self, upstream: asyncio.Transport, done: asyncio.Future[None]) -> None:
        self.upstream = upstream
        self.done = done

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if not self.upstream.is_closing():
            self.upstream.write(data)
        return False, b""

    def feed_eof(self) -> None:
        self.upstream.close()
        if not self.done.done():
            self.done.set_result(None)


async def _switch(
    request: web.BaseRequest,
    resp: UpstreamAnswer,
    upstream: Upstream,
    trace_id: str,
    capture: Capture,
    start: float,
) -> web.StreamResponse:
    """The upstream switched protocols (101): relay the switch to a client that asked for
    it and tunnel the bytes both ways until either side closes; else 502."""
    capture.latency = _perf() - start
    if asks_upgrade(request) is None:
        capture.error = ErrorKind.ERROR  # a switch nobody asked for is not relayed
        return error_response(ErrorKind.ERROR, upstream.role, trace_id)
    up_headers = resp.headers
    drop = _RESPONSE_DROP - {"connection", "upgrade"}
    headers = [(k, v) for k, v in up_headers.items() if k.lower() not in drop]
    headers.append((X_TRACE_ID, trace_id))
    out = ClientAnswer(101, resp.reason, headers, immediate=True)
    taken = resp.upgrade()
    client = request.transport
    if taken is None or client is None:
        capture.error = ErrorKind.RESET
        return error_response(ErrorKind.RESET, upstream.role, trace_id)
    up_transport, early = taken
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    up_transport.set_protocol(_Pipe(client, done))
    try:
        await out.prepare(request)
        if early:
            client.write(early)
        request.protocol.set_parser(_ClientFeed(up_transport, done))  # type: ignore[arg-type]
        await done
    except ConnectionError:
        capture.client_gone = True
    finally:
        up_transport.close()
        client.close()
    return out


async def fetch(
    upstream: Upstream,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    capture: Capture,
    client_host: str | None = None,
) -> Capture:
    """Send a mirror to ``upstream`` and read its answer within the mirror timeout, up to
    what is recorded (``capture``'s bound): past it the answer is recorded truncated, and
    the rest is read without being kept (``UpstreamAnswer.discard``), only to time its
    end; past the pool's ``max_discard_bytes`` more the connection is closed and the
    answer has no latency (its end is unknown). A mirror thus reads at most the record
    bound (times ``ENCODED_FACTOR`` for a compressed body) plus that, plus the pool's read
    buffer. Never raises for an upstream failure: ``capture.error`` says it."""
    start = _perf()
    cut = False
    resp: UpstreamAnswer | None = None
    try:
        resp = await upstream.pool.send(
            method,
            target,
            headers,
            body,
            limit=upstream.mirror_timeout,
            idle=False,
            host=upstream.host(client_host),
        )
        try:
            capture.status = resp.status
            capture.headers = resp.headers
            capture.encoded(resp.headers)
            while chunk := await resp.read():
                capture.add(chunk)
                if capture.truncated:  # past what is recorded: read on, not kept, to time it
                    cut = not await resp.discard()
                    break
        finally:
            resp.release()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        capture.error = error_kind(exc)
        exc.__traceback__ = None  # its frames hold the capture: no cycle left behind
        if capture.status is not None:  # the head came, the body broke off
            capture.truncated = True
    if not cut:
        latency = None if resp is None or capture.error else resp.latency
        capture.latency = _perf() - start if latency is None else latency
    return capture
