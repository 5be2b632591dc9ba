"""The run report as one plain model: numbers, not presentation.

``build_report`` reads the verdict and the endpoint numbers from one evaluation
(``diff.evaluate.assess_run``, not recorded: reading a report changes nothing), so the
report's rows are the verdict's numbers; the listings (top fields, runtime, preflight) from
``store.reports``; the charts' series and the field tree from ``store.report_series``
(:class:`ReportCharts`, :func:`field_tree`). The shell renders it:
``graygate.report_terminal`` (rich) and ``graygate.report_html`` (one HTML file).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import assess_run, run_config
from diff.runtime_checks import Baseline, analyse
from graygate.values import EndpointStats, PreflightFinding, VerdictResult
from graygate.vocabulary import FAILURE_JUDGEMENTS, Judgement, Role
from store import report_series, reports
from store import runtime_samples as store_runtime
from store.report_series import CoOccurrence, FieldKindCount, LatencyCurve, MismatchBucket
from store.reports import (
    ExchangeDetail,
    FieldStat,
    RunOverview,
    RuntimeSummary,
)

__all__ = [
    "FAILURE_JUDGEMENTS",
    "KINDS",
    "MAX_EXAMPLE_EXCHANGES",
    "FieldEntry",
    "FieldTree",
    "Report",
    "ReportCharts",
    "RuntimeChart",
    "build_field_tree",
    "build_report",
    "field_tree",
    "noise_fields_of",
    "path_segments",
]

logger = logging.getLogger(__name__)

MAX_EXAMPLE_EXCHANGES = 12  # exchanges a report file carries in full (its examples)


@dataclass(frozen=True, slots=True)
class Report:
    """Everything one report shows, as plain values."""

    run: RunOverview
    verdict: VerdictResult
    endpoints: list[EndpointStats]
    fields: list[FieldStat]  # strict / tolerance differences: what the canary got wrong
    noise: list[FieldStat]  # differences judged noise (they differ by nature)
    waived: list[FieldStat]  # differences accepted by a waiver
    runtime: list[RuntimeSummary]
    preflight: list[PreflightFinding]
    charts: ReportCharts | None = None
    trees: list[FieldTree] = field(default_factory=list)
    exchanges: dict[str, ExchangeDetail] = field(default_factory=dict)  # trace id -> example
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


async def build_report(engine: AsyncEngine, run: str, *, top: int = 5) -> Report:
    """The report of ``run``, with the ``top`` most frequent differing fields per endpoint.

    Raises UnknownRun or StoreUnavailable.
    """
    overview = await reports.run_overview(engine, run)
    assessment = await assess_run(engine, run, record=False, endpoint_latency=True)
    verdict = assessment.verdict
    # Noise is keyed by kind of difference, as the verdict keys it: a type change in a
    # field noisy by value is no noise, and shows among the fields the canary got wrong.
    noise_keys = assessment.aggregates.noise_keys
    endpoints = assessment.aggregates.endpoint_stats()
    fields = await reports.top_fields(engine, run, per_endpoint=top)
    runtime = await reports.runtime_summary(engine, run)
    preflight = await reports.preflight(engine, run)
    keys = assessment.aggregates.noise_keys
    stored = await report_series.run_config_json(engine, run)
    charts = ReportCharts(
        latency=await report_series.latency_curves(engine, run),
        latency_max_increase=_latency_margin(verdict),
        mismatches=await report_series.mismatch_series(engine, run, exclude=keys),
        runtime=await _runtime_chart(engine, assessment.aggregates.run_id, run, stored, verdict),
    )
    trees = await field_tree(
        engine, run, noise_keys=keys, pairs={e.endpoint: e.pairs for e in endpoints}
    )

    # Fields an active waiver accepted (by endpoint and field: a listing has no kind).
    waived_fields = {(e, f) for e, f, _ in assessment.waived_keys}
    fields = [
        replace(f, judgement=Judgement.WAIVED.value)
        if f.judgement in FAILURE_JUDGEMENTS and (f.endpoint, f.field) in waived_fields
        else f
        for f in fields
    ]

    def is_noise(f: FieldStat) -> bool:
        return f.judgement == Judgement.NOISE or (f.endpoint, f.field, f.kind) in noise_keys

    shown: dict[str, ExchangeDetail] = {}
    for tree in trees:
        for entry in tree.fields:
            for x in entry.examples[:1]:
                if len(shown) < MAX_EXAMPLE_EXCHANGES and x.example_trace_id not in shown:
                    found = await reports.exchange_by_trace(engine, x.example_trace_id, run=run)
                    if found is not None:
                        shown[x.example_trace_id] = found
    return Report(
        run=overview,
        verdict=verdict,
        endpoints=endpoints,
        fields=[f for f in fields if f.judgement in FAILURE_JUDGEMENTS and not is_noise(f)],
        noise=[f for f in fields if f.judgement != Judgement.WAIVED and is_noise(f)],
        waived=[f for f in fields if f.judgement == Judgement.WAIVED],
        runtime=runtime,
        preflight=preflight,
        charts=charts,
        trees=trees,
        exchanges=shown,
    )


def noise_fields_of(verdict: VerdictResult) -> frozenset[tuple[str, str]]:
    """The (endpoint, field) pairs the verdict found to be noise (``extra["noise"]``: a
    list of ``{"endpoint", "field", ...}``), which its strict and tolerance checks leave out."""
    found = verdict.extra.get("noise")
    if not isinstance(found, list | tuple):
        return frozenset()
    return frozenset(
        (str(n["endpoint"]), str(n["field"]))
        for n in found
        if isinstance(n, dict) and "endpoint" in n and "field" in n
    )


# --------------------------------------------------------------------------- charts


@dataclass(frozen=True, slots=True)
class RuntimeChart:
    """The canary's runtime over the run: seconds since ``started_at`` on the x axis.

    ``windows`` are (window start s, GC pause p99 ms or None, failed or None); the trends
    are the check's fitted lines as ((x0, y0), (x1, y1)), None when there is none."""

    role: str
    started_at: datetime
    window_s: float
    windows: tuple[tuple[float, float | None, bool | None], ...]
    baseline_mean_ms: float | None
    threshold_ms: float | None
    goroutines: tuple[tuple[float, float], ...]
    heap: tuple[tuple[float, float], ...]  # heap in use, bytes
    goroutine_trend: tuple[tuple[float, float], tuple[float, float]] | None
    heap_trend: tuple[tuple[float, float], tuple[float, float]] | None


