"""The runtime sampler against real services: the Go canary, the Python stand-in, and
small aiohttp upstreams on loopback; samples land in a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import GraygateConfig, RuntimeConfig, RuntimeSource, UpstreamsConfig
from diff.runtime_checks import PAUSE_RING, runtime_check
from graygate.runtime_sampler import RUNTIME_SAMPLER, RuntimeSampler, runtime_sampler_ctx
from graygate.values import Check
from store.engine import create_engine
from store.runs import ensure_run
from store.runtime_samples import StoredSample, fetch_samples
from store.tables import runs
from tests.proxy.harness import closed_port, serve_app
from tests.services import go_canary, python_orders

# --------------------------------------------------------------------------- services


def python_standin(fault: str | None = None) -> contextlib.AbstractAsyncContextManager[str]:
    return python_orders("canary-standin", fault)


# --------------------------------------------------------------------------- helpers


def config(
    canary: RuntimeSource, primary: RuntimeSource | None = None, *, interval_s: float = 0.2
) -> GraygateConfig:
    return GraygateConfig(
        run=f"run-{uuid.uuid4().hex[:10]}",
        upstreams=UpstreamsConfig(primary="http://127.0.0.1:9", canary="http://127.0.0.1:9"),
        runtime=RuntimeConfig(canary=canary, primary=primary, interval_s=interval_s, window_s=0.6),
    )


async def new_run(engine: AsyncEngine) -> int:
    return await ensure_run(
        engine, f"run-{uuid.uuid4().hex[:10]}", primary_url=None, canary_url=None
    )


@contextlib.asynccontextmanager
async def sampling(
    cfg: GraygateConfig, engine: AsyncEngine, run_id: int
) -> AsyncIterator[RuntimeSampler]:
    """An app that owns the sampler, started and cleaned up as ``graygate serve`` does."""
    app = web.Application()
    app.cleanup_ctx.append(runtime_sampler_ctx(cfg, engine, run_id))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        yield app[RUNTIME_SAMPLER]
    finally:
        await runner.cleanup()


async def steady_load(base: str, *, requests: int, seconds: float) -> int:
    """``requests`` GETs spread evenly over ``seconds``, at most 4 at a time."""
    loop = asyncio.get_running_loop()
    ok = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as s:
        start = loop.time()

        async def one(i: int) -> None:
            nonlocal ok
            await asyncio.sleep(max(0.0, start + i * seconds / requests - loop.time()))
            async with s.get(f"{base}/api/orders/{i + 1}") as resp:
                await resp.read()
                ok += resp.status == 200

        await asyncio.gather(*(one(i) for i in range(requests)))
    return ok


async def sample_under_load(engine: AsyncEngine, base: str) -> tuple[Check, list[StoredSample]]:
    """Sample ``base`` under 3.3 s of steady load (400 requests); judge what was stored."""
    run_id = await new_run(engine)
    cfg = config(RuntimeSource(expvar=f"{base}/debug/vars"))
    load = asyncio.ensure_future(steady_load(base, requests=400, seconds=3.3))
    await asyncio.sleep(0.3)  # sample steady load, not its start
    async with sampling(cfg, engine, run_id):
        assert await load == 400
    rows = await fetch_samples(engine, run_id, "canary")
    return runtime_check(rows, cfg.runtime, baseline=None), rows


# --------------------------------------------------------------------------- real services


@pytest.mark.parametrize("leak", [False, True], ids=["healthy", "goroutine_leak"])
async def test_go_canary_leak_fails_and_healthy_passes(
    engine: AsyncEngine, canary_bin: Path, leak: bool
) -> None:
    async with go_canary(canary_bin, "goroutine_leak" if leak else "") as base:
        check, rows = await sample_under_load(engine, base)
    assert len(rows) >= 10 and all(r.error is None and r.source == "expvar" for r in rows)
    assert all(r.goroutines is not None and r.heap_inuse for r in rows)
    if leak:
        assert check.passed is False, check.detail
        assert "goroutine leak" in check.detail
        assert rows[-1].goroutines is not None and rows[-1].goroutines > 300
    else:
        assert check.passed is True, check.detail
        assert check.observed["goroutine_growth"] < 0.5


@pytest.mark.parametrize("leak", [False, True], ids=["healthy", "goroutine_leak"])
async def test_python_standin_leak_fails_and_healthy_passes(
    engine: AsyncEngine, leak: bool
) -> None:
    async with python_standin("goroutine_leak" if leak else None) as base:
        check, rows = await sample_under_load(engine, base)
    assert len(rows) >= 10 and all(r.error is None for r in rows)
    assert check.observed["windows"] >= 4
    if leak:
        assert check.passed is False, check.detail
        assert "goroutine leak" in check.detail
    else:
        assert check.passed is True, check.detail


async def test_go_canary_pauses_match_its_ring(engine: AsyncEngine, canary_bin: Path) -> None:
    """With GOGC=1 and large bodies the canary collects often; the stored pauses are the
    ring's entries for exactly the collections between the first and the last sample."""
    run_id = await new_run(engine)
    async with go_canary(canary_bin, GOGC="1") as base:
        cfg = config(RuntimeSource(expvar=f"{base}/debug/vars"), interval_s=0.1)
        body = json.dumps(
            {"customer_id": "C1", "items": [{"sku": "SKU-0001", "qty": 1}], "pad": "x" * 200_000}
        )
        async with sampling(cfg, engine, run_id), aiohttp.ClientSession() as s:
            for _ in range(60):
                async with s.post(f"{base}/api/orders", data=body) as resp:
                    await resp.read()
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.25)
        async with aiohttp.ClientSession() as s, s.get(f"{base}/debug/vars") as resp:
            final = json.loads(await resp.read())["memstats"]

    rows = [r for r in await fetch_samples(engine, run_id, "canary") if r.error is None]
    assert rows[0].pauses_ns == ()  # the first reading: nothing "since the previous"
    first, last = rows[0].num_gc, rows[-1].num_gc
    assert first is not None and last is not None
    collected = [p for r in rows for p in r.pauses_ns]
    assert last - first >= 5, "GOGC=1 and 12 MB of bodies should collect"
    assert last - first <= PAUSE_RING and final["NumGC"] - first <= PAUSE_RING
    assert len(collected) == last - first
    ring = final["PauseNs"]
    assert collected == [ring[(n + 255) % 256] for n in range(first + 1, last + 1)]
    assert all(p > 0 for p in collected)


