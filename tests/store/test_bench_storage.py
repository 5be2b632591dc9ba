"""bench/bench_storage.py runs end to end in its smallest form (a smoke test: the figures
are printed, none is judged; the bench's targets belong to the bench, not to a test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PgServer

ROOT = Path(__file__).resolve().parents[2]


def test_bench_storage_quick_runs(test_pg: PgServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRAYGATE_BENCH_PG": test_pg.admin_dsn}
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "bench_storage.py"), "--quick",
            "--exchanges", "2000", "--seconds", "1", "--warmup", "0.5", "--sampled", "300",
            "--writers", "1",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, (out, done.stderr)
    for line in (
        "CPU: ",
        "exchanges/s sustained into one PostgreSQL",
        "bytes per exchange: ",
        "plain DELETE of the rows: ",
        "runs delete, until it returns (the run gone for every reader",
        "runs delete, until the space is reclaimed (a detached `graygate runs reap` started",
        "exchanges, ",
        "ratio: runs delete returns ",
        "quick mode: targets not judged",
    ):
        assert line in out, out
    assert "2,000 exchanges" in out
