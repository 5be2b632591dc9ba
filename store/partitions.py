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

Removing them (``trash_partitions``, for ``graygate runs delete`` and ``prune``): in the
transaction that deletes the run, each partition is detached, moved to the schema
``graygate_trash`` and recorded in ``trash``; ``store.trash`` drops them after the commit,
off the caller's path (dropping gigabytes of files takes the filesystem a second or more):
no row-by-row DELETE, no bloat, no vacuum.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.tables import PARTITIONED, TRASH_SCHEMA, runs

__all__ = [
    "PARTITION_NAME",
    "Trashed",
    "TrashedPartition",
    "count_rows",
    "ensure_partitions",
    "is_missing_partition",
    "lock_run",
    "partition_name",
    "partition_sizes",
    "partitions_of",
    "trash_partitions",
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
    await lock_run(conn, run_id)
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


@dataclass(frozen=True, slots=True)
class TrashedPartition:
    relname: str  # its name in TRASH_SCHEMA
    bytes: int  # pg_total_relation_size when it was trashed
    rows: int  # pg_class.reltuples: PostgreSQL's estimate (-1 when never analysed)


# A run's partitions as they stand: attached or not (or detach pending), their estimated
# rows, size and foreign keys; one row per partitioned table, nulls where there is none.
_PLAN = sa.text(
    """
    SELECT p.parent, p.name, c.oid IS NOT NULL AS present, i.inhrelid IS NOT NULL AS attached,
           coalesce(i.inhdetachpending, false) AS pending, coalesce(c.reltuples, -1) AS rows,
           CASE WHEN c.oid IS NULL THEN 0 ELSE pg_total_relation_size(c.oid) END AS bytes,
           ARRAY(SELECT conname::text FROM pg_constraint
                  WHERE conrelid = c.oid AND contype = 'f' ORDER BY 1) AS fks
      FROM unnest(CAST(:parents AS text[]), CAST(:names AS text[])) WITH ORDINALITY
           AS p(parent, name, n)
      LEFT JOIN pg_class c ON c.oid = to_regclass(p.name)
      LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
     ORDER BY p.n
    """
)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Trashed:
    partitions: list[TrashedPartition]
    exchanges: int  # the rows of its exchanges partition: exact when ``exact``, else estimated
    exact: bool

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.partitions)


async def trash_partitions(
    conn: AsyncConnection, run_id: int, *, count_exactly_below: int = 0, then: str = ""
) -> Trashed:
    """In the caller's transaction: detach run ``run_id``'s partitions, move them to
    ``TRASH_SCHEMA`` and record them in ``trash`` (with the run's name, from its row),
    then run ``then`` (SQL of the caller's, e.g. the run row's delete), in one round trip.
    Returns the partitions and the exchanges they held: counted when PostgreSQL estimates
    fewer than ``count_exactly_below`` (or has no estimate), else the estimate (an exact
    count of 1M rows costs more than the rest together). Nothing is dropped here: the
    reaper (``store.trash``) drops them after the commit.

    The caller holds the run's advisory lock (``lock_run``) and ``runs`` in ACCESS
    EXCLUSIVE mode, and has begun the transaction with a statement. Each plain ``DETACH
    PARTITION`` takes ACCESS EXCLUSIVE on the parent until the commit (``DETACH ...
    CONCURRENTLY`` cannot run in a transaction); the caller's transaction is short and its
    lock waits bounded (``store.lifecycle``). A partition left detach pending by an
    interrupted ``DETACH ... CONCURRENTLY`` is finished (``FINALIZE``); one already
    detached is taken as it is. Its foreign key to ``runs`` is dropped, else deleting the
    run's row would cascade into it row by row."""
    run_id = int(run_id)
    parents = [t.name for t in PARTITIONED]
    plan = (
        await conn.execute(
            _PLAN, {"parents": parents, "names": [partition_name(p, run_id) for p in parents]}
        )
    ).all()
    out: list[TrashedPartition] = []
    ddl: list[str] = []
    exchanges, exact = 0, True
    for row in plan:
        if not row.present:
            continue
        name = str(row.name)
        if row.parent == "exchanges":
            exact = row.rows < count_exactly_below
            if exact:
                exchanges = int(await conn.scalar(sa.text(f"SELECT count(*) FROM {name}")) or 0)
            else:
                exchanges = int(row.rows)
        if row.attached:
            how = " FINALIZE" if row.pending else ""
            ddl.append(f"ALTER TABLE {row.parent} DETACH PARTITION {name}{how}")
        ddl.extend(f"ALTER TABLE {name} DROP CONSTRAINT {_ident(fk)}" for fk in row.fks)
        ddl.append(f"ALTER TABLE {name} SET SCHEMA {TRASH_SCHEMA}")
        out.append(TrashedPartition(name, int(row.bytes), int(row.rows)))
    if out:
        values = ", ".join(f"('{p.relname}', {p.bytes})" for p in out)
        ddl.append(
            "INSERT INTO trash (relname, run_id, run_name, bytes) "
            f"SELECT v.relname, r.id, r.name, v.bytes FROM runs r, (VALUES {values}) "
            f"AS v(relname, bytes) WHERE r.id = {run_id}"
        )
    if then:
        ddl.append(then)
    if ddl:
        # One round trip (the simple query protocol takes many statements), inside the
        # transaction SQLAlchemy began on this connection.
        raw = await conn.get_raw_connection()
        await raw.driver_connection.execute(";\n".join(ddl))  # type: ignore[union-attr]
    return Trashed(out, exchanges, exact)


async def lock_run(conn: AsyncConnection, run_id: int) -> None:
    """In a transaction: the run's advisory lock (``ensure_partitions`` takes it too), held
    until the transaction ends."""
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_CLASS, _lock_key(run_id))))


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
