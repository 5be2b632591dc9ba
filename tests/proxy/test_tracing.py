"""Tracing: spans whose trace id IS the exchange's; the provider belongs to the app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aiohttp import ClientSession
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from config.schema import GraygateConfig, TracingConfig
from proxy.app import make_proxy_app
from proxy.tagging import tag_request
from proxy.tracing import Tracing
from tests.proxy.harness import (
    Sink,
    closed_port,
    echo,
    handler_app,
    make_cfg,
    serve_app,
    serve_proxy,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


# --- harness: real servers on random loopback ports ------------------------------------


@asynccontextmanager
async def traced_proxy(cfg: GraygateConfig, sink: Sink) -> AsyncIterator[tuple[str, Exporter]]:
    exporter = Exporter()
    app = make_proxy_app(cfg, recorder=sink, run_id=1, span_exporter=exporter)
    async with serve_proxy(app) as url:
        yield url, exporter


class Exporter(InMemorySpanExporter):
    """The SDK's in-memory exporter, telling when spans arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.added = asyncio.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        self.added.set()
        return result


async def spans_for(exporter: Exporter, n: int) -> list[ReadableSpan]:
    async with asyncio.timeout(10):
        while len(exporter.get_finished_spans()) < n:
            exporter.added.clear()
            await exporter.added.wait()
    return list(exporter.get_finished_spans())


async def test_spans_carry_the_incoming_trace(client: ClientSession) -> None:
    sink = Sink()
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(echo)) as c,
        traced_proxy(make_cfg(p, c), sink) as (proxy, exporter),
    ):
        async with client.get(
            proxy + "/t", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}
        ) as resp:
            assert resp.headers["X-Trace-ID"] == TRACE
            seen = dict((k.lower(), v) for k, v in (await resp.json())["headers"])
        (rec,) = await sink.wait()
        spans = await spans_for(exporter, 3)
    by_name = {s.name: s for s in spans}
    server, fwd, mirror = by_name["GET"], by_name["forward"], by_name["mirror"]
    for span in spans:
        assert f"{span.context.trace_id:032x}" == TRACE
    assert server.kind == SpanKind.SERVER
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT
    # the proxy's span id is the parent-id sent upstream, and the exchange's span id
    own = f"{server.context.span_id:016x}"
    assert seen["traceparent"] == f"00-{TRACE}-{own}-01"
    assert rec.span_id == own
    assert fwd.parent is not None and fwd.parent.span_id == server.context.span_id
    assert mirror.parent is not None and mirror.parent.span_id == server.context.span_id
    assert fwd.kind == mirror.kind == SpanKind.CLIENT
    assert dict(fwd.attributes or {})["graygate.upstream"] == "primary"
    assert dict(mirror.attributes or {})["graygate.upstream"] == "canary"
    assert dict(server.attributes or {})["http.response.status_code"] == 200


async def test_new_trace_when_none_comes_in(client: ClientSession) -> None:
    sink = Sink()
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(echo)) as c,
        traced_proxy(make_cfg(p, c, mirror={"enabled": False}), sink) as (proxy, exporter),
    ):
        async with client.get(proxy + "/n") as resp:
            trace_id = resp.headers["X-Trace-ID"]
            seen = dict((k.lower(), v) for k, v in (await resp.json())["headers"])
        spans = await spans_for(exporter, 2)
    server = next(s for s in spans if s.name == "GET")
    assert server.parent is None
    assert f"{server.context.trace_id:032x}" == trace_id
    assert seen["traceparent"] == f"00-{trace_id}-{server.context.span_id:016x}-01"
    assert seen["x-trace-id"] == trace_id


