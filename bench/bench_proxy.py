"""Benchmark: graygate's request path against a direct upstream and nginx's ``mirror``.

    python bench/bench_proxy.py [--duration S] [--connections N] [--quick]
                                [--repeats R] [--pinning both|split|shared] [--slow-ms MS]
                                [--nice N] [--quiet-wait S] [--source DIR]

Starts everything itself on loopback, on random free ports, and removes it all at the end
(also on Ctrl-C or SIGTERM):

- a primary and a canary: nginx serving a static ~1.5 KB JSON order document (aiohttp when
  nginx is not installed; the output says which);
- a slow canary, 100x slower than the primary (a tiny uvloop HTTP/1.1 server that answers
  after a fixed delay: cheap in CPU, so that only its slowness differs);
- a scratch PostgreSQL database (dropped at the end) with graygate's schema
  (``graygate db upgrade``);
- graygate, ``graygate serve --role proxy`` with ``--processes 1`` and ``--processes 2``
  (mirror sample 1.0, GET mirrored, recorder on, no diff worker, no admin API), one
  process tree and one run per measurement;
- nginx's ``mirror`` directive as the reference (``bench/nginx/mirror.conf``: keep-alive
  pools, ``worker_processes`` = graygate's process count).

Measures with wrk (closed loop, ``--latency``), every variant warmed up first, variants
interleaved within each repeat: requests/s and p50/p99 at N connections for direct /
graygate 1 process / graygate 2 processes / nginx mirror; p50 at one connection for the
added latency; graygate 2 processes (and nginx, for reference) with the slow canary, at
the peak and, paced with a wrk ``delay()`` script, at half graygate-2p's peak rate; after
each graygate run, the exchanges recorded in the scratch database against the requests wrk
counted and ``run_losses`` by reason; CPU time per component and per core. The proxy's
CPU per request is its processes' ``utime + stime`` (``/proc/PID/stat``, every process of
its tree: graygate's processes, nginx's master and workers) over the measured window,
divided by the requests wrk counted in it.

CPU placement (printed in the output with the machine's CPU model and count):

- ``split``: the machine's CPUs are cut in two halves. The load side (wrk, the primary,
  the canary, the slow canary) runs on the first half, the system under test (graygate's
  processes, or nginx mirror's workers) on the second. On a 2-core machine: wrk +
  upstreams on CPU 0, the proxy on CPU 1. The proxy under test gets a core of its own,
  never fights the load generator, and each proxy gets the same core count (graygate's 2
  processes and nginx's 2 workers share one core). PostgreSQL is the machine's service,
  not started here: it is not pinned (its CPU time for the scratch database is reported).
- ``shared``: nothing pinned, wrk with one thread per CPU (up to 2): the scheduler decides,
  and the proxy under test may use every core (which it shares with the load side).
- ``both`` (default): every variant ``split``, then, in the same repeat, nginx mirror and
  graygate 1 and 2 processes again ``shared`` (``*-unpinned``): whether ``--processes 2``
  scales is only seen where the two processes can have two cores.

Noise: other users' processes are measured too. Each variant waits (``--quiet-wait``) for
their load to drop under 0.25 cores, and the figures are the medians of the samples during
which it stayed there (of all samples when none did). ``--nice -10`` (root) runs everything
the bench starts at a higher priority. ``--source DIR`` runs graygate from a copy of the
tree (``python -m graygate``), to measure a change before it lands.

Prints a table, the ratios against the targets and writes the figures to
``bench/results/proxy-<timestamp>.json``. Exit code 0 when every target is met, 1 when one
is missed, 2 when the bench itself failed.

Targets (issue 15): graygate's CPU per request <= 2x nginx mirror's (1 process against
nginx's 2 workers, pinned); graygate 2 processes >= 0.6 x nginx mirror's requests/s,
unpinned (pinned: >= 0.45, printed for reference); 2 processes >= 1.7 x 1 process,
unpinned; added p50 at one connection <= 0.3 ms over direct; the 100x slower canary changes
graygate-2p's p99 by < 10 % at half its peak rate (use ``--repeats 5``: the median of the
repeats, each repeat's change printed too); no exchange dropped by the recorder at the
peak rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["main"]

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
NGINX_DIR = BENCH_DIR / "nginx"
RESULTS_DIR = BENCH_DIR / "results"
PG_ADMIN_DSN = os.environ.get("GRAYGATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PATH = "/api/orders/12345"

TARGET_RPS_RATIO_PINNED = 0.45  # graygate 2p / nginx mirror, both on one core
TARGET_RPS_RATIO = 0.6  # graygate 2p / nginx mirror, unpinned
TARGET_SCALING = 1.7  # graygate 2p / graygate 1p, unpinned
TARGET_CPU_RATIO = 2.0  # graygate's CPU per request / nginx mirror's
BASELINE = "@base"  # the suffix of the variants run from --baseline's tree
TARGET_ADDED_P50_MS = 0.3
TARGET_SLOW_P99_CHANGE = 0.10
QUIET_CORES = 0.25  # other processes' load under which a measurement may start
NOISY_CORES = 0.25  # ... above which, during a measurement, its sample is flagged


# --------------------------------------------------------------------------- small helpers


# Scheduling priority (nice value) of everything the bench starts; set from --nice.
PRIORITY = {"nice": 0}


def placed(argv: list[str], cpus: str | None) -> list[str]:
    """``argv`` pinned to ``cpus`` (taskset) at the bench's priority (nice)."""
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    if PRIORITY["nice"]:
        argv = ["nice", "-n", str(PRIORITY["nice"]), *argv]
    return argv


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def order_document() -> bytes:
    """A deterministic ~1.5 KB JSON order, like the demo primary's."""
    items: list[dict[str, Any]] = [
        {
            "sku": f"SKU-{1000 + i}",
            "name": name,
            "qty": 1 + i % 3,
            "price": round(19.99 + 17.5 * i, 2),
            "currency": "EUR",
        }
        for i, name in enumerate(
            [
                "Mechanical keyboard",
                "USB-C hub, 7 ports",
                "27-inch monitor",
                "Noise-cancelling headphones",
                "Ergonomic mouse",
                "Laptop stand, aluminium",
                "Webcam 1080p",
                "Desk lamp with wireless charger",
            ]
        )
    ]
    subtotal = round(sum(i["qty"] * i["price"] for i in items), 2)
    doc = {
        "id": 12345,
        "request_id": "5f0c8a8e-8d0b-4f5e-9a55-0d5d4f7c2a11",
        "status": "confirmed",
        "stock_deducted": True,
        "customer": {
            "id": 987,
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "address": {
                "street": "12 Analytical Row",
                "city": "London",
                "zip": "N1 9GU",
                "country": "GB",
            },
        },
        "items": items,
        "subtotal": subtotal,
        "tax": round(subtotal * 0.19, 2),
        "total": round(subtotal * 1.19, 2),
        "created_at": "2025-03-14T09:26:53.589793Z",
        "updated_at": "2025-03-14T09:27:01.000000Z",
        "meta": {
            "served_by": "orders-7d9f",
            "region": "eu-west-1",
            "build": "2025.03.1",
            "cache": "miss",
            "trace": "none",
            "shard": 7,
        },
        "notes": "Leave at the front desk. " * 9,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def render(template: Path, **values: object) -> str:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    if "{{" in text:
        raise BenchError(
            f"{template.name}: unfilled placeholder in {text[text.index('{{') :][:40]}"
        )
    return text


# --------------------------------------------------------------------------- processes


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class Processes:
    """Every process the bench starts; stops them (by pid, their own tree only)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        cpus: str | None,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Child:
        argv = placed(argv, cpus)
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=self.workdir,
                start_new_session=True,  # a terminal's Ctrl-C reaches the bench only
            )
        child = Child(name, proc, log_path, stop_signal)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 30.0) -> int | None:
        import psutil

        if child not in self.children:
            return child.proc.returncode
        self.children.remove(child)
        if child.proc.poll() is not None:
            return child.proc.returncode
        try:
            tree = psutil.Process(child.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(child.stop_signal)
        try:
            code = child.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{child.name} (pid {child.pid}) did not stop in {timeout:.0f}s: killing it")
            child.proc.kill()
            code = child.proc.wait(timeout=10)
        for p in tree:  # what it started and left behind (it should have stopped them)
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    p.kill()
        return code

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            try:
                self.stop(child, timeout=20.0)
            except Exception as exc:
                log(f"cannot stop {child.name}: {exc!r}")


def listening_pids(port: int) -> set[int]:
    import psutil

    pids: set[int] = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is not None:
                pids.add(conn.pid)
    return pids


def wait_listening(child: Child, port: int, *, sockets: int = 1, timeout: float = 60.0) -> None:
    """Until ``port`` accepts, held by ``sockets`` distinct processes (SO_REUSEPORT)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise BenchError(
                f"{child.name} exited with {child.proc.returncode} before listening:\n"
                + child.tail()
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            if sockets <= 1 or len(listening_pids(port)) >= sockets:
                return
        time.sleep(0.1)
    raise BenchError(
        f"{child.name} is not listening on {port} after {timeout:.0f}s:\n{child.tail()}"
    )


def tree_pids(pid: int) -> list[int]:
    import psutil

    try:
        p = psutil.Process(pid)
        return [pid, *(c.pid for c in p.children(recursive=True))]
    except psutil.Error:
        return []


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_split(pid: int) -> tuple[float, float] | None:
    """``(utime, stime)`` of ``pid`` (every thread of it) from ``/proc/PID/stat``, seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count after its last ")".
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK  # fields 14, 15 of stat(5)


def proc_cpu_seconds(pid: int) -> float | None:
    """``utime + stime`` of ``pid`` from ``/proc/PID/stat``, seconds."""
    split = proc_cpu_split(pid)
    return None if split is None else split[0] + split[1]


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        t = proc_cpu_seconds(pid)
        if t is not None:
            out[pid] = t
    return out


def machine() -> dict[str, Any]:
    """The machine the figures come from: CPU model, CPU count, kernel, Python."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "usable_cpus": len(affinity) or os.cpu_count(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }


def set_affinity(pids: list[int], cpus: str | None) -> None:
    """Move every thread of ``pids`` to ``cpus`` (None: every CPU this process may use)."""
    target = {int(c) for c in cpus.split(",")} if cpus is not None else os.sched_getaffinity(0)
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, target)


def all_cpu_seconds(exclude: set[int]) -> dict[int, float]:
    """CPU seconds of every process on the machine but ``exclude``."""
    import psutil

    out: dict[int, float] = {}
    for p in psutil.process_iter(["cpu_times"]):
        t = p.info["cpu_times"]
        if t is not None and p.pid not in exclude:
            out[p.pid] = t.user + t.system
    return out


def foreign_load(exclude: Callable[[], set[int]], seconds: float = 1.0) -> float:
    """Cores used by processes other than the bench's over ``seconds``."""
    a = all_cpu_seconds(exclude())
    time.sleep(seconds)
    b = all_cpu_seconds(exclude())
    return sum(max(0.0, t - a.get(pid, 0.0)) for pid, t in b.items()) / seconds


def postgres_backends(dbname: str) -> list[int]:
    """The PostgreSQL backends serving the scratch database (by process title)."""
    import psutil

    pids = []
    for p in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.info["cmdline"] or [])
            if cmd.startswith("postgres:") and f" {dbname} " in f"{cmd} ":
                pids.append(p.pid)
    return pids


