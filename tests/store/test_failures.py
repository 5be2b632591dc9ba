"""store.failures: one translation of "the database cannot answer", against a real server."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import evaluate_run
from graygate.errors import StoreUnavailable
from graygate.processes import free_port
from store.engine import create_engine
from store.failures import store_errors
from store.runs import get_run_id


def _closed_port_url() -> str:
    return f"postgresql+asyncpg://postgres:s3cret@127.0.0.1:{free_port()}/nothing"


async def test_refused_connection_names_the_censored_url() -> None:
    url = _closed_port_url()
    eng = create_engine(url, pool_size=1)
    try:
        with pytest.raises(StoreUnavailable, match="is unavailable") as info:
            async with store_errors(eng), eng.connect():
                pass
    finally:
        await eng.dispose()
    assert "s3cret" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_no_such_database_is_unavailable(engine: AsyncEngine) -> None:
    url = engine.url.set(database=f"graygate_missing_{uuid.uuid4().hex[:8]}")
    eng = create_engine(url.render_as_string(hide_password=False), pool_size=1)
    try:
        with pytest.raises(StoreUnavailable, match="is unavailable"):
            await get_run_id(eng, "any")
    finally:
        await eng.dispose()


async def test_unmigrated_database_asks_for_an_upgrade(make_database: object) -> None:
    url: str = await make_database()  # type: ignore[operator]
    eng = create_engine(url, pool_size=1)
    try:
        with pytest.raises(StoreUnavailable, match="db upgrade"):
            await get_run_id(eng, "any")
        with pytest.raises(StoreUnavailable, match="db upgrade"):
            await evaluate_run(eng, "any")
    finally:
        await eng.dispose()


async def test_other_errors_pass_through(engine: AsyncEngine) -> None:
    with pytest.raises(ProgrammingError):  # a syntax error is a bug, not an outage
        async with store_errors(engine), engine.connect() as conn:
            await conn.execute(sa.text("SELEC 1"))
    with pytest.raises(KeyError):
        async with store_errors(engine):
            raise KeyError("x")
