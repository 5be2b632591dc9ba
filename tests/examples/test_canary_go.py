"""The Go canary, built and run as a real process, against the Python service."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from graygate.examples.orders import INITIAL_STOCK, make_app, parse_faults

from tests.proxy.harness import serve_app

CANARY_SRC = Path(__file__).resolve().parents[2] / "examples" / "canary"


def _read_line(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    """One line of the process's stdout (a thread: the pipe is buffered, select() would lie)."""
    assert proc.stdout is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        line = pool.submit(proc.stdout.readline)
        try:
            return line.result(timeout)
        except concurrent.futures.TimeoutError:
            proc.kill()  # ends the readline
            raise AssertionError(f"the canary printed nothing in {timeout}s") from None


@contextlib.contextmanager
def run_canary(
    binary: Path, *args: str, faults: str = "", debug: bool = False
) -> Iterator[tuple[str, str | None]]:
    """Start the canary on a free port; yield (base_url, debug_url)."""
    cmd = [str(binary), "-listen", "127.0.0.1:0", *args]
    if debug:
        cmd += ["-debug-listen", "127.0.0.1:0"]
    env = {**os.environ, "ORDERS_FAULTS": faults}
    env.pop("LISTEN", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        urls: dict[str, str] = {}
        for _ in range(2 if debug else 1):
            line = _read_line(proc)
            m = re.fullmatch(r"(debug )?listening on (http://\S+)\n", line)
            assert m, f"unexpected first output: {line!r}"
            urls["debug" if m.group(1) else "serve"] = m.group(2)
        yield urls["serve"], urls.get("debug")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def normalise(body: bytes) -> bytes:
    """The body with its noisy fields blanked: request_id and meta."""
    body = re.sub(rb'"request_id":"[0-9a-f]{32}"', b'"request_id":""', body)
    return re.sub(rb'"meta":\{[^{}]*\}', b'"meta":{}', body)


async def call(
    s: aiohttp.ClientSession, method: str, url: str, body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:  # fmt: skip
    async with s.request(method, url, data=body, headers=headers) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def order_body(*lines: tuple[str, int], customer: str = "CUST-1") -> bytes:
    items = [{"sku": sku, "qty": qty} for sku, qty in lines]
    return json.dumps({"customer_id": customer, "items": items}).encode()


SCRIPT: list[tuple[str, str, bytes | None, dict[str, str] | None]] = [
    *[("GET", f"/api/orders/{i}", None, None)
      for i in (1, 2, 3, 7, 42, 1000, 99999, 123456789, 999999999999)],
    ("GET", "/api/inventory/SKU-0001", None, None),
    ("GET", "/api/inventory/SKU-0050", None, None),
    ("POST", "/api/orders", order_body(("SKU-0001", 3), ("SKU-0002", 1), ("SKU-0001", 2)),
     {"X-Trace-ID": "cross-1"}),
    ("POST", "/api/orders", order_body(("SKU-0044", 7), customer="acme:9"),
     {"X-Trace-ID": "cross-2"}),
    ("POST", "/api/orders", order_body(("SKU-0044", 1)),
     {"X-Trace-ID": "cross-3", "X-Gray-Shadow": "1"}),
    ("POST", "/api/orders", order_body(("SKU-0001", 3)), {"X-Trace-ID": "cross-1"}),  # replay
    ("GET", "/api/inventory/SKU-0001", None, None),
    ("GET", "/api/inventory/SKU-0044", None, None),
    ("GET", "/api/inventory/SKU-0044?shadow=1", None, None),
    ("GET", "/healthz", None, None),
    ("GET", "/nope", None, None),
    ("GET", "/api/orders/abc", None, None),
    ("GET", "/api/inventory/SKU-9999", None, None),
    ("DELETE", "/api/orders/1", None, None),
    ("GET", "/api/orders", None, None),
    ("POST", "/api/orders", b'{"customer_id": ', None),
    ("POST", "/api/orders", b"[]", None),
    ("POST", "/api/orders", b'{"customer_id":"c","items":[]}', None),
    ("POST", "/api/orders", b'{"customer_id":"c","items":[{"sku":"SKU-0001","qty":1.5}]}', None),
    ("POST", "/api/orders", b'{"customer_id":"c","items":[{"sku":"SKU-0001","qty":true}]}', None),
    ("POST", "/api/orders", b'{"customer_id":"c","items":[{"sku":"NOPE","qty":1}]}', None),
]  # fmt: skip


async def compare(py_base: str, go_base: str, script: list[Any]) -> int:
    """Replay ``script`` on both; assert equal status, content type and normalised bytes.
    Returns how many requests were compared."""
    async with aiohttp.ClientSession() as s:
        for method, path, body, headers in script:
            py = await call(s, method, py_base + path, body, headers)
            go = await call(s, method, go_base + path, body, headers)
            where = f"{method} {path}"
            assert py[0] == go[0], f"{where}: status {py[0]} vs {go[0]}: {py[2]!r} {go[2]!r}"
            assert py[1] == go[1], f"{where}: content-type {py[1]!r} vs {go[1]!r}"
            assert normalise(py[2]) == normalise(go[2]), f"{where}:\n{py[2]!r}\n{go[2]!r}"
    return len(script)


@pytest.mark.asyncio
async def test_go_and_python_give_the_same_json(canary_bin: Path) -> None:
    with run_canary(canary_bin) as (go_base, _):
        async with serve_app(make_app()) as py_base:
            assert await compare(py_base, go_base, SCRIPT) == len(SCRIPT)
            async with aiohttp.ClientSession() as s:
                _, _, body = await call(s, "GET", go_base + "/api/orders/42")
                doc = json.loads(body)
                assert doc["meta"]["served_by"] == "go" and len(doc["request_id"]) == 32


FAULTY_SCRIPT = [
    *[("GET", f"/api/orders/{i}", None, None) for i in range(1, 30)],
    ("GET", "/api/inventory/SKU-0003", None, None),
    *[("POST", "/api/orders", order_body(("SKU-0003", 2), ("SKU-0004", 1)),
       {"X-Trace-ID": f"faulty-{i}"}) for i in range(30)],
    ("GET", "/api/inventory/SKU-0003", None, None),
]  # fmt: skip


@pytest.mark.asyncio
async def test_faults_have_the_same_effect_in_both(canary_bin: Path) -> None:
    spec = "rounding,timestamp_format,item_order,stock_deduction=0.5"
    app = make_app("python-standin", parse_faults([spec]))
    with run_canary(canary_bin, faults=spec) as (go_base, _):
        async with serve_app(app) as py_base:
            await compare(py_base, go_base, FAULTY_SCRIPT)
            async with aiohttp.ClientSession() as s:
                _, _, body = await call(s, "GET", go_base + "/api/inventory/SKU-0003")
                # some of the 30 orders deducted 1 instead of 2
                assert json.loads(body)["stock"] > INITIAL_STOCK - 60


@pytest.mark.asyncio
async def test_fault_flags_and_clean_mismatch(canary_bin: Path) -> None:
    with run_canary(canary_bin, "-fault", "item_order", "-fault", "timestamp_format") as (go, _):
        async with serve_app(make_app()) as py, aiohttp.ClientSession() as s:
            _, _, gb = await call(s, "GET", go + "/api/orders/1")
            _, _, pb = await call(s, "GET", py + "/api/orders/1")
            g, p = json.loads(gb), json.loads(pb)
            assert g["items"] == p["items"][::-1] and len(p["items"]) > 1
            assert g["created_at"].endswith(".000000+00:00") and p["created_at"].endswith("Z")


@pytest.mark.asyncio
async def test_shadow_write_leaves_real_stock(canary_bin: Path) -> None:
    with run_canary(canary_bin) as (base, _):
        async with aiohttp.ClientSession() as s:
            hdr = {"X-Gray-Shadow": "1", "X-Trace-ID": "sh"}
            status, _, _ = await call(s, "POST", base + "/api/orders",
                                      order_body(("SKU-0030", 11)), hdr)  # fmt: skip
            assert status == 201
            _, _, real = await call(s, "GET", base + "/api/inventory/SKU-0030")
            _, _, shadow = await call(s, "GET", base + "/api/inventory/SKU-0030?shadow=1")
            assert json.loads(real)["stock"] == INITIAL_STOCK
            assert json.loads(shadow)["stock"] == INITIAL_STOCK - 11


@pytest.mark.asyncio
async def test_expvar_on_serving_port_pprof_only_on_debug_port(canary_bin: Path) -> None:
    with run_canary(canary_bin, debug=True) as (base, debug):
        assert debug is not None
        async with aiohttp.ClientSession() as s:
            status, ctype, body = await call(s, "GET", base + "/debug/vars")
            assert status == 200 and ctype.startswith("application/json")
            doc = json.loads(body)
            assert isinstance(doc["goroutines"], int) and "cmdline" in doc
            m = doc["memstats"]
            assert len(m["PauseNs"]) == 256
            for key in ("NumGC", "HeapAlloc", "HeapInuse", "GCCPUFraction"):
                assert key in m
            for path in ("/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/cmdline"):
                assert (await call(s, "GET", base + path))[0] == 404, path
                assert (await call(s, "GET", debug + path))[0] == 200, path


@pytest.mark.asyncio
async def test_fault_pprof_on_serving_port(canary_bin: Path) -> None:
    with run_canary(canary_bin, faults="pprof_on_serving_port") as (base, _):
        async with aiohttp.ClientSession() as s:
            assert (await call(s, "GET", base + "/debug/pprof/"))[0] == 200


@pytest.mark.asyncio
async def test_fault_goroutine_leak(canary_bin: Path) -> None:
    with run_canary(canary_bin, faults="goroutine_leak") as (base, _):
        async with aiohttp.ClientSession() as s:
            before = json.loads((await call(s, "GET", base + "/debug/vars"))[2])["goroutines"]
            for i in range(1, 31):
                await call(s, "GET", f"{base}/api/orders/{i}")
            after = json.loads((await call(s, "GET", base + "/debug/vars"))[2])["goroutines"]
            assert after - before >= 30


@pytest.mark.asyncio
async def test_fault_latency(canary_bin: Path) -> None:
    with run_canary(canary_bin, "-fault", "latency=60ms") as (base, _):
        async with aiohttp.ClientSession() as s:
            await call(s, "GET", base + "/healthz")
            start = time.perf_counter()
            await call(s, "GET", base + "/api/orders/5")
            assert time.perf_counter() - start >= 0.06


@pytest.mark.parametrize(
    ("args", "faults"),
    [(("-fault", "bogus"), ""), (("-fault", "rounding,bogus"), ""), ((), "latency,bogus")],
)
def test_unknown_fault_exits_2(canary_bin: Path, args: tuple[str, ...], faults: str) -> None:
    proc = subprocess.run(
        [str(canary_bin), "-listen", "127.0.0.1:0", *args],
        env={**os.environ, "ORDERS_FAULTS": faults},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and '"bogus"' in lines[0], proc.stderr


def test_listen_from_env(canary_bin: Path) -> None:
    proc = subprocess.Popen(
        [str(canary_bin)],
        env={**os.environ, "LISTEN": "127.0.0.1:0", "ORDERS_FAULTS": ""},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert re.fullmatch(r"listening on http://127\.0\.0\.1:\d+\n", _read_line(proc))
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
