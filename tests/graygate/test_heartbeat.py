"""The proxy's heartbeat over a real pipe, read on a real event loop with the real clock."""

from __future__ import annotations

import asyncio
import os

import pytest

from graygate.heartbeat import Pulse, beat


async def _until(check: object, within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_not_ready_before_the_first_beat_then_ready() -> None:
    read_fd, write_fd = os.pipe()
    pulse = Pulse(read_fd, stale_s=5.0)
    pulse.start()
    try:
        assert pulse.not_ready() == "the proxy is not listening yet"
        assert pulse.not_alive() is None  # starting up is not dead
        os.write(write_fd, b".")
        await _until(lambda: pulse.last is not None)
        assert pulse.not_ready() is None
        assert pulse.not_alive() is None
    finally:
        pulse.stop()
        os.close(write_fd)


async def test_late_beats_fail_both_probes_and_a_new_beat_heals() -> None:
    read_fd, write_fd = os.pipe()
    pulse = Pulse(read_fd, stale_s=0.2)
    pulse.start()
    try:
        os.write(write_fd, b".")
        await _until(lambda: pulse.last is not None)
        await asyncio.sleep(0.3)
        why = pulse.not_alive()
        assert why is not None and why.startswith("the proxy process has not answered for")
        assert pulse.not_ready() == why
        os.write(write_fd, b".")
        await _until(lambda: pulse.not_alive() is None)
        assert pulse.not_ready() is None
    finally:
        pulse.stop()
        os.close(write_fd)


async def test_a_closed_pipe_means_the_proxy_has_stopped() -> None:
    read_fd, write_fd = os.pipe()
    pulse = Pulse(read_fd)
    pulse.start()
    os.write(write_fd, b"...")
    os.close(write_fd)
    await _until(lambda: pulse.closed)
    assert pulse.not_alive() == "the proxy process has stopped"
    assert pulse.not_ready() == "the proxy process has stopped"
    pulse.stop()  # idempotent after end of file


async def test_beat_writes_until_stopped_then_closes_its_end() -> None:
    read_fd, write_fd = os.pipe()
    stop = asyncio.Event()
    task = asyncio.create_task(beat(write_fd, stop, every_s=0.01))
    await asyncio.sleep(0.1)
    stop.set()
    await task
    data = b""
    while chunk := os.read(read_fd, 4096):  # end of file: the writer closed its end
        data += chunk
    os.close(read_fd)
    assert set(data) == {ord(".")} and len(data) >= 2


async def test_beat_never_blocks_on_a_reader_that_stopped_reading() -> None:
    read_fd, write_fd = os.pipe()
    # Fill the pipe: a reader that never reads.
    os.set_blocking(write_fd, False)
    with pytest.raises(BlockingIOError):
        while True:
            os.write(write_fd, b"x" * 65536)
    stop = asyncio.Event()
    task = asyncio.create_task(beat(write_fd, stop, every_s=0.01))
    await asyncio.sleep(0.05)  # several beats dropped, none blocked the loop
    stop.set()
    await asyncio.wait_for(task, 2.0)
    os.close(read_fd)


async def test_beat_survives_a_reader_that_is_gone() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    stop = asyncio.Event()
    task = asyncio.create_task(beat(write_fd, stop, every_s=0.01))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 2.0)
