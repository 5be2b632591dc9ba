"""The walker's shortcut for objects that differ only in skipped members changes no result.

Where an object holds members the walk skips anyway (ignored, no strict or tolerance rule
below them), the rest of both objects is serialised in one call per side and equal bytes end
the comparison (``diff.compare._same_but_pruned``). The oracle: the same bodies with those
members removed beforehand, compared with no rules, give the same differences (place, kind,
judgement and rule).
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.schema import CompareConfig
from diff.compare import compare
from diff.rules import RuleBook, RuleSet
from graygate.values import Answer, Difference

JSON = {"content-type": "application/json"}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rules(spec: dict[str, Any] | None = None) -> RuleSet:
    return RuleBook.from_config(CompareConfig.model_validate({"defaults": spec or {}})).defaults


NO_RULES = rules()
PRUNING = rules({"ignore": ["$..rid", "$.meta.**"]})


def cmp(a: bytes, b: bytes, rs: RuleSet) -> list[Difference]:
    return compare(Answer(200, JSON, a), Answer(200, JSON, b), rs)


def strip(v: Any, top: bool = True) -> Any:
    """``v`` without what PRUNING ignores: every member ``rid``, the root's ``meta``."""
    if type(v) is dict:
        return {
            k: strip(x, False) for k, x in v.items() if k != "rid" and not (top and k == "meta")
        }
    if type(v) is list:
        return [strip(x, False) for x in v]
    return v


def shape(d: Difference) -> tuple[str, str, str, str]:
    return (d.path, d.kind, d.judgement, d.rule)


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()  # big integers exact, NaN and Infinity as constants


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, 0.0, 1.0, -0.0, 10, 10.0, 2**64 + 1, 2**64 + 2, 1e20]),
    st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    st.text(max_size=3),
)
keys = st.sampled_from(["rid", "meta", "x", "y", "z"])
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)


def edit(v: Any, rnd: random.Random) -> Any:
    """One edit somewhere in ``v``: the kinds the shortcut must not hide."""
    t = type(v)
    if t is dict and v and rnd.random() < 0.7:
        k = rnd.choice(list(v))
        v = dict(v)
        roll = rnd.random()
        if roll < 0.15:
            del v[k]
        elif roll < 0.25:
            v = dict(reversed(list(v.items())))  # key order only
        else:
            v[k] = edit(v[k], rnd)
        return v
    if t is list and v and rnd.random() < 0.7:
        v = list(v)
        i = rnd.randrange(len(v))
        v[i] = edit(v[i], rnd)
        return v
    if rnd.random() < 0.6:
        if t is bool:
            return int(v)  # True against 1
        if t is int and v in (0, 1):
            return bool(v)
        if t is int and v == 10:
            return 10.0  # no difference
        if t is int and v == 2**64 + 1:
            return 2**64 + 2  # one float apart in orjson's reading
    return rnd.choice([None, True, 1, 1.0, "s", [], {}, {"rid": 5}])


@SETTINGS
@given(
    a=st.dictionaries(keys, documents, max_size=5),
    rid=st.booleans(),
    seed=st.integers(0, 2**32),
    edits=st.integers(0, 3),
)
def test_pruning_changes_nothing(a: dict[str, Any], rid: bool, seed: int, edits: int) -> None:
    rnd = random.Random(seed)
    if rid:
        a = {"rid": "first", **a}
    b = copy.deepcopy(a)
    for _ in range(edits):
        b = edit(b, rnd)
    if rid and type(b) is dict:
        b["rid"] = "second"  # the skipped member differs, as request ids do
    got = cmp(body(a), body(b), PRUNING)
    want = cmp(body(strip(a)), body(strip(b)), NO_RULES)
    # (values shown keep what they hold: a container shown whole shows its ignored members)
    assert [shape(d) for d in got] == [shape(d) for d in want]


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        # True is not 1, though Python finds them equal
        ({"x": True}, {"x": 1}, [("$.x", "type")]),
        ({"x": [False]}, {"x": [0]}, [("$.x[0]", "type")]),
        # 1 and 1.0 are one number; key order is not a difference
        ({"x": 1, "y": {"z": 10}}, {"x": 1.0, "y": {"z": 10.0}}, []),
        ({"x": 1, "y": 2}, {"y": 2, "x": 1}, []),
        # beyond 64 bits, integers orjson reads as one float still differ
        ({"x": 2**64 + 1}, {"x": 2**64 + 2}, [("$.x", "value")]),
        ({"x": {"n": [2**70]}}, {"x": {"n": [2**70 + 1]}}, [("$.x.n[0]", "value")]),
        # non-finite constants, which orjson does not write
        ({"x": float("nan")}, {"x": None}, [("$.x", "type")]),
        ({"x": float("nan")}, {"x": float("nan")}, []),
        ({"x": float("inf")}, {"x": float("-inf")}, [("$.x", "value")]),
        # a skipped member on one side only
        ({"x": 1}, {"x": 1, "meta": {"a": 1}}, []),
        # a skipped member nested in an element, next to a real difference
        ({"x": [{"rid": 1, "q": 1}]}, {"x": [{"rid": 2, "q": 2}]}, [("$.x[0].q", "value")]),
    ],
)
def test_shortcut_cases(a: dict[str, Any], b: dict[str, Any], want: list[Any]) -> None:
    a = {"rid": "a", "meta": {"took_ms": 1}, **a}
    b = {"rid": "b", "meta": {"took_ms": 2}, **b}
    assert [(d.path, d.kind) for d in cmp(body(a), body(b), PRUNING)] == want


def test_ignored_member_with_a_strict_rule_below_is_walked() -> None:
    rs = rules({"ignore": ["$..rid", "$.meta"], "strict": ["$.meta.version"]})
    a = body({"rid": 1, "meta": {"version": "1", "took": 1}, "x": 1})
    b = body({"rid": 2, "meta": {"version": "2", "took": 2}, "x": 1})
    assert [d.path for d in cmp(a, b, rs)] == ["$.meta.version"]


def test_default_ignore_prunes_nothing_in_bulk() -> None:
    """``default: ignore``: members no rule names are skipped, so no shortcut applies, and
    the strict paths are still judged."""
    rs = rules({"default": "ignore", "strict": ["$.x", "$.y.z"], "ignore": ["$.y.q"]})
    a = body({"x": 1, "y": {"z": 1, "q": 1, "w": 1}, "other": 1})
    b = body({"x": 2, "y": {"z": 2, "q": 2, "w": 2}, "other": 2})
    assert [d.path for d in cmp(a, b, rs)] == ["$.x", "$.y.z"]
    same = body({"x": 1, "y": {"z": 1, "q": 9, "w": 9}, "other": 9})
    assert cmp(a, same, rs) == []


def test_tolerance_still_applies_next_to_skipped_members() -> None:
    rs = rules({"ignore": ["$..rid"], "tolerance": {"$.total": {"abs": 0.01}}})
    a = body({"rid": 1, "total": 10.0, "n": 1})
    assert cmp(a, body({"rid": 2, "total": 10.005, "n": 1}), rs) == []
    assert [d.path for d in cmp(a, body({"rid": 2, "total": 10.5, "n": 1}), rs)] == ["$.total"]
