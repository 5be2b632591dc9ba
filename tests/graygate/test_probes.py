"""The probes of a proxy without the admin role (``graygate serve --role proxy``), served
on a real loopback port: ``/readyz`` follows the process's readiness."""

from __future__ import annotations

import json

import aiohttp
from aiohttp import web

from graygate.supervise import Readiness, probes_app


async def test_readyz_is_503_until_the_proxy_listens_200_then_503_once_draining() -> None:
    readiness = Readiness()
    runner = web.AppRunner(probes_app(readiness))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:

            async def readyz() -> tuple[int, dict[str, object]]:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    return resp.status, json.loads(await resp.read())

            status, body = await readyz()
            assert status == 503 and body["ready"] is False
            assert "not listening yet" in str(body["error"])
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200  # alive all along

            readiness.listening = True
            assert await readyz() == (200, {"ready": True})

            readiness.drain()
            status, body = await readyz()
            assert status == 503 and body["error"] == "shutting down"
            assert readiness.draining and readiness.since is not None
            first = readiness.since
            readiness.drain()  # a second signal does not move the start of the drain
            assert readiness.since == first
    finally:
        await runner.cleanup()
