"""decide() on hand-built aggregates: every check passing and failing, and the outcome."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from config.schema import GraygateConfig, LatencyConfig, VerdictConfig
from diff.verdict import decide, find_noise, outcome
from graygate.values import Check, Verdict, VerdictResult
from store.aggregates import (
    EndpointCounts,
    FieldCount,
    LatencySample,
    MismatchCounts,
    RunAggregates,
)
from tests.diff.judgeseed import timed

A = "GET /api/orders/{id}"
B = "GET /api/items/{id}"
CFG = VerdictConfig(min_pairs=100, min_pairs_per_endpoint=20)


def ep(
    endpoint: str,
    pairs: int,
    *,
    strict: int = 0,
    tolerance: int = 0,
    skipped: int = 0,
    errors: int = 0,
    primary_failures: int = 0,
    canary_failures: int = 0,
    secondary: int = 0,
    pending: int = 0,
) -> EndpointCounts:
    judged = pairs + skipped + errors
    return EndpointCounts(
        endpoint=endpoint,
        recorded=judged + pending,
        judged=judged,
        pairs=pairs,
        secondary_pairs=secondary,
        skipped=skipped,
        errors=errors,
        attempted=pairs + errors,
        primary_failures=primary_failures,
        canary_failures=canary_failures,
        strict_pairs=strict,
        tolerance_pairs=tolerance,
    )


def aggregates(*endpoints: EndpointCounts, **kw: Any) -> RunAggregates:
    """The run's aggregates; unless ``latency`` is given, every pair timed alike."""
    kw.setdefault("latency", timed(*endpoints))
    return RunAggregates(run="r", run_id=1, endpoints=tuple(endpoints), **kw)


def check(result: VerdictResult, name: str) -> Check:
    (c,) = [c for c in result.checks if c.name == name]
    return c


def good() -> tuple[EndpointCounts, EndpointCounts]:
    return ep(A, 150), ep(B, 60)


# --------------------------------------------------------------------------- outcome


def test_outcome_rule() -> None:
    ok = Check("a", True, 1, 1)
    assert outcome([ok]) is Verdict.GO
    assert outcome([ok, Check("b", False, 1, 0)]) is Verdict.NO_GO
    assert outcome([ok, Check("b", False, 1, 0, blocking=False)]) is Verdict.INCONCLUSIVE
    assert outcome([ok, Check("b", None, None, 0)]) is Verdict.INCONCLUSIVE
    # A non-blocking check that could not be decided is informational.
    assert outcome([ok, Check("b", None, None, 0, blocking=False)]) is Verdict.GO
    # A blocking failure wins over anything undecided.
    assert (
        outcome(
            [
                Check("a", None, None, 0),
                Check("b", False, 1, 0, blocking=False),
                Check("c", False, 1, 0),
            ]
        )
        is Verdict.NO_GO
    )


def test_all_checks_pass_gives_go() -> None:
    r = decide(aggregates(*good()), CFG)
    assert r.verdict is Verdict.GO
    names = [c.name for c in r.checks]
    assert names == [
        "evidence",
        "strict",
        "tolerance",
        "noise",
        "errors",
        "latency",
        "recording",
        "backlog",
        "judgeable",
    ]
    assert r.extra["summary"]["pairs"] == 210
    d = r.as_dict()
    assert d["verdict"] == "GO" and len(d["checks"]) == 9


# --------------------------------------------------------------------------- evidence


def test_evidence_too_few_pairs_is_inconclusive() -> None:
    r = decide(aggregates(ep(A, 60), ep(B, 30, pending=12)), CFG)
    c = check(r, "evidence")
    assert c.passed is False and not c.blocking
    assert c.observed == 90 and c.threshold["min_pairs"] == 100
    assert "need 100" in c.detail and "12 exchange(s) not judged yet" in c.detail
    assert r.verdict is Verdict.INCONCLUSIVE


