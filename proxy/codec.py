"""Decode ``Content-Encoding`` (gzip, deflate, br) for storage, bounded.

The client always gets the upstream's bytes untouched; what is recorded is the decoded body,
so that the diff compares content, not compression. Output is bounded (a small compressed
body can expand enormously), and a body that cannot be decoded is stored as it came.
"""

from __future__ import annotations

import logging
import zlib

import brotli

__all__ = ["decode_body"]

logger = logging.getLogger(__name__)


def _zlib(data: bytes, wbits: int, limit: int) -> tuple[bytes, bool]:
    d = zlib.decompressobj(wbits)
    out = d.decompress(data, limit + 1)
    # gzip may hold several members; decode them too while there is room.
    while d.eof and d.unused_data and len(out) <= limit and wbits > 15:
        rest = d.unused_data
        d = zlib.decompressobj(wbits)
        out += d.decompress(rest, limit + 1 - len(out))
    if len(out) > limit:
        return out[:limit], True
    return out, False


def _gzip(data: bytes, limit: int) -> tuple[bytes, bool]:
    return _zlib(data, 16 + zlib.MAX_WBITS, limit)


def _deflate(data: bytes, limit: int) -> tuple[bytes, bool]:
    # "deflate" should be zlib-wrapped; some servers send raw deflate.
    try:
        return _zlib(data, zlib.MAX_WBITS, limit)
    except zlib.error:
        return _zlib(data, -zlib.MAX_WBITS, limit)


def _brotli(data: bytes, limit: int) -> tuple[bytes, bool]:
    d = brotli.Decompressor()
    out = d.process(data, output_buffer_limit=limit + 1)
    # The decoder stops at its output bound with input left: ask for the rest (bounded).
    for _ in range(1024):
        if len(out) > limit or d.is_finished() or d.can_accept_more_data():
            break
        out += d.process(b"", output_buffer_limit=limit + 1 - len(out))
    if len(out) > limit:
        return out[:limit], True
    return out, False


_DECODERS = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
}


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> tuple[bytes, bool]:
    """``body`` decoded from ``content_encoding``, at most ``limit`` bytes, and whether it was
    cut. Unknown encodings and undecodable bodies come back as they are (bounded)."""
    if not content_encoding or not body:
        return (body[:limit], True) if len(body) > limit else (body, False)
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    data = body
    cut = False
    for coding in reversed(codings):  # the last one applied is undone first
        if coding in ("", "identity"):
            continue
        decoder = _DECODERS.get(coding)
        if decoder is None:
            data = body
            cut = False
            break
        try:
            data, stage_cut = decoder(data, limit)
        except (zlib.error, brotli.error, ValueError):
            data = body
            cut = False
            break
        cut = cut or stage_cut
    if len(data) > limit:
        return data[:limit], True
    return data, cut
