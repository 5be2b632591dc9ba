"""A run's lifecycle in the store: a closed run's exchanges are dropped at write and
counted as run_closed losses (the verdict sees them), its runtime sampling stops;
delete removes a run and everything recorded for it; prune picks idle runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import evaluate_run
from diff.runtime_checks import RuntimeSample
from diff.worker import judge_pending
from graygate.errors import UnknownRun
from graygate.values import Verdict
from graygate.vocabulary import WaiverSource
from store.exchanges import count_exchanges, fetch_losses, write_exchanges
from store.lifecycle import (
    close_run,
    delete_run,
    list_run_details,
    prune_candidates,
)
from store.runtime_samples import insert_samples
from store.tables import differences, exchanges, runs, verdicts, waiver_events, waivers
from store.waivers import add_waiver, list_waivers
from tests.diff.judgeseed import Ex, add, matching, new_run, order, rulebook
from tests.proxy.recording.rows import rows

BOOK = rulebook()


async def test_a_closed_run_drops_and_counts_what_comes_after(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    other = await new_run(engine, run_name + "-open")
    first = await write_exchanges(engine, rows(run_id, 5))
    assert (first.inserted, first.run_closed) == (5, 0)
    closed_at = await close_run(engine, run_name)
    assert await close_run(engine, run_name) == closed_at  # idempotent

    mixed = rows(run_id, 7, start=5) + rows(other, 3)
    result = await write_exchanges(engine, mixed)
    assert (result.inserted, result.run_closed) == (3, 7)
    assert await count_exchanges(engine, run_id) == 5
    assert await count_exchanges(engine, other) == 3
    assert await fetch_losses(engine, run_id) == {"run_closed": 7}
    assert await fetch_losses(engine, other) == {}

    sample = RuntimeSample(taken_at=datetime.now(UTC), source="expvar", goroutines=5)
    assert await insert_samples(engine, run_id, "canary", [sample]) == 0
    assert await insert_samples(engine, other, "canary", [sample]) == 1

    # The verdict sees the loss: 7 of 12 unrecorded.
    await judge_pending(engine, run_name, BOOK)
    result_v = await evaluate_run(engine, run_name, record=False)
    (rec,) = [c for c in result_v.checks if c.name == "recording"]
    assert rec.passed is False and result_v.verdict is not Verdict.GO


async def test_delete_removes_the_run_and_keeps_the_trail(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, [*matching(5), Ex(primary=order(1), canary=order(1, status="x"))])
    await judge_pending(engine, run_name, BOOK)
    await evaluate_run(engine, run_name)
    scoped = await add_waiver(
        engine, run_name, endpoint="*", field="$.status", reason="r", by="a",
        source=WaiverSource.CLI, scope="nothing-else-*",
    )  # fmt: skip
    assert (await delete_run(engine, run_name)).exchanges == 6
    async with engine.connect() as conn:
        for table in (exchanges, differences, verdicts):
            n = await conn.scalar(
                sa.select(sa.func.count()).select_from(table).where(table.c.run_id == run_id)
            )
            assert n == 0, table.name
        assert await conn.scalar(sa.select(runs.c.id).where(runs.c.name == run_name)) is None
        kept = (await conn.execute(sa.select(waivers).where(waivers.c.id == scoped.id))).one()
        assert kept.run_id is None and kept.run_name == run_name
        trail = await conn.scalar(
            sa.select(sa.func.count()).select_from(waiver_events)
            .where(waiver_events.c.waiver_id == scoped.id)
        )  # fmt: skip
        assert trail == 1
    assert [w.id for w in await list_waivers(engine, None)].count(scoped.id) == 1
    with pytest.raises(UnknownRun):
        await delete_run(engine, run_name)
    with pytest.raises(UnknownRun):
        await close_run(engine, run_name)


async def test_list_and_prune(engine: AsyncEngine) -> None:
    tag = uuid.uuid4().hex[:8]
    names = [f"prune-{tag}-{i}" for i in range(3)]
    for i, name in enumerate(names):
        run_id = await new_run(engine, name)
        await add(engine, run_id, matching(2 + i))
    async with engine.begin() as conn:  # the first two were last active 40 days ago
        await conn.execute(
            sa.update(runs)
            .where(runs.c.name.in_(names[:2]))
            .values(
                created_at=sa.func.now() - sa.text("interval '41 days'"),
                updated_at=sa.func.now() - sa.text("interval '40 days'"),
            )
        )
        await conn.execute(
            sa.update(exchanges)
            .where(exchanges.c.run_id.in_(sa.select(runs.c.id).where(runs.c.name.in_(names[:2]))))
            .values(recorded_at=sa.func.now() - sa.text("interval '40 days'"))
        )
    listed = {r.name: r for r in await list_run_details(engine)}
    assert [listed[n].exchanges for n in names] == [2, 3, 4]
    assert all(listed[n].size_bytes > 0 for n in names)
    assert listed[names[2]].last_exchange_at is not None

    month = 30 * 86_400
    ours = [n for n in await prune_candidates(engine, older_than_s=month) if tag in n]
    assert ours == names[:2]
    # keep_last counts every run, most recently created first: ours are the oldest here.
    everything = len(listed)
    assert [
        n
        for n in await prune_candidates(engine, older_than_s=month, keep_last=everything - 1)
        if tag in n
    ] == [names[0]]
    assert await prune_candidates(engine, older_than_s=month, keep_last=everything) == []
    assert [n for n in await prune_candidates(engine, older_than_s=50 * 86_400) if tag in n] == []
    with pytest.raises(ValueError, match="keep_last must be between 0 and 1000000"):
        await prune_candidates(engine, older_than_s=month, keep_last=1_000_001)


async def test_a_recorder_feeding_a_closed_run_counts_run_closed(
    engine: AsyncEngine, run_name: str
) -> None:
    from prometheus_client import REGISTRY

    from config.schema import RecordConfig
    from proxy.recorder import Recorder
    from tests.proxy.recording.rows import record

    def dropped() -> float:
        value = REGISTRY.get_sample_value(
            "graygate_record_exchanges_dropped_total", {"reason": "run_closed"}
        )
        return value or 0.0

    run_id = await new_run(engine, run_name)
    before = dropped()
    async with Recorder(engine, RecordConfig(batch_size=10, flush_interval_ms=60_000)) as rec:
        for i in range(20):
            assert rec.submit(record(run_id, i))
        await rec.flush()
        await close_run(engine, run_name)
        for i in range(20, 35):
            assert rec.submit(record(run_id, i))  # accepted: the proxy keeps serving
        await rec.flush()
    assert await count_exchanges(engine, run_id) == 20
    assert await fetch_losses(engine, run_id) == {"run_closed": 15}
    assert dropped() - before == 15
