"""The upstreams of tests/e2e/test_verdict_cases.py: one small aiohttp service that answers
as the primary, the secondary (a second primary) or the canary, with one planted
difference per endpoint, each the case of issue 8 it is named after.

    python tests/e2e/case_service.py primary|secondary|canary

prints ``listening on http://127.0.0.1:PORT``. Every endpoint takes ``?i=N`` (the request's
number, so that all three sides answer the same request alike where nothing is planted).

========================= ================================================================
endpoint                  what the canary (or the secondary) does
========================= ================================================================
GET /noise                (1) every side's timestamps differ in value (noise); the canary
                          also drops ``ts_drop``, sends ``ts_type`` as a number and
                          ``ts_null`` as null
GET /tiny-secondary       (2) ``code`` wrong on the canary; the secondary answers it (also
                          differing) only 3 times, then resets the connection
GET /precedence           (3) ``meta.version.major`` differs under an ignored ``meta.**``
GET /unordered            (4) unordered arrays: 0.1 vs 0.1000000000001, true vs 1, false vs 0
GET /large-body           (15) a body over ``compare.max_body_bytes``, differing only in an
                          ignored field: compared as bytes
GET /keyed                (12) keyed + unordered array with elements lacking the key and
                          duplicate keys, shuffled: equal
GET /numeric-string       (12) "12.30" vs "12.3" under a tolerance: equal
GET /bom                  (12) a UTF-8 BOM before the canary's JSON: equal
GET /blank                (12) an empty JSON body vs "\\n": equal
GET /errors/primary       (5) the primary answers 503 to every 4th request
GET /errors/canary        (5) the canary answers 503 to every 4th request
GET /slow, GET /fast      (6) /slow takes 30 ms on the canary, 3 ms on the others
GET /cut-text             (7) 20 kB of text, the canary's differing at byte 100
GET /cut-json             (7) 20 kB of JSON, the canary's differing at its end (past the cut)
GET /numbers              (9, 10) a 21-digit integer off by 10, NaN vs null, ``true`` vs ``1``
                          300 levels deep
GET /backlog              (8) the canary's ``stock`` is wrong with ``X-Plant: wrong``
========================= ================================================================
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

ROLE = sys.argv[1] if len(sys.argv) > 1 else "primary"
CANARY = ROLE == "canary"
JSON = "application/json"
SEEN: Counter[str] = Counter()  # requests per endpoint, in this process


def _i(request: web.Request) -> int:
    return int(request.query.get("i", "0"))


def _json(doc: object) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type=JSON)


async def noise(request: web.Request) -> web.Response:
    i = _i(request)
    ts = f"2026-12-01T10:{i % 60:02d}:00.{ROLE}Z"  # differs on every side: noise
    if not CANARY:
        return _json({"i": i, "ts_value": ts, "ts_drop": ts, "ts_type": ts, "ts_null": ts})
    return _json({"i": i, "ts_value": ts, "ts_type": 1_796_119_200 + i, "ts_null": None})


async def tiny_secondary(request: web.Request) -> web.Response:
    i = _i(request)
    if ROLE == "secondary":
        SEEN["tiny"] += 1
        if SEEN["tiny"] > 3:  # a secondary that answered 3 exchanges in all
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        return _json({"i": i, "code": "S"})
    return _json({"i": i, "code": "B" if CANARY else "A"})


async def precedence(request: web.Request) -> web.Response:
    i = _i(request)
    major = 2 if CANARY else 1
    return _json({"i": i, "meta": {"version": {"major": major, "minor": 4}, "build": ROLE}})


async def unordered(request: web.Request) -> web.Response:
    if CANARY:
        doc = {"floats": [0.1000000000001, 0.5], "bools": [2, 1], "objs": [{"on": 1}, {"on": 0}]}
    else:
        doc = {"floats": [0.5, 0.1], "bools": [True, 2], "objs": [{"on": False}, {"on": True}]}
    return _json({"i": _i(request), **doc})


async def large_body(request: web.Request) -> web.Response:
    i = _i(request)
    rid = f"req-{i}-canary" if CANARY else f"req-{i}"
    return _json({"i": i, "request_id": rid, "pad": "x" * 3000})


async def keyed(request: web.Request) -> web.Response:
    items: list[dict[str, object]] = [
        {"sku": "A", "q": 1},
        {"q": 5},
        {"q": 7},
        {"sku": "B", "q": 1},
        {"sku": "B", "q": 2},
    ]
    if CANARY:
        items = [items[2], items[4], items[0], items[1], items[3]]
    return _json({"i": _i(request), "items": items})


async def numeric_string(request: web.Request) -> web.Response:
    return _json({"i": _i(request), "price": "12.3" if CANARY else "12.30"})


async def bom(request: web.Request) -> web.Response:
    body = orjson.dumps({"i": _i(request), "name": "café"})
    return web.Response(body=b"\xef\xbb\xbf" + body if CANARY else body, content_type=JSON)


async def blank(request: web.Request) -> web.Response:
    return web.Response(body=b"\n" if CANARY else b"", content_type=JSON)


async def errors_primary(request: web.Request) -> web.Response:
    i = _i(request)
    if ROLE == "primary" and i % 4 == 0:
        return web.Response(status=503, text="unavailable")
    return _json({"i": i})


async def errors_canary(request: web.Request) -> web.Response:
    i = _i(request)
    if CANARY and i % 4 == 0:
        return web.Response(status=503, text="unavailable")
    return _json({"i": i})


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(0.030 if CANARY else 0.003)
    return _json({"i": _i(request)})


async def fast(request: web.Request) -> web.Response:
    return _json({"i": _i(request)})


async def cut_text(request: web.Request) -> web.Response:
    text = "a" * 20_000
    if CANARY:
        text = text[:100] + "b" + text[101:]
    return web.Response(text=text, content_type="text/plain")


async def cut_json(request: web.Request) -> web.Response:
    i = _i(request)
    tail = "changed" if CANARY else "same"
    return _json({"i": i, "request_id": f"{ROLE}-{i}", "pad": "x" * 20_000, "tail": tail})


def _nest(depth: int, leaf: str) -> str:
    return '{"a": [' * depth + leaf + "]}" * depth


async def numbers(request: web.Request) -> web.Response:
    i = _i(request)
    if CANARY:
        big, nan, deep = "123456789012345678891", "null", _nest(300, "1")
    else:
        big, nan, deep = "123456789012345678901", "NaN", _nest(300, "true")
    body = f'{{"i": {i}, "big": {big}, "nan": {nan}, "deep": {deep}}}'
    return web.Response(text=body, content_type=JSON)


async def backlog(request: web.Request) -> web.Response:
    wrong = CANARY and request.headers.get("X-Plant") == "wrong"
    return _json({"i": _i(request), "stock": 4 if wrong else 5})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


ROUTES: dict[str, Callable[[web.Request], Awaitable[web.Response]]] = {
    "/noise": noise,
    "/tiny-secondary": tiny_secondary,
    "/precedence": precedence,
    "/unordered": unordered,
    "/large-body": large_body,
    "/keyed": keyed,
    "/numeric-string": numeric_string,
    "/bom": bom,
    "/blank": blank,
    "/errors/primary": errors_primary,
    "/errors/canary": errors_canary,
    "/slow": slow,
    "/fast": fast,
    "/cut-text": cut_text,
    "/cut-json": cut_json,
    "/numbers": numbers,
    "/backlog": backlog,
    "/healthz": healthz,
}


async def main() -> None:
    app = web.Application()
    for path, handler in ROUTES.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
