"""Writing exchanges and loss counters: one COPY per batch, idempotent on replay.

An exchange is unique by ``(trace_id, run_id, span_id)``. A batch goes in with one binary
``COPY`` straight into ``exchanges``; when that trips the unique key (a batch replayed after an
outage, or after a crash in the middle of a replay) the same rows go through a temporary table
and ``INSERT ... ON CONFLICT DO NOTHING``, so a row is never stored twice. ``exchanges`` is
partitioned by run: the COPY into the parent routes each row to its run's partition, and a
row whose run has none makes the open run's partitions (``store.partitions``) or is refused.

The writer (``proxy.recorder``) works on rows, not records: ``exchange_row`` turns an
``RecordedExchange`` into the tuple that ``COPY`` takes (bodies bounded again, or replaced by
their digests for an exchange body sampling left out; headers as JSON text), and the spill
stores those tuples.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Final

import asyncpg
import orjson
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from graygate.errors import one_line
from graygate.values import Answer, RecordedExchange
from graygate.vocabulary import LossReason
from store.partitions import ensure_partitions, is_missing_partition
from store.tables import ROLES, exchanges, run_losses, runs, spill_replays

__all__ = [
    "BYTES_COLUMNS",
    "COLUMNS",
    "TIME_COLUMNS",
    "Row",
    "WriteResult",
    "add_losses",
    "add_spilled_losses",
    "count_exchanges",
    "exchange_row",
    "fetch_exchanges",
    "fetch_losses",
    "is_rejection",
    "is_unavailable",
    "write_exchanges",
]

logger = logging.getLogger(__name__)

Row = tuple[Any, ...]

# The columns a batch fills, in the order of the tuples ``exchange_row`` makes.
COLUMNS: Final[tuple[str, ...]] = (
    "run_id",
    "trace_id",
    "span_id",
    "received_at",
    "endpoint",
    "method",
    "path",
    "query",
    "request_headers",
    "request_body",
    "request_body_truncated",
    "gray_label",
    "served_by",
    "mirror_skipped",
    *(
        f"{role}_{name}"
        for role in ROLES
        for name in (
            "status",
            "headers",
            "body",
            "body_truncated",
            "body_sha256",
            "latency_ms",
            "error",
        )
    ),
    "body_digest_only",
)
BYTES_COLUMNS: Final[frozenset[str]] = frozenset(
    ("request_body", *(f"{role}_{c}" for role in ROLES for c in ("body", "body_sha256")))
)
TIME_COLUMNS: Final[frozenset[str]] = frozenset(("received_at",))

_TABLE = "exchanges"
_STAGE = "gg_stage_exchanges"
_KEY = "(trace_id, run_id, span_id)"
_SMALLINT_MAX = 32767
_EMPTY_RESPONSE: Final[Row] = (None, None, None, False, None, None, None)


# ---------------------------------------------------------------------------------------
# Records to rows


def _text(value: str) -> str:
    if not value.isascii():
        value.encode()  # UnicodeEncodeError (a ValueError) on a lone surrogate
    # PostgreSQL text cannot hold NUL; nothing else needs touching.
    return value.replace("\x00", "") if "\x00" in value else value


def _opt_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _headers(headers: Mapping[str, str] | None) -> str | None:
    if headers is None:
        return None
    data = orjson.dumps(headers)
    if b"\\u0000" in data:  # jsonb rejects \u0000
        data = orjson.dumps({_text(str(k)): _text(str(v)) for k, v in headers.items()})
    return data.decode()


def _body(body: bytes | None, truncated: bool, limit: int | None) -> tuple[bytes | None, bool]:
    if body is None:
        return None, truncated
    if not isinstance(body, bytes):
        body = bytes(body)
    if limit is not None and len(body) > limit:
        return body[:limit], True
    return body, bool(truncated)


def _response(
    resp: Answer | None, body: bytes | None, truncated: bool, digest: bytes | None
) -> Row:
    if resp is None:
        return _EMPTY_RESPONSE
    status = resp.status
    if status is not None and not 0 <= status <= _SMALLINT_MAX:
        raise ValueError(f"status {status!r} out of range")
    latency = None if resp.latency_ms is None else float(resp.latency_ms)
    # An answer without a head (an error) has no headers: stored as NULL, not {}.
    headers = _headers(resp.headers if resp.headers or status is not None else None)
    if digest is not None:
        body = None
    return (status, headers, body, truncated, digest, latency, _opt_text(resp.error))


def _digests(
    bodies: Sequence[tuple[bytes | None, bool] | None], keep_differing: bool
) -> list[bytes | None] | None:
    """The sha256 of each side's body, to store in its place (None for a side with no
    answer or an empty body, kept as it is); None when the bodies must be kept: a body was
    cut (its digest would not be the answer's), or, with ``keep_differing``, the answers'
    bodies differ (so that the judge can compare them). An empty body differs from a
    non-empty one: a canary answering nothing is a difference the judge must see."""
    if any(side[1] for side in bodies if side is not None and side[0]):
        return None
    whole = {hashlib.sha256(side[0] or b"").digest() for side in bodies if side is not None}
    if keep_differing and len(whole) > 1:
        return None
    digests = [
        hashlib.sha256(side[0]).digest() if side is not None and side[0] else None
        for side in bodies
    ]
    if not any(digests):
        return None
    return digests


def exchange_row(
    record: RecordedExchange,
    *,
    max_body_bytes: int | None = None,
    keep_bodies: bool = True,
    keep_differing: bool = True,
) -> Row:
    """The ``COLUMNS``-ordered tuple for one record; bodies cut to ``max_body_bytes``.

    ``keep_bodies=False`` (an exchange ``record.bodies.sample`` left out) stores each
    answer's sha256 in place of its body (``<side>_body_sha256``, ``body_digest_only``),
    unless a body was cut, or ``keep_differing`` and the bodies differ: then they are
    kept. Empty bodies and the request's body are always kept (replay sends the latter).

    Raises ``ValueError``/``TypeError`` for a record that cannot be stored (the caller counts
    it as an ``encode_error`` loss).
    """
    received = record.received_at
    if received.tzinfo is None:
        received = received.replace(tzinfo=UTC)
    body, truncated = _body(record.request_body, record.request_body_truncated, max_body_bytes)
    answers = (record.primary, record.canary, record.secondary)
    bodies = [
        _body(a.body, a.body_truncated, max_body_bytes) if a is not None else (None, False)
        for a in answers
    ]
    # An answer read back from a digest-only row (a replay of a sampled run) stays one.
    digests = [a.body_sha256 if a is not None and a.body is None else None for a in answers]
    if not any(digests):
        present = [b if a is not None else None for a, b in zip(answers, bodies, strict=True)]
        digests = (None if keep_bodies else _digests(present, keep_differing)) or []
    sides = [
        _response(a, b, t, d)
        for a, (b, t), d in zip(answers, bodies, digests or (None, None, None), strict=True)
    ]
    return (
        int(record.run_id),
        _text(record.trace_id),
        _text(record.span_id),
        received,
        _text(record.endpoint),
        _text(record.method),
        _text(record.path),
        _text(record.query),
        _headers(record.request_headers),
        body,
        truncated,
        _opt_text(record.gray_label),
        _text(record.served_by),
        _opt_text(record.mirror_skipped),
        *sides[0],
        *sides[1],
        *sides[2],
        any(digests),
    )


# ---------------------------------------------------------------------------------------
# Error classes

# SQLSTATE classes that mean "the database is away or busy; try again later".
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_SQLSTATES = frozenset({"25006", "55P03"})  # read-only (failover), lock timeout


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        todo.extend((getattr(cur, "orig", None), cur.__cause__))


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot be reached or cannot take work now
    (refused, reset, timeout, shutting down, out of connections, failover): worth a retry."""
    for cur in _chain(exc):
        if isinstance(cur, asyncpg.exceptions._base.DataError):  # client-side encoding
            return False
        if isinstance(
            cur,
            OSError
            | TimeoutError
            | asyncpg.PostgresConnectionError
            | asyncpg.InterfaceError
            | sa_exc.OperationalError
            | sa_exc.InterfaceError
            | sa_exc.TimeoutError
            | sa_exc.DisconnectionError,
        ):
            return True
        if isinstance(cur, sa_exc.DBAPIError) and cur.connection_invalidated:
            return True
        if isinstance(cur, asyncpg.PostgresError):
            state = str(getattr(cur, "sqlstate", "") or "")
            if state[:2] in _TRANSIENT_SQLSTATE_CLASSES or state in _TRANSIENT_SQLSTATES:
                return True
    return False


def is_rejection(exc: BaseException) -> bool:
    """True when the database (or the driver, encoding) refused the data itself: retrying
    the same rows cannot succeed, but the rows around the bad one can."""
    if is_unavailable(exc):
        return False
    return any(
        isinstance(cur, asyncpg.PostgresError | asyncpg.exceptions._base.DataError)
        for cur in _chain(exc)
    )


# ---------------------------------------------------------------------------------------
# Writing


@dataclass(slots=True)
class WriteResult:
    """What one ``write_exchanges`` call stored."""

    inserted: int = 0
    duplicates: int = 0  # already stored (a replay), skipped
    copies: int = 0  # COPY commands sent
    rejected: list[Row] = field(default_factory=list)  # refused by the database, not stored
    rejected_reason: str | None = None  # why the first one was refused
    run_closed: int = 0  # for a closed run: not stored, counted as run_closed losses

    def __iadd__(self, other: WriteResult) -> WriteResult:
        self.run_closed += other.run_closed
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.copies += other.copies
        self.rejected.extend(other.rejected)
        self.rejected_reason = self.rejected_reason or other.rejected_reason
        return self


async def _driver(conn: AsyncConnection) -> asyncpg.Connection:
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, asyncpg.Connection)
    return driver


