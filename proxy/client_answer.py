"""The client's answer: a status line, header fields and a body, as the proxied port's
server (``proxy.server``) puts them on the wire.

:class:`Answer` is what the proxy's handler returns: a whole one (``body``: the errors, the
shadow mode's 202) or one written as it comes (:class:`ClientAnswer`: forwarding,
``proxy.forward``, and the upgrade tunnel, ``proxy.tunnel``). What its header fields are is
``proxy.headers``' policy; how they are put on the wire is this module's: the fields as
given, in order (bytes outside UTF-8 included: they travel as surrogate escapes), plus only
what the hop needs. No ``Content-Type``, ``Date`` or ``Server`` is invented, and a
``Content-Length`` on a 304 or a HEAD answer stays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from proxy.server import Connection, Request

__all__ = ["REASONS", "Answer", "ClientAnswer"]

REASONS: Final = {
    100: "Continue",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    404: "Not Found",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


class Answer:
    """An answer written to the client: its status line and header fields as given, plus
    only what the hop needs (``Transfer-Encoding: chunked`` toward an HTTP/1.1 client when
    no length is known, ``Connection: close`` when the connection ends, ``keep-alive``
    toward an HTTP/1.0 client that keeps it). ``body``: a whole answer (its
    ``Content-Length`` added); else the caller writes it: :meth:`prepare`, :meth:`write`,
    :meth:`write_eof`. The head waits for the first body write unless ``immediate``."""

    __slots__ = (
        "_body",
        "_chunked",
        "_conn",
        "_declared",
        "_done",
        "_fields",
        "_head",
        "_immediate",
        "_keep_alive",
        "_pairs",
        "_request",
        "reason",
        "status",
    )

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        immediate: bool = True,
    ) -> None:
        self.status = status
        self.reason = reason if reason is not None else REASONS.get(status, "Unknown")
        pairs = list(headers) if headers else []
        declared = None
        if body is not None:
            if content_type is not None:
                pairs.append(("Content-Type", content_type))
            if not (100 <= status < 200 or status in (204, 304)):
                pairs.append(("Content-Length", str(len(body))))
        else:
            for k, v in pairs:
                if k.lower() == "content-length":
                    try:
                        declared = int(v)
                    except ValueError:
                        declared = None
        self._pairs = pairs
        self._fields: bytes | None = None  # the fields on the wire already (from_fields)
        self._body = body
        self._declared = declared
        self._immediate = immediate
        self._request: Request | None = None
        self._conn: Connection | None = None
        self._head: bytes | None = None  # built, not yet written
        self._chunked = False
        self._keep_alive = True
        self._done = False

    @classmethod
    def text(cls, status: int, text: str = "") -> Answer:
        return cls(status, body=text.encode(), content_type="text/plain; charset=utf-8")

    @property
    def prepared(self) -> bool:
        return self._request is not None

    @property
    def chunked_out(self) -> bool:
        """The answer goes to the client in chunks (so trailers can follow)."""
        return self._chunked

    @property
    def keep_alive(self) -> bool:
        return self._keep_alive

    def _empty(self, request: Request) -> bool:
        status = self.status
        return request.method == "HEAD" or status < 200 or status in (204, 304)

    async def prepare(self, request: Request) -> None:
        """Build the head (written now when ``immediate``, else with the first bytes)."""
        if self._request is not None:
            return
        self._request = request
        conn = self._conn = request.protocol
        version = request.version
        framing: list[tuple[str, str]] = []
        keep_alive = request.keep_alive and conn.keeps(request)
        if self.status == 101:
            keep_alive = False  # the connection is the tunnel's now
        elif self._empty(request) or self._body is not None or self._declared is not None:
            pass
        elif version >= (1, 1):
            self._chunked = True
            framing.append(("Transfer-Encoding", "chunked"))
        else:
            keep_alive = False  # the end of the body is the end of the connection
        if self.status != 101:
            if not keep_alive:
                if version >= (1, 1):
                    framing.append(("Connection", "close"))
            elif version < (1, 1):
                framing.append(("Connection", "keep-alive"))
        self._keep_alive = keep_alive
        line = f"HTTP/{version[0]}.{version[1]} {self.status} {self.reason}\r\n"
        if self._fields is not None:
            fields = "".join([f"{k}: {v}\r\n" for k, v in framing])
            head = b"".join((line.encode("latin-1"), self._fields, fields.encode(), b"\r\n"))
        else:
            fields = "".join([f"{k}: {v}\r\n" for k, v in (*self._pairs, *framing)])
            head = line.encode("latin-1") + fields.encode("utf-8", "surrogateescape") + b"\r\n"
        body = self._body
        if body is not None:
            self._done = True
            conn.write(head if self._empty(request) else head + body)
            return
        if self._immediate:
            conn.write(head)
        else:
            self._head = head

    async def write(self, data: bytes) -> None:
        conn = self._conn
        assert conn is not None and self._request is not None, "write before prepare"
        head = self._head
        if self._empty(self._request):
            data = b""
        if self._chunked and data:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if head is not None:
            self._head = None
            data = head + data
        if data:
            conn.write(data)
            await conn.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if self._done:
            return
        if data:
            await self.write(data)
        self._done = True
        conn = self._conn
        assert conn is not None
        tail = b"0\r\n\r\n" if self._chunked else b""
        head = self._head
        if head is not None:
            self._head = None
            tail = head + tail
        if tail:
            conn.write(tail)
            await conn.drain()

    async def write_trailers(self, trailers: list[tuple[str, str]]) -> None:
        """End a chunked answer with ``trailers`` (the last chunk and the fields)."""
        conn = self._conn
        assert conn is not None and self._chunked
        self._done = True
        block = "".join([f"{k}: {v}\r\n" for k, v in trailers])
        conn.write(b"0\r\n" + block.encode("utf-8", "surrogateescape") + b"\r\n")
        await conn.drain()

    @property
    def finished(self) -> bool:
        return self._done


class ClientAnswer(Answer):
    """The upstream's answer as the client gets it: its status line and header fields as
    they came, plus ``Transfer-Encoding: chunked`` toward an HTTP/1.1 client when the
    upstream gave no length, ``Connection: close`` when the connection ends. The head waits
    for the first body write unless ``immediate``."""

    __slots__ = ()

    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str]], *, immediate: bool
    ) -> None:
        super().__init__(status, reason, headers, immediate=immediate)

    @classmethod
    def from_fields(
        cls, status: int, reason: str, fields: bytes, declared: int | None, *, immediate: bool
    ) -> ClientAnswer:
        """The same answer from its header fields as they go on the wire (``name: value``
        lines, ``proxy.headers.client_fields``) and the ``Content-Length`` they declare."""
        answer = cls(status, reason, [], immediate=immediate)
        answer._fields = fields
        answer._declared = declared
        return answer
