"""Waivers and their append-only audit trail (``waivers``, ``waiver_events``).

Every change to a waiver and its trail entry are written in one transaction; the trail is
only ever appended to. Expiry is the database's clock (``now()``): a waiver past
``expires_at`` stops applying at the next evaluation with nothing written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from graygate.errors import UnknownRun, UnknownWaiver, WaiverConflict
from graygate.vocabulary import WaiverAction, WaiverSource
from store.failures import store_errors
from store.tables import runs, waiver_events, waivers

__all__ = [
    "MAX_TEXT",
    "WaiverEvent",
    "WaiverRow",
    "add_waiver",
    "applicable_waivers",
    "list_waivers",
    "revoke_waiver",
    "sync_config_waivers",
    "waiver_trail",
]

logger = logging.getLogger(__name__)

# The longest reason, name, pattern or field a waiver keeps.
MAX_TEXT = 2_000


@dataclass(frozen=True, slots=True)
class WaiverRow:
    id: int
    run: str  # the run it was added to
    scope: str | None
    endpoint: str
    field: str
    kind: str | None
    reason: str
    source: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None
    state: str  # active | expired | revoked

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run": self.run,
            "scope": self.scope,
            "endpoint": self.endpoint,
            "field": self.field,
            "kind": self.kind,
            "reason": self.reason,
            "source": self.source,
            "by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "revoked_by": self.revoked_by,
            "revoke_reason": self.revoke_reason,
            "state": self.state,
        }


@dataclass(frozen=True, slots=True)
class WaiverEvent:
    id: int
    waiver_id: int
    at: datetime
    action: str
    by: str
    reason: str
    waiver: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "waiver_id": self.waiver_id,
            "at": self.at.isoformat(),
            "action": self.action,
            "by": self.by,
            "reason": self.reason,
            "waiver": dict(self.waiver),
        }


def _state() -> sa.ColumnElement[str]:
    w = waivers.c
    return sa.case(
        (w.revoked_at.is_not(None), sa.literal("revoked")),
        (sa.and_(w.expires_at.is_not(None), w.expires_at <= sa.func.now()), sa.literal("expired")),
        else_=sa.literal("active"),
    )


def _select() -> sa.Select[Any]:
    return sa.select(*waivers.c, _state().label("state"))


def _row(r: Any) -> WaiverRow:
    return WaiverRow(
        id=int(r.id),
        run=r.run_name,
        scope=r.scope,
        endpoint=r.endpoint,
        field=r.field,
        kind=r.kind,
        reason=r.reason,
        source=r.source,
        created_by=r.created_by,
        created_at=r.created_at,
        expires_at=r.expires_at,
        revoked_at=r.revoked_at,
        revoked_by=r.revoked_by,
        revoke_reason=r.revoke_reason,
        state=r.state,
    )


def _what(row: WaiverRow) -> dict[str, Any]:
    return {
        "run": row.run,
        "scope": row.scope,
        "endpoint": row.endpoint,
        "field": row.field,
        "kind": row.kind,
        "source": row.source,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
    }


def _bounded(name: str, value: str | None, *, required: bool = True) -> None:
    if value is None or value == "":
        if required:
            raise ValueError(f"{name} is required")
        return
    if len(value) > MAX_TEXT:
        raise ValueError(f"{name} is longer than {MAX_TEXT} characters ({len(value)})")
    if "\x00" in value:
        raise ValueError(f"{name} holds NUL")


async def _event(
    conn: AsyncConnection, row: WaiverRow, action: WaiverAction, by: str, reason: str
) -> None:
    await conn.execute(
        sa.insert(waiver_events).values(
            waiver_id=row.id, action=action.value, by=by, reason=reason, waiver=_what(row)
        )
    )


async def _insert(
    conn: AsyncConnection,
    *,
    run_id: int | None,
    run_name: str,
    endpoint: str,
    field: str,
    kind: str | None,
    reason: str,
    by: str,
    source: WaiverSource,
    scope: str | None,
    expires_in_s: float | None,
    event_by: str | None = None,
) -> WaiverRow:
    expires = (
        None
        if expires_in_s is None
        else sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, expires_in_s)
    )
    new_id = (
        await conn.execute(
            sa.insert(waivers)
            .values(
                run_id=run_id,
                run_name=run_name,
                scope=scope,
                endpoint=endpoint,
                field=field,
                kind=kind,
                reason=reason,
                source=source.value,
                created_by=by,
                expires_at=expires,
            )
            .returning(waivers.c.id)
        )
    ).scalar_one()
    row = _row((await conn.execute(_select().where(waivers.c.id == new_id))).one())
    await _event(conn, row, WaiverAction.ADD, event_by or by, reason)
    return row


async def add_waiver(
    engine: AsyncEngine,
    run: str,
    *,
    endpoint: str,
    field: str,
    reason: str,
    by: str,
    source: WaiverSource,
    kind: str | None = None,
    scope: str | None = None,
    expires_in_s: float | None = None,
) -> WaiverRow:
    """Add a waiver to run ``run`` (and, with ``scope``, to every run whose name matches
    it) and its ``add`` entry to the trail. ValueError names a bad argument; UnknownRun
    when there is no such run."""
    for name, value, required in (
        ("endpoint", endpoint, True),
        ("field", field, True),
        ("reason", reason, True),
        ("by", by, True),
        ("scope", scope, False),
    ):
        _bounded(name, value, required=required)
    if expires_in_s is not None and not 0 < expires_in_s <= 10 * 366 * 86_400:
        raise ValueError(f"expires must be between 1 second and 10 years, got {expires_in_s:g} s")
    async with store_errors(engine), engine.begin() as conn:
        run_id = await conn.scalar(sa.select(runs.c.id).where(runs.c.name == run))
        if run_id is None:
            raise UnknownRun(run)
        row = await _insert(
            conn,
            run_id=int(run_id),
            run_name=run,
            endpoint=endpoint,
            field=field,
            kind=kind,
            reason=reason,
            by=by,
            source=source,
            scope=scope,
            expires_in_s=expires_in_s,
        )
    logger.info("waiver %d added to run %s by %s: %s %s", row.id, run, by, endpoint, field)
    return row


async def revoke_waiver(engine: AsyncEngine, waiver_id: int, *, reason: str, by: str) -> WaiverRow:
    """Revoke waiver ``waiver_id`` and append the ``revoke`` entry. UnknownWaiver when
    there is none; WaiverConflict when it is already revoked."""
    _bounded("reason", reason)
    _bounded("by", by)
    w = waivers.c
    async with store_errors(engine), engine.begin() as conn:
        current = (
            await conn.execute(_select().where(w.id == waiver_id).with_for_update())
        ).one_or_none()
        if current is None:
            raise UnknownWaiver(waiver_id)
        if current.revoked_at is not None:
            raise WaiverConflict(
                f"waiver {waiver_id} was already revoked by {current.revoked_by} "
                f"at {current.revoked_at.isoformat()}"
            )
        await conn.execute(
            sa.update(waivers)
            .where(w.id == waiver_id)
            .values(revoked_at=sa.func.now(), revoked_by=by, revoke_reason=reason)
        )
        row = _row((await conn.execute(_select().where(w.id == waiver_id))).one())
        await _event(conn, row, WaiverAction.REVOKE, by, reason)
    logger.info("waiver %d revoked by %s", waiver_id, by)
    return row


def _applies(row: WaiverRow, run_id: int | None, row_run_id: int | None, name: str) -> bool:
    if row.scope is not None:
        return fnmatchcase(name, row.scope)
    return row_run_id is not None and row_run_id == run_id


async def _rows_for(
    conn: AsyncConnection, run_id: int, name: str, *, active: bool
) -> list[WaiverRow]:
    w = waivers.c
    stmt = _select().add_columns(w.run_id.label("row_run_id"))
    stmt = stmt.where(sa.or_(w.run_id == run_id, w.scope.is_not(None)))
    if active:
        stmt = stmt.where(
            w.revoked_at.is_(None), sa.or_(w.expires_at.is_(None), w.expires_at > sa.func.now())
        )
    rows = (await conn.execute(stmt.order_by(w.id))).all()
    return [_row(r) for r in rows if _applies(_row(r), run_id, r.row_run_id, name)]


async def applicable_waivers(conn: AsyncConnection, run_id: int, name: str) -> list[WaiverRow]:
    """The waivers that apply to run ``name`` now (not revoked, not expired): its own and
    the scoped ones whose glob matches its name, by id. Read inside the evaluation's
    snapshot, so ``now()`` is the evaluation's."""
    return await _rows_for(conn, run_id, name, active=True)


