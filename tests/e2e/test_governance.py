"""Governance end to end with real processes: the Go canary's timestamp_format fault behind
a real `graygate serve` is NO_GO; waivers added with `graygate waiver add` make it GO and
the report lists them; revoking one returns NO_GO; `graygate rejudge -c` under rules that
ignore the fields gives GO and the config history shows both judgements."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import yaml

from tests.e2e.test_faults import _scenario

if TYPE_CHECKING:
    from tests.e2e.conftest import Procs

ROOT = Path(__file__).resolve().parents[2]


def graygate(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GRAYGATE_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "graygate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def test_waive_revoke_and_rejudge_a_planted_timestamp_format(
    procs: Procs,
    go_canary: Path,
    migrated_database: Callable[[], str],
    graygate_config: Callable[..., Path],
    tmp_path: Path,
) -> None:
    urls: list[str] = []

    def database() -> str:
        urls.append(migrated_database())
        return urls[-1]

    # The load stops once the verdict is in: few pairs per endpoint and few runtime windows.
    # This test is about waivers and rejudging, so latency is judged from 10 pairs per
    # endpoint and the runtime check is not required (each has scenarios of its own).
    code, doc = _scenario(
        "timestamp_format",
        procs=procs,
        go_canary=go_canary,
        migrated_database=database,
        graygate_config=graygate_config,
        overrides={"verdict": {"latency": {"min_samples": 10}}, "runtime": {"required": False}},
    )
    assert (code, doc["verdict"]) == (1, "NO_GO"), doc
    run, db = doc["run"], ("--database-url", urls[-1])
    # The load ran on after the verdict: judge what the stopped workers left, under the
    # run's own rules, so that the backlog does not decide the rest.
    code, out, err = graygate("rejudge", run, "--here", *db)
    assert code == 0, (out, err)
    code, out, err = graygate("verdict", run, *db)
    assert code == 1, (out, err)

    ids = []
    for field in ("$..created_at", "$..updated_at"):
        code, out, err = graygate(
            "waiver", "add", run, "--endpoint", "*", "--field", field, "--kind", "value",
            "--reason", "timestamp format changed on purpose, JIRA-123", "--by", "alice", *db,
        )  # fmt: skip
        assert code == 0, (out, err)
        ids.append(out.split()[1])
    code, out, err = graygate("verdict", run, "--json", *db)
    assert code == 0, (out, err)
    waivers = {c["name"]: c for c in orjson.loads(out.strip().splitlines()[-1])["checks"]}[
        "waivers"
    ]
    assert waivers["observed"]["applied"] == 2 and waivers["observed"]["differences"] > 0
    code, out, err = graygate("report", run, *db)
    assert code == 0 and "Waived" in out and "created_at" in out, (out, err)

    code, out, err = graygate("waiver", "revoke", ids[0], "--reason", "not accepted", *db)
    assert code == 0, (out, err)
    code, out, err = graygate("verdict", run, *db)
    assert code == 1, (out, err)
    code, out, err = graygate("waiver", "revoke", ids[1], "--reason", "not accepted", *db)
    assert code == 0, (out, err)

    # Re-judge under rules that ignore the two fields: GO, and the history shows both.
    config = yaml.safe_load((tmp_path / "graygate.yaml").read_text())
    defaults = config.setdefault("compare", {}).setdefault("defaults", {})
    defaults["ignore"] = [*defaults.get("ignore", []), "$..created_at", "$..updated_at"]
    config.setdefault("database", {})["url"] = urls[-1]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(config))
    code, out, err = graygate("rejudge", run, "-c", str(rules), "--here")
    assert code == 0 and "complete" in out, (out, err)
    code, out, err = graygate("verdict", run, *db)
    assert code == 0, (out, err)
    code, out, err = graygate("rejudge", run, "--history", "--json", *db)
    history = orjson.loads(out)["history"]
    assert history[-1]["verdicts"][-1]["verdict"] == "GO"
    assert any(v["verdict"] == "NO_GO" for era in history[:-1] for v in era["verdicts"])
    assert "$..created_at" in history[-1]["compare"]["defaults"]["ignore"]
