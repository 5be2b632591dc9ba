"""Run as a script by the tests: a recorder that accepts exchanges and is killed (SIGKILL)
before it writes the last of them.

    python killed_recorder.py DATABASE_URL SPILL_DIR RUN_ID WRITTEN UNWRITTEN

It submits WRITTEN records and flushes them, submits UNWRITTEN more (the batch waits for a
minute), prints "ready" and kills itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from config.schema import RecordConfig
from proxy.recorder import Recorder
from store.engine import create_engine
from tests.proxy.recording.rows import record


async def main(url: str, spill_dir: str, run_id: int, written: int, unwritten: int) -> None:
    engine = create_engine(url, pool_size=1)
    config = RecordConfig(batch_size=10_000, flush_interval_ms=60_000, spill_dir=spill_dir)
    recorder = Recorder(engine, config)
    await recorder.start()
    for i in range(written):
        assert recorder.submit(record(run_id, i))
    await recorder.flush()
    for i in range(written, written + unwritten):
        assert recorder.submit(record(run_id, i))
    print("ready", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    url, spill_dir, run_id, written, unwritten = sys.argv[1:]
    asyncio.run(main(url, spill_dir, int(run_id), int(written), int(unwritten)))
