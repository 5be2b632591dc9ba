"""Shadow-write comparison end to end (issue 11): what the canary wrote to its shadow tables
against what the primary wrote, per trace id, in the same verdict.

Real processes on loopback and a real PostgreSQL: the Python primary and the Python
stand-in (``examples/orders.py --database ...``, the stand-in with a write fault) writing
to their tables in a database of their own, ``graygate serve`` with a ``writes:`` check on
a fresh graygate database, POSTs through the proxy, then ``graygate verdict --wait``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import Procs

pytestmark = pytest.mark.e2e

ORDERS = 24
# This checkout's service (``graygate.examples`` may resolve to an installed copy).
ORDERS_PY = Path(__file__).resolve().parents[2] / "examples" / "orders.py"
SCHEMA = "shop"
VERDICT_TIMEOUT_S = 40
INCONCLUSIVE_WAIT_S = 6  # an INCONCLUSIVE verdict is waited on this long (it stays so)
COUNT_TIMEOUT_S = 30.0
PRIMARY_QUERY = (
    f"SELECT sku, qty, reason FROM {SCHEMA}.stock_moves WHERE trace_id = :trace_id ORDER BY id"
)
CANARY_QUERY = (
    f"SELECT sku, qty, reason FROM {SCHEMA}.shadow_stock_moves WHERE trace_id = :trace_id "
    "ORDER BY id"
)


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _write_check(service_url: str, **changes: Any) -> dict[str, Any]:
    check: dict[str, Any] = {
        "name": "stock_moves",
        "primary": {"url": service_url, "query": PRIMARY_QUERY},
        "canary": {"url": service_url, "query": CANARY_QUERY},
        "key": "sku",
        "strict": ["$[*].qty"],
        "settle_ms": 100,
        "timeout_ms": 2000,
    }
    check.update(changes)
    return check


def _post_orders(proxy: str, n: int) -> list[str]:
    """``n`` orders of two lines each through the proxy; their trace ids."""
    traces = []
    for i in range(n):
        trace = uuid.uuid4().hex
        body = json.dumps(
            {
                "customer_id": f"c{i}",
                "items": [{"sku": f"SKU-{1 + i % 7:04d}", "qty": 1 + i % 3},
                          {"sku": f"SKU-{20 + i % 5:04d}", "qty": 2}],
            }
        ).encode()  # fmt: skip
        req = urllib.request.Request(
            f"{proxy}/api/orders",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "X-Trace-ID": trace},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 201, resp.status
        traces.append(trace)
    return traces


async def _count(url: str, sql: str) -> int:
    conn = await asyncpg.connect(_dsn(url))
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def _wait_for_write_records(graygate_db: str, n: int) -> None:
    """Until the write checker stored a record for each of the ``n`` orders (the verdict is
    asked once the evidence is all in, as the test's subject is the judgement)."""
    sql = "SELECT count(*) FROM exchanges WHERE endpoint = 'WRITE stock_moves'"
    deadline = time.monotonic() + COUNT_TIMEOUT_S
    got = 0
    while time.monotonic() < deadline:
        got = asyncio.run(_count(graygate_db, sql))
        if got >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"{got}/{n} write records stored in {COUNT_TIMEOUT_S}s")


