"""``graygate replay``: a recorded run re-sent to a new build gives a verdict on that build.

A recorded run is stored in the real PostgreSQL (the rows a proxy would have written); the
builds replayed to are real aiohttp servers on loopback; the diff workers judge the new run
and ``evaluate_run`` gives its verdict. A clean build is GO, a faulty one NO_GO."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import evaluate_run
from graygate.errors import ConfigError
from graygate.replay import LATENCY_SKIP, ReplayOptions, parse_header, replay_headers, replay_run
from graygate.values import Answer, RecordedExchange
from store.exchanges import exchange_row, fetch_exchanges, write_exchanges
from store.recorded import fetch_run
from store.runs import ensure_run
from store.tables import exchanges
from tests.proxy.harness import handler_app, serve_app

N_GET = 40
CONFIG: dict[str, Any] = {
    "run": "recorded",
    "upstreams": {"primary": "http://primary.test", "canary": "http://canary.test"},
    "redact": {"headers": ["x-secret"], "placeholder": "[REDACTED]"},
    "verdict": {"min_pairs": 30, "min_pairs_per_endpoint": 5},
    "compare": {"defaults": {"headers": {"ignore": ["date", "server", "content-length"]}}},
}


def order(i: int, *, faulty: bool = False) -> bytes:
    total = round(10.0 + i, 2) + (1.0 if faulty and i % 2 == 0 else 0.0)
    return orjson.dumps({"id": i, "status": "paid", "total": total})


def recorded(run_id: int, i: int, **kw: Any) -> RecordedExchange:
    fields: dict[str, Any] = {
        "run_id": run_id,
        "trace_id": f"{i:032x}",
        "span_id": f"{i:016x}",
        "received_at": datetime.now(UTC),
        "endpoint": "GET /api/orders/{id}",
        "method": "GET",
        "path": f"/api/orders/{i}",
        "query": "v=1",
        "request_headers": {
            "accept": "application/json",
            "authorization": "[REDACTED]",
            "x-secret": "[REDACTED]",
            "x-forwarded-for": "10.0.0.1",
            "x-team": "orders",
        },
        "request_body": None,
        "request_body_truncated": False,
        "gray_label": None,
        "served_by": "primary",
        "primary": Answer(200, {"content-type": "application/json"}, order(i), False, 2.0),
        "canary": Answer(200, {"content-type": "application/json"}, order(i), False, 2.5),
    }
    fields.update(kw)
    return RecordedExchange(**fields)


async def store_recorded(engine: AsyncEngine, name: str) -> int:
    run_id = await ensure_run(
        engine,
        name,
        primary_url="http://primary.test",
        canary_url="http://canary.test",
        config_json=CONFIG,
    )
    records = [recorded(run_id, i) for i in range(N_GET)]
    records.append(  # cut at capture: cannot be replayed
        recorded(
            run_id,
            1000,
            method="POST",
            endpoint="POST /api/orders",
            path="/api/orders",
            request_body=b'{"sku":',
            request_body_truncated=True,
        )
    )
    records.append(  # a side effect: only with --allow-side-effects
        recorded(
            run_id,
            1001,
            method="POST",
            endpoint="POST /api/orders",
            path="/api/orders",
            request_body=b'{"sku":"A"}',
            primary=Answer(201, {"content-type": "application/json"}, b'{"ok":true}', False, 3.0),
        )
    )
    await write_exchanges(engine, [exchange_row(r) for r in records])
    return run_id


class Build:
    """The build replayed to: answers orders (a fault on even ids when ``faulty``)."""

    def __init__(self, *, faulty: bool = False, hold_after: int | None = None) -> None:
        self.faulty = faulty
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.hold_after = hold_after
        self.held = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.method, request.path_qs, dict(request.headers), body))
        if request.method == "POST":
            return web.json_response({"ok": True}, status=201)
        i = int(request.match_info["tail"].rsplit("/", 1)[1])
        return web.Response(body=order(i, faulty=self.faulty), content_type="application/json")


@asynccontextmanager
async def build(**kw: Any) -> AsyncIterator[tuple[str, Build]]:
    b = Build(**kw)
    async with serve_app(handler_app(b.handle)) as url:
        yield url, b


def opts(run: str, to: str, **kw: Any) -> ReplayOptions:
    args: dict[str, Any] = {"rate": 2000.0, "concurrency": 8, "judge_timeout_s": 60, **kw}
    return ReplayOptions(run=run, to=to, **args)


def checks(result: Any) -> dict[str, Any]:
    return {c.name: c for c in result.checks}


async def test_a_clean_build_is_go_and_a_faulty_one_no_go(
    engine: AsyncEngine, run_name: str
) -> None:
    await store_recorded(engine, run_name)
    async with build() as (url, clean):
        _, stats = await replay_run(engine, opts(run_name, url, as_run=f"{run_name}-clean"))
    assert stats.sent == N_GET and stats.answered == N_GET and stats.written == N_GET
    assert stats.skipped == {"body_truncated": 1, "side_effects": 1}
    go = await evaluate_run(engine, f"{run_name}-clean", record=False)
    assert go.verdict == "GO", go.checks
    latency = checks(go)["latency"]
    assert latency.passed is None and LATENCY_SKIP in latency.detail

    async with build(faulty=True) as (url, _):
        await replay_run(engine, opts(run_name, url, as_run=f"{run_name}-faulty"))
    no_go = await evaluate_run(engine, f"{run_name}-faulty", record=False)
    assert no_go.verdict == "NO_GO", no_go.checks
    assert checks(no_go)["strict"].passed is False or checks(no_go)["tolerance"].passed is False

    # What was sent: path and query as recorded, redacted and proxy headers dropped, the
    # replay's own header added; no side effect sent.
    method, path_qs, headers, _ = clean.seen[0]
    assert (method, path_qs) == ("GET", "/api/orders/0?v=1")
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["x-team"] == "orders"
    for gone in ("authorization", "x-secret", "x-forwarded-for", "x-gray-shadow"):
        assert gone not in lower, gone
    assert all(m == "GET" for m, *_ in clean.seen)

    # The new run says what it is; the primary side is the recording.
    row = await fetch_run(engine, f"{run_name}-faulty")
    assert row["config"]["replay"]["of"] == run_name
    assert row["config"]["replay"]["to"] == url
    assert row["canary_url"] == url
    stored = await fetch_exchanges(engine, int(row["id"]))
    assert {bytes(r["primary_body"]) for r in stored} == {order(i) for i in range(N_GET)}
    assert all(r["primary_latency_ms"] == 2.0 for r in stored)


async def test_side_effects_only_when_allowed_and_marked_shadow(
    engine: AsyncEngine, run_name: str
) -> None:
    await store_recorded(engine, run_name)
    async with build() as (url, b):
        _, stats = await replay_run(
            engine,
            opts(
                run_name,
                url,
                allow_side_effects=True,
                headers=(("Authorization", "Bearer replay"),),
                endpoint="POST *",
            ),
        )
    assert stats.skipped == {"body_truncated": 1}
    ((method, path, headers, body),) = b.seen
    assert (method, path, body) == ("POST", "/api/orders?v=1", b'{"sku":"A"}')
    assert headers["X-Gray-Shadow"] == "1"
    assert headers["Authorization"] == "Bearer replay"


async def test_interrupted_then_resumed_sends_each_request_once(
    engine: AsyncEngine, run_name: str
) -> None:
    await store_recorded(engine, run_name)
    stop = asyncio.Event()

    def progress(stats: Any) -> None:
        if stats.sent >= 20:
            stop.set()  # as Ctrl-C does

    async with build() as (url, b):
        first = opts(run_name, url, rate=200.0)
        _, stats1 = await replay_run(engine, first, stop=stop, progress=progress)
        assert stats1.interrupted and 20 <= stats1.sent < N_GET
        assert stats1.written == stats1.sent  # what was sent is recorded
        with pytest.raises(ConfigError, match="--resume"):
            await replay_run(engine, first)
        _, stats2 = await replay_run(engine, opts(run_name, url, resume=True))
    assert stats2.already == stats1.sent
    assert stats1.sent + stats2.sent == N_GET
    assert sorted(p for _, p, *_ in b.seen) == sorted(f"/api/orders/{i}?v=1" for i in range(N_GET))
    row = await fetch_run(engine, f"{run_name}-replay")
    async with engine.connect() as conn:
        n = await conn.scalar(
            sa.select(sa.func.count()).where(exchanges.c.run_id == int(row["id"]))
        )
    assert n == N_GET
    result = await evaluate_run(engine, f"{run_name}-replay", record=False)
    assert result.verdict == "GO", result.checks


async def test_limit_and_compare_latency(engine: AsyncEngine, run_name: str) -> None:
    await store_recorded(engine, run_name)
    async with build() as (url, b):
        _, stats = await replay_run(engine, opts(run_name, url, limit=N_GET, compare_latency=True))
    assert stats.considered == N_GET and len(b.seen) == N_GET  # at the bound: all GETs
    result = await evaluate_run(engine, f"{run_name}-replay", record=False)
    assert LATENCY_SKIP not in checks(result)["latency"].detail


async def test_a_dead_target_is_recorded_as_the_canary_error(
    engine: AsyncEngine, run_name: str
) -> None:
    from tests.proxy.harness import closed_port

    await store_recorded(engine, run_name)
    url = f"http://127.0.0.1:{closed_port()}"
    _, stats = await replay_run(engine, opts(run_name, url, limit=5))
    assert stats.failed == 5 and stats.answered == 0
    row = await fetch_run(engine, f"{run_name}-replay")
    stored = await fetch_exchanges(engine, int(row["id"]))
    assert [r["canary_error"] for r in stored] == ["refused"] * 5


def test_options_are_bounded() -> None:
    base = {"run": "a", "to": "http://127.0.0.1:1"}
    ReplayOptions(**base, rate=100_000.0, concurrency=1024, limit=1_000_000_000).check()
    for bad, key in (
        ({"rate": 100_000.1}, "--rate"),
        ({"rate": 0.0}, "--rate"),
        ({"concurrency": 1025}, "--concurrency"),
        ({"concurrency": 0}, "--concurrency"),
        ({"limit": 0}, "--limit"),
        ({"headers": (("a", "b"),) * 65}, "--header"),
        ({"as_run": "a"}, "--as"),
        ({"as_run": "bad name"}, "--as"),
        ({"to": "ftp://x"}, "--to"),
    ):
        with pytest.raises(ConfigError, match=key):
            ReplayOptions(**{**base, **bad}).check()
    ReplayOptions(**base, headers=(("a", "b"),) * 64).check()
    assert parse_header("Authorization: Bearer x") == ("Authorization", "Bearer x")
    with pytest.raises(ConfigError, match="--header"):
        parse_header("no colon")


def test_replay_headers() -> None:
    recorded_headers = {"accept": "*/*", "cookie": "[X]", "x-k": "[X]", "host": "h", "x-a": "1"}
    out = replay_headers(recorded_headers, "[X]", [("X-A", "2")], shadow=True)
    assert out == [("accept", "*/*"), ("X-A", "2"), ("X-Gray-Shadow", "1")]


def test_the_cli_replays_and_exits_with_the_verdict(database_url: str, run_name: str) -> None:
    """``graygate replay`` as a user runs it: a subprocess, exit code 0 for GO."""

    async def setup() -> None:
        from store.engine import create_engine

        eng = create_engine(database_url, pool_size=2)
        try:
            await store_recorded(eng, run_name)
        finally:
            await eng.dispose()

    asyncio.run(setup())
    server = subprocess.Popen(
        [sys.executable, "-m", "graygate.examples.orders", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        assert line.startswith("listening on "), line
        url = line.split()[-1]
        # The orders example answers other bodies than the recording: NO_GO, exit 1.
        done = subprocess.run(
            [
                sys.executable, "-m", "graygate", "replay", run_name, "--to", url,
                "--database-url", database_url, "--rate", "500",
            ],
            capture_output=True, timeout=180,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)
    err = done.stderr.decode()
    assert done.returncode == 1, err + done.stdout.decode()
    assert "NO_GO" in done.stdout.decode()
    summary = json.loads(err.split(f"as {run_name + '-replay'!r}: ", 1)[1].splitlines()[0])
    assert summary["sent"] == N_GET and summary["skipped"]["body_truncated"] == 1


async def test_the_new_builds_answers_are_stored_as_the_proxy_stores_them(
    engine: AsyncEngine, run_name: str
) -> None:
    """One way to store an answer: header bytes outside UTF-8 become ``\\xNN`` text (the
    exchange is recorded, not lost), secrets redacted, hop-by-hop fields left out, a
    gzip body decoded, as for the proxy's own captures."""
    import gzip

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                i = int(head.split(b" ", 2)[1].split(b"?")[0].rsplit(b"/", 1)[1])
                body = gzip.compress(order(i))
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Encoding: gzip\r\nX-Name: caf\xe9\r\nSet-Cookie: s=hunter2\r\n"
                    b"Keep-Alive: timeout=5\r\n"
                    b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    await store_recorded(engine, run_name)
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        _, stats = await replay_run(engine, opts(run_name, url, limit=3))
    finally:
        server.close()
    assert stats.answered == 3 and stats.failed == 0
    row = await fetch_run(engine, f"{run_name}-replay")
    stored = await fetch_exchanges(engine, int(row["id"]))
    assert len(stored) == 3
    for r in stored:
        headers = r["canary_headers"]
        headers = headers if isinstance(headers, dict) else json.loads(headers)
        assert headers["x-name"] == "caf\\xe9"
        assert headers["set-cookie"] == "[REDACTED]"
        assert "keep-alive" not in headers
        assert json.loads(bytes(r["canary_body"]))["status"] == "paid"
