"""The intent log: what this process accepted and has not yet made durable, kept where a
process killed without warning (SIGKILL, the OOM killer) leaves it for the next one to count.

Exchanges accepted by ``Recorder.submit`` live in memory until the writer stores them in
PostgreSQL, spills them, or counts them lost in ``run_losses``. A process that is killed loses
them; the intent log makes that loss counted rather than silent. It is one small file in the
spill directory per recorder, ``<time_ns>-<pid>-<random>.intents``, memory-mapped and of fixed
size (``HEADER`` plus ``slots`` slots of 16 bytes):

- header: magic ``GGINTNT1``, the number of slots, the outstanding count of runs that found no
  free slot (``overflow``: counted, but no run can be charged with it);
- slot: ``run_id``, outstanding (accepted, not yet durable) exchanges of that run; a slot whose
  count is 0 is free and is reused by the next run.

``accept`` (the request path: two dict look-ups and one 8-byte store into the mapping, no
system call) and ``settle`` (the writer, once a batch is stored or spilled, or once the loss
counters of the exchanges it lost are) update the mapping in place. The kernel keeps a shared
mapping's pages when the process dies, so the file holds the counts as they were at the kill
(a host crash is another matter, as for the spill).

The owner holds an exclusive ``flock`` on its file and deletes it at a clean close. A recorder
starting on the same directory (``claim_orphans``) takes the files whose lock it can get: their
owner is dead. Their outstanding counts are charged to their runs as ``process_killed``, once
(keyed by the file's name, like a spill segment's loss counters), and the files are deleted.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import mmap
import os
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from graygate.errors import one_line
from proxy.recording.ledger import PROCESS_KILLED, LossKey
from proxy.recording.series import DROPPED
from store.exchanges import Row, is_rejection

__all__ = [
    "DEFAULT_SLOTS",
    "HEADER",
    "INTENT_SUFFIX",
    "IntentLog",
    "KilledProcesses",
    "Orphan",
    "claim_orphans",
    "runs_of",
]

logger = logging.getLogger(__name__)

INTENT_SUFFIX: Final = ".intents"
DEFAULT_SLOTS: Final = 256  # runs with exchanges in flight at once in one process
MAX_SLOTS: Final = 65_536
_MAGIC: Final = b"GGINTNT1"
_HEAD = struct.Struct("<8sqq")  # magic, slots, overflow
_SLOT = struct.Struct("<qq")  # run_id, outstanding
_COUNT = struct.Struct("<q")
_pack_count = _COUNT.pack_into
HEADER: Final = _HEAD.size


class IntentLog:
    """This process's intent log (see the module docstring). Not thread-safe: call it from
    the event loop's thread."""

    def __init__(self, directory: str | Path, *, slots: int = DEFAULT_SLOTS) -> None:
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be between 1 and {MAX_SLOTS}, not {slots}")
        self.directory = Path(directory)
        self.slots = slots
        self.path: Path | None = None
        self._fh: IO[bytes] | None = None
        self._map: mmap.mmap | None = None
        self._overflow = slots  # index of the overflow counter in _out
        self._where: dict[int, int] = {}  # run -> slot (or _overflow)
        self._run_out: dict[int, int] = {}  # run -> outstanding
        self._out = [0] * (slots + 1)  # slot -> outstanding
        self._offsets = [self._offset(slot) for slot in range(slots + 1)]
        self._free = list(range(slots - 1, -1, -1))

    @property
    def size(self) -> int:
        """The file's size in bytes: fixed by ``slots``."""
        return HEADER + self.slots * _SLOT.size

    @property
    def outstanding(self) -> dict[int, int]:
        """Accepted, not yet durable, by run (overflowed runs included)."""
        return dict(self._run_out)

    def open(self) -> None:
        """Create, lock and map this process's file (blocking file I/O)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:12]}{INTENT_SUFFIX}"
        path = self.directory / name
        fh = open(path, "xb+", buffering=0)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fh.write(_HEAD.pack(_MAGIC, self.slots, 0) + bytes(self.slots * _SLOT.size))
            self._map = mmap.mmap(fh.fileno(), self.size)
        except BaseException:
            fh.close()
            path.unlink(missing_ok=True)
            raise
        self._fh, self.path = fh, path

    def _offset(self, slot: int) -> int:
        """Where slot ``slot``'s outstanding count is (the overflow's is in the header)."""
        if slot == self._overflow:
            return _HEAD.size - _COUNT.size
        return HEADER + slot * _SLOT.size + _COUNT.size

    def accept(self, run_id: int, n: int = 1) -> None:
        """``n`` exchanges of ``run_id`` accepted (the request path: one)."""
        m = self._map
        if m is None:
            return
        slot = self._where.get(run_id)
        if slot is None:
            slot = self._assign(m, run_id)
        self._run_out[run_id] += n
        outs = self._out
        out = outs[slot] = outs[slot] + n
        _pack_count(m, self._offsets[slot], out)

    def _assign(self, m: mmap.mmap, run_id: int) -> int:
        if self._free:
            slot = self._free.pop()
            _SLOT.pack_into(m, HEADER + slot * _SLOT.size, run_id, 0)
        else:
            slot = self._overflow
            logger.warning(
                "intent log full (%d runs in flight): exchanges of run %d counted without a run",
                self.slots,
                run_id,
            )
        self._where[run_id] = slot
        self._run_out[run_id] = 0
        return slot

    def settle(self, counts: Mapping[int, int]) -> None:
        """``counts[run]`` exchanges of each run are durable now (stored, spilled, or counted
        lost in durable loss counters)."""
        m = self._map
        if m is None:
            return
        for run_id, n in counts.items():
            slot = self._where.get(run_id)
            if slot is None or n <= 0:
                continue
            left = self._run_out[run_id]
            k = min(n, left)
            out = self._out[slot] - k
            self._out[slot] = out
            _COUNT.pack_into(m, self._offset(slot), out)
            if left == k:
                del self._where[run_id], self._run_out[run_id]
                if slot != self._overflow:
                    self._free.append(slot)
            else:
                self._run_out[run_id] = left - k

    def settle_rows(self, rows: Iterable[Row], run_idx: int = 0) -> None:
        """Settle one exchange per row (its run is the column ``run_idx``)."""
        self.settle(runs_of(rows, run_idx))

    def close(self) -> None:
        """At a clean close: delete the file, unless some exchanges are still outstanding
        (their loss counters could not be stored nor spilled): then leave it, for the next
        recorder on this directory to count them. Never raises."""
        m, fh, path = self._map, self._fh, self.path
        self._map = self._fh = None
        try:
            if m is not None:
                m.close()
            if path is not None and not any(self._out):
                path.unlink(missing_ok=True)
        except OSError as exc:  # the directory went bad under us: nothing more to do
            logger.error("cannot remove intent log %s: %s", path, one_line(exc))
        if path is not None and any(self._out):
            logger.error(
                "%d accepted exchanges not accounted for at close; left in %s for the next start",
                sum(self._out),
                path.name,
            )
        if fh is not None:
            fh.close()


def runs_of(rows: Iterable[Row], run_idx: int = 0) -> dict[int, int]:
    """How many of ``rows`` each run has."""
    counts: dict[int, int] = {}
    for row in rows:
        run_id = int(row[run_idx])
        counts[run_id] = counts.get(run_id, 0) + 1
    return counts


@dataclass(slots=True)
class Orphan:
    """The intent log of a dead process, locked by us until ``remove`` or ``release``."""

    path: Path
    fh: IO[bytes]
    counts: dict[int, int]  # run -> accepted, never made durable
    overflow: int  # the same, for runs that found no slot: no run to charge

    @property
    def name(self) -> str:
        """A key that is unique to this file (for adding its counts once)."""
        return "killed:" + self.path.name.removesuffix(INTENT_SUFFIX)

    def remove(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self.fh.close()

    def release(self) -> None:
        self.fh.close()


def _parse(data: bytes) -> tuple[dict[int, int], int]:
    if len(data) < HEADER:
        raise ValueError("shorter than its header")
    magic, slots, overflow = _HEAD.unpack_from(data)
    if magic != _MAGIC or not 1 <= slots <= MAX_SLOTS:
        raise ValueError("not an intent log")
    if len(data) != HEADER + slots * _SLOT.size:
        raise ValueError(f"{len(data)} bytes for {slots} slots")
    counts: dict[int, int] = {}
    for run_id, out in _SLOT.iter_unpack(data[HEADER:]):
        if out > 0:
            counts[run_id] = counts.get(run_id, 0) + out
    return counts, max(0, overflow)


def claim_orphans(directory: str | Path, exclude: Path | None = None) -> list[Orphan]:
    """The intent logs in ``directory`` whose owner is dead (we got their lock), with what
    they had outstanding. Unreadable ones are renamed ``*.intents.corrupt`` (blocking I/O)."""
    found: list[Orphan] = []
    for path in sorted(Path(directory).glob(f"*{INTENT_SUFFIX}")):
        if path == exclude:
            continue
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
                raise FileNotFoundError(path)  # removed by whoever held it before us
            data = fh.read(HEADER + MAX_SLOTS * _SLOT.size + 1)
        except (BlockingIOError, FileNotFoundError):
            fh.close()  # alive (locked), or gone
            continue
        except BaseException:
            fh.close()
            raise
        try:
            counts, overflow = _parse(data)
        except (ValueError, struct.error) as exc:
            target = path.with_name(path.name + ".corrupt")
            logger.error("%s is not a readable intent log (%s); set aside as %s", path, exc, target)
            try:
                path.rename(target)
            finally:
                fh.close()
            continue
        found.append(Orphan(path, fh, counts, overflow))
    return found


AddOnce = Callable[[str, Mapping[LossKey, int]], Awaitable[bool]]


class KilledProcesses:
    """Charges what dead processes' intent logs hold to their runs as ``process_killed``,
    once per file, while the database is up; the directory is looked at again every
    ``rescan_interval`` seconds (other processes may share it, and die)."""

    def __init__(
        self, directory: Path, *, own: Path | None = None, rescan_interval: float = 30.0
    ) -> None:
        self.directory = directory
        self._own = own
        self._rescan_interval = rescan_interval
        self._orphans: list[Orphan] = []
        self._next_scan = 0.0
        self.charged = 0  # exchanges charged to runs
        self.uncharged = 0  # exchanges of runs that had no slot: Prometheus and log only

    def scan_due(self, now: float) -> bool:
        return now >= self._next_scan

    @property
    def pending(self) -> bool:
        """Claimed files not charged yet."""
        return bool(self._orphans)

    async def scan(self) -> None:
        """Claim the intent logs of dead processes (blocking I/O in a thread)."""
        self._next_scan = asyncio.get_running_loop().time() + self._rescan_interval
        try:
            found = await asyncio.to_thread(claim_orphans, self.directory, self._own)
        except OSError as exc:
            logger.error("cannot read intent logs in %s: %s", self.directory, one_line(exc))
            return
        self._orphans.extend(found)

    async def charge(self, add: AddOnce) -> Exception | None:
        """Add every claimed file's counts with ``add`` (once per file name), then delete the
        file. None when done; else the exception that says the database is away."""
        while self._orphans:
            orphan = self._orphans[0]
            losses: dict[LossKey, int] = {
                (run_id, PROCESS_KILLED): n for run_id, n in orphan.counts.items()
            }
            try:
                added = await add(orphan.name, losses) if losses else True
            except Exception as exc:
                if not is_rejection(exc):
                    return exc
                logger.error(
                    "exchanges lost by a killed process refused by the database (%s): %s",
                    one_line(exc),
                    orphan.counts,
                )
                added = False
            self._orphans.pop(0)
            if added:
                total = sum(orphan.counts.values())
                self.charged += total
                DROPPED.labels(PROCESS_KILLED).inc(total + orphan.overflow)
                self.uncharged += orphan.overflow
                logger.warning(
                    "a killed recorder (%s) had accepted and not written %d exchanges "
                    "(by run: %s; no run known: %d): counted as %s",
                    orphan.path.name,
                    total + orphan.overflow,
                    orphan.counts,
                    orphan.overflow,
                    PROCESS_KILLED,
                )
            try:
                await asyncio.to_thread(orphan.remove)
            except OSError as exc:
                logger.error("cannot remove intent log %s: %s", orphan.path, one_line(exc))
        return None

    async def release(self) -> None:
        """Give back what is not charged yet (at close): the next start charges it."""
        orphans, self._orphans = self._orphans, []
        for orphan in orphans:
            await asyncio.to_thread(orphan.release)
