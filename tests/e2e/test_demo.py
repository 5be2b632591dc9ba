"""``graygate demo`` as a newcomer runs it: one command, a verdict, a report, nothing left over.

Each test runs ``python -m graygate demo`` as a subprocess (with ``--data-dir`` in the
test's temporary directory, so the Go canary is built there and nothing lands in the
user's data directory) and reads what it prints: the verdict line, the report's path, and
the addresses and pids of every process it started, which must all be gone when it exits,
also when it is interrupted mid-run.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from graygate.demo import pq_available

if TYPE_CHECKING:
    from tests.e2e.conftest import Proc, Procs

DEMO_TIMEOUT_S = 180.0


def _demo_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "graygate", "demo", *args]


def _wait_exit(proc: Proc, timeout: float = DEMO_TIMEOUT_S) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while proc.popen.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"demo still running after {timeout}s:\n{proc.output()}")
        time.sleep(0.2)
    return int(proc.popen.returncode), proc.output()


def _started(out: str) -> tuple[set[int], set[int]]:
    """The pids and loopback ports of the processes the demo said it started."""
    pids = {int(p) for p in re.findall(r"\bpid (\d+)", out)}
    ports = {int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", out)}
    return pids, ports


def _postgres_serving(pgdata: Path) -> list[int]:
    """Pids of processes whose command line names ``pgdata`` (the embedded server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(pgdata) in cmdline and "postgres" in cmdline:
            found.append(int(entry.name))
    return found


def _assert_nothing_left(procs: Procs, out: str, *, expect_processes: int = 3) -> None:
    pids, ports = _started(out)
    assert len(pids) >= expect_processes, f"the demo did not name its processes:\n{out}"
    # primary, canary, proxy and admin at least
    assert len(ports) >= 4, f"the demo did not name its addresses:\n{out}"
    deadline = time.monotonic() + 5.0
    while True:
        alive = sorted(p for p in pids if procs.pid_alive(p))
        listening = sorted(p for p in ports if procs.port_open(p))
        if not alive and not listening:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind: pids {alive}, listening ports {listening}\n{out}")
        time.sleep(0.1)


def _report(out: str) -> Path:
    found = re.search(r"^report\s+(/\S+\.html)\s*$", out, re.MULTILINE)
    assert found, f"no report path printed:\n{out}"
    path = Path(found.group(1))
    assert path.is_file(), path
    html = path.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html"), html[:200]
    assert "</html>" in html.lower()
    return path


@pytest.mark.parametrize(
    ("fault", "code", "verdict"),
    [
        (None, 0, "GO"),
        ("stock_deduction", 1, "NO_GO"),
        ("gc_pressure", 1, "NO_GO"),
        ("stock_write", 1, "NO_GO"),
    ],
    ids=["no-fault", "stock_deduction", "gc_pressure", "stock_write"],
)
def test_demo_with_a_database_url(
    fault: str | None,
    code: int,
    verdict: str,
    procs: Procs,
    go_canary: Path,
    fresh_database: Callable[[], str],
    tmp_path: Path,
) -> None:
    if fault == "stock_write" and not pq_available():
        pytest.skip(
            "lib/pq is not installed: the Go canary cannot write (golang-github-lib-pq-dev)"
        )
    url = fresh_database()  # empty: the demo applies the migrations itself
    data = tmp_path / "data"
    args = ["--duration", "8", "--database-url", url, "--data-dir", str(data)]
    if fault:
        args += ["--fault", fault]
    demo = procs.spawn("demo", _demo_argv(*args))
    rc, out = _wait_exit(demo)
    assert rc == code, out
    assert re.search(rf"^verdict\s+{verdict}\s+run demo-{fault or 'none'}-", out, re.M), out
    assert "Go," in out, f"the Go canary was not used:\n{out}"
    # one line per check
    for check in ("evidence", "strict", "tolerance", "errors", "latency"):
        assert re.search(rf"^\s+(PASS|FAIL\*?|WAIT|SKIP)\s+{check}\b", out, re.M), out
    if fault == "stock_deduction":
        strict = r"^\s+FAIL\s+strict\b.*POST /api/orders.*stock_(after|deducted)"
        assert re.search(strict, out, re.M), out
    if fault == "stock_write":
        # The answers all match: only the shadow write's stock move differs (issue 11).
        strict = r"^\s+FAIL\s+strict\b.*WRITE stock_moves: .*\$\[\*\]\.qty \("
        assert re.search(strict, out, re.M), out
        assert not re.search(r"^\s+FAIL\s+strict\b.*POST /api/orders", out, re.M), out
    if fault is None and pq_available():
        assert re.search(r"^\s+PASS\s+writes\b.*WRITE stock_moves", out, re.M), out
    if fault == "gc_pressure":
        # The runtime check, the windows and the threshold: the demo's pause budget.
        gc = r"^\s+FAIL\s+runtime\b.*GC pause p99 above 10 ms \(budget\).*windows \d+-\d+ of 2s"
        assert re.search(gc, out, re.M), out
    elif fault is None:
        # GC pauses have a baseline (the budget); a short run may see no collection at all.
        assert re.search(r"^\s+PASS\s+runtime\b.*pause_p99_ms=10\b", out, re.M), out
        assert "no baseline" not in out, out
    report = _report(out)
    assert report.parent == data.resolve() / "reports"
    _assert_nothing_left(procs, out)


def test_demo_with_the_embedded_database(procs: Procs, go_canary: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    demo = procs.spawn("demo", _demo_argv("--duration", "8", "--data-dir", str(data)))
    rc, out = _wait_exit(demo)
    pgdata = data.resolve() / "pgdata"
    assert f"embedded PostgreSQL in {pgdata}" in out, out
    assert rc == 0, out
    assert re.search(r"^verdict\s+GO\s+run demo-none-", out, re.M), out
    _report(out)
    _assert_nothing_left(procs, out)
    assert not (pgdata / "postmaster.pid").exists(), "the embedded PostgreSQL is still running"
    assert not _postgres_serving(pgdata)


@pytest.mark.parametrize(
    ("sig", "embedded"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["sigint-embedded", "sigterm-database-url"],
)
def test_demo_interrupted_mid_run_leaves_nothing_behind(
    sig: signal.Signals,
    embedded: bool,
    procs: Procs,
    go_canary: Path,
    fresh_database: Callable[[], str],
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    args = ["--duration", "120", "--data-dir", str(data)]
    if not embedded:
        args += ["--database-url", fresh_database()]
    demo = procs.spawn("demo", _demo_argv(*args))
    demo.wait_for(r"^load\s+sending", timeout=120.0)
    time.sleep(2.0)  # mid-load
    demo.popen.send_signal(sig)
    rc, out = _wait_exit(demo, timeout=60)
    assert rc == 128 + sig, out
    assert "interrupted" in out, out
    assert not re.search(r"^verdict\s", out, re.M), out
    _assert_nothing_left(procs, out)
    if embedded:
        pgdata = data.resolve() / "pgdata"
        assert not (pgdata / "postmaster.pid").exists(), "the embedded PostgreSQL still runs"
        assert not _postgres_serving(pgdata)


def test_demo_bad_fault_fails_with_one_line(procs: Procs, tmp_path: Path) -> None:
    demo = procs.spawn(
        "demo",
        _demo_argv("--fault", "no_such_fault", "--standin", "--data-dir", str(tmp_path / "d")),
    )
    rc, out = _wait_exit(demo, timeout=60)
    assert rc == 4, out
    lines = [line for line in out.splitlines() if line.startswith("graygate demo:")]
    assert len(lines) == 1 and "no_such_fault" in lines[0], out


def test_the_demo_load_is_bounded_and_mixed(procs: Procs) -> None:
    """The load the demo sends: a request budget and a duration bound it, the rate paces
    it, and it mixes order reads, stock reads and new orders (answered 2xx by the real
    primary: the bodies are valid)."""
    import asyncio

    from graygate.loadgen import LoadOptions, run_load

    primary = procs.primary()
    assert primary.url
    seen: list[int] = []
    stats = asyncio.run(
        run_load(
            LoadOptions(base_url=primary.url, requests=300, concurrency=4, seed=1),
            progress=lambda s: seen.append(s.sent),
        )
    )
    assert stats.sent == stats.completed == 300 and stats.errors == 0, stats.as_dict()
    assert set(stats.statuses) <= {200, 201}, stats.as_dict()
    assert stats.by_kind["post_order"] > 0 and stats.by_kind["get_inventory"] > 0
    assert stats.by_kind["get_order"] > stats.by_kind["post_order"]
    assert seen and seen[-1] == 300

    started = time.monotonic()
    paced = asyncio.run(
        run_load(LoadOptions(base_url=primary.url, duration=2.0, rate=40, concurrency=4, seed=2))
    )
    took = time.monotonic() - started
    assert 1.9 <= took < 4.0, took
    assert 70 <= paced.sent <= 82 and paced.errors == 0, paced.as_dict()
