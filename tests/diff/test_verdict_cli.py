"""``graygate verdict RUN`` as a real subprocess: exit codes 0/1/2/3, --json, --wait."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.worker import judge_pending
from store.aggregates import latest_verdicts
from tests.diff.judgeseed import ITEMS, Ex, add, matching, new_run, order, rulebook
from tests.diff.test_evaluate import closed_port_url

ROOT = Path(__file__).resolve().parents[2]
BOOK = rulebook()


async def start_verdict(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GRAYGATE_CONFIG", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "graygate",
        "verdict",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def graygate_verdict(*args: str) -> tuple[int, str, str]:
    proc = await start_verdict(*args)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_go_exits_0_with_one_line_per_check(
    engine: AsyncEngine, database_url: str, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(30))
    await judge_pending(engine, run_name, BOOK)
    code, out, err = await graygate_verdict(run_name, "--database-url", database_url)
    assert code == 0, (out, err)
    lines = out.splitlines()
    assert lines[0].startswith(f"run {run_name}: GO")
    names = [line.split()[1] for line in lines[1:]]
    assert names == [
        "evidence",
        "strict",
        "tolerance",
        "noise",
        "errors",
        "latency",
        "recording",
        "backlog",
        "judgeable",
        "runtime",
        "preflight",
    ]
    assert lines[1].split()[0] == "PASS" and "threshold" in lines[1]
    assert [h.verdict for h in await latest_verdicts(engine, run_name)] == ["GO"]


async def test_no_go_exits_1_and_json_names_the_failure(
    engine: AsyncEngine, database_url: str, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, [*matching(30), Ex(primary=order(3), canary=order(3, status="x"))])
    await judge_pending(engine, run_name, BOOK)
    code, out, err = await graygate_verdict(run_name, "--database-url", database_url, "--json")
    assert code == 1, (out, err)
    doc = orjson.loads(out)
    assert doc["run"] == run_name and doc["verdict"] == "NO_GO"
    strict = next(c for c in doc["checks"] if c["name"] == "strict")
    assert strict["passed"] is False and "$.status" in strict["detail"]
    assert doc["summary"]["pairs"] == 31


async def test_not_enough_evidence_exits_2(
    engine: AsyncEngine, database_url: str, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(3))
    await judge_pending(engine, run_name, BOOK)
    code, out, _ = await graygate_verdict(run_name, "--database-url", database_url)
    assert code == 2
    assert "INCONCLUSIVE" in out.splitlines()[0]
    assert any(line.split()[:2] == ["FAIL*", "evidence"] for line in out.splitlines()[1:])


async def test_unknown_run_exits_3(database_url: str) -> None:
    code, out, err = await graygate_verdict("no-such-run", "--database-url", database_url)
    assert code == 3
    assert out == ""
    assert err.strip().splitlines()[-1] == "graygate: unknown run 'no-such-run'"


async def test_database_away_exits_3() -> None:
    url = closed_port_url()
    code, out, err = await graygate_verdict("any", "--database-url", url, "--wait", "--json")
    assert code == 3
    assert orjson.loads(out)["error"].endswith("Connection refused")
    last = err.strip().splitlines()[-1]
    assert last.startswith("graygate: database postgresql+asyncpg://postgres@127.0.0.1:")
    assert "unavailable" in last


async def test_wait_reaches_go_as_exchanges_arrive(
    engine: AsyncEngine, database_url: str, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)

    async def traffic() -> None:
        # Recorded and judged in rounds while the CLI waits: 10, 20, then 30 ORDERS pairs
        # and the ITEMS endpoint last.
        for round_ in range(3):
            await asyncio.sleep(1.0)
            await add(engine, run_id, matching(10, seed=round_))
            await judge_pending(engine, run_name, BOOK)
        await add(engine, run_id, matching(6, endpoint=ITEMS))
        await judge_pending(engine, run_name, BOOK)

    started = time.monotonic()
    proc = await start_verdict(
        run_name, "--database-url", database_url, "--wait", "--timeout", "60"
    )
    assert proc.stderr is not None
    # The CLI is up and waiting (nothing recorded yet) before any traffic arrives.
    first = await asyncio.wait_for(proc.stderr.readline(), 60)
    assert b"INCONCLUSIVE: evidence" in first and b"waiting" in first, first
    feeder = asyncio.create_task(traffic())
    try:
        out_b, err_b = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await feeder
    code, out, err = proc.returncode, out_b.decode(), first.decode() + err_b.decode()
    assert code == 0, (out, err)
    assert out.startswith(f"run {run_name}: GO")
    assert "waiting" in err
    assert time.monotonic() - started < 45
    history = [h.verdict for h in await latest_verdicts(engine, run_name)]
    assert history[0] == "GO" and "INCONCLUSIVE" in history


async def test_wait_times_out_inconclusive(
    engine: AsyncEngine, database_url: str, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(4))
    await judge_pending(engine, run_name, BOOK)
    started = time.monotonic()
    code, out, err = await graygate_verdict(
        run_name, "--database-url", database_url, "--wait", "--timeout", "3", "--json"
    )
    elapsed = time.monotonic() - started
    assert code == 2, (out, err)
    assert orjson.loads(out)["verdict"] == "INCONCLUSIVE"
    assert elapsed >= 3
    assert "waiting" in err


async def test_wait_stops_at_no_go(engine: AsyncEngine, database_url: str, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, [Ex(primary=order(3), canary=order(3, status="x"))])
    await judge_pending(engine, run_name, BOOK)
    code, out, _ = await graygate_verdict(
        run_name, "--database-url", database_url, "--wait", "--timeout", "60"
    )
    assert code == 1 and "NO_GO" in out.splitlines()[0]
