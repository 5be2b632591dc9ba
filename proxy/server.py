"""The proxied port's HTTP/1.1 server: an asyncio protocol on ``httptools``' request parser.

The admin API is served by aiohttp; the proxied port is served by this module, which does
only what the proxy needs (about a third of aiohttp's cost per request): parse each request
(:class:`Connection`), hand it to the handler as a :class:`Request`, write the handler's
:class:`Answer` back, in order, one request at a time per connection (pipelined requests
wait their turn, parsed; the socket is no longer read past a few of them).

What it guarantees, as aiohttp did before it:

- HTTP/1.0 and 1.1, keep-alive and ``Connection: close``; HEAD, 1xx, 204 and 304 answers
  without a body; chunked request bodies (trailers read and dropped); ``Expect:
  100-continue`` answered ``100 Continue`` when the handler first waits for the body;
  absolute-form and ``OPTIONS *`` targets; header bytes outside UTF-8 kept (surrogate
  escapes); bodies as sent (nothing decompressed).
- A malformed request (llhttp's strict parser: Content-Length with Transfer-Encoding, a
  duplicate Content-Length, obs-fold, a bare LF, ...; also a missing ``Host`` in HTTP/1.1,
  a duplicate singleton field as aiohttp refuses them, a NUL in a value, an HTTP version
  other than 1.0 and 1.1: 505) is answered 400 and its connection closed. A target over
  ``listen_limits.max_line_bytes`` gives 414; a field name or value over
  ``max_field_bytes``, more than ``max_headers`` fields, or names and values over
  ``max_header_bytes`` give 431. The head is collected until its empty line and parsed in
  one piece (a trickled head costs linear time), bounded in bytes.
- An upgrade (``Connection: upgrade``) is the handler's to switch (:meth:`Connection.
  take_over`: the bytes that follow the head go to the tunnel); one that is not switched
  closes the connection after its answer. An upgrade request with a body is refused (400):
  the parser would skip the body.
- :class:`ClientLimits`: the head's time, each wait to write to the client (a client that
  takes nothing is cut off with ``proxy.error_mapping.ClientStalled``), the idle time of a
  keep-alive connection and the number of open connections, counted in
  ``graygate_client_closed_total{reason}`` and ``graygate_client_connections``.
- A body is buffered up to :data:`BODY_HIGH_WATER` bytes; past it the socket is not read
  until the handler has taken some (unless the handler waits for all of it, ``read()``:
  the proxy does so only up to ``mirror.max_body_bytes``). A body the handler did not read
  is discarded (the connection stays open for the next request) within
  ``timeouts.client_header_s``. A chunked body's framing and trailer fields (dropped) are
  bounded like a head.
- A handler that raises: a 500 when nothing was written yet, and the connection closed.

:class:`ProxyServer` runs an ``aiohttp`` application's startup and cleanup (the proxy app's
resources live in its ``cleanup_ctx``) around the listener: ``cleanup`` stops accepting,
closes idle connections, lets in-flight requests finish within ``shutdown_timeout``, then
cleans the app up (the mirrors are drained there).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import httptools
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.client_answer import REASONS, Answer
from proxy.error_mapping import ClientStalled
from proxy.http_head import head_end
from proxy.metrics import CLIENT_CONNECTIONS, count_client_closed

__all__ = [
    "BODY_HIGH_WATER",
    "SERVING_KEY",
    "Answer",
    "BadRequest",
    "Body",
    "ClientLimits",
    "Connection",
    "HeadLimits",
    "ProxyServer",
    "Request",
    "Serving",
]

logger = logging.getLogger(__name__)

BODY_HIGH_WATER: Final = 256 * 1024  # a body's bytes buffered before the socket is paused
_BODY_LOW_WATER: Final = 64 * 1024
_MAX_QUEUED: Final = 8  # parsed requests waiting for their turn before reading pauses
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNK_FRAMING: Final = 24  # bytes of framing allowed per chunk (its size line and CRLFs)
# Fields a request may carry once (aiohttp refuses a second one, so does this server).
_SINGLETONS: Final = frozenset(
    {
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "etag",
        "host",
        "max-forwards",
        "server",
        "transfer-encoding",
        "user-agent",
    }
)


class BadRequest(ConnectionResetError):
    """The client's request broke off or is malformed (its body: raised to the reader);
    ``status`` is what it is answered."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class HeadLimits:
    """The request head's bounds (``listen_limits``)."""

    __slots__ = ("max_field", "max_head_bytes", "max_header_bytes", "max_headers", "max_line")

    def __init__(
        self, *, max_line: int, max_field: int, max_headers: int, max_header_bytes: int
    ) -> None:
        self.max_line = max_line
        self.max_field = max_field
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        # The whole head, framing and white space included: the target, the fields, and
        # room for the method, the version and each field's ": " and CRLF (and some OWS).
        self.max_head_bytes = max_line + max_header_bytes + 64 * max_headers + 4096


