"""Records and rows for the recording and recorder tests (no database needed to build them):
the one builder of a typical recorded exchange."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

from graygate.values import Answer, RecordedExchange
from store.exchanges import Row, exchange_row

__all__ = ["record", "rows"]

BODY = b'{"id": 1, "items": [{"sku": "A-1", "qty": 2, "price": 19.99}], "total": 39.98}'


def record(run_id: int, i: int) -> RecordedExchange:
    """Exchange ``i`` of run ``run_id``: ``GET /api/orders/{i}``, both sides 200 with BODY."""
    return RecordedExchange(
        run_id=run_id,
        trace_id=uuid.uuid4().hex,
        span_id=os.urandom(8).hex(),
        received_at=datetime.now(UTC),
        endpoint="GET /api/orders/{id}",
        method="GET",
        path=f"/api/orders/{i}",
        query="",
        request_headers={"accept": "application/json"},
        request_body=None,
        request_body_truncated=False,
        gray_label="stable",
        served_by="primary",
        primary=Answer(200, {"content-type": "application/json"}, BODY, False, 3.0),
        canary=Answer(200, {"content-type": "application/json"}, BODY, False, 4.0),
    )


def rows(run_id: int, n: int, start: int = 0) -> list[Row]:
    return [exchange_row(record(run_id, i)) for i in range(start, start + n)]