async def test_failed_forward_span_has_error_status(client: ClientSession) -> None:
    sink = Sink()
    async with (
        serve_app(handler_app(echo)) as c,
        traced_proxy(
            make_cfg(f"http://127.0.0.1:{closed_port()}", c, mirror={"enabled": False}), sink
        ) as (proxy, exporter),
    ):
        async with client.get(proxy + "/e") as resp:
            assert resp.status == 502
        spans = await spans_for(exporter, 2)
    fwd = next(s for s in spans if s.name == "forward")
    assert dict(fwd.attributes or {})["error.type"] == "refused"
    server = next(s for s in spans if s.name == "GET")
    assert dict(server.attributes or {})["http.response.status_code"] == 502
    assert fwd.status.status_code == trace_api.StatusCode.ERROR


def test_exporter_none_is_disabled_and_not_global() -> None:
    before = trace_api.get_tracer_provider()
    tracing = Tracing(TracingConfig(exporter="none"))
    assert not tracing.enabled
    tracing.shutdown()
    assert trace_api.get_tracer_provider() is before


def test_console_exporter_builds_and_shuts_down() -> None:
    tracing = Tracing(TracingConfig(exporter="console", service_name="gg-test"))
    assert tracing.enabled
    tags = tag_request({}, "X-Gray-Tag")
    span = tracing.server_span(tags, "GET", "/x")
    assert f"{span.get_span_context().trace_id:032x}" == tags.trace_id
    assert f"{span.get_span_context().span_id:016x}" == tags.span_id
    Tracing.finish(span, 200)
    tracing.shutdown()
    assert not tracing.enabled


def test_otlp_exporter_builds() -> None:
    tracing = Tracing(TracingConfig(exporter="otlp", endpoint="http://127.0.0.1:4318/v1/traces"))
    assert tracing.enabled
    tracing.shutdown()


def test_ids_are_only_preset_for_the_server_span() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingConfig(), exporter)
    tags = tag_request({"traceparent": f"00-{TRACE}-{PARENT}-01"}, "X-Gray-Tag")
    server = tracing.server_span(tags, "GET", "/")
    child = tracing.child_span(server, "forward", "primary")
    assert child.get_span_context().span_id != server.get_span_context().span_id
    assert child.get_span_context().trace_id == int(TRACE, 16)
    other = tracing.server_span(tag_request({}, "X-Gray-Tag"), "GET", "/")
    assert other.get_span_context().trace_id != int(TRACE, 16)
    for span in (child, server, other):
        Tracing.finish(span, 200)
    tracing.shutdown()
    assert len(exporter.get_finished_spans()) == 3


async def test_server_span_carries_the_route_and_the_run(client: ClientSession) -> None:
    sink = Sink()
    cfg_extra = {
        "run": "traced-run-1",
        "compare": {
            "endpoints": [{"match": "GET /api/orders/{id}"}, {"match": "* /api/stock/{sku}"}]
        },
    }
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(echo)) as c,
        traced_proxy(make_cfg(p, c, mirror={"enabled": False}, **cfg_extra), sink) as (
            proxy,
            exporter,
        ),
    ):
        for target in ("/api/orders/1042", "/api/users/7", "/api/stock/A-1"):
            method = "PUT" if "stock" in target else "GET"
            async with client.request(method, proxy + target) as resp:
                assert resp.status == 200
        spans = await spans_for(exporter, 6)
    servers = {dict(s.attributes or {})["url.path"]: s for s in spans if s.kind == SpanKind.SERVER}
    order = dict(servers["/api/orders/1042"].attributes or {})
    assert order["http.route"] == "/api/orders/{id}"
    assert order["graygate.run"] == "traced-run-1"
    assert servers["/api/orders/1042"].name == "GET /api/orders/{id}"
    stock = dict(servers["/api/stock/A-1"].attributes or {})
    assert stock["http.route"] == "/api/stock/{sku}" and stock["http.request.method"] == "PUT"
    assert servers["/api/stock/A-1"].name == "PUT /api/stock/{sku}"
    # no template matches: no http.route (never the raw path); the run all the same
    users = dict(servers["/api/users/7"].attributes or {})
    assert "http.route" not in users
    assert users["graygate.run"] == "traced-run-1"
    assert servers["/api/users/7"].name == "GET"
