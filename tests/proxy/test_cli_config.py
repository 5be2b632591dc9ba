"""`graygate serve` and `graygate db` failing to start: one line, the documented exit code.

Bad configuration or a listen port already taken: exit 2 naming the key. The database away
or its schema behind: exit 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from graygate.processes import free_port

REPO = Path(__file__).resolve().parents[2]
GOOD = """run: r1
listen: 127.0.0.1:0
upstreams: {primary: "http://127.0.0.1:1", canary: "http://127.0.0.1:2"}
"""


def _serve(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graygate", "serve", "-c", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "GRAYGATE_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"},
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + "mirorr: {}\n", "mirorr: unknown key"),
        (GOOD + "mirror: {sample: 1.5}\n", "mirror.sample: 1.5"),
        (GOOD.replace("http://127.0.0.1:1", "htp://x"), "upstreams.primary: 'htp://x'"),
        ("run: r1\nupstreams: {primary: 'http://a:1'}\n", "upstreams.canary: is required"),
        (GOOD + "mirror: {timeout_ms: soon}\n", "mirror.timeout_ms: 'soon'"),
        (
            GOOD + "compare: {endpoints: [{match: 'GET /x', ignore: ['$.a[']}]}\n",
            "compare.endpoints[0].ignore",
        ),
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "graygate.yaml"
    cfg.write_text(text)
    proc = _serve(cfg)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    proc = _serve(tmp_path / "absent.yaml")
    assert proc.returncode == 2
    assert "absent.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_check_prints_censored_config(tmp_path: Path) -> None:
    cfg = tmp_path / "graygate.yaml"
    cfg.write_text(GOOD + "database: {url: 'postgresql://u:hunter2@db/x'}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "graygate", "config", "check", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert "hunter2" not in proc.stdout
    assert "run: r1" in proc.stdout


def test_database_away_exits_3(tmp_path: Path) -> None:
    cfg = tmp_path / "graygate.yaml"
    cfg.write_text(GOOD)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "graygate",
            "db",
            "upgrade",
            "-c",
            str(cfg),
            "--database-url",
            "postgresql://postgres:pw@127.0.0.1:1/nope",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 3, proc.stderr
    assert "unavailable" in proc.stderr
    assert "pw" not in proc.stderr
    assert "Traceback" not in proc.stderr


async def _serve_async(config: Path, *extra: str) -> tuple[int, str]:
    """`graygate serve` as a subprocess, without blocking the loop the fixtures share."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "graygate", "serve", "-c", str(config), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def _config(tmp_path: Path, listen: str = "127.0.0.1:0") -> Path:
    cfg = tmp_path / "graygate.yaml"
    cfg.write_text(
        f"run: cli-{uuid.uuid4().hex[:8]}\nlisten: {listen}\nadmin: {{listen: 127.0.0.1:0}}\n"
        'upstreams: {primary: "http://127.0.0.1:1", canary: "http://127.0.0.1:2"}\n'
    )
    return cfg


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("graygate: ")]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


async def test_serve_database_away_exits_3(tmp_path: Path) -> None:
    code, err = await _serve_async(
        _config(tmp_path), "--database-url", "postgresql://u:pw@127.0.0.1:1/nope"
    )
    assert code == 3, err
    assert "unavailable" in _one_line(err)
    assert ":pw@" not in err


async def test_serve_schema_behind_exits_3(tmp_path: Path, make_database: object) -> None:
    empty: str = await make_database()  # type: ignore[operator]
    code, err = await _serve_async(_config(tmp_path), "--database-url", empty)
    assert code == 3, err
    line = _one_line(err)
    assert "revision none" in line and "graygate db upgrade" in line


