"""``graygate demo``: the whole gate, end to end, in one command.

What it does, in order (every step prints one line; a failed step prints one line that says
what failed and where its log is, and the demo exits 4):

1. builds the Go canary (``examples/canary``) into ``<data_dir>/bin`` when ``go`` is on
   PATH, cached by a hash of its sources; else (or with ``use_go=False``) it uses the
   Python stand-in (``python -m graygate.examples.orders --role canary-standin``);
2. opens the database: the given URL, or an embedded PostgreSQL in ``<data_dir>/pgdata``
   (stopped again at the end), and applies the migrations;
3. starts the demo primary and canary on free loopback ports (``--fault`` planted in the
   canary), writes a configuration from ``config/demo.yaml`` with the real ports to
   ``<data_dir>/demo/<run>/graygate.yaml`` and runs ``graygate serve`` on it as a
   subprocess; waits for the admin API's ``/readyz``;
4. sends the mixed load of :mod:`graygate.loadgen` through the proxy for ``duration`` seconds
   at ``rate`` requests per second, with a progress bar;
5. waits until the diff workers have judged every recorded exchange, prints the verdict
   with one line per check, and writes the HTML report to
   ``<data_dir>/reports/<run>.html``; with ``keep_running`` everything stays up (the admin
   URL ``/runs/<run>`` shows the live report) until Ctrl-C.

Every process it started is stopped on the way out, also on Ctrl-C (SIGINT), SIGTERM and
errors; children run in their own process groups (a terminal's Ctrl-C reaches only the
demo, which stops them in order: graygate first, so it flushes its records) and, on Linux,
die with the demo should it be killed outright.

Exit codes: 0 GO, 1 NO_GO, 2 INCONCLUSIVE (the verdict, like ``graygate verdict``); 3 the
demo ran but no verdict could be read; 4 the demo failed (bad option, a process did not
start or died, the database is away); 130 / 143 interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import aiohttp
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from graygate.errors import one_line
from graygate.loadgen import LoadOptions, LoadStats, run_load
from graygate.processes import free_port, parent_death_signal

__all__ = [
    "DEMO_CONFIG",
    "EXIT_FAILED",
    "EXIT_INCONCLUSIVE",
    "EXIT_INTERRUPTED_SIGINT",
    "EXIT_INTERRUPTED_SIGTERM",
    "EXIT_NO_GO",
    "EXIT_NO_VERDICT",
    "EXIT_OK",
    "DemoError",
    "build_go_canary",
    "run_demo",
]

logger = logging.getLogger(__name__)

EXIT_OK = 0  # GO
EXIT_NO_GO = 1
EXIT_INCONCLUSIVE = 2
EXIT_NO_VERDICT = 3
EXIT_FAILED = 4
EXIT_INTERRUPTED_SIGINT = 128 + signal.SIGINT
EXIT_INTERRUPTED_SIGTERM = 128 + signal.SIGTERM
_VERDICT_EXIT = {"GO": EXIT_OK, "NO_GO": EXIT_NO_GO, "INCONCLUSIVE": EXIT_INCONCLUSIVE}

DEMO_CONFIG = Path(str(resources.files("config").joinpath("demo.yaml")))
CANARY_SRC = Path(str(resources.files("graygate.examples").joinpath("canary")))

CONCURRENCY = 8
START_TIMEOUT_S = 30.0  # a service prints "listening on"
READY_TIMEOUT_S = 90.0  # graygate serve answers /readyz
JUDGE_TIMEOUT_S = 90.0  # the workers judge what was recorded
STOP_TIMEOUT_S = 20.0  # a child exits after SIGTERM
POLL_S = 0.25
_LISTENING = re.compile(r"^listening on (http://\S+)\s*$", re.MULTILINE)


class DemoError(Exception):
    """A step of the demo failed; the message is the one line the user sees."""


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGINT and SIGTERM while the demo runs.

    The first signal stops the demo: outside the event loop it raises ``_Interrupted``;
    inside, it cancels the demo's main task (whose ``finally`` stops the children). Later
    signals, and any signal once the demo is cleaning up, are only noted, so that cleanup
    is never cut short.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.quiet = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[int] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def attach(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[int]) -> None:
        self._loop, self._task = loop, task

    def detach(self) -> None:
        self._loop = self._task = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None or self.quiet:
            self.signum = self.signum or signum
            return
        self.signum = signum
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
            return
        raise _Interrupted(signum)


def _interrupted_code(signum: int) -> int:
    return 128 + signum


# --------------------------------------------------------------------------- processes


_PDEATHSIG = parent_death_signal()


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 1) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])

    def died(self) -> str | None:
        """A one-line account when the process has exited, else None."""
        code = self.proc.poll()
        if code is None:
            return None
        last = self.tail()
        return (
            f"{self.name} exited with code {code}"
            + (f": {last}" if last else "")
            + f" (log: {self.log})"
        )


def _spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> _Child:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches the demo only
                preexec_fn=_PDEATHSIG,
                env=env,
                cwd=log.parent,
            )
        except OSError as exc:
            raise DemoError(f"cannot start {name} ({argv[0]}): {exc}") from None
    return _Child(name, proc, log)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a reused group id of someone else's
        return False
    return True


async def _stop(child: _Child, grace: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; also whatever the child left in its
    process group."""
    proc = child.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, grace)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0fs: killing it", child.name, grace)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.to_thread(proc.wait)
    # The child ran in its own session: its pid is its process group's id.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(child.pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        for _ in range(100):
            if not _group_alive(child.pid):
                return
            await asyncio.sleep(0.05)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --------------------------------------------------------------------------- the canary


