"""The spill side of the recorder: rows go to the spill (``proxy.spill``) while the database
is away, and are replayed into it once it is back, oldest segment first.

``SpillWriter.write`` appends rows and counts what cannot be spilled in the ledger.
``Replayer.step`` replays one chunk of one claimed segment; a segment is deleted once its rows
and then its loss counters are stored. Replay is idempotent: rows already stored are skipped
by the writer (unique key), and a segment's loss counters are added once (``add_losses`` is
keyed by the segment's name). A failure of the database propagates out of ``step`` with the
segment still claimed and its position unchanged: the next ``step`` retries that chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from graygate.errors import one_line
from proxy.recording.ledger import (
    DATABASE_UNAVAILABLE,
    SPILL_CORRUPT,
    SPILL_ERROR,
    SPILL_FULL,
    LossKey,
    LossLedger,
)
from proxy.recording.series import DROPPED, SPILL_BYTES, SPILLED
from proxy.spill import Segment, Spill
from store.exchanges import Row, WriteResult

__all__ = ["RESCAN_INTERVAL", "Replayer", "SpillWriter"]

logger = logging.getLogger(__name__)

RESCAN_INTERVAL: Final = 30.0  # look for segments left by other processes sharing the directory

WriteRows = Callable[[list[Row], tuple[str, ...]], Awaitable[WriteResult]]
AddSegmentLosses = Callable[[str, Mapping[LossKey, int]], Awaitable[bool]]
CountResult = Callable[[WriteResult, int], None]


class SpillWriter:
    """Rows (accepted by this recorder) to the spill; what does not fit, or cannot be
    written, is counted lost."""

    def __init__(self, spill: Spill | None, ledger: LossLedger) -> None:
        self.spill = spill
        self._ledger = ledger

    async def write(self, rows: list[Row]) -> int:
        """Spill ``rows``; the count written (the rest are counted in the ledger)."""
        spill = self.spill
        if spill is None:
            self._ledger.lose_rows(rows, DATABASE_UNAVAILABLE, accepted=True)
            return 0
        try:
            written = await asyncio.to_thread(spill.append, rows)
        except Exception as exc:
            logger.error("cannot write the spill in %s: %s", spill.directory, one_line(exc))
            self._ledger.lose_rows(rows, SPILL_ERROR, accepted=True)
            return 0
        SPILLED.inc(written)
        SPILL_BYTES.set(spill.size)
        if written < len(rows):
            self._ledger.lose_rows(rows[written:], SPILL_FULL, accepted=True)
        return written


class Replayer:
    """Replays the spill directory's segments, one chunk per ``step`` (see the module
    docstring). ``due`` says whether there may be something to replay."""

    def __init__(
        self,
        spill: Spill,
        *,
        chunk_rows: int,
        write_rows: WriteRows,
        add_losses: AddSegmentLosses,
        count: CountResult,
        rescan_interval: float = RESCAN_INTERVAL,
    ) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
        self._spill = spill
        self._chunk_rows = chunk_rows
        self._write_rows = write_rows
        self._add_losses = add_losses
        self._count = count
        self._rescan_interval = rescan_interval
        self._segment: Segment | None = None
        self._replay_due = True
        self._seal_needed = False
        self._next_rescan = 0.0

    def due(self, now: float) -> bool:
        """Something may wait: asked for, a segment half done, or time to look again."""
        return self._replay_due or self._segment is not None or now >= self._next_rescan

    def database_back(self) -> None:
        """The database answers again: seal the segment being written so that it can be
        replayed, and look for segments at once."""
        self._seal_needed = True
        self._replay_due = True

    async def seal_if_needed(self) -> None:
        if not self._seal_needed:
            return
        self._seal_needed = False
        try:
            await asyncio.to_thread(self._spill.seal)
        except OSError as exc:
            logger.error("cannot seal the spill segment: %s", one_line(exc))

    async def step(self) -> bool:
        """Replay one chunk; False when there is nothing (more) to do now. Raises what the
        database raised (see the module docstring)."""
        spill = self._spill
        if self._segment is None:
            self._replay_due = False
            self._next_rescan = asyncio.get_running_loop().time() + self._rescan_interval
            try:
                self._segment = await asyncio.to_thread(self._claim_next)
            except OSError as exc:
                logger.error("cannot read the spill in %s: %s", spill.directory, one_line(exc))
                return False
            SPILL_BYTES.set(spill.size)
            if self._segment is None:
                return False
            logger.info("replaying spill segment %s", self._segment.name)
        segment = self._segment
        try:
            chunk = await asyncio.to_thread(segment.read, self._chunk_rows)
        except (OSError, ValueError) as exc:
            logger.error("cannot read spill segment %s: %s", segment.name, one_line(exc))
            await asyncio.to_thread(segment.release)
            self._segment = None
            return False
        if chunk.rows:
            run_idx = segment.columns.index("run_id")
            result = await self._write_rows(chunk.rows, segment.columns)
            self._count(result, run_idx)
        segment.advance(chunk)
        if not chunk.eof:
            return True
        if segment.losses:
            added = await self._add_losses(segment.name, segment.losses)
            if not added:
                logger.info("loss counters of spill segment %s already stored", segment.name)
        self._segment = None
        return await self._finish(segment)

    async def _finish(self, segment: Segment) -> bool:
        spill = self._spill
        try:
            if not segment.readable:
                target = await asyncio.to_thread(spill.set_aside, segment)
                logger.error(
                    "%s is not a readable spill segment; set aside as %s", segment.path, target.name
                )
                return True
            if segment.corrupt:
                # No run to charge them to: Prometheus and the log only.
                DROPPED.labels(SPILL_CORRUPT).inc(segment.corrupt)
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

    def _claim_next(self) -> Segment | None:
        spill = self._spill
        for path in spill.segments():
            segment = spill.claim(path)
            if segment is not None:
                return segment
        return None

    async def release(self) -> None:
        """Give back the segment being replayed (at close); the next replayer resumes it."""
        if self._segment is not None:
            await asyncio.to_thread(self._segment.release)
            self._segment = None
