"""The reads behind the report and the admin API: listings and per-run summaries.

Every function takes the engine and a run name and returns plain frozen dataclasses
(``orjson`` serialises them as they are). Counting is done by PostgreSQL (aggregates,
window functions, ``percentile_cont``), never by looping over rows in Python; only the
bounded listings (a page of differences, the top fields, one exchange) return rows. The
per-endpoint numbers are not here: they are the verdict's (``store.aggregates``, read
through ``diff.evaluate.assess_run``), so report, API and verdict never disagree.

Errors: ``UnknownRun`` when no run has the name; ``StoreUnavailable`` when PostgreSQL
cannot be reached or its schema is behind the code (a table or column is missing).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from graygate.errors import UnknownRun
from graygate.values import Answer, PreflightFinding, RecordedExchange
from graygate.vocabulary import Against, Judgement, Outcome, Role
from store.failures import store_errors
from store.run_versions import version_changes, versions_seen
from store.tables import (
    ROLES,
    differences,
    exchange_of,
    exchanges,
    preflight_findings,
    run_losses,
    runs,
    runtime_samples,
    verdicts,
)

__all__ = [
    "MAX_PAGE",
    "DifferencePage",
    "DifferenceRow",
    "ExchangeDetail",
    "FieldExample",
    "FieldStat",
    "RunOverview",
    "RunSummary",
    "RuntimeSummary",
    "exchange_by_trace",
    "list_differences",
    "list_runs",
    "preflight",
    "run_overview",
    "runtime_summary",
    "top_fields",
]

logger = logging.getLogger(__name__)

MAX_PAGE = 1000


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One line of the runs listing."""

    name: str
    created_at: datetime
    updated_at: datetime
    primary_version: str | None
    canary_version: str | None
    exchanges: int
    judged: int
    differing: int  # exchanges whose outcome is ``differ``
    unrecorded: int  # exchanges lost before reaching the database (run_losses)
    last_verdict: str | None  # the latest recorded verdict, if any
    last_verdict_at: datetime | None
    # "canary version changed: 2.0.0-rc1 -> 2.0.0-rc2 (...)" per side (versions.header)
    version_changes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RunOverview:
    """One run, with its totals: the head of the report."""

    name: str
    created_at: datetime
    updated_at: datetime
    primary_url: str | None
    canary_url: str | None
    primary_version: str | None
    canary_version: str | None
    exchanges: int
    judged: int
    first_received_at: datetime | None
    last_received_at: datetime | None
    losses: dict[str, int] = field(default_factory=dict)  # reason -> exchanges lost
    # "canary version changed: 2.0.0-rc1 -> 2.0.0-rc2 (...)" per side (versions.header)
    version_changes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FieldExample:
    """One occurrence of a differing field: where to look, and both values."""

    trace_id: str
    path: str
    kind: str
    primary_value: Any
    other_value: Any


@dataclass(frozen=True, slots=True)
class FieldStat:
    """A field that differs on an endpoint: how often, how judged, and one example."""

    endpoint: str
    field: str
    judgement: str  # strict | tolerance | noise | waived
    differences: int
    exchanges: int
    rule: str | None
    example: FieldExample
    # The kind of difference (value, type, missing...): noise is found per kind, so a type
    # change in a field noisy by value is a row of its own, and not noise.
    kind: str = ""


@dataclass(frozen=True, slots=True)
class DifferenceRow:
    id: int
    trace_id: str
    endpoint: str
    against: str  # canary | secondary
    path: str
    field: str
    kind: str
    primary_value: Any
    other_value: Any
    judgement: str
    rule: str | None


@dataclass(frozen=True, slots=True)
class DifferencePage:
    """One page of differences, oldest first; ``next`` is the ``after`` of the next page."""

    items: list[DifferenceRow]
    next: int | None


@dataclass(frozen=True, slots=True)
class ExchangeDetail:
    """One stored exchange: the :class:`RecordedExchange` as the proxy recorded it (its
    primary and canary always set, its secondary when one was recorded), plus what only the
    store knows: the row id, the run's name, the workers' judgement and the differences."""

    id: int
    run: str
    exchange: RecordedExchange
    judged_at: datetime | None
    outcome: str | None
    strict_mismatches: int | None
    tolerance_violations: int | None
    noise_differences: int | None
    differences: list[DifferenceRow]

    @property
    def responses(self) -> dict[Role, Answer]:
        """The recorded answers by role: primary, canary, then secondary when recorded."""
        x = self.exchange
        sides = ((Role.PRIMARY, x.primary), (Role.CANARY, x.canary), (Role.SECONDARY, x.secondary))
        return {role: answer for role, answer in sides if answer is not None}


