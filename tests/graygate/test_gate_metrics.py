"""The verdict, its checks, the diff workers, the build and the request path on /metrics:
scraped live from the real admin application after a verdict is computed through it (and,
for promtool, after traffic through the real proxy)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.diff.reportseed import seed_go, seed_no_go, serve_admin
from tests.proxy.harness import Sink, proxy_between


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _scrape(engine: AsyncEngine, *runs: str) -> str:
    async with serve_admin(engine) as base, aiohttp.ClientSession() as http:
        for run in runs:
            async with http.get(f"{base}/api/v1/runs/{run}/verdict") as resp:
                assert resp.status == 200
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()


async def test_verdict_and_check_gauges(engine: AsyncEngine) -> None:
    bad = await seed_no_go(engine, f"metrics-nogo-{uuid.uuid4().hex[:8]}")
    good = await seed_go(engine, f"metrics-go-{uuid.uuid4().hex[:8]}")
    text = await _scrape(engine, bad.run, good.run)
    s = _samples(text)
    assert s[("graygate_verdict", (("run", bad.run),))] == 1.0
    assert s[("graygate_verdict", (("run", good.run),))] == 0.0
    assert s[("graygate_check_passed", (("check", "strict"), ("run", bad.run)))] == 0.0
    assert s[("graygate_check_passed", (("check", "strict"), ("run", good.run)))] == 1.0
    assert s[("graygate_unjudged_exchanges", (("run", bad.run),))] == 0.0
    # the seeds judged through the real worker code: 21 + 16 exchanges in all
    judged = sum(v for (name, _), v in s.items() if name == "graygate_diff_exchanges_judged_total")
    assert judged >= 37
    # 4 orders differ in $.total; the other 10 differ only in $.ts, as the secondary does
    assert s[("graygate_diff_exchanges_judged_total", (("outcome", "differ"),))] >= 4
    assert s[("graygate_diff_exchanges_judged_total", (("outcome", "noise_only"),))] >= 10
    assert s[("graygate_diff_batch_seconds_count", ())] >= 2
    assert any(name == "graygate_build_info" for name, _ in s)
    assert "_created" not in text


async def _proxy_traffic() -> None:
    """Requests through the real proxy (in this process: its series are on the registry
    the admin app serves): a matched endpoint template, an unmatched path, a 502."""
    sink = Sink()
    endpoints = {"endpoints": [{"match": "GET /promtool/orders/{id}"}]}
    async with proxy_between(sink, compare=endpoints) as proxy, aiohttp.ClientSession() as http:
        for target in ("/promtool/orders/1", "/promtool/orders/2", "/promtool/elsewhere"):
            async with http.get(proxy + target) as resp:
                assert resp.status == 200
        await sink.wait(3)


async def test_promtool_accepts_a_live_scrape(engine: AsyncEngine) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (Debian's prometheus package provides it)")
    seeded = await seed_no_go(engine, f"metrics-promtool-{uuid.uuid4().hex[:8]}")
    await _proxy_traffic()
    text = await _scrape(engine, seeded.run)
    s = _samples(text)
    # the request path's series are in this scrape: promtool judges them too
    for mode, role in (("serve", "primary"), ("mirror", "canary")):
        for endpoint in ("GET /promtool/orders/{id}", "other"):
            key = (("endpoint", endpoint), ("mode", mode), ("role", role))
            assert s[("graygate_upstream_latency_seconds_count", key)] >= 1
    assert s[("graygate_proxy_added_seconds_count", ())] >= 3
    assert any(n == "graygate_proxy_added_seconds_bucket" for n, _ in s)
    done = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