def test_evidence_needs_every_mirrored_endpoint() -> None:
    r = decide(aggregates(ep(A, 500), ep(B, 5)), CFG)
    c = check(r, "evidence")
    assert c.passed is False and f"{B} 5/20" in c.detail
    assert r.verdict is Verdict.INCONCLUSIVE


def test_evidence_ignores_endpoints_never_mirrored() -> None:
    post = ep("POST /api/orders", 0, skipped=40)
    r = decide(aggregates(*good(), post), CFG)
    c = check(r, "evidence")
    assert c.passed is True and "never mirrored" in c.detail and "POST /api/orders" in c.detail
    assert r.verdict is Verdict.GO


def test_nothing_at_all_is_inconclusive() -> None:
    r = decide(aggregates(), CFG)
    assert r.verdict is Verdict.INCONCLUSIVE
    assert check(r, "strict").passed is None and check(r, "errors").passed is None


# --------------------------------------------------------------------------- strict


def test_one_strict_mismatch_is_no_go_naming_endpoint_and_fields() -> None:
    a, b = good()
    a = ep(A, 150, strict=1)
    fields = (
        FieldCount(A, "$.status", "canary", "strict", 1),
        FieldCount(A, "$.total", "canary", "tolerance", 1),
    )
    r = decide(aggregates(a, b, fields=fields), CFG)
    c = check(r, "strict")
    assert c.passed is False and c.blocking
    assert c.observed == pytest.approx(1 / 150, abs=1e-6) and c.threshold == 0.0
    assert A in c.detail and "$.status (1)" in c.detail and "1/150" in c.detail
    assert "$.total" not in c.detail
    assert r.verdict is Verdict.NO_GO


def test_strict_failure_wins_over_missing_evidence() -> None:
    r = decide(aggregates(ep(A, 3, strict=1)), CFG)
    assert check(r, "evidence").passed is False
    assert r.verdict is Verdict.NO_GO


def test_strict_rate_within_threshold_passes() -> None:
    cfg = VerdictConfig(min_pairs=100, min_pairs_per_endpoint=20, max_strict_mismatch_rate=0.01)
    r = decide(aggregates(ep(A, 200, strict=2), ep(B, 60)), cfg)
    c = check(r, "strict")
    assert c.passed is True and c.observed == pytest.approx(0.01)
    assert r.verdict is Verdict.GO
    r = decide(aggregates(ep(A, 200, strict=3), ep(B, 60)), cfg)
    assert check(r, "strict").passed is False and r.verdict is Verdict.NO_GO


def test_strict_is_judged_per_endpoint() -> None:
    cfg = VerdictConfig(min_pairs=100, min_pairs_per_endpoint=20, max_strict_mismatch_rate=0.02)
    # 3/1000 overall is fine, but 3/50 on B is not.
    r = decide(aggregates(ep(A, 950), ep(B, 50, strict=3)), cfg)
    c = check(r, "strict")
    assert c.passed is False and B in c.detail and A not in c.detail


# --------------------------------------------------------------------------- tolerance


def test_tolerance_violations() -> None:
    cfg = VerdictConfig(min_pairs=100, max_tolerance_violation_rate=0.01)
    fields = (FieldCount(A, "$.total", "canary", "tolerance", 5),)
    r = decide(aggregates(ep(A, 100, tolerance=5), fields=fields), cfg)
    c = check(r, "tolerance")
    assert c.passed is False and "$.total (5)" in c.detail
    assert r.verdict is Verdict.NO_GO
    r = decide(aggregates(ep(A, 100, tolerance=1), fields=fields), cfg)
    assert check(r, "tolerance").passed is True and r.verdict is Verdict.GO


