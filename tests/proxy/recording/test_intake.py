"""The writer's side of the pipe against frames it cannot read: a real pipe, a real
recorder and PostgreSQL. What the proxy wrote around a bad frame is recorded; the bad frame
is counted as lost, never the end of the writer."""

from __future__ import annotations

import asyncio
import marshal
import os

from sqlalchemy.ext.asyncio import AsyncEngine

from config.load import config_from_mapping
from config.schema import RecordConfig
from proxy.recorder import Recorder
from proxy.recording.building import RecordBuilder
from proxy.recording.handover import (
    EXCHANGE,
    UNREADABLE,
    encode_exchange,
    encode_losses,
    frame,
    frames,
)
from proxy.recording.intake import TakenCounter, take_frames
from proxy.recording.ledger import ENCODE_ERROR
from store.exchanges import count_exchanges, fetch_losses
from store.runs import ensure_run
from tests.proxy.recording.exchanges import exchange

BAD_FRAMES = [
    frame(b"\xff\x00garbage"),  # not marshal data
    frame(b""),  # empty
    frame(marshal.dumps(7)),  # marshal data, not a tuple
    frame(marshal.dumps(())),  # an empty tuple
    frame(marshal.dumps((99, "x"))),  # a kind nobody writes
    frame(marshal.dumps((EXCHANGE, "t"))),  # an exchange cut short
    frame(marshal.dumps((1, "run", "queue_full", 2))),  # LOSSES with a run id that is a str
    frame(marshal.dumps((1, 3, "queue_full", -5))),  # LOSSES of a negative count
    frame(marshal.dumps(marshal.dumps((EXCHANGE,)))[:3]),  # cut inside the marshal data
]


def test_unreadable_frames_keep_their_place() -> None:
    data = BAD_FRAMES[0] + encode_losses(3, "queue_full", 2)
    got = list(frames(data))
    assert got[0][1] is UNREADABLE
    assert got[1] == (len(data), (1, 3, "queue_full", 2))


async def test_bad_frames_are_counted_and_the_frames_around_them_recorded(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await ensure_run(engine, run_name, primary_url="http://p", canary_url="http://c")
    cfg = config_from_mapping(
        {
            "run": run_name,
            "upstreams": {"primary": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"},
        },
        env={},
    )
    builder = RecordBuilder.from_config(cfg, run_id)
    data = bytearray()
    for i, bad in enumerate(BAD_FRAMES):
        data += encode_exchange(exchange(i)) + bad
    data += encode_exchange(exchange(len(BAD_FRAMES))) + encode_losses(run_id, "queue_full", 4)
    read_end, write_end = os.pipe()
    taken = TakenCounter()
    async with Recorder(engine, RecordConfig(batch_size=1000, flush_interval_ms=50)) as rec:
        writer = asyncio.get_running_loop().run_in_executor(None, _write_all, write_end, data)
        count = await take_frames(read_end, rec, builder, taken)
        await writer
        os.close(read_end)
        await rec.flush()
    assert count == 2 * len(BAD_FRAMES) + 2 == taken.value
    taken.close()
    assert await count_exchanges(engine, run_id) == len(BAD_FRAMES) + 1
    losses = await fetch_losses(engine, run_id)
    assert losses == {ENCODE_ERROR: len(BAD_FRAMES), "queue_full": 4}, losses


def _write_all(fd: int, data: bytes | bytearray) -> None:
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)
