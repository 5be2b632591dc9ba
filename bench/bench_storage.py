"""Storage at production volume, in one run: bytes per exchange, the sustained rate one
PostgreSQL records at, and ``graygate runs delete`` against a plain ``DELETE``.

Targets: deleting a run of 1M exchanges (``store.lifecycle.delete_run``: the run removed
and its partitions detached into the trash, in one transaction) returns in under 1 s, and
at least 100x sooner than a plain ``DELETE`` of the same rows. The time until the space is
reclaimed (the reaper dropping the trashed partitions, after the command returned) is
printed beside it, not judged.

1. **Recording rate** (the ceiling one database gives, to set against the proxies' rate):
   ``--writers`` processes (default 2), each a real ``proxy.recorder.Recorder`` (the
   recorder's own queue, batching and COPY, default ``record:`` settings) fed realistic
   exchanges (an order JSON of ~1.4 KB from primary and canary, the usual headers) as fast
   as its queue drains, for ``--seconds`` after a warm-up; recorded exchanges/s over the
   window, summed, with the machine's CPU use meanwhile.
2. **Bytes per exchange**: ``pg_total_relation_size`` of that run's partitions (heap,
   TOAST, indexes) over its rows; and the same for a run recorded with
   ``record.bodies: {sample: 0.1}`` (the matching bodies of the others kept as digests).
3. **Delete**: two runs of ``--exchanges`` exchanges each (10% with one difference),
   seeded with ``INSERT ... SELECT generate_series`` and VACUUM ANALYZEd; then a plain
   ``DELETE`` of one run's rows (one transaction) and ``delete_run`` of the other, each
   timed after a CHECKPOINT; then, as ``graygate runs delete`` does, a detached
   ``graygate runs reap``, timed from the delete's start until the trash is empty and the
   partitions' files are gone from the data directory (when it is readable here).

    python bench/bench_storage.py                  # 1M exchanges a run, 20 s of recording
    python bench/bench_storage.py --quick          # 20k exchanges, 3 s: a smoke test
    #   --exchanges N  --seconds S  --writers W  --keep (keep the scratch database)

A scratch database ``graygate_bench_storage_<hex>`` is created, migrated and dropped at
the end. ``GRAYGATE_BENCH_PG`` (default postgresql://postgres@127.0.0.1:5432/postgres) is
the server's admin DSN. Exit code 0 when both targets are met (``--quick`` judges none),
1 when one is missed, 2 when the bench failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.schema import BodiesConfig, RecordConfig
from graygate.governance_cli import start_reaper
from graygate.values import Answer, RecordedExchange
from proxy.recorder import Recorder
from store.engine import create_engine
from store.exchanges import exchange_row, write_exchanges
from store.lifecycle import delete_run
from store.migrate import upgrade
from store.partitions import partition_name, partition_sizes
from store.runs import ensure_run
from store.tables import PARTITIONED
from store.trash import reap_trash

ADMIN_DSN = os.environ.get("GRAYGATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

DELETE_TARGET_S = 1.0
DELETE_TARGET_RATIO = 100.0

RESPONSE_HEADERS = {
    "content-type": "application/json",
    "cache-control": "no-store",
    "etag": 'W/"5a1-9c3f"',
    "x-request-id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "vary": "Accept-Encoding",
}
REQUEST_HEADERS = {
    "accept": "application/json",
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) bench",
    "x-forwarded-for": "10.1.2.3",
    "authorization": "[redacted]",
}


def order_body(i: int) -> bytes:
    """An order as a shop's API answers it: ~1.4 KB of JSON."""
    qty = [1 + (i + k) % 3 for k in range(5)]
    price = [round(4.99 + ((i * 13 + k) % 200) / 3, 2) for k in range(5)]
    items = [
        {
            "sku": f"SKU-{(i * 7 + k) % 9973:05d}",
            "name": f"Article {(i + k) % 500} in colour {k}",
            "qty": qty[k],
            "price": price[k],
            "warehouse": ["BER-1", "HAM-2", "MUC-1"][k % 3],
        }
        for k in range(5)
    ]
    doc = {
        "id": i,
        "status": ["paid", "shipped", "delivered"][i % 3],
        "currency": "EUR",
        "total": round(sum(q * p for q, p in zip(qty, price, strict=True)), 2),
        "created_at": f"2026-11-27T12:{i % 60:02d}:{i % 57:02d}Z",
        "items": items,
        "customer": {"id": 4711 + i % 1000, "tier": "gold", "country": "DE", "email": "c@x.de"},
        "shipping": {"method": "standard", "address": {"city": "Berlin", "zip": "10115"}},
    }
    return orjson.dumps(doc)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the machine so far, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _dsn_for(db: str) -> str:
    return make_url(ADMIN_DSN).set(database=db).render_as_string(hide_password=False)