@dataclass(frozen=True, slots=True)
class ReportCharts:
    """What the report's charts are drawn from (the stored figures, as read)."""

    latency: list[LatencyCurve]
    latency_max_increase: float | None  # the latency check's margin (fraction of p50)
    mismatches: list[MismatchBucket]
    runtime: RuntimeChart | None


def _latency_margin(verdict: VerdictResult) -> float | None:
    for c in verdict.checks:
        if c.name == "latency" and isinstance(c.threshold, Mapping):
            value = c.threshold.get("max_increase")
            return float(value) if isinstance(value, int | float) else None
    return None


def _baseline_of(verdict: VerdictResult) -> tuple[Baseline | None, float | None]:
    """The runtime check's baseline and its pause threshold, as the verdict stated them."""
    for c in verdict.checks:
        if c.name != "runtime":
            continue
        obs = c.observed if isinstance(c.observed, Mapping) else {}
        thr = c.threshold if isinstance(c.threshold, Mapping) else {}
        raw = obs.get("baseline")
        baseline = None
        if isinstance(raw, Mapping) and isinstance(raw.get("mean_ms"), int | float):
            baseline = Baseline(
                source=str(raw.get("source", "")),
                mean_ms=float(raw["mean_ms"]),
                sigma_ms=float(raw.get("sigma_ms") or 0.0),
                pauses=int(raw.get("pauses") or 0),
            )
        limit = thr.get("pause_p99_ms")
        return baseline, float(limit) if isinstance(limit, int | float) else None
    return None, None