@dataclass(frozen=True, slots=True)
class RuntimeSummary:
    """One side's runtime samples over the run (Go expvar / Prometheus)."""

    role: str
    samples: int
    failed_samples: int
    first_at: datetime | None
    last_at: datetime | None
    goroutines_first: int | None
    goroutines_last: int | None
    goroutines_max: int | None
    heap_alloc_first: int | None
    heap_alloc_last: int | None
    heap_alloc_max: int | None
    gc_cycles: int | None
    gc_cpu_fraction_max: float | None
    gc_pauses: int
    gc_pause_p99_ms: float | None
    gc_pause_max_ms: float | None


# --------------------------------------------------------------------------- plumbing


@asynccontextmanager
async def _connect(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read connection whose "database away" failures become StoreUnavailable."""
    async with store_errors(engine), engine.connect() as conn:
        yield conn


async def _run_id(conn: AsyncConnection, run: str) -> int:
    run_id = await conn.scalar(sa.select(runs.c.id).where(runs.c.name == run))
    if run_id is None:
        raise UnknownRun(run)
    return int(run_id)


def _difference_row(row: Any) -> DifferenceRow:
    return DifferenceRow(
        id=row.id,
        trace_id=row.trace_id,
        endpoint=row.endpoint,
        against=row.against,
        path=row.path,
        field=row.field,
        kind=row.kind,
        primary_value=row.primary_value,
        other_value=row.other_value,
        judgement=row.judgement,
        rule=row.rule,
    )


_DIFFERENCE_COLUMNS = (
    differences.c.id,
    exchanges.c.trace_id,
    differences.c.endpoint,
    differences.c.against,
    differences.c.path,
    differences.c.field,
    differences.c.kind,
    differences.c.primary_value,
    differences.c.other_value,
    differences.c.judgement,
    differences.c.rule,
)


# --------------------------------------------------------------------------- queries


async def list_runs(engine: AsyncEngine, *, limit: int = 100) -> list[RunSummary]:
    """The runs, most recently updated first, with their counts and latest verdict."""
    e = exchanges
    counts = (
        sa.select(
            sa.func.count().label("exchanges"),
            sa.func.count(e.c.judged_at).label("judged"),
            sa.func.count().filter(e.c.outcome == Outcome.DIFFER).label("differing"),
        )
        .where(e.c.run_id == runs.c.id)
        .lateral("counts")
    )
    latest = (
        sa.select(verdicts.c.verdict, verdicts.c.computed_at)
        .where(verdicts.c.run_id == runs.c.id)
        .order_by(verdicts.c.computed_at.desc(), verdicts.c.id.desc())
        .limit(1)
        .lateral("latest")
    )
    lost = (
        sa.select(sa.func.coalesce(sa.func.sum(run_losses.c.count), 0).label("unrecorded"))
        .where(run_losses.c.run_id == runs.c.id)
        .lateral("lost")
    )
    query = (
        sa.select(
            runs.c.id,
            runs.c.name,
            runs.c.created_at,
            runs.c.updated_at,
            runs.c.primary_version,
            runs.c.canary_version,
            counts.c.exchanges,
            counts.c.judged,
            counts.c.differing,
            lost.c.unrecorded,
            latest.c.verdict,
            latest.c.computed_at,
        )
        .select_from(
            runs.join(counts, sa.true()).join(lost, sa.true()).outerjoin(latest, sa.true())
        )
        .order_by(runs.c.updated_at.desc(), runs.c.id.desc())
        .limit(max(1, min(limit, MAX_PAGE)))
    )
    async with _connect(engine) as conn:
        rows = (await conn.execute(query)).all()
        seen = await versions_seen(conn, [r.id for r in rows])
    return [
        RunSummary(
            name=r.name,
            created_at=r.created_at,
            updated_at=r.updated_at,
            primary_version=r.primary_version,
            canary_version=r.canary_version,
            exchanges=r.exchanges,
            judged=r.judged,
            differing=r.differing,
            unrecorded=int(r.unrecorded),
            last_verdict=r.verdict,
            last_verdict_at=r.computed_at,
            version_changes=version_changes(seen.get(r.id, ())),
        )
        for r in rows
    ]


async def run_overview(engine: AsyncEngine, run: str) -> RunOverview:
    """The run's identity, totals and unrecorded-exchange counts."""
    e = exchanges
    async with _connect(engine) as conn:
        row = (await conn.execute(sa.select(runs).where(runs.c.name == run))).one_or_none()
        if row is None:
            raise UnknownRun(run)
        totals = (
            await conn.execute(
                sa.select(
                    sa.func.count().label("exchanges"),
                    sa.func.count(e.c.judged_at).label("judged"),
                    sa.func.min(e.c.received_at).label("first"),
                    sa.func.max(e.c.received_at).label("last"),
                ).where(e.c.run_id == row.id)
            )
        ).one()
        losses = (
            await conn.execute(
                sa.select(run_losses.c.reason, run_losses.c.count.label("n"))
                .where(run_losses.c.run_id == row.id, run_losses.c.count > 0)
                .order_by(run_losses.c.reason)
            )
        ).all()
        seen = await versions_seen(conn, [row.id])
    return RunOverview(
        name=row.name,
        created_at=row.created_at,
        updated_at=row.updated_at,
        primary_url=row.primary_url,
        canary_url=row.canary_url,
        primary_version=row.primary_version,
        canary_version=row.canary_version,
        exchanges=totals.exchanges,
        judged=totals.judged,
        first_received_at=totals.first,
        last_received_at=totals.last,
        losses={r.reason: int(r.n) for r in losses},
        version_changes=version_changes(seen.get(row.id, ())),
    )


def _percentile(fraction: float, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    return sa.func.percentile_cont(fraction).within_group(column)


async def top_fields(
    engine: AsyncEngine,
    run: str,
    *,
    per_endpoint: int = 5,
    judgements: Sequence[str] = tuple(Judgement),
) -> list[FieldStat]:
    """The fields that differ most (primary vs canary), per endpoint and judgement, one row
    per (field, kind of difference), as the verdict keys noise.

    At most ``per_endpoint`` rows for each (endpoint, judgement), most frequent first,
    each with its first occurrence as the example.
    """
    d = differences
    async with _connect(engine) as conn:
        run_id = await _run_id(conn, run)
        grouped = (
            sa.select(
                d.c.endpoint,
                d.c.field,
                d.c.judgement,
                d.c.kind,
                sa.func.count().label("n"),
                sa.func.count(sa.distinct(d.c.exchange_id)).label("n_exchanges"),
                sa.func.min(d.c.id).label("example_id"),
                sa.func.min(d.c.rule).label("rule"),
            )
            .where(
                d.c.run_id == run_id,
                d.c.against == Against.CANARY,
                d.c.judgement.in_(list(judgements)),
            )
            .group_by(d.c.endpoint, d.c.field, d.c.judgement, d.c.kind)
            .subquery("grouped")
        )
        ranked = sa.select(
            grouped,
            sa.func.row_number()
            .over(
                partition_by=(grouped.c.endpoint, grouped.c.judgement),
                order_by=(grouped.c.n.desc(), grouped.c.field, grouped.c.kind),
            )
            .label("rank"),
        ).subquery("ranked")
        example = d.alias("example")
        query = (
            sa.select(
                ranked,
                exchanges.c.trace_id,
                example.c.path,
                example.c.primary_value,
                example.c.other_value,
            )
            .select_from(
                ranked.join(
                    example, (example.c.run_id == run_id) & (example.c.id == ranked.c.example_id)
                ).join(exchanges, exchange_of(example))
            )
            .where(ranked.c.rank <= per_endpoint)
            .order_by(ranked.c.endpoint, ranked.c.judgement, ranked.c.rank)
        )
        rows = (await conn.execute(query)).all()
    return [
        FieldStat(
            endpoint=r.endpoint,
            field=r.field,
            judgement=r.judgement,
            differences=r.n,
            exchanges=r.n_exchanges,
            rule=r.rule,
            kind=r.kind,
            example=FieldExample(
                trace_id=r.trace_id,
                path=r.path,
                kind=r.kind,
                primary_value=r.primary_value,
                other_value=r.other_value,
            ),
        )
        for r in rows
    ]


async def list_differences(
    engine: AsyncEngine,
    run: str,
    *,
    endpoint: str | None = None,
    field: str | None = None,
    path: str | None = None,
    judgement: str | None = None,
    against: str | None = None,
    limit: int = 100,
    after: int | None = None,
) -> DifferencePage:
    """A page of the run's differences, ordered by id (keyset: ``id > after``)."""
    limit = max(1, min(limit, MAX_PAGE))
    d = differences
    async with _connect(engine) as conn:
        run_id = await _run_id(conn, run)
        query = (
            sa.select(*_DIFFERENCE_COLUMNS)
            .select_from(d.join(exchanges, exchange_of(d)))
            .where(d.c.run_id == run_id)
        )
        for column, value in (
            (d.c.endpoint, endpoint),
            (d.c.field, field),
            (d.c.path, path),
            (d.c.judgement, judgement),
            (d.c.against, against),
        ):
            if value is not None:
                query = query.where(column == value)
        if after is not None:
            query = query.where(d.c.id > after)
        rows = (await conn.execute(query.order_by(d.c.id).limit(limit + 1))).all()
    items = [_difference_row(r) for r in rows[:limit]]
    return DifferencePage(items=items, next=items[-1].id if len(rows) > limit else None)


async def exchange_by_trace(
    engine: AsyncEngine, trace_id: str, *, run: str | None = None
) -> ExchangeDetail | None:
    """The latest exchange recorded under ``trace_id`` (in ``run`` when given), or None; a
    write check's record (``WRITE <name>``) only when the request's own is not there."""
    e = exchanges
    async with _connect(engine) as conn:
        query = (
            sa.select(e, runs.c.name.label("run_name"))
            .select_from(e.join(runs, runs.c.id == e.c.run_id))
            .where(e.c.trace_id == trace_id)
        )
        if run is not None:
            query = query.where(e.c.run_id == await _run_id(conn, run))
        # The request's own exchange before a write check's record of it (method WRITE).
        first = sa.case((e.c.method == "WRITE", 1), else_=0)
        row = (await conn.execute(query.order_by(first, e.c.id.desc()).limit(1))).one_or_none()
        if row is None:
            return None
        diffs = (
            await conn.execute(
                sa.select(*_DIFFERENCE_COLUMNS)
                .select_from(differences.join(exchanges, exchange_of(differences)))
                .where(differences.c.run_id == row.run_id, differences.c.exchange_id == row.id)
                .order_by(differences.c.id)
            )
        ).all()
    m = row._mapping
    answers = {
        role: Answer(
            status=m[f"{role}_status"],
            headers=m[f"{role}_headers"] or {},
            body=m[f"{role}_body"],
            body_truncated=m[f"{role}_body_truncated"],
            body_sha256=m[f"{role}_body_sha256"],
            latency_ms=m[f"{role}_latency_ms"],
            error=m[f"{role}_error"],
        )
        for role in ROLES
        if role != Role.SECONDARY
        or m["secondary_status"] is not None
        or m["secondary_error"] is not None
    }
    recorded = RecordedExchange(
        run_id=row.run_id,
        trace_id=row.trace_id,
        span_id=row.span_id,
        received_at=row.received_at,
        endpoint=row.endpoint,
        method=row.method,
        path=row.path,
        query=row.query,
        # Never NULL for a row the proxy wrote (store.exchanges.exchange_row writes a dict).
        request_headers=row.request_headers or {},
        request_body=row.request_body,
        request_body_truncated=row.request_body_truncated,
        gray_label=row.gray_label,
        served_by=row.served_by,
        mirror_skipped=row.mirror_skipped,
        primary=answers.get(Role.PRIMARY),
        canary=answers.get(Role.CANARY),
        secondary=answers.get(Role.SECONDARY),
    )
    return ExchangeDetail(
        id=row.id,
        run=row.run_name,
        exchange=recorded,
        judged_at=row.judged_at,
        outcome=row.outcome,
        strict_mismatches=row.strict_mismatches,
        tolerance_violations=row.tolerance_violations,
        noise_differences=row.noise_differences,
        differences=[_difference_row(r) for r in diffs],
    )


async def preflight(engine: AsyncEngine, run: str) -> list[PreflightFinding]:
    """The latest finding of each preflight check, failures first."""
    pf = preflight_findings
    async with _connect(engine) as conn:
        run_id = await _run_id(conn, run)
        ranked = (
            sa.select(
                pf.c.check,
                pf.c.ok,
                pf.c.detail,
                pf.c.checked_at,
                sa.func.row_number()
                .over(partition_by=pf.c.check, order_by=(pf.c.checked_at.desc(), pf.c.id.desc()))
                .label("rank"),
            )
            .where(pf.c.run_id == run_id)
            .subquery("ranked")
        )
        latest = sa.select(ranked).where(ranked.c.rank == 1).subquery("latest")
        rows = (await conn.execute(sa.select(latest).order_by(latest.c.ok, latest.c.check))).all()
    return [
        PreflightFinding(check=r.check, ok=r.ok, detail=r.detail, checked_at=r.checked_at)
        for r in rows
    ]


async def runtime_summary(engine: AsyncEngine, run: str) -> list[RuntimeSummary]:
    """Per side: how many runtime samples, goroutine and heap trend, GC pauses."""
    rs = runtime_samples

    def end(column: sa.ColumnElement[Any], *, last: bool = False) -> sa.ColumnElement[Any]:
        """The column's first (or last) non-null value, by time."""
        order = (rs.c.taken_at.desc(), rs.c.id.desc()) if last else (rs.c.taken_at, rs.c.id)
        values = sa.func.array_agg(aggregate_order_by(column, *order)).filter(column.is_not(None))
        return sa.type_coerce(values, ARRAY(column.type))[1]

    async with _connect(engine) as conn:
        run_id = await _run_id(conn, run)
        totals = (
            sa.select(
                rs.c.role,
                sa.func.count().label("samples"),
                sa.func.count(rs.c.error).label("failed"),
                sa.func.min(rs.c.taken_at).label("first_at"),
                sa.func.max(rs.c.taken_at).label("last_at"),
                sa.func.max(rs.c.goroutines).label("g_max"),
                sa.func.max(rs.c.heap_alloc).label("h_max"),
                (sa.func.max(rs.c.num_gc) - sa.func.min(rs.c.num_gc)).label("gc_cycles"),
                sa.func.max(rs.c.gc_cpu_fraction).label("gc_cpu_max"),
                end(rs.c.goroutines).label("g_first"),
                end(rs.c.goroutines, last=True).label("g_last"),
                end(rs.c.heap_alloc).label("h_first"),
                end(rs.c.heap_alloc, last=True).label("h_last"),
            )
            .where(rs.c.run_id == run_id)
            .group_by(rs.c.role)
            .subquery("totals")
        )
        unnested = (
            sa.func.unnest(rs.c.pauses_ns).table_valued("pause_ns").render_derived("p").lateral()
        )
        pause = unnested.c.pause_ns
        pauses = (
            sa.select(
                rs.c.role,
                sa.func.count(pause).label("n"),
                _percentile(0.99, pause).label("p99"),
                sa.func.max(pause).label("max"),
            )
            .select_from(rs.join(unnested, sa.true()))
            .where(rs.c.run_id == run_id)
            .group_by(rs.c.role)
            .subquery("pauses")
        )
        query = (
            sa.select(
                totals,
                pauses.c.n,
                pauses.c.p99,
                pauses.c.max,
            )
            .select_from(totals.outerjoin(pauses, pauses.c.role == totals.c.role))
            .order_by(totals.c.role)
        )
        rows = (await conn.execute(query)).all()
    return [
        RuntimeSummary(
            role=r.role,
            samples=r.samples,
            failed_samples=r.failed,
            first_at=r.first_at,
            last_at=r.last_at,
            goroutines_first=r.g_first,
            goroutines_last=r.g_last,
            goroutines_max=r.g_max,
            heap_alloc_first=r.h_first,
            heap_alloc_last=r.h_last,
            heap_alloc_max=r.h_max,
            gc_cycles=r.gc_cycles,
            gc_cpu_fraction_max=r.gc_cpu_max,
            gc_pauses=r.n or 0,
            gc_pause_p99_ms=None if r.p99 is None else r.p99 / 1e6,
            gc_pause_max_ms=None if r.max is None else r.max / 1e6,
        )
        for r in rows
    ]
