"""Plain values that cross packages: answers, differences, checks, verdicts, a run's
aggregates. No I/O, no aiohttp, no database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from graygate.vocabulary import FAILURE_JUDGEMENTS, Against, Judgement

__all__ = [
    "Answer",
    "Check",
    "Difference",
    "EndpointCounts",
    "EndpointLatency",
    "EndpointStats",
    "FieldCount",
    "LatencySample",
    "MismatchCounts",
    "PreflightFinding",
    "RecordedExchange",
    "RunAggregates",
    "Verdict",
    "VerdictResult",
]


@dataclass(frozen=True, slots=True)
class Answer:
    """One upstream's answer in one exchange, or the error in place of an answer: what the
    proxy records, the store keeps, compare() looks at and the API shows."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, redacted
    body: bytes | None = None  # decoded (no gzip/br), redacted, at most the record bound
    body_truncated: bool = False
    latency_ms: float | None = None
    error: str | None = None  # ErrorKind: timeout | refused | reset | error
    # The body was not kept (record.bodies.sample): the sha256 of the whole body, in its
    # place (``body`` is None).
    body_sha256: bytes | None = None

    @property
    def answered(self) -> bool:
        return self.status is not None and self.error is None

    @property
    def recorded(self) -> bool:
        """Anything at all is known of this side: an answer or an error."""
        return self.status is not None or self.error is not None


@dataclass(slots=True)
class RecordedExchange:
    """One client request and what each upstream answered; keyed by its trace id. What the
    proxy hands the recorder and the store writes (one row of ``exchanges``)."""

    run_id: int
    trace_id: str
    span_id: str
    received_at: datetime
    endpoint: str
    method: str
    path: str
    query: str
    request_headers: dict[str, str]
    request_body: bytes | None
    request_body_truncated: bool
    gray_label: str | None
    served_by: str  # Role: primary | canary
    mirror_skipped: str | None = None  # SkipReason
    primary: Answer | None = None
    canary: Answer | None = None
    secondary: Answer | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PreflightFinding:
    """One preflight check's outcome, e.g. ``canary.pprof_exposed``."""

    check: str
    ok: bool
    detail: str
    checked_at: datetime | None = None  # set when read back


@dataclass(frozen=True, slots=True)
class Difference:
    """One field that differs in one exchange, and how it was judged."""

    path: str  # concrete: $.items[2].price, or "status", or "header:content-type"
    field: str  # rule-level: $.items[*].price (what counts and noise group by)
    kind: str  # value | type | missing | extra | order | length | status | header | body
    primary_value: Any
    other_value: Any
    judgement: str  # strict | tolerance
    rule: str | None = None  # e.g. "tolerance abs 0.01", "strict (default)"


class Verdict(StrEnum):
    GO = "GO"
    NO_GO = "NO_GO"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of a verdict: what was observed against what threshold."""

    name: str  # evidence | strict | tolerance | errors | latency | recording | runtime | ...
    passed: bool | None  # None: could not be decided (not enough data)
    observed: Any
    threshold: Any
    detail: str = ""
    # A failed check with blocking=False only makes the verdict INCONCLUSIVE.
    blocking: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "observed": self.observed,
            "threshold": self.threshold,
            "detail": self.detail,
            "blocking": self.blocking,
        }


@dataclass(frozen=True, slots=True)
class VerdictResult:
    run: str
    verdict: Verdict
    checks: tuple[Check, ...]
    computed_at: str = ""  # ISO 8601
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """The verdict in one line: ``every check passed`` for GO, else the failed checks
        (or, when none failed, the undecided ones) with their details. The gate's JSON and
        ``graygate verdict --json`` carry it."""
        if self.verdict is Verdict.GO:
            return "every check passed"
        failed = [c for c in self.checks if c.passed is False]
        named = failed or [c for c in self.checks if c.passed is None]
        return (
            "; ".join(f"{c.name}: {c.detail}" if c.detail else c.name for c in named)
            or self.verdict.value
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "verdict": self.verdict.value,
            "computed_at": self.computed_at,
            "checks": [c.as_dict() for c in self.checks],
            **self.extra,
        }


# --------------------------------------------------------------------------- aggregates


@dataclass(frozen=True, slots=True)
class EndpointCounts:
    """One endpoint's exchanges, by what the workers made of them."""

    endpoint: str
    recorded: int = 0  # exchanges recorded (judged or not)
    judged: int = 0
    pairs: int = 0  # outcome match | differ | noise_only
    match: int = 0
    differ: int = 0
    noise_only: int = 0  # every difference was noise in that exchange
    unjudgeable: int = 0  # both answered, but a truncated or digest-only body left it unjudged
    # Judged with the bodies' digests only (record.bodies.sample): pairs (equal digests,
    # or a certain difference elsewhere), and unjudgeable ones (unequal digests).
    digest_pairs: int = 0
    digest_unjudgeable: int = 0
    secondary_pairs: int = 0  # pairs also compared with a secondary
    skipped: int = 0
    errors: int = 0  # outcome error: a transport failure on one side
    attempted: int = 0  # judged and not skipped: both sides were asked
    primary_failures: int = 0  # attempted, and the primary answered 5xx or failed in transport
    canary_failures: int = 0  # the same for the canary
    # Skipped because a mirror target was ejected after broken answers (SkipReason.EJECTED)
    # while the primary served: the errors check counts them as the canary's failures.
    ejected: int = 0
    strict_pairs: int = 0  # pairs with a strict mismatch against the canary (any field)
    tolerance_pairs: int = 0  # pairs with a tolerance violation against the canary


