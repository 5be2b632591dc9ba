"""Through the real proxy: the upstream latency histogram's ``endpoint`` label (serve and
mirror), bounded by ``metrics.max_endpoints``, and graygate's added latency."""

from __future__ import annotations

import uuid

from aiohttp import ClientSession
from prometheus_client import REGISTRY

from tests.proxy.harness import (
    Sink,
    closed_port,
    echo,
    handler_app,
    make_cfg,
    proxy_between,
    proxy_for,
    serve_app,
)

LATENCY = "graygate_upstream_latency_seconds"


def _latency_counts() -> dict[tuple[str, str, str], float]:
    """(role, mode, endpoint) -> observations, from the process's registry."""
    out: dict[tuple[str, str, str], float] = {}
    for metric in REGISTRY.collect():
        if metric.name == LATENCY:
            for s in metric.samples:
                if s.name == LATENCY + "_count":
                    key = (s.labels["role"], s.labels["mode"], s.labels["endpoint"])
                    out[key] = s.value
    return out


def _added_count() -> float:
    return REGISTRY.get_sample_value("graygate_proxy_added_seconds_count") or 0.0


async def test_endpoint_label_is_the_template_bounded_then_other(client: ClientSession) -> None:
    tag = uuid.uuid4().hex[:8]  # this test's templates only
    patterns = [f"GET /{tag}/a/{{id}}", f"GET /{tag}/b/{{id}}", f"GET /{tag}/c/{{id}}"]
    sink = Sink()
    before = _latency_counts()
    async with proxy_between(
        sink,
        compare={"endpoints": [{"match": p} for p in patterns]},
        metrics={"max_endpoints": 2},
    ) as proxy:
        sent = 0
        for letter in "abc":  # a and b take the two series; c is past the bound
            for i in range(4):
                async with client.get(f"{proxy}/{tag}/{letter}/{i}{uuid.uuid4().hex}") as r:
                    assert r.status == 200
                sent += 1
        for i in range(5):  # paths no template matches
            async with client.get(f"{proxy}/{tag}/unmatched/{uuid.uuid4().hex}/{i}") as r:
                assert r.status == 200
            sent += 1
        await sink.wait(sent)
    after = _latency_counts()
    mine = {k for k in after if tag in k[2]}
    assert mine == {
        (role, mode, f"GET /{tag}/{letter}/{{id}}")
        for role, mode in (("primary", "serve"), ("canary", "mirror"))
        for letter in "ab"
    }
    for key in mine:
        assert after[key] - before.get(key, 0.0) == 4
    # c's 4 and the 5 unmatched are counted under other, served and mirrored
    for key in (("primary", "serve", "other"), ("canary", "mirror", "other")):
        assert after[key] - before.get(key, 0.0) == 9
    # no raw path is a label value
    assert not any("unmatched" in k[2] or "/c/" in k[2] for k in after)


async def test_added_latency_is_observed_per_answered_request(client: ClientSession) -> None:
    sink = Sink()
    before = _added_count()
    async with proxy_between(sink, mirror={"enabled": False}) as proxy:
        for i in range(6):
            async with client.get(f"{proxy}/added/{i}") as r:
                assert r.status == 200
                await r.read()
        async with client.post(f"{proxy}/added/body", data=b"x" * 5000) as r:
            assert r.status == 200
        await sink.wait(7)
    assert _added_count() - before == 7


async def test_no_added_latency_without_an_upstream_answer(client: ClientSession) -> None:
    sink = Sink()
    async with serve_app(handler_app(echo)) as canary:
        cfg = make_cfg(f"http://127.0.0.1:{closed_port()}", canary, mirror={"enabled": False})
        async with proxy_for(cfg, sink) as proxy:
            before = _added_count()
            async with client.get(f"{proxy}/refused") as r:
                assert r.status == 502
            await sink.wait(1)
            assert _added_count() == before