class ClientLimits:
    """The proxied port's bounds on its clients, shared by the connections of one server:
    the head's time (``timeouts.client_header_s``), each wait to hand an answer's bytes to
    the client (``timeouts.client_write_s``), an idle connection's time
    (``timeouts.keepalive_s``) and the number of open connections
    (``listen_limits.max_connections``: at the cap, the connection idle the longest is
    closed for the new one; with none idle, the new one is closed). What it closes is
    counted (``graygate_client_closed_total{reason}``)."""

    __slots__ = ("header_s", "keepalive_s", "live", "max_connections", "write_s")

    def __init__(
        self, *, header_s: float, write_s: float, max_connections: int, keepalive_s: float = 75.0
    ) -> None:
        self.header_s = header_s
        self.write_s = write_s
        self.keepalive_s = keepalive_s
        self.max_connections = max_connections
        self.live: dict[Connection, None] = {}  # open client connections

    def opened(self, conn: Connection) -> bool:
        """A new connection: False when it must be closed (the cap, none idle)."""
        live = self.live
        if len(live) >= self.max_connections:
            oldest: Connection | None = None
            for other in live:
                if other.idle and (oldest is None or other.active_at < oldest.active_at):
                    oldest = other
            if oldest is None:
                count_client_closed("refused")
                return False
            count_client_closed("evicted")
            self.closed(oldest)
            oldest.abort()
        live[conn] = None
        CLIENT_CONNECTIONS.inc()
        return True

    def closed(self, conn: Connection) -> None:
        if self.live.pop(conn, 0) is None:
            CLIENT_CONNECTIONS.dec()


