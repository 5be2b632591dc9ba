"""Runs: created once, shared by every process that starts them; errors named clearly."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from graygate.errors import StoreUnavailable, UnknownRun
from store.engine import create_engine
from store.runs import ensure_run, get_run_id
from store.tables import runs
from tests.faultproxy import FaultProxy


async def test_ensure_run_creates_then_updates(engine: AsyncEngine, run_name: str) -> None:
    first = await ensure_run(
        engine,
        run_name,
        primary_url="http://p:1",
        canary_url="http://c:1",
        config_json={"verdict": {"min_pairs": 10}},
        primary_version="v1",
        canary_version="v2",
    )
    again = await ensure_run(
        engine,
        run_name,
        primary_url="http://p:2",
        canary_url="http://c:2",
        config_json='{"verdict": {"min_pairs": 20}}',
    )
    assert again == first
    assert await get_run_id(engine, run_name) == first
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(
                    runs.c.primary_url,
                    runs.c.canary_url,
                    runs.c.primary_version,
                    runs.c.canary_version,
                    runs.c.config,
                    runs.c.updated_at > runs.c.created_at,
                ).where(runs.c.id == first)
            )
        ).one()
    assert row[0] == "http://p:2" and row[1] == "http://c:2"
    assert (row[2], row[3]) == ("v1", "v2")  # kept when the caller does not know them
    assert row[4] == {"verdict": {"min_pairs": 20}}
    assert row[5] is True


async def test_concurrent_ensure_run_returns_one_id(database_url: str, run_name: str) -> None:
    # Three engines (three "processes"), each starting the run from many tasks at once.
    engines = [create_engine(database_url, pool_size=4) for _ in range(3)]
    try:
        ids = await asyncio.gather(
            *(
                ensure_run(
                    eng,
                    run_name,
                    primary_url="http://p",
                    canary_url="http://c",
                    config_json={"n": i},
                )
                for i in range(10)
                for eng in engines
            )
        )
    finally:
        for eng in engines:
            await eng.dispose()
    assert len(set(ids)) == 1


async def test_get_run_id_unknown(engine: AsyncEngine, run_name: str) -> None:
    with pytest.raises(UnknownRun) as info:
        await get_run_id(engine, run_name)
    assert info.value.run == run_name


async def test_database_away_is_store_unavailable_with_censored_dsn(run_name: str) -> None:
    async with FaultProxy("127.0.0.1", 5432) as proxy:
        await proxy.block()
        url = f"postgresql+asyncpg://postgres:s3cret@127.0.0.1:{proxy.port}/postgres"
        eng = create_engine(url, pool_size=1)
        try:
            with pytest.raises(StoreUnavailable) as info:
                await ensure_run(eng, run_name, primary_url=None, canary_url=None)
            with pytest.raises(StoreUnavailable):
                await get_run_id(eng, run_name)
        finally:
            await eng.dispose()
    assert "s3cret" not in str(info.value)
    assert f"127.0.0.1:{proxy.port}" in str(info.value)


async def test_ensure_run_stores_no_secret(engine: AsyncEngine, run_name: str) -> None:
    # Issue 10 item 10: runs.config held database.url with its password.
    from config.load import config_from_mapping

    cfg = config_from_mapping(
        {
            "run": run_name,
            "upstreams": {"primary": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"},
            "database": {"url": "postgresql://graygate:hunter2@db:5432/gg?sslpassword=pw9"},
        },
        env={},
    )
    run_id = await ensure_run(
        engine,
        run_name,
        primary_url="http://u:pw7@p:1",  # a caller that did not validate: censored anyway
        canary_url=cfg.upstreams.canary,
        config_json=cfg.model_dump(mode="json") | {"extra": {"api_token": "tok8"}},
    )
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(runs.c.primary_url, runs.c.config, sa.cast(runs.c.config, sa.Text)).where(
                    runs.c.id == run_id
                )
            )
        ).one()
    for secret in ("hunter2", "pw9", "pw7", "tok8"):
        assert secret not in row[2] and secret not in row[0]
    assert row[0] == "http://u:***@p:1"
    assert (
        row[1]["database"]["url"] == "postgresql+asyncpg://graygate:***@db:5432/gg?sslpassword=***"
    )
    assert row[1]["extra"] == {"api_token": "***"}
    assert row[1]["verdict"] == cfg.model_dump(mode="json")["verdict"]
