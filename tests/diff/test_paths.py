"""The JSONPath subset: compiling, matching, rendering, and the matcher automaton."""

from __future__ import annotations

import pytest

from diff.paths import PathMatcher, compile_path, render_field, render_location


@pytest.mark.parametrize(
    ("path", "location", "expected"),
    [
        ("$", (), True),
        ("$", ("a",), False),
        ("$.status", ("status",), True),
        ("$.status", ("state",), False),
        ("$.status", ("status", "x"), False),
        ("$['content-type']", ("content-type",), True),
        ('$["a.b"]', ("a.b",), True),
        ("$.items[2].price", ("items", 2, "price"), True),
        ("$.items[2].price", ("items", 1, "price"), False),
        ("$.items[*].price", ("items", 7, "price"), True),
        ("$.items[*].price", ("items", "x", "price"), True),  # [*]: members too
        ("$.meta.*", ("meta", "host"), True),
        ("$.meta.*", ("meta",), False),
        ("$.meta.*", ("meta", "a", "b"), False),
        ("$..request_id", ("request_id",), True),
        ("$..request_id", ("a", 3, "b", "request_id"), True),
        ("$..request_id", ("request_id", "x"), False),
        ("$.meta.**", ("meta",), True),  # zero levels
        ("$.meta.**", ("meta", "a", 0, "b"), True),
        ("$.meta.**", ("other", "a"), False),
        ("$.a..b", ("a", "b"), True),
        ("$.a..b", ("a", "x", "y", "b"), True),
        ("$.a..b", ("b",), False),
        ("$..[0]", ("x", 0), True),
        ("$.items[0]", ("items", "0"), False),  # an index is not a member named "0"
        ("$['0']", (0,), False),
    ],
)
def test_matches(path: str, location: tuple[str | int, ...], expected: bool) -> None:
    assert compile_path(path).matches(location) is expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("status", "must start with '$'"),
        ("$.items[", "unclosed '['"),
        ("$.items[x]", "bad subscript [x]"),
        ("$.a..", "'..' must be followed by a name"),
        ("$.a.", "expected a name"),
        ("$.a b", "unexpected ' '"),
        ("$a", "unexpected 'a'"),
        ("$['open]", "unclosed quote"),
        ("$['']", "empty name"),
    ],
)
def test_syntax_errors_name_the_bad_part(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        compile_path(text)
    assert fragment in str(err.value)
    assert repr(text.strip()) in str(err.value)


def test_specificity_orders_literal_over_wildcards() -> None:
    assert compile_path("$.meta.version").specificity > compile_path("$.meta.*").specificity
    assert compile_path("$.meta.*").specificity > compile_path("$.meta.**").specificity
    assert compile_path("$..id").specificity == compile_path("$.id").specificity


def test_render_location_and_field() -> None:
    loc = ("items", 2, "price")
    assert render_location(loc) == "$.items[2].price"
    assert render_field(loc) == "$.items[*].price"
    odd = ("a b", "it's", "2024", "x-y")
    assert render_location(odd) == "$['a b']['it\\'s']['2024'].x-y"
    # What is rendered parses back to a path naming the same place.
    assert compile_path(render_location(odd)).matches(odd)
    assert compile_path(render_field(loc)).matches(("items", 9, "price"))


def test_matcher_states_step_levels() -> None:
    paths = [compile_path(p) for p in ("$.meta.**", "$..id", "$.items[*].price", "$.items[0]")]
    m = PathMatcher(paths)
    assert m.root.matched == ()
    meta = m.root.key("meta")
    assert 0 in meta.matched and meta.key("a").key("b").matched == (0,)
    assert m.state_at(("a", 3, "id")).matched == (1,)
    items = m.root.key("items")
    assert m.state_at(("items", 0)).matched == (3,)
    assert items.index(5).key("price").matched == (2,)
    assert items.index(0).key("price").matched == (2,)
    # Only "$..id" can still match anywhere below an unrelated member.
    unrelated = m.root.key("customer")
    assert unrelated.live == frozenset({1})
    # States are shared: the same positions give the same object.
    assert items.index(1) is items.index(2)
    assert PathMatcher([compile_path("$.a")]).root.key("b").dead


def test_matcher_annotates_each_state_once() -> None:
    seen: list[tuple[int, ...]] = []

    def annotate(state: object) -> str:
        seen.append(state.matched)  # type: ignore[attr-defined]
        return "info"

    m = PathMatcher([compile_path("$.a.b")], annotate=annotate)
    st = m.root.key("a").key("b")
    m.root.key("a").key("b")
    assert st.info == "info"
    assert seen.count((0,)) == 1
