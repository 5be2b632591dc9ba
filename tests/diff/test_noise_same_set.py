"""Issue 8 item 2: the canary's and the secondary's noise rates are counted over the same
exchanges, those with all three answers (primary, canary and secondary).

The secondary answered only 25 of 200 exchanges. Counting the canary over all 200 and the
secondary over its 25 compares two different sets: a canary wrong in every exchange the
secondary can vouch for looked like noise because its rate was diluted by the 175
exchanges nobody could compare it against.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import assess_run
from diff.worker import judge_pending
from graygate.values import Verdict
from store.aggregates import fetch_run, fetch_three_way_fields, read_snapshot
from tests.diff.judgeseed import ORDERS, Ex, add, new_run, order, rulebook

BOOK = rulebook()
N, WITH_SECONDARY = 200, 25  # the secondary answered every 8th exchange


def _doc(i: int, ts: str) -> dict[str, Any]:
    return order(i, ts=ts)


def _exchanges(
    *, secondary_differs: int, canary_differs_three_way: bool, canary_differs_elsewhere: bool
) -> list[Ex]:
    out = []
    seen = 0
    for i in range(N):
        primary = _doc(i, "p")
        if i % 8 == 0:  # one of the 25 with a secondary
            secondary = _doc(i, "s" if seen < secondary_differs else "p")
            seen += 1
            canary = _doc(i, "c" if canary_differs_three_way else "p")
            out.append(Ex(primary, canary=canary, secondary=secondary))
        else:
            out.append(Ex(primary, canary=_doc(i, "c" if canary_differs_elsewhere else "p")))
    return out


async def test_three_way_counts_are_over_the_exchanges_with_a_secondary(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await add(
        engine,
        run_id,
        _exchanges(
            secondary_differs=WITH_SECONDARY,
            canary_differs_three_way=True,
            canary_differs_elsewhere=True,
        ),
    )
    await judge_pending(engine, run_name, BOOK)
    async with read_snapshot(engine) as conn:
        info = await fetch_run(conn, run_name)
        three = await fetch_three_way_fields(conn, info.id)
    by_side = {(f.field, f.against, f.kind): 0 for f in three}
    for f in three:
        by_side[f.field, f.against, f.kind] += f.exchanges
    assert by_side == {("$.ts", "canary", "value"): 25, ("$.ts", "secondary", "value"): 25}

    result = (await assess_run(engine, run_name, record=False)).verdict
    assert result.verdict == Verdict.GO, result.checks
    (noise,) = result.extra["noise"]
    assert (noise["field"], noise["kind"]) == ("$.ts", "value")
    # One set: both counted, and divided, over the 25 exchanges with all three answers.
    assert noise["canary_compared"] == noise["noise_compared"] == WITH_SECONDARY
    assert noise["canary_count"] == noise["noise_count"] == WITH_SECONDARY


async def test_a_canary_wrong_wherever_the_secondary_can_tell_is_not_noise(
    engine: AsyncEngine, run_name: str
) -> None:
    # Primary vs secondary: $.ts differs in 5 of 25 (20 %). Primary vs canary: in all 25 of
    # those (100 %), in none of the other 175. Over all 200 the canary's rate is 12.5 %,
    # under the secondary's: counted so, the field was noise and the run GO.
    run_id = await new_run(engine, run_name)
    await add(
        engine,
        run_id,
        _exchanges(
            secondary_differs=5, canary_differs_three_way=True, canary_differs_elsewhere=False
        ),
    )
    await judge_pending(engine, run_name, BOOK)
    result = (await assess_run(engine, run_name, record=False)).verdict
    assert result.extra["noise"] == []
    assert result.verdict == Verdict.NO_GO, result.checks
    strict = next(c for c in result.checks if c.name == "strict")
    assert strict.passed is False
    assert ORDERS in strict.detail and "$.ts" in strict.detail


async def test_where_every_pair_had_a_secondary_the_field_counts_are_the_three_way_counts(
    engine: AsyncEngine, run_name: str
) -> None:
    """fetch_aggregates reads the exchanges again only for endpoints where some pairs had
    no secondary; where all had one, its field counts are the same numbers."""
    from store.aggregates import fetch_aggregates

    run_id = await new_run(engine, run_name)
    await add(
        engine,
        run_id,
        [Ex(_doc(i, "p"), canary=_doc(i, "c"), secondary=_doc(i, "s" if i % 2 else "p"))
         for i in range(40)],
    )  # fmt: skip
    await judge_pending(engine, run_name, BOOK)
    async with read_snapshot(engine) as conn:
        info = await fetch_run(conn, run_name)
        aggregates = await fetch_aggregates(conn, info)
        counted = await fetch_three_way_fields(conn, info.id)
    assert aggregates.three_way is not None
    assert sorted(aggregates.three_way, key=repr) == sorted(counted, key=repr)
    by_side = {"canary": 0, "secondary": 0}
    for f in counted:
        by_side[f.against] += f.exchanges  # canary: 20 judged noise, 20 strict
    assert by_side == {"canary": 40, "secondary": 20}
