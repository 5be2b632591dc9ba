"""The proxy's end of recording: exchanges handed, as bytes, to a writer process.

``WriterLink.hand_over(ex)`` (``Proxy._finish``, once per exchange) encodes the exchange as
one frame of builtins (``proxy.recording.handover``) and queues it; once per event-loop
iteration the queue is written to a pipe whose other end is the record writer process
(``graygate.record_writer``: it builds the records and runs the ``Recorder``). Nothing is
decoded, redacted or matched here, and nothing ever waits: the pipe's end is non-blocking
(its buffer raised to ``PIPE_BYTES`` with ``F_SETPIPE_SZ``), what it cannot take now waits
in the queue, and the queue holds at most ``record.queue_size`` exchanges (the recorder's
bound, same meaning: exchanges waiting to be written). One more is dropped and counted as
the recorder counts a full queue: ``queue_full``, in Prometheus at once, and in
``run_losses`` through the writer (a ``LOSSES`` frame, sent with the next write).

The writer process is started by :meth:`WriterLink.start` (which waits until its recorder
runs: a spill directory it cannot use stops ``graygate serve`` as before) and watched:

- should it die (``EPIPE``, or its exit seen by the watch), the frames written into the pipe
  that it never took (a counter it keeps in shared memory, ``proxy.recording.intake``) are
  counted lost as ``process_killed``, as is a frame half written; one line is logged; a new
  writer is started after a backoff (``RESTART_DELAYS``: at most one start a second at
  first, one every 30 s when it keeps dying) and the queue goes to it. What the dead writer
  had taken and not made durable its intent log charges (``proxy.recording.intents``). The
  client is never failed for it: past the bound, exchanges are dropped and counted;
- ``close`` (after the proxy's mirrors are drained) writes the queue out (within
  ``drain_timeout``), closes the pipe, and waits for the writer to store or spill what it
  has and exit.

A proxy killed with SIGKILL closes the pipe too: the writer reads what is in it and writes
it. What was still in the proxy's queue, and the loss counters not yet sent, are in the
proxy's own intent log (``intents_dir``: the spill directory; accepted at ``hand_over``,
settled once written whole into a pipe): the next writer started on that directory charges
them as ``process_killed``, as it does a killed writer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from graygate.errors import ConfigError, one_line
from proxy.recording.handover import encode_exchange, encode_losses, frame
from proxy.recording.intake import TakenCounter
from proxy.recording.intents import IntentLog
from proxy.recording.ledger import CLOSED, ENCODE_ERROR, PROCESS_KILLED, QUEUE_FULL
from proxy.recording.series import DROPPED

if TYPE_CHECKING:
    from proxy.exchange import Exchange

__all__ = ["PIPE_BYTES", "RESTART_DELAYS", "LinkStats", "WriterLink"]

logger = logging.getLogger(__name__)

PIPE_BYTES: Final = 1 << 20  # asked of F_SETPIPE_SZ; Linux's pipe-max-size by default
RESTART_DELAYS: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # the nth restart in a row waits
_STEADY_S: Final = 60.0  # a writer that ran this long resets the restart delays
_WATCH_S: Final = 0.25
_F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)

_SETUP: Final = 0
_EXCHANGE: Final = 1
_LOSSES: Final = 2


@dataclass(slots=True)
class LinkStats:
    """What the link did since it started (tests, logs)."""

    handed: int = 0  # exchanges accepted into the queue
    sent: int = 0  # exchanges written whole into a pipe
    dropped: dict[str, int] = field(default_factory=dict)
    starts: int = 0  # writer processes started
    deaths: int = 0  # writer processes that died


class WriterLink:
    """The queue toward one record writer process, and that process (module docstring).
    ``argv`` runs the writer (``--fd`` and ``--taken-fd`` are appended); ``setup`` is the
    first frame it reads (its configuration, from ``graygate.record_writer``)."""

    def __init__(
        self,
        *,
        run_id: int,
        queue_size: int,
        argv: Sequence[str],
        setup: bytes,
        drain_timeout: float = 10.0,
        start_timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        pipe_bytes: int = PIPE_BYTES,
        intents_dir: str | Path | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        self._run_id = run_id
        self._queue_size = queue_size
        self._argv = list(argv)
        self._setup = frame(setup)
        self._drain_timeout = drain_timeout
        self._start_timeout = start_timeout
        self._env = dict(env) if env is not None else None
        self._pipe_bytes = pipe_bytes
        # What this process holds and no writer has yet: the queue and the loss counters
        # not yet sent (proxy.recording.intents; charged by the next start if we are killed).
        self._intents = IntentLog(intents_dir) if intents_dir is not None else None

        # The queue: (frame, kind, its loss key and count for a LOSSES frame).
        self._frames: deque[tuple[bytes, int, tuple[str, int] | None]] = deque()
        self._queued = 0  # EXCHANGE frames in the queue (the bound)
        self._offset = 0  # bytes of the first frame already written
        self._losses: dict[str, int] = {}  # reason -> dropped, not yet sent to a writer
        self._scheduled = False
        self._waiting = False  # add_writer is on
        self._empty = asyncio.Event()

        # The writer process and its pipe.
        self._proc: subprocess.Popen[bytes] | None = None
        self._wfd: int | None = None
        self._taken: TakenCounter | None = None
        self._sent = 0  # frames written whole into this pipe (setup excluded)
        self._sent_losses: deque[tuple[int, tuple[str, int]]] = deque()  # (seq, loss)
        self._started_at = 0.0
        self._restarts_in_row = 0
        self._restart: asyncio.TimerHandle | None = None
        self._reaping: list[subprocess.Popen[bytes]] = []

        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._closed_logged = False
        self.stats = LinkStats()

    # -- state --------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Exchanges in the queue (not yet written whole into the pipe)."""
        return self._queued

    @property
    def taken(self) -> int:
        """Frames the running writer has taken from its pipe."""
        return 0 if self._taken is None else self._taken.value

    @property
    def writer_pid(self) -> int | None:
        proc = self._proc
        return None if proc is None or proc.poll() is not None else proc.pid

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer process (exchanges handed over meanwhile wait in the queue);
        :meth:`ready` waits until its recorder runs."""
        if self._loop is not None:
            raise RuntimeError("writer link already started")
        self._loop = asyncio.get_running_loop()
        if self._intents is not None:
            try:
                await asyncio.to_thread(self._intents.open)
            except OSError as exc:
                raise ConfigError(
                    "record.spill_dir",
                    f"cannot use {str(self._intents.directory)!r}: {one_line(exc)}",
                ) from None
        self._spawn()

    async def ready(self) -> None:
        """Wait until the first writer's recorder runs; ``ConfigError`` when it exits
        first (a spill directory it cannot use: its log says why)."""
        if self._watch is not None:
            return
        proc, taken = self._proc, self._taken
        assert self._loop is not None and proc is not None and taken is not None
        deadline = time.monotonic() + self._start_timeout
        while not taken.ready:
            if proc.poll() is not None:
                raise ConfigError(
                    "record",
                    f"the record writer process exited with {proc.returncode} at start "
                    "(its log says why)",
                )
            if time.monotonic() > deadline:
                raise RuntimeError("the record writer process did not start in time")
            await asyncio.sleep(0.02)
        self._watch = self._loop.create_task(self._watching(), name="record-writer-watch")

    async def __aenter__(self) -> Self:
        """Started; not necessarily :meth:`ready`."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the request path ---------------------------------------------------------------------

    def hand_over(self, ex: Exchange) -> bool:
        """Queue ``ex`` for the writer; never waits. False: dropped, and counted."""
        if self._closed:
            self._drop(CLOSED)
            if not self._closed_logged:
                self._closed_logged = True
                logger.error("exchanges finished after the record writer was closed: not recorded")
            return False
        if self._queued >= self._queue_size:
            self._drop(QUEUE_FULL)
            return False
        try:
            data = encode_exchange(ex)
        except Exception:
            logger.exception("cannot encode exchange %s for the record writer", ex.tags.trace_id)
            self._drop(ENCODE_ERROR)
            return False
        self._frames.append((data, _EXCHANGE, None))
        self._queued += 1
        self.stats.handed += 1
        if self._intents is not None:
            self._intents.accept(self._run_id)
        if not self._scheduled and not self._waiting:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)
        return True

    def _drop(self, reason: str, n: int = 1) -> None:
        reason = str(reason)
        DROPPED.labels(reason).inc(n)
        dropped = self.stats.dropped
        dropped[reason] = dropped.get(reason, 0) + n
        if reason == CLOSED:
            return  # no writer left to tell
        self._hold_losses(reason, n)
        if not self._scheduled and not self._waiting and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _hold_losses(self, reason: str, n: int) -> None:
        self._losses[reason] = self._losses.get(reason, 0) + n
        if self._intents is not None:
            self._intents.accept(self._run_id, n)

    # -- writing ------------------------------------------------------------------------------

    def _flush(self) -> None:
        self._scheduled = False
        wfd = self._wfd
        if wfd is None:
            return  # no writer now: the restart flushes
        frames = self._frames
        if self._losses:
            for reason, n in self._losses.items():
                frames.append((encode_losses(self._run_id, reason, n), _LOSSES, (reason, n)))
            self._losses = {}
        if not frames:
            self._empty.set()
            return
        parts: list[bytes | memoryview] = []
        size = 0
        for data, _, _ in frames:
            part: bytes | memoryview = data
            if not parts and self._offset:
                part = memoryview(data)[self._offset :]
            parts.append(part)
            size += len(part)
            if size >= self._pipe_bytes:
                break
        try:
            written = os.write(wfd, parts[0] if len(parts) == 1 else b"".join(parts))
        except BlockingIOError:
            written = 0
        except OSError as exc:  # EPIPE: the writer is gone
            self._writer_died(f"closed its pipe ({exc.strerror})")
            return
        if written:
            self._consume(written)
        if frames:
            if not self._waiting:
                self._waiting = True
                assert self._loop is not None
                self._loop.add_writer(wfd, self._flush)
        else:
            self._stop_waiting()
            self._empty.set()

    def _consume(self, written: int) -> None:
        frames = self._frames
        offset = self._offset + written
        stats = self.stats
        handed = 0  # exchanges and losses now in a writer's hands
        while frames:
            data, kind, loss = frames[0]
            if offset < len(data):
                break
            offset -= len(data)
            frames.popleft()
            if kind == _EXCHANGE:
                self._queued -= 1
                self._sent += 1
                stats.sent += 1
                handed += 1
            elif kind == _LOSSES:
                assert loss is not None
                self._sent += 1
                handed += loss[1]
                self._sent_losses.append((self._sent, loss))
                if len(self._sent_losses) > 64 and self._taken is not None:
                    taken = self._taken.value
                    while self._sent_losses and self._sent_losses[0][0] <= taken:
                        self._sent_losses.popleft()
        self._offset = offset
        if handed and self._intents is not None:
            self._intents.settle({self._run_id: handed})

    def _stop_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            if self._wfd is not None and self._loop is not None:
                self._loop.remove_writer(self._wfd)

    # -- the writer process ---------------------------------------------------------------------

    def _spawn(self) -> None:
        rfd, wfd = os.pipe()
        taken: TakenCounter | None = None
        try:
            with contextlib.suppress(OSError):  # a smaller pipe is a shorter queue, no more
                fcntl.fcntl(wfd, _F_SETPIPE_SZ, self._pipe_bytes)
            os.set_blocking(wfd, False)
            taken = TakenCounter()
            argv = [*self._argv, "--fd", str(rfd), "--taken-fd", str(taken.fd)]
            proc = subprocess.Popen(
                argv, env=self._env, pass_fds=(rfd, taken.fd), stdin=subprocess.DEVNULL
            )
        except BaseException:
            os.close(wfd)
            if taken is not None:
                taken.close()
            raise
        finally:
            os.close(rfd)
        self._proc, self._wfd, self._taken = proc, wfd, taken
        self._sent = 0
        self._sent_losses.clear()
        self._started_at = time.monotonic()
        self.stats.starts += 1
        self._frames.appendleft((self._setup, _SETUP, None))
        self._offset = 0
        self._flush()
        logger.info("record writer process %d started", proc.pid)

    def _writer_died(self, how: str) -> None:
        proc, wfd, taken = self._proc, self._wfd, self._taken
        if proc is None or wfd is None or taken is None:
            return
        self._stop_waiting()
        os.close(wfd)
        self._wfd = None
        self._proc = None
        self._taken = None
        took = taken.value
        taken.close()
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGKILL)
        self._reaping.append(proc)
        self.stats.deaths += 1
        # What it never took: the frames written whole after the ones it took, and the
        # frame half written. LOSSES frames are sent again; exchanges are lost.
        lost = self._sent - took
        for seq, (reason, n) in self._sent_losses:
            if seq > took:
                lost -= 1
                self._hold_losses(reason, n)
        self._sent_losses.clear()
        frames = self._frames
        if self._offset and frames:
            _, kind, _ = frames[0]
            if kind == _EXCHANGE:
                frames.popleft()
                self._queued -= 1
                lost += 1
                if self._intents is not None:  # held again below, as a loss
                    self._intents.settle({self._run_id: 1})
        self._offset = 0
        if frames and frames[0][1] == _SETUP:
            frames.popleft()
        if lost > 0:
            self._drop(PROCESS_KILLED, lost)
        ran = time.monotonic() - self._started_at
        if ran >= _STEADY_S:
            self._restarts_in_row = 0
        delay = RESTART_DELAYS[min(self._restarts_in_row, len(RESTART_DELAYS) - 1)]
        self._restarts_in_row += 1
        if self._closing:
            delay = 0.0
        logger.error(
            "record writer process %d %s after %.1f s; %d exchanges it had not taken counted "
            "lost (process_killed); %d queued; starting another in %g s",
            proc.pid,
            how,
            ran,
            max(lost, 0),
            self._queued,
            delay,
        )
        assert self._loop is not None
        self._restart = self._loop.call_later(delay, self._respawn)

    def _respawn(self) -> None:
        self._restart = None
        if self._closed:
            return
        try:
            self._spawn()
        except OSError as exc:
            logger.error("cannot start the record writer process: %s; trying again", exc)
            assert self._loop is not None
            self._restart = self._loop.call_later(RESTART_DELAYS[-1], self._respawn)

    async def _watching(self) -> None:
        while True:
            await asyncio.sleep(_WATCH_S)
            proc = self._proc
            if proc is not None and proc.poll() is not None:
                self._writer_died(f"exited with {proc.returncode}")
            for dead in list(self._reaping):
                if dead.poll() is not None:
                    self._reaping.remove(dead)
                    self._forget(dead)

    @staticmethod
    def _forget(proc: subprocess.Popen[bytes]) -> None:
        """Its live gauges leave ``/metrics`` (Prometheus multiprocess mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]

    # -- close ----------------------------------------------------------------------------------

    async def close(self) -> None:
        """Write the queue out (bounded by ``drain_timeout``), close the pipe, and wait for
        the writer to store (or spill) what it has and exit."""
        if self._closed or self._loop is None:
            return
        self._closing = True
        loop = self._loop
        deadline = loop.time() + self._drain_timeout
        # A writer that never got ready is not started again (serve is failing).
        while (self._frames or self._losses) and self._watch is not None:
            if self._restart is not None:  # no waiting for the backoff now
                self._restart.cancel()
                self._respawn()
            left = deadline - loop.time()
            if left <= 0:
                break
            self._empty.clear()
            if not self._scheduled and not self._waiting:
                self._flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), min(left, _WATCH_S))
            proc = self._proc
            if proc is not None and proc.poll() is not None:
                self._writer_died(f"exited with {proc.returncode}")
        self._closed = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._queued and self._intents is None:
            closed = str(CLOSED)
            self.stats.dropped[closed] = self.stats.dropped.get(closed, 0) + self._queued
            DROPPED.labels(CLOSED).inc(self._queued)
        if self._queued or self._losses:
            # With an intent log, still outstanding there: the next start charges them.
            logger.error(
                "%d exchanges (and loss counters %s) could not reach the record writer within "
                "%g s: not recorded%s",
                self._queued,
                self._losses or "none",
                self._drain_timeout,
                "; left in the intent log for the next start" if self._intents else "",
            )
        self._stop_waiting()
        proc, wfd, taken = self._proc, self._wfd, self._taken
        self._proc = self._wfd = self._taken = None
        if wfd is not None:
            os.close(wfd)  # the writer reads to the end, stores or spills, exits
        if proc is not None and self._watch is None and proc.poll() is None:
            proc.kill()  # never ready (serve failed at start): it holds nothing yet
        if proc is not None:
            try:
                await asyncio.to_thread(proc.wait, self._drain_timeout + 30.0)
            except subprocess.TimeoutExpired:
                logger.error("record writer process %d did not exit; killing it", proc.pid)
                proc.kill()
                await asyncio.to_thread(proc.wait)
            if proc.returncode:
                logger.error("record writer process %d exited with %d", proc.pid, proc.returncode)
            self._forget(proc)
        if taken is not None:
            taken.close()
        for dead in self._reaping:
            await asyncio.to_thread(dead.wait)
            self._forget(dead)
        self._reaping.clear()
        if self._intents is not None:
            self._intents.close()
        s = self.stats
        logger.info(
            "record writer link closed: %d handed over, %d sent, dropped %s, %d writer restarts",
            s.handed,
            s.sent,
            s.dropped or "none",
            s.deaths,
        )
