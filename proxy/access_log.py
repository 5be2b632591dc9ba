"""The access log: one line per proxied request (``log.access: true``, or ``graygate serve
--access-log``; off by default).

A line is written when the exchange is complete (its mirror's answers in, as the record
is), through the logger ``proxy.access_log`` at INFO, whatever ``--log-level`` says (it was
asked for by itself), so it takes the process's format: text, or with ``--log-format json``
one JSON object whose fields are those below. Fields:

- ``method``, ``path``: the request's method and target, its query string as the record
  stores it: values of redacted parameters (``access_token``, ``password``,
  ``redact.json_fields``...: ``proxy.redact.Redactor.query``) replaced, never logged;
- ``status``: the serving side's status (502/504 when graygate answered for a failed
  upstream; in shadow mode the primary's, the mirror source got 202); ``-`` when the client
  went away before an answer;
- ``bytes``: body bytes of the serving side's answer, as forwarded;
- ``duration_ms``: from the request received to the client's answer sent (in shadow mode:
  to the last of the fanned-out answers);
- ``trace_id``, ``served_by`` (primary | canary) and ``mirror``: ``ok``, the mirror's error
  kind (timeout | refused | reset | error), or ``skipped:REASON``
  (``graygate.vocabulary.SkipReason``).

Text that came from the client is made safe for a log line: bytes outside UTF-8 and control
characters are written as escapes.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from graygate.vocabulary import ErrorKind, Role
from proxy.capture import Capture
from proxy.exchange import Exchange
from proxy.redact import Redactor

__all__ = ["AccessLog", "mirror_outcome"]

logger = logging.getLogger(__name__)

_SKIPPED: Final = "skipped:"


def _safe(text: str) -> str:
    """``text`` as one printable line: bytes outside UTF-8 (surrogate escapes) as ``\\xNN``,
    control characters as ``\\n``, ``\\x1b``..."""
    if text.isascii() and text.isprintable():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _client_status(cap: Capture | None) -> int | None:
    if cap is None:
        return None
    if cap.status is not None:
        return cap.status
    if cap.client_gone:
        return None  # nobody was answered
    return 504 if cap.error == ErrorKind.TIMEOUT else 502


def mirror_outcome(ex: Exchange) -> str:
    """What became of the exchange's mirror: ``ok``, an error kind, or ``skipped:REASON``."""
    if ex.mirror_skipped is not None:
        return _SKIPPED + ex.mirror_skipped
    other = Role.CANARY if ex.served_by == Role.PRIMARY else Role.PRIMARY
    cap = ex.captures.get(other)
    if cap is None:
        return ErrorKind.ERROR  # started, and nothing came back (cancelled)
    return cap.error or "ok"


class AccessLog:
    """Writes the access log's lines; build one only when the log is on."""

    __slots__ = ("_redactor",)

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        logger.setLevel(logging.INFO)  # asked for: shown whatever the root logger's level

    def write(self, ex: Exchange) -> None:
        served = ex.captures.get(ex.served_by)
        status = _client_status(served)
        path = _safe(ex.path)
        if ex.query:
            path += "?" + _safe(self._redactor.query(ex.query))
        end = ex.answered_at if ex.answered_at is not None else time.time()
        duration_ms = round(max(0.0, end - ex.received_at) * 1000.0, 3)
        size = 0 if served is None else served.total
        mirror = mirror_outcome(ex)
        method = _safe(ex.method)
        logger.info(
            "%s %s %s %dB %.3fms trace_id=%s served_by=%s mirror=%s",
            method,
            path,
            "-" if status is None else status,
            size,
            duration_ms,
            ex.tags.trace_id,
            ex.served_by,
            mirror,
            extra={
                "method": method,
                "path": path,
                "status": status,
                "bytes": size,
                "duration_ms": duration_ms,
                "trace_id": ex.tags.trace_id,
                "served_by": ex.served_by,
                "mirror": mirror,
            },
        )
