"""Routing: who serves, whether to mirror. Pure: no I/O."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from multidict import CIMultiDict

from config.schema import GrayConfig, MirrorConfig
from proxy.routing import (
    CANARY,
    PRIMARY,
    Router,
    parse_cookies,
    stable_bucket,
)
from proxy.tagging import new_trace_id


def router(*rules: dict[str, Any], **mirror: Any) -> Router:
    return Router(GrayConfig.model_validate({"serve_canary": list(rules)}), MirrorConfig(**mirror))


def h(**headers: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})


def test_default_primary_serves_canary_mirrored() -> None:
    r = router()
    assert r.serving_side(h(), None, new_trace_id()) == PRIMARY
    assert r.label_for(None, PRIMARY) == "stable"
    assert r.label_for(None, CANARY) == "canary"
    assert r.label_for("blue", PRIMARY) == "blue"


def test_label_rule() -> None:
    r = router({"label": "v2"})
    tid = new_trace_id()
    assert r.serving_side(h(), "v2", tid) == CANARY
    assert r.serving_side(h(), "v1", tid) == PRIMARY
    assert r.serving_side(h(), None, tid) == PRIMARY


def test_header_equals_and_present() -> None:
    tid = new_trace_id()
    eq = router({"header": "X-Gray-Tag", "equals": "v2"})
    assert eq.serving_side(h(X_Gray_Tag="v2"), None, tid) == CANARY
    assert eq.serving_side(h(**{"x-gray-tag": "v2"}), None, tid) == CANARY  # any case
    assert eq.serving_side(h(X_Gray_Tag="v1"), None, tid) == PRIMARY
    assert eq.serving_side(h(), None, tid) == PRIMARY
    present = router({"header": "X-Beta"})
    assert present.serving_side(h(X_Beta=""), None, tid) == CANARY
    assert present.serving_side(h(X_Other="1"), None, tid) == PRIMARY


def test_cookie_equals_and_present() -> None:
    tid = new_trace_id()
    eq = router({"cookie": "beta", "cookie_equals": "1"})
    assert eq.serving_side(h(Cookie="a=b; beta=1; c=d"), None, tid) == CANARY
    assert eq.serving_side(h(Cookie='beta="1"'), None, tid) == CANARY
    assert eq.serving_side(h(Cookie="beta=0"), None, tid) == PRIMARY
    assert eq.serving_side(h(Cookie="notbeta=1"), None, tid) == PRIMARY
    assert eq.serving_side(h(), None, tid) == PRIMARY
    present = router({"cookie": "beta"})
    assert present.serving_side(h(Cookie="x=1;beta="), None, tid) == CANARY
    assert present.serving_side(h(Cookie="x=1"), None, tid) == PRIMARY


def test_parse_cookies() -> None:
    assert parse_cookies(None) == {}
    assert parse_cookies('a=1; b = 2 ;c="q"; junk; a=9; =x') == {"a": "1", "b": "2", "c": "q"}


def test_all_conditions_of_a_rule_must_hold_any_rule_may_match() -> None:
    tid = new_trace_id()
    r = router({"header": "X-Beta", "cookie": "region", "cookie_equals": "eu"}, {"label": "v2"})
    assert r.serving_side(h(X_Beta="1", Cookie="region=eu"), None, tid) == CANARY
    assert r.serving_side(h(X_Beta="1", Cookie="region=us"), None, tid) == PRIMARY
    assert r.serving_side(h(Cookie="region=eu"), None, tid) == PRIMARY
    assert r.serving_side(h(), "v2", tid) == CANARY  # the second rule alone


def test_percent_statistically() -> None:
    r = router({"percent": 20})
    n = 10_000
    canary = sum(r.serving_side(h(), None, new_trace_id()) == CANARY for _ in range(n))
    assert 1800 < canary < 2200  # 20% (sd 40)
    assert all(
        router({"percent": 0}).serving_side(h(), None, new_trace_id()) == PRIMARY
        for _ in range(500)
    )
    assert all(
        router({"percent": 100}).serving_side(h(), None, new_trace_id()) == CANARY
        for _ in range(500)
    )


def test_sticky_header_one_user_one_side() -> None:
    r = router({"percent": 30, "sticky": "X-User-Id"})
    sides: dict[str, set[str]] = {}
    for _ in range(5):
        for user in range(2000):
            uid = f"u{user}"
            # a new trace id each time: only the user decides
            side = r.serving_side(h(X_User_Id=uid), None, new_trace_id())
            sides.setdefault(uid, set()).add(side)
    assert all(len(s) == 1 for s in sides.values())
    canary = sum(1 for s in sides.values() if s == {CANARY})
    assert 500 < canary < 700  # 30% of 2000 (sd ~20)


def test_sticky_cookie_and_missing_sticky_value() -> None:
    r = router({"percent": 100, "sticky_cookie": "uid"})
    assert r.serving_side(h(Cookie="uid=42"), None, new_trace_id()) == CANARY
    # no user to be sticky for: the rule does not match
    assert r.serving_side(h(Cookie="other=1"), None, new_trace_id()) == PRIMARY
    assert r.serving_side(h(), None, new_trace_id()) == PRIMARY
    hr = router({"percent": 100, "sticky": "X-User-Id"})
    assert hr.serving_side(h(), None, new_trace_id()) == PRIMARY
    assert hr.serving_side(h(X_User_Id=""), None, new_trace_id()) == PRIMARY


def test_stable_bucket_is_stable_across_processes() -> None:
    # Fixed values: a salted hash() would change them from run to run.
    assert stable_bucket("user-42") == 5308
    code = "from proxy.routing import stable_bucket; print(stable_bucket('user-42'))"
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        assert out.stdout.strip() == "5308"
    assert all(0 <= stable_bucket(str(i)) < 10_000 for i in range(1000))


def test_mirror_skip_reasons() -> None:
    tid = new_trace_id()
    assert router().mirror_skip("GET", tid) is None
    assert router().mirror_skip("HEAD", tid) is None
    assert router().mirror_skip("POST", tid) == "method"
    assert router(allow_side_effects=True).mirror_skip("POST", tid) is None
    assert router(methods=["GET"]).mirror_skip("OPTIONS", tid) == "method"
    assert router(enabled=False).mirror_skip("GET", tid) == "disabled"
    assert router(sample=0.0).mirror_skip("GET", tid) == "sampled_out"
    half = router(sample=0.5)
    n = 4000
    out = sum(half.mirror_skip("GET", new_trace_id()) == "sampled_out" for _ in range(n))
    assert 1800 < out < 2200


def test_a_fixed_trace_id_chooses_neither_side_nor_sampling() -> None:
    # Issue 10 item 8: a client that sends the same X-Trace-ID every time must not pick
    # its side or dodge the mirror. 200 tries at 50%: both outcomes, every run (the chance
    # of one side only is 2 * 0.5**200).
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = router({"percent": 50}, sample=0.5)
    assert {r.serving_side(h(), None, tid) for _ in range(200)} == {PRIMARY, CANARY}
    assert {r.mirror_skip("GET", tid) for _ in range(200)} == {None, "sampled_out"}
    # the trace id is not needed at all
    assert {r.serving_side(h(), None) for _ in range(200)} == {PRIMARY, CANARY}
    assert {r.mirror_skip("GET") for _ in range(200)} == {None, "sampled_out"}


def test_sticky_still_hashes_the_user_not_the_trace_id() -> None:
    r = router({"percent": 50, "sticky": "X-User-Id"})
    for user in ("alice", "bob", "carol", "dave"):
        sides = {r.serving_side(h(X_User_Id=user), None, new_trace_id()) for _ in range(50)}
        assert len(sides) == 1
        assert sides == {CANARY if stable_bucket(user) < 5000 else PRIMARY}


def test_sampling_and_routing_are_independent() -> None:
    # Two separate draws per request: both happen about a quarter of the time.
    r = router({"percent": 50}, sample=0.5)
    both = 0
    n = 4000
    for _ in range(n):
        tid = new_trace_id()
        if r.serving_side(h(), None, tid) == CANARY and r.mirror_skip("GET", tid) is None:
            both += 1
    assert 850 < both < 1150  # ~25%, not ~50%
