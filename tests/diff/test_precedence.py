"""Issue 8 item 3: rule precedence, checked against a reference on generated rule sets.

The precedence (``diff.rules``' docstring, ``config/graygate.example.yaml``): a rule names a
location and its whole subtree; the rule naming the nearest location on the way up judges;
among rules naming the same location the most specific path, then an endpoint's rule over
a default's, then tolerance over strict over ignore.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.schema import CompareConfig
from diff.compare import compare_json
from diff.paths import DEEP, Location, compile_path
from diff.rules import RuleBook

KINDS = ("ignore", "strict", "tolerance")
RANK = {"ignore": 0, "strict": 1, "tolerance": 2}

steps = st.sampled_from([".a", ".b", "[0]", "[*]", ".*", ".**", "..a", "..b"])
paths = st.lists(steps, min_size=0, max_size=4).map(lambda s: "$" + "".join(s))
rule = st.tuples(paths, st.sampled_from(KINDS), st.sampled_from([0, 1]))
locations = st.lists(st.sampled_from(["a", "b", 0, 1]), max_size=6).map(tuple)


def reference(rules: list[tuple[str, str, int]], default: str, loc: Location) -> str:
    for depth in range(len(loc), -1, -1):
        prefix = loc[:depth]
        best: tuple[int, int, int] | None = None
        kind = ""
        for text, k, source in rules:
            path = compile_path(text)
            stripped = path.steps
            while stripped and stripped[-1][0] == DEEP:
                stripped = stripped[:-1]
            if not type(path)(text, stripped).matches(prefix):
                continue
            rank = (path.specificity, source, RANK[k])
            if best is None or rank > best:
                best, kind = rank, k
        if best is not None:
            return kind
    return default


def book(rules: list[tuple[str, str, int]], default: str) -> RuleBook:
    spec: dict[str, dict[str, Any]] = {
        "defaults": {"default": default, "strict": [], "ignore": [], "tolerance": {}},
        "endpoint": {"match": "GET /x", "strict": [], "ignore": [], "tolerance": {}},
    }
    for text, kind, source in rules:
        part = spec["endpoint" if source else "defaults"]
        if kind == "tolerance":
            part["tolerance"][text] = {"abs": 0.5}
        else:
            part[kind].append(text)
    return RuleBook.from_config(
        CompareConfig.model_validate(
            {"defaults": spec["defaults"], "endpoints": [spec["endpoint"]]}
        )
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(rule, max_size=5, unique_by=lambda r: (r[0], r[2])),
    st.sampled_from(["strict", "ignore"]),
    st.lists(locations, min_size=1, max_size=5),
)
def test_judge_at_follows_the_written_precedence(
    rules: list[tuple[str, str, int]], default: str, locs: list[Location]
) -> None:
    # one tolerance per (path, source): a later kind for the same path replaces nothing
    rs = book(rules, default).for_endpoint("GET /x")
    for loc in locs:
        assert rs.judge_at(loc).kind == reference(rules, default, loc), (rules, loc)


def test_issue_reproduction_strict_version_under_ignored_meta() -> None:
    rs = book([("$.meta.**", "ignore", 0), ("$.meta.version", "strict", 1)], "strict")
    rs = rs.for_endpoint("GET /x")
    a = b'{"meta": {"version": {"major": 1, "minor": 2}, "host": "a"}}'
    b = b'{"meta": {"version": {"major": 2, "minor": 2}, "host": "b"}}'
    out = compare_json(a, b, rs)
    assert [(d.path, d.judgement) for d in out] == [("$.meta.version.major", "strict")]
    missing = compare_json(a, b'{"meta": {"version": {"minor": 2}, "host": "a"}}', rs)
    assert [(d.path, d.kind) for d in missing] == [("$.meta.version.major", "missing")]
    gone = compare_json(a, b'{"meta": {"host": "a"}}', rs)
    assert [(d.path, d.kind) for d in gone] == [("$.meta.version", "missing")]


def test_nearer_ignore_inside_a_strict_subtree() -> None:
    rs = book([("$.items", "strict", 1), ("$..request_id", "ignore", 0)], "strict")
    rs = rs.for_endpoint("GET /x")
    a = b'{"items": [{"request_id": "x", "q": 1}]}'
    assert compare_json(a, b'{"items": [{"request_id": "y", "q": 1}]}', rs) == []
    assert compare_json(a, b'{"items": [{"request_id": "y", "q": 2}]}', rs)
