"""Exchanges and differences partitioned by run, on the real PostgreSQL: a run gets its
partitions when it is created, made once whoever asks at once; a row of a run without one
makes them (run open) or is refused and counted (no such run); deleting a run detaches them
into the trash, never deleting a row one by one (the reaper drops them), and finishes an
interrupted detach."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import RecordConfig
from diff.worker import judge_pending
from proxy.recorder import Recorder
from store.engine import create_engine
from store.exchanges import count_exchanges, fetch_losses, write_exchanges
from store.lifecycle import close_run, delete_run, list_run_details
from store.partitions import (
    ensure_partitions,
    partition_name,
    partition_sizes,
    partitions_of,
)
from store.tables import TRASH_SCHEMA, differences
from store.trash import reap_trash
from tests.diff.judgeseed import Ex, add, matching, new_run, order, rulebook
from tests.proxy.recording.rows import record, rows

NAMES = ("exchanges", "differences")


async def _tables(engine: AsyncEngine, run_id: int) -> dict[str, bool]:
    """Which of the run's partition tables exist (attached or not)."""
    async with engine.connect() as conn:
        return {
            t: await conn.scalar(sa.select(sa.func.to_regclass(partition_name(t, run_id))))
            is not None
            for t in NAMES
        }


async def _trashed(engine: AsyncEngine, run_id: int) -> list[str]:
    """The run's tables in the trash schema (deleted, not yet dropped)."""
    async with engine.connect() as conn:
        rows = await conn.scalars(
            sa.text(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :schema AND c.relname = ANY(:names) ORDER BY 1"
            ),
            {"schema": TRASH_SCHEMA, "names": [partition_name(t, run_id) for t in NAMES]},
        )
        return list(rows.all())


async def _detach_and_drop(engine: AsyncEngine, run_id: int) -> None:
    """A run whose partitions are gone while it is open (as after a crash, or a run made
    by hand): what the writer must repair."""
    async with engine.begin() as conn:
        for t in NAMES:
            name = partition_name(t, run_id)
            await conn.execute(sa.text(f"ALTER TABLE {t} DETACH PARTITION {name}"))
            await conn.execute(sa.text(f"DROP TABLE {name}"))


