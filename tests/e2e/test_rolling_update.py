"""Rolling updates: on SIGTERM ``/readyz`` answers 503 at once, the proxy serves on for
``shutdown.grace_s``, then stops accepting, finishes what is in flight and flushes.

Real processes on loopback: two Python order services as primary and canary, ``graygate
serve`` on a fresh PostgreSQL database, a client sending steadily (20 requests/s, a new
connection each, so a refused connection shows) across the signal.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:
    from tests.e2e.conftest import Procs, TwinSetup

GRACE_S = 2.0
RATE = 20.0
# A request sent this close to the grace's end may meet the listener closing: it is not
# counted among those that must succeed (it is still counted and shown).
EDGE_S = 0.3


def _start(
    procs: Procs,
    migrated_database: Callable[[], str],
    twin_config: Callable[..., TwinSetup],
    *roles: str,
) -> tuple[object, int, int]:
    url = migrated_database()
    setup = twin_config("e2e-rolling", {"shutdown": {"grace_s": GRACE_S}})
    cfg, listen, admin = setup.cfg, setup.listen, setup.admin
    argv_roles = ["--role", ",".join(roles)] if roles else []
    if argv_roles:
        import sys

        proc = procs.spawn(
            "serve",
            [
                sys.executable, "-m", "graygate", "serve", "-c", str(cfg),
                "--database-url", url, "--data-dir", str(procs.workdir / "data"), *argv_roles,
            ],
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            assert proc.popen.poll() is None, proc.output()
            try:
                if procs.http_get(f"http://127.0.0.1:{admin}/readyz", 2.0)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.2)
    else:
        proc = procs.serve(cfg, url, f"http://127.0.0.1:{admin}")
    return proc, listen, admin


async def _steady_across_sigterm(
    pid_signal: Callable[[], None], listen: int, admin: int
) -> tuple[list[tuple[float, str]], list[tuple[float, int | str]], float]:
    """(sent time, outcome) of each request; (time, status) of each /readyz poll; the
    signal's time. Sends for 1 s before the signal and until 1.5 s after the grace."""
    results: list[tuple[float, str]] = []
    ready: list[tuple[float, int | str]] = []
    signalled = 0.0
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(url: str) -> str:
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    return str(resp.status)
            except aiohttp.ClientConnectorError:
                return "refused"
            except (aiohttp.ClientError, TimeoutError) as exc:
                return f"failed:{type(exc).__name__}"

        async def send(i: int) -> None:
            sent = time.monotonic()
            results.append(
                (sent, await one(f"http://127.0.0.1:{listen}/api/inventory/SKU-{i % 50 + 1:04d}"))
            )

        async def poll_ready() -> None:
            for _ in range(60):
                status = await one(f"http://127.0.0.1:{admin}/readyz")
                ready.append((time.monotonic(), int(status) if status.isdigit() else status))
                await asyncio.sleep(0.05)

        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic()
        total = int((1.0 + GRACE_S + 1.5) * RATE)
        poller: asyncio.Task[None] | None = None
        for i in range(total):
            await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))
            if not signalled and time.monotonic() - start >= 1.0:
                signalled = time.monotonic()
                pid_signal()
                poller = asyncio.create_task(poll_ready())
            tasks.append(asyncio.create_task(send(i)))
        await asyncio.gather(*tasks)
        if poller is not None:
            await poller
    return results, ready, signalled


def _check(
    results: list[tuple[float, str]], ready: list[tuple[float, int | str]], signalled: float
) -> None:
    grace_end = signalled + GRACE_S
    must = [outcome for sent, outcome in results if sent < grace_end - EDGE_S]
    after_signal = [o for sent, o in results if signalled <= sent < grace_end - EDGE_S]
    assert len(after_signal) >= 20, results  # the grace was exercised
    bad = [o for o in must if o != "200"]
    assert bad == [], f"{len(bad)} of {len(must)} refused or failed: {bad}"
    # /readyz said 503 during the grace, while the proxy still served.
    first_503 = next((t for t, s in ready if s == 503), None)
    assert first_503 is not None and first_503 < grace_end - EDGE_S, ready
    assert any(t > first_503 and o == "200" for t, o in results), (ready, results)
    # After the grace the listener is closed: later requests are refused.
    assert any(o == "refused" for sent, o in results if sent > grace_end + 1.0), results


def test_sigterm_drains_without_refusing_or_failing(
    procs: Procs,
    migrated_database: Callable[[], str],
    twin_config: Callable[..., TwinSetup],
) -> None:
    proc, listen, admin = _start(procs, migrated_database, twin_config)
    popen = proc.popen  # type: ignore[attr-defined]
    results, ready, signalled = asyncio.run(
        _steady_across_sigterm(lambda: popen.send_signal(signal.SIGTERM), listen, admin)
    )
    _check(results, ready, signalled)
    assert popen.wait(30) == 0, proc.output()  # type: ignore[attr-defined]


def test_a_proxy_alone_serves_probes_only_and_drains(
    procs: Procs,
    migrated_database: Callable[[], str],
    twin_config: Callable[..., TwinSetup],
) -> None:
    proc, listen, admin = _start(procs, migrated_database, twin_config, "proxy")
    base = f"http://127.0.0.1:{admin}"
    assert procs.http_get(f"{base}/healthz")[0] == 200
    assert procs.http_get(f"{base}/readyz")[0] == 200
    status, scraped = procs.http_get(f"{base}/metrics")  # this process's series
    assert status == 200 and b"graygate_mirror_in_flight" in scraped
    assert procs.http_get(f"{base}/api/v1/runs")[0] == 404  # no API without the admin role
    popen = proc.popen  # type: ignore[attr-defined]
    results, ready, signalled = asyncio.run(
        _steady_across_sigterm(lambda: popen.send_signal(signal.SIGTERM), listen, admin)
    )
    _check(results, ready, signalled)
    assert popen.wait(30) == 0, proc.output()  # type: ignore[attr-defined]


def test_a_proxy_alone_is_not_ready_before_it_listens(
    procs: Procs,
    migrated_database: Callable[[], str],
    twin_config: Callable[..., TwinSetup],
) -> None:
    """A load balancer sends traffic at the first 200 from ``/readyz``: from that moment the
    proxy's port must accept. The probes listen before the proxy does (its record writer
    starts first), and answer 503 "starting" until the proxy listens."""
    import socket
    import sys

    url = migrated_database()
    setup = twin_config("e2e-ready", {})
    proc = procs.spawn(
        "serve",
        [
            sys.executable, "-m", "graygate", "serve", "-c", str(setup.cfg),
            "--database-url", url, "--data-dir", str(procs.workdir / "data"), "--role", "proxy",
        ],
    )  # fmt: skip
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while not seen or seen[-1] != 200:
        assert proc.popen.poll() is None, proc.output()  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, (seen, proc.output())
        try:
            status, body = procs.http_get(f"http://127.0.0.1:{setup.admin}/readyz", 2.0)
        except OSError:
            time.sleep(0.005)
            continue
        seen.append(status)
        if status == 503:
            assert b"starting" in body, body
    # The first 200: the proxy's port takes a connection now, not a moment later.
    with socket.create_connection(("127.0.0.1", setup.listen), timeout=5) as conn:
        conn.sendall(b"GET /api/orders/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert conn.recv(12).startswith(b"HTTP/1.1 "), seen