async def _runtime_chart(
    engine: AsyncEngine,
    run_id: int,
    run: str,
    stored: Mapping[str, Any],
    verdict: VerdictResult,
) -> RuntimeChart | None:
    """The canary's samples windowed as the runtime check windows them."""
    samples = await store_runtime.fetch_samples(engine, run_id, Role.CANARY)
    if not samples:
        return None
    cfg = run_config(run, stored).runtime
    baseline, threshold = _baseline_of(verdict)
    a = analyse(samples, cfg, baseline=baseline)
    t0 = samples[0].taken_at
    ok = [s for s in samples if s.error is None]

    def secs(s: Any) -> float:
        return float((s.taken_at - t0).total_seconds())

    def line(
        trend: Any, values: Sequence[tuple[float, float]]
    ) -> tuple[tuple[float, float], tuple[float, float]] | None:
        if trend is None:
            return None
        # The trend skips the first window: its first point is the first sample after it.
        after = [
            x for x, _ in values if x // cfg.window_s > (a.windows[0].index if a.windows else 0)
        ]
        if not after:
            return None
        x0 = after[0]
        return ((x0, trend.start), (x0 + trend.span_s, trend.start + trend.growth))

    gor = tuple((secs(s), float(s.goroutines)) for s in ok if s.goroutines is not None)
    heap = tuple((secs(s), float(s.heap_inuse)) for s in ok if s.heap_inuse is not None)
    return RuntimeChart(
        role=Role.CANARY.value,
        started_at=t0,
        window_s=cfg.window_s,
        windows=tuple((w.index * cfg.window_s, w.p99_ms, w.failed) for w in a.windows),
        baseline_mean_ms=baseline.mean_ms if baseline else None,
        threshold_ms=threshold,
        goroutines=gor,
        heap=heap,
        goroutine_trend=line(a.goroutines, gor),
        heap_trend=line(a.heap, heap),
    )


# --------------------------------------------------------------------------- field tree

KINDS: tuple[str, ...] = ("value", "type", "missing", "extra", "order", "length")
_SEGMENT = re.compile(r"\[[^\]]*\]|\.\.|\.?[^.\[]+")


def path_segments(path: str) -> list[str]:
    """``$.items[*].price`` -> ``["$", "items", "[*]", "price"]``."""
    return [seg.lstrip(".") if seg != ".." else seg for seg in _SEGMENT.findall(path) if seg]


@dataclass(frozen=True, slots=True)
class FieldEntry:
    """One differing field on one endpoint, with its counts per kind of difference."""

    endpoint: str
    field: str
    exchanges: int  # exchanges in which it differs (any kind, any judgement)
    rate: float | None  # exchanges / the endpoint's pairs
    first_at: datetime
    kinds: dict[str, int]  # kind -> exchanges
    judgements: dict[str, int]  # judgement -> exchanges
    rules: list[str]
    noise: bool
    waived: bool
    consequence_of: str | None  # a field it only ever differs together with
    examples: list[FieldKindCount]

    @property
    def failing(self) -> bool:
        return not self.noise and not self.waived

    def as_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "segments": path_segments(self.field),
            "exchanges": self.exchanges,
            "rate": self.rate,
            "first_at": self.first_at,
            "kinds": {
                k: self.kinds.get(k, 0) for k in (*KINDS, *sorted(set(self.kinds) - set(KINDS)))
            },
            "judgements": self.judgements,
            "rules": self.rules,
            "noise": self.noise,
            "waived": self.waived,
            "consequence_of": self.consequence_of,
            "examples": [
                {
                    "trace_id": x.example_trace_id,
                    "kind": x.kind,
                    "judgement": x.judgement,
                    "primary": x.example_primary,
                    "canary": x.example_canary,
                }
                for x in self.examples
            ],
        }


@dataclass(frozen=True, slots=True)
class FieldTree:
    """One endpoint's differing fields, root cause first."""

    endpoint: str
    pairs: int
    first_at: datetime | None  # when its first failing field first differed
    fields: list[FieldEntry]

    def nested(self) -> dict[str, Any]:
        """The fields as a tree of path segments; a node holds ``field`` when one ends there."""
        root: dict[str, Any] = {"segment": "$", "children": {}}
        for f in self.fields:
            node = root
            for seg in path_segments(f.field)[1:]:
                node = node["children"].setdefault(seg, {"segment": seg, "children": {}})
            node["field"] = f.as_dict()

        def listed(node: dict[str, Any]) -> dict[str, Any]:
            out = {k: v for k, v in node.items() if k != "children"}
            out["children"] = [listed(c) for c in node["children"].values()]
            return out

        return listed(root)

    def as_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "pairs": self.pairs,
            "first_at": self.first_at,
            "fields": [f.as_dict() for f in self.fields],
            "tree": self.nested(),
        }


