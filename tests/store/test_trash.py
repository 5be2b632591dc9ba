"""Deleting a run on the real PostgreSQL: one short transaction removes it (nothing sees it
from the commit on) and puts its partitions in the trash; the reaper drops them; what a
crash leaves in the trash (a reaper killed mid-drop, or never started) is swept; a delete
that cannot get its locks gives up and retries without stalling the writers of other runs
(whose lock waits are bounded: ``DELETE_LOCK_TIMEOUT_MS`` plus the transaction's few ms,
well under the 2 s these writers allow before failing)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from diff.worker import judge_pending, rejudge_step, run_workers
from graygate.errors import StoreBusy, UnknownRun
from store.exchanges import count_exchanges, write_exchanges
from store.lifecycle import (
    DELETE_LOCK_TIMEOUT_MS,
    delete_run,
    delete_runs,
    list_run_details,
)
from store.partitions import partition_name, partitions_of
from store.rejudge import start_rejudge
from store.tables import TRASH_SCHEMA, rejudge_outcomes, rejudges, runs, trash
from store.trash import reap_trash, trash_summary, wait_reaped
from tests.diff.judgeseed import add, matching, new_run, rulebook
from tests.proxy.recording.rows import rows

NAMES = ("exchanges", "differences")

# The lock wait the concurrent writers below allow: a statement waiting longer fails with
# SQLSTATE 55P03. The delete's own waits are bounded far below it.
WRITER_LOCK_TIMEOUT_MS = 2_000
assert WRITER_LOCK_TIMEOUT_MS >= 10 * DELETE_LOCK_TIMEOUT_MS


async def _in_trash(engine: AsyncEngine, run_id: int) -> tuple[list[str], int]:
    """The run's tables in the trash schema, and its rows in ``trash``."""
    async with engine.connect() as conn:
        tables = await conn.scalars(
            sa.text(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :schema AND c.relname = ANY(:names) ORDER BY 1"
            ),
            {"schema": TRASH_SCHEMA, "names": [partition_name(t, run_id) for t in NAMES]},
        )
        n = await conn.scalar(
            sa.select(sa.func.count()).select_from(trash).where(trash.c.run_id == run_id)
        )
        return list(tables.all()), int(n or 0)


def _both(run_id: int) -> list[str]:
    return sorted(partition_name(t, run_id) for t in NAMES)


async def test_delete_removes_the_run_at_once_and_the_reaper_drops_its_trash(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(5))
    await judge_pending(engine, run_name, rulebook())

    deleted = await delete_run(engine, run_name)
    assert (deleted.exchanges, deleted.exact, deleted.run_id) == (5, True, run_id)
    assert deleted.trash_bytes > 0
    # Gone for every reader at once ...
    assert run_name not in {r.name for r in await list_run_details(engine)}
    assert await count_exchanges(engine, run_id) == 0
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(runs.c.id).where(runs.c.id == run_id)) is None
        assert await partitions_of(conn, run_id) == {}
        summary = await trash_summary(conn)
    # ... its space not yet: the partitions wait in the trash.
    assert run_name in summary.runs and summary.bytes >= deleted.trash_bytes
    assert await _in_trash(engine, run_id) == (_both(run_id), 2)

    reaped = await reap_trash(engine, run_ids=[run_id])
    assert (reaped.tables, reaped.bytes) == (2, deleted.trash_bytes)
    assert await _in_trash(engine, run_id) == ([], 0)
    with pytest.raises(UnknownRun):
        await delete_run(engine, run_name)


async def test_prune_deletes_each_run_and_wait_reaped_drops_them(engine: AsyncEngine) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = {}
    for i in range(2):
        ids[f"pr-{tag}-{i}"] = await new_run(engine, f"pr-{tag}-{i}")
        await add(engine, ids[f"pr-{tag}-{i}"], matching(2))
    deleted = await delete_runs(engine, [*ids, f"pr-{tag}-never"])
    assert sorted(deleted) == sorted(ids) and all(d.exchanges == 2 for d in deleted.values())
    for run_id in ids.values():
        assert (await _in_trash(engine, run_id))[1] == 2
    await wait_reaped(engine, ids.values())
    for run_id in ids.values():
        assert await _in_trash(engine, run_id) == ([], 0)


