"""Compiling the compare config into rule sets; errors name the key."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from config.schema import CompareConfig
from diff.rules import DEFAULT_IGNORED_HEADERS, Judge, RuleBook
from graygate.errors import ConfigError


def book(cfg: dict[str, Any]) -> RuleBook:
    return RuleBook.from_config(CompareConfig.model_validate(cfg))


ORDERS = {
    "defaults": {
        "ignore": ["$..request_id", "$.meta.**"],
        "strict": ["$.meta.version"],
        "tolerance": {"$..price": {"rel": 0.01}, "$.total": {"abs": 1.0}},
        "headers": {"ignore": ["date"]},
    },
    "endpoints": [
        {
            "match": "GET /api/orders/{id}",
            "strict": ["$.status"],
            "ignore": ["$.debug"],
            "tolerance": {"$.total": {"abs": 0.01}},
            "arrays": {"$.items": {"key": "sku"}},
            "status": "ignore",
            "headers": {"strict": ["x-version"]},
            "body": "json",
        },
        {"match": "* /api/carts/{id}", "default": "ignore", "strict": ["$.lines"]},
    ],
}


def test_defaults_when_nothing_is_configured() -> None:
    rules = book({}).for_endpoint("GET /anything")
    assert rules.default.kind == "strict" and rules.default.text == "strict (default)"
    assert rules.status_strict and rules.body == "auto"
    assert rules.strict_headers == ("content-type",)
    assert rules.ignored_headers == frozenset(DEFAULT_IGNORED_HEADERS)
    assert rules.plain
    assert rules.judge_at(("a", 1, "b")).text == "strict (default)"


def test_endpoint_rules_merge_over_defaults() -> None:
    b = book(ORDERS)
    ep = b.matcher.endpoint("GET", "/api/orders/1042")
    assert ep == "GET /api/orders/{id}"
    rules = b.for_endpoint(ep)
    # lists add
    assert rules.judge_at(("request_id",)).kind == "ignore"  # from defaults
    assert rules.judge_at(("debug", "x")).kind == "ignore"  # from the endpoint
    assert rules.judge_at(("status",)).text == "strict $.status"
    # maps merge; the endpoint's entry wins for the same path
    assert rules.judge_at(("total",)).text == "tolerance $.total abs=0.01"
    assert rules.judge_at(("items", 0, "price")).text == "tolerance $..price rel=0.01"
    assert rules.root.key("items").info.array.key == "sku"
    # scalars override
    assert not rules.status_strict and rules.body == "json"
    # headers: the defaults' ignore replaced the built-in list; the endpoint adds a strict one
    assert rules.strict_headers == ("content-type", "x-version")
    assert rules.ignored_headers == frozenset({"date"})
    # other endpoints get the defaults
    other = b.for_endpoint(b.matcher.endpoint("GET", "/api/users/7"))
    assert other is b.defaults
    assert other.judge_at(("status",)).text == "strict (default)"
    assert other.judge_at(("total",)).text == "tolerance $.total abs=1"


def test_star_method_pattern_resolves_back_to_its_rules() -> None:
    b = book(ORDERS)
    ep = b.matcher.endpoint("POST", "/api/carts/99")
    assert ep == "POST /api/carts/{id}"
    rules = b.for_endpoint(ep)
    assert rules.endpoint == "* /api/carts/{id}"
    assert rules.default.kind == "ignore"
    assert rules.judge_at(("lines", 0, "qty")).text == "strict $.lines"
    assert rules.judge_at(("note",)).text == "ignore (default)"


def test_most_specific_rule_wins() -> None:
    rules = book(ORDERS).defaults
    assert rules.judge_at(("meta", "host")).text == "ignore $.meta.**"
    assert rules.judge_at(("meta", "version")).text == "strict $.meta.version"
    # An ignored subtree with a strict rule inside is still entered.
    meta = rules.root.key("meta")
    assert meta.info.judge.kind == "ignore" and meta.info.unignore
    # ... an ignored one without is pruned; "$..price" (tolerance, any depth) could name
    # something below anything, so with it nothing is pruned.
    rid = rules.root.key("request_id")
    assert rid.info.judge.kind == "ignore" and rid.info.unignore
    plain = book({"defaults": {"ignore": ["$..request_id"], "strict": ["$.a..b"]}}).defaults
    rid = plain.root.key("request_id")
    assert rid.info.judge.kind == "ignore" and not rid.info.unignore
    assert plain.root.key("a").key("request_id").info.unignore


def test_tie_prefers_comparing() -> None:
    rules = book({"defaults": {"ignore": ["$.a"], "strict": ["$.a"]}}).defaults
    assert rules.judge_at(("a",)).kind == "strict"
    # but an endpoint's rule beats a default one of the same specificity
    b = book(
        {"defaults": {"strict": ["$.a"]}, "endpoints": [{"match": "GET /x", "ignore": ["$.a"]}]}
    )
    assert b.for_endpoint("GET /x").judge_at(("a",)).kind == "ignore"


@pytest.mark.parametrize(
    ("cfg", "key", "fragment"),
    [
        ({"defaults": {"ignore": ["$.ok", "meta.x"]}}, "compare.defaults.ignore", "'meta.x'"),
        ({"defaults": {"strict": ["$.items["]}}, "compare.defaults.strict", "unclosed '['"),
        (
            {"endpoints": [{"match": "GET /a", "tolerance": {"$.total[x]": {"abs": 1}}}]},
            "compare.endpoints[0].tolerance",
            "'$.total[x]'",
        ),
        (
            {
                "endpoints": [
                    {"match": "GET /a"},
                    {"match": "GET /b", "arrays": {"$..": {"key": "id"}}},
                ]
            },
            "compare.endpoints[1].arrays",
            "'..' must be followed by a name",
        ),
        (
            {"endpoints": [{"match": "GET /a/x{id}"}]},
            "compare.endpoints[0].match",
            "segment 'x{id}'",
        ),
    ],
)
def test_bad_paths_raise_config_error_naming_the_key(
    cfg: dict[str, Any], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as err:
        book(cfg)
    assert err.value.key == key
    assert fragment in err.value.message
    assert str(err.value).startswith(key + ": ")


def test_tolerance_bounds() -> None:
    abs_only = Judge("tolerance", "t", abs=0.01)
    assert abs_only.within(1.00, 1.01)  # inclusive, despite float rounding
    assert abs_only.within(10.0, 9.995)
    assert not abs_only.within(1.00, 1.02)
    rel_only = Judge("tolerance", "t", rel=0.001)
    assert rel_only.within(1000.0, 1001.0)
    assert not rel_only.within(1000.0, 1002.0)
    assert rel_only.within(0, 0) and not rel_only.within(0, 1e-9)
    either = Judge("tolerance", "t", abs=0.5, rel=0.01)
    assert either.within(1.0, 1.4)  # within abs, not rel
    assert either.within(1000.0, 1009.0)  # within rel, not abs
    assert not either.within(10.0, 10.6)  # within neither


def test_rulebook_and_rulesets_pickle() -> None:
    b = book(ORDERS)
    copy = pickle.loads(pickle.dumps(b))
    assert copy.for_endpoint("GET /api/orders/{id}").judge_at(("status",)).text == (
        "strict $.status"
    )
    rules = pickle.loads(pickle.dumps(b.for_endpoint("GET /api/orders/{id}")))
    assert rules.judge_at(("total",)).text == "tolerance $.total abs=0.01"
    assert rules.describe()["headers"] == {
        "strict": ["content-type", "x-version"],
        "ignore": ["date"],
    }
