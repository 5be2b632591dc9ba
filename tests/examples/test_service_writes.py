"""The demo services' writes (issue 11): the Python service and the Go canary write the
same rows for the same requests, to the shadow tables for ``X-Gray-Shadow: 1``, and the
``stock_write`` fault changes the same orders' rows in both while the answers stay equal.

Real PostgreSQL (a fresh database), the Python service in process, the Go canary (this
checkout's sources, built with lib/pq) as a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from tests.proxy.harness import serve_app

if TYPE_CHECKING:
    from tests.conftest import DatabaseMaker

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("orders_under_test", REPO / "examples" / "orders.py")
assert _spec is not None and _spec.loader is not None
orders = importlib.util.module_from_spec(_spec)
sys.modules["orders_under_test"] = orders
_spec.loader.exec_module(orders)

ORDERS = 30


@pytest.fixture(scope="module")
def go_pq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from graygate.demo import build_go_canary, pq_available

    if shutil.which("go") is None:
        pytest.skip("the Go toolchain (`go`) is not on PATH: cannot build examples/canary")
    if not pq_available():
        pytest.skip("lib/pq is not installed (apt-get install golang-github-lib-pq-dev)")
    return build_go_canary(tmp_path_factory.mktemp("canary-pq"), src=REPO / "examples" / "canary")


@contextmanager
def run_go(binary: Path, *args: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [str(binary), "-listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "ORDERS_FAULTS": ""},
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            found = re.match(r"listening on (http://\S+)", line)
            if found:
                yield found.group(1)
                return
            if not line and proc.poll() is not None:
                break
        raise AssertionError(f"the Go canary did not start: {line!r} (exit {proc.poll()})")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@asynccontextmanager
async def run_python(database: str, schema: str, fault: str | None) -> AsyncIterator[str]:
    faults = orders.parse_faults([fault] if fault else [])
    app: web.Application = orders.make_app(
        "python-standin", faults, database_url=database, db_schema=schema
    )
    async with serve_app(app) as base:
        yield base


def _body(i: int) -> bytes:
    return json.dumps(
        {"customer_id": f"c{i}", "items": [{"sku": f"SKU-{1 + i % 9:04d}", "qty": 1 + i % 4},
                                           {"sku": "SKU-0040", "qty": 1}]}
    ).encode()  # fmt: skip


async def _post_all(base: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(ORDERS):
            headers = {"X-Trace-ID": f"t-{i:03d}", "Content-Type": "application/json"}
            if i % 3:  # two thirds are mirrored copies
                headers["X-Gray-Shadow"] = "1"
            async with s.post(f"{base}/api/orders", data=_body(i), headers=headers) as r:
                doc = await r.json()
                doc.pop("request_id", None)
                doc.pop("meta", None)
                out.append((r.status, doc))
    return out


async def _rows(dsn: str, schema: str, table: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            f"SELECT trace_id, order_id, sku, qty, reason FROM {schema}.{table} ORDER BY id"
        )
        return [tuple(r) for r in rows]
    finally:
        await conn.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", [None, "stock_write=0.5"])
async def test_python_and_go_write_the_same_rows(
    make_database: DatabaseMaker, go_pq: Path, fault: str | None
) -> None:
    url = await make_database()
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    go_args = ["-database", url, "-db-schema", "go", *(["-fault", fault] if fault else [])]
    with run_go(go_pq, *go_args) as go_base:
        async with run_python(url, "py", fault) as py_base:
            py_answers = await _post_all(py_base)
            go_answers = await _post_all(go_base)
    assert py_answers == go_answers  # the answers never show the write fault
    assert all(status == 201 for status, _ in py_answers)
    for table, expected in (("stock_moves", 2 * (ORDERS // 3)), ("shadow_stock_moves", None)):
        py_rows = await _rows(dsn, "py", table)
        go_rows = await _rows(dsn, "go", table)
        assert py_rows == go_rows, table
        if expected is not None:
            assert len(py_rows) == expected
    shadow = await _rows(dsn, "py", "shadow_stock_moves")
    assert len(shadow) == 2 * (ORDERS - ORDERS // 3)
    moved = {(t, sku): -qty for t, _, sku, qty, _ in shadow}
    ordered = {(f"t-{i:03d}", f"SKU-{1 + i % 9:04d}"): 1 + i % 4 for i in range(ORDERS)}
    wrong = {k: moved[k] for k in ordered if k in moved and moved[k] != ordered[k]}
    if fault is None:
        assert wrong == {}
    else:  # about half of the orders: the first line deducts one more
        assert 0 < len(wrong) < ORDERS - ORDERS // 3
        assert all(qty == ordered[k] + 1 for k, qty in wrong.items())


@pytest.mark.asyncio
async def test_python_write_faults_change_rows_not_answers(make_database: DatabaseMaker) -> None:
    url = await make_database()
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    async with run_python(url, "clean", None) as clean:
        expected = await _post_all(clean)
    for fault, check in (
        ("stock_write_missing=1", lambda n: n == ORDERS - ORDERS // 3),  # one row per order
        ("stock_write_extra=1", lambda n: n == 3 * (ORDERS - ORDERS // 3)),  # three per order
    ):
        schema = fault.split("=")[0]
        async with run_python(url, schema, fault) as base:
            assert await _post_all(base) == expected
        assert check(len(await _rows(dsn, schema, "shadow_stock_moves"))), fault
    async with run_python(url, "ignored", "shadow_ignored") as base:
        assert await _post_all(base) == expected
    assert await _rows(dsn, "ignored", "shadow_stock_moves") == []
    assert len(await _rows(dsn, "ignored", "stock_moves")) == 2 * ORDERS


def test_bad_schema_and_unknown_fault_exit_2() -> None:
    for args in (["--db-schema", "Bad-Name"], ["--role", "canary-standin", "--fault", "bogus"]):
        proc = subprocess.run(
            [sys.executable, str(REPO / "examples" / "orders.py"), "--listen", "127.0.0.1:0",
             *args],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "orders:" in proc.stderr
