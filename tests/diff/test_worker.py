"""Diff workers on a real PostgreSQL: each exchange judged exactly once by concurrent
workers, nothing lost when a worker dies mid-batch, and how each exchange is judged."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import diff.worker
from diff.worker import (
    WorkerStats,
    judge_batch,
    judge_exchange,
    judge_executor,
    judge_pending,
    run_workers,
    worker_loop,
)
from graygate.errors import StoreUnavailable, UnknownRun
from graygate.processes import free_port
from graygate.values import Answer
from store.engine import create_engine
from store.judgement import ClaimedExchange
from store.tables import differences, exchanges
from tests.diff.judgeseed import ITEMS, ORDERS, Ex, add, new_run, order, rulebook

BOOK = rulebook()


def side(body: bytes | None = b"{}", status: int | None = 200, error: str | None = None) -> Answer:
    return Answer(
        status=status,
        headers={"content-type": "application/json"} if status is not None else {},
        body=body,
        body_truncated=False,
        latency_ms=1.0,
        error=error,
    )


NONE = Answer(None, {}, None, False, None, None)


def claimed(
    primary: Answer,
    canary: Answer,
    secondary: Answer = NONE,
    *,
    mirror_skipped: str | None = None,
    served_by: str = "primary",
) -> ClaimedExchange:
    return ClaimedExchange(
        id=1,
        run_id=7,
        endpoint=ORDERS,
        served_by=served_by,
        mirror_skipped=mirror_skipped,
        primary=primary,
        canary=canary,
        secondary=secondary,
    )


RULES = BOOK.for_endpoint(ORDERS)


# --------------------------------------------------------------------------- judge_exchange


def test_equal_answers_match() -> None:
    j = judge_exchange(claimed(side(b'{"a": 1}'), side(b'{"a": 1}')), RULES)
    assert (j.outcome, j.strict_mismatches, j.tolerance_violations) == ("match", 0, 0)
    assert j.noise_differences is None and not j.differences


def test_strict_and_tolerance_differences_are_counted_and_kept() -> None:
    p = b'{"status": "paid", "total": 10.0}'
    c = b'{"status": "open", "total": 10.5}'
    j = judge_exchange(claimed(side(p), side(c)), RULES)
    assert j.outcome == "differ"
    assert (j.strict_mismatches, j.tolerance_violations) == (1, 1)
    assert {(d.field, d.judgement, d.against) for d in j.differences} == {
        ("$.status", "strict", "canary"),
        ("$.total", "tolerance", "canary"),
    }


def test_within_tolerance_and_ignored_fields_match() -> None:
    p = b'{"total": 10.0, "request_id": "a"}'
    c = b'{"total": 10.005, "request_id": "b"}'
    assert judge_exchange(claimed(side(p), side(c)), RULES).outcome == "match"


def test_skipped_mirror_or_missing_side_is_skipped() -> None:
    j = judge_exchange(claimed(side(), NONE, mirror_skipped="sampled_out"), RULES)
    assert j.outcome == "skipped" and not j.differences
    assert judge_exchange(claimed(side(), NONE), RULES).outcome == "skipped"
    assert judge_exchange(claimed(NONE, side()), RULES).outcome == "skipped"


def test_transport_error_on_either_side_is_an_error() -> None:
    timeout = side(None, None, "timeout")
    assert judge_exchange(claimed(side(), timeout), RULES).outcome == "error"
    assert judge_exchange(claimed(timeout, side()), RULES).outcome == "error"


def test_canary_5xx_is_a_pair_with_a_status_mismatch() -> None:
    j = judge_exchange(claimed(side(), side(b"oops", 500)), RULES)
    assert j.outcome == "differ" and j.strict_mismatches == 1
    assert j.differences[0].field == "status"


def test_primary_is_the_primary_side_when_the_canary_served() -> None:
    j = judge_exchange(
        claimed(side(b'{"status": "paid"}'), side(b'{"status": "open"}'), served_by="canary"),
        RULES,
    )
    d = j.differences[0]
    assert (d.primary_value, d.other_value) == ("paid", "open")


def test_secondary_difference_at_the_same_field_makes_it_noise() -> None:
    p = b'{"status": "paid", "at": "12:00:01"}'
    c = b'{"status": "paid", "at": "12:00:02"}'
    s = b'{"status": "paid", "at": "12:00:03"}'
    j = judge_exchange(claimed(side(p), side(c), side(s)), RULES)
    assert j.outcome == "noise_only"
    assert (j.strict_mismatches, j.noise_differences) == (0, 1)
    assert {(d.against, d.field, d.judgement) for d in j.differences} == {
        ("canary", "$.at", "noise"),
        ("secondary", "$.at", "strict"),
    }
    # A real difference next to the noise still counts.
    c2 = b'{"status": "open", "at": "12:00:02"}'
    j2 = judge_exchange(claimed(side(p), side(c2), side(s)), RULES)
    assert j2.outcome == "differ" and (j2.strict_mismatches, j2.noise_differences) == (1, 1)
    # A secondary that agrees with the primary: compared, no noise.
    j3 = judge_exchange(claimed(side(p), side(c2), side(p)), RULES)
    assert j3.noise_differences == 0 and j3.strict_mismatches == 2
    # A secondary that failed is not compared.
    j4 = judge_exchange(claimed(side(p), side(p), side(None, None, "reset")), RULES)
    assert j4.outcome == "match" and j4.noise_differences is None


# --------------------------------------------------------------------------- the database


async def _outcomes(engine: AsyncEngine, run_id: int) -> dict[int, Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(
                exchanges.c.id,
                exchanges.c.outcome,
                exchanges.c.judged_at,
                exchanges.c.strict_mismatches,
            ).where(exchanges.c.run_id == run_id)
        )
        return {r.id: r for r in rows}


async def _difference_counts(engine: AsyncEngine, run_id: int) -> dict[tuple[int, str], int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(differences.c.exchange_id, differences.c.field, sa.func.count())
            .where(differences.c.run_id == run_id)
            .group_by(differences.c.exchange_id, differences.c.field)
        )
        return {(r[0], r[1]): r[2] for r in rows}


def _five_hundred() -> list[Ex]:
    """500 exchanges: every 5th differs in $.status (strict), every 7th is not mirrored."""
    out = []
    for i in range(500):
        body = order(i)
        if i % 7 == 0:
            out.append(Ex(primary=body, mirror_skipped="sampled_out"))
        elif i % 5 == 0:
            out.append(Ex(primary=body, canary={**body, "status": "open"}))
        else:
            out.append(Ex(primary=body))
    return out


async def test_three_workers_judge_each_exchange_exactly_once(
    engine: AsyncEngine, database_url: str, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, _five_hundred())
    engines = [create_engine(database_url, pool_size=2) for _ in range(3)]
    stats = [WorkerStats() for _ in engines]
    try:
        # Small batches and no idle wait so that the three really interleave.
        tasks = [
            asyncio.create_task(
                worker_loop(e, run_id, BOOK, batch_size=7, idle_min=0.01, idle_max=0.02, stats=s)
            )
            for e, s in zip(engines, stats, strict=True)
        ]
        for _ in range(300):
            if sum(s.judged for s in stats) >= 500:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # let a duplicate show, were there one
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for e in engines:
            await e.dispose()
    # Each worker counts what it committed: together exactly 500, and all three worked.
    assert sum(s.judged for s in stats) == 500
    assert all(s.judged > 0 for s in stats), [s.judged for s in stats]
    rows = await _outcomes(engine, run_id)
    assert len(rows) == 500 and all(r.judged_at is not None for r in rows.values())
    ids = sorted(rows)
    expected = {}
    for i, ex_id in enumerate(ids):
        expected[ex_id] = "skipped" if i % 7 == 0 else "differ" if i % 5 == 0 else "match"
    assert {k: r.outcome for k, r in rows.items()} == expected
    # One stored difference per differing exchange: nothing judged twice.
    counts = await _difference_counts(engine, run_id)
    differing = {k for k, v in expected.items() if v == "differ"}
    assert counts == {(k, "$.status"): 1 for k in differing}
    assert sum(s.differences for s in stats) == len(differing)


class _GatedExecutor(ThreadPoolExecutor):
    """Runs the comparison only once released: the batch's transaction stays open (its
    rows locked) until then."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.claimed = threading.Event()
        self.release = threading.Event()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def gated() -> Any:
            self.claimed.set()
            self.release.wait(30)
            return fn(*args, **kwargs)

        return super().submit(gated)


