"""Shadow mode behind a real nginx ``mirror``: nginx serves the clients from the primary and
mirrors every request (body included) to ``graygate serve --mode shadow``, which answers at
once and sends each request to the primary and the canary itself.

Real processes on loopback: Debian's nginx, the Python primary, the Go canary with a
planted fault, ``graygate serve`` on a fresh PostgreSQL database, the demo's mixed load
through nginx, ``graygate verdict --wait --json``. Then graygate is stopped and the clients
are still served by nginx and the primary.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from graygate.loadgen import LoadOptions, run_load

if TYPE_CHECKING:
    from tests.e2e.conftest import Proc, Procs

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
VERDICT_TIMEOUT_S = 60
MAX_LOAD_S = 60.0
MIN_PAIRS = 60  # verdict.min_pairs of the run

NGINX_CONF = """
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream primary {{ server 127.0.0.1:{primary_port}; keepalive 16; }}
    upstream graygate {{ server 127.0.0.1:{graygate_port}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            mirror /graygate_mirror;
            mirror_request_body on;
            proxy_pass http://primary;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location = /graygate_mirror {{
            internal;
            proxy_pass http://graygate$request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_connect_timeout 200ms;
            proxy_read_timeout 1s;
            proxy_send_timeout 1s;
        }}
    }}
}}
"""


@pytest.fixture
def nginx_prefix() -> Iterator[Path]:
    # Not under pytest's 0700 tmp_path: nginx's workers may run as another user.
    prefix = Path(tempfile.mkdtemp(prefix="graygate-nginx-"))
    prefix.chmod(0o755)
    try:
        yield prefix
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def start_nginx(procs: Procs, prefix: Path, **ports: int) -> tuple[Proc, int]:
    assert NGINX is not None
    port = procs.free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, **ports))
    proc = procs.spawn(
        "nginx",
        [
            NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"),
            "-g", f"daemon off; pid {prefix / 'nginx.pid'};",
        ],
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not procs.port_open(port):
        assert proc.popen.poll() is None, f"nginx exited: {proc.output()}"
        assert time.monotonic() < deadline, f"nginx not listening: {proc.output()}"
        time.sleep(0.05)
    return proc, port


async def _verdict(run: str, database_url: str, *wait: str) -> tuple[int, Any]:
    verdict = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "graygate", "verdict", run, "--database-url", database_url,
        *wait, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(verdict.communicate(), VERDICT_TIMEOUT_S + 60)
    lines = out.decode().strip().splitlines()
    assert lines, f"verdict printed nothing (exit {verdict.returncode}): {err.decode()}"
    assert verdict.returncode is not None
    return verdict.returncode, json.loads(lines[-1])


async def load_and_verdict(base: str, run: str, database_url: str) -> tuple[Any, int, Any]:
    """The verdict under load: ``--wait`` until it is decided (a failed blocking check is a
    NO_GO at once, whatever the evidence), then asked again, the load going on, until it
    rests on ``MIN_PAIRS`` judged pairs."""
    stop = asyncio.Event()
    load = asyncio.create_task(
        run_load(
            LoadOptions(base_url=base, duration=MAX_LOAD_S, rate=60.0, concurrency=8, seed=14),
            stop=stop,
        )
    )
    try:
        code, doc = await _verdict(run, database_url, "--wait", "--timeout", str(VERDICT_TIMEOUT_S))
        deadline = time.monotonic() + VERDICT_TIMEOUT_S
        while doc["summary"]["pairs"] < MIN_PAIRS and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            code, doc = await _verdict(run, database_url)
    finally:
        stop.set()
        stats = await load
    return stats, code, doc


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")
def test_nginx_mirror_to_shadow_mode_judges_and_never_holds_the_clients(
    procs: Procs,
    go_canary: Path,
    migrated_database: Callable[[], str],
    graygate_config: Callable[..., Path],
    nginx_prefix: Path,
) -> None:
    url = migrated_database()
    primary = procs.primary()
    canary = procs.canary(go_canary, "stock_deduction")
    assert primary.url and canary.url
    listen, admin = procs.free_port(), procs.free_port()
    run = f"e2e-shadow-{uuid.uuid4().hex[:8]}"
    cfg = graygate_config(
        run=run,
        primary=primary.url,
        canary=canary.url,
        listen_port=listen,
        admin_port=admin,
        overrides={
            "mode": "shadow",
            "verdict": {"min_pairs": MIN_PAIRS, "min_pairs_per_endpoint": 10},
            "runtime": {"interval_s": 0.25, "window_s": 1.0},
        },
    )
    serve = procs.serve(cfg, url, f"http://127.0.0.1:{admin}")
    primary_port = int(primary.url.rsplit(":", 1)[1])
    _, port = start_nginx(procs, nginx_prefix, primary_port=primary_port, graygate_port=listen)
    front = f"http://127.0.0.1:{port}"

    # The clients get the primary's answers (not graygate's 202).
    status, body = procs.http_get(f"{front}/api/inventory/SKU-0001")
    assert status == 200, body
    assert json.loads(body)["sku"] == "SKU-0001"

    stats, code, doc = asyncio.run(load_and_verdict(front, run, url))
    assert stats.errors == 0, stats.as_dict()
    assert stats.completed == stats.sent, stats.as_dict()
    # Recorded and judged: the canary's planted fault is a NO_GO naming the endpoint.
    assert (code, doc["verdict"]) == (1, "NO_GO"), doc
    failed = {c["name"]: c for c in doc["checks"] if c["passed"] is False}
    assert "strict" in failed, failed
    assert "POST /api/orders" in json.dumps(failed["strict"]), failed["strict"]
    assert doc["summary"]["pairs"] >= MIN_PAIRS, doc["summary"]
    status, metrics = procs.http_get(f"http://127.0.0.1:{admin}/metrics")
    assert status == 200
    assert b'graygate_upstream_requests_total{mode="mirror",role="primary"' in metrics

    # graygate stopped: nginx's mirror fails fast and the clients are still served.
    assert procs.stop(serve, signal.SIGTERM) == 0, serve.output()[-2000:]
    assert not procs.port_open(listen)
    for i in range(20):
        status, body = procs.http_get(f"{front}/api/inventory/SKU-000{i % 5 + 1}", timeout=5.0)
        assert status == 200, (i, body)
