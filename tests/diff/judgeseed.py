"""Exchanges for the judgement tests (workers, aggregates, verdict, CLI), written through the
real store code (``store.runs.ensure_run``, ``store.exchanges``' COPY writer) into the
session's PostgreSQL; judged by the real diff workers.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import CompareConfig
from diff.rules import RuleBook
from graygate.values import Answer, EndpointCounts, LatencySample, RecordedExchange
from store.exchanges import exchange_row, write_exchanges
from store.runs import ensure_run

__all__ = [
    "ITEMS",
    "ORDERS",
    "Ex",
    "add",
    "new_run",
    "order",
    "rulebook",
    "timed",
]

ORDERS = "GET /api/orders/{id}"
ITEMS = "GET /api/items/{id}"

# Small thresholds so that tests decide with a few dozen exchanges.
SMALL_VERDICT: dict[str, Any] = {
    "min_pairs": 20,
    "min_pairs_per_endpoint": 5,
    # Latency is judged on what is seeded (every Ex is timed, both sides alike by default):
    # a run of a few dozen pairs is enough to decide.
    "latency": {"min_samples": 5},
}

COMPARE: dict[str, Any] = {
    "defaults": {"ignore": ["$.request_id"]},
    "endpoints": [
        {"match": ORDERS, "tolerance": {"$.total": {"abs": 0.01}}},
    ],
}


def rulebook(compare: dict[str, Any] | None = None) -> RuleBook:
    return RuleBook.from_config(CompareConfig.model_validate(compare or COMPARE))


async def new_run(
    engine: AsyncEngine,
    name: str,
    *,
    verdict: dict[str, Any] | None = None,
    compare: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> int:
    """A run whose stored configuration is a real ``GraygateConfig`` dump."""
    from config.schema import GraygateConfig

    cfg = GraygateConfig.model_validate(
        {
            "run": name,
            "upstreams": {"primary": "http://127.0.0.1:8081", "canary": "http://127.0.0.1:8082"},
            "verdict": SMALL_VERDICT if verdict is None else verdict,
            "compare": COMPARE if compare is None else compare,
            **(extra or {}),
        }
    )
    return await ensure_run(
        engine,
        name,
        primary_url="http://127.0.0.1:8081",
        canary_url="http://127.0.0.1:8082",
        config_json=cfg.model_dump(mode="json"),
    )


def order(i: int, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": i,
        "status": "paid",
        "total": 100.0 + i,
        "request_id": uuid.uuid4().hex,
        "items": [{"sku": "A", "qty": 1}],
    }
    doc.update(changes)
    return doc


@dataclass
class Ex:
    """One exchange to record: bodies (None: that side not asked), latencies, errors."""

    primary: Any
    canary: Any = "same"  # "same": the primary's body
    secondary: Any = None  # None: no secondary
    endpoint: str = ORDERS
    primary_ms: float | None = 10.0  # None: that side's answer was not timed
    canary_ms: float | None = 10.0
    secondary_ms: float | None = 10.0
    canary_status: int = 200
    primary_status: int = 200
    canary_error: str | None = None
    mirror_skipped: str | None = None
    served_by: str = "primary"
    truncate: int | None = None  # keep this many body bytes on every side, marked truncated


def _resp(
    body: Any, status: int, ms: float | None, error: str | None = None, truncate: int | None = None
) -> Answer:
    if error is not None:
        return Answer(error=error, latency_ms=ms)
    raw = orjson.dumps(body)
    cut = truncate is not None and len(raw) > truncate
    return Answer(
        status=status,
        headers={"content-type": "application/json"},
        body=raw[:truncate] if cut else raw,
        body_truncated=cut,
        latency_ms=ms,
    )


def to_record(run_id: int, i: int, ex: Ex) -> RecordedExchange:
    method, _, template = ex.endpoint.partition(" ")
    canary_body = ex.primary if isinstance(ex.canary, str) and ex.canary == "same" else ex.canary
    skipped = ex.mirror_skipped is not None
    return RecordedExchange(
        run_id=run_id,
        trace_id=uuid.uuid4().hex,
        span_id=os.urandom(8).hex(),
        received_at=datetime(2026, 11, 27, 12, 0, tzinfo=UTC) + timedelta(milliseconds=i),
        endpoint=ex.endpoint,
        method=method,
        path=template.replace("{id}", str(i)),
        query="",
        request_headers={"accept": "application/json"},
        request_body=None,
        request_body_truncated=False,
        gray_label="stable",
        served_by=ex.served_by,
        mirror_skipped=ex.mirror_skipped,
        primary=_resp(ex.primary, ex.primary_status, ex.primary_ms, truncate=ex.truncate),
        canary=None
        if skipped
        else _resp(canary_body, ex.canary_status, ex.canary_ms, ex.canary_error, ex.truncate),
        secondary=None
        if ex.secondary is None or skipped
        else _resp(ex.secondary, 200, ex.secondary_ms, truncate=ex.truncate),
    )


async def add(
    engine: AsyncEngine,
    run_id: int,
    exchanges: Sequence[Ex],
    *,
    keep_bodies: bool = True,
    keep_differing: bool = True,
) -> None:
    """Record ``exchanges``; ``keep_bodies=False``: as ``record.bodies.sample`` leaves an
    exchange out (bodies kept as digests, unless they differ and ``keep_differing``)."""
    rows = [
        exchange_row(
            to_record(run_id, i, ex), keep_bodies=keep_bodies, keep_differing=keep_differing
        )
        for i, ex in enumerate(exchanges)
    ]
    result = await write_exchanges(engine, rows)
    assert result.inserted == len(rows) and not result.rejected


def matching(n: int, *, endpoint: str = ORDERS, seed: int = 1, **kw: Any) -> list[Ex]:
    """``n`` exchanges whose canary answers like the primary (request_id differs: ignored)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        body = order(i)
        out.append(
            Ex(
                primary=body,
                canary={**body, "request_id": uuid.uuid4().hex},
                endpoint=endpoint,
                primary_ms=rng.lognormvariate(2.3, 0.3),
                canary_ms=rng.lognormvariate(2.3, 0.3),
                **kw,
            )
        )
    return out


def timed(*endpoints: EndpointCounts) -> LatencySample:
    """For hand-built aggregates: every pair of ``endpoints`` timed, both sides alike (the
    same spread of latencies), as the store's sample would hold it: the latency check
    passes on it, so a test about another check is decided by that check."""
    eps: list[str] = []
    ms: list[float] = []
    for e in endpoints:
        eps += [e.endpoint] * e.pairs
        ms += [8.0 + (i % 7) for i in range(e.pairs)]
    return LatencySample.of(ms, ms, eps)
