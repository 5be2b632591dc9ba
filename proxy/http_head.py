"""Where an HTTP/1.x head ends: one search for both sides (the proxied port's requests,
``proxy.server``; the upstreams' answers, ``proxy.upstream``)."""

from __future__ import annotations

__all__ = ["head_end"]


def head_end(buf: bytes | bytearray, start: int, stop: int) -> int:
    """The end of the first head in ``buf`` (after its empty line, CRLF or a bare LF), or
    -1. Searched from ``start`` (where an earlier search of the same head stopped, less
    the 2 bytes an empty line may straddle), so that collecting a head in pieces is linear
    in its size, and only up to ``stop`` (the end of the longest head allowed), so that a
    head that never ends costs a scan of the bound, not of everything that arrived."""
    crlf = buf.find(b"\n\r\n", start, stop)
    if crlf < 0:
        lf = buf.find(b"\n\n", start, stop)
        return -1 if lf < 0 else lf + 2
    # A bare LF empty line before it? Searched up to it only, not through the body.
    lf = buf.find(b"\n\n", start, crlf + 1)
    return crlf + 3 if lf < 0 else lf + 2
