"""The workers' SQL on a real PostgreSQL: claims skip locked rows, stores are one statement
each, a rolled-back batch leaves its exchanges claimable."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from store.judgement import (
    ExchangeJudgement,
    StoredDifference,
    claim_batch,
    count_unjudged,
    store_judgements,
)
from store.tables import differences, exchanges
from tests.diff.judgeseed import ORDERS, Ex, add, new_run, order


async def _seed(engine: AsyncEngine, name: str, n: int) -> int:
    run_id = await new_run(engine, name)
    await add(engine, run_id, [Ex(primary=order(i)) for i in range(n)])
    return run_id


async def test_claim_returns_unjudged_oldest_first_with_sides(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await _seed(engine, run_name, 5)
    async with engine.begin() as conn:
        batch = await claim_batch(conn, run_id, 3)
    assert len(batch) == 3
    assert [x.id for x in batch] == sorted(x.id for x in batch)
    x = batch[0]
    assert x.run_id == run_id and x.endpoint == ORDERS and x.served_by == "primary"
    assert x.primary.status == 200 and x.primary.answered and x.primary.recorded
    assert x.primary.headers == {"content-type": "application/json"}
    assert x.canary.body == x.primary.body
    assert not x.secondary.recorded and not x.secondary.answered
    async with engine.connect() as conn:
        assert await count_unjudged(conn, run_id) == 5  # claimed, not judged: still there


async def test_concurrent_claims_skip_locked_rows(engine: AsyncEngine, run_name: str) -> None:
    run_id = await _seed(engine, run_name, 10)
    async with engine.connect() as a, engine.connect() as b:
        ta = await a.begin()
        tb = await b.begin()
        first = await claim_batch(a, run_id, 6)
        second = await claim_batch(b, run_id, 6)  # only the 4 that a does not hold
        assert len(first) == 6 and len(second) == 4
        assert not {x.id for x in first} & {x.id for x in second}
        await ta.rollback()
        await tb.rollback()


async def test_store_judgements_sets_outcomes_and_differences(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await _seed(engine, run_name, 3)
    async with engine.begin() as conn:
        batch = await claim_batch(conn, run_id, 10)
        a, b, c = batch
        await store_judgements(
            conn,
            [
                ExchangeJudgement(a.id, run_id, a.endpoint, "match", noise_differences=None),
                ExchangeJudgement(
                    b.id,
                    run_id,
                    b.endpoint,
                    "differ",
                    strict_mismatches=1,
                    tolerance_violations=1,
                    noise_differences=0,
                    differences=(
                        StoredDifference(
                            "canary",
                            "$.status",
                            "$.status",
                            "value",
                            "paid",
                            "open",
                            "strict",
                            "strict (default)",
                        ),
                        StoredDifference(
                            "canary",
                            "$.total",
                            "$.total",
                            "value",
                            1.0,
                            1.5,
                            "tolerance",
                            "tolerance abs 0.01",
                        ),
                        StoredDifference(
                            "canary", "$.gone", "$.gone", "missing", {"x": [1]}, None, "strict"
                        ),
                        StoredDifference(
                            "secondary", "$.note", "$.note", "value", None, "x", "strict"
                        ),
                    ),
                ),
                ExchangeJudgement(c.id, run_id, c.endpoint, "skipped"),
            ],
        )
    async with engine.connect() as conn:
        rows = {
            r.id: r
            for r in await conn.execute(sa.select(exchanges).where(exchanges.c.run_id == run_id))
        }
        diffs = (
            await conn.execute(
                sa.select(differences)
                .where(differences.c.run_id == run_id)
                .order_by(differences.c.id)
            )
        ).all()
        assert await count_unjudged(conn, run_id) == 0
    assert all(r.judged_at is not None for r in rows.values())
    assert rows[a.id].outcome == "match" and rows[a.id].noise_differences is None
    assert rows[b.id].outcome == "differ"
    assert (rows[b.id].strict_mismatches, rows[b.id].tolerance_violations) == (1, 1)
    assert rows[b.id].noise_differences == 0
    assert rows[c.id].outcome == "skipped"
    assert [(d.exchange_id, d.endpoint, d.against, d.field) for d in diffs] == [
        (b.id, ORDERS, "canary", "$.status"),
        (b.id, ORDERS, "canary", "$.total"),
        (b.id, ORDERS, "canary", "$.gone"),
        (b.id, ORDERS, "secondary", "$.note"),
    ]
    assert (diffs[0].primary_value, diffs[0].other_value) == ("paid", "open")
    assert (diffs[1].primary_value, diffs[1].other_value) == (1.0, 1.5)
    # missing: the absent side is SQL NULL; a JSON null value stays JSON null.
    assert diffs[2].primary_value == {"x": [1]} and diffs[2].other_value is None
    async with engine.connect() as conn:
        kinds = (
            await conn.execute(
                sa.text(
                    "SELECT field, primary_value IS NULL AS sql_null, "
                    "jsonb_typeof(primary_value) AS json_type FROM differences "
                    "WHERE run_id = :r AND field = '$.note'"
                ),
                {"r": run_id},
            )
        ).one()
    assert kinds.sql_null is False and kinds.json_type == "null"


async def test_rolled_back_batch_is_claimable_again(engine: AsyncEngine, run_name: str) -> None:
    run_id = await _seed(engine, run_name, 4)
    async with engine.connect() as conn:
        tx = await conn.begin()
        batch = await claim_batch(conn, run_id, 10)
        await store_judgements(
            conn, [ExchangeJudgement(x.id, run_id, x.endpoint, "match") for x in batch]
        )
        await tx.rollback()
    async with engine.begin() as conn:
        again = await claim_batch(conn, run_id, 10)
        assert sorted(x.id for x in again) == sorted(x.id for x in batch)
        assert await count_unjudged(conn, run_id) == 4


async def test_store_nothing_is_a_no_op(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await store_judgements(conn, [])


async def test_claim_is_per_run(engine: AsyncEngine, run_name: str) -> None:
    mine = await _seed(engine, run_name, 2)
    other = await _seed(engine, run_name + "-other", 3)
    async with engine.begin() as conn:
        assert {x.run_id for x in await claim_batch(conn, mine, 10)} == {mine}
        assert len(await claim_batch(conn, other, 10)) == 3
