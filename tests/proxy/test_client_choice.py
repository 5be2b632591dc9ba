"""Who chooses the route (issue 10 items 8 and 9): never the client.

Real aiohttp upstreams on loopback and a real client through the proxy.
"""

from __future__ import annotations

from ipaddress import ip_network

from aiohttp import ClientSession, web

from proxy.headers import request_drop, upstream_headers
from proxy.tagging import tag_request
from proxy.trust import peer_is_trusted
from tests.proxy.harness import Handler, Sink, echo, handler_app, make_cfg, proxy_for, serve_app

FIXED_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRIES = 200  # at 50%: one outcome only with probability 2 * 0.5**200


def answer(role: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=role)

    return handler


async def test_a_fixed_trace_id_does_not_choose_the_serving_side(client: ClientSession) -> None:
    sink = Sink()
    gray = {"serve_canary": [{"percent": 50}]}
    async with (
        serve_app(handler_app(answer("primary"))) as p,
        serve_app(handler_app(answer("canary"))) as c,
        proxy_for(make_cfg(p, c, gray=gray, mirror={"enabled": False}), sink) as proxy,
    ):
        served: set[str] = set()
        for _ in range(TRIES):
            async with client.get(proxy + "/x", headers={"X-Trace-ID": FIXED_TRACE_ID}) as r:
                assert r.status == 200
                assert r.headers["X-Trace-ID"] == FIXED_TRACE_ID
                served.add(await r.text())
        records = await sink.wait(TRIES)
    assert served == {"primary", "canary"}
    assert {r.served_by for r in records} == {"primary", "canary"}
    assert {r.trace_id for r in records} == {FIXED_TRACE_ID}


async def test_a_fixed_trace_id_does_not_choose_sampling(client: ClientSession) -> None:
    sink = Sink()
    tp = f"00-{FIXED_TRACE_ID}-00f067aa0ba902b7-01"
    async with (
        serve_app(handler_app(answer("primary"))) as p,
        serve_app(handler_app(answer("canary"))) as c,
        proxy_for(make_cfg(p, c, mirror={"sample": 0.5}), sink) as proxy,
    ):
        for i in range(TRIES):
            # half by X-Trace-ID, half by traceparent: neither decides
            headers = {"X-Trace-ID": FIXED_TRACE_ID} if i % 2 else {"traceparent": tp}
            async with client.get(proxy + "/s", headers=headers) as r:
                assert r.status == 200
        records = await sink.wait(TRIES)
    assert {r.trace_id for r in records} == {FIXED_TRACE_ID}
    assert {r.mirror_skipped for r in records} == {None, "sampled_out"}
    assert {r.canary is not None for r in records} == {True, False}


# --- item 9: client-address and original-URL headers ----------------------------------

SPOOFED = {
    "Forwarded": "for=10.9.9.9;proto=https",
    "X-Real-IP": "10.9.9.9",
    "X-Client-IP": "10.9.9.9",
    "True-Client-IP": "10.9.9.9",
    "X-Original-URL": "/admin",
    "X-Rewrite-URL": "/admin",
    "X-Forwarded-For": "10.9.9.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "spoofed.example",
    "X-Forwarded-Prefix": "/evil",
}


def header_map(pairs: list[list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k.lower(), []).append(v)
    return out


async def test_untrusted_peer_cannot_claim_an_address_or_url(client: ClientSession) -> None:
    sink = Sink()
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(echo)) as c,
        # the default: trusted_proxies: [] (and a list without loopback: the same)
        proxy_for(make_cfg(p, c), sink) as proxy,
        proxy_for(make_cfg(p, c, trusted_proxies=["10.0.0.0/8"]), sink) as proxy10,
    ):
        for url in (proxy, proxy10):
            async with client.get(url + "/f", headers={"Host": "shop.example", **SPOOFED}) as r:
                seen = header_map((await r.json())["headers"])
            for name in SPOOFED:
                if name.lower() not in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"):
                    assert name.lower() not in seen, name
            assert seen["x-forwarded-for"] == ["127.0.0.1"]
            assert seen["x-forwarded-proto"] == ["http"]
            assert seen["x-forwarded-host"] == ["shop.example"]
        records = await sink.wait(2)
    # nor are they recorded as if the client had been believed
    for rec in records:
        assert "x-original-url" not in rec.request_headers
        assert rec.request_headers["x-forwarded-for"] == "127.0.0.1"


def _headers_app(trusted: list[str]) -> web.Application:
    """An app whose handler answers with what upstream_headers would send upstream."""
    networks = [ip_network(n) for n in trusted]

    async def handler(request: web.Request) -> web.Response:
        tags = tag_request(request.headers, "X-Gray-Tag")
        out = upstream_headers(
            request, tags, "X-Gray-Tag", "stable", request_drop("X-Gray-Tag"), trusted=networks
        )
        return web.json_response({"headers": [[k, v] for k, v in out]})

    return handler_app(handler)


async def test_trusted_peer_keeps_them_and_xff_is_appended(client: ClientSession) -> None:
    async with (
        serve_app(_headers_app(["127.0.0.0/8"])) as trusted,
        serve_app(_headers_app(["10.0.0.0/8", "::1/128"])) as untrusted,
    ):
        async with client.get(trusted + "/f", headers={"Host": "lb.example", **SPOOFED}) as r:
            seen = header_map((await r.json())["headers"])
        for name, value in SPOOFED.items():
            if name != "X-Forwarded-For":
                assert seen[name.lower()] == [value], name
        assert seen["x-forwarded-for"] == ["10.9.9.9, 127.0.0.1"]
        async with client.get(untrusted + "/f", headers={"Host": "lb.example", **SPOOFED}) as r:
            seen = header_map((await r.json())["headers"])
        assert "forwarded" not in seen and "x-original-url" not in seen
        assert "x-forwarded-prefix" not in seen
        assert seen["x-forwarded-for"] == ["127.0.0.1"]
        assert seen["x-forwarded-host"] == ["lb.example"]


def test_peer_is_trusted() -> None:
    nets = [ip_network("10.0.0.0/8"), ip_network("fd00::/8")]
    assert peer_is_trusted("10.1.2.3", nets)
    assert peer_is_trusted("::ffff:10.1.2.3", nets)  # IPv4-mapped
    assert peer_is_trusted("fd00::1%eth0", nets)  # zone id ignored
    assert not peer_is_trusted("11.0.0.1", nets)
    assert not peer_is_trusted("not-an-ip", nets)
    assert not peer_is_trusted(None, nets)
    assert not peer_is_trusted("10.1.2.3", [])


async def test_trusted_proxies_through_the_proxy(client: ClientSession) -> None:
    sink = Sink()
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c, trusted_proxies=["127.0.0.0/8"]), sink) as proxy,
    ):
        async with client.get(proxy + "/f", headers=SPOOFED) as r:
            seen = header_map((await r.json())["headers"])
    assert seen["x-original-url"] == ["/admin"]
    assert seen["x-forwarded-for"] == ["10.9.9.9, 127.0.0.1"]
