"""Run as a script by the tests: a proxy process's end of recording (a ``WriterLink`` and
its writer process) killed with SIGKILL while exchanges wait in its queue.

    python killed_proxy.py DATABASE_URL SPILL_DIR RUN_ID WRITTEN

It hands WRITTEN exchanges over and waits until the writer took them, stops the writer
(SIGSTOP), hands over exchanges until the pipe is full and the queue (queue_size 5) holds
5, one more (dropped: queue_full), prints "PIPED QUEUED WRITER_PID" and kills itself. The
test lets the writer go on (SIGCONT): it writes what is in the pipe.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from config.load import config_from_mapping
from graygate.record_writer import WriterSetup
from proxy.recording.link import WriterLink
from tests.proxy.recording.exchanges import exchange


async def main(url: str, spill_dir: str, run_id: int, written: int) -> None:
    cfg = config_from_mapping(
        {
            "run": "test",
            "upstreams": {"primary": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"},
            "record": {"flush_interval_ms": 20, "queue_size": 5},
        },
        env={},
    )
    link = WriterLink(
        run_id=run_id,
        queue_size=5,
        argv=[sys.executable, "-m", "graygate", "record-writer"],
        setup=WriterSetup(cfg, url, run_id, spill_dir).dumps(),
        intents_dir=spill_dir,
    )
    await link.start()
    await link.ready()
    for i in range(written):
        assert link.hand_over(exchange(i))
        await asyncio.sleep(0)  # written to the pipe once per loop iteration
    for _ in range(6000):
        if link.taken >= written:
            break
        await asyncio.sleep(0.01)
    pid = link.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    i = written
    while link.queued == 0:
        assert link.hand_over(exchange(i, body=b"x" * 60_000))
        i += 1
        await asyncio.sleep(0.001)
    while link.queued < 5:
        assert link.hand_over(exchange(i, body=b"x" * 60_000))
        i += 1
    assert not link.hand_over(exchange(i))
    piped = i - written - link.queued
    print(piped, link.queued, pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    url, spill_dir, run_id, written = sys.argv[1:]
    asyncio.run(main(url, spill_dir, int(run_id), int(written)))
