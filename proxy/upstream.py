"""A lean HTTP/1.1 client for the configured upstreams (the request path's hot path).

One :class:`Pool` per upstream: at most ``max_connections`` keep-alive connections
(asyncio protocols on the running loop), idle ones reused last-in first-out. A connection is
put back only when its answer was read to the end, the server did not ask to close it
(``Connection: close``, HTTP/1.0) and it is still open; else it is closed. Idle connections
unused for ``idle_timeout`` seconds are closed by one timer per pool.

A request is written in one ``transport.write`` (request line, ``Host``, the caller's headers
as given, in order, and the body when it is in memory); a streamed body goes out as it comes,
chunked unless the caller's headers carry a ``Content-Length``. Nothing is added: no default
header, no decompression, no redirect, no cookie. Answers are parsed by ``httptools`` (1xx
handed to the caller's ``interim`` callback as bytes; HEAD, 204 and 304 have no body;
content-length, chunked and read-until-close bodies; trailers in ``UpstreamAnswer.trailers``)
and handed to the caller as a :class:`UpstreamAnswer` whose body is read chunk by chunk. No
parser state outlives its answer; bytes after a complete answer are never parsed as part
of it (the connection is dropped). The head is collected until its empty line and parsed
in one piece (linear time), bounded by ``max_head_bytes`` and ``max_head_fields``, as are
the chunk framing and trailers. A 101's connection leaves the pool through
``UpstreamAnswer.upgrade``.

Time: ``send(..., idle=True)`` bounds every wait for the upstream's bytes by ``limit`` (the
serving path: a long answer is fine as long as it keeps coming); ``idle=False`` bounds the
whole exchange, body included (the mirror path). The pool wait and the connect are bounded
by the same deadline, the connect also by ``connect_timeout``. One loop timer per
connection, left running when an answer completes rather than cancelled (uvloop's
``call_at`` plus ``cancel`` cost some 3-4 us, twice per proxied request): a timer that
fires before the current request's deadline (it was armed for an earlier request) is set
again for what remains, so a busy keep-alive connection arms about one timer per ``limit``
seconds, not one per request.

Failures are raised as ``graygate.errors`` kinds, which is what is recorded:

    UpstreamError                 kind "error": a malformed answer, a bad header
    ├── UpstreamUnreachable       kind "refused": connect failed (refused, DNS, unreachable)
    │   └── UpstreamReset         kind "reset": the connection broke during the exchange
    └── UpstreamTimeout           kind "timeout"

A reused connection that the server closed before sending a byte of the answer (it closed an
idle keep-alive connection as the request went out) is retried once on a fresh connection,
only for an idempotent method whose body is in memory.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from typing import Final, cast

import httptools
from multidict import CIMultiDictProxy

from graygate.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from graygate.vocabulary import ErrorKind
from proxy.capture import header_fields
from proxy.http_head import head_end

__all__ = [
    "MAX_DISCARD_BYTES",
    "MAX_HEAD_BYTES",
    "MAX_HEAD_FIELDS",
    "AnswerSink",
    "Pool",
    "UpstreamAnswer",
    "UpstreamReset",
    "retryable",
]

logger = logging.getLogger(__name__)


class UpstreamReset(UpstreamUnreachable):
    """The connection broke (reset, closed) before the answer was whole."""

    kind = ErrorKind.RESET


class _Stale(UpstreamReset):
    """A reused connection closed before any byte of the answer: may be retried."""


class _Extra(Exception):
    """Raised in a parser callback to stop parsing (the parser turns it into an
    ``HttpParserCallbackError``)."""


_perf = time.perf_counter

IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Methods that get ``Content-Length: 0`` when they carry no body (as aiohttp's client did).
_BODYLESS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
_HIGH_WATER: Final = 256 * 1024  # buffered answer bytes before reading pauses
# Bounds of an answer's head (status line and header fields, interim 1xx heads included)
# and, separately, of its trailer section: beyond either the answer fails ("error").
# The defaults of ``upstreams.max_head_bytes`` and ``max_head_fields``: Envoy's 60 KiB of
# response headers (Go's net/http accepts 1 MiB; nginx's proxy buffers 4-8 KiB).
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEAD_FIELDS: Final = 1000
_LOW_WATER: Final = 64 * 1024
# What ``UpstreamAnswer.discard`` reads of a body, without keeping it, by default: past
# what a mirror records, the rest is read (up to this) only to time the answer's end.
MAX_DISCARD_BYTES: Final = 1024 * 1024

# Connection states.
_IDLE: Final = 0
_HEAD: Final = 1  # waiting for the head of the answer
_BODY: Final = 2  # head parsed, body coming
_DONE: Final = 3  # answer complete
_BROKEN: Final = 4


class _Connection(asyncio.Protocol):
    """One upstream connection and the answer it is reading."""

    __slots__ = (
        "_buffered",
        "_deadline",
        "_deadline_idle",
        "_discard_left",
        "_discarding",
        "_drain",
        "_feeding",
        "_head_buf",
        "_head_total",
        "_header_parts",
        "_overhead",
        "_paused",
        "_paused_at",
        "_paused_for",
        "_sink",
        "_sink_headed",
        "_timeout",
        "_timer",
        "_timer_at",
        "_wait_start",
        "_waiter",
        "chunks",
        "error",
        "head_block",
        "head_only",
        "head_parts",
        "headers",
        "idle_since",
        "interim",
        "keep_alive",
        "latency",
        "loop",
        "parser",
        "pool",
        "reason",
        "received",
        "sent_at",
        "state",
        "status",
        "trailers",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.state = _IDLE
        self.status = 0
        self.reason = b""
        self.headers: CIMultiDictProxy[str] | None = None
        self.head_parts: list[bytes] = []  # the final head's names and values, as they came
        self.head_block = b""  # the same joined by newlines (which no name or value holds)
        self.trailers: list[tuple[str, str]] = []
        self._header_parts: list[bytes] = []
        self._head_buf = bytearray()  # the head as it comes, fed to the parser when whole
        self._head_total = 0  # head bytes of this answer (interim heads included)
        self._overhead = 0  # bytes of a chunked body that are not body (trailers...)
        self.chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._paused_at = 0.0
        self._paused_for = 0.0  # seconds reading was paused because the caller lagged
        self._discarding = False  # the body is read on but not kept (discard)
        self._discard_left = 0  # bytes discard may still read; below 0: over its bound
        self.sent_at = 0.0  # perf_counter() when the request's first byte was written
        self.latency: float | None = None  # seconds: first byte written to last byte read
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the timer fires (loop time)
        self._deadline = 0.0  # when the request in progress times out, unless it waits
        self._timeout = 0.0
        self._deadline_idle = False
        self._wait_start = 0.0
        self.error: UpstreamError | None = None
        self.keep_alive = True
        self.head_only = False
        self.interim: Callable[[bytes], None] | None = None
        self.received = False
        self.idle_since = 0.0
        # The answer goes to a sink's callbacks rather than to a waiting task (send_nowait).
        self._sink: AnswerSink | None = None
        self._sink_headed = False  # the sink has its head
        self._feeding = False  # in data_received: the sink is told after the parser is done

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _DONE and self.status == 101:
            self.chunks.append(data)  # the upgraded protocol's bytes: UpstreamAnswer.upgrade
            return
        if state == _IDLE or state >= _DONE:
            # Bytes nobody asked for: the connection cannot be trusted any more.
            self.keep_alive = False
            if state == _IDLE:
                self.pool._drop_idle(self)
            return
        self.received = True
        self._feeding = True
        try:
            if state == _HEAD:
                self._feed_head(data)
            else:
                self._feed_body(data)
        except httptools.HttpParserError as exc:
            if self.state == _DONE:
                # Bytes after a complete answer (on_message_begin refused them): the
                # answer stands, the connection is not reused.
                self.keep_alive = False
            else:
                self._fail(UpstreamError(f"malformed answer: {exc}"))
        finally:
            self._feeding = False
        if self._sink is not None:
            self._sink_step()

    def _feed_head(self, data: bytes) -> None:
        """Collect the head until its end (in linear time, bounded by ``MAX_HEAD_BYTES``),
        then parse it in one piece, and what follows it."""
        buf = self._head_buf
        limit = self.pool.max_head_bytes
        if not buf and not self.head_only and data[9:10] != b"1" and data[:5] == b"HTTP/":
            # The common case: the whole head of a final answer (not 1xx, not to a HEAD) in
            # the first bytes. Parsed with what follows it in one call, without copying it
            # into the head buffer and out again.
            room = limit - self._head_total
            end = head_end(data, 0, room)
            if end < 0 and len(data) >= room:  # no empty line within the bound
                self._fail(UpstreamError(f"answer head over {limit} bytes"))
                return
            if end > 0:
                self._head_total += end
                before = self._buffered - self._discard_left
                self.parser.feed_data(data)
                self._count_overhead(len(data) - end, before)
                return
        while True:
            scan = max(0, len(buf) - 2)
            buf += data
            data = b""
            if len(buf) >= 5 and not buf.startswith(b"HTTP/"):
                self._fail(UpstreamError(f"malformed answer: {bytes(buf[:20])!r}"))
                return
            room = limit - self._head_total  # the longest head still allowed
            end = head_end(buf, scan, room)
            if end < 0:
                if len(buf) >= room:  # no empty line within the bound: none will be
                    self._fail(UpstreamError(f"answer head over {limit} bytes"))
                return
            self._head_total += end
            head = bytes(buf[:end])
            rest = bytes(buf[end:])
            buf.clear()
            try:
                self.parser.feed_data(head)
            except httptools.HttpParserUpgrade:
                pass  # a 101 with Upgrade: on_headers_complete has taken it
            if self.state != _HEAD:  # the final head: what follows is its body
                if rest and self.state == _BODY:
                    self._feed_body(rest)
                elif rest and self.status == 101:
                    self.chunks.append(rest)  # the upgraded protocol's first bytes
                elif rest:
                    self.parser.feed_data(rest)  # on_message_begin refuses extra bytes
                return
            # An interim (1xx) head: handed on as it came; the next head follows.
            interim = self.interim
            if interim is not None and self.state == _HEAD:
                interim(head)
            if not rest:
                return
            data = rest

    def _feed_body(self, data: bytes) -> None:
        # Body bytes are kept (``_buffered`` grows) or discarded (``_discard_left`` falls).
        before = self._buffered - self._discard_left
        self.parser.feed_data(data)
        self._count_overhead(len(data), before)

    def _count_overhead(self, fed: int, before: int) -> None:
        """``fed`` bytes of body were parsed: count those that were not body (chunk lines,
        extensions, trailers), bounded by ``max_head_bytes``. ``before``: the body bytes
        kept less those left to discard, before they were parsed (body bytes are kept,
        ``_buffered`` grows, or discarded, ``_discard_left`` falls)."""
        self._overhead += fed - max(0, self._buffered - self._discard_left - before)
        if self._overhead > self.pool.max_head_bytes and self.state == _BODY:
            self._fail(
                UpstreamError(f"chunk framing or trailers over {self.pool.max_head_bytes} bytes")
            )

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep_alive = False
        state = self.state
        if state == _IDLE:
            self.pool._drop_idle(self)
        elif state == _BODY and self._until_close():
            self._complete()
        elif state < _DONE:
            if not self.received and self.pool_reused:
                self._fail(_Stale("connection closed before the answer"))
            else:
                self._fail(UpstreamReset(f"connection lost: {exc or 'closed by upstream'}"))
        self.state = _BROKEN if self.state != _DONE else _DONE
        self.transport = None
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        drain = self._drain
        self._drain = None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self.state != _HEAD:
            # A second answer in the bytes of one: never merged into the first.
            self.keep_alive = False
            raise _Extra("bytes after a complete answer")

    def on_status(self, status: bytes) -> None:
        self.reason = self.reason + status if self.reason else status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state == _BODY:  # a trailer field
            if len(self.trailers) >= self.pool.max_head_fields:
                self._fail(UpstreamError(f"more than {self.pool.max_head_fields} trailers"))
                raise _Extra("too many trailers")
            self.trailers.append(
                (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            )
            return
        parts = self._header_parts
        if len(parts) >= 2 * self.pool.max_head_fields:
            self._fail(UpstreamError(f"more than {self.pool.max_head_fields} header fields"))
            raise _Extra("too many header fields")
        parts.append(name)
        parts.append(value)

    def on_chunk_header(self) -> None:
        self._overhead = 0

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        parts = self._header_parts
        self._header_parts = []
        if 100 <= status < 200 and status != 101:
            self.reason = b""  # an interim answer: skip it
            return
        self.status = status
        self.head_parts = parts
        self.head_block = b"\n".join(parts)
        self.headers = None  # made from head_block when asked for (fields())
        self.state = _BODY
        if self.head_only or status == 101:
            # httptools cannot be told the request was HEAD: the answer ends here, and a
            # fresh parser reads the next one.
            self.parser = httptools.HttpResponseParser(self)
            if status == 101:
                self.keep_alive = False
            self._complete()
        else:
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self.state != _BODY:
            self.keep_alive = False
            return
        if self._discarding:
            was = self._discard_left
            left = self._discard_left = was - len(body)
            if self._deadline_idle:
                self._wait_start = self.loop.time()  # bytes keep coming: not idle
            if left < 0 <= was:
                # Past the bound: read no more; discard gives up, the connection closes.
                self.keep_alive = False
                if self.transport is not None:
                    self.transport.pause_reading()
                self._wake()
            return
        self.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self._paused_at = _perf()
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.state != _BODY:
            return  # an interim (1xx) answer
        if not self.parser.should_keep_alive():
            self.keep_alive = False
        self._complete()

    # -- internals

    @property
    def pool_reused(self) -> bool:
        return self.idle_since > 0.0

    def fields(self) -> CIMultiDictProxy[str]:
        """The final head's header fields (made once, when first asked for)."""
        headers = self.headers
        if headers is None:
            headers = self.headers = header_fields(self.head_block)
        return headers

    def _until_close(self) -> bool:
        # (Only asked in the body: the head is parsed.)
        headers = self.fields()
        return "Content-Length" not in headers and "Transfer-Encoding" not in headers

    def _complete(self) -> None:
        # The answer's last byte is read: its latency, taken here in the protocol's callback
        # (not after a hop to the task that reads it), less the time reading was paused
        # because the caller (writing to a slow client) lagged behind.
        if self.sent_at:
            self.latency = _perf() - self.sent_at - self._paused_for
        self.state = _DONE  # the timer stays: the next request on this connection re-uses it
        self._wake()

    def _wake(self) -> None:
        if self._sink is not None:
            if not self._feeding:
                self._sink_step()
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, exc: UpstreamError) -> None:
        if self.error is None:
            self.error = exc
        self.state = _BROKEN
        self.keep_alive = False
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(exc)
        transport = self.transport
        if transport is not None:
            transport.close()
        if self._sink is not None and not self._feeding:
            self._sink_step()

    def _sink_step(self) -> None:
        """Tell the sink what came (the head, the body), and once the answer is over (or
        failed, or went past what ``discard`` reads) give the connection back and end it:
        what a task reading the answer would do, in the connection's callbacks."""
        sink = self._sink
        assert sink is not None
        error = self.error
        latency: float | None = None
        if error is None:
            state = self.state
            if state == _HEAD:
                return
            if not self._sink_headed:
                self._sink_headed = True
                sink.head(self.status, self.head_block)
            if self.chunks and not self._discarding and not sink.body(self.take()):
                # Past what the sink keeps: read on without keeping, to time the end.
                self._discard_left = sink.discard_limit(self.pool.max_discard_bytes)
                self._discarding = True
            if self._discarding and self._discard_left < 0:
                pass  # past the discard bound too: not timed, the connection closes
            elif self.state == _DONE:
                latency = self.latency
            else:
                return
        self._sink = None
        sink._conn = None
        self.pool._release(self)
        sink.end(error, latency)

    def _arm(self, at: float) -> None:
        """Time the request in progress out at ``at`` (loop time), unless it waits (idle)."""
        self._deadline = at
        timer = self._timer
        if timer is not None:
            if self._timer_at <= at:
                return  # it fires first, and _on_timer sets it again for what remains
            timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        state = self.state
        if state == _IDLE or state >= _DONE:
            return  # left from a completed request; none is in progress
        if self._timer_at < self._deadline:
            self._arm(self._deadline)  # armed for an earlier request: this one has longer
            return
        if self._deadline_idle:
            now = self.loop.time()
            if self._waiter is None:  # the caller is busy elsewhere, not waiting
                self._arm(now + self._timeout)
                return
            due = self._wait_start + self._timeout
            if due > now:
                self._arm(due)
                return
        self._fail(UpstreamTimeout("no answer in time"))

    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self.loop.create_future()
        self._wait_start = self.loop.time()
        try:
            await waiter
        except asyncio.CancelledError:
            self._waiter = None
            raise

    def start(
        self,
        data: bytes,
        head_only: bool,
        timeout: float,
        deadline: float,
        idle: bool,
        interim: Callable[[bytes], None] | None = None,
    ) -> None:
        """Send ``data`` (the request's head and in-memory body) and arm the timer;
        ``interim`` gets each interim (1xx) head's bytes."""
        self.state = _HEAD
        self.status = 0
        self.reason = b""
        self.headers = None
        self.trailers = []
        self._header_parts = []
        self._head_buf.clear()
        self._head_total = 0
        self._overhead = 0
        self.head_only = head_only
        self.interim = interim
        self.received = False
        self.latency = None
        self.sent_at = 0.0
        self._paused_for = 0.0
        self._discarding = False
        self._timeout = timeout
        self._deadline_idle = idle
        self._arm(deadline)
        transport = self.transport
        if transport is None or transport.is_closing():
            self._fail(_Stale("connection closed before the request"))
        elif data:
            self.sent_at = _perf()
            transport.write(data)

    async def write_body(self, head: bytes, body: AsyncIterable[bytes], chunked: bool) -> None:
        """Stream a request body (after ``start``), the head with its first chunk (nothing
        is sent when the body fails before it has one), honouring flow control."""
        pending = head
        async for chunk in body:
            if not chunk:
                continue
            if self.error is not None:
                raise self.error
            transport = self.transport
            if transport is None:
                raise UpstreamReset("connection lost while sending the body")
            if chunked:
                chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
            if pending:
                chunk = pending + chunk
                pending = b""
            if not self.sent_at:
                self.sent_at = _perf()
            transport.write(chunk)
            drain = self._drain
            if drain is not None:
                await drain
        end = pending + b"0\r\n\r\n" if chunked else pending
        if end and self.transport is not None:
            if not self.sent_at:
                self.sent_at = _perf()
            self.transport.write(end)

    async def head(self) -> None:
        while self.state == _HEAD:
            await self._wait()
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        chunks = self.chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._paused_for += _perf() - self._paused_at
            if self.transport is not None:
                self.transport.resume_reading()
        return data

    async def read(self) -> bytes:
        while not self.chunks:
            if self.state == _DONE:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait()
        return self.take()

    async def discard(self, limit: int) -> bool:
        """Read the rest of the body without keeping it, up to ``limit`` bytes (those
        already buffered count): True when the answer ended within them (``latency`` is
        set, in the callbacks as always), False when it goes on past them (not timed; the
        connection is then not reused). ``limit`` 0: nothing more is read; True only when
        the answer had ended already. Raises ``UpstreamError`` as :meth:`read` does."""
        if limit <= 0:
            self.take()
            if self.error is not None:
                raise self.error
            return self.state == _DONE
        self._discard_left = limit - len(self.take())
        self._discarding = True
        while self._discard_left >= 0 and self.state == _BODY:
            await self._wait()
        if self.error is not None:
            raise self.error
        return self._discard_left >= 0 and self.state == _DONE

    def close(self) -> None:
        self.keep_alive = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.unlink()

    def unlink(self) -> None:
        """Break this connection's reference cycles and drop what it buffered, once no
        request uses it: its parser calls its own bound methods, and its error's traceback
        holds the frames that waited on it. A closed connection is then freed at once by
        reference counting, with its buffers, not at the next full collection."""
        self.parser = _UNLINKED
        self.chunks = []
        self.error = None
        self.interim = None
        self._waiter = None
        self._drain = None
        self._head_buf = bytearray()


