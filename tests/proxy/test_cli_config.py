"""`graygate serve` with a bad configuration: exit 2, one line naming key and value."""

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


def _serve(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", "-c", str(config), *extra],
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
        [sys.executable, "-m", "proxy.cli", "config", "check", "-c", str(cfg)],
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
        [sys.executable, "-m", "proxy.cli", "db", "upgrade", "-c", str(cfg),
         "--database-url", "postgresql://postgres:pw@127.0.0.1:1/nope"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 3, proc.stderr
    assert "unavailable" in proc.stderr
    assert "pw" not in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_db_current_reports_the_revision(database_url: str, make_database: object) -> None:
    import asyncio

    from store.migrate import head_revision

    async def current(url: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", "db", "current", "--database-url", url,
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
