"""How long the verdict takes for a run of ONE MILLION judged exchanges (target: < 1 s).

Creates a scratch database, migrates it, loads one run with COPY (already judged, as the diff
workers leave it: 4 endpoints, a secondary recorded on every exchange, 5% of exchanges with a
noise field, 0.05% tolerance violations, 2% not mirrored, a few transport errors, latencies
from a log-normal), VACUUM ANALYZEs it (as autovacuum would), times ``evaluate_run`` a few
times, prints the figures, and drops the database.

    python -m bench.bench_verdict [--exchanges 1000000] [--repeat 5] [--noise 0.05] [--keep]

``GRAYGATE_BENCH_PG`` (default postgresql://postgres@127.0.0.1:5432/postgres) is the
server's admin DSN.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diff.evaluate import evaluate_run
from graygate.values import Answer, RecordedExchange
from store.engine import create_engine
from store.exchanges import COLUMNS, exchange_row
from store.judgement import DIFFERENCE_COLUMNS
from store.migrate import upgrade
from store.partitions import ensure_partitions

ADMIN_DSN = os.environ.get("GRAYGATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

ENDPOINTS = (
    ("GET /api/orders/{id}", "GET", "/api/orders/{}", 0.4),
    ("GET /api/orders", "GET", "/api/orders", 0.3),
    ("GET /api/items/{id}", "GET", "/api/items/{}", 0.2),
    ("POST /api/orders", "POST", "/api/orders", 0.1),
)

# What the recorder writes (store.exchanges.COLUMNS, rows from exchange_row), then what the
# diff workers add when they judge an exchange.
EXCHANGE_COLUMNS = (
    *COLUMNS,
    "judged_at",
    "outcome",
    "strict_mismatches",
    "tolerance_violations",
    "noise_differences",
)


def _admin_dsn_for(db: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{db}"


def _body(i: int, variant: int) -> bytes:
    doc = {
        "id": i,
        "status": "paid",
        "currency": "EUR",
        "total": 129.9,
        "generated_at": f"2026-11-27T12:00:{variant:02d}Z",
        "items": [
            {"sku": "A-100", "qty": 1, "price": 99.9},
            {"sku": "B-200", "qty": 2, "price": 15.0},
        ],
        "customer": {"id": 4711, "tier": "gold", "country": "DE"},
    }
    return orjson.dumps(doc)


def generate(
    run_id: int, n: int, first_id: int, *, noise_rate: float = 0.05, seed: int = 7
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Chunks of (exchange rows, difference rows); exchange ids are first_id, first_id+1..."""
    rng = random.Random(seed)
    headers = {"content-type": "application/json"}
    req_headers = {"accept": "application/json", "user-agent": "bench"}
    bodies = [_body(1000 + v, v) for v in range(8)]
    weights = [e[3] for e in ENDPOINTS]
    t0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    judged_at = t0 + timedelta(hours=2)
    chunk = 50_000
    for start in range(0, n, chunk):
        rows: list[tuple[Any, ...]] = []
        diffs: list[tuple[Any, ...]] = []
        for i in range(start, min(n, start + chunk)):
            ex_id = first_id + i
            endpoint, method, path, _ = rng.choices(ENDPOINTS, weights)[0]
            p_lat = rng.lognormvariate(3.0, 0.35)
            c_lat = rng.lognormvariate(3.0, 0.35)
            body = bodies[i % 8]
            r = rng.random()
            mirror_skipped: str | None = None
            noise: int | None = 0
            canary: Answer | None = Answer(200, headers, body, latency_ms=c_lat)
            secondary: Answer | None = Answer(
                200, headers, body, latency_ms=rng.lognormvariate(3.0, 0.35)
            )
            outcome, strict, tol = "match", 0, 0
            if r < 0.02:
                mirror_skipped = "sampled_out"
                canary = secondary = None
                outcome, noise = "skipped", None
            elif r < 0.0203:
                canary = Answer(latency_ms=2000.0, error="timeout")
                outcome, noise = "error", None
            else:
                if rng.random() < noise_rate:
                    outcome, noise = "noise_only", 1
                    for against, judgement in (("canary", "noise"), ("secondary", "strict")):
                        diffs.append(
                            (
                                ex_id,
                                run_id,
                                endpoint,
                                against,
                                "$.generated_at",
                                "$.generated_at",
                                "value",
                                '"12:00:01"',
                                '"12:00:02"',
                                judgement,
                                "strict (default)",
                            )
                        )
                if rng.random() < 0.0005:
                    outcome, tol = "differ", 1
                    diffs.append(
                        (
                            ex_id,
                            run_id,
                            endpoint,
                            "canary",
                            "$.total",
                            "$.total",
                            "value",
                            "129.9",
                            "130.5",
                            "tolerance",
                            "tolerance abs 0.01",
                        )
                    )
            record = RecordedExchange(
                run_id=run_id,
                trace_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                span_id=f"{i:016x}",
                received_at=t0 + timedelta(milliseconds=i * 7),
                endpoint=endpoint,
                method=method,
                path=path.format(i % 5000) if "{}" in path else path,
                query="",
                request_headers=req_headers,
                request_body=None,
                request_body_truncated=False,
                gray_label=None,
                served_by="primary",
                mirror_skipped=mirror_skipped,
                primary=Answer(200, headers, body, latency_ms=p_lat),
                canary=canary,
                secondary=secondary,
            )
            rows.append((*exchange_row(record), judged_at, outcome, strict, tol, noise))
        yield rows, diffs


