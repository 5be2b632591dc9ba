"""``graygate serve`` with every role: the proxy's process does nothing but proxy.

The admin API (verdicts, reports, the verdict gauge) and the diff workers run in a child
process: what a reviewer or a pipeline asks for must never share the event loop or the GIL
of the process that answers users. Checked on real processes: which process holds which
listening socket (from /proc), and that judging never even loads the statistics library
into the proxy's process. The admin port's probes speak for the proxy through its
heartbeat: they fail once the proxy process is gone.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import Procs, TwinSetup

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


def _listening_inode(port: int) -> int:
    """The inode of the socket listening on 127.0.0.1:``port`` (IPv4, /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], int(fields[9])
        if state == "0A" and int(local.split(":")[1], 16) == port:
            return inode
    raise AssertionError(f"nothing listens on port {port}")


def _holder(port: int, pids: list[int]) -> int:
    """Which of ``pids`` holds the socket listening on ``port``."""
    target = f"socket:[{_listening_inode(port)}]"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == target:
                    return pid
            except OSError:
                continue
    raise AssertionError(f"none of {pids} holds port {port}")


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(p) for p in found]


def _nices(pid: int) -> list[int]:
    """The nice value of each of ``pid``'s threads (field 19 of their stat)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.append(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]))
        except OSError:
            continue  # ended meanwhile
    return out


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_admin_and_judging_run_outside_the_proxy_process(
    procs: Procs,
    migrated_database: Callable[[], str],
    twin_config: Callable[..., TwinSetup],
) -> None:
    url = migrated_database()
    setup = twin_config("e2e-procs", {"shutdown": {"grace_s": 0}})
    cfg, listen, admin, run = setup.cfg, setup.listen, setup.admin, setup.run
    serve = procs.serve(cfg, url, f"http://127.0.0.1:{admin}")
    for i in range(120):  # enough pairs for the latency check (its statistics)
        status, _ = procs.http_get(f"http://127.0.0.1:{listen}/api/inventory/SKU-{i % 5 + 1:04d}")
        assert status == 200
    proxy_pid = serve.popen.pid
    kids = _children(proxy_pid)
    assert _holder(listen, [proxy_pid, *kids]) == proxy_pid
    admin_pid = _holder(admin, [proxy_pid, *kids])
    assert admin_pid in kids, "the admin port is served by the proxy's own process"
    # The child judges and serves no user: all of it runs below the proxy (workers.nice,
    # 10 by default), its comparing threads lower still; the proxy keeps its priority.
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert set(_nices(proxy_pid)) == {base}
    assert min(_nices(admin_pid)) == min(19, base + 10), _nices(admin_pid)
    # Ask for what costs: the verdict (its latency check loads the statistics library once
    # the pairs are recorded) and the HTML report.
    deadline = time.monotonic() + 30
    while "/site-packages/scipy/" not in _maps(admin_pid):
        status, body = procs.http_get(f"http://127.0.0.1:{admin}/api/v1/runs/{run}/verdict")
        assert status == 200, body
        assert json.loads(body)["verdict"] in ("GO", "NO_GO", "INCONCLUSIVE")
        assert time.monotonic() < deadline, f"the latency check never ran: {body[:400]!r}"
        time.sleep(0.3)
    assert procs.http_get(f"http://127.0.0.1:{admin}/runs/{run}")[0] == 200
    assert "/site-packages/scipy/" not in _maps(proxy_pid), "judging ran in the proxy process"

    # The probes speak for the proxy: once its process is gone, they fail (the child is
    # caught before the kernel's parent-death signal takes it down).
    assert procs.http_get(f"http://127.0.0.1:{admin}/healthz")[0] == 200
    os.kill(admin_pid, signal.SIGSTOP)  # freeze the child so that it outlives its parent
    try:
        os.kill(proxy_pid, signal.SIGKILL)
        serve.popen.wait(10)
    finally:
        os.kill(admin_pid, signal.SIGCONT)
    seen: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            seen.append(procs.http_get(f"http://127.0.0.1:{admin}/healthz", 1.0))
        except OSError:
            break  # the child has followed its parent: nobody says healthy either
        if seen[-1][0] == 503:
            assert b"the proxy process has stopped" in seen[-1][1]
            break
        time.sleep(0.05)
    assert all(status != 200 for status, _ in seen), seen
