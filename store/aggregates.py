"""The one aggregation: what the verdict, the report and the admin API read about a run,
computed by PostgreSQL; and the verdict history.

Every number here is an SQL aggregate over the run's rows (counts with ``FILTER``,
differences grouped by endpoint, field, side and judgement, ``percentile_cont`` over a
bounded latency sample); no Python loop ever walks the run's exchanges. The values returned
are the plain frozen value types of ``graygate.values`` (``RunAggregates``) that the pure
verdict code (``diff.verdict``) and the report rows (``RunAggregates.endpoint_stats``) read.

Outcome vocabulary (set by the diff workers, ``store.judgement``):

- ``match`` / ``differ`` / ``noise_only``: a *pair*: both the primary and the canary answered
  and were compared (``noise_only``: every difference was noise in that exchange, the
  secondary differing at the same field);
- ``unjudgeable``: both answered and nothing certain differs, but a body was recorded
  truncated, or only its digest was kept and the digests differ
  (``record.bodies.sample``), so part of the answer could not be judged (not a pair,
  never a match);
- ``skipped``: nothing to compare (the mirror was skipped, or the other side left no trace);
- ``error``: one side failed in transport (timeout, refused, reset), so no pair.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from graygate.errors import UnknownRun
from graygate.values import (
    EndpointCounts,
    EndpointLatency,
    FieldCount,
    LatencySample,
    MismatchCounts,
    RunAggregates,
)
from graygate.vocabulary import (
    ATTEMPTED_OUTCOMES,
    FAILURE_JUDGEMENTS,
    PAIR_OUTCOMES,
    Against,
    Judgement,
    Outcome,
    Role,
    SkipReason,
)
from store.failures import store_errors
from store.tables import differences, exchanges, run_losses, runs, verdicts

__all__ = [
    "LATENCY_SAMPLE_SIZE",
    "PAIR_OUTCOMES",
    "EndpointCounts",
    "EndpointLatency",
    "FieldCount",
    "LatencySample",
    "MismatchCounts",
    "RunAggregates",
    "RunInfo",
    "StoredVerdict",
    "fetch_aggregates",
    "fetch_endpoint_counts",
    "fetch_endpoint_latency",
    "fetch_field_counts",
    "fetch_latency_sample",
    "fetch_losses",
    "fetch_mismatch_counts",
    "fetch_run",
    "fetch_three_way_fields",
    "latest_verdicts",
    "read_snapshot",
    "record_verdict",
]

# The latency test reads at most this many of the run's most recent pairs.
LATENCY_SAMPLE_SIZE = 20_000


@dataclass(frozen=True, slots=True)
class RunInfo:
    id: int
    name: str
    config: Mapping[str, Any]  # GraygateConfig.model_dump(mode="json"), or {} / partial
    as_of: datetime  # the database's now() when it was read
    canary_url: str | None = None


@dataclass(frozen=True, slots=True)
class StoredVerdict:
    run_id: int
    computed_at: datetime
    verdict: str  # GO | NO_GO | INCONCLUSIVE
    checks: list[dict[str, Any]]


@asynccontextmanager
async def read_snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only REPEATABLE READ transaction: every aggregate read in it sees the same
    moment of the run. JIT is off (it costs more to compile than these scans take); a
    larger work_mem keeps the aggregates' hash tables in memory."""
    async with engine.connect() as conn:
        async with conn.begin():
            await conn.execute(
                sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            )
            await conn.execute(sa.text("SET LOCAL jit = off"))
            await conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))
            yield conn


async def fetch_run(conn: AsyncConnection, name: str) -> RunInfo:
    """The run's id and stored configuration; UnknownRun when there is none by that name."""
    row = (
        await conn.execute(
            sa.select(
                runs.c.id, runs.c.config, runs.c.canary_url, sa.func.now().label("as_of")
            ).where(runs.c.name == name)
        )
    ).first()
    if row is None:
        raise UnknownRun(name)
    return RunInfo(
        id=row.id,
        name=name,
        config=row.config or {},
        as_of=row.as_of,
        canary_url=row.canary_url,
    )


