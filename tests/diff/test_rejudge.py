"""Re-judging a run under new compare rules, by the real workers over real PostgreSQL: the
verdict keeps the old judgement until the new one is complete, then switches at once; the
config history says which rules judged which verdict."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import evaluate_run
from diff.worker import judge_pending, rejudge_pending, rejudge_step, run_workers
from graygate.errors import UnknownRun
from graygate.values import Verdict
from store import rejudge as store_rejudge
from store.tables import differences, rejudge_differences, rejudge_outcomes, runs
from tests.diff.judgeseed import COMPARE, Ex, add, matching, new_run, order, rulebook
from tests.graygate.test_waiver_cli import graygate

BOOK = rulebook()
IGNORE_STATUS: dict[str, Any] = {
    **COMPARE,
    "defaults": {"ignore": ["$.request_id", "$.status"]},
}


async def planted(engine: AsyncEngine, name: str) -> int:
    run_id = await new_run(engine, name)
    await add(
        engine,
        run_id,
        [*matching(30), *(Ex(primary=order(i), canary=order(i, status="lost")) for i in range(6))],
    )
    await judge_pending(engine, name, BOOK)
    return run_id


async def strict_rows(engine: AsyncEngine, run_id: int) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                sa.select(sa.func.count())
                .select_from(differences)
                .where(differences.c.run_id == run_id, differences.c.judgement == "strict")
            )
            or 0
        )


async def test_the_old_judgement_stands_until_the_new_one_is_complete(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await planted(engine, run_name)
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.NO_GO
    job = await store_rejudge.start_rejudge(engine, run_name, IGNORE_STATUS, by="alice")
    assert (job.total, job.judged) == (36, 0)

    assert await rejudge_step(engine, run_id=run_id, batch_size=10) == 10
    assert await rejudge_step(engine, run_id=run_id, batch_size=10) == 10
    # Half-way: the verdict and the differences are the old ones; the new ones are staged.
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.NO_GO
    assert await strict_rows(engine, run_id) == 6
    assert (await store_rejudge.job_progress(engine, job.id)).judged == 20

    # Exchanges that arrive meanwhile are judged as usual, under the workers' rules, and kept.
    await add(engine, run_id, [Ex(primary=order(90), canary=order(90, status="late"))])
    await judge_pending(engine, run_name, BOOK)

    assert await rejudge_pending(engine, run_id, batch_size=10) == 16
    done = await store_rejudge.job_progress(engine, job.id)
    assert done.completed_at is not None and done.judged == 36
    assert await strict_rows(engine, run_id) == 1  # only the late one (not re-judged)
    async with engine.connect() as conn:
        for table in (rejudge_outcomes, rejudge_differences):
            n = await conn.scalar(sa.select(sa.func.count()).select_from(table))
            assert n == 0, table.name  # the staging is emptied
        stored = await conn.scalar(sa.select(runs.c.config).where(runs.c.id == run_id))
    assert "$.status" in stored["compare"]["defaults"]["ignore"]
    # 1 strict pair of 37: still NO_GO under max_strict_mismatch_rate 0; a second rejudge
    # covers the late one too, and the verdict turns GO.
    await store_rejudge.start_rejudge(engine, run_name, None, by="alice")
    await rejudge_pending(engine, run_id)
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.GO

    eras = await store_rejudge.config_history(engine, run_name)
    assert [e.rejudge_id is None for e in eras] == [True, False, False]
    assert [v for _, v in eras[0].verdicts] == ["NO_GO", "NO_GO"]
    assert [v for _, v in eras[2].verdicts] == ["GO"]
    assert "$.status" not in eras[0].compare["defaults"]["ignore"]
    assert "$.status" in eras[2].compare["defaults"]["ignore"]


async def test_many_workers_judge_each_exchange_once(engine: AsyncEngine, run_name: str) -> None:
    run_id = await planted(engine, run_name)
    job = await store_rejudge.start_rejudge(engine, run_name, IGNORE_STATUS, by="a")

    async def worker() -> int:
        total = 0
        for _ in range(100):  # bounded
            n = await rejudge_step(engine, run_id=run_id, batch_size=4)
            total += n
            if n == 0 and (await store_rejudge.job_progress(engine, job.id)).completed_at:
                return total
            await asyncio.sleep(0)
        raise AssertionError("the re-judgement did not complete")

    counts = await asyncio.gather(*(worker() for _ in range(3)))
    assert sum(counts) == 36
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.GO


async def test_a_newer_rejudge_replaces_a_running_one(engine: AsyncEngine, run_name: str) -> None:
    run_id = await planted(engine, run_name)
    first = await store_rejudge.start_rejudge(engine, run_name, IGNORE_STATUS, by="a")
    await rejudge_step(engine, run_id=run_id, batch_size=10)
    second = await store_rejudge.start_rejudge(engine, run_name, None, by="b")  # stored rules
    assert (await store_rejudge.job_progress(engine, first.id)).cancelled_at is not None
    await rejudge_pending(engine, run_id)
    assert (await store_rejudge.job_progress(engine, second.id)).completed_at is not None
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.NO_GO  # same rules
    assert await strict_rows(engine, run_id) == 6
    with pytest.raises(UnknownRun):
        await store_rejudge.start_rejudge(engine, run_name + "-nope", None, by="a")


async def test_the_cli_waits_for_the_background_workers(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Any
) -> None:
    run_id = await planted(engine, run_name)
    config = tmp_path / "graygate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run": run_name,
                "database": {"url": database_url},
                "upstreams": {
                    "primary": "http://127.0.0.1:8081",
                    "canary": "http://127.0.0.1:8082",
                },
                "compare": IGNORE_STATUS,
            }
        )
    )
    code, out, err = await graygate("verdict", run_name, "--database-url", database_url)
    assert code == 1, (out, err)
    # The workers of a serving graygate (here: the same worker loops, in this process).
    async with run_workers(engine, run_id, BOOK, count=2, batch_size=8):
        code, out, err = await graygate("rejudge", run_name, "-c", str(config), "--timeout", "120")
    assert code == 0, (out, err)
    assert "36 exchanges queued" in out and "complete" in out
    code, out, err = await graygate("verdict", run_name, "--database-url", database_url)
    assert code == 0, (out, err)
    code, out, err = await graygate("rejudge", run_name, "--history", "-c", str(config))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("recorded rules (from the start): NO_GO")
    assert lines[1].startswith("rejudge ") and lines[1].endswith("GO")


async def test_the_cli_judges_here_and_names_bad_rules(
    engine: AsyncEngine, database_url: str, run_name: str, tmp_path: Any
) -> None:
    await planted(engine, run_name)
    db = ("--database-url", database_url)
    code, out, err = await graygate("rejudge", run_name, "--here", *db)
    assert code == 0 and "complete" in out, (out, err)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "run": run_name,
                "upstreams": {
                    "primary": "http://127.0.0.1:8081",
                    "canary": "http://127.0.0.1:8082",
                },
                "compare": {"defaults": {"ignore": ["$.a["]}},
            }
        )
    )
    code, out, err = await graygate("rejudge", run_name, "-c", str(bad), *db)
    assert code == 2 and "$.a[" in err, (out, err)
    code, _, err = await graygate("rejudge", "nope-" + run_name, "--no-wait", *db)
    assert code == 3 and "unknown run" in err
