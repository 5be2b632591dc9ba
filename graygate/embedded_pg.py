"""Which PostgreSQL to use: the configured URL, or an embedded one started on demand.

With ``database.url`` (or ``GRAYGATE_DATABASE_URL``) graygate uses that server and never
starts one. Without it, an embedded PostgreSQL (the ``pgserver`` package) runs from a data
directory, by default under the user's data directory, and listens only on a unix socket
inside it. It is stopped when the last graygate process using it exits.

The embedded server prints nothing of its own: ``pgserver`` logs every ``initdb`` and
``pg_ctl`` run with its output, which shows only under ``--log-level debug``; PostgreSQL's
own log is the file ``log`` in the data directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from graygate.errors import StoreUnavailable, one_line

__all__ = ["DatabaseHandle", "default_data_dir", "open_database"]

logger = logging.getLogger(__name__)

EMBEDDED_DB_NAME = "graygate"
_PGSERVER_LOGGER = "pgserver"


def _quiet_unless_debug() -> None:
    """Silence pgserver's logger unless the process logs at DEBUG."""
    quiet = logging.getLogger().getEffectiveLevel() > logging.DEBUG
    logging.getLogger(_PGSERVER_LOGGER).setLevel(logging.CRITICAL + 1 if quiet else logging.NOTSET)


def default_data_dir() -> Path:
    env = os.environ.get("GRAYGATE_DATA_DIR")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("graygate", appauthor=False))


@dataclass(frozen=True)
class DatabaseHandle:
    url: str  # postgresql+asyncpg://...
    embedded: bool
    data_dir: Path | None  # the embedded server's data directory


@contextmanager
def open_database(url: str | None, data_dir: Path | None = None) -> Iterator[DatabaseHandle]:
    """Yield where the database is; start (and finally release) an embedded one if no URL."""
    if url:
        yield DatabaseHandle(url=url, embedded=False, data_dir=None)
        return
    root = (data_dir or default_data_dir()).expanduser().resolve()
    pgdata = root / "pgdata"
    _quiet_unless_debug()
    try:
        from pgserver.postgres_server import get_server
    except ImportError as exc:  # pragma: no cover - pgserver is a dependency
        raise StoreUnavailable(
            f"no database URL configured and the embedded PostgreSQL is missing ({exc})"
        ) from None
    try:
        pgdata.mkdir(parents=True, exist_ok=True)
        server = get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        raise StoreUnavailable(
            f"cannot start the embedded PostgreSQL in {pgdata}: {one_line(exc)} (its log: "
            f"{pgdata / 'log'}; --log-level debug shows initdb's and pg_ctl's output)"
        ) from None
    try:
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DB_NAME}';")
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {EMBEDDED_DB_NAME};")
        socket_dir = str(pgdata)
        yield DatabaseHandle(
            url=f"postgresql+asyncpg://postgres@/{EMBEDDED_DB_NAME}?host={socket_dir}",
            embedded=True,
            data_dir=pgdata,
        )
    finally:
        server.cleanup()
