"""The proxied port's application: request path steps 1-6 in one handler.

``make_proxy_app(cfg, recorder=..., run_id=...)`` returns an ``aiohttp`` application that
owns the proxy's resources; it is served by the proxied port's own server,
``proxy.server.ProxyServer`` (its handler and bounds under ``SERVING_KEY``: :func:`serving`),
every request target (``OPTIONS *`` included) to one coroutine. What it owns, each in a
cleanup context, in this order (cleanup runs in reverse, so mirrors are drained before the
tracer and the pools go):

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

import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Final, Protocol, runtime_checkable

from aiohttp import web
from opentelemetry.sdk.trace.export import SpanExporter

from config.schema import GraygateConfig
from diff.endpoints import EndpointMatcher
from graygate.values import RecordedExchange
from graygate.vocabulary import ErrorKind, Role, SkipReason
from proxy.access_log import AccessLog
from proxy.capture import Capture
from proxy.client_answer import Answer
from proxy.exchange import Completion, Exchange
from proxy.forward import RequestBody, forward
from proxy.headers import (
    asks_upgrade,
    leaves_root,
    request_drop,
    split_target,
    upstream_headers,
)
from proxy.metrics import count_mirror_skip, observe_proxy_added, observe_upstream
from proxy.mirror import MIRROR_TASKS_KEY, SKIP_EJECTED, Mirror, mirror_tasks_ctx
from proxy.recording.building import RecordBuilder
from proxy.redact import Redactor
from proxy.route_match import RouteMatcher
from proxy.routing import (
    CANARY,
    PRIMARY,
    SKIP_BODY_TOO_LARGE,
    SKIP_METHOD,
    Router,
)
from proxy.server import SERVING_KEY, Body, ClientLimits, HeadLimits, Request, Serving
from proxy.tagging import tag_request
from proxy.tracing import TRACING_KEY, Tracing, tracing_ctx
from proxy.upstream_pools import UPSTREAMS_KEY, Upstream, upstreams_ctx

__all__ = [
    "PROXY_KEY",
    "ExchangeSink",
    "Proxy",
    "RecordSink",
    "make_proxy_app",
    "serving",
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
        self._shadow_primary: tuple[Upstream, ...] = ()
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
        self._shadow_primary = (ups[PRIMARY],)
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

    def _head_too_large(self, request: Request) -> Answer | None:
        """A 431 when the request's header fields total more than
        ``listen_limits.max_header_bytes`` (names and values), else None."""
        size = 0
        for name, value in request.raw_headers:
            size += len(name) + len(value)
        if size <= self._max_header_bytes:
            return None
        return Answer.text(
            431, f"request header fields total more than {self._max_header_bytes} bytes\n"
        )

    async def handle(self, request: Request) -> Answer:
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
            return Answer.text(400, "the path leaves the root\n")
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
            except ConnectionError:
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
                return Answer(400, body=b"")
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
        if skip is None:
            skip = self._mirror.try_start(done, self._targets[served_by], body, span)
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

    async def handle_shadow(self, request: Request) -> Answer:
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
            return Answer.text(400, "the path leaves the root\n")
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
            except ConnectionError:
                count_mirror_skip(SKIP_CLIENT_ABORTED)
                return Answer(400, body=b"")
        answer = Answer(202, body=b"")
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
        skipped = self._mirror.try_start(done, self._shadow_targets, body)
        if skipped == SKIP_EJECTED:
            # The canary is ejected: the primary is still asked and the exchange recorded
            # as skipped `ejected`, as inline mode records it, so that the errors check
            # counts how long the canary was broken (a skip nobody records hides it).
            count_mirror_skip(skipped)
            ex.mirror_skipped = skipped
            if self._mirror.try_start(done, self._shadow_primary, body) is None:
                done.served()
            return answer  # (the primary ejected or saturated too: nothing to record)
        if skipped is not None:
            count_mirror_skip(skipped)
            return answer
        done.served()  # nobody is served in shadow mode: recorded when all are in
        return answer

    async def _read_body(
        self, request: Request, ex: Exchange, out_headers: list[tuple[str, str]]
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


async def _stream(head: list[bytes], content: Body, copy: Capture) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    while chunk := await content.readany():
        copy.add(chunk)
        yield chunk


PROXY_KEY: web.AppKey[Proxy] = web.AppKey("graygate.proxy.proxy", Proxy)


def serving(cfg: GraygateConfig, proxy: Proxy) -> Serving:
    """How the proxied port's server (``proxy.server.ProxyServer``) serves the proxy: its
    handler (``handle``, or ``handle_shadow`` in shadow mode), the client bounds
    (``timeouts``, ``listen_limits.max_connections``) and the head's
    (``listen_limits``)."""
    limits = cfg.listen_limits
    timeouts = cfg.timeouts
    return Serving(
        proxy.handle_shadow if cfg.mode == "shadow" else proxy.handle,
        ClientLimits(
            header_s=timeouts.client_header_s,
            write_s=timeouts.client_write_s,
            keepalive_s=timeouts.keepalive_s,
            max_connections=limits.max_connections,
        ),
        HeadLimits(
            max_line=limits.max_line_bytes,
            max_field=limits.max_field_bytes,
            max_headers=limits.max_headers,
            max_header_bytes=limits.max_header_bytes,
        ),
    )


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
    app = web.Application()
    app[PROXY_KEY] = proxy
    app[SERVING_KEY] = serving(cfg, proxy)
    app.cleanup_ctx.append(upstreams_ctx(cfg.upstreams, cfg.mirror))
    app.cleanup_ctx.append(tracing_ctx(cfg.tracing, span_exporter, run=cfg.run))
    app.cleanup_ctx.append(mirror_tasks_ctx(cfg.mirror.timeout_ms / 1000 + 1.0))
    app.cleanup_ctx.append(proxy.ctx)
    return app
