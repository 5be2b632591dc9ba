"""Re-judging a run under other compare rules: the job, its staging, the atomic switch,
and the run's config history (``rejudges``, ``rejudge_outcomes``, ``rejudge_differences``).

The verdict keeps reading the run's current differences and outcomes while a job runs: the
new judgement goes to the staging tables only. The transaction that stages the last batch
replaces the run's differences (of the exchanges the job covers) and outcomes with the
staged ones, stores the new rules in ``runs.config``, and marks the job complete: a reader
sees the old judgement or the new one, never a mix.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from graygate.errors import UnknownRun
from store.failures import store_errors
from store.judgement import CLAIM_COLUMNS, ClaimedExchange, ExchangeJudgement, claimed
from store.tables import (
    differences,
    exchanges,
    rejudge_differences,
    rejudge_outcomes,
    rejudges,
    runs,
    verdicts,
)

__all__ = [
    "ConfigEra",
    "RejudgeJob",
    "config_history",
    "finish",
    "job_progress",
    "lock_next_job",
    "next_batch",
    "stage",
    "start_rejudge",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RejudgeJob:
    id: int
    run_id: int
    compare: Mapping[str, Any]
    max_exchange_id: int
    next_id: int
    total: int
    judged: int
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None


def _job(r: Any) -> RejudgeJob:
    return RejudgeJob(
        id=int(r.id),
        run_id=int(r.run_id),
        compare=r.compare,
        max_exchange_id=int(r.max_exchange_id),
        next_id=int(r.next_id),
        total=int(r.total),
        judged=int(r.judged),
        completed_at=r.completed_at,
        cancelled_at=r.cancelled_at,
    )


async def start_rejudge(
    engine: AsyncEngine, run: str, compare: Mapping[str, Any] | None, *, by: str
) -> RejudgeJob:
    """Queue a re-judgement of every exchange of ``run`` recorded so far under
    ``compare`` (a ``CompareConfig`` dump; None: the run's stored rules). A job of the run
    still running is cancelled (its staging dropped). UnknownRun when there is no run."""
    r, x, j = runs.c, exchanges.c, rejudges.c
    async with store_errors(engine), engine.begin() as conn:
        row = (
            await conn.execute(sa.select(r.id, r.config).where(r.name == run).with_for_update())
        ).one_or_none()
        if row is None:
            raise UnknownRun(run)
        previous = dict((row.config or {}).get("compare") or {})
        running = (
            await conn.scalars(
                sa.select(j.id).where(
                    j.run_id == row.id, j.completed_at.is_(None), j.cancelled_at.is_(None)
                )
            )
        ).all()
        if running:
            await conn.execute(
                sa.delete(rejudge_differences).where(rejudge_differences.c.rejudge_id.in_(running))
            )
            await conn.execute(
                sa.delete(rejudge_outcomes).where(rejudge_outcomes.c.rejudge_id.in_(running))
            )
            await conn.execute(
                sa.update(rejudges).where(j.id.in_(running)).values(cancelled_at=sa.func.now())
            )
        counted = (
            await conn.execute(
                sa.select(sa.func.count(), sa.func.max(x.id)).where(x.run_id == row.id)
            )
        ).one()
        new = (
            await conn.execute(
                sa.insert(rejudges)
                .values(
                    run_id=row.id,
                    compare=dict(compare) if compare is not None else previous,
                    previous_compare=previous,
                    requested_by=by,
                    max_exchange_id=int(counted[1] or 0),
                    total=int(counted[0]),
                )
                .returning(*rejudges.c)
            )
        ).one()
    logger.info("rejudge %d of run %s queued by %s (%d exchanges)", new.id, run, by, new.total)
    return _job(new)


async def lock_next_job(conn: AsyncConnection, run_id: int | None = None) -> RejudgeJob | None:
    """Lock a running job (of ``run_id`` when given) that no other worker holds."""
    j = rejudges.c
    stmt = (
        sa.select(*rejudges.c)
        .where(j.completed_at.is_(None), j.cancelled_at.is_(None))
        .order_by(j.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if run_id is not None:
        stmt = stmt.where(j.run_id == run_id)
    row = (await conn.execute(stmt)).one_or_none()
    return None if row is None else _job(row)


async def next_batch(conn: AsyncConnection, job: RejudgeJob, limit: int) -> list[ClaimedExchange]:
    """The job's next ``limit`` exchanges after its cursor (in the locked job's
    transaction, so no two workers take the same ones)."""
    x = exchanges.c
    rows = (
        await conn.execute(
            sa.select(*CLAIM_COLUMNS)
            .where(x.run_id == job.run_id, x.id > job.next_id, x.id <= job.max_exchange_id)
            .order_by(x.id)
            .limit(limit)
        )
    ).all()
    return [claimed(r) for r in rows]


async def stage(
    conn: AsyncConnection, job: RejudgeJob, judgements: Sequence[ExchangeJudgement]
) -> None:
    """Keep a batch's judgements in the staging tables and move the cursor past it."""
    if not judgements:
        return
    await conn.execute(
        sa.insert(rejudge_outcomes),
        [
            {
                "run_id": jd.run_id,
                "rejudge_id": job.id,
                "exchange_id": jd.exchange_id,
                "outcome": jd.outcome,
                "strict_mismatches": jd.strict_mismatches,
                "tolerance_violations": jd.tolerance_violations,
                "noise_differences": jd.noise_differences,
            }
            for jd in judgements
        ],
    )
    rows = [
        {
            "rejudge_id": job.id,
            "exchange_id": jd.exchange_id,
            "run_id": jd.run_id,
            "endpoint": jd.endpoint,
            "against": d.against,
            "path": d.path,
            "field": d.field,
            "kind": d.kind,
            "primary_value": d.primary_value,
            "other_value": d.other_value,
            "judgement": d.judgement,
            "rule": d.rule,
        }
        for jd in judgements
        for d in jd.differences
    ]
    if rows:
        await conn.execute(sa.insert(rejudge_differences), rows)
    await conn.execute(
        sa.update(rejudges)
        .where(rejudges.c.id == job.id)
        .values(
            next_id=max(jd.exchange_id for jd in judgements),
            judged=rejudges.c.judged + len(judgements),
        )
    )


