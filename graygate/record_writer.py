"""The record writer process: one per proxy process, started by it (``graygate record-writer``,
hidden; ``proxy.recording.link.WriterLink``).

It reads its setup (:class:`WriterSetup`, the first frame of the pipe: pickled by its own
parent), starts the :class:`proxy.recorder.Recorder` (batches, COPY, health and backoff,
spill and replay, loss ledger, intent log, version tally), says so in the shared counter,
then takes the pipe's frames until its end (``proxy.recording.intake``): records built here,
off the proxy's event loop. At the end of the pipe (the proxy closed it, or died) it closes
the recorder (what is queued is stored, or spilled) and exits.

SIGTERM and SIGINT are ignored: the writer ends when the pipe does, after the proxy has
drained its mirrors (a Ctrl-C reaches the whole process group; the proxy decides).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import pickle
import signal
from dataclasses import dataclass
from pathlib import Path

from config.schema import GraygateConfig
from graygate.errors import ConfigError
from graygate.processes import run_async
from proxy.recorder import Recorder
from proxy.recording.building import RecordBuilder
from proxy.recording.handover import FRAME_HEAD
from proxy.recording.intake import TakenCounter, take_frames
from store.engine import create_engine

__all__ = ["WriterSetup", "run"]

logger = logging.getLogger(__name__)

_GC_THRESHOLD = (50_000, 10, 10)


@dataclass(frozen=True, slots=True)
class WriterSetup:
    """What the writer needs from its proxy process."""

    cfg: GraygateConfig
    database_url: str
    run_id: int
    spill_dir: str | None
    drain_timeout: float = 10.0

    def dumps(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)


def _read_exact(fd: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError("the pipe ended before the writer's setup")
        out += chunk
    return bytes(out)


def run(fd: int, taken_fd: int) -> int:
    """Serve the pipe ``fd`` to its end; the exit code."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.set_blocking(fd, True)
    (size,) = FRAME_HEAD.unpack(_read_exact(fd, FRAME_HEAD.size))
    # The setup comes from the parent that created this pipe (not from the network).
    setup = pickle.loads(_read_exact(fd, size))
    if not isinstance(setup, WriterSetup):
        raise TypeError(f"the writer's setup is a {type(setup).__name__}")
    return run_async(lambda: _write(fd, taken_fd, setup))


async def _write(fd: int, taken_fd: int, setup: WriterSetup) -> int:
    cfg = setup.cfg
    engine = create_engine(setup.database_url, pool_size=2)
    taken = TakenCounter(taken_fd)
    try:
        recorder = Recorder(
            engine,
            cfg.record,
            default_spill_dir=Path(setup.spill_dir) if setup.spill_dir else None,
            drain_timeout=setup.drain_timeout,
            version_header=cfg.versions.header,
        )
        try:
            await recorder.start()
        except ConfigError as exc:
            logger.error("record writer: %s", exc)
            return 2
        builder = RecordBuilder.from_config(cfg, setup.run_id)
        # As the proxy does (proxy.app._GC_THRESHOLD): the startup heap (SQLAlchemy, the
        # driver, the config) frozen out of collection, the young generation collected
        # every 50 000 allocations: records and rows are born and die by the thousand.
        gc.freeze()
        gc.set_threshold(*_GC_THRESHOLD)
        taken.mark_ready()
        try:
            count = await take_frames(fd, recorder, builder, taken)
            logger.info("record writer: the pipe ended after %d frames; closing", count)
        finally:
            await asyncio.shield(recorder.close())
    finally:
        taken.close()
        os.close(fd)
        await engine.dispose()
    return 0
