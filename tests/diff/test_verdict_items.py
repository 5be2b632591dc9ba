"""Issue 8 items 2, 5, 8, 11 and 15 in the pure verdict; item 1 in the worker's judgement."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.schema import CompareConfig, LatencyConfig, NoiseConfig, VerdictConfig
from diff.compare import compare
from diff.rules import RuleBook
from diff.verdict import beyond_margin, decide, find_noise
from diff.worker import judge_exchange
from graygate.values import Answer, Check, Verdict, VerdictResult
from store.aggregates import EndpointCounts, FieldCount, LatencySample, RunAggregates
from store.judgement import ClaimedExchange
from tests.diff.judgeseed import timed

A = "GET /a"
B = "GET /b"
CFG = VerdictConfig(min_pairs=100, min_pairs_per_endpoint=20)


def ep(endpoint: str, pairs: int, **kw: Any) -> EndpointCounts:
    errors = kw.pop("errors", 0)
    pending = kw.pop("pending", 0)
    judged = pairs + errors
    return EndpointCounts(
        endpoint=endpoint,
        recorded=judged + pending,
        judged=judged,
        pairs=pairs,
        errors=errors,
        attempted=pairs + errors,
        **kw,
    )


def check(r: VerdictResult, name: str) -> Check:
    (c,) = [c for c in r.checks if c.name == name]
    return c


def agg(*eps: EndpointCounts, **kw: Any) -> RunAggregates:
    """The run's aggregates; unless ``latency`` is given, every pair timed alike."""
    kw.setdefault("latency", timed(*eps))
    return RunAggregates(run="r", run_id=1, endpoints=eps, **kw)


# -- item 5: errors per endpoint ------------------------------------------------------------


def test_errors_on_different_endpoints_do_not_cancel() -> None:
    """Primary resets on A, canary timeouts on B: pooled they cancel; per endpoint B fails."""
    a = ep(A, 90, errors=10, primary_failures=10)
    b = ep(B, 90, errors=10, canary_failures=10)
    r = decide(agg(a, b), CFG)
    c = check(r, "errors")
    assert c.passed is False and B in c.detail and A not in c.detail.split(" in ", 1)[1]
    assert r.verdict is Verdict.NO_GO


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 50), st.integers(0, 50), st.integers(100, 300))
def test_any_endpoint_above_fails(extra: int, shared: int, n: int) -> None:
    a = ep(A, n, errors=shared + extra, primary_failures=shared, canary_failures=shared + extra)
    b = ep(B, n, errors=extra, primary_failures=extra)  # primary worse here
    assert check(decide(agg(a, b), CFG), "errors").passed is False


# -- item 8: backlog --------------------------------------------------------------------------


def test_go_needs_the_backlog_below_its_bound() -> None:
    """300 judged clean pairs and 5,000 recorded but unjudged: not GO."""
    r = decide(agg(ep(A, 300, pending=5000)), CFG)
    assert check(r, "backlog").passed is False
    assert r.verdict is Verdict.INCONCLUSIVE


@pytest.mark.parametrize(("pending", "passed"), [(0, True), (3, True), (4, False)])
def test_backlog_bound_is_inclusive(pending: int, passed: bool) -> None:
    # 297 judged + 3 pending = 300 recorded: 3/300 = 1% exactly passes; 4/301 fails
    r = decide(agg(ep(A, 300 - min(pending, 3), pending=pending)), CFG)
    assert check(r, "backlog").passed is passed
    assert (r.verdict is Verdict.GO) is passed


# -- item 11: latency margin -------------------------------------------------------------


def test_exactly_five_percent_passes_and_just_above_fails() -> None:
    assert not beyond_margin((100.0, 105.0), (100.0, 105.0), 0.05, 0.5)
    assert beyond_margin((100.0, 105.01), (100.0, 100.0), 0.05, 0.5)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.1, 5.0), st.floats(0.0, 0.5))
def test_sub_floor_shifts_never_fail(base: float, shift: float) -> None:
    assert not beyond_margin((base, base + shift), (base, base + shift), 0.05, 0.5)


