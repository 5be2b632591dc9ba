"""Compute a run's verdict from what is stored, and keep it in the run's verdict history.

The I/O edge of the verdict: read the run's configuration and aggregates in one snapshot
(``store.aggregates``), find the noise fields and the mismatch counts that leave them out,
judge the canary's runtime samples, then ``diff.verdict.decide`` (pure) and append the result
to the ``verdicts`` table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from config.schema import CompareConfig, JudgingConfig, RuntimeConfig, VerdictConfig
from diff.noise import FieldNoise
from diff.runtime_checks import Baseline, choose_baseline, runtime_check
from diff.verdict import decide, find_noise
from diff.verdict_metrics import observe_verdict
from diff.waiving import Waiving, apply_waivers, waivers_check
from graygate.values import Check, VerdictResult
from graygate.vocabulary import FAILURE_JUDGEMENTS, Against, Judgement, Role
from store import runtime_samples as store_runtime
from store.aggregates import (
    RunAggregates,
    RunInfo,
    fetch_aggregates,
    fetch_mismatch_counts,
    fetch_run,
    read_snapshot,
    record_verdict,
)
from store.failures import store_errors
from store.waivers import WaiverRow, applicable_waivers

__all__ = ["Assessment", "assess_run", "evaluate_run", "record_result", "run_config"]

logger = logging.getLogger(__name__)

_SECTIONS: tuple[tuple[str, type[CompareConfig | VerdictConfig | RuntimeConfig]], ...] = (
    ("compare", CompareConfig),
    ("verdict", VerdictConfig),
    ("runtime", RuntimeConfig),
)


def run_config(name: str, stored: Mapping[str, Any] | None) -> JudgingConfig:
    """The sections of run ``name``'s configuration that judge it, from ``runs.config``
    (``GraygateConfig.model_dump(mode="json")``; nothing else of it is read).

    A section that is missing takes its defaults; one that no longer validates is replaced
    by its defaults, with a warning naming the key.
    """
    data = stored or {}
    parts: dict[str, Any] = {}
    for key, model in _SECTIONS:
        if key not in data:
            continue
        try:
            parts[key] = model.model_validate(data[key])
        except ValidationError as exc:
            errors = exc.errors()
            where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
            msg = errors[0]["msg"] if errors else type(exc).__name__
            logger.warning(
                "run %s: stored %s configuration is not valid (%s%s); using the defaults",
                name,
                key,
                f"{where}: " if where else "",
                msg,
            )
    return JudgingConfig(**parts)


@dataclass(frozen=True, slots=True)
class Assessment:
    """One evaluation of a run: the numbers (noise applied once) and the verdict on them."""

    aggregates: RunAggregates
    verdict: VerdictResult
    # The (endpoint, field, kind) keys whose canary strict/tolerance differences an active
    # waiver accepted in this evaluation (diff.waiving).
    waived_keys: frozenset[tuple[str, str, str]] = frozenset()


async def _with_noise(
    conn: AsyncConnection,
    aggregates: RunAggregates,
    cfg: JudgingConfig,
    waivers: Sequence[WaiverRow] = (),
) -> tuple[RunAggregates, list[FieldNoise], Waiving]:
    """The waivers applied first (``diff.waiving``: the canary's strict and tolerance
    counts they match become ``waived``), then the noise fields of this evaluation (found
    once, here), and the aggregates with them applied: ``noise_fields`` set, and mismatch
    counts that leave the noise fields and the waived keys out, counted from the
    differences themselves; recounted only when a noise field carries a canary mismatch or
    a difference was waived, else the per-exchange counts the workers stored stand."""
    waiving = apply_waivers(aggregates.fields, waivers, sources={w.id: w.source for w in waivers})
    aggregates = replace(aggregates, fields=waiving.fields)
    noise = find_noise(aggregates, cfg.compare.noise)
    keys = frozenset((n.endpoint, n.field, n.kind) for n in noise)
    aggregates = replace(
        aggregates,
        noise_fields=frozenset((n.endpoint, n.field) for n in noise),
        noise_keys=keys,
    )
    recount = any(
        f.against == Against.CANARY
        and (
            f.judgement == Judgement.WAIVED
            or (f.judgement in FAILURE_JUDGEMENTS and (f.endpoint, f.field, f.kind) in keys)
        )
        for f in aggregates.fields
    )
    if recount:
        mismatches = await fetch_mismatch_counts(conn, aggregates.run_id, keys | waiving.keys)
        aggregates = replace(aggregates, mismatches=mismatches)
    return aggregates, noise, waiving


async def _runtime(engine: AsyncEngine, run: RunInfo, cfg: JudgingConfig) -> Check:
    """The runtime check over the canary's stored samples, against the baseline
    ``diff.runtime_checks.choose_baseline`` picks: the configured budget, else the primary's
    pauses in this run (when the primary is sampled), else an earlier GO run's canary."""
    rcfg = cfg.runtime
    samples = await store_runtime.fetch_samples(engine, run.id, Role.CANARY)
    primary: Baseline | None = None
    previous: Baseline | None = None
    if rcfg.gc_pause_budget_ms is None and samples:
        if rcfg.primary is not None:
            ps = await store_runtime.pause_stats(engine, run.id, Role.PRIMARY)
            primary = Baseline.from_ns(Role.PRIMARY, ps.count, ps.mean_ns or 0.0, ps.sigma_ns)
        if primary is None:
            prev = await store_runtime.previous_pause_stats(
                engine, exclude_run_id=run.id, canary_url=run.canary_url
            )
            if prev is not None:
                previous = Baseline.from_ns(
                    "previous_run",
                    prev.count,
                    prev.mean_ns or 0.0,
                    prev.sigma_ns,
                    run_id=prev.run_id,
                )
    baseline = choose_baseline(rcfg, primary=primary, previous=previous)
    return runtime_check(samples, rcfg, baseline=baseline)


