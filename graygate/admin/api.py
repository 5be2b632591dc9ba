"""The admin API's views: JSON over the store, the verdict and the gate, the HTML report.

``add_api_routes(app)`` adds them to an application that holds the engine under
``ENGINE_KEY`` (``graygate.admin.app.make_admin_app`` builds that application, with the one
middleware that renders errors as JSON). Handlers raise; they never build error bodies:
``UnknownRun`` becomes 404, ``StoreUnavailable`` 503, ``web.HTTPBadRequest`` 400.

Routes (all JSON but the report):

- ``GET /api/v1/runs?limit=``: ``{"runs": [RunSummary, ...]}``, most recently updated first;
- ``GET /api/v1/runs/{run}/verdict``: the verdict (``VerdictResult.as_dict()``), 200 once
  computed, whatever it is; nothing is recorded;
- ``GET|POST /api/v1/runs/{run}/gate``: the same body plus ``gate`` (open | closed | wait)
  and ``reason``, with status 200 GO, 412 NO_GO, 503 INCONCLUSIVE; the verdict it answers
  with is recorded in the run's history (it is the one that gated a release).

  Flagger webhooks POST (``{"name", "namespace", "phase", "metadata"}``, ignored) and count
  any status above 202 as a failed check: point one at the gate as it is. An Argo Rollouts
  ``web`` metric marks every non-2xx answer as an *Error* (not a failure, and INCONCLUSIVE
  would abort after ``consecutiveErrorLimit``): give it ``?always_200=true`` and judge the
  body, ``jsonPath: "{$.verdict}"``, ``successCondition: result == "GO"``,
  ``failureCondition: result == "NO_GO"``; INCONCLUSIVE is then an inconclusive
  measurement. Errors (unknown run 404, database away 503) keep their status;
- ``GET /api/v1/runs/{run}/endpoints``: ``{"run", "endpoints": [EndpointStats, ...],
  "fields": [FieldStat, ...], "noise_fields": [{"endpoint", "field"}, ...]}``: the numbers
  the verdict judged (``diff.evaluate.assess_run``), so report, API and verdict agree;
- ``GET /api/v1/runs/{run}/differences?endpoint=&field=&path=&judgement=&against=&limit=&after=``:
  ``{"run", "items": [DifferenceRow, ...], "next": id | null}``; pass ``next`` as ``after``;
- ``GET /api/v1/exchanges/{trace_id}?run=``: the exchange, its responses (bodies as JSON when
  they parse, else text, else base64) and its differences;
- ``GET /runs/{run}``: the HTML report.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import assess_run, evaluate_run, record_result
from diff.report_model import build_report
from graygate.report_html import render_html
from graygate.values import Answer, Verdict, VerdictResult
from store import reports
from store.aggregates import latest_verdicts
from store.reports import MAX_PAGE, ExchangeDetail

__all__ = [
    "ENGINE_KEY",
    "GATE_STATUS",
    "add_api_routes",
    "exchange_json",
    "gate_body",
    "json_response",
    "render_body",
]

logger = logging.getLogger(__name__)

ENGINE_KEY = web.AppKey("graygate_engine", AsyncEngine)

# The gate's HTTP status per verdict: only GO is 2xx, so anything that treats non-2xx as
# "do not proceed" (Flagger webhooks, curl --fail, plain HTTP checks) is gated by it.
GATE_STATUS: Mapping[Verdict, int] = {
    Verdict.GO: 200,
    Verdict.NO_GO: 412,
    Verdict.INCONCLUSIVE: 503,
}
_GATE_WORD = {Verdict.GO: "open", Verdict.NO_GO: "closed", Verdict.INCONCLUSIVE: "wait"}
_DEFAULT_PAGE = 100


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def json_response(data: Any, *, status: int = 200) -> web.Response:
    """``data`` (dicts, lists, dataclasses, datetimes) as a JSON response, via orjson."""
    return web.Response(
        body=orjson.dumps(data, default=_default, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


def _engine(request: web.Request) -> AsyncEngine:
    return request.app[ENGINE_KEY]


def _int_param(request: web.Request, name: str, lo: int, hi: int) -> int | None:
    """The query parameter ``name`` as an integer in [lo, hi]; None when absent; 400 when
    it is not one."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise web.HTTPBadRequest(text=f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _str_param(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    return value if value else None


# --------------------------------------------------------------------------- bodies


def render_body(body: bytes | None, *, truncated: bool = False) -> dict[str, Any] | None:
    """A recorded body for JSON: ``{"encoding": "json"|"text"|"base64", "value", ...}``.

    JSON when the body parses as JSON, else UTF-8 text, else base64; None when no body was
    recorded.
    """
    if body is None:
        return None
    out: dict[str, Any] = {"size": len(body), "truncated": truncated}
    if body:
        try:
            return {"encoding": "json", "value": orjson.loads(body), **out}
        except orjson.JSONDecodeError:
            pass
    try:
        return {"encoding": "text", "value": body.decode("utf-8"), **out}
    except UnicodeDecodeError:
        return {"encoding": "base64", "value": base64.b64encode(body).decode("ascii"), **out}


def _response_json(r: Answer) -> dict[str, Any]:
    out = {
        "status": r.status,
        "error": r.error,
        "latency_ms": r.latency_ms,
        "headers": r.headers,
        "body": render_body(r.body, truncated=r.body_truncated),
    }
    if r.body_sha256 is not None:  # record.bodies.sample left the body out
        out["body_sha256"] = r.body_sha256.hex()
    return out