def _verdict(run: str, database_url: str, timeout: int = VERDICT_TIMEOUT_S) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "graygate", "verdict", run, "--database-url", database_url,
         "--wait", "--timeout", str(timeout), "--json"],
        capture_output=True, text=True, timeout=timeout + 60,
    )  # fmt: skip
    assert proc.stdout, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def _check(verdict: dict[str, Any], name: str) -> dict[str, Any]:
    for c in verdict["checks"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no {name} check in {verdict}")


def _scenario(
    procs: Procs,
    graygate_config: Callable[..., Path],
    fresh_database: Callable[[], str],
    migrated_database: Callable[[], str],
    *,
    fault: str | None,
    check: Callable[[str], dict[str, Any]],
    wait_records: bool = True,
    verdict_timeout: int = VERDICT_TIMEOUT_S,
    go_canary: Path | None = None,
    seen: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str, str]:
    """Run one scenario; (the verdict, the service database's URL, graygate's database).
    The canary is the Python stand-in, or the Go canary's binary ``go_canary``."""
    service_db = fresh_database()
    graygate_db = migrated_database()
    base = [sys.executable, str(ORDERS_PY), "--listen", "127.0.0.1:0",
            "--database", service_db, "--db-schema", SCHEMA]  # fmt: skip
    primary = procs.service("primary", base)
    if go_canary is None:
        argv = [*base, "--role", "canary-standin", *(["--fault", fault] if fault else [])]
    else:
        argv = [str(go_canary), "-listen", "127.0.0.1:0", "-database", service_db,
                "-db-schema", SCHEMA, *(["-fault", fault] if fault else [])]  # fmt: skip
    canary = procs.service("canary", argv)
    run = f"writes-{uuid.uuid4().hex[:8]}"
    listen, admin = procs.free_port(), procs.free_port()
    config = graygate_config(
        run=run,
        primary=primary.url,
        canary=canary.url,
        listen_port=listen,
        admin_port=admin,
        overrides={
            "verdict": {
                "min_pairs": 20,
                "min_pairs_per_endpoint": 10,
                # A few dozen orders cannot decide latency (too few timed pairs leave it
                # undecided, never GO): these runs are about what was written.
                "latency": {"skip": "the write checks' tests send too few orders to time"},
            },
            "runtime": {"canary": None},
            "writes": [check(service_db)],
        },
    )
    procs.serve(config, graygate_db, f"http://127.0.0.1:{admin}")
    traces = _post_orders(f"http://127.0.0.1:{listen}", ORDERS)
    if seen is not None:
        seen.update(admin=f"http://127.0.0.1:{admin}", traces=traces, run=run)
    if wait_records:
        _wait_for_write_records(graygate_db, ORDERS)
    return _verdict(run, graygate_db, verdict_timeout), service_db, graygate_db


@pytest.mark.parametrize(
    ("fault", "field"),
    [
        ("stock_write=1", "$[*].qty"),  # the wrong qty in a stock move
        ("stock_write_missing=1", "$[*]"),  # a stock move not written
        ("stock_write_extra=1", "$[*]"),  # a stock move written twice
        ("shadow_ignored", "$[*]"),  # the real table written: the primary's side has two rows
    ],
)
def test_a_wrong_write_is_no_go_naming_the_check_and_field(
    procs: Procs,
    graygate_config: Callable[..., Path],
    fresh_database: Callable[[], str],
    migrated_database: Callable[[], str],
    fault: str,
    field: str,
) -> None:
    verdict, service_db, _ = _scenario(
        procs, graygate_config, fresh_database, migrated_database,
        fault=fault, check=_write_check,
    )  # fmt: skip
    assert verdict["verdict"] == "NO_GO", verdict
    strict = _check(verdict, "strict")
    assert strict["passed"] is False
    assert "WRITE stock_moves" in strict["detail"]
    assert f"{field} (" in strict["detail"], strict["detail"]
    # The answers were the primary's: the HTTP endpoint itself is not what failed.
    assert "POST /api/orders" not in strict["detail"], strict["detail"]
    if fault == "shadow_ignored":
        real = asyncio.run(
            _count(service_db, f"SELECT count(DISTINCT trace_id) FROM {SCHEMA}.stock_moves")
        )
        shadow = asyncio.run(
            _count(service_db, f"SELECT count(*) FROM {SCHEMA}.shadow_stock_moves")
        )
        assert (real, shadow) == (ORDERS, 0)


def test_a_correct_canary_is_go_with_the_write_check_passing(
    procs: Procs,
    graygate_config: Callable[..., Path],
    fresh_database: Callable[[], str],
    migrated_database: Callable[[], str],
) -> None:
    seen: dict[str, Any] = {}
    verdict, service_db, graygate_db = _scenario(
        procs, graygate_config, fresh_database, migrated_database,
        fault=None, check=_write_check, seen=seen,
    )  # fmt: skip
    assert verdict["verdict"] == "GO", verdict
    # The API's exchange for a trace id is the request's own, not its write check's record.
    status, body = procs.http_get(f"{seen['admin']}/api/v1/exchanges/{seen['traces'][0]}")
    assert status == 200 and json.loads(body)["endpoint"] == "POST /api/orders", body[:300]
    writes = _check(verdict, "writes")
    assert writes["passed"] is True, writes
    # The write check compared rows (not two empty sets): both sides wrote 2 per order.
    pairs = asyncio.run(
        _count(
            graygate_db,
            "SELECT count(*) FROM exchanges WHERE endpoint = 'WRITE stock_moves' "
            "AND outcome = 'match' AND convert_from(primary_body, 'UTF8') LIKE '[{%'",
        )
    )
    assert pairs == ORDERS
    moved = asyncio.run(_count(service_db, f"SELECT count(*) FROM {SCHEMA}.shadow_stock_moves"))
    assert moved == 2 * ORDERS


def test_a_write_database_that_is_away_is_inconclusive(
    procs: Procs,
    graygate_config: Callable[..., Path],
    fresh_database: Callable[[], str],
    migrated_database: Callable[[], str],
) -> None:
    away = f"postgresql://postgres@127.0.0.1:{procs.free_port()}/nothing"
    verdict, _, _ = _scenario(
        procs, graygate_config, fresh_database, migrated_database, fault=None,
        check=lambda url: _write_check(url, canary={"url": away, "query": CANARY_QUERY}),
        verdict_timeout=INCONCLUSIVE_WAIT_S,
    )  # fmt: skip
    assert verdict["verdict"] == "INCONCLUSIVE", verdict
    writes = _check(verdict, "writes")
    assert writes["passed"] is False and writes["blocking"] is False, writes
    assert "WRITE stock_moves 24/24" in writes["detail"], writes
    # A read that failed is no error of the canary's service.
    assert _check(verdict, "errors")["passed"] is True


def test_write_queries_run_read_only(
    procs: Procs,
    graygate_config: Callable[..., Path],
    fresh_database: Callable[[], str],
    migrated_database: Callable[[], str],
) -> None:
    deleting = (
        f"WITH gone AS (DELETE FROM {SCHEMA}.stock_moves WHERE trace_id = :trace_id "
        "RETURNING sku, qty, reason) SELECT * FROM gone"
    )
    verdict, service_db, graygate_db = _scenario(
        procs, graygate_config, fresh_database, migrated_database, fault=None,
        check=lambda url: _write_check(url, primary={"url": url, "query": deleting}),
        verdict_timeout=INCONCLUSIVE_WAIT_S,
    )  # fmt: skip
    assert verdict["verdict"] == "INCONCLUSIVE", verdict
    assert _check(verdict, "writes")["passed"] is False
    # Nothing was deleted, and each failure says why.
    kept = asyncio.run(_count(service_db, f"SELECT count(*) FROM {SCHEMA}.stock_moves"))
    assert kept == 2 * ORDERS
    read_only = asyncio.run(
        _count(
            graygate_db,
            "SELECT count(*) FROM exchanges WHERE endpoint = 'WRITE stock_moves' "
            "AND primary_error IS NOT NULL "
            "AND convert_from(primary_body, 'UTF8') LIKE '%read-only transaction%'",
        )
    )
    assert read_only == ORDERS


@pytest.fixture(scope="module")
def go_canary_pq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's Go canary, built with its PostgreSQL writes (lib/pq, offline)."""
    import shutil

    from graygate.demo import build_go_canary, pq_available

    if shutil.which("go") is None:
        pytest.skip("the Go toolchain (`go`) is not on PATH: cannot build examples/canary")
    if not pq_available():
        pytest.skip("lib/pq is not installed (apt-get install golang-github-lib-pq-dev)")
    binary = build_go_canary(tmp_path_factory.mktemp("canary-pq"), src=ORDERS_PY.parent / "canary")
    assert binary.name.endswith("-pq")
    return binary


def test_the_go_canary_writing_the_wrong_qty_is_no_go(
    procs: Procs,
    graygate_config: Callable[..., Path],
    fresh_database: Callable[[], str],
    migrated_database: Callable[[], str],
    go_canary_pq: Path,
) -> None:
    verdict, _, _ = _scenario(
        procs, graygate_config, fresh_database, migrated_database,
        fault="stock_write=0.5", check=_write_check, go_canary=go_canary_pq,
    )  # fmt: skip
    assert verdict["verdict"] == "NO_GO", verdict
    strict = _check(verdict, "strict")
    assert "WRITE stock_moves" in strict["detail"] and "$[*].qty (" in strict["detail"], strict
    assert "POST /api/orders" not in strict["detail"], strict["detail"]


def test_the_go_canary_writing_right_is_go(
    procs: Procs,
    graygate_config: Callable[..., Path],
    fresh_database: Callable[[], str],
    migrated_database: Callable[[], str],
    go_canary_pq: Path,
) -> None:
    verdict, service_db, _ = _scenario(
        procs, graygate_config, fresh_database, migrated_database,
        fault=None, check=_write_check, go_canary=go_canary_pq,
    )  # fmt: skip
    assert verdict["verdict"] == "GO", verdict
    assert _check(verdict, "writes")["passed"] is True
    moved = asyncio.run(_count(service_db, f"SELECT count(*) FROM {SCHEMA}.shadow_stock_moves"))
    assert moved == 2 * ORDERS