async def assess_run(
    engine: AsyncEngine, run: str, *, record: bool = True, endpoint_latency: bool = False
) -> Assessment:
    """The numbers of ``run`` now and its verdict on them; the verdict is appended to the
    run's history when ``record``. ``endpoint_latency`` also reads each endpoint's latency
    percentiles (the report and the API show them; the verdict does not need them).

    The one place a run is aggregated and its noise found: the verdict, the report
    (``diff.report_model``) and the admin API read what this returns.

    Raises UnknownRun when there is no such run, StoreUnavailable when the database cannot
    be reached.
    """
    async with store_errors(engine):
        async with read_snapshot(engine) as conn:
            info = await fetch_run(conn, run)
            cfg = run_config(run, info.config)
            aggregates = await fetch_aggregates(conn, info, endpoint_latency=endpoint_latency)
            waivers = await applicable_waivers(conn, info.id, info.name)
            aggregates, noise, waiving = await _with_noise(conn, aggregates, cfg, waivers)
        runtime = await _runtime(engine, info, cfg)
        findings = await store_runtime.fetch_findings(engine, info.id, latest=True)
    result = replace(
        decide(aggregates, cfg, noise=noise, runtime=runtime, preflight=findings),
        computed_at=info.as_of.isoformat(),
    )
    if waiving.uses:
        # Informational: the waivers already acted on the counts decide read. Shown (and
        # kept in the history) only when a waiver applies to the run.
        result = replace(result, checks=(*result.checks, waivers_check(waiving)))
    if record:
        await record_result(engine, result)
    observe_verdict(result, unjudged=max(aggregates.recorded - aggregates.judged, 0))
    return Assessment(aggregates, result, waiving.keys)


async def evaluate_run(engine: AsyncEngine, run: str, *, record: bool = True) -> VerdictResult:
    """The verdict of ``run`` now (:func:`assess_run`'s); appended to the run's verdict
    history when ``record``.

    Raises UnknownRun when there is no such run, StoreUnavailable when the database cannot
    be reached.
    """
    return (await assess_run(engine, run, record=record)).verdict


async def record_result(engine: AsyncEngine, result: VerdictResult) -> None:
    """Append ``result`` to its run's verdict history (at its ``computed_at``)."""
    computed_at = datetime.fromisoformat(result.computed_at) if result.computed_at else None
    async with store_errors(engine):
        async with engine.begin() as conn:
            info = await fetch_run(conn, result.run)
            await record_verdict(
                conn,
                info.id,
                result.verdict.value,
                [c.as_dict() for c in result.checks],
                computed_at=computed_at,
            )
