"""The bounded queue and its batches, with no database."""

from __future__ import annotations

import asyncio

import pytest

from proxy.recording.batching import Batcher

# Generous bounds so that a batcher that waits when it should not fails the test, not hangs it.
LONG = 60.0


async def test_the_queue_is_bounded_at_queue_size() -> None:
    batcher: Batcher[int] = Batcher(queue_size=3, batch_size=2, flush_interval=LONG)
    assert [batcher.offer(i) for i in range(5)] == [True, True, True, False, False]
    assert len(batcher) == 3
    assert batcher.batch_waiting
    assert await batcher.collect(0.0) == [0, 1]
    assert batcher.offer(3)  # room again
    assert batcher.drain() == [2, 3] and len(batcher) == 0


async def test_a_full_batch_is_cut_without_waiting_for_the_interval() -> None:
    batcher: Batcher[int] = Batcher(queue_size=100, batch_size=4, flush_interval=LONG)
    for i in range(10):
        batcher.offer(i)
    async with asyncio.timeout(5):
        assert await batcher.collect(0.0) == [0, 1, 2, 3]
        assert await batcher.collect(0.0) == [4, 5, 6, 7]


async def test_a_short_batch_is_cut_when_the_interval_has_passed() -> None:
    batcher: Batcher[str] = Batcher(queue_size=100, batch_size=50, flush_interval=0.02)
    batcher.offer("a")
    batcher.offer("b")
    async with asyncio.timeout(5):
        assert await batcher.collect(0.0) == ["a", "b"]


async def test_the_writer_waits_for_a_first_item_then_for_the_batch() -> None:
    batcher: Batcher[int] = Batcher(queue_size=100, batch_size=3, flush_interval=LONG)
    async with asyncio.timeout(5):
        assert await batcher.collect(0.0) == []  # empty, no idle wait
        waiting = asyncio.create_task(batcher.collect(LONG))
        await asyncio.sleep(0)
        for i in range(3):  # the third fills the batch and wakes the writer
            batcher.offer(i)
            await asyncio.sleep(0)
        assert await waiting == [0, 1, 2]


async def test_hurry_cuts_the_batch_at_once() -> None:
    batcher: Batcher[int] = Batcher(queue_size=100, batch_size=50, flush_interval=LONG)
    batcher.offer(1)
    waiting = asyncio.create_task(batcher.collect(LONG))
    await asyncio.sleep(0)
    assert not waiting.done()
    async with asyncio.timeout(5):
        with batcher.hurry():
            assert batcher.hurried
            assert await waiting == [1]
    assert not batcher.hurried


async def test_close_cuts_the_batch_and_stops_idle_waits() -> None:
    batcher: Batcher[int] = Batcher(queue_size=100, batch_size=50, flush_interval=LONG)
    batcher.offer(1)
    waiting = asyncio.create_task(batcher.collect(LONG))
    await asyncio.sleep(0)
    batcher.close()
    async with asyncio.timeout(5):
        assert await waiting == [1]
        assert await batcher.collect(LONG) == []  # closing: no idle wait
    assert batcher.closing


async def test_wake_returns_an_idle_writer_empty_handed() -> None:
    batcher: Batcher[int] = Batcher(queue_size=10, batch_size=5, flush_interval=LONG)
    waiting = asyncio.create_task(batcher.collect(LONG))
    await asyncio.sleep(0)
    batcher.wake()
    async with asyncio.timeout(5):
        assert await waiting == []


@pytest.mark.parametrize(
    ("queue_size", "batch_size", "interval"), [(0, 1, 1.0), (1, 0, 1.0), (1, 1, 0.0)]
)
def test_bad_bounds_are_refused(queue_size: int, batch_size: int, interval: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        Batcher(queue_size=queue_size, batch_size=batch_size, flush_interval=interval)
