"""``graygate --log-format json --log-level warning serve --access-log --processes 2``: a
real process tree; every proxy process writes the access log (the child is told by its
command line), in JSON, whatever the log level, with redacted query values."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import aiohttp
import orjson

from graygate.processes import free_port
from tests.proxy.test_cli_config import _child_cmdlines

ROOT = Path(__file__).resolve().parents[2]
SECRET = "tok-9f8e7d6c5b4a"


async def test_serve_access_log_in_json_in_every_proxy_process(
    tmp_path: Path, database_url: str
) -> None:
    listen, admin = free_port(), free_port()
    cfg = tmp_path / "graygate.yaml"
    cfg.write_text(
        f"run: access-{uuid.uuid4().hex[:8]}\nlisten: 127.0.0.1:{listen}\n"
        f"admin: {{listen: 127.0.0.1:{admin}}}\n"
        'upstreams: {primary: "http://127.0.0.1:1", canary: "http://127.0.0.1:2"}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYGATE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "graygate", "--log-format", "json", "--log-level", "warning",
        "serve", "-c", str(cfg), "--database-url", database_url.replace("+asyncpg", ""),
        "--no-preflight", "--role", "proxy,admin", "--processes", "2", "--access-log",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[str] = []
    access: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(90):
            while not any("serving run" in line for line in seen):
                line = (await proc.stderr.readline()).decode()
                assert line, "".join(seen)
                seen.append(line)
            children = [c for c in _child_cmdlines(proc.pid) if "--role" in c]
            (child,) = [c for c in children if c[c.index("--role") + 1] == "proxy"]
            assert "--access-log" in child
            # A new connection per request: SO_REUSEPORT spreads them over both processes.
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as http:
                for i in range(8):
                    url = f"http://127.0.0.1:{listen}/orders/{i}?access_token={SECRET}&n={i}"
                    async with http.get(url) as r:
                        assert r.status == 502  # the primary is not there
            while len(access) < 8:
                line = (await proc.stderr.readline()).decode()
                assert line, "".join(seen)
                seen.append(line)
                if line.startswith("{"):
                    data = orjson.loads(line)
                    if data["logger"] == "proxy.access_log":
                        access.append(data)
            # The admin child is up (it logs its start at INFO, unless told the level).
            async with aiohttp.ClientSession() as http:
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{admin}/healthz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 30)
        await asyncio.wait_for(proc.wait(), 30)
    seen += rest.decode().splitlines(keepends=True)
    assert sorted(str(a["path"]) for a in access) == sorted(
        f"/orders/{i}?access_token=%5BREDACTED%5D&n={i}" for i in range(8)
    )
    for a in access:
        assert a["status"] == 502 and a["served_by"] == "primary" and a["method"] == "GET"
        # nor is the canary: refused, then (mirror.eject) its mirrors skipped for a while
        assert a["mirror"] in ("refused", "skipped:ejected"), a
        assert len(str(a["trace_id"])) == 32
    assert not any(SECRET in line for line in seen)
    # --log-level warning: the access log aside, no INFO line, from any process
    assert not any(
        orjson.loads(line)["level"] == "INFO"
        for line in seen
        if line.startswith("{") and "proxy.access_log" not in line
    )
