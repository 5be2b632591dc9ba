"""``--log-format json``: one JSON object per log line, for log shippers.

Each line holds ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``trace_id``
when there is one (a record's ``trace_id`` extra, else the current OpenTelemetry span's),
``exc`` when an exception is logged, and any other ``extra`` fields that JSON can hold.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["LOG_FORMATS", "JsonFormatter"]

logger = logging.getLogger(__name__)

LOG_FORMATS = ("text", "json")

# Attributes every LogRecord has: not copied as extras.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _current_trace_id() -> str | None:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - opentelemetry is a dependency
        return None
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None) or _current_trace_id()
        if trace_id:
            out["trace_id"] = str(trace_id)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()
