"""The proxied port's application: request path steps 1-6 in one handler.

``make_proxy_app(cfg, recorder=..., run_id=...)`` returns an ``aiohttp`` application with
one resource for every request target (``OPTIONS *`` included) and no middleware (the hot
path is one coroutine). Its request parser's settings travel with it (``handler_args``:
bodies as sent, ``listen_limits``); serve it with :class:`ProxyRunner` for 414/431. What it owns,
each in a cleanup context, in this order (cleanup runs in reverse, so mirrors are drained
before the tracer and the pools go):

1. ``UPSTREAMS_KEY``: one connection ``Pool`` per upstream (``proxy.upstream_pools``)
2. ``TRACING_KEY``: the ``TracerProvider``, or nothing (``proxy.tracing``)
3. ``MIRROR_TASKS_KEY``: the mirrors' ``TaskSet``, drained on cleanup (``proxy.mirror``)
4. the proxy itself (``PROXY_KEY``), bound to the above on startup (and, unless
   ``tune_gc=False``, the garbage collector tuned while it serves; see ``_GC_THRESHOLD``)

Per request: tag (trace ids, gray label), route (who serves, is it mirrored), read the body
up to ``mirror.max_body_bytes`` (beyond: streamed, not mirrored), spawn the mirror, forward
to the serving side streaming its answer, then record the exchange: once, when both the
serving side and the mirror are done (``proxy.exchange.Completion``: from the handler or
from the mirror's task, whichever ends last). Decoding, redaction and building the record
happen after the serving side is done: in the record writer process when the recorder is
an ``ExchangeSink`` (``graygate serve``), else here.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol, cast, runtime_checkable

from aiohttp import ClientError, web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_urldispatcher import AbstractResource, ResourceRoute, UrlMappingMatchInfo
from opentelemetry.sdk.trace.export import SpanExporter
from yarl import URL

from config.schema import GraygateConfig
from diff.endpoints import EndpointMatcher
from graygate.values import RecordedExchange
from graygate.vocabulary import ErrorKind, Role, SkipReason
from proxy.access_log import AccessLog
from proxy.capture import Capture
from proxy.error_mapping import ClientStalled
from proxy.exchange import Completion, Exchange
from proxy.forward import RequestBody, forward
from proxy.headers import (
    asks_upgrade,
    leaves_root,
    request_drop,
    split_target,
    upstream_headers,
)
from proxy.metrics import (
    CLIENT_CONNECTIONS,
    count_client_closed,
    count_mirror_skip,
    observe_proxy_added,
    observe_upstream,
)
from proxy.mirror import MIRROR_TASKS_KEY, Mirror, mirror_tasks_ctx
from proxy.recording.building import RecordBuilder
from proxy.redact import Redactor
from proxy.route_match import RouteMatcher
from proxy.routing import (
    CANARY,
    PRIMARY,
    SKIP_BODY_TOO_LARGE,
    SKIP_METHOD,
    SKIP_SATURATED,
    Router,
)
from proxy.tagging import tag_request
from proxy.tracing import TRACING_KEY, Tracing, tracing_ctx
from proxy.upstream_pools import UPSTREAMS_KEY, Upstream, upstreams_ctx

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import _InfoDict

__all__ = [
    "CLIENT_LIMITS_KEY",
    "PROXY_KEY",
    "ClientLimits",
    "ExchangeSink",
    "Proxy",
    "ProxyRunner",
    "RecordSink",
    "make_proxy_app",
    "server_settings",
    "strip_shadow_suffix",
]

logger = logging.getLogger(__name__)


# Every request allocates a few hundred container objects (aiohttp's requests, responses,
# tasks, futures; the record) that die young. With CPython's default threshold (700) the
# collector runs every few requests and rescans what startup left behind: a quarter of the
# proxy's CPU time in the benchmark. While the proxy serves, what exists at startup is
# frozen out of collection and the young generation is collected every 50 000 allocations;
# the older generations keep CPython's ratios (10, 10: a full collection every 5 million
# allocations, some 10 000 requests). It was (50, 100): a full collection almost never,
# and what a reference cycle held (a timed-out mirror's captured body) stayed. The
# request path leaves no cycles behind (``proxy.upstream._Connection.unlink``, tracebacks
# dropped where upstream errors are caught); the collector is the backstop.
_GC_THRESHOLD: Final = (50_000, 10, 10)

SKIP_UPGRADE: Final = SkipReason.UPGRADE_NOT_MIRRORED
SKIP_CLIENT_ABORTED: Final = SkipReason.CLIENT_ABORTED  # the client broke off its request body
SKIP_METHOD_NOT_MIRRORED: Final = SkipReason.METHOD_NOT_MIRRORED  # shadow mode: not fanned out
_SHADOW_SUFFIX: Final = "-shadow"


def strip_shadow_suffix(host: str | None) -> str | None:
    """``Host``/authority without the ``-shadow`` that Envoy appends to a mirrored request's
    (``orders.svc-shadow`` and ``orders.svc-shadow:8080`` are ``orders.svc`` and
    ``orders.svc:8080``); any other host as it is."""
    if not host:
        return host
    name, port = host, ""
    head, colon, tail = host.rpartition(":")
    if colon and tail.isdigit() and (":" not in head or head.endswith("]")):
        name, port = head, ":" + tail
    if name.endswith(_SHADOW_SUFFIX) and len(name) > len(_SHADOW_SUFFIX):
        return name[: -len(_SHADOW_SUFFIX)] + port
    return host


class RecordSink(Protocol):
    """What the proxy hands records to, built on its own loop (``proxy.recorder.Recorder``
    in-process: tests, embedding)."""

    def submit(self, record: RecordedExchange) -> bool:
        """Queue ``record`` without blocking; False when it was dropped (and counted)."""
        ...


@runtime_checkable
class ExchangeSink(Protocol):
    """What the proxy hands finished exchanges to, unbuilt: their records are built
    elsewhere (``proxy.recording.link.WriterLink``: in the record writer process)."""

    def hand_over(self, ex: Exchange) -> bool:
        """Queue ``ex`` without blocking; False when it was dropped (and counted)."""
        ...


class Proxy:
    """The request handler and what it needs; bound to the app's resources on startup."""

    def __init__(
        self,
        cfg: GraygateConfig,
        *,
        recorder: RecordSink | ExchangeSink | None,
        run_id: int,
        tune_gc: bool = True,
    ) -> None:
        self._tune_gc = tune_gc
        self._router = Router(cfg.gray, cfg.mirror)
        self._builder = RecordBuilder.from_config(cfg, run_id)
        self._routes = RouteMatcher(
            EndpointMatcher([e.match for e in cfg.compare.endpoints]), cfg.metrics.max_endpoints
        )
        self._access_log = AccessLog(Redactor(cfg.redact)) if cfg.log.access else None
        self._gray_header = cfg.gray.header
        self._drop = request_drop(cfg.gray.header)
        self._trusted = cfg.trusted_proxies
        self._mirror_max_body = cfg.mirror.max_body_bytes
        self._max_in_flight = cfg.mirror.max_in_flight
        self._record_limit = cfg.record.max_body_bytes
        self._max_header_bytes = cfg.listen_limits.max_header_bytes
        self._recorder: RecordSink | None = None
        self._hand_over: Callable[[Exchange], bool] | None = None
        if isinstance(recorder, ExchangeSink):
            self._hand_over = recorder.hand_over
        else:
            self._recorder = recorder
        # Bound on startup (ctx).
        self._upstreams: dict[str, Upstream] = {}
        self._prefixed = False
        self._targets: dict[str, tuple[Upstream, ...]] = {}
        self._shadow_targets: tuple[Upstream, ...] = ()
        self._tracing: Tracing | None = None
        self._mirror: Mirror | None = None

    @property
    def mirror(self) -> Mirror:
        assert self._mirror is not None, "the proxy app is not started"
        return self._mirror

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: bind to the pools, tracer, task set (and recorder); tune the
        garbage collector while serving (``tune_gc``)."""
        if self._recorder is None and self._hand_over is None:
            from proxy.recorder import RECORDER_KEY

            if RECORDER_KEY not in app:
                raise RuntimeError(
                    "make_proxy_app(recorder=None) needs recorder_ctx in the app's "
                    "cleanup_ctx before the proxy's (app.cleanup_ctx.insert(0, ...))"
                )
            self._recorder = app[RECORDER_KEY]
        ups = app[UPSTREAMS_KEY]
        self._upstreams = ups
        self._prefixed = any(up.prefixed for up in ups.values())
        secondary = (ups[Role.SECONDARY],) if Role.SECONDARY in ups else ()
        self._targets = {
            PRIMARY: (ups[CANARY], *secondary),
            CANARY: (ups[PRIMARY], *secondary),
        }
        self._shadow_targets = (ups[PRIMARY], ups[CANARY], *secondary)
        self._tracing = app[TRACING_KEY]
        self._mirror = Mirror(
            app[MIRROR_TASKS_KEY],
            max_in_flight=self._max_in_flight,
            record_limit=self._record_limit,
            tracing=self._tracing,
        )
        if not self._tune_gc:
            yield
            return
        saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(*(max(a, b) for a, b in zip(saved, _GC_THRESHOLD, strict=True)))
        try:
            yield
        finally:
            gc.set_threshold(*saved)
            gc.unfreeze()

    def _head_too_large(self, request: web.Request) -> web.Response | None:
        """A 431 when the request's header fields total more than
        ``listen_limits.max_header_bytes`` (names and values), else None."""
        size = 0
        for name, value in request.raw_headers:
            size += len(name) + len(value)
        if size <= self._max_header_bytes:
            return None
        return web.Response(
            status=431,
            text=f"request header fields total more than {self._max_header_bytes} bytes\n",
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        received = time.time()
        began = time.perf_counter()  # for graygate_proxy_added_seconds
        headers = request.headers
        too_large = self._head_too_large(request)
        if too_large is not None:
            return too_large
        tags = tag_request(headers, self._gray_header)
        trace_id = tags.trace_id
        router = self._router
        served_by = router.serving_side(headers, tags.label, trace_id)
        label = router.label_for(tags.label, served_by)
        method = request.method
        path, query = split_target(request)
        if self._prefixed and leaves_root(path):
            # With a base path (primary: http://host/api), "/../internal" would leave it.
            return web.Response(status=400, text="the path leaves the root\n")
        skip = router.mirror_skip(method, trace_id)
        if skip is None and asks_upgrade(request) is not None:
            skip = SKIP_UPGRADE  # a tunnel is not mirrored; its handshake is recorded
        out_headers = upstream_headers(
            request, tags, self._gray_header, label, self._drop, trusted=self._trusted
        )
        ex = Exchange(
            received_at=received,
            tags=tags,
            label=label,
            method=method,
            path=path,
            query=query,
            headers=out_headers,
            served_by=served_by,
            host=headers.get("Host"),
            route=self._routes.route(method, path),
        )
        done = Completion(ex, self._finish)
        body: bytes | None = None
        data: RequestBody = None
        if request.body_exists:
            try:
                reading = time.perf_counter()
                body, stream = await self._read_body(request, ex, out_headers)
                began += time.perf_counter() - reading  # the client's pace, not graygate's
            except (ConnectionError, ClientError, HttpProcessingError):
                # The client went away (or broke off its body): nobody reads this answer,
                # and no upstream was asked; the exchange is recorded as what happened.
                gone = Capture(self._record_limit)
                gone.error = ErrorKind.RESET
                gone.client_gone = True
                ex.captures[served_by] = gone
                if ex.request is not None:
                    ex.request.truncated = True
                ex.mirror_skipped = SKIP_CLIENT_ABORTED
                done.served()  # no mirror was started: recorded now
                return web.Response(status=400)
            if stream is not None:
                data = stream
                if skip is None:
                    skip = SKIP_BODY_TOO_LARGE
            else:
                data = body

        tracing = self._tracing
        assert tracing is not None and self._mirror is not None
        span = fspan = None
        if tracing.enabled:
            span = tracing.server_span(tags, method, path, ex.route.template)
            fspan = tracing.child_span(span, "forward", served_by)
        if skip is None and not self._mirror.try_start(done, self._targets[served_by], body, span):
            skip = SKIP_SATURATED
        if skip is not None:
            ex.mirror_skipped = skip
            count_mirror_skip(skip)

        upstream = self._upstreams[served_by]
        cap = Capture(self._record_limit)
        try:
            return await forward(
                request, upstream, upstream.target(path, query), out_headers, data, trace_id, cap
            )
        finally:
            if cap.status is None and cap.error is None:
                cap.error = ErrorKind.ERROR  # cancelled before an answer
            ex.captures[served_by] = cap
            ex.answered_at = time.time()
            observe_upstream(
                served_by,
                "serve",
                ex.route.endpoint,
                cap.error or cap.status or ErrorKind.ERROR,
                cap.latency if cap.error is None else None,
            )
            observe_proxy_added(began, cap.head_sent, cap.upstream_head)
            if span is not None and fspan is not None:
                Tracing.finish(fspan, cap.status, cap.error)
                client_status = cap.status
                if client_status is None:
                    client_status = 504 if cap.error == ErrorKind.TIMEOUT else 502
                Tracing.finish(span, client_status, cap.error)
            done.served()

    async def handle_shadow(self, request: web.Request) -> web.StreamResponse:
        """Shadow mode: ``request`` is a mirrored copy (nginx ``mirror``, Envoy/Istio). It is
        answered 202 at once, before anything else is asked (the mirror source never waits
        on graygate); then graygate itself sends it to the primary, the canary (and the
        secondary) at once, through the mirror (bounded by ``mirror.max_in_flight`` and
        ``mirror.timeout_ms``), and records the exchange as inline mode does, the primary's
        answer as the served side. A method not in the mirrored ones, a body over
        ``mirror.max_body_bytes``, a full mirror: answered, counted, not sent."""
        received = time.time()
        headers = request.headers
        too_large = self._head_too_large(request)
        if too_large is not None:
            return too_large
        tags = tag_request(headers, self._gray_header)
        method = request.method
        path, query = split_target(request)
        if self._prefixed and leaves_root(path):
            return web.Response(status=400, text="the path leaves the root\n")
        skip = self._router.mirror_skip(method, tags.trace_id)
        if skip == SKIP_METHOD:
            skip = SKIP_METHOD_NOT_MIRRORED
        elif skip is None and asks_upgrade(request) is not None:
            skip = SKIP_UPGRADE
        body: bytes | None = None
        if skip is None and request.body_exists:
            length = request.content_length
            limit = self._mirror_max_body
            try:
                if length is not None and length > limit:
                    skip = SKIP_BODY_TOO_LARGE
                else:
                    body = await request.content.read(limit + 1)
                    while len(body) <= limit and not request.content.at_eof():
                        more = await request.content.read(limit + 1 - len(body))
                        if not more:
                            break
                        body += more
                    if len(body) > limit:
                        skip, body = SKIP_BODY_TOO_LARGE, None
            except (ConnectionError, ClientError, HttpProcessingError):
                count_mirror_skip(SKIP_CLIENT_ABORTED)
                return web.Response(status=400)
        answer = web.Response(status=202)
        await answer.prepare(request)
        await answer.write_eof()  # the mirror source has its answer: now fan out
        if skip is not None:
            count_mirror_skip(skip)
            return answer
        label = self._router.label_for(tags.label, PRIMARY)
        out_headers = upstream_headers(
            request, tags, self._gray_header, label, self._drop, trusted=self._trusted
        )
        ex = Exchange(
            received_at=received,
            tags=tags,
            label=label,
            method=method,
            path=path,
            query=query,
            headers=out_headers,
            served_by=PRIMARY,
            host=strip_shadow_suffix(headers.get("Host")),
            route=self._routes.route(method, path),
        )
        if body is not None:
            ex.request_encoding = headers.get("Content-Encoding")
            ex.request_type = headers.get("Content-Type")
            ex.request = Capture(self._record_limit)
            ex.request.add(body)
        assert self._mirror is not None
        done = Completion(ex, self._finish)
        if not self._mirror.try_start(done, self._shadow_targets, body):
            count_mirror_skip(SKIP_SATURATED)
            return answer
        done.served()  # nobody is served in shadow mode: recorded when all are in
        return answer

    async def _read_body(
        self, request: web.Request, ex: Exchange, out_headers: list[tuple[str, str]]
    ) -> tuple[bytes | None, AsyncIterator[bytes] | None]:
        """The whole body when it fits ``mirror.max_body_bytes``; else a stream of it (what
        was read already, then the rest). A bounded copy goes to ``ex.request``."""
        headers = request.headers
        ex.request_encoding = headers.get("Content-Encoding")
        ex.request_type = headers.get("Content-Type")
        copy = ex.request = Capture(self._record_limit)
        content = request.content
        limit = self._mirror_max_body
        length = request.content_length
        if length is not None and length <= limit:
            body = await content.read()
            copy.add(body)
            return body, None
        chunks: list[bytes] = []
        if length is None:  # chunked: read on while it fits
            size = 0
            while True:
                chunk = await content.readany()
                if not chunk:
                    body = b"".join(chunks)
                    copy.add(body)
                    return body, None
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    break
        else:
            out_headers.append(("Content-Length", str(length)))
        for chunk in chunks:
            copy.add(chunk)
        return None, _stream(chunks, content, copy)

    def _finish(self, ex: Exchange) -> None:
        """Hand the exchange to the record writer (or build its record and hand that to
        an in-process recorder); its ``Completion`` calls this once. Write its access log
        line when the log is on."""
        if self._access_log is not None:
            try:
                self._access_log.write(ex)
            except Exception:
                logger.exception("cannot write the access log line of %s", ex.tags.trace_id)
        hand_over = self._hand_over
        if hand_over is not None:
            try:
                hand_over(ex)  # a refusal is counted by the link
            except Exception:
                logger.exception("the record writer refused exchange %s", ex.tags.trace_id)
            return
        try:
            record = self._builder.build(ex)
        except Exception:
            logger.exception("cannot build the record of exchange %s", ex.tags.trace_id)
            return
        recorder = self._recorder
        assert recorder is not None
        try:
            recorder.submit(record)  # a refusal is counted by the recorder
        except Exception:
            logger.exception("the recorder refused exchange %s", ex.tags.trace_id)


async def _stream(head: list[bytes], content: StreamReader, copy: Capture) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    while chunk := await content.readany():
        copy.add(chunk)
        yield chunk


PROXY_KEY: web.AppKey[Proxy] = web.AppKey("graygate.proxy.proxy", Proxy)


def server_settings(cfg: GraygateConfig) -> dict[str, Any]:
    """The keyword arguments of the proxied port's ``web.AppRunner`` (its request parser).

    ``auto_decompress=False``: the upstreams get the body's bytes as the client sent them
    (aiohttp would otherwise inflate a ``Content-Encoding: gzip`` body and hand on the
    inflated bytes under the same label: bodies past ``mirror.max_body_bytes``, bombs, and
    a second request smuggled in the inflated bytes). ``keepalive_timeout``: an idle
    connection (or a new one that sends nothing) is closed after ``timeouts.keepalive_s``
    (aiohttp's default is an hour). Serving the proxy app without these settings is a bug.
    """
    limits = cfg.listen_limits
    return {
        "auto_decompress": False,
        "max_line_size": limits.max_line_bytes,
        "max_field_size": limits.max_field_bytes,
        "max_headers": limits.max_headers,
        "keepalive_timeout": cfg.timeouts.keepalive_s,
    }


class ClientLimits:
    """The proxied port's bounds on its clients, shared by the connections of one server:
    the head's time (``timeouts.client_header_s``), each wait to hand an answer's bytes to
    the client (``timeouts.client_write_s``) and the number of open connections
    (``listen_limits.max_connections``: at the cap, the connection idle the longest is
    closed for the new one; with none idle, the new one is closed). What it closes is
    counted (``graygate_client_closed_total{reason}``)."""

    __slots__ = ("header_s", "live", "max_connections", "write_s")

    def __init__(self, *, header_s: float, write_s: float, max_connections: int) -> None:
        self.header_s = header_s
        self.write_s = write_s
        self.max_connections = max_connections
        self.live: dict[_RequestHandler, None] = {}  # open client connections

    @classmethod
    def from_config(cls, cfg: GraygateConfig) -> ClientLimits:
        return cls(
            header_s=cfg.timeouts.client_header_s,
            write_s=cfg.timeouts.client_write_s,
            max_connections=cfg.listen_limits.max_connections,
        )

    def opened(self, conn: _RequestHandler) -> bool:
        """A new connection: False when it must be closed (the cap, none idle)."""
        live = self.live
        if len(live) >= self.max_connections:
            oldest: _RequestHandler | None = None
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

    def closed(self, conn: _RequestHandler) -> None:
        if self.live.pop(conn, 0) is None:
            CLIENT_CONNECTIONS.dec()


class _RequestHandler(RequestHandler):
    """aiohttp's connection handler, with the proxied port's bounds (:class:`ClientLimits`),
    answering a head over the limits with 414 (target) or 431 (header fields), as RFC 9110
    and RFC 6585 say, rather than 400."""

    def __init__(self, manager: web.Server, *, limits: ClientLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0  # requests parsed when the head timer was armed
        self.active_at = 0.0  # when the last request was parsed (or the connection made)
        self.stalled = False  # cut off: it took no bytes of its answer in time

    @property
    def idle(self) -> bool:
        """Waiting for a request (none parsed and unanswered): may be closed for another."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def abort(self) -> None:
        """Close at once, dropping what is buffered for the client."""
        transport = self.transport
        if transport is not None:
            transport.abort()
        self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.active_at = self._loop.time()
        if not self._limits.opened(self):
            cast(
                asyncio.Transport, transport
            ).abort()  # connection_lost follows; no request is read
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._limits.closed(self)
        timer = self._head_timer
        if timer is not None:
            timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        if self._head_timer is None and (self.idle or count == 0) and data:
            # The first bytes of a head: it has timeouts.client_header_s to be complete.
            self._head_count = count
            self._head_timer = self._loop.call_later(self._limits.header_s, self._head_late)
        super().data_received(data)
        if self._request_count != count:
            self.active_at = self._loop.time()
            timer = self._head_timer
            if timer is not None:
                timer.cancel()
                self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._request_count == self._head_count and self.transport is not None:
            count_client_closed("header_timeout")
            self.abort()

    async def _drain_helper(self) -> None:
        # The one place a write to the client waits: bounded by timeouts.client_write_s.
        if self.transport is None or not self._paused:
            return await super()._drain_helper()
        try:
            async with asyncio.timeout(self._limits.write_s):
                await super()._drain_helper()
        except TimeoutError:
            self.stalled = True
            count_client_closed("stalled")
            self.abort()
            raise ClientStalled(
                f"the client took no bytes for {self._limits.write_s:g} s"
            ) from None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 400 and exc is not None:
            status = _limit_status(exc, self.max_line_size, self.max_field_size) or status
        return super().handle_error(request, status, exc, message)


def _limit_status(exc: BaseException, max_line: int, max_field: int) -> int | None:
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == max_line and limit != max_field:
            return 414
        if limit == max_field and limit != max_line:
            return 431
        line = exc.args[0] if exc.args else b""
        # Equal limits: a request target starts with "/", "*" or a scheme.
        if isinstance(line, bytes) and (line[:1] in (b"/", b"*") or line[:4] == b"http"):
            return 414
        return 431
    if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
        return 431
    return None


class _Server(web.Server):
    limits: ClientLimits

    def __call__(self) -> RequestHandler:
        return _RequestHandler(self, loop=self._loop, limits=self.limits, **self._kwargs)


CLIENT_LIMITS_KEY: web.AppKey[ClientLimits] = web.AppKey(
    "graygate.proxy.client_limits", ClientLimits
)


class ProxyRunner(web.AppRunner):
    """The ``web.AppRunner`` of the proxied port: over-limit heads get 414 / 431, and its
    connections are bounded by the app's :class:`ClientLimits` (``CLIENT_LIMITS_KEY``)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        limits = self.app.get(CLIENT_LIMITS_KEY)
        if limits is None:
            raise RuntimeError("ProxyRunner serves the app of make_proxy_app only")
        cast(_Server, server).limits = limits
        return server


def make_proxy_app(
    cfg: GraygateConfig,
    *,
    recorder: RecordSink | ExchangeSink | None,
    run_id: int,
    span_exporter: SpanExporter | None = None,
    tune_gc: bool = True,
) -> web.Application:
    """The proxied port's application.

    ``recorder``: where exchanges go: an ``ExchangeSink`` (``hand_over(exchange) -> bool``:
    ``graygate serve``'s record writer process, ``proxy.recording.link``) takes them as they
    are; a ``RecordSink`` (``submit(record) -> bool``: a ``Recorder`` in this process, tests,
    embedding) takes the records built here. ``None``
    takes ``app[proxy.recorder.RECORDER_KEY]`` on startup: then put ``recorder_ctx`` first
    (``app.cleanup_ctx.insert(0, recorder_ctx(...))``), so that it starts before the proxy
    and stops after the mirrors are drained. ``span_exporter`` overrides
    ``cfg.tracing.exporter`` (tests, embedding). ``tune_gc``: while the app runs, freeze
    the startup heap out of the garbage collector and collect the young generation less
    often (process-wide; restored on cleanup).
    """
    proxy = Proxy(cfg, recorder=recorder, run_id=run_id, tune_gc=tune_gc)
    # The request parser's settings travel with the app, whatever runner serves it.
    app = web.Application(handler_args=server_settings(cfg))
    app[PROXY_KEY] = proxy
    app[CLIENT_LIMITS_KEY] = ClientLimits.from_config(cfg)
    app.cleanup_ctx.append(upstreams_ctx(cfg.upstreams, cfg.mirror))
    app.cleanup_ctx.append(tracing_ctx(cfg.tracing, span_exporter, run=cfg.run))
    app.cleanup_ctx.append(mirror_tasks_ctx(cfg.mirror.timeout_ms / 1000 + 1.0))
    app.cleanup_ctx.append(proxy.ctx)
    handler = proxy.handle_shadow if cfg.mode == "shadow" else proxy.handle
    app.router.register_resource(_EveryTarget(handler))
    return app


class _EveryTarget(AbstractResource):
    """The proxy's one resource: every request target, in any form (origin, absolute, and
    the asterisk form of ``OPTIONS *``, which a path pattern cannot match)."""

    def __init__(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        super().__init__()
        self._route = ResourceRoute("*", handler, self)

    @property
    def canonical(self) -> str:
        return "/"  # indexed at the root: every lookup ends there

    def url_for(self, **kwargs: str) -> URL:
        return URL("/")

    async def resolve(self, request: web.Request) -> tuple[UrlMappingMatchInfo, set[str]]:
        return UrlMappingMatchInfo({}, self._route), set()

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the proxy's resource takes no prefix")

    def get_info(self) -> _InfoDict:
        return {}

    def raw_match(self, path: str) -> bool:
        return True

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[ResourceRoute]:
        return iter((self._route,))
