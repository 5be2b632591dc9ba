"""The recorder against a real PostgreSQL, and against one that goes away (a fault proxy)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiohttp import web
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import RecordConfig
from graygate.errors import ConfigError
from graygate.values import Answer
from proxy.recorder import RECORDER_KEY, Recorder, recorder_ctx
from proxy.spill import SEGMENT_SUFFIX, Spill
from store.engine import create_engine
from store.exchanges import count_exchanges, exchange_row, fetch_losses, write_exchanges
from store.runs import ensure_run
from tests.faultproxy import FaultProxy
from tests.proxy.recording.rows import record


async def new_run(engine: AsyncEngine, name: str) -> int:
    return await ensure_run(engine, name, primary_url="http://p", canary_url="http://c")


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def distinct_and_total(engine: AsyncEngine, run_id: int) -> tuple[int, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.text(
                    "SELECT count(DISTINCT (trace_id, span_id)), count(*) "
                    "FROM exchanges WHERE run_id = :r"
                ),
                {"r": run_id},
            )
        ).one()
    return int(row[0]), int(row[1])


async def transactions(engine: AsyncEngine, run_id: int) -> int:
    async with engine.connect() as conn:
        n = await conn.scalar(
            sa.text("SELECT count(DISTINCT xmin::text) FROM exchanges WHERE run_id = :r"),
            {"r": run_id},
        )
    return int(n or 0)


def spill_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SEGMENT_SUFFIX}"))


@asynccontextmanager
async def database_behind_a_fault_proxy(
    database_url: str,
) -> AsyncIterator[tuple[FaultProxy, AsyncEngine]]:
    """An engine whose PostgreSQL can be blocked, hung and brought back."""
    async with FaultProxy.before(database_url) as proxy:
        proxied = create_engine(proxy.rewrite(database_url), pool_size=2)
        try:
            yield proxy, proxied
        finally:
            await proxied.dispose()


def dropped_metric(reason: str) -> float:
    value = REGISTRY.get_sample_value("graygate_record_exchanges_dropped_total", {"reason": reason})
    return value or 0.0


async def test_batches_by_size_then_by_time(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    config = RecordConfig(batch_size=100, flush_interval_ms=60_000)
    async with Recorder(engine, config) as recorder:
        for i in range(250):
            assert recorder.submit(record(run_id, i))
        await eventually(lambda: _equals(count_exchanges(engine, run_id), 200))
        await asyncio.sleep(0.3)  # the last 50 wait for the batch to fill (or the interval)
        assert await count_exchanges(engine, run_id) == 200
        await recorder.flush()
        assert await count_exchanges(engine, run_id) == 250
        assert recorder.stats.batches == 3 and recorder.stats.copies == 3
    # One COPY per batch: each batch is one transaction.
    assert await transactions(engine, run_id) == 3

    run_id = await new_run(engine, run_name + "-t")
    config = RecordConfig(batch_size=10_000, flush_interval_ms=50)
    async with Recorder(engine, config) as recorder:
        for i in range(10):
            recorder.submit(record(run_id, i))
        await eventually(lambda: _equals(count_exchanges(engine, run_id), 10), within=2.0)
        assert recorder.stats.batches == 1


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_close_flushes_the_queue(engine: AsyncEngine, run_name: str, tmp_path: Path) -> None:
    run_id = await new_run(engine, run_name)
    config = RecordConfig(batch_size=1000, flush_interval_ms=60_000, spill_dir=str(tmp_path))
    recorder = Recorder(engine, config)
    await recorder.start()
    for i in range(30):
        recorder.submit(record(run_id, i))
    await recorder.close()
    assert await count_exchanges(engine, run_id) == 30
    assert not recorder.submit(record(run_id, 99))  # closed
    assert spill_files(tmp_path) == []


async def test_queue_full_is_dropped_and_counted(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    before = dropped_metric("queue_full")
    config = RecordConfig(queue_size=10, batch_size=5, flush_interval_ms=10)
    async with Recorder(engine, config) as recorder:
        # The writer cannot run until we yield: the queue takes 10, the rest are refused.
        accepted = [recorder.submit(record(run_id, i)) for i in range(50)]
        assert accepted == [True] * 10 + [False] * 40
        assert recorder.queue_depth == 10
    assert await count_exchanges(engine, run_id) == 10
    assert await fetch_losses(engine, run_id) == {"queue_full": 40}
    assert dropped_metric("queue_full") - before == 40


async def test_bad_records_cost_only_themselves(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    before = dropped_metric("rejected")
    bad_status = record(run_id, 1)
    bad_status.primary = Answer(status=70_000)
    unknown_run = record(2**62, 2)  # no such run: PostgreSQL refuses the row
    async with Recorder(engine, RecordConfig(batch_size=10, flush_interval_ms=10)) as recorder:
        for rec in (record(run_id, 0), bad_status, unknown_run, record(run_id, 3)):
            recorder.submit(rec)
        await recorder.flush()
        assert recorder.stats.dropped == {"encode_error": 1, "rejected": 1}
    assert await count_exchanges(engine, run_id) == 2
    # The unknown run's counter cannot be stored; the others' are.
    assert await fetch_losses(engine, run_id) == {"encode_error": 1}
    assert dropped_metric("rejected") - before == 1


async def test_losses_are_flushed_while_running(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    config = RecordConfig(queue_size=2, batch_size=1, flush_interval_ms=10)
    async with Recorder(engine, config, loss_flush_interval=0.05) as recorder:
        for i in range(5):
            recorder.submit(record(run_id, i))
        await eventually(lambda: _has_losses(engine, run_id, {"queue_full": 3}), within=3.0)


async def _has_losses(engine: AsyncEngine, run_id: int, expected: dict[str, int]) -> bool:
    return await fetch_losses(engine, run_id) == expected


async def test_database_away_spills_then_replays(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    config = RecordConfig(batch_size=50, flush_interval_ms=20, spill_dir=str(tmp_path))
    async with database_behind_a_fault_proxy(database_url) as (proxy, proxied):
        async with Recorder(proxied, config) as recorder:
            for i in range(100):
                recorder.submit(record(run_id, i))
            await recorder.flush()
            assert await count_exchanges(engine, run_id) == 100

            await proxy.block()  # PostgreSQL goes away: open connections cut, new refused
            for i in range(100, 400):
                assert recorder.submit(record(run_id, i))
                if i % 25 == 0:
                    await asyncio.sleep(0.005)
            await recorder.flush()
            assert not recorder.database_up
            assert recorder.stats.spilled == 300
            assert spill_files(tmp_path)
            assert await count_exchanges(engine, run_id) == 100

            await proxy.unblock()  # back: the spill is replayed, oldest first
            for i in range(400, 450):
                recorder.submit(record(run_id, i))
            await eventually(lambda: _equals(count_exchanges(engine, run_id), 450))
            await eventually(lambda: _no_files(tmp_path))
            assert recorder.database_up
            # The last 50 went to the spill too if they came before the probe saw it back.
            stats = recorder.stats
            assert stats.replayed == stats.spilled >= 300
            assert stats.recorded + stats.replayed == 450 and stats.dropped == {}
            assert recorder.spill is not None and recorder.spill.size == 0
    assert await distinct_and_total(engine, run_id) == (450, 450)
    assert await fetch_losses(engine, run_id) == {}


async def _no_files(directory: Path) -> bool:
    return not spill_files(directory)


async def test_database_hanging_times_out_and_spills(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    config = RecordConfig(batch_size=20, flush_interval_ms=20, spill_dir=str(tmp_path))
    # The production engine (pre-ping, 60 s command timeout): the recorder's own
    # write timeout must bound the whole write, pool checkout included.
    async with database_behind_a_fault_proxy(database_url) as (proxy, hanging):
        async with Recorder(hanging, config, write_timeout=1.0) as recorder:
            for i in range(20):
                recorder.submit(record(run_id, i))
            await recorder.flush()
            await proxy.hang()  # packets go nowhere: every call times out
            for i in range(20, 60):
                recorder.submit(record(run_id, i))
            async with asyncio.timeout(20):
                await recorder.flush()
            assert not recorder.database_up and recorder.stats.spilled == 40
            await proxy.unblock()
            await eventually(lambda: _equals(count_exchanges(engine, run_id), 60))
            await eventually(lambda: _no_files(tmp_path))
    assert await distinct_and_total(engine, run_id) == (60, 60)


async def test_spill_full_is_dropped_and_counted(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    config = RecordConfig(
        batch_size=10, flush_interval_ms=10, spill_dir=str(tmp_path), spill_max_bytes=20_000
    )
    async with database_behind_a_fault_proxy(database_url) as (proxy, proxied):
        async with Recorder(proxied, config) as recorder:
            await proxy.block()
            for i in range(100):
                recorder.submit(record(run_id, i))
                await asyncio.sleep(0)
            await recorder.flush()
            spilled = recorder.stats.spilled
            assert 0 < spilled < 100
            assert recorder.stats.dropped == {"spill_full": 100 - spilled}
            await proxy.unblock()
            await eventually(lambda: _equals(count_exchanges(engine, run_id), spilled))
            await eventually(lambda: _no_files(tmp_path))
    assert await fetch_losses(engine, run_id) == {"spill_full": 100 - spilled}


async def test_unusable_spill_dir_is_a_config_error(engine: AsyncEngine, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "spill"
    not_a_dir.write_text("a file where the spill directory should be")
    recorder = Recorder(engine, RecordConfig(spill_dir=str(not_a_dir)))
    with pytest.raises(ConfigError) as caught:
        await recorder.start()
    assert "record.spill_dir" in str(caught.value)


async def test_spill_unwritable_is_dropped_and_counted(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    spill_dir = tmp_path / "spill"
    config = RecordConfig(batch_size=10, flush_interval_ms=10, spill_dir=str(spill_dir))
    async with database_behind_a_fault_proxy(database_url) as (proxy, proxied):
        async with Recorder(proxied, config) as recorder:
            shutil.rmtree(spill_dir)  # the disk goes bad under a running recorder
            spill_dir.write_text("not a directory")
            await proxy.block()
            for i in range(30):
                recorder.submit(record(run_id, i))
            await recorder.flush()
            assert recorder.stats.spilled == 0
            assert recorder.stats.dropped == {"spill_error": 30}
            await proxy.unblock()  # the losses are counted in the database once it is back
            await eventually(lambda: _equals(fetch_losses(engine, run_id), {"spill_error": 30}))
    assert await count_exchanges(engine, run_id) == 0


async def test_close_while_away_spills_everything_and_the_next_start_replays(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    config = RecordConfig(
        queue_size=50, batch_size=20, flush_interval_ms=60_000, spill_dir=str(tmp_path)
    )
    async with database_behind_a_fault_proxy(database_url) as (proxy, proxied):
        recorder = Recorder(proxied, config, drain_timeout=5.0)
        await recorder.start()
        await proxy.block()
        for i in range(80):  # 50 queued, 30 refused (queue_full)
            recorder.submit(record(run_id, i))
        await recorder.close()  # SIGTERM while PostgreSQL is away
    assert recorder.stats.spilled == 50
    assert spill_files(tmp_path)
    assert await count_exchanges(engine, run_id) == 0
    assert await fetch_losses(engine, run_id) == {}

    # The next process (the database is back) replays rows and loss counters.
    async with Recorder(engine, config) as again:
        await eventually(lambda: _no_files(tmp_path))
        assert again.stats.replayed == 50
    assert await distinct_and_total(engine, run_id) == (50, 50)
    assert await fetch_losses(engine, run_id) == {"queue_full": 30}


async def test_replay_after_a_crash_writes_nothing_twice(
    engine: AsyncEngine, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    rows = [exchange_row(record(run_id, i)) for i in range(120)]
    # A crash mid-replay: the first 70 rows were stored, the segment was not deleted.
    await write_exchanges(engine, rows[:70])
    spill = Spill(tmp_path / "spill", 10_000_000)
    spill.append(rows)
    spill.append_losses({(run_id, "queue_full"): 4})
    spill.close()
    [segment] = spill_files(tmp_path / "spill")
    backup = tmp_path / "backup"
    shutil.copy(segment, backup)

    config = RecordConfig(batch_size=50, spill_dir=str(tmp_path / "spill"))
    async with Recorder(engine, config) as recorder:
        await eventually(lambda: _no_files(tmp_path / "spill"))
    assert recorder.stats.replayed == 50 and recorder.stats.duplicates == 70
    assert await distinct_and_total(engine, run_id) == (120, 120)
    assert await fetch_losses(engine, run_id) == {"queue_full": 4}

    # A crash after the last commit, before the file was deleted: replayed again, no effect.
    shutil.copy(backup, segment)
    async with Recorder(engine, config) as recorder:
        await eventually(lambda: _no_files(tmp_path / "spill"))
    assert recorder.stats.replayed == 0 and recorder.stats.duplicates == 120
    assert await distinct_and_total(engine, run_id) == (120, 120)
    assert await fetch_losses(engine, run_id) == {"queue_full": 4}


async def test_recorder_ctx_owns_the_recorder(
    engine: AsyncEngine, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    engine_key = web.AppKey("engine", AsyncEngine)
    app = web.Application()
    app[engine_key] = engine
    app.cleanup_ctx.append(
        recorder_ctx(
            RecordConfig(flush_interval_ms=60_000),
            engine=engine_key,
            default_spill_dir=tmp_path,
        )
    )
    runner = web.AppRunner(app)
    await runner.setup()
    recorder = app[RECORDER_KEY]
    assert recorder.spill is not None and recorder.spill.directory == tmp_path
    for i in range(20):
        assert recorder.submit(record(run_id, i))
    await runner.cleanup()  # what the CLI does on SIGTERM
    assert await count_exchanges(engine, run_id) == 20
    assert not recorder.submit(record(run_id, 20))


async def test_two_processes_share_a_run_and_a_spill_directory(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    config = RecordConfig(batch_size=25, flush_interval_ms=10, spill_dir=str(tmp_path))
    async with FaultProxy.before(database_url) as proxy:
        engines = [create_engine(proxy.rewrite(database_url), pool_size=2) for _ in range(2)]
        try:
            async with Recorder(engines[0], config) as one, Recorder(engines[1], config) as two:
                await proxy.block()
                for i in range(200):
                    (one if i % 2 else two).submit(record(run_id, i))
                    if i % 20 == 0:
                        await asyncio.sleep(0.002)
                await asyncio.gather(one.flush(), two.flush())
                assert one.stats.spilled + two.stats.spilled == 200
                await proxy.unblock()
                await eventually(lambda: _equals(count_exchanges(engine, run_id), 200))
                await eventually(lambda: _no_files(tmp_path))
            assert one.stats.replayed + two.stats.replayed == 200
            assert one.stats.duplicates + two.stats.duplicates == 0
        finally:
            for eng in engines:
                await eng.dispose()
    assert await distinct_and_total(engine, run_id) == (200, 200)


KILLED_RECORDER = Path(__file__).parent / "recording" / "killed_recorder.py"


def run_killed_recorder(
    database_url: str, spill_dir: Path, run_id: int, written: int, unwritten: int
) -> None:
    """A real process that records ``written`` exchanges, accepts ``unwritten`` more and is
    killed with SIGKILL before its writer gets to them."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [
            sys.executable,
            str(KILLED_RECORDER),
            database_url,
            str(spill_dir),
            str(run_id),
            str(written),
            str(unwritten),
        ],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.stdout == b"ready\n", done.stderr.decode()[-2000:]
    assert done.returncode == -signal.SIGKILL


async def test_what_a_killed_recorder_accepted_is_counted_by_the_next(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    spill_dir = tmp_path / "spill"
    await asyncio.to_thread(run_killed_recorder, database_url, spill_dir, run_id, 30, 20)
    assert await count_exchanges(engine, run_id) == 30
    assert await fetch_losses(engine, run_id) == {}  # nobody knows yet
    before = dropped_metric("process_killed")

    config = RecordConfig(spill_dir=str(spill_dir), flush_interval_ms=10)
    async with Recorder(engine, config) as recorder:
        await eventually(lambda: _has_losses(engine, run_id, {"process_killed": 20}))
        assert recorder.stats.killed == 20
        for i in range(5):  # and it records as usual
            recorder.submit(record(run_id, 100 + i))
    assert dropped_metric("process_killed") - before == 20
    assert await count_exchanges(engine, run_id) == 35
    # Counted once: the next start finds nothing more to charge.
    async with Recorder(engine, config) as again:
        await again.flush()
        assert again.stats.killed == 0
    assert await fetch_losses(engine, run_id) == {"process_killed": 20}
    assert list(spill_dir.glob("*.intents")) == []
