"""Partitions by run: one partition of ``exchanges`` and one of ``differences`` per run.

Both tables are ``PARTITION BY LIST (run_id)`` (``store.tables.PARTITIONED``); run N's rows
live in ``exchanges_rN`` and ``differences_rN``. Rows go in and are read through the parent
(COPY into the parent routes them), so nothing but this module names a partition.

Making them (``ensure_partitions``): when a run is created (``store.runs.ensure_run``), and
again by the writer when PostgreSQL says a row has no partition
(``store.exchanges.write_exchanges``). Each partition is made as a plain table and then
ATTACHed, which takes a SHARE UPDATE EXCLUSIVE lock on the parent (``CREATE TABLE ...
PARTITION OF`` would take ACCESS EXCLUSIVE and stall every proxy's COPY meanwhile). Many
processes may start the same run at once: a per-run advisory lock makes one of them create
the partitions and the others find them made. A run that does not exist, or is closed,
gets none.

There is no DEFAULT partition: a row of a run without a partition is refused (SQLSTATE
23514, ``is_missing_partition``), never parked where nobody looks; the writer makes the
partition if the run is open and retries once, else counts the row as a ``rejected`` loss.
(A default partition would also forbid ``DETACH ... CONCURRENTLY`` and make every ATTACH
scan it.)

Dropping them (``drop_partitions``, for ``graygate runs delete`` and ``prune``): each
partition is ``DETACH PARTITION ... CONCURRENTLY`` (SHARE UPDATE EXCLUSIVE on the parent:
the other runs' COPYs and claims go on) and then dropped: no row-by-row DELETE, no bloat,
no vacuum. A detach that was interrupted is finished (``FINALIZE``) by the next call.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.tables import PARTITIONED, runs

__all__ = [
    "PARTITION_NAME",
    "count_rows",
    "drop_partitions",
    "ensure_partitions",
    "is_missing_partition",
    "partition_name",
    "partition_sizes",
    "partitions_of",
]

logger = logging.getLogger(__name__)

# A partition's name: <table>_r<run id> (Alembic leaves these out of its comparison).
PARTITION_NAME: Final = re.compile(
    r"^(" + "|".join(t.name for t in PARTITIONED) + r")_r(?P<run_id>[0-9]+)$"
)

# The advisory lock's class (the first of its two keys): "gp" for graygate partitions.
_LOCK_CLASS: Final = 0x6770
_INT4: Final = 2**31 - 1

# The SQLSTATE PostgreSQL gives a row that no partition takes (a check violation).
_NO_PARTITION_STATE: Final = "23514"


def partition_name(table: str, run_id: int) -> str:
    """The name of run ``run_id``'s partition of ``table``."""
    return f"{table}_r{int(run_id)}"


def _lock_key(run_id: int) -> int:
    # Two int4 keys; a run id past 2**31 shares its lock with another run: that only
    # serialises the two, it never lets two processes make one partition.
    return int(run_id) % _INT4


def is_missing_partition(exc: BaseException) -> bool:
    """True when ``exc`` says a row's run has no partition (``no partition of relation
    ... found for row``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if str(getattr(cur, "sqlstate", "") or "") == _NO_PARTITION_STATE and (
            "no partition" in str(cur)
        ):
            return True
        todo.extend((getattr(cur, "orig", None), cur.__cause__))
    return False


_ATTACHED = sa.text(
    """
    SELECT c.relname, i.inhdetachpending AS pending
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
      JOIN pg_class p ON p.oid = i.inhparent
      JOIN pg_namespace n ON n.oid = p.relnamespace
     WHERE n.nspname = current_schema() AND p.relname = ANY(:parents)
       AND c.relname = ANY(:names)
    """
)


async def partitions_of(conn: AsyncConnection, run_id: int) -> dict[str, bool]:
    """Run ``run_id``'s attached partitions: name -> detach pending (an interrupted
    ``DETACH ... CONCURRENTLY``)."""
    names = [partition_name(t.name, run_id) for t in PARTITIONED]
    rows = await conn.execute(_ATTACHED, {"parents": [t.name for t in PARTITIONED], "names": names})
    return {r.relname: bool(r.pending) for r in rows}


async def _make(conn: AsyncConnection, run_id: int) -> bool:
    """In a transaction: make the run's missing partitions, if the run is open."""
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_CLASS, _lock_key(run_id))))
    have = await partitions_of(conn, run_id)
    missing = [t.name for t in PARTITIONED if partition_name(t.name, run_id) not in have]
    if not missing:
        return False
    # No row lock: the advisory lock keeps a delete (which takes it too) from removing the
    # run meanwhile, and a lock on the row would deadlock with a start's upsert of it.
    open_run = await conn.scalar(
        sa.select(runs.c.id).where(runs.c.id == run_id, runs.c.closed_at.is_(None))
    )
    if open_run is None:
        return False
    for parent in missing:
        name = partition_name(parent, run_id)
        await conn.execute(
            sa.text(
                f"CREATE TABLE IF NOT EXISTS {name} (LIKE {parent} INCLUDING DEFAULTS "
                "INCLUDING STORAGE INCLUDING COMPRESSION)"
            )
        )
        await conn.execute(
            sa.text(f"ALTER TABLE {parent} ATTACH PARTITION {name} FOR VALUES IN ({int(run_id)})")
        )
    logger.info("run %d: partitions %s made", run_id, ", ".join(missing))
    return True