async def fetch_endpoint_counts(conn: AsyncConnection, run_id: int) -> list[EndpointCounts]:
    """Every endpoint's counts, in one scan of the run's exchanges.

    The scan only classifies (endpoint, outcome and six flags -> count), reading nothing
    but ix_exchanges_verdict_counts (an index-only scan); the FILTERed sums then run over
    those few dozen groups instead of evaluating ten FILTER clauses on every row.
    """
    e = exchanges.c
    http_5xx: sa.ColumnElement[int] = sa.literal_column("500")
    zero: sa.ColumnElement[int] = sa.literal_column("0")

    def flag(cond: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        return sa.func.coalesce(cond, sa.false())

    keys: dict[str, sa.ColumnElement[Any]] = {
        "endpoint": e.endpoint,
        "outcome": e.outcome,
        "with_secondary": e.noise_differences.is_not(None),
        "primary_failed": flag(e.primary_error.is_not(None) | (e.primary_status >= http_5xx)),
        "canary_failed": flag(e.canary_error.is_not(None) | (e.canary_status >= http_5xx)),
        "strict": flag(e.strict_mismatches > zero),
        "tolerance": flag(e.tolerance_violations > zero),
        "digest_only": e.body_digest_only,
        # Not mirrored because a mirror target was ejected after broken answers, while the
        # primary served (its mirror goes to the canary).
        "ejected": flag((e.mirror_skipped == SkipReason.EJECTED) & (e.served_by == Role.PRIMARY)),
    }
    classes = (
        sa.select(*(v.label(k) for k, v in keys.items()), sa.func.count().label("n"))
        .where(e.run_id == run_id)
        .group_by(*keys.values())
        .subquery("classes")
    )
    c = classes.c
    pair = c.outcome.in_(PAIR_OUTCOMES)
    attempted = c.outcome.in_(ATTEMPTED_OUTCOMES)

    def n(cond: sa.ColumnElement[bool] | None = None) -> sa.ColumnElement[int]:
        total = sa.func.sum(c.n) if cond is None else sa.func.sum(c.n).filter(cond)
        return sa.func.coalesce(total, 0)

    stmt = (
        sa.select(
            c.endpoint,
            n().label("recorded"),
            n(c.outcome.is_not(None)).label("judged"),  # workers set both at once
            n(pair).label("pairs"),
            n(c.outcome == Outcome.MATCH).label("match"),
            n(c.outcome == Outcome.DIFFER).label("differ"),
            n(c.outcome == Outcome.NOISE_ONLY).label("noise_only"),
            n(c.outcome == Outcome.UNJUDGEABLE).label("unjudgeable"),
            n(pair & c.with_secondary).label("secondary_pairs"),
            n(c.outcome == Outcome.SKIPPED).label("skipped"),
            n(c.outcome == Outcome.ERROR).label("errors"),
            n(attempted).label("attempted"),
            n(attempted & c.primary_failed).label("primary_failures"),
            n(attempted & c.canary_failed).label("canary_failures"),
            n((c.outcome == Outcome.SKIPPED) & c.ejected).label("ejected"),
            n(pair & c.strict).label("strict_pairs"),
            n(pair & c.tolerance).label("tolerance_pairs"),
            n(pair & c.digest_only).label("digest_pairs"),
            n((c.outcome == Outcome.UNJUDGEABLE) & c.digest_only).label("digest_unjudgeable"),
        )
        .group_by(c.endpoint)
        .order_by(c.endpoint)
    )
    rows = (await conn.execute(stmt)).all()
    return [
        EndpointCounts(
            endpoint=m["endpoint"],
            **{k: int(v) for k, v in m.items() if k != "endpoint"},
        )
        for m in (row._mapping for row in rows)
    ]


async def fetch_field_counts(conn: AsyncConnection, run_id: int) -> list[FieldCount]:
    """Differences grouped by (endpoint, field, against, judgement, kind): distinct
    exchanges and rows. The kind of difference (value, type, missing...) is part of the
    key because noise is found per kind (a noisy value never excuses a type change)."""
    return await _field_counts(conn, differences.c.run_id == run_id)


async def _field_counts(conn: AsyncConnection, *where: Any) -> list[FieldCount]:
    """The differences matching ``where``, counted per (endpoint, field, against,
    judgement, kind)."""
    d = differences.c
    key = (d.endpoint, d.field, d.against, d.judgement, d.kind)
    stmt = (
        sa.select(
            *key,
            sa.func.count(sa.distinct(d.exchange_id)).label("exchanges"),
            sa.func.count().label("differences"),
        )
        .where(*where)
        .group_by(*key)
        .order_by(*key)
    )
    rows = (await conn.execute(stmt)).all()
    return [
        FieldCount(
            endpoint=r.endpoint,
            field=r.field,
            against=r.against,
            judgement=r.judgement,
            exchanges=int(r.exchanges),
            differences=int(r.differences),
            kind=r.kind,
        )
        for r in rows
    ]


async def fetch_three_way_fields(
    conn: AsyncConnection, run_id: int, endpoints: Collection[str] | None = None
) -> list[FieldCount]:
    """Like :func:`fetch_field_counts`, over the exchanges with all three answers only: the
    pairs (primary and canary compared) that also had the secondary compared; only for
    ``endpoints`` when given. Noise rates are compared over this one set, so that a
    secondary that answered a few exchanges is measured against the canary on those same
    exchanges, not against all of them.

    It reads the exchanges' heap (which exchanges had a secondary): :func:`fetch_aggregates`
    asks only for the endpoints where some pairs had no secondary."""
    d, e = differences.c, exchanges.c
    three = sa.select(e.id).where(
        e.run_id == run_id, e.outcome.in_(PAIR_OUTCOMES), e.noise_differences.is_not(None)
    )
    where = [d.run_id == run_id, d.exchange_id.in_(three)]
    if endpoints is not None:
        three = three.where(e.endpoint.in_(sorted(endpoints)))
        where = [d.run_id == run_id, d.endpoint.in_(sorted(endpoints)), d.exchange_id.in_(three)]
    return await _field_counts(conn, *where)


async def _three_way(
    conn: AsyncConnection,
    run_id: int,
    endpoints: Sequence[EndpointCounts],
    fields: Sequence[FieldCount],
) -> tuple[FieldCount, ...]:
    """The field counts over the exchanges with all three answers: where every pair of an
    endpoint had a secondary, that set is all its pairs and ``fields`` are its counts
    already; only endpoints where the secondary answered some pairs are counted again."""
    every = {
        e.endpoint for e in endpoints if e.secondary_pairs > 0 and e.secondary_pairs >= e.pairs
    }
    some = [e.endpoint for e in endpoints if 0 < e.secondary_pairs < e.pairs]
    out = [f for f in fields if f.endpoint in every]
    if some:
        out += await fetch_three_way_fields(conn, run_id, some)
    return tuple(out)


async def fetch_mismatch_counts(
    conn: AsyncConnection, run_id: int, exclude: Collection[tuple[str, str, str]]
) -> dict[str, MismatchCounts]:
    """Per endpoint: pairs with a strict mismatch / tolerance violation against the canary
    outside ``exclude`` ((endpoint, field, kind) triples, e.g. the noise keys: a difference
    of another kind in a noise field still counts)."""
    d = differences.c
    cond = (
        (d.run_id == run_id) & (d.against == Against.CANARY) & d.judgement.in_(FAILURE_JUDGEMENTS)
    )
    if exclude:
        cond = cond & sa.tuple_(d.endpoint, d.field, d.kind).not_in(sorted(exclude))
    stmt = (
        sa.select(
            d.endpoint,
            sa.func.count(sa.distinct(d.exchange_id))
            .filter(d.judgement == Judgement.STRICT)
            .label("strict_pairs"),
            sa.func.count(sa.distinct(d.exchange_id))
            .filter(d.judgement == Judgement.TOLERANCE)
            .label("tolerance_pairs"),
        )
        .where(cond)
        .group_by(d.endpoint)
    )
    rows = (await conn.execute(stmt)).all()
    return {
        r.endpoint: MismatchCounts(strict_pairs=r.strict_pairs, tolerance_pairs=r.tolerance_pairs)
        for r in rows
    }


async def _latency_sample(
    conn: AsyncConnection, run_id: int, with_secondary: bool
) -> LatencySample:
    """With a secondary, the canary's latency is judged against it (both mirrored) over the
    exchanges the primary served; when there are none (the canary served everything), or
    with no secondary, against the primary."""
    if with_secondary:
        sample = await fetch_latency_sample(conn, run_id, control="secondary")
        if sample.canary_ms:
            return sample
    return await fetch_latency_sample(conn, run_id, control="primary")


async def fetch_latency_sample(
    conn: AsyncConnection,
    run_id: int,
    limit: int = LATENCY_SAMPLE_SIZE,
    *,
    control: str = "primary",
) -> LatencySample:
    """The latencies of the run's ``limit`` most recent pairs, with p50/p99 of each side
    and each pair's endpoint (the latency check judges each endpoint on its own).

    ``control`` "secondary": the control side is the secondary instead of the primary, over
    the pairs the primary served (so the canary and the secondary were both mirrored, timed
    the same way) where the secondary answered; ``primary_ms`` then holds its latencies.
    """
    if control not in ("primary", "secondary"):
        raise ValueError(f"control must be primary or secondary, not {control!r}")
    e = exchanges.c
    control_ms = e.secondary_latency_ms if control == "secondary" else e.primary_latency_ms
    where = [
        e.run_id == run_id,
        e.outcome.in_(PAIR_OUTCOMES),
        control_ms.is_not(None),
        e.canary_latency_ms.is_not(None),
    ]
    if control == "secondary":
        where += [e.served_by == "primary", e.secondary_error.is_(None)]
    recent = (
        sa.select(
            control_ms.label("p"),
            e.canary_latency_ms.label("c"),
            e.endpoint.label("ep"),
            e.served_by.label("sb"),
        )
        .where(*where)
        .order_by(e.id.desc())
        .limit(limit)
        .subquery()
    )
    s = recent.c

    def pct(col: sa.ColumnElement[float], q: float) -> sa.ColumnElement[float]:
        return sa.func.percentile_cont(q).within_group(col)

    stmt = sa.select(
        sa.func.array_agg(s.p),
        sa.func.array_agg(s.c),
        pct(s.p, 0.5),
        pct(s.p, 0.99),
        pct(s.c, 0.5),
        pct(s.c, 0.99),
        sa.func.array_agg(s.ep),
        sa.func.count().filter(s.sb == "canary"),
        sa.func.count(),
    )
    row = (await conn.execute(stmt)).one()
    return LatencySample(
        control=control,
        served_by_canary=bool(row[8]) and row[7] * 2 > row[8],
        primary_ms=tuple(row[0] or ()),
        canary_ms=tuple(row[1] or ()),
        primary_p50=row[2],
        primary_p99=row[3],
        canary_p50=row[4],
        canary_p99=row[5],
        endpoints=tuple(row[6] or ()),
    )


async def fetch_endpoint_latency(conn: AsyncConnection, run_id: int) -> dict[str, EndpointLatency]:
    """Per endpoint: p50 / p99 latency (ms) of each side over the endpoint's pairs (the
    population the latency check samples)."""
    e = exchanges.c

    def pct(col: sa.ColumnElement[float], q: float) -> sa.ColumnElement[float]:
        return sa.func.percentile_cont(q).within_group(col)

    stmt = (
        sa.select(
            e.endpoint,
            pct(e.primary_latency_ms, 0.5),
            pct(e.primary_latency_ms, 0.99),
            pct(e.canary_latency_ms, 0.5),
            pct(e.canary_latency_ms, 0.99),
        )
        .where(e.run_id == run_id, e.outcome.in_(PAIR_OUTCOMES))
        .group_by(e.endpoint)
    )
    rows = (await conn.execute(stmt)).all()
    return {r[0]: EndpointLatency(r[1], r[2], r[3], r[4]) for r in rows}


async def fetch_losses(conn: AsyncConnection, run_id: int) -> dict[str, int]:
    """Exchanges the recorders could not record, by reason."""
    rows = (
        await conn.execute(
            sa.select(run_losses.c.reason, run_losses.c.count).where(run_losses.c.run_id == run_id)
        )
    ).all()
    return {reason: int(count) for reason, count in rows if count}


async def fetch_aggregates(
    conn: AsyncConnection, run: RunInfo, *, endpoint_latency: bool = False
) -> RunAggregates:
    """The run's counts, field counts, losses and latency sample, and with
    ``endpoint_latency`` each endpoint's latency percentiles (what the report and the API
    show). No noise applied yet: ``diff.evaluate`` finds the noise fields once and applies
    them (``fetch_mismatch_counts`` and ``dataclasses.replace``)."""
    endpoints = tuple(await fetch_endpoint_counts(conn, run.id))
    fields = tuple(await fetch_field_counts(conn, run.id))
    with_secondary = any(e.secondary_pairs for e in endpoints)
    three_way = await _three_way(conn, run.id, endpoints, fields) if with_secondary else ()
    return RunAggregates(
        run=run.name,
        run_id=run.id,
        endpoints=endpoints,
        fields=fields,
        three_way=three_way,
        losses=await fetch_losses(conn, run.id),
        latency=await _latency_sample(conn, run.id, with_secondary),
        endpoint_latency=await fetch_endpoint_latency(conn, run.id) if endpoint_latency else {},
    )


async def record_verdict(
    conn: AsyncConnection,
    run_id: int,
    verdict: str,
    checks: Sequence[Mapping[str, Any]],
    *,
    computed_at: datetime | None = None,
) -> datetime:
    """Append a verdict to the run's history; returns its time (default: the server's now)."""
    values: dict[str, Any] = {
        "run_id": run_id,
        "verdict": verdict,
        # Through orjson: NaN/inf become null, which jsonb accepts.
        "checks": orjson.loads(
            orjson.dumps([dict(c) for c in checks], default=str, option=orjson.OPT_SERIALIZE_NUMPY)
        ),
    }
    if computed_at is not None:
        values["computed_at"] = computed_at
    at: datetime = (
        await conn.execute(sa.insert(verdicts).values(**values).returning(verdicts.c.computed_at))
    ).scalar_one()
    return at


async def latest_verdicts(engine: AsyncEngine, run: str, limit: int = 20) -> list[StoredVerdict]:
    """The run's most recent verdicts, newest first; UnknownRun when there is no such run,
    StoreUnavailable when the database cannot be reached."""
    async with store_errors(engine), engine.connect() as conn:
        info = await fetch_run(conn, run)
        v = verdicts.c
        rows = (
            await conn.execute(
                sa.select(v.run_id, v.computed_at, v.verdict, v.checks)
                .where(v.run_id == info.id)
                .order_by(v.computed_at.desc(), v.id.desc())
                .limit(limit)
            )
        ).all()
    return [
        StoredVerdict(
            run_id=r.run_id, computed_at=r.computed_at, verdict=r.verdict, checks=list(r.checks)
        )
        for r in rows
    ]
