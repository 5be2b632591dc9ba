"""``--log-format json`` and ``--log-level``: one JSON object per line; a bad value is a
usage error (exit 2) naming the option."""

from __future__ import annotations

import logging
import subprocess
import sys

import orjson
from click.testing import CliRunner

from graygate.cli import cli
from graygate.log_format import JsonFormatter


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
