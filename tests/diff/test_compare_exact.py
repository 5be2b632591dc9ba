"""Issue 8 items 4, 9, 10 and 12: the compare engine's equality is exact and one.

Each test holds the issue's exact reproduction, then generated variants of the same class.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.schema import CompareConfig
from diff.compare import compare, compare_json
from diff.rules import RuleBook, RuleSet
from graygate.values import Answer, Difference

JSON = {"content-type": "application/json"}
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rules(spec: dict[str, Any] | None = None) -> RuleSet:
    return RuleBook.from_config(CompareConfig.model_validate({"defaults": spec or {}})).defaults


def side(raw: bytes, **kw: Any) -> Answer:
    return Answer(status=200, headers=JSON, body=raw, **kw)


def cmp(a: bytes, b: bytes, rs: RuleSet | None = None) -> list[Difference]:
    return compare(side(a), side(b), rs or rules())


UNORDERED = rules({"arrays": {"$": {"unordered": True}, "$.xs": {"unordered": True}}})


# -- item 4: unordered arrays use the engine's own equality ------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (b"[true]", b"[1]"),
        (b"[0.1]", b"[0.1000000000001]"),
        (b'[{"on": false}]', b'[{"on": 0}]'),
        (b"[false]", b"[0]"),
        (b'[{"a": [true, 2]}]', b'[{"a": [1, 2]}]'),
    ],
)
def test_unordered_arrays_report_what_plain_arrays_report(a: bytes, b: bytes) -> None:
    plain = cmp(a, b)
    unordered = cmp(a, b, UNORDERED)
    assert plain, "the plain array must differ"
    assert unordered, "an unordered array must differ where a plain one does"


scalars = st.one_of(
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from(["a", "b", ""]),
    st.none(),
)


@SETTINGS
@given(st.lists(scalars, max_size=6), st.lists(scalars, max_size=6), st.randoms())
def test_unordered_equal_iff_multisets_equal(xs: list[Any], ys: list[Any], rnd: Any) -> None:
    """An unordered array is equal exactly when some permutation is equal element by
    element under the plain (ordered) rules: bool is not a number, no rounding."""
    shuffled = list(ys)
    rnd.shuffle(shuffled)

    same_multiset = len(xs) == len(ys) and sorted(map(repr_json, xs)) == sorted(map(repr_json, ys))
    a = orjson.dumps(xs)
    b = orjson.dumps(shuffled)
    assert (cmp(a, b, UNORDERED) == []) == same_multiset


def repr_json(v: Any) -> str:
    """A canonical text of a scalar: 1 and 1.0 alike, True and 1 not."""
    if type(v) is bool or v is None or type(v) is str:
        return json.dumps(v)
    return repr(float(v) + 0.0) if float(v) == v else repr(v)


def test_unordered_tolerance_applies_after_pairing() -> None:
    rs = rules({"arrays": {"$.xs": {"unordered": True}}, "tolerance": {"$.xs[*]": {"abs": 0.01}}})
    assert cmp(b'{"xs": [1.0, 5.0]}', b'{"xs": [5.001, 1.004]}', rs) == []
    out = cmp(b'{"xs": [1.0, 5.0]}', b'{"xs": [5.001, 1.5]}', rs)
    assert [d.kind for d in out] == ["missing", "extra"]
    # a bool never pairs with a number under tolerance
    out = cmp(b'{"xs": [true]}', b'{"xs": [1]}', rs)
    assert out and all(d.judgement == "strict" for d in out)


def test_unordered_edited_element_shows_its_fields() -> None:
    a = b'{"xs": [{"id": 1, "n": "a", "q": 1}, {"id": 2, "n": "b", "q": 2}]}'
    b = b'{"xs": [{"id": 2, "n": "b", "q": 2}, {"id": 1, "n": "a", "q": true}]}'
    out = cmp(a, b, UNORDERED)
    assert [(d.path, d.kind) for d in out] == [("$.xs[0].q", "type")]


# -- item 9: integers beyond 64 bits ---------------------------------------------------------


def test_big_integers_compare_exactly() -> None:
    a = b'{"id": 123456789012345678901}'
    b = b'{"id": 123456789012345678891}'
    out = cmp(a, b)
    assert [(d.path, d.kind) for d in out] == [("$.id", "value")]
    assert out[0].primary_value == "123456789012345678901"  # shown exactly


@SETTINGS
@given(
    st.integers(min_value=2**63 - 10, max_value=2**80)
    | st.integers(min_value=-(2**80), max_value=-(2**63) + 10),
    st.integers(min_value=1, max_value=1000),
    st.booleans(),
)
def test_big_integer_variants(n: int, delta: int, nested: bool) -> None:
    def body(v: int) -> bytes:
        doc: Any = {"a": [{"n": v}]} if nested else [v, "x"]
        return json.dumps(doc).encode()

    assert cmp(body(n), body(n + delta)), f"{n} vs {n + delta} must differ"
    assert cmp(body(n), body(n) + b" ") == []
    # a big integer is not the float it would round to (1 and 1.0 are the same number)
    if float(n) != n:
        assert cmp(
            body(n), json.dumps({"a": [{"n": float(n)}]} if nested else [float(n), "x"]).encode()
        )


BIG_A, BIG_B = 123456789012345678901, 123456789012345678911  # one float apart: 1.2345e20
IGNORE_RID = {"ignore": ["$.rid"]}


@pytest.mark.parametrize(
    ("shape", "spec", "path"),
    [
        # each place the guarded first walk can conclude "equal": a member scalar, a member
        # container among others (one serialisation for all), a plain array element, an
        # unordered array (hash matching), a keyed array's key and element
        (lambda v: {"n": v}, {}, "$.n"),
        (lambda v: {"c": {"n": v}, "d": {"m": 1}}, {}, "$.c.n"),
        (lambda v: {"c": [1, {"n": v}]}, {}, "$.c[1].n"),
        (lambda v: {"xs": [v, 2, 3]}, {"arrays": {"$.xs": {"unordered": True}}}, "$.xs[0]"),
        (lambda v: {"xs": [{"k": v, "q": 1}]}, {"arrays": {"$.xs": {"key": "k"}}}, "$.xs[0]"),
        (lambda v: {"xs": [{"k": 1, "q": v}]}, {"arrays": {"$.xs": {"key": "k"}}}, "$.xs[0].q"),
    ],
)
def test_big_integers_found_wherever_the_first_walk_says_equal(
    shape: Any, spec: dict[str, Any], path: str
) -> None:
    """The first walk reads orjson's rounded floats; every place where it would conclude
    "equal" must notice a possible big integer, so the bodies are read again exactly."""
    rs = rules({**IGNORE_RID, **spec})
    a = json.dumps({"rid": "a", **shape(BIG_A)}).encode()
    b = json.dumps({"rid": "b", **shape(BIG_B)}).encode()
    out = compare(side(a), side(b), rs)
    assert out, f"{path}: {BIG_A} against {BIG_B} must differ"
    assert any(d.path.startswith(path) for d in out), [d.path for d in out]
    assert compare(side(a), side(a.replace(b'"a"', b'"z"')), rs) == []


def test_large_floats_that_are_not_integers_stay_floats() -> None:
    """A float literal of 1e16 or more trips the guard; with no 19-digit run the same
    trees are walked again and equal floats stay equal."""
    rs = rules(IGNORE_RID)
    a = b'{"rid": 1, "x": 1e19, "c": {"y": 2.5e300}, "d": {}}'
    b = b'{"rid": 2, "x": 1e19, "c": {"y": 2.5e300}, "d": {}}'
    assert compare(side(a), side(b), rs) == []
    out = compare(side(a), side(b.replace(b"2.5e300", b"2.6e300")), rs)
    assert [d.path for d in out] == ["$.c.y"]


# -- item 10: NaN, Infinity, depth --------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "differs"),
    [
        (b'{"x": NaN}', b'{"x": null}', True),
        (b'{"x": Infinity}', b'{"x": -Infinity}', True),
        (b'{"x": NaN}', b'{"x": NaN}', False),
        (b'{"x": NaN, "y": 1}', b'{"y": 1, "x": NaN}', False),
        (b'{"x": [NaN]}', b'{"x": [null]}', True),
        (b'{"x": {"y": Infinity}}', b'{"x": {"y": null}}', True),
        (b'{"x": NaN}', b'{"x": 1.0}', True),
        (b'{"x": 1e400}', b'{"x": -1e400}', True),
        (b'{"x": NaN}', b'{"x": "NaN"}', True),
    ],
)
def test_non_finite_constants(a: bytes, b: bytes, differs: bool) -> None:
    assert bool(cmp(a, b)) is differs
    assert bool(cmp(a, b, UNORDERED)) is differs


def test_non_finite_in_an_ignored_field_is_ignored() -> None:
    rs = rules({"ignore": ["$.x"]})
    assert cmp(b'{"x": NaN, "y": 1}', b'{"x": null, "y": 1}', rs) == []
    assert cmp(b'{"x": NaN, "y": 1}', b'{"x": null, "y": true}', rs)


def nest(depth: int, leaf: str) -> bytes:
    return ('{"a": [' * depth + leaf + "]}" * depth).encode()


@pytest.mark.parametrize("depth", [10, 130, 300, 500])
def test_deep_documents_keep_the_rules(depth: int) -> None:
    """Up to the parsers' limit (1024 levels: each depth step here is two levels) the walk
    is iterative and applies every rule; past orjson's 254 levels of serialisation too."""
    out = cmp(nest(depth, "true"), nest(depth, "1"))
    assert [d.kind for d in out] == ["type"]
    assert out[0].path.count(".a") == depth
    assert cmp(nest(depth, "1"), nest(depth, "1.0")) == []
    ign = rules({"ignore": ["$..x"]})
    assert cmp(nest(depth, '{"x": 1}'), nest(depth, '{"x": 2}'), ign) == []
    assert cmp(nest(depth, '{"x": 1, "y": 1}'), nest(depth, '{"x": 2, "y": 2}'), ign)


