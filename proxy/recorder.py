"""Recording exchanges: a bounded queue, one writer, COPY batches, a spill when PostgreSQL
is away, and every exchange that is not recorded counted where the verdict can see it.

The request path calls ``Recorder.submit(record)``: it never waits; False means the record
was dropped (the queue is full, or the recorder is closed) and the loss is counted. One
writer task takes up to ``record.batch_size`` records, or what arrived within
``record.flush_interval_ms`` of the first, and stores them with one ``COPY``
(``store.exchanges.write_exchanges``).

When PostgreSQL cannot take a batch (refused, reset, timeout, shutting down), the batch goes
to the spill (``proxy.spill``) and so do the next ones, without waiting on the database, while
a probe retries it with backoff. Once it answers, the live queue goes first and the spill is
replayed in between, oldest segment first, each segment deleted once stored. Replay is
idempotent: rows already stored are skipped (unique ``(trace_id, run_id, span_id)``), and a
segment's loss counters are added once (``spill_replays``).

Losses are counted per run in ``run_losses`` (flushed every ``loss_flush_interval`` seconds
and at close; spilled when the database is away), and in Prometheus. Reasons:

- ``queue_full``: the queue was full when the proxy submitted the exchange
- ``spill_full``: the database was away and the spill had reached ``record.spill_max_bytes``
- ``spill_error``: the database was away and writing the spill failed (disk error)
- ``database_unavailable``: the database was away and no spill is configured
- ``encode_error``: the record could not be turned into a row (bad value)
- ``rejected``: PostgreSQL refused the row itself (e.g. its run no longer exists)
- ``closed``: submitted after the recorder stopped accepting (shutdown)

(and, in Prometheus only, ``spill_corrupt``: spilled lines that could not be read back, a
write cut short by a crash; no run can be charged with them.)

Metrics (default registry): ``graygate_record_exchanges_recorded_total``,
``graygate_record_exchanges_dropped_total{reason}``, ``graygate_record_exchanges_spilled_total``,
``graygate_record_exchanges_replayed_total``, ``graygate_record_exchanges_duplicate_total``,
``graygate_record_queue_depth``, ``graygate_record_spill_bytes``,
``graygate_record_database_up``, ``graygate_record_batch_write_seconds``.

Shutdown (``close``): stop accepting, write what is queued (to the database, or to the spill
once ``drain_timeout`` has passed or while it is away), then persist the loss counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import RecordConfig
from graygate.errors import ConfigError
from graygate.tasks import TaskSet
from graygate.values import RecordedExchange
from proxy.spill import Segment, Spill
from store.engine import censor_dsn, ping
from store.exchanges import (
    Row,
    WriteResult,
    add_losses,
    add_spilled_losses,
    exchange_row,
    is_rejection,
    is_unavailable,
    write_exchanges,
)

__all__ = [
    "BATCH_SECONDS",
    "DATABASE_UP",
    "DROPPED",
    "DUPLICATES",
    "QUEUE_DEPTH",
    "RECORDED",
    "RECORDER_KEY",
    "REPLAYED",
    "SPILLED",
    "SPILL_BYTES",
    "Recorder",
    "RecorderStats",
    "recorder_ctx",
]

logger = logging.getLogger(__name__)

QUEUE_FULL: Final = "queue_full"
SPILL_FULL: Final = "spill_full"
SPILL_ERROR: Final = "spill_error"
DATABASE_UNAVAILABLE: Final = "database_unavailable"
ENCODE_ERROR: Final = "encode_error"
REJECTED: Final = "rejected"
CLOSED: Final = "closed"

RECORDED: Final = Counter(
    "graygate_record_exchanges_recorded",
    "Exchanges written to PostgreSQL (replayed from the spill included).",
)
DROPPED: Final = Counter(
    "graygate_record_exchanges_dropped",
    "Exchanges not recorded, by reason.",
    ("reason",),
)
SPILLED: Final = Counter(
    "graygate_record_exchanges_spilled",
    "Exchanges written to the local spill while PostgreSQL was away.",
)
REPLAYED: Final = Counter(
    "graygate_record_exchanges_replayed",
    "Exchanges replayed from the spill into PostgreSQL.",
)
DUPLICATES: Final = Counter(
    "graygate_record_exchanges_duplicate",
    "Rows found already stored (a replay after an uncertain write) and skipped.",
)
QUEUE_DEPTH: Final = Gauge(
    "graygate_record_queue_depth",
    "Exchanges waiting in the recorder's queue.",
    multiprocess_mode="livesum",
)
SPILL_BYTES: Final = Gauge(
    "graygate_record_spill_bytes",
    "Bytes in the spill directory, waiting for replay (processes may share a directory).",
    multiprocess_mode="livemax",
)
DATABASE_UP: Final = Gauge(
    "graygate_record_database_up",
    "1 while the recorder writes to PostgreSQL, 0 while it spills.",
    multiprocess_mode="livemin",
)
BATCH_SECONDS: Final = Histogram(
    "graygate_record_batch_write_seconds",
    "Time to store one batch in PostgreSQL (COPY), successful writes only.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
_dropped = {
    reason: DROPPED.labels(reason)
    for reason in (
        QUEUE_FULL,
        SPILL_FULL,
        SPILL_ERROR,
        DATABASE_UNAVAILABLE,
        ENCODE_ERROR,
        REJECTED,
        CLOSED,
    )
}

_BACKOFF_FIRST = 0.25
_BACKOFF_MAX = 30.0
_RESCAN_INTERVAL = 30.0  # look for segments left by other processes sharing the directory
_PROBE_TIMEOUT = 5.0


@dataclass(slots=True)
class RecorderStats:
    """What this recorder did since it started (for tests, logs and the CLI)."""

    accepted: int = 0
    recorded: int = 0  # rows stored from the live queue
    replayed: int = 0  # rows stored from the spill
    duplicates: int = 0
    spilled: int = 0
    batches: int = 0  # write_exchanges calls for live batches
    copies: int = 0  # COPY commands sent (live and replay)
    dropped: dict[str, int] = field(default_factory=dict)


class Recorder:
    """The bounded queue and its writer. Create, ``await start()``, ``submit`` from the event
    loop's thread, ``await close()``; or ``async with Recorder(...) as recorder``."""

    def __init__(
        self,
        engine: AsyncEngine,
        config: RecordConfig,
        *,
        default_spill_dir: str | Path | None = None,
        drain_timeout: float = 10.0,
        write_timeout: float = 5.0,
        loss_flush_interval: float = 1.0,
    ) -> None:
        self._engine = engine
        self._config = config
        self._queue_size = config.queue_size
        self._batch_size = config.batch_size
        self._flush_interval = config.flush_interval_ms / 1000.0
        self._max_body = config.max_body_bytes
        spill_dir = config.spill_dir or default_spill_dir
        self._spill: Spill | None = (
            Spill(spill_dir, config.spill_max_bytes)
            if spill_dir is not None and config.spill_max_bytes > 0
            else None
        )
        self._drain_timeout = drain_timeout
        self._write_timeout = write_timeout
        self._loss_interval = loss_flush_interval
        self._dsn = censor_dsn(str(engine.url))

        self._items: deque[RecordedExchange] = deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._first_at = 0.0
        self._accepting = False
        self._closing = False
        self._closed = False
        self._close_deadline = float("inf")
        self._flush_requested = 0
        self._handled = 0
        self._inflight: list[Row] | None = None

        self._losses: dict[tuple[int, str], int] = {}
        self._next_loss_flush = 0.0

        self._db_up = True
        self._backoff = _BACKOFF_FIRST
        self._probe_at = 0.0
        self._probing = False
        self._seal_needed = False
        self._replay_due = True
        self._next_rescan = 0.0
        self._segment: Segment | None = None

        self._tasks = TaskSet("recorder")
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = RecorderStats()

    # -- state ------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._items)

    @property
    def database_up(self) -> bool:
        return self._db_up

    @property
    def spill(self) -> Spill | None:
        return self._spill

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._writer is not None:
            raise RuntimeError("recorder already started")
        self._loop = asyncio.get_running_loop()
        if self._spill is not None:
            try:
                await asyncio.to_thread(self._spill.open)
            except OSError as exc:
                raise ConfigError(
                    "record.spill_dir", f"cannot use {str(self._spill.directory)!r}: {exc}"
                ) from None
            SPILL_BYTES.set(self._spill.size)
        DATABASE_UP.set(1)
        self._accepting = True
        self._writer = self._tasks.spawn(self._run(), name="writer")
        logger.info(
            "recorder started: database %s, queue %d, batch %d, spill %s",
            self._dsn,
            self._queue_size,
            self._batch_size,
            self._spill.directory if self._spill is not None else "off",
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the request path -------------------------------------------------------------------

    def submit(self, record: RecordedExchange) -> bool:
        """Queue ``record`` for writing; never waits. False: dropped, and counted."""
        items = self._items
        if not self._accepting:
            self._lose(record.run_id, CLOSED)
            return False
        if len(items) >= self._queue_size:
            self._lose(record.run_id, QUEUE_FULL)
            return False
        items.append(record)
        self.stats.accepted += 1
        n = len(items)
        if n == 1:
            assert self._loop is not None
            self._first_at = self._loop.time()
            self._wake.set()
        elif n == self._batch_size:
            self._wake.set()
        return True

    def _lose(self, run_id: int, reason: str, n: int = 1) -> None:
        key = (run_id, reason)
        self._losses[key] = self._losses.get(key, 0) + n
        dropped = self.stats.dropped
        dropped[reason] = dropped.get(reason, 0) + n
        child = _dropped.get(reason)
        if child is None:
            child = _dropped[reason] = DROPPED.labels(reason)
        child.inc(n)

    def _lose_rows(self, rows: Sequence[Row], reason: str, run_idx: int = 0) -> None:
        for row in rows:
            self._lose(int(row[run_idx]), reason)

    # -- flush and close --------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until everything submitted so far is stored (or spilled, or counted lost),
        without waiting for the batch to fill; then store the loss counters. Bound it with
        ``asyncio.timeout`` if need be."""
        target = self.stats.accepted
        self._flush_requested += 1
        try:
            self._wake.set()
            while self._handled < target:
                if self._writer is None or self._writer.done():
                    break
                self._progress.clear()
                await self._progress.wait()
        finally:
            self._flush_requested -= 1
        await self._store_losses()

    async def close(self) -> None:
        """Stop accepting, write what is queued (bounded by ``drain_timeout``; what cannot
        reach the database in time is spilled), store the loss counters, release the spill."""
        if self._closed:
            return
        self._closed = True
        self._accepting = False
        loop = asyncio.get_running_loop()
        self._closing = True
        self._close_deadline = loop.time() + self._drain_timeout
        self._wake.set()
        writer = self._writer
        if writer is not None and not writer.done():
            # The writer switches to the spill at the deadline; give it a moment past that.
            done, _ = await asyncio.wait({writer}, timeout=self._drain_timeout + 5.0)
            if not done:
                logger.warning("recorder writer did not finish in time; cancelling it")
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
        # Whatever the writer could not finish: the batch in flight (it may or may not have
        # been stored; a replay skips it if so) and what is still queued.
        leftovers: list[Row] = list(self._inflight or ())
        self._inflight = None
        leftovers.extend(self._convert(list(self._items)))
        self._items.clear()
        if leftovers:
            await self._to_spill(leftovers)
        await self._final_losses()
        await self._release_spill()
        await self._tasks.drain(grace=1.0)
        QUEUE_DEPTH.set(0)
        s = self.stats
        logger.info(
            "recorder closed: %d accepted, %d recorded, %d replayed, %d spilled, dropped %s",
            s.accepted,
            s.recorded,
            s.replayed,
            s.spilled,
            s.dropped or "none",
        )

    async def _final_losses(self) -> None:
        if not self._losses:
            return
        if self._db_up:
            try:
                async with asyncio.timeout(5.0):
                    await self._store_losses()
            except TimeoutError:
                logger.warning("storing loss counters at close timed out")
        if self._losses and not await self._spill_losses():
            logger.error(
                "loss counters lost at close (database away, no spill): %s",
                {f"{run}/{reason}": n for (run, reason), n in self._losses.items()},
            )

    async def _release_spill(self) -> None:
        if self._segment is not None:
            await asyncio.to_thread(self._segment.release)
            self._segment = None
        if self._spill is not None:
            try:
                await asyncio.to_thread(self._spill.close)
            except OSError as exc:
                logger.error("cannot close the spill: %s", exc)

    # -- the writer -------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._loop is not None
        loop = self._loop
        while True:
            if self._closing and not self._items:
                break
            batch: list[RecordedExchange] = []
            try:
                replay = self._replay_ready(loop.time())
                batch = await self._collect(0.0 if replay else self._loss_interval)
                if batch:
                    rows = self._convert(batch)
                    if rows:
                        await self._store(rows)
                self._handled += len(batch)
                self._progress.set()
                await self._housekeeping()
            except Exception:
                # A bug must not stop the recording: log it, count what it cost, go on.
                logger.exception("recorder writer failed; continuing")
                if self._inflight is not None:
                    self._lose_rows(self._inflight, SPILL_ERROR)
                    self._inflight = None
                self._handled += len(batch)
                self._progress.set()
                await asyncio.sleep(0.1)
        self._progress.set()

    async def _collect(self, idle: float) -> list[RecordedExchange]:
        assert self._loop is not None
        loop, items, wake = self._loop, self._items, self._wake
        if not items:
            wake.clear()
            if idle > 0 and not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(idle):
                        await wake.wait()
            if not items:
                return []
        deadline = self._first_at + self._flush_interval
        while (
            len(items) < self._batch_size
            and not self._closing
            and not self._flush_requested
            and loop.time() < deadline
        ):
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await wake.wait()
        take = min(len(items), self._batch_size)
        return [items.popleft() for _ in range(take)]

    def _convert(self, records: Sequence[RecordedExchange]) -> list[Row]:
        rows: list[Row] = []
        limit = self._max_body
        failed = 0
        first = ""
        for record in records:
            try:
                rows.append(exchange_row(record, max_body_bytes=limit))
            except Exception as exc:
                self._lose(record.run_id, ENCODE_ERROR)
                if not failed:
                    first = f"{getattr(record, 'trace_id', '?')}: {_reason(exc)}"
                failed += 1
        if failed:  # one line per batch, never one per exchange
            logger.warning("%d exchanges could not be encoded (first: %s)", failed, first)
        return rows

    async def _store(self, rows: list[Row]) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if self._db_up and not (self._closing and now >= self._close_deadline):
            timeout = self._write_timeout
            if self._closing:
                timeout = max(0.1, min(timeout, self._close_deadline - now))
            self._inflight = rows
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):  # pool checkout and ping included
                    result = await write_exchanges(self._engine, rows, copy_timeout=timeout)
            except Exception as exc:
                self._mark_down(exc)
            else:
                self._inflight = None
                BATCH_SECONDS.observe(time.perf_counter() - started)
                self.stats.batches += 1
                self._count(result, replay=False)
                return
        self._inflight = None
        await self._to_spill(rows)

    def _count(self, result: WriteResult, *, replay: bool, run_idx: int = 0) -> None:
        stats = self.stats
        stats.copies += result.copies
        stats.duplicates += result.duplicates
        if replay:
            stats.replayed += result.inserted
            REPLAYED.inc(result.inserted)
        else:
            stats.recorded += result.inserted
        RECORDED.inc(result.inserted)
        if result.duplicates:
            DUPLICATES.inc(result.duplicates)
        if result.rejected:
            self._lose_rows(result.rejected, REJECTED, run_idx)
            logger.warning(
                "%d exchanges refused by the database (first: %s)",
                len(result.rejected),
                result.rejected_reason,
            )

    async def _to_spill(self, rows: list[Row]) -> None:
        spill = self._spill
        if spill is None:
            self._lose_rows(rows, DATABASE_UNAVAILABLE)
            return
        try:
            written = await asyncio.to_thread(spill.append, rows)
        except Exception as exc:
            logger.error("cannot write the spill in %s: %s", spill.directory, exc)
            self._lose_rows(rows, SPILL_ERROR)
            return
        self.stats.spilled += written
        SPILLED.inc(written)
        SPILL_BYTES.set(spill.size)
        if written < len(rows):
            self._lose_rows(rows[written:], SPILL_FULL)

    def _mark_down(self, exc: BaseException) -> None:
        assert self._loop is not None
        if self._db_up:
            if is_unavailable(exc):
                logger.warning(
                    "database %s unavailable (%s); spilling to %s until it is back",
                    self._dsn,
                    _reason(exc),
                    self._spill.directory if self._spill is not None else "nowhere",
                )
            else:
                logger.error("cannot write exchanges to %s; spilling", self._dsn, exc_info=exc)
            self._backoff = _BACKOFF_FIRST
        self._db_up = False
        DATABASE_UP.set(0)
        self._probe_at = self._loop.time() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    async def _probe(self) -> None:
        assert self._loop is not None
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                await ping(self._engine)
        except Exception:
            self._probe_at = self._loop.time() + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
        else:
            logger.info("database %s is back; replaying the spill", self._dsn)
            self._db_up = True
            self._backoff = _BACKOFF_FIRST
            self._seal_needed = True
            self._replay_due = True
            DATABASE_UP.set(1)
            self._wake.set()
        finally:
            self._probing = False

    # -- housekeeping: probe, losses, replay --------------------------------------------------

    def _replay_ready(self, now: float) -> bool:
        return (
            self._spill is not None
            and self._db_up
            and not self._closing
            and not self._flush_requested
            and len(self._items) < self._batch_size  # live exchanges go first
            and (self._replay_due or self._segment is not None or now >= self._next_rescan)
        )

    async def _housekeeping(self) -> None:
        assert self._loop is not None
        loop = self._loop
        QUEUE_DEPTH.set(len(self._items))
        now = loop.time()
        if not self._db_up and not self._probing and now >= self._probe_at:
            self._probing = True
            self._tasks.spawn(self._probe(), name="probe")
        if self._losses and now >= self._next_loss_flush:
            self._next_loss_flush = now + self._loss_interval
            await self._store_losses()
        if self._spill is not None and self._seal_needed:
            self._seal_needed = False
            try:
                await asyncio.to_thread(self._spill.seal)
            except OSError as exc:
                logger.error("cannot seal the spill segment: %s", exc)
        # Replay while the live queue is short: live exchanges always go first.
        while self._replay_ready(loop.time()):
            if not await self._replay_step():
                break

    async def _store_losses(self) -> None:
        """Add the pending loss counters to run_losses; while the database is away, spill
        them. Never raises: what cannot be stored or spilled stays pending."""
        if not self._losses:
            return
        if self._db_up:
            losses, self._losses = self._losses, {}
            try:
                async with asyncio.timeout(self._write_timeout):
                    await add_losses(self._engine, None, losses)
            except BaseException as exc:
                for key, n in losses.items():
                    self._losses[key] = self._losses.get(key, 0) + n
                if not isinstance(exc, Exception):
                    raise
                if is_unavailable(exc) or not is_rejection(exc):
                    self._mark_down(exc)
                else:  # e.g. a run was deleted: store the others' run by run
                    self._losses.clear()
                    await self._store_losses_by_run(losses)
        if self._losses and not self._db_up:
            await self._spill_losses()

    async def _store_losses_by_run(self, losses: dict[tuple[int, str], int]) -> None:
        by_run: dict[int, dict[tuple[int, str], int]] = {}
        for key, n in losses.items():
            by_run.setdefault(key[0], {})[key] = n
        for run_id, counters in by_run.items():
            try:
                async with asyncio.timeout(self._write_timeout):
                    await add_losses(self._engine, None, counters)
            except Exception as exc:
                if is_rejection(exc):
                    logger.error(
                        "loss counters of run %d refused by the database (%s), dropped: %s",
                        run_id,
                        _reason(exc),
                        {reason: n for (_, reason), n in counters.items()},
                    )
                    continue
                for key, n in counters.items():
                    self._losses[key] = self._losses.get(key, 0) + n
                self._mark_down(exc)

    async def _spill_losses(self) -> bool:
        spill = self._spill
        if spill is None or not self._losses:
            return not self._losses
        losses, self._losses = self._losses, {}
        try:
            await asyncio.to_thread(spill.append_losses, losses)
        except OSError as exc:
            logger.error("cannot spill loss counters: %s", exc)
            for key, n in losses.items():
                self._losses[key] = self._losses.get(key, 0) + n
            return False
        SPILL_BYTES.set(spill.size)
        return True

    async def _replay_step(self) -> bool:
        """Replay one chunk of the spill; False when there is nothing (more) to do now."""
        spill = self._spill
        assert spill is not None and self._loop is not None
        if self._segment is None:
            self._replay_due = False
            self._next_rescan = self._loop.time() + _RESCAN_INTERVAL
            try:
                self._segment = await asyncio.to_thread(self._claim_next, spill)
            except OSError as exc:
                logger.error("cannot read the spill in %s: %s", spill.directory, exc)
                return False
            SPILL_BYTES.set(spill.size)
            if self._segment is None:
                return False
            logger.info("replaying spill segment %s", self._segment.name)
        segment = self._segment
        try:
            chunk = await asyncio.to_thread(segment.read, self._batch_size)
        except (OSError, ValueError) as exc:
            logger.error("cannot read spill segment %s: %s", segment.name, exc)
            await asyncio.to_thread(segment.release)
            self._segment = None
            return False
        try:
            if chunk.rows:
                run_idx = segment.columns.index("run_id")
                async with asyncio.timeout(self._write_timeout):
                    result = await write_exchanges(
                        self._engine,
                        chunk.rows,
                        columns=segment.columns,
                        copy_timeout=self._write_timeout,
                    )
                self._count(result, replay=True, run_idx=run_idx)
            segment.advance(chunk)
            if not chunk.eof:
                return True
            if segment.losses:
                async with asyncio.timeout(self._write_timeout):
                    added = await add_spilled_losses(self._engine, segment.name, segment.losses)
                if not added:
                    logger.info("loss counters of spill segment %s already stored", segment.name)
        except Exception as exc:
            self._mark_down(exc)
            return False
        self._segment = None
        try:
            if not segment.readable:
                target = await asyncio.to_thread(spill.set_aside, segment)
                logger.error(
                    "%s is not a readable spill segment; set aside as %s", segment.path, target.name
                )
                return True
            if segment.corrupt:
                # No run to charge them to: Prometheus and the log only.
                DROPPED.labels("spill_corrupt").inc(segment.corrupt)
                logger.warning(
                    "spill segment %s had %d unreadable lines (a write cut short?)",
                    segment.name,
                    segment.corrupt,
                )
            await asyncio.to_thread(spill.remove, segment)
        except OSError as exc:
            logger.error("cannot remove replayed spill segment %s: %s", segment.path, exc)
            return False
        self._replay_due = True  # look for the next one straight away
        SPILL_BYTES.set(spill.size)
        logger.info("spill segment %s replayed", segment.name)
        return True

    @staticmethod
    def _claim_next(spill: Spill) -> Segment | None:
        for path in spill.segments():
            segment = spill.claim(path)
            if segment is not None:
                return segment
        return None


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return text.splitlines()[0][:200]


RECORDER_KEY: Final = web.AppKey("recorder", Recorder)


def recorder_ctx(
    config: RecordConfig,
    *,
    engine: AsyncEngine | web.AppKey[AsyncEngine],
    default_spill_dir: str | Path | None = None,
    drain_timeout: float = 10.0,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp ``cleanup_ctx`` that owns the recorder: started at startup and stored
    under ``RECORDER_KEY``; at cleanup, it stops accepting, drains and closes.

    ``engine`` is the engine or the ``AppKey`` it is stored under (its own cleanup_ctx must
    come first, so that it is disposed after the recorder is closed).
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        eng = app[engine] if isinstance(engine, web.AppKey) else engine
        recorder = Recorder(
            eng, config, default_spill_dir=default_spill_dir, drain_timeout=drain_timeout
        )
        await recorder.start()
        app[RECORDER_KEY] = recorder
        yield
        await recorder.close()

    return ctx