def _consequences(entries: Sequence[FieldEntry], co: CoOccurrence, endpoint: str) -> dict[str, str]:
    """field -> the field it is a likely consequence of: every (sampled) exchange where it
    differs, the other differs too, and the other differs more often or, as often, first
    (then by name). The cause chosen is the most frequent such field."""
    failing = {f.field: f for f in entries if f.failing}
    out: dict[str, str] = {}
    for b, fb in failing.items():
        nb = co.exchanges.get((endpoint, b), 0)
        if not nb:
            continue
        causes = []
        for a, fa in failing.items():
            if a == b or co.both.get((endpoint, a, b), 0) != nb:
                continue
            na = co.exchanges.get((endpoint, a), 0)
            if na > nb or (na == nb and (fa.first_at, len(a), a) < (fb.first_at, len(b), b)):
                causes.append((-na, fa.first_at, a))
        if causes:
            out[b] = min(causes)[2]
    # A cause that is itself a consequence points at its own root.
    for b in list(out):
        seen = {b}
        while out[b] in out and out[out[b]] not in seen:
            seen.add(out[b])
            out[b] = out[out[b]]
    return out


def build_field_tree(
    rows: Sequence[FieldKindCount],
    totals: Mapping[tuple[str, str], tuple[int, datetime]],
    co: CoOccurrence,
    *,
    noise_keys: Collection[tuple[str, str, str]],
    pairs: Mapping[str, int],
    examples: int = 3,
) -> list[FieldTree]:
    """The field trees, endpoints in the order their first failing field differed; in each,
    root causes by when they first differed, each followed by its likely consequences, then
    noise, then waived fields."""
    by_field: dict[tuple[str, str], list[FieldKindCount]] = {}
    for r in rows:
        by_field.setdefault((r.endpoint, r.field), []).append(r)
    entries: dict[str, list[FieldEntry]] = {}
    for (ep, name), rs in by_field.items():
        kinds: dict[str, int] = {}
        judged: dict[str, int] = {}
        for r in rs:
            kinds[r.kind] = kinds.get(r.kind, 0) + r.exchanges
            judged[r.judgement] = judged.get(r.judgement, 0) + r.exchanges
        n, first = totals.get(
            (ep, name), (max(r.exchanges for r in rs), min(r.first_at for r in rs))
        )
        failing_rows = [
            r
            for r in rs
            if r.judgement in FAILURE_JUDGEMENTS and (ep, name, r.kind) not in noise_keys
        ]
        noise = not failing_rows and any(
            r.judgement == Judgement.NOISE or (ep, name, r.kind) in noise_keys for r in rs
        )
        waived = not failing_rows and not noise
        shown = sorted(rs, key=lambda r: (r not in failing_rows, -r.exchanges))[:examples]
        entries.setdefault(ep, []).append(
            FieldEntry(
                endpoint=ep,
                field=name,
                exchanges=n,
                rate=n / pairs[ep] if pairs.get(ep) else None,
                first_at=first,
                kinds=kinds,
                judgements=judged,
                rules=sorted({r.rule for r in rs if r.rule}),
                noise=noise,
                waived=waived,
                consequence_of=None,
                examples=shown,
            )
        )
    trees: list[FieldTree] = []
    for ep, fs in entries.items():
        causes = _consequences(fs, co, ep)
        fs = [replace(f, consequence_of=causes.get(f.field)) for f in fs]
        roots = sorted(
            (f for f in fs if f.failing and f.consequence_of is None),
            key=lambda f: (f.first_at, -f.exchanges, f.field),
        )
        ordered: list[FieldEntry] = []
        for root in roots:
            ordered.append(root)
            ordered += sorted(
                (f for f in fs if f.consequence_of == root.field),
                key=lambda f: (f.first_at, -f.exchanges, f.field),
            )
        rest = [f for f in fs if f not in ordered]
        ordered += sorted(rest, key=lambda f: (f.failing is False, f.waived, f.first_at, f.field))
        began = min((f.first_at for f in fs if f.failing), default=None)
        trees.append(FieldTree(ep, pairs.get(ep, 0), began, ordered))
    far = datetime.max.replace(tzinfo=UTC)
    trees.sort(key=lambda t: (t.first_at or far, t.endpoint))
    return trees


async def field_tree(
    engine: AsyncEngine,
    run: str,
    *,
    endpoint: str | None = None,
    noise_keys: Collection[tuple[str, str, str]],
    pairs: Mapping[str, int],
) -> list[FieldTree]:
    """The run's field trees (one endpoint's when given), read from the store."""
    rows = await report_series.field_stats(engine, run, endpoint=endpoint)
    totals = await report_series.field_totals(engine, run, endpoint=endpoint)
    co = await report_series.co_occurrence(engine, run, endpoint=endpoint, exclude=noise_keys)
    return build_field_tree(rows, totals, co, noise_keys=noise_keys, pairs=pairs)
