"""Record building without a server: an ``Exchange`` as the request path leaves it (plain
values, bodies still encoded) in, the ``RecordedExchange`` the recorder stores out."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from config.load import config_from_mapping
from config.schema import GraygateConfig
from graygate.vocabulary import ErrorKind, Role, SkipReason
from proxy.capture import ENCODED_FACTOR, Capture
from proxy.exchange import Exchange
from proxy.recording.building import RecordBuilder
from proxy.tagging import Tags

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
LIMIT = 64  # record.max_body_bytes in these tests


def _cfg(**extra: Any) -> GraygateConfig:
    data: dict[str, Any] = {
        "run": "test",
        "upstreams": {"primary": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"},
        "record": {"max_body_bytes": LIMIT},
        "redact": {"json_fields": ["$.card"]},
        "compare": {"endpoints": [{"match": "POST /api/orders/{order}/pay"}]},
    }
    data.update(extra)
    return config_from_mapping(data, env={})


def _exchange(method: str = "GET", path: str = "/api/orders/1042", query: str = "") -> Exchange:
    return Exchange(
        received_at=1_700_000_000.25,
        tags=Tags(TRACE, SPAN, None, "01", "blue"),
        label="blue",
        method=method,
        path=path,
        query=query,
        headers=[("Accept", "application/json"), ("Authorization", "Bearer s3cret")],
        served_by=Role.PRIMARY,
        host="shop.example",
    )


def _capture(
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    *,
    status: int = 200,
    latency: float | None = 0.0125,
) -> Capture:
    cap = Capture(LIMIT)
    cap.status = status
    cap.headers = CIMultiDictProxy(CIMultiDict(headers or []))
    cap.encoded(cap.headers)
    cap.add(body)
    cap.latency = latency
    return cap


def test_an_exchange_becomes_its_record() -> None:
    ex = _exchange("POST", "/api/orders/1042/pay", "token=abc&v=1")
    ex.request = Capture(LIMIT)
    ex.request.add(gzip.compress(b'{"card": "4111", "amount": 5}'))
    ex.request_encoding = "gzip"
    ex.request_type = "application/json"
    ex.captures[Role.PRIMARY] = _capture(
        b'{"card": "4111", "ok": true}',
        [("Content-Type", "application/json"), ("Connection", "keep-alive"), ("X-A", "1")],
    )
    ex.captures[Role.CANARY] = _capture(
        gzip.compress(b'{"ok": true}'),
        [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
        status=201,
        latency=0.5,
    )
    rec = RecordBuilder.from_config(_cfg(), run_id=7).build(ex)

    assert (rec.run_id, rec.trace_id, rec.span_id) == (7, TRACE, SPAN)
    assert rec.received_at == datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)
    assert rec.endpoint == "POST /api/orders/{order}/pay"
    assert (rec.method, rec.path) == ("POST", "/api/orders/1042/pay")
    assert rec.query == "token=%5BREDACTED%5D&v=1"  # the placeholder, form-encoded
    assert rec.request_headers == {"accept": "application/json", "authorization": "[REDACTED]"}
    assert rec.request_body is not None
    assert orjson.loads(rec.request_body) == {"card": "[REDACTED]", "amount": 5}
    assert rec.request_body_truncated is False
    assert (rec.gray_label, rec.served_by, rec.mirror_skipped) == ("blue", "primary", None)
    primary, canary = rec.primary, rec.canary
    assert primary is not None and canary is not None
    assert primary.status == 200 and primary.error is None
    assert primary.headers == {"content-type": "application/json", "x-a": "1"}  # no hop-by-hop
    assert orjson.loads(primary.body or b"") == {"card": "[REDACTED]", "ok": True}
    assert primary.latency_ms == 12.5
    assert canary.status == 201 and canary.latency_ms == 500.0
    assert canary.body == b'{"ok": true}'  # decoded
    assert canary.headers["content-encoding"] == "gzip"  # as the canary sent it
    assert rec.secondary is None
    assert rec.extra == {}


def test_endpoint_from_id_like_segments_without_a_rule() -> None:
    rec = RecordBuilder.from_config(_cfg(), run_id=1).build(_exchange(path="/api/users/77/cart"))
    assert rec.endpoint == "GET /api/users/{id}/cart"


def test_a_side_that_failed_has_its_error_and_no_answer() -> None:
    ex = _exchange()
    timed_out = Capture(LIMIT)
    timed_out.error = ErrorKind.TIMEOUT
    ex.captures[Role.PRIMARY] = _capture(b"{}")
    ex.captures[Role.CANARY] = timed_out
    refused = Capture(LIMIT)
    refused.error = ErrorKind.REFUSED
    refused.latency = 0.002
    ex.captures[Role.SECONDARY] = refused
    rec = RecordBuilder.from_config(_cfg(), run_id=1).build(ex)
    assert rec.canary is not None
    assert (rec.canary.status, rec.canary.error, rec.canary.latency_ms) == (None, "timeout", None)
    assert rec.canary.headers == {} and rec.canary.body is None
    assert rec.secondary is not None
    assert (rec.secondary.error, rec.secondary.latency_ms) == ("refused", 2.0)


def test_no_side_captured_records_none() -> None:
    ex = _exchange()
    ex.mirror_skipped = SkipReason.SAMPLED_OUT
    rec = RecordBuilder.from_config(_cfg(), run_id=1).build(ex)
    assert (rec.primary, rec.canary, rec.secondary) == (None, None, None)
    assert rec.mirror_skipped == "sampled_out"
    assert rec.request_body is None and rec.request_body_truncated is False


def test_body_at_the_bound_is_whole_one_byte_over_is_cut() -> None:
    ex = _exchange()
    ex.captures[Role.PRIMARY] = _capture(b"a" * LIMIT)
    ex.captures[Role.CANARY] = _capture(b"b" * (LIMIT + 1))
    rec = RecordBuilder.from_config(_cfg(), run_id=1).build(ex)
    assert rec.primary is not None and rec.canary is not None
    assert rec.primary.body == b"a" * LIMIT and rec.primary.body_truncated is False
    assert rec.canary.body == b"b" * LIMIT and rec.canary.body_truncated is True


def test_decoded_body_at_the_bound_is_whole_one_byte_over_is_cut() -> None:
    """A compressed body is kept up to ``ENCODED_FACTOR`` times the bound and decoded to
    the bound: what decodes to one byte more is recorded cut."""
    ex = _exchange()
    gz = [("Content-Encoding", "gzip")]
    ex.captures[Role.PRIMARY] = _capture(gzip.compress(b"a" * LIMIT), gz)
    ex.captures[Role.CANARY] = _capture(gzip.compress(b"b" * (LIMIT + 1)), gz)
    assert ex.captures[Role.CANARY].limit == LIMIT * ENCODED_FACTOR
    rec = RecordBuilder.from_config(_cfg(), run_id=1).build(ex)
    assert rec.primary is not None and rec.canary is not None
    assert rec.primary.body == b"a" * LIMIT and rec.primary.body_truncated is False
    assert rec.canary.body == b"b" * LIMIT and rec.canary.body_truncated is True


def test_request_body_cut_in_the_capture_or_in_decoding() -> None:
    builder = RecordBuilder.from_config(_cfg(), run_id=1)
    whole = _exchange("POST")
    whole.request = Capture(LIMIT)
    whole.request.add(b"r" * LIMIT)
    rec = builder.build(whole)
    assert rec.request_body == b"r" * LIMIT and rec.request_body_truncated is False
    cut = _exchange("POST")
    cut.request = Capture(LIMIT)
    cut.request.add(b"r" * (LIMIT + 1))
    rec = builder.build(cut)
    assert rec.request_body == b"r" * LIMIT and rec.request_body_truncated is True
    decoded_over = _exchange("POST")
    decoded_over.request = Capture(LIMIT)
    decoded_over.request.add(gzip.compress(b"r" * (LIMIT + 1)))
    decoded_over.request_encoding = "gzip"
    rec = builder.build(decoded_over)
    assert rec.request_body == b"r" * LIMIT and rec.request_body_truncated is True


def test_header_bytes_outside_utf8_are_stored_escaped() -> None:
    ex = _exchange()
    # Bytes outside UTF-8 travel as surrogate escapes (latin-1 "café").
    raw = b"caf\xe9".decode("utf-8", "surrogateescape")
    ex.headers.append(("X-Name", raw))
    ex.headers.append(("X-Utf8", "caf\u00e9"))
    ex.captures[Role.PRIMARY] = _capture(b"{}", [("X-Name", raw)])
    rec = RecordBuilder.from_config(_cfg(), run_id=1).build(ex)
    assert rec.request_headers["x-name"] == "caf\\xe9"
    assert rec.request_headers["x-utf8"] == "caf\u00e9"  # valid UTF-8 stays as it is
    assert rec.primary is not None and rec.primary.headers["x-name"] == "caf\\xe9"
    for value in (*rec.request_headers.values(), *rec.primary.headers.values()):
        value.encode("utf-8")  # storable


def test_what_became_of_the_client_is_in_extra() -> None:
    builder = RecordBuilder.from_config(_cfg(), run_id=1)
    gone = _exchange()
    gone.captures[Role.PRIMARY] = cap = _capture(b"{}")
    cap.client_gone = True
    assert builder.build(gone).extra == {"client_disconnected": "true"}
    stalled = _exchange()
    stalled.captures[Role.PRIMARY] = cap = _capture(b"{}")
    cap.client_gone = cap.client_stalled = True
    assert builder.build(stalled).extra == {
        "client_disconnected": "true",
        "client_stalled": "true",
    }
    # Only the serving side's client counts: the canary served nobody.
    mirrored = _exchange()
    mirrored.captures[Role.PRIMARY] = _capture(b"{}")
    mirrored.captures[Role.CANARY] = cap = _capture(b"{}")
    cap.client_gone = True
    assert builder.build(mirrored).extra == {}
