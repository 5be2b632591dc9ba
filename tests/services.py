"""The demo services as real subprocesses on loopback: the Go canary build and the Python
orders service (as primary or as the canary's stand-in)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

__all__ = ["ROOT", "go_canary", "python_orders", "service"]

ROOT = Path(__file__).resolve().parents[1]


@asynccontextmanager
async def service(
    cmd: list[str], env: dict[str, str] | None = None, *, listeners: int = 1
) -> AsyncIterator[list[str]]:
    """Run a service; yield the URLs of the first ``listeners`` lines it prints
    (``[debug ]listening on http://host:port``), in the order printed."""
    full_env = {**os.environ, "ORDERS_FAULTS": "", **(env or {})}
    full_env.pop("LISTEN", None)
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=ROOT,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        urls = []
        for _ in range(listeners):
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            m = re.search(r"listening on (http://\S+)", line)
            assert m, f"unexpected output of {cmd[0]}: {line!r}"
            urls.append(m.group(1))
        yield urls
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


@asynccontextmanager
async def go_canary(binary: Path, faults: str = "", **env: str) -> AsyncIterator[str]:
    """The Go canary build; ``faults`` is its ``ORDERS_FAULTS``."""
    cmd = [str(binary), "-listen", "127.0.0.1:0"]
    async with service(cmd, {**env, "ORDERS_FAULTS": faults}) as urls:
        yield urls[0]


@asynccontextmanager
async def python_orders(role: str, fault: str | None = None) -> AsyncIterator[str]:
    """The Python orders service as ``role`` (primary, canary-standin, ...)."""
    cmd = [
        sys.executable,
        "-m",
        "graygate.examples.orders",
        "--listen",
        "127.0.0.1:0",
        "--role",
        role,
    ]
    if fault:
        cmd += ["--fault", fault]
    async with service(cmd) as urls:
        yield urls[0]
