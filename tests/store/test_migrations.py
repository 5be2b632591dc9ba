"""The migrations stairway: every revision upgrades, downgrades and upgrades again;
and the tables in store.tables agree with the migrations (``alembic check``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from store import migrate


async def test_stairway(make_database: Callable[[], Awaitable[str]]) -> None:
    url = await make_database()
    revisions = migrate.revisions()
    assert revisions, "no migrations found"
    previous = "base"
    for rev in revisions:
        await asyncio.to_thread(migrate.upgrade, url, rev)
        await asyncio.to_thread(migrate.downgrade, url, previous)
        await asyncio.to_thread(migrate.upgrade, url, rev)
        previous = rev
    assert await asyncio.to_thread(migrate.check, url) is None


async def test_head_is_the_last_revision() -> None:
    assert migrate.head_revision() == migrate.revisions()[-1]


_SEED_0005 = [
    "INSERT INTO runs (id, name) OVERRIDING SYSTEM VALUE VALUES (7, 'old-a'), (9, 'old-b')",
    "SELECT setval(pg_get_serial_sequence('runs', 'id'), 9)",
    """INSERT INTO exchanges (run_id, trace_id, span_id, received_at, endpoint, method, path,
           served_by, primary_status, primary_body, canary_status, canary_body, judged_at,
           outcome, strict_mismatches)
       SELECT CASE WHEN g <= 5 THEN 7 ELSE 9 END, 't' || g, 's' || g, now(), 'GET /x', 'GET',
              '/x', 'primary', 200, '\\x7b7d', 200, '\\x7b7d', now(), 'differ', 1
         FROM generate_series(1, 8) AS g""",
    """INSERT INTO differences (exchange_id, run_id, endpoint, path, field, kind,
           judgement)
       SELECT id, run_id, endpoint, '$.a', '$.a', 'value', 'strict' FROM exchanges""",
    """INSERT INTO rejudges (run_id, compare, previous_compare, requested_by, max_exchange_id,
           total) VALUES (9, '{}', '{}', 'alice', 8, 3)""",
    """INSERT INTO rejudge_outcomes (rejudge_id, exchange_id, outcome)
       SELECT j.id, 6, 'match' FROM rejudges j""",
]


async def test_0006_keeps_the_rows_and_partitions_them(
    make_database: Callable[[], Awaitable[str]],
) -> None:
    """Rows written under 0005 are in their runs' partitions after 0006, ids and identity
    sequences kept; a run is then deleted by its partitions; the downgrade gives the rows
    back (those written after the upgrade too), and the upgrade takes them again."""
    import sqlalchemy as sa

    from store.engine import create_engine
    from store.exchanges import write_exchanges
    from store.lifecycle import delete_run
    from store.partitions import partitions_of
    from tests.proxy.recording.rows import rows

    url = await make_database()
    await asyncio.to_thread(migrate.upgrade, url, "0005")
    engine = create_engine(url, pool_size=2)
    try:
        async with engine.begin() as conn:
            for sql in _SEED_0005:
                await conn.execute(sa.text(sql))

        async def counts() -> dict[str, list[tuple[int, int]]]:
            async with engine.connect() as conn:
                out = {}
                for table in ("exchanges", "differences"):
                    result = await conn.execute(
                        sa.text(f"SELECT run_id, count(*) FROM {table} GROUP BY run_id ORDER BY 1")
                    )
                    out[table] = [tuple(r) for r in result]
                return out

        before = await counts()
        assert before == {"exchanges": [(7, 5), (9, 3)], "differences": [(7, 5), (9, 3)]}
        await asyncio.to_thread(migrate.upgrade, url, "0006")
        assert await counts() == before
        async with engine.connect() as conn:
            assert set(await partitions_of(conn, 7)) == {"exchanges_r7", "differences_r7"}
            in_partition = await conn.scalar(sa.text("SELECT count(*) FROM exchanges_r9"))
            assert in_partition == 3
            outcome = (
                await conn.execute(sa.text("SELECT run_id, exchange_id FROM rejudge_outcomes"))
            ).one()
            assert tuple(outcome) == (9, 6)
            ids = (await conn.execute(sa.text("SELECT min(id), max(id) FROM exchanges"))).one()
            assert tuple(ids) == (1, 8)
        # New rows go on after the copied ids.
        result = await write_exchanges(engine, rows(9, 2))
        assert result.inserted == 2
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT min(id) FROM exchanges_r9 WHERE id > 8"))
        await asyncio.to_thread(migrate.upgrade, url, "0007")  # the trash delete_run uses
        assert (await delete_run(engine, "old-a")).exchanges == 5
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT to_regclass('exchanges_r7')")) is None

        await asyncio.to_thread(migrate.downgrade, url, "0005")
        assert await counts() == {"exchanges": [(9, 5)], "differences": [(9, 3)]}
        await asyncio.to_thread(migrate.upgrade, url, "head")
        assert await counts() == {"exchanges": [(9, 5)], "differences": [(9, 3)]}
        assert await asyncio.to_thread(migrate.check, url) is None
    finally:
        await engine.dispose()