async def test_worker_cancelled_mid_batch_loses_nothing(
    engine: AsyncEngine, database_url: str, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, _five_hundred()[:60])
    dying = create_engine(database_url, pool_size=1)
    gate = _GatedExecutor()
    try:
        task = asyncio.create_task(judge_batch(dying, run_id, BOOK, batch_size=25, executor=gate))
        assert await asyncio.to_thread(gate.claimed.wait, 30)
        # While the dying worker holds its 25, another judges everything else.
        other = await judge_pending(engine, run_name, BOOK, batch_size=10)
        assert other == 35
        task.cancel()  # dies inside its transaction
        gate.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        gate.shutdown(wait=True)
        await dying.dispose()
    rows = await _outcomes(engine, run_id)
    held = {k for k, r in rows.items() if r.judged_at is None}
    assert len(held) == 25  # rolled back: unjudged, not lost
    counts = await _difference_counts(engine, run_id)
    assert not {k for k, _ in counts} & held
    # And the next worker picks them up.
    assert await judge_pending(engine, run_name, BOOK) == 25
    rows = await _outcomes(engine, run_id)
    assert all(r.judged_at is not None for r in rows.values())
    counts = await _difference_counts(engine, run_id)
    assert all(v == 1 for v in counts.values())
    assert len(counts) == sum(1 for r in rows.values() if r.outcome == "differ")


