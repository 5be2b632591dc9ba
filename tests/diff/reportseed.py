"""Runs with known contents for the report, API and admin tests, written through the real
store code (``store.runs``, ``store.exchanges``' COPY writer, ``store.judgement``,
``store.runtime_samples``) into the session's PostgreSQL.

The judging here is a small, explicit stand-in for the diff workers: top-level JSON keys
that differ are strict differences, except where the secondary differs at the same key
(noise), so every test knows exactly which fields, counts and verdicts to expect.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import CompareConfig, GraygateConfig
from diff.rules import RuleBook
from diff.runtime_checks import RuntimeSample
from diff.worker import judge_batch
from graygate.admin.app import make_admin_app
from graygate.values import Answer, RecordedExchange
from store.exchanges import exchange_row, write_exchanges
from store.runs import ensure_run
from store.runtime_samples import Finding, insert_findings, insert_samples

__all__ = [
    "ORDERS",
    "USERS",
    "Seeded",
    "add_exchanges",
    "judge",
    "make_run",
    "seed_go",
    "seed_inconclusive",
    "seed_no_go",
    "serve_admin",
]

ORDERS = "GET /api/orders/{id}"
USERS = "GET /api/users/{id}"
LOGO = "GET /static/logo.png"
PING = "GET /ping"

# Small thresholds so a handful of rows decides. The latency check is turned off (the
# seeded latencies are there for the report's charts, a handful per endpoint, the canary's
# a few ms above the primary's): the verdict says it was skipped, and why.
VERDICT = {
    "min_pairs": 10,
    "min_pairs_per_endpoint": 2,
    "max_strict_mismatch_rate": 0.0,
    "max_tolerance_violation_rate": 0.0,
    "max_error_rate_increase": 0.0,
    "latency": {"skip": "report tests: latencies seeded for the charts only"},
}


@dataclass
class Seeded:
    run: str
    run_id: int
    traces: dict[str, list[str]] = field(default_factory=dict)  # label -> trace ids


async def make_run(engine: AsyncEngine, run: str, **verdict: Any) -> int:
    config = {"verdict": {**VERDICT, **verdict}}
    return await ensure_run(
        engine,
        run,
        primary_url="http://127.0.0.1:8081",
        canary_url="http://127.0.0.1:8082",
        config_json=config,
        primary_version="v1.4.2",
        canary_version="v2.0.0-rc1",
    )


def _response(
    body: Any,
    *,
    latency: float,
    status: int = 200,
    error: str | None = None,
) -> Answer:
    if error is not None:
        return Answer(error=error, latency_ms=latency)
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    ctype = "application/json" if not isinstance(body, bytes) else "application/octet-stream"
    return Answer(status=status, headers={"content-type": ctype}, body=raw, latency_ms=latency)


async def add_exchanges(
    engine: AsyncEngine,
    run_id: int,
    endpoint: str,
    bodies: Sequence[tuple[Any, Any, Any]],
    *,
    canary_error: str | None = None,
    start: datetime | None = None,
) -> list[str]:
    """Record one exchange per (primary, canary, secondary) body triple (secondary None:
    not asked). Returns their trace ids, in order."""
    start = start or datetime.now(UTC) - timedelta(minutes=5)
    records: list[RecordedExchange] = []
    traces: list[str] = []
    method, _, template = endpoint.partition(" ")
    for i, (primary, canary, secondary) in enumerate(bodies):
        trace = uuid.uuid4().hex
        traces.append(trace)
        records.append(
            RecordedExchange(
                run_id=run_id,
                trace_id=trace,
                span_id=uuid.uuid4().hex[:16],
                received_at=start + timedelta(milliseconds=10 * i),
                endpoint=endpoint,
                method=method,
                path=template.replace("{id}", str(1000 + i)),
                query="",
                request_headers={"accept": "application/json"},
                request_body=None,
                request_body_truncated=False,
                gray_label="stable",
                served_by="primary",
                primary=_response(primary, latency=10.0 + i % 7),
                canary=_response(canary, latency=12.0 + i % 5, error=canary_error),
                secondary=None if secondary is None else _response(secondary, latency=11.0 + i % 3),
            )
        )
    result = await write_exchanges(engine, [exchange_row(r) for r in records])
    assert result.inserted == len(records) and not result.rejected
    return traces


# The real diff worker with the default rules (everything strict): the report reads what
# the engine stores, not what a test imagines it stores.
RULES = RuleBook.from_config(CompareConfig())


async def judge(engine: AsyncEngine, run_id: int) -> int:
    """Judge every unjudged exchange of the run, as a diff worker does; returns how many."""
    done = 0
    while n := await judge_batch(engine, run_id, RULES, batch_size=100):
        done += n
    return done


def _order(i: int, *, total: float = 10.5, ts: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {"id": 1000 + i, "status": "paid", "total": total, "ts": ts}


async def seed_go(engine: AsyncEngine, run: str) -> Seeded:
    """12 orders and 4 users, identical on both sides: GO."""
    run_id = await make_run(engine, run)
    seeded = Seeded(run, run_id)
    seeded.traces["orders"] = await add_exchanges(
        engine, run_id, ORDERS, [(_order(i), _order(i), None) for i in range(12)]
    )
    seeded.traces["users"] = await add_exchanges(
        engine, run_id, USERS, [({"id": i, "name": "ann"},) * 2 + (None,) for i in range(4)]
    )
    await judge(engine, run_id)
    return seeded


async def seed_no_go(engine: AsyncEngine, run: str) -> Seeded:
    """Orders where the canary gets ``$.total`` wrong 4 times in 14 (strict: NO_GO) and
    ``$.ts`` differs everywhere, as it does on the secondary (noise); one canary timeout;
    a binary and a text endpoint; runtime samples and preflight findings."""
    run_id = await make_run(engine, run)
    seeded = Seeded(run, run_id)
    bodies = []
    for i in range(14):
        primary = _order(i, ts=f"2026-01-01T00:00:{i:02d}Z")
        canary = _order(i, total=10.75 if i < 4 else 10.5, ts=f"2026-01-01T00:01:{i:02d}Z")
        secondary = _order(i, ts=f"2026-01-01T00:02:{i:02d}Z")
        bodies.append((primary, canary, secondary))
    traces = await add_exchanges(engine, run_id, ORDERS, bodies)
    seeded.traces["wrong_total"] = traces[:4]
    seeded.traces["orders"] = traces
    seeded.traces["timeout"] = await add_exchanges(
        engine, run_id, ORDERS, [(_order(99), None, None)], canary_error="timeout"
    )
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"
    seeded.traces["logo"] = await add_exchanges(engine, run_id, LOGO, [(png, png, None)] * 3)
    seeded.traces["ping"] = await add_exchanges(
        engine, run_id, PING, [(b"pong", b"pong", None)] * 3
    )
    await judge(engine, run_id)
    now = datetime.now(UTC)
    samples = [
        RuntimeSample(
            taken_at=now - timedelta(seconds=50 - 10 * i),
            source="expvar",
            goroutines=40 + 5 * i,
            heap_alloc=8_000_000 + 1_000_000 * i,
            heap_inuse=9_000_000,
            num_gc=100 + 3 * i,
            gc_cpu_fraction=0.001 * i,
            pauses_ns=(150_000, 220_000 + 10_000 * i),
        )
        for i in range(5)
    ]
    await insert_samples(engine, run_id, "canary", samples)
    await insert_findings(
        engine,
        run_id,
        [
            Finding("canary.health", True, "GET /healthz answered 200 in 3 ms"),
            Finding("canary.pprof_exposed", False, "/debug/pprof/ answers without auth"),
        ],
    )
    return seeded


async def seed_inconclusive(engine: AsyncEngine, run: str) -> Seeded:
    """Two matching pairs: not enough evidence."""
    run_id = await make_run(engine, run)
    seeded = Seeded(run, run_id)
    seeded.traces["orders"] = await add_exchanges(
        engine, run_id, ORDERS, [(_order(i), _order(i), None) for i in range(2)]
    )
    await judge(engine, run_id)
    return seeded


@asynccontextmanager
async def serve_admin(
    engine: AsyncEngine,
    *,
    token: str | None = None,
    extra: Callable[[web.Application], None] | None = None,
) -> AsyncIterator[str]:
    """The real admin application on a random loopback port; yields its base URL."""
    admin: dict[str, Any] = {"listen": "127.0.0.1:0"}
    if token is not None:
        admin["token"] = token
    cfg = GraygateConfig.model_validate(
        {
            "run": "admin-test",
            "upstreams": {"primary": "http://127.0.0.1:8081", "canary": "http://127.0.0.1:8082"},
            "admin": admin,
        }
    )
    app = make_admin_app(cfg, engine)
    if extra is not None:
        extra(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
