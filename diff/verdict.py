"""The verdict: GO, NO_GO or INCONCLUSIVE from a run's aggregates. Pure: no I/O.

``decide(aggregates, cfg)`` turns what PostgreSQL counted (``store.aggregates``) into one
check per line, each with what was observed, the threshold and pass or fail:

========== ========== =================================================================
check      blocking   fails when
========== ========== =================================================================
evidence   no         fewer than ``min_pairs`` pairs, or an endpoint that was mirrored
                      has fewer than ``min_pairs_per_endpoint``
strict     yes        an endpoint's share of pairs with a strict mismatch in a field
                      that is not noise exceeds ``max_strict_mismatch_rate``
tolerance  yes        the same for tolerance violations, ``max_tolerance_violation_rate``
noise      no         never: reports the fields that differ by nature (a secondary shows
                      them), which the two checks above leave out
errors     yes        the canary's 5xx + transport-error rate exceeds the primary's by
                      more than ``max_error_rate_increase``; the exchanges not mirrored
                      while the canary was ejected for broken answers count as its
                      failures (presumed: it was not asked)
latency    yes        per endpoint with ``min_samples`` timed pairs: the canary is slower
                      with Mann-Whitney p < ``alpha`` AND its p50 or p99 exceeds the
                      primary's by more than ``max_increase``; endpoints with fewer timed
                      pairs undecided (INCONCLUSIVE) above ``max_unjudged_share`` of the
                      answered pairs (so too few timed pairs in all is INCONCLUSIVE);
                      off only with ``latency.skip``. With a secondary, its latency is
                      the control instead of the primary's (both mirrored alike)
recording  no         unrecorded / (recorded + unrecorded) exceeds ``max_unrecorded_rate``
backlog    no         recorded but not yet judged exceeds ``max_backlog_rate``
judgeable  no         exchanges whose truncated body (or differing body digests, with
                      ``record.bodies.sample``) could not be judged / (pairs + those)
                      exceeds ``max_unjudgeable_rate`` (the worst endpoint is named)
writes     no         (with ``writes:``) a write check's failed reads / its checks
                      exceed ``max_write_failure_rate``; undecided (INCONCLUSIVE) while
                      a configured write check has compared nothing, or has not
                      recorded more than ``max_backlog_rate`` of what it covers
runtime    by config  see ``diff.runtime_checks``
========== ========== =================================================================

The verdict: any blocking check failed -> NO_GO; else any non-blocking check failed, or a
blocking check could not be decided (``passed=None``) -> INCONCLUSIVE; else GO. A
non-blocking check that could not be decided (no secondary, latency turned off by
``latency.skip``, no runtime source) is informational and changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from config.schema import (
    WRITE_ENDPOINT_PREFIX,
    GraygateConfig,
    JudgingConfig,
    LatencyConfig,
    NoiseConfig,
    VerdictConfig,
)
from diff.noise import EndpointTotals, FieldCounts, FieldNoise, judge_noise
from diff.stats import compare_latency, ratio
from graygate.values import (
    Check,
    EndpointCounts,
    FieldCount,
    LatencySample,
    PreflightFinding,
    RunAggregates,
    Verdict,
    VerdictResult,
)

__all__ = [
    "READINESS_RULES",
    "PreflightFinding",
    "decide",
    "find_noise",
    "outcome",
    "preflight_check",
]

# Judgements of a canary difference that count in the noise comparison (waived ones are
# accepted by a person and count nowhere).
_DIFFERING = frozenset({"strict", "tolerance", "noise"})


def outcome(checks: Iterable[Check]) -> Verdict:
    """NO_GO on a blocking failure; INCONCLUSIVE on a non-blocking failure or an undecided
    blocking check; else GO."""
    checks = list(checks)
    if any(c.passed is False and c.blocking for c in checks):
        return Verdict.NO_GO
    if any(
        (c.passed is False and not c.blocking) or (c.passed is None and c.blocking) for c in checks
    ):
        return Verdict.INCONCLUSIVE
    return Verdict.GO


# --------------------------------------------------------------------------- noise


def find_noise(aggregates: RunAggregates, cfg: NoiseConfig) -> list[FieldNoise]:
    """The run's noise fields, by Diffy's rule (``diff.noise``) on its field counts.

    Candidates are the fields where the secondary differed from the primary at least once:
    a difference the secondary never shows is never noise, however rare (the gate errs
    toward reporting). Both rates are over the same exchanges: those with all three
    answers (``RunAggregates.three_way``: the pairs that also had a secondary), so the
    canary's rate of a (field, kind) and the secondary's are counted on one set, and both
    divided by the endpoint's pairs with a secondary.
    """
    canary: dict[tuple[str, str, str], int] = {}
    secondary: dict[tuple[str, str, str], int] = {}
    three_way = aggregates.fields if aggregates.three_way is None else aggregates.three_way
    for f in three_way:
        key = (f.endpoint, f.field, f.kind)
        if f.against == "secondary":
            secondary[key] = secondary.get(key, 0) + f.exchanges
        elif f.judgement in _DIFFERING:
            canary[key] = canary.get(key, 0) + f.exchanges
    if not secondary:
        return []
    # An endpoint with fewer pairs with a secondary than cfg.min_secondary_pairs has no
    # noise fields: its noise is not measurable (two pairs say nothing about a rate).
    # Hand-built aggregates without three-way counts: the canary's counts are over all pairs.
    same_set = aggregates.three_way is not None
    totals = [
        EndpointTotals(
            e.endpoint,
            canary_compared=e.secondary_pairs if same_set else e.pairs,
            secondary_compared=e.secondary_pairs,
        )
        for e in aggregates.endpoints
        if e.secondary_pairs >= cfg.min_secondary_pairs
    ]
    measurable = {t.endpoint for t in totals}
    candidates = [
        FieldCounts(
            endpoint, field, canary=canary.get((endpoint, field, kind), 0), secondary=n, kind=kind
        )
        for (endpoint, field, kind), n in sorted(secondary.items())
        if n > 0 and endpoint in measurable
    ]
    return [f for f in judge_noise(candidates, totals, cfg) if f.is_noise]


# --------------------------------------------------------------------------- checks


def _rate(n: int, d: int) -> float:
    return n / d if d else 0.0


def _pct(x: float) -> str:
    return f"{x * 100:.4g}%"


def _mismatches(a: RunAggregates, e: EndpointCounts) -> tuple[int, int]:
    """(strict, tolerance) pairs of an endpoint, noise fields left out when counted so."""
    return a.mismatch_pairs(e)


def _top_fields(
    fields: Sequence[FieldCount],
    endpoint: str,
    judgement: str,
    noise: frozenset[tuple[str, str, str]],
    n: int = 3,
) -> str:
    """The ``n`` fields of ``endpoint`` with the most exchanges so judged, each named once
    (a field that differs in two kinds, missing and extra, is one field: its count is the
    larger kind's, a lower bound of its exchanges)."""
    counts: dict[str, int] = {}
    for f in fields:
        if (
            f.endpoint == endpoint
            and f.against == "canary"
            and f.judgement == judgement
            and (f.endpoint, f.field, f.kind) not in noise
        ):
            counts[f.field] = max(counts.get(f.field, 0), f.exchanges)
    top = sorted(counts.items(), key=lambda t: (-t[1], t[0]))[:n]
    return ", ".join(f"{name} ({k})" for name, k in top)


def _evidence(a: RunAggregates, cfg: VerdictConfig) -> Check:
    pairs = a.pairs
    mirrored = [e for e in a.endpoints if e.attempted > 0]
    short = [e for e in mirrored if e.pairs < cfg.min_pairs_per_endpoint]
    never = [e.endpoint for e in a.endpoints if e.attempted == 0 and e.judged > 0]
    pending = a.recorded - a.judged
    parts = [f"{pairs} pairs judged over {len(mirrored)} endpoint(s)"]
    if pending:
        parts.append(f"{pending} exchange(s) not judged yet")
    if short:
        parts.append(
            "too few pairs: "
            + ", ".join(
                f"{e.endpoint} {e.pairs}/{cfg.min_pairs_per_endpoint}"
                for e in sorted(short, key=lambda e: (e.pairs, e.endpoint))[:5]
            )
            + (f" and {len(short) - 5} more" if len(short) > 5 else "")
        )
    if never:
        parts.append("never mirrored (not judged): " + ", ".join(sorted(never)[:5]))
    passed = pairs >= cfg.min_pairs and not short and bool(mirrored)
    if pairs < cfg.min_pairs:
        parts.insert(1, f"need {cfg.min_pairs}")
    return Check(
        "evidence",
        passed,
        observed=pairs,
        threshold={
            "min_pairs": cfg.min_pairs,
            "min_pairs_per_endpoint": cfg.min_pairs_per_endpoint,
        },
        detail="; ".join(parts),
        blocking=False,
    )


def _mismatch_check(
    a: RunAggregates,
    noise: frozenset[tuple[str, str, str]],
    judgement: str,
    threshold: float,
    label: str,
) -> Check:
    name = judgement
    rows: list[tuple[float, str, int, int]] = []  # rate, endpoint, bad, pairs
    for e in a.endpoints:
        if e.pairs == 0:
            continue
        strict, tolerance = _mismatches(a, e)
        bad = strict if judgement == "strict" else tolerance
        rows.append((_rate(bad, e.pairs), e.endpoint, bad, e.pairs))
    if not rows:
        return Check(name, None, None, threshold, "no pairs judged yet")
    rows.sort(key=lambda r: (-r[0], r[1]))
    worst = rows[0][0]
    failing = [r for r in rows if r[0] > threshold]
    total_bad = sum(r[2] for r in rows)
    total_pairs = sum(r[3] for r in rows)
    if failing:
        lines = []
        for rate, endpoint, bad, pairs in failing[:5]:
            top = _top_fields(a.fields, endpoint, judgement, noise)
            lines.append(
                f"{endpoint}: {bad}/{pairs} pairs ({_pct(rate)})" + (f": {top}" if top else "")
            )
        more = f"; and {len(failing) - 5} more endpoint(s)" if len(failing) > 5 else ""
        detail = f"{label} above {_pct(threshold)} in " + "; ".join(lines) + more
        return Check(name, False, round(worst, 6), threshold, detail)
    detail = (
        f"{total_bad}/{total_pairs} pairs with {label} ({_pct(_rate(total_bad, total_pairs))})"
        f"; worst endpoint {rows[0][1]} {_pct(worst)}"
    )
    return Check(name, True, round(worst, 6), threshold, detail)


def _noise_check(a: RunAggregates, noise: Sequence[FieldNoise]) -> Check:
    secondary_pairs = sum(e.secondary_pairs for e in a.endpoints)
    per_exchange = sum(
        f.exchanges for f in a.fields if f.against == "canary" and f.judgement == "noise"
    )
    if secondary_pairs == 0:
        return Check(
            "noise",
            None,
            0,
            None,
            "no secondary recorded: noise not measured",
            blocking=False,
        )
    names = [
        f"{n.endpoint} {n.field} (canary {_pct(n.canary_rate)}, "
        f"secondary {_pct(n.noise_rate or 0.0)})"
        for n in noise
    ]
    detail = f"{len(noise)} noise field(s), left out of strict/tolerance"
    if names:
        detail += (
            ": " + "; ".join(names[:8]) + (f"; and {len(names) - 8} more" if len(names) > 8 else "")
        )
    if per_exchange:
        detail += f"; {per_exchange} exchange-field difference(s) matched the secondary's"
    detail += f" ({secondary_pairs} pairs with a secondary)"
    return Check("noise", True, len(noise), None, detail, blocking=False)


def _errors_check(a: RunAggregates, cfg: VerdictConfig) -> Check:
    """Per endpoint: the canary's 5xx + transport-error rate over the primary's, on the
    same endpoint's attempted exchanges; the run fails when any endpoint exceeds
    ``max_error_rate_increase`` (errors on one endpoint never cancel another's).

    Exchanges not mirrored because the canary was ejected (``mirror.eject``: it broke its
    answers several times in a row, and each probe since broke too) count as attempted
    and failed: ejection stops asking a broken canary, and must not hide how long it was
    broken (counting only what was asked would show a handful of failures)."""
    threshold = cfg.max_error_rate_increase
    rows = [
        (
            _rate(e.canary_failures + e.ejected, e.attempted + e.ejected)
            - _rate(e.primary_failures, e.attempted + e.ejected),
            e,
        )
        for e in a.endpoints
        if e.attempted + e.ejected > 0 and not e.endpoint.startswith(WRITE_ENDPOINT_PREFIX)
    ]
    if not rows:
        return Check("errors", None, None, threshold, "no mirrored exchanges judged yet")
    rows.sort(key=lambda t: (-t[0], t[1].endpoint))
    worst = rows[0][0]
    failing = [(r, e) for r, e in rows if r > threshold + 1e-12]
    attempted = sum(e.attempted + e.ejected for _, e in rows)
    p_fail = sum(e.primary_failures for _, e in rows)
    c_fail = sum(e.canary_failures + e.ejected for _, e in rows)
    ejected = sum(e.ejected for _, e in rows)

    def line(r: float, e: EndpointCounts) -> str:
        n = e.attempted + e.ejected
        return (
            f"{e.endpoint} canary {e.canary_failures + e.ejected}/{n} vs primary "
            f"{e.primary_failures}/{n} ({r * 100:+.4g}%)"
        )

    if failing:
        detail = (
            f"canary 5xx or transport errors above the primary's by more than {_pct(threshold)}"
            " in " + "; ".join(line(r, e) for r, e in failing[:5])
        )
        if len(failing) > 5:
            detail += f"; and {len(failing) - 5} more endpoint(s)"
    else:
        detail = (
            f"canary {c_fail}/{attempted} vs primary {p_fail}/{attempted} 5xx or transport "
            f"errors; worst endpoint {line(*rows[0])}"
        )
    if ejected:
        detail += (
            f" ({ejected} not mirrored while the canary was ejected for broken answers, "
            "counted as its failures)"
        )
    return Check("errors", not failing, round(worst, 6), threshold, detail)


def _write_backlog(a: RunAggregates, endpoint: str, methods: Sequence[str]) -> tuple[int, int]:
    """(exchanges a write check covers, of them not recorded by it yet): the attempted
    exchanges of the endpoints with one of ``methods``, against the check's records."""
    covered = sum(
        e.attempted
        for e in a.endpoints
        if not e.endpoint.startswith(WRITE_ENDPOINT_PREFIX)
        and e.endpoint.partition(" ")[0] in methods
    )
    done = sum(e.recorded for e in a.endpoints if e.endpoint == endpoint)
    return covered, max(0, covered - done)


def _writes_check(
    a: RunAggregates, cfg: VerdictConfig, configured: Mapping[str, Sequence[str]]
) -> Check:
    """The write checks (``WRITE <name>`` pseudo-endpoints): reads that failed (database
    away, query error, timeout: outcome ``error``) / write checks attempted, per check;
    above ``max_write_failure_rate`` the verdict is INCONCLUSIVE (not blocking: a failed
    read says nothing against the canary, and nothing for it either). Undecided (never GO)
    while a configured check has compared nothing, or has not yet recorded more than
    ``max_backlog_rate`` of the exchanges it covers (``configured``: endpoint -> methods)."""
    threshold = cfg.max_write_failure_rate
    by_name = {e.endpoint: e for e in a.endpoints if e.endpoint.startswith(WRITE_ENDPOINT_PREFIX)}
    names = sorted(set(configured) | set(by_name))
    rows = [(by_name[n].errors, by_name[n].attempted, n) for n in names if n in by_name]
    unchecked = [n for n in names if n not in by_name or by_name[n].attempted == 0]
    for n in sorted(configured):
        covered, pending = _write_backlog(a, n, configured[n])
        if n not in unchecked and pending > cfg.max_backlog_rate * covered + 1e-12:
            unchecked.append(f"{n} ({pending} of {covered} exchange(s) not checked yet)")
    rates = [(_rate(bad, att), n, bad, att) for bad, att, n in rows if att > 0]
    rates.sort(key=lambda t: (-t[0], t[1]))
    observed = round(rates[0][0], 6) if rates else None
    failing = [r for r in rates if r[0] > threshold + 1e-12]

    def line(r: tuple[float, str, int, int]) -> str:
        return f"{r[1]} {r[2]}/{r[3]} read(s) failed ({_pct(r[0])})"

    if failing:
        detail = f"write checks that could not run above {_pct(threshold)}: " + "; ".join(
            line(r) for r in failing[:5]
        )
        return Check("writes", False, observed, threshold, detail, blocking=False)
    if unchecked:
        detail = "not all checked yet: " + ", ".join(unchecked[:5])
        if rates:
            detail += "; " + "; ".join(line(r) for r in rates[:5])
        return Check("writes", None, observed, threshold, detail)
    detail = f"{len(rates)} write check(s) ran; worst {line(rates[0])}"
    return Check("writes", True, observed, threshold, detail)


def _latency_check(a: RunAggregates, cfg: VerdictConfig) -> Check:
    """Latency per endpoint: each endpoint with ``min_samples`` timed pairs in the sample
    is judged on its own (Mann-Whitney and the margin), so a slow endpoint carrying a tenth
    of the traffic is not averaged away; the check fails naming the endpoints that fail.
    Endpoints with fewer timed pairs (too little traffic, or answers that could not be
    timed) are reported, and leave the check undecided (INCONCLUSIVE) when they carry more
    than ``max_unjudged_share`` of the run's answered pairs: a GO never rests on latency
    that was not seen. Only ``latency.skip`` in the configuration turns the check off (it
    then says so). A sample without endpoints (hand-built) is judged pooled.

    The control is the sample's: the primary, or, when the run has a secondary, the
    secondary (mirrored like the canary, so both are timed the same way; the detail says
    so)."""
    check = _latency_against_control(a, cfg)
    if a.latency.control == "primary":
        if a.latency.served_by_canary:
            return replace(check, detail=f"{_CANARY_SERVING_TEXT}: {check.detail}")
        return check
    return replace(check, detail=f"{_CONTROL_TEXT}: {check.detail}")


_CONTROL_TEXT = "canary vs secondary (both mirrored the same way, primary serving)"
_CANARY_SERVING_TEXT = (
    "canary serving vs the mirrored primary (a mirrored side reads slower: a regression "
    "smaller than that bias is not seen; bench/bench_latency_symmetry.py measures it)"
)


def _latency_against_control(a: RunAggregates, cfg: VerdictConfig) -> Check:
    lat = cfg.latency
    s = a.latency
    threshold = {
        "max_increase": lat.max_increase,
        "alpha": lat.alpha,
        "max_unjudged_share": lat.max_unjudged_share,
    }
    if lat.skip is not None:
        return Check(
            "latency",
            None,
            None,
            threshold,
            f"skipped by configuration (verdict.latency.skip): {lat.skip}",
            blocking=False,
        )
    n = min(len(s.primary_ms), len(s.canary_ms))
    if len(s.endpoints) != n:
        if n < lat.min_samples:
            return Check(
                "latency",
                None,
                None,
                threshold,
                f"{n} timed pairs, need {lat.min_samples}: latency not decided",
            )
        return _latency_pooled(s, lat, threshold)
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for ep, p, c in zip(s.endpoints, s.primary_ms, s.canary_ms, strict=False):
        g = groups.setdefault(ep, ([], []))
        g[0].append(p)
        g[1].append(c)
    # Each endpoint's traffic: its answered pairs, timed or not (an answer that was not
    # timed still carries the endpoint's share: a GO never rests on latency not seen).
    traffic = {
        e.endpoint: e.pairs
        for e in a.endpoints
        if e.pairs > 0 and not e.endpoint.startswith(WRITE_ENDPOINT_PREFIX)
    }
    for ep, (p_ms, _) in groups.items():
        traffic[ep] = max(traffic.get(ep, 0), len(p_ms))
    total = sum(traffic.values())
    if total == 0:
        return Check("latency", None, None, threshold, "no pairs yet: latency not decided")
    judged: list[tuple[str, bool, float, str]] = []  # endpoint, fails, increase, detail
    small: list[tuple[str, int, int]] = []  # endpoint, timed pairs, pairs
    for ep in sorted(traffic):
        p_ms, c_ms = groups.get(ep, ([], []))
        if len(p_ms) < lat.min_samples:
            small.append((ep, len(p_ms), traffic[ep]))
            continue
        fails, increase, detail = _latency_of(p_ms, c_ms, lat)
        judged.append((ep, fails, increase, f"{ep}: {detail}"))
    share = sum(k for _, _, k in small) / total
    small_text = ""
    if small:
        small.sort(key=lambda t: (-t[2], t[0]))
        shown = ", ".join(f"{ep} ({timed} of {k})" for ep, timed, k in small[:5])
        more = f" and {len(small) - 5} more" if len(small) > 5 else ""
        small_text = (
            f"; too few timed pairs to judge (< {lat.min_samples}): {shown}{more}, "
            f"{_pct(share)} of the pairs"
        )
    increases = [x[2] for x in judged if math.isfinite(x[2])]
    observed = round(max(increases), 6) if increases else None
    failing = [x for x in judged if x[1]]
    if failing:
        detail = f"canary slower by more than {_pct(lat.max_increase)} in " + "; ".join(
            x[3] for x in failing[:5]
        )
        if len(failing) > 5:
            detail += f"; and {len(failing) - 5} more endpoint(s)"
        return Check("latency", False, observed, threshold, detail + small_text)
    if not judged or share > lat.max_unjudged_share + 1e-12:
        detail = (
            f"{len(judged)} endpoint(s) judged, none slower"
            + small_text
            + f": above {_pct(lat.max_unjudged_share)}, latency not decided"
        )
        return Check("latency", None, observed, threshold, detail)
    worst = max(judged, key=lambda x: (x[2] if math.isfinite(x[2]) else -1.0, x[0]))
    detail = f"{len(judged)} endpoint(s) judged, none slower; worst {worst[3]}" + small_text
    return Check("latency", True, observed, threshold, detail)


def _latency_of(
    primary_ms: Sequence[float], canary_ms: Sequence[float], lat: LatencyConfig
) -> tuple[bool, float, str]:
    """(fails, relative increase, detail) of one endpoint's latency sample."""
    c = compare_latency(primary_ms, canary_ms)
    significant = c.test.p_value < lat.alpha
    too_slow = beyond_margin(
        (c.primary_p50, c.canary_p50),
        (c.primary_p99, c.canary_p99),
        lat.max_increase,
        lat.min_increase_ms,
    )
    detail = (
        f"p50 {c.primary_p50:.3g} -> {c.canary_p50:.3g} ms (x{_fmt_ratio(c.p50_ratio)}), "
        f"p99 {c.primary_p99:.3g} -> {c.canary_p99:.3g} ms (x{_fmt_ratio(c.p99_ratio)}), "
        f"Mann-Whitney U p={c.test.p_value:.3g}, n={c.n_primary}"
    )
    return significant and too_slow, c.increase, detail


def _latency_pooled(s: LatencySample, lat: LatencyConfig, threshold: dict[str, float]) -> Check:
    """The whole sample as one population (a sample that does not say its endpoints)."""
    pcts = None
    if None not in (s.primary_p50, s.primary_p99, s.canary_p50, s.canary_p99):
        pcts = (
            float(s.primary_p50),  # type: ignore[arg-type]
            float(s.primary_p99),  # type: ignore[arg-type]
            float(s.canary_p50),  # type: ignore[arg-type]
            float(s.canary_p99),  # type: ignore[arg-type]
        )
    c = compare_latency(s.primary_ms, s.canary_ms, percentiles=pcts)
    significant = c.test.p_value < lat.alpha
    too_slow = beyond_margin(
        (c.primary_p50, c.canary_p50),
        (c.primary_p99, c.canary_p99),
        lat.max_increase,
        lat.min_increase_ms,
    )
    detail = (
        f"p50 {c.primary_p50:.3g} -> {c.canary_p50:.3g} ms (x{_fmt_ratio(c.p50_ratio)}), "
        f"p99 {c.primary_p99:.3g} -> {c.canary_p99:.3g} ms (x{_fmt_ratio(c.p99_ratio)}); "
        f"Mann-Whitney U p={c.test.p_value:.3g} (alpha {lat.alpha}), "
        f"P(canary slower)={c.test.common_language:.3f}, "
        f"rank-biserial r={c.test.rank_biserial:+.3f}, n={c.n_primary}/{c.n_canary}"
    )
    if significant and too_slow:
        detail = f"canary slower by more than {_pct(lat.max_increase)}: " + detail
    elif too_slow:
        detail = "increase not significant: " + detail
    elif significant:
        detail = f"slower, but within {_pct(lat.max_increase)}: " + detail
    observed = round(c.increase, 6) if math.isfinite(c.increase) else None
    return Check("latency", not (significant and too_slow), observed, threshold, detail)


# Relative slack at the latency bound: exactly +5.0% passes a 5% margin whatever the
# float arithmetic makes of 105 / 100.
_LATENCY_ROUNDING = 1e-9


def beyond_margin(
    p50: tuple[float, float], p99: tuple[float, float], max_increase: float, floor_ms: float
) -> bool:
    """Whether the canary's p50 or p99 (``(primary, canary)`` in ms) exceeds the primary's
    by more than ``max_increase`` (relative, with a rounding allowance) AND by more than
    ``floor_ms`` (absolute): a sub-millisecond shift on a fast endpoint is no regression."""
    for primary, canary in (p50, p99):
        delta = canary - primary
        if delta <= floor_ms + 1e-9:  # at the floor passes, whatever the float subtraction left
            continue
        if ratio(canary, primary) - 1.0 > max_increase * (1 + _LATENCY_ROUNDING) + 1e-12:
            return True
    return False


def _fmt_ratio(r: float) -> str:
    return "inf" if math.isinf(r) else f"{r:.3f}"


def _recording_check(a: RunAggregates, cfg: VerdictConfig) -> Check:
    recorded = a.recorded
    lost = a.unrecorded
    threshold = cfg.max_unrecorded_rate
    total = recorded + lost
    if total == 0:
        return Check("recording", None, None, threshold, "nothing recorded yet", blocking=False)
    rate = lost / total
    detail = f"{lost} of {total} exchanges not recorded ({_pct(rate)})"
    if a.losses:
        detail += ": " + ", ".join(f"{k} {v}" for k, v in sorted(a.losses.items()))
    return Check("recording", rate <= threshold, round(rate, 6), threshold, detail, blocking=False)


def _backlog_check(a: RunAggregates, cfg: VerdictConfig) -> Check:
    """Recorded exchanges the workers have not judged yet: above ``max_backlog_rate`` of
    the recorded ones the judged ones may not represent the run, so no GO."""
    recorded = a.recorded
    threshold = cfg.max_backlog_rate
    if recorded == 0:
        return Check("backlog", None, 0, threshold, "nothing recorded yet", blocking=False)
    pending = max(recorded - a.judged, 0)
    rate = pending / recorded
    detail = f"{pending} of {recorded} recorded exchanges not judged yet ({_pct(rate)})"
    passed = rate <= threshold + 1e-12
    if not passed:
        detail += f": above {_pct(threshold)}, the verdict waits for the diff workers"
    return Check("backlog", passed, round(rate, 6), threshold, detail, blocking=False)


def _judgeable_check(a: RunAggregates, cfg: VerdictConfig) -> Check:
    """Exchanges a truncated body, or bodies kept only as digests that differ
    (``record.bodies.sample``), left not judgeable (``diff.compare``): they are neither
    matches nor mismatches; above ``max_unjudgeable_rate`` of the compared exchanges
    (pairs + unjudgeable) the judged ones may hide what was cut, so INCONCLUSIVE, never GO.
    The detail also says how many pairs were judged from the bodies' digests."""
    threshold = cfg.max_unjudgeable_rate
    bad = sum(e.unjudgeable for e in a.endpoints)
    by_digest = sum(e.digest_unjudgeable for e in a.endpoints)
    from_digests = sum(e.digest_pairs for e in a.endpoints)
    compared = a.pairs + bad
    if compared == 0:
        return Check("judgeable", None, 0, threshold, "nothing compared yet", blocking=False)
    rate = bad / compared
    if by_digest == 0:
        why = "truncated body"
    elif by_digest == bad:
        why = "body digests differ"
    else:
        why = f"truncated body; body digests differ in {by_digest}"
    detail = f"{bad} of {compared} compared exchanges not judgeable ({why})"
    detail += f" ({_pct(rate)})"
    if from_digests:
        detail += f"; {from_digests} pairs judged from body digests (record.bodies.sample)"
    passed = rate <= threshold + 1e-12
    if not passed:
        worst = max(
            (e for e in a.endpoints if e.unjudgeable),
            key=lambda e: (e.unjudgeable / (e.pairs + e.unjudgeable), e.endpoint),
        )
        detail += (
            f": above {_pct(threshold)}; worst {worst.endpoint} "
            f"{worst.unjudgeable}/{worst.pairs + worst.unjudgeable}"
        )
    return Check("judgeable", passed, round(rate, 6), threshold, detail, blocking=False)


# Preflight findings that make a canary unfit for production traffic whatever its answers
# (a readiness rule). Health findings are reported only: they describe the moment serve
# started, and the traffic since shows whether the canary answers.
READINESS_RULES = frozenset({"canary.pprof_exposed"})


def preflight_check(findings: Sequence[PreflightFinding]) -> Check:
    """The latest preflight's findings as a check: a broken readiness rule fails it."""
    if not findings:
        return Check(
            "preflight", None, 0, "no readiness rule broken", "no preflight ran", blocking=False
        )
    broken = [f for f in findings if not f.ok and f.check in READINESS_RULES]
    warnings = [f for f in findings if not f.ok and f.check not in READINESS_RULES]
    parts = [f"{f.check}: {f.detail}" for f in broken + warnings]
    detail = "; ".join(parts) if parts else f"{len(findings)} preflight check(s) passed"
    return Check(
        "preflight",
        not broken,
        [f.check for f in broken + warnings],
        "no readiness rule broken",
        detail,
    )


def decide(
    aggregates: RunAggregates,
    cfg: GraygateConfig | JudgingConfig | VerdictConfig,
    *,
    noise: Sequence[FieldNoise] | None = None,
    runtime: Check | None = None,
    preflight: Sequence[PreflightFinding] | None = None,
) -> VerdictResult:
    """The run's verdict from its aggregates.

    ``noise`` is the run's noise fields as this evaluation found them (``diff.evaluate``
    finds them once, with :func:`find_noise`, and applies them to ``aggregates``); when None
    they are found here (with ``cfg.compare.noise`` when a configuration is given, else the
    defaults). ``aggregates.mismatches``, when set, must be the mismatch counts that leave
    those fields out; when it is None the endpoint counts stand, which counts a noise
    field's mismatches too (never more lenient). ``runtime`` is the runtime check, when
    there is one.
    """
    writes: dict[str, tuple[str, ...]] = {}
    if isinstance(cfg, VerdictConfig):
        vcfg, ncfg = cfg, NoiseConfig()
    else:
        vcfg, ncfg = cfg.verdict, cfg.compare.noise
        writes = {w.endpoint: w.methods for w in cfg.compare.writes}
    if noise is None:
        noise = find_noise(aggregates, ncfg)
    noise_keys = frozenset((n.endpoint, n.field, n.kind) for n in noise)
    checks = [
        _evidence(aggregates, vcfg),
        _mismatch_check(
            aggregates,
            noise_keys,
            "strict",
            vcfg.max_strict_mismatch_rate,
            "strict mismatches",
        ),
        _mismatch_check(
            aggregates,
            noise_keys,
            "tolerance",
            vcfg.max_tolerance_violation_rate,
            "tolerance violations",
        ),
        _noise_check(aggregates, noise),
        _errors_check(aggregates, vcfg),
        _latency_check(aggregates, vcfg),
        _recording_check(aggregates, vcfg),
        _backlog_check(aggregates, vcfg),
        _judgeable_check(aggregates, vcfg),
    ]
    if writes or any(e.endpoint.startswith(WRITE_ENDPOINT_PREFIX) for e in aggregates.endpoints):
        checks.append(_writes_check(aggregates, vcfg, writes))
    if runtime is not None:
        checks.append(runtime)
    if preflight is not None:
        checks.append(preflight_check(preflight))
    return VerdictResult(
        run=aggregates.run,
        verdict=outcome(checks),
        checks=tuple(checks),
        extra={
            "noise": [n.as_dict() for n in noise if n.is_noise],
            "summary": {
                "recorded": aggregates.recorded,
                "judged": aggregates.judged,
                "pairs": aggregates.pairs,
                "unrecorded": aggregates.unrecorded,
                "endpoints": len(aggregates.endpoints),
            },
        },
    )