class Body:
    """A request's body as it arrives: ``read()`` (all of it, or up to ``n`` bytes),
    ``readany()`` (what is there), ``at_eof()``. Past :data:`BODY_HIGH_WATER` buffered
    bytes the connection stops reading the socket until the handler takes some. A client
    that goes away or breaks its framing makes the readers raise :class:`BadRequest`."""

    __slots__ = (
        "_all",
        "_chunks",
        "_conn",
        "_continue",
        "_eof",
        "_error",
        "_size",
        "_waiter",
        "discard",
    )

    def __init__(self, conn: Connection | None, expect_continue: bool) -> None:
        self._conn = conn
        self._continue = expect_continue  # 100 Continue not yet sent
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = conn is None
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.discard = False  # the handler is done with it: what comes is dropped
        self._all = False  # the handler waits for all of it: the socket is not paused

    # -- the connection's side
    def feed(self, data: bytes) -> None:
        if self.discard:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > BODY_HIGH_WATER and self._conn is not None and not self._all:
            self._conn.pause_body()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        if not self._eof:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the handler's side
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        conn = self._conn
        assert conn is not None
        if self._continue:
            self._continue = False
            conn.send_continue()
        waiter = self._waiter = conn.loop.create_future()
        await waiter
        if self._error is not None:
            raise self._error

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._taken(len(data))
        return data

    def _taken(self, size: int) -> None:
        before = self._size
        self._size = before - size
        if before > _BODY_LOW_WATER >= self._size and self._conn is not None:
            self._conn.resume_body()

    async def readany(self) -> bytes:
        """What is buffered (waiting for some); ``b""`` at the end."""
        while not self._chunks:
            if self._eof:
                return b""
            await self._wait()
        return self._take()

    async def read(self, n: int = -1) -> bytes:
        """All of the body (``n < 0``), or at most ``n`` bytes of what is buffered (waiting
        for some); ``b""`` at the end."""
        if n < 0:
            if not self._eof and self._conn is not None:
                # (the caller bounds it: the proxy reads a whole body up to its mirror bound)
                self._all = True
                self._conn.resume_body()
            while not self._eof:
                await self._wait()
            return self._take() if self._chunks else b""
        while not self._chunks:
            if self._eof:
                return b""
            await self._wait()
        first = self._chunks[0]
        if len(first) <= n:
            self._chunks.popleft()
            self._taken(len(first))
            return first
        self._chunks[0] = first[n:]
        self._taken(n)
        return first[:n]

    def drop(self) -> None:
        """The handler is done: what is buffered and what is still to come is dropped."""
        self.discard = True
        if self._chunks:
            self._chunks.clear()
            self._taken(self._size)


_NO_BODY: Final = Body(None, False)  # every request without a body shares it (empty, at its end)


class Request:
    """One parsed request, as the handler sees it."""

    __slots__ = (
        "_headers",
        "body_exists",
        "chunked",
        "content",
        "content_length",
        "expect",
        "keep_alive",
        "method",
        "protocol",
        "raw_headers",
        "raw_path",
        "remote",
        "upgrade",
        "version",
    )

    scheme: Final = "http"

    def __init__(
        self,
        protocol: Connection,
        method: str,
        raw_path: str,
        version: tuple[int, int],
        raw_headers: list[tuple[bytes, bytes]],
        headers: CIMultiDict[str],
        *,
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        upgrade: bool,
    ) -> None:
        self.protocol = protocol
        self.method = method
        self.raw_path = raw_path  # the target as sent (origin, absolute, asterisk form)
        self.version = version
        self.raw_headers = raw_headers
        self._headers = headers
        self.remote = protocol.remote
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.body_exists = chunked or bool(content_length)
        self.upgrade = upgrade
        expect = headers.get("Expect")
        self.expect = expect
        self.content = (
            Body(
                protocol,
                expect is not None and version >= (1, 1) and expect.lower() == "100-continue",
            )
            if self.body_exists
            else _NO_BODY
        )

    @property
    def headers(self) -> CIMultiDict[str]:
        return self._headers

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.protocol.transport

    @property
    def rel_url(self) -> URL:
        """The target as a URL (an absolute-form target's path and query are its own)."""
        return URL(self.raw_path, encoded=True)

    async def read(self) -> bytes:
        return await self.content.read()


Handler = Callable[[Request], Awaitable[Answer]]


class Serving:
    """What a :class:`ProxyServer` serves an app with: its handler and its bounds."""

    __slots__ = ("client", "handler", "head")

    def __init__(self, handler: Handler, client: ClientLimits, head: HeadLimits) -> None:
        self.handler = handler
        self.client = client
        self.head = head


SERVING_KEY: web.AppKey[Serving] = web.AppKey("graygate.proxy.serving", Serving)


class _Failed:
    """A place in the answer queue for a request that could not be parsed."""

    __slots__ = ("status", "text")

    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text


class TunnelEnd(Protocol):
    """What a tunnel (``proxy.tunnel``) gives the client's connection it takes over."""

    def feed(self, data: bytes) -> None:
        """The client's bytes (``b""``: the client closed)."""

    def pause(self) -> None:
        """The client takes no more bytes for now: stop reading the upstream."""

    def resume(self) -> None:
        """The client takes bytes again."""