def _url_for(db: str) -> str:
    url = make_url(ADMIN_DSN).set(drivername="postgresql+asyncpg", database=db)
    return url.render_as_string(hide_password=False)


# --------------------------------------------------------------------------- recording


def _records(run_id: int, n_bodies: int = 64) -> list[tuple[str, str, Answer, Answer]]:
    out = []
    for i in range(n_bodies):
        body = order_body(1000 + i)
        out.append(
            (
                "GET /api/orders/{id}",
                f"/api/orders/{1000 + i}",
                Answer(200, RESPONSE_HEADERS, body, latency_ms=12.5 + i % 7),
                Answer(200, RESPONSE_HEADERS, body, latency_ms=13.0 + i % 5),
            )
        )
    return out


async def _feed(recorder: Recorder, run_id: int, *, until: float, limit: int | None = None) -> int:
    """Submit records as fast as the recorder's queue drains, until the wall-clock time
    ``until`` (or ``limit`` records); returns how many were submitted."""
    templates = _records(run_id)
    high_water = 4 * RecordConfig().batch_size  # a short queue: what is measured is the writer
    now = datetime.now(UTC)
    n = 0
    while time.time() < until and (limit is None or n < limit):
        if recorder.queue_depth >= high_water:
            await asyncio.sleep(0.001)
            continue
        endpoint, path, primary, canary = templates[n % len(templates)]
        trace = uuid.uuid4().hex
        recorder.submit(
            RecordedExchange(
                run_id=run_id,
                trace_id=trace,
                span_id=trace[:16],
                received_at=now,
                endpoint=endpoint,
                method="GET",
                path=path,
                query="",
                request_headers=REQUEST_HEADERS,
                request_body=None,
                request_body_truncated=False,
                gray_label=None,
                served_by="primary",
                primary=primary,
                canary=canary,
            )
        )
        n += 1
        if n % 64 == 0:
            await asyncio.sleep(0)
    return n


@dataclass
class StartLine:
    """Every writer says it is ready; the parent then sets one start time for all."""

    ready: Any  # multiprocessing Semaphore
    go: Any  # multiprocessing Event
    start: Any  # multiprocessing Value("d"): the wall-clock start


async def _writer(
    url: str, run_id: int, line: StartLine, warmup: float, seconds: float
) -> dict[str, Any]:
    engine = create_engine(url, pool_size=2)
    try:
        with tempfile.TemporaryDirectory() as spill:
            async with Recorder(engine, RecordConfig(spill_dir=spill)) as recorder:
                line.ready.release()
                await asyncio.to_thread(line.go.wait)
                start = float(line.start.value)
                await _feed(recorder, run_id, until=start + warmup)
                recorded0, cpu0 = recorder.stats.recorded, time.process_time()
                await _feed(recorder, run_id, until=start + warmup + seconds)
                recorded1, cpu1 = recorder.stats.recorded, time.process_time()
                await recorder.flush()
                return {
                    "recorded": recorded1 - recorded0,
                    "cpu_s": cpu1 - cpu0,
                    "dropped": sum(recorder.stats.dropped.values()),
                }
    finally:
        await engine.dispose()


