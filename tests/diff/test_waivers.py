"""Waivers: matching (pure), then applied by the real evaluation over real judged exchanges
in PostgreSQL: a waiver turns a strict NO_GO into GO, revoking or expiring it returns
NO_GO, it never hides an error-rate failure, a scoped one applies to the next run, and the
configuration's waivers enter the same append-only trail as ``config``."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import evaluate_run
from diff.waiving import apply_waivers, field_matches
from diff.worker import judge_pending
from graygate.errors import UnknownRun, UnknownWaiver, WaiverConflict
from graygate.values import FieldCount, Verdict, VerdictResult
from graygate.vocabulary import WaiverSource
from store.aggregates import latest_verdicts
from store.tables import waiver_events, waivers
from store.waivers import add_waiver, list_waivers, revoke_waiver, waiver_trail
from tests.diff.judgeseed import ORDERS, Ex, add, matching, new_run, order, rulebook

BOOK = rulebook()


def check(result: VerdictResult, name: str) -> dict[str, Any]:
    (c,) = [c.as_dict() for c in result.checks if c.name == name]
    return c


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("pattern", "stored", "hit"),
    [
        ("$.created_at", "$.created_at", True),
        ("$.items[*].price", "$.items[*].price", True),
        ("$.items.*.price", "$.items[*].price", True),
        ("$..price", "$.items[*].price", True),
        ("$.meta.**", "$.meta.a.b", True),
        ("$.items[*].price", "$.items[*].qty", False),
        ("$.created_at", "$.created", False),
        ("status", "status", True),
        ("header:etag", "header:etag", True),
        ("$.status", "status", False),
    ],
)
def test_field_matches_with_the_rules_path_syntax(pattern: str, stored: str, hit: bool) -> None:
    assert field_matches(pattern, stored) is hit


class W:
    def __init__(self, id: int, endpoint: str, field: str, kind: str | None = None) -> None:
        self.id, self.endpoint, self.field, self.kind = id, endpoint, field, kind


def test_apply_waivers_only_turns_canary_failures_into_waived() -> None:
    fields = [
        FieldCount(ORDERS, "$.status", "canary", "strict", 3, 3, "value"),
        FieldCount(ORDERS, "$.status", "canary", "strict", 1, 1, "type"),
        FieldCount(ORDERS, "$.status", "secondary", "strict", 2, 2, "value"),
        FieldCount(ORDERS, "$.total", "canary", "tolerance", 4, 5, "value"),
    ]
    w = apply_waivers(fields, [W(2, "GET /api/orders/*", "$.status", "value"), W(7, "*", "$.*")])
    by = {(f.field, f.against, f.kind): f.judgement for f in w.fields}
    assert by[("$.status", "canary", "value")] == "waived"  # the first waiver by id
    assert by[("$.status", "canary", "type")] == "waived"  # the catch-all, waiver 7
    assert by[("$.status", "secondary", "value")] == "strict"  # the baseline is never waived
    assert by[("$.total", "canary", "value")] == "waived"
    assert {u.id: u.differences for u in w.uses} == {2: 3, 7: 6}
    assert w.keys == {(ORDERS, "$.status", "value"), (ORDERS, "$.status", "type"),
                      (ORDERS, "$.total", "value")}  # fmt: skip


# --------------------------------------------------------------------------- evaluated


async def planted(engine: AsyncEngine, name: str, *, errors: int = 0) -> None:
    """30 matching pairs plus 5 with a strict difference at $.status (and ``errors``
    canary timeouts), judged by the real workers."""
    run_id = await new_run(engine, name)
    exchanges = matching(30)
    exchanges += [Ex(primary=order(i), canary=order(i, status="lost")) for i in range(5)]
    exchanges += [Ex(primary=order(i), canary_error="timeout") for i in range(errors)]
    await add(engine, run_id, exchanges)
    await judge_pending(engine, name, BOOK)


async def waive_status(engine: AsyncEngine, run: str, **kw: Any) -> int:
    w = await add_waiver(
        engine,
        run,
        endpoint="GET /api/orders/{id}",
        field="$.status",
        reason="status renamed on purpose, JIRA-123",
        by="alice",
        source=WaiverSource.CLI,
        **kw,
    )
    return w.id


async def test_a_waiver_makes_go_and_revoking_it_returns_no_go(
    engine: AsyncEngine, run_name: str
) -> None:
    await planted(engine, run_name)
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.NO_GO
    wid = await waive_status(engine, run_name)

    waived = await evaluate_run(engine, run_name)
    assert waived.verdict is Verdict.GO, waived.as_dict()
    line = check(waived, "waivers")
    assert line["detail"] == "1 applied, 5 differences waived"
    assert line["observed"]["waivers"][0] | {"id": wid} == {
        "id": wid,
        "endpoint": "GET /api/orders/{id}",
        "field": "$.status",
        "kind": None,
        "source": "cli",
        "differences": 5,
        "exchanges": 5,
    }
    assert check(waived, "strict")["passed"] is True

    await revoke_waiver(engine, wid, reason="the rename was reverted", by="bob")
    again = await evaluate_run(engine, run_name)
    assert again.verdict is Verdict.NO_GO
    assert not [c for c in again.checks if c.name == "waivers"]
    history = [v.verdict for v in await latest_verdicts(engine, run_name)]
    assert history == ["NO_GO", "GO", "NO_GO"]  # the history shows why: see the checks

    trail = await waiver_trail(engine, [wid])
    assert [(e.action, e.by, e.reason) for e in trail] == [
        ("add", "alice", "status renamed on purpose, JIRA-123"),
        ("revoke", "bob", "the rename was reverted"),
    ]
    assert trail[0].waiver["field"] == "$.status"
    with pytest.raises(WaiverConflict, match="already revoked by bob"):
        await revoke_waiver(engine, wid, reason="twice", by="carol")
    assert [w.state for w in await list_waivers(engine, run_name, include_inactive=True)] == [
        "revoked"
    ]
    assert await list_waivers(engine, run_name) == []


async def test_an_expired_waiver_stops_applying(engine: AsyncEngine, run_name: str) -> None:
    await planted(engine, run_name)
    wid = await waive_status(engine, run_name, expires_in_s=14 * 86_400)
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.GO
    async with engine.begin() as conn:  # fourteen days pass
        await conn.execute(
            sa.update(waivers)
            .where(waivers.c.id == wid)
            .values(expires_at=sa.func.now() - sa.text("interval '1 second'"))
        )
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.NO_GO
    (row,) = await list_waivers(engine, run_name, include_inactive=True)
    assert row.state == "expired"


async def test_a_waiver_never_hides_an_error_rate_failure(
    engine: AsyncEngine, run_name: str
) -> None:
    await planted(engine, run_name, errors=3)
    await waive_status(engine, run_name)
    await add_waiver(
        engine,
        run_name,
        endpoint="*",
        field="$.**",
        reason="waive everything",
        by="mallory",
        source=WaiverSource.CLI,
    )
    result = await evaluate_run(engine, run_name)
    assert result.verdict is Verdict.NO_GO
    assert check(result, "errors")["passed"] is False
    assert check(result, "strict")["passed"] is True


async def test_a_scoped_waiver_applies_to_the_next_run_only_when_its_name_matches(
    engine: AsyncEngine,
) -> None:
    base = f"order-service-{uuid.uuid4().hex[:8]}"
    first, second, other = f"{base}-v2", f"{base}-v3", f"billing-{uuid.uuid4().hex[:8]}"
    for name in (first, second, other):
        await planted(engine, name)
    await waive_status(engine, first, scope=f"{base}-*")
    assert (await evaluate_run(engine, second)).verdict is Verdict.GO
    assert (await evaluate_run(engine, other)).verdict is Verdict.NO_GO
    assert [w.scope for w in await list_waivers(engine, second)] == [f"{base}-*"]


async def test_kind_narrows_a_waiver(engine: AsyncEngine, run_name: str) -> None:
    await planted(engine, run_name)
    await waive_status(engine, run_name, kind="type")  # the planted difference is a value
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.NO_GO


async def test_config_waivers_enter_the_trail_as_config(engine: AsyncEngine, run_name: str) -> None:
    spec = {
        "endpoint": ORDERS,
        "field": "$.status",
        "reason": "accepted in review",
        "owner": "team-orders",
    }
    await new_run(engine, run_name, extra={"waivers": [spec]})
    run_id = await new_run(engine, run_name, extra={"waivers": [spec]})  # a second process
    exchanges = [
        *matching(30),
        *(Ex(primary=order(i), canary=order(i, status="x")) for i in range(4)),
    ]
    await add(engine, run_id, exchanges)
    await judge_pending(engine, run_name, BOOK)
    result = await evaluate_run(engine, run_name)
    assert result.verdict is Verdict.GO
    assert check(result, "waivers")["observed"]["waivers"][0]["source"] == "config"
    (w,) = await list_waivers(engine, run_name)
    assert (w.source, w.created_by) == ("config", "team-orders")

    await new_run(engine, run_name)  # the waiver was removed from the configuration
    assert (await evaluate_run(engine, run_name)).verdict is Verdict.NO_GO
    trail = await waiver_trail(engine, [w.id])
    assert [(e.action, e.by) for e in trail] == [("add", "config"), ("revoke", "config")]


async def test_bad_input_is_named(engine: AsyncEngine, run_name: str) -> None:
    await new_run(engine, run_name)
    with pytest.raises(UnknownRun):
        await waive_status(engine, run_name + "-nope")
    with pytest.raises(ValueError, match="expires must be between"):
        await waive_status(engine, run_name, expires_in_s=10 * 366 * 86_400 + 1)
    assert await waive_status(engine, run_name, expires_in_s=10 * 366 * 86_400) > 0
    with pytest.raises(ValueError, match="reason is longer than 2000"):
        await add_waiver(
            engine, run_name, endpoint="*", field="$.a", reason="x" * 2_001, by="a",
            source=WaiverSource.CLI,
        )  # fmt: skip
    with pytest.raises(UnknownWaiver):
        await revoke_waiver(engine, 2**62, reason="none", by="a")


async def test_the_trail_is_append_only_in_use(engine: AsyncEngine, run_name: str) -> None:
    """Nothing graygate does updates or deletes a trail row: ids only grow, rows stay."""
    await planted(engine, run_name)
    wid = await waive_status(engine, run_name)
    async with engine.connect() as conn:
        before = (await conn.execute(sa.select(waiver_events).order_by(waiver_events.c.id))).all()
    await revoke_waiver(engine, wid, reason="done", by="bob")
    async with engine.connect() as conn:
        after = (await conn.execute(sa.select(waiver_events).order_by(waiver_events.c.id))).all()
    assert after[: len(before)] == before and len(after) == len(before) + 1


async def test_the_report_lists_the_waived_field(engine: AsyncEngine, run_name: str) -> None:
    from diff.report_model import build_report

    await planted(engine, run_name)
    assert [f.field for f in (await build_report(engine, run_name)).fields] == ["$.status"]
    await waive_status(engine, run_name)
    report = await build_report(engine, run_name)
    assert report.verdict.verdict is Verdict.GO
    assert [(f.field, f.judgement, f.exchanges) for f in report.waived] == [
        ("$.status", "waived", 5)
    ]
    assert report.fields == []
    assert check(report.verdict, "waivers")["detail"] == "1 applied, 5 differences waived"