_KILLED_WORKER = """
import asyncio, sys, time
from concurrent.futures import ThreadPoolExecutor
from diff.worker import judge_batch
from store.engine import create_engine
from tests.diff.judgeseed import rulebook

class Stuck(ThreadPoolExecutor):
    def submit(self, fn, /, *args, **kwargs):
        def stuck():
            print("claimed", flush=True)
            time.sleep(600)
        return super().submit(stuck)

async def main():
    engine = create_engine(sys.argv[1], pool_size=1)
    await judge_batch(engine, int(sys.argv[2]), rulebook(), batch_size=20, executor=Stuck())

asyncio.run(main())
"""


async def test_worker_process_killed_mid_batch_loses_nothing(
    engine: AsyncEngine, database_url: str, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, _five_hundred()[:30])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLED_WORKER,
        database_url,
        str(run_id),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip() == b"claimed"
        # Its 20 are locked: another worker gets only the other 10.
        assert await judge_pending(engine, run_name, BOOK) == 10
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    # PostgreSQL notices the dead connection and rolls its transaction back.
    for _ in range(100):
        if await judge_pending(engine, run_name, BOOK) or not [
            r for r in (await _outcomes(engine, run_id)).values() if r.judged_at is None
        ]:
            break
        await asyncio.sleep(0.1)
    rows = await _outcomes(engine, run_id)
    assert all(r.judged_at is not None for r in rows.values())


