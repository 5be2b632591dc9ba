"""The trash: deleted runs' partitions, waiting to be dropped off the caller's path.

``graygate runs delete`` (``store.lifecycle.delete_run``) removes a run in one short
transaction: its row and small rows go, its partitions of exchanges and differences are
detached and moved to the schema ``graygate_trash``, each recorded in the table ``trash``
(``store.partitions.trash_partitions``). From the commit on, nothing sees the run. Dropping
the partitions' files is what takes time (a second or more for gigabytes on a filesystem
with online discard, which frees every block as the file goes), and it is done here,
after the commit, by whoever reaps:

- the CLI's ``graygate runs reap``, which ``runs delete`` and ``prune`` start detached (or
  run themselves with ``--wait``);
- the admin API's DELETE, in a background task;
- the diff workers, every ``SWEEP_EVERY_S`` (``trash_sweeper``): what a crash or a killed
  reaper left behind is dropped by the next sweep.

Each trashed table is dropped in a transaction of its own, its ``trash`` row claimed
``FOR UPDATE SKIP LOCKED``: many reapers at once drop each table once, and a reaper that
dies mid-drop rolls back, leaving the table and its row for the next one. Dropping a
trashed table locks only that table (it has no parent and no foreign key any more).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from graygate.errors import one_line
from store.failures import store_errors
from store.tables import TRASH_SCHEMA, trash

__all__ = [
    "SWEEP_EVERY_S",
    "Reaped",
    "TrashSummary",
    "reap_trash",
    "trash_summary",
    "trash_sweeper",
    "wait_reaped",
]

logger = logging.getLogger(__name__)

# How often the diff workers sweep the trash.
SWEEP_EVERY_S: Final = 60.0

# A trashed table is locked by nobody; should something hold it anyway, its drop gives up
# after this long and is tried again by the next reaper.
_DROP_LOCK_TIMEOUT: Final = "5s"


@dataclass(frozen=True, slots=True)
class Reaped:
    tables: int
    bytes: int  # their size when they were trashed
    seconds: float


@dataclass(frozen=True, slots=True)
class TrashSummary:
    tables: int
    runs: tuple[str, ...]  # the deleted runs whose space is still being reclaimed
    bytes: int

    def as_dict(self) -> dict[str, object]:
        return {"tables": self.tables, "runs": list(self.runs), "bytes": self.bytes}


async def _reap_one(engine: AsyncEngine, run_ids: list[int] | None) -> tuple[str, int] | None:
    t = trash.c
    claim = sa.select(t.id, t.relname, t.bytes).order_by(t.id).limit(1)
    if run_ids is not None:
        claim = claim.where(t.run_id.in_(run_ids))
    async with engine.begin() as conn:
        row = (await conn.execute(claim.with_for_update(skip_locked=True))).first()
        if row is None:
            return None
        await conn.execute(sa.text(f"SET LOCAL lock_timeout = '{_DROP_LOCK_TIMEOUT}'"))
        relname = str(row.relname).replace('"', '""')
        await conn.execute(sa.text(f'DROP TABLE IF EXISTS {TRASH_SCHEMA}."{relname}"'))
        await conn.execute(sa.delete(trash).where(t.id == row.id))
    # The files are unlinked at the commit (the first segment of each is truncated then,
    # and unlinked at the next checkpoint): the space is back when this returns.
    return str(row.relname), int(row.bytes)


async def reap_trash(engine: AsyncEngine, *, run_ids: Iterable[int] | None = None) -> Reaped:
    """Drop every trashed table (only those of ``run_ids`` when given) that no other reaper
    is dropping; returns what this call dropped."""
    started = time.perf_counter()
    ids = None if run_ids is None else sorted({int(r) for r in run_ids})
    tables = size = 0
    async with store_errors(engine):
        while (done := await _reap_one(engine, ids)) is not None:
            tables += 1
            size += done[1]
            logger.info("trash: %s dropped (%d bytes)", done[0], done[1])
    return Reaped(tables, size, time.perf_counter() - started)


async def trash_summary(conn: AsyncConnection) -> TrashSummary:
    """What the trash holds: tables, their runs, their bytes."""
    t = trash.c
    rows = (await conn.execute(sa.select(t.run_name, t.bytes).order_by(t.id))).all()
    names = tuple(dict.fromkeys(str(r.run_name) for r in rows))
    return TrashSummary(len(rows), names, sum(int(r.bytes) for r in rows))


async def trash_sweeper(
    engine: AsyncEngine, stop: asyncio.Event, *, every_s: float = SWEEP_EVERY_S
) -> None:
    """Reap the trash now and every ``every_s`` seconds until ``stop`` is set (the diff
    workers run one). A failed sweep is logged and tried again at the next."""
    while not stop.is_set():
        try:
            reaped = await reap_trash(engine)
            if reaped.tables:
                logger.info(
                    "trash sweep: %d table(s), %d bytes dropped", reaped.tables, reaped.bytes
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("trash sweep failed (%s); next in %.0fs", one_line(exc), every_s)
        try:
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        except TimeoutError:
            pass


async def wait_reaped(engine: AsyncEngine, run_ids: Iterable[int], *, poll_s: float = 0.2) -> float:
    """Reap the trash of ``run_ids`` here, and wait for any other reaper dropping part of
    it meanwhile, until none is left; returns the seconds it took."""
    started = time.perf_counter()
    ids = sorted({int(r) for r in run_ids})
    left = sa.select(sa.func.count()).select_from(trash).where(trash.c.run_id.in_(ids))
    while True:
        await reap_trash(engine, run_ids=ids)
        async with store_errors(engine), engine.connect() as conn:
            if not await conn.scalar(left):
                return time.perf_counter() - started
        await asyncio.sleep(poll_s)
