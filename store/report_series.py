"""The report's series and field statistics: what its charts and field tree are drawn from.

Counting is PostgreSQL's (``percentile_cont`` over an array of fractions, ``count(DISTINCT
...)`` per time bucket, a self-join for co-occurring fields); Python only receives bounded
results:

- :func:`latency_curves`: per endpoint and side, the latency at :data:`CDF_FRACTIONS` over
  the endpoint's pairs (the population the verdict's latency figures use);
- :func:`mismatch_series`: per endpoint and time bucket (a minute; 10 s in a run shorter
  than ten minutes; wider for long runs so that there are at most :data:`MAX_BUCKETS`),
  pairs and pairs with a strict mismatch or a tolerance violation against the canary,
  leaving out the given noise keys;
- :func:`field_stats` and :func:`co_occurrence`: per differing field, its counts by kind
  and judgement and when it first differed; which fields differ in the same exchanges.

Errors: ``UnknownRun`` and ``StoreUnavailable``, as in ``store.reports``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from graygate.errors import UnknownRun
from graygate.vocabulary import FAILURE_JUDGEMENTS, PAIR_OUTCOMES, Against, Judgement, Role
from store.failures import store_errors
from store.tables import differences, exchange_of, exchanges, runs

__all__ = [
    "CDF_FRACTIONS",
    "MAX_BUCKETS",
    "MAX_CO_OCCURRENCE_EXCHANGES",
    "MAX_FIELDS",
    "SHORT_RUN_S",
    "CoOccurrence",
    "FieldKindCount",
    "LatencyCurve",
    "MismatchBucket",
    "bucket_seconds",
    "co_occurrence",
    "field_stats",
    "field_totals",
    "latency_curves",
    "mismatch_series",
    "run_config_json",
]

logger = logging.getLogger(__name__)

# 0, 2.5%, ..., 97.5%, 99%, 100%: enough points for a smooth CDF, with p50 and p99 on it.
CDF_FRACTIONS: tuple[float, ...] = tuple(sorted({i / 40 for i in range(41)} | {0.99}))
MAX_BUCKETS = 240  # time buckets per endpoint; a longer run gets wider buckets
MAX_FIELDS = 500  # (field, kind, judgement) rows per endpoint in field_stats
MAX_CO_OCCURRENCE_EXCHANGES = 20_000  # differing exchanges the co-occurrence looks at


@dataclass(frozen=True, slots=True)
class LatencyCurve:
    """One side's latency distribution on one endpoint: ``points`` are (fraction, ms)."""

    endpoint: str
    role: str  # primary | canary
    pairs: int
    points: tuple[tuple[float, float], ...]

    def at(self, fraction: float) -> float | None:
        for q, value in self.points:
            if math.isclose(q, fraction):
                return value
        return None


@dataclass(frozen=True, slots=True)
class MismatchBucket:
    """One endpoint's pairs in one time bucket, and how many of them failed."""

    endpoint: str
    start: datetime
    seconds: int
    pairs: int
    strict: int  # pairs with a strict mismatch (noise keys left out)
    tolerance: int  # pairs with a tolerance violation (noise keys left out)


@dataclass(frozen=True, slots=True)
class FieldKindCount:
    """One (endpoint, field, kind, judgement): in how many exchanges, since when."""

    endpoint: str
    field: str
    kind: str
    judgement: str
    exchanges: int
    first_at: datetime
    rule: str | None
    example_trace_id: str
    example_primary: Any
    example_canary: Any


@dataclass(frozen=True, slots=True)
class CoOccurrence:
    """Per endpoint, over at most :data:`MAX_CO_OCCURRENCE_EXCHANGES` differing exchanges:
    each failing field's exchange count, and for each ordered pair of fields how many of
    those exchanges both differ in."""

    exchanges: dict[tuple[str, str], int]  # (endpoint, field) -> exchanges
    both: dict[tuple[str, str, str], int]  # (endpoint, field a, field b) -> exchanges


