"""Governance end to end with real processes: the Go canary's timestamp_format fault behind
a real `graygate serve` is NO_GO; waivers added with `graygate waiver add` make it GO and
the report lists them; revoking one returns NO_GO; `graygate rejudge -c` under rules that
ignore the fields gives GO and the config history shows both judgements. And storage: the
versions the services name in a header, body sampling, close and delete by partition."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


# An order service that says which build it is in X-Build-Version: argv port, version,
# and (optionally) from which order id on it answers as a second version.
VERSIONED = """
import asyncio, sys
from aiohttp import web

port, version = int(sys.argv[1]), sys.argv[2]
switch = (int(sys.argv[3]), sys.argv[4]) if len(sys.argv) > 4 else None

async def order(request):
    i = int(request.match_info.get("id", "0"))
    v = switch[1] if switch and i >= switch[0] else version
    doc = {"id": i, "status": "paid", "total": 10.0 + i, "items": [{"sku": "A", "qty": 1}]}
    return web.json_response(doc, headers={"X-Build-Version": v})

async def main():
    app = web.Application()
    app.router.add_get("/api/orders/{id}", order)
    app.router.add_route("*", "/{tail:.*}", order)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_header_versions_body_digests_close_and_delete_by_partition(
    procs: Procs,
    migrated_database: Callable[[], str],
    graygate_config: Callable[..., Path],
) -> None:
    """A real `graygate serve` in front of two services that name their build in
    X-Build-Version (the canary's changes half-way), with record.bodies.sample 0.5: the run
    records both versions and the change, every pair is judged (from bodies or from
    digests, and the verdict says how many), closing it counts what comes after, and
    `graygate runs delete --wait` drops its partitions."""
    import asyncio

    import asyncpg
    from sqlalchemy.engine import make_url

    url = migrated_database()
    db = ("--database-url", url)
    primary = procs.service(
        "primary", [sys.executable, "-c", VERSIONED, str(procs.free_port()), "1.14.2"]
    )
    canary = procs.service(
        "canary",
        [sys.executable, "-c", VERSIONED, str(procs.free_port()), "2.0.0-rc1", "20", "2.0.0-rc2"],
    )
    listen, admin = procs.free_port(), procs.free_port()
    run = "versions-e2e"
    config = graygate_config(
        run=run,
        primary=primary.url,
        canary=canary.url,
        listen_port=listen,
        admin_port=admin,
        overrides={
            "versions": {"header": "X-Build-Version"},
            "record": {"bodies": {"sample": 0.5}},
            "runtime": {"canary": None, "required": False},
        },
    )
    serve = procs.serve(config, url, f"http://127.0.0.1:{admin}")

    def listed() -> dict[str, Any]:
        code, out, err = graygate("runs", "list", "--json", *db)
        assert code == 0, (out, err)
        (mine,) = [r for r in orjson.loads(out)["runs"] if r["name"] == run]
        return mine  # type: ignore[no-any-return]

    def wait_for(pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        for _ in range(300):
            mine = listed()
            if pred(mine):
                return mine
            time.sleep(0.2)
        raise AssertionError(f"run never got there: {listed()}")

    for i in range(40):
        status, _ = procs.http_get(f"http://127.0.0.1:{listen}/api/orders/{i}")
        assert status == 200
    mine = wait_for(
        lambda r: r["exchanges"] == 40 and r["judged"] == 40 and len(r["version_changes"]) == 1
    )
    assert mine["versions"] == {"primary": "1.14.2", "canary": "2.0.0-rc1"}
    assert mine["version_changes"] == [
        "canary version changed: 2.0.0-rc1 -> 2.0.0-rc2 (20 then 20 exchanges)"
    ]
    code, out, err = graygate("verdict", run, "--json", *db)
    checks = {c["name"]: c for c in orjson.loads(out.strip().splitlines()[-1])["checks"]}
    assert "pairs judged from body digests" in checks["judgeable"]["detail"], checks
    code, out, err = graygate("report", run, *db)
    assert code in (0, 1, 2) and "canary version changed: 2.0.0-rc1 -> 2.0.0-rc2" in out, err

    code, out, err = graygate("runs", "close", run, *db)
    assert code == 0, (out, err)
    for i in range(40, 45):
        status, _ = procs.http_get(f"http://127.0.0.1:{listen}/api/orders/{i}")
        assert status == 200  # still served
    wait_for(lambda r: r["unrecorded"] == 5)
    procs.stop(serve)

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def tables() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT relname FROM pg_class WHERE relname ~ '^(exchanges|differences)_r[0-9]+$'"
            )
            return sorted(r["relname"] for r in rows)
        finally:
            await conn.close()

    assert len(asyncio.run(tables())) == 2  # the run's two partitions
    code, out, err = graygate("runs", "delete", run, "--yes", "--wait", *db)
    assert code == 0 and out.splitlines()[0] == f"run {run} deleted (40 exchanges)", (out, err)
    assert out.splitlines()[1].startswith("reclaimed "), out
    assert asyncio.run(tables()) == []  # --wait: dropped, in no schema
