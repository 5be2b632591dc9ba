"""The write checks' SQL: which exchanges are due for a write check (graygate's database),
and one read of the rows a request wrote (a service's database, read only).

graygate never writes to a service's database: :func:`read_rows` runs the configured query
in a ``READ ONLY`` transaction with a ``statement_timeout``, binds the trace id as the
parameter ``:trace_id``, fetches at most ``max_rows + 1`` rows and rolls back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from graygate.vocabulary import Role
from store.tables import exchanges

__all__ = [
    "DueExchange",
    "RowsRead",
    "create_reader",
    "fetch_due",
    "read_rows",
    "write_span_id",
]

logger = logging.getLogger(__name__)

_SPAN_PREFIX = "write:"


def write_span_id(name: str) -> str:
    """The span id of write check ``name``'s record for an exchange: with the run and the
    trace id, the record's unique key (a check stored twice is stored once)."""
    return _SPAN_PREFIX + name


@dataclass(frozen=True, slots=True)
class DueExchange:
    """An exchange whose writes are to be compared."""

    id: int
    trace_id: str
    received_at: datetime
    method: str
    endpoint: str
    # Both sides answered and the primary served it: its writes can be compared.
    comparable: bool = True


@dataclass(frozen=True, slots=True)
class RowsRead:
    """What one side's read returned: at most ``max_rows`` rows, and whether there were more."""

    rows: tuple[Mapping[str, Any], ...]
    truncated: bool


async def fetch_due(
    engine: AsyncEngine,
    run_id: int,
    name: str,
    *,
    methods: Sequence[str],
    settle_ms: int,
    after_id: int,
    limit: int,
) -> list[DueExchange]:
    """The run's exchanges that write check ``name`` has not stored yet, oldest first after
    ``after_id``: the request was mirrored (no skip) and both sides left a trace, its
    method is one of ``methods``, and it was recorded at least ``settle_ms`` ago. It is
    ``comparable`` when both sides answered and the primary served it (a canary that
    served the client wrote the real tables)."""
    e = exchanges.c
    w = exchanges.alias("w")
    done = sa.exists().where(
        w.c.trace_id == e.trace_id,
        w.c.run_id == e.run_id,
        w.c.span_id == write_span_id(name),
    )
    stmt = (
        sa.select(
            e.id,
            e.trace_id,
            e.received_at,
            e.method,
            e.endpoint,
            (
                (e.served_by == Role.PRIMARY.value)
                & e.primary_status.is_not(None)
                & e.canary_status.is_not(None)
                & e.primary_error.is_(None)
                & e.canary_error.is_(None)
            ).label("comparable"),
        )
        .where(
            e.run_id == run_id,
            e.id > after_id,
            e.mirror_skipped.is_(None),
            e.method.in_(list(methods)),
            e.primary_status.is_not(None) | e.primary_error.is_not(None),
            e.canary_status.is_not(None) | e.canary_error.is_not(None),
            e.recorded_at <= sa.func.now() - sa.literal(timedelta(milliseconds=settle_ms)),
            ~done,
        )
        .order_by(e.id)
        .limit(limit)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        DueExchange(r.id, r.trace_id, r.received_at, r.method, r.endpoint, bool(r.comparable))
        for r in rows
    ]


def create_reader(url: str, *, timeout_ms: int, pool_size: int = 2) -> AsyncEngine:
    """An engine for reading one service's database (``postgresql+asyncpg://...``); every
    connection it opens is read only by default. The caller disposes of it."""
    seconds = max(0.001, timeout_ms / 1000.0)
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        connect_args={
            "timeout": seconds,
            "command_timeout": seconds * 2,
            "server_settings": {
                "default_transaction_read_only": "on",
                "application_name": "graygate-write-check",
            },
        },
    )


async def read_rows(
    engine: AsyncEngine, query: str, trace_id: str, *, timeout_ms: int, max_rows: int
) -> RowsRead:
    """The rows ``query`` returns for ``trace_id``, read in a READ ONLY transaction with a
    statement timeout of ``timeout_ms`` (and the same bound on the whole read, connecting
    included). Raises what the driver raises (the caller counts it); TimeoutError when the
    bound is hit."""
    async with asyncio.timeout(timeout_ms / 1000.0 * 2 + 1.0):
        async with engine.connect() as conn:
            # The transaction's first statement (SQLAlchemy begins it here); the server's
            # default_transaction_read_only (create_reader) says the same.
            await conn.execute(sa.text("SET TRANSACTION READ ONLY"))
            try:
                await conn.execute(sa.text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))
                result = await conn.execute(sa.text(query), {"trace_id": trace_id})
                fetched = result.mappings().fetchmany(max_rows + 1)
            finally:
                await conn.rollback()
    rows = tuple(dict(r) for r in fetched[:max_rows])
    return RowsRead(rows, truncated=len(fetched) > max_rows)
