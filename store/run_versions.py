"""The versions the answers named (``versions.header``): tallied by the recorder, stored in
``run_versions``, read back by the report, the API and ``graygate runs list``.

The first version seen of a side becomes ``runs.<side>_version`` when the run has none
(from the configuration or ``GRAYGATE_VERSIONS_*``); a side seen with more than one version
changed during the run, which the readers show as ``canary version changed: 2.0.0-rc1 ->
2.0.0-rc2``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from graygate.vocabulary import Role
from store.tables import run_versions, runs

__all__ = [
    "MAX_VERSION_CHARS",
    "SeenVersion",
    "VersionKey",
    "VersionSeen",
    "add_versions",
    "version_changes",
    "versions_seen",
]

# (run id, role, version)
VersionKey = tuple[int, str, str]

# At most this many characters of a version are kept (a header is the upstream's to fill).
MAX_VERSION_CHARS = 200


@dataclass(slots=True)
class VersionSeen:
    """How many exchanges named one version, and when first and last."""

    exchanges: int
    first: datetime
    last: datetime

    def add(self, other: VersionSeen) -> None:
        self.exchanges += other.exchanges
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)


@dataclass(frozen=True, slots=True)
class SeenVersion:
    """One version of one side of a run, as stored."""

    role: str
    version: str
    exchanges: int
    first_seen_at: datetime
    last_seen_at: datetime


async def add_versions(engine: AsyncEngine, seen: Mapping[VersionKey, VersionSeen]) -> None:
    """Add a tally to ``run_versions`` (an upsert increment, safe from many processes),
    and fill the runs' versions that are still unknown with the first seen."""
    if not seen:
        return
    rows = [
        {
            "run_id": run_id,
            "role": role,
            "version": version,
            "exchanges": s.exchanges,
            "first_seen_at": s.first,
            "last_seen_at": s.last,
        }
        # Sorted: concurrent writers lock the same rows in the same order (no deadlock).
        for (run_id, role, version), s in sorted(seen.items(), key=lambda kv: kv[0])
    ]
    stmt = pg_insert(run_versions)
    v = run_versions.c
    upsert = stmt.on_conflict_do_update(
        index_elements=[v.run_id, v.role, v.version],
        set_={
            "exchanges": v.exchanges + stmt.excluded.exchanges,
            "first_seen_at": sa.func.least(v.first_seen_at, stmt.excluded.first_seen_at),
            "last_seen_at": sa.func.greatest(v.last_seen_at, stmt.excluded.last_seen_at),
        },
    )
    async with engine.begin() as conn:
        await conn.execute(upsert, rows)
        for role in (Role.PRIMARY, Role.CANARY):
            column = runs.c[f"{role}_version"]
            first = (
                sa.select(v.version)
                .where(v.run_id == runs.c.id, v.role == role.value)
                .order_by(v.first_seen_at, v.version)
                .limit(1)
                .scalar_subquery()
            )
            ids = sorted({run_id for run_id, r, _ in seen if r == role.value})
            if ids:
                await conn.execute(
                    sa.update(runs)
                    .where(runs.c.id.in_(ids), column.is_(None))
                    .values({column: first})
                )


async def versions_seen(
    conn: AsyncConnection, run_ids: Collection[int]
) -> dict[int, list[SeenVersion]]:
    """The runs' versions by side, each side's in the order they were first seen."""
    if not run_ids:
        return {}
    v = run_versions.c
    rows = await conn.execute(
        sa.select(run_versions)
        .where(v.run_id.in_(sorted(run_ids)))
        .order_by(v.run_id, v.role, v.first_seen_at, v.version)
    )
    out: dict[int, list[SeenVersion]] = {}
    for r in rows:
        out.setdefault(int(r.run_id), []).append(
            SeenVersion(
                role=r.role,
                version=r.version,
                exchanges=int(r.exchanges),
                first_seen_at=r.first_seen_at,
                last_seen_at=r.last_seen_at,
            )
        )
    return out


def version_changes(seen: Sequence[SeenVersion]) -> tuple[str, ...]:
    """One line per side that answered with more than one version, in the order first
    seen: ``canary version changed: 2.0.0-rc1 -> 2.0.0-rc2 (10 then 15 exchanges)``."""
    by_role: dict[str, list[SeenVersion]] = {}
    for s in seen:
        by_role.setdefault(s.role, []).append(s)
    order = {r.value: i for i, r in enumerate(Role)}
    lines = []
    for role in sorted(by_role, key=lambda r: (order.get(r, len(order)), r)):
        versions = by_role[role]
        if len(versions) > 1:
            chain = " -> ".join(s.version for s in versions)
            counts = " then ".join(str(s.exchanges) for s in versions)
            lines.append(f"{role} version changed: {chain} ({counts} exchanges)")
    return tuple(lines)
