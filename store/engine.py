"""Engine creation and the database checks that every entry point shares."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from graygate.errors import StoreUnavailable, one_line

__all__ = ["censor_dsn", "create_engine", "ping", "schema_revision"]

logger = logging.getLogger(__name__)


def censor_dsn(url: str) -> str:
    """The URL with its password replaced, fit for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def create_engine(url: str, *, pool_size: int = 10, **kwargs: Any) -> AsyncEngine:
    """An asyncpg-backed engine; the caller owns it and must ``await engine.dispose()``."""
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"timeout": 5, "command_timeout": 60},
        **kwargs,
    )


async def ping(engine: AsyncEngine) -> None:
    """Raise StoreUnavailable, naming the censored URL, when the database cannot answer."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, DBAPIError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(
            f"database {censor_dsn(str(engine.url))} is unavailable: {one_line(exc)}"
        ) from None


async def schema_revision(engine: AsyncEngine) -> str | None:
    """The Alembic revision the database is at, or None before the first migration."""
    async with engine.connect() as conn:
        exists = await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
        if not exists:
            return None
        revision = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        return None if revision is None else str(revision)