def _copied(status: str) -> int:
    # "COPY 500" / "INSERT 0 498"
    return int(status.rsplit(" ", 1)[-1])


@contextlib.asynccontextmanager
async def _connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """The pool's asyncpg connection, outside any transaction (each statement its own);
    invalidated rather than given back when the database is away or the caller was
    cancelled (it may be half-way through a COPY)."""
    async with engine.connect() as conn:
        try:
            yield await _driver(conn)
        except BaseException as exc:
            if not isinstance(exc, Exception) or is_unavailable(exc):
                await conn.invalidate()
            raise


async def _copy(
    driver: asyncpg.Connection, rows: Sequence[Row], columns: Sequence[str], copy_timeout: float
) -> WriteResult:
    try:
        status = await driver.copy_records_to_table(
            _TABLE, records=rows, columns=columns, timeout=copy_timeout
        )
        return WriteResult(inserted=_copied(status), copies=1)
    except asyncpg.UniqueViolationError:
        pass
    # Some rows are there already: stage, then insert what is missing.
    cols = ", ".join(columns)
    async with driver.transaction():
        await driver.execute(
            f"CREATE TEMP TABLE {_STAGE} ON COMMIT DROP AS "
            f"SELECT {cols} FROM {_TABLE} WITH NO DATA",
            timeout=copy_timeout,
        )
        await driver.copy_records_to_table(
            _STAGE, records=rows, columns=columns, timeout=copy_timeout
        )
        status = await driver.execute(
            f"INSERT INTO {_TABLE} ({cols}) SELECT {cols} FROM {_STAGE} "
            f"ON CONFLICT {_KEY} DO NOTHING",
            timeout=copy_timeout,
        )
    inserted = _copied(status)
    return WriteResult(inserted=inserted, duplicates=len(rows) - inserted, copies=2)