# -- item 12: keyed arrays, numeric strings, blank bodies, BOM ----------------------------------


KEYED = rules({"arrays": {"$.items": {"key": "sku", "unordered": True}}})


def test_keyed_elements_without_the_key_are_not_paired_by_position() -> None:
    a = b'{"items": [{"sku": "A", "q": 1}, {"q": 5}, {"q": 7}]}'
    b = b'{"items": [{"q": 7}, {"sku": "A", "q": 1}, {"q": 5}]}'
    assert cmp(a, b, KEYED) == []


def test_keyed_duplicate_keys_are_matched_as_a_multiset() -> None:
    a = b'{"items": [{"sku": "A", "q": 1}, {"sku": "A", "q": 2}]}'
    b = b'{"items": [{"sku": "A", "q": 2}, {"sku": "A", "q": 1}]}'
    assert cmp(a, b, KEYED) == []
    c = b'{"items": [{"sku": "A", "q": 2}, {"sku": "A", "q": 3}]}'
    out = cmp(a, c, KEYED)
    assert [d.path for d in out] == ["$.items[0].q"]


@SETTINGS
@given(
    st.lists(
        st.fixed_dictionaries(
            {"q": st.integers(0, 3)}, optional={"sku": st.sampled_from(["A", "B", "C"])}
        ),
        max_size=6,
    ),
    st.randoms(),
)
def test_keyed_unordered_is_permutation_invariant(items: list[Any], rnd: Any) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)
    a = orjson.dumps({"items": items})
    b = orjson.dumps({"items": shuffled})
    assert cmp(a, b, KEYED) == []


