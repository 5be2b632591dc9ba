"""Issue 8's numbered cases end to end: real processes, one verdict per case.

A primary, a secondary (a second primary) and a canary, each a process of
``tests/e2e/case_service.py`` (one endpoint per planted case), ``graygate serve`` as a
subprocess on a fresh PostgreSQL database, a burst of requests through the proxy, then
``graygate verdict RUN --json`` once everything sent is recorded and judged. One run
covers several cases on endpoints of their own: the verdict's failing checks name each
endpoint and field, so every case is asserted on its own line of the same verdict.

=====  =============================================================  =====================
case   planted                                                        test
=====  =============================================================  =====================
1      timestamp noise; the canary drops it, types it, nulls it       test_answers
2      a secondary that answered 3 exchanges                          test_answers
3      ignore ``$.meta.**`` vs strict ``$.meta.version``               test_answers
4      unordered arrays: 0.1 vs 0.1000000000001, true vs 1            test_answers
5      primary 5xx on one endpoint, canary 5xx on another             test_errors_and_latency
6      one slow endpoint with a tenth of the traffic (30 vs 3 ms)     test_errors_and_latency
7      bodies over the record cut, differing past it (JSON, text)     test_backlog_and_cut_bodies,
                                                                      test_errors_and_latency
8      exchanges recorded while no worker runs                        test_backlog_and_cut_bodies
9      a 21-digit integer off by 10                                   test_errors_and_latency
10     NaN vs null, true vs 1 at 300 levels                           test_errors_and_latency
11     (mirror-path timing) tests/e2e/test_faults.py, the A/A test
12     keyed + unordered oddities, numeric strings, BOM, blank        test_answers
13     verdict, ``GET .../endpoints`` and the report agree            test_answers,
                                                                      test_errors_and_latency
14     (goroutine leak) tests/e2e/test_faults.py
15     ``compare.max_body_bytes`` is read                             test_answers
16     (GC certification) tests/e2e/test_faults.py
=====  =============================================================  =====================

No timing assertion: the slow endpoint is 10x slower on the canary; every other run keeps
the latency check on with a wide margin (its timing is not what those runs are about).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import Proc, Procs

SERVICE = Path(__file__).with_name("case_service.py")
CONCURRENCY = 8
GATE_EXIT = {200: 0, 412: 1, 503: 2}  # the gate's status as graygate verdict's exit code
JUDGED_TIMEOUT_S = 90.0
Request = tuple[str, dict[str, str]]  # path with its query, headers

# What every run shares: little evidence needed, the latency check judging endpoints of
# 20 timed pairs, no runtime sampling (the services are not Go), the demo's header rules.
BASE: dict[str, Any] = {
    "runtime": {"canary": None, "required": False},
    "mirror": {"timeout_ms": 10_000},  # a loaded machine's slow mirror is no canary error
    "verdict": {
        "min_pairs": 40,
        "min_pairs_per_endpoint": 10,
        "latency": {"min_samples": 20},
    },
}


# --------------------------------------------------------------------------- the harness


@dataclass
class Upstreams:
    primary: str
    secondary: str
    canary: str


@pytest.fixture
def upstreams(procs: Procs) -> Upstreams:
    """The three sides, each a process of case_service.py."""
    urls = {}
    started = [
        (role, procs.spawn(role, [sys.executable, str(SERVICE), role]))
        for role in ("primary", "secondary", "canary")
    ]
    for role, proc in started:  # started at once, waited for in turn
        urls[role] = proc.wait_for(r"^listening on (http://\S+)\s*$", 60).group(1)
    return Upstreams(**urls)


class Run:
    """One run of graygate: its configuration, the serve processes that feed it (all
    roles in one, or proxy and workers apart), the requests sent through it, and its
    verdict as a pipeline gets it."""

    def __init__(
        self,
        procs: Procs,
        database_url: str,
        config: Path,
        run: str,
        listen: int,
        admin: int,
    ) -> None:
        self.procs = procs
        self.database_url = database_url
        self.config = config
        self.run = run
        self.proxy = f"http://127.0.0.1:{listen}"
        self.admin = f"http://127.0.0.1:{admin}"
        self.sent = 0
        self.running: list[Proc] = []

    def serve(self, role: str | None = None) -> Proc:
        """``graygate serve`` (all roles, or ``role``); returns when its admin port is
        ready (at once for a role without admin)."""
        argv = [
            sys.executable, "-m", "graygate", "serve", "-c", str(self.config),
            "--database-url", self.database_url,
            "--data-dir", str(self.procs.workdir / "data"),
            *(["--role", role] if role else []),
        ]  # fmt: skip
        proc = self.procs.spawn(role or "serve", argv)
        self.running.append(proc)
        if role is not None and "admin" not in role:
            return proc
        deadline = time.monotonic() + 60
        while True:
            assert proc.popen.poll() is None, proc.output()
            try:
                if self.procs.http_get(f"{self.admin}/readyz", 2.0)[0] == 200:
                    return proc
            except OSError:
                pass
            assert time.monotonic() < deadline, f"serve not ready: {proc.output()}"
            time.sleep(0.2)

    def stop(self, proc: Proc) -> None:
        """Stop a serve process: it flushes what it recorded, and exits 0."""
        self.running.remove(proc)
        assert self.procs.stop(proc) == 0, proc.output()[-2000:]

    def send(self, requests: Sequence[Request]) -> dict[str, int]:
        """Send ``(path, headers)`` requests through the proxy, ``CONCURRENCY`` at a time;
        the count of each status."""
        statuses = asyncio.run(_send(self.proxy, requests))
        self.sent += len(requests)
        return statuses

    def wait_recorded(self, *, judged: bool = True) -> None:
        """Until every request sent is recorded (and, with ``judged``, judged)."""
        deadline = time.monotonic() + JUDGED_TIMEOUT_S
        while True:
            recorded, done = asyncio.run(_counts(self.database_url, self.run))
            if recorded == self.sent and (not judged or done == recorded):
                return
            assert recorded <= self.sent, (recorded, self.sent)
            assert time.monotonic() < deadline, (recorded, done, self.sent)
            time.sleep(0.3)

    def verdict(self) -> tuple[int, dict[str, Any]]:
        """(exit code, JSON) of the verdict, as the gate a pipeline polls gives it
        (``GET /api/v1/runs/{run}/gate``: 200 GO, 412 NO_GO, 503 INCONCLUSIVE), its status
        as ``graygate verdict``'s exit code (0, 1, 2)."""
        status, body = self.procs.http_get(f"{self.admin}/api/v1/runs/{self.run}/gate", 60.0)
        assert status in GATE_EXIT, (status, body[:500])
        return GATE_EXIT[status], self._show(json.loads(body))

    def verdict_cli(self) -> tuple[int, dict[str, Any]]:
        """(exit code, JSON) of ``graygate verdict RUN --json``."""
        out = subprocess.run(
            [sys.executable, "-m", "graygate", "verdict", self.run,
             "--database-url", self.database_url, "--json"],
            capture_output=True, timeout=120, env=self.procs.child_env(), check=False,
        )  # fmt: skip
        lines = out.stdout.decode().strip().splitlines()
        assert lines, f"verdict printed nothing (exit {out.returncode}): {out.stderr.decode()}"
        return out.returncode, self._show(json.loads(lines[-1]))

    def _show(self, doc: dict[str, Any]) -> dict[str, Any]:
        print(f"\n{self.run}: {doc['verdict']}")
        for check in doc["checks"]:
            print(f"  {check['name']}: {check['passed']} {check['detail'][:600]}")
        return doc

    def api(self, path: str) -> Any:
        status, body = self.procs.http_get(f"{self.admin}/api/v1/runs/{self.run}/{path}")
        assert status == 200, body[:500]
        return json.loads(body)

    def report_rows(self) -> dict[str, dict[str, str]]:
        """The HTML report's endpoint table (``GET /runs/{run}`` on the admin port, what
        ``graygate report RUN --html`` writes): its cells by endpoint and column."""
        status, body = self.procs.http_get(f"{self.admin}/runs/{self.run}", 60.0)
        assert status == 200, body[:500]
        tables = _Tables()
        tables.feed(body.decode())
        (table,) = [t for t in tables.tables if t and t[0][:2] == ["endpoint", "pairs"]]
        head, *rows = table
        return {row[0]: dict(zip(head, row, strict=True)) for row in rows}