async def test_a_new_run_has_its_partitions(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    async with engine.connect() as conn:
        assert await partitions_of(conn, run_id) == {
            partition_name(t, run_id): False for t in NAMES
        }
    assert await ensure_partitions(engine, [run_id]) == []  # nothing to make twice
    await add(engine, run_id, matching(3))
    async with engine.connect() as conn:
        direct = await conn.scalar(
            sa.text(f"SELECT count(*) FROM {partition_name('exchanges', run_id)}")
        )
    assert direct == 3  # the COPY into the parent went to the run's partition


async def test_rows_of_an_open_run_without_partitions_make_them_once(
    database_url: str, engine: AsyncEngine, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await _detach_and_drop(engine, run_id)
    assert await _tables(engine, run_id) == {"exchanges": False, "differences": False}
    # Three "processes" write the run's rows at once: each finds no partition.
    engines = [create_engine(database_url, pool_size=2) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(
                write_exchanges(eng, rows(run_id, 5, start=10 * k + 100 * j))
                for j, eng in enumerate(engines)
                for k in range(3)
            )
        )
    finally:
        for eng in engines:
            await eng.dispose()
    assert sum(r.inserted for r in results) == 45
    assert not any(r.rejected for r in results)
    assert await count_exchanges(engine, run_id) == 45
    async with engine.connect() as conn:
        assert len(await partitions_of(conn, run_id)) == 2
    # The differences partition came with it: the workers can judge.
    assert await judge_pending(engine, run_name, rulebook()) == 45


async def test_rows_of_an_unknown_run_are_refused_and_counted(
    engine: AsyncEngine, run_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = await new_run(engine, run_name)
    ghost = run_id + 1_000_000  # no such run: no partition, none made
    async with Recorder(engine, RecordConfig(batch_size=50)) as rec:
        for i in range(6):
            assert rec.submit(record(run_id, i))
        for i in range(4):
            assert rec.submit(record(ghost, i))
        with caplog.at_level(logging.WARNING, logger="proxy.recorder"):
            await rec.flush()
        assert rec.stats.dropped.get("rejected") == 4  # counted (Prometheus, the log)
    assert await count_exchanges(engine, run_id) == 6
    assert await _tables(engine, ghost) == {"exchanges": False, "differences": False}
    assert any("4 exchanges refused by the database" in m for m in caplog.messages)


async def test_a_closed_run_gets_no_partition(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    await _detach_and_drop(engine, run_id)
    await close_run(engine, run_name)
    assert await ensure_partitions(engine, [run_id]) == []
    result = await write_exchanges(engine, rows(run_id, 3))
    assert (result.inserted, result.run_closed) == (0, 3)
    assert await fetch_losses(engine, run_id) == {"run_closed": 3}
    assert await _tables(engine, run_id) == {"exchanges": False, "differences": False}


_NO_ROW_DELETE = """
CREATE OR REPLACE FUNCTION gg_test_no_row_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'row-by-row delete of %', TG_TABLE_NAME; END $$
"""


async def test_delete_drops_the_partitions_without_deleting_rows(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    other = await new_run(engine, run_name + "-other")
    await add(engine, run_id, [*matching(5), Ex(primary=order(1), canary=order(1, status="x"))])
    await add(engine, other, matching(4))
    await judge_pending(engine, run_name, rulebook())
    async with engine.begin() as conn:
        n_diff = await conn.scalar(sa.select(sa.func.count()).where(differences.c.run_id == run_id))
        assert n_diff == 1
        # Any row deleted one by one from the run's partitions would fail the delete.
        await conn.execute(sa.text(_NO_ROW_DELETE))
        for t in NAMES:
            await conn.execute(
                sa.text(
                    f"CREATE TRIGGER no_row_delete BEFORE DELETE ON {partition_name(t, run_id)} "
                    "FOR EACH ROW EXECUTE FUNCTION gg_test_no_row_delete()"
                )
            )
    listed = {r.name: r for r in await list_run_details(engine)}
    async with engine.connect() as conn:
        sizes = await partition_sizes(conn)
    assert listed[run_name].size_bytes == sizes[run_id] > 0

    assert (await delete_run(engine, run_name)).exchanges == 6
    assert await _tables(engine, run_id) == {"exchanges": False, "differences": False}
    assert await _trashed(engine, run_id) == sorted(partition_name(t, run_id) for t in NAMES)
    assert await count_exchanges(engine, other) == 4  # the other run untouched
    async with engine.connect() as conn:
        assert len(await partitions_of(conn, other)) == 2
    assert (await reap_trash(engine, run_ids=[run_id])).tables == 2  # dropped, not emptied
    assert await _trashed(engine, run_id) == []


async def test_an_interrupted_detach_is_finished_by_the_next_delete(
    database_url: str, engine: AsyncEngine, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(3))
    name = partition_name("exchanges", run_id)
    # A reader holds a snapshot that sees the partition: DETACH ... CONCURRENTLY waits for
    # it; cancelled while it waits, it leaves the partition "detach pending".
    reader_engine = create_engine(database_url, pool_size=1)
    detacher_engine = create_engine(database_url, pool_size=1)
    try:
        async with reader_engine.connect() as reader:
            await reader.execute(sa.text(f"SELECT count(*) FROM {name}"))  # in a transaction
            async with detacher_engine.connect() as raw:
                detacher = await raw.execution_options(isolation_level="AUTOCOMMIT")
                pid = await detacher.scalar(sa.text("SELECT pg_backend_pid()"))
                detach = asyncio.ensure_future(
                    detacher.execute(
                        sa.text(f"ALTER TABLE exchanges DETACH PARTITION {name} CONCURRENTLY")
                    )
                )
                async with engine.connect() as watcher:
                    for _ in range(200):
                        waiting = await watcher.scalar(
                            sa.text(
                                "SELECT wait_event_type IS NOT NULL FROM pg_stat_activity "
                                "WHERE pid = :pid AND state = 'active'"
                            ),
                            {"pid": pid},
                        )
                        if waiting:
                            break
                        await watcher.rollback()
                        await asyncio.sleep(0.05)
                    await watcher.execute(sa.text("SELECT pg_cancel_backend(:pid)"), {"pid": pid})
                with contextlib.suppress(Exception):
                    await detach
                assert detach.exception() is not None  # cancelled, not finished
    finally:
        await reader_engine.dispose()
        await detacher_engine.dispose()
    async with engine.connect() as conn:
        assert (await partitions_of(conn, run_id))[name] is True  # detach pending

    assert (await delete_run(engine, run_name)).exchanges == 3
    assert await _tables(engine, run_id) == {"exchanges": False, "differences": False}
    assert (await reap_trash(engine, run_ids=[run_id])).tables == 2
    assert await _trashed(engine, run_id) == []
    assert (await reap_trash(engine, run_ids=[run_id])).tables == 0  # nothing left: a no-op
