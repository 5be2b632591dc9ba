"""``graygate runs list|close|delete|prune`` as real subprocesses, and ``DELETE
/api/v1/runs/{run}`` on the real admin application (write role only)."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from store.exchanges import fetch_losses, write_exchanges
from store.partitions import partitions_of
from store.tables import runs, trash
from tests.diff.judgeseed import add, matching, new_run
from tests.graygate.test_admin_roles import ENV, bearer, serve
from tests.graygate.test_waiver_cli import graygate
from tests.proxy.recording.rows import rows


async def _trash_left(engine: AsyncEngine, run_id: int) -> int:
    async with engine.connect() as conn:
        n = await conn.scalar(
            sa.select(sa.func.count()).select_from(trash).where(trash.c.run_id == run_id)
        )
    return int(n or 0)


async def _trash_emptied(engine: AsyncEngine, run_id: int) -> None:
    """The run's trashed partitions are dropped (by another process) within a minute."""
    for _ in range(600):
        if await _trash_left(engine, run_id) == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id}'s trash was never reaped")


async def test_list_close_delete(engine: AsyncEngine, database_url: str, run_name: str) -> None:
    db = ("--database-url", database_url)
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(4))

    code, out, err = await graygate("runs", "list", "--json", *db)
    assert code == 0, err
    (mine,) = [r for r in orjson.loads(out)["runs"] if r["name"] == run_name]
    assert (mine["exchanges"], mine["judged"], mine["closed_at"]) == (4, 0, None)
    assert mine["size_bytes"] > 0 and mine["last_exchange_at"]
    code, out, _ = await graygate("runs", "list", *db)
    assert code == 0 and any(line.startswith(run_name) and "4 exchanges" in line
                             for line in out.splitlines())  # fmt: skip

    code, out, err = await graygate("runs", "close", run_name, *db)
    assert code == 0 and out.startswith(f"run {run_name} closed at"), err
    result = await write_exchanges(engine, rows(run_id, 3, start=100))
    assert result.run_closed == 3
    assert await fetch_losses(engine, run_id) == {"run_closed": 3}

    code, _, err = await graygate("runs", "delete", run_name, *db)  # no --yes, no terminal
    assert code == 2 and "not deleted: pass --yes" in err
    code, out, err = await graygate("runs", "delete", run_name, "--yes", *db)
    assert code == 0, err
    first, second = out.strip().splitlines()
    assert first == f"run {run_name} deleted (4 exchanges)"
    assert second.startswith("reclaiming ") and second.endswith(" in the background")
    await _trash_emptied(engine, run_id)  # by the reaper the command started
    code, _, err = await graygate("runs", "delete", run_name, "--yes", *db)
    assert code == 3 and "unknown run" in err
    code, _, err = await graygate("runs", "close", run_name, *db)
    assert code == 3 and "unknown run" in err


async def test_prune_dry_run_then_prune(engine: AsyncEngine, database_url: str) -> None:
    db = ("--database-url", database_url)
    tag = uuid.uuid4().hex[:8]
    old, new = f"old-{tag}", f"new-{tag}"
    ids = {}
    for name in (old, new):
        ids[name] = await new_run(engine, name)
        await add(engine, ids[name], matching(2))
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(runs).where(runs.c.name == old).values(
                created_at=sa.func.now() - sa.text("interval '90 days'"),
                updated_at=sa.func.now() - sa.text("interval '90 days'"),
            )
        )  # fmt: skip
        await conn.execute(
            sa.text(
                "UPDATE exchanges SET recorded_at = now() - interval '90 days' "
                "WHERE run_id = (SELECT id FROM runs WHERE name = :n)"
            ),
            {"n": old},
        )
    code, out, err = await graygate("runs", "prune", "--older-than", "30d", "--dry-run", *db)
    assert code == 0, err
    assert f"would delete {old}" in out and new not in out
    code, out, err = await graygate("runs", "list", "--json", *db)
    assert old in {r["name"] for r in orjson.loads(out)["runs"]}
    async with engine.connect() as conn:  # the dry run touched nothing
        assert len(await partitions_of(conn, ids[old])) == 2
    assert await _trash_left(engine, ids[old]) == 0

    code, out, err = await graygate("runs", "prune", "--older-than", "30d", "--wait", *db)
    assert code == 0 and f"deleted {old} (2 exchanges)" in out, err
    assert "reclaimed " in out and await _trash_left(engine, ids[old]) == 0  # --wait: done
    code, out, _ = await graygate("runs", "list", "--json", *db)
    names = {r["name"] for r in orjson.loads(out)["runs"]}
    assert old not in names and new in names
    async with engine.connect() as conn:  # the pruned run's partitions are gone, not emptied
        assert await partitions_of(conn, ids[old]) == {}
        assert await conn.scalar(sa.text(f"SELECT to_regclass('exchanges_r{ids[old]}')")) is None
        assert len(await partitions_of(conn, ids[new])) == 2

    code, _, err = await graygate("runs", "prune", "--older-than", "3661d", *db)
    assert code == 2 and "--older-than '3661d'" in err
    code, _, err = await graygate("runs", "prune", "--older-than", "1d", "--keep-last", "-1", *db)
    assert code == 2


async def test_delete_over_the_api_needs_write(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(3))
    async with (
        serve(engine) as base,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        url = f"{base}/api/v1/runs/{run_name}"
        async with http.delete(url, headers=bearer(ENV["GRAYGATE_CI_TOKEN"])) as resp:
            assert resp.status == 403
        async with http.delete(url, headers=bearer(ENV["RELEASE_BOT_TOKEN"])) as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["run"] == run_name and body["deleted"] is True
            assert (body["exchanges"], body["exchanges_exact"]) == (3, True)
            assert body["reclaiming_bytes"] > 0
            # The response came when the run was gone; the space comes back just after.
            async with engine.connect() as conn:
                gone = await conn.scalar(sa.select(runs.c.id).where(runs.c.name == run_name))
            assert gone is None
            await _trash_emptied(engine, run_id)
        async with http.delete(url, headers=bearer(ENV["RELEASE_BOT_TOKEN"])) as resp:
            assert resp.status == 404


async def test_list_shows_the_space_being_reclaimed_and_reap_reclaims_it(
    engine: AsyncEngine, database_url: str, run_name: str
) -> None:
    """A delete whose reaper never ran (as after a crash): `runs list` says what is still
    being reclaimed, `runs reap` reclaims it."""
    from store.lifecycle import delete_run

    db = ("--database-url", database_url)
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, matching(3))
    deleted = await delete_run(engine, run_name)  # no reaper started
    code, out, err = await graygate("runs", "list", "--json", *db)
    assert code == 0, err
    listed = orjson.loads(out)
    assert run_name not in {r["name"] for r in listed["runs"]}
    assert run_name in listed["reclaiming"]["runs"]
    assert listed["reclaiming"]["bytes"] >= deleted.trash_bytes > 0
    code, out, _ = await graygate("runs", "list", *db)
    assert code == 0 and any(
        line.startswith("reclaiming ") and run_name in line for line in out.splitlines()
    ), out

    code, out, err = await graygate("runs", "reap", *db)
    assert code == 0 and out.startswith("reclaimed "), (out, err)
    assert await _trash_left(engine, run_id) == 0
    code, out, _ = await graygate("runs", "list", "--json", *db)
    assert run_name not in orjson.loads(out)["reclaiming"]["runs"]
    code, out, _ = await graygate("runs", "reap", *db)
    assert code == 0, out
    assert out.strip() == "nothing to reclaim" or out.startswith("reclaimed ")  # others' trash