async def list_waivers(
    engine: AsyncEngine, run: str | None = None, *, include_inactive: bool = False
) -> list[WaiverRow]:
    """The waivers of run ``run`` (its own and the scoped ones that match it), or of every
    run; active ones only unless ``include_inactive``. UnknownRun for an unknown run."""
    w = waivers.c
    async with store_errors(engine), engine.connect() as conn:
        if run is not None:
            run_id = await conn.scalar(sa.select(runs.c.id).where(runs.c.name == run))
            if run_id is None:
                raise UnknownRun(run)
            found = await _rows_for(conn, int(run_id), run, active=False)
        else:
            found = [_row(r) for r in (await conn.execute(_select().order_by(w.id))).all()]
    return [r for r in found if include_inactive or r.state == "active"]


async def waiver_trail(
    engine: AsyncEngine, waiver_ids: Sequence[int] | None = None
) -> list[WaiverEvent]:
    """The audit trail, oldest first; of the given waivers only when ``waiver_ids``."""
    e = waiver_events.c
    stmt = sa.select(waiver_events).order_by(e.id)
    if waiver_ids is not None:
        stmt = stmt.where(e.waiver_id.in_(list(waiver_ids)))
    async with store_errors(engine), engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        WaiverEvent(int(r.id), int(r.waiver_id), r.at, r.action, r.by, r.reason, r.waiver)
        for r in rows
    ]


