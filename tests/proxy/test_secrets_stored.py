"""Secrets in traffic never reach the record (issue 10, item 11): through the real proxy,
real upstreams on loopback, the record as the recorder gets it."""

from __future__ import annotations

from aiohttp import ClientSession, FormData

from tests.proxy.harness import (
    Sink,
    echo,
    handler_app,
    make_cfg,
    proxy_between,
    proxy_for,
    serve_app,
)

REDACT = {"json_fields": ["$..password"]}


async def test_bodies_are_redacted_whatever_their_type(client: ClientSession) -> None:
    sink = Sink()
    cfg_extra = {
        "redact": {**REDACT, "max_header_bytes": 16_384},
        "mirror": {"allow_side_effects": True},
    }
    async with (
        serve_app(handler_app(echo)) as p,
        serve_app(handler_app(echo)) as c,
        proxy_for(make_cfg(p, c, **cfg_extra), sink) as proxy,
    ):
        async with client.post(
            proxy + "/json-as-text",
            data=b'{"user": "ann", "password": "hunter1"}',
            headers={"Content-Type": "text/plain"},
        ) as r:
            assert r.status == 200
        async with client.post(
            proxy + "/form", data={"user": "ann", "password": "hunter2", "access_token": "tok2"}
        ) as r:
            assert r.status == 200
        form = FormData()
        form.add_field("user", "ann")
        form.add_field("password", "hunter3")
        form.add_field("file", b"\x00\x01", filename="f.bin")
        async with client.post(proxy + "/multipart", data=form) as r:
            assert r.status == 200
        huge = {f"X-Huge-{i}": "h" * 8000 for i in range(6)}  # 48 KB: under the listen limit
        async with client.get(proxy + "/h", headers={"X-Auth-Token": "hunter4", **huge}) as r:
            assert r.status == 200
        records = await sink.wait(4)
    by_path = {r.path: r for r in records}
    for path, secret in (
        ("/json-as-text", b"hunter1"),
        ("/form", b"hunter2"),
        ("/form", b"tok2"),
        ("/multipart", b"hunter3"),
    ):
        rec = by_path[path]
        assert rec.request_body is not None and secret not in rec.request_body, path
        # the echoing upstreams' answers carry the body too: redacted alike
        for side in (rec.primary, rec.canary):
            assert side is not None and side.body is not None
    headers = by_path["/h"].request_headers
    assert headers["x-auth-token"] == "[REDACTED]"
    assert sum(len(k) + len(v) for k, v in headers.items()) <= 16_384 + 64
    assert int(headers["x-graygate-headers-dropped"]) >= 4  # 2 of 6 fit 16 KiB


async def test_query_string_is_redacted(client: ClientSession) -> None:
    sink = Sink()
    async with proxy_between(sink) as proxy:
        async with client.get(proxy + "/q?page=2&access_token=hunter5") as r:
            assert r.status == 200
        (rec,) = await sink.wait(1)
    assert "hunter5" not in rec.query and "page=2" in rec.query
