"""Local-disk spill: where the recorder puts exchanges while PostgreSQL is away.

A spill directory holds segment files, named so that sorting them by name sorts them by age
(``<time_ns>-<pid>-<random>.spill``). A segment is append-only orjson lines:

- the first line is a header, ``{"graygate_spill": 1, "columns": [...]}``: the columns of the
  rows that follow (``store.exchanges.COLUMNS`` when it was written);
- a row is a JSON array in those columns' order; bytes are base64, times RFC 3339;
- loss counters are ``{"losses": [[run_id, reason, count], ...]}``.

The process writing a segment holds an exclusive ``flock`` on it; a replayer claims a
segment with a non-blocking ``flock`` too, so a segment is replayed by one process at a time
and never while it is being written, even when several processes share the directory. A
segment is deleted once it has been replayed.

A segment is fsynced when it is sealed (the database is back, the segment is full, or the
recorder closes): appends survive a crash of the process, not necessarily of the host.

Everything here is blocking file I/O: the recorder calls it through ``asyncio.to_thread``.
The directory's total size is bounded (``max_bytes``); rows beyond it are not written and the
caller counts them as lost.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Concatenate, Final, ParamSpec, TypeVar

import orjson

from store.exchanges import BYTES_COLUMNS, COLUMNS, TIME_COLUMNS, Row

__all__ = ["SEGMENT_SUFFIX", "Chunk", "Segment", "Spill"]

logger = logging.getLogger(__name__)

SEGMENT_SUFFIX: Final = ".spill"
_FORMAT = 1
_DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024

LossKey = tuple[int, str]
P = ParamSpec("P")
T = TypeVar("T")


def _encode_rows(rows: Iterable[Row], bytes_idx: Sequence[int]) -> list[bytes]:
    lines = []
    b64 = base64.b64encode
    for row in rows:
        values = list(row)
        for i in bytes_idx:
            value = values[i]
            if value is not None:
                values[i] = b64(value).decode("ascii")
        lines.append(orjson.dumps(values) + b"\n")
    return lines


def _encode_losses(losses: Mapping[LossKey, int]) -> bytes:
    items = [[run_id, reason, n] for (run_id, reason), n in sorted(losses.items()) if n > 0]
    return orjson.dumps({"losses": items}) + b"\n"


def _write_all(fh: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = fh.write(view)
        if n is None:  # pragma: no cover - only for non-blocking files
            raise OSError("short write to the spill")
        view = view[n:]


@dataclass(slots=True)
class Chunk:
    """Rows and loss counters read from a segment, and where reading stopped."""

    rows: list[Row]
    losses: dict[LossKey, int]
    end: int  # file offset after the chunk
    eof: bool
    corrupt: int = 0  # lines that could not be read (a torn last line after a crash)


@dataclass(slots=True)
class Segment:
    """A segment claimed for replay: its lock is held until ``release`` or removal."""

    path: Path
    fh: IO[bytes]
    columns: tuple[str, ...] = COLUMNS
    offset: int = 0  # where the next chunk starts
    losses: dict[LossKey, int] = field(default_factory=dict)  # read so far
    corrupt: int = 0
    readable: bool = True  # False: no header (not a spill, or cut short at creation)
    _bytes_idx: tuple[int, ...] = ()
    _time_idx: tuple[int, ...] = ()
    _header_read: bool = False

    @property
    def name(self) -> str:
        """The segment's identity (its file name without the suffix)."""
        return self.path.name.removesuffix(SEGMENT_SUFFIX)

    def _read_header(self) -> None:
        self.fh.seek(0)
        line = self.fh.readline()
        self._header_read = True
        self.offset = self.fh.tell()
        try:
            header = orjson.loads(line)
            columns = tuple(str(c) for c in header["columns"])
            if header.get("graygate_spill") != _FORMAT or "run_id" not in columns:
                raise ValueError("unknown spill format")
            if not set(columns) <= set(COLUMNS):
                raise ValueError(f"unknown columns {sorted(set(columns) - set(COLUMNS))}")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            logger.warning("spill segment %s has no readable header", self.path.name)
            self.corrupt += 1
            self.offset = -1  # nothing to read
            self.readable = False
            return
        self.columns = columns
        self._bytes_idx = tuple(i for i, c in enumerate(columns) if c in BYTES_COLUMNS)
        self._time_idx = tuple(i for i, c in enumerate(columns) if c in TIME_COLUMNS)

    def read(self, max_rows: int) -> Chunk:
        """Up to ``max_rows`` rows from ``offset`` on (loss lines are gathered on the way).
        Does not move ``offset``: call ``advance`` once the chunk is stored."""
        if not self._header_read:
            self._read_header()
        if self.offset < 0:
            return Chunk([], {}, -1, eof=True)
        fh = self.fh
        fh.seek(self.offset)
        rows: list[Row] = []
        losses: dict[LossKey, int] = {}
        corrupt = 0
        eof = False
        b64decode = base64.b64decode
        fromiso = datetime.fromisoformat
        while len(rows) < max_rows:
            line = fh.readline()
            if not line:
                eof = True
                break
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("torn line")
                value: Any = orjson.loads(line)
                if isinstance(value, list):
                    if len(value) != len(self.columns):
                        raise ValueError("row of the wrong width")
                    for i in self._bytes_idx:
                        if value[i] is not None:
                            value[i] = b64decode(value[i])
                    for i in self._time_idx:
                        if value[i] is not None:
                            value[i] = fromiso(value[i])
                    rows.append(tuple(value))
                else:
                    for run_id, reason, n in value["losses"]:
                        key = (int(run_id), str(reason))
                        losses[key] = losses.get(key, 0) + int(n)
            except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
                corrupt += 1
        return Chunk(rows, losses, fh.tell(), eof, corrupt)

    def advance(self, chunk: Chunk) -> None:
        self.offset = chunk.end
        self.corrupt += chunk.corrupt
        for key, n in chunk.losses.items():
            self.losses[key] = self.losses.get(key, 0) + n

    def release(self) -> None:
        """Give the segment back (unlock) without deleting it."""
        self.fh.close()


