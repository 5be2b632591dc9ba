"""The run report as one plain model: numbers, not presentation.

``build_report`` reads the verdict and the endpoint numbers from one evaluation
(``diff.evaluate.assess_run``, not recorded: reading a report changes nothing), so the
report's rows are the verdict's numbers; the listings (top fields, runtime, preflight) from
``store.reports``. The shell renders it: ``graygate.report_terminal`` (rich) and
``graygate.report_html`` (one HTML file).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import assess_run
from graygate.values import EndpointStats, PreflightFinding, VerdictResult
from graygate.vocabulary import FAILURE_JUDGEMENTS, Judgement
from store import reports
from store.reports import (
    FieldStat,
    RunOverview,
    RuntimeSummary,
)

__all__ = [
    "FAILURE_JUDGEMENTS",
    "Report",
    "build_report",
    "noise_fields_of",
]

logger = logging.getLogger(__name__)


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
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


async def build_report(engine: AsyncEngine, run: str, *, top: int = 5) -> Report:
    """The report of ``run``, with the ``top`` most frequent differing fields per endpoint.

    Raises UnknownRun or StoreUnavailable.
    """
    overview = await reports.run_overview(engine, run)
    assessment = await assess_run(engine, run, record=False, endpoint_latency=True)
    verdict = assessment.verdict
    noise_keys = assessment.aggregates.noise_fields
    endpoints = assessment.aggregates.endpoint_stats()
    fields = await reports.top_fields(engine, run, per_endpoint=top)
    runtime = await reports.runtime_summary(engine, run)
    preflight = await reports.preflight(engine, run)

    # Fields an active waiver accepted (by endpoint and field: a listing has no kind).
    waived_fields = {(e, f) for e, f, _ in assessment.waived_keys}
    fields = [
        replace(f, judgement=Judgement.WAIVED.value)
        if f.judgement in FAILURE_JUDGEMENTS and (f.endpoint, f.field) in waived_fields
        else f
        for f in fields
    ]

    def is_noise(f: FieldStat) -> bool:
        return f.judgement == Judgement.NOISE or (f.endpoint, f.field) in noise_keys

    return Report(
        run=overview,
        verdict=verdict,
        endpoints=endpoints,
        fields=[f for f in fields if f.judgement in FAILURE_JUDGEMENTS and not is_noise(f)],
        noise=[f for f in fields if f.judgement != Judgement.WAIVED and is_noise(f)],
        waived=[f for f in fields if f.judgement == Judgement.WAIVED],
        runtime=runtime,
        preflight=preflight,
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
