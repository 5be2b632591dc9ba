"""The recorder's bounded queue, cut into batches: up to ``batch_size`` items, or what
arrived within ``flush_interval`` seconds of the first one, whichever comes first.

``offer`` never waits (the request path calls it); ``collect`` is awaited by the one writer.
A batch is cut early when someone ``hurry``s (a flush) or the batcher is ``close``d.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["Batcher"]

T = TypeVar("T")


class Batcher(Generic[T]):
    """A bounded FIFO that hands its items out in batches (see the module docstring)."""

    def __init__(self, *, queue_size: int, batch_size: int, flush_interval: float) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError(
                f"queue_size and batch_size must be at least 1, not {queue_size}, {batch_size}"
            )
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be positive, not {flush_interval!r}")
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._items: deque[T] = deque()
        self._wake = asyncio.Event()
        self._first_at = 0.0
        self._hurry = 0
        self._closing = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def hurried(self) -> bool:
        """True while someone waits for the queue to be written (``hurry``)."""
        return self._hurry > 0

    @property
    def batch_waiting(self) -> bool:
        """A whole batch is queued: the writer has work that should not wait."""
        return len(self._items) >= self.batch_size

    def offer(self, item: T) -> bool:
        """Queue ``item``; False (and nothing queued) when the queue is full. Never waits;
        call it from the event loop's thread."""
        items = self._items
        if len(items) >= self.queue_size:
            return False
        items.append(item)
        n = len(items)
        if n == 1:
            self._first_at = asyncio.get_running_loop().time()
            self._wake.set()
        elif n == self.batch_size:
            self._wake.set()
        return True

    def wake(self) -> None:
        """Wake the writer waiting in ``collect`` (it returns what it has, maybe nothing)."""
        self._wake.set()

    @contextlib.contextmanager
    def hurry(self) -> Iterator[None]:
        """While inside, batches are cut without waiting to fill."""
        self._hurry += 1
        self._wake.set()
        try:
            yield
        finally:
            self._hurry -= 1

    def close(self) -> None:
        """From now on, batches are cut at once and ``collect`` does not wait when empty."""
        self._closing = True
        self._wake.set()

    def drain(self) -> list[T]:
        """Take everything still queued (at close, for what the writer could not do)."""
        items = list(self._items)
        self._items.clear()
        return items

    async def collect(self, idle: float) -> list[T]:
        """The next batch. When the queue is empty, wait up to ``idle`` seconds for a first
        item (not at all once closing) and return [] if none came; else wait until the batch
        is full, ``flush_interval`` has passed since its first item, or someone hurries."""
        loop = asyncio.get_running_loop()
        items, wake = self._items, self._wake
        if not items:
            wake.clear()
            if idle > 0 and not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(idle):
                        await wake.wait()
            if not items:
                return []
        deadline = self._first_at + self.flush_interval
        while (
            len(items) < self.batch_size
            and not self._closing
            and not self._hurry
            and loop.time() < deadline
        ):
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await wake.wait()
        take = min(len(items), self.batch_size)
        return [items.popleft() for _ in range(take)]
