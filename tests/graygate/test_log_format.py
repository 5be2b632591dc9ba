"""``--log-format json`` and ``--log-level``: one JSON object per line; a bad value is a
usage error (exit 2) naming the option; the embedded PostgreSQL says nothing of its own
unless ``--log-level debug``."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
from click.testing import CliRunner

from graygate.cli import cli
from graygate.log_format import JsonFormatter

ROOT = Path(__file__).resolve().parents[2]


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("graygate.test").makeRecord(
        "graygate.test", logging.WARNING, __file__, 1, msg, ("x",), None, extra=extra
    )
    return record


def test_json_line_carries_trace_id_and_extras() -> None:
    line = JsonFormatter().format(_record("hello %s\nworld", trace_id="ab" * 16, endpoint="GET /a"))
    assert "\n" not in line  # one line, whatever the message holds
    data = orjson.loads(line)
    assert data["message"] == "hello x\nworld" and data["level"] == "WARNING"
    assert data["trace_id"] == "ab" * 16 and data["endpoint"] == "GET /a"
    assert data["logger"] == "graygate.test" and data["time"].endswith("+00:00")


def test_json_line_carries_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    data = orjson.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in data["exc"] and "trace_id" not in data


def test_bad_log_level_or_format_is_a_usage_error() -> None:
    for args, option in (
        (["--log-level", "loud"], "--log-level"),
        (["--log-format", "xml"], "--log-format"),
    ):
        result = CliRunner().invoke(cli, [*args, "config", "--help"])
        assert result.exit_code == 2, result.output
        assert option in result.output


def test_a_real_process_logs_json_lines(tmp_path: object) -> None:
    code = (
        "import logging, sys; from graygate.cli import _setup_logging; "
        "_setup_logging('INFO', 'json'); logging.getLogger('graygate.x').info('started %d', 3)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    (line,) = done.stderr.splitlines()
    assert orjson.loads(line)["message"] == "started 3"


def _graygate_db_current(data_dir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``graygate [OPTIONS] db current`` on an embedded PostgreSQL made in ``data_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "graygate", *options, "db", "current", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )


def test_the_embedded_postgresql_is_silent_unless_debug() -> None:
    """initdb, pg_ctl and pgserver's own lines show under --log-level debug only."""
    # Not under pytest's temporary directory: PostgreSQL runs as another user (as root).
    root = Path(tempfile.mkdtemp(prefix="graygate-quiet-pg-"))
    try:
        quiet = _graygate_db_current(root / "quiet")
        assert "revision" in quiet.stdout, quiet.stderr
        # graygate's own line, nothing else
        assert quiet.stderr.splitlines() == [
            f"graygate: using the embedded PostgreSQL in {root / 'quiet' / 'pgdata'}"
        ], quiet.stderr
        loud = _graygate_db_current(root / "loud", "--log-level", "debug")
        assert "revision" in loud.stdout, loud.stderr
        assert "pgserver" in loud.stderr and "initdb" in loud.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_bad_log_level_in_the_environment_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "graygate", "db", "current", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "GRAYGATE_LOG_LEVEL": "loud"},
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert "--log-level" in done.stderr and "'loud'" in done.stderr
    assert not (tmp_path / "pgdata").exists()  # refused before anything started