def test_a_failing_endpoint_names_its_top_fields_once_each() -> None:
    # An unordered array element that changed is a missing and an extra difference: one
    # field, named once (with the larger kind's count), so that three fields fit.
    fields = (
        FieldCount(A, "$.xs[*]", "canary", "strict", 30, kind="missing"),
        FieldCount(A, "$.xs[*]", "canary", "strict", 28, kind="extra"),
        FieldCount(A, "$.ys[*]", "canary", "strict", 30, kind="missing"),
        FieldCount(A, "$.ys[*]", "canary", "strict", 30, kind="extra"),
        FieldCount(A, "$.zs", "canary", "strict", 29, kind="type"),
        FieldCount(A, "$.ws", "canary", "strict", 1, kind="value"),
    )
    r = decide(aggregates(ep(A, 150, strict=30), ep(B, 60), fields=fields), CFG)
    c = check(r, "strict")
    assert c.passed is False
    assert c.detail.endswith(f"{A}: 30/150 pairs (20%): $.xs[*] (30), $.ys[*] (30), $.zs (29)")


# --------------------------------------------------------------------------- noise


def test_noise_field_is_reported_and_left_out() -> None:
    # $.at differs in ~half the exchanges against the secondary as against the canary:
    # noise. $.status differs only against the canary: real.
    fields = (
        FieldCount(A, "$.at", "canary", "strict", 40),
        FieldCount(A, "$.at", "canary", "noise", 35),
        FieldCount(A, "$.at", "secondary", "strict", 70),
    )
    a = ep(A, 150, strict=40, secondary=150)
    noise = find_noise(aggregates(a, fields=fields), _noise_cfg())
    assert [(n.endpoint, n.field) for n in noise] == [(A, "$.at")]
    # The aggregation leaves the noise field out of the mismatch counts (evaluate does it).
    r = decide(aggregates(a, ep(B, 60), fields=fields, mismatches={A: MismatchCounts(0, 0)}), CFG)
    c = check(r, "noise")
    assert c.passed is True and not c.blocking and c.observed == 1
    assert "$.at" in c.detail and "35 exchange-field difference(s)" in c.detail
    assert check(r, "strict").passed is True
    assert r.verdict is Verdict.GO


def test_a_field_the_secondary_never_shows_is_never_noise() -> None:
    fields = (
        FieldCount(A, "$.status", "canary", "strict", 1),
        FieldCount(A, "$.at", "secondary", "strict", 10),
    )
    a = ep(A, 10_000, strict=1, secondary=10_000)  # 0.01 %: under the absolute margin
    noise = find_noise(aggregates(a, fields=fields), _noise_cfg())
    assert [n.field for n in noise] == ["$.at"]
    r = decide(aggregates(a, fields=fields), CFG)
    assert check(r, "strict").passed is False and r.verdict is Verdict.NO_GO


def test_canary_much_worse_than_secondary_is_not_noise() -> None:
    fields = (
        FieldCount(A, "$.at", "canary", "strict", 90),
        FieldCount(A, "$.at", "secondary", "strict", 10),
    )
    a = ep(A, 100, strict=90, secondary=100)
    assert find_noise(aggregates(a, fields=fields), _noise_cfg()) == []


def test_without_secondary_noise_is_skipped() -> None:
    r = decide(aggregates(*good()), CFG)
    c = check(r, "noise")
    assert c.passed is None and not c.blocking and "no secondary" in c.detail
    assert r.verdict is Verdict.GO


def _noise_cfg() -> Any:
    from config.schema import NoiseConfig

    return NoiseConfig()


# --------------------------------------------------------------------------- errors


def test_canary_error_rate_above_primary_fails() -> None:
    a = ep(A, 140, errors=10, primary_failures=1, canary_failures=11)
    r = decide(aggregates(a, ep(B, 60)), CFG)
    c = check(r, "errors")
    assert c.passed is False and c.blocking
    assert c.observed == pytest.approx(10 / 150, abs=1e-6)  # endpoint A alone
    assert "canary" in c.detail and A in c.detail
    assert r.verdict is Verdict.NO_GO


