"""Shadow-write comparison, the I/O part: the process that reads both databases.

For each ``writes:`` check, :func:`check_pending` finds the run's exchanges that are due
(``store.write_checks.fetch_due``: mirrored, answered on both sides, served by the primary,
a checked method, recorded ``settle_ms`` ago, not checked yet), reads the rows each side
wrote for the exchange's trace id (``store.write_checks.read_rows``: the configured query,
READ ONLY, a statement timeout, a row cap) and stores one record per exchange and check
(``diff.write_compare.write_record``) with ``store.exchanges.write_exchanges``. The diff
workers judge those records like any other exchange, under the check's rules.

A read that fails (database away, query error, timeout) is stored as that side's error: the
verdict's ``writes`` check counts it. graygate never writes to these databases; their URLs
are never logged (a failure is logged with the check's name and side only).

Run it with :func:`write_checker` (an async context manager: one background task while the
block runs), started by the worker role of ``graygate serve`` when ``writes:`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import WriteCheck, WriteSide
from diff.write_compare import SideRead, write_record
from graygate.errors import one_line
from graygate.values import RecordedExchange
from store.exchanges import exchange_row, write_exchanges
from store.write_checks import DueExchange, create_reader, fetch_due, read_rows, write_span_id

__all__ = ["WriteCheckStats", "check_pending", "write_checker", "write_checker_loop"]

logger = logging.getLogger(__name__)

BATCH = 200  # exchanges per check and pass
CONCURRENCY = 8  # reads in flight per check
RESCAN_S = 60.0  # a pass from the start of the run every so often (late commits)


@dataclass(slots=True)
class WriteCheckStats:
    """What the write checker has done, per check name."""

    checked: dict[str, int] = field(default_factory=dict)
    failed_reads: dict[str, int] = field(default_factory=dict)
    passes: int = 0
    failures: int = 0  # passes that failed (graygate's database away, ...)


class _Readers:
    """One read-only engine per distinct (URL, timeout), shared by the checks."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self._stack = stack
        self._engines: dict[tuple[str, int], AsyncEngine] = {}

    def get(self, side: WriteSide, timeout_ms: int) -> AsyncEngine:
        key = (side.url, timeout_ms)
        engine = self._engines.get(key)
        if engine is None:
            engine = create_reader(side.url, timeout_ms=timeout_ms, pool_size=CONCURRENCY)
            self._engines[key] = engine
            self._stack.push_async_callback(engine.dispose)
        return engine


