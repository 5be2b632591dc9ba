"""A run's recorded exchanges read back as values, page by page: what ``graygate replay``
re-sends, and what it has already replayed into another run (for ``--resume``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from graygate.errors import UnknownRun
from graygate.values import Answer, RecordedExchange
from store.failures import store_errors
from store.tables import exchanges, runs

__all__ = [
    "RunRow",
    "count_unjudged",
    "fetch_run",
    "read_recorded",
    "replayed_trace_ids",
]

RunRow = Mapping[str, Any]


async def fetch_run(engine: AsyncEngine, name: str) -> RunRow:
    """Run ``name``'s row (id, name, URLs, versions, config); UnknownRun when there is none."""
    async with store_errors(engine), engine.connect() as conn:
        row = (await conn.execute(sa.select(runs).where(runs.c.name == name))).first()
    if row is None:
        raise UnknownRun(name)
    return dict(row._mapping)


def _answer(row: Mapping[str, Any], role: str) -> Answer | None:
    status = row[f"{role}_status"]
    error = row[f"{role}_error"]
    if status is None and error is None:
        return None
    return Answer(
        status=status,
        headers=dict(row[f"{role}_headers"] or {}),
        body=row[f"{role}_body"],
        body_truncated=bool(row[f"{role}_body_truncated"]),
        body_sha256=row[f"{role}_body_sha256"],
        latency_ms=row[f"{role}_latency_ms"],
        error=error,
    )


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


async def read_recorded(
    engine: AsyncEngine,
    run_id: int,
    *,
    after_id: int = 0,
    limit: int = 500,
    endpoint: str | None = None,
) -> list[tuple[int, RecordedExchange]]:
    """Up to ``limit`` of the run's exchanges with ids above ``after_id``, oldest first, as
    ``(id, RecordedExchange)``; ``endpoint``: only that endpoint (``*`` matches anything)."""
    query = (
        sa.select(exchanges)
        .where(exchanges.c.run_id == run_id, exchanges.c.id > after_id)
        .order_by(exchanges.c.id)
        .limit(limit)
    )
    if endpoint is not None:
        if "*" in endpoint:
            query = query.where(exchanges.c.endpoint.like(_like(endpoint), escape="\\"))
        else:
            query = query.where(exchanges.c.endpoint == endpoint)
    async with store_errors(engine), engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    out: list[tuple[int, RecordedExchange]] = []
    for r in rows:
        m = dict(r._mapping)
        received: datetime = m["received_at"]
        out.append(
            (
                int(m["id"]),
                RecordedExchange(
                    run_id=run_id,
                    trace_id=m["trace_id"],
                    span_id=m["span_id"],
                    received_at=received,
                    endpoint=m["endpoint"],
                    method=m["method"],
                    path=m["path"],
                    query=m["query"],
                    request_headers=dict(m["request_headers"] or {}),
                    request_body=m["request_body"],
                    request_body_truncated=bool(m["request_body_truncated"]),
                    gray_label=m["gray_label"],
                    served_by=m["served_by"],
                    mirror_skipped=m["mirror_skipped"],
                    primary=_answer(m, "primary"),
                    canary=_answer(m, "canary"),
                    secondary=_answer(m, "secondary"),
                ),
            )
        )
    return out


async def replayed_trace_ids(engine: AsyncEngine, run_id: int) -> set[tuple[str, str]]:
    """The (trace id, span id) of every exchange already in run ``run_id``."""
    async with store_errors(engine), engine.connect() as conn:
        rows = await conn.execute(
            sa.select(exchanges.c.trace_id, exchanges.c.span_id).where(exchanges.c.run_id == run_id)
        )
        return {(t, s) for t, s in rows}


async def count_unjudged(engine: AsyncEngine, run_id: int) -> int:
    """The run's exchanges the diff workers have not judged yet."""
    async with store_errors(engine), engine.connect() as conn:
        n = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(exchanges)
            .where(exchanges.c.run_id == run_id, exchanges.c.judged_at.is_(None))
        )
    return int(n or 0)
