"""Mirroring: in the background, bounded, marked, recorded once with both answers.

Real aiohttp upstreams on loopback, a real client. "The client is not delayed" is shown by
events (the canary cannot answer before the test lets it, which it does only after the
client got its response), never by timing thresholds.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Sequence
from pathlib import Path

import orjson
import sqlalchemy as sa
from aiohttp import ClientSession, web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.app import make_proxy_app
from proxy.mirror import MIRROR_TASKS_KEY
from proxy.recorder import recorder_ctx
from store.runs import ensure_run
from store.tables import exchanges
from tests.proxy.harness import (
    Handler,
    Sink,
    closed_port,
    echo,
    handler_app,
    make_cfg,
    proxy_for,
    serve_app,
    serve_proxy,
)

# --- harness: real servers on random loopback ports ------------------------------------


class Recording:
    """An upstream that records what it was sent, and can be held until released."""

    def __init__(self, role: str, *, hold: bool = False, body: bytes | None = None) -> None:
        self.role = role
        self.seen: list[tuple[str, dict[str, list[str]], bytes]] = []
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.body = body

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers: dict[str, list[str]] = {}
        for k, v in request.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        self.seen.append((request.raw_path, headers, body))
        self.arrived.set()
        await self.release.wait()
        if self.body is not None:
            return web.Response(
                body=self.body,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
        return web.json_response({"role": self.role, "path": request.path})


def skipped(reason: str) -> float:
    return REGISTRY.get_sample_value("graygate_mirror_skipped_total", {"reason": reason}) or 0.0


async def test_both_answers_recorded_once_under_one_trace_id(client: ClientSession) -> None:
    primary, canary = Recording("primary"), Recording("canary")
    sink = Sink()
    async with (
        serve_app(handler_app(primary.handle)) as p,
        serve_app(handler_app(canary.handle)) as c,
        proxy_for(make_cfg(p, c), sink) as proxy,
    ):
        async with client.get(proxy + "/api/orders/1042?v=1", headers={"X-Gray-Tag": "blue"}) as r:
            assert (await r.json())["role"] == "primary"
            trace_id = r.headers["X-Trace-ID"]
        (rec,) = await sink.wait()
        await asyncio.sleep(0.05)
        assert len(sink.records) == 1  # once
    assert rec.trace_id == trace_id
    assert rec.run_id == 7
    assert rec.endpoint == "GET /api/orders/{id}"
    assert (rec.method, rec.path, rec.query) == ("GET", "/api/orders/1042", "v=1")
    assert rec.served_by == "primary" and rec.mirror_skipped is None
    assert rec.gray_label == "blue"
    assert rec.primary is not None and rec.canary is not None
    assert orjson.loads(rec.primary.body or b"")["role"] == "primary"
    assert orjson.loads(rec.canary.body or b"")["role"] == "canary"
    assert rec.primary.latency_ms is not None and rec.canary.latency_ms is not None
    assert rec.secondary is None
    (_, p_headers, _), (_, c_headers, _) = primary.seen[0], canary.seen[0]
    assert "x-gray-shadow" not in p_headers
    assert c_headers["x-gray-shadow"] == ["1"]
    for headers in (p_headers, c_headers):
        assert headers["x-trace-id"] == [trace_id]
        assert headers["traceparent"][0].split("-")[1] == trace_id
        assert headers["x-gray-tag"] == ["blue"]
    assert p_headers["traceparent"] == c_headers["traceparent"]


async def test_slow_canary_does_not_delay_the_client(client: ClientSession) -> None:
    canary = Recording("canary", hold=True)
    sink = Sink()
    try:
        async with (
            serve_app(handler_app(echo)) as p,
            serve_app(handler_app(canary.handle)) as c,
            proxy_for(make_cfg(p, c, mirror={"timeout_ms": 60_000}), sink) as proxy,
        ):
            async with client.get(proxy + "/slow-canary") as resp:
                assert resp.status == 200
                await resp.read()
            # The client is answered while the canary is still held: nothing recorded yet.
            await canary.arrived.wait()
            assert not canary.release.is_set()
            assert sink.records == []
            canary.release.set()
            (rec,) = await sink.wait()
            assert rec.canary is not None and rec.canary.status == 200
    finally:
        canary.release.set()


class MirrorEnded(InMemorySpanExporter):
    """Spans as they end (tracing on); ``mirrored`` is set when a mirror's span ends, the
    last thing its task does before it ends the mirror."""

    def __init__(self) -> None:
        super().__init__()
        self.mirrored = asyncio.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if any(s.name == "mirror" for s in spans):
            self.mirrored.set()
        return super().export(spans)


async def test_mirror_done_first_is_recorded_when_the_client_is_served(
    client: ClientSession,
) -> None:
    """The mirror ends while the primary still holds the client's answer: nothing is
    recorded until the serving side ends, then the exchange is, once, with both sides."""
    sink = Sink()
    exporter = MirrorEnded()
    seen_while_serving: list[int] = []

    async def primary(request: web.Request) -> web.Response:
        # The upstreams share the proxy's event loop: once the mirror's span has ended,
        # its task ends the mirror before this handler runs on.
        async with asyncio.timeout(10):
            await exporter.mirrored.wait()
        seen_while_serving.append(len(sink.records))
        return web.json_response({"role": "primary"})

    canary = Recording("canary")
    async with (
        serve_app(handler_app(primary)) as p,
        serve_app(handler_app(canary.handle)) as c,
    ):
        cfg = make_cfg(p, c)
        app = make_proxy_app(cfg, recorder=sink, run_id=7, span_exporter=exporter)
        async with serve_proxy(app) as proxy:
            async with client.get(proxy + "/mirror-first") as resp:
                assert (await resp.json())["role"] == "primary"
            (rec,) = await sink.wait()
            await asyncio.sleep(0.05)
            assert len(sink.records) == 1  # once
    assert seen_while_serving == [0]  # the mirror had ended; the exchange was not recorded
    assert rec.primary is not None and rec.primary.status == 200
    assert rec.canary is not None and orjson.loads(rec.canary.body or b"")["role"] == "canary"


async def test_dead_canary_client_served_exchange_refused(client: ClientSession) -> None:
    sink = Sink()
    async with (
        serve_app(handler_app(echo)) as p,
        proxy_for(make_cfg(p, f"http://127.0.0.1:{closed_port()}"), sink) as proxy,
    ):
        async with client.get(proxy + "/x") as resp:
            assert resp.status == 200
        (rec,) = await sink.wait()
    assert rec.primary is not None and rec.primary.status == 200
    assert rec.canary is not None
    assert rec.canary.error == "refused" and rec.canary.status is None
    assert rec.mirror_skipped is None


async def test_mirror_timeout_is_recorded(client: ClientSession) -> None:
    canary = Recording("canary", hold=True)
    sink = Sink()
    try:
        async with (
            serve_app(handler_app(echo)) as p,
            serve_app(handler_app(canary.handle)) as c,
            proxy_for(make_cfg(p, c, mirror={"timeout_ms": 100}), sink) as proxy,
        ):
            async with client.get(proxy + "/t") as resp:
                assert resp.status == 200
            (rec,) = await sink.wait()
            assert rec.canary is not None and rec.canary.error == "timeout"
            canary.release.set()
    finally:
        canary.release.set()


async def test_post_not_mirrored_by_default(client: ClientSession) -> None:
    canary = Recording("canary")
    sink = Sink()
    before = skipped("method")
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(canary.handle)) as c,
        proxy_for(make_cfg(p, c), sink) as proxy,
    ):
        async with client.post(proxy + "/orders", data=b'{"sku": 1}') as resp:
            assert resp.status == 200
        (rec,) = await sink.wait()
    assert rec.mirror_skipped == "method"
    assert rec.canary is None
    assert canary.seen == []
    assert rec.request_body == b'{"sku": 1}'
    assert skipped("method") == before + 1


async def test_post_mirrored_with_allow_side_effects(client: ClientSession) -> None:
    canary = Recording("canary")
    sink = Sink()
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(canary.handle)) as c,
        proxy_for(make_cfg(p, c, mirror={"allow_side_effects": True}), sink) as proxy,
    ):
        async with client.post(proxy + "/orders?x=1", data=b'{"sku": 1}') as resp:
            assert resp.status == 200
        (rec,) = await sink.wait()
    assert rec.mirror_skipped is None
    assert rec.canary is not None and rec.canary.status == 200
    ((raw_path, headers, body),) = canary.seen
    assert raw_path == "/orders?x=1"
    assert body == b'{"sku": 1}'
    assert headers["x-gray-shadow"] == ["1"]


async def test_saturation_skips_never_queues(client: ClientSession) -> None:
    canary = Recording("canary", hold=True)
    sink = Sink()
    before = skipped("saturated")
    try:
        async with (
            serve_app(handler_app(echo)) as p,
            serve_app(handler_app(canary.handle)) as c,
            proxy_for(
                make_cfg(p, c, mirror={"max_in_flight": 1, "timeout_ms": 60_000}), sink
            ) as proxy,
        ):
            async with client.get(proxy + "/one") as resp:
                assert resp.status == 200
            await canary.arrived.wait()  # the one mirror slot is taken
            async with client.get(proxy + "/two") as resp:
                assert resp.status == 200
            (second,) = await sink.wait()
            assert second.path == "/two"
            assert second.mirror_skipped == "saturated"
            assert second.canary is None
            assert skipped("saturated") == before + 1
            canary.release.set()
            records = await sink.wait(2)
            first = next(r for r in records if r.path == "/one")
            assert first.mirror_skipped is None and first.canary is not None
            # the slot is free again
            async with client.get(proxy + "/three") as resp:
                assert resp.status == 200
            records = await sink.wait(3)
            assert next(r for r in records if r.path == "/three").mirror_skipped is None
            assert len(canary.seen) == 2
    finally:
        canary.release.set()


async def test_secondary_gets_the_same_mirror(client: ClientSession) -> None:
    canary, secondary = Recording("canary"), Recording("secondary")
    sink = Sink()
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(canary.handle)) as c,
        serve_app(handler_app(secondary.handle)) as s,
        proxy_for(make_cfg(p, c, upstreams={"secondary": s}), sink) as proxy,
    ):
        async with client.get(proxy + "/s?q=1") as resp:
            trace_id = resp.headers["X-Trace-ID"]
        (rec,) = await sink.wait()
    assert rec.secondary is not None and rec.secondary.status == 200
    assert orjson.loads(rec.secondary.body or b"")["role"] == "secondary"
    ((raw_path, headers, _),) = secondary.seen
    assert raw_path == "/s?q=1"
    assert headers["x-gray-shadow"] == ["1"]
    assert headers["x-trace-id"] == [trace_id]


async def test_sampling_is_about_the_sample(client: ClientSession) -> None:
    sink = Sink()
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c, mirror={"sample": 0.5}), sink) as proxy,
    ):
        n = 200
        for i in range(n):
            async with client.get(proxy + f"/s/{i}") as resp:
                assert resp.status == 200
        records = await sink.wait(n)
        by_trace = {r.trace_id: r.mirror_skipped for r in records}
        sampled_out = sum(1 for v in by_trace.values() if v == "sampled_out")
        assert 50 < sampled_out < 150  # about half (binomial, sd ~7)
        assert all(v in (None, "sampled_out") for v in by_trace.values())
        # a client-chosen trace id does not decide it: tests/proxy/test_client_choice.py


async def test_mirror_disabled_and_sample_zero(client: ClientSession) -> None:
    sink = Sink()
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c, mirror={"enabled": False}), sink) as off,
        proxy_for(make_cfg(p, c, mirror={"sample": 0.0}), sink) as zero,
    ):
        async with client.get(off + "/a") as resp:
            assert resp.status == 200
        async with client.get(zero + "/b") as resp:
            assert resp.status == 200
        records = await sink.wait(2)
    assert {r.path: r.mirror_skipped for r in records} == {"/a": "disabled", "/b": "sampled_out"}


async def test_gray_serving_by_header_mirrors_the_primary(client: ClientSession) -> None:
    primary, canary = Recording("primary"), Recording("canary")
    sink = Sink()
    gray = {"serve_canary": [{"header": "X-Beta", "equals": "yes"}]}
    async with (
        serve_app(handler_app(primary.handle)) as p,
        serve_app(handler_app(canary.handle)) as c,
        proxy_for(make_cfg(p, c, gray=gray), sink) as proxy,
    ):
        async with client.get(proxy + "/g", headers={"X-Beta": "yes"}) as resp:
            assert (await resp.json())["role"] == "canary"
        async with client.get(proxy + "/g", headers={"X-Beta": "no"}) as resp:
            assert (await resp.json())["role"] == "primary"
        records = await sink.wait(2)
    gray_rec = next(r for r in records if r.served_by == "canary")
    assert gray_rec.gray_label == "canary"
    assert gray_rec.primary is not None and gray_rec.primary.status == 200
    assert gray_rec.canary is not None and gray_rec.canary.status == 200
    # the primary got the mirror: marked as shadow traffic
    shadowed = [h for _, h, _ in primary.seen if "x-gray-shadow" in h]
    assert len(shadowed) == 1 and shadowed[0]["x-gray-tag"] == ["canary"]
    served = [h for _, h, _ in canary.seen if "x-gray-shadow" not in h]
    assert len(served) == 1
    normal = next(r for r in records if r.served_by == "primary")
    assert normal.gray_label == "stable"


async def test_sticky_gray_serving_through_the_proxy(client: ClientSession) -> None:
    sink = Sink()
    gray = {"serve_canary": [{"percent": 50, "sticky": "X-User-Id"}]}

    def answer(role: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=role)

        return handler

    async with (
        serve_app(handler_app(answer("primary"))) as p,
        serve_app(handler_app(answer("canary"))) as c,
        proxy_for(make_cfg(p, c, gray=gray, mirror={"enabled": False}), sink) as proxy,
    ):
        sides: dict[str, set[str]] = {}
        for round_ in range(3):
            for user in range(40):
                async with client.get(
                    proxy + f"/r{round_}", headers={"X-User-Id": f"user-{user}"}
                ) as resp:
                    sides.setdefault(f"user-{user}", set()).add(await resp.text())
    assert all(len(s) == 1 for s in sides.values())  # one user, one side, always
    canary_users = sum(1 for s in sides.values() if s == {"canary"})
    assert 5 < canary_users < 35


async def test_compressed_mirror_answer_is_decoded_and_redacted(client: ClientSession) -> None:
    doc = {"user": {"name": "ann", "password": "hunter2"}, "items": [{"card": "4111"}]}
    canary = Recording("canary", body=gzip.compress(orjson.dumps(doc)))
    sink = Sink()
    redact = {"json_fields": ["$..password", "$.items[*].card"], "headers": ["X-Session"]}
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(canary.handle)) as c,
        proxy_for(make_cfg(p, c, redact=redact), sink) as proxy,
    ):
        async with client.get(
            proxy + "/me",
            headers={
                "Authorization": "Bearer secret",
                "X-Session": "s3cr3t",
                "Cookie": "sid=1",
            },
        ) as resp:
            body = await resp.json()
            # the client gets what the primary got: unredacted
            assert ["Authorization", "Bearer secret"] in body["headers"]
        (rec,) = await sink.wait()
    assert rec.canary is not None and rec.canary.body is not None
    stored = orjson.loads(rec.canary.body)
    assert stored["user"] == {"name": "ann", "password": "[REDACTED]"}
    assert stored["items"] == [{"card": "[REDACTED]"}]
    for name in ("authorization", "x-session", "cookie"):
        assert rec.request_headers[name] == "[REDACTED]"


async def test_metrics_count_outcomes(client: ClientSession) -> None:
    def outcome(name: str) -> float:
        value = REGISTRY.get_sample_value("graygate_mirror_outcomes_total", {"outcome": name})
        return value or 0.0

    def requests(role: str, mode: str, status: str) -> float:
        value = REGISTRY.get_sample_value(
            "graygate_upstream_requests_total", {"role": role, "mode": mode, "status": status}
        )
        return value or 0.0

    ok, refused = outcome("ok"), outcome("refused")
    served = requests("primary", "serve", "200")
    sink = Sink()
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c), sink) as good,
        proxy_for(make_cfg(p, f"http://127.0.0.1:{closed_port()}"), sink) as bad,
    ):
        async with client.get(good + "/m") as resp:
            assert resp.status == 200
        async with client.get(bad + "/m") as resp:
            assert resp.status == 200
        await sink.wait(2)
    assert outcome("ok") == ok + 1
    assert outcome("refused") == refused + 1
    assert requests("primary", "serve", "200") == served + 2
    assert REGISTRY.get_sample_value("graygate_mirror_in_flight") == 0.0


async def test_end_to_end_into_postgresql(
    client: ClientSession, engine: AsyncEngine, run_name: str, tmp_path: Path
) -> None:
    """The real recorder (``recorder=None``: taken from ``RECORDER_KEY``) and PostgreSQL."""
    async with serve_app(handler_app(echo)) as p, serve_app(handler_app(echo)) as c:
        cfg = make_cfg(p, c, run=run_name)
        run_id = await ensure_run(engine, run_name, primary_url=p, canary_url=c)
        app = make_proxy_app(cfg, recorder=None, run_id=run_id)
        app.cleanup_ctx.insert(
            0, recorder_ctx(cfg.record, engine=engine, default_spill_dir=tmp_path)
        )
        trace_ids = []
        async with serve_proxy(app) as proxy:
            for i in range(5):
                async with client.get(
                    proxy + f"/api/orders/{i}?q={i}", headers={"Authorization": "Bearer x"}
                ) as resp:
                    assert resp.status == 200
                    trace_ids.append(resp.headers["X-Trace-ID"])
        # cleanup drained the mirrors, then the recorder flushed
    async with engine.connect() as conn:
        rows = (
            (await conn.execute(sa.select(exchanges).where(exchanges.c.run_id == run_id)))
            .mappings()
            .all()
        )
    assert sorted(r["trace_id"] for r in rows) == sorted(trace_ids)
    for row in rows:
        assert row["endpoint"] == "GET /api/orders/{id}"
        assert row["served_by"] == "primary" and row["mirror_skipped"] is None
        assert row["primary_status"] == 200 and row["canary_status"] == 200
        assert row["request_headers"]["authorization"] == "[REDACTED]"
        assert orjson.loads(row["canary_body"])["headers"]


async def test_drain_waits_for_mirrors_in_flight_then_gives_up_on_them(
    client: ClientSession,
) -> None:
    """Mirrors taken in their connection's callbacks and mirrors in tasks alike: the app's
    drain waits for them, and past its time gives up on them (those exchanges are not
    recorded: their records would lack the canary's side); none is left counted in flight."""
    sink = Sink()
    canary = Recording("canary")
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(canary.handle)) as c,
    ):
        app = make_proxy_app(make_cfg(p, c), recorder=sink, run_id=7)
        async with serve_proxy(app) as proxy:
            tasks = app[MIRROR_TASKS_KEY]
            async with client.get(proxy + "/first") as resp:  # the canary's pool: one idle
                assert resp.status == 200
            await sink.wait(1)
            # Waited for: answered while the drain waits.
            canary.release.clear()
            for path in ("/callback", "/task"):  # one on the idle connection, one opens one
                async with client.get(proxy + path) as resp:
                    assert resp.status == 200
            assert len(tasks.calls) == 2 and len(tasks) == 1
            drained = asyncio.ensure_future(tasks.drain(5.0))
            await asyncio.sleep(0.05)
            assert not drained.done()
            canary.release.set()
            await drained
            assert len(sink.records) == 3
            assert not tasks.calls and not len(tasks)
            # Given up on: the drain's time runs out first.
            canary.release.clear()
            for path in ("/callback", "/task"):
                async with client.get(proxy + path) as resp:
                    assert resp.status == 200
            assert len(tasks.calls) == 2
            await tasks.drain(0.1)
            assert not tasks.calls and not len(tasks)
            assert REGISTRY.get_sample_value("graygate_mirror_in_flight") == 0.0
            canary.release.set()
            await asyncio.sleep(0.1)
    assert len(sink.records) == 3