# --------------------------------------------------------------------------- failures


async def test_failed_polls_are_stored_and_never_stop_the_loop(engine: AsyncEngine) -> None:
    answers = iter(
        [
            web.Response(status=503, text="warming up"),
            web.Response(text="<html>not expvar</html>"),
        ]
    )

    async def debug_vars(request: web.Request) -> web.Response:
        answer = next(answers, None)
        if answer is not None:
            return answer
        ring = [0] * PAUSE_RING
        return web.json_response({"goroutines": 7, "memstats": {"NumGC": 0, "PauseNs": ring}})

    app = web.Application()
    app.router.add_get("/debug/vars", debug_vars)
    dead = f"http://127.0.0.1:{closed_port()}/debug/vars"
    run_id = await new_run(engine)
    async with serve_app(app) as base:
        cfg = config(
            RuntimeSource(expvar=f"{base}/debug/vars"), RuntimeSource(expvar=dead), interval_s=0.1
        )
        async with sampling(cfg, engine, run_id) as sampler:
            await asyncio.sleep(0.65)
        assert sampler.stats["canary"].failed_polls == 2
        assert sampler.stats["primary"].polls >= 4

    canary = await fetch_samples(engine, run_id, "canary")
    assert [r.error is None for r in canary[:3]] == [False, False, True]
    assert canary[0].error is not None and "HTTP 503" in canary[0].error
    assert canary[1].error is not None and "not JSON" in canary[1].error
    assert canary[2].goroutines == 7 and len(canary) >= 4
    primary = await fetch_samples(engine, run_id, "primary")
    assert len(primary) >= 4
    assert all(r.error is not None and r.error.startswith("refused") for r in primary)


async def test_samples_wait_for_the_database_and_are_kept(engine: AsyncEngine) -> None:
    """The run does not exist yet, so the database refuses the samples (foreign key); once it
    does, the backlog is stored with the next sample."""
    async with engine.connect() as conn:
        highest = await conn.scalar(sa.select(sa.func.coalesce(sa.func.max(runs.c.id), 0)))
    run_id = int(highest or 0) + 10_000

    async def debug_vars(request: web.Request) -> web.Response:
        return web.json_response({"goroutines": 3})

    app = web.Application()
    app.router.add_get("/debug/vars", debug_vars)
    async with serve_app(app) as base:
        cfg = config(RuntimeSource(expvar=f"{base}/debug/vars"), interval_s=0.1)
        async with sampling(cfg, engine, run_id) as sampler:
            await asyncio.sleep(0.35)
            refused = sampler.stats["canary"].polls
            assert refused >= 3 and sampler.stats["canary"].stored == 0
            async with engine.begin() as conn:
                await conn.execute(sa.insert(runs).values(id=run_id, name=f"late-{run_id}"))
            await asyncio.sleep(0.3)
        polls = sampler.stats["canary"].polls
    stored = await fetch_samples(engine, run_id, "canary")
    assert len(stored) == polls > refused
    assert all(r.goroutines == 3 for r in stored)


# --------------------------------------------------------------------------- Prometheus


def prom_page(scrape: int) -> str:
    return (
        "# HELP go_gc_duration_seconds A summary of the GC pause durations.\n"
        "# TYPE go_gc_duration_seconds summary\n"
        'go_gc_duration_seconds{quantile="0"} 0.0001\n'
        'go_gc_duration_seconds{quantile="1"} 0.002\n'
        f"go_gc_duration_seconds_sum {0.002 * scrape}\n"
        f"go_gc_duration_seconds_count {2 * scrape}\n"
        "# HELP go_goroutines Number of goroutines that currently exist.\n"
        "# TYPE go_goroutines gauge\n"
        f"go_goroutines {40 + scrape}\n"
        "# HELP go_memstats_heap_inuse_bytes Number of heap bytes that are in use.\n"
        "# TYPE go_memstats_heap_inuse_bytes gauge\n"
        "go_memstats_heap_inuse_bytes 6.127616e+06\n"
    )


