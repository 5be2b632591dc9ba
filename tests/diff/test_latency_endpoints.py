"""Issue 8 item 6: latency is judged per endpoint, never pooled across endpoints.

One endpoint carrying a tenth of the traffic at three times the latency fails the check,
named; an endpoint with too few timed pairs to judge (too little traffic, or answers that
were not timed) is reported, and leaves the check undecided (INCONCLUSIVE) only when it
carries more than ``verdict.latency.max_unjudged_share`` of the answered pairs (tested at
the bound and past it); only ``verdict.latency.skip`` turns the check off. The database
tests read the sample's endpoints through the real aggregation.
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


def _aggregates(
    sizes: dict[str, tuple[int, float]], untimed: dict[str, int] | None = None
) -> RunAggregates:
    """``sizes``: endpoint -> (timed pairs, canary latency scale); ``untimed``: endpoint ->
    answered pairs more that were not timed (in the counts, not in the sample)."""
    rng = random.Random(5)
    untimed = untimed or {}
    eps: list[str] = []
    p: list[float] = []
    c: list[float] = []
    for ep, (k, scale) in sizes.items():
        for _ in range(k):
            eps.append(ep)
            p.append(_ms(rng, 1.0))
            c.append(_ms(rng, scale))
    pairs = {ep: k for ep, (k, _) in sizes.items()}
    for ep, k in untimed.items():
        pairs[ep] = pairs.get(ep, 0) + k
    counts = tuple(
        EndpointCounts(ep, recorded=k, judged=k, pairs=k, match=k, attempted=k)
        for ep, k in pairs.items()
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
    assert f"{SLOW} (40 of 40)" in check.detail  # reported
    # 40 out of 790: above 5%
    verdict, check = _latency(_aggregates({ORDERS: (750, 1.0), SLOW: (40, 3.0)}))
    assert verdict == Verdict.INCONCLUSIVE and check.passed is None and check.blocking
    assert f"{SLOW} (40 of 40)" in check.detail


def test_answers_not_timed_count_by_their_traffic_not_their_timings() -> None:
    # SLOW answered 40 pairs, none timed (no latency recorded): it is not in the sample at
    # all, yet its share of the answered pairs counts. 40 of 800: the bound, passes.
    verdict, check = _latency(_aggregates({ORDERS: (760, 1.0)}, untimed={SLOW: 40}))
    assert verdict == Verdict.GO and check.passed is True
    assert f"{SLOW} (0 of 40)" in check.detail
    # 41 of 801: above the bound, undecided: never GO on latency not seen
    verdict, check = _latency(_aggregates({ORDERS: (760, 1.0)}, untimed={SLOW: 41}))
    assert verdict == Verdict.INCONCLUSIVE and check.passed is None and check.blocking
    assert f"{SLOW} (0 of 41)" in check.detail and "latency not decided" in check.detail
    # An endpoint timed in part: 49 of its 400 pairs timed is too few to judge it.
    verdict, check = _latency(_aggregates({ORDERS: (760, 1.0), SLOW: (49, 1.0)}, {SLOW: 351}))
    assert verdict == Verdict.INCONCLUSIVE and f"{SLOW} (49 of 400)" in check.detail
    # 50 of them timed: judged (and here found slower, named).
    verdict, check = _latency(_aggregates({ORDERS: (760, 1.0), SLOW: (50, 3.0)}, {SLOW: 350}))
    assert verdict == Verdict.NO_GO and check.passed is False and SLOW in check.detail


def test_write_checks_carry_no_latency_share() -> None:
    # A WRITE pseudo-endpoint's records are pairs but no request: never timed, never owed.
    a = _aggregates({ORDERS: (760, 1.0)}, untimed={"WRITE stock_moves": 760})
    verdict, check = _latency(a)
    assert verdict == Verdict.GO and check.passed is True
    assert "WRITE" not in check.detail


def test_latency_turned_off_in_the_configuration_is_the_one_way_past_it() -> None:
    cfg = CFG.model_copy(update={"latency": LatencyConfig(skip="canary on a shared host")})
    r = decide(_aggregates({ORDERS: (10, 1.0)}, untimed={SLOW: 500}), cfg)
    check = next(c for c in r.checks if c.name == "latency")
    assert r.verdict == Verdict.GO and check.passed is None and not check.blocking
    assert "skipped by configuration" in check.detail and "canary on a shared host" in check.detail


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


async def test_stored_answers_not_timed_leave_latency_undecided(
    engine: AsyncEngine, run_name: str
) -> None:
    # 100 pairs on ORDERS timed; 100 on ITEMS whose canary answers were not timed (as a
    # mirrored body cut past what is recorded and its end unknown): INCONCLUSIVE, naming
    # ITEMS, through the real aggregation; with latency turned off in the configuration,
    # GO and the check says it was skipped.
    exchanges = [Ex(order(i)) for i in range(100)]
    exchanges += [Ex(order(i), endpoint=ITEMS, canary_ms=None) for i in range(100)]
    for skip, expected in ((None, Verdict.INCONCLUSIVE), ("not measured here", Verdict.GO)):
        name = f"{run_name}-{expected.value.lower()}"
        latency: dict[str, object] = {"min_samples": 30}
        if skip is not None:
            latency["skip"] = skip
        run_id = await new_run(engine, name, verdict={**SMALL_VERDICT, "latency": latency})
        await add(engine, run_id, exchanges)
        await judge_pending(engine, name, rulebook())
        result = (await assess_run(engine, name, record=False)).verdict
        check = next(c for c in result.checks if c.name == "latency")
        assert result.verdict == expected, result.checks
        if skip is None:
            assert check.passed is None and check.blocking
            assert f"{ITEMS} (0 of 100)" in check.detail, check.detail
        else:
            assert check.passed is None and not check.blocking and skip in check.detail
