"""The record writer process behind its pipe, with a real PostgreSQL and real processes:
exchanges handed over as bytes are recorded; a full queue, a dead writer and a killed one
are counted exactly, in ``run_losses``; the database away means the spill, then replay."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from config.load import config_from_mapping
from graygate.record_writer import WriterSetup
from proxy.recording.link import WriterLink
from store.exchanges import count_exchanges, fetch_losses
from tests.faultproxy import FaultProxy
from tests.proxy.recording.exchanges import exchange
from tests.proxy.test_recorder import dropped_metric, eventually, new_run, spill_files

ROOT = Path(__file__).resolve().parents[2]
WRITER_ARGV = [sys.executable, "-m", "graygate", "record-writer"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@asynccontextmanager
async def writer_link(
    database_url: str,
    run_id: int,
    spill_dir: Path,
    *,
    queue_size: int = 20_000,
    record: dict[str, object] | None = None,
) -> AsyncIterator[WriterLink]:
    cfg = config_from_mapping(
        {
            "run": "test",
            "upstreams": {"primary": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"},
            "record": {"flush_interval_ms": 20, "queue_size": queue_size, **(record or {})},
            "redact": {"json_fields": ["$.card"]},
        },
        env={},
    )
    setup = WriterSetup(cfg, database_url, run_id, str(spill_dir), drain_timeout=5.0)
    link = WriterLink(
        run_id=run_id,
        queue_size=queue_size,
        argv=WRITER_ARGV,
        setup=setup.dumps(),
        drain_timeout=10.0,
        env=ENV,
    )
    await link.start()
    try:
        await link.ready()
        yield link
    finally:
        await link.close()


async def _equals(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]


async def _taken(link: WriterLink, n: int) -> bool:
    return link.taken >= n


async def test_exchanges_are_recorded_through_the_writer_process(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    async with writer_link(database_url, run_id, tmp_path / "spill") as link:
        pid = link.writer_pid
        assert pid is not None and pid != os.getpid()
        for i in range(200):
            assert link.hand_over(exchange(i))
            if i % 50 == 0:
                await asyncio.sleep(0)
        await eventually(lambda: _equals(count_exchanges(engine, run_id), 200))
    assert link.stats.sent == 200 and link.stats.dropped == {}
    assert await fetch_losses(engine, run_id) == {}
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.text(
                    "SELECT endpoint, request_body, request_headers FROM exchanges "
                    "WHERE run_id = :r AND path = '/api/orders/3'"
                ),
                {"r": run_id},
            )
        ).one()
    assert row.endpoint == "POST /api/orders/{id}"
    assert b"4111" not in bytes(row.request_body)  # redacted in the writer
    assert row.request_headers["x-note"] == "caf\\xe9"  # made storable text in the writer


async def test_a_full_queue_drops_at_the_bound_and_counts_in_run_losses(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    before = dropped_metric("queue_full")
    big = b"x" * 60_000
    async with writer_link(database_url, run_id, tmp_path / "spill", queue_size=5) as link:
        pid = link.writer_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # the writer stops reading: the pipe fills
        try:
            handed = 0
            while link.queued == 0:  # until the pipe takes no more
                assert link.hand_over(exchange(handed, body=big))
                handed += 1
                await asyncio.sleep(0.001)
                assert handed < 1000, "the pipe never filled"
            while link.queued < 5:  # the queue up to its bound: nothing dropped
                assert link.hand_over(exchange(handed, body=big))
                handed += 1
            assert link.stats.dropped == {}
            assert not link.hand_over(exchange(handed, body=big))  # one past the bound
            assert link.stats.dropped == {"queue_full": 1}
            assert dropped_metric("queue_full") - before == 1
        finally:
            os.kill(pid, signal.SIGCONT)
        await eventually(lambda: _equals(count_exchanges(engine, run_id), handed))
    assert await count_exchanges(engine, run_id) == handed
    assert await fetch_losses(engine, run_id) == {"queue_full": 1}
    assert dropped_metric("queue_full") - before == 1  # counted once, not again by the writer


async def test_database_away_the_writer_spills_then_replays(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    spill_dir = tmp_path / "spill"
    async with FaultProxy.before(database_url) as proxy:
        proxied = proxy.rewrite(database_url)
        async with writer_link(proxied, run_id, spill_dir, record={"batch_size": 20}) as link:
            for i in range(20):
                link.hand_over(exchange(i))
            await eventually(lambda: _equals(count_exchanges(engine, run_id), 20))
            await proxy.block()  # PostgreSQL goes away
            for i in range(20, 120):
                assert link.hand_over(exchange(i))
                if i % 10 == 0:
                    await asyncio.sleep(0.01)

            async def spilled() -> bool:
                return bool(spill_files(spill_dir))

            await eventually(spilled)
            await eventually(lambda: _taken(link, 100))
            assert await count_exchanges(engine, run_id) == 20
            await proxy.unblock()  # back: replayed
            await eventually(lambda: _equals(count_exchanges(engine, run_id), 120))

            async def no_spill() -> bool:
                return not spill_files(spill_dir)

            await eventually(no_spill)
    assert await fetch_losses(engine, run_id) == {}


async def test_a_killed_writer_is_counted_and_restarted(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    before = dropped_metric("process_killed")
    async with writer_link(database_url, run_id, tmp_path / "spill") as link:
        for i in range(20):
            link.hand_over(exchange(i))
        await eventually(lambda: _equals(count_exchanges(engine, run_id), 20))
        first = link.writer_pid
        assert first is not None
        os.kill(first, signal.SIGSTOP)
        for i in range(20, 30):  # into the pipe; the writer never takes them
            assert link.hand_over(exchange(i))
        await asyncio.sleep(0.05)
        assert link.queued == 0  # written whole into the pipe
        os.kill(first, signal.SIGKILL)

        async def restarted() -> bool:
            return link.writer_pid not in (None, first)

        await eventually(restarted)
        assert link.stats.dropped == {"process_killed": 10}
        for i in range(30, 35):  # the next writer records as usual
            assert link.hand_over(exchange(i))
    assert link.stats.deaths == 1 and link.stats.starts == 2
    assert await count_exchanges(engine, run_id) == 25
    assert await fetch_losses(engine, run_id) == {"process_killed": 10}
    assert dropped_metric("process_killed") - before == 10


async def test_what_a_killed_writer_took_is_charged_by_the_next_from_its_intents(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    spill_dir = tmp_path / "spill"
    held = {"batch_size": 10_000, "flush_interval_ms": 60_000}  # the writer holds them
    async with writer_link(database_url, run_id, spill_dir, record=held) as link:
        for i in range(12):
            assert link.hand_over(exchange(i))
        await eventually(lambda: _taken(link, 12))
        first = link.writer_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)

        async def restarted() -> bool:
            return link.writer_pid not in (None, first)

        await eventually(restarted)
        # Nothing was in the pipe: the link counts nothing; the dead writer's intent log
        # says 12, and the next writer charges them.
        await eventually(lambda: _equals(fetch_losses(engine, run_id), {"process_killed": 12}))
        assert link.stats.dropped == {}
    assert await count_exchanges(engine, run_id) == 0
    assert await fetch_losses(engine, run_id) == {"process_killed": 12}
    assert list(spill_dir.glob("*.intents")) == []


KILLED_PROXY = Path(__file__).parent / "recording" / "killed_proxy.py"


def _run_killed_proxy(database_url: str, spill_dir: Path, run_id: int) -> tuple[bytes, str]:
    """Its first line and its log, once it is dead."""
    log = spill_dir.parent / "killed_proxy.log"
    with open(log, "wb") as err:
        # Its writer outlives it (and holds stdout): read the line, not to the end.
        proc = subprocess.Popen(
            [sys.executable, str(KILLED_PROXY), database_url, str(spill_dir), str(run_id), "10"],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    code = proc.wait(120)
    assert code == -signal.SIGKILL, log.read_text()[-3000:]
    return line, log.read_text()[-3000:]


async def test_a_killed_proxy_leaves_the_pipe_written_and_its_queue_counted(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Path
) -> None:
    run_id = await new_run(engine, run_name)
    spill_dir = tmp_path / "spill"
    line, log = await asyncio.to_thread(_run_killed_proxy, database_url, spill_dir, run_id)
    piped, queued, writer = (int(x) for x in line.split())
    assert queued == 5 and piped > 0, log
    os.kill(writer, signal.SIGCONT)  # its proxy is gone: it reads the pipe to its end
    await eventually(lambda: _equals(count_exchanges(engine, run_id), 10 + piped))

    async def writer_gone() -> bool:
        try:
            os.kill(writer, 0)
        except ProcessLookupError:
            return True
        return False

    await eventually(writer_gone)
    # The next start on the spill directory charges the dead proxy's queue (5) and its
    # loss counter not yet sent (1 queue_full) as process_killed.
    async with writer_link(database_url, run_id, spill_dir):
        await eventually(lambda: _equals(fetch_losses(engine, run_id), {"process_killed": 6}))
    assert await count_exchanges(engine, run_id) == 10 + piped
    assert list(spill_dir.glob("*.intents")) == []
