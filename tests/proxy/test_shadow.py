"""Shadow mode: a mirrored copy is answered 202 at once, then sent by graygate itself to
primary, canary (and secondary), and recorded as inline mode records it.

Real aiohttp upstreams on loopback, a real client. "Answered before fanning out" is shown by
events (the upstreams are held until the test lets them go, which it does only after the
client got its 202), never by timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import ClientSession, web
from prometheus_client import REGISTRY

from proxy.app import strip_shadow_suffix
from tests.proxy.harness import Sink, handler_app, make_cfg, proxy_for, serve_app


class Held:
    """An upstream that records what it got and answers once released."""

    def __init__(self, name: str, *, hold: bool = False) -> None:
        self.name = name
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.method, request.raw_path, dict(request.headers), body))
        self.arrived.set()
        await self.release.wait()
        return web.json_response({"who": self.name, "path": request.path})


def skipped(reason: str) -> float:
    return REGISTRY.get_sample_value("graygate_mirror_skipped_total", {"reason": reason}) or 0.0


@asynccontextmanager
async def shadow(sink: Sink, *ups: Held, **extra: Any) -> AsyncIterator[tuple[str, ClientSession]]:
    async with (
        serve_app(handler_app(ups[0].handle)) as p,
        serve_app(handler_app(ups[1].handle)) as c,
        contextlib_secondary(ups[2] if len(ups) > 2 else None) as s,
    ):
        if s is not None:
            extra["upstreams"] = {"secondary": s}
        cfg = make_cfg(p, c, mode="shadow", **extra)
        async with proxy_for(cfg, sink) as url, ClientSession() as client:
            yield url, client


@asynccontextmanager
async def contextlib_secondary(up: Held | None) -> AsyncIterator[str | None]:
    if up is None:
        yield None
        return
    async with serve_app(handler_app(up.handle)) as url:
        yield url


async def test_answered_at_once_then_sent_to_every_side_and_recorded() -> None:
    sink = Sink()
    primary, canary, secondary = Held("p", hold=True), Held("c", hold=True), Held("s", hold=True)
    async with shadow(sink, primary, canary, secondary) as (url, client):
        headers = {"Host": "orders.svc-shadow:8080", "X-Gray-Shadow": "1", "X-Test": "a"}
        async with client.get(f"{url}/orders/7?x=1", headers=headers) as resp:
            assert resp.status == 202
            assert await resp.read() == b""
        # The client has its answer while no upstream has answered yet.
        assert not sink.records
        async with asyncio.timeout(10):
            await primary.arrived.wait()
            await canary.arrived.wait()
            await secondary.arrived.wait()
        for up in (primary, canary, secondary):
            up.release.set()
        (record,) = await sink.wait(1)
    assert record.served_by == "primary"
    assert record.method == "GET" and record.path == "/orders/7" and record.query == "x=1"
    assert record.primary is not None and record.primary.status == 200
    assert record.canary is not None and record.canary.status == 200
    assert record.secondary is not None and record.secondary.status == 200
    assert record.primary.body is not None and b'"p"' in record.primary.body
    assert record.canary.body is not None and b'"c"' in record.canary.body
    assert record.mirror_skipped is None
    for up in (primary, canary, secondary):
        ((method, path, seen, _),) = up.seen
        assert (method, path) == ("GET", "/orders/7?x=1")
        assert seen["Host"] == "orders.svc:8080"  # Envoy's -shadow suffix stripped
        assert seen["X-Test"] == "a"
        assert [v for k, v in seen.items() if k.lower() == "x-gray-shadow"] == ["1"]


async def test_body_forwarded_as_received_up_to_the_bound_and_skipped_past_it() -> None:
    sink = Sink()
    primary, canary = Held("p"), Held("c")
    extra = {"mirror": {"methods": ["POST"], "allow_side_effects": True, "max_body_bytes": 10}}
    async with shadow(sink, primary, canary, **extra) as (url, client):
        before = skipped("body_too_large")
        async with client.post(f"{url}/a", data=b"0123456789") as resp:  # at the bound
            assert resp.status == 202
        (record,) = await sink.wait(1)
        async with client.post(f"{url}/b", data=b"0123456789X") as resp:  # one past it
            assert resp.status == 202
        assert skipped("body_too_large") == before + 1
    assert record.request_body == b"0123456789"
    assert [s[3] for s in primary.seen] == [b"0123456789"]
    assert [s[3] for s in canary.seen] == [b"0123456789"]
    assert len(sink.records) == 1


async def test_a_method_not_mirrored_is_answered_and_counted_never_sent() -> None:
    sink = Sink()
    primary, canary = Held("p"), Held("c")
    async with shadow(sink, primary, canary) as (url, client):
        before = skipped("method_not_mirrored")
        for method in ("POST", "DELETE"):
            async with client.request(method, f"{url}/orders", data=b"{}") as resp:
                assert resp.status == 202
        async with client.get(f"{url}/orders") as resp:  # GET is fanned out
            assert resp.status == 202
        await sink.wait(1)
        assert skipped("method_not_mirrored") == before + 2
    assert [s[0] for s in primary.seen] == ["GET"]
    assert [s[0] for s in canary.seen] == ["GET"]


async def test_a_full_mirror_is_a_counted_skip_and_the_source_still_answered() -> None:
    sink = Sink()
    primary, canary = Held("p", hold=True), Held("c", hold=True)
    async with shadow(sink, primary, canary, mirror={"max_in_flight": 1}) as (url, client):
        before = skipped("saturated")
        async with client.get(f"{url}/one") as resp:  # takes the one place
            assert resp.status == 202
        async with client.get(f"{url}/two") as resp:  # at the bound: skipped, answered
            assert resp.status == 202
        assert skipped("saturated") == before + 1
        primary.release.set()
        canary.release.set()
        (record,) = await sink.wait(1)
        async with client.get(f"{url}/three") as resp:  # the place is free again
            assert resp.status == 202
        await sink.wait(2)
    assert record.path == "/one"
    assert [s[1] for s in primary.seen] == ["/one", "/three"]


async def test_a_dead_canary_is_recorded_as_an_error_beside_the_primary() -> None:
    sink = Sink()
    primary = Held("p")
    async with serve_app(handler_app(primary.handle)) as p:
        from tests.proxy.harness import closed_port

        cfg = make_cfg(p, f"http://127.0.0.1:{closed_port()}", mode="shadow")
        async with proxy_for(cfg, sink) as url, ClientSession() as client:
            async with client.get(f"{url}/x") as resp:
                assert resp.status == 202
            (record,) = await sink.wait(1)
    assert record.primary is not None and record.primary.status == 200
    assert record.canary is not None and record.canary.error == "refused"


def test_strip_shadow_suffix() -> None:
    assert strip_shadow_suffix("orders.svc-shadow") == "orders.svc"
    assert strip_shadow_suffix("orders.svc-shadow:8080") == "orders.svc:8080"
    assert strip_shadow_suffix("orders.svc:8080") == "orders.svc:8080"
    assert strip_shadow_suffix("x-shadow.svc") == "x-shadow.svc"  # only at the end
    assert strip_shadow_suffix("-shadow") == "-shadow"  # nothing would be left
    assert strip_shadow_suffix("[::1]:80") == "[::1]:80"
    assert strip_shadow_suffix(None) is None
    assert strip_shadow_suffix("") == ""


def test_mode_defaults_to_inline_and_rejects_others() -> None:
    import pytest

    from graygate.errors import ConfigError

    assert make_cfg("http://127.0.0.1:1", "http://127.0.0.1:2").mode == "inline"
    with pytest.raises((ConfigError, ValueError), match="mode"):
        make_cfg("http://127.0.0.1:1", "http://127.0.0.1:2", mode="sideways")


async def test_header_fields_total_at_the_bound_and_one_past_it() -> None:
    """``listen_limits.max_header_bytes`` holds in shadow mode too: at the bound the copy
    is answered 202 and sent on; one byte past it is a 431, and nothing is sent."""
    sink = Sink()
    primary, canary = Held("p"), Held("c")
    limits = {"max_header_bytes": 2_000, "max_field_bytes": 2_000}
    async with shadow(sink, primary, canary, listen_limits=limits) as (url, client):
        # What aiohttp's client sends besides X-Pad: Host, Accept, Accept-Encoding,
        # User-Agent; measured, so the pad makes names + values exactly the bound.
        base = {"Accept": "*/*", "Accept-Encoding": "gzip", "User-Agent": "t"}
        host = url.split("//", 1)[1]
        used = sum(len(k) + len(v) for k, v in base.items()) + len("Host") + len(host)
        pad = 2_000 - used - len("X-Pad")
        for size, status in ((pad, 202), (pad + 1, 431)):
            headers = {**base, "X-Pad": "v" * size}
            async with client.get(f"{url}/o", headers=headers) as resp:
                assert resp.status == status, (size, await resp.text())
        async with asyncio.timeout(10):
            await canary.arrived.wait()
        await sink.wait(1)
    assert len(primary.seen) == 1 and len(canary.seen) == 1  # the 431 was sent nowhere