def exchange_json(detail: ExchangeDetail) -> dict[str, Any]:
    x = detail.exchange
    return {
        "id": detail.id,
        "run": detail.run,
        "trace_id": x.trace_id,
        "span_id": x.span_id,
        "received_at": x.received_at,
        "endpoint": x.endpoint,
        "request": {
            "method": x.method,
            "path": x.path,
            "query": x.query,
            "headers": x.request_headers,
            "body": render_body(x.request_body, truncated=x.request_body_truncated),
            "gray_label": x.gray_label,
        },
        "served_by": x.served_by,
        "mirror_skipped": x.mirror_skipped,
        "responses": {role: _response_json(a) for role, a in detail.responses.items()},
        "judgement": {
            "judged_at": detail.judged_at,
            "outcome": detail.outcome,
            "strict_mismatches": detail.strict_mismatches,
            "tolerance_violations": detail.tolerance_violations,
            "noise_differences": detail.noise_differences,
        },
        "differences": detail.differences,
    }


# --------------------------------------------------------------------------- views


async def list_runs(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 1, MAX_PAGE) or _DEFAULT_PAGE
    return json_response({"runs": await reports.list_runs(_engine(request), limit=limit)})


async def verdict(request: web.Request) -> web.Response:
    result = await evaluate_run(_engine(request), request.match_info["run"], record=False)
    return json_response(result.as_dict())


def gate_body(result: VerdictResult) -> dict[str, Any]:
    """The verdict, plus ``gate`` (open | closed | wait) and a one-line ``reason``
    (``VerdictResult.reason``, as ``graygate verdict --json`` gives it)."""
    return {**result.as_dict(), "gate": _GATE_WORD[result.verdict], "reason": result.reason}


async def gate(request: web.Request) -> web.Response:
    # Pipelines poll the gate every few seconds: the history keeps a verdict when it
    # changes, not one row per poll.
    engine = _engine(request)
    run = request.match_info["run"]
    result = await evaluate_run(engine, run, record=False)
    last = await latest_verdicts(engine, run, limit=1)
    if not last or last[0].verdict != result.verdict.value:
        await record_result(engine, result)
    always_200 = request.query.get("always_200", "").lower() in ("1", "true", "yes")
    status = 200 if always_200 else GATE_STATUS[result.verdict]
    return json_response(gate_body(result), status=status)


async def endpoints(request: web.Request) -> web.Response:
    engine = _engine(request)
    run = request.match_info["run"]
    top = _int_param(request, "top", 1, 100) or 5
    # The verdict's own numbers (one evaluation, not recorded): noise and waived
    # differences are not strict mismatches; errors are 5xx and transport errors.
    assessment = await assess_run(engine, run, record=False, endpoint_latency=True)
    aggregates = assessment.aggregates
    fields = await reports.top_fields(engine, run, per_endpoint=top)
    return json_response(
        {
            "run": run,
            "endpoints": aggregates.endpoint_stats(),
            "fields": fields,
            "noise_fields": [
                {"endpoint": endpoint, "field": field}
                for endpoint, field in sorted(aggregates.noise_fields)
            ],
        }
    )


async def differences(request: web.Request) -> web.Response:
    run = request.match_info["run"]
    page = await reports.list_differences(
        _engine(request),
        run,
        endpoint=_str_param(request, "endpoint"),
        field=_str_param(request, "field"),
        path=_str_param(request, "path"),
        judgement=_str_param(request, "judgement"),
        against=_str_param(request, "against"),
        limit=_int_param(request, "limit", 1, MAX_PAGE) or _DEFAULT_PAGE,
        after=_int_param(request, "after", 0, 2**63 - 1),
    )
    return json_response({"run": run, "items": page.items, "next": page.next})


async def exchange(request: web.Request) -> web.Response:
    trace_id = request.match_info["trace_id"]
    found = await reports.exchange_by_trace(
        _engine(request), trace_id, run=_str_param(request, "run")
    )
    if found is None:
        raise web.HTTPNotFound(text=f"no exchange with trace id {trace_id!r}")
    return json_response(exchange_json(found))


async def report_page(request: web.Request) -> web.Response:
    run = request.match_info["run"]
    report = await build_report(_engine(request), run)
    quoted = quote(run, safe="")
    live = report.run.last_received_at is not None and (
        datetime.now(UTC) - report.run.last_received_at < timedelta(minutes=2)
    )
    return web.Response(
        text=render_html(
            report,
            exchange_link=lambda trace: f"/runs/{quoted}/exchanges/{quote(trace, safe='')}",
            refresh=15 if live else None,
        ),
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


def add_api_routes(app: web.Application) -> None:
    """Add the API routes and the HTML report to ``app`` (which holds ``ENGINE_KEY``)."""
    app.router.add_get("/api/v1/runs", list_runs, name="runs")
    app.router.add_get("/api/v1/runs/{run}/verdict", verdict, name="verdict")
    app.router.add_get("/api/v1/runs/{run}/gate", gate, name="gate")
    app.router.add_post("/api/v1/runs/{run}/gate", gate, name="gate_webhook")
    app.router.add_get("/api/v1/runs/{run}/endpoints", endpoints, name="endpoints")
    app.router.add_get("/api/v1/runs/{run}/differences", differences, name="differences")
    app.router.add_get("/api/v1/exchanges/{trace_id}", exchange, name="exchange")
    app.router.add_get("/runs/{run}", report_page, name="report")