async def finish(conn: AsyncConnection, job: RejudgeJob) -> None:
    """Switch the run to the staged judgement, in the locked job's transaction."""
    d, rd, ro, x = differences.c, rejudge_differences.c, rejudge_outcomes.c, exchanges.c
    await conn.execute(
        sa.delete(differences).where(d.run_id == job.run_id, d.exchange_id <= job.max_exchange_id)
    )
    columns = [
        "exchange_id", "run_id", "endpoint", "against", "path", "field", "kind",
        "primary_value", "other_value", "judgement", "rule",
    ]  # fmt: skip
    await conn.execute(
        sa.insert(differences).from_select(
            columns,
            sa.select(*(rd[c] for c in columns)).where(rd.rejudge_id == job.id),
        )
    )
    await conn.execute(
        sa.update(exchanges)
        .where(
            x.run_id == job.run_id,
            ro.run_id == job.run_id,
            ro.rejudge_id == job.id,
            x.id == ro.exchange_id,
        )
        .values(
            judged_at=sa.func.now(),
            outcome=ro.outcome,
            strict_mismatches=ro.strict_mismatches,
            tolerance_violations=ro.tolerance_violations,
            noise_differences=ro.noise_differences,
        )
    )
    await conn.execute(sa.delete(rejudge_differences).where(rd.rejudge_id == job.id))
    await conn.execute(
        sa.delete(rejudge_outcomes).where(ro.run_id == job.run_id, ro.rejudge_id == job.id)
    )
    await conn.execute(
        sa.update(runs)
        .where(runs.c.id == job.run_id)
        .values(
            config=sa.func.jsonb_set(
                runs.c.config,
                sa.text("'{compare}'"),
                sa.literal(dict(job.compare), type_=JSONB),
            ),
            updated_at=sa.func.now(),
        )
    )
    await conn.execute(
        sa.update(rejudges).where(rejudges.c.id == job.id).values(completed_at=sa.func.now())
    )
    logger.info("rejudge %d of run %d complete: the new judgement is current", job.id, job.run_id)


async def job_progress(engine: AsyncEngine, job_id: int) -> RejudgeJob:
    async with store_errors(engine), engine.connect() as conn:
        row = (await conn.execute(sa.select(rejudges).where(rejudges.c.id == job_id))).one()
    return _job(row)


@dataclass(frozen=True, slots=True)
class ConfigEra:
    """One entry of a run's config history: the rules that judged the verdicts computed
    from ``since`` (None: the run's start) until the next entry."""

    rejudge_id: int | None  # None: the rules the run was recorded with
    compare: Mapping[str, Any]
    since: datetime | None
    verdicts: list[tuple[datetime, str]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "rejudge_id": self.rejudge_id,
            "compare": dict(self.compare),
            "since": self.since.isoformat() if self.since else None,
            "verdicts": [{"computed_at": at.isoformat(), "verdict": v} for at, v in self.verdicts],
        }


async def config_history(engine: AsyncEngine, run: str) -> list[ConfigEra]:
    """Which rules judged which verdict: the run's first rules, then each completed
    re-judgement's, each with the verdicts recorded while they were current."""
    j = rejudges.c
    async with store_errors(engine), engine.connect() as conn:
        row = (
            await conn.execute(sa.select(runs.c.id, runs.c.config).where(runs.c.name == run))
        ).one_or_none()
        if row is None:
            raise UnknownRun(run)
        jobs = (
            await conn.execute(
                sa.select(rejudges)
                .where(j.run_id == row.id, j.completed_at.is_not(None))
                .order_by(j.completed_at)
            )
        ).all()
        history = (
            await conn.execute(
                sa.select(verdicts.c.computed_at, verdicts.c.verdict)
                .where(verdicts.c.run_id == row.id)
                .order_by(verdicts.c.computed_at, verdicts.c.id)
            )
        ).all()
    first = jobs[0].previous_compare if jobs else (row.config or {}).get("compare") or {}
    eras = [ConfigEra(None, first, None, [])]
    eras += [ConfigEra(int(job.id), job.compare, job.completed_at, []) for job in jobs]
    for at, verdict in history:
        era = eras[0]
        for e in eras[1:]:
            if e.since is not None and e.since <= at:
                era = e
        era.verdicts.append((at, verdict))
    return eras
