"""Shadow-write comparison, the pure part: the rows each side wrote for one trace id, as the
record of the pseudo-endpoint ``WRITE <name>``. Pure: no I/O.

The rows of each side become a JSON array of objects (one per row, columns by name), the
"body" of that side's answer; the diff workers then compare the two bodies like any other,
under the write check's rules (``config.schema.WriteRules``, compiled by
``diff.rules.RuleBook``: strict by default, paired by ``key`` or by position), so missing
rows, extra rows and field differences are differences of the exchange, counted per write
check by the verdict's strict and tolerance checks. A side whose read failed is recorded as
an error (outcome ``error``), which the verdict's ``writes`` check counts.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson

from config.schema import WRITE_ENDPOINT_PREFIX
from graygate.values import Answer, RecordedExchange
from graygate.vocabulary import ErrorKind, Role, SkipReason

__all__ = [
    "WRITE_ENDPOINT_PREFIX",
    "WRITE_METHOD",
    "WRITE_OF_HEADER",
    "SideRead",
    "is_write_endpoint",
    "json_value",
    "rows_json",
    "write_endpoint",
    "write_record",
]

WRITE_METHOD = "WRITE"
_HEADERS = {"content-type": "application/json"}
WRITE_OF_HEADER = "x-graygate-write-of"


def write_endpoint(name: str) -> str:
    """``WRITE stock_moves``: the pseudo-endpoint of write check ``name``."""
    return WRITE_ENDPOINT_PREFIX + name


def is_write_endpoint(endpoint: str) -> bool:
    return endpoint.startswith(WRITE_ENDPOINT_PREFIX)


@dataclass(frozen=True, slots=True)
class SideRead:
    """One side's read: its rows (at most the cap; ``truncated`` when there were more), or
    what went wrong instead (one line, no URL)."""

    rows: tuple[Mapping[str, Any], ...] = ()
    truncated: bool = False
    error: str | None = None
    latency_ms: float | None = None


def json_value(value: Any) -> Any:
    """A column's value as JSON: numbers stay numbers (a NUMERIC is an integer when whole,
    else a float), times in ISO 8601, UUIDs as text, bytes in base64, arrays and JSON as
    they are."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return str(value)


def rows_json(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """The rows as a JSON array of objects (columns by name, in the query's order)."""
    return orjson.dumps([{str(k): json_value(v) for k, v in row.items()} for row in rows])


def _answer(side: SideRead) -> Answer:
    if side.error is not None:
        # What went wrong is kept as the body (the API's exchange view shows it).
        return Answer(error=ErrorKind.ERROR, body=side.error.encode("utf-8", "replace"))
    return Answer(
        status=200,
        headers=dict(_HEADERS),
        body=rows_json(side.rows),
        body_truncated=side.truncated,
        latency_ms=None,  # reads are no part of the latency check
    )


def write_record(
    *,
    run_id: int,
    name: str,
    span_id: str,
    trace_id: str,
    received_at: datetime,
    source: str,
    primary: SideRead | None,
    canary: SideRead | None,
) -> RecordedExchange:
    """The record of write check ``name`` for one exchange (``source``: its endpoint, e.g.
    ``POST /api/orders``): same trace id and time, the pseudo-endpoint ``WRITE <name>``,
    each side's rows as its answer's body, or the error of a read that failed (its reason
    as the body, never a URL); the exchange's endpoint is the request header
    ``x-graygate-write-of``. Without reads (``None``) the record says the exchange was
    not compared (``mirror_skipped`` ``not_write_checked``): the verdict sees every
    exchange the check covers."""
    skipped = primary is None or canary is None
    return RecordedExchange(
        run_id=run_id,
        trace_id=trace_id,
        span_id=span_id,
        received_at=received_at,
        endpoint=write_endpoint(name),
        method=WRITE_METHOD,
        path=name,
        query="",
        request_headers={WRITE_OF_HEADER: source},
        request_body=None,
        request_body_truncated=False,
        gray_label=None,
        served_by=Role.PRIMARY,
        mirror_skipped=SkipReason.NOT_WRITE_CHECKED if skipped else None,
        primary=None if primary is None or skipped else _answer(primary),
        canary=None if canary is None or skipped else _answer(canary),
    )