def _locked(method: Callable[Concatenate[Spill, P], T]) -> Callable[Concatenate[Spill, P], T]:
    @functools.wraps(method)
    def wrapper(self: Spill, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class Spill:
    """A bounded, append-only spill directory (see the module docstring)."""

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int,
        *,
        columns: Sequence[str] = COLUMNS,
        segment_bytes: int = _DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.columns = tuple(columns)
        self.segment_bytes = segment_bytes
        self._bytes_idx = tuple(i for i, c in enumerate(self.columns) if c in BYTES_COLUMNS)
        self._header = (
            orjson.dumps({"graygate_spill": _FORMAT, "columns": list(self.columns)}) + b"\n"
        )
        self._bytes = 0
        self._current: IO[bytes] | None = None
        self._current_path: Path | None = None
        self._current_size = 0
        self._opened = False
        # The recorder calls in from worker threads: one call at a time.
        self._lock = threading.RLock()

    @property
    def size(self) -> int:
        """Bytes in the directory's segments (this process's and any left by others)."""
        return self._bytes

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @_locked
    def open(self) -> None:
        """Create the directory (private to the user) and count what is already in it."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._bytes = sum(self._size(p) for p in self.directory.glob(f"*{SEGMENT_SUFFIX}"))
        self._opened = True

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def _new_segment(self) -> IO[bytes]:
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:12]}{SEGMENT_SUFFIX}"
        path = self.directory / name
        fh = open(path, "xb", buffering=0)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fh, self._header)
        except BaseException:
            fh.close()
            path.unlink(missing_ok=True)
            raise
        self._current, self._current_path = fh, path
        self._current_size = len(self._header)
        self._bytes += len(self._header)
        return fh

    @_locked
    def append(self, rows: Sequence[Row]) -> int:
        """Write as many of ``rows`` as the bound allows, in order; the count written."""
        if not rows or not self.enabled:
            return 0
        if not self._opened:
            self.open()
        lines = _encode_rows(rows, self._bytes_idx)
        room = self.max_bytes - self._bytes
        if self._current is None or self._current_size >= self.segment_bytes:
            room -= len(self._header)
        take = 0
        size = 0
        for line in lines:
            if size + len(line) > room:
                break
            size += len(line)
            take += 1
        if take == 0:
            return 0
        self._write(b"".join(lines[:take]))
        return take

    @_locked
    def append_losses(self, losses: Mapping[LossKey, int]) -> bool:
        """Write loss counters (a few bytes; allowed past the bound so they are never lost
        for want of room). False when spilling is disabled."""
        if not self.enabled:
            return False
        if not self._opened:
            self.open()
        if any(n > 0 for n in losses.values()):
            self._write(_encode_losses(losses))
        return True

    def _write(self, data: bytes) -> None:
        if self._current is not None and self._current_size >= self.segment_bytes:
            self.seal()
        fh = self._current if self._current is not None else self._new_segment()
        try:
            _write_all(fh, data)
        except BaseException:
            # All or nothing: a half-written line would corrupt the next one too.
            try:
                os.ftruncate(fh.fileno(), self._current_size)
            except OSError:
                self._current = self._current_path = None  # keep it, write a new one
                fh.close()
            raise
        self._current_size += len(data)
        self._bytes += len(data)

    @_locked
    def seal(self) -> None:
        """Finish the segment being written (fsync, unlock): it can now be replayed."""
        fh, self._current, self._current_path = self._current, None, None
        self._current_size = 0
        if fh is None:
            return
        try:
            os.fsync(fh.fileno())
        finally:
            fh.close()

    @_locked
    def segments(self) -> list[Path]:
        """Segments waiting for replay, oldest first (not the one being written here)."""
        if not self._opened:
            self.open()
        found = sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}"))
        # Recount: other processes sharing the directory add and delete segments too.
        self._bytes = sum(self._size(p) for p in found)
        return [p for p in found if p != self._current_path]

    @_locked
    def claim(self, path: Path) -> Segment | None:
        """Lock ``path`` for replay; None when another process holds it or it is gone."""
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Deleted (or replaced) by whoever held the lock before us: not ours to replay.
            if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
                raise FileNotFoundError(path)
        except (BlockingIOError, FileNotFoundError):
            fh.close()
            return None
        except BaseException:
            fh.close()
            raise
        return Segment(path=path, fh=fh)

    @_locked
    def remove(self, segment: Segment) -> None:
        """Delete a replayed segment (then unlock it)."""
        size = os.fstat(segment.fh.fileno()).st_size
        try:
            segment.path.unlink(missing_ok=True)
        finally:
            segment.release()
        self._bytes = max(0, self._bytes - size)

    @_locked
    def set_aside(self, segment: Segment) -> Path:
        """Rename an unreadable segment out of the way (``*.spill.corrupt``), keeping it for
        inspection, and unlock it."""
        size = os.fstat(segment.fh.fileno()).st_size
        target = segment.path.with_name(segment.path.name + ".corrupt")
        try:
            segment.path.rename(target)
        finally:
            segment.release()
        self._bytes = max(0, self._bytes - size)
        return target

    @_locked
    def close(self) -> None:
        self.seal()