def _source_hash(src: Path) -> str:
    h = hashlib.sha256()
    files = sorted(
        p
        for p in src.iterdir()
        if (p.suffix == ".go" and not p.name.endswith("_test.go")) or p.name in ("go.mod", "go.sum")
    )
    for p in files:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


# GOPATH holding github.com/lib/pq (Debian's golang-github-lib-pq-dev): the canary is built
# with it, offline, in GOPATH mode with the pq tag, so that it can write to PostgreSQL.
PQ_GOPATH = Path("/usr/share/gocode")


def pq_available(gopath: Path = PQ_GOPATH) -> bool:
    """Whether the Go PostgreSQL driver lib/pq is in ``gopath`` (the canary's writes)."""
    return (gopath / "src" / "github.com" / "lib" / "pq" / "conn.go").is_file()


def build_go_canary(bin_dir: Path, *, go: str | None = None, src: Path = CANARY_SRC) -> Path:
    """The Go canary's binary in ``bin_dir``, built unless one from the same sources is
    there; with PostgreSQL writes (``-tags pq``, GOPATH mode, no module fetched) when
    lib/pq is installed (:func:`pq_available`). Raises DemoError when ``go`` is missing or
    the build fails."""
    go = go or shutil.which("go")
    if go is None:
        raise DemoError("the Go toolchain (`go`) is not on PATH")
    if not src.is_dir():
        raise DemoError(f"the Go canary's sources are not at {src}")
    pq = pq_available()
    target = bin_dir / f"canary-{_source_hash(src)}{'-pq' if pq else ''}"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    bin_dir.mkdir(parents=True, exist_ok=True)
    tmp = bin_dir / f".{target.name}.{os.getpid()}.tmp"
    env = dict(os.environ)
    if not env.get("GOCACHE") and not env.get("HOME") and not env.get("XDG_CACHE_HOME"):
        env["GOCACHE"] = str(bin_dir / "go-cache")
    argv = [go, "build", "-o", str(tmp), "."]
    if pq:
        env.update(GO111MODULE="off", GOPATH=str(PQ_GOPATH), GOFLAGS="")
        argv[2:2] = ["-tags", "pq"]
    try:
        proc = subprocess.run(
            argv,
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        tmp.unlink(missing_ok=True)
        raise DemoError(f"cannot build the Go canary: {exc}") from None
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = (proc.stderr or proc.stdout).strip().splitlines()
        raise DemoError(
            "go build of the canary failed: " + (first[0] if first else f"exit {proc.returncode}")
        )
    os.replace(tmp, target)
    return target


# --------------------------------------------------------------------------- the demo


@dataclass
class _Plan:
    duration: float
    fault: str | None
    data_dir: Path
    rate: float
    keep_running: bool
    canary_bin: Path | None  # None: the Python stand-in
    run: str
    workdir: Path
    console: Console
    out: TextIO
    signals: _Signals
    children: list[_Child] = field(default_factory=list)

    def say(self, *parts: Any, **kwargs: Any) -> None:
        self.console.print(*parts, **kwargs)
        with contextlib.suppress(OSError, ValueError):
            self.out.flush()

    def step(self, label: str, text: str) -> None:
        line = Text()
        line.append(f"{label:<10}", style="bold cyan")
        line.append(text)
        self.say(line)


def _run_name(fault: str | None) -> str:
    what = re.sub(r"[^A-Za-z0-9_]", "_", fault.split("=", 1)[0]) if fault else "none"
    return f"demo-{what}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _check_fault(fault: str | None) -> None:
    if fault is None:
        return
    from graygate.examples.orders import parse_faults

    try:
        parse_faults([fault])
    except ValueError as exc:
        raise DemoError(f"--fault: {exc}") from None


DEMO_SCHEMA = "orders_demo"  # the demo services' tables, in the demo's database


def _write_config(
    plan: _Plan,
    primary: str,
    canary: str,
    listen: str,
    admin: str,
    writes_url: str | None = None,
) -> Path:
    from config.schema import GraygateConfig

    try:
        data: dict[str, Any] = yaml.safe_load(DEMO_CONFIG.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DemoError(f"cannot read the demo configuration {DEMO_CONFIG}: {exc}") from None
    data["run"] = plan.run
    data["listen"] = listen
    data.setdefault("admin", {})["listen"] = admin
    data.setdefault("upstreams", {}).update(primary=primary, canary=canary)
    runtime = data.setdefault("runtime", {})
    runtime.setdefault("canary", {})["expvar"] = f"{canary}/debug/vars"
    data.pop("database", None)  # serve gets --database-url
    if writes_url is None:
        data.pop("writes", None)  # the canary cannot write: nothing to compare
    else:
        # The services write to the demo's database (DEMO_SCHEMA): the checks read it.
        for check in data.get("writes") or ():
            for side in ("primary", "canary"):
                check.setdefault(side, {})["url"] = writes_url
    try:
        GraygateConfig.model_validate(data)
    except ValueError as exc:
        first = str(exc).splitlines()
        raise DemoError(f"the demo configuration is not valid: {' '.join(first[:3])}") from None
    path = plan.workdir / "graygate.yaml"
    path.write_text(
        f"# written by `graygate demo` from {DEMO_CONFIG}\n" + yaml.safe_dump(data, sort_keys=False)
    )
    return path


async def _start_service(plan: _Plan, name: str, argv: list[str]) -> tuple[_Child, str]:
    """Start an example service on a free port; its base URL from its first line."""
    child = _spawn(name, argv, plan.workdir / f"{name}.log", _child_env())
    plan.children.append(child)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError):
            found = _LISTENING.search(child.log.read_text(errors="replace"))
            if found:
                return child, found.group(1)
        died = child.died()
        if died:
            raise DemoError(died)
        if time.monotonic() > deadline:
            raise DemoError(
                f"{name} did not say where it listens within {START_TIMEOUT_S:.0f}s "
                f"(log: {child.log})"
            )
        await asyncio.sleep(0.05)


def _check_children(plan: _Plan) -> None:
    for child in plan.children:
        died = child.died()
        if died:
            raise DemoError(died)


async def _get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any] | None]:
    async with session.get(url) as resp:
        try:
            data = await resp.json(content_type=None)
        except ValueError:
            data = None
        return resp.status, data if isinstance(data, dict) else None


