"""Slow and hostile clients never cost another client its answer (issue 10 items 1 and 2):
raw sockets against a real proxy and real upstreams on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession, web
from prometheus_client import REGISTRY

from config.load import config_from_mapping
from graygate.errors import ConfigError
from tests.proxy.harness import Sink, handler_app, make_cfg, proxy_for, serve_app

CHUNK = b"x" * 65_536
BIG_CHUNKS = 1024  # 64 MiB: more than any socket buffer on the way holds


def _closed(reason: str) -> float:
    return REGISTRY.get_sample_value("graygate_client_closed_total", {"reason": reason}) or 0.0


async def _big_or_small(request: web.Request) -> web.StreamResponse:
    if request.path == "/small":
        return web.Response(text="small")
    resp = web.StreamResponse()
    resp.content_length = len(CHUNK) * BIG_CHUNKS
    await resp.prepare(request)
    for _ in range(BIG_CHUNKS):
        await resp.write(CHUNK)
    return resp


async def _raw(
    url: str, *, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await asyncio.open_connection(sock=sock, limit=1024)


async def _at_eof(reader: asyncio.StreamReader, within: float) -> bool:
    """The peer closed the connection (EOF or reset) within ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65_536):
                pass
        return True
    except TimeoutError:  # (an OSError: first)
        return False
    except (ConnectionError, OSError):
        return True


@contextlib.asynccontextmanager
async def _upstreams() -> AsyncIterator[str]:
    async with serve_app(handler_app(_big_or_small)) as url:
        yield url


async def test_clients_that_never_read_release_the_pool() -> None:
    # As many clients as the primary's pool has connections ask for a large answer and read
    # nothing; a normal client still gets its 200, the stalled ones are cut off, counted
    # and recorded as such.
    pool = 4
    async with _upstreams() as up:
        cfg = make_cfg(
            up,
            up,
            upstreams={"max_connections": pool, "timeout_ms": 20_000},
            mirror={"enabled": False},
            timeouts={"client_write_s": 1.0},
        )
        sink = Sink()
        before = _closed("stalled")
        async with proxy_for(cfg, sink) as url:
            stalled = []
            for _ in range(pool):
                reader, writer = await _raw(url, rcvbuf=4096)
                writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                stalled.append((reader, writer))
            await asyncio.sleep(0.5)  # let them take the pool's connections
            async with asyncio.timeout(30), ClientSession() as session:
                async with session.get(f"{url}/small") as resp:
                    assert resp.status == 200
                    assert await resp.text() == "small"
            records = await sink.wait(pool + 1)
            for _, writer in stalled:
                writer.close()
        cut = [r for r in records if r.path == "/big"]
        assert len(cut) == pool
        assert all(r.extra.get("client_stalled") == "true" for r in cut)
        assert all(r.primary is not None and r.primary.body_truncated for r in cut)
        assert _closed("stalled") - before == pool


async def test_the_write_bound_is_each_wait_not_the_whole_answer() -> None:
    # A client that reads steadily takes far longer than client_write_s over the whole
    # answer, and is not cut off.
    async with _upstreams() as up:
        cfg = make_cfg(up, up, mirror={"enabled": False}, timeouts={"client_write_s": 1.0})
        async with proxy_for(cfg, Sink()) as url:
            reader, writer = await _raw(url)
            writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reads = 0
            async with asyncio.timeout(60):
                for _ in range(80):  # 4 s at least
                    if not await reader.read(65_536):
                        break
                    reads += 1
                    await asyncio.sleep(0.05)
            writer.close()
            assert reads == 80


async def test_a_trickling_head_is_closed_after_the_header_timeout() -> None:
    async with _upstreams() as up:
        cfg = make_cfg(up, up, timeouts={"client_header_s": 1.0, "keepalive_s": 60.0})
        before = _closed("header_timeout")
        async with proxy_for(cfg, Sink()) as url:
            reader, writer = await _raw(url)
            writer.write(b"GET /small HTTP/1.1\r\n")
            closed = False
            for _ in range(100):  # one byte every 0.2 s: 20 s at most
                try:
                    writer.write(b"X")
                    await writer.drain()
                except (ConnectionError, OSError):
                    closed = True
                    break
                if await _at_eof(reader, 0.2):
                    closed = True
                    break
            writer.close()
        assert closed
        assert _closed("header_timeout") - before == 1


async def test_an_idle_keepalive_connection_is_closed() -> None:
    async with _upstreams() as up:
        cfg = make_cfg(up, up, timeouts={"keepalive_s": 1.0})
        async with proxy_for(cfg, Sink()) as url:
            reader, writer = await _raw(url)
            writer.write(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert await _at_eof(reader, 20.0)
            writer.close()


async def test_at_the_connection_cap_the_oldest_idle_one_is_closed() -> None:
    cap = 4
    async with _upstreams() as up:
        cfg = make_cfg(up, up, listen_limits={"max_connections": cap})
        before = _closed("evicted")
        async with proxy_for(cfg, Sink()) as url:
            idle = []
            for i in range(cap):
                reader, writer = await _raw(url)
                if i:  # the first sends nothing at all; the others one request, then idle
                    writer.write(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
                    await reader.readuntil(b"\r\n\r\n")
                idle.append((reader, writer))
                await asyncio.sleep(0.05)
            async with asyncio.timeout(30), ClientSession() as session:
                async with session.get(f"{url}/small") as resp:
                    assert resp.status == 200
            # The oldest (the one that never sent a byte) was closed for the new one.
            assert await _at_eof(idle[0][0], 10.0)
            assert not await _at_eof(idle[-1][0], 0.3)
            for _, writer in idle:
                writer.close()
        assert _closed("evicted") - before >= 1


async def test_at_the_cap_with_none_idle_a_new_connection_is_closed() -> None:
    gate = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        async with asyncio.timeout(20):
            await gate.wait()
        return web.Response(text="late")

    async with serve_app(handler_app(slow)) as up:
        cfg = make_cfg(up, up, listen_limits={"max_connections": 1}, mirror={"enabled": False})
        before = _closed("refused")
        async with proxy_for(cfg, Sink()) as url:
            busy_r, busy_w = await _raw(url)
            busy_w.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.3)
            reader, writer = await _raw(url)
            assert await _at_eof(reader, 10.0)
            gate.set()
            assert (await busy_r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            for w in (writer, busy_w):
                w.close()
        assert _closed("refused") - before == 1


BOUNDS = [
    ("timeouts", "client_header_s", 3_600.0),
    ("timeouts", "keepalive_s", 86_400.0),
    ("timeouts", "client_write_s", 3_600.0),
    ("listen_limits", "max_connections", 1_000_000),
]


@pytest.mark.parametrize(("section", "key", "bound"), BOUNDS)
def test_client_bounds_at_and_past_the_limit(section: str, key: str, bound: float) -> None:
    ups = {"primary": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"}
    cfg = config_from_mapping({"run": "r", "upstreams": ups, section: {key: bound}}, env={})
    assert getattr(getattr(cfg, section), key) == bound
    past = bound + 1 if isinstance(bound, int) else bound * 1.001
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"run": "r", "upstreams": ups, section: {key: past}}, env={})
    assert str(info.value).startswith(f"{section}.{key}")


def test_the_soft_open_file_limit_is_raised_to_the_hard_one() -> None:
    code = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from graygate.supervise import raise_fd_limit\n"
        "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    got, soft, hard = (int(x) for x in out)
    if hard == 256:
        pytest.skip("the hard open-file limit is 256: nothing to raise")
    assert got == soft == hard