async def test_prometheus_source_and_merge_with_expvar(engine: AsyncEngine) -> None:
    scrapes = 0

    async def metrics(request: web.Request) -> web.Response:
        nonlocal scrapes
        scrapes += 1
        return web.Response(text=prom_page(scrapes), content_type="text/plain")

    async def plain_expvar(request: web.Request) -> web.Response:  # no "goroutines" var
        return web.json_response({"memstats": {"NumGC": 0, "HeapInuse": 1, "PauseNs": [0] * 256}})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/debug/vars", plain_expvar)
    prom_run, both_run = await new_run(engine), await new_run(engine)
    async with serve_app(app) as base:
        only_prom = config(RuntimeSource(prometheus=f"{base}/metrics"), interval_s=0.1)
        async with sampling(only_prom, engine, prom_run):
            await asyncio.sleep(0.35)
        both = config(
            RuntimeSource(expvar=f"{base}/debug/vars", prometheus=f"{base}/metrics"),
            interval_s=0.1,
        )
        async with sampling(both, engine, both_run):
            await asyncio.sleep(0.25)

    rows = await fetch_samples(engine, prom_run, "canary")
    assert len(rows) >= 3 and all(r.source == "prometheus" for r in rows)
    assert [r.goroutines for r in rows] == [41 + i for i in range(len(rows))]
    assert rows[0].pauses_ns == ()
    assert all(r.pauses_ns == (1_000_000, 1_000_000) for r in rows[1:])  # 2 GCs, 2 ms a scrape
    merged = await fetch_samples(engine, both_run, "canary")
    assert merged and all(r.source == "expvar" for r in merged)
    assert all(r.goroutines is not None and r.goroutines > 40 for r in merged)
    assert all(r.heap_inuse == 1 for r in merged)  # expvar's own figure wins


# --------------------------------------------------------------------------- several processes


async def test_one_sampler_per_run_and_role_and_a_standby_takes_over(engine: AsyncEngine) -> None:
    """Two samplers feed one run (as two graygate processes would): the advisory lock lets
    one store; when it stops, the other takes over."""
    gc_count = 0

    async def debug_vars(request: web.Request) -> web.Response:
        nonlocal gc_count
        gc_count += 1
        ring = [0] * PAUSE_RING
        for n in range(1, gc_count + 1):
            ring[(n + 255) % 256] = 1000 * n
        return web.json_response(
            {"goroutines": 9, "memstats": {"NumGC": gc_count, "PauseNs": ring}}
        )

    app = web.Application()
    app.router.add_get("/debug/vars", debug_vars)
    run_id = await new_run(engine)
    async with serve_app(app) as base:
        cfg = config(RuntimeSource(expvar=f"{base}/debug/vars"), interval_s=0.1)
        async with sampling(cfg, engine, run_id) as first:
            await asyncio.sleep(0.25)
            async with sampling(cfg, engine, run_id) as second:
                await asyncio.sleep(0.35)
                assert first.stats["canary"].leader is True
                assert second.stats["canary"].leader is False
                assert second.stats["canary"].polls == 0
                await first.stop()  # the first process goes away
                await asyncio.sleep(0.35)
                assert second.stats["canary"].leader is True
                assert second.stats["canary"].polls >= 2
    rows = await fetch_samples(engine, run_id, "canary")
    assert len(rows) == first.stats["canary"].polls + second.stats["canary"].polls
    counts = [r.num_gc for r in rows]
    assert counts == sorted(counts)  # one sampler at a time: no interleaving
    takeover = first.stats["canary"].polls
    assert rows[takeover].pauses_ns == ()  # the standby claims no pause the first stored
    check = runtime_check(rows, cfg.runtime, baseline=None)
    assert check.observed["pauses_lost"] >= 1  # the collections between the two samplers


async def test_database_away_keeps_sampling_into_the_backlog() -> None:
    async def debug_vars(request: web.Request) -> web.Response:
        return web.json_response({"goroutines": 4})

    app = web.Application()
    app.router.add_get("/debug/vars", debug_vars)
    away = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/none")
    try:
        async with serve_app(app) as base:
            cfg = config(RuntimeSource(expvar=f"{base}/debug/vars"), interval_s=0.1)
            async with sampling(cfg, away, 1) as sampler:
                await asyncio.sleep(0.35)
                stats = sampler.stats["canary"]
                assert stats.leader is None
                assert stats.polls >= 3 and stats.failed_polls == 0 and stats.stored == 0
                assert stats.last is not None and stats.last.goroutines == 4
    finally:
        await away.dispose()
