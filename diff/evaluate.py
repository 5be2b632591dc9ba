"""Compute a run's verdict from what is stored, and keep it in the run's verdict history.

The I/O edge of the verdict: read the run's configuration and aggregates in one snapshot
(``store.aggregates``), find the noise fields and the mismatch counts that leave them out,
judge the canary's runtime samples, then ``diff.verdict.decide`` (pure) and append the result
to the ``verdicts`` table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from config.schema import (
    CompareConfig,
    GraygateConfig,
    RuntimeConfig,
    VerdictConfig,
)
from diff.runtime_checks import Baseline, choose_baseline, runtime_check
from diff.verdict import decide, find_noise
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

__all__ = ["evaluate_run", "record_result", "run_config"]

logger = logging.getLogger(__name__)

# Stand-ins for the parts of a stored configuration the verdict does not read.
_PLACEHOLDER_UPSTREAMS = {Role.PRIMARY: "http://127.0.0.1:1", Role.CANARY: "http://127.0.0.1:2"}


def run_config(name: str, stored: Mapping[str, Any] | None) -> GraygateConfig:
    """The configuration that judges run ``name``, from ``runs.config``.

    The stored document is ``GraygateConfig.model_dump(mode="json")``; a document that is
    missing, partial or no longer valid falls back to the defaults part by part (a section
    that does not validate is replaced by its defaults, with a warning).
    """
    data = dict(stored or {})
    data["run"] = name if _valid_name(name) else "run"
    data.setdefault("upstreams", _PLACEHOLDER_UPSTREAMS)
    try:
        return GraygateConfig.model_validate(data)
    except ValidationError as exc:
        logger.debug("stored configuration of run %s does not validate whole: %s", name, exc)
    parts: dict[str, Any] = {"run": data["run"], "upstreams": _PLACEHOLDER_UPSTREAMS}
    for key, model in (
        ("verdict", VerdictConfig),
        ("compare", CompareConfig),
        ("runtime", RuntimeConfig),
    ):
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
    return GraygateConfig.model_validate(parts)


def _valid_name(name: str) -> bool:
    try:
        GraygateConfig.model_validate({"run": name, "upstreams": _PLACEHOLDER_UPSTREAMS})
    except ValidationError:
        return False
    return True


async def _with_noise(
    conn: AsyncConnection, aggregates: RunAggregates, cfg: GraygateConfig
) -> RunAggregates:
    """The aggregates with mismatch counts that leave the noise fields (and waived
    differences) out, counted from the differences themselves; only when a noise field
    carries a canary mismatch or a difference was waived, else the per-exchange counts the
    workers stored already stand."""
    noise = {(n.endpoint, n.field) for n in find_noise(aggregates, cfg.compare.noise)}
    recount = any(
        f.against == Against.CANARY
        and (
            f.judgement == Judgement.WAIVED
            or (f.judgement in FAILURE_JUDGEMENTS and (f.endpoint, f.field) in noise)
        )
        for f in aggregates.fields
    )
    if not recount:
        return aggregates
    mismatches = await fetch_mismatch_counts(conn, aggregates.run_id, noise)
    return replace(aggregates, mismatches=mismatches)


async def _runtime(engine: AsyncEngine, run: RunInfo, cfg: GraygateConfig) -> Check:
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


async def evaluate_run(engine: AsyncEngine, run: str, *, record: bool = True) -> VerdictResult:
    """The verdict of ``run`` now; appended to the run's verdict history when ``record``.

    Raises UnknownRun when there is no such run, StoreUnavailable when the database cannot
    be reached.
    """
    async with store_errors(engine):
        async with read_snapshot(engine) as conn:
            info = await fetch_run(conn, run)
            cfg = run_config(run, info.config)
            aggregates = await fetch_aggregates(conn, info)
            aggregates = await _with_noise(conn, aggregates, cfg)
        runtime = await _runtime(engine, info, cfg)
        findings = await store_runtime.fetch_findings(engine, info.id, latest=True)
    result = replace(
        decide(aggregates, cfg, runtime=runtime, preflight=findings),
        computed_at=info.as_of.isoformat(),
    )
    if record:
        await record_result(engine, result)
    return result


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
