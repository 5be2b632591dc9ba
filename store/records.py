"""Plain values that cross from the proxy to the store: what one exchange recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["ExchangeRecord", "Response"]


@dataclass(slots=True)
class Response:
    """What one upstream answered, or the error in place of an answer."""

    status: int | None = None
    headers: dict[str, str] | None = None  # lower-case names, redacted
    body: bytes | None = None  # decoded (no gzip/br), redacted, at most the bound
    body_truncated: bool = False
    latency_ms: float | None = None
    error: str | None = None  # timeout | refused | reset | error


@dataclass(slots=True)
class ExchangeRecord:
    """One client request and what each upstream answered; keyed by its trace id."""

    run_id: int
    trace_id: str
    span_id: str
    received_at: datetime
    endpoint: str
    method: str
    path: str
    query: str
    request_headers: dict[str, str]
    request_body: bytes | None
    request_body_truncated: bool
    gray_label: str | None
    served_by: str  # primary | canary
    mirror_skipped: str | None = None
    primary: Response | None = None
    canary: Response | None = None
    secondary: Response | None = None
    extra: dict[str, str] = field(default_factory=dict)
