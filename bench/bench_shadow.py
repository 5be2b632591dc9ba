"""Benchmark: what shadow mode costs the clients of an nginx that mirrors to graygate.

    python bench/bench_shadow.py [--duration S] [--connections N] [--repeats R] [--quick]

In one run, interleaved, the same wrk load against three front nginx (1 worker each) that
serve a static primary (nginx, ~1.5 KB order document):

- ``nginx alone``: no mirror;
- ``nginx mirror -> plain``: ``mirror`` to another static nginx (the reference: what any
  mirror costs nginx's clients);
- ``nginx mirror -> graygate shadow``: ``mirror`` to ``graygate serve --mode shadow``, which
  answers 202 at once and sends each request to the primary and a static canary itself,
  recording to a scratch PostgreSQL database (dropped at the end). graygate runs the proxy
  role alone, as on a traffic host (the diff workers judge elsewhere; not measured here).

Prints the clients' requests/s and p50/p99 for each (median over the repeats) and the
target: the clients' p99 with graygate within 10% of nginx mirroring to a plain upstream.
Also how many exchanges graygate recorded and skipped (a full mirror is a counted skip:
graygate sheds what it cannot follow, the clients never wait for it). Needs Debian's
``nginx`` and ``wrk`` (``apt-get install -y nginx wrk``) and the PostgreSQL of
``GRAYGATE_BENCH_PG`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_proxy as bp

__all__ = ["main"]

TARGET_P99_RATIO = 1.10

FRONT = """
worker_processes 1;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    tcp_nodelay on;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream primary {{ server 127.0.0.1:{primary}; keepalive 256; }}
    upstream mirror_target {{ server 127.0.0.1:{mirror}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            {mirror_directive}
            mirror_request_body on;
            proxy_pass http://primary;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location = /mirror {{
            internal;
            proxy_pass http://mirror_target$request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 200ms;
            proxy_read_timeout 2s;
        }}
    }}
}}
"""


def nginx_bin() -> str:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(found).exists():
        raise bp.BenchError("nginx is not installed (apt-get install -y nginx)")
    return found


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs = bp.Processes(workdir)
        self.nginx = nginx_bin()

    def prefix(self, name: str) -> Path:
        prefix = self.workdir / name
        prefix.mkdir()
        prefix.chmod(0o755)
        return prefix

    def nginx_with(self, name: str, conf_text: str, port: int) -> None:
        prefix = self.workdir / name
        conf = prefix / "nginx.conf"
        conf.write_text(conf_text)
        log = prefix / "error.log"
        child = self.procs.start(
            name,
            [
                self.nginx, "-p", str(prefix), "-c", str(conf), "-e", str(log),
                "-g", f"daemon off; pid {prefix / 'nginx.pid'}; error_log {log} warn;",
            ],
            cpus=None,
        )  # fmt: skip
        bp.wait_listening(child, port, timeout=20)

    def static(self, name: str, www: Path) -> int:
        port = bp.free_port()
        prefix = self.prefix(name)
        text = bp.render(
            bp.NGINX_DIR / "static.conf", prefix=prefix, port=port, workers=1, root=www
        )
        self.nginx_with(name, text, port)
        return port

    def front(self, name: str, primary: int, mirror: int | None) -> int:
        port = bp.free_port()
        text = FRONT.format(
            prefix=self.prefix(name),
            port=port,
            primary=primary,
            mirror=mirror or primary,
            mirror_directive="mirror /mirror;" if mirror else "",
        )
        self.nginx_with(name, text, port)
        return port

    def graygate(self, db: bp.ScratchDatabase, run: str, primary: int, canary: int) -> int:
        port, admin = bp.free_port(), bp.free_port()
        cfg = self.workdir / "graygate.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "run": run,
                    "mode": "shadow",
                    "listen": f"127.0.0.1:{port}",
                    "admin": {"listen": f"127.0.0.1:{admin}"},
                    "upstreams": {
                        "primary": f"http://127.0.0.1:{primary}",
                        "canary": f"http://127.0.0.1:{canary}",
                    },
                    "record": {"spill_dir": str(self.workdir / "spill")},
                }
            )
        )
        # This source tree's graygate, whatever is installed.
        env = {**os.environ, "PYTHONPATH": str(bp.ROOT)}
        subprocess.run(
            [sys.executable, "-m", "graygate", "db", "upgrade", "--database-url", db.url],
            check=True,
            capture_output=True,
            timeout=120,
            env=env,
        )
        child = self.procs.start(
            "graygate",
            [
                sys.executable, "-m", "graygate", "serve", "-c", str(cfg),
                "--database-url", db.url, "--no-preflight", "--role", "proxy",
            ],
            cpus=None,
            env={"PYTHONPATH": str(bp.ROOT)},
        )  # fmt: skip
        bp.wait_listening(child, port, timeout=60)
        return port


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each variant")
    ap.add_argument("--quick", action="store_true", help="3 s runs, one repeat")
    ap.add_argument(
        "--rate",
        type=float,
        default=400.0,
        help="offered requests/s in all (each wrk connection waits connections/rate s between "
        "requests); 0: as fast as possible (saturation)",
    )
    args = ap.parse_args(argv)
    duration = 3.0 if args.quick else args.duration
    repeats = 1 if args.quick else max(1, args.repeats)
    workdir = Path(tempfile.mkdtemp(prefix="graygate-bench-shadow-"))
    workdir.chmod(0o755)
    www = workdir / "www"
    www.mkdir()
    (www / "order.json").write_bytes(bp.order_document())
    for p in (www, www / "order.json"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    script: Path | None = None
    if args.rate > 0:
        script = workdir / "pace.lua"
        pause_ms = max(0, round(args.connections * 1000.0 / args.rate))
        script.write_text(f"function delay()\n  return {pause_ms}\nend\n")
    db = bp.ScratchDatabase(f"graygate_bench_shadow_{uuid.uuid4().hex[:8]}")
    bench = Bench(workdir)
    run = "bench-shadow"
    samples: dict[str, list[dict[str, Any]]] = {}
    try:
        db.create()
        primary = bench.static("primary", www)
        canary = bench.static("canary", www)
        plain = bench.static("plain-mirror-target", www)
        shadow = bench.graygate(db, run, primary, canary)
        fronts = {
            "nginx alone": bench.front("front-alone", primary, None),
            "nginx mirror -> plain": bench.front("front-plain", primary, plain),
            "nginx mirror -> graygate shadow": bench.front("front-shadow", primary, shadow),
        }
        for port in fronts.values():  # warm up
            bp.run_wrk(
                f"http://127.0.0.1:{port}{bp.PATH}",
                threads=2,
                connections=args.connections,
                duration=1,
                cpus=None,
            )
        for r in range(repeats):
            for name, port in fronts.items():
                res = bp.run_wrk(
                    f"http://127.0.0.1:{port}{bp.PATH}",
                    threads=2,
                    connections=args.connections,
                    duration=duration,
                    cpus=None,
                    script=script,
                )
                samples.setdefault(name, []).append(res)
                bp.log(
                    f"repeat {r + 1}/{repeats} {name}: {res['rps']:.0f} req/s, "
                    f"p50 {res.get('p50_ms', 0):.2f} ms, p99 {res.get('p99_ms', 0):.2f} ms, "
                    f"errors {res['socket_errors'] + res['non_2xx']}"
                )
                time.sleep(1.0)
        recorded = db.settle(run)
        details = db.details(run)
    finally:
        bench.procs.stop_all()
        db.drop()
        shutil.rmtree(workdir, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(float(s.get(key) or 0.0) for s in samples[name])

    offered = f"{args.rate:g} req/s offered" if args.rate > 0 else "saturation"
    m = bp.machine()
    print(f"\nmachine: {m['cpu_model']}, {m['usable_cpus']} of {m['cpus']} CPUs usable")
    print(f"{args.connections} connections, {offered}, {duration:g} s x {repeats}")
    print(f"{'variant':34} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}")
    for name in samples:
        errors = sum(s["socket_errors"] + s["non_2xx"] for s in samples[name])
        print(
            f"{name:34} {med(name, 'rps'):10.0f} {med(name, 'p50_ms'):9.2f} "
            f"{med(name, 'p99_ms'):9.2f} {errors:7d}"
        )
    ref = med("nginx mirror -> plain", "p99_ms")
    got = med("nginx mirror -> graygate shadow", "p99_ms")
    ratio = got / ref if ref else float("inf")
    verdict = "met" if ratio <= TARGET_P99_RATIO else "NOT met"
    print(
        f"\nclients' p99 with graygate shadow / with a plain mirror target: {ratio:.2f} "
        f"(target <= {TARGET_P99_RATIO:.2f}: {verdict})"
    )
    print(
        f"graygate recorded {recorded} exchanges; skipped by reason: "
        f"{details.get('skipped_by_reason') or {}}; losses: {details.get('losses') or {}}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
