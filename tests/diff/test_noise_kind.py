"""Issue 8 item 1: run-level noise is keyed by (endpoint, field, kind of difference).

The primary and the secondary disagree on ``$.ts`` by value in every exchange: ``$.ts`` is
noise for value differences. A canary whose ``$.ts`` differs by value passes; a canary that
drops ``$.ts``, sends ``null`` or a number there, or adds a field, fails the strict check,
naming the field: a noisy value never excuses a type change, a missing or an extra field.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import assess_run
from diff.worker import judge_pending
from graygate.values import Verdict
from tests.diff.judgeseed import ORDERS, Ex, add, new_run, order, rulebook

BOOK = rulebook()


def _ts(i: int, side: str) -> dict[str, Any]:
    return order(i, ts=f"2026-01-01T00:00:{i % 60:02d}.{side}")


def _without_ts(i: int) -> dict[str, Any]:
    doc = _ts(i, "c")
    del doc["ts"]
    return doc


CANARIES: dict[str, Any] = {
    "value": lambda i: _ts(i, "c"),
    "missing": _without_ts,
    "null": lambda i: {**_ts(i, "c"), "ts": None},
    "number": lambda i: {**_ts(i, "c"), "ts": 1_700_000_000 + i},
    "extra": lambda i: {**_ts(i, "c"), "debug": True},
}


@pytest.mark.parametrize("canary", sorted(CANARIES))
async def test_noisy_value_excuses_only_value_differences(
    engine: AsyncEngine, run_name: str, canary: str
) -> None:
    make = CANARIES[canary]
    run_id = await new_run(engine, run_name)
    exchanges = [Ex(_ts(i, "p"), canary=make(i), secondary=_ts(i, "s")) for i in range(40)]
    # Without a secondary the workers judge a $.ts value difference strict; the run-level
    # noise (value differences of $.ts) leaves these out.
    exchanges += [Ex(_ts(i, "p"), canary=make(i)) for i in range(40, 50)]
    await add(engine, run_id, exchanges)
    await judge_pending(engine, run_name, BOOK)

    result = (await assess_run(engine, run_name, record=False)).verdict
    strict = next(c for c in result.checks if c.name == "strict")
    noise = [(n["field"], n["kind"]) for n in result.extra["noise"]]
    assert noise == [("$.ts", "value")]
    if canary == "value":
        assert result.verdict == Verdict.GO, result.checks
        assert strict.passed is True
    else:
        assert result.verdict == Verdict.NO_GO, result.checks
        assert strict.passed is False
        assert ORDERS in strict.detail
        assert ("$.debug" if canary == "extra" else "$.ts") in strict.detail
        assert "50/50 pairs" in strict.detail  # every pair counted, none excused as noise


async def test_report_lists_agree_with_the_verdict_by_kind(
    engine: AsyncEngine, run_name: str
) -> None:
    """The report's field table is keyed by kind too: a type change in a field noisy by
    value is among the fields the canary got wrong, as the verdict's strict check says,
    not folded into the noise list with the value differences."""
    from diff.report_model import build_report

    run_id = await new_run(engine, run_name)
    exchanges = [
        Ex(_ts(i, "p"), canary=(_ts(i, "c") if i < 30 else CANARIES["number"](i)),
           secondary=_ts(i, "s"))
        for i in range(40)
    ]  # fmt: skip
    await add(engine, run_id, exchanges)
    await judge_pending(engine, run_name, BOOK)

    report = await build_report(engine, run_name)
    strict = next(c for c in report.verdict.checks if c.name == "strict")
    assert report.verdict.verdict == Verdict.NO_GO and "$.ts" in strict.detail
    wrong = {(f.field, f.kind, f.judgement): f.exchanges for f in report.fields}
    noise = {(f.field, f.kind): f.exchanges for f in report.noise}
    assert wrong == {("$.ts", "type", "strict"): 10}
    assert noise == {("$.ts", "value"): 30}
