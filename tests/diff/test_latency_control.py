"""Issue 8 item 11 (the verdict's part): with a secondary, the latency check compares the
canary with the secondary (both mirrored, timed the same way), not with the primary that
served the client; the check's detail says which control it used.

Seeded exchanges, judged by the real workers: the primary answers in ~10 ms, the mirrored
sides (canary and secondary alike) in ~15 ms, as the mirror path's own overhead would make
them. Against the primary that reads as a 50% regression; against the secondary it is none.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import VerdictConfig
from diff.evaluate import assess_run
from diff.verdict import decide
from diff.worker import judge_pending
from graygate.values import Check, EndpointCounts, LatencySample, RunAggregates, Verdict
from tests.diff.judgeseed import ORDERS, SMALL_VERDICT, Ex, add, new_run, order, rulebook

BOOK = rulebook()
VERDICT: dict[str, Any] = {**SMALL_VERDICT, "latency": {"min_samples": 50}}
N = 150


def _exchanges(*, secondary: bool, canary_factor: float = 1.5, seed: int = 3) -> list[Ex]:
    rng = random.Random(seed)
    out = []
    for i in range(N):
        body = order(i)

        out.append(
            Ex(
                primary=body,
                canary={**body, "request_id": uuid.uuid4().hex},
                secondary={**body, "request_id": uuid.uuid4().hex} if secondary else None,
                primary_ms=rng.lognormvariate(2.3, 0.2),
                canary_ms=canary_factor * rng.lognormvariate(2.3, 0.2),
                secondary_ms=1.5 * rng.lognormvariate(2.3, 0.2),
            )
        )
    return out


def _latency(result: Any) -> Check:
    found: Check = next(c for c in result.checks if c.name == "latency")
    return found


async def _verdict(engine: AsyncEngine, run_name: str, exchanges: list[Ex]) -> Any:
    run_id = await new_run(engine, run_name, verdict=VERDICT)
    await add(engine, run_id, exchanges)
    await judge_pending(engine, run_name, BOOK)
    return (await assess_run(engine, run_name, record=False)).verdict


async def test_with_a_secondary_the_canary_is_timed_against_it(
    engine: AsyncEngine, run_name: str
) -> None:
    result = await _verdict(engine, run_name, _exchanges(secondary=True))
    latency = _latency(result)
    assert latency.passed is True, latency.detail
    assert latency.detail.startswith("canary vs secondary (both mirrored"), latency.detail
    assert result.verdict == Verdict.GO, result.checks


async def test_without_a_secondary_the_same_canary_is_timed_against_the_primary(
    engine: AsyncEngine, run_name: str
) -> None:
    result = await _verdict(engine, run_name, _exchanges(secondary=False))
    latency = _latency(result)
    assert latency.passed is False, latency.detail
    assert "secondary" not in latency.detail and ORDERS in latency.detail
    assert result.verdict == Verdict.NO_GO


async def test_a_canary_slower_than_the_secondary_fails_naming_the_control(
    engine: AsyncEngine, run_name: str
) -> None:
    result = await _verdict(engine, run_name, _exchanges(secondary=True, canary_factor=3.0))
    latency = _latency(result)
    assert latency.passed is False, latency.detail
    assert latency.detail.startswith("canary vs secondary"), latency.detail
    assert "canary slower by more than 5%" in latency.detail and ORDERS in latency.detail
    assert result.verdict == Verdict.NO_GO


def test_the_detail_names_the_control_in_every_outcome() -> None:
    cfg = VerdictConfig.model_validate({"min_pairs": 1, "latency": {"min_samples": 60}})
    ep = EndpointCounts(ORDERS, recorded=50, judged=50, pairs=50, match=50, attempted=50)
    few = LatencySample.of([10.0] * 50, [10.0] * 50, [ORDERS] * 50, control="secondary")
    check = next(c for c in decide(RunAggregates("r", endpoints=(ep,), latency=few), cfg).checks
                 if c.name == "latency")  # fmt: skip
    assert check.passed is None and check.blocking
    assert check.detail.startswith("canary vs secondary"), check.detail
    assert f"{ORDERS} (50 of 50)" in check.detail and "latency not decided" in check.detail
