"""Fixtures of the conformance suite: real servers nobody on the project wrote (httpbin
under gunicorn) and a Go net/http server, started once per module, loopback only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _port_from(proc: subprocess.Popen[str], pattern: str, what: str) -> int:
    """Read ``proc``'s output lines until ``pattern`` gives the port (20 s, 200 lines)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    for _ in range(200):
        if time.monotonic() > deadline:
            break
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(pattern, line)
        if match:
            return int(match.group(1))
    proc.kill()
    raise RuntimeError(f"{what} did not start")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def httpbin_url() -> Iterator[str]:
    """httpbin (PyPI) under gunicorn on a random loopback port."""
    pytest.importorskip("httpbin", reason="httpbin is not installed (pip install -e .[test])")
    pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install -e .[test])")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-b", "127.0.0.1:0", "-w", "2", "httpbin:app"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        port = _port_from(proc, r"Listening at: http://127\.0\.0\.1:(\d+)", "gunicorn")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def go_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``goserver/main.go`` (trailers, 103, redirects, latin-1, echo), built and started."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("the Go toolchain (`go`) is not on PATH: cannot build the Go server")
    binary = tmp_path_factory.mktemp("goserver") / "goserver"
    subprocess.run(
        [go, "build", "-o", str(binary), "main.go"],
        cwd=HERE / "goserver",
        check=True,
        timeout=300,
        env={**os.environ, "GO111MODULE": "off"},
    )
    proc = subprocess.Popen([str(binary)], stdout=subprocess.PIPE, text=True)
    try:
        port = _port_from(proc, r"listening on (\d+)", "the Go server")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)