class Connection(asyncio.Protocol):
    """One client connection: parses its requests and answers them in order."""

    __slots__ = (
        "_begun",
        "_body",
        "_broken",
        "_busy",
        "_chunks",
        "_client",
        "_delivered",
        "_drain",
        "_fed",
        "_fed_at",
        "_feed",
        "_framing",
        "_handler",
        "_head_buf",
        "_head_by",
        "_head_limits",
        "_headers",
        "_idle_by",
        "_in_head",
        "_paused_body",
        "_paused_queue",
        "_queue",
        "_server",
        "_serving",
        "_stall_timer",
        "_tick_s",
        "_timer",
        "_tunnel",
        "_upgraded",
        "_url",
        "_waiter",
        "_writing_paused",
        "active_at",
        "loop",
        "parser",
        "remote",
        "stalled",
        "transport",
    )

    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        serving = server.serving
        self._client = serving.client
        self._head_limits = serving.head
        self._handler = serving.handler
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.active_at = 0.0
        self.stalled = False
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = True  # between requests or inside a head
        self._head_buf = bytearray()
        # Deadlines (loop time; 0: none) of the head (and of a dropped body) and of an idle
        # connection, checked by one timer that is left running rather than cancelled
        # (uvloop's call_at and cancel cost some 3-4 us: twice per request, that was a
        # fifth of the server's time): it fires at least every tick_s while a deadline is
        # set, and a deadline is never nearer than tick_s when it is set.
        self._head_by = 0.0
        self._idle_by = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._tick_s = min(self._client.header_s, self._client.keepalive_s)
        self._body: Body | None = None  # the body being parsed
        # A chunked body's framing (chunk lines, extensions, trailer fields) is bounded: the
        # bytes fed less the body's, against the head's bound and a few bytes per chunk.
        self._chunks = 0
        self._delivered = 0
        self._framing = 0
        self._fed = self._fed_at = self._begun = 0  # bytes fed to the parser, at the
        # start of the last feed, and before the message that is parsed began (at most)
        self._queue: deque[Request | _Failed] = deque()
        self._serving: asyncio.Task[None] | None = None  # the connection's task
        self._waiter: asyncio.Future[None] | None = None  # it waits for a request
        self._busy = False  # it answers one
        self._broken = False  # nothing more is parsed
        self._upgraded = False  # the bytes after the head are not HTTP
        self._feed: Callable[[bytes], None] | None = None  # a tunnel's (take_over)
        self._tunnel: TunnelEnd | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._drain: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._paused_body = False
        self._paused_queue = False

    # ------------------------------------------------------------------ connection
    @property
    def idle(self) -> bool:
        """Waiting for a request (none being answered): may be closed for another."""
        return not self._busy and not self._queue and self._in_head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.active_at = self.loop.time()
        tr: asyncio.Transport = transport  # type: ignore[assignment]
        if not self._client.opened(self):
            tr.abort()  # connection_lost follows; no request is read
            return
        self.transport = tr
        self._server.connections.add(self)
        peer = tr.get_extra_info("peername")
        if isinstance(peer, tuple | list) and peer:
            self.remote = str(peer[0])
        sock = tr.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, NameError):
                pass
        self._arm_idle()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._client.closed(self)
        self._server.connections.discard(self)
        self.transport = None
        self._broken = True
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        stall = self._stall_timer
        if stall is not None:
            stall.cancel()
            self._stall_timer = None
        self._tunnel = None
        gone = BadRequest("the client closed the connection")
        body = self._body
        if body is not None:
            body.set_exception(gone)
            self._body = None
        for item in self._queue:
            if isinstance(item, Request):
                item.content.set_exception(gone)
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("the client closed the connection"))
            drain.exception()  # retrieved: nobody may be waiting
        self._drain = None
        feed = self._feed
        if feed is not None:
            self._feed = None
            feed(b"")
        self._start()  # its task ends

    def abort(self) -> None:
        """Close at once, dropping what is buffered for the client."""
        transport = self.transport
        if transport is not None:
            transport.abort()

    def eof_received(self) -> bool:
        feed = self._feed
        if feed is not None:
            self._feed = None
            feed(b"")
            return False
        body = self._body
        if body is not None:  # a body cut short
            body.set_exception(BadRequest("the client ended its request body early"))
            self._body = None
        self._broken = True
        if self.idle and self.transport is not None:
            self.transport.close()
        return True  # half-closed: what is being answered still goes out

    # ------------------------------------------------------------------ reading
    def data_received(self, data: bytes) -> None:
        feed = self._feed
        if feed is not None:
            feed(data)
            return
        if self._broken or self._upgraded:
            if self._upgraded:
                self._server_early(data)
            return
        self._idle_by = 0.0
        if self._in_head:
            buf = self._head_buf
            start = len(buf)
            if not start:
                if not self._head_by:
                    self._head_by = self._arm(self._client.header_s)
                if len(data) <= self._head_limits.max_head_bytes and (
                    b"\n\r\n" in data or b"\n\n" in data
                ):
                    self._parse(data)  # a whole head in one read: the common case
                    return
            buf += data
            # The head is parsed in one piece once its empty line is in (or it is too long).
            bound = self._head_limits.max_head_bytes
            end = head_end(buf, max(0, start - 2), bound)
            if end < 0 and len(buf) <= bound:
                return
            data = bytes(buf)
            buf.clear()
            if end < 0 or end > bound:
                # Too long: what the parser makes of its first bytes (a 414, a 431 for one
                # field), else a 431 for the head.
                self._parse(data[:bound])
                if not self._broken:
                    self._fail(431, f"the request head is longer than {bound} bytes")
                return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        body = self._body
        self._delivered = 0
        self._fed_at = fed = self._fed
        self._fed = fed + len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded_at(data[upgrade.args[0] :])
            return
        except BadRequest as exc:
            self._fail(exc.status, str(exc))
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, BadRequest):
                self._fail(cause.status, str(cause))
            else:
                self._fail(400, "bad request")
            return
        except httptools.HttpParserError as exc:
            self._fail(400, str(exc) or "bad request")
            return
        if body is not None and self._body is body and self._chunks:
            self._framing += len(data) - self._delivered
            if self._framing > self._head_limits.max_head_bytes + _CHUNK_FRAMING * self._chunks:
                self._fail(400, "the chunk framing or the trailer fields are too long")
        else:
            self._framing = 0

    def _upgraded_at(self, rest: bytes) -> None:
        """The parser stopped after an upgrade's head (or a CONNECT)."""
        request = self._queue[-1] if self._queue else None
        if not isinstance(request, Request) or not request.upgrade:
            self._fail(400, "bad upgrade")
            return
        # The bytes after the head belong to whatever the handler switches to.
        self._upgraded = True
        self._server_early(rest)

    def _server_early(self, data: bytes) -> None:
        if data:
            self._head_buf += data
            if len(self._head_buf) > BODY_HIGH_WATER and self.transport is not None:
                self.transport.pause_reading()

    def _fail(self, status: int, text: str) -> None:
        """The client's bytes cannot be parsed: answer ``status`` in its turn, then close."""
        self._broken = True
        self._in_head = False
        self._head_by = 0.0
        body = self._body
        if body is not None:  # broke inside a body: the handler reading it hears it
            self._body = None
            body.set_exception(BadRequest(text))
            if body.discard and self.transport is not None:
                self.transport.close()  # nobody reads it (a dropped body)
            return
        self._queue.append(_Failed(status, text))
        self._start()

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self._begun = self._fed_at
        self._chunks = 0
        self._url = []
        self._headers = []
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        size = sum(map(len, self._url))
        if size > self._head_limits.max_line:
            raise BadRequest(
                f"the request target is longer than {self._head_limits.max_line} bytes", 414
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        # Checked when the head is complete (it is bounded in bytes before it is parsed).
        if self._in_head:  # (else a trailer field of a chunked body: dropped)
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_by = 0.0
        self.active_at = self.loop.time()
        parser = self.parser
        vstr = parser.get_http_version()
        if vstr == "1.1":
            version = (1, 1)
        elif vstr == "1.0":
            version = (1, 0)
        else:
            raise BadRequest(f"HTTP/{vstr} is not served", 505)
        limits = self._head_limits
        raw = self._headers
        if len(raw) > limits.max_headers:
            raise BadRequest(f"more than {limits.max_headers} header fields", 431)
        # llhttp strips the white space before a value, not after it (RFC 9110 5.5).
        raw = self._headers = [(name, value.rstrip(b" \t")) for name, value in raw]
        max_field = limits.max_field
        if self._fed - self._begun > max_field:  # (else no field can be longer)
            for name, value in raw:
                if len(name) > max_field or len(value) > max_field:
                    raise BadRequest(f"a header field is longer than {max_field} bytes", 431)
        pairs = [
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in raw
        ]
        headers = CIMultiDict(pairs)
        if len({name.lower() for name, _ in pairs}) != len(pairs):  # a name twice
            named = [low for name, _ in pairs if (low := name.lower()) in _SINGLETONS]
            if len(named) != len(set(named)):
                raise BadRequest("a second field of one that is sent once")
        if version == (1, 1) and "Host" not in headers:
            raise BadRequest("no Host header")
        if "Sec-WebSocket-Key1" in headers:
            raise BadRequest("an obsolete websocket handshake")
        length = headers.get("Content-Length")
        content_length = None if length is None else int(length)  # llhttp checked it
        chunked = "Transfer-Encoding" in headers  # llhttp refuses a final coding but chunked
        method = parser.get_method().decode("ascii")
        upgrade = parser.should_upgrade()
        if upgrade and (chunked or content_length):
            raise BadRequest("an upgrade request with a body")
        url = self._url
        raw_path = (url[0] if len(url) == 1 else b"".join(url)).decode("utf-8", "surrogateescape")
        request = Request(
            self,
            method,
            raw_path,
            version,
            self._headers,
            headers,
            keep_alive=parser.should_keep_alive(),
            content_length=content_length,
            chunked=chunked,
            upgrade=upgrade,
        )
        if request.body_exists:
            self._body = request.content
        self._queue.append(request)
        if len(self._queue) > _MAX_QUEUED and self.transport is not None:
            self._paused_queue = True
            self.transport.pause_reading()
        self._start()

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, data: bytes) -> None:
        self._delivered += len(data)
        body = self._body
        if body is not None:
            body.feed(data)

    def on_message_complete(self) -> None:
        body = self._body
        if body is not None:
            self._body = None
            body.feed_eof()
        self._in_head = True
        self._head_by = 0.0  # a dropped body's bound
        if not self._busy and not self._queue:
            self._arm_idle()

    def _arm(self, delay: float) -> float:
        """A deadline ``delay`` seconds from now, with the timer running to see it."""
        now = self.loop.time()
        if self._timer is None and self.transport is not None:
            self._timer = self.loop.call_at(now + self._tick_s, self._tick)
        return now + delay

    def _tick(self) -> None:
        self._timer = None
        if self.transport is None:
            return
        now = self.loop.time()
        head_by, idle_by = self._head_by, self._idle_by
        if head_by and now >= head_by:
            # The head (or a dropped body) took longer than timeouts.client_header_s.
            count_client_closed("header_timeout")
            self._broken = True
            self.abort()
            return
        if idle_by and now >= idle_by and self.idle and not self._head_buf:
            self._broken = True  # idle for timeouts.keepalive_s
            self.transport.close()
            return
        if head_by or idle_by:
            nearest = min(d for d in (head_by, idle_by) if d)
            self._timer = self.loop.call_at(min(nearest, now + self._tick_s), self._tick)

    def _arm_idle(self) -> None:
        if not self._idle_by:
            self._idle_by = self._arm(self._client.keepalive_s)

    # flow control of the request bodies
    def pause_body(self) -> None:
        if not self._paused_body and self.transport is not None:
            self._paused_body = True
            self.transport.pause_reading()

    def resume_body(self) -> None:
        if self._paused_body:
            self._paused_body = False
            if self.transport is not None and not self._paused_queue:
                self.transport.resume_reading()

    # ------------------------------------------------------------------ writing
    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("cannot write to a closed connection")
        transport.write(data)

    def send_continue(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_CONTINUE)

    def pause_writing(self) -> None:
        self._writing_paused = True
        tunnel = self._tunnel
        if tunnel is not None:  # the client reads slower than the upstream sends
            tunnel.pause()
            self._stall_timer = self.loop.call_later(self._client.write_s, self._tunnel_stalled)

    def resume_writing(self) -> None:
        self._writing_paused = False
        timer = self._stall_timer
        if timer is not None:
            self._stall_timer = None
            timer.cancel()
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.resume()
        drain = self._drain
        if drain is not None:
            self._drain = None
            if not drain.done():
                drain.set_result(None)

    def _tunnel_stalled(self) -> None:
        self._stall_timer = None
        self.stalled = True
        count_client_closed("stalled")
        self.abort()  # connection_lost ends the tunnel: feed(b"") closes the upstream

    async def drain(self) -> None:
        """Wait until the client takes the bytes written: bounded by ``client_write_s``
        (past it, the connection is cut off and :class:`ClientStalled` raised)."""
        if not self._writing_paused:
            if self.transport is None:
                raise ConnectionResetError("the client closed the connection")
            return
        drain = self._drain
        if drain is None:
            drain = self._drain = self.loop.create_future()
        try:
            async with asyncio.timeout(self._client.write_s):
                await asyncio.shield(drain)
        except TimeoutError:
            self.stalled = True
            count_client_closed("stalled")
            self.abort()
            raise ClientStalled(
                f"the client took no bytes for {self._client.write_s:g} s"
            ) from None

    def keeps(self, request: Request) -> bool:
        """Whether the connection may stay open after ``request``'s answer."""
        if self._broken or self._server.closing or request.upgrade:
            return False
        return request.content._error is None

    def take_over(self, tunnel: TunnelEnd) -> bytes:
        """The connection is a tunnel's from now on: the client's bytes go to
        ``tunnel.feed`` (``b""``: the client closed); while the client takes no more bytes,
        ``tunnel.pause`` (stop reading the upstream) until ``tunnel.resume``, and a client
        that takes nothing for ``client_write_s`` is cut off. Returns the bytes that came
        after the head."""
        early = bytes(self._head_buf)
        self._head_buf.clear()
        self._tunnel = tunnel
        self._feed = tunnel.feed
        self._broken = True
        if self._writing_paused:
            self.pause_writing()
        if self.transport is not None:
            self.transport.resume_reading()
        return early

    # ------------------------------------------------------------------ answering
    def _start(self) -> None:
        """A request (or a failure) is queued, or the connection is gone: wake the
        connection's task (one per connection, started with its first request)."""
        if self._serving is None:
            if self._queue and self.transport is not None:
                self._serving = self.loop.create_task(self._serve())
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _serve(self) -> None:
        queue = self._queue
        try:
            while True:
                if not queue:
                    self._busy = False
                    if self._broken or self.transport is None:
                        break
                    if self._in_head:
                        self._arm_idle()
                    waiter = self._waiter = self.loop.create_future()
                    await waiter
                    continue
                self._busy = True
                item = queue.popleft()
                if self._paused_queue and len(queue) <= _MAX_QUEUED // 2:
                    self._paused_queue = False
                    if self.transport is not None and not self._paused_body:
                        self.transport.resume_reading()
                if isinstance(item, _Failed):
                    await self._answer_failed(item)
                    return
                if not await self._answer(item):
                    return
        finally:
            self._serving = self._waiter = None
            self._busy = False
            queue.clear()  # the connection is done: what is left is never answered
        if self.transport is not None and self._feed is None:
            self.transport.close()

    async def _answer_failed(self, failed: _Failed) -> None:
        transport = self.transport
        if transport is None:
            return
        body = f"{failed.status}, message: {failed.text}\n".encode("utf-8", "replace")
        reason = REASONS.get(failed.status, "Bad Request")
        head = (
            f"HTTP/1.1 {failed.status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        if not transport.is_closing():
            transport.write(head + body)
            transport.close()

    async def _answer(self, request: Request) -> bool:
        """Run the handler on ``request`` and finish its answer; False when the connection
        is done."""
        expect = request.expect
        answer: Answer | None = None
        try:
            if expect is not None and request.version >= (1, 1):
                if expect.lower() != "100-continue":
                    answer = Answer.text(417, "expectation failed\n")
            if answer is None:
                answer = await self._handler(request)
            await answer.prepare(request)
            await answer.write_eof()
        except (ConnectionError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                self.abort()
                raise
            self.abort()
            return False
        except Exception:
            logger.exception(
                "the proxy's handler failed on %s %s", request.method, request.raw_path
            )
            if answer is None or not answer.prepared:
                try:
                    failed = Answer.text(500, "500 Internal Server Error\n")
                    self._broken = True
                    await failed.prepare(request)
                except ConnectionError:
                    pass
            self._broken = True
            if self.transport is not None:
                self.transport.close()
            return False
        if not answer.keep_alive or self.transport is None:
            if self.transport is not None and self._feed is None:
                self.transport.close()
            return False
        body = request.content
        if not body.at_eof():
            # Not read by the handler: dropped as it comes, within the head's time.
            body.drop()
            if not body._eof:
                self._head_by = self._arm(self._client.header_s)
        return True


class ProxyServer:
    """Runs ``app`` (startup, cleanup) and serves it on the proxied port: :meth:`setup`,
    :meth:`start` (one or more listeners), :meth:`cleanup`. ``app[SERVING_KEY]`` says how."""

    def __init__(self, app: web.Application, *, shutdown_timeout: float = 60.0) -> None:
        self.app = app
        self.shutdown_timeout = shutdown_timeout
        self.connections: set[Connection] = set()
        self.closing = False
        self._servers: list[asyncio.Server] = []
        self._started = False
        serving = app.get(SERVING_KEY)
        if serving is None:
            raise RuntimeError("ProxyServer serves the app of proxy.app.make_proxy_app only")
        self.serving = serving

    @property
    def addresses(self) -> list[tuple[str, int]]:
        out = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                out.append((str(name[0]), int(name[1])))
        return out

    async def setup(self) -> None:
        app = self.app
        app._set_loop(asyncio.get_running_loop())
        app.on_startup.freeze()
        await app.startup()
        app.freeze()
        self._started = True

    async def start(
        self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 4096
    ) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Connection(self),
            host,
            port,
            reuse_port=reuse_port or None,
            backlog=backlog,
        )
        self._servers.append(server)
        name = server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def cleanup(self) -> None:
        """Stop accepting; close idle connections; let the requests in flight finish within
        ``shutdown_timeout``; then close what is left and clean the app up."""
        self.closing = True
        for server in self._servers:
            server.close()
        await asyncio.sleep(0)
        for conn in list(self.connections):
            if conn.idle and conn.transport is not None:
                conn.transport.close()
        busy = [c._serving for c in self.connections if c._busy and c._serving is not None]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=self.shutdown_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for conn in list(self.connections):
            if conn._feed is not None or not conn._busy:
                conn.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._started:
            self._started = False
            await self.app.shutdown()
            await self.app.cleanup()
