"""Tagging: W3C traceparent kept or created, X-Trace-ID, gray label. Pure."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.tagging import (
    format_traceparent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    tag_request,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"


def test_parse_valid() -> None:
    assert parse_traceparent(VALID) == (TRACE, PARENT, "01")
    assert parse_traceparent(f" 00-{TRACE}-{PARENT}-00 ") == (TRACE, PARENT, "00")
    # a later version may carry more fields; what is known is kept
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01-extra") == (TRACE, PARENT, "01")
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-09") == (TRACE, PARENT, "09")


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE}-{PARENT}-1",  # short flags
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{PARENT}-01",  # upper-case hex
        f"00-{TRACE[:-1]}g-{PARENT}-01",  # not hex
        f"00_{TRACE}_{PARENT}_01",  # wrong separators
        f"0x-{TRACE}-{PARENT}-01",
        f"01-{TRACE}-{PARENT}-01x",  # later version: extra must follow a '-'
    ],
)
def test_parse_invalid(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_new_ids() -> None:
    ids = {new_trace_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(t) == 32 and int(t, 16) for t in ids)
    span = new_span_id()
    assert len(span) == 16 and int(span, 16)
    assert format_traceparent(TRACE, PARENT) == VALID


def test_incoming_traceparent_is_honoured() -> None:
    tags = tag_request(CIMultiDict({"traceparent": f"00-{TRACE}-{PARENT}-00"}), "X-Gray-Tag")
    assert tags.trace_id == TRACE
    assert tags.parent_id == PARENT
    assert tags.flags == "00"
    assert tags.span_id != PARENT and len(tags.span_id) == 16
    # the proxy's own span is the parent of what goes upstream; sampling is kept
    assert tags.traceparent == f"00-{TRACE}-{tags.span_id}-00"


@pytest.mark.parametrize("bad", [f"00-{'0' * 32}-{PARENT}-01", "nonsense", ""])
def test_invalid_traceparent_starts_a_new_trace(bad: str) -> None:
    tags = tag_request(CIMultiDict({"traceparent": bad}), "X-Gray-Tag")
    assert tags.trace_id != TRACE and len(tags.trace_id) == 32
    assert tags.parent_id is None
    assert parse_traceparent(tags.traceparent) == (tags.trace_id, tags.span_id, "01")


def test_no_traceparent_creates_one() -> None:
    a = tag_request(CIMultiDict(), "X-Gray-Tag")
    b = tag_request(CIMultiDict(), "X-Gray-Tag")
    assert a.trace_id != b.trace_id
    assert a.parent_id is None and a.flags == "01"
    assert parse_traceparent(a.traceparent) == (a.trace_id, a.span_id, "01")


def test_x_trace_id_used_when_no_traceparent() -> None:
    tags = tag_request(CIMultiDict({"X-Trace-ID": TRACE.upper()}), "X-Gray-Tag")
    assert tags.trace_id == TRACE
    assert tags.parent_id is None
    # traceparent wins over X-Trace-ID
    other = "a" * 32
    tags = tag_request(CIMultiDict({"X-Trace-ID": other, "traceparent": VALID}), "X-Gray-Tag")
    assert tags.trace_id == TRACE
    # an invalid one is ignored
    tags = tag_request(CIMultiDict({"X-Trace-ID": "not-a-trace"}), "X-Gray-Tag")
    assert tags.trace_id != "not-a-trace" and len(tags.trace_id) == 32


def test_gray_label_kept_or_left_to_assign() -> None:
    assert tag_request(CIMultiDict({"x-gray-tag": "v2"}), "X-Gray-Tag").label == "v2"
    assert tag_request(CIMultiDict({"X-Release": "blue"}), "X-Release").label == "blue"
    assert tag_request(CIMultiDict(), "X-Gray-Tag").label is None
    assert tag_request(CIMultiDict({"X-Gray-Tag": ""}), "X-Gray-Tag").label is None
