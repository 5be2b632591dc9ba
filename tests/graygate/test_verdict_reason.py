"""``graygate verdict --json`` and the admin gate's JSON give the same ``reason`` for one
run: the real CLI as a subprocess, the real admin application on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from graygate.values import Check, Verdict, VerdictResult
from tests.diff.reportseed import Seeded, seed_go, seed_inconclusive, seed_no_go, serve_admin
from tests.graygate.test_waiver_cli import graygate


@pytest.mark.parametrize(
    ("seed", "verdict", "code"),
    [(seed_no_go, "NO_GO", 1), (seed_go, "GO", 0), (seed_inconclusive, "INCONCLUSIVE", 2)],
)
async def test_verdict_json_carries_the_gates_reason(
    engine: AsyncEngine,
    database_url: str,
    seed: Callable[[AsyncEngine, str], Awaitable[Seeded]],
    verdict: str,
    code: int,
) -> None:
    seeded = await seed(engine, f"reason-{verdict.lower()}-{uuid.uuid4().hex[:8]}")
    async with serve_admin(engine) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/v1/runs/{seeded.run}/gate?always_200=true") as resp:
            assert resp.status == 200
            gate = await resp.json()
    exit_code, out, err = await graygate(
        "verdict", seeded.run, "--json", "--database-url", database_url
    )
    assert exit_code == code, err
    cli = orjson.loads(out)
    assert gate["verdict"] == cli["verdict"] == verdict
    assert cli["reason"] == gate["reason"]
    assert cli["reason"]  # one line, never empty
    if verdict == "GO":
        assert cli["reason"] == "every check passed"
    else:
        assert cli["reason"] != "every check passed"
        assert "\n" not in cli["reason"]


def test_reason_names_failed_checks_first_then_undecided_ones() -> None:
    failed = Check("strict", False, 0.2, 0.0, "4/14 pairs differ at $.total")
    undecided = Check("latency", None, None, None, "too few samples")
    passed = Check("evidence", True, 20, 10)
    result = VerdictResult("r", Verdict.NO_GO, (passed, failed, undecided))
    assert result.reason == "strict: 4/14 pairs differ at $.total"
    waiting = VerdictResult("r", Verdict.INCONCLUSIVE, (passed, undecided))
    assert waiting.reason == "latency: too few samples"
    bare = VerdictResult("r", Verdict.INCONCLUSIVE, (Check("runtime", None, None, None),))
    assert bare.reason == "runtime"
    assert VerdictResult("r", Verdict.NO_GO, ()).reason == "NO_GO"
    assert VerdictResult("r", Verdict.GO, (passed,)).reason == "every check passed"
