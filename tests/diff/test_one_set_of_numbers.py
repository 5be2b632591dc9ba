"""The verdict, the report and the admin API show one set of numbers for a run.

One run with everything that made them disagree: a noise field (the secondary differs
there too) that the workers judged strict where no secondary was asked, a waived
difference, 5xx answers on both sides and canary transport errors. The verdict's checks,
the report's endpoint rows and ``GET /api/v1/runs/{run}/endpoints`` must give the same
counts, and none of them may count noise or waived differences as strict mismatches.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import aiohttp
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.report_model import build_report
from diff.worker import judge_pending
from graygate.values import EndpointStats, VerdictResult
from store.tables import differences
from tests.diff.judgeseed import ITEMS, ORDERS, Ex, add, matching, new_run, order, rulebook
from tests.diff.reportseed import serve_admin

BOOK = rulebook()


def _ts(i: int, side: str) -> dict[str, Any]:
    return order(i, ts=f"2026-01-01T00:00:{i % 60:02d}.{side}")


def _exchanges() -> list[Ex]:
    out: list[Ex] = []
    # 40 pairs where $.ts differs on the canary and on the secondary: noise.
    out += [Ex(_ts(i, "p"), canary=_ts(i, "c"), secondary=_ts(i, "s")) for i in range(40)]
    # 10 pairs without a secondary where $.ts differs: the worker says strict; the
    # evaluation finds $.ts to be noise and leaves them out.
    out += [Ex(_ts(i, "p"), canary=_ts(i, "c")) for i in range(40, 50)]
    # 2 pairs with a wrong $.status (one gets waived below).
    out += [Ex(_ts(i, "p"), canary={**_ts(i, "c"), "status": "lost"}) for i in range(50, 52)]
    # 3 canary 5xx, 1 primary 5xx (pairs: the status differs), 2 canary transport errors.
    out += [Ex(_ts(i, "p"), canary=_ts(i, "c"), canary_status=500) for i in range(52, 55)]
    out += [Ex(_ts(55, "p"), canary=_ts(55, "c"), primary_status=503)]
    out += [Ex(_ts(i, "p"), canary_error="reset") for i in range(56, 58)]
    out += matching(10, endpoint=ITEMS)
    return out


def _check(result: VerdictResult, name: str) -> Any:
    return next(c for c in result.checks if c.name == name)


async def test_verdict_report_and_api_agree(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    await add(engine, run_id, _exchanges())
    await judge_pending(engine, run_name, BOOK)
    async with engine.begin() as conn:  # accept one of the two $.status differences
        first = (
            sa.select(sa.func.min(differences.c.id))
            .where(differences.c.run_id == run_id, differences.c.field == "$.status")
            .scalar_subquery()
        )
        await conn.execute(
            sa.update(differences).where(differences.c.id == first).values(judgement="waived")
        )

    report = await build_report(engine, run_name)
    rows = {e.endpoint: e for e in report.endpoints}
    async with serve_admin(engine) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/v1/runs/{run_name}/endpoints") as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
    api = {e["endpoint"]: e for e in body["endpoints"]}

    # The API's rows are the report's rows, number for number.
    assert api == {k: asdict(v) for k, v in rows.items()}
    assert [(n["endpoint"], n["field"]) for n in body["noise_fields"]] == [(ORDERS, "$.ts")]

    orders: EndpointStats = rows[ORDERS]
    # Noise ($.ts) and the waived $.status are not strict mismatches: the 4 status
    # differences (5xx on either side) and the one unwaived $.status are.
    assert (orders.pairs, orders.error) == (56, 2)
    assert orders.strict_mismatches == 5
    # $.ts of every pair whose bodies were compared (a status difference stops the body
    # comparison): 40 judged noise by the workers, 12 strict ones in the noise field.
    assert orders.noise == 52
    # Errors as the verdict counts them: 5xx and transport errors of both-sides-asked exchanges.
    assert (orders.canary_errors, orders.primary_errors) == (5, 1)
    assert (rows[ITEMS].strict_mismatches, rows[ITEMS].canary_errors) == (0, 0)

    # The verdict's checks say the same numbers.
    verdict = report.verdict
    strict = _check(verdict, "strict")
    assert strict.passed is False
    m = re.search(re.escape(ORDERS) + r": (\d+)/(\d+) pairs", strict.detail)
    assert m is not None, strict.detail
    assert (int(m[1]), int(m[2])) == (orders.strict_mismatches, orders.pairs)
    assert "$.ts" not in strict.detail
    errors = _check(verdict, "errors")
    # Errors are judged per endpoint: each failing endpoint is named with its counts.
    found = re.findall(r"in (\S+ \S+) canary (\d+)/(\d+) vs primary (\d+)/(\d+)", errors.detail)
    assert found, errors.detail
    for endpoint, canary_failed, pairs, primary_failed, _ in found:
        assert int(canary_failed) == rows[endpoint].canary_errors
        assert int(primary_failed) == rows[endpoint].primary_errors
        assert int(pairs) == rows[endpoint].exchanges - rows[endpoint].skipped  # attempted
    assert sum(r.canary_errors for r in rows.values()) == 5
    assert sum(r.primary_errors for r in rows.values()) == 1
    assert verdict.extra["summary"]["pairs"] == sum(r.pairs for r in rows.values())