async def _copy_once(
    engine: AsyncEngine, rows: Sequence[Row], columns: Sequence[str], copy_timeout: float
) -> WriteResult:
    async with _connection(engine) as driver:
        return await _copy(driver, rows, columns, copy_timeout)


async def write_exchanges(
    engine: AsyncEngine,
    rows: Sequence[Row],
    *,
    columns: Sequence[str] = COLUMNS,
    copy_timeout: float = 30.0,
) -> WriteResult:
    """Store ``rows`` (tuples in ``columns`` order) with one COPY; rows already stored are
    skipped. Rows the database refuses (bad data, unknown run) are isolated by halving the
    batch and returned in ``rejected``; the rest are stored. ``copy_timeout`` bounds each
    statement.

    Raises what the driver raised when the database is away (``is_unavailable``): the caller
    keeps the rows (spill) and retries; a retry never stores a row twice.

    A row whose run has no partition (``store.partitions``) makes the run's partitions
    when the run is open, and is written again; otherwise it is refused (``rejected``).

    Rows of a closed run (``graygate runs close``) are not stored: they are counted in
    ``run_losses`` as ``run_closed`` (one indexed read of ``runs`` per batch). A batch
    whose write began before the close committed may still land.
    """
    if not rows:
        return WriteResult()
    # The closed runs' check and the COPY on one connection (one checkout, one ping).
    refused: Exception | None = None
    async with _connection(engine) as driver:
        rows, dropped = await _split_closed(driver, rows, columns, copy_timeout)
        result = WriteResult()
        if rows:
            try:
                result = await _copy(driver, rows, columns, copy_timeout)
            except Exception as exc:
                if not is_rejection(exc):
                    raise
                refused = exc
    if refused is not None:
        result = await _refused(engine, rows, columns, copy_timeout, refused, heal=True)
    if dropped:
        # Counted after the rest is stored: a failure before here leaves the whole batch
        # to the caller's retry, which counts them once.
        await add_losses(engine, None, dropped)
        result.run_closed = sum(dropped.values())
        logger.info("dropped %d exchanges of closed runs", result.run_closed)
    return result


