"""The loss ledger: every exchange that is not recorded is counted, per run and reason, in
Prometheus at once and in ``run_losses`` by the next ``store`` (or in the spill while the
database is away). Counters that cannot be stored or spilled stay pending; none is dropped
except those the database refuses for good (their run no longer exists), which are logged.

Losses of exchanges the recorder had accepted (``accepted=True``) are reported to
``on_durable`` once their counters are stored or spilled: until then the intent log
(``proxy.recording.intents``) keeps them outstanding, so that a kill in between still counts
them (as ``process_killed``) on the next start.

Reasons (``graygate.vocabulary.LossReason``, the values of ``run_losses.reason``):

- ``queue_full``: the queue was full when the proxy submitted the exchange
- ``spill_full``: the database was away and the spill had reached ``record.spill_max_bytes``
- ``spill_error``: the database was away and writing the spill failed (disk error)
- ``database_unavailable``: the database was away and no spill is configured
- ``encode_error``: the record could not be turned into a row (bad value)
- ``rejected``: PostgreSQL refused the row itself (e.g. its run no longer exists)
- ``closed``: submitted after the recorder stopped accepting (shutdown)
- ``process_killed``: accepted by a process that died (SIGKILL, OOM) before writing it;
  counted by the next recorder on the same spill directory (``proxy.recording.intents``)
- ``run_closed``: its run was closed (``graygate runs close``): the proxy served it, the
  store dropped it at write and counted it in ``run_losses`` (``store.exchanges``); the
  recorder only adds it to Prometheus

(and, in Prometheus only, ``spill_corrupt``: spilled lines that could not be read back.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final

from prometheus_client import Counter

from graygate.errors import one_line
from graygate.vocabulary import LossReason
from proxy.recording.series import DROPPED
from proxy.spill import Spill
from store.exchanges import Row, is_rejection, is_unavailable

__all__ = [
    "CLOSED",
    "DATABASE_UNAVAILABLE",
    "ENCODE_ERROR",
    "PROCESS_KILLED",
    "QUEUE_FULL",
    "REASONS",
    "REJECTED",
    "RUN_CLOSED",
    "SPILL_CORRUPT",
    "SPILL_ERROR",
    "SPILL_FULL",
    "LossKey",
    "LossLedger",
]

logger = logging.getLogger(__name__)

# The reasons stored in run_losses are graygate.vocabulary.LossReason; these names stay
# for the recorder's modules.
QUEUE_FULL: Final = LossReason.QUEUE_FULL
SPILL_FULL: Final = LossReason.SPILL_FULL
SPILL_ERROR: Final = LossReason.SPILL_ERROR
DATABASE_UNAVAILABLE: Final = LossReason.DATABASE_UNAVAILABLE
ENCODE_ERROR: Final = LossReason.ENCODE_ERROR
REJECTED: Final = LossReason.REJECTED
CLOSED: Final = LossReason.CLOSED
PROCESS_KILLED: Final = LossReason.PROCESS_KILLED
RUN_CLOSED: Final = LossReason.RUN_CLOSED  # counted by the store at write (store.exchanges)
SPILL_CORRUPT: Final = "spill_corrupt"  # Prometheus only: no run to charge, not a LossReason
REASONS: Final = tuple(LossReason)

LossKey = tuple[int, str]  # (run_id, reason)
WriteLosses = Callable[[Mapping[LossKey, int]], Awaitable[object]]
OnDurable = Callable[[Mapping[int, int]], None]

_children: dict[str, Counter] = {reason: DROPPED.labels(reason) for reason in REASONS}


class LossLedger:
    """Loss counters waiting to be stored, and the totals since start (``dropped``)."""

    def __init__(self, on_durable: OnDurable | None = None) -> None:
        self._pending: dict[LossKey, int] = {}
        self._accepted: dict[int, int] = {}  # run -> accepted exchanges among the pending
        self._on_durable = on_durable
        self.dropped: dict[str, int] = {}  # reason -> count since start

    def __bool__(self) -> bool:
        return bool(self._pending)

    @property
    def pending(self) -> dict[LossKey, int]:
        """A copy of the counters not yet stored."""
        return dict(self._pending)

    def lose(
        self,
        run_id: int,
        reason: str,
        n: int = 1,
        *,
        accepted: bool = False,
        counted: bool = False,
    ) -> None:
        """Count ``n`` exchanges of ``run_id`` lost for ``reason``; ``accepted``: the recorder
        had accepted them (they are outstanding in the intent log until stored here);
        ``counted``: Prometheus has them already (a proxy process counted them when it
        dropped them, ``proxy.recording.link``)."""
        if n <= 0:
            return
        if accepted:
            self._accepted[run_id] = self._accepted.get(run_id, 0) + n
        key = (run_id, reason)
        pending = self._pending
        pending[key] = pending.get(key, 0) + n
        dropped = self.dropped
        dropped[reason] = dropped.get(reason, 0) + n
        if counted:
            return
        child = _children.get(reason)
        if child is None:
            child = _children[reason] = DROPPED.labels(reason)
        child.inc(n)

    def lose_rows(
        self, rows: Sequence[Row], reason: str, run_idx: int = 0, *, accepted: bool = False
    ) -> None:
        """Count each of ``rows`` (its run is the column ``run_idx``) lost for ``reason``."""
        by_run: dict[int, int] = {}
        for row in rows:
            run_id = int(row[run_idx])
            by_run[run_id] = by_run.get(run_id, 0) + 1
        for run_id, n in by_run.items():
            self.lose(run_id, reason, n, accepted=accepted)

    def _take(self) -> tuple[dict[LossKey, int], dict[int, int]]:
        losses, self._pending = self._pending, {}
        accepted, self._accepted = self._accepted, {}
        return losses, accepted

    def _restore(self, losses: Mapping[LossKey, int], accepted: Mapping[int, int]) -> None:
        pending = self._pending
        for key, n in losses.items():
            pending[key] = pending.get(key, 0) + n
        mine = self._accepted
        for run_id, n in accepted.items():
            mine[run_id] = mine.get(run_id, 0) + n

    def _durable(self, accepted: Mapping[int, int]) -> None:
        if accepted and self._on_durable is not None:
            self._on_durable(accepted)

    async def store(self, write: WriteLosses, *, write_timeout: float) -> Exception | None:
        """Add the pending counters with ``write`` (each call bounded by ``write_timeout``).
        None when done; else the exception that says the database is away, the counters
        kept pending.

        When the database refuses them (a run was deleted), they are written run by run and
        the refused runs' counters are logged and dropped."""
        if not self._pending:
            return None
        losses, accepted = self._take()
        try:
            async with asyncio.timeout(write_timeout):
                await write(losses)
        except BaseException as exc:
            if not isinstance(exc, Exception) or is_unavailable(exc) or not is_rejection(exc):
                self._restore(losses, accepted)
                if not isinstance(exc, Exception):
                    raise
                return exc
            return await self._store_by_run(write, losses, accepted, write_timeout)
        self._durable(accepted)
        return None

    async def _store_by_run(
        self,
        write: WriteLosses,
        losses: Mapping[LossKey, int],
        accepted: Mapping[int, int],
        write_timeout: float,
    ) -> Exception | None:
        by_run: dict[int, dict[LossKey, int]] = {}
        for key, n in losses.items():
            by_run.setdefault(key[0], {})[key] = n
        failure: Exception | None = None
        for run_id, counters in by_run.items():
            mine = {run_id: accepted[run_id]} if run_id in accepted else {}
            if failure is not None:  # the database is away: keep the rest for later
                self._restore(counters, mine)
                continue
            try:
                async with asyncio.timeout(write_timeout):
                    await write(counters)
            except Exception as exc:
                if is_rejection(exc):
                    logger.error(
                        "loss counters of run %d refused by the database (%s), dropped: %s",
                        run_id,
                        one_line(exc),
                        {reason: n for (_, reason), n in counters.items()},
                    )
                    self._durable(mine)  # as final as it gets: logged
                    continue
                self._restore(counters, mine)
                failure = exc
                continue
            self._durable(mine)
        return failure

    async def spill(self, spill: Spill | None) -> bool:
        """Move the pending counters to ``spill`` (replayed with it, added once). False when
        some stay pending (no spill, or it cannot be written)."""
        if not self._pending:
            return True
        if spill is None:
            return False
        losses, accepted = self._take()
        try:
            await asyncio.to_thread(spill.append_losses, losses)
        except OSError as exc:
            logger.error("cannot spill loss counters: %s", one_line(exc))
            self._restore(losses, accepted)
            return False
        self._durable(accepted)
        return True

    def describe(self) -> dict[str, int]:
        """The pending counters as ``{"run/reason": n}``, for a log line."""
        return {f"{run}/{reason}": n for (run, reason), n in self._pending.items()}
