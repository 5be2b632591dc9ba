"""The ``writes:`` section (issue 11): its bounds, what it refuses, the rules it derives into
``compare.writes``, and its URLs censored wherever a configuration is shown or stored."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from config.censor import censor_config
from config.load import config_from_mapping
from graygate.errors import ConfigError

UPSTREAMS = {"primary": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"}
CHECK: dict[str, Any] = {
    "name": "stock_moves",
    "primary": {
        "url": "postgresql://reader:s3cret@db.internal/orders",
        "query": "SELECT sku, qty FROM stock_moves WHERE trace_id = :trace_id",
    },
    "canary": {
        "url": "postgresql://reader:s3cret@db.internal/orders",
        "query": "SELECT sku, qty FROM shadow_stock_moves WHERE trace_id = :trace_id",
    },
    "key": "sku",
    "strict": ["$[*].qty"],
    "ignore": ["$[*].created_at"],
}


def _doc(**check: Any) -> dict[str, Any]:
    c = copy.deepcopy(CHECK)
    c.update(check)
    return {
        "run": "r",
        "upstreams": dict(UPSTREAMS),
        "mirror": {"allow_side_effects": True},
        "writes": [c],
    }


@pytest.mark.parametrize(
    ("key", "bound", "past"),
    [("settle_ms", 600_000, 600_001), ("timeout_ms", 600_000, 600_001),
     ("max_rows", 100_000, 100_001)],
)  # fmt: skip
def test_numeric_keys_at_the_bound_and_past_it(key: str, bound: int, past: int) -> None:
    config_from_mapping(_doc(**{key: bound}), env={})
    with pytest.raises(ConfigError) as info:
        config_from_mapping(_doc(**{key: past}), env={})
    assert str(info.value).startswith(f"writes[0].{key}"), str(info.value)


def test_max_write_failure_rate_bound() -> None:
    doc = _doc()
    doc["verdict"] = {"max_write_failure_rate": 1.0}
    config_from_mapping(doc, env={})
    doc["verdict"] = {"max_write_failure_rate": 1.001}
    with pytest.raises(ConfigError) as info:
        config_from_mapping(doc, env={})
    assert str(info.value).startswith("verdict.max_write_failure_rate")


def test_at_most_64_write_checks() -> None:
    doc = _doc()
    doc["writes"] = [dict(CHECK, name=f"w{i}") for i in range(64)]
    assert len(config_from_mapping(doc, env={}).writes) == 64
    doc["writes"].append(dict(CHECK, name="w64"))
    with pytest.raises(ConfigError) as info:
        config_from_mapping(doc, env={})
    assert str(info.value).startswith("writes")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"primary": {"url": CHECK["primary"]["url"], "query": "SELECT 1"}}, ":trace_id"),
        (
            {"canary": {"url": CHECK["canary"]["url"],
                        "query": "SELECT 1 WHERE :trace_id = ''; DELETE FROM t"}},
            "one statement",
        ),
        ({"canary": {"url": "mysql://x@h/db", "query": CHECK["canary"]["query"]}}, "postgresql"),
        ({"name": "has space"}, "name"),
        ({"methods": ["FETCH"]}, "FETCH"),
        ({"key": ""}, "key"),
    ],
)  # fmt: skip
def test_refused_with_the_key_named(change: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(_doc(**change), env={})
    assert str(info.value).startswith("writes"), str(info.value)
    assert words in str(info.value)
    assert "s3cret" not in str(info.value)


def test_a_check_of_methods_never_mirrored_is_refused() -> None:
    doc = _doc()
    doc["mirror"] = {"allow_side_effects": False}
    with pytest.raises(ConfigError) as info:
        config_from_mapping(doc, env={})
    assert "allow_side_effects" in str(info.value)


def test_duplicate_names_are_refused() -> None:
    doc = _doc()
    doc["writes"].append(copy.deepcopy(CHECK))
    with pytest.raises(ConfigError) as info:
        config_from_mapping(doc, env={})
    assert "stock_moves" in str(info.value) and "twice" in str(info.value)


def test_rules_are_derived_into_compare_and_urls_are_censored() -> None:
    cfg = config_from_mapping(_doc(), env={})
    (rules,) = cfg.compare.writes
    assert rules.endpoint == "WRITE stock_moves"
    assert (rules.key, rules.strict, rules.ignore) == ("sku", ("$[*].qty",), ("$[*].created_at",))
    dumped = cfg.model_dump(mode="json")
    assert "s3cret" not in repr(censor_config(dumped))
    assert "s3cret" not in repr(cfg)  # the URL is kept out of the repr
    assert "reader:***@db.internal" in censor_config(dumped)["writes"][0]["primary"]["url"]
    # A stored configuration read back derives the same rules.
    again = config_from_mapping(dumped, env={})
    assert again.compare.writes == cfg.compare.writes