_CLOSED_RUNS: Final = (
    f"SELECT {runs.c.id.name} FROM {runs.name} "
    f"WHERE {runs.c.id.name} = ANY($1::bigint[]) AND {runs.c.closed_at.name} IS NOT NULL"
)


async def _split_closed(
    driver: asyncpg.Connection, rows: Sequence[Row], columns: Sequence[str], limit: float
) -> tuple[Sequence[Row], dict[tuple[int, str], int]]:
    """``rows`` without those of closed runs, and how many of those per run."""
    i = list(columns).index("run_id")
    ids = sorted({int(r[i]) for r in rows})
    closed = {int(r[0]) for r in await driver.fetch(_CLOSED_RUNS, ids, timeout=limit)}
    if not closed:
        return rows, {}
    kept = [r for r in rows if int(r[i]) not in closed]
    dropped: dict[tuple[int, str], int] = {}
    for r in rows:
        if int(r[i]) in closed:
            key = (int(r[i]), LossReason.RUN_CLOSED.value)
            dropped[key] = dropped.get(key, 0) + 1
    return kept, dropped


async def _write(
    engine: AsyncEngine,
    rows: Sequence[Row],
    columns: Sequence[str],
    copy_timeout: float,
    *,
    heal: bool = True,
) -> WriteResult:
    """Write ``rows``, isolating the rows the database refuses (by halving). With
    ``heal``, rows some run has no partition for make the open runs' partitions first
    (``store.runs.ensure_run`` made them, so this is rare) and are written again once."""
    if not rows:
        return WriteResult()
    try:
        return await _copy_once(engine, rows, columns, copy_timeout)
    except Exception as exc:
        if not is_rejection(exc):
            raise
        return await _refused(engine, rows, columns, copy_timeout, exc, heal=heal)


async def _refused(
    engine: AsyncEngine,
    rows: Sequence[Row],
    columns: Sequence[str],
    copy_timeout: float,
    refused: Exception,
    *,
    heal: bool,
) -> WriteResult:
    """``rows`` were refused together. Rows of runs without a partition (``heal``) make
    the open runs' partitions and are written again once; else what the database takes is
    stored, halving the batch until the refused rows stand alone."""
    if heal and is_missing_partition(refused):
        i = list(columns).index("run_id")
        made = await ensure_partitions(engine, {int(r[i]) for r in rows})
        if made:
            logger.warning("rows of runs without a partition: made those of runs %s", made)
        return await _write(engine, rows, columns, copy_timeout, heal=False)
    if len(rows) == 1:
        return WriteResult(rejected=[rows[0]], rejected_reason=_reason(refused))
    mid = len(rows) // 2
    result = await _write(engine, rows[:mid], columns, copy_timeout, heal=heal)
    result += await _write(engine, rows[mid:], columns, copy_timeout, heal=heal)
    return result


