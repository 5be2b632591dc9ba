"""The versions a run compares: from the configuration or GRAYGATE_VERSIONS_*, recorded on
the run by the real store, shown by the real admin API and `graygate runs list`."""

from __future__ import annotations

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from config.load import config_from_mapping
from store.lifecycle import list_run_details
from store.runs import ensure_run
from tests.diff.reportseed import serve_admin

UPSTREAMS = {"primary": "http://127.0.0.1:8081", "canary": "http://127.0.0.1:8082"}


async def test_versions_from_config_and_environment(engine: AsyncEngine, run_name: str) -> None:
    cfg = config_from_mapping(
        {"run": run_name, "upstreams": UPSTREAMS, "versions": {"primary": 1.14}},
        env={"GRAYGATE_VERSIONS_CANARY": "2.0.0-rc1"},
    )
    assert (cfg.versions.primary, cfg.versions.canary) == ("1.14", "2.0.0-rc1")
    await ensure_run(
        engine,
        run_name,
        primary_url="http://127.0.0.1:8081",
        canary_url="http://127.0.0.1:8082",
        config_json=cfg.model_dump(mode="json"),
    )
    (mine,) = [r for r in await list_run_details(engine) if r.name == run_name]
    assert mine.as_dict()["versions"] == {"primary": "1.14", "canary": "2.0.0-rc1"}

    # A later start that names no version keeps them.
    bare = config_from_mapping({"run": run_name, "upstreams": UPSTREAMS}, env={})
    await ensure_run(engine, run_name, primary_url=None, canary_url=None,
                     config_json=bare.model_dump(mode="json"))  # fmt: skip
    async with serve_admin(engine) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/v1/runs?limit=1000") as resp:
            body = await resp.json()
    (shown,) = [r for r in body["runs"] if r["name"] == run_name]
    assert (shown["primary_version"], shown["canary_version"]) == ("1.14", "2.0.0-rc1")
