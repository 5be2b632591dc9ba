"""Runtime samples, GC pause baselines and preflight findings: their SQL.

:class:`SamplerLock` makes one process the sampler of a run's role when several processes
(on several hosts) serve the same run: a PostgreSQL session advisory lock.

Plain values in and out (:class:`StoredSample`, :class:`PauseStats`, :class:`Finding`);
:class:`SampleValues` is what a sample holds; ``diff.runtime_checks`` judges anything that has it
(its ``RuntimeSample`` and a :class:`StoredSample`), naming it for types only.

A pause baseline is computed where the pauses are, with SQL aggregates over
``unnest(pauses_ns)``: the primary's in the same run, or the canary's in the latest run
whose latest verdict is GO.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from graygate.values import PreflightFinding
from graygate.vocabulary import Role
from store.tables import ROLES, preflight_findings, runs, runtime_samples, verdicts

__all__ = [
    "Finding",
    "PauseStats",
    "SampleValues",
    "SamplerLock",
    "StoredSample",
    "fetch_findings",
    "fetch_samples",
    "insert_findings",
    "insert_samples",
    "pause_stats",
    "previous_pause_stats",
]

logger = logging.getLogger(__name__)


class SampleValues(Protocol):
    """One runtime sample as stored and judged: ``diff.runtime_checks.RuntimeSample`` or a
    stored one."""

    @property
    def taken_at(self) -> datetime: ...
    @property
    def source(self) -> str: ...
    @property
    def goroutines(self) -> int | None: ...
    @property
    def heap_alloc(self) -> int | None: ...
    @property
    def heap_inuse(self) -> int | None: ...
    @property
    def num_gc(self) -> int | None: ...
    @property
    def gc_cpu_fraction(self) -> float | None: ...
    @property
    def pauses_ns(self) -> Sequence[int]: ...
    @property
    def error(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class StoredSample:
    id: int
    run_id: int
    role: str
    taken_at: datetime
    source: str
    goroutines: int | None
    heap_alloc: int | None
    heap_inuse: int | None
    num_gc: int | None
    gc_cpu_fraction: float | None
    pauses_ns: tuple[int, ...]
    error: str | None


@dataclass(frozen=True, slots=True)
class PauseStats:
    """Aggregate GC pauses of one role in one run."""

    run_id: int
    role: str
    count: int
    mean_ns: float | None
    sigma_ns: float | None  # sample standard deviation; None with fewer than two


# The one preflight-finding type (graygate.values); the name this module has always used.
Finding = PreflightFinding


def _role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return role


async def insert_samples(
    engine: AsyncEngine, run_id: int, role: str, samples: Iterable[SampleValues]
) -> int:
    """Store samples of ``role``; returns how many (none for a closed run: its runtime
    sampling has stopped, ``graygate runs close``)."""
    rows = [
        {
            "run_id": run_id,
            "role": _role(role),
            "taken_at": s.taken_at,
            "source": s.source,
            "goroutines": s.goroutines,
            "heap_alloc": s.heap_alloc,
            "heap_inuse": s.heap_inuse,
            "num_gc": s.num_gc,
            "gc_cpu_fraction": s.gc_cpu_fraction,
            "pauses_ns": None if s.error is not None else list(s.pauses_ns),
            "error": s.error,
        }
        for s in samples
    ]
    if not rows:
        return 0
    async with engine.begin() as conn:
        closed = await conn.scalar(
            sa.select(runs.c.closed_at.is_not(None)).where(runs.c.id == run_id)
        )
        if closed:
            return 0
        await conn.execute(sa.insert(runtime_samples), rows)
    return len(rows)


async def fetch_samples(
    engine: AsyncEngine, run_id: int, role: str, *, since: datetime | None = None
) -> list[StoredSample]:
    """A run's samples of ``role``, oldest first (failed polls included)."""
    t = runtime_samples
    stmt = (
        sa.select(t)
        .where(t.c.run_id == run_id, t.c.role == _role(role))
        .order_by(t.c.taken_at, t.c.id)
    )
    if since is not None:
        stmt = stmt.where(t.c.taken_at >= since)
    async with engine.connect() as conn:
        result = await conn.execute(stmt)
        return [
            StoredSample(
                id=r.id,
                run_id=r.run_id,
                role=r.role,
                taken_at=r.taken_at,
                source=r.source,
                goroutines=r.goroutines,
                heap_alloc=r.heap_alloc,
                heap_inuse=r.heap_inuse,
                num_gc=r.num_gc,
                gc_cpu_fraction=r.gc_cpu_fraction,
                pauses_ns=tuple(r.pauses_ns or ()),
                error=r.error,
            )
            for r in result
        ]


