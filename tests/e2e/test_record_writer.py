"""``graygate serve``'s record writer process, on real processes: every answered exchange is
recorded across SIGTERM; the writer's series reach the admin port's ``/metrics``; a writer
killed with SIGKILL is counted, started again, and no user notices.

Two Python order services as primary and canary, ``graygate serve --role proxy`` on a
fresh PostgreSQL database, clients on loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import sqlalchemy as sa

from store.engine import create_engine

if TYPE_CHECKING:
    from tests.e2e.conftest import Proc, Procs, TwinSetup


def _serve(
    procs: Procs, url: str, twin_config: Callable[..., TwinSetup]
) -> tuple[Proc, int, int, str]:
    setup = twin_config("e2e-writer", {"shutdown": {"grace_s": 0}})
    cfg, listen, admin, run = setup.cfg, setup.listen, setup.admin, setup.run
    proc = procs.spawn(
        "serve",
        [
            sys.executable, "-m", "graygate", "serve", "-c", str(cfg), "--role", "proxy",
            "--database-url", url, "--data-dir", str(procs.workdir / "data"),
        ],
    )  # fmt: skip
    proc.wait_for(r"proxy on http://", 60)
    return proc, listen, admin, run


def _writer_pids(pid: int) -> list[int]:
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"record-writer" in cmdline:
            out.append(int(child))
    return out


async def _send(listen: int, n: int, concurrency: int = 10) -> list[int]:
    """``n`` GETs through the proxy; their statuses (0: no answer)."""
    statuses: list[int] = []
    queue = iter(range(n))

    async def client(session: aiohttp.ClientSession) -> None:
        for i in queue:
            try:
                async with session.get(
                    f"http://127.0.0.1:{listen}/api/inventory/SKU-{i % 5 + 1:04d}"
                ) as resp:
                    await resp.read()
                    statuses.append(resp.status)
            except aiohttp.ClientError:
                statuses.append(0)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return statuses


async def _recorded(url: str, run: str) -> tuple[int, dict[str, int]]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            run_id = await conn.scalar(sa.text("SELECT id FROM runs WHERE name = :n"), {"n": run})
            n = await conn.scalar(
                sa.text("SELECT count(*) FROM exchanges WHERE run_id = :r"), {"r": run_id}
            )
            losses = (
                await conn.execute(
                    sa.text(
                        "SELECT reason, sum(count) FROM run_losses WHERE run_id = :r "
                        "GROUP BY reason"
                    ),
                    {"r": run_id},
                )
            ).all()
    finally:
        await engine.dispose()
    return int(n or 0), {str(r): int(c) for r, c in losses}


def test_every_answered_exchange_is_recorded_across_sigterm(
    procs: Procs, migrated_database: Callable[[], str], twin_config: Callable[..., TwinSetup]
) -> None:
    url = migrated_database()
    proc, listen, admin, run = _serve(procs, url, twin_config)
    [writer] = _writer_pids(proc.pid)
    assert asyncio.run(_send(listen, 100)) == [200] * 100
    # The writer's series are on the admin port (Prometheus multiprocess mode).
    deadline = time.monotonic() + 30
    while True:
        status, body = procs.http_get(f"http://127.0.0.1:{admin}/metrics")
        assert status == 200
        if b"graygate_record_exchanges_recorded_total 100.0" in body:
            break
        assert time.monotonic() < deadline, body.decode()[-3000:]
        time.sleep(0.2)

    async def across_sigterm() -> list[int]:
        sending = asyncio.ensure_future(_send(listen, 300, concurrency=20))
        await asyncio.sleep(0.3)
        proc.popen.send_signal(signal.SIGTERM)
        return await sending

    statuses = asyncio.run(across_sigterm())
    assert proc.popen.wait(60) == 0, proc.output()
    assert not procs.pid_alive(writer)
    answered = 100 + statuses.count(200)
    assert set(statuses) <= {200, 0}, statuses
    assert asyncio.run(_recorded(url, run)) == (answered, {}), proc.output()[-4000:]


def test_a_writer_killed_is_counted_and_started_again_and_users_are_served(
    procs: Procs, migrated_database: Callable[[], str], twin_config: Callable[..., TwinSetup]
) -> None:
    url = migrated_database()
    proc, listen, _, run = _serve(procs, url, twin_config)
    [first] = _writer_pids(proc.pid)
    assert asyncio.run(_send(listen, 50)) == [200] * 50
    deadline = time.monotonic() + 30
    while asyncio.run(_recorded(url, run))[0] < 50:  # the first 50 are stored
        assert time.monotonic() < deadline, proc.output()
        time.sleep(0.1)

    async def across_the_kill() -> list[int]:
        sending = asyncio.ensure_future(_send(listen, 200, concurrency=10))
        await asyncio.sleep(0.1)
        os.kill(first, signal.SIGKILL)
        return await sending

    assert asyncio.run(across_the_kill()) == [200] * 200  # no user failed for it
    deadline = time.monotonic() + 60
    while not [p for p in _writer_pids(proc.pid) if p != first]:
        assert time.monotonic() < deadline, proc.output()
        time.sleep(0.1)
    assert asyncio.run(_send(listen, 50)) == [200] * 50
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(60) == 0, proc.output()
    out = proc.output()
    assert f"record writer process {first} " in out, out  # logged once
    assert out.count(f"record writer process {first} ") == 2, out  # started, and lost
    recorded, losses = asyncio.run(_recorded(url, run))
    # Every exchange is recorded or counted (killed before it was made durable).
    assert set(losses) <= {"process_killed", "queue_full"}, losses
    assert recorded + sum(losses.values()) == 300, (recorded, losses, out[-4000:])
    assert recorded >= 100