class CpuMeter:
    """CPU seconds per component, and per-core busy time, over one measured window."""

    def __init__(
        self, groups: dict[str, Callable[[], list[int]]], ours: Callable[[], set[int]]
    ) -> None:
        self.groups = groups
        self.ours = ours

    def snapshot(self) -> dict[str, Any]:
        import psutil

        return {
            "groups": {name: cpu_seconds(fn()) for name, fn in self.groups.items()},
            "others": all_cpu_seconds(self.ours()),
            "cores": psutil.cpu_times(percpu=True),
            "wrk": _children_cpu(),
            "t": time.monotonic(),
        }

    @staticmethod
    def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        wall = b["t"] - a["t"]
        groups = {}
        for name, after in b["groups"].items():
            before = a["groups"].get(name, {})
            groups[name] = round(
                sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items()), 3
            )
        groups["wrk"] = round(b["wrk"] - a["wrk"], 3)
        # Processes that are not the bench's (other users of the machine): a new one counts
        # whole, one that ended within the window is missed.
        groups["others"] = round(
            sum(max(0.0, t - a["others"].get(pid, 0.0)) for pid, t in b["others"].items()), 3
        )
        cores = []
        for x, y in zip(a["cores"], b["cores"], strict=True):
            total = sum(y) - sum(x)
            idle = (y.idle - x.idle) + (getattr(y, "iowait", 0) - getattr(x, "iowait", 0))
            cores.append(round(100.0 * (1 - idle / total), 1) if total > 0 else 0.0)
        return {"wall_s": round(wall, 3), "cpu_s": groups, "core_busy_pct": cores}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------- wrk


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise BenchError(f"cannot read the duration {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise BenchError(f"wrk printed no Requests/sec:\n{out}")
    res["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    res["requests"] = int(m.group(1)) if m else None
    res["elapsed_s"] = _ms(m.group(2)) / 1000 if m else None
    for pct, val in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", out, re.M):
        res[f"p{pct}_ms"] = _ms(val)
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        res["avg_ms"], res["stdev_ms"], res["max_ms"] = (_ms(m.group(i)) for i in (1, 2, 3))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    return res


def run_wrk(
    url: str,
    *,
    threads: int,
    connections: int,
    duration: float,
    cpus: str | None,
    script: Path | None = None,
) -> dict[str, Any]:
    argv = [
        "wrk",
        *(["-s", str(script)] if script else []),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "5s",
        url,
    ]
    proc = subprocess.run(placed(argv, cpus), capture_output=True, text=True, timeout=duration + 60)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return parse_wrk(proc.stdout)


# --------------------------------------------------------------------------- database


def _sql(dsn: str, query: str, *args: object, fetch: bool = True) -> list[Any]:
    import asyncpg

    async def go() -> list[Any]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            if fetch:
                return list(await conn.fetch(query, *args, timeout=30))
            await conn.execute(query, *args, timeout=60)
            return []
        finally:
            await conn.close()

    return asyncio.run(go())


class ScratchDatabase:
    def __init__(self, name: str) -> None:
        self.name = name
        base = PG_ADMIN_DSN.rsplit("/", 1)[0]
        self.dsn = f"{base}/{name}"
        self.url = "postgresql+asyncpg://" + self.dsn.split("://", 1)[1]
        self.created = False

    def create(self) -> None:
        _sql(PG_ADMIN_DSN, f'CREATE DATABASE "{self.name}"', fetch=False)
        self.created = True

    def drop(self) -> None:
        if self.created:
            _sql(PG_ADMIN_DSN, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)', fetch=False)
            self.created = False

    def exchanges(self, run: str) -> int:
        rows = _sql(
            self.dsn,
            "SELECT count(*) FROM exchanges e JOIN runs r ON r.id = e.run_id WHERE r.name = $1",
            run,
        )
        return int(rows[0][0])

    def settle(self, run: str, *, timeout: float = 20.0) -> int:
        """The run's exchange count once it stops growing (the writer flushed)."""
        deadline = time.monotonic() + timeout
        last, same = -1, 0
        while time.monotonic() < deadline:
            n = self.exchanges(run)
            same = same + 1 if n == last else 0
            if same >= 3:
                return n
            last = n
            time.sleep(0.3)
        return last

    def details(self, run: str) -> dict[str, Any]:
        rows = _sql(
            self.dsn,
            """
            SELECT count(*) AS exchanges,
                   count(*) FILTER (WHERE mirror_skipped IS NOT NULL) AS mirror_skipped,
                   count(*) FILTER (WHERE mirror_skipped IS NULL AND canary_status IS NULL)
                       AS canary_failed,
                   count(*) FILTER (WHERE primary_status IS NULL) AS primary_failed
            FROM exchanges e JOIN runs r ON r.id = e.run_id WHERE r.name = $1
            """,
            run,
        )
        losses = _sql(
            self.dsn,
            "SELECT l.reason, l.count FROM run_losses l JOIN runs r ON r.id = l.run_id "
            "WHERE r.name = $1 ORDER BY l.reason",
            run,
        )
        skips = _sql(
            self.dsn,
            "SELECT mirror_skipped, count(*) FROM exchanges e JOIN runs r ON r.id = e.run_id "
            "WHERE r.name = $1 AND mirror_skipped IS NOT NULL GROUP BY 1",
            run,
        )
        out = dict(rows[0])
        out["losses"] = {r["reason"]: int(r["count"]) for r in losses if r["count"]}
        out["skipped_by_reason"] = {r[0]: int(r[1]) for r in skips}
        return out


# --------------------------------------------------------------------------- upstream servers
# Run as `python bench_proxy.py --serve KIND ...` in a child process.


def _serve_static(port: int, body: bytes) -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        if request.body_exists:
            await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        backlog=4096,
        loop=_new_loop(),
    )


def _serve_slow(port: int, body: bytes, delay_s: float) -> None:
    """HTTP/1.1 keep-alive server that answers every request after ``delay_s``."""
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    length_re = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)

    class Slow(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                m = length_re.search(self.buf, 0, end + 2)
                need = end + 4 + (int(m.group(1)) if m else 0)
                if len(self.buf) < need:
                    return
                self.buf = self.buf[need:]
                loop.call_later(delay_s, self.reply)

        def reply(self) -> None:
            if not self.transport.is_closing():
                self.transport.write(response)

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(Slow, "127.0.0.1", port, backlog=4096))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