async def test_a_reaper_killed_mid_drop_leaves_the_trash_to_the_next(
    engine: AsyncEngine, database_url: str, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(3))
    await delete_run(engine, run_name)
    # A reaper claims the run's first trashed table and drops it, then dies before its
    # commit (its backend terminated, as when its process is killed).
    victim = create_async_engine(database_url, pool_size=1)
    try:
        async with victim.connect() as conn:
            pid = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
            row = (
                await conn.execute(
                    sa.select(trash.c.id, trash.c.relname)
                    .where(trash.c.run_id == run_id)
                    .order_by(trash.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
            ).one()
            await conn.execute(sa.text(f"DROP TABLE {TRASH_SCHEMA}.{row.relname}"))
            # Meanwhile another reaper skips the claimed table and drops the other one.
            assert (await reap_trash(engine, run_ids=[run_id])).tables == 1
            async with engine.connect() as killer:
                await killer.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with contextlib.suppress(Exception):
                await conn.rollback()
    finally:
        await victim.dispose()
    # The killed drop rolled back: its table and its row are still in the trash ...
    assert await _in_trash(engine, run_id) == ([row.relname], 1)
    # ... and the next reaper drops them.
    assert (await reap_trash(engine, run_ids=[run_id])).tables == 1
    assert await _in_trash(engine, run_id) == ([], 0)


async def test_the_diff_workers_sweep_what_no_reaper_dropped(
    engine: AsyncEngine, run_name: str
) -> None:
    """A delete whose reaper never started (the CLI killed right after the commit): the
    trash stays until the diff workers of any run sweep it."""
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(3))
    await delete_run(engine, run_name)  # no reaper
    await asyncio.sleep(0.2)
    assert await _in_trash(engine, run_id) == (_both(run_id), 2)
    working = await new_run(engine, run_name + "-working")
    async with run_workers(engine, working, rulebook(), count=1, sweep_every_s=0.1):
        for _ in range(300):
            if await _in_trash(engine, run_id) == ([], 0):
                break
            await asyncio.sleep(0.1)
    assert await _in_trash(engine, run_id) == ([], 0)


@contextlib.asynccontextmanager
async def _patient_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine whose statements fail (55P03) after waiting WRITER_LOCK_TIMEOUT_MS for a
    lock: a writer that a delete stalls longer than that would raise."""
    eng = create_async_engine(
        database_url,
        pool_size=2,
        connect_args={"server_settings": {"lock_timeout": str(WRITER_LOCK_TIMEOUT_MS)}},
    )
    try:
        yield eng
    finally:
        await eng.dispose()


async def _keep_writing(eng: AsyncEngine, run_id: int, stop: asyncio.Event) -> int:
    """Write and claim (the diff workers' FOR UPDATE SKIP LOCKED) into ``run_id`` until
    ``stop``; returns how many rows went in. Any lock timeout raises."""
    written = 0
    while not stop.is_set():
        result = await write_exchanges(eng, rows(run_id, 5, start=10_000 + written))
        assert result.inserted == 5, result
        written += 5
        async with eng.begin() as conn:
            await conn.execute(
                sa.text(
                    "SELECT id FROM exchanges WHERE run_id = :r AND judged_at IS NULL "
                    "ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED"
                ),
                {"r": run_id},
            )
        await asyncio.sleep(0.005)
    return written


async def test_a_blocked_delete_gives_up_without_stalling_other_runs_writers(
    engine: AsyncEngine, database_url: str, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    other = await new_run(engine, run_name + "-busy")
    await add(engine, run_id, matching(3))
    stop = asyncio.Event()
    async with _patient_engine(database_url) as writer_engine:
        writer = asyncio.create_task(_keep_writing(writer_engine, other, stop))
        # A long reader of exchanges (a report, a verdict): the delete cannot have its
        # ACCESS EXCLUSIVE lock while it reads; it retries, each wait bounded, then gives up.
        async with engine.connect() as reader:
            await reader.execute(sa.text("SELECT count(*) FROM exchanges"))
            with pytest.raises(StoreBusy, match="not deleted"):
                await delete_run(engine, run_name, busy_timeout_s=3.0)
            await reader.rollback()
        # Nothing changed.
        async with engine.connect() as conn:
            assert len(await partitions_of(conn, run_id)) == 2
        assert await count_exchanges(engine, run_id) == 3
        assert await _in_trash(engine, run_id) == ([], 0)
        # Unblocked, it goes through while the writer goes on.
        assert (await delete_run(engine, run_name)).exchanges == 3
        await asyncio.sleep(0.3)
        stop.set()
        written = await writer  # raises if one of its statements hit its lock timeout
    assert written > 0 and await count_exchanges(engine, other) == written
    await reap_trash(engine, run_ids=[run_id])
    assert await _in_trash(engine, run_id) == ([], 0)


async def test_a_busy_timeout_at_the_bound(engine: AsyncEngine, run_name: str) -> None:
    """busy_timeout_s 0: one attempt only (its lock wait bounded), then StoreBusy."""
    run_id = await new_run(engine, run_name)
    async with engine.connect() as reader:
        await reader.execute(sa.text("SELECT count(*) FROM exchanges"))
        with pytest.raises(StoreBusy, match=r"\(1 attempt\(s\)"):
            await delete_run(engine, run_name, busy_timeout_s=0.0)
        await reader.rollback()
    assert (await delete_run(engine, run_name, busy_timeout_s=0.0)).run_id == run_id
    await reap_trash(engine, run_ids=[run_id])


async def test_a_run_deleted_mid_rejudgement_leaves_no_staging(
    engine: AsyncEngine, run_name: str
) -> None:
    """The running re-judgement is cancelled and its staging deleted before the delete's
    transaction (its cascade then has nothing big to delete under the locks)."""
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(6))
    await judge_pending(engine, run_name, rulebook())
    job = await start_rejudge(engine, run_name, None, by="t")
    assert await rejudge_step(engine, run_id=run_id, batch_size=2) == 2  # 2 of 6 staged
    async with engine.connect() as conn:
        staged = await conn.scalar(
            sa.select(sa.func.count()).where(rejudge_outcomes.c.rejudge_id == job.id)
        )
    assert staged == 2
    assert (await delete_run(engine, run_name)).exchanges == 6
    async with engine.connect() as conn:
        for table in (rejudge_outcomes, rejudges):
            col = table.c.rejudge_id if table is rejudge_outcomes else table.c.id
            assert await conn.scalar(sa.select(sa.func.count()).where(col == job.id)) == 0
    await reap_trash(engine, run_ids=[run_id])


async def test_the_reaper_locks_nothing_the_others_use(engine: AsyncEngine, run_name: str) -> None:
    """A reader holding exchanges, differences and runs (a long report) does not hold up the
    reaper, whose drop would fail after its 5 s lock timeout if it waited for them."""
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(3))
    await delete_run(engine, run_name)
    async with engine.connect() as reader:
        for table in ("exchanges", "differences", "runs"):
            await reader.execute(sa.text(f"SELECT count(*) FROM {table}"))
        assert (await reap_trash(engine, run_ids=[run_id])).tables == 2
        await reader.rollback()
    assert await _in_trash(engine, run_id) == ([], 0)
