"""A run's lifecycle: listing with sizes, closing, deleting, pruning.

Deleting a run deletes its row; its exchanges, differences, losses, verdicts, runtime
samples and findings go with it (``ON DELETE CASCADE``), its scoped waivers stay (their
``run_id`` becomes NULL) and the waivers' audit trail is never touched. Until exchanges are
partitioned by run this is a row-by-row delete inside PostgreSQL (see
docs/ARCHITECTURE.md, "Storage at production volume").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from graygate.errors import UnknownRun
from store.failures import store_errors
from store.tables import differences, exchanges, run_losses, runs, verdicts

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
    size_bytes: int  # estimated: the run's share of the exchanges and differences tables
    primary_version: str | None = None
    canary_version: str | None = None

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
        }


async def list_run_details(engine: AsyncEngine) -> list[RunListing]:
    """Every run, most recently created first, with its counts, latest verdict and size.

    The size is an estimate: the run's share, by rows, of ``pg_total_relation_size`` of
    ``exchanges`` and ``differences`` (indexes and TOAST included)."""
    x, d, r = exchanges.c, differences.c, runs.c
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
    df = sa.select(d.run_id, sa.func.count().label("n")).group_by(d.run_id).subquery()
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
            sa.func.coalesce(ex.c.n, 0).label("exchanges"),
            sa.func.coalesce(ex.c.judged, 0).label("judged"),
            ex.c.last,
            sa.func.coalesce(df.c.n, 0).label("differences"),
            sa.func.coalesce(lo.c.n, 0).label("unrecorded"),
            latest.label("verdict"),
        )
        .select_from(
            runs.outerjoin(ex, ex.c.run_id == r.id)
            .outerjoin(df, df.c.run_id == r.id)
            .outerjoin(lo, lo.c.run_id == r.id)
        )
        .order_by(r.created_at.desc(), r.id.desc())
    )
    sizes = sa.select(
        sa.func.pg_total_relation_size(sa.literal("exchanges")),
        sa.func.pg_total_relation_size(sa.literal("differences")),
    )
    async with store_errors(engine), engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
        ex_bytes, diff_bytes = (await conn.execute(sizes)).one()
    total_ex = sum(int(row.exchanges) for row in rows) or 1
    total_diff = sum(int(row.differences) for row in rows) or 1
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
            size_bytes=int(
                ex_bytes * int(row.exchanges) / total_ex
                + diff_bytes * int(row.differences) / total_diff
            ),
            primary_version=row.primary_version,
            canary_version=row.canary_version,
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
    async with store_errors(engine), engine.begin() as conn:
        run_id = await conn.scalar(sa.select(r.id).where(r.name == name).with_for_update())
        if run_id is None:
            raise UnknownRun(name)
        n = await conn.scalar(
            sa.select(sa.func.count()).select_from(exchanges).where(exchanges.c.run_id == run_id)
        )
        await conn.execute(sa.delete(runs).where(r.id == run_id))
    logger.info("run %s deleted (%d exchanges)", name, n or 0)
    return int(n or 0)


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