TOL = rules({"tolerance": {"$.price": {"abs": 0.01}}})


def test_tolerance_applies_to_numeric_strings() -> None:
    assert cmp(b'{"price": "12.30"}', b'{"price": "12.3"}', TOL) == []
    assert cmp(b'{"price": "12.30"}', b'{"price": "12.31"}', TOL) == []
    out = cmp(b'{"price": "12.30"}', b'{"price": "12.40"}', TOL)
    assert [(d.kind, d.judgement) for d in out] == [("value", "tolerance")]
    out = cmp(b'{"price": "12.30"}', b'{"price": 12.3}', TOL)
    assert [(d.kind, d.judgement) for d in out] == [("type", "strict")]
    out = cmp(b'{"price": "12.30"}', b'{"price": "abc"}', TOL)
    assert [d.judgement for d in out] == ["strict"]
    # without a tolerance rule a numeric string is a string
    assert cmp(b'{"price": "12.30"}', b'{"price": "12.3"}')


@SETTINGS
@given(st.decimals(min_value=-(10**6), max_value=10**6, places=4), st.integers(0, 3))
def test_numeric_string_variants(x: Any, zeros: int) -> None:
    a = json.dumps({"price": str(x)}).encode()
    text = str(x) + ("0" * zeros if "." in str(x) else "")
    assert cmp(a, json.dumps({"price": text}).encode(), TOL) == []


@pytest.mark.parametrize(
    ("a", "b"), [(b"", b"\n"), (b" ", b""), (b"\r\n", b"\t"), (b"\xef\xbb\xbf", b"")]
)
def test_blank_bodies_are_equal_under_json(a: bytes, b: bytes) -> None:
    assert cmp(a, b) == []
    assert cmp(a, b"{}")  # but blank against a document differs


def test_byte_order_mark_on_one_side_changes_nothing() -> None:
    doc = b'{"n": 123456789012345678901, "s": "\xc3\xa9"}'
    assert cmp(b"\xef\xbb\xbf" + doc, doc) == []
    out = cmp(b"\xef\xbb\xbf" + doc, doc.replace(b"901", b"902"))
    assert [d.path for d in out] == ["$.n"]
    no_type = Answer(status=200, headers={}, body=b"\xef\xbb\xbf" + doc)
    assert compare(no_type, Answer(status=200, headers={}, body=doc), rules()) == []


def test_compare_json_raises_on_bad_json() -> None:
    with pytest.raises(ValueError):
        compare_json(b"{", b"{}", rules())


def test_deeper_than_the_parsers_is_one_strict_body_difference() -> None:
    out = cmp(nest(600, "true"), nest(600, "1"))
    assert [(d.kind, d.judgement) for d in out] == [("body", "strict")]
    assert cmp(nest(600, "1"), nest(600, "1")) == []
