"""Exchanges in and out of a real PostgreSQL: one COPY per batch, idempotent, losses counted."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from graygate.values import Answer, RecordedExchange
from store.engine import create_engine
from store.exchanges import (
    COLUMNS,
    add_losses,
    add_spilled_losses,
    count_exchanges,
    exchange_row,
    fetch_exchanges,
    fetch_losses,
    is_rejection,
    is_unavailable,
    write_exchanges,
)
from store.runs import ensure_run
from tests.faultproxy import FaultProxy


async def new_run(engine: AsyncEngine, name: str) -> int:
    return await ensure_run(engine, name, primary_url="http://p", canary_url="http://c")


def record(run_id: int, i: int = 0, **changes: object) -> RecordedExchange:
    rec = RecordedExchange(
        run_id=run_id,
        trace_id=uuid.uuid4().hex,
        span_id=os.urandom(8).hex(),
        received_at=datetime(2026, 11, 27, 12, 0, i % 60, 123456, tzinfo=UTC),
        endpoint="GET /api/orders/{id}",
        method="GET",
        path=f"/api/orders/{i}",
        query="expand=items",
        request_headers={"accept": "application/json", "x-user-id": str(i)},
        request_body=None,
        request_body_truncated=False,
        gray_label="stable",
        served_by="primary",
        primary=Answer(200, {"content-type": "application/json"}, b'{"id": %d}' % i, False, 3.5),
        canary=Answer(200, {"content-type": "application/json"}, b'{"id": %d}' % i, False, 4.5),
    )
    for key, value in changes.items():
        setattr(rec, key, value)
    return rec


async def xmins(engine: AsyncEngine, run_id: int) -> int:
    """How many transactions wrote the run's exchanges (one COPY = one transaction)."""
    async with engine.connect() as conn:
        n = await conn.scalar(
            sa.text("SELECT count(DISTINCT xmin::text) FROM exchanges WHERE run_id = :r"),
            {"r": run_id},
        )
    return int(n or 0)


