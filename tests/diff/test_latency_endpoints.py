"""Issue 8 item 6: latency is judged per endpoint, never pooled across endpoints.

One endpoint carrying a tenth of the traffic at three times the latency fails the check,
named; an endpoint with too few pairs to judge is reported, and leaves the check undecided
(INCONCLUSIVE) only when it carries more than ``verdict.latency.max_unjudged_share`` of the
pairs (tested at the bound and past it). The database test reads the sample's endpoints
through the real aggregation.
"""

from __future__ import annotations

import random

from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import LatencyConfig, VerdictConfig
from diff.evaluate import assess_run
from diff.verdict import decide
from diff.worker import judge_pending
from graygate.values import Check, EndpointCounts, LatencySample, RunAggregates, Verdict
from tests.diff.judgeseed import ITEMS, ORDERS, SMALL_VERDICT, Ex, add, new_run, order, rulebook

SLOW = "GET /api/slow"
CFG = VerdictConfig(min_pairs=10, min_pairs_per_endpoint=1, latency=LatencyConfig())


def _ms(rng: random.Random, scale: float) -> float:
    return rng.lognormvariate(2.3, 0.2) * scale


def _aggregates(sizes: dict[str, tuple[int, float]]) -> RunAggregates:
    """``sizes``: endpoint -> (pairs, canary latency scale)."""
    rng = random.Random(5)
    eps: list[str] = []
    p: list[float] = []
    c: list[float] = []
    for ep, (k, scale) in sizes.items():
        for _ in range(k):
            eps.append(ep)
            p.append(_ms(rng, 1.0))
            c.append(_ms(rng, scale))
    counts = tuple(
        EndpointCounts(ep, recorded=k, judged=k, pairs=k, match=k, attempted=k)
        for ep, (k, _) in sizes.items()
    )
    return RunAggregates("r", endpoints=counts, latency=LatencySample.of(p, c, eps))


def _latency(a: RunAggregates) -> tuple[Verdict, Check]:
    r = decide(a, CFG)
    return r.verdict, next(c for c in r.checks if c.name == "latency")


def test_one_slow_endpoint_with_a_tenth_of_the_traffic_fails_named() -> None:
    verdict, check = _latency(_aggregates({ORDERS: (900, 1.0), SLOW: (100, 3.0)}))
    assert verdict == Verdict.NO_GO
    assert check.passed is False
    assert SLOW in check.detail and ORDERS not in check.detail


def test_identical_endpoints_pass() -> None:
    verdict, check = _latency(_aggregates({ORDERS: (900, 1.0), ITEMS: (100, 1.0)}))
    assert verdict == Verdict.GO and check.passed is True


def test_small_endpoints_at_the_share_bound_pass_and_past_it_are_inconclusive() -> None:
    # 40 pairs (< min_samples 50) out of 800: exactly 5%, the bound
    verdict, check = _latency(_aggregates({ORDERS: (760, 1.0), SLOW: (40, 3.0)}))
    assert verdict == Verdict.GO and check.passed is True
    assert f"{SLOW} (40)" in check.detail  # reported
    # 40 out of 790: above 5%
    verdict, check = _latency(_aggregates({ORDERS: (750, 1.0), SLOW: (40, 3.0)}))
    assert verdict == Verdict.INCONCLUSIVE and check.passed is None
    assert f"{SLOW} (40)" in check.detail


async def test_the_stored_sample_names_the_slow_endpoint(
    engine: AsyncEngine, run_name: str
) -> None:
    verdict_cfg = {**SMALL_VERDICT, "latency": {"min_samples": 30}}
    run_id = await new_run(engine, run_name, verdict=verdict_cfg)
    rng = random.Random(9)
    exchanges = [
        Ex(order(i), primary_ms=_ms(rng, 1.0), canary_ms=_ms(rng, 1.0)) for i in range(270)
    ]
    exchanges += [
        Ex(order(i), endpoint=ITEMS, primary_ms=_ms(rng, 1.0), canary_ms=_ms(rng, 3.0))
        for i in range(30)
    ]
    await add(engine, run_id, exchanges)
    await judge_pending(engine, run_name, rulebook())
    result = (await assess_run(engine, run_name, record=False)).verdict
    check = next(c for c in result.checks if c.name == "latency")
    assert result.verdict == Verdict.NO_GO, result.checks
    assert check.passed is False and ITEMS in check.detail and ORDERS not in check.detail