async def pause_stats(engine: AsyncEngine, run_id: int, role: str) -> PauseStats:
    """Count, mean and standard deviation of every GC pause stored for ``role``."""
    t = runtime_samples
    p = sa.func.unnest(t.c.pauses_ns).table_valued("p").lateral("p")
    stmt = (
        sa.select(sa.func.count(p.c.p), sa.func.avg(p.c.p), sa.func.stddev_samp(p.c.p))
        .select_from(t.join(p, sa.true()))
        .where(t.c.run_id == run_id, t.c.role == _role(role), t.c.error.is_(None))
    )
    async with engine.connect() as conn:
        count, mean, sigma = (await conn.execute(stmt)).one()
    return PauseStats(
        run_id=run_id,
        role=role,
        count=int(count),
        mean_ns=None if mean is None else float(mean),
        sigma_ns=None if sigma is None else float(sigma),
    )


async def previous_pause_stats(
    engine: AsyncEngine,
    *,
    exclude_run_id: int,
    role: str = Role.CANARY,
    canary_url: str | None = None,
) -> PauseStats | None:
    """``role``'s pauses in the latest other run whose latest verdict is GO and that has
    pauses stored; with ``canary_url``, only among runs with that canary URL (the same
    service). None when there is no such run."""
    v = verdicts
    ranked = sa.select(
        v.c.run_id,
        v.c.verdict,
        v.c.computed_at,
        sa.func.row_number()
        .over(partition_by=v.c.run_id, order_by=(v.c.computed_at.desc(), v.c.id.desc()))
        .label("rank"),
    ).subquery("ranked")
    latest = sa.select(ranked).where(ranked.c.rank == 1).subquery("latest")
    s = runtime_samples
    has_pauses = sa.exists().where(
        s.c.run_id == latest.c.run_id,
        s.c.role == _role(role),
        s.c.error.is_(None),
        sa.func.cardinality(s.c.pauses_ns) > 0,
    )
    stmt = (
        sa.select(latest.c.run_id)
        .select_from(latest.join(runs, runs.c.id == latest.c.run_id))
        .where(latest.c.verdict == "GO", latest.c.run_id != exclude_run_id, has_pauses)
        .order_by(latest.c.computed_at.desc())
        .limit(1)
    )
    if canary_url is not None:
        stmt = stmt.where(runs.c.canary_url == canary_url)
    async with engine.connect() as conn:
        run_id = await conn.scalar(stmt)
    if run_id is None:
        return None
    return await pause_stats(engine, int(run_id), role)


async def insert_findings(engine: AsyncEngine, run_id: int, findings: Iterable[Finding]) -> None:
    """Store one preflight's findings; they share one ``checked_at`` (the transaction's)."""
    rows = [{"run_id": run_id, "check": f.check, "ok": f.ok, "detail": f.detail} for f in findings]
    if not rows:
        return
    async with engine.begin() as conn:
        await conn.execute(sa.insert(preflight_findings), rows)


async def fetch_findings(engine: AsyncEngine, run_id: int, *, latest: bool = True) -> list[Finding]:
    """A run's preflight findings: the latest preflight's, or (``latest=False``) all."""
    t = preflight_findings
    stmt = sa.select(t.c.check, t.c.ok, t.c.detail, t.c.checked_at).where(t.c.run_id == run_id)
    if latest:
        newest = (
            sa.select(sa.func.max(t.c.checked_at)).where(t.c.run_id == run_id).scalar_subquery()
        )
        stmt = stmt.where(t.c.checked_at == newest)
    stmt = stmt.order_by(t.c.checked_at, t.c.id)
    async with engine.connect() as conn:
        result = await conn.execute(stmt)
        return [Finding(r.check, r.ok, r.detail, r.checked_at) for r in result]


class SamplerLock:
    """Which process samples ``role`` of ``run_id``: the one holding a PostgreSQL session
    advisory lock, on a connection it keeps while it holds it.

    :meth:`acquire` answers True (this process holds it; checked on each call), False
    (another process does) or None (the database cannot say: it is away).
    """

    def __init__(self, engine: AsyncEngine, run_id: int, role: str) -> None:
        self.engine = engine
        tag = zlib.crc32(f"graygate.runtime_sampler:{_role(role)}".encode()) & 0x7FFF
        self.key = (tag << 48) | (run_id & 0xFFFF_FFFF_FFFF)
        self._conn: AsyncConnection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    async def acquire(self) -> bool | None:
        try:
            if self._conn is not None:
                await self._conn.execute(sa.select(1))
                await self._conn.commit()
                return True
            conn = await self.engine.connect()
            try:
                got = bool(await conn.scalar(sa.select(sa.func.pg_try_advisory_lock(self.key))))
                await conn.commit()  # the lock outlives the transaction; the session keeps it
            except BaseException:
                await conn.close()
                raise
            if not got:
                await conn.close()
                return False
            self._conn = conn
            return True
        except Exception as exc:  # the database is away: nobody can tell who samples
            logger.debug("sampler lock %d: %s", self.key, type(exc).__name__)
            await self._drop()
            return None

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.scalar(sa.select(sa.func.pg_advisory_unlock(self.key)))
            await conn.commit()
        except Exception:  # closing the session releases it anyway
            logger.debug("sampler lock %d: unlock failed", self.key)
        finally:
            await self._close(conn)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._close(conn)

    @staticmethod
    async def _close(conn: AsyncConnection) -> None:
        try:
            await conn.close()
        except Exception:
            logger.debug("closing a broken sampler lock connection failed")
