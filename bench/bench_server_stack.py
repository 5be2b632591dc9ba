"""Benchmark: what the HTTP server side costs per request, aiohttp's against a lean protocol.

    python bench/bench_server_stack.py [--duration S] [--connections N] [--repeats R]
                                       [--quick] [--pinning split|shared]

An HTTP server on a trivial handler that answers every request
with the bench's ~1.5 KB JSON document, so that what is measured is the server stack
alone: parsing the request, building the request object, running the handler, writing the
answer. Variants, each a child process, interleaved within each repeat:

- ``aiohttp-app-asyncio``: ``web.Application`` + ``AppRunner`` (as the proxied port is
  served), asyncio's loop;
- ``aiohttp-app-uvloop``: the same on uvloop (what ``graygate serve`` ran on the proxied
  port before ``proxy.server``; the admin API's stack);
- ``aiohttp-server-uvloop``: aiohttp's low-level ``web.Server(handler)`` on uvloop (no
  application, no router);
- ``lean-asyncio``: an ``asyncio.Protocol`` with ``httptools``' request parser and a task
  per request (a proxy's handler awaits its upstream), asyncio's loop;
- ``lean-uvloop``: the same on uvloop;
- ``lean-uvloop-sync``: the same, the answer written from the parser's callback (no task):
  the floor;
- ``graygate-server-uvloop``: the proxied port's server (``proxy.server.ProxyServer``, what
  ``graygate serve`` runs) on uvloop, the same trivial handler (its ``Request``, its
  ``Answer``): the lean protocol with everything the proxy needs of it;
- ``nginx``: nginx serving the same document (1 worker), the reference (left out without
  nginx).

wrk (``-c64``) on the first half of the CPUs, the server on the second (``--pinning
split``, the default; ``shared`` pins nothing). CPU per request is the server process's
``utime + stime`` (``/proc/PID/stat``) over the measured window divided by the requests wrk
counted; the ratios are against ``aiohttp-app-uvloop`` in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_proxy as bp

__all__ = ["main"]

VARIANTS = (
    "aiohttp-app-asyncio",
    "aiohttp-app-uvloop",
    "aiohttp-server-uvloop",
    "lean-asyncio",
    "lean-uvloop",
    "lean-uvloop-sync",
    "graygate-server-uvloop",
)
REFERENCE = "aiohttp-app-uvloop"


# --------------------------------------------------------------------------- the servers


def _loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind.endswith("uvloop") or kind.endswith("uvloop-sync"):
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _serve_aiohttp(kind: str, port: int, body: bytes, loop: asyncio.AbstractEventLoop) -> None:
    from aiohttp import web

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.body_exists:
            await request.read()
        return web.Response(body=body, content_type="application/json")

    async def start() -> Callable[[], Any]:
        if kind.startswith("aiohttp-app"):
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
            runner: web.BaseRunner = web.AppRunner(app, access_log=None, handle_signals=False)
        else:
            runner = web.ServerRunner(web.Server(handler), handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        return runner.cleanup

    cleanup = loop.run_until_complete(start())
    _run(loop)
    loop.run_until_complete(cleanup())


class _LeanRequest:
    __slots__ = ("body", "headers", "method", "url")

    def __init__(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body: list[bytes] = []


class _Lean(asyncio.Protocol):
    """HTTP/1.1 keep-alive server: httptools parses, ``handle`` answers (a task per request,
    as a proxy's handler must await its upstream; or, ``sync``, right from the callback)."""

    def __init__(self, body: bytes, sync: bool) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.answer = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        self.sync = sync
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.request: _LeanRequest | None = None
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_event_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.request = _LeanRequest(self.parser.get_method(), self.url, self.headers)
        self.url = b""
        self.headers = []

    def on_body(self, body: bytes) -> None:
        assert self.request is not None
        self.request.body.append(body)

    def on_message_complete(self) -> None:
        request = self.request
        assert request is not None
        self.request = None
        if self.sync:
            self._write(self.answer)
        else:
            self.loop.create_task(self.handle(request))

    async def handle(self, request: _LeanRequest) -> None:
        self._write(self.answer)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


def _serve_lean(kind: str, port: int, body: bytes, loop: asyncio.AbstractEventLoop) -> None:
    sync = kind.endswith("sync")
    server = loop.run_until_complete(
        loop.create_server(lambda: _Lean(body, sync), "127.0.0.1", port, backlog=4096)
    )
    _run(loop)
    server.close()


def _serve_graygate(port: int, body: bytes, loop: asyncio.AbstractEventLoop) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's proxy/
    from aiohttp import web

    from proxy.client_answer import Answer
    from proxy.server import SERVING_KEY, ClientLimits, HeadLimits, ProxyServer, Request, Serving

    async def handler(request: Request) -> Answer:
        if request.body_exists:
            await request.read()
        return Answer(200, body=body, content_type="application/json")

    app = web.Application()
    app[SERVING_KEY] = Serving(
        handler,
        ClientLimits(header_s=10.0, write_s=30.0, max_connections=10_000),
        HeadLimits(max_line=65_536, max_field=61_440, max_headers=100, max_header_bytes=61_440),
    )
    server = ProxyServer(app)

    async def start() -> None:
        await server.setup()
        await server.start("127.0.0.1", port)

    loop.run_until_complete(start())
    _run(loop)
    loop.run_until_complete(server.cleanup())


def _run(loop: asyncio.AbstractEventLoop) -> None:
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    loop.run_forever()


def serve(kind: str, port: int, body_path: str) -> None:
    body = Path(body_path).read_bytes()
    loop = _loop(kind)
    asyncio.set_event_loop(loop)
    if kind.startswith("aiohttp"):
        _serve_aiohttp(kind, port, body, loop)
    elif kind.startswith("graygate"):
        _serve_graygate(port, body, loop)
    else:
        _serve_lean(kind, port, body, loop)


# --------------------------------------------------------------------------- the bench


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="3 s runs, one repeat")
    ap.add_argument("--pinning", choices=("split", "shared"), default="split")
    ap.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--body", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.body)
        return 0

    duration = 3.0 if args.quick else args.duration
    repeats = 1 if args.quick else args.repeats
    place, _ = bp.placements(args.pinning)
    workdir = Path(tempfile.mkdtemp(prefix="graygate-bench-stack-"))
    procs = bp.Processes(workdir)
    www = workdir / "www"
    www.mkdir()
    body_path = www / "order.json"
    body_path.write_bytes(bp.order_document())
    for p in (workdir, www, body_path):
        p.chmod(0o755 if p.is_dir() else 0o644)
    has_nginx = Path(shutil.which("nginx") or "/usr/sbin/nginx").exists()
    variants = [*VARIANTS, *(["nginx"] if has_nginx else [])]
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}

    def start(variant: str) -> tuple[bp.Child, int]:
        port = bp.free_port()
        if variant == "nginx":
            prefix = workdir / f"nginx-{port}"
            prefix.mkdir()
            conf = prefix / "nginx.conf"
            conf.write_text(
                bp.render(
                    bp.NGINX_DIR / "static.conf", prefix=prefix, port=port, workers=1, root=www
                )
            )
            argv = [
                "/usr/sbin/nginx", "-p", str(prefix), "-c", str(conf), "-e",
                str(prefix / "error.log"), "-g",
                f"daemon off; pid {prefix / 'nginx.pid'}; error_log {prefix / 'error.log'} warn;",
            ]  # fmt: skip
        else:
            argv = [
                sys.executable, str(Path(__file__).resolve()), "--serve", variant,
                "--port", str(port), "--body", str(body_path),
            ]  # fmt: skip
        child = procs.start(variant, argv, cpus=place.sut_cpus)
        bp.wait_listening(child, port, timeout=30)
        return child, port

    def our_pids() -> set[int]:
        import os

        import psutil

        pids = {os.getpid()}
        pids.update(c.pid for c in psutil.Process().children(recursive=True))
        return pids

    try:
        for r in range(1, repeats + 1):
            bp.log(f"repeat {r}/{repeats}")
            for variant in variants:
                child, port = start(variant)
                try:
                    url = f"http://127.0.0.1:{port}/api/orders/12345"
                    threads = min(place.wrk_threads, args.connections)

                    def wrk(seconds: float, url: str = url, threads: int = threads) -> Any:
                        return bp.run_wrk(
                            url,
                            threads=threads,
                            connections=args.connections,
                            duration=seconds,
                            cpus=place.load_cpus,
                        )

                    others_before = bp.foreign_load(our_pids, 1.0)
                    wrk(max(1.0, duration / 3))  # warm-up
                    pids = bp.tree_pids(child.pid)
                    a = bp.cpu_seconds(pids)
                    others_a = bp.all_cpu_seconds(our_pids())
                    t0 = time.monotonic()
                    res = wrk(duration)
                    wall = time.monotonic() - t0
                    b = bp.cpu_seconds(pids)
                    others_b = bp.all_cpu_seconds(our_pids())
                    used = sum(b[p] - a.get(p, 0.0) for p in b)
                    others = sum(max(0.0, t - others_a.get(p, 0.0)) for p, t in others_b.items())
                    n = int(res["requests"] or 0)
                    results[variant].append(
                        {
                            "rps": res["rps"],
                            "cpu_us_per_req": 1e6 * used / max(1, n),
                            "cores": used / wall,
                            "others_cores": others / wall,
                            "others_before": others_before,
                        }
                    )
                    bp.log(
                        f"  {variant:<22} {res['rps']:>9.0f} req/s  "
                        f"{1e6 * used / max(1, n):6.1f} us CPU/req  server {used / wall:.2f} "
                        f"cores, others {others / wall:.2f} cores"
                    )
                finally:
                    procs.stop(child)
    except KeyboardInterrupt:
        return 130
    except (bp.BenchError, OSError) as exc:
        bp.log(f"bench failed: {exc}")
        return 2
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    m = bp.machine()
    print()
    print(
        f"server stack bench: trivial handler, ~1.5 KB answer, wrk -c{args.connections} "
        f"{duration:g}s x {repeats} repeat(s), interleaved; medians"
    )
    print(
        f"machine: {m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}, Python "
        f"{m['python']}; wrk on CPUs {place.load_cpus or 'any'}, server on CPUs "
        f"{place.sut_cpus or 'any'}"
    )
    ref = statistics.median(x["cpu_us_per_req"] for x in results[REFERENCE])
    head = (
        f"{'variant':<24} {'req/s':>9} {'CPU us/req':>11} {'vs ' + REFERENCE:>24} "
        f"{'others (cores)':>15}"
    )
    print(head)
    print("-" * len(head))
    for variant, xs in results.items():
        if not xs:
            continue
        cpu = statistics.median(x["cpu_us_per_req"] for x in xs)
        rps = statistics.median(x["rps"] for x in xs)
        others = statistics.median(x["others_cores"] for x in xs)
        spread = ""
        if len(xs) > 1:
            lo, hi = min(x["cpu_us_per_req"] for x in xs), max(x["cpu_us_per_req"] for x in xs)
            spread = f" [{lo:.1f}-{hi:.1f}]"
        print(f"{variant:<24} {rps:>9.0f} {cpu:>11.1f} {cpu / ref:>24.2f} {others:>15.2f}{spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
