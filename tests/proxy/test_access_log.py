"""The access log: off by default; when on, one line per proxied request in the process's
format (text, or JSON), redacted query values never in it."""

from __future__ import annotations

import logging

import orjson
import pytest
from aiohttp import ClientSession

from graygate.log_format import JsonFormatter
from proxy.access_log import _safe
from tests.proxy.harness import (
    Sink,
    closed_port,
    echo,
    handler_app,
    make_cfg,
    proxy_between,
    proxy_for,
    raw_request,
    serve_app,
)

ACCESS = "proxy.access_log"
SECRET = "s3cr3t-VALUE-4711"
TEXT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS]


async def test_off_by_default(client: ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sink = Sink()
    async with proxy_between(sink) as proxy:
        async with client.get(f"{proxy}/quiet?x=1") as r:
            assert r.status == 200
        await sink.wait(1)
    assert _lines(caplog) == []


async def _two_requests(client: ClientSession) -> tuple[str, int, str]:
    """A mirrored GET and an unmirrored POST, each with secrets in its query string: the
    GET's trace id and body size, the POST's trace id."""
    sink = Sink()
    async with proxy_between(
        sink, log={"access": True}, redact={"json_fields": ["$.card"]}
    ) as proxy:
        target = f"/api/orders/7?access_token={SECRET}&card={SECRET}&page=2"
        async with client.get(proxy + target) as r:
            assert r.status == 200
            size = len(await r.read())
            trace_id = r.headers["X-Trace-ID"]
        async with client.post(f"{proxy}/api/orders?password={SECRET}", data=b"{}") as r:
            assert r.status == 200  # POST is not mirrored by default
            post_trace = r.headers["X-Trace-ID"]
        await sink.wait(2)
    return trace_id, size, post_trace


async def test_one_line_per_request_in_text_and_json(
    client: ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    # The process logs at WARNING (as --log-level warning leaves it): the access log was
    # asked for, it is written anyway.
    root = logging.getLogger()
    saved = root.level
    root.setLevel(logging.WARNING)
    try:
        trace_id, size, post_trace = await _two_requests(client)
    finally:
        root.setLevel(saved)
    records = _lines(caplog)
    assert len(records) == 2
    get, post = sorted(records, key=lambda rec: rec.method != "GET")  # type: ignore[attr-defined]

    text = TEXT.format(get)
    assert "\n" not in text
    assert text.split(": ", 1)[1] == (
        "GET /api/orders/7?access_token=%5BREDACTED%5D&card=%5BREDACTED%5D&page=2 200 "
        f"{size}B {get.duration_ms:.3f}ms trace_id={trace_id} "  # type: ignore[attr-defined]
        "served_by=primary mirror=ok"
    )
    data = orjson.loads(JsonFormatter().format(get))
    assert data["logger"] == ACCESS and data["level"] == "INFO"
    assert data["method"] == "GET"
    assert data["path"] == "/api/orders/7?access_token=%5BREDACTED%5D&card=%5BREDACTED%5D&page=2"
    assert data["status"] == 200 and data["bytes"] == size
    assert isinstance(data["duration_ms"], float) and data["duration_ms"] >= 0
    assert data["trace_id"] == trace_id
    assert data["served_by"] == "primary" and data["mirror"] == "ok"

    post_data = orjson.loads(JsonFormatter().format(post))
    assert post_data["trace_id"] == post_trace
    assert post_data["mirror"] == "skipped:method"
    assert post_data["path"] == "/api/orders?password=%5BREDACTED%5D"
    for record in records:
        for line in (TEXT.format(record), JsonFormatter().format(record)):
            assert SECRET not in line


async def test_failures_and_skips_are_named(
    client: ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sink = Sink()
    async with serve_app(handler_app(echo)) as primary:
        # the canary refuses: the mirror outcome says so
        cfg = make_cfg(primary, f"http://127.0.0.1:{closed_port()}", log={"access": True})
        async with proxy_for(cfg, sink) as proxy:
            async with client.get(f"{proxy}/mirror-refused") as r:
                assert r.status == 200
            await sink.wait(1)
        # the primary refuses: the client got graygate's 502
        cfg = make_cfg(
            f"http://127.0.0.1:{closed_port()}",
            primary,
            log={"access": True},
            mirror={"enabled": False},
        )
        async with proxy_for(cfg, sink) as proxy:
            async with client.get(f"{proxy}/serve-refused") as r:
                assert r.status == 502
            await sink.wait(2)
    first, second = (orjson.loads(JsonFormatter().format(r)) for r in _lines(caplog))
    assert first["path"] == "/mirror-refused" and first["mirror"] == "refused"
    assert first["status"] == 200
    assert second["path"] == "/serve-refused" and second["status"] == 502
    assert second["mirror"] == "skipped:disabled" and second["bytes"] == 0


async def test_the_target_is_logged_as_sent_never_decoded(
    client: ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Percent-escapes stay escapes: a %0A in the target is no new line in the log."""
    caplog.set_level(logging.INFO)
    sink = Sink()
    async with proxy_between(sink, log={"access": True}) as proxy:
        answer = await raw_request(
            proxy,
            b"GET /a%0Ab%1B%5B31m?q=%0AINFO%20fake HTTP/1.1\r\nHost: x\r\n"
            b"Connection: close\r\n\r\n",
        )
        await sink.wait(1)
    status = int(answer.split(b" ", 2)[1])  # the upstream's (aiohttp's router: 404)
    (record,) = _lines(caplog)
    line = TEXT.format(record)
    assert "\n" not in line and line.isprintable()
    data = orjson.loads(JsonFormatter().format(record))
    assert data["path"] == "/a%0Ab%1B%5B31m?q=%0AINFO%20fake"
    assert data["status"] == status


@pytest.mark.parametrize(
    ("text", "safe"),
    [
        ("/plain?x=1", "/plain?x=1"),
        ("/caf\udce9", "/caf\\xe9"),  # a byte outside UTF-8, as aiohttp hands it on
        ("/a\nb\x1b[31m", "/a\\nb\\x1b[31m"),
        ("/caf\u00e9", "/caf\u00e9"),  # printable text stays
    ],
)
def test_text_from_a_client_is_made_one_printable_line(text: str, safe: str) -> None:
    out = _safe(text)
    assert out == safe
    assert out.isprintable()
    orjson.dumps(out)  # valid UTF-8: JSON can hold it
