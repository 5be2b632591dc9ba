"""Who chooses the route (issue 10 items 8 and 9): never the client.

Real aiohttp upstreams on loopback and a real client through the proxy.
"""

from __future__ import annotations

from aiohttp import ClientSession, web

from tests.proxy.harness import Handler, Sink, handler_app, make_cfg, proxy_for, serve_app

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
