"""End-to-end fixtures: real processes on loopback, the real Go canary, real PostgreSQL.

- ``go_canary``: the Go canary (``examples/canary``) built once per session into a temporary
  directory; the tests that need it skip, saying why, only when ``go`` is not on PATH.
- ``procs``: starts processes (each in its own process group, output to a log file) and
  stops every one of them at the end of the test, whatever happened; it also carries the
  shared helpers (``free_port``, ``port_open``, ``pid_alive``, ``http_get``).
- ``fresh_database``: ``await fresh_database()`` gives a new empty database's URL (from
  ``make_database`` in tests/conftest.py); ``migrated_database`` one with the schema.
- ``graygate_config``: writes a graygate.yaml for a primary and a canary, from
  ``config/demo.yaml`` (the rules the demo ships with) and the overrides given.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from graygate.processes import free_port

if TYPE_CHECKING:
    from tests.conftest import DatabaseMaker

REPO = Path(__file__).resolve().parents[2]
DEMO_YAML = REPO / "config" / "demo.yaml"
_LISTENING = re.compile(r"^listening on (http://\S+)\s*$", re.MULTILINE)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("GRAYGATE_DATABASE_URL", None)
    env.pop("GRAYGATE_CONFIG", None)
    env.update(extra)
    return env


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for every purpose here.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` (multiline) in the output; fail when the process
        exits or ``timeout`` seconds pass first."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            out = self.output()
            found = regex.search(out)
            if found:
                return found
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited {self.popen.returncode} before {regex.pattern!r}:\n{out}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {regex.pattern!r} in {timeout}s:\n{out}")
            time.sleep(0.05)


class Procs:
    """Processes a test started; ``stop_all()`` (run at teardown) stops every one.

    Also carries the small helpers the tests share (test modules cannot import conftest).
    """

    free_port = staticmethod(free_port)
    port_open = staticmethod(port_open)
    pid_alive = staticmethod(pid_alive)
    http_get = staticmethod(http_get)
    child_env = staticmethod(child_env)

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Proc] = []

    def spawn(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}.{len(self.started)}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
                env=env or child_env(),
            )
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def service(self, name: str, argv: list[str], timeout: float = 30.0) -> Proc:
        """Start a service that prints ``listening on http://...``; wait for that line."""
        proc = self.spawn(name, argv)
        proc.url = proc.wait_for(_LISTENING, timeout).group(1)
        return proc

    def primary(self) -> Proc:
        return self.service(
            "primary", [sys.executable, "-m", "graygate.examples.orders", "--listen", "127.0.0.1:0"]
        )

    def canary(self, binary: Path, fault: str | None = None) -> Proc:
        argv = [str(binary), "-listen", "127.0.0.1:0"]
        if fault:
            argv += ["-fault", fault]
        return self.service("canary", argv)

    def serve(
        self, config: Path, database_url: str, admin_url: str, *, timeout: float = 60.0
    ) -> Proc:
        """``graygate serve`` on ``config``; returns once ``/readyz`` answers 200."""
        proc = self.spawn(
            "serve",
            [
                sys.executable, "-m", "graygate", "serve", "-c", str(config),
                "--database-url", database_url, "--data-dir", str(self.workdir / "data"),
            ],
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            if proc.popen.poll() is not None:
                raise AssertionError(f"serve exited {proc.popen.returncode}: {proc.output()}")
            try:
                status, body = http_get(f"{admin_url}/readyz", timeout=2.0)
                if status == 200:
                    return proc
                last = (status, body[:200])
            except OSError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise AssertionError(f"serve not ready in {timeout}s ({last}): {proc.output()}")
            time.sleep(0.2)

    @staticmethod
    def stop(proc: Proc, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(sig)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left in its group
        return int(proc.popen.returncode)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture(scope="session")
def go_canary(canary_bin: Path) -> Path:
    """The Go canary, built once per session (tests/conftest.py)."""
    return canary_bin


@pytest.fixture
def fresh_database(make_database: DatabaseMaker) -> Callable[[], str]:
    """``fresh_database()``: the URL of a new, empty database (dropped at session end)."""
    return make_database.sync


@pytest.fixture
def migrated_database(fresh_database: Callable[[], str]) -> Callable[[], str]:
    """``migrated_database()``: a new database with graygate's schema."""
    from store.migrate import upgrade

    def make() -> str:
        url = fresh_database()
        upgrade(url)
        return url

    return make


def write_config(
    path: Path,
    *,
    run: str,
    primary: str,
    canary: str,
    listen_port: int,
    admin_port: int,
    overrides: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
) -> Path:
    """graygate.yaml from config/demo.yaml with real addresses; ``overrides`` merged in
    (dicts deeply, anything else replaced; several, in order)."""
    data: dict[str, Any] = yaml.safe_load(DEMO_YAML.read_text())
    data["run"] = run
    data["listen"] = f"127.0.0.1:{listen_port}"
    data["admin"] = {"listen": f"127.0.0.1:{admin_port}"}
    data["upstreams"] = {"primary": primary, "canary": canary}
    data.setdefault("runtime", {})["canary"] = {"expvar": f"{canary}/debug/vars"}
    data.pop("writes", None)  # the demo's write check reads the demo's database: give one
    for layer in [overrides or {}] if isinstance(overrides, dict) else overrides or []:
        _merge(data, layer)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


@pytest.fixture
def graygate_config(tmp_path: Path) -> Callable[..., Path]:
    def make(**kwargs: Any) -> Path:
        return write_config(tmp_path / "graygate.yaml", **kwargs)

    return make


@dataclass(frozen=True)
class TwinSetup:
    """graygate's config in front of two identical upstreams (the canary is a second
    primary), on free ports: ``cfg`` the file, ``listen`` the proxied port, ``admin`` the
    admin port, ``run`` the run's name."""

    cfg: Path
    listen: int
    admin: int
    run: str


@pytest.fixture
def twin_config(procs: Procs, graygate_config: Callable[..., Path]) -> Callable[..., TwinSetup]:
    """``twin_config(prefix, overrides)``: two primaries started, a config written for them
    (``runtime.canary`` off: the twins are not Go services) and its ports."""

    def make(prefix: str, overrides: dict[str, Any] | None = None) -> TwinSetup:
        primary, canary = procs.primary(), procs.primary()
        assert primary.url and canary.url
        listen, admin = procs.free_port(), procs.free_port()
        run = f"{prefix}-{uuid.uuid4().hex[:8]}"
        extra: dict[str, Any] = {"runtime": {"canary": None}}
        _merge(extra, overrides or {})
        cfg = graygate_config(
            run=run,
            primary=primary.url,
            canary=canary.url,
            listen_port=listen,
            admin_port=admin,
            overrides=extra,
        )
        return TwinSetup(cfg, listen, admin, run)

    return make
