"""Session fixtures: a real PostgreSQL database per test session, dropped afterwards."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from store.engine import create_engine
from store.migrate import upgrade

ADMIN_DSN = os.environ.get("GRAYGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin_dsn_for(db: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{db}"


async def _create_db(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_db(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def make_database() -> AsyncIterator[object]:
    """A factory: ``url = await make_database()`` gives a new empty database's URL
    (postgresql+asyncpg://...); every database made is dropped at the end of the session."""
    made: list[str] = []

    async def make() -> str:
        name = f"graygate_test_{uuid.uuid4().hex[:12]}"
        await _create_db(name)
        made.append(name)
        return "postgresql+asyncpg://" + _admin_dsn_for(name).split("://", 1)[1]

    yield make
    for name in made:
        await _drop_db(name)


@pytest.fixture(scope="session")
async def database_url(make_database: object) -> str:
    """One migrated database shared by the session's tests (each test uses its own run)."""
    url: str = await make_database()  # type: ignore[operator]
    import asyncio

    await asyncio.to_thread(upgrade, url)
    return url


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=5)
    yield eng
    await eng.dispose()


@pytest.fixture
def run_name() -> Iterator[str]:
    """A fresh run name per test, so tests sharing the database never see each other."""
    yield f"run-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def canary_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go canary of ``examples/canary``, built once per test session."""
    if shutil.which("go") is None:
        pytest.skip("the Go toolchain (`go`) is not on PATH: cannot build examples/canary")
    from graygate.demo import build_go_canary

    return build_go_canary(tmp_path_factory.mktemp("canary"))