async def _read(
    engine: AsyncEngine, check: WriteCheck, side: WriteSide, which: str, trace_id: str
) -> SideRead:
    start = time.perf_counter()
    try:
        got = await read_rows(
            engine, side.query, trace_id, timeout_ms=check.timeout_ms, max_rows=check.max_rows
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        reason = one_line(exc, fallback=type(exc).__name__)
        if isinstance(exc, TimeoutError):
            reason = f"read timed out after {check.timeout_ms} ms"
        logger.warning("write check %s: the %s read failed: %s", check.name, which, reason)
        return SideRead(error=f"{which} read failed: {reason}")
    ms = (time.perf_counter() - start) * 1000.0
    return SideRead(rows=got.rows, truncated=got.truncated, latency_ms=ms)


async def _check_one(
    run_id: int, check: WriteCheck, readers: _Readers, x: DueExchange
) -> RecordedExchange:
    if not x.comparable:
        return write_record(
            run_id=run_id, name=check.name, span_id=write_span_id(check.name),
            trace_id=x.trace_id, received_at=x.received_at, source=x.endpoint,
            primary=None, canary=None,
        )  # fmt: skip
    primary, canary = await asyncio.gather(
        _read(
            readers.get(check.primary, check.timeout_ms),
            check,
            check.primary,
            "primary",
            x.trace_id,
        ),
        _read(
            readers.get(check.canary, check.timeout_ms), check, check.canary, "canary", x.trace_id
        ),
    )
    return write_record(
        run_id=run_id,
        name=check.name,
        span_id=write_span_id(check.name),
        trace_id=x.trace_id,
        received_at=x.received_at,
        source=x.endpoint,
        primary=primary,
        canary=canary,
    )


async def check_pending(
    engine: AsyncEngine,
    run_id: int,
    checks: Sequence[WriteCheck],
    readers: _Readers,
    *,
    cursors: dict[str, int],
    stats: WriteCheckStats,
) -> int:
    """One pass: every check over the exchanges due now (after its cursor); returns how
    many records were stored."""
    stored = 0
    sem = asyncio.Semaphore(CONCURRENCY)

    async def bounded(check: WriteCheck, x: DueExchange) -> RecordedExchange:
        async with sem:
            return await _check_one(run_id, check, readers, x)

    for check in checks:
        due = await fetch_due(
            engine,
            run_id,
            check.name,
            methods=check.methods,
            settle_ms=check.settle_ms,
            after_id=cursors.get(check.name, 0),
            limit=BATCH,
        )
        if not due:
            continue
        records = await asyncio.gather(*(bounded(check, x) for x in due))
        result = await write_exchanges(engine, [exchange_row(r) for r in records])
        if result.rejected:
            logger.error(
                "write check %s: %d record(s) refused by the database: %s",
                check.name,
                len(result.rejected),
                result.rejected_reason,
            )
        cursors[check.name] = due[-1].id
        stored += len(records)
        stats.checked[check.name] = stats.checked.get(check.name, 0) + len(records)
        failed = sum(
            1 for r in records if any(a is not None and a.error for a in (r.primary, r.canary))
        )
        if failed:
            stats.failed_reads[check.name] = stats.failed_reads.get(check.name, 0) + failed
    stats.passes += 1
    return stored


async def write_checker_loop(
    engine: AsyncEngine,
    run_id: int,
    checks: Sequence[WriteCheck],
    *,
    stop: asyncio.Event,
    stats: WriteCheckStats,
    idle_s: float = 0.2,
    error_max_s: float = 30.0,
) -> None:
    """Check writes as exchanges arrive, until ``stop`` is set."""
    cursors: dict[str, int] = {}
    backoff = 0.0
    last_rescan = time.monotonic()
    async with AsyncExitStack() as stack:
        readers = _Readers(stack)
        while not stop.is_set():
            if time.monotonic() - last_rescan > RESCAN_S:
                cursors.clear()  # exchanges committed late, behind the cursor
                last_rescan = time.monotonic()
            try:
                n = await check_pending(
                    engine, run_id, checks, readers, cursors=cursors, stats=stats
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                stats.failures += 1
                backoff = min(error_max_s, max(idle_s, backoff * 2 or 0.5))
                logger.warning(
                    "write checker: a pass failed (%s); retrying in %.1fs",
                    one_line(exc, fallback=type(exc).__name__),
                    backoff,
                )
                await _wait(stop, backoff)
                continue
            backoff = 0.0
            if n == 0:
                await _wait(stop, idle_s)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


@asynccontextmanager
async def write_checker(
    engine: AsyncEngine,
    run_id: int,
    checks: Sequence[WriteCheck],
    *,
    grace: float = 5.0,
) -> AsyncIterator[WriteCheckStats]:
    """Run the write checks in one background task while the block runs (nothing when
    ``checks`` is empty); on exit let the pass finish (up to ``grace`` s), then cancel it."""
    stats = WriteCheckStats()
    if not checks:
        yield stats
        return
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(
        write_checker_loop(engine, run_id, checks, stop=stop, stats=stats),
        name=f"write-checker:{run_id}",
    )
    logger.info("write checks %s on run %d", ", ".join(c.name for c in checks), run_id)
    try:
        yield stats
    finally:
        stop.set()
        done, _ = await asyncio.wait([task], timeout=grace)
        if not done:
            task.cancel()
        result = (await asyncio.gather(task, return_exceptions=True))[0]
        if isinstance(result, Exception):
            logger.error("write checker failed", exc_info=result)