_CONFIG_BY = "config"


async def sync_config_waivers(
    conn: AsyncConnection, run_id: int, run_name: str, specs: Sequence[Mapping[str, Any]]
) -> None:
    """Make the run's ``source=config`` waivers the configuration's ``waivers:`` list
    (``WaiverSpec`` dumps): new ones are added, ones no longer listed are revoked, each with
    its trail entry by ``config`` (the owner is recorded as the waiver's ``created_by``).
    Called in the transaction that stores the run's configuration, which holds the run's
    row lock, so processes starting the same run at once do not add a waiver twice."""
    w = waivers.c
    rows = (
        await conn.execute(
            _select().where(
                w.run_id == run_id, w.source == WaiverSource.CONFIG.value, w.revoked_at.is_(None)
            )
        )
    ).all()
    existing = {
        (r.endpoint, r.field, r.kind, r.scope, r.created_by, r.reason): _row(r) for r in rows
    }
    wanted = {
        (s["endpoint"], s["field"], s.get("kind"), s.get("scope"), s["owner"], s["reason"])
        for s in specs
    }
    for key in sorted(wanted - existing.keys(), key=repr):
        endpoint, field, kind, scope, owner, reason = key
        await _insert(
            conn,
            run_id=run_id,
            run_name=run_name,
            endpoint=endpoint,
            field=field,
            kind=kind,
            reason=reason,
            by=owner,
            source=WaiverSource.CONFIG,
            scope=scope,
            expires_in_s=None,
            event_by=_CONFIG_BY,
        )
    for key in sorted(existing.keys() - wanted, key=repr):
        row = existing[key]
        reason = "removed from the configuration"
        await conn.execute(
            sa.update(waivers)
            .where(w.id == row.id)
            .values(revoked_at=sa.func.now(), revoked_by=_CONFIG_BY, revoke_reason=reason)
        )
        await _event(conn, row, WaiverAction.REVOKE, _CONFIG_BY, reason)