async def test_batch_round_trips_every_column(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    blob = bytes(range(256)) * 4  # every byte value, 1 KiB
    records = [
        record(
            run_id,
            0,
            method="POST",
            query="",
            request_body=blob,
            request_body_truncated=True,
            gray_label=None,
            served_by="canary",
            mirror_skipped=None,
            primary=Answer(201, {"x-a": "1", "x-nul": "a\x00b"}, blob, True, 1.25, None),
            canary=Answer(None, {}, None, False, 2000.0, "timeout"),
            secondary=Answer(503, {}, b"", False, 0.5, None),
        ),
        record(
            run_id,
            1,
            mirror_skipped="sampled_out",
            canary=None,
            primary=Answer(None, {}, None, False, 7.0, "refused"),
        ),
        record(run_id, 2, primary=Answer(200, {"é": "ü"}, b"x" * 50, False, 1.0), canary=None),
    ]
    rows = [exchange_row(r, max_body_bytes=10_000) for r in records]
    rows[2] = exchange_row(records[2], max_body_bytes=10)  # the bound, enforced again
    result = await write_exchanges(engine, rows)
    assert (result.inserted, result.duplicates, result.copies, result.rejected) == (3, 0, 1, [])

    got = {r["path"]: r for r in await fetch_exchanges(engine, run_id)}
    a, b, c = got["/api/orders/0"], got["/api/orders/1"], got["/api/orders/2"]
    assert a["trace_id"] == records[0].trace_id and a["span_id"] == records[0].span_id
    assert a["received_at"] == records[0].received_at
    assert (a["endpoint"], a["method"], a["query"]) == ("GET /api/orders/{id}", "POST", "")
    assert a["request_headers"] == {"accept": "application/json", "x-user-id": "0"}
    assert a["request_body"] == blob and a["request_body_truncated"] is True
    assert a["gray_label"] is None and a["served_by"] == "canary" and a["mirror_skipped"] is None
    assert a["primary_status"] == 201
    assert a["primary_headers"] == {"x-a": "1", "x-nul": "ab"}  # jsonb holds no NUL
    assert a["primary_body"] == blob and a["primary_body_truncated"] is True
    assert a["primary_latency_ms"] == 1.25 and a["primary_error"] is None
    assert a["canary_status"] is None and a["canary_headers"] is None
    assert a["canary_body"] is None and a["canary_body_truncated"] is False
    assert (a["canary_latency_ms"], a["canary_error"]) == (2000.0, "timeout")
    assert (a["secondary_status"], a["secondary_headers"], a["secondary_body"]) == (503, {}, b"")
    assert a["judged_at"] is None and a["outcome"] is None and a["recorded_at"] is not None

    assert b["mirror_skipped"] == "sampled_out" and b["primary_error"] == "refused"
    assert b["canary_status"] is None and b["canary_latency_ms"] is None
    assert b["secondary_status"] is None and b["secondary_body_truncated"] is False

    assert c["primary_headers"] == {"é": "ü"}
    assert c["primary_body"] == b"x" * 10 and c["primary_body_truncated"] is True


async def test_one_copy_per_batch(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    for k in range(3):
        rows = [exchange_row(record(run_id, k * 100 + i)) for i in range(100)]
        result = await write_exchanges(engine, rows)
        assert (result.inserted, result.copies) == (100, 1)
    assert await count_exchanges(engine, run_id) == 300
    assert await xmins(engine, run_id) == 3


async def test_rewriting_a_batch_stores_nothing_twice(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    rows = [exchange_row(record(run_id, i)) for i in range(50)]
    assert (await write_exchanges(engine, rows[:30])).inserted == 30
    # A replay that overlaps what is stored (a crash mid-replay, an uncertain commit).
    again = await write_exchanges(engine, rows)
    assert (again.inserted, again.duplicates, again.rejected) == (20, 30, [])
    # The same row twice in one batch is stored once.
    extra = exchange_row(record(run_id, 99))
    twice = await write_exchanges(engine, [extra, extra])
    assert (twice.inserted, twice.duplicates) == (1, 1)
    assert await count_exchanges(engine, run_id) == 51


async def test_rejected_rows_are_isolated(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    rows = [exchange_row(record(run_id, i)) for i in range(10)]
    # No such run: no partition takes the row (refused before its foreign key is checked).
    bad = exchange_row(record(2**62, 5))
    result = await write_exchanges(engine, [*rows[:5], bad, *rows[5:]])
    assert result.inserted == 10
    assert result.rejected == [bad]
    assert result.rejected_reason is not None and "no partition" in result.rejected_reason
    assert await count_exchanges(engine, run_id) == 10


async def test_closed_runs_dropped_and_refused_rows_isolated_in_one_batch(
    engine: AsyncEngine, run_name: str
) -> None:
    """The closed runs' check and the COPY share one connection; a refused row found after
    the check is isolated as alone, and the closed run's rows are still counted."""
    from store.lifecycle import close_run

    run_id = await new_run(engine, run_name)
    closed = await new_run(engine, run_name + "-closed")
    await close_run(engine, run_name + "-closed")
    good = [exchange_row(record(run_id, i)) for i in range(6)]
    late = [exchange_row(record(closed, i)) for i in range(4)]
    bad = exchange_row(record(2**62, 9))  # no such run: a foreign-key violation
    result = await write_exchanges(engine, [*good[:3], *late[:2], bad, *good[3:], *late[2:]])
    assert (result.inserted, result.run_closed, result.rejected) == (6, 4, [bad])
    assert await count_exchanges(engine, run_id) == 6
    assert await count_exchanges(engine, closed) == 0
    assert await fetch_losses(engine, closed) == {"run_closed": 4}
    only_closed = await write_exchanges(engine, late[:1])
    assert (only_closed.inserted, only_closed.run_closed, only_closed.copies) == (0, 1, 0)


def test_exchange_row_refuses_what_cannot_be_stored() -> None:
    with pytest.raises(ValueError):
        exchange_row(record(1, primary=Answer(status=70000)))
    with pytest.raises(ValueError):
        exchange_row(record(1, path="/bad/\udcff"))
    with pytest.raises((TypeError, ValueError)):
        exchange_row(record(1, request_headers={"x": "\udcff"}))
    row = exchange_row(record(1, path="/a\x00b", received_at=datetime(2026, 1, 1)))
    assert row[COLUMNS.index("path")] == "/ab"
    assert row[COLUMNS.index("received_at")].tzinfo is UTC


async def test_add_losses_increments_concurrently(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    await add_losses(engine, run_id, {"queue_full": 3})
    await asyncio.gather(
        *(add_losses(engine, run_id, {"queue_full": 1, "spill_full": 2}) for _ in range(20)),
        *(add_losses(engine, None, {(run_id, "encode_error"): 1}) for _ in range(5)),
    )
    assert await fetch_losses(engine, run_id) == {
        "queue_full": 23,
        "spill_full": 40,
        "encode_error": 5,
    }


async def test_spilled_losses_are_added_once(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    segment = f"seg-{uuid.uuid4().hex}"
    assert await add_spilled_losses(engine, segment, {(run_id, "queue_full"): 7})
    assert not await add_spilled_losses(engine, segment, {(run_id, "queue_full"): 7})
    assert await fetch_losses(engine, run_id) == {"queue_full": 7}


async def test_database_away_is_recognised(database_url: str, engine: AsyncEngine) -> None:
    run_id = await new_run(engine, f"run-{uuid.uuid4().hex[:10]}")
    rows = [exchange_row(record(run_id, i)) for i in range(5)]
    async with FaultProxy.before(database_url) as proxy:
        eng = create_engine(proxy.rewrite(database_url), pool_size=1)
        try:
            assert (await write_exchanges(eng, rows[:2])).inserted == 2
            await proxy.block()  # the pooled connection is cut, new ones refused
            with pytest.raises(Exception) as info:
                await write_exchanges(eng, rows[2:])
            assert is_unavailable(info.value) and not is_rejection(info.value)
            await proxy.unblock()
            assert (await write_exchanges(eng, rows)).inserted == 3
        finally:
            await eng.dispose()
    assert await count_exchanges(engine, run_id) == 5
