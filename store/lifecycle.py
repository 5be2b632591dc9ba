"""A run's lifecycle: listing with sizes, closing, deleting, pruning.

Deleting a run is one short transaction (a few ms): its partitions of exchanges and
differences are detached and moved to the trash (``store.partitions.trash_partitions``:
never a row-by-row DELETE), and its row is deleted: its losses, verdicts, runtime samples,
findings, versions and re-judgement jobs go with it (``ON DELETE CASCADE``: small per-run
tables), its scoped waivers stay (their ``run_id`` becomes NULL) and the waivers' audit
trail is never touched. From the commit on no view, API, verdict or report sees the run;
the partitions' files are dropped afterwards by the reaper (``store.trash``). A writer
still feeding the run finds no partition and no run: its rows are counted as rejected.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from graygate.errors import StoreBusy, UnknownRun
from store.failures import sqlstate, store_errors
from store.partitions import (
    lock_run,
    partition_sizes,
    trash_partitions,
)
from store.run_versions import version_changes, versions_seen
from store.tables import (
    exchanges,
    rejudge_differences,
    rejudge_outcomes,
    rejudges,
    run_losses,
    runs,
    verdicts,
)

__all__ = [
    "COUNT_EXACTLY_BELOW",
    "DELETE_BUSY_TIMEOUT_S",
    "DELETE_LOCK_TIMEOUT_MS",
    "MAX_KEEP_LAST",
    "DeletedRun",
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


@dataclass(frozen=True, slots=True)
class DeletedRun:
    name: str
    run_id: int
    exchanges: int  # exact when ``exact``, else PostgreSQL's estimate (pg_class.reltuples)
    exact: bool
    trash_bytes: int  # its partitions' size, in the trash until the reaper drops them

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.name,
            "deleted": True,
            "exchanges": self.exchanges,
            "exchanges_exact": self.exact,
            "reclaiming_bytes": self.trash_bytes,
        }


# Each attempt waits at most this long for a lock: a writer (a proxy's COPY, a diff
# worker's claim) queued behind the delete waits at most this plus the transaction's few
# milliseconds.
DELETE_LOCK_TIMEOUT_MS = 100
# Attempts go on, with pauses, for at most this long; then StoreBusy (nothing changed).
DELETE_BUSY_TIMEOUT_S = 30.0
# A run's exchanges are counted exactly when PostgreSQL estimates fewer than this (an
# index-only count of 100k rows takes a few ms); past it, the estimate is reported.
COUNT_EXACTLY_BELOW = 100_000

_LOCK_NOT_AVAILABLE = "55P03"


async def _cancel_rejudges(engine: AsyncEngine, name: str) -> None:
    """Before the delete's transaction: cancel the run's running re-judgements and delete
    their staging (as a newer ``rejudge`` does), so that the run row's cascade has no big
    staging to delete row by row while the delete holds its locks."""
    j = rejudges.c
    async with engine.begin() as conn:
        running = (
            await conn.scalars(
                sa.select(j.id)
                .join(runs, runs.c.id == j.run_id)
                .where(runs.c.name == name, j.completed_at.is_(None), j.cancelled_at.is_(None))
                .with_for_update(of=rejudges)
            )
        ).all()
        if not running:
            return
        await conn.execute(
            sa.delete(rejudge_differences).where(rejudge_differences.c.rejudge_id.in_(running))
        )
        await conn.execute(
            sa.delete(rejudge_outcomes).where(rejudge_outcomes.c.rejudge_id.in_(running))
        )
        await conn.execute(
            sa.update(rejudges).where(j.id.in_(running)).values(cancelled_at=sa.func.now())
        )
    logger.info("run %s: re-judgement(s) %s cancelled before its delete", name, list(running))


async def _delete_once(conn: AsyncConnection, name: str) -> DeletedRun:
    await conn.execute(sa.text(f"SET LOCAL lock_timeout = '{DELETE_LOCK_TIMEOUT_MS}ms'"))
    # runs first, before the partitioned parents (writers read runs, then COPY), and
    # before anything reads it (a lock taken after a read would be an upgrade); then the
    # run's advisory lock (``ensure_partitions`` makes no partition for it meanwhile).
    await conn.execute(sa.text("LOCK TABLE ONLY runs IN ACCESS EXCLUSIVE MODE"))
    run_id = await conn.scalar(sa.select(runs.c.id).where(runs.c.name == name))
    if run_id is None:
        raise UnknownRun(name)
    run_id = int(run_id)
    await lock_run(conn, run_id)
    # Its small rows go with its row (ON DELETE CASCADE); its scoped waivers stay (SET NULL).
    t = await trash_partitions(
        conn,
        run_id,
        count_exactly_below=COUNT_EXACTLY_BELOW,
        then=f"DELETE FROM runs WHERE id = {run_id}",
    )
    return DeletedRun(name, run_id, t.exchanges, t.exact, t.bytes)


async def delete_run(
    engine: AsyncEngine, name: str, *, busy_timeout_s: float = DELETE_BUSY_TIMEOUT_S
) -> DeletedRun:
    """Delete run ``name`` and everything recorded for it, in one short transaction: from
    its commit nothing sees the run; its partitions wait in the trash for the reaper
    (``store.trash.reap_trash``), which gives their space back. UnknownRun when there is
    none; StoreBusy when the locks could not be had for ``busy_timeout_s`` (nothing
    changed then).

    Each attempt waits at most ``DELETE_LOCK_TIMEOUT_MS`` for a lock, then rolls back and
    tries again after a pause: a long query holding a table makes the delete wait, never
    the writers queued behind it."""
    started = time.perf_counter()
    deadline = started + busy_timeout_s
    pause = 0.05
    attempts = 0
    async with store_errors(engine):
        await _cancel_rejudges(engine, name)
        while True:
            attempts += 1
            try:
                async with engine.begin() as conn:
                    deleted = await _delete_once(conn, name)
                break
            except Exception as exc:  # the DDL's errors come from asyncpg itself
                if sqlstate(exc) != _LOCK_NOT_AVAILABLE:
                    raise
                if time.perf_counter() + pause > deadline:
                    raise StoreBusy(
                        f"run {name} not deleted: its tables stayed locked by other sessions "
                        f"for {busy_timeout_s:g}s ({attempts} attempt(s); a long query?); "
                        "try again"
                    ) from None
                await asyncio.sleep(pause * random.uniform(0.5, 1.5))
                pause = min(1.0, pause * 2)
    logger.info(
        "run %s deleted (%s%d exchanges, %d bytes to reclaim) in %.0f ms, %d attempt(s)",
        name,
        "" if deleted.exact else "about ",
        deleted.exchanges,
        deleted.trash_bytes,
        (time.perf_counter() - started) * 1000,
        attempts,
    )
    return deleted


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


async def delete_runs(engine: AsyncEngine, names: Sequence[str]) -> dict[str, DeletedRun]:
    """Delete each run of ``names`` (one transaction each); a run gone meanwhile is skipped."""
    out: dict[str, DeletedRun] = {}
    for name in names:
        try:
            out[name] = await delete_run(engine, name)
        except UnknownRun:
            continue
    return out