async def ensure_partitions(engine: AsyncEngine, run_ids: Iterable[int]) -> list[int]:
    """Make the missing partitions of each open run of ``run_ids`` (one transaction per
    run); returns the runs that got one. Safe from many processes at once."""
    made = []
    for run_id in sorted({int(r) for r in run_ids}):
        async with engine.connect() as conn:
            have = await partitions_of(conn, run_id)
        if len(have) == len(PARTITIONED):
            continue
        async with engine.begin() as conn:
            if await _make(conn, run_id):
                made.append(run_id)
    return made


async def drop_partitions(engine: AsyncEngine, run_id: int) -> list[str]:
    """Detach (concurrently) and drop run ``run_id``'s partitions; returns their names.

    Holds the run's advisory lock throughout, so that no writer makes them again meanwhile
    (close the run first: ``ensure_partitions`` makes none for a closed run). Once
    detached, the run's rows are out of every query; the drop then gives their files back
    to the filesystem (its time grows with their size: the filesystem frees the blocks)."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        key = {"cls": _LOCK_CLASS, "key": _lock_key(run_id)}
        await conn.execute(sa.text("SELECT pg_advisory_lock(:cls, :key)"), key)
        try:
            started = time.perf_counter()
            attached = await partitions_of(conn, run_id)
            names = [partition_name(t.name, run_id) for t in PARTITIONED]
            for parent, name in zip((t.name for t in PARTITIONED), names, strict=True):
                if name in attached:
                    how = "FINALIZE" if attached[name] else "CONCURRENTLY"
                    detach = f"ALTER TABLE {parent} DETACH PARTITION {name} {how}"
                    await conn.execute(sa.text(detach))
            detached = time.perf_counter()
            dropped = [
                name
                for name in names
                if await conn.scalar(sa.select(sa.func.to_regclass(name))) is not None
            ]
            if dropped:
                await conn.execute(sa.text(f"DROP TABLE {', '.join(dropped)}"))
            done = time.perf_counter()
        finally:
            await conn.execute(sa.text("SELECT pg_advisory_unlock(:cls, :key)"), key)
    logger.info(
        "run %d: partitions %s detached in %.0f ms, dropped in %.0f ms",
        run_id,
        ", ".join(dropped) or "(none)",
        (detached - started) * 1000,
        (done - detached) * 1000,
    )
    return dropped


async def count_rows(conn: AsyncConnection, run_id: int, table: str = "exchanges") -> int:
    """The rows of run ``run_id``'s partition of ``table``, attached or not (a delete cut
    short leaves it detached, or detach pending, which queries of the parent no longer
    see); 0 when there is none."""
    name = partition_name(table, run_id)
    if await conn.scalar(sa.select(sa.func.to_regclass(name))) is None:
        return 0
    return int(await conn.scalar(sa.text(f"SELECT count(*) FROM {name}")) or 0)


async def partition_sizes(conn: AsyncConnection) -> dict[int, int]:
    """Bytes on disk (``pg_total_relation_size``: heap, TOAST and indexes) of every run's
    partitions, by run id."""
    rows = await conn.execute(
        sa.text(
            """
            SELECT c.relname, pg_total_relation_size(c.oid) AS bytes
              FROM pg_inherits i
              JOIN pg_class c ON c.oid = i.inhrelid
              JOIN pg_class p ON p.oid = i.inhparent
              JOIN pg_namespace n ON n.oid = p.relnamespace
             WHERE n.nspname = current_schema() AND p.relname = ANY(:parents)
            """
        ),
        {"parents": [t.name for t in PARTITIONED]},
    )
    sizes: dict[int, int] = {}
    for name, size in rows:
        m = PARTITION_NAME.match(name)
        if m is not None:
            run_id = int(m["run_id"])
            sizes[run_id] = sizes.get(run_id, 0) + int(size)
    return sizes
