"""The compare engine against DeepDiff on generated JSON pairs (issue 8, tests that must exist).

With no rules both must agree on whether two documents differ and where. Notation is
normalised: DeepDiff's list paths are rendered as ``$`` paths; an element added to or removed
from an array (DeepDiff: ``iterable_item_added`` at the index, this engine: one ``length``
difference at the array) counts at the array, an empty object against a filled one counts
at the members (DeepDiff reports the object), and so does anything inside an array whose
lengths differ (DeepDiff aligns inserted elements, this engine compares by index: both say
"this array differs"). DeepDiff runs without ``ignore_numeric_type_changes`` (which rounds):
its ``type_changes`` between an int and a float of equal value are no difference in JSON and
are dropped; between a bool and a number they stay.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from deepdiff import DeepDiff
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.schema import CompareConfig
from diff.compare import compare_json
from diff.paths import Location, compile_path, render_location
from diff.rules import RuleBook

RULES = RuleBook.from_config(CompareConfig()).defaults

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.sampled_from(["é", "日本", "😀", "\u0000", 'a"b']),
)
keys = st.sampled_from(["a", "b", "c", "é", "x y", "a.b", "0"])
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=25,
)


def mutate(doc: Any, rnd: random.Random, budget: int) -> Any:
    """A copy of ``doc`` with up to ``budget`` edits of the kinds the issue lists."""
    doc = copy.deepcopy(doc)
    for _ in range(budget):
        doc = _edit(doc, rnd)
    return doc


def _edit(v: Any, rnd: random.Random) -> Any:
    t = type(v)
    roll = rnd.random()
    if t is dict and v and roll < 0.7:
        k = rnd.choice(sorted(v))
        if roll < 0.15:
            del v[k]
        elif roll < 0.25:
            v[k + "_new"] = 1
        else:
            v[k] = _edit(v[k], rnd)
        return v
    if t is list and v and roll < 0.7:
        i = rnd.randrange(len(v))
        if roll < 0.15:
            del v[i]
        elif roll < 0.25:
            v.insert(i, copy.deepcopy(v[i]) if rnd.random() < 0.5 else 0)
        elif roll < 0.35:
            rnd.shuffle(v)
        else:
            v[i] = _edit(v[i], rnd)
        return v
    return rnd.choice(
        [
            True,
            False,
            1,
            1.0,
            0,
            "1",
            None,
            [],
            {},
            2**64 + 1,
            2**64 + 2,
            0.1,
            0.1000000000001,
            "é",
            [v],
            {"k": v},
        ]
    )


def deep(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"n": leaf}
    return leaf


def _numbers(x: Any, y: Any) -> bool:
    return all(type(v) in (int, float) for v in (x, y))


def collapse(loc: Location, a: Any, b: Any) -> Location:
    """The location, cut at the shallowest array whose lengths differ between a and b."""
    va, vb = a, b
    for depth in range(len(loc) + 1):
        if type(va) is list and type(vb) is list and len(va) != len(vb):
            return loc[:depth]
        if depth == len(loc):
            break
        part = loc[depth]
        try:
            va = va[part]
            vb = vb[part]
        except (KeyError, IndexError, TypeError):
            break
    return loc


# Inside an array DeepDiff aligns elements by ``==`` (difflib), where ``True == 1`` and
# ``False == 0.0``: ``[true]`` against ``[1]`` is no difference to it, while JSON's types
# differ. DeepDiff gets each bool as a string no generated string can be (they are at most
# 5 characters), so a bool against a number is a type change to it as it is to JSON.
_BOOLS = {True: "\x00bool:true\x00", False: "\x00bool:false\x00"}


def _bools_apart(doc: Any) -> Any:
    if type(doc) is bool:
        return _BOOLS[doc]
    if type(doc) is list:
        return [_bools_apart(v) for v in doc]
    if type(doc) is dict:
        return {k: _bools_apart(v) for k, v in doc.items()}
    return doc


def test_deepdiff_alone_takes_true_for_one_inside_an_array() -> None:
    """Why the oracle sets bools apart (if DeepDiff changes this, _bools_apart can go)."""
    assert not DeepDiff([True], [1])
    assert deepdiff_places([True], [1]) == {"$[0]"}
    assert deepdiff_places({"a": [False]}, {"a": [0.0]}) == {"$.a[0]"}
    assert deepdiff_places([True], [True]) == set()


def deepdiff_places(a: Any, b: Any) -> set[str]:
    tree = DeepDiff(
        _bools_apart(a),
        _bools_apart(b),
        view="tree",
        verbose_level=2,
        log_frequency_in_sec=0,
        threshold_to_diff_deeper=0,
    ).tree
    out: set[str] = set()
    for report, levels in tree.items():
        for level in levels:
            loc = tuple(level.path(output_format="list"))
            if report in ("iterable_item_added", "iterable_item_removed"):
                loc = loc[:-1]
            elif report == "type_changes" and _numbers(level.t1, level.t2):
                if level.t1 == level.t2:
                    continue
            elif type(level.t1) is dict and type(level.t2) is dict:
                # DeepDiff says an empty object "changed"; this engine names the members
                for k in set(level.t1) ^ set(level.t2):
                    out.add(render_location(collapse((*loc, k), a, b)))
                continue
            out.add(render_location(collapse(loc, a, b)))
    return out


def engine_places(a: Any, b: Any) -> set[str]:
    raw_a = json.dumps(a, ensure_ascii=False).encode()
    raw_b = json.dumps(b, ensure_ascii=False).encode()
    out: set[str] = set()
    for d in compare_json(raw_a, raw_b, RULES):
        loc = _parse(d.path)
        out.add(render_location(collapse(loc, a, b)))
    return out


def _parse(path: str) -> Location:
    """Back from this engine's rendering to a location (keys as render_location writes)."""
    return tuple(arg for _, arg in compile_path(path).steps if arg is not None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.randoms(use_true_random=False), st.integers(0, 3), st.integers(0, 30))
def test_engine_agrees_with_deepdiff(doc: Any, rnd: random.Random, edits: int, depth: int) -> None:
    a = deep(depth, doc) if depth > 20 else doc
    other = mutate(doc, rnd, edits)
    b = deep(depth, other) if depth > 20 else other
    expected = deepdiff_places(a, b)
    found = _aligned(engine_places(a, b), expected)
    assert found == expected, (a, b)


def _aligned(found: set[str], expected: set[str]) -> set[str]:
    """DeepDiff aligns arrays itself (an insertion where this engine sees changed positions):
    where it names an array as changed, the engine's places inside that array count as it."""
    out = set()
    for place in found:
        parents = [e for e in expected if place.startswith(e + "[")]
        out.add(min(parents, key=len) if parents else place)
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, documents)
def test_engine_agrees_with_deepdiff_on_unrelated_documents(a: Any, b: Any) -> None:
    expected = deepdiff_places(a, b)
    assert _aligned(engine_places(a, b), expected) == expected
