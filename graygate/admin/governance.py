"""The admin API's governance routes: waivers (and, as they land, run lifecycle).

``add_governance_routes(app)`` adds them to the admin application (which holds the engine
under ``ENGINE_KEY``; its one error middleware renders what handlers raise):

- ``GET /api/v1/runs/{run}/waivers?all=true``: ``{"run", "waivers": [Waiver + "trail"]}``,
  the run's own waivers and the scoped ones that match it (active only unless ``all``);
- ``POST /api/v1/runs/{run}/waivers``: body ``{"endpoint", "field", "reason", "kind"?,
  "expires"? ("14d"), "scope"?}``; 201 with the waiver; ``by`` is the admin token's name;
- ``POST /api/v1/waivers/{id}/revoke``: body ``{"reason"}``; 200 with the waiver; 404
  unknown, 409 already revoked;
- ``DELETE /api/v1/runs/{run}``: the run and everything recorded for it; answers when the
  run is gone, ``{"run", "deleted": true, "exchanges": n, "exchanges_exact",
  "reclaiming_bytes"}``; its disk space is reclaimed just after by a background task
  (``store.trash``), drained when the application stops; 404 unknown, 503 when its tables
  stayed locked (nothing deleted: try again).

Every route but the GETs needs a ``write`` token (``WRITE_ROUTES``).

Who is calling: the auth middleware (``graygate.admin.app``) stores the presented token's
name under ``IDENTITY_KEY`` (``admin`` for the one ``admin.token_env`` token); without any
token configured the caller is ``anonymous``. Every change is logged with that name.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from graygate.admin.api import ENGINE_KEY, json_response
from graygate.errors import StoreBusy, UnknownWaiver, WaiverConflict
from graygate.tasks import TaskSet
from graygate.vocabulary import WaiverSource

__all__ = [
    "ANONYMOUS",
    "IDENTITY_KEY",
    "MAX_BODY_BYTES",
    "REAPERS_KEY",
    "WRITE_ROUTES",
    "add_governance_routes",
    "caller",
]

logger = logging.getLogger(__name__)

# The background tasks that drop deleted runs' trashed partitions.
REAPERS_KEY = web.AppKey("graygate_trash_reapers", TaskSet)
# How long the application's stop waits for a reaper still dropping (the rest is left to
# the next reaper or the diff workers' sweep).
REAPER_GRACE_S = 10.0

# Where the auth middleware keeps the caller's token name (a request-scoped value).
IDENTITY_KEY = web.RequestKey("graygate_identity", str)
ANONYMOUS = "anonymous"
# A waiver's JSON body: its texts are bounded at 2,000 characters each.
MAX_BODY_BYTES = 16 * 1024

_KINDS = frozenset(
    {"value", "type", "missing", "extra", "order", "length", "status", "header", "body"}
)

# Route names that change state: a read token gets 403 on them.
WRITE_ROUTES = frozenset({"waiver_add", "waiver_revoke", "run_delete"})


def caller(request: web.Request) -> str:
    """The name of the token that opened this request (``anonymous`` without one)."""
    return request.get(IDENTITY_KEY) or ANONYMOUS


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_BODY_BYTES, actual_size=len(raw), text=f"body above {MAX_BODY_BYTES} bytes"
        )
    try:
        data = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text="the body is not JSON") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return data


def _text(data: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise web.HTTPBadRequest(text=f"{key} is required")
        return None
    if not isinstance(value, str):
        raise web.HTTPBadRequest(text=f"{key} must be a string, got {type(value).__name__}")
    return value


async def list_run_waivers(request: web.Request) -> web.Response:
    from store.waivers import list_waivers, waiver_trail

    engine = request.app[ENGINE_KEY]
    run = request.match_info["run"]
    show_all = request.query.get("all", "").lower() in ("1", "true", "yes")
    rows = await list_waivers(engine, run, include_inactive=show_all)
    trail = await waiver_trail(engine, [w.id for w in rows])
    by_id: dict[int, list[dict[str, Any]]] = {}
    for e in trail:
        by_id.setdefault(e.waiver_id, []).append(e.as_dict())
    return json_response(
        {"run": run, "waivers": [{**w.as_dict(), "trail": by_id.get(w.id, [])} for w in rows]}
    )


async def add_run_waiver(request: web.Request) -> web.Response:
    from config.schema import WaiverSpec
    from diff.paths import compile_path
    from graygate.governance_cli import parse_duration
    from store.waivers import add_waiver

    data = await _body(request)
    endpoint = _text(data, "endpoint", required=True) or ""
    field = _text(data, "field", required=True) or ""
    reason = _text(data, "reason", required=True) or ""
    kind = _text(data, "kind", required=False)
    scope = _text(data, "scope", required=False)
    expires = _text(data, "expires", required=False)
    if kind is not None and kind not in _KINDS:
        raise web.HTTPBadRequest(text=f"kind {kind!r}: expected one of {', '.join(sorted(_KINDS))}")
    by = caller(request)
    try:
        WaiverSpec(endpoint=endpoint, field=field, reason=reason, owner=by, scope=scope)
        if field.startswith("$"):
            compile_path(field)
        expires_s = None if expires is None else parse_duration(expires, name="expires")
        w = await add_waiver(
            request.app[ENGINE_KEY],
            request.match_info["run"],
            endpoint=endpoint,
            field=field,
            kind=kind,
            reason=reason,
            by=by,
            source=WaiverSource.API,
            scope=scope,
            expires_in_s=expires_s,
        )
    except ValueError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise web.HTTPBadRequest(text=" ".join(lines[-2:]) if lines else "bad waiver") from None
    return json_response(w.as_dict(), status=201)


async def revoke(request: web.Request) -> web.Response:
    from store.waivers import revoke_waiver

    try:
        waiver_id = int(request.match_info["id"])
        if not 1 <= waiver_id < 2**63:
            raise ValueError(waiver_id)
    except ValueError:
        raise web.HTTPNotFound(text=f"unknown waiver {request.match_info['id'][:40]!r}") from None
    data = await _body(request)
    reason = _text(data, "reason", required=True) or ""
    try:
        w = await revoke_waiver(
            request.app[ENGINE_KEY], waiver_id, reason=reason, by=caller(request)
        )
    except UnknownWaiver as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    except WaiverConflict as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return json_response(w.as_dict())


async def delete_run_route(request: web.Request) -> web.Response:
    from store.lifecycle import delete_run
    from store.trash import reap_trash

    run = request.match_info["run"]
    engine = request.app[ENGINE_KEY]
    try:
        d = await delete_run(engine, run)
    except StoreBusy as exc:
        raise web.HTTPServiceUnavailable(text=str(exc)) from None
    logger.info("run %s deleted through the admin API by %s", run, caller(request))
    if d.trash_bytes:
        request.app[REAPERS_KEY].spawn(reap_trash(engine, run_ids=[d.run_id]), name=run)
    return json_response(d.as_dict())


async def _drain_reapers(app: web.Application) -> None:
    await app[REAPERS_KEY].drain(REAPER_GRACE_S)


def add_governance_routes(app: web.Application) -> None:
    """Add the governance routes to ``app`` (which holds ``ENGINE_KEY``)."""
    app.router.add_get("/api/v1/runs/{run}/waivers", list_run_waivers, name="waivers")
    app.router.add_post("/api/v1/runs/{run}/waivers", add_run_waiver, name="waiver_add")
    app.router.add_post("/api/v1/waivers/{id}/revoke", revoke, name="waiver_revoke")
    app.router.add_delete("/api/v1/runs/{run}", delete_run_route, name="run_delete")
    app[REAPERS_KEY] = TaskSet("trash-reaper")
    app.on_cleanup.append(_drain_reapers)