class AnswerSink:
    """Takes an answer in its connection's callbacks, with no task waiting for it
    (:meth:`Pool.send_nowait`): :meth:`head` once the final head is parsed, :meth:`body`
    with each part of the body (False: keep no more; the rest is read on without being
    kept, up to the pool's ``max_discard_bytes``, only to time its end, as
    :meth:`UpstreamAnswer.discard` does), then :meth:`end` once, the connection already
    given back to its pool."""

    __slots__ = ("_conn",)

    def __init__(self) -> None:
        self._conn: _Connection | None = None

    def head(self, status: int, block: bytes) -> None:
        """The answer's final head: its status, its header fields as they came (names and
        values in turn, joined by newlines: ``header_fields`` reads them)."""

    def body(self, data: bytes) -> bool:
        """A part of the body; False to keep no more of it."""
        return True

    def discard_limit(self, default: int) -> int:
        """Once :meth:`body` said False: how many more bytes to read on, only to time the
        answer's end (``default``: the pool's ``max_discard_bytes``; below 0: none, the
        answer is not timed and its connection closes)."""
        return default

    def end(self, error: UpstreamError | None, latency: float | None) -> None:
        """The answer is over: ``error`` when it failed (``retryable(error)``: a reused
        connection closed before any byte of it), else ``latency`` (seconds from the
        request's first byte written to the answer's last byte read; None: not timed, the
        body went on past what is read of it)."""

    def cancel(self) -> None:
        """Give up on the answer: its connection is closed, :meth:`end` gets an error."""
        conn = self._conn
        if conn is not None and conn._sink is self:
            conn._fail(UpstreamReset("the request was cancelled"))