def test_latency_check_uses_the_floor() -> None:
    primary = [2.0 + (i % 7) * 0.01 for i in range(400)]
    canary = [x + 0.3 for x in primary]  # +15%, but 0.3 ms
    lat = LatencySample.of(primary, canary)
    base = agg(ep(A, 400), latency=lat)
    assert check(decide(base, CFG), "latency").passed is True
    strict = CFG.model_copy(update={"latency": LatencyConfig(min_increase_ms=0.0)})
    assert check(decide(base, strict), "latency").passed is False


# -- item 2: too few secondary pairs ------------------------------------------------------


def test_two_secondary_pairs_make_no_noise() -> None:
    fields = (
        FieldCount(A, "$.x", "canary", "strict", 1000),
        FieldCount(A, "$.x", "secondary", "strict", 2),
    )
    a = agg(ep(A, 1000, secondary_pairs=2, strict_pairs=1000), fields=fields)
    assert find_noise(a, NoiseConfig()) == []  # 2/2 secondary: not measurable
    r = decide(a, CFG)
    assert r.verdict is Verdict.NO_GO
    # at the bound, the same 100% rate on the secondary is measurable noise
    fields20 = (fields[0], FieldCount(A, "$.x", "secondary", "strict", 20))
    enough = agg(ep(A, 1000, secondary_pairs=20, strict_pairs=1000), fields=fields20)
    assert [n.field for n in find_noise(enough, NoiseConfig(min_secondary_pairs=20))] == ["$.x"]
    below = agg(ep(A, 1000, secondary_pairs=19, strict_pairs=1000), fields=fields20)
    assert find_noise(below, NoiseConfig(min_secondary_pairs=20)) == []


# -- item 1: noise is a field and a kind ----------------------------------------------------


def _side(body: bytes) -> Answer:
    return Answer(200, {"content-type": "application/json"}, body, False, 1.0, None)


@pytest.mark.parametrize(
    ("canary", "judgement"),
    [
        (b'{"ts": "c", "v": 1}', "noise"),  # a value change on a noisy field: noise
        (b'{"v": 1}', "strict"),  # the field dropped
        (b'{"ts": null, "v": 1}', "strict"),  # null: a type change
        (b'{"ts": 5, "v": 1}', "strict"),  # a type change
    ],
)
def test_worker_noise_needs_the_same_kind(canary: bytes, judgement: str) -> None:
    x = ClaimedExchange(
        id=1,
        run_id=1,
        endpoint=A,
        served_by="primary",
        mirror_skipped=None,
        primary=_side(b'{"ts": "a", "v": 1}'),
        canary=_side(canary),
        secondary=_side(b'{"ts": "b", "v": 1}'),
    )
    j = judge_exchange(x, RuleBook.from_config(CompareConfig()).defaults)
    got = [d.judgement for d in j.differences if d.against == "canary"]
    assert got == [judgement]


# -- item 15: compare.max_body_bytes -------------------------------------------------------


def test_max_body_bytes_compares_large_bodies_as_bytes() -> None:
    cfg = CompareConfig.model_validate({"max_body_bytes": 16, "defaults": {"ignore": ["$.r"]}})
    rs = RuleBook.from_config(cfg).defaults
    h = {"content-type": "application/json"}
    small = compare(Answer(200, h, b'{"r": 1}'), Answer(200, h, b'{"r": 2}'), rs)
    assert small == []
    big_a = b'{"r": 1, "pad": "xxxxxxxxxxxxxxxx"}'
    big_b = b'{"r": 2, "pad": "xxxxxxxxxxxxxxxx"}'
    big = compare(Answer(200, h, big_a), Answer(200, h, big_b), rs)
    assert [(d.kind, d.rule) for d in big] == [("body", "strict (default), body as bytes")]
    exact = CompareConfig.model_validate({"max_body_bytes": len(big_a)})
    rs = RuleBook.from_config(exact).defaults
    assert [d.path for d in compare(Answer(200, h, big_a), Answer(200, h, big_b), rs)] == ["$.r"]


def test_a_shift_of_exactly_the_floor_passes_despite_float_rounding() -> None:
    # 0.8331... + 0.5 - 0.8331... is 0.5000000000000001 in binary floating point.
    base = 0.8331617227626408
    assert (base + 0.5) - base > 0.5
    assert not beyond_margin((base, base + 0.5), (base, base + 0.5), 0.05, 0.5)
