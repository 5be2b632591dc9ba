"""A run's lifecycle: listing with sizes, closing, deleting, pruning.

Deleting a run closes it (writers drop its rows from then on), drops its partitions of
exchanges and differences (``store.partitions.drop_partitions``: detached concurrently and
dropped, never a row-by-row DELETE), then deletes its row: its losses, verdicts, runtime
samples, findings, versions and re-judgement jobs go with it (``ON DELETE CASCADE``: small
per-run tables), its scoped waivers stay (their ``run_id`` becomes NULL) and the waivers'
audit trail is never touched. Each step can be done again: a delete that failed half-way
is finished by the next one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from graygate.errors import UnknownRun
from store.failures import store_errors
from store.partitions import count_rows, drop_partitions, partition_sizes
from store.run_versions import version_changes, versions_seen
from store.tables import exchanges, run_losses, runs, verdicts

__all__ = [
    "MAX_KEEP_LAST",
    "RunListing",
    "close_run",
    "delete_run",
    "delete_runs",
    "list_run_details",
    "prune_candidates",
]

logger = logging.getLogger(__name__)

# --keep-last is at most this.
MAX_KEEP_LAST = 1_000_000


@dataclass(frozen=True, slots=True)
class RunListing:
    name: str
    created_at: datetime
    last_exchange_at: datetime | None
    closed_at: datetime | None
    exchanges: int
    judged: int
    unrecorded: int
    verdict: str | None  # the latest recorded verdict
    size_bytes: int  # its partitions of exchanges and differences, indexes and TOAST included
    primary_version: str | None = None
    canary_version: str | None = None
    version_changes: tuple[str, ...] = ()  # versions.header: a side whose version changed

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "last_exchange_at": self.last_exchange_at.isoformat()
            if self.last_exchange_at
            else None,
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "exchanges": self.exchanges,
            "judged": self.judged,
            "unrecorded": self.unrecorded,
            "verdict": self.verdict,
            "size_bytes": self.size_bytes,
            "versions": {"primary": self.primary_version, "canary": self.canary_version},
            "version_changes": list(self.version_changes),
        }


async def list_run_details(engine: AsyncEngine) -> list[RunListing]:
    """Every run, most recently created first, with its counts, latest verdict and size
    (``pg_total_relation_size`` of its partitions)."""
    x, r = exchanges.c, runs.c
    ex = (
        sa.select(
            x.run_id,
            sa.func.count().label("n"),
            sa.func.count(x.judged_at).label("judged"),
            sa.func.max(x.received_at).label("last"),
        )
        .group_by(x.run_id)
        .subquery()
    )
    lo = (
        sa.select(run_losses.c.run_id, sa.func.sum(run_losses.c.count).label("n"))
        .group_by(run_losses.c.run_id)
        .subquery()
    )
    latest = (
        sa.select(verdicts.c.verdict)
        .where(verdicts.c.run_id == r.id)
        .order_by(verdicts.c.computed_at.desc(), verdicts.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    stmt = (
        sa.select(
            r.name,
            r.created_at,
            r.closed_at,
            r.primary_version,
            r.canary_version,
            r.id,
            sa.func.coalesce(ex.c.n, 0).label("exchanges"),
            sa.func.coalesce(ex.c.judged, 0).label("judged"),
            ex.c.last,
            sa.func.coalesce(lo.c.n, 0).label("unrecorded"),
            latest.label("verdict"),
        )
        .select_from(runs.outerjoin(ex, ex.c.run_id == r.id).outerjoin(lo, lo.c.run_id == r.id))
        .order_by(r.created_at.desc(), r.id.desc())
    )
    async with store_errors(engine), engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
        sizes = await partition_sizes(conn)
        seen = await versions_seen(conn, [int(row.id) for row in rows])
    return [
        RunListing(
            name=row.name,
            created_at=row.created_at,
            last_exchange_at=row.last,
            closed_at=row.closed_at,
            exchanges=int(row.exchanges),
            judged=int(row.judged),
            unrecorded=int(row.unrecorded),
            verdict=row.verdict,
            size_bytes=sizes.get(int(row.id), 0),
            primary_version=row.primary_version,
            canary_version=row.canary_version,
            version_changes=version_changes(seen.get(int(row.id), ())),
        )
        for row in rows
    ]


async def close_run(engine: AsyncEngine, name: str) -> datetime:
    """Close run ``name`` (idempotent: closing a closed run keeps its first close time);
    returns when it was closed. UnknownRun when there is none."""
    r = runs.c
    async with store_errors(engine), engine.begin() as conn:
        closed_at = await conn.scalar(
            sa.update(runs)
            .where(r.name == name)
            .values(closed_at=sa.func.coalesce(r.closed_at, sa.func.now()))
            .returning(r.closed_at)
        )
    if closed_at is None:
        raise UnknownRun(name)
    logger.info("run %s closed", name)
    return closed_at  # type: ignore[no-any-return]


async def delete_run(engine: AsyncEngine, name: str) -> int:
    """Delete run ``name`` and everything recorded for it; returns how many exchanges it
    held. UnknownRun when there is none."""
    r = runs.c
    started = time.perf_counter()
    async with store_errors(engine):
        async with engine.begin() as conn:
            # Closed first (committed): from now on writers drop its rows and make it no
            # partition.
            run_id = await conn.scalar(
                sa.update(runs)
                .where(r.name == name)
                .values(closed_at=sa.func.coalesce(r.closed_at, sa.func.now()))
                .returning(r.id)
            )
            if run_id is None:
                raise UnknownRun(name)
            n = await count_rows(conn, int(run_id))
        counted = time.perf_counter()
        await drop_partitions(engine, int(run_id))
        async with engine.begin() as conn:
            await conn.execute(sa.delete(runs).where(r.id == run_id))
    logger.info(
        "run %s deleted (%d exchanges) in %.0f ms (closed and counted in %.0f ms)",
        name,
        n,
        (time.perf_counter() - started) * 1000,
        (counted - started) * 1000,
    )
    return n


async def prune_candidates(
    engine: AsyncEngine, *, older_than_s: float, keep_last: int = 0
) -> list[str]:
    """The runs ``graygate runs prune`` deletes: those whose last activity (the latest
    exchange recorded, else the run's last start) is older than ``older_than_s`` seconds,
    except the ``keep_last`` most recently created runs; oldest first."""
    if not 0 <= keep_last <= MAX_KEEP_LAST:
        raise ValueError(f"keep_last must be between 0 and {MAX_KEEP_LAST}, got {keep_last}")
    if not older_than_s > 0:
        raise ValueError(f"older_than must be more than 0 seconds, got {older_than_s:g}")
    r, x = runs.c, exchanges.c
    last_recorded = (
        sa.select(x.recorded_at)
        .where(x.run_id == r.id)
        .order_by(x.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    activity = sa.func.greatest(r.updated_at, sa.func.coalesce(last_recorded, r.updated_at))
    ranked = sa.select(
        r.name,
        r.created_at,
        activity.label("activity"),
        sa.func.row_number().over(order_by=(r.created_at.desc(), r.id.desc())).label("rank"),
    ).subquery()
    cutoff = sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than_s)
    stmt = (
        sa.select(ranked.c.name)
        .where(ranked.c.rank > keep_last, ranked.c.activity < cutoff)
        .order_by(ranked.c.created_at, ranked.c.name)
    )
    async with store_errors(engine), engine.connect() as conn:
        return list((await conn.scalars(stmt)).all())


async def delete_runs(engine: AsyncEngine, names: Sequence[str]) -> dict[str, int]:
    """Delete each run of ``names`` (one transaction each); a run gone meanwhile is skipped."""
    out: dict[str, int] = {}
    for name in names:
        try:
            out[name] = await delete_run(engine, name)
        except UnknownRun:
            continue
    return out
