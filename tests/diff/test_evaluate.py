"""The verdict from what is stored: the SQL aggregates on known data, evaluate_run end to end
(real workers, real PostgreSQL), noise with a secondary, latency, history, errors."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import JudgingConfig
from diff.evaluate import evaluate_run, run_config
from diff.worker import judge_pending
from graygate.errors import StoreUnavailable, UnknownRun
from graygate.processes import free_port
from graygate.values import Verdict, VerdictResult
from store.aggregates import (
    fetch_endpoint_counts,
    fetch_field_counts,
    fetch_latency_sample,
    fetch_losses,
    fetch_mismatch_counts,
    fetch_run,
    latest_verdicts,
)
from store.engine import create_engine
from store.exchanges import add_losses
from store.tables import differences
from tests.diff.judgeseed import ITEMS, ORDERS, Ex, add, matching, new_run, order, rulebook

BOOK = rulebook()


def check(result: VerdictResult, name: str) -> dict[str, object]:
    (c,) = [c.as_dict() for c in result.checks if c.name == name]
    return c


def closed_port_url() -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"


# --------------------------------------------------------------------------- aggregates


async def test_sql_aggregates_on_known_data(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    exchanges: list[Ex] = []
    exchanges += matching(30)
    exchanges += [Ex(primary=order(i), canary=order(i, status="open")) for i in range(3)]
    exchanges += [Ex(primary=order(i), canary=order(i, total=100.5 + i)) for i in range(2)]
    exchanges += [Ex(primary=order(i), mirror_skipped="method") for i in range(4)]
    # Not mirrored while a target was ejected: counted when the primary served.
    exchanges += [Ex(primary=order(i), mirror_skipped="ejected") for i in range(3)]
    exchanges += [Ex(primary=order(1), mirror_skipped="ejected", served_by="canary")]
    exchanges += [Ex(primary=order(i), canary_error="timeout", canary_ms=2000) for i in range(2)]
    # The primary failed (503), the canary answered: a pair with a status mismatch.
    exchanges += [Ex(primary={"error": "busy"}, primary_status=503, canary=order(1))]
    # Two items differ at two indexes of one array field: one exchange, two rows.
    two = {"id": 1, "items": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}]}
    exchanges += [
        Ex(
            primary=two,
            canary={"id": 1, "items": [{"sku": "A", "qty": 5}, {"sku": "B", "qty": 6}]},
            secondary=two,
            endpoint=ITEMS,
        ),
        Ex(primary=two, secondary=two, endpoint=ITEMS),
    ]
    await add(engine, run_id, exchanges)
    await add(engine, run_id, [Ex(primary=order(99))])
    assert await judge_pending(engine, run_name, BOOK) == len(exchanges) + 1
    await add(engine, run_id, [Ex(primary=order(7))])  # recorded, not judged
    await add_losses(engine, run_id, {"queue_full": 4, "spill_full": 1})

    async with engine.connect() as conn:
        counts = {e.endpoint: e for e in await fetch_endpoint_counts(conn, run_id)}
        fields = await fetch_field_counts(conn, run_id)
        losses = await fetch_losses(conn, run_id)
    o = counts[ORDERS]
    assert o.recorded == 30 + 3 + 2 + 4 + 4 + 2 + 1 + 1 + 1
    assert o.judged == o.recorded - 1
    assert o.pairs == 30 + 3 + 2 + 1 + 1
    assert o.skipped == 4 + 4 and o.errors == 2
    assert o.ejected == 3
    assert o.attempted == o.pairs + 2
    assert (o.primary_failures, o.canary_failures) == (1, 2)
    assert (o.strict_pairs, o.tolerance_pairs) == (3 + 1, 2)
    assert o.secondary_pairs == 0
    i = counts[ITEMS]
    assert (i.pairs, i.secondary_pairs, i.strict_pairs) == (2, 2, 1)
    by_key = {(f.endpoint, f.field, f.against, f.judgement): f for f in fields}
    status = by_key[(ORDERS, "$.status", "canary", "strict")]
    assert (status.exchanges, status.differences) == (3, 3)
    assert by_key[(ORDERS, "$.total", "canary", "tolerance")].exchanges == 2
    assert by_key[(ORDERS, "status", "canary", "strict")].exchanges == 1
    qty = by_key[(ITEMS, "$.items[*].qty", "canary", "strict")]
    assert (qty.exchanges, qty.differences) == (1, 2)
    assert losses == {"queue_full": 4, "spill_full": 1}


async def test_latency_sample_is_the_most_recent_pairs_with_percentile_cont(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    exchanges = [
        Ex(primary=order(i), primary_ms=float(i + 1), canary_ms=float(2 * (i + 1)))
        for i in range(40)
    ]
    exchanges.append(Ex(primary=order(0), mirror_skipped="sampled_out", primary_ms=9999))
    await add(engine, run_id, exchanges)
    await judge_pending(engine, run_name, BOOK)
    async with engine.connect() as conn:
        s = await fetch_latency_sample(conn, run_id)
        recent = await fetch_latency_sample(conn, run_id, limit=10)
    assert sorted(s.primary_ms) == [float(i + 1) for i in range(40)]  # no skipped exchange
    assert s.primary_p50 == pytest.approx(np.percentile(s.primary_ms, 50))
    assert s.primary_p99 == pytest.approx(np.percentile(s.primary_ms, 99))
    assert s.canary_p99 == pytest.approx(np.percentile(s.canary_ms, 99))
    assert sorted(recent.primary_ms) == [float(i + 1) for i in range(30, 40)]


async def test_mismatch_counts_leave_excluded_fields_out(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await add(
        engine,
        run_id,
        [
            Ex(primary=order(1), canary=order(1, status="open", note="x")),
            Ex(primary=order(2), canary=order(2, note="y")),
            Ex(primary=order(3), canary=order(3, total=200.0)),
        ],
    )
    await judge_pending(engine, run_name, BOOK)
    async with engine.connect() as conn:
        everything = await fetch_mismatch_counts(conn, run_id, set())
        without_note = await fetch_mismatch_counts(conn, run_id, {(ORDERS, "$.note", "extra")})
        # excluded by (endpoint, field, kind): another kind in the same field still counts
        other_kind = await fetch_mismatch_counts(conn, run_id, {(ORDERS, "$.note", "value")})
    assert (everything[ORDERS].strict_pairs, everything[ORDERS].tolerance_pairs) == (2, 1)
    assert (without_note[ORDERS].strict_pairs, without_note[ORDERS].tolerance_pairs) == (1, 1)
    assert (other_kind[ORDERS].strict_pairs, other_kind[ORDERS].tolerance_pairs) == (2, 1)


# --------------------------------------------------------------------------- evaluate_run


async def test_go_is_recorded_in_the_history(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(25) + matching(10, endpoint=ITEMS, seed=2))
    await judge_pending(engine, run_name, BOOK)
    result = await evaluate_run(engine, run_name)
    assert result.verdict is Verdict.GO, [c.as_dict() for c in result.checks]
    assert result.computed_at
    history = await latest_verdicts(engine, run_name)
    assert [h.verdict for h in history] == ["GO"]
    assert history[0].computed_at.isoformat() == result.computed_at
    assert [c["name"] for c in history[0].checks] == [c.name for c in result.checks]
    # Not recorded when asked not to.
    await evaluate_run(engine, run_name, record=False)
    assert len(await latest_verdicts(engine, run_name)) == 1


async def test_history_is_newest_first(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.INCONCLUSIVE
    await add(engine, run_id, matching(25))
    await judge_pending(engine, run_name, BOOK)
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.GO
    await add(engine, run_id, [Ex(primary=order(1), canary=order(1, status="void"))])
    await judge_pending(engine, run_name, BOOK)
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.NO_GO
    history = await latest_verdicts(engine, run_name, limit=2)
    assert [h.verdict for h in history] == ["NO_GO", "GO"]


async def test_strict_mismatch_is_no_go(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    await add(
        engine,
        run_id,
        [*matching(30), Ex(primary=order(5), canary=order(5, status="refunded"))],
    )
    await judge_pending(engine, run_name, BOOK)
    result = await evaluate_run(engine, run_name)
    assert result.verdict is Verdict.NO_GO
    strict = check(result, "strict")
    assert strict["passed"] is False
    assert ORDERS in str(strict["detail"]) and "$.status (1)" in str(strict["detail"])


async def test_waived_differences_no_longer_count(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, [*matching(30), Ex(primary=order(5), canary=order(5, status="x"))])
    await judge_pending(engine, run_name, BOOK)
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.NO_GO
    async with engine.begin() as conn:  # what accepting the difference does
        await conn.execute(
            sa.update(differences)
            .where(differences.c.run_id == run_id, differences.c.field == "$.status")
            .values(judgement="waived")
        )
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.GO


async def test_too_little_evidence_is_inconclusive(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(8))
    await judge_pending(engine, run_name, BOOK)
    result = await evaluate_run(engine, run_name)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert check(result, "evidence")["passed"] is False


async def test_canary_errors_are_no_go(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(30) + [Ex(primary=order(1), canary_error="refused")] * 2)
    await judge_pending(engine, run_name, BOOK)
    result = await evaluate_run(engine, run_name)
    assert result.verdict is Verdict.NO_GO
    errors = check(result, "errors")
    assert errors["passed"] is False and "2/32" in str(errors["detail"])


async def test_exchanges_skipped_while_the_canary_was_ejected_count_as_its_failures(
    engine: AsyncEngine, run_name: str
) -> None:
    # 3 broken answers, then ejected: without counting the 27 skipped exchanges the
    # canary's error rate would read 3/33 and hide that it was broken for most of them.
    run_id = await new_run(engine, run_name)
    await add(
        engine,
        run_id,
        matching(30)
        + [Ex(primary=order(1), canary_error="error")] * 3
        + [Ex(primary=order(1), mirror_skipped="ejected")] * 27,
    )
    await judge_pending(engine, run_name, BOOK)
    result = await evaluate_run(engine, run_name)
    assert result.verdict is Verdict.NO_GO
    errors = check(result, "errors")
    assert errors["passed"] is False
    assert "30/60" in str(errors["detail"]) and "27 not mirrored" in str(errors["detail"])
    assert errors["observed"] == pytest.approx(0.5)


async def test_noise_with_a_secondary_is_left_out(engine: AsyncEngine, run_name: str) -> None:
    """``$.at`` differs by nature: against the secondary in half the exchanges, against the
    canary in another (overlapping) half. Where both differ in the same exchange the worker
    judges it noise; the other canary differences are strict until Diffy's rule, over the
    whole run, finds the field differs as often against the secondary."""
    run_id = await new_run(engine, run_name)
    exchanges = []
    for i in range(40):
        body = order(i, at="p")
        canary = {**body, "at": "c"} if i % 2 == 0 else body
        secondary = {**body, "at": "s"} if i % 4 in (0, 1) else body
        exchanges.append(Ex(primary=body, canary=canary, secondary=secondary))
    await add(engine, run_id, exchanges)
    await judge_pending(engine, run_name, BOOK)
    async with engine.connect() as conn:
        counts = await fetch_endpoint_counts(conn, run_id)
    assert counts[0].strict_pairs == 10  # i % 4 == 2: canary differs, the secondary not
    result = await evaluate_run(engine, run_name)
    noise = check(result, "noise")
    assert noise["passed"] is True and noise["observed"] == 1
    assert "$.at" in str(noise["detail"]) and "canary 50%" in str(noise["detail"])
    assert check(result, "strict")["passed"] is True
    assert result.verdict is Verdict.GO, [c.as_dict() for c in result.checks]

    # A real mismatch next to the noise still fails.
    await add(
        engine,
        run_id,
        [
            Ex(
                primary=order(1, at="p"),
                canary=order(1, at="p", status="x"),
                secondary=order(1, at="p"),
            )
        ],
    )
    await judge_pending(engine, run_name, BOOK)
    result = await evaluate_run(engine, run_name)
    assert result.verdict is Verdict.NO_GO
    assert "$.status" in str(check(result, "strict")["detail"])
    assert "$.at" not in str(check(result, "strict")["detail"])


async def test_latency_shift_decided_by_mann_whitney(engine: AsyncEngine, run_name: str) -> None:
    verdict = {"min_pairs": 20, "min_pairs_per_endpoint": 5, "latency": {"min_samples": 50}}
    rng = np.random.default_rng(11)

    async def run_with(name: str, shift: float) -> VerdictResult:
        run_id = await new_run(engine, name, verdict=verdict)
        p = rng.lognormal(np.log(20), 0.25, 400)
        c = rng.lognormal(np.log(20), 0.25, 400) * shift
        await add(
            engine,
            run_id,
            [
                Ex(primary=order(i), primary_ms=float(p[i]), canary_ms=float(c[i]))
                for i in range(400)
            ],
        )
        await judge_pending(engine, name, BOOK)
        return await evaluate_run(engine, name)

    same = await run_with(run_name + "-same", 1.0)
    assert check(same, "latency")["passed"] is True and same.verdict is Verdict.GO
    slow = await run_with(run_name + "-slow", 1.2)
    lat = check(slow, "latency")
    assert lat["passed"] is False and "Mann-Whitney" in str(lat["detail"])
    assert slow.verdict is Verdict.NO_GO


async def test_losses_make_it_inconclusive(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(30))
    await judge_pending(engine, run_name, BOOK)
    await add_losses(engine, run_id, {"queue_full": 3})
    result = await evaluate_run(engine, run_name)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert check(result, "recording")["passed"] is False


async def test_runtime_check_is_part_of_the_verdict(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name, extra={"runtime": {"required": True}})
    await add(engine, run_id, matching(30))
    await judge_pending(engine, run_name, BOOK)
    result = await evaluate_run(engine, run_name)
    runtime = check(result, "runtime")
    assert runtime["passed"] is None and runtime["blocking"] is True
    assert result.verdict is Verdict.INCONCLUSIVE  # required, and no samples


async def test_unknown_run(engine: AsyncEngine) -> None:
    with pytest.raises(UnknownRun):
        await evaluate_run(engine, f"nope-{uuid.uuid4().hex[:8]}")


async def test_database_away() -> None:
    eng = create_engine(closed_port_url(), pool_size=1)
    try:
        with pytest.raises(StoreUnavailable, match="unavailable"):
            await evaluate_run(eng, "any")
    finally:
        await eng.dispose()


# --------------------------------------------------------------------------- config


def test_run_config_falls_back_part_by_part() -> None:
    assert run_config("r", {}).verdict.min_pairs == 200
    assert run_config("r", {"verdict": {"min_pairs": 5}}).verdict.min_pairs == 5
    cfg = run_config(
        "r",
        {
            "verdict": {"min_pairs": -1},  # invalid: defaults
            "compare": {"noise": {"relative": 0.5}},
            "upstreams": {"primary": "not a url"},
            "unknown": 1,
        },
    )
    assert cfg.verdict.min_pairs == 200
    assert cfg.compare.noise.relative == 0.5
    assert run_config("weird name!", None) == JudgingConfig()


async def test_stored_config_is_read(engine: AsyncEngine, run_name: str) -> None:
    await new_run(engine, run_name, verdict={"min_pairs": 7})
    async with engine.connect() as conn:
        info = await fetch_run(conn, run_name)
    assert run_config(run_name, info.config).verdict.min_pairs == 7
