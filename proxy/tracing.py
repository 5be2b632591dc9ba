"""OpenTelemetry spans of the request path, whose trace id IS the exchange's trace id.

A server span per request, a child span for the forward and one per mirror. The server
span carries ``graygate.run`` (the run's name) and, when a configured ``compare.endpoints``
pattern matches the request, ``http.route`` (its path template, ``/api/orders/{id}``;
absent otherwise, never the raw path: ``proxy.route_match``); it is then named
``METHOD /template``, else ``METHOD``. Its trace id is the one in ``traceparent`` /
``X-Trace-ID`` and its span id is the proxy's span id from tagging (the parent-id sent
upstream): the ids are decided by tagging, and handed to the SDK through an id generator
that returns them for the one span being started (the event loop's thread starts every
span, so there is no race).

The ``TracerProvider`` belongs to the application (``tracing_ctx``), never to the global
API, and is shut down (flushed) on cleanup. With ``tracing.exporter: none`` no provider
exists and the request path skips spans altogether: the ids still exist, the cost does not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    set_span_in_context,
)

from config.schema import TracingConfig
from proxy.tagging import Tags

__all__ = ["TRACING_KEY", "Tracing", "tracing_ctx"]

logger = logging.getLogger(__name__)


class _PresetIds(IdGenerator):
    """Random ids, except for the one span whose ids were just set."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        value = self.trace_id
        if value:
            self.trace_id = 0
            return value
        return self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        value = self.span_id
        if value:
            self.span_id = 0
            return value
        return self._random.generate_span_id()

    def is_trace_id_random(self) -> bool:
        return False  # a trace id may come from the client


class Tracing:
    """The app's tracer, or nothing at all when ``enabled`` is false."""

    __slots__ = ("_ids", "_provider", "_run", "_tracer", "enabled")

    def __init__(
        self, cfg: TracingConfig, exporter: SpanExporter | None = None, *, run: str = ""
    ) -> None:
        """``exporter`` overrides ``cfg.exporter`` (and is flushed span by span): for tests
        and for embedding. ``run``: the run's name, on every server span."""
        self._ids = _PresetIds()
        self._run = run
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        self.enabled = False
        if exporter is not None:
            processor: Any = SimpleSpanProcessor(exporter)
        elif cfg.exporter == "console":
            processor = BatchSpanProcessor(ConsoleSpanExporter())
        elif cfg.exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=cfg.endpoint))
        else:
            return
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": cfg.service_name}),
            id_generator=self._ids,
        )
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("graygate.proxy")
        self.enabled = True

    def server_span(self, tags: Tags, method: str, path: str, route: str | None = None) -> Span:
        """Start the request's span: trace id and span id as tagging decided them;
        ``route``: the matched endpoint template (``http.route``), None when none matched."""
        assert self._tracer is not None
        if tags.parent_id is not None:
            parent = SpanContext(
                trace_id=int(tags.trace_id, 16),
                span_id=int(tags.parent_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(int(tags.flags, 16)),
            )
            context = set_span_in_context(NonRecordingSpan(parent), Context())
        else:
            context = Context()
        attributes = {"http.request.method": method, "url.path": path}
        if self._run:
            attributes["graygate.run"] = self._run
        name = method
        if route is not None:
            attributes["http.route"] = route
            name = f"{method} {route}"  # the semantic conventions' name for a server span
        ids = self._ids
        ids.trace_id = int(tags.trace_id, 16)
        ids.span_id = int(tags.span_id, 16)
        try:
            return self._tracer.start_span(
                name, context=context, kind=SpanKind.SERVER, attributes=attributes
            )
        finally:
            ids.trace_id = 0
            ids.span_id = 0

    def child_span(self, parent: Span, name: str, role: str) -> Span:
        """Start a client span (forward or mirror) under the request's span."""
        assert self._tracer is not None
        return self._tracer.start_span(
            name,
            context=set_span_in_context(parent, Context()),
            kind=SpanKind.CLIENT,
            attributes={"graygate.upstream": role},
        )

    @staticmethod
    def finish(span: Span, status: int | None, error: str | None = None) -> None:
        """End a span with the HTTP status it got, or the error kind in its place."""
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def shutdown(self) -> None:
        """Flush and stop the exporter (blocking: call it from a thread)."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
            self._tracer = None
            self.enabled = False


TRACING_KEY: web.AppKey[Tracing] = web.AppKey("graygate.proxy.tracing", Tracing)


def tracing_ctx(
    cfg: TracingConfig, exporter: SpanExporter | None = None, *, run: str = ""
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context: the app's :class:`Tracing` under ``TRACING_KEY``, shut down after."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tracing = Tracing(cfg, exporter, run=run)
        app[TRACING_KEY] = tracing
        yield
        await asyncio.to_thread(tracing.shutdown)

    return ctx
