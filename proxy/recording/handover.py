"""What crosses the pipe from a proxy process to its record writer process: frames.

A frame is a 4-byte length (little-endian) and that many bytes of ``marshal`` data: a tuple
of builtins (bytes, str, int, float, bool, None, tuples). ``marshal`` because it is the
fastest encoder of builtins CPython has (a C loop, no per-object class lookups, an order
faster than pickle's protocol machinery for small tuples, and ``json`` cannot carry bytes),
and because its reader builds builtins only: no class, no code object is ever named by the
data of an exchange, so ``loads`` of a frame cannot run anything (pickle's can). Its format
belongs to the Python version: both ends are the same interpreter (the proxy starts the
writer with ``sys.executable``).

Kinds (the tuple's first item):

- ``EXCHANGE``: one finished :class:`proxy.exchange.Exchange`: the request as sent upstream
  and each side's :class:`proxy.capture.Capture` (status, header fields as they came: the
  upstream parser's bytes joined by newlines, ``Capture.head_block``, or names and values
  when only those are known; the bounded body still encoded, latency, error, what became of
  the client). Nothing is decoded,
  redacted or matched on the request path: the writer does that (``RecordBuilder``).
- ``LOSSES``: ``(run_id, reason, n)``: exchanges the proxy could not hand over (its queue was
  full, a writer died with them), for ``run_losses``.

The first frame of a pipe is the writer's setup (``pickle``, from its own parent: the config
object is not a builtin); see ``graygate.record_writer``.
"""

from __future__ import annotations

import marshal
import struct
from typing import TYPE_CHECKING, Any, Final

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.capture import Capture
from proxy.exchange import Exchange
from proxy.tagging import Tags

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "EXCHANGE",
    "FRAME_HEAD",
    "LOSSES",
    "UNREADABLE",
    "decode_exchange",
    "encode_exchange",
    "encode_losses",
    "frame",
    "frames",
]

EXCHANGE: Final = 0
LOSSES: Final = 1
UNREADABLE: Final = (-1,)  # what frames() yields for a frame that is not marshal data
FRAME_HEAD: Final = struct.Struct("<I")
_pack_head = FRAME_HEAD.pack
_unpack_head = FRAME_HEAD.unpack_from
_HEAD = FRAME_HEAD.size
_dumps = marshal.dumps
_str = str.__str__
_VERSION: Final = 4  # marshal format 4 (CPython 3.4+): shares repeated strings


def frame(payload: bytes) -> bytes:
    """``payload`` with its length in front."""
    return _pack_head(len(payload)) + payload


def encode_exchange(ex: Exchange) -> bytes:
    """``ex`` as one frame."""
    req = ex.request
    caps = tuple(
        (
            str(role),
            cap.status,
            cap.head_block
            if cap.head_block is not None
            else None
            if cap.headers is None
            else _fields(cap.headers.keys(), cap.headers.values()),
            cap.body,
            cap.truncated,
            cap.latency,
            None if cap.error is None else str(cap.error),
            cap.client_gone,
            cap.client_stalled,
        )
        for role, cap in ex.captures.items()
    )
    tags = ex.tags
    skipped = ex.mirror_skipped
    message = (
        EXCHANGE,
        tags.trace_id,
        tags.span_id,
        ex.received_at,
        ex.method,
        ex.path,
        ex.query,
        _fields(*zip(*ex.headers, strict=True)) if ex.headers else ("", ()),
        None if req is None else (req.body, req.truncated),
        ex.request_encoding,
        ex.request_type,
        ex.label,
        str(ex.served_by),
        None if skipped is None else str(skipped),
        caps,
    )
    try:
        payload = _dumps(message, _VERSION)
    except ValueError:  # a str or int subclass somewhere (an aiohttp istr header name)
        payload = _dumps(_builtins(message), _VERSION)
    return _pack_head(len(payload)) + payload


def _builtins(value: Any) -> Any:
    """``value`` with every str, int and float subclass made the builtin (and lists
    tuples): what marshal takes."""
    if value is None or type(value) in (str, bytes, int, float, bool):
        return value
    if isinstance(value, tuple | list):
        return tuple(_builtins(v) for v in value)
    if isinstance(value, str):
        return _str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"a {type(value).__name__} cannot be handed to the record writer")


def _fields(names: Iterable[str], values: Iterable[str]) -> tuple[str, tuple[str, ...]]:
    """Header fields as ``(names joined by newlines, values)``: C loops only. Names come as
    multidict's ``istr`` (aiohttp's parser names well-known fields with its constants, a
    CIMultiDict's keys are ``istr``), which marshal refuses and ``str.join`` takes; a field
    name never holds a newline (a token), which the count checks."""
    vals = tuple(values)
    joined = "\n".join(names)
    if joined.count("\n") != len(vals) - 1 and vals:
        raise ValueError("a header field name with a newline")
    return joined, vals


def _pairs(fields: tuple[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    names, values = fields
    if not values:
        return []
    return list(zip(names.split("\n"), values, strict=True))


def encode_losses(run_id: int, reason: str, n: int) -> bytes:
    """``n`` exchanges of ``run_id`` lost for ``reason``, as one frame."""
    return frame(_dumps((LOSSES, run_id, str(reason), n), _VERSION))


def frames(buf: bytes | bytearray | memoryview, start: int = 0) -> Iterator[tuple[int, Any]]:
    """The whole frames of ``buf`` from ``start``: ``(end, message)`` pairs, ``end`` the
    offset just past the frame (a partial frame at the end is left for the next read). A
    frame whose bytes are not ``marshal`` data is ``(end, UNREADABLE)``: its length still
    says where the next one starts."""
    size = len(buf)
    pos = start
    view = memoryview(buf)
    try:
        while size - pos >= _HEAD:
            (n,) = _unpack_head(view, pos)
            end = pos + _HEAD + n
            if end > size:
                return
            try:
                message = marshal.loads(view[pos + _HEAD : end])
            except (ValueError, EOFError, TypeError):
                message = UNREADABLE
            pos = end
            yield end, message
    finally:
        view.release()


def decode_exchange(message: tuple[Any, ...]) -> Exchange:
    """The :class:`Exchange` an ``EXCHANGE`` message was made of (what ``RecordBuilder``
    reads of it)."""
    (
        _,
        trace_id,
        span_id,
        received_at,
        method,
        path,
        query,
        headers,
        req,
        request_encoding,
        request_type,
        label,
        served_by,
        mirror_skipped,
        caps,
    ) = message
    ex = Exchange(
        received_at=received_at,
        tags=Tags(trace_id, span_id, None, "01", None),
        label=label,
        method=method,
        path=path,
        query=query,
        headers=_pairs(headers),
        served_by=served_by,
    )
    if req is not None:
        body, truncated = req
        copy = Capture(len(body))
        copy.chunks = [body]
        copy.size = copy.total = len(body)
        copy.truncated = truncated
        ex.request = copy
    ex.request_encoding = request_encoding
    ex.request_type = request_type
    ex.mirror_skipped = mirror_skipped
    for role, status, fields, body, truncated, latency, error, gone, stalled in caps:
        cap = Capture(len(body))
        cap.status = status
        if type(fields) is bytes:  # the upstream's fields as they came
            cap.head_block = fields  # (its fields made when first asked for)
        elif fields is not None:
            cap.headers = CIMultiDictProxy(CIMultiDict(_pairs(fields)))
        cap.chunks = [body]
        cap.size = cap.total = len(body)
        cap.truncated = truncated
        cap.latency = latency
        cap.error = error
        cap.client_gone = gone
        cap.client_stalled = stalled
        ex.captures[role] = cap
    return ex