def test_exchanges_skipped_while_the_canary_was_ejected_count_as_failures() -> None:
    cfg = VerdictConfig(min_pairs=100, min_pairs_per_endpoint=20, max_error_rate_increase=0.05)
    # 4 failures among 200 asked: within 5%. With 40 more exchanges not mirrored while the
    # canary was ejected, 44/240 (18%): no GO.
    a = replace(ep(A, 196, errors=4, canary_failures=4), ejected=40)
    r = decide(aggregates(a), cfg)
    c = check(r, "errors")
    assert c.passed is False and c.observed == pytest.approx(44 / 240, abs=1e-6)
    assert "44/240" in c.detail and "40 not mirrored while the canary was ejected" in c.detail
    assert check(decide(aggregates(ep(A, 196, errors=4, canary_failures=4)), cfg), "errors").passed


def test_error_rate_within_allowed_increase_passes() -> None:
    cfg = VerdictConfig(min_pairs=100, min_pairs_per_endpoint=20, max_error_rate_increase=0.05)
    a = ep(A, 140, errors=5, primary_failures=2, canary_failures=7)
    r = decide(aggregates(a, ep(B, 60)), cfg)
    assert check(r, "errors").passed is True and r.verdict is Verdict.GO
    # The same failures on both sides are no increase.
    a = ep(A, 150, primary_failures=9, canary_failures=9)
    assert check(decide(aggregates(a, ep(B, 60)), CFG), "errors").passed is True


# --------------------------------------------------------------------------- latency


def _latency(shift: float, n: int = 4000, seed: int = 3) -> LatencySample:
    rng = np.random.default_rng(seed)
    primary = rng.lognormal(math.log(20.0), 0.3, n)
    canary = rng.lognormal(math.log(20.0), 0.3, n) * shift
    return LatencySample.of(primary.tolist(), canary.tolist())


def test_latency_equal_distributions_pass() -> None:
    r = decide(aggregates(*good(), latency=_latency(1.0)), CFG)
    c = check(r, "latency")
    assert c.passed is True and c.blocking
    assert "Mann-Whitney" in c.detail and "rank-biserial" in c.detail and "p50" in c.detail
    assert r.verdict is Verdict.GO


def test_latency_twenty_percent_slower_fails() -> None:
    r = decide(aggregates(*good(), latency=_latency(1.2)), CFG)
    c = check(r, "latency")
    assert c.passed is False and c.blocking
    assert c.observed == pytest.approx(0.2, abs=0.05)
    assert c.threshold == {"max_increase": 0.05, "alpha": 0.01, "max_unjudged_share": 0.05}
    assert "slower by more than 5%" in c.detail
    assert r.verdict is Verdict.NO_GO


def test_latency_tiny_shift_within_max_increase_passes() -> None:
    # 2 % slower with 20k samples: significant, but within the 5 % allowed.
    r = decide(aggregates(*good(), latency=_latency(1.02, n=20_000)), CFG)
    c = check(r, "latency")
    assert c.passed is True
    assert "within 5%" in c.detail
    assert r.verdict is Verdict.GO


def test_latency_large_but_not_significant_passes() -> None:
    # The same latencies but for two slow outliers: p99 far up, yet not a shift.
    primary = [float(x) for x in range(1, 61)]
    s = LatencySample.of(primary, [*primary[:58], 200.0, 300.0])
    r = decide(aggregates(*good(), latency=s), CFG)
    c = check(r, "latency")
    assert c.passed is True and "not significant" in c.detail


