"""Benchmark: what recording costs the proxy's event loop per exchange, in process and
handed to the record writer process.

    python bench/bench_handover.py [--n N] [--repeats R] [--batch B]

One exchange as the proxy bench's (``bench_proxy.py``) look like: a GET with a dozen request
header fields, primary and canary answering a ~1.5 KB JSON order document with six fields
each. Measured on this process's CPU clock (``time.process_time``: other users' load does
not count), the best of R repeats of N exchanges:

- ``in-process``: ``RecordBuilder.build`` (decode, redact, endpoint, storable header text)
  and the row the COPY sends (``store.exchanges.exchange_row``): what the proxy's loop did
  per exchange before the writer process (the COPY itself aside);
- ``hand-over``: ``encode_exchange`` and the frame's share of one ``os.write`` of B frames
  (one event-loop iteration's worth) into a pipe that a ``cat`` process drains: what the
  proxy's loop does now;
- ``writer``: in the writer process, the frames parsed, each exchange rebuilt and built,
  and its row: the writer's CPU per exchange before the COPY.

Prints the figures, the ratio hand-over / in-process, and the machine's CPU model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_proxy
from multidict import CIMultiDict, CIMultiDictProxy, istr

from config.load import config_from_mapping
from graygate.vocabulary import Role
from proxy.capture import Capture
from proxy.exchange import Exchange
from proxy.recording.building import RecordBuilder
from proxy.recording.handover import decode_exchange, encode_exchange, frames
from proxy.tagging import Tags
from store.exchanges import exchange_row

ORDER = bench_proxy.order_document()  # the proxy bench's upstreams' answer


def _answer(body: bytes) -> Capture:
    cap = Capture(262_144)
    cap.status = 200
    cap.headers = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Server", "nginx/1.24.0"),
                ("Date", "Tue, 01 Dec 2026 21:00:00 GMT"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Connection", "keep-alive"),
                ("ETag", '"6757a1b2-5bb"'),
            ]
        )
    )
    cap.add(body)
    cap.latency = 0.0004
    return cap


def exchange(i: int) -> Exchange:
    ex = Exchange(
        received_at=time.time(),
        tags=Tags(uuid.uuid4().hex, os.urandom(8).hex(), None, "01", None),
        label="stable",
        method="GET",
        path=f"/api/orders/{i}",
        query="",
        headers=[
            (istr("Host"), "127.0.0.1:8080"),
            ("User-Agent", "wrk"),
            ("Accept", "application/json"),
            ("Accept-Encoding", "gzip"),
            (istr("X-Forwarded-For"), "127.0.0.1"),
            (istr("X-Forwarded-Proto"), "http"),
            (istr("X-Forwarded-Host"), "127.0.0.1:8080"),
            ("traceparent", f"00-{uuid.uuid4().hex}-{os.urandom(8).hex()}-01"),
            ("X-Trace-ID", uuid.uuid4().hex),
            ("X-Gray-Tag", "stable"),
        ],
        served_by=Role.PRIMARY,
    )
    ex.captures[Role.PRIMARY] = _answer(ORDER)
    ex.captures[Role.CANARY] = _answer(ORDER)
    return ex


def best(repeats: int, n: int, run: Callable[[], None]) -> float:
    """Microseconds of CPU per exchange, the best of ``repeats``."""
    out = []
    for _ in range(repeats):
        t = time.process_time()
        run()
        out.append((time.process_time() - t) / n * 1e6)
    return min(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16, help="frames per os.write")
    args = ap.parse_args()
    cfg = config_from_mapping(
        {
            "run": "bench",
            "upstreams": {"primary": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"},
        },
        env={},
    )
    builder = RecordBuilder.from_config(cfg, 1)
    exchanges = [exchange(i) for i in range(args.n)]

    def in_process() -> None:
        for ex in exchanges:
            exchange_row(builder.build(ex))

    drain = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert drain.stdin is not None
    fd = drain.stdin.fileno()
    batch = args.batch

    def hand_over() -> None:
        pending: list[bytes] = []
        for ex in exchanges:
            pending.append(encode_exchange(ex))
            if len(pending) >= batch:
                data = b"".join(pending)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                pending.clear()

    stream = b"".join(encode_exchange(ex) for ex in exchanges)

    def writer() -> None:
        for _, message in frames(stream):
            exchange_row(builder.build(decode_exchange(message)))

    try:
        a = best(args.repeats, args.n, in_process)
        b = best(args.repeats, args.n, hand_over)
        c = best(args.repeats, args.n, writer)
    finally:
        drain.stdin.close()
        drain.wait()
    size = len(stream) / args.n
    m = bench_proxy.machine()
    print(f"CPU: {m['cpu_model']} ({m['cpus']} CPUs), Python {m['python']}")
    print(f"{args.n} exchanges x {args.repeats} repeats (best), frame {size:.0f} bytes")
    print(f"in-process (build + row)             {a:8.1f} us/exchange on the proxy's loop")
    print(f"hand-over  (encode + write/{batch:<3})      {b:8.1f} us/exchange on the proxy's loop")
    print(f"writer     (parse + rebuild + build)  {c:8.1f} us/exchange in the writer process")
    print(f"ratio hand-over / in-process: {b / a:.3f}; writer / in-process: {c / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
