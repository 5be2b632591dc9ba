"""What one upstream answered, as it came, with a bounded copy of its body for the record.

A :class:`Capture` is filled by forwarding (the serving side), by a mirror, and for the
request body by the handler; the record is built from it once the exchange is done
(``proxy.recording.building``). Plain values only: status, the header fields as the
upstream sent them, the body's chunks (still encoded), latency, the error kind, and what
became of the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["ENCODED_FACTOR", "Capture", "header_fields"]

ENCODED_FACTOR: Final = 4


class Capture:
    """What one upstream answered, as it came (headers as sent, body still encoded),
    with a copy of the body bounded at ``limit`` bytes."""

    __slots__ = (
        "_headers",
        "chunks",
        "client_gone",
        "client_stalled",
        "error",
        "head_block",
        "head_sent",
        "latency",
        "limit",
        "size",
        "status",
        "total",
        "truncated",
        "upstream_head",
    )

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status: int | None = None
        self._headers: CIMultiDictProxy[str] | None = None
        # The header fields as they came (names and values in turn, joined by newlines),
        # when an upstream's parser gave them (``head``): what the record writer is handed,
        # and what ``headers`` is made of when first asked for.
        self.head_block: bytes | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.total = 0  # body bytes seen (the copy keeps up to limit of them)
        self.truncated = False
        self.latency: float | None = None  # seconds
        self.error: str | None = None
        self.client_gone = False
        self.client_stalled = False  # the client was cut off: it took no bytes in time
        self.upstream_head: float | None = None  # seconds: first byte written to head parsed
        self.head_sent: float | None = None  # perf_counter() when the client's head went out

    @property
    def headers(self) -> CIMultiDictProxy[str] | None:
        """The answer's header fields (None: no head came)."""
        headers = self._headers
        if headers is None and self.head_block is not None:
            headers = self._headers = header_fields(self.head_block)
        return headers

    @headers.setter
    def headers(self, headers: CIMultiDictProxy[str] | None) -> None:
        self._headers = headers
        self.head_block = None

    def head(self, status: int, block: bytes) -> None:
        """The answer's head: its status and its header fields as the upstream's parser gave
        them (``header_fields``); the bound widened for a compressed body (``encoded``)."""
        self.status = status
        self._headers = None
        self.head_block = block
        if b"content-encoding" in block.lower():  # (exactly: encoded)
            headers = self.headers
            assert headers is not None
            self.encoded(headers)

    def encoded(self, headers: Mapping[str, str]) -> None:
        """The body is compressed (``Content-Encoding``): keep up to ``ENCODED_FACTOR``
        times the bound of it, so that the decoded copy can fill the bound (a compressed
        stream cut at the bound decodes to far less, brotli to nothing of its last block)."""
        coding = headers.get("Content-Encoding")
        if coding and coding.strip().lower() != "identity":
            self.limit *= ENCODED_FACTOR

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - self.size
        if len(chunk) > room:
            self.truncated = True
            if room <= 0:
                return
            chunk = chunk[:room]
        self.chunks.append(chunk)
        self.size += len(chunk)

    @property
    def body(self) -> bytes:
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)


def header_fields(block: bytes) -> CIMultiDictProxy[str]:
    """Header fields from their names and values as they came, joined by newlines (which no
    name or value holds: an upstream parser's ``head_block``)."""
    if not block:
        return CIMultiDictProxy(CIMultiDict())
    it = iter(block.decode("utf-8", "surrogateescape").split("\n"))
    # (A list: CIMultiDict takes one in a single pass, faster than an iterator.)
    return CIMultiDictProxy(CIMultiDict(list(zip(it, it, strict=True))))
