"""The record writer's side of the pipe: read frames, build records, hand them to the
recorder, until the proxy closes the pipe (or dies: end of file either way).

Runs in the writer process (``graygate.record_writer``). Each ``EXCHANGE`` frame
(``proxy.recording.handover``) becomes the :class:`proxy.exchange.Exchange` it was made of,
then its record (``RecordBuilder.build``: decode, redact, endpoint, storable header text),
then ``Recorder.submit``; each ``LOSSES`` frame is charged to the recorder's loss ledger
(``Recorder.charge``). The pipe is read every ``POLL_S`` when found empty (a write does not
wake the writer), and only while the recorder's queue has room: when the
database is slow the pipe fills, then the proxy's own bounded queue, and the proxy drops
(and counts) what does not fit: the bound the request path sees is the proxy's.

After each frame, :class:`TakenCounter` (8 bytes of memory shared with the proxy) says how
many frames the writer has taken: should the writer die, the proxy counts the frames it
wrote and the writer never took as lost; what the writer took and had not made durable its
intent log charges (``proxy.recording.intents``).
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import struct
from typing import TYPE_CHECKING, Final

from graygate.errors import one_line
from proxy.recording.handover import EXCHANGE, LOSSES, UNREADABLE, decode_exchange, frames
from proxy.recording.ledger import ENCODE_ERROR

if TYPE_CHECKING:
    from proxy.recorder import Recorder
    from proxy.recording.building import RecordBuilder

__all__ = ["POLL_S", "READ_BYTES", "TakenCounter", "take_frames"]

logger = logging.getLogger(__name__)

READ_BYTES: Final = 1 << 20
# The pipe is read every POLL_S when it was found empty, not on each write: a sleeping
# reader is not woken by the proxy's every write (a context switch per exchange at one
# connection, on a shared core), and it takes the frames in batches. The pipe (1 MiB)
# holds ~10 ms of a proxy process's peak many times over.
POLL_S: Final = 0.005
_COUNT = struct.Struct("<q")


class TakenCounter:
    """The count of frames the writer has taken, in shared memory: a ``memfd`` the proxy
    creates and passes to the writer. Written by the writer, read by the proxy once the
    writer has died (and now and then while it runs, to forget what it has taken). A second
    word says the writer's recorder runs (``ready``)."""

    __slots__ = ("_map", "fd")

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            fd = os.memfd_create("graygate-writer-taken", 0)
            os.ftruncate(fd, 2 * _COUNT.size)
        self.fd = fd
        self._map: mmap.mmap | None = mmap.mmap(fd, 2 * _COUNT.size)

    @property
    def value(self) -> int:
        m = self._map
        return 0 if m is None else int(_COUNT.unpack_from(m, 0)[0])

    @property
    def ready(self) -> bool:
        m = self._map
        return m is not None and bool(_COUNT.unpack_from(m, _COUNT.size)[0])

    def mark_ready(self) -> None:
        m = self._map
        if m is not None:
            _COUNT.pack_into(m, _COUNT.size, 1)

    def set(self, n: int) -> None:
        m = self._map
        if m is not None:
            _COUNT.pack_into(m, 0, n)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def take_frames(
    fd: int,
    recorder: Recorder,
    builder: RecordBuilder,
    taken: TakenCounter,
    *,
    buffer: bytes = b"",
) -> int:
    """Read ``fd`` to its end (``buffer``: bytes read already), taking every frame; the
    number of frames taken."""
    os.set_blocking(fd, False)
    buf = bytearray(buffer)
    count = 0
    failed = 0
    unreadable = 0
    first = ""
    while True:
        # Read only while the queue has room: the proxy's bound then holds (module doc).
        # The recorder has no event for room; this polls only while its queue is full.
        while recorder.queue_room <= 0:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        try:
            chunk = os.read(fd, READ_BYTES)
        except BlockingIOError:
            await asyncio.sleep(POLL_S)
            continue
        if not chunk:
            break
        buf += chunk
        end = 0
        for after, message in frames(buf):
            end = after
            kind = message[0] if type(message) is tuple and message else None
            if kind == EXCHANGE:
                while recorder.queue_room <= 0:  # noqa: ASYNC110 (as above)
                    await asyncio.sleep(0.005)
                try:
                    record = builder.build(decode_exchange(message))
                except Exception as exc:
                    recorder.charge(builder.run_id, ENCODE_ERROR, 1, counted=False)
                    if not failed:
                        trace = message[1] if len(message) > 1 else "?"
                        first = f"{trace!r}: {one_line(exc)}"
                    failed += 1
                else:
                    recorder.submit(record)  # a refusal is counted by the recorder
            elif kind == LOSSES and _is_losses(message):
                _, run_id, reason, n = message
                recorder.charge(run_id, reason, n)
            else:
                # Not a frame this writer can read (a bug on one side): the exchange it
                # may have carried is lost, and counted; the frames after it still count.
                recorder.charge(builder.run_id, ENCODE_ERROR, 1, counted=False)
                if not unreadable:
                    logger.error(
                        "record writer: a frame it cannot read (%s), counted as lost",
                        "not marshal data" if message is UNREADABLE else f"kind {kind!r}",
                    )
                unreadable += 1
            count += 1
            taken.set(count)
        if end:
            del buf[:end]
        if failed:  # one line per read, never one per exchange
            logger.warning("cannot build the record of %d exchanges (first: %s)", failed, first)
            failed = 0
    if unreadable > 1:
        logger.error("record writer: %d frames it could not read, counted as lost", unreadable)
    if buf:
        logger.error("record writer: %d bytes of a partial frame at the end of the pipe", len(buf))
    return count


def _is_losses(message: tuple[object, ...]) -> bool:
    return (
        len(message) == 4
        and type(message[1]) is int
        and type(message[2]) is str
        and type(message[3]) is int
        and message[3] >= 0
    )
