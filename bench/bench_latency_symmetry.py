"""Benchmark: are the served side and the mirrored side timed alike?

    python bench/bench_latency_symmetry.py [--requests N] [--concurrency C,C,...]

Two identical upstream processes (each answers after 20 ms with 200 kB) behind graygate's
proxy app (in this process, recording into memory): the primary serves, the canary gets the
mirror. A load process sends N requests at each concurrency. Both sides are timed by the
upstream connection itself (first byte written to last byte read, minus time paused behind
a slow client), so identical services should read alike; the remaining gap is the event
loop's own delay in noticing the mirrored answer while it forwards the served one.

Prints, per concurrency, the median latency of each side and mirrored/served. Target: the
ratio <= 1.25 at concurrency 10 (the verdict's latency check compares canary vs secondary,
both mirrored, whenever a secondary is configured: that comparison has no such gap).
Exit code 0 when the target is met, 1 when missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.proxy.harness import LOAD_SCRIPT, Sink, delayed_upstream, make_cfg, proxy_for

__all__ = ["main"]

TARGET = 1.25


async def _measure(primary: str, canary: str, n: int, concurrency: int) -> tuple[float, float]:
    cfg = make_cfg(primary, canary, mirror={"timeout_ms": 10_000})
    sink = Sink()
    async with proxy_for(cfg, sink) as url:
        load = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LOAD_SCRIPT, f"{url}/d", str(n), str(concurrency)
        )
        await load.wait()
        await sink.wait(n - n % concurrency)
    served = sorted(
        r.primary.latency_ms for r in sink.records if r.primary and r.primary.latency_ms
    )
    mirrored = sorted(r.canary.latency_ms for r in sink.records if r.canary and r.canary.latency_ms)
    return served[len(served) // 2], mirrored[len(mirrored) // 2]


def _cpu() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


async def _run(n: int, levels: list[int]) -> int:
    ok = True
    print(f"machine: {_cpu()}, {os.cpu_count()} cores; {n} requests per level")
    print(f"{'concurrency':>11s} {'served p50 ms':>14s} {'mirrored p50 ms':>16s} {'ratio':>6s}")
    with delayed_upstream() as primary, delayed_upstream() as canary:
        for c in levels:
            served, mirrored = await _measure(primary, canary, n, c)
            ratio = mirrored / served
            if c == 10:
                ok = ratio <= TARGET
            print(f"{c:11d} {served:14.2f} {mirrored:16.2f} {ratio:6.2f}")
    print(f"target: mirrored/served <= {TARGET} at concurrency 10: {'met' if ok else 'missed'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", default="1,10,25")
    args = parser.parse_args(argv)
    return asyncio.run(_run(args.requests, [int(c) for c in args.concurrency.split(",")]))


if __name__ == "__main__":
    sys.exit(main())
