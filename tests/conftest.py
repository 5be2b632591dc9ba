"""Session fixtures: a real PostgreSQL, a database per test session, and the test lanes.

PostgreSQL: the server at ``GRAYGATE_TEST_PG`` (default
postgresql://postgres@127.0.0.1:5432/postgres) when it answers; otherwise the embedded
PostgreSQL that ``graygate demo`` uses (``graygate.embedded_pg``, the pgserver package),
started once per test session (per xdist worker) in the session's temporary directory and
stopped at its end. Every test, the fault-proxy ones included, uses whichever it is.

Event loops: one per test module (pyproject: ``asyncio_default_*_loop_scope = "module"``).
So nothing here is an async session fixture: ``make_database`` and ``database_url`` are
sync (their coroutines run on a private loop in a thread) and ``engine`` is per module.

Lanes (markers, ``--strict-markers``), given to every test by what it uses:
``e2e`` for tests/e2e/; ``db`` for tests that use a database fixture; ``unit`` for the rest.
``python -m pytest -m "not e2e"`` is the fast lane; ``python -m pytest`` runs everything.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from store.engine import create_engine
from store.migrate import upgrade

logger = logging.getLogger(__name__)

PG_ENV = "GRAYGATE_TEST_PG"
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
_PROBE_TIMEOUT_S = 3.0
_DB_FIXTURES = frozenset(
    {
        "test_pg",
        "make_database",
        "database_url",
        "engine",
        "fresh_database",
        "migrated_database",
    }
)
_E2E_DIR = Path(__file__).resolve().parent / "e2e"

T = TypeVar("T")


def _run_sync(factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 120.0) -> T:
    """Run a coroutine to completion on a private event loop in a thread (callable from sync
    code and from inside a running loop alike; nothing it opens outlives it)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result(timeout)


# --------------------------------------------------------------------------- lanes


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        own = {m.name for m in item.iter_markers() if m.name in ("unit", "db", "e2e")}
        if own:
            continue
        if _E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)
        elif _DB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)
        else:
            item.add_marker(pytest.mark.unit)


# --------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True, slots=True)
class PgServer:
    """Where the tests' PostgreSQL is: ``admin_dsn`` reaches its ``postgres`` database
    (asyncpg form: postgresql://...; with ``?host=DIR`` for the embedded server's socket)."""

    admin_dsn: str
    embedded: bool

    def dsn_for(self, database: str) -> str:
        """The asyncpg DSN of ``database`` on this server."""
        return make_url(self.admin_dsn).set(database=database).render_as_string(False)

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL (postgresql+asyncpg://...) of ``database`` on this server."""
        url = make_url(self.admin_dsn).set(drivername="postgresql+asyncpg", database=database)
        return url.render_as_string(False)


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=_PROBE_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        logger.info("no PostgreSQL at %s: %s", make_url(dsn).render_as_string(True), exc)
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def test_pg() -> Iterator[PgServer]:
    """The session's PostgreSQL: ``GRAYGATE_TEST_PG`` if it answers, else an embedded one."""
    dsn = os.environ.get(PG_ENV) or DEFAULT_ADMIN_DSN
    if _run_sync(lambda: _answers(dsn)):
        yield PgServer(admin_dsn=dsn, embedded=False)
        return
    from graygate.embedded_pg import open_database

    # Not under pytest's own temporary directory: as root, PostgreSQL runs as another user,
    # and any pytest starting meanwhile makes /tmp/pytest-of-root private again.
    root = Path(tempfile.mkdtemp(prefix="graygate-test-pg-"))
    try:
        with open_database(None, root) as handle:
            assert handle.data_dir is not None
            admin = f"postgresql://postgres@/postgres?host={handle.data_dir}"
            yield PgServer(admin_dsn=admin, embedded=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class DatabaseMaker:
    """``url = await make_database()`` (or ``make_database.sync()``): a new empty
    database's URL (postgresql+asyncpg://...); all are dropped when the session ends."""

    def __init__(self, pg: PgServer) -> None:
        self.pg = pg
        self.made: list[str] = []

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.pg.admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def sync(self) -> str:
        name = f"graygate_test_{uuid.uuid4().hex[:12]}"
        _run_sync(lambda: self._admin(f'CREATE DATABASE "{name}"'))
        self.made.append(name)
        return self.pg.url_for(name)

    async def __call__(self) -> str:
        return await asyncio.to_thread(self.sync)

    def drop_all(self) -> None:
        async def drop(names: list[str]) -> None:
            for name in names:
                with contextlib.suppress(Exception):
                    await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        _run_sync(lambda: drop(list(self.made)))
        self.made.clear()


@pytest.fixture(scope="session")
def make_database(test_pg: PgServer) -> Iterator[DatabaseMaker]:
    maker = DatabaseMaker(test_pg)
    yield maker
    maker.drop_all()


@pytest.fixture(scope="session")
def database_url(make_database: DatabaseMaker) -> str:
    """One migrated database shared by the session's tests (each test uses its own run)."""
    url = make_database.sync()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(upgrade, url).result(300)
    return url


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the session's database, for the tests of one module (its loop)."""
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
