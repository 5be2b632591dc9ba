"""The proxy process's heartbeat, for the admin port served by another process.

When one ``graygate serve`` runs the proxy and the admin API, the admin API (and the
verdict it computes, the reports it renders) runs in a child process, so that nothing a
reviewer or a deployment pipeline asks for costs the users a millisecond. The admin port's
probes must still speak for the proxy: the proxy process writes one byte to a pipe every
:data:`BEAT_S` seconds once it is listening (:func:`beat`), and the child reads them
(:class:`Pulse`):

- ``/readyz`` is 503 until the first beat (the proxy is not listening yet) and once the
  beats are late by more than :data:`STALE_S` (a blocked or stopped proxy);
- ``/healthz`` is 503 once beats that had started are late by more than :data:`STALE_S`, or
  the pipe is closed (the proxy process is gone).

A pipe, not a port: nothing else can speak on it, and its end of file tells the child its
parent has gone even before the kernel's parent-death signal does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Final

__all__ = ["BEAT_S", "STALE_S", "Pulse", "beat"]

BEAT_S: Final = 1.0
# Late beats before the proxy counts as stalled: a loop blocked this long has already
# failed its users; shorter would call a busy one dead.
STALE_S: Final = 10.0


async def beat(fd: int, stop: asyncio.Event, every_s: float = BEAT_S) -> None:
    """Write one byte to ``fd`` every ``every_s`` s until ``stop``; then close it. A full
    pipe (a reader that stopped reading) drops the beat rather than blocking."""
    os.set_blocking(fd, False)
    try:
        while not stop.is_set():
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(fd, b".")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


class Pulse:
    """The reading end: when the last beat came, and whether the writer has gone."""

    __slots__ = ("_fd", "_loop", "closed", "last", "stale_s")

    def __init__(self, fd: int, stale_s: float = STALE_S) -> None:
        self._fd = fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stale_s = stale_s
        self.last: float | None = None  # time.monotonic() of the last beat
        self.closed = False

    def start(self) -> None:
        """Read beats on the running loop."""
        os.set_blocking(self._fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._read)

    def stop(self) -> None:
        if self._loop is not None and not self.closed:
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self.closed = True

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.last = time.monotonic()
            return
        # End of file: the proxy process closed its end (stopped, or died).
        assert self._loop is not None
        self._loop.remove_reader(self._fd)
        self.closed = True

    def late_s(self) -> float | None:
        """Seconds since the last beat; None before the first."""
        return None if self.last is None else time.monotonic() - self.last

    def not_alive(self) -> str | None:
        """Why ``/healthz`` fails (None: alive, or not started yet)."""
        if self.closed:
            return "the proxy process has stopped"
        late = self.late_s()
        if late is not None and late > self.stale_s:
            return f"the proxy process has not answered for {late:.0f} s"
        return None

    def not_ready(self) -> str | None:
        """Why ``/readyz`` fails (None: the proxy is listening and answering)."""
        if self.last is None and not self.closed:
            return "the proxy is not listening yet"
        return self.not_alive()
