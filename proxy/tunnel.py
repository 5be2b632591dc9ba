"""The upgrade tunnel: a protocol switch (101) relayed to the client, then bytes both ways.

Only a switch the client asked for (``proxy.headers.asks_upgrade``: websocket) is relayed;
one nobody asked for gets a 502. Once switched, the upstream's connection leaves its pool
(``UpstreamAnswer.upgrade``) and the client's leaves the server's parser
(``proxy.server.Connection.take_over``): each side's bytes are
written to the other, with flow control both ways (a client that takes no bytes for
``timeouts.client_write_s`` is cut off), until either side closes. A tunnel is
never mirrored; its handshake is what is recorded.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from graygate.vocabulary import ErrorKind
from proxy.client_answer import ClientAnswer
from proxy.error_mapping import error_response
from proxy.headers import asks_upgrade, switching_headers

if TYPE_CHECKING:
    from proxy.capture import Capture
    from proxy.client_answer import Answer
    from proxy.server import Request
    from proxy.upstream import UpstreamAnswer

__all__ = ["switch"]


class _Pipe(asyncio.Protocol):
    """One direction of a tunnel: what arrives on the upstream's transport is written to
    the client's, with flow control both ways."""

    def __init__(self, peer: asyncio.Transport, done: asyncio.Future[None]) -> None:
        self.peer = peer
        self.done = done
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.peer.is_closing():
            self.peer.write(data)

    def eof_received(self) -> bool:
        if self.peer.can_write_eof() and not self.peer.is_closing():
            self.peer.write_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.close()
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self) -> None:  # the upstream is full: stop reading the client
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()


class _ClientFeed:
    """Takes the client's bytes from the server's connection to the upstream (``b""``:
    the client closed), and stops reading the upstream while the client reads nothing
    (``proxy.server.TunnelEnd``)."""

    __slots__ = ("done", "upstream")

    def __init__(self, upstream: asyncio.Transport, done: asyncio.Future[None]) -> None:
        self.upstream = upstream
        self.done = done

    def feed(self, data: bytes) -> None:
        if data:
            if not self.upstream.is_closing():
                self.upstream.write(data)
            return
        self.upstream.close()
        if not self.done.done():
            self.done.set_result(None)

    def pause(self) -> None:
        if not self.upstream.is_closing():
            self.upstream.pause_reading()

    def resume(self) -> None:
        if not self.upstream.is_closing():
            self.upstream.resume_reading()


async def switch(
    request: Request,
    resp: UpstreamAnswer,
    role: str,
    trace_id: str,
    capture: Capture,
) -> Answer:
    """The upstream (``role``) switched protocols: relay the switch to a client that asked
    for it and tunnel the bytes both ways until either side closes; else 502."""
    if asks_upgrade(request) is None:
        capture.error = ErrorKind.ERROR  # a switch nobody asked for is not relayed
        return error_response(ErrorKind.ERROR, role, trace_id)
    out = ClientAnswer(101, resp.reason, switching_headers(resp.headers, trace_id), immediate=True)
    taken = resp.upgrade()
    client = request.transport
    if taken is None or client is None:
        capture.error = ErrorKind.RESET
        return error_response(ErrorKind.RESET, role, trace_id)
    up_transport, early = taken
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    up_transport.set_protocol(_Pipe(client, done))
    try:
        await out.prepare(request)
        if early:
            client.write(early)
        ahead = request.protocol.take_over(_ClientFeed(up_transport, done))
        if ahead:  # the client's bytes that came with its head
            up_transport.write(ahead)
        await done
    except ConnectionError:
        capture.client_gone = True
    finally:
        up_transport.close()
        client.close()
    return out