def _reason(exc: BaseException) -> str:
    return one_line(exc, fallback=type(exc).__name__)


# ---------------------------------------------------------------------------------------
# Loss counters


def _loss_rows(losses: Mapping[tuple[int, str], int]) -> list[dict[str, Any]]:
    # Sorted: concurrent writers lock the same rows in the same order (no deadlock).
    return [
        {"run_id": run_id, "reason": reason, "count": n}
        for (run_id, reason), n in sorted(losses.items())
        if n > 0
    ]


def _upsert_losses() -> sa.Insert:
    stmt = pg_insert(run_losses)
    return stmt.on_conflict_do_update(
        index_elements=[run_losses.c.run_id, run_losses.c.reason],
        set_={
            "count": run_losses.c.count + stmt.excluded.count,
            "updated_at": sa.func.now(),
        },
    )


async def add_losses(
    engine: AsyncEngine,
    run_id: int | None,
    losses: Mapping[str, int] | Mapping[tuple[int, str], int],
) -> None:
    """Add ``losses`` to the run's counters (an upsert increment, safe from many processes).

    ``add_losses(engine, run_id, {"queue_full": 3})``, or for several runs at once
    ``add_losses(engine, None, {(run_id, "queue_full"): 3})``.
    """
    keyed = _keyed(run_id, losses)
    rows = _loss_rows(keyed)
    if not rows:
        return
    async with engine.begin() as conn:
        await conn.execute(_upsert_losses(), rows)


def _keyed(
    run_id: int | None, losses: Mapping[str, int] | Mapping[tuple[int, str], int]
) -> dict[tuple[int, str], int]:
    keyed: dict[tuple[int, str], int] = {}
    for key, n in losses.items():
        if isinstance(key, tuple):
            keyed[key] = keyed.get(key, 0) + int(n)
        else:
            if run_id is None:
                raise ValueError("losses keyed by reason need a run_id")
            keyed[(run_id, key)] = keyed.get((run_id, key), 0) + int(n)
    return keyed


async def add_spilled_losses(
    engine: AsyncEngine, segment: str, losses: Mapping[tuple[int, str], int]
) -> bool:
    """Add the loss counters read from spill segment ``segment``, once: the segment is
    recorded in ``spill_replays`` in the same transaction. False when it was already added."""
    rows = _loss_rows(losses)
    async with engine.begin() as conn:
        stmt = (
            pg_insert(spill_replays)
            .values(segment=segment)
            .on_conflict_do_nothing()
            .returning(spill_replays.c.segment)
        )
        if (await conn.execute(stmt)).first() is None:
            return False
        if rows:
            await conn.execute(_upsert_losses(), rows)
    return True


# ---------------------------------------------------------------------------------------
# Reading (tests, tools)


async def fetch_losses(engine: AsyncEngine, run_id: int) -> dict[str, int]:
    """The run's loss counters by reason."""
    async with engine.connect() as conn:
        result = await conn.execute(
            sa.select(run_losses.c.reason, run_losses.c.count).where(run_losses.c.run_id == run_id)
        )
        return {reason: int(count) for reason, count in result}


async def count_exchanges(engine: AsyncEngine, run_id: int) -> int:
    async with engine.connect() as conn:
        n = await conn.scalar(
            sa.select(sa.func.count()).select_from(exchanges).where(exchanges.c.run_id == run_id)
        )
        return int(n or 0)


async def fetch_exchanges(engine: AsyncEngine, run_id: int) -> list[dict[str, Any]]:
    """Every stored exchange of the run, by id, as plain dicts (column name to value)."""
    async with engine.connect() as conn:
        result = await conn.execute(
            sa.select(exchanges).where(exchanges.c.run_id == run_id).order_by(exchanges.c.id)
        )
        return [dict(row._mapping) for row in result]