def retryable(error: BaseException, method: str) -> bool:
    """``error`` ended a request that may be sent again on a fresh connection
    (``Pool.send(..., fresh=True)``): a reused connection closed before any byte of the
    answer came, and the method is idempotent."""
    return isinstance(error, _Stale) and method in IDEMPOTENT


class _NoAnswer:
    """The protocol of the parser an unlinked connection keeps: it calls nothing back."""


_UNLINKED: Final = httptools.HttpResponseParser(_NoAnswer())


class UpstreamAnswer:
    """The head of an upstream's answer; its body is read with :meth:`read`.

    Call :meth:`release` when done (it is idempotent): the connection goes back to the pool
    when the body was read to the end, else it is closed.
    """

    __slots__ = (
        "_conn",
        "_headers",
        "head_block",
        "head_parts",
        "latency",
        "reason",
        "sent_at",
        "status",
        "trailers",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
        self.status = conn.status
        self.reason = conn.reason.decode("latin-1")
        self._headers = conn.headers  # (made when first asked for: headers)
        # The fields as bytes, as they came: names and values in turn.
        self.head_parts = conn.head_parts
        self.head_block = conn.head_block  # joined by newlines
        # The trailer fields (name, value), once the body was read to its end.
        self.trailers: list[tuple[str, str]] = conn.trailers
        # Seconds from the request's first byte written to the answer's last byte read,
        # once the body was read to its end (taken in the connection's callbacks).
        self.latency: float | None = conn.latency
        # perf_counter() when the request's first byte was written (its head then parsed).
        self.sent_at = conn.sent_at

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The header fields (made from ``head_block`` when first asked for)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = header_fields(self.head_block)
        return headers

    @property
    def at_eof(self) -> bool:
        """The whole body was read."""
        conn = self._conn
        return conn is None or (conn.state == _DONE and not conn.chunks)

    def read_nowait(self) -> bytes:
        """What of the body is here already (``b""`` when nothing is)."""
        conn = self._conn
        if conn is None:
            return b""
        data = conn.take()
        if not data and conn.error is not None:
            raise conn.error
        if conn.state == _DONE and not conn.chunks:
            self.release()
        return data

    async def read(self) -> bytes:
        """The next part of the body, ``b""`` at its end; raises ``UpstreamError``."""
        conn = self._conn
        if conn is None:
            return b""
        try:
            data = await conn.read()
        except BaseException:
            self.release()
            raise
        if conn.state == _DONE and not conn.chunks:
            self.release()
        return data

    async def discard(self, limit: int | None = None) -> bool:
        """Read the rest of the body without keeping it, to time its end: True when it
        ended within ``limit`` more bytes (default: the pool's ``max_discard_bytes``), and
        :attr:`latency` is then set; False past them (the answer stays untimed and its
        connection is closed). Releases the answer. Raises ``UpstreamError`` as
        :meth:`read` does (a body that breaks off or outlasts the deadline)."""
        conn = self._conn
        if conn is None:
            return self.latency is not None
        timed = False
        try:
            timed = await conn.discard(conn.pool.max_discard_bytes if limit is None else limit)
        finally:
            self.release()
            if not timed:
                self.latency = None
        return timed

    def release(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            if conn.state == _DONE:
                self.latency = conn.latency
            conn.pool._release(conn)

    def upgrade(self) -> tuple[asyncio.Transport, bytes] | None:
        """Take the connection of a 101 answer out of the pool for the upgraded protocol:
        its transport (give it a protocol of your own at once) and the bytes that came
        after the head. None when the connection is gone."""
        conn = self._conn
        if conn is None or self.status != 101:
            return None
        self._conn = None
        pool = conn.pool
        pool.size -= 1
        pool._wake_waiter()
        transport = conn.transport
        conn.transport = None
        data = b"".join(conn.chunks)
        conn.unlink()
        if transport is None or transport.is_closing():
            return None
        if conn._paused:
            transport.resume_reading()
        return transport, data


def _encode_head(method: str, target: str, host: str, headers: Iterable[tuple[str, str]]) -> str:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines.extend([f"{k}: {v}" for k, v in headers])
    text = "\r\n".join(lines)
    n = len(lines) - 1
    if text.count("\n") != n or text.count("\r") != n:
        raise UpstreamError("a header or the target carries a line break")
    return text


class Pool:
    """Keep-alive connections to one upstream (``http://`` or ``https://``)."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        authority: str,
        *,
        max_connections: int,
        connect_timeout: float,
        idle_timeout: float = 30.0,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_head_fields: int = MAX_HEAD_FIELDS,
        max_discard_bytes: int = MAX_DISCARD_BYTES,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.authority = authority
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_head_bytes = max_head_bytes
        self.max_head_fields = max_head_fields
        self.max_discard_bytes = max_discard_bytes
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if scheme == "https" else None
        )
        self._idle: list[_Connection] = []  # a stack: the last released is reused first
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self.size = 0  # open or opening connections
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"Pool({self.authority!r}, size={self.size}, idle={len(self._idle)})"

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def send(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
        *,
        limit: float,
        idle: bool,
        host: str | None = None,
        interim: Callable[[bytes], None] | None = None,
        fresh: bool = False,
    ) -> UpstreamAnswer:
        """Send a request and wait for the head of its answer.

        ``limit`` (seconds) bounds each wait for the upstream's bytes (``idle=True``) or the
        whole exchange up to the body's end (``idle=False``); the pool wait and the connect
        count. ``host``: the ``Host`` header (default: the upstream's authority).
        ``interim``: called with the bytes of each interim (1xx) head, as they come.
        ``fresh``: on a new connection, not retried (the retry of a request that a reused
        connection lost: ``retryable``).
        """
        loop = self.loop
        deadline = loop.time() + limit
        text = _encode_head(method, target, host or self.authority, headers)
        stream: AsyncIterable[bytes] | None = None
        chunked = False
        if body is None or isinstance(body, bytes | bytearray | memoryview):
            data = _request_bytes(method, text, body)
        else:
            stream = body
            chunked = not any(k.lower() == "content-length" for k, _ in headers)
            tail = "Transfer-Encoding: chunked\r\n\r\n" if chunked else "\r\n"
            data = f"{text}\r\n{tail}".encode("utf-8", "surrogateescape")
        head_only = method == "HEAD"
        retry = stream is None and method in IDEMPOTENT
        while True:
            conn = await self._acquire(deadline, fresh)
            try:
                if stream is None:
                    conn.start(data, head_only, limit, deadline, idle, interim)
                else:
                    conn.start(b"", head_only, limit, deadline, idle, interim)
                    await conn.write_body(data, stream, chunked)
                await conn.head()
            except _Stale:
                self._release(conn)
                if retry and not fresh:
                    fresh = True
                    continue
                raise
            except BaseException:
                self._release(conn)
                raise
            return UpstreamAnswer(conn)

    def send_nowait(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        sink: AnswerSink,
        *,
        limit: float,
        host: str | None = None,
    ) -> bool:
        """Send a request on an idle connection, if one is at hand, and hand its answer to
        ``sink`` in the connection's callbacks (no task waits for it); ``limit`` bounds the
        whole exchange, as ``send(..., idle=False)``. False: none was idle (or the pool is
        closed), nothing was sent: ``send`` it. Raises ``UpstreamError`` as ``send`` does for
        a head that cannot be sent."""
        if self._closed or not self._idle:
            return False
        text = _encode_head(method, target, host or self.authority, headers)
        data = _request_bytes(method, text, body)
        conn = self._idle_conn()
        if conn is None:
            return False
        conn._sink = sink
        conn._sink_headed = False
        sink._conn = conn
        conn.start(data, method == "HEAD", limit, self.loop.time() + limit, False)
        return True

    def _idle_conn(self) -> _Connection | None:
        """The idle connection released last that is still open, or None."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
            self._forget(conn)
        return None

    async def _acquire(self, deadline: float, fresh: bool) -> _Connection:
        if self._closed:
            raise UpstreamUnreachable("the pool is closed")
        if not fresh:
            conn = self._idle_conn()
            if conn is not None:
                return conn
        idle = self._idle
        if self.size >= self.max_connections:
            if fresh and idle:
                self._forget(idle.pop(0)).close()  # make room: the oldest idle one
            else:
                got = await self._wait_slot(deadline)
                if got is not None:
                    return got
        self.size += 1
        try:
            return await self._connect(deadline)
        except BaseException:
            self.size -= 1
            self._wake_waiter()
            raise

    async def _wait_slot(self, deadline: float) -> _Connection | None:
        """Wait for a released connection (returned) or a free slot (None)."""
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        timer = self.loop.call_at(deadline, _expire, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                got = waiter.result()  # handed over as we were cancelled: pass it on
                if got is not None:
                    self._release(got)
                else:
                    self._wake_waiter()
            raise
        finally:
            timer.cancel()
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

    async def _connect(self, deadline: float) -> _Connection:
        loop = self.loop
        limit = min(self.connect_timeout, deadline - loop.time())
        if limit <= 0:
            raise UpstreamTimeout("no connection in time")
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamTimeout(f"connect to {self.authority} timed out") from None
        except ssl.SSLError as exc:
            raise UpstreamError(f"TLS with {self.authority}: {exc}") from None
        except OSError as exc:
            raise UpstreamUnreachable(f"connect to {self.authority}: {exc}") from None
        return conn

    def _release(self, conn: _Connection) -> None:
        """A request is done with ``conn``: keep it (answer read, keep-alive) or close it."""
        if (
            conn.state == _DONE
            and conn.keep_alive
            and not conn.chunks
            and not self._closed
            and conn.transport is not None
            and not conn.transport.is_closing()
        ):
            conn.state = _IDLE
            conn.error = None
            conn.interim = None
            waiters = self._waiters
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    conn.idle_since = self.loop.time()
                    waiter.set_result(conn)
                    return
            conn.idle_since = self.loop.time()
            self._idle.append(conn)
            if self._sweeper is None:
                self._sweeper = self.loop.call_later(self.idle_timeout, self._sweep)
            return
        conn.close()
        self.size -= 1
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _forget(self, conn: _Connection) -> _Connection:
        self.size -= 1
        return conn

    def _drop_idle(self, conn: _Connection) -> None:
        """An idle connection was closed (or misbehaved): it leaves the pool."""
        try:
            self._idle.remove(conn)
        except ValueError:
            return
        conn.close()
        self.size -= 1
        self._wake_waiter()

    def _sweep(self) -> None:
        self._sweeper = None
        idle = self._idle
        cutoff = self.loop.time() - self.idle_timeout
        n = 0
        while n < len(idle) and idle[n].idle_since <= cutoff:
            n += 1
        if n:
            old = idle[:n]
            del idle[:n]
            for conn in old:
                conn.close()
            self.size -= n
        if idle:
            due = idle[0].idle_since + self.idle_timeout
            self._sweeper = self.loop.call_at(due, self._sweep)

    async def close(self) -> None:
        """Close every idle connection; busy ones close when they are released."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle = self._idle
        self._idle = []
        for conn in idle:
            conn.close()
        self.size -= len(idle)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamUnreachable("the pool is closed"))
        await asyncio.sleep(0)  # let the transports close


def _request_bytes(method: str, text: str, body: bytes | bytearray | memoryview | None) -> bytes:
    """The request's head (``text``: its line and fields) and its in-memory body."""
    if body:
        return f"{text}\r\nContent-Length: {len(body)}\r\n\r\n".encode(
            "utf-8", "surrogateescape"
        ) + bytes(body)
    if method in _BODYLESS:
        return f"{text}\r\n\r\n".encode("utf-8", "surrogateescape")
    return f"{text}\r\nContent-Length: 0\r\n\r\n".encode("utf-8", "surrogateescape")


def _expire(waiter: asyncio.Future[_Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("no free connection in time"))
