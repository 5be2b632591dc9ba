"""The write comparison's pure part (issue 11): rows as JSON, the record of ``WRITE <name>``,
the rules a RuleBook compiles for it, and the verdict's ``writes`` check."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import pytest

from config.load import config_from_mapping
from config.schema import JudgingConfig, VerdictConfig
from diff.compare import compare
from diff.rules import RuleBook
from diff.verdict import decide
from diff.write_compare import SideRead, json_value, rows_json, write_record
from graygate.values import EndpointCounts, RunAggregates

pytestmark = pytest.mark.unit

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _config(**check: object) -> JudgingConfig:
    c = {
        "name": "stock_moves",
        "primary": {"url": "postgresql://r@h/db", "query": "SELECT 1 WHERE :trace_id = ''"},
        "canary": {"url": "postgresql://r@h/db", "query": "SELECT 1 WHERE :trace_id = ''"},
        "key": "sku",
        "strict": ["$[*].qty"],
        "ignore": ["$[*].created_at"],
        "tolerance": {"$[*].weight": {"abs": 0.5}},
        **check,
    }
    cfg = config_from_mapping(
        {"run": "r", "upstreams": {"primary": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"},
         "mirror": {"allow_side_effects": True}, "writes": [c]},
        env={},
    )  # fmt: skip
    return JudgingConfig(compare=cfg.compare, verdict=cfg.verdict)


def test_json_values() -> None:
    assert json_value(Decimal("12")) == 12 and isinstance(json_value(Decimal("12")), int)
    assert json_value(Decimal("1.25")) == 1.25
    assert json_value(Decimal("NaN")) == "NaN"
    assert json_value(WHEN) == "2026-01-02T03:04:05+00:00"
    assert json_value(UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert json_value(b"\x00\x01") == "AAE="
    assert json_value(float("inf")) == "inf"
    assert json_value({"a": [Decimal("2")]}) == {"a": [2]}
    assert json.loads(rows_json([{"sku": "A", "qty": -2}])) == [{"sku": "A", "qty": -2}]


def _diffs(primary: list[dict[str, object]], canary: list[dict[str, object]], **check: object):
    book = RuleBook.from_config(_config(**check).compare)
    rec = write_record(
        run_id=1, name="stock_moves", span_id="write:stock_moves", trace_id="t", received_at=WHEN,
        source="POST /api/orders", primary=SideRead(tuple(primary)), canary=SideRead(tuple(canary)),
    )  # fmt: skip
    assert rec.endpoint == "WRITE stock_moves" and rec.method == "WRITE"
    assert rec.primary is not None and rec.canary is not None
    return [
        (d.field, d.kind, d.judgement)
        for d in compare(rec.primary, rec.canary, book.for_endpoint(rec.endpoint))
    ]


ROW = {"sku": "A", "qty": -2, "reason": "order", "created_at": "x", "weight": 1.0}


def test_rows_compared_by_key_under_the_check_rules() -> None:
    assert _diffs([ROW], [dict(ROW, created_at="y", weight=1.4)]) == []  # ignored, tolerated
    assert _diffs([ROW], [dict(ROW, qty=-3)]) == [("$[*].qty", "value", "strict")]
    assert _diffs([ROW], [dict(ROW, weight=2.0)]) == [("$[*].weight", "value", "tolerance")]
    assert _diffs([ROW], [dict(ROW, reason="other")]) == [("$[*].reason", "value", "strict")]
    assert _diffs([ROW], []) == [("$[*]", "missing", "strict")]
    assert _diffs([ROW], [ROW, dict(ROW, sku="B")]) == [("$[*]", "extra", "strict")]
    assert _diffs([ROW, ROW], [ROW]) == [("$[*]", "missing", "strict")]  # the real table, twice
    b = dict(ROW, sku="B")
    assert _diffs([ROW, b], [b, ROW]) == []  # paired by key, not position


def test_without_a_key_rows_are_paired_by_position() -> None:
    b = dict(ROW, sku="B")
    assert _diffs([ROW, b], [b, ROW], key=None) != []


def test_a_failed_read_is_an_error_side_with_its_reason() -> None:
    rec = write_record(
        run_id=1, name="w", span_id="write:w", trace_id="t", received_at=WHEN, source="POST /x",
        primary=SideRead(()), canary=SideRead(error="canary read failed: connection refused"),
    )  # fmt: skip
    assert rec.canary is not None and rec.canary.error == "error"
    assert rec.canary.body == b"canary read failed: connection refused"
    assert rec.primary is not None and rec.primary.body == b"[]"
    assert rec.primary.latency_ms is None  # reads stay out of the latency check


def _aggregates(*counts: EndpointCounts) -> RunAggregates:
    return RunAggregates(run="r", run_id=1, endpoints=tuple(counts))


def _writes(result_checks: tuple[object, ...]) -> object:
    return next(c for c in result_checks if getattr(c, "name", "") == "writes")


def test_writes_check_bound_and_inconclusive() -> None:
    cfg = _config()
    http = EndpointCounts("POST /api/orders", recorded=100, judged=100, pairs=100, match=100,
                          attempted=100)  # fmt: skip

    def write(errors: int) -> EndpointCounts:
        return EndpointCounts("WRITE stock_moves", recorded=100, judged=100, pairs=100 - errors,
                              match=100 - errors, errors=errors, attempted=100,
                              canary_failures=errors)  # fmt: skip

    # 1 failed read in 100 is at the default bound (1%): passes; the errors check never
    # counts a write check's failed read against the canary.
    r = decide(_aggregates(http, write(1)), cfg)
    w = _writes(r.checks)
    assert (w.passed, w.observed) == (True, 0.01)  # type: ignore[attr-defined]
    assert next(c for c in r.checks if c.name == "errors").passed is True
    # 2 in 100: above it, not blocking: INCONCLUSIVE (never GO, never NO_GO for it).
    r = decide(_aggregates(http, write(2)), cfg)
    w = _writes(r.checks)
    assert (w.passed, w.blocking) == (False, False)  # type: ignore[attr-defined]
    assert "WRITE stock_moves 2/100" in w.detail  # type: ignore[attr-defined]
    assert r.verdict.value == "INCONCLUSIVE"
    # Configured, nothing checked yet: undecided, INCONCLUSIVE.
    r = decide(_aggregates(http), cfg)
    assert _writes(r.checks).passed is None  # type: ignore[attr-defined]
    assert r.verdict.value == "INCONCLUSIVE"
    # No writes configured and none recorded: no such check.
    assert all(c.name != "writes" for c in decide(_aggregates(http), VerdictConfig()).checks)


def test_writes_check_waits_for_the_exchanges_it_covers() -> None:
    cfg = _config()
    http = EndpointCounts("POST /api/orders", recorded=100, judged=100, pairs=100, match=100,
                          attempted=100)  # fmt: skip
    gets = EndpointCounts("GET /api/orders/{id}", recorded=500, judged=500, pairs=500,
                          match=500, attempted=500)  # fmt: skip

    def write(recorded: int) -> EndpointCounts:
        return EndpointCounts("WRITE stock_moves", recorded=recorded, judged=recorded,
                              pairs=recorded, match=recorded, attempted=recorded)  # fmt: skip

    # 99 of the 100 POSTs checked: 1% behind, at the backlog bound (GETs are not covered).
    w = _writes(decide(_aggregates(http, gets, write(99)), cfg).checks)
    assert w.passed is True, w  # type: ignore[attr-defined]
    # 98: above it, undecided (INCONCLUSIVE, never GO), saying how many are behind.
    r = decide(_aggregates(http, gets, write(98)), cfg)
    w = _writes(r.checks)
    assert w.passed is None and w.blocking, w  # type: ignore[attr-defined]
    assert "2 of 100 exchange(s) not checked yet" in w.detail  # type: ignore[attr-defined]
    assert r.verdict.value == "INCONCLUSIVE"


def test_an_exchange_not_compared_is_recorded_as_skipped() -> None:
    rec = write_record(
        run_id=1, name="w", span_id="write:w", trace_id="t", received_at=WHEN, source="POST /x",
        primary=None, canary=None,
    )  # fmt: skip
    assert rec.mirror_skipped == "not_write_checked"
    assert rec.primary is None and rec.canary is None