@asynccontextmanager
async def _connect(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with store_errors(engine), engine.connect() as conn:
        yield conn


async def _run_id(conn: AsyncConnection, run: str) -> int:
    run_id = await conn.scalar(sa.select(runs.c.id).where(runs.c.name == run))
    if run_id is None:
        raise UnknownRun(run)
    return int(run_id)


async def run_config_json(engine: AsyncEngine, run: str) -> dict[str, Any]:
    """The run's stored configuration (``runs.config``)."""
    async with _connect(engine) as conn:
        row = (await conn.execute(sa.select(runs.c.config).where(runs.c.name == run))).one_or_none()
    if row is None:
        raise UnknownRun(run)
    return dict(row.config or {})


async def latency_curves(engine: AsyncEngine, run: str) -> list[LatencyCurve]:
    """Per endpoint, each side's latency at :data:`CDF_FRACTIONS` over the endpoint's pairs."""
    e = exchanges.c
    fractions = sa.literal(list(CDF_FRACTIONS), ARRAY(sa.Float))

    def curve(col: sa.ColumnElement[float]) -> sa.ColumnElement[Any]:
        return sa.func.percentile_cont(fractions).within_group(col)

    stmt = (
        sa.select(
            e.endpoint,
            sa.func.count(e.primary_latency_ms).label("np"),
            sa.func.count(e.canary_latency_ms).label("nc"),
            curve(e.primary_latency_ms).label("p"),
            curve(e.canary_latency_ms).label("c"),
        )
        .where(e.outcome.in_(PAIR_OUTCOMES))
        .group_by(e.endpoint)
        .order_by(e.endpoint)
    )
    async with _connect(engine) as conn:
        run_id = await _run_id(conn, run)
        rows = (await conn.execute(stmt.where(e.run_id == run_id))).all()
    out: list[LatencyCurve] = []
    for r in rows:
        for role, n, values in ((Role.PRIMARY, r.np, r.p), (Role.CANARY, r.nc, r.c)):
            if n and values:
                points = tuple(
                    (q, float(v))
                    for q, v in zip(CDF_FRACTIONS, values, strict=True)
                    if v is not None
                )
                out.append(LatencyCurve(r.endpoint, role.value, int(n), points))
    return out


SHORT_RUN_S = 600  # runs shorter than this get 10 s buckets (a minute would be one or two)


def bucket_seconds(first: datetime | None, last: datetime | None) -> int:
    """A minute (10 s for a run shorter than :data:`SHORT_RUN_S`), or a whole number of
    minutes wide enough for at most MAX_BUCKETS buckets."""
    if first is None or last is None:
        return 60
    span = max(0.0, (last - first).total_seconds())
    if span < SHORT_RUN_S:
        return 10
    minutes = max(1, math.ceil((span + 1) / 60 / MAX_BUCKETS))
    return 60 * minutes


async def mismatch_series(
    engine: AsyncEngine, run: str, *, exclude: Collection[tuple[str, str, str]] = ()
) -> list[MismatchBucket]:
    """Per endpoint and time bucket: pairs, and pairs with a strict mismatch / tolerance
    violation against the canary outside ``exclude`` ((endpoint, field, kind) noise keys)."""
    e = exchanges.c
    d = differences.c
    async with _connect(engine) as conn:
        run_id = await _run_id(conn, run)
        span = (
            await conn.execute(
                sa.select(sa.func.min(e.received_at), sa.func.max(e.received_at)).where(
                    e.run_id == run_id
                )
            )
        ).one()
        seconds = bucket_seconds(span[0], span[1])

        def bucket(col: sa.ColumnElement[datetime]) -> sa.ColumnElement[Any]:
            epoch = sa.extract("epoch", col)
            return sa.func.floor(epoch / seconds) * seconds

        pairs = (
            sa.select(e.endpoint, bucket(e.received_at).label("b"), sa.func.count().label("pairs"))
            .where(e.run_id == run_id, e.outcome.in_(PAIR_OUTCOMES))
            .group_by(e.endpoint, sa.text("b"))
        )
        cond = (
            (d.run_id == run_id)
            & (d.against == Against.CANARY)
            & d.judgement.in_(FAILURE_JUDGEMENTS)
        )
        if exclude:
            cond = cond & sa.tuple_(d.endpoint, d.field, d.kind).not_in(sorted(exclude))
        failing = (
            sa.select(
                d.endpoint,
                bucket(e.received_at).label("b"),
                sa.func.count(sa.distinct(d.exchange_id))
                .filter(d.judgement == Judgement.STRICT)
                .label("strict"),
                sa.func.count(sa.distinct(d.exchange_id))
                .filter(d.judgement == Judgement.TOLERANCE)
                .label("tolerance"),
            )
            .select_from(differences.join(exchanges, exchange_of(differences)))
            .where(cond)
            .group_by(d.endpoint, sa.text("b"))
        )
        pair_rows = (await conn.execute(pairs)).all()
        fail_rows = (await conn.execute(failing)).all()
    failed = {(r.endpoint, float(r.b)): (r.strict, r.tolerance) for r in fail_rows}
    out = [
        MismatchBucket(
            endpoint=r.endpoint,
            start=datetime.fromtimestamp(float(r.b), UTC),
            seconds=seconds,
            pairs=r.pairs,
            strict=failed.get((r.endpoint, float(r.b)), (0, 0))[0],
            tolerance=failed.get((r.endpoint, float(r.b)), (0, 0))[1],
        )
        for r in pair_rows
    ]
    out.sort(key=lambda b: (b.endpoint, b.start))
    return out


async def field_stats(
    engine: AsyncEngine, run: str, *, endpoint: str | None = None
) -> list[FieldKindCount]:
    """Every field that differs against the canary, per endpoint, kind and judgement: in how
    many exchanges, when it first differed, and its first occurrence as the example. At
    most :data:`MAX_FIELDS` rows per endpoint (most frequent first)."""
    d = differences.c
    e = exchanges.c
    async with _connect(engine) as conn:
        run_id = await _run_id(conn, run)
        cond = (d.run_id == run_id) & (d.against == Against.CANARY)
        if endpoint is not None:
            cond = cond & (d.endpoint == endpoint)
        grouped = (
            sa.select(
                d.endpoint,
                d.field,
                d.kind,
                d.judgement,
                sa.func.count(sa.distinct(d.exchange_id)).label("n"),
                sa.func.min(e.received_at).label("first_at"),
                sa.func.min(d.id).label("example_id"),
                sa.func.min(d.rule).label("rule"),
            )
            .select_from(differences.join(exchanges, exchange_of(differences)))
            .where(cond)
            .group_by(d.endpoint, d.field, d.kind, d.judgement)
            .subquery("grouped")
        )
        ranked = sa.select(
            grouped,
            sa.func.row_number()
            .over(partition_by=grouped.c.endpoint, order_by=(grouped.c.n.desc(), grouped.c.field))
            .label("rank"),
        ).subquery("ranked")
        example = differences.alias("example")
        query = (
            sa.select(
                ranked,
                exchanges.c.trace_id,
                example.c.primary_value,
                example.c.other_value,
            )
            .select_from(
                ranked.join(
                    example, (example.c.run_id == run_id) & (example.c.id == ranked.c.example_id)
                ).join(exchanges, exchange_of(example))
            )
            .where(ranked.c.rank <= MAX_FIELDS)
            .order_by(ranked.c.endpoint, ranked.c.first_at, ranked.c.field)
        )
        rows = (await conn.execute(query)).all()
    return [
        FieldKindCount(
            endpoint=r.endpoint,
            field=r.field,
            kind=r.kind,
            judgement=r.judgement,
            exchanges=r.n,
            first_at=r.first_at,
            rule=r.rule,
            example_trace_id=r.trace_id,
            example_primary=r.primary_value,
            example_canary=r.other_value,
        )
        for r in rows
    ]


async def field_totals(
    engine: AsyncEngine, run: str, *, endpoint: str | None = None
) -> dict[tuple[str, str], tuple[int, datetime]]:
    """(endpoint, field) -> (exchanges it differs in against the canary, any kind or
    judgement; when it first differed)."""
    d = differences.c
    e = exchanges.c
    async with _connect(engine) as conn:
        run_id = await _run_id(conn, run)
        cond = (d.run_id == run_id) & (d.against == Against.CANARY)
        if endpoint is not None:
            cond = cond & (d.endpoint == endpoint)
        stmt = (
            sa.select(
                d.endpoint,
                d.field,
                sa.func.count(sa.distinct(d.exchange_id)).label("n"),
                sa.func.min(e.received_at).label("first_at"),
            )
            .select_from(differences.join(exchanges, exchange_of(differences)))
            .where(cond)
            .group_by(d.endpoint, d.field)
        )
        rows = (await conn.execute(stmt)).all()
    return {(r.endpoint, r.field): (int(r.n), r.first_at) for r in rows}


async def co_occurrence(
    engine: AsyncEngine,
    run: str,
    *,
    endpoint: str | None = None,
    exclude: Collection[tuple[str, str, str]] = (),
) -> CoOccurrence:
    """Which failing (strict or tolerance, outside ``exclude``) fields differ in the same
    exchanges, over the run's first :data:`MAX_CO_OCCURRENCE_EXCHANGES` differing exchanges."""
    d = differences.c
    async with _connect(engine) as conn:
        run_id = await _run_id(conn, run)
        cond = (
            (d.run_id == run_id)
            & (d.against == Against.CANARY)
            & d.judgement.in_(FAILURE_JUDGEMENTS)
        )
        if endpoint is not None:
            cond = cond & (d.endpoint == endpoint)
        if exclude:
            cond = cond & sa.tuple_(d.endpoint, d.field, d.kind).not_in(sorted(exclude))
        first = (
            sa.select(d.exchange_id)
            .where(cond)
            .group_by(d.exchange_id)
            .order_by(d.exchange_id)
            .limit(MAX_CO_OCCURRENCE_EXCHANGES)
            .subquery("first")
        )
        fe = (
            sa.select(d.endpoint, d.field, d.exchange_id)
            .where(cond, d.exchange_id.in_(sa.select(first.c.exchange_id)))
            .distinct()
            .cte("fe")
        )
        a, b = fe.alias("a"), fe.alias("b")
        counts = sa.select(fe.c.endpoint, fe.c.field, sa.func.count().label("n")).group_by(
            fe.c.endpoint, fe.c.field
        )
        pairs = (
            sa.select(a.c.endpoint, a.c.field.label("fa"), b.c.field.label("fb"), sa.func.count())
            .select_from(a.join(b, (a.c.exchange_id == b.c.exchange_id) & (a.c.field != b.c.field)))
            .group_by(a.c.endpoint, a.c.field, b.c.field)
        )
        count_rows = (await conn.execute(counts)).all()
        pair_rows = (await conn.execute(pairs)).all()
    return CoOccurrence(
        exchanges={(r.endpoint, r.field): int(r.n) for r in count_rows},
        both={(r[0], r[1], r[2]): int(r[3]) for r in pair_rows},
    )