async def test_serve_listen_port_taken_exits_2(tmp_path: Path, database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        code, err = await _serve_async(
            _config(tmp_path, listen), "--database-url", database_url, "--no-preflight"
        )
    assert code == 2, err
    line = _one_line(err)
    assert f"config error: listen: '{listen}'" in line


async def test_db_current_reports_the_revision(database_url: str, make_database: object) -> None:
    from store.migrate import head_revision

    async def current(url: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "graygate", "db", "current", "--database-url", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    code, out = await current(database_url)
    assert code == 0 and f"revision {head_revision()}" in out
    empty: str = await make_database()  # type: ignore[operator]
    code, out = await current(empty)
    assert code == 1 and "revision none" in out


async def test_serve_processes_needs_a_named_port(tmp_path: Path, database_url: str) -> None:
    code, err = await _serve_async(
        _config(tmp_path), "--processes", "2", "--database-url", database_url
    )
    assert code == 2, err
    assert "config error: listen: '127.0.0.1:0': port 0 with --processes 2" in _one_line(err)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
async def test_serve_processes_leaves_no_child_behind(
    tmp_path: Path, database_url: str, sig: str
) -> None:
    """SIGTERM: the children stop and serve exits 0. SIGKILL: the kernel stops them."""
    import signal

    port = free_port()
    cfg = _config(tmp_path, f"127.0.0.1:{port}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "graygate", "serve", "-c", str(cfg),
        "--processes", "2", "--role", "proxy,worker", "--no-preflight",
        "--database-url", database_url,
        stderr=asyncio.subprocess.PIPE, cwd=REPO, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.stderr is not None
    children: list[int] = []
    try:
        seen: list[str] = []
        while not any("serving run" in line for line in seen):
            line = (await asyncio.wait_for(proc.stderr.readline(), timeout=60)).decode()
            assert line, "".join(seen)
            seen.append(line)
        children = _children(proc.pid)
        writers = [c for c in children if "record-writer" in _cmdline(c)]
        # One more proxy, and the worker process; and this proxy's record writer.
        assert len(children) - len(writers) == 2 and len(writers) == 1, children
        for child in list(children):  # the other proxy's writer, once it has started it
            if child not in writers:
                children += _children(child)
        proc.send_signal(getattr(signal, sig))
        code = await asyncio.wait_for(proc.wait(), timeout=60)
        if sig == "SIGTERM":
            rest = await asyncio.wait_for(proc.stderr.read(), timeout=10)
            assert code == 0, "".join(seen) + rest.decode()
        for _ in range(100):
            alive = [c for c in children if _alive(c)]
            if not alive:
                break
            await asyncio.sleep(0.1)
        assert not alive, f"{sig}: processes {alive} outlived serve"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for child in children:
            if _alive(child):
                os.kill(child, signal.SIGKILL)


def _child_cmdlines(pid: int) -> list[list[str]]:
    """The command lines of ``pid``'s direct children (Linux /proc)."""
    out: list[list[str]] = []
    for child in _children(pid):
        with contextlib.suppress(FileNotFoundError):
            raw = Path(f"/proc/{child}/cmdline").read_bytes()
            out.append([a.decode() for a in raw.split(b"\0") if a])
    return out


async def test_serve_runs_the_diff_workers_and_admin_in_a_process_of_their_own(
    tmp_path: Path, database_url: str
) -> None:
    """Issue: nothing CPU-heavy shares the proxy's process (judging, verdicts, reports);
    one `serve` still starts all."""
    cfg = _config(tmp_path)
    url = database_url.replace("+asyncpg", "")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "graygate", "serve", "-c", str(cfg), "--database-url", url,
        "--no-preflight", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any("serving run" in line for line in seen):
                line = (await proc.stderr.readline()).decode()
                assert line, "".join(seen)
                seen.append(line)
            workers: list[list[str]] = []
            while not workers:
                workers = [
                    c
                    for c in _child_cmdlines(proc.pid)
                    if "--role" in c and "worker" in c[c.index("--role") + 1].split(",")
                ]
                await asyncio.sleep(0.1)
        assert set(workers[0][workers[0].index("--role") + 1].split(",")) == {"worker", "admin"}
        # The worker child judges (it logs so); the parent proxy does not.
        async with asyncio.timeout(60):
            while not any("diff worker judging" in line for line in seen):
                line = (await proc.stderr.readline()).decode()
                assert line, "".join(seen)
                seen.append(line)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0, "".join(seen)


async def test_the_admin_scrape_shows_the_worker_processs_series(
    tmp_path: Path, database_url: str
) -> None:
    """The worker child's series (exchanges judged) reach the parent's /metrics."""
    import aiohttp

    listen, admin = free_port(), free_port()
    cfg = tmp_path / "graygate.yaml"
    cfg.write_text(
        f"run: cli-{uuid.uuid4().hex[:8]}\nlisten: 127.0.0.1:{listen}\n"
        f"admin: {{listen: 127.0.0.1:{admin}}}\n"
        'upstreams: {primary: "http://127.0.0.1:1", canary: "http://127.0.0.1:2"}\n'
    )
    url = database_url.replace("+asyncpg", "")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "graygate", "serve", "-c", str(cfg), "--database-url", url,
        "--no-preflight", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        cwd=REPO,
    )  # fmt: skip
    found = ""
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(90):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    # A dead primary: the exchange is recorded (502) and then judged.
                    async with session.get(f"http://127.0.0.1:{listen}/x") as r:
                        await r.read()
                    async with session.get(f"http://127.0.0.1:{admin}/metrics") as r:
                        text = await r.text()
                    found = next(
                        (
                            line
                            for line in text.splitlines()
                            if line.startswith("graygate_diff_exchanges_judged_total")
                        ),
                        "",
                    )
                    if found:
                        break
                await asyncio.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert float(found.rsplit(" ", 1)[1]) >= 1, found
