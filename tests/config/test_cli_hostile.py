"""The CLI with hostile or broken configuration (issue 10): censored output, one-line
errors with exit code 2, never a traceback. Real subprocesses, as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOOD = """run: r1
listen: 127.0.0.1:0
upstreams: {primary: "http://127.0.0.1:1", canary: "http://127.0.0.1:2"}
"""


def _graygate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graygate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        cwd=REPO,
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_config_check_censors_every_secret(tmp_path: Path) -> None:
    cfg = tmp_path / "graygate.yaml"
    cfg.write_text(GOOD + "database: {url: 'postgresql://u:hunter2@db/x?sslpassword=pw9'}\n")
    proc = _graygate("config", "check", "-c", str(cfg), env={"GRAYGATE_ADMIN_TOKEN": "tok8"})
    assert proc.returncode == 0, proc.stderr
    for secret in ("hunter2", "pw9", "tok8"):
        assert secret not in proc.stdout + proc.stderr
    assert "url: postgresql+asyncpg://u:***@db/x?sslpassword=***" in proc.stdout


@pytest.mark.parametrize("key", ["primary", "canary"])
def test_upstream_userinfo_exits_2_naming_the_key(tmp_path: Path, key: str) -> None:
    cfg = tmp_path / "graygate.yaml"
    port = "1" if key == "primary" else "2"
    cfg.write_text(
        GOOD.replace(f"http://127.0.0.1:{port}", f"http://admin:hunter2@127.0.0.1:{port}")
    )
    for command in (("config", "check"), ("serve",)):
        proc = _graygate(*command, "-c", str(cfg))
        assert proc.returncode == 2, proc.stderr
        line = _one_line(proc)
        assert f"upstreams.{key}" in line and "credentials" in line
        assert "hunter2" not in proc.stderr + proc.stdout


# --- small ones: one line, exit 2, no traceback ------------------------------------------


def test_non_utf8_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "graygate.yaml"
    cfg.write_bytes(GOOD.encode() + b"# caf\xe9 in latin-1\n")
    for command in (("config", "check"), ("serve",)):
        proc = _graygate(*command, "-c", str(cfg))
        assert proc.returncode == 2, proc.stderr
        line = _one_line(proc)
        assert "line 4: not UTF-8" in line and "0xe9" in line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@[::1:5432/x", "not a valid URL"),
        ("postgresql://postgres@127.0.0.1:99999/x", "not a valid URL"),
        ("postgresql://postgres@127.0.0.1:5432x/x", "not a valid URL"),
        ("postgresql://", "names no database"),
        ("postgresql://postgres:hunter2@127.0.0.1:5432", "names no database"),
        ("postgresql://postgres@127.0.0.1:5432/", "names no database"),
        ("mysql://u:hunter2@h/x", "must be a postgresql://"),
    ],
)
def test_bad_database_urls(tmp_path: Path, url: str, expected: str) -> None:
    proc = _graygate("db", "upgrade", "--database-url", url)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc)
    assert "--database-url" in line and expected in line
    assert "hunter2" not in proc.stderr
    cfg = tmp_path / "graygate.yaml"
    cfg.write_text(GOOD + f"database: {{url: '{url}'}}\n")
    proc = _graygate("config", "check", "-c", str(cfg))
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc)
    assert "database.url" in line and expected in line
    assert "hunter2" not in proc.stderr


def test_database_url_with_dbname_in_the_query_is_accepted(tmp_path: Path) -> None:
    cfg = tmp_path / "graygate.yaml"
    cfg.write_text(GOOD + "database: {url: 'postgresql://postgres@/?dbname=g&host=/tmp'}\n")
    proc = _graygate("config", "check", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("127.0.0.1:1", "127.0.0.1:99999"), "upstreams.primary"),
        (GOOD.replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:99999"), "listen"),
        (GOOD + "admin: {listen: '127.0.0.1:65536'}\n", "admin.listen"),
        (GOOD.replace("canary:", "timeout_ms: 3600001, canary:"), "upstreams.timeout_ms"),
        (GOOD + "record: {queue_size: 10000001}\n", "record.queue_size"),
    ],
)
def test_out_of_range_numbers(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "graygate.yaml"
    cfg.write_text(text)
    proc = _graygate("config", "check", "-c", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert f"config error: {expected}:" in _one_line(proc)


def test_open_admin_without_token_exits_2_before_the_database(tmp_path: Path) -> None:
    cfg = tmp_path / "graygate.yaml"
    cfg.write_text(GOOD + "admin: {listen: '0.0.0.0:0'}\n")
    away = {"GRAYGATE_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"}
    proc = _graygate("serve", "-c", str(cfg), env=away)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc)
    assert "config error: admin.listen: '0.0.0.0:0'" in line and "allow_open" in line
    # with a token, or allow_open, or without the admin role: it goes on (to the database,
    # which is away here: exit 3)
    for extra_env, text, args in (
        ({"GRAYGATE_ADMIN_TOKEN": "t"}, GOOD + "admin: {listen: '0.0.0.0:0'}\n", ()),
        ({}, GOOD + "admin: {listen: '0.0.0.0:0', allow_open: true}\n", ()),
        ({}, GOOD + "admin: {listen: '0.0.0.0:0'}\n", ("--role", "proxy,worker")),
    ):
        cfg.write_text(text)
        proc = _graygate("serve", "-c", str(cfg), *args, env={**away, **extra_env})
        assert proc.returncode == 3, proc.stderr
        assert "admin.listen" not in proc.stderr