# --------------------------------------------------------------------------- the bench


@dataclass(frozen=True)
class Placement:
    """Where the load side (wrk, upstreams) and the proxy under test run."""

    name: str  # "pinned" (split) or "unpinned" (shared)
    load_cpus: str | None  # None: any CPU
    sut_cpus: str | None
    wrk_threads: int


@dataclass
class Settings:
    duration: float
    warmup: float
    c1_duration: float
    connections: int
    repeats: int
    pinning: str
    slow_ms: float | None
    quiet_wait: float
    source: Path | None
    no_nginx: bool
    main: Placement  # every variant
    unpinned: Placement | None  # nginx mirror and graygate 1p/2p again, unpinned (--pinning both)
    baseline: Path | None = None  # every graygate variant again from this tree ("@base")


@dataclass
class Sample:
    variant: str
    repeat: int
    wrk: dict[str, Any]
    cpu: dict[str, Any]
    c1: dict[str, Any] | None = None
    paced: dict[str, Any] | None = None
    recording: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, s: Settings, workdir: Path, stamp: str) -> None:
        self.s = s
        self.workdir = workdir
        self.stamp = stamp
        self.procs = Processes(workdir)
        self.db = ScratchDatabase(f"graygate_bench_{stamp}_{os.getpid()}")
        self.samples: list[Sample] = []
        self.place = s.main
        has_nginx = shutil.which("nginx") or Path("/usr/sbin/nginx").exists()
        self.upstream_kind = "nginx" if has_nginx and not s.no_nginx else "aiohttp"
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.upstreams: dict[str, tuple[Child, int]] = {}
        self.slow_delay_s: float | None = None
        # The pace of the half-load runs, from graygate-2p's peak: kept once it comes from a
        # quiet sample, else taken again from the next repeat's.
        self.paced_delay_ms: float | None = None
        self.paced_from_quiet = False
        # The graygate command: the installed one, or ``python -m graygate`` on a source tree
        # (--source: to measure a change on a copy of the tree before it lands).
        self.graygate_env: dict[str, str] = {}
        if s.source is not None:
            self.graygate = [sys.executable, "-m", "graygate"]
            self.graygate_env = {"PYTHONPATH": str(s.source)}
        else:
            self.graygate = [shutil.which("graygate") or "graygate"]
        # The trees graygate runs from, by variant suffix: this one, and --baseline's.
        self.trees: dict[str, tuple[list[str], dict[str, str]]] = {
            "": (self.graygate, self.graygate_env)
        }
        if s.baseline is not None:
            self.trees[BASELINE] = (
                [sys.executable, "-m", "graygate"],
                {"PYTHONPATH": str(s.baseline)},
            )

    # ---- starting things

    def _nginx(
        self, name: str, template: str, cpus: str | None, **values: object
    ) -> tuple[Child, int]:
        port = free_port()
        prefix = self.workdir / name
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(render(NGINX_DIR / template, prefix=prefix, port=port, **values))
        child = self.procs.start(
            name,
            [
                self.nginx,
                "-p",
                str(prefix),
                "-c",
                str(conf),
                "-e",
                str(prefix / "error.log"),
                "-g",
                f"daemon off; pid {prefix / 'nginx.pid'}; error_log {prefix / 'error.log'} warn;",
            ],
            cpus=cpus,
            stop_signal=signal.SIGTERM,
        )
        wait_listening(child, port, timeout=20)
        return child, port

    def _python_server(self, name: str, kind: str, extra: list[str]) -> tuple[Child, int]:
        port = free_port()
        child = self.procs.start(
            name,
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve",
                kind,
                "--port",
                str(port),
                "--body",
                str(self.workdir / "www" / "order.json"),
                *extra,
            ],
            cpus=self.place.load_cpus,
        )
        wait_listening(child, port, timeout=30)
        return child, port

    def start_upstreams(self) -> None:
        www = self.workdir / "www"
        www.mkdir()
        body = order_document()
        (www / "order.json").write_bytes(body)
        # nginx's workers may run as an unprivileged user: let them read the document.
        for p in (self.workdir, www, www / "order.json"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        log(f"upstreams: {self.upstream_kind}, order document {len(body)} bytes")
        for role in ("primary", "canary"):
            if self.upstream_kind == "nginx":
                self.upstreams[role] = self._nginx(
                    role, "static.conf", self.place.load_cpus, workers=1, root=www
                )
            else:
                self.upstreams[role] = self._python_server(role, "static", [])

    def start_slow_canary(self, delay_s: float) -> None:
        self.slow_delay_s = delay_s
        self.upstreams["slow"] = self._python_server(
            "slow-canary", "slow", ["--delay-ms", f"{delay_s * 1000:.3f}"]
        )

    def url(self, role: str) -> str:
        return f"http://127.0.0.1:{self.upstreams[role][1]}"

    def start_graygate(
        self, run: str, processes: int, canary: str, tree: str = ""
    ) -> tuple[Child, int]:
        port = free_port()
        cfg = self.workdir / f"{run}.yaml"
        cfg.write_text(
            "\n".join(
                [
                    f"run: {run}",
                    f"listen: 127.0.0.1:{port}",
                    f"admin: {{listen: '127.0.0.1:{free_port()}'}}",
                    f"database: {{url: '{self.db.url}'}}",
                    "upstreams:",
                    f"  primary: {self.url('primary')}",
                    f"  canary: {self.url(canary)}",
                    "mirror: {sample: 1.0, methods: [GET, HEAD]}",
                    f"record: {{spill_dir: '{self.workdir / ('spill-' + run)}'}}",
                    "preflight: {enabled: false}",
                    "tracing: {exporter: none}",
                    "compare:",
                    "  endpoints:",
                    "    - match: GET /api/orders/{id}",
                    "",
                ]
            )
        )
        command, tree_env = self.trees[tree]
        env = {"GRAYGATE_LOG_LEVEL": "WARNING", **tree_env}
        if processes > 1:
            prom = self.workdir / f"prom-{run}"
            prom.mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
        child = self.procs.start(
            run,
            [
                *command,
                "serve",
                "-c",
                str(cfg),
                "--role",
                "proxy",
                "--processes",
                str(processes),
                "--data-dir",
                str(self.workdir / "data"),
            ],
            cpus=self.place.sut_cpus,
            env=env,
        )
        wait_listening(child, port, sockets=processes, timeout=90)
        return child, port

    # ---- measuring

    def wrk(
        self, url: str, connections: int, duration: float, *, delay_ms: float | None = None
    ) -> dict[str, Any]:
        script = None
        if delay_ms is not None:
            # Paced: every connection waits delay_ms before each request (wrk's delay()
            # hook; the wait is not in the latency), which caps the offered rate near
            # connections / delay whatever the proxy does.
            script = self.workdir / f"paced-{delay_ms:.3f}.lua"
            script.write_text(f"function delay()\n  return {delay_ms:.3f}\nend\n")
        return run_wrk(
            url,
            threads=min(self.place.wrk_threads, connections),
            connections=connections,
            duration=duration,
            cpus=self.place.load_cpus,
            script=script,
        )

    def measure(
        self,
        variant: str,
        repeat: int,
        url: str,
        sut: Callable[[], list[int]],
        *,
        c1: bool,
        run: str | None = None,
        paced: bool = False,
    ) -> Sample:
        s = self.s
        ups = [pid for child, _ in self.upstreams.values() for pid in tree_pids(child.pid)]
        set_affinity(ups, self.place.load_cpus)  # the upstreams follow the placement
        quiet = self.wait_quiet()
        self.wrk(url, s.connections, s.warmup)  # warm-up: pools, caches, JIT-less Python
        before = self.db.settle(run) if run else None
        meter = CpuMeter(
            {
                "sut": sut,
                "upstreams": lambda: ups,
                "postgres": lambda: postgres_backends(self.db.name),
            },
            self.our_pids,
        )
        a = meter.snapshot()
        res = self.wrk(url, s.connections, s.duration)
        b = meter.snapshot()
        cpu = CpuMeter.delta(a, b)
        sample = Sample(variant, repeat, res, cpu)
        sample.extra["placement"] = self.place.name
        sample.extra["foreign_load_before"] = round(quiet, 2)
        if run:
            after = self.db.settle(run)
            assert before is not None
            sample.recording = {"recorded": after - before, "requests": res["requests"]}
        if c1:
            sample.c1 = self.wrk(url, 1, s.c1_duration)
        if paced:
            # The same offered rate for the normal and the slow canary: half graygate-2p's
            # peak in this repeat (below saturation, where latency is the path's own).
            if self.paced_delay_ms is None:
                half = max(1.0, res["rps"] / 2)
                self.paced_delay_ms = round(1000.0 * s.connections / half, 3)
                self.paced_from_quiet = cpu["cpu_s"]["others"] / cpu["wall_s"] <= NOISY_CORES
            sample.paced = self.wrk(url, s.connections, s.duration, delay_ms=self.paced_delay_ms)
            sample.extra["paced_delay_ms"] = self.paced_delay_ms
        self.samples.append(sample)
        log(
            f"  {variant:<22} {res['rps']:>9.0f} req/s  p50 {res.get('p50_ms', 0):.3f} ms  "
            f"p99 {res.get('p99_ms', 0):.3f} ms"
            + (f"  c1 p50 {sample.c1.get('p50_ms', 0):.3f} ms" if sample.c1 else "")
            + f"  cores busy {cpu['core_busy_pct']}%, "
            f"others {cpu['cpu_s']['others'] / cpu['wall_s']:.2f} cores"
        )
        return sample

    def our_pids(self) -> set[int]:
        """The bench, everything it started, and the scratch database's backends."""
        import psutil

        pids = {os.getpid(), *postgres_backends(self.db.name)}
        with contextlib.suppress(psutil.Error):
            pids.update(c.pid for c in psutil.Process().children(recursive=True))
        return pids

    def wait_quiet(self) -> float:
        """Other users' CPU load (cores); waits up to ``quiet_wait`` s for it to drop below
        QUIET_CORES, so that a measurement does not start in the middle of someone's job."""
        load = foreign_load(self.our_pids)
        deadline = time.monotonic() + self.s.quiet_wait
        if load > QUIET_CORES:
            log(f"  other processes use {load:.2f} cores: waiting up to {self.s.quiet_wait:.0f}s")
            while load > QUIET_CORES and time.monotonic() < deadline:
                load = foreign_load(self.our_pids, 2.0)
        return load

    def run_direct(self, repeat: int) -> None:
        self.measure("direct", repeat, self.url("primary") + PATH, lambda: [], c1=True)

    def run_nginx_mirror(self, repeat: int, canary: str, variant: str, c1: bool) -> None:
        child, port = self._nginx(
            f"{variant}-r{repeat}",
            "mirror.conf",
            self.place.sut_cpus,
            workers=2,
            primary_port=self.upstreams["primary"][1],
            canary_port=self.upstreams[canary][1],
        )
        try:
            self.measure(
                variant,
                repeat,
                f"http://127.0.0.1:{port}{PATH}",
                lambda: tree_pids(child.pid),
                c1=c1,
            )
        finally:
            self.procs.stop(child)

    def run_graygate(
        self,
        repeat: int,
        processes: int,
        canary: str,
        variant: str,
        c1: bool,
        paced: bool = False,
    ) -> None:
        # With --baseline, the same variant from both trees, in turn (which goes first
        # alternates with the repeats).
        trees = list(self.trees)
        if repeat % 2 == 0:
            trees.reverse()
        for tree in trees:
            self._run_graygate(repeat, processes, canary, variant + tree, c1, paced, tree)

    def _run_graygate(
        self,
        repeat: int,
        processes: int,
        canary: str,
        variant: str,
        c1: bool,
        paced: bool,
        tree: str,
    ) -> None:
        run = f"bench-{self.stamp}-{variant.replace('@', '-')}-r{repeat}"
        child, port = self.start_graygate(run, processes, canary, tree)
        try:
            sample = self.measure(
                variant,
                repeat,
                f"http://127.0.0.1:{port}{PATH}",
                lambda: tree_pids(child.pid),
                c1=c1,
                run=run,
                paced=paced,
            )
        finally:
            code = self.procs.stop(child, timeout=60)
        if code not in (0, -signal.SIGTERM):
            log(f"  {variant}: graygate exited with {code}:\n{child.tail()}")
        details = self.db.details(run)
        assert sample.recording is not None
        sample.recording.update(details)
        sample.extra["exit_code"] = code
        rec = sample.recording
        log(
            f"  {variant:<22} recorded {rec['recorded']} of {rec['requests']} requests "
            f"(run total {rec['exchanges']}), losses {rec['losses'] or 'none'}, "
            f"mirror skipped {rec['skipped_by_reason'] or 'none'}, "
            f"canary failed {rec['canary_failed']}"
        )

    def prepare(self) -> None:
        """The scratch database with graygate's schema, and the primary and the canary."""
        self.db.create()
        log(f"scratch database {self.db.name}")
        up = subprocess.run(
            [*self.graygate, "db", "upgrade", "--database-url", self.db.url],
            env={**os.environ, **self.graygate_env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if up.returncode != 0:
            raise BenchError(f"graygate db upgrade failed: {up.stderr}")
        self.start_upstreams()

    def run(self) -> None:
        s = self.s
        self.prepare()
        has_nginx = self.upstream_kind == "nginx"
        for r in range(1, s.repeats + 1):
            log(f"repeat {r}/{s.repeats}")
            self.run_direct(r)
            if self.slow_delay_s is None:
                direct_p50 = self.samples[-1].c1["p50_ms"] if self.samples[-1].c1 else 0.1
                delay_ms = s.slow_ms if s.slow_ms is not None else max(5.0, 100 * direct_p50)
                self.start_slow_canary(delay_ms / 1000)
                log(
                    f"slow canary: answers after {delay_ms:.2f} ms "
                    f"(100x the primary's p50 at one connection, {direct_p50:.3f} ms; "
                    "at least 5 ms)"
                )
            if has_nginx:
                self.run_nginx_mirror(r, "canary", "nginx-mirror", c1=True)
            self.run_graygate(r, 1, "canary", "graygate-1p", c1=True)
            if not self.paced_from_quiet:
                self.paced_delay_ms = None
            self.run_graygate(r, 2, "canary", "graygate-2p", c1=True, paced=True)
            self.run_graygate(r, 2, "slow", "graygate-2p-slow", c1=False, paced=True)
            if has_nginx:
                self.run_nginx_mirror(r, "slow", "nginx-mirror-slow", c1=False)
            if s.unpinned is not None:
                self.place = s.unpinned
                try:
                    if has_nginx:
                        self.run_nginx_mirror(r, "canary", "nginx-mirror-unpinned", c1=False)
                    self.run_graygate(r, 1, "canary", "graygate-1p-unpinned", c1=False)
                    self.run_graygate(r, 2, "canary", "graygate-2p-unpinned", c1=False)
                finally:
                    self.place = s.main

    def cleanup(self) -> None:
        self.procs.stop_all()
        try:
            self.db.drop()
        except Exception as exc:
            log(f"cannot drop {self.db.name}: {exc!r}")


# --------------------------------------------------------------------------- report


def _stats(raw: list[float | None]) -> dict[str, float] | None:
    values = [v for v in raw if v is not None]
    if not values:
        return None
    out = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    if len(values) > 1:
        out["stdev"] = statistics.stdev(values)
    return out


def summarize(samples: list[Sample]) -> dict[str, Any]:
    by: dict[str, list[Sample]] = {}
    for smp in samples:
        by.setdefault(smp.variant, []).append(smp)
    out: dict[str, Any] = {}
    for variant, everything in by.items():
        # Figures from the samples taken while other users' load stayed low, when there are
        # any: their load only ever slows a variant down, and not every variant alike.
        quiet = [g for g in everything if g.cpu["cpu_s"]["others"] / g.cpu["wall_s"] <= NOISY_CORES]
        group = quiet or everything
        reqs = [g.wrk["requests"] or 0 for g in group]
        out[variant] = {
            "n": len(everything),
            "basis": f"{len(quiet)} quiet" if quiet else f"all {len(everything)}, none quiet",
            "rps_all": _stats([g.wrk["rps"] for g in everything]),
            "rps": _stats([g.wrk["rps"] for g in group]),
            "p50_ms": _stats([g.wrk.get("p50_ms") for g in group]),
            "p99_ms": _stats([g.wrk.get("p99_ms") for g in group]),
            "c1_p50_ms": _stats([g.c1.get("p50_ms") for g in group if g.c1]),
            "c1_p99_ms": _stats([g.c1.get("p99_ms") for g in group if g.c1]),
            "paced_rps": _stats([g.paced["rps"] for g in group if g.paced]),
            "paced_p50_ms": _stats([g.paced.get("p50_ms") for g in group if g.paced]),
            "paced_p99_ms": _stats([g.paced.get("p99_ms") for g in group if g.paced]),
            "paced_p99_by_repeat": {
                g.repeat: g.paced["p99_ms"] for g in everything if g.paced and g.paced.get("p99_ms")
            },
            "errors": sum(g.wrk["socket_errors"] + g.wrk["non_2xx"] for g in group),
            "sut_cpu_us_per_req": _stats(
                [
                    1e6 * g.cpu["cpu_s"]["sut"] / r
                    for g, r in zip(group, reqs, strict=True)
                    if r and g.cpu["cpu_s"]["sut"]
                ]
            ),
            "pg_cpu_us_per_req": _stats(
                [
                    1e6 * g.cpu["cpu_s"]["postgres"] / r
                    for g, r in zip(group, reqs, strict=True)
                    if r and g.cpu["cpu_s"]["postgres"]
                ]
            ),
            "cores_used": {
                k: round(statistics.median(g.cpu["cpu_s"][k] / g.cpu["wall_s"] for g in group), 2)
                for k in ("sut", "upstreams", "wrk", "postgres", "others")
            },
            "noisy_samples": len(everything) - len(quiet),
            "core_busy_pct": [
                round(statistics.median(col), 1)
                for col in zip(*(g.cpu["core_busy_pct"] for g in group), strict=True)
            ],
        }
        recs = [g.recording for g in everything if g.recording]
        if recs:
            losses: dict[str, int] = {}
            for rec in recs:
                for k, v in rec["losses"].items():
                    losses[k] = losses.get(k, 0) + v
            out[variant]["recording"] = {
                "recorded": sum(rec["recorded"] for rec in recs),
                "requests": sum(rec["requests"] or 0 for rec in recs),
                "losses": losses,
                "mirror_skipped": sum(rec["mirror_skipped"] for rec in recs),
                "canary_failed": sum(rec["canary_failed"] for rec in recs),
            }
    return out


def _check(name: str, observed: Any, target: str, ok: bool | None, **more: Any) -> dict[str, Any]:
    return {"check": name, "observed": observed, "target": target, "ok": ok, **more}


def targets(
    summary: dict[str, Any], pinning: str = "both", cpus: int | None = None
) -> list[dict[str, Any]]:
    """The issue's targets as ratios within this run. ``ok`` None: not measured (SKIP), or
    printed for reference only (``info``)."""

    def med(variant: str, key: str) -> float | None:
        st = summary.get(variant, {}).get(key)
        return st["median"] if st else None

    def unpinned(variant: str) -> str:
        # With --pinning shared every variant is unpinned and has no suffix.
        return variant if pinning == "shared" else f"{variant}-unpinned"

    checks: list[dict[str, Any]] = []
    nginx = "nginx-mirror" in summary

    gg, ng = med("graygate-1p", "sut_cpu_us_per_req"), med("nginx-mirror", "sut_cpu_us_per_req")
    name = "proxy CPU per request, graygate 1p / nginx mirror (us/req, /proc utime+stime)"
    if gg and ng:
        ratio = gg / ng
        checks.append(
            _check(name, f"{ratio:.2f} ({gg:.0f} / {ng:.0f})", f"<= {TARGET_CPU_RATIO}",
                   ratio <= TARGET_CPU_RATIO)
        )  # fmt: skip
    elif gg:
        checks.append(_check(name, "not measured (no nginx)", f"<= {TARGET_CPU_RATIO}", None))
    for variant, ref in (
        ("graygate-2p", "nginx-mirror"),
        (unpinned("graygate-1p"), unpinned("nginx-mirror")),
        (unpinned("graygate-2p"), unpinned("nginx-mirror")),
    ):
        a, b = med(variant, "sut_cpu_us_per_req"), med(ref, "sut_cpu_us_per_req")
        if a and b and variant != "graygate-1p":
            checks.append(
                _check(f"proxy CPU per request, {variant} / {ref}",
                       f"{a / b:.2f} ({a:.0f} / {b:.0f})", "reference", None, info=True)
            )  # fmt: skip

    name = "req/s, graygate 2p / nginx mirror, unpinned"
    gg, ng = med(unpinned("graygate-2p"), "rps"), med(unpinned("nginx-mirror"), "rps")
    if gg and ng:
        checks.append(_check(name, round(gg / ng, 3), f">= {TARGET_RPS_RATIO}",
                             gg / ng >= TARGET_RPS_RATIO))  # fmt: skip
    elif gg or not nginx:
        checks.append(_check(name, "not measured", f">= {TARGET_RPS_RATIO}", None))
    if pinning != "shared":
        gg, ng = med("graygate-2p", "rps"), med("nginx-mirror", "rps")
        if gg and ng:
            checks.append(
                _check("req/s, graygate 2p / nginx mirror, pinned (both on one core)",
                       round(gg / ng, 3), f">= {TARGET_RPS_RATIO_PINNED}",
                       gg / ng >= TARGET_RPS_RATIO_PINNED)
            )  # fmt: skip
    one, two = med(unpinned("graygate-1p"), "rps"), med(unpinned("graygate-2p"), "rps")
    name = "req/s, graygate 2p / graygate 1p, unpinned (--processes scaling)"
    if one and two:
        checks.append(_check(name, round(two / one, 3), f">= {TARGET_SCALING}",
                             two / one >= TARGET_SCALING))  # fmt: skip
    else:
        checks.append(_check(name, "not measured", f">= {TARGET_SCALING}", None))
    one_st = summary.get(unpinned("graygate-1p"))
    if one_st and cpus:
        # Unpinned, the bench's own processes share the CPUs: per core of proxy, 1p needs
        # (upstreams + wrk + postgres) / proxy more. With x cores of proxy at 2p, x plus
        # that share of x must fit in the CPUs: x <= cpus * proxy / all (others aside).
        used = one_st["cores_used"]
        ours = sum(used[k] for k in ("sut", "upstreams", "wrk", "postgres"))
        if ours > 0 and used["sut"] > 0:
            ceiling = min(2.0, cpus * used["sut"] / ours)
            checks.append(
                _check(f"the most 2p can reach over 1p on {cpus} CPUs shared with the load "
                       f"side (at 1p: proxy {used['sut']:.2f} cores of the bench's "
                       f"{ours:.2f}; others' load aside)", f"{ceiling:.2f}", "", None,
                       info=True)
            )  # fmt: skip
    if pinning != "shared":
        one, two = med("graygate-1p", "rps"), med("graygate-2p", "rps")
        if one and two:
            checks.append(
                _check("req/s, graygate 2p / graygate 1p, pinned (one core for both)",
                       round(two / one, 3), "reference", None, info=True)
            )  # fmt: skip

    d, g = med("direct", "c1_p50_ms"), med("graygate-2p", "c1_p50_ms")
    if d is not None and g is not None:
        added = g - d
        checks.append(
            _check("added p50 at 1 connection (graygate 2p - direct), ms", round(added, 3),
                   f"<= {TARGET_ADDED_P50_MS}", added <= TARGET_ADDED_P50_MS)
        )  # fmt: skip

    n, sl = med("graygate-2p", "paced_p99_ms"), med("graygate-2p-slow", "paced_p99_ms")
    if n and sl:
        change = sl / n - 1
        # Each repeat's own change (the same repeat's normal and slow runs): p99 is noisy.
        normal = summary["graygate-2p"].get("paced_p99_by_repeat", {})
        slow = summary["graygate-2p-slow"].get("paced_p99_by_repeat", {})
        each = [f"{slow[r] / normal[r] - 1:+.1%}" for r in sorted(normal) if r in slow]
        checks.append(
            _check("p99 change, 100x slower canary, graygate 2p at half its peak rate",
                   f"{change:+.3f} (medians; per repeat: {', '.join(each)})",
                   f"< {TARGET_SLOW_P99_CHANGE}", change < TARGET_SLOW_P99_CHANGE)
        )  # fmt: skip
    n, sl = med("graygate-2p", "p99_ms"), med("graygate-2p-slow", "p99_ms")
    if n and sl:
        change = sl / n - 1
        checks.append(
            _check("p99 change, 100x slower canary, graygate 2p at its peak (saturated)",
                   f"{change:+.3f}", "reference", None, info=True)
        )  # fmt: skip
    for variant, st in summary.items():
        rec = st.get("recording")
        if rec:
            dropped = sum(rec["losses"].values())
            checks.append(
                _check(f"{variant}: exchanges dropped by the recorder (recorded/requests)",
                       f"{dropped} ({rec['recorded']}/{rec['requests']})",
                       "0 dropped, recorded >= requests",
                       dropped == 0 and rec["recorded"] >= rec["requests"])
            )  # fmt: skip
    return checks


def _fmt(st: dict[str, float] | None, digits: int = 3, spread: bool = True) -> str:
    if not st:
        return "-"
    text = f"{st['median']:.{digits}f}"
    if spread and st["max"] != st["min"]:
        text += f" [{st['min']:.{digits}f}-{st['max']:.{digits}f}]"
    return text


def print_report(
    meta: dict[str, Any], summary: dict[str, Any], checks: list[dict[str, Any]]
) -> None:
    print()
    print(
        f"graygate proxy bench: upstreams {meta['upstreams']}, {meta['connections']} connections, "
        f"{meta['duration_s']}s per run after a {meta['warmup_s']}s warm-up, "
        f"{meta['repeats']} repeat(s): median [min-max] of the quiet samples (other users' "
        f"processes under {NOISY_CORES} cores), of all when none was quiet"
    )
    m = meta["machine"]
    print(
        f"machine: {m['cpu_model']}, {m['cpus']} CPUs ({m['usable_cpus']} usable), "
        f"Linux {m['kernel']}, Python {m['python']}"
    )
    print(
        f"pinning {meta['pinning']}: load side (wrk -t{meta['wrk_threads']}, upstreams) on "
        f"CPUs {meta['load_cpus'] or 'any'}, proxy under test on CPUs {meta['sut_cpus'] or 'any'}; "
        f"PostgreSQL unpinned; nice {meta['nice']}; slow canary {meta['slow_canary_ms']:.2f} ms"
    )
    if meta.get("unpinned_wrk_threads"):
        print(
            f"*-unpinned: nothing pinned (wrk -t{meta['unpinned_wrk_threads']}): the proxy may "
            "use every CPU, which it shares with wrk and the upstreams"
        )
    print(f"graygate: {meta['graygate']}")
    if meta.get("baseline"):
        print(f"baseline (VARIANT{BASELINE}): python -m graygate (PYTHONPATH={meta['baseline']})")
    head = (
        f"{'variant':<26} {'req/s':>22} {'p50 ms':>22} {'p99 ms':>22} {'1-conn p50 ms':>22} "
        f"{'proxy CPU us/req':>17} {'pg us/req':>9} {'basis':>18}"
    )
    print(head)
    print("-" * len(head))
    for variant, st in summary.items():
        print(
            f"{variant:<26} {_fmt(st['rps'], 0):>22} {_fmt(st['p50_ms']):>22} "
            f"{_fmt(st['p99_ms']):>22} "
            f"{_fmt(st['c1_p50_ms']):>22} {_fmt(st['sut_cpu_us_per_req'], 0, False):>17} "
            f"{_fmt(st['pg_cpu_us_per_req'], 0, False):>9} {st['basis']:>18}"
        )
    paced = [(v, st) for v, st in summary.items() if st.get("paced_rps")]
    if paced:
        print()
        print(
            f"At half graygate-2p's peak rate ({meta.get('paced_delay_ms') or '?'} ms pause "
            "before each request on each connection: the same offered rate for both canaries)"
        )
        for variant, st in paced:
            print(
                f"{variant:<26} {_fmt(st['paced_rps'], 0):>22} req/s  "
                f"p50 {_fmt(st['paced_p50_ms'])} ms  p99 {_fmt(st['paced_p99_ms'])} ms"
            )
    print()
    print(
        "CPU during the measured window, in cores (median): the proxy under test, the "
        "upstreams, wrk,\nthe scratch database's PostgreSQL backends, and other users' "
        f"processes (noisy: > {NOISY_CORES})"
    )
    head = (
        f"{'variant':<26} {'proxy':>6} {'upstr':>6} {'wrk':>6} {'pg':>6} {'others':>7} "
        f"{'noisy':>6} {'core busy %':>14}"
    )
    print(head)
    print("-" * len(head))
    for variant, st in summary.items():
        cu = st["cores_used"]
        print(
            f"{variant:<26} {cu['sut']:>6.2f} {cu['upstreams']:>6.2f} {cu['wrk']:>6.2f} "
            f"{cu['postgres']:>6.2f} {cu['others']:>7.2f} {st['noisy_samples']:>3}/{st['n']:<2} "
            f"{st['core_busy_pct']!s:>14}"
        )
    print()
    for variant, st in summary.items():
        rec = st.get("recording")
        if rec:
            print(
                f"{variant:<26} recorded {rec['recorded']} / wrk requests {rec['requests']}; "
                f"losses {rec['losses'] or 'none'}; mirror skipped {rec['mirror_skipped']}; "
                f"canary failed {rec['canary_failed']}"
            )
        if st["errors"]:
            print(f"{variant:<26} wrk socket errors + non-2xx: {st['errors']}")
    pairs = [
        (v, v + BASELINE) for v in summary if not v.endswith(BASELINE) and v + BASELINE in summary
    ]
    if pairs:
        print()
        print("This tree against the baseline, in the same run: this tree's median / the base's")
        head = (
            f"{'variant':<26} {'req/s':>8} {'proxy CPU/req':>14} {'p99':>8} {'1-conn p50':>11} "
            f"{'paced p99':>10}"
        )
        print(head)
        print("-" * len(head))
        for v, base in pairs:

            def ratio(key: str, v: str = v, base: str = base) -> str:
                x, y = summary[v].get(key), summary[base].get(key)
                return f"{x['median'] / y['median']:.3f}" if x and y and y["median"] else "-"

            print(
                f"{v:<26} {ratio('rps'):>8} {ratio('sut_cpu_us_per_req'):>14} "
                f"{ratio('p99_ms'):>8} {ratio('c1_p50_ms'):>11} {ratio('paced_p99_ms'):>10}"
            )
    print()
    for c in checks:
        if c.get("info"):
            print(f"[INFO] {c['check']}: {c['observed']}")
            continue
        mark = {True: "PASS", False: "MISS", None: "SKIP"}[c["ok"]]
        print(f"[{mark}] {c['check']}: {c['observed']}  target {c['target']}")


# --------------------------------------------------------------------------- main


def placements(pinning: str) -> tuple[Placement, Placement | None]:
    """The run's placement of every variant, and the unpinned one of ``both`` (else None).
    Without two CPUs or ``taskset``, nothing can be pinned: one unpinned placement."""
    cpus = sorted(os.sched_getaffinity(0))
    shared = Placement("unpinned", None, None, max(1, min(2, len(cpus))))
    if pinning == "shared" or len(cpus) < 2 or not shutil.which("taskset"):
        return shared, None
    half = len(cpus) // 2
    load, sut = cpus[:half], cpus[half:]
    split = Placement("pinned", ",".join(map(str, load)), ",".join(map(str, sut)), len(load))
    return split, (shared if pinning == "both" else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every variant")
    ap.add_argument("--quick", action="store_true", help="3 s runs, one repeat")
    ap.add_argument(
        "--pinning",
        choices=("both", "split", "shared"),
        default="both",
        help="split: load side and proxy on separate halves of the CPUs; shared: nothing "
        "pinned; both: split, plus nginx mirror and graygate 1p/2p unpinned",
    )
    ap.add_argument(
        "--slow-ms",
        type=float,
        default=None,
        help="slow canary delay (default: 100x the primary's 1-connection p50, >= 5 ms)",
    )
    ap.add_argument(
        "--source",
        default=None,
        help="run graygate from this source tree (python -m graygate) instead of the "
        "installed command: to measure a change on a copy of the tree",
    )
    ap.add_argument(
        "--baseline",
        default=None,
        help="run every graygate variant again from this source tree (named VARIANT@base), "
        "interleaved: a change against its base in one run",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="nice value for everything the bench starts (negative needs root): on a shared "
        "machine, -10 keeps other users' jobs from skewing the figures",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="seconds to wait for other processes' load to settle before a run",
    )
    ap.add_argument(
        "--no-nginx", action="store_true", help="aiohttp upstreams and no nginx reference"
    )
    ap.add_argument("--serve", choices=("static", "slow"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--body", help=argparse.SUPPRESS)
    ap.add_argument("--delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.serve:
        body = Path(args.body).read_bytes()
        if args.serve == "static":
            _serve_static(args.port, body)
        else:
            _serve_slow(args.port, body, args.delay_ms / 1000)
        return 0

    if not shutil.which("wrk"):
        print("bench_proxy: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.nice < 0 and os.geteuid() != 0:
        print("bench_proxy: --nice below 0 needs root", file=sys.stderr)
        return 2
    PRIORITY["nice"] = args.nice
    duration = 3.0 if args.quick else args.duration
    main_place, unpinned = placements(args.pinning)
    settings = Settings(
        duration=duration,
        warmup=max(1.0, round(duration / 3)),
        c1_duration=max(2.0, round(duration / 2)),
        connections=args.connections,
        repeats=1 if args.quick else max(1, args.repeats),
        pinning=args.pinning if main_place.sut_cpus else "shared",
        slow_ms=args.slow_ms,
        quiet_wait=args.quiet_wait,
        source=Path(args.source).resolve() if args.source else None,
        no_nginx=args.no_nginx,
        main=main_place,
        unpinned=unpinned,
        baseline=Path(args.baseline).resolve() if args.baseline else None,
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="graygate-bench-proxy-"))

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    bench = Bench(settings, workdir, stamp)
    started = time.monotonic()
    try:
        bench.run()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
        log(f"bench failed: {exc}")
        return 2
    finally:
        with _ignoring_signals():
            bench.cleanup()
            shutil.rmtree(workdir, ignore_errors=True)

    summary = summarize(bench.samples)
    checks = targets(summary, settings.pinning, len(os.sched_getaffinity(0)))
    meta = {
        "timestamp": stamp,
        "upstreams": bench.upstream_kind,
        "connections": settings.connections,
        "duration_s": settings.duration,
        "warmup_s": settings.warmup,
        "c1_duration_s": settings.c1_duration,
        "repeats": settings.repeats,
        "pinning": settings.pinning,
        "nice": args.nice,
        "graygate": " ".join(bench.graygate)
        + (f" (PYTHONPATH={settings.source})" if settings.source else ""),
        "baseline": str(settings.baseline) if settings.baseline else None,
        "load_cpus": settings.main.load_cpus,
        "sut_cpus": settings.main.sut_cpus,
        "wrk_threads": settings.main.wrk_threads,
        "unpinned_wrk_threads": settings.unpinned.wrk_threads if settings.unpinned else None,
        "machine": machine(),
        "slow_canary_ms": (bench.slow_delay_s or 0) * 1000,
        "paced_delay_ms": sorted(
            {smp.extra["paced_delay_ms"] for smp in bench.samples if "paced_delay_ms" in smp.extra}
        ),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print_report(meta, summary, checks)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"proxy-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "meta": meta,
                "summary": summary,
                "targets": checks,
                "samples": [s.__dict__ for s in bench.samples],
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nfigures: {out.relative_to(ROOT)}")
    return 0 if all(c["ok"] is not False for c in checks) else 1


@contextlib.contextmanager
def _ignoring_signals() -> Iterator[None]:
    """Cleanup is not interrupted by a second Ctrl-C."""
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
