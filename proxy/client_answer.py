"""The client's answer: the upstream's head as it came, plus only what the hop needs.

:class:`ClientAnswer` is the ``web.StreamResponse`` that forwarding (``proxy.forward``) and
the upgrade tunnel (``proxy.tunnel``) write to the client; what its header fields are is
``proxy.headers``' policy, how they are put on the wire is this module's.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["ClientAnswer"]


class ClientAnswer(web.StreamResponse):
    """The upstream's answer as the client gets it: its status line and header fields as
    they came (bytes outside UTF-8 included: they travel as surrogate escapes), plus only
    what the hop needs: ``Transfer-Encoding: chunked`` toward an HTTP/1.1 client when the
    upstream gave no length, ``Connection: close`` when the connection ends. No
    ``Content-Type``, ``Date`` or ``Server`` is invented, and a ``Content-Length`` on a
    304 or a HEAD answer stays. The head waits for the first body write unless
    ``immediate``."""

    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str]], *, immediate: bool
    ) -> None:
        super().__init__(status=status, reason=reason)
        self._pairs = headers
        self._immediate = immediate
        self._framing: list[tuple[str, str]] = []
        length = None
        for k, v in headers:
            if k.lower() == "content-length":
                try:
                    length = int(v)
                except ValueError:
                    length = None
        self._declared = length

    @property
    def chunked_out(self) -> bool:
        """The answer goes to the client in chunks (so trailers can follow)."""
        return any(k == "Transfer-Encoding" for k, _ in self._framing)

    async def _prepare_headers(self) -> None:
        request = self._req
        writer = self._payload_writer
        assert request is not None and writer is not None
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = request.keep_alive
        framing = self._framing
        if self.status == 101:
            self._keep_alive = False  # the connection is the tunnel's now
            return
        if self._must_be_empty_body:
            pass
        elif self._declared is not None:
            writer.length = self._declared
        elif request.version >= (1, 1):
            writer.enable_chunking()
            framing.append(("Transfer-Encoding", "chunked"))
        else:
            keep_alive = False  # the end of the body is the end of the connection
        if not keep_alive:
            if request.version >= (1, 1):
                framing.append(("Connection", "close"))
        elif request.version < (1, 1):
            framing.append(("Connection", "keep-alive"))
        self._keep_alive = keep_alive

    async def _write_headers(self) -> None:
        request = self._req
        writer = self._payload_writer
        assert request is not None and writer is not None
        version = request.version
        status = f"HTTP/{version[0]}.{version[1]} {self.status} {self.reason}\r\n"
        fields = "".join([f"{k}: {v}\r\n" for k, v in (*self._pairs, *self._framing)])
        head = status.encode("latin-1") + fields.encode("utf-8", "surrogateescape") + b"\r\n"
        # aiohttp's serializer drops what is not UTF-8: hand the writer the exact bytes.
        writer._headers_buf = head  # type: ignore[attr-defined]
        writer._headers_written = False  # type: ignore[attr-defined]
        if self._immediate:
            writer.send_headers()

    async def write_trailers(self, trailers: list[tuple[str, str]]) -> None:
        """End a chunked answer with ``trailers`` (the last chunk and the fields)."""
        writer = self._payload_writer
        assert writer is not None and self.chunked_out
        block = "".join([f"{k}: {v}\r\n" for k, v in trailers])
        writer.chunked = False  # type: ignore[attr-defined]  # the last chunk is written here
        await self.write_eof(b"0\r\n" + block.encode("utf-8", "surrogateescape") + b"\r\n")
