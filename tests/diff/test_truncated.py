"""Issue 8 item 7: bodies the recorder cut are never a match and never a false mismatch.

Seeded exchanges whose bodies were recorded truncated, judged by the real workers, verdict
from the real aggregation: a strict field that differs after the cut is not counted as a
match, an ignored field that differs before it is not a violation; such exchanges are
"unjudgeable", and the ``judgeable`` check makes the verdict INCONCLUSIVE above
``verdict.max_unjudgeable_rate`` (and lets GO stand at the bound).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import VerdictConfig
from diff.evaluate import assess_run
from diff.verdict import decide
from diff.worker import judge_pending
from graygate.values import EndpointCounts, RunAggregates, Verdict
from graygate.vocabulary import Outcome
from tests.diff.judgeseed import (
    ORDERS,
    SMALL_VERDICT,
    Ex,
    add,
    matching,
    new_run,
    order,
    rulebook,
    timed,
)

BOOK = rulebook()
PAD = "x" * 200  # a long field first, so that the cut falls before "status"


def _doc(i: int, **kw: Any) -> dict[str, Any]:
    return {"pad": PAD, **order(i), **kw}


def _cut(n: int) -> list[Ex]:
    out = []
    for i in range(n):
        if i % 2:  # a strict field differs after the cut
            out.append(Ex(_doc(i), canary=_doc(i, status="lost"), truncate=150))
        else:  # only the ignored request_id differs, before the cut
            rest = {k: v for k, v in _doc(i).items() if k != "request_id"}
            primary = {"request_id": "p" * 32, **rest}
            out.append(Ex(primary, canary={"request_id": "c" * 32, **rest}, truncate=150))
    return out


@pytest.mark.parametrize(("cut", "expected"), [(1, Verdict.GO), (2, Verdict.INCONCLUSIVE)])
async def test_truncated_exchanges_are_unjudgeable(
    engine: AsyncEngine, run_name: str, cut: int, expected: Verdict
) -> None:
    run_id = await new_run(
        engine, run_name, verdict={**SMALL_VERDICT, "max_unjudgeable_rate": 0.02}
    )
    # 50 compared exchanges: 1 cut is 2% (at the bound), 2 cut is 4% (past it)
    await add(engine, run_id, matching(50 - cut) + _cut(cut))
    await judge_pending(engine, run_name, BOOK)

    assessment = await assess_run(engine, run_name, record=False)
    (counts,) = assessment.aggregates.endpoints
    assert counts.unjudgeable == cut
    assert counts.pairs == 50 - cut and counts.match == 50 - cut  # none counted as a match
    assert counts.strict_pairs == counts.tolerance_pairs == 0  # nor as a mismatch
    result = assessment.verdict
    check = next(c for c in result.checks if c.name == "judgeable")
    assert result.verdict == expected, result.checks
    assert check.passed is (expected == Verdict.GO)
    assert f"{cut} of 50" in check.detail
    if expected != Verdict.GO:
        assert ORDERS in check.detail


def test_judgeable_check_bound() -> None:
    cfg = VerdictConfig(min_pairs=10, min_pairs_per_endpoint=10)  # default bound: 1%

    def verdict(pairs: int, unjudgeable: int) -> Verdict:
        e = EndpointCounts(
            ORDERS,
            recorded=pairs + unjudgeable,
            judged=pairs + unjudgeable,
            pairs=pairs,
            match=pairs,
            unjudgeable=unjudgeable,
            attempted=pairs + unjudgeable,
        )
        return decide(RunAggregates("r", endpoints=(e,), latency=timed(e)), cfg).verdict

    assert verdict(99, 1) == Verdict.GO  # exactly 1%: at the bound
    assert verdict(98, 2) == Verdict.INCONCLUSIVE  # 2%: never GO
    assert verdict(0, 20) == Verdict.INCONCLUSIVE  # nothing judgeable at all
    assert Outcome.UNJUDGEABLE == "unjudgeable"
