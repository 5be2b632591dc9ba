"""A TCP forwarder on loopback that a test can break: real faults between two components.

After asyncpg's ``ProxiedClusterTestCase``: point a client at ``proxy.port`` instead of the
server's, then

- ``await proxy.block()``: close every open connection and refuse new ones (the port stops
  listening: connection refused), as when the server goes away;
- ``await proxy.hang()``: keep accepting, but forward nothing either way (timeouts), as when
  the network drops packets;
- ``await proxy.unblock()``: forward again (on the same port).

::

    async with FaultProxy.before(database_url) as proxy:
        url = proxy.rewrite(database_url)
        ...
        await proxy.block()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Self

from sqlalchemy.engine import make_url

from graygate.tasks import TaskSet

__all__ = ["FaultProxy"]

logger = logging.getLogger(__name__)

_CHUNK = 65536


class FaultProxy:
    """Forwards loopback TCP connections to ``target_host:target_port``, or to the unix
    socket ``target_socket`` when given (the embedded PostgreSQL listens on one)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        target_socket: str | None = None,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.target_socket = target_socket
        self.host = host
        self._port = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks = TaskSet("faultproxy")
        self.accepted = 0  # connections accepted so far

    @classmethod
    def before(cls, database_url: str) -> FaultProxy:
        """A proxy in front of the PostgreSQL server of ``database_url`` (a SQLAlchemy URL):
        its host and port, or its unix socket when ``?host=`` names a directory."""
        url = make_url(database_url)
        port = url.port or 5432
        socket_dir = url.query.get("host")
        if isinstance(socket_dir, str) and socket_dir.startswith("/"):
            return cls("", port, target_socket=f"{socket_dir}/.s.PGSQL.{port}")
        return cls(url.host or "127.0.0.1", port)

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FaultProxy not started")
        return self._port

    def rewrite(self, url: str) -> str:
        """``url`` (a SQLAlchemy database URL) pointing at this proxy instead."""
        parsed = make_url(url)
        return (
            parsed.difference_update_query(["host"])
            .set(host=self.host, port=self.port)
            .render_as_string(False)
        )

    async def start(self) -> None:
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, reuse_address=True
        )
        if not self._port:
            self._port = self._server.sockets[0].getsockname()[1]

    async def block(self) -> None:
        """Close the open connections and refuse new ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._abort_all()
        await asyncio.sleep(0)

    async def hang(self) -> None:
        """Accept connections but forward nothing (either way) until ``unblock``."""
        self._flowing.clear()
        if self._server is None:
            await self._listen()

    async def unblock(self) -> None:
        self._flowing.set()
        if self._server is None:
            await self._listen()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._flowing.set()
        self._abort_all()
        await self._tasks.drain(grace=2.0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            await self._flowing.wait()
            try:
                if self.target_socket is not None:
                    up_reader, up_writer = await asyncio.open_unix_connection(self.target_socket)
                else:
                    up_reader, up_writer = await asyncio.open_connection(
                        self.target_host, self.target_port
                    )
            except OSError:
                writer.transport.abort()
                return
            if writer not in self._writers:  # blocked while connecting
                up_writer.transport.abort()
                return
            self._writers.add(up_writer)
            self._tasks.spawn(self._pump(up_reader, writer, up_writer), name="down")
            await self._pump(reader, up_writer, writer)
        finally:
            self._writers.discard(writer)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        other: asyncio.StreamWriter,
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                if writer.is_closing():
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (writer, other):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.transport.abort()