def _writer_process(
    url: str, run_id: int, line: StartLine, warmup: float, seconds: float, out: Any
) -> None:
    try:
        out.put(asyncio.run(_writer(url, run_id, line, warmup, seconds)))
    except BaseException as exc:  # reported by the parent
        out.put({"error": repr(exc)})


@dataclass
class RecordingFigures:
    rate: float
    writer_cpu_per_exchange_us: float
    machine_busy: float
    dropped: int


def record_rate(
    url: str, run_id: int, writers: int, warmup: float, seconds: float
) -> RecordingFigures:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    line = StartLine(ctx.Semaphore(0), ctx.Event(), ctx.Value("d", 0.0))
    procs = [
        ctx.Process(target=_writer_process, args=(url, run_id, line, warmup, seconds, out))
        for _ in range(writers)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # every recorder started
        if not line.ready.acquire(timeout=120):
            raise RuntimeError("a recorder process did not start")
    start = time.time() + 0.2
    line.start.value = start
    line.go.set()
    time.sleep(max(0.0, start + warmup - time.time()))
    busy0, total0 = _busy_jiffies()
    time.sleep(max(0.0, start + warmup + seconds - time.time()))
    busy1, total1 = _busy_jiffies()
    results = [out.get(timeout=120 + seconds) for _ in procs]
    for p in procs:
        p.join(30)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"a writer failed: {errors[0]}")
    recorded = sum(r["recorded"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    return RecordingFigures(
        rate=recorded / seconds,
        writer_cpu_per_exchange_us=cpu / max(recorded, 1) * 1e6,
        machine_busy=(busy1 - busy0) / max(total1 - total0, 1),
        dropped=sum(r["dropped"] for r in results),
    )


async def record_fixed(url: str, run_id: int, n: int, bodies: BodiesConfig) -> None:
    engine = create_engine(url, pool_size=2)
    try:
        with tempfile.TemporaryDirectory() as spill:
            async with Recorder(engine, RecordConfig(spill_dir=spill, bodies=bodies)) as rec:
                await _feed(rec, run_id, until=float("inf"), limit=n)
                await rec.flush()
    finally:
        await engine.dispose()


async def bytes_per_exchange(conn: asyncpg.Connection, run_id: int) -> tuple[int, float]:
    name = partition_name("exchanges", run_id)
    rows = int(await conn.fetchval(f"SELECT count(*) FROM {name}"))
    await conn.execute(f"VACUUM ANALYZE {name}")
    size = 0
    for table in PARTITIONED:
        size += int(
            await conn.fetchval(
                "SELECT pg_total_relation_size($1::regclass)", partition_name(table.name, run_id)
            )
        )
    return rows, size / max(rows, 1)


# --------------------------------------------------------------------------- delete

_SEED_EXCHANGES = """
INSERT INTO exchanges (run_id, trace_id, span_id, received_at, endpoint, method, path,
    query, request_headers, served_by,
    primary_status, primary_headers, primary_body, primary_latency_ms,
    canary_status, canary_headers, canary_body, canary_latency_ms,
    judged_at, outcome, strict_mismatches, tolerance_violations)
SELECT $1::bigint, md5(g::text || '-' || $1::bigint::text), lpad(to_hex(g), 16, '0'),
       now() - g * interval '1 ms', 'GET /api/orders/{id}', 'GET',
       '/api/orders/' || (g % 5000), '', $2::jsonb, 'primary',
       200, $3::jsonb, convert_to(replace($4, '__ID__', g::text), 'UTF8'), 12.5,
       200, $3::jsonb, convert_to(replace($4, '__ID__', g::text), 'UTF8'), 13.0,
       now(), CASE WHEN g % 10 = 0 THEN 'differ' ELSE 'match' END,
       CASE WHEN g % 10 = 0 THEN 1 ELSE 0 END, 0
  FROM generate_series($5::bigint, $6::bigint) AS g
"""

_SEED_DIFFERENCES = """
INSERT INTO differences (exchange_id, run_id, endpoint, against, path, field, kind,
    primary_value, other_value, judgement, rule)
SELECT id, run_id, endpoint, 'canary', '$.status', '$.status', 'value',
       '"paid"', '"PAID"', 'strict', 'strict (default)'
  FROM exchanges WHERE run_id = $1 AND outcome = 'differ'
"""


async def seed(conn: asyncpg.Connection, run_id: int, n: int) -> None:
    template = order_body(0).decode().replace('"id":0', '"id":__ID__')
    chunk = 200_000
    for lo in range(1, n + 1, chunk):
        await conn.execute(
            _SEED_EXCHANGES,
            run_id,
            orjson.dumps(REQUEST_HEADERS).decode(),
            orjson.dumps(RESPONSE_HEADERS).decode(),
            template,
            lo,
            min(n, lo + chunk - 1),
        )
    await conn.execute(_SEED_DIFFERENCES, run_id)
    for table in PARTITIONED:
        await conn.execute(f"VACUUM ANALYZE {partition_name(table.name, run_id)}")


@dataclass
class DeleteFigures:
    exchanges: int
    differences: int
    run_bytes: int
    plain_delete_s: float
    vacuum_after_s: float  # what the plain DELETE leaves to do before the space is reusable
    runs_delete_s: float  # delete_run's return: the run is gone for every reader
    reclaimed_s: float  # from the delete's start until the trash is empty and the files gone
    files_left_bytes: int  # what is left on disk of the partitions' files then (0)
    neighbour_plain: str  # another run's writer during the plain DELETE
    neighbour_fast: str  # ... and during runs delete
    phases: list[str]  # delete_run's own account (its log line)


def _neighbour_exchange(run_id: int, i: int) -> RecordedExchange:
    trace = uuid.uuid4().hex
    body = order_body(i)
    return RecordedExchange(
        run_id=run_id, trace_id=trace, span_id=trace[:16], received_at=datetime.now(UTC),
        endpoint="GET /api/orders/{id}", method="GET", path=f"/api/orders/{i}", query="",
        request_headers=REQUEST_HEADERS, request_body=None, request_body_truncated=False,
        gray_label=None, served_by="primary",
        primary=Answer(200, RESPONSE_HEADERS, body, latency_ms=12.5),
        canary=Answer(200, RESPONSE_HEADERS, body, latency_ms=13.0),
    )  # fmt: skip


async def _neighbour(url: str, run_id: int, ready: Any, stop: Any, out: Any) -> None:
    """Write batches of 10 exchanges into ``run_id`` (a proxy recording another run) until
    ``stop``; put (start, seconds) of each write on ``out``."""
    engine = create_engine(url, pool_size=1)
    try:
        await write_exchanges(engine, [exchange_row(_neighbour_exchange(run_id, 0))])
        ready.set()
        i, times = 1, []
        while not stop.is_set():
            batch = [exchange_row(_neighbour_exchange(run_id, i + k)) for k in range(10)]
            t = time.perf_counter()
            result = await write_exchanges(engine, batch)
            times.append((t, time.perf_counter() - t))
            assert result.inserted == 10, result
            i += 10
            await asyncio.sleep(0.002)
        out.put(times)
    finally:
        await engine.dispose()


def _neighbour_process(url: str, run_id: int, ready: Any, stop: Any, out: Any) -> None:
    try:
        asyncio.run(_neighbour(url, run_id, ready, stop, out))
    except BaseException as exc:  # reported by the parent
        out.put(repr(exc))


class Neighbour:
    """Another run's writer in a process of its own, around a timed operation: its write
    latencies inside the operation's window against those before it."""

    def __init__(self, url: str, run_id: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready, self.stop, self.out = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(
            target=_neighbour_process, args=(url, run_id, self.ready, self.stop, self.out)
        )

    def __enter__(self) -> Neighbour:
        self.proc.start()
        if not self.ready.wait(120):
            raise RuntimeError("the neighbour writer did not start")
        time.sleep(0.5)  # its latencies before the operation
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)
        self.stop.set()
        got = self.out.get(timeout=60)
        self.proc.join(30)
        if isinstance(got, str):
            raise RuntimeError(f"the neighbour writer failed: {got}")
        self.times: list[tuple[float, float]] = got

    def summary(self, start: float, end: float) -> str:
        """Writes overlapping [start, end] (perf_counter: one clock on one machine)."""
        before = sorted(d for t, d in self.times if t + d < start)
        during = [d for t, d in self.times if t < end and t + d > start]
        median = before[len(before) // 2] * 1000 if before else float("nan")
        worst = max(during) * 1000 if during else float("nan")
        return (
            f"{len(during)} writes of 10 exchanges overlapped it, the slowest {worst:,.1f} ms "
            f"(median before it {median:,.1f} ms)"
        )


class _Phases(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def partition_files(conn: asyncpg.Connection, run_id: int, data_dir: str) -> list[Path]:
    """The files of the run's partitions (heaps, TOAST, indexes; their segments and forks)
    under ``data_dir``; [] when the data directory cannot be read here."""
    if not data_dir or not await asyncio.to_thread(os.path.isdir, data_dir):
        return []
    rels = [partition_name(t.name, run_id) for t in PARTITIONED]
    rows = await conn.fetch(
        """
        WITH parts AS (SELECT oid, reltoastrelid FROM pg_class WHERE oid = ANY($1::regclass[])),
             tables AS (SELECT oid FROM parts UNION SELECT reltoastrelid FROM parts
                         WHERE reltoastrelid <> 0)
        SELECT pg_relation_filepath(oid) AS path FROM tables
        UNION ALL
        SELECT pg_relation_filepath(indexrelid) FROM pg_index
         WHERE indrelid IN (SELECT oid FROM tables)
        """,
        rels,
    )
    return [Path(data_dir) / r["path"] for r in rows if r["path"]]


def bytes_on_disk(paths: list[Path]) -> int:
    """The bytes of these relation files, every segment (.1, .2, ...) and fork (_fsm, _vm)
    included. A dropped relation's first segment is truncated to 0 at the drop's commit and
    unlinked at the next checkpoint: its bytes are back then."""
    total = 0
    for path in paths:
        for f in [path, *path.parent.glob(path.name + ".*"), *path.parent.glob(path.name + "_*")]:
            with contextlib.suppress(OSError):
                total += f.stat().st_size
    return total


async def delete_race(db: str, n: int, data_dir: str) -> DeleteFigures:
    url = _url_for(db)
    engine = create_engine(url, pool_size=2)
    conn = await asyncpg.connect(_dsn_for(db))
    try:
        ids = {
            "neighbour": await ensure_run(engine, "neighbour", primary_url=None, canary_url=None)
        }
        for name in ("plain-delete", "runs-delete"):
            ids[name] = await ensure_run(engine, name, primary_url=None, canary_url=None)
            t = time.perf_counter()
            await seed(conn, ids[name], n)
            print(
                f"  seeded {name}: {n:,} exchanges in {time.perf_counter() - t:.1f} s", flush=True
            )
        n_diff = int(
            await conn.fetchval(
                f"SELECT count(*) FROM {partition_name('differences', ids['runs-delete'])}"
            )
        )
        async with engine.connect() as sa_conn:
            run_bytes = (await partition_sizes(sa_conn)).get(ids["runs-delete"], 0)
        files = await partition_files(conn, ids["runs-delete"], data_dir)

        await conn.execute("CHECKPOINT")
        with Neighbour(url, ids["neighbour"]) as neighbour_plain:
            t = time.perf_counter()
            async with conn.transaction():
                await conn.execute("DELETE FROM differences WHERE run_id = $1", ids["plain-delete"])
                gone = await conn.execute(
                    "DELETE FROM exchanges WHERE run_id = $1", ids["plain-delete"]
                )
            plain = time.perf_counter() - t
        plain_window = (t, t + plain)
        assert gone == f"DELETE {n}", gone
        t = time.perf_counter()
        for table in PARTITIONED:
            await conn.execute(f"VACUUM {partition_name(table.name, ids['plain-delete'])}")
        vacuum = time.perf_counter() - t

        await conn.execute("CHECKPOINT")
        phases = _Phases()
        loggers = [logging.getLogger(n) for n in ("store.partitions", "store.lifecycle")]
        for lg in loggers:
            lg.addHandler(phases)
            lg.setLevel(logging.INFO)
        try:
            with Neighbour(url, ids["neighbour"]) as neighbour_fast:
                t = time.perf_counter()
                deleted = await delete_run(engine, "runs-delete")
                fast = time.perf_counter() - t
        finally:
            for lg in loggers:
                lg.removeHandler(phases)
        # The space, as `graygate runs delete` reclaims it: a detached `graygate runs reap`.
        reaper = start_reaper(None, url, None)
        left_q = "SELECT count(*) FROM trash WHERE run_id = $1"
        while await conn.fetchval(left_q, deleted.run_id) or bytes_on_disk(files):
            if time.perf_counter() - t > 600:
                raise RuntimeError("the trash was not reaped within 600 s")
            await asyncio.sleep(0.01)
        reclaimed = time.perf_counter() - t
        await asyncio.to_thread(reaper.wait, 60)
        assert deleted.exchanges == n, deleted
        await delete_run(engine, "plain-delete")  # its partitions, now empty (not timed)
        await reap_trash(engine)
        return DeleteFigures(
            n, n_diff, run_bytes, plain, vacuum, fast, reclaimed, bytes_on_disk(files),
            neighbour_plain.summary(*plain_window), neighbour_fast.summary(t, t + fast),
            phases.lines,
        )  # fmt: skip
    finally:
        await conn.close()
        await engine.dispose()


# --------------------------------------------------------------------------- main


async def _prepare(db: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{db}"')
    finally:
        await admin.close()
    await asyncio.to_thread(upgrade, _url_for(db))


async def _drop(db: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    finally:
        await admin.close()


async def _runs(db: str) -> tuple[int, int, str, str]:
    engine = create_engine(_url_for(db), pool_size=1)
    try:
        full = await ensure_run(engine, "recorded", primary_url=None, canary_url=None)
        sampled = await ensure_run(engine, "recorded-sampled", primary_url=None, canary_url=None)
        async with engine.connect() as conn:
            version = str(await conn.scalar(sa.text("SHOW server_version")))
            try:
                data = str(await conn.scalar(sa.text("SHOW data_directory")))
            except Exception:  # not a superuser
                data = ""
        return full, sampled, version, data
    finally:
        await engine.dispose()


def data_filesystem(path: str) -> str:
    """The filesystem PostgreSQL's data directory is on, with its ``discard`` option (online
    discard makes freeing blocks, so dropping a table, cost time in proportion to its size)."""
    if not path:
        return "unknown (not a superuser)"
    best = ("", "?", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mount, fstype, opts, *_ = line.split()
            if path.startswith(mount) and len(mount) > len(best[0]):
                best = (mount, fstype, opts)
    except OSError:
        return "unknown"
    mount, fstype, opts = best
    discard = "online discard" if "discard" in opts.split(",") else "no online discard"
    return f"{fstype} at {mount} ({discard})"


def run(args: argparse.Namespace) -> int:
    db = f"graygate_bench_storage_{uuid.uuid4().hex[:10]}"
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); database {db}", flush=True)
    asyncio.run(_prepare(db))
    try:
        full, sampled, pg_version, pg_data = asyncio.run(_runs(db))
        print(f"PostgreSQL {pg_version}", flush=True)

        rec = record_rate(_url_for(db), full, args.writers, args.warmup, args.seconds)
        asyncio.run(record_fixed(_url_for(db), sampled, args.sampled, BodiesConfig(sample=0.1)))

        async def sizes() -> tuple[tuple[int, float], tuple[int, float]]:
            conn = await asyncpg.connect(_dsn_for(db))
            try:
                return (
                    await bytes_per_exchange(conn, full),
                    await bytes_per_exchange(conn, sampled),
                )
            finally:
                await conn.close()

        (full_rows, full_bpe), (sampled_rows, sampled_bpe) = asyncio.run(sizes())
        print(
            f"recording: {rec.rate:,.0f} exchanges/s sustained into one PostgreSQL "
            f"({args.writers} recorder processes, {args.seconds:g} s after {args.warmup:g} s "
            f"warm-up; machine CPU {rec.machine_busy:.0%} busy, recorder CPU "
            f"{rec.writer_cpu_per_exchange_us:.0f} us/exchange; dropped {rec.dropped})"
        )
        print(
            f"bytes per exchange: {full_bpe:,.0f} B with full bodies ({full_rows:,} rows); "
            f"{sampled_bpe:,.0f} B with record.bodies.sample 0.1 ({sampled_rows:,} rows): "
            f"{full_bpe / max(sampled_bpe, 1):.1f}x smaller"
        )
        print(f"delete: two runs of {args.exchanges:,} exchanges", flush=True)
        d = asyncio.run(delete_race(db, args.exchanges, pg_data))
        ratio = d.plain_delete_s / max(d.runs_delete_s, 1e-9)
        print(
            f"  run size {d.run_bytes / 1e6:,.0f} MB ({d.exchanges:,} exchanges, "
            f"{d.differences:,} differences)"
        )
        print(
            f"  plain DELETE of the rows: {d.plain_delete_s * 1000:,.0f} ms "
            f"(and the VACUUM it leaves to do: {d.vacuum_after_s * 1000:,.0f} ms)"
        )
        print(f"    another run's writer meanwhile: {d.neighbour_plain}")
        print(
            f"  runs delete, until it returns (the run gone for every reader; its partitions "
            f"detached into the trash): {d.runs_delete_s * 1000:,.1f} ms "
            f"(target < {DELETE_TARGET_S * 1000:.0f} ms: "
            f"{'met' if d.runs_delete_s < DELETE_TARGET_S else 'MISSED'})"
        )
        for line in d.phases:
            print(f"    {line}")
        print(f"    another run's writer meanwhile: {d.neighbour_fast}")
        print(
            f"  runs delete, until the space is reclaimed (a detached `graygate runs reap` "
            f"started, the trash empty, the partitions' files gone: "
            f"{d.files_left_bytes:,} B left): {d.reclaimed_s * 1000:,.0f} ms "
            f"(not part of the target: after the command returned)"
        )
        print(f"    data directory on: {data_filesystem(pg_data)}")
        both = (d.plain_delete_s + d.vacuum_after_s) / max(d.reclaimed_s, 1e-9)
        print(
            f"  ratio: runs delete returns {ratio:,.1f}x sooner than the DELETE (target >= "
            f"{DELETE_TARGET_RATIO:.0f}x: {'met' if ratio >= DELETE_TARGET_RATIO else 'MISSED'}); "
            f"the space is back {both:,.1f}x sooner than DELETE + VACUUM make it reusable "
            "(which gives nothing back to the filesystem)"
        )
        if args.quick:
            print("quick mode: targets not judged")
            return 0
        met = d.runs_delete_s < DELETE_TARGET_S and ratio >= DELETE_TARGET_RATIO
        print("targets: " + ("met" if met else "MISSED"))
        return 0 if met else 1
    finally:
        if args.keep:
            print(f"kept database {db}")
        else:
            asyncio.run(_drop(db))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    parser.add_argument("--exchanges", type=int, help="exchanges per run to delete (1M)")
    parser.add_argument("--seconds", type=float, help="recording window (20 s)")
    parser.add_argument("--warmup", type=float, help="recording warm-up (5 s)")
    parser.add_argument("--sampled", type=int, help="exchanges recorded with sample 0.1")
    parser.add_argument("--writers", type=int, default=2, help="recorder processes (2)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    quick = args.quick
    for key, full, small in (
        ("exchanges", 1_000_000, 20_000),
        ("seconds", 20.0, 3.0),
        ("warmup", 5.0, 1.0),
        ("sampled", 50_000, 2_000),
    ):
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    try:
        return run(args)
    except Exception as exc:
        print(f"bench failed: {exc!r}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
