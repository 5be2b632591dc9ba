"""One read of a service's database for a write check (issue 11), against a real PostgreSQL:
the trace id bound, the row cap, the statement timeout, and read only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from store.engine import create_engine
from store.write_checks import create_reader, read_rows

SELECT = "SELECT sku, qty FROM wc_moves WHERE trace_id = :trace_id ORDER BY id"


@pytest.fixture(scope="module")
async def service(database_url: str) -> AsyncIterator[str]:
    admin = create_engine(database_url, pool_size=1)
    async with admin.begin() as conn:
        await conn.execute(sa.text("DROP TABLE IF EXISTS wc_moves"))
        await conn.execute(
            sa.text("CREATE TABLE wc_moves (id serial, trace_id text, sku text, qty int)")
        )
        await conn.execute(
            sa.text(
                "INSERT INTO wc_moves (trace_id, sku, qty) VALUES "
                "('t1', 'A', -1), ('t1', 'B', -2), ('t1', 'C', -3), ('t2', 'A', -4)"
            )
        )
    await admin.dispose()
    yield database_url


@pytest.fixture
async def reader(service: str) -> AsyncIterator[AsyncEngine]:
    engine = create_reader(service, timeout_ms=500)
    yield engine
    await engine.dispose()


async def test_rows_of_the_trace_id_up_to_the_cap(reader: AsyncEngine) -> None:
    got = await read_rows(reader, SELECT, "t1", timeout_ms=500, max_rows=3)
    assert [dict(r) for r in got.rows] == [
        {"sku": "A", "qty": -1}, {"sku": "B", "qty": -2}, {"sku": "C", "qty": -3}
    ]  # fmt: skip
    assert not got.truncated
    got = await read_rows(reader, SELECT, "t1", timeout_ms=500, max_rows=2)
    assert len(got.rows) == 2 and got.truncated
    got = await read_rows(reader, SELECT, "t1' OR '1'='1", timeout_ms=500, max_rows=10)
    assert got.rows == () and not got.truncated  # bound, never spliced into the SQL


async def test_the_statement_timeout_cuts_a_slow_read(reader: AsyncEngine) -> None:
    slow = "SELECT pg_sleep(5), :trace_id AS t"
    with pytest.raises(Exception, match=r"statement timeout|canceling statement"):
        await read_rows(reader, slow, "t1", timeout_ms=200, max_rows=10)


@pytest.mark.parametrize(
    "query",
    [
        "WITH d AS (DELETE FROM wc_moves WHERE trace_id = :trace_id RETURNING sku) SELECT * FROM d",
        "SELECT set_config('transaction_read_only', 'off', true), :trace_id AS t",
    ],
)
async def test_a_query_that_writes_fails_and_writes_nothing(
    reader: AsyncEngine, service: str, query: str
) -> None:
    with pytest.raises(Exception, match=r"read-only|transaction_read_only|read_only"):
        await read_rows(reader, query, "t2", timeout_ms=500, max_rows=10)
    left = await read_rows(reader, SELECT, "t2", timeout_ms=500, max_rows=10)
    assert len(left.rows) == 1