@dataclass(frozen=True, slots=True)
class FieldCount:
    """Differences at one rule-level field of one endpoint, against one side."""

    endpoint: str
    field: str
    against: str  # Against: canary | secondary
    judgement: str  # Judgement: strict | tolerance | noise | waived
    exchanges: int  # distinct exchanges with such a difference
    differences: int = 0  # rows (an array field may differ several times in one exchange)
    # value | type | missing | extra | order | length | status | header | body ("" unknown)
    kind: str = ""


@dataclass(frozen=True, slots=True)
class MismatchCounts:
    """Pairs of one endpoint with a mismatch outside the noise fields."""

    strict_pairs: int = 0
    tolerance_pairs: int = 0


@dataclass(frozen=True, slots=True)
class LatencySample:
    """Latencies (ms) of the most recent pairs, and their p50/p99 (``percentile_cont``)."""

    primary_ms: tuple[float, ...] = ()
    canary_ms: tuple[float, ...] = ()
    primary_p50: float | None = None
    primary_p99: float | None = None
    canary_p50: float | None = None
    canary_p99: float | None = None
    # The endpoint of each pair, aligned with primary_ms / canary_ms (empty: not known, the
    # latency check then pools the sample).
    endpoints: tuple[str, ...] = ()
    # Whose latencies ``primary_ms`` holds: "primary", or "secondary" when the run has a
    # secondary (a second primary, mirrored like the canary: the fair control).
    control: str = "primary"
    # True when the pairs are exchanges the canary served (gray serving): the control side
    # was the mirrored one.
    served_by_canary: bool = False

    @classmethod
    def of(
        cls,
        primary_ms: Sequence[float],
        canary_ms: Sequence[float],
        endpoints: Sequence[str] = (),
        *,
        control: str = "primary",
    ) -> LatencySample:
        """A sample with its percentiles computed here (as percentile_cont would)."""
        return cls(
            control=control,
            primary_ms=tuple(primary_ms),
            canary_ms=tuple(canary_ms),
            endpoints=tuple(endpoints),
            primary_p50=_percentile_cont(primary_ms, 0.5),
            primary_p99=_percentile_cont(primary_ms, 0.99),
            canary_p50=_percentile_cont(canary_ms, 0.5),
            canary_p99=_percentile_cont(canary_ms, 0.99),
        )


@dataclass(frozen=True, slots=True)
class EndpointLatency:
    """One endpoint's latency percentiles (ms) over its pairs (``percentile_cont``)."""

    primary_p50: float | None = None
    primary_p99: float | None = None
    canary_p50: float | None = None
    canary_p99: float | None = None


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """One endpoint's numbers as the report and the API show them: read off
    :class:`RunAggregates` (:meth:`RunAggregates.endpoint_stats`), the numbers the verdict
    judged, never counted again."""

    endpoint: str
    exchanges: int  # every recorded exchange
    pairs: int  # both answers compared (outcome match, differ or noise_only)
    match: int
    differ: int
    noise_only: int  # differed only in noise fields
    skipped: int  # nothing to compare (not mirrored, or the other side left no trace)
    error: int  # one side failed in transport (timeout, refused, reset): no pair
    pending: int  # not judged yet
    strict_mismatches: int  # pairs with a strict mismatch outside the noise fields
    strict_mismatch_rate: float | None  # of pairs; None without pairs
    tolerance_violations: int  # pairs with a tolerance violation outside the noise fields
    tolerance_violation_rate: float | None
    noise: int  # canary differences that are noise (judged so, or in a noise field)
    primary_errors: int  # both sides asked, the primary answered 5xx or failed in transport
    canary_errors: int  # the same for the canary (what the verdict's errors check counts)
    primary_p50_ms: float | None
    primary_p99_ms: float | None
    canary_p50_ms: float | None
    canary_p99_ms: float | None


