"""One translation of "the database cannot answer" into ``StoreUnavailable``.

Every reader and writer that talks to PostgreSQL outside the recorder's retry loop goes
through ``store_errors`` (or ``unavailable_error`` when it catches the exception itself), so
the message names the censored URL the same way everywhere and the same failures count:

- what ``store.exchanges.is_unavailable`` calls transient (refused, reset, timeout, shutdown,
  overload, failover);
- SQLSTATE class 28 (invalid authorization) and 3D000 (no such database): not worth a retry,
  but this database cannot answer either;
- 42P01 / 42703 (undefined table / column): the schema is behind the code, with a hint to
  run ``graygate db upgrade``.

Every other error passes through unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine

from graygate.errors import StoreUnavailable, one_line
from store.engine import censor_dsn
from store.exchanges import is_unavailable

__all__ = ["sqlstate", "store_errors", "unavailable_error"]

_UNREACHABLE_PREFIXES = ("28", "3D000")
_SCHEMA_BEHIND = frozenset({"42P01", "42703"})


def sqlstate(exc: BaseException) -> str:
    """The SQLSTATE PostgreSQL gave ``exc`` (through SQLAlchemy's wrapper), or ""."""
    orig = getattr(exc, "orig", None)
    for cur in (orig, getattr(orig, "__cause__", None), exc):
        state = getattr(cur, "sqlstate", None) or getattr(cur, "pgcode", None)
        if state:
            return str(state)
    return ""


def unavailable_error(engine: AsyncEngine, exc: BaseException) -> StoreUnavailable | None:
    """The ``StoreUnavailable`` to raise (``from None``) for ``exc``, or None when ``exc`` is
    some other error and should propagate as it is."""
    state = sqlstate(exc)
    behind = state in _SCHEMA_BEHIND
    if not (behind or is_unavailable(exc) or state.startswith(_UNREACHABLE_PREFIXES)):
        return None
    where = censor_dsn(str(engine.url))
    reason = one_line(exc)
    if behind:
        return StoreUnavailable(
            f"database {where} schema is behind this graygate ({reason}); run `graygate db upgrade`"
        )
    return StoreUnavailable(f"database {where} is unavailable: {reason}")


@asynccontextmanager
async def store_errors(engine: AsyncEngine) -> AsyncIterator[None]:
    """Raise ``StoreUnavailable`` for the failures above; every other error passes through."""
    try:
        yield
    except Exception as exc:
        err = unavailable_error(engine, exc)
        if err is None:
            raise
        raise err from None