async def _wait_ready(plan: _Plan, session: aiohttp.ClientSession, admin: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    why = "no answer"
    while True:
        _check_children(plan)
        try:
            status, data = await _get_json(session, f"{admin}/readyz")
            if status == 200:
                return
            why = f"HTTP {status}" + (f" {data}" if data else "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = type(exc).__name__
        if time.monotonic() > deadline:
            serve = next(c for c in plan.children if c.name == "graygate serve")
            raise DemoError(
                f"graygate serve was not ready within {READY_TIMEOUT_S:.0f}s ({why}; "
                f"log: {serve.log})"
            )
        await asyncio.sleep(POLL_S)


async def _send_load(plan: _Plan, proxy: str) -> LoadStats:
    opts = LoadOptions(
        base_url=proxy, duration=plan.duration, concurrency=CONCURRENCY, rate=plan.rate
    )
    progress = Progress(
        TextColumn("[bold cyan]load      [/]"),
        BarColumn(bar_width=30),
        TextColumn("{task.fields[sent]:>6} sent"),
        TextColumn("{task.fields[errors]:>4} errors"),
        TextColumn("{task.fields[rate]:>6.1f} req/s"),
        TimeRemainingColumn(),
        console=plan.console,
        transient=True,
        disable=not plan.console.is_terminal,
    )
    task_id = progress.add_task("load", total=1.0, sent=0, errors=0, rate=0.0)

    def update(stats: LoadStats) -> None:
        progress.update(
            task_id,
            completed=stats.fraction_done,
            sent=stats.sent,
            errors=stats.errors,
            rate=stats.rate,
        )

    with progress:
        load = asyncio.create_task(run_load(opts, progress=update), name="demo-load")
        try:
            while not load.done():
                await asyncio.wait({load}, timeout=POLL_S)
                _check_children(plan)
        finally:
            if not load.done():
                load.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await load
        stats = load.result()
    return stats


async def _wait_judged(
    plan: _Plan, session: aiohttp.ClientSession, admin: str, answered: int
) -> dict[str, Any] | None:
    """Poll the verdict until every answered request is recorded and judged; the last
    verdict document (None if the admin API never answered with one)."""
    url = f"{admin}/api/v1/runs/{plan.run}/verdict"
    deadline = time.monotonic() + JUDGE_TIMEOUT_S
    last: dict[str, Any] | None = None
    with plan.console.status("[bold cyan]judging[/]  waiting for the diff workers") as status:
        while True:
            _check_children(plan)
            try:
                code, data = await _get_json(session, url)
                if code == 200 and data is not None:
                    last = data
            except (aiohttp.ClientError, TimeoutError):
                pass
            summary = (last or {}).get("summary") or {}
            recorded = int(summary.get("recorded") or 0)
            unrecorded = int(summary.get("unrecorded") or 0)
            judged = int(summary.get("judged") or 0)
            waiting = _waiting_for(last) if last is not None else None
            status.update(
                f"[bold cyan]judging[/]  {judged} of {recorded} recorded exchanges judged"
                f" ({answered} answered)" + (f"; waiting for {waiting}" if waiting else "")
            )
            if (
                last is not None
                and judged >= recorded
                and recorded + unrecorded >= answered
                and waiting is None
            ):
                return last
            if time.monotonic() > deadline:
                plan.step(
                    "judging",
                    f"gave up waiting after {JUDGE_TIMEOUT_S:.0f}s: {judged} of {recorded} "
                    f"recorded exchanges judged, {answered} answered"
                    + (f", still waiting for {waiting}" if waiting else ""),
                )
                return last
            await asyncio.sleep(POLL_S * 2)


def _waiting_for(doc: dict[str, Any]) -> str | None:
    """What the verdict still waits for, None when nothing: a judging backlog, the write
    checks (which record their reads ``settle_ms`` after each exchange), or the runtime
    check's next window (GC pauses over the threshold that do not fail it yet: the sampler
    goes on while graygate runs, so the next windows decide)."""
    checks = {c.get("name"): c for c in doc.get("checks") or []}
    backlog = checks.get("backlog")
    writes = checks.get("writes")
    runtime = checks.get("runtime") or {}
    if backlog is not None and backlog.get("passed") is False:
        return "the judging backlog"
    if writes is not None and writes.get("passed") is None:
        return "the write checks"
    if (runtime.get("observed") or {}).get("gc_pending"):
        return "the runtime check's next window"
    return None


_STATUS_STYLE = {"PASS": "green", "FAIL": "bold red", "FAIL*": "yellow", "WAIT": "yellow",
                 "SKIP": "dim"}  # fmt: skip
_VERDICT_STYLE = {"GO": "bold green", "NO_GO": "bold red", "INCONCLUSIVE": "bold yellow"}


def _check_lines(doc: dict[str, Any]) -> list[Text]:
    from graygate.values import Check
    from graygate.verdict_command import format_check

    lines = []
    for c in doc.get("checks") or []:
        check = Check(
            name=str(c.get("name")),
            passed=c.get("passed"),
            observed=c.get("observed"),
            threshold=c.get("threshold"),
            detail=str(c.get("detail") or ""),
            blocking=bool(c.get("blocking", True)),
        )
        line = format_check(check)
        word = line.split(" ", 1)[0]
        lines.append(Text("  " + line, style=_STATUS_STYLE.get(word, "")))
    return lines


async def _final_verdict(
    plan: _Plan, session: aiohttp.ClientSession, admin: str, fallback: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The verdict through the gate endpoint (which also records it in the history)."""
    try:
        _, data = await _get_json(session, f"{admin}/api/v1/runs/{plan.run}/gate")
    except (aiohttp.ClientError, TimeoutError):
        data = None
    if data is not None and data.get("verdict") in _VERDICT_EXIT:
        return data
    return fallback if fallback is not None and fallback.get("verdict") in _VERDICT_EXIT else None


async def _write_report(plan: _Plan, session: aiohttp.ClientSession, admin: str) -> Path | None:
    from graygate.report_command import write_atomically

    path = plan.data_dir / "reports" / f"{plan.run}.html"
    try:
        async with session.get(f"{admin}/runs/{plan.run}") as resp:
            text = await resp.text()
            if resp.status != 200:
                raise DemoError(f"HTTP {resp.status}")
    except (aiohttp.ClientError, TimeoutError, DemoError) as exc:
        plan.step("report", f"could not be fetched from the admin API: {exc}")
        return None
    await asyncio.to_thread(write_atomically, path, text)
    return path


async def _demo(plan: _Plan, database_url: str) -> int:
    env = _child_env()
    fault_args: list[str] = []
    # 1. primary and canary, writing their orders to the demo's database (the Go canary
    # when it was built with the PostgreSQL driver)
    writes = plan.canary_bin is None or plan.canary_bin.name.endswith("-pq")
    db_args = ["--database", database_url, "--db-schema", DEMO_SCHEMA]
    _, primary = await _start_service(
        plan,
        "primary",
        [sys.executable, "-m", "graygate.examples.orders", "--listen", "127.0.0.1:0", *db_args],
    )
    plan.step("primary", f"{primary}  (Python, pid {plan.children[-1].pid})")
    if plan.canary_bin is not None:
        if plan.fault:
            fault_args = ["-fault", plan.fault]
        argv = [str(plan.canary_bin), "-listen", "127.0.0.1:0", *fault_args]
        if writes:
            argv += ["-database", database_url, "-db-schema", DEMO_SCHEMA]
        kind = "Go"
    else:
        if plan.fault:
            fault_args = ["--fault", plan.fault]
        argv = [sys.executable, "-m", "graygate.examples.orders", "--listen", "127.0.0.1:0",
                "--role", "canary-standin", *fault_args, *db_args]  # fmt: skip
        kind = "Python stand-in"
    _, canary = await _start_service(plan, "canary", argv)
    planted = f", fault {plan.fault}" if plan.fault else ", no fault"
    plan.step("canary", f"{canary}  ({kind}{planted}, pid {plan.children[-1].pid})")

    # 2. graygate serve
    listen = f"127.0.0.1:{free_port()}"
    admin_listen = f"127.0.0.1:{free_port()}"
    cfg = _write_config(
        plan, primary, canary, listen, admin_listen, database_url if writes else None
    )
    if not writes:
        plan.say(
            Text(
                f"{'writes':<10}not compared: the Go canary was built without lib/pq "
                "(golang-github-lib-pq-dev)",
                style="yellow",
            )
        )
    proxy, admin = f"http://{listen}", f"http://{admin_listen}"
    serve = _spawn(
        "graygate serve",
        [
            *(sys.executable, "-m", "graygate", "serve", "-c", str(cfg)),
            *("--database-url", database_url, "--data-dir", str(plan.data_dir)),
        ],
        plan.workdir / "serve.log",
        env,
    )
    plan.children.append(serve)
    timeout = aiohttp.ClientTimeout(total=30, connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await _wait_ready(plan, session, admin)
        plan.step("graygate", f"proxy {proxy}, admin {admin}  (run {plan.run}, pid {serve.pid})")
        plan.step("config", str(cfg))
        for check, detail in await _preflight_failures(database_url, plan.run):
            plan.say(Text(f"{'preflight':<10}{check}: {detail}", style="yellow"))

        # 3. load
        plan.step(
            "load",
            f"sending orders traffic through the proxy for {plan.duration:g}s "
            f"at {plan.rate:g} req/s ({CONCURRENCY} clients)",
        )
        stats = await _send_load(plan, proxy)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats.by_kind.items()))
        plan.step(
            "load",
            f"{stats.sent} requests in {stats.elapsed:.1f}s ({stats.rate:.1f} req/s), "
            f"{stats.errors} errors; {kinds}",
        )

        # 4. judgement and verdict
        last = await _wait_judged(plan, session, admin, stats.completed)
        doc = await _final_verdict(plan, session, admin, last)
        if doc is None:
            plan.say(f"graygate demo: no verdict for run {plan.run} (log: {serve.log})")
            code = EXIT_NO_VERDICT
        else:
            verdict = str(doc["verdict"])
            code = _VERDICT_EXIT[verdict]
            head = Text()
            head.append(f"{'verdict':<10}", style="bold cyan")
            head.append(verdict, style=_VERDICT_STYLE[verdict])
            head.append(f"  run {plan.run}")
            plan.say(head)
            for line in _check_lines(doc):
                plan.say(line)
        report = await _write_report(plan, session, admin)
        if report is not None:
            plan.step("report", str(report))
        if plan.keep_running:
            plan.step("admin", f"{admin}/runs/{plan.run}  (the live report)")
            plan.step("running", f"proxy {proxy} stays up; press Ctrl-C to stop everything")
            try:
                while True:
                    await asyncio.sleep(1.0)
                    _check_children(plan)
            except asyncio.CancelledError:
                if plan.signals.signum is None:
                    raise
                plan.say("")
                plan.step("stopping", "graygate, canary, primary")
    return code


async def _preflight_failures(database_url: str, run: str) -> list[tuple[str, str]]:
    """The preflight checks that ``serve`` stored as failed for ``run`` (check, detail); none
    when they cannot be read (the report shows them too)."""
    from graygate.errors import GraygateError
    from store.engine import create_engine
    from store.reports import preflight

    engine = create_engine(database_url, pool_size=1)
    try:
        findings = await preflight(engine, run)
    except GraygateError as exc:
        logger.debug("cannot read the preflight findings: %s", exc)
        return []
    finally:
        await engine.dispose()
    return [(f.check, f.detail) for f in findings if not f.ok]


async def _main(plan: _Plan, database_url: str) -> int:
    task = asyncio.current_task()
    assert task is not None
    plan.signals.attach(asyncio.get_running_loop(), task)
    try:
        return await _demo(plan, database_url)
    except asyncio.CancelledError:
        if plan.signals.signum is None:
            raise
        plan.say("")
        plan.say(f"graygate demo: interrupted (signal {plan.signals.signum}); stopping")
        return _interrupted_code(plan.signals.signum)
    finally:
        plan.signals.quiet = True
        plan.signals.detach()
        # graygate first (it flushes its records), then the services it talks to.
        for child in reversed(plan.children):
            await _stop(child)


def _migrate(url: str) -> None:
    from store import migrate
    from store.engine import censor_dsn

    try:
        migrate.upgrade(url)
    except Exception as exc:  # alembic and the drivers raise anything
        raise DemoError(f"database {censor_dsn(url)} is unavailable: {one_line(exc)}") from None


@contextlib.contextmanager
def _logging_quiet() -> Iterator[None]:
    """Keep library log lines (alembic, pgserver) off the demo's output."""
    root = logging.getLogger()
    previous = root.level
    if previous < logging.WARNING:
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(previous)


def run_demo(
    *,
    duration: float,
    fault: str | None,
    data_dir: Path | None,
    database_url: str | None,
    rate: float,
    keep_running: bool,
    use_go: bool | None,
    out: TextIO,
) -> int:
    """Run the demo (see the module doc); the exit code: 0 GO, 1 NO_GO, 2 INCONCLUSIVE,
    3 no verdict, 4 the demo failed, 130/143 interrupted.

    ``use_go``: True needs the Go canary, False uses the Python stand-in, None picks Go
    when ``go`` is on PATH (and falls back to the stand-in when its build fails).
    """
    interactive = hasattr(out, "isatty") and out.isatty()
    console = Console(
        file=out, highlight=False, soft_wrap=not interactive, width=None if interactive else 120
    )

    def fail(message: str, code: int = EXIT_FAILED) -> int:
        console.print(Text(f"graygate demo: {message}", style="bold red"))
        with contextlib.suppress(OSError, ValueError):
            out.flush()
        return code

    if duration <= 0:
        return fail(f"--duration must be > 0, got {duration:g}")
    if rate <= 0:
        return fail(f"--rate must be > 0, got {rate:g}")
    if database_url:
        from config.schema import DatabaseConfig

        try:
            database_url = DatabaseConfig(url=database_url).url
        except ValueError:
            return fail("--database-url: must be a postgresql:// URL")
    signals = _Signals()
    try:
        with signals, _logging_quiet():
            _check_fault(fault)
            from graygate.embedded_pg import default_data_dir, open_database

            root = (data_dir or default_data_dir()).expanduser().resolve()
            run = _run_name(fault)
            workdir = root / "demo" / run
            workdir.mkdir(parents=True, exist_ok=True)
            plan = _Plan(
                duration=duration,
                fault=fault,
                data_dir=root,
                rate=rate,
                keep_running=keep_running,
                canary_bin=None,
                run=run,
                workdir=workdir,
                console=console,
                out=out,
                signals=signals,
            )
            plan.step("demo", f"run {run}; files in {workdir}")
            if use_go is not False:
                try:
                    with console.status("building the Go canary"):
                        plan.canary_bin = build_go_canary(root / "bin")
                    plan.step("build", f"Go canary {plan.canary_bin}")
                except DemoError as exc:
                    if use_go:
                        raise
                    plan.step("build", f"{exc}: using the Python stand-in for the canary")
            with contextlib.ExitStack() as stack:
                with console.status("opening the database"):
                    handle = stack.enter_context(open_database(database_url, root))
                try:
                    if handle.embedded:
                        plan.step(
                            "database",
                            f"embedded PostgreSQL in {handle.data_dir} "
                            "(stopped when the demo ends)",
                        )
                    else:
                        from store.engine import censor_dsn

                        plan.step("database", censor_dsn(handle.url))
                    with console.status("applying the database migrations"):
                        _migrate(handle.url)
                    with asyncio.Runner() as runner:
                        code = runner.run(_main(plan, handle.url))
                finally:
                    signals.quiet = True  # stopping the embedded database is not cut short
            return code
    except _Interrupted as exc:
        return fail(f"interrupted (signal {exc.signum})", _interrupted_code(exc.signum))
    except DemoError as exc:
        if signals.signum is not None:
            return fail(f"interrupted (signal {signals.signum})", _interrupted_code(signals.signum))
        return fail(str(exc))
    except Exception as exc:  # the database layer and friends
        from graygate.errors import GraygateError

        if isinstance(exc, GraygateError):
            return fail(str(exc))
        logger.exception("graygate demo failed")
        return fail(f"failed: {type(exc).__name__}: {exc}")