@dataclass(frozen=True, slots=True)
class RunAggregates:
    """Everything the verdict, the report and the API read about one run: one set of
    numbers (``store.aggregates`` counts them, ``diff.evaluate`` applies the noise once)."""

    run: str
    run_id: int = 0
    endpoints: tuple[EndpointCounts, ...] = ()
    fields: tuple[FieldCount, ...] = ()
    # The same field counts over the exchanges with all three answers only (pairs that
    # also had a secondary compared): the one set noise rates are compared over, canary and
    # secondary alike (store.aggregates.fetch_three_way_fields). None: not read, and
    # ``fields`` stands in for it, the canary's rate then over all pairs (hand-built
    # aggregates); the stored path always reads it (``()`` when no pair had a secondary).
    three_way: tuple[FieldCount, ...] | None = None
    losses: Mapping[str, int] = field(default_factory=dict)  # reason -> unrecorded exchanges
    latency: LatencySample = field(default_factory=LatencySample)
    # Mismatch counts per endpoint that leave the noise fields (and waived differences) out
    # (store.aggregates.fetch_mismatch_counts); None: EndpointCounts' strict_pairs /
    # tolerance_pairs stand (no noise field carries a mismatch, nothing was waived).
    mismatches: Mapping[str, MismatchCounts] | None = None
    # The (endpoint, field) pairs found to be noise in this evaluation (diff.verdict.find_noise),
    # for display: a field is noise for one kind of difference only (see noise_keys).
    noise_fields: frozenset[tuple[str, str]] = frozenset()
    # The (endpoint, field, kind) triples found to be noise: a value change on a noisy field
    # is noise; a type change, a missing or an extra field there is not (issue 8 item 1).
    noise_keys: frozenset[tuple[str, str, str]] = frozenset()
    # Per-endpoint latency percentiles, when read (the report and the API read them).
    endpoint_latency: Mapping[str, EndpointLatency] = field(default_factory=dict)
    runtime: Sequence[Any] = ()  # runtime samples, as store.runtime_samples.fetch_samples returns

    @property
    def recorded(self) -> int:
        return sum(e.recorded for e in self.endpoints)

    @property
    def judged(self) -> int:
        return sum(e.judged for e in self.endpoints)

    @property
    def pairs(self) -> int:
        return sum(e.pairs for e in self.endpoints)

    @property
    def unrecorded(self) -> int:
        return sum(self.losses.values())

    def mismatch_pairs(self, e: EndpointCounts) -> tuple[int, int]:
        """(strict, tolerance) pairs of an endpoint, noise fields left out when counted so."""
        if self.mismatches is None:
            return e.strict_pairs, e.tolerance_pairs
        m = self.mismatches.get(e.endpoint)
        return (0, 0) if m is None else (m.strict_pairs, m.tolerance_pairs)

    def noise_differences(self, endpoint: str) -> int:
        """Canary differences of ``endpoint`` that are noise: judged so by the workers, or a
        strict / tolerance difference in a field this evaluation found to be noise."""
        return sum(
            f.differences
            for f in self.fields
            if f.endpoint == endpoint
            and f.against == Against.CANARY
            and (
                f.judgement == Judgement.NOISE
                or (
                    f.judgement in FAILURE_JUDGEMENTS
                    and (f.endpoint, f.field, f.kind) in self.noise_keys
                )
            )
        )

    def endpoint_stats(self) -> list[EndpointStats]:
        """The report's and the API's endpoint rows, from these numbers only."""
        rows = []
        for e in self.endpoints:
            strict, tolerance = self.mismatch_pairs(e)
            lat = self.endpoint_latency.get(e.endpoint, EndpointLatency())
            rows.append(
                EndpointStats(
                    endpoint=e.endpoint,
                    exchanges=e.recorded,
                    pairs=e.pairs,
                    match=e.match,
                    differ=e.differ,
                    noise_only=e.noise_only,
                    skipped=e.skipped,
                    error=e.errors,
                    pending=e.recorded - e.judged,
                    strict_mismatches=strict,
                    strict_mismatch_rate=strict / e.pairs if e.pairs else None,
                    tolerance_violations=tolerance,
                    tolerance_violation_rate=tolerance / e.pairs if e.pairs else None,
                    noise=self.noise_differences(e.endpoint),
                    primary_errors=e.primary_failures,
                    canary_errors=e.canary_failures,
                    primary_p50_ms=lat.primary_p50,
                    primary_p99_ms=lat.primary_p99,
                    canary_p50_ms=lat.canary_p50,
                    canary_p99_ms=lat.canary_p99,
                )
            )
        return rows


def _percentile_cont(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
