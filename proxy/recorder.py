"""Recording exchanges: a bounded queue, one writer, COPY batches, a spill when PostgreSQL
is away, and every exchange that is not recorded counted where the verdict can see it.

The request path calls ``Recorder.submit(record)``: it never waits; False means the record
was dropped (the queue is full, or the recorder is closed) and the loss is counted. One
writer task takes up to ``record.batch_size`` records, or what arrived within
``record.flush_interval_ms`` of the first (``proxy.recording.batching``), and stores them with
one ``COPY`` (``store.exchanges.write_exchanges``).

When PostgreSQL cannot take a batch (refused, reset, timeout, shutting down), the batch goes
to the spill (``proxy.spill``) and so do the next ones, without waiting on the database, while
a probe retries it with backoff (``proxy.recording.health``). Once it answers, the live queue
goes first and the spill is replayed in between, oldest segment first, each segment deleted
once stored (``proxy.recording.spilling``). Replay is idempotent: rows already stored are
skipped (unique ``(trace_id, run_id, span_id)``), and a segment's loss counters are added once
(``spill_replays``).

With ``record.bodies.sample`` below 1, an exchange's answers keep their bodies with that
probability (graygate's own randomness, as routing's sampling); the others' bodies are
replaced by their sha256 (``store.exchanges.exchange_row``) and judged from it. With
``versions.header``, the versions the answers name are tallied
(``proxy.recording.version_tally``) and stored with the loss counters.

Losses are counted per run in ``run_losses`` (``proxy.recording.ledger``, which lists the
reasons; flushed every ``loss_flush_interval`` seconds and at close; spilled when the database
is away), and in Prometheus (``proxy.recording.series``).

Shutdown (``close``): stop accepting, write what is queued (to the database, or to the spill
once ``drain_timeout`` has passed or while it is away), then persist the loss counters.

A process killed without warning (SIGKILL) cannot do that: with a spill directory, an intent
log there (``proxy.recording.intents``) keeps what was accepted and not yet written, and the
next recorder on that directory charges it to its runs as ``process_killed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import RecordConfig
from graygate.errors import ConfigError, one_line
from graygate.tasks import TaskSet
from graygate.values import RecordedExchange
from proxy.recording.batching import Batcher
from proxy.recording.health import DatabaseHealth
from proxy.recording.intents import IntentLog, KilledProcesses, runs_of
from proxy.recording.ledger import (
    CLOSED,
    ENCODE_ERROR,
    QUEUE_FULL,
    REJECTED,
    RUN_CLOSED,
    SPILL_ERROR,
    LossKey,
    LossLedger,
)
from proxy.recording.series import (
    BATCH_SECONDS,
    DATABASE_UP,
    DROPPED,
    DUPLICATES,
    QUEUE_DEPTH,
    RECORDED,
    REPLAYED,
    SPILL_BYTES,
    SPILLED,
)
from proxy.recording.spilling import Replayer, SpillWriter
from proxy.recording.version_tally import VersionTally
from proxy.routing import BUCKETS, random_bucket
from proxy.spill import Spill
from store.engine import censor_dsn, ping
from store.exchanges import (
    Row,
    WriteResult,
    add_losses,
    add_spilled_losses,
    exchange_row,
    is_unavailable,
    write_exchanges,
)
from store.run_versions import add_versions

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
    killed: int = 0  # accepted by killed processes, charged as process_killed on our start


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
        version_header: str | None = None,
    ) -> None:
        self._engine = engine
        self._config = config
        self._max_body = config.max_body_bytes
        # record.bodies.sample: the buckets (of routing's BUCKETS) whose bodies are kept.
        self._body_buckets = round(config.bodies.sample * BUCKETS)
        self._keep_differing = config.bodies.keep_differing
        self._versions = VersionTally(version_header) if version_header else None
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

        self._batcher: Batcher[RecordedExchange] = Batcher(
            queue_size=config.queue_size,
            batch_size=config.batch_size,
            flush_interval=config.flush_interval_ms / 1000.0,
        )
        self._intents: IntentLog | None = (
            IntentLog(self._spill.directory) if self._spill is not None else None
        )
        self._killed: KilledProcesses | None = None  # set at start, with the intent log
        self._ledger = LossLedger(on_durable=self._settle)
        self._health = DatabaseHealth(lambda: ping(engine))
        self._spill_writer = SpillWriter(self._spill, self._ledger)
        self._replayer: Replayer | None = (
            Replayer(
                self._spill,
                chunk_rows=config.batch_size,
                write_rows=self._write_replayed,
                add_losses=self._add_segment_losses,
                count=lambda result, run_idx: self._count(result, replay=True, run_idx=run_idx),
            )
            if self._spill is not None
            else None
        )

        self._progress = asyncio.Event()
        self._accepting = False
        self._closed = False
        self._close_deadline = float("inf")
        self._handled = 0
        self._inflight: list[Row] | None = None
        self._next_loss_flush = 0.0

        self._tasks = TaskSet("recorder")
        self._writer: asyncio.Task[None] | None = None
        self.stats = RecorderStats(dropped=self._ledger.dropped)

    # -- state ------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._batcher)

    @property
    def queue_room(self) -> int:
        """Exchanges the queue can take now."""
        return self._batcher.queue_size - len(self._batcher)

    @property
    def database_up(self) -> bool:
        return self._health.up

    @property
    def spill(self) -> Spill | None:
        return self._spill

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._writer is not None:
            raise RuntimeError("recorder already started")
        if self._spill is not None:
            try:
                await asyncio.to_thread(self._spill.open)
            except OSError as exc:
                raise ConfigError(
                    "record.spill_dir", f"cannot use {str(self._spill.directory)!r}: {exc}"
                ) from None
            SPILL_BYTES.set(self._spill.size)
        if self._intents is not None:
            try:
                await asyncio.to_thread(self._intents.open)
            except OSError as exc:
                raise ConfigError(
                    "record.spill_dir",
                    f"cannot use {str(self._intents.directory)!r}: {one_line(exc)}",
                ) from None
            self._killed = KilledProcesses(self._intents.directory, own=self._intents.path)
            await self._killed.scan()
        DATABASE_UP.set(1)
        self._accepting = True
        self._writer = self._tasks.spawn(self._run(), name="writer")
        logger.info(
            "recorder started: database %s, queue %d, batch %d, spill %s",
            self._dsn,
            self._batcher.queue_size,
            self._batcher.batch_size,
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
        if not self._accepting:
            self._ledger.lose(record.run_id, CLOSED)
            return False
        if not self._batcher.offer(record):
            self._ledger.lose(record.run_id, QUEUE_FULL)
            return False
        self.stats.accepted += 1
        if self._intents is not None:
            self._intents.accept(record.run_id)
        return True

    def charge(self, run_id: int, reason: str, n: int, *, counted: bool = True) -> None:
        """``n`` exchanges of ``run_id`` lost for ``reason`` before they reached this
        recorder (by a proxy process, which ``counted`` them in Prometheus; or by the writer
        process building their records): store them in ``run_losses`` with this
        recorder's. Outstanding in the intent log until stored,
        so that a writer killed first leaves them counted (as ``process_killed``)."""
        if n <= 0:
            return
        if self._intents is not None:
            self._intents.accept(run_id, n)
        self._ledger.lose(run_id, reason, n, accepted=True, counted=counted)

    def _settle(self, counts: Mapping[int, int]) -> None:
        """These exchanges (by run) are durable now: stored, spilled, or counted lost."""
        if self._intents is not None:
            self._intents.settle(counts)

    # -- flush and close --------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until everything submitted so far is stored (or spilled, or counted lost),
        without waiting for the batch to fill; then store the loss counters. Bound it with
        ``asyncio.timeout`` if need be."""
        target = self.stats.accepted
        with self._batcher.hurry():
            while self._handled < target:
                if self._writer is None or self._writer.done():
                    break
                self._progress.clear()
                await self._progress.wait()
        await self._store_losses()

    async def close(self) -> None:
        """Stop accepting, write what is queued (bounded by ``drain_timeout``; what cannot
        reach the database in time is spilled), store the loss counters, release the spill."""
        if self._closed:
            return
        self._closed = True
        self._accepting = False
        self._close_deadline = asyncio.get_running_loop().time() + self._drain_timeout
        self._batcher.close()
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
        leftovers.extend(self._convert(self._batcher.drain()))
        if leftovers:
            await self._to_spill(leftovers)
        await self._final_losses()
        if self._intents is not None:
            self._intents.close()
        if self._killed is not None:
            await self._killed.release()
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
        if not self._ledger:
            await self._store_versions()
            return
        if self._health.up:
            try:
                async with asyncio.timeout(5.0):
                    await self._store_losses()
            except TimeoutError:
                logger.warning("storing loss counters at close timed out")
        if self._ledger and not await self._ledger.spill(self._spill):
            logger.error(
                "loss counters lost at close (database away, no spill): %s",
                self._ledger.describe(),
            )

    async def _release_spill(self) -> None:
        if self._replayer is not None:
            await self._replayer.release()
        if self._spill is not None:
            try:
                await asyncio.to_thread(self._spill.close)
            except OSError as exc:
                logger.error("cannot close the spill: %s", one_line(exc))

    # -- the writer -------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        batcher = self._batcher
        while True:
            if batcher.closing and not len(batcher):
                break
            batch: list[RecordedExchange] = []
            try:
                replay = self._replay_ready(loop.time())
                batch = await batcher.collect(0.0 if replay else self._loss_interval)
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
                    self._ledger.lose_rows(self._inflight, SPILL_ERROR, accepted=True)
                    self._inflight = None
                self._handled += len(batch)
                self._progress.set()
                await asyncio.sleep(0.1)
        self._progress.set()

    def _convert(self, records: Sequence[RecordedExchange]) -> list[Row]:
        rows: list[Row] = []
        limit = self._max_body
        failed = 0
        first = ""
        sample = self._body_buckets
        versions = self._versions
        for record in records:
            if versions is not None:
                versions.note(record)
            try:
                keep = sample >= BUCKETS or random_bucket() < sample
                rows.append(
                    exchange_row(
                        record,
                        max_body_bytes=limit,
                        keep_bodies=keep,
                        keep_differing=self._keep_differing,
                    )
                )
            except Exception as exc:
                self._ledger.lose(record.run_id, ENCODE_ERROR, accepted=True)
                if not failed:
                    first = f"{getattr(record, 'trace_id', '?')}: {one_line(exc)}"
                failed += 1
        if failed:  # one line per batch, never one per exchange
            logger.warning("%d exchanges could not be encoded (first: %s)", failed, first)
        return rows

    async def _store(self, rows: list[Row]) -> None:
        now = asyncio.get_running_loop().time()
        closing = self._batcher.closing
        if self._health.up and not (closing and now >= self._close_deadline):
            timeout = self._write_timeout
            if closing:
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
                stored = runs_of(rows)
                for run_id, n in runs_of(result.rejected).items():  # settled with the losses
                    stored[run_id] -= n
                self._settle(stored)
                return
        self._inflight = None
        await self._to_spill(rows)

    async def _to_spill(self, rows: list[Row]) -> None:
        written = await self._spill_writer.write(rows)
        self.stats.spilled += written
        self._settle(runs_of(rows[:written]))

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
        if result.run_closed:
            # Already in run_losses (the store counted them): Prometheus only.
            DROPPED.labels(RUN_CLOSED).inc(result.run_closed)
        if result.rejected:
            # Replayed rows were settled when they were spilled (perhaps by another process).
            self._ledger.lose_rows(result.rejected, REJECTED, run_idx, accepted=not replay)
            logger.warning(
                "%d exchanges refused by the database (first: %s)",
                len(result.rejected),
                result.rejected_reason,
            )

    # -- the database's health ----------------------------------------------------------------

    def _mark_down(self, exc: BaseException) -> None:
        now = asyncio.get_running_loop().time()
        if self._health.up:
            if is_unavailable(exc):
                logger.warning(
                    "database %s unavailable (%s); spilling to %s until it is back",
                    self._dsn,
                    one_line(exc),
                    self._spill.directory if self._spill is not None else "nowhere",
                )
            else:
                logger.error("cannot write exchanges to %s; spilling", self._dsn, exc_info=exc)
        self._health.mark_down(now)

    async def _probe(self) -> None:
        if await self._health.probe():
            logger.info("database %s is back; replaying the spill", self._dsn)
            if self._replayer is not None:
                self._replayer.database_back()
            self._batcher.wake()

    # -- housekeeping: probe, losses, replay --------------------------------------------------

    def _replay_ready(self, now: float) -> bool:
        batcher = self._batcher
        return (
            self._replayer is not None
            and self._health.up
            and not batcher.closing
            and not batcher.hurried
            and not batcher.batch_waiting  # live exchanges go first
            and self._replayer.due(now)
        )

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        QUEUE_DEPTH.set(len(self._batcher))
        now = loop.time()
        if self._health.claim_probe(now):
            self._tasks.spawn(self._probe(), name="probe")
        if (self._ledger or self._versions) and now >= self._next_loss_flush:
            self._next_loss_flush = now + self._loss_interval
            await self._store_losses()
        killed = self._killed
        if killed is not None and self._health.up:
            if killed.scan_due(now):
                await killed.scan()
            if killed.pending:
                failure = await killed.charge(self._add_segment_losses)
                self.stats.killed = killed.charged
                if failure is not None:
                    self._mark_down(failure)
        replayer = self._replayer
        if replayer is None:
            return
        await replayer.seal_if_needed()
        # Replay while the live queue is short: live exchanges always go first.
        while self._replay_ready(loop.time()):
            try:
                if not await replayer.step():
                    break
            except Exception as exc:
                self._mark_down(exc)
                break

    async def _store_versions(self) -> None:
        """Add the versions tallied since the last flush to run_versions; kept for the next
        flush when the database cannot take them (never spilled: they are no loss)."""
        versions = self._versions
        if not versions or not self._health.up:
            return
        seen = versions.take()
        try:
            async with asyncio.timeout(self._write_timeout):
                await add_versions(self._engine, seen)
        except Exception as exc:
            versions.restore(seen)
            logger.warning("cannot store the versions seen yet: %s", one_line(exc))

    async def _store_losses(self) -> None:
        """Add the pending loss counters to run_losses (and the versions seen to
        run_versions); while the database is away, spill the counters. Never raises: what
        cannot be stored or spilled stays pending."""
        await self._store_versions()
        ledger = self._ledger
        if not ledger:
            return
        if self._health.up:
            failure = await ledger.store(self._add_losses, write_timeout=self._write_timeout)
            if failure is not None:
                self._mark_down(failure)
        if ledger and not self._health.up:
            await ledger.spill(self._spill)
            if self._spill is not None:
                SPILL_BYTES.set(self._spill.size)

    # -- what the parts write with --------------------------------------------------------------

    async def _add_losses(self, losses: Mapping[LossKey, int]) -> None:
        await add_losses(self._engine, None, losses)

    async def _write_replayed(self, rows: list[Row], columns: tuple[str, ...]) -> WriteResult:
        timeout = self._write_timeout
        async with asyncio.timeout(timeout):
            return await write_exchanges(self._engine, rows, columns=columns, copy_timeout=timeout)

    async def _add_segment_losses(self, name: str, losses: Mapping[LossKey, int]) -> bool:
        async with asyncio.timeout(self._write_timeout):
            return await add_spilled_losses(self._engine, name, losses)


RECORDER_KEY: Final = web.AppKey("recorder", Recorder)


def recorder_ctx(
    config: RecordConfig,
    *,
    engine: AsyncEngine | web.AppKey[AsyncEngine],
    default_spill_dir: str | Path | None = None,
    drain_timeout: float = 10.0,
    version_header: str | None = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp ``cleanup_ctx`` that owns the recorder: started at startup and stored
    under ``RECORDER_KEY``; at cleanup, it stops accepting, drains and closes.

    ``engine`` is the engine or the ``AppKey`` it is stored under (its own cleanup_ctx must
    come first, so that it is disposed after the recorder is closed).
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        eng = app[engine] if isinstance(engine, web.AppKey) else engine
        recorder = Recorder(
            eng,
            config,
            default_spill_dir=default_spill_dir,
            drain_timeout=drain_timeout,
            version_header=version_header,
        )
        await recorder.start()
        app[RECORDER_KEY] = recorder
        yield
        await recorder.close()

    return ctx