def test_latency_under_min_samples_is_undecided_never_go() -> None:
    # 20 timed pairs in all: a GO never rests on latency not seen.
    r = decide(aggregates(*good(), latency=_latency(1.5, n=20)), CFG)
    c = check(r, "latency")
    assert c.passed is None and c.blocking and "need 50" in c.detail
    assert r.verdict is Verdict.INCONCLUSIVE
    # The same with the endpoints known: none has enough timed pairs.
    eps = [A] * 10 + [B] * 10
    few = LatencySample.of([10.0] * 20, [30.0] * 20, eps)
    r = decide(aggregates(*good(), latency=few), CFG)
    c = check(r, "latency")
    assert c.passed is None and c.blocking and r.verdict is Verdict.INCONCLUSIVE
    assert f"{A} (10 of 150)" in c.detail and f"{B} (10 of 60)" in c.detail


def test_latency_turned_off_by_configuration_says_so() -> None:
    off = CFG.model_copy(update={"latency": LatencyConfig(skip="replayed on another host")})
    r = decide(aggregates(*good(), latency=LatencySample()), off)
    c = check(r, "latency")
    assert c.passed is None and not c.blocking
    assert c.detail == "skipped by configuration (verdict.latency.skip): replayed on another host"
    assert r.verdict is Verdict.GO


# --------------------------------------------------------------------------- recording


def test_unrecorded_exchanges_make_it_inconclusive() -> None:
    r = decide(aggregates(*good(), losses={"queue_full": 5, "spill_full": 1}), CFG)
    c = check(r, "recording")
    assert c.passed is False and not c.blocking
    assert c.observed == pytest.approx(6 / 216, abs=1e-6)
    assert "queue_full 5" in c.detail
    assert r.verdict is Verdict.INCONCLUSIVE
    r = decide(
        aggregates(*good(), losses={"queue_full": 1}),
        VerdictConfig(min_pairs=100, max_unrecorded_rate=0.01),
    )
    assert check(r, "recording").passed is True


# --------------------------------------------------------------------------- runtime


def test_runtime_check_is_included() -> None:
    ok = Check("runtime", True, {}, {}, "fine")
    r = decide(aggregates(*good()), CFG, runtime=ok)
    assert r.checks[-1] is ok and r.verdict is Verdict.GO
    leak = Check("runtime", False, {}, {}, "goroutine leak")
    assert decide(aggregates(*good()), CFG, runtime=leak).verdict is Verdict.NO_GO
    no_data = Check("runtime", None, {}, {}, "no data", blocking=False)
    assert decide(aggregates(*good()), CFG, runtime=no_data).verdict is Verdict.GO
    required = Check("runtime", None, {}, {}, "no data", blocking=True)
    assert decide(aggregates(*good()), CFG, runtime=required).verdict is Verdict.INCONCLUSIVE


def test_full_config_is_accepted() -> None:
    cfg = GraygateConfig.model_validate(
        {
            "run": "r",
            "upstreams": {"primary": "http://a:1", "canary": "http://b:2"},
            "verdict": {"min_pairs": 1000},
        }
    )
    r = decide(aggregates(*good()), cfg)
    assert check(r, "evidence").threshold["min_pairs"] == 1000
    assert r.verdict is Verdict.INCONCLUSIVE


# -- preflight ----------------------------------------------------------------------------


class _Finding:
    def __init__(self, check: str, ok: bool, detail: str = "") -> None:
        self.check, self.ok, self.detail = check, ok, detail


def test_preflight_pprof_on_the_serving_port_fails_the_check() -> None:
    from diff.verdict import preflight_check

    check = preflight_check(
        [
            _Finding("canary.health", True, "200"),
            _Finding("canary.pprof_exposed", False, "/debug/pprof/ answers 200"),
        ]
    )
    assert check.passed is False and check.blocking
    assert "canary.pprof_exposed" in check.detail


def test_preflight_health_warnings_are_reported_not_failed() -> None:
    from diff.verdict import preflight_check

    check = preflight_check([_Finding("canary.health", False, "refused")])
    assert check.passed is True
    assert "refused" in check.detail


def test_preflight_without_findings_is_skipped_and_not_blocking() -> None:
    from diff.verdict import preflight_check

    check = preflight_check([])
    assert check.passed is None and not check.blocking
