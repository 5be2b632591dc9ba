"""Tagging (request path step 2): the trace ids and the gray label of one request.

Pure: headers in, :class:`Tags` out. An incoming W3C ``traceparent`` is honoured when it is
valid (``version-traceid-parentid-flags``, lower-case hex, ids not all zero, version not
``ff``); otherwise, failing that, a valid incoming ``X-Trace-ID``; otherwise a new trace
starts. Either way the proxy gets a span id of its own: it is the parent-id of the
``traceparent`` sent upstream, and the span id recorded on the exchange.

The gray label is the incoming gray header's value, or ``None`` (the router's side assigns
one later: ``cfg.gray.labels[served_by]``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping

__all__ = [
    "TRACEPARENT",
    "X_TRACE_ID",
    "Tags",
    "format_traceparent",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
    "tag_request",
]

logger = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
X_TRACE_ID = "X-Trace-ID"

_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_getrandbits = random.getrandbits


def new_trace_id() -> str:
    """32 lower-case hex digits, never all zero."""
    while True:
        value = _getrandbits(128)
        if value:
            return f"{value:032x}"


def new_span_id() -> str:
    """16 lower-case hex digits, never all zero."""
    while True:
        value = _getrandbits(64)
        if value:
            return f"{value:016x}"


def _is_hex(value: str) -> bool:
    return _HEX.issuperset(value)


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a valid ``traceparent``, else ``None``.

    Version ``00`` must be exactly 55 characters; a later version may carry more fields
    after a ``-`` (they are dropped: what is propagated is a version ``00`` header).
    """
    if value is None:
        return None
    value = value.strip()
    if len(value) < 55:
        return None
    version = value[:2]
    if (
        value[2] != "-"
        or value[35] != "-"
        or value[52] != "-"
        or not _is_hex(version)
        or version == "ff"
    ):
        return None
    if version == "00":
        if len(value) != 55:
            return None
    elif len(value) > 55 and value[55] != "-":
        return None
    trace_id = value[3:35]
    parent_id = value[36:52]
    flags = value[53:55]
    if not (_is_hex(trace_id) and _is_hex(parent_id) and _is_hex(flags)):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


def format_traceparent(trace_id: str, span_id: str, flags: str = "01") -> str:
    return f"00-{trace_id}-{span_id}-{flags}"


def _valid_trace_id(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if len(value) == 32 and _is_hex(value) and value != _ZERO_TRACE:
        return value
    return None


class Tags:
    """What tagging decided for one request."""

    __slots__ = ("flags", "label", "parent_id", "span_id", "trace_id", "traceparent")

    def __init__(
        self,
        trace_id: str,
        span_id: str,
        parent_id: str | None,
        flags: str,
        label: str | None,
    ) -> None:
        self.trace_id = trace_id  # 32 hex: the exchange's key and X-Trace-ID
        self.span_id = span_id  # the proxy's own span: parent-id sent upstream
        self.parent_id = parent_id  # the caller's span, when a traceparent came in
        self.flags = flags  # trace-flags, 2 hex
        self.label = label  # the incoming gray label, if any
        self.traceparent = format_traceparent(trace_id, span_id, flags)  # sent upstream

    def __repr__(self) -> str:
        return (
            f"Tags(trace_id={self.trace_id!r}, span_id={self.span_id!r}, "
            f"parent_id={self.parent_id!r}, flags={self.flags!r}, label={self.label!r})"
        )


def tag_request(headers: Mapping[str, str], gray_header: str) -> Tags:
    """Keep or create the trace context and read the gray label of a request.

    ``headers`` must look names up case-insensitively (aiohttp's ``request.headers``).
    """
    parsed = parse_traceparent(headers.get(TRACEPARENT))
    if parsed is not None:
        trace_id, parent_id, flags = parsed
        return Tags(trace_id, new_span_id(), parent_id, flags, headers.get(gray_header) or None)
    trace_id_in = _valid_trace_id(headers.get(X_TRACE_ID))
    return Tags(
        trace_id_in or new_trace_id(),
        new_span_id(),
        None,
        "01",
        headers.get(gray_header) or None,
    )
