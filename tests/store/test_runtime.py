"""store.runtime_samples against a real PostgreSQL: samples, pause baselines, preflight findings."""

from __future__ import annotations

import asyncio
import statistics
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import RuntimeConfig, RuntimeSource
from diff.runtime_checks import Baseline, RuntimeSample, runtime_check
from store.runs import ensure_run
from store.runtime_samples import (
    Finding,
    fetch_findings,
    fetch_samples,
    insert_findings,
    insert_samples,
    pause_stats,
    previous_pause_stats,
)
from store.tables import verdicts

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
MS = 1_000_000


async def new_run(engine: AsyncEngine, *, canary_url: str | None = None) -> int:
    return await ensure_run(
        engine,
        f"run-{uuid.uuid4().hex[:10]}",
        primary_url="http://127.0.0.1:8081",
        canary_url=canary_url,
    )


async def add_verdict(engine: AsyncEngine, run_id: int, verdict: str, at: datetime) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(verdicts).values(run_id=run_id, verdict=verdict, checks=[], computed_at=at)
        )


def samples(pauses: list[tuple[int, ...]], *, start: datetime = T0) -> list[RuntimeSample]:
    out = []
    num_gc = 0
    for i, ps in enumerate(pauses):
        num_gc += len(ps)
        out.append(
            RuntimeSample(
                taken_at=start + timedelta(seconds=i),
                source="expvar",
                goroutines=10 + i,
                heap_alloc=1000 * i,
                heap_inuse=2000 * i,
                num_gc=num_gc,
                gc_cpu_fraction=0.001,
                pauses_ns=ps,
            )
        )
    return out


async def test_samples_round_trip(engine: AsyncEngine) -> None:
    run_id = await new_run(engine)
    good = samples([(), (MS, 2 * MS), (3 * MS,)])
    failed = RuntimeSample.failed(T0 + timedelta(seconds=10), "expvar", "refused: connect")
    assert await insert_samples(engine, run_id, "canary", [*good, failed]) == 4
    assert await insert_samples(engine, run_id, "canary", []) == 0
    await insert_samples(engine, run_id, "primary", samples([(MS,)]))

    rows = await fetch_samples(engine, run_id, "canary")
    assert [r.taken_at for r in rows] == [s.taken_at for s in good] + [failed.taken_at]
    assert [r.pauses_ns for r in rows] == [(), (MS, 2 * MS), (3 * MS,), ()]
    assert rows[1].goroutines == 11 and rows[1].heap_inuse == 2000 and rows[1].num_gc == 2
    assert rows[1].source == "expvar" and rows[1].role == "canary" and rows[1].error is None
    assert rows[-1].error == "refused: connect" and rows[-1].goroutines is None
    assert len(await fetch_samples(engine, run_id, "primary")) == 1
    later = await fetch_samples(engine, run_id, "canary", since=T0 + timedelta(seconds=2))
    assert len(later) == 2
    with pytest.raises(ValueError, match="role"):
        await fetch_samples(engine, run_id, "tertiary")


async def test_pause_stats_are_sql_aggregates(engine: AsyncEngine) -> None:
    run_id = await new_run(engine)
    pauses = [(MS, 2 * MS), (), (5 * MS,), (MS, MS, 7 * MS)]
    await insert_samples(engine, run_id, "primary", samples(pauses))
    # A failed poll has no pauses; it must not count.
    await insert_samples(engine, run_id, "primary", [RuntimeSample.failed(T0, "expvar", "timeout")])
    flat = [p for ps in pauses for p in ps]
    st = await pause_stats(engine, run_id, "primary")
    assert st.count == len(flat)
    assert st.mean_ns == pytest.approx(statistics.fmean(flat))
    assert st.sigma_ns == pytest.approx(statistics.stdev(flat))
    none = await pause_stats(engine, run_id, "canary")
    assert none.count == 0 and none.mean_ns is None and none.sigma_ns is None


