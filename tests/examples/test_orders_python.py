"""The Python order service (primary and canary stand-in), served on a real loopback port."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from graygate.examples.orders import (
    CREATED_ID_BASE,
    INITIAL_STOCK,
    FaultError,
    Faults,
    SplitMix64,
    fnv1a64,
    make_app,
    parse_faults,
)

from tests.proxy.harness import serve_app

REPO = Path(__file__).resolve().parents[2]
STRICT_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


async def get(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with session.get(url, **kw) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


async def post(session: aiohttp.ClientSession, url: str, body: Any, **kw: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    async with session.post(url, data=data, **kw) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


def order_body(*lines: tuple[str, int], customer: str = "CUST-1") -> dict[str, Any]:
    return {"customer_id": customer, "items": [{"sku": s, "qty": q} for s, q in lines]}


def without_noise(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("request_id", "meta")}


# ---------------------------------------------------------------------------- determinism


def test_prng_reference_values() -> None:
    r = SplitMix64(0)
    assert [r.next() for _ in range(3)] == [
        0xE220A8397B1DCDAF,
        0x6E789E6AA1B965F4,
        0x06C45D188009454F,
    ]
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C


@pytest.mark.asyncio
async def test_order_shape_and_determinism() -> None:
    async with serve_app(make_app()) as base, aiohttp.ClientSession() as s:
        for order_id in (1, 2, 42, 1000, 987654321):
            status, a = await get(s, f"{base}/api/orders/{order_id}")
            _, b = await get(s, f"{base}/api/orders/{order_id}")
            assert status == 200
            assert a["request_id"] != b["request_id"]
            assert without_noise(a) == without_noise(b)
            assert list(a) == [
                "id", "customer", "status", "currency", "items", "subtotal", "tax", "total",
                "created_at", "updated_at", "request_id", "meta", "stock_deducted",
            ]  # fmt: skip
            assert a["id"] == order_id
            assert set(a["customer"]) == {"id", "name", "tier"}
            assert a["meta"] == {"served_by": "python", "version": a["meta"]["version"]}
            assert 1 <= len(a["items"]) <= 5
            assert len({it["sku"] for it in a["items"]}) == len(a["items"])
            assert isinstance(a["stock_deducted"], bool)
            assert STRICT_TS.fullmatch(a["created_at"]) and STRICT_TS.fullmatch(a["updated_at"])
            assert a["created_at"] <= a["updated_at"]
            for key in ("subtotal", "tax", "total"):
                assert round(a[key], 2) == a[key]
            subtotal = sum(it["qty"] * it["price"] for it in a["items"])
            assert abs(subtotal - a["subtotal"]) < 1e-6
            assert abs(a["subtotal"] + a["tax"] - a["total"]) < 1e-6


@pytest.mark.asyncio
async def test_healthz_not_found_and_method_errors_are_json() -> None:
    async with serve_app(make_app()) as base, aiohttp.ClientSession() as s:
        assert await get(s, f"{base}/healthz") == (200, {"status": "ok"})
        assert await get(s, f"{base}/nope") == (404, {"error": "not found"})
        assert await get(s, f"{base}/api/orders/abc") == (404, {"error": "order not found"})
        assert await get(s, f"{base}/api/orders/0") == (404, {"error": "order not found"})
        assert await get(s, f"{base}/api/orders/{CREATED_ID_BASE + 5}") == (
            404,
            {"error": "order not found"},
        )
        async with s.delete(f"{base}/api/orders/5") as resp:
            assert resp.status == 405
            assert await resp.json() == {"error": "method not allowed"}


@pytest.mark.asyncio
async def test_inventory() -> None:
    async with serve_app(make_app()) as base, aiohttp.ClientSession() as s:
        status, inv = await get(s, f"{base}/api/inventory/SKU-0001")
        assert status == 200
        assert list(inv) == ["sku", "stock", "price", "updated_at"]
        assert inv["sku"] == "SKU-0001" and inv["stock"] == INITIAL_STOCK
        assert STRICT_TS.fullmatch(inv["updated_at"])
        assert await get(s, f"{base}/api/inventory/SKU-0051") == (
            404,
            {"error": "unknown sku: SKU-0051"},
        )


# ---------------------------------------------------------------------------- writes


@pytest.mark.asyncio
async def test_post_creates_order_and_deducts_stock() -> None:
    async with serve_app(make_app()) as base, aiohttp.ClientSession() as s:
        body = order_body(("SKU-0001", 3), ("SKU-0002", 1), ("SKU-0001", 2))
        status, o = await post(s, f"{base}/api/orders", body, headers={"X-Trace-ID": "trace-1"})
        assert status == 201
        assert o["id"] == CREATED_ID_BASE + fnv1a64(b"trace-1") % CREATED_ID_BASE
        assert o["stock_deducted"] is True and o["status"] == "pending"
        assert [it["stock_after"] for it in o["items"]] == [
            INITIAL_STOCK - 3,
            INITIAL_STOCK - 1,
            INITIAL_STOCK - 5,
        ]
        _, inv = await get(s, f"{base}/api/inventory/SKU-0001")
        assert inv["stock"] == INITIAL_STOCK - 5
        assert inv["updated_at"] == o["created_at"]
        # the stored order is what GET shows
        _, again = await get(s, f"{base}/api/orders/{o['id']}")
        assert without_noise(again) == without_noise(o)
        # a replay of the same trace answers the same order and deducts nothing
        status, replay = await post(
            s, f"{base}/api/orders", body, headers={"X-Trace-ID": "trace-1"}
        )
        assert status == 200 and without_noise(replay) == without_noise(o)
        _, inv = await get(s, f"{base}/api/inventory/SKU-0001")
        assert inv["stock"] == INITIAL_STOCK - 5
        # without a trace id: a counter
        _, c1 = await post(s, f"{base}/api/orders", order_body(("SKU-0009", 1)))
        _, c2 = await post(s, f"{base}/api/orders", order_body(("SKU-0009", 1)))
        assert c2["id"] == c1["id"] + 1


@pytest.mark.asyncio
async def test_same_trace_same_order_on_two_instances() -> None:
    async with (
        serve_app(make_app()) as a,
        serve_app(make_app("python-standin")) as b,
        aiohttp.ClientSession() as s,
    ):
        body = order_body(("SKU-0042", 4), customer="acme:7")
        _, oa = await post(s, f"{a}/api/orders", body, headers={"X-Trace-ID": "t-xyz"})
        _, ob = await post(s, f"{b}/api/orders", body, headers={"X-Trace-ID": "t-xyz"})
        assert without_noise(oa) == without_noise(ob)
        assert oa["meta"]["served_by"] == "python" and ob["meta"]["served_by"] == "python-standin"


@pytest.mark.asyncio
async def test_shadow_write_leaves_real_stock() -> None:
    async with serve_app(make_app()) as base, aiohttp.ClientSession() as s:
        shadow = {"X-Gray-Shadow": "1", "X-Trace-ID": "shadow-1"}
        status, o = await post(s, f"{base}/api/orders", order_body(("SKU-0005", 9)), headers=shadow)
        assert status == 201 and o["items"][0]["stock_after"] == INITIAL_STOCK - 9
        _, real = await get(s, f"{base}/api/inventory/SKU-0005")
        _, shadow_inv = await get(s, f"{base}/api/inventory/SKU-0005?shadow=1")
        _, shadow_hdr = await get(s, f"{base}/api/inventory/SKU-0005", headers=shadow)
        assert real["stock"] == INITIAL_STOCK
        assert shadow_inv["stock"] == shadow_hdr["stock"] == INITIAL_STOCK - 9
        # the order lives only in the shadow table
        assert (await get(s, f"{base}/api/orders/{o['id']}"))[0] == 404
        assert (await get(s, f"{base}/api/orders/{o['id']}", headers=shadow))[0] == 200
        # the same trace on the real store is a new order there
        status, _ = await post(s, f"{base}/api/orders", order_body(("SKU-0005", 1)),
                               headers={"X-Trace-ID": "shadow-1"})  # fmt: skip
        assert status == 201
        _, real = await get(s, f"{base}/api/inventory/SKU-0005")
        assert real["stock"] == INITIAL_STOCK - 1


BAD_BODIES = [
    (b'{"customer_id": ', 400, "invalid JSON body"),
    (b"", 400, "invalid JSON body"),
    (b'{"customer_id":"c","items":[{"sku":"SKU-0001","qty":NaN}]}', 400, "invalid JSON body"),
    (b"[1, 2]", 400, "body must be a JSON object"),
    (b'{"customer_id": 5, "items": []}', 400, "customer_id must be"),
    (b'{"customer_id": "a b", "items": []}', 400, "customer_id must be"),
    (b'{"customer_id": "c", "items": []}', 400, "items must be"),
    (b'{"customer_id": "c", "items": [7]}', 400, "items[0] must be an object"),
    (b'{"customer_id": "c", "items": [{"qty": 1}]}', 400, "items[0].sku must be a string"),
    (b'{"customer_id":"c","items":[{"sku":"SKU-0001","qty":true}]}', 400, "items[0].qty"),
    (b'{"customer_id":"c","items":[{"sku":"SKU-0001","qty":1.5}]}', 400, "items[0].qty"),
    (b'{"customer_id":"c","items":[{"sku":"SKU-0001","qty":0}]}', 400, "items[0].qty"),
    (b'{"customer_id":"c","items":[{"sku":"SKU-0001","qty":1},{"sku":"X","qty":1}]}', 422,
     "unknown sku: X"),
]  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize(("body", "status", "message"), BAD_BODIES)
async def test_bad_input(body: bytes, status: int, message: str) -> None:
    async with serve_app(make_app()) as base, aiohttp.ClientSession() as s:
        got, doc = await post(s, f"{base}/api/orders", body)
        assert got == status
        assert doc["error"].startswith(message)
        _, inv = await get(s, f"{base}/api/inventory/SKU-0001")
        assert inv["stock"] == INITIAL_STOCK


@pytest.mark.asyncio
async def test_body_too_large() -> None:
    async with serve_app(make_app()) as base, aiohttp.ClientSession() as s:
        status, doc = await post(s, f"{base}/api/orders", b" " * (2 << 20))
        assert (status, doc) == (413, {"error": "request body too large"})


# ---------------------------------------------------------------------------- faults


def test_parse_faults() -> None:
    assert parse_faults([]) == Faults()
    assert parse_faults([""]) == Faults()
    f = parse_faults(["rounding, item_order", "latency=5ms", "stock_deduction"])
    assert f == Faults(rounding=True, item_order=True, latency=0.005, stock_deduction=0.2)
    assert parse_faults(["latency"]).latency == 0.020
    assert parse_faults(["stock_deduction=0.35"]).stock_deduction_threshold == 3500
    with pytest.raises(FaultError, match='unknown fault "bogus"'):
        parse_faults(["rounding,bogus"])
    for bad in ("rounding=1", "stock_deduction=1.5", "stock_deduction=-1", "latency=fast",
                "latency=5", "goroutine_leak=yes", "gc_pressure=0ms", "gc_pressure=1001ms",
                "gc_pressure=x"):  # fmt: skip
        with pytest.raises(FaultError):
            parse_faults([bad])
    assert parse_faults(["gc_pressure"]).gc_pressure == 0.020
    assert parse_faults(["gc_pressure=1s"]).gc_pressure == 1.0  # the bound itself


IDS = (1, 2, 3, 4, 42, 777, 123456)


@pytest.mark.asyncio
async def test_fault_rounding_stays_within_tolerance() -> None:
    async with (
        serve_app(make_app()) as clean,
        serve_app(make_app("python-standin", Faults(rounding=True))) as bad,
        aiohttp.ClientSession() as s,
    ):
        drifts = set()
        for order_id in IDS:
            _, c = await get(s, f"{clean}/api/orders/{order_id}")
            _, b = await get(s, f"{bad}/api/orders/{order_id}")
            drift = b["total"] - c["total"]
            assert 0.0009 < drift < 0.0041 < 0.01
            drifts.add(round(drift, 3))
            for ic, ib in zip(c["items"], b["items"], strict=True):
                assert abs(ib["price"] - ic["price"]) <= 1e-6 * ic["price"]
            assert abs(b["subtotal"] - c["subtotal"]) < 0.001
        assert len(drifts) > 1


@pytest.mark.asyncio
async def test_fault_timestamp_format() -> None:
    async with (
        serve_app(make_app()) as clean,
        serve_app(make_app("python-standin", Faults(timestamp_format=True))) as bad,
        aiohttp.ClientSession() as s,
    ):
        _, c = await get(s, f"{clean}/api/orders/42")
        _, b = await get(s, f"{bad}/api/orders/42")
        for key in ("created_at", "updated_at"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000000\+00:00", b[key])
            assert datetime.fromisoformat(b[key]) == datetime.fromisoformat(c[key])
        _, inv = await get(s, f"{bad}/api/inventory/SKU-0001")
        assert inv["updated_at"].endswith(".000000+00:00")


@pytest.mark.asyncio
async def test_fault_item_order() -> None:
    async with (
        serve_app(make_app()) as clean,
        serve_app(make_app("python-standin", Faults(item_order=True))) as bad,
        aiohttp.ClientSession() as s,
    ):
        reversed_some = False
        for order_id in IDS:
            _, c = await get(s, f"{clean}/api/orders/{order_id}")
            _, b = await get(s, f"{bad}/api/orders/{order_id}")
            assert b["items"] == c["items"][::-1]
            assert without_noise({**b, "items": None}) == without_noise({**c, "items": None})
            reversed_some = reversed_some or len(c["items"]) > 1
        assert reversed_some


@pytest.mark.asyncio
async def test_fault_stock_deduction_always() -> None:
    app = make_app("python-standin", Faults(stock_deduction=1.0))
    async with serve_app(app) as base, aiohttp.ClientSession() as s:
        body = order_body(("SKU-0010", 4), ("SKU-0011", 1))
        status, o = await post(s, f"{base}/api/orders", body, headers={"X-Trace-ID": "x"})
        assert status == 201
        assert o["stock_deducted"] is False
        assert [it["stock_after"] for it in o["items"]] == [INITIAL_STOCK - 3, INITIAL_STOCK]
        _, inv = await get(s, f"{base}/api/inventory/SKU-0010")
        assert inv["stock"] == INITIAL_STOCK - 3


@pytest.mark.asyncio
async def test_fault_stock_deduction_fraction_is_deterministic() -> None:
    faults = parse_faults(["stock_deduction=0.2"])
    async with (
        serve_app(make_app("python-standin", faults)) as a,
        serve_app(make_app("python-standin", faults)) as b,
        aiohttp.ClientSession() as s,
    ):
        outcomes = []
        for i in range(200):
            hdr = {"X-Trace-ID": f"frac-{i}"}
            _, oa = await post(s, f"{a}/api/orders", order_body(("SKU-0020", 2)), headers=hdr)
            _, ob = await post(s, f"{b}/api/orders", order_body(("SKU-0020", 2)), headers=hdr)
            assert oa["stock_deducted"] == ob["stock_deducted"]
            outcomes.append(oa["stock_deducted"])
        assert 0.1 < outcomes.count(False) / len(outcomes) < 0.3


@pytest.mark.asyncio
async def test_fault_latency() -> None:
    app = make_app("python-standin", parse_faults(["latency=50ms"]))
    async with serve_app(app) as base, aiohttp.ClientSession() as s:
        await get(s, f"{base}/healthz")
        start = time.perf_counter()
        await get(s, f"{base}/api/orders/1")
        assert time.perf_counter() - start >= 0.05


@pytest.mark.asyncio
async def test_fault_goroutine_leak_shows_in_debug_vars() -> None:
    app = make_app("python-standin", Faults(goroutine_leak=True), debug_vars=True)
    async with serve_app(app) as base, aiohttp.ClientSession() as s:
        _, before = await get(s, f"{base}/debug/vars")
        for order_id in range(1, 21):
            await get(s, f"{base}/api/orders/{order_id}")
        _, after = await get(s, f"{base}/debug/vars")
        assert after["goroutines"] - before["goroutines"] >= 20
    # the app's cleanup cancelled every leaked task
    leaked = [t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("leak-")]
    assert all(t.done() for t in leaked)


@pytest.mark.asyncio
async def test_fault_gc_pressure_shows_long_pauses_in_debug_vars() -> None:
    hold = 0.005
    app = make_app("python-standin", parse_faults([f"gc_pressure={hold * 1000:g}ms"]),
                   debug_vars=True)  # fmt: skip
    async with serve_app(app) as base, aiohttp.ClientSession() as s:
        _, before = await get(s, f"{base}/debug/vars")
        after = before
        for _ in range(100):  # at most ~10 s
            await asyncio.sleep(0.1)
            _, after = await get(s, f"{base}/debug/vars")
            if after["memstats"]["NumGC"] >= before["memstats"]["NumGC"] + 10:
                break
        mem, n0 = after["memstats"], before["memstats"]["NumGC"]
        assert mem["NumGC"] >= n0 + 10
        new = [mem["PauseNs"][n % 256] for n in range(n0, min(mem["NumGC"], n0 + 256))]
        # The forced full collections of the kept graph are among them, each ~ hold long.
        assert max(new) >= hold / 2 * 1e9
    pressure = [t for t in asyncio.all_tasks() if t.get_name() == "gc-pressure"]
    assert all(t.done() for t in pressure)


@pytest.mark.asyncio
async def test_pprof_only_when_planted() -> None:
    async with (
        serve_app(make_app("python-standin", debug_vars=True)) as clean,
        serve_app(make_app("python-standin", Faults(pprof_on_serving_port=True))) as bad,
        aiohttp.ClientSession() as s,
    ):
        async with s.get(f"{clean}/debug/pprof/") as resp:
            assert resp.status == 404
        async with s.get(f"{bad}/debug/pprof/") as resp:
            assert resp.status == 200
            assert "profiles" in await resp.text()


@pytest.mark.asyncio
async def test_debug_vars_has_expvar_shape() -> None:
    async with (
        serve_app(make_app("python-standin", debug_vars=True)) as standin,
        serve_app(make_app()) as primary,
        aiohttp.ClientSession() as s,
    ):
        _, v1 = await get(s, f"{standin}/debug/vars")
        gc.collect()
        _, v2 = await get(s, f"{standin}/debug/vars")
        assert set(v1) == {"cmdline", "goroutines", "memstats"}
        assert isinstance(v1["goroutines"], int) and v1["goroutines"] >= 1
        m = v2["memstats"]
        assert len(m["PauseNs"]) == 256 and len(m["PauseEnd"]) == 256
        assert m["NumGC"] > v1["memstats"]["NumGC"]
        assert m["PauseNs"][(m["NumGC"] + 255) % 256] > 0
        assert m["HeapAlloc"] > 0 and m["HeapInuse"] > 0
        assert 0 <= m["GCCPUFraction"] < 1
        assert len(m["BySize"]) == 61
        assert (await get(s, f"{primary}/debug/vars"))[0] == 404


# ---------------------------------------------------------------------------- CLI


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graygate.examples.orders", *args],
        cwd=REPO,
        env={**os.environ, "ORDERS_FAULTS": "", **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--role", "canary-standin", "--fault", "bogus"), None),
        (("--role", "canary-standin", "--fault", "rounding,bogus"), None),
        (("--role", "canary-standin"), {"ORDERS_FAULTS": "item_order,bogus"}),
    ],
)
def test_cli_unknown_fault_exits_2(args: tuple[str, ...], env: dict[str, str] | None) -> None:
    proc = run_cli(*args, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and '"bogus"' in lines[0], proc.stderr


def test_cli_primary_refuses_faults() -> None:
    proc = run_cli("--fault", "rounding")
    assert proc.returncode == 2 and "canary-standin" in proc.stderr


def test_cli_serves_and_stops() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "graygate.examples.orders", "--role", "canary-standin"],
        cwd=REPO,
        env={**os.environ, "LISTEN": "127.0.0.1:0", "ORDERS_FAULTS": "item_order"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert m, line
        with urllib.request.urlopen(f"{m.group(1)}/debug/vars", timeout=10) as resp:
            assert "memstats" in json.load(resp)
        with urllib.request.urlopen(f"{m.group(1)}/api/orders/7", timeout=10) as resp:
            assert json.load(resp)["meta"]["served_by"] == "python-standin"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