async def load(dsn: str, run: str, n: int, *, noise_rate: float = 0.05) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        config = {
            "run": run,
            "upstreams": {"primary": "http://127.0.0.1:8081", "canary": "http://127.0.0.1:8082"},
            "verdict": {"max_error_rate_increase": 0.01},
        }
        run_id = await conn.fetchval(
            "INSERT INTO runs (name, config) VALUES ($1, $2::jsonb) RETURNING id",
            run,
            orjson.dumps(config).decode(),
        )
        # The run's partitions of exchanges and differences (store.runs.ensure_run makes
        # them for a run it creates).
        engine = create_engine("postgresql+asyncpg://" + dsn.split("://", 1)[1], pool_size=1)
        try:
            await ensure_partitions(engine, [int(run_id)])
        finally:
            await engine.dispose()
        # A fresh database: ids 1..n are free (identity BY DEFAULT), and differences can
        # point at them; the sequence is moved past them afterwards.
        first_id = 1
        cols = ("id", *EXCHANGE_COLUMNS)
        for rows, diffs in generate(run_id, n, first_id, noise_rate=noise_rate):
            await conn.copy_records_to_table(
                "exchanges",
                records=[(first_id + k, *row) for k, row in enumerate(rows)],
                columns=cols,
            )
            first_id += len(rows)
            if diffs:
                await conn.copy_records_to_table(
                    "differences", records=diffs, columns=DIFFERENCE_COLUMNS
                )
        await conn.execute("SELECT setval(pg_get_serial_sequence('exchanges', 'id'), $1)", first_id)
        await conn.execute("VACUUM ANALYZE exchanges")
        await conn.execute("VACUUM ANALYZE differences")
        return int(run_id)
    finally:
        await conn.close()


async def main_async(n: int, repeat: int, keep: bool, noise_rate: float = 0.05) -> None:
    db = f"graygate_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{db}"')
    await admin.close()
    url = "postgresql+asyncpg://" + _admin_dsn_for(db).split("://", 1)[1]
    try:
        await asyncio.to_thread(upgrade, url)
        t = time.perf_counter()
        await load(_admin_dsn_for(db), "bench", n, noise_rate=noise_rate)
        print(
            f"loaded {n} judged exchanges (noise field in {noise_rate:.0%}) with COPY "
            f"in {time.perf_counter() - t:.1f}s"
        )
        import scipy.stats  # noqa: F401 - imported once per process; not part of the figure

        engine = create_engine(url, pool_size=2)
        try:
            times = []
            result = None
            for _ in range(repeat + 1):
                t = time.perf_counter()
                result = await evaluate_run(engine, "bench")
                times.append(time.perf_counter() - t)
            assert result is not None
            warm = times[1:] or times
            print(f"verdict: {result.verdict.value}")
            for c in result.checks:
                print(f"  {c.name}: passed={c.passed} {c.detail[:110]}")
            print(
                f"evaluate_run over {n} exchanges: first {times[0] * 1000:.0f} ms (cold "
                f"cache), then "
                f"median {statistics.median(warm) * 1000:.0f} ms, "
                f"best {min(warm) * 1000:.0f} ms ({len(warm)} runs)"
            )
        finally:
            await engine.dispose()
    finally:
        if not keep:
            admin = await asyncpg.connect(ADMIN_DSN)
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            await admin.close()
        else:
            print(f"kept database {db}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--noise",
        type=float,
        default=0.05,
        help="share of exchanges with a noise field (2 difference rows each; 1.0: worst case)",
    )
    args = parser.parse_args()
    asyncio.run(main_async(args.exchanges, args.repeat, args.keep, args.noise))


if __name__ == "__main__":
    main()
