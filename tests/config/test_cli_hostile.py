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