async def test_run_workers_judge_what_arrives_and_stop_on_exit(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    async with run_workers(engine, run_id, BOOK, count=2, batch_size=10) as stats:
        for round_ in range(3):
            await add(engine, run_id, [Ex(primary=order(i), endpoint=ITEMS) for i in range(15)])
            for _ in range(200):
                if stats.judged >= 15 * (round_ + 1):
                    break
                await asyncio.sleep(0.05)
    assert stats.judged == 45
    tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith(f"diff-worker:{run_id}:")]
    assert not tasks
    rows = await _outcomes(engine, run_id)
    assert {r.outcome for r in rows.values()} == {"match"}


def _thread_nice(tid: int) -> int:
    """A thread's nice value, from /proc (field 19 of its stat)."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def test_judge_executor_lowers_only_its_threads_priority() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    for nice in (1, 7, 19):
        with judge_executor(1, nice) as pool:
            tid = pool.submit(threading.get_native_id).result()
            assert _thread_nice(tid) == min(19, base + nice)
    # The process (and the loop's thread) keep theirs.
    assert os.getpriority(os.PRIO_PROCESS, 0) == base
    assert _thread_nice(threading.get_native_id()) == base


@pytest.mark.parametrize("nice", [-1, 20])
def test_judge_executor_refuses_a_priority_out_of_bounds(nice: int) -> None:
    with pytest.raises(ValueError, match=r"nice must be within 0\.\.19"):
        judge_executor(1, nice)


async def test_run_workers_judge_in_lowered_threads(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    seen: set[int] = set()
    real = diff.worker.judge_exchanges

    def spying(batch: Any, book: Any) -> Any:
        seen.add(_thread_nice(threading.get_native_id()))
        return real(batch, book)

    diff.worker.judge_exchanges = spying  # type: ignore[assignment]
    try:
        async with run_workers(engine, run_id, BOOK, count=1, batch_size=10, nice=5) as stats:
            await add(engine, run_id, [Ex(primary=order(i), endpoint=ITEMS) for i in range(12)])
            for _ in range(200):
                if stats.judged >= 12:
                    break
                await asyncio.sleep(0.05)
    finally:
        diff.worker.judge_exchanges = real
    assert stats.judged == 12
    assert seen == {min(19, base + 5)}
    assert _thread_nice(threading.get_native_id()) == base


async def test_worker_loop_stops_on_cancel_while_idle(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    task = asyncio.create_task(worker_loop(engine, run_id, BOOK, idle_min=0.01, idle_max=0.05))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_worker_loop_survives_a_database_outage(database_url: str, run_name: str) -> None:
    from tests.faultproxy import FaultProxy

    async with FaultProxy.before(database_url) as proxy:
        eng = create_engine(proxy.rewrite(database_url), pool_size=1)
        try:
            run_id = await new_run(eng, run_name)
            await proxy.block()
            stats = WorkerStats()
            task = asyncio.create_task(
                worker_loop(eng, run_id, BOOK, idle_min=0.01, error_max=0.2, stats=stats)
            )
            for _ in range(100):
                if stats.failures >= 2:
                    break
                await asyncio.sleep(0.05)
            assert stats.failures >= 2 and not task.done()
            await proxy.unblock()
            await add(eng, run_id, [Ex(primary=order(i)) for i in range(5)])
            for _ in range(100):
                if stats.judged == 5:
                    break
                await asyncio.sleep(0.05)
            assert stats.judged == 5
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            await eng.dispose()


async def test_judge_pending_unknown_run(engine: AsyncEngine) -> None:
    with pytest.raises(UnknownRun):
        await judge_pending(engine, f"nope-{uuid.uuid4().hex[:6]}", BOOK)


async def test_judge_pending_database_away() -> None:
    port = free_port()
    eng = create_engine(f"postgresql+asyncpg://postgres:s3cret@127.0.0.1:{port}/x", pool_size=1)
    try:
        with pytest.raises(StoreUnavailable, match="is unavailable") as info:
            await judge_pending(eng, "any", BOOK)
    finally:
        await eng.dispose()
    assert "s3cret" not in str(info.value)