async def test_previous_pause_stats_take_the_latest_go_run(engine: AsyncEngine) -> None:
    url = f"http://canary-{uuid.uuid4().hex[:8]}:8082"  # isolates this test's runs
    old_go = await new_run(engine, canary_url=url)
    newer_go = await new_run(engine, canary_url=url)
    turned_no_go = await new_run(engine, canary_url=url)
    current = await new_run(engine, canary_url=url)
    await insert_samples(engine, old_go, "canary", samples([(MS,)] * 12))
    await insert_samples(engine, newer_go, "canary", samples([(2 * MS,)] * 12))
    await insert_samples(engine, turned_no_go, "canary", samples([(9 * MS,)] * 12))
    await insert_samples(engine, current, "canary", samples([(50 * MS,)] * 12))
    await add_verdict(engine, old_go, "GO", T0)
    await add_verdict(engine, newer_go, "NO_GO", T0 + timedelta(minutes=1))
    await add_verdict(engine, newer_go, "GO", T0 + timedelta(minutes=2))  # latest: GO
    await add_verdict(engine, turned_no_go, "GO", T0 + timedelta(minutes=3))
    await add_verdict(engine, turned_no_go, "NO_GO", T0 + timedelta(minutes=4))
    await add_verdict(engine, current, "GO", T0 + timedelta(minutes=5))  # itself: excluded

    st = await previous_pause_stats(engine, exclude_run_id=current, canary_url=url)
    assert st is not None
    assert st.run_id == newer_go and st.count == 12 and st.mean_ns == pytest.approx(2 * MS)
    assert st.sigma_ns == pytest.approx(0.0)
    base = Baseline.from_ns(
        "previous_run", st.count, st.mean_ns or 0, st.sigma_ns, run_id=st.run_id
    )
    assert base is not None and base.threshold_ms == pytest.approx(4.0)

    other = await previous_pause_stats(engine, exclude_run_id=current, canary_url=url + "/x")
    assert other is None
    lonely = await new_run(engine, canary_url=url + "/lonely")
    assert await previous_pause_stats(engine, exclude_run_id=lonely, canary_url=url + "/y") is None


async def test_findings_latest_preflight_and_all(engine: AsyncEngine) -> None:
    run_id = await new_run(engine)
    assert await fetch_findings(engine, run_id) == []
    await insert_findings(
        engine,
        run_id,
        [Finding("canary.health", False, "refused"), Finding("primary.health", True, "200")],
    )
    await asyncio.sleep(0.01)  # a later transaction: a later checked_at
    await insert_findings(engine, run_id, [Finding("canary.health", True, "GET -> 200")])
    await insert_findings(engine, run_id, [])

    latest = await fetch_findings(engine, run_id)
    assert [(f.check, f.ok, f.detail) for f in latest] == [("canary.health", True, "GET -> 200")]
    assert latest[0].checked_at is not None
    everything = await fetch_findings(engine, run_id, latest=False)
    assert [(f.check, f.ok) for f in everything] == [
        ("canary.health", False),
        ("primary.health", True),
        ("canary.health", True),
    ]
    assert len({f.checked_at for f in everything[:2]}) == 1  # one preflight, one timestamp


async def test_runtime_check_over_stored_samples(engine: AsyncEngine) -> None:
    """What the verdict does: fetch the canary's rows and judge them as they are."""
    run_id = await new_run(engine)
    leak = [
        RuntimeSample(
            taken_at=T0 + timedelta(seconds=t),
            source="expvar",
            goroutines=10 + 3 * t,
            num_gc=t,
            pauses_ns=() if t == 0 else (MS,),
        )
        for t in range(50)
    ]
    await insert_samples(engine, run_id, "canary", leak)
    rows = await fetch_samples(engine, run_id, "canary")
    cfg = RuntimeConfig(
        canary=RuntimeSource(expvar="http://127.0.0.1:1/debug/vars"),
        window_s=10,
        gc_pause_budget_ms=5,
    )
    check = runtime_check(rows, cfg, baseline=None)
    assert check.passed is False and "goroutine leak" in check.detail
    assert check.observed["pauses"] == 49 and check.observed["pauses_lost"] == 0
