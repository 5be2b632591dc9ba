"""Finished exchanges as the request path leaves them (plain values, bodies still encoded),
for the tests of the hand-over to the record writer."""

from __future__ import annotations

import gzip
import os
import time
import uuid

from multidict import CIMultiDict, CIMultiDictProxy, istr

from graygate.vocabulary import ErrorKind, Role, SkipReason
from proxy.capture import Capture
from proxy.exchange import Exchange
from proxy.tagging import Tags

__all__ = ["BODY", "exchange"]

BODY = b'{"id": 1, "items": [{"sku": "A-1", "qty": 2, "price": 19.99}], "total": 39.98}'


def _capture(body: bytes, headers: list[tuple[str, str]], limit: int) -> Capture:
    cap = Capture(limit)
    cap.status = 200
    cap.headers = CIMultiDictProxy(CIMultiDict(headers))
    cap.encoded(cap.headers)
    cap.add(body)
    cap.latency = 0.004
    return cap


def exchange(i: int, *, body: bytes = BODY, limit: int = 262_144) -> Exchange:
    """Exchange ``i``: ``POST /api/orders/{i}`` with a gzip request body; the primary
    answers 200 (``body``), the canary gzip-encoded, and the secondary times out."""
    ex = Exchange(
        received_at=time.time(),
        tags=Tags(uuid.uuid4().hex, os.urandom(8).hex(), None, "01", None),
        label="stable",
        method="POST",
        path=f"/api/orders/{i}",
        query="v=1&token=abc",
        headers=[
            (istr("Content-Type"), "application/json"),  # aiohttp's names are istr
            ("X-Note", "caf\udce9"),  # a byte outside UTF-8, as aiohttp passes it
        ],
        served_by=Role.PRIMARY,
    )
    ex.request = Capture(limit)
    ex.request.add(gzip.compress(b'{"card": "4111", "n": %d}' % i))
    ex.request_encoding = "gzip"
    ex.request_type = "application/json"
    ex.mirror_skipped = None if i % 7 else SkipReason.SAMPLED_OUT
    ex.captures[Role.PRIMARY] = _capture(body, [("Content-Type", "application/json")], limit)
    ex.captures[Role.CANARY] = _capture(
        gzip.compress(body),
        [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
        limit,
    )
    timed_out = Capture(limit)
    timed_out.error = ErrorKind.TIMEOUT
    timed_out.latency = 1.0
    ex.captures[Role.SECONDARY] = timed_out
    return ex
