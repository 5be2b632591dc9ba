"""The run report as one plain model: numbers, not presentation.

``build_report`` reads everything from the store (``store.reports``) and the verdict from
``diff.evaluate.evaluate_run`` (not recorded: reading a report changes nothing). The shell
renders it: ``graygate.report_terminal`` (rich) and ``graygate.report_html`` (one HTML file).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import evaluate_run
from graygate.values import VerdictResult
from store import reports
from store.reports import (
    EndpointStats,
    FieldStat,
    PreflightFinding,
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

# Judgements of differences that count against the canary; the rest (noise, waived) are
# listed apart, as accepted.
FAILURE_JUDGEMENTS = ("strict", "tolerance")


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
    verdict = await evaluate_run(engine, run, record=False)
    noise_keys = noise_fields_of(verdict)
    endpoints = await reports.endpoint_stats(engine, run, noise_fields=noise_keys)
    fields = await reports.top_fields(engine, run, per_endpoint=top)
    runtime = await reports.runtime_summary(engine, run)
    preflight = await reports.preflight(engine, run)

    def is_noise(f: FieldStat) -> bool:
        return f.judgement == "noise" or (f.endpoint, f.field) in noise_keys

    return Report(
        run=overview,
        verdict=verdict,
        endpoints=endpoints,
        fields=[f for f in fields if f.judgement in FAILURE_JUDGEMENTS and not is_noise(f)],
        noise=[f for f in fields if f.judgement != "waived" and is_noise(f)],
        waived=[f for f in fields if f.judgement == "waived"],
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
