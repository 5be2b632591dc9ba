"""The demo reads the failed preflight checks from the store, where ``serve`` put them."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from graygate.demo import _preflight_failures
from store.runs import ensure_run
from store.runtime_samples import Finding, insert_findings


async def test_demo_lists_the_stored_failed_preflight_checks(
    engine: AsyncEngine, database_url: str
) -> None:
    run = f"run-{uuid.uuid4().hex[:10]}"
    run_id = await ensure_run(engine, run, primary_url="http://127.0.0.1:8081", canary_url=None)
    await insert_findings(
        engine,
        run_id,
        [
            Finding("canary.health", True, "GET -> 200"),
            Finding("canary.pprof_exposed", False, "the canary serves /debug/pprof/"),
        ],
    )
    got = await _preflight_failures(database_url, run)
    assert got == [("canary.pprof_exposed", "the canary serves /debug/pprof/")]


async def test_demo_without_readable_findings_lists_none(database_url: str) -> None:
    assert await _preflight_failures(database_url, "no-such-run") == []
