"""The diff workers' SQL: claim unjudged exchanges, store what was made of them.

A worker does, in ONE transaction::

    async with engine.begin() as conn:
        batch = await claim_batch(conn, run_id, 200)     # FOR UPDATE SKIP LOCKED
        judgements = [...]                                # pure compare(), no I/O
        await store_judgements(conn, judgements)          # differences + outcomes

Claimed rows stay locked until the transaction ends, so concurrent workers (in any process,
on any host) skip them and each exchange is judged exactly once. A worker that dies before
committing loses nothing: its transaction rolls back, the locks go, and the exchanges are
still unjudged (``judged_at IS NULL``) for the next claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from graygate.values import Answer
from graygate.vocabulary import DiffKind, Role
from store.tables import ROLES, exchanges

__all__ = [
    "CLAIM_COLUMNS",
    "DIFFERENCE_COLUMNS",
    "ClaimedExchange",
    "ExchangeJudgement",
    "StoredDifference",
    "claim_batch",
    "claimed",
    "count_unjudged",
    "store_judgements",
]

# The columns of a stored difference, in the order of the bulk insert below.
DIFFERENCE_COLUMNS: Final[tuple[str, ...]] = (
    "exchange_id",
    "run_id",
    "endpoint",
    "against",
    "path",
    "field",
    "kind",
    "primary_value",
    "other_value",
    "judgement",
    "rule",
)

# An absent side of a missing/extra difference is stored as SQL NULL.
_ABSENT_PRIMARY_KINDS = frozenset({DiffKind.EXTRA})
_ABSENT_OTHER_KINDS = frozenset({DiffKind.MISSING})


@dataclass(frozen=True, slots=True)
class ClaimedExchange:
    id: int
    run_id: int
    endpoint: str
    served_by: str
    mirror_skipped: str | None
    primary: Answer
    canary: Answer
    secondary: Answer


@dataclass(frozen=True, slots=True)
class StoredDifference:
    against: str  # canary | secondary
    path: str
    field: str
    kind: str
    primary_value: Any
    other_value: Any
    judgement: str  # strict | tolerance | noise | waived
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class ExchangeJudgement:
    exchange_id: int
    run_id: int
    endpoint: str
    outcome: str  # match | differ | noise_only | skipped | error
    strict_mismatches: int = 0  # against the canary, not noise
    tolerance_violations: int = 0  # against the canary, not noise
    # Canary differences judged noise (the secondary differed at the same field); None when
    # no secondary was compared.
    noise_differences: int | None = None
    differences: Sequence[StoredDifference] = field(default_factory=tuple)


_SIDE_COLUMNS = (
    "status",
    "headers",
    "body",
    "body_truncated",
    "body_sha256",
    "latency_ms",
    "error",
)


def _side(row: Any, role: str) -> Answer:
    m = row._mapping
    return Answer(
        status=m[f"{role}_status"],
        headers=m[f"{role}_headers"] or {},
        body=m[f"{role}_body"],
        body_truncated=bool(m[f"{role}_body_truncated"]),
        body_sha256=m[f"{role}_body_sha256"],
        latency_ms=m[f"{role}_latency_ms"],
        error=m[f"{role}_error"],
    )


_CLAIM_COLUMNS = [
    exchanges.c.id,
    exchanges.c.run_id,
    exchanges.c.endpoint,
    exchanges.c.served_by,
    exchanges.c.mirror_skipped,
    *(exchanges.c[f"{role}_{col}"] for role in ROLES for col in _SIDE_COLUMNS),
]


# The columns a claim reads (``claimed`` makes a ClaimedExchange of such a row).
CLAIM_COLUMNS: Final = tuple(_CLAIM_COLUMNS)


def claimed(r: Any) -> ClaimedExchange:
    """A ClaimedExchange of a row of ``CLAIM_COLUMNS``."""
    return ClaimedExchange(
        id=r.id,
        run_id=r.run_id,
        endpoint=r.endpoint,
        served_by=r.served_by,
        mirror_skipped=r.mirror_skipped,
        primary=_side(r, Role.PRIMARY),
        canary=_side(r, Role.CANARY),
        secondary=_side(r, Role.SECONDARY),
    )


async def claim_batch(conn: AsyncConnection, run_id: int, limit: int) -> list[ClaimedExchange]:
    """Lock up to ``limit`` of the run's unjudged exchanges, oldest first, skipping those
    another transaction holds. Call inside a transaction; the locks last until it ends."""
    e = exchanges.c
    stmt = (
        sa.select(*_CLAIM_COLUMNS)
        .where(e.run_id == run_id, e.judged_at.is_(None))
        .order_by(e.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [claimed(r) for r in (await conn.execute(stmt)).all()]


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


_UPDATE = sa.text(
    """
    UPDATE exchanges AS e
       SET judged_at = now(),
           outcome = v.outcome,
           strict_mismatches = v.strict,
           tolerance_violations = v.tolerance,
           noise_differences = v.noise
      FROM unnest(CAST(:run_ids AS bigint[]), CAST(:ids AS bigint[]),
                  CAST(:outcomes AS text[]), CAST(:strict AS int[]),
                  CAST(:tolerance AS int[]), CAST(:noise AS int[]))
           AS v(run_id, id, outcome, strict, tolerance, noise)
     WHERE e.run_id = v.run_id AND e.id = v.id AND e.run_id = ANY(CAST(:runs AS bigint[]))
    """
)

_INSERT_DIFFERENCES = sa.text(
    """
    INSERT INTO differences (exchange_id, run_id, endpoint, against, path, field, kind,
                             primary_value, other_value, judgement, rule)
    SELECT exchange_id, run_id, endpoint, against, path, field, kind,
           CAST(primary_value AS jsonb), CAST(other_value AS jsonb), judgement, rule
      FROM unnest(CAST(:exchange_id AS bigint[]), CAST(:run_id AS bigint[]),
                  CAST(:endpoint AS text[]), CAST(:against AS text[]), CAST(:path AS text[]),
                  CAST(:field AS text[]), CAST(:kind AS text[]),
                  CAST(:primary_value AS text[]), CAST(:other_value AS text[]),
                  CAST(:judgement AS text[]), CAST(:rule AS text[]))
           AS v(exchange_id, run_id, endpoint, against, path, field, kind,
                primary_value, other_value, judgement, rule)
    """
)


async def store_judgements(conn: AsyncConnection, judgements: Sequence[ExchangeJudgement]) -> None:
    """Store outcomes and differences of a batch: one UPDATE and one INSERT, whatever the
    batch size. Call in the transaction that claimed the exchanges."""
    if not judgements:
        return
    await conn.execute(
        _UPDATE,
        {
            # The run ids twice: per row (the key), and as the set of runs, which lets
            # PostgreSQL open only those runs' partitions.
            "runs": sorted({j.run_id for j in judgements}),
            "run_ids": [j.run_id for j in judgements],
            "ids": [j.exchange_id for j in judgements],
            "outcomes": [j.outcome for j in judgements],
            "strict": [j.strict_mismatches for j in judgements],
            "tolerance": [j.tolerance_violations for j in judgements],
            "noise": [j.noise_differences for j in judgements],
        },
    )
    cols: dict[str, list[Any]] = {k: [] for k in DIFFERENCE_COLUMNS}
    for j in judgements:
        for d in j.differences:
            cols["exchange_id"].append(j.exchange_id)
            cols["run_id"].append(j.run_id)
            cols["endpoint"].append(j.endpoint)
            cols["against"].append(d.against)
            cols["path"].append(d.path)
            cols["field"].append(d.field)
            cols["kind"].append(d.kind)
            cols["primary_value"].append(
                None
                if d.kind in _ABSENT_PRIMARY_KINDS and d.primary_value is None
                else _json(d.primary_value)
            )
            cols["other_value"].append(
                None
                if d.kind in _ABSENT_OTHER_KINDS and d.other_value is None
                else _json(d.other_value)
            )
            cols["judgement"].append(d.judgement)
            cols["rule"].append(d.rule)
    if cols["exchange_id"]:
        await conn.execute(_INSERT_DIFFERENCES, cols)


async def count_unjudged(conn: AsyncConnection, run_id: int) -> int:
    e = exchanges.c
    n = await conn.scalar(
        sa.select(sa.func.count()).where(e.run_id == run_id, e.judged_at.is_(None))
    )
    return int(n or 0)
