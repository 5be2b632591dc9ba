"""The admin app's browsing pages and the field-tree API.

- ``GET /`` and ``GET /runs``: the runs with their latest verdicts, linking their reports;
- ``GET /runs/{run}/exchanges/{trace_id}``: one exchange, both answers side by side with the
  differences highlighted and the rule that judged each;
- ``GET /api/v1/runs/{run}/fields?endpoint=``: the field tree (``diff.report_model``), root
  cause first, with counts per kind of difference.

The report page itself (``GET /runs/{run}``) is ``graygate.admin.api.report_page``; its
examples link here (:func:`exchange_href`).
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from aiohttp import web

from diff.evaluate import assess_run
from diff.report_model import field_tree
from graygate.admin.api import ENGINE_KEY, json_response
from graygate.report_html import render_exchange_page, render_runs_page
from store import reports

__all__ = ["add_page_routes", "exchange_href", "report_href"]

logger = logging.getLogger(__name__)

_HTML_HEADERS = {"Cache-Control": "no-store"}


def report_href(run: str) -> str:
    return f"/runs/{quote(run, safe='')}"


def exchange_href(run: str, trace_id: str) -> str:
    return f"{report_href(run)}/exchanges/{quote(trace_id, safe='')}"


async def runs_page(request: web.Request) -> web.Response:
    runs = await reports.list_runs(request.app[ENGINE_KEY], limit=200)
    return web.Response(
        text=render_runs_page(runs, href=report_href),
        content_type="text/html",
        charset="utf-8",
        headers=_HTML_HEADERS,
    )


async def exchange_page(request: web.Request) -> web.Response:
    run = request.match_info["run"]
    trace_id = request.match_info["trace_id"]
    found = await reports.exchange_by_trace(request.app[ENGINE_KEY], trace_id, run=run)
    if found is None:
        raise web.HTTPNotFound(text=f"run {run!r} has no exchange with trace id {trace_id!r}")
    return web.Response(
        text=render_exchange_page(found, report_href=report_href(run)),
        content_type="text/html",
        charset="utf-8",
        headers=_HTML_HEADERS,
    )


async def fields(request: web.Request) -> web.Response:
    """The field tree of one endpoint (or of every endpoint without ``endpoint=``)."""
    engine = request.app[ENGINE_KEY]
    run = request.match_info["run"]
    endpoint = request.query.get("endpoint") or None
    assessment = await assess_run(engine, run, record=False)
    pairs = {e.endpoint: e.pairs for e in assessment.aggregates.endpoint_stats()}
    if endpoint is not None and endpoint not in pairs:
        raise web.HTTPNotFound(text=f"run {run!r} has no endpoint {endpoint!r}")
    trees = await field_tree(
        engine,
        run,
        endpoint=endpoint,
        noise_keys=assessment.aggregates.noise_keys,
        pairs=pairs,
    )
    return json_response({"run": run, "endpoints": [t.as_dict() for t in trees]})


def add_page_routes(app: web.Application) -> None:
    """Add the runs page, the exchange page and the field API to ``app``."""
    app.router.add_get("/", runs_page, name="home")
    app.router.add_get("/runs", runs_page, name="runs_page")
    app.router.add_get("/runs/{run}/exchanges/{trace_id}", exchange_page, name="exchange_page")
    app.router.add_get("/api/v1/runs/{run}/fields", fields, name="fields")
