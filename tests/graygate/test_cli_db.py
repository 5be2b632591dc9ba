"""``graygate db upgrade | downgrade | check | current``: one line each, and their exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from store.migrate import head_revision

REPO = Path(__file__).resolve().parents[2]


def _db(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "graygate", "--log-level", "WARNING", "db", *args],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def test_db_commands_walk_a_fresh_database_up_and_down(make_database: object) -> None:
    url: str = make_database.sync()  # type: ignore[attr-defined]
    head = head_revision()
    assert _db("current", "--database-url", url) == (1, f"revision none (head {head})\n", "")
    assert _db("upgrade", "--database-url", url) == (
        0,
        "graygate: database at revision head\n",
        "",
    )
    assert _db("current", "--database-url", url) == (0, f"revision {head} (head {head})\n", "")
    assert _db("check", "--database-url", url) == (
        0,
        "graygate: migrations and tables agree\n",
        "",
    )
    assert _db("downgrade", "base", "--database-url", url) == (
        0,
        "graygate: database at revision base\n",
        "",
    )
    assert _db("current", "--database-url", url)[:2] == (1, f"revision none (head {head})\n")
    assert _db("upgrade", "--revision", head, "--database-url", url)[0] == 0
    assert _db("current", "--database-url", url)[0] == 0


def test_db_commands_with_the_database_away_exit_3_with_one_line() -> None:
    away = "postgresql://postgres@127.0.0.1:1/graygate"
    for args in (["upgrade"], ["downgrade", "base"], ["check"], ["current"]):
        code, out, err = _db(*args, "--database-url", away)
        assert code == 3, (args, err)
        assert out == ""
        assert err.startswith("graygate: database ") and "is unavailable" in err, (args, err)
        assert len(err.strip().splitlines()) == 1, (args, err)