async def _send(base: str, requests: Sequence[Request]) -> dict[str, int]:
    queue = list(reversed(requests))
    statuses: dict[str, int] = {}
    timeout = aiohttp.ClientTimeout(total=30)

    async def client(session: aiohttp.ClientSession) -> None:
        while queue:
            path, headers = queue.pop()
            async with session.get(f"{base}{path}", headers=headers) as resp:
                await resp.read()
                key = str(resp.status)
                statuses[key] = statuses.get(key, 0) + 1

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(CONCURRENCY)))
    return statuses


async def _counts(database_url: str, run: str) -> tuple[int, int]:
    """(recorded, judged) exchanges of the run."""
    import sqlalchemy as sa

    from store.engine import create_engine

    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.text(
                        "SELECT count(*), count(e.outcome) FROM exchanges e JOIN runs r "
                        "ON r.id = e.run_id WHERE r.name = :run"
                    ),
                    {"run": run},
                )
            ).one()
    finally:
        await engine.dispose()
    return int(row[0]), int(row[1])


class _Tables(HTMLParser):
    """Every table of an HTML page as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


MakeRun = Callable[..., Run]


@pytest.fixture
def make_run(
    procs: Procs,
    upstreams: Upstreams,
    migrated_database: Callable[[], str],
    graygate_config: Callable[..., Path],
) -> MakeRun:
    """``make_run(name, overrides)``: a run on a fresh database, configured from
    config/demo.yaml, :data:`BASE` and ``overrides``, the three upstreams (the secondary
    too). Its processes are stopped with the others of ``procs``."""

    def make(name: str, overrides: dict[str, Any]) -> Run:
        run = f"e2e-case-{name}-{uuid.uuid4().hex[:8]}"
        listen, admin = procs.free_port(), procs.free_port()
        cfg = graygate_config(
            run=run,
            primary=upstreams.primary,
            canary=upstreams.canary,
            listen_port=listen,
            admin_port=admin,
            overrides=[BASE, overrides, {"upstreams": {"secondary": upstreams.secondary}}],
        )
        return Run(procs, migrated_database(), cfg, run, listen, admin)

    return make


def _requests(
    path: str, n: int, headers: dict[str, str] | None = None, start: int = 0
) -> list[Request]:
    return [(f"{path}?i={i}", headers or {}) for i in range(start, start + n)]


def _interleave(*groups: list[Request]) -> list[Request]:
    """The groups' requests mixed, so that every endpoint's traffic spans the burst."""
    out: list[Request] = []
    longest = max(len(g) for g in groups)
    for i in range(longest):
        out += [g[i] for g in groups if i < len(g)]
    return out


def _checks(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["checks"]}


def _failed(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["checks"] if c["passed"] is False}


def _named(detail: str, endpoint: str) -> str:
    """The part of a failing check's detail about ``endpoint`` (up to the next ``; ``
    that starts another endpoint), or "" when it is not named."""
    m = re.search(re.escape(endpoint) + r"(?=[: ])(.*?)(?=; (?:GET|POST|and) |$)", detail)
    return m.group(0) if m else ""


def _one_set_of_numbers(run: Run, doc: dict[str, Any]) -> None:
    """Case 13: the verdict, ``GET /api/v1/runs/{run}/endpoints`` and the report show the
    same numbers for every endpoint."""
    api = {e["endpoint"]: e for e in run.api("endpoints")["endpoints"]}
    report = run.report_rows()
    assert set(api) == set(report), (sorted(api), sorted(report))
    for endpoint, e in api.items():
        row = report[endpoint]
        assert int(row["pairs"]) == e["pairs"], (endpoint, row, e)
        assert int(row["strict mismatch"].split()[0]) == e["strict_mismatches"], (row, e)
        assert int(row["tolerance violations"].split()[0]) == e["tolerance_violations"]
        assert int(row["noise differences"]) == e["noise"], (row, e)
    checks = _checks(doc)
    named = 0
    for name, key in (("strict", "strict_mismatches"), ("tolerance", "tolerance_violations")):
        for endpoint, bad, pairs in re.findall(
            r"((?:GET|POST) \S+): (\d+)/(\d+) pairs", checks[name]["detail"]
        ):
            assert (int(bad), int(pairs)) == (api[endpoint][key], api[endpoint]["pairs"])
            named += 1
    assert named, "no endpoint counted in the strict or tolerance check"
    errors = re.findall(
        r"(GET \S+) canary (\d+)/(\d+) vs primary (\d+)/\d+", checks["errors"]["detail"]
    )
    assert errors, checks["errors"]
    for endpoint, canary, attempted, primary in errors:
        e = api[endpoint]
        assert (int(canary), int(primary)) == (e["canary_errors"], e["primary_errors"])
        assert int(attempted) == e["exchanges"] - e["skipped"]
    assert doc["summary"]["pairs"] == sum(e["pairs"] for e in api.values())


# --------------------------------------------------------------------------- the runs

DEFAULTS = {"ignore": ["$..request_id", "$.meta.**"]}


def test_answers(make_run: MakeRun) -> None:
    """Cases 1, 2, 3, 4, 12, 15 and 13: what the canary answers, field by field."""
    run = make_run(
        "answers",
        {
            "compare": {
                "defaults": DEFAULTS,
                "max_body_bytes": 2048,
                "endpoints": [
                    {"match": "GET /precedence", "strict": ["$.meta.version"]},
                    {
                        "match": "GET /unordered",
                        "arrays": {
                            "$.floats": {"unordered": True},
                            "$.bools": {"unordered": True},
                            "$.objs": {"unordered": True},
                        },
                    },
                    {
                        "match": "GET /keyed",
                        "arrays": {"$.items": {"key": "sku", "unordered": True}},
                    },
                    {"match": "GET /numeric-string", "tolerance": {"$.price": {"abs": 0.01}}},
                ],
            },
            # Latency is not what this run is about: judged, with a margin no timing of a
            # loaded machine reaches.
            "verdict": {"latency": {"max_increase": 100.0}},
        },
    )
    run.serve()
    paths = [
        "/noise", "/tiny-secondary", "/precedence", "/unordered", "/large-body",
        "/keyed", "/numeric-string", "/bom", "/blank",
    ]  # fmt: skip
    statuses = run.send(_interleave(*(_requests(p, 30) for p in paths)))
    assert statuses == {"200": 30 * len(paths)}, statuses
    run.wait_recorded()
    code, doc = run.verdict_cli()
    assert (code, doc["verdict"]) == (1, "NO_GO"), doc
    # The pipeline's two ways to ask agree: graygate verdict's exit code and JSON, the gate.
    gate_code, gate = run.verdict()
    assert (gate_code, gate["checks"]) == (code, doc["checks"])
    checks = _checks(doc)
    strict = checks["strict"]
    assert strict["passed"] is False, strict
    detail = strict["detail"]

    # 1: the timestamps differ by nature (the secondary shows it): a value change is noise,
    # a missing field or a changed type is not.
    noise = _named(detail, "GET /noise")
    assert "$.ts_drop (30)" in noise and "$.ts_type (30)" in noise, detail
    assert "$.ts_null (30)" in noise, detail
    assert "$.ts_value" not in detail, detail
    assert "GET /noise $.ts_value" in checks["noise"]["detail"], checks["noise"]
    # 2: three secondary answers say nothing about a rate: the wrong code is no noise
    # (only in the 3 exchanges where the secondary differed too is it excused).
    assert "27/30 pairs" in _named(detail, "GET /tiny-secondary"), detail
    assert "$.code (27)" in _named(detail, "GET /tiny-secondary"), detail
    assert "/tiny-secondary" not in checks["noise"]["detail"], checks["noise"]
    # 3: strict $.meta.version wins over ignore $.meta.** for its whole subtree.
    precedence = _named(detail, "GET /precedence")
    assert "$.meta.version.major (30)" in precedence, detail
    assert "build" not in precedence, detail
    # 4: unordered arrays pair elements with the engine's own equality.
    unordered = _named(detail, "GET /unordered")
    for field in ("$.floats", "$.bools", "$.objs"):
        assert field in unordered, (field, detail)
    # 15: over compare.max_body_bytes a body is compared as bytes (the ignored request_id
    # cannot be told from the rest).
    assert "GET /large-body: 30/30 pairs" in detail, detail
    # 12: none of these differ.
    for path in ("/keyed", "/numeric-string", "/bom", "/blank"):
        for check in _failed(doc).values():
            assert path not in check["detail"], (path, check)
    api = {e["endpoint"]: e for e in run.api("endpoints")["endpoints"]}
    for path in ("/keyed", "/numeric-string", "/bom", "/blank"):
        e = api[f"GET {path}"]
        assert (e["pairs"], e["match"], e["strict_mismatches"]) == (30, 30, 0), e
    # 13: one set of numbers.
    _one_set_of_numbers(run, doc)


def test_errors_and_latency(make_run: MakeRun) -> None:
    """Cases 5, 6, 7 (a text body: judged where certain), 9, 10 and 13."""
    run = make_run(
        "errors", {"compare": {"defaults": DEFAULTS}, "record": {"max_body_bytes": 4096}}
    )
    run.serve()
    requests = _interleave(
        _requests("/fast", 200),
        _requests("/slow", 40),
        _requests("/errors/primary", 40),
        _requests("/errors/canary", 40),
        _requests("/cut-text", 30),
        _requests("/numbers", 30),
    )
    statuses = run.send(requests)
    assert statuses == {"200": len(requests) - 10, "503": 10}, statuses  # the primary's
    run.wait_recorded()
    code, doc = run.verdict()
    assert (code, doc["verdict"]) == (1, "NO_GO"), doc
    failed = _failed(doc)

    # 5: errors are judged per endpoint: the primary's 503s on one endpoint do not cancel
    # the canary's on another.
    errors = failed["errors"]["detail"]
    assert "GET /errors/canary canary 10/40 vs primary 0/40" in errors, errors
    assert "GET /errors/primary" not in errors, errors
    # 6: the slow endpoint is named (the check judges each endpoint on its own).
    latency = failed["latency"]["detail"]
    assert "canary slower by more than 5%" in latency, latency
    assert "GET /slow: p50" in latency, latency
    # 7: a text body cut at the record bound that differs before the cut is a strict
    # mismatch (certain); its answers over the bound are timed like any other.
    strict = failed["strict"]["detail"]
    assert "GET /cut-text: 30/30 pairs" in strict, strict
    api = {e["endpoint"]: e for e in run.api("endpoints")["endpoints"]}
    cut = api["GET /cut-text"]
    assert cut["canary_p50_ms"] is not None and cut["primary_p50_ms"] is not None, cut
    # 9, 10: exact big integers, NaN against null, and the rules 300 levels deep.
    numbers = _named(strict, "GET /numbers")
    assert "$.big (30)" in numbers and "$.nan (30)" in numbers, strict
    assert "$.deep.a[*].a[*]" in numbers, strict
    # 13: one set of numbers, 5xx on both sides included.
    assert (
        api["GET /errors/primary"]["primary_errors"],
        api["GET /errors/canary"]["canary_errors"],
    ) == (10, 10)
    _one_set_of_numbers(run, doc)


def test_backlog_and_cut_bodies(make_run: MakeRun) -> None:
    """Case 8: a GO needs the judging backlog under its bound; case 7: JSON bodies cut at
    the record bound, differing past the cut, are not judgeable, never a match."""
    run = make_run(
        "backlog",
        {
            "compare": {"defaults": DEFAULTS},
            "record": {"max_body_bytes": 4096},
            "verdict": {"latency": {"max_increase": 100.0}},  # not about timing
        },
    )
    # The proxy (and admin) in one process, the diff workers in another, started and
    # stopped on their own. Clean traffic, judged: GO.
    run.serve("proxy,admin")
    workers = run.serve("worker")
    assert run.send(_requests("/backlog", 60)) == {"200": 60}
    run.wait_recorded()
    code, doc = run.verdict()
    assert (code, doc["verdict"]) == (0, "GO"), _failed(doc)

    # 8: with no worker running, 60 exchanges whose canary answer is wrong are recorded:
    # the judged ones are all clean, yet the verdict is not GO: the backlog withholds it.
    run.stop(workers)
    wrong = {"X-Plant": "wrong"}
    assert run.send(_requests("/backlog", 60, wrong, start=60)) == {"200": 60}
    run.wait_recorded(judged=False)
    code, doc = run.verdict()
    assert (code, doc["verdict"]) == (2, "INCONCLUSIVE"), doc
    assert set(_failed(doc)) == {"backlog"}, _failed(doc)
    assert "60 of 120 recorded exchanges not judged yet" in _failed(doc)["backlog"]["detail"]

    # Workers back, and JSON bodies cut at the record bound.
    run.serve("worker")
    assert run.send(_requests("/cut-json", 30)) == {"200": 30}
    run.wait_recorded()
    code, doc = run.verdict()
    assert (code, doc["verdict"]) == (1, "NO_GO"), doc
    failed = _failed(doc)
    # 8: what the backlog held back is a strict mismatch, named.
    assert "GET /backlog: 60/120 pairs" in failed["strict"]["detail"], failed["strict"]
    assert "$.stock (60)" in failed["strict"]["detail"], failed["strict"]
    # 7: the cut JSON bodies are neither matches nor mismatches (their ignored request_id
    # is no violation either): not judgeable, above the bound, which never gives GO.
    judgeable = failed["judgeable"]
    assert judgeable["blocking"] is False, judgeable
    assert "30 of 150 compared exchanges not judgeable" in judgeable["detail"], judgeable
    assert "worst GET /cut-json 30/30" in judgeable["detail"], judgeable
    assert "/cut-json" not in failed["strict"]["detail"], failed["strict"]
    assert _checks(doc)["tolerance"]["passed"] is True, _checks(doc)["tolerance"]
