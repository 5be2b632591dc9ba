"""``graygate waiver add|list|revoke`` as real subprocesses against a real PostgreSQL, with
``graygate verdict`` reading the result: NO_GO, waived GO, revoked NO_GO."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from graygate.governance_cli import MAX_DURATION_S, parse_duration
from tests.diff.test_waivers import planted

ROOT = Path(__file__).resolve().parents[2]


async def graygate(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    env.pop("GRAYGATE_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "graygate",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("text", "seconds"), [("14d", 14 * 86_400), ("12h", 43_200), ("90s", 90), ("2w", 1_209_600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_duration_bounds() -> None:
    assert parse_duration("3660d") == MAX_DURATION_S
    for bad in ("3661d", "0d", "14", "d", "-1d", "1y"):
        with pytest.raises(ValueError, match="--expires"):
            parse_duration(bad, name="--expires")


async def test_add_list_revoke_through_the_cli(
    engine: AsyncEngine, database_url: str, run_name: str
) -> None:
    await planted(engine, run_name)
    db = ("--database-url", database_url)
    code, out, err = await graygate("verdict", run_name, *db)
    assert code == 1, (out, err)

    code, out, err = await graygate(
        "waiver", "add", run_name, "--endpoint", "GET /api/orders/{id}", "--field", "$.status",
        "--reason", "renamed on purpose, JIRA-123", "--by", "alice", "--expires", "14d", *db,
    )  # fmt: skip
    assert code == 0, (out, err)
    assert out.startswith("waiver ") and "by=alice" in out and "expires=" in out

    code, out, err = await graygate("verdict", run_name, *db)
    assert code == 0, (out, err)
    assert "waivers" in out and "1 applied, 5 differences waived" in out

    code, out, err = await graygate("waiver", "list", run_name, "--json", *db)
    assert code == 0, err
    (w,) = orjson.loads(out)["waivers"]
    assert (w["state"], w["by"], w["source"]) == ("active", "alice", "cli")
    assert [e["action"] for e in w["trail"]] == ["add"]

    code, out, err = await graygate(
        "waiver", "revoke", str(w["id"]), "--reason", "reverted", *db
    )  # --by defaults to the OS user
    assert code == 0, (out, err)
    code, out, err = await graygate("verdict", run_name, *db)
    assert code == 1, (out, err)

    code, out, _ = await graygate("waiver", "list", run_name, *db)
    assert code == 0 and out.startswith("no waivers")
    code, out, _ = await graygate("waiver", "list", run_name, "--all", "--json", *db)
    (w,) = orjson.loads(out)["waivers"]
    assert w["state"] == "revoked" and [e["action"] for e in w["trail"]] == ["add", "revoke"]
    assert w["trail"][1]["by"] == w["revoked_by"] and w["revoked_by"]

    code, out, err = await graygate("waiver", "revoke", str(w["id"]), "--reason", "x", *db)
    assert code == 1 and "already revoked" in err


async def test_bad_arguments_are_named(
    database_url: str, engine: AsyncEngine, run_name: str
) -> None:
    await planted(engine, run_name)
    db = ("--database-url", database_url)
    base = ("waiver", "add", run_name, "--endpoint", "*", "--reason", "r", *db)
    code, _, err = await graygate(*base, "--field", "$.a", "--expires", "3661d")
    assert code == 2 and "--expires '3661d'" in err
    code, _, err = await graygate(*base, "--field", "created_at")
    assert code == 2 and "is not a field" in err
    code, _, err = await graygate(*base, "--field", "$.a[", "--kind", "value")
    assert code == 2 and "$.a[" in err
    code, _, err = await graygate("waiver", "add", "nope-" + run_name, "--endpoint", "*",
                                  "--field", "$.a", "--reason", "r", *db)  # fmt: skip
    assert code == 3 and "unknown run" in err
    code, _, err = await graygate("waiver", "revoke", "999999999", "--reason", "r", *db)
    assert code == 1 and "unknown waiver 999999999" in err
