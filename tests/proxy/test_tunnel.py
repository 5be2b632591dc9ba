"""The upgrade tunnel toward a client that stops reading: the proxy stops reading the
upstream (what it holds stays bounded), and cuts the client off after
``timeouts.client_write_s``, closing the upstream's side too. Real loopback servers and a
raw client that reads the 101 and then nothing."""

from __future__ import annotations

import asyncio
import socket

from prometheus_client import REGISTRY

from tests.proxy.harness import Sink, echo, handler_app, make_cfg, proxy_for, serve_app

FLOOD = 512 * 1024 * 1024  # what the upstream would send if nothing held it back
CHUNK = 256 * 1024
# Socket buffers on loopback (the client's receive, the proxy's both ways, the upstream's
# send) can hold tens of MiB together with autotuning; an unbounded relay holds the flood.
HELD_BOUND = 96 * 1024 * 1024


def _stalled() -> float:
    value = REGISTRY.get_sample_value("graygate_client_closed_total", {"reason": "stalled"})
    return value or 0.0


async def test_a_client_that_stops_reading_holds_the_upstream_back_then_is_cut_off() -> None:
    sent = 0
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        chunk = b"x" * CHUNK
        try:
            while sent < FLOOD:
                writer.write(chunk)
                await writer.drain()
                sent += CHUNK
            ended.set_result("sent it all")
        except (ConnectionError, OSError) as exc:
            ended.set_result(f"closed: {type(exc).__name__}")
        finally:
            writer.close()

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    primary = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    before = _stalled()
    try:
        async with (
            serve_app(handler_app(echo)) as canary,
            proxy_for(make_cfg(primary, canary, timeouts={"client_write_s": 1.0}), Sink()) as proxy,
        ):
            host, port = proxy.removeprefix("http://").split(":")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, (host, int(port)))
            await loop.sock_sendall(
                sock,
                b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\n\r\n",
            )
            head = await loop.sock_recv(sock, 200)
            assert head.startswith(b"HTTP/1.1 101 "), head
            # From here the client reads nothing.
            outcome = await asyncio.wait_for(ended, 60)
            sock.close()
    finally:
        server.close()
    assert outcome.startswith("closed"), (outcome, sent)
    assert sent < HELD_BOUND, sent
    assert _stalled() == before + 1
