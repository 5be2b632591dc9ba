"""The admin port's application: probes, Prometheus metrics, the JSON API, the HTML report.

It listens on its own port (``admin.listen``), never on the proxied one.

- ``GET /healthz``: the process is alive and serving: 200 (a liveness probe must not
  fail because PostgreSQL does: restarting graygate would not bring the database back).
  When the admin port speaks for a proxy in another process (``PULSE_KEY``, see
  ``graygate.heartbeat``), 503 once that proxy's heartbeats stop.
- ``GET /readyz``: 200 when the database answers AND its schema is at this graygate's
  migration head (AND, with ``PULSE_KEY``, the proxy is listening and beating); else 503
  with ``{"ready": false, "error": ..., "status": 503, ...}``.
- ``GET /metrics``: Prometheus exposition of the default registry, or, when
  ``PROMETHEUS_MULTIPROC_DIR`` is set (several proxy processes), of every process's metrics
  through ``MultiProcessCollector``. OpenMetrics when the scraper asks for it.
- The API and the report (``graygate.admin.api``).

Authentication: when ``admin.token`` is set (from the variable ``admin.token_env`` names)
or any named token of ``admin.tokens`` is, every route but ``/healthz``, ``/readyz`` and
``/metrics`` needs one, compared in constant time with every configured token. The one
``token_env`` token is the ``write`` token named ``admin``; a named token has its role:
``read`` opens every GET (verdicts, reports) and the gate's POST, ``write`` also the routes
that change state (waivers, ...); a read token on those gets 403. Every refused call (401,
403) is logged with its method, path and peer (never the token). The token's name is
stored under ``IDENTITY_KEY`` for the handlers (the audit trail's ``by``).

The three stay open because the kubelet's probes send no credentials (a probe's
``httpHeaders`` live in the pod spec, not in a Secret) and because Prometheus scrape configs
commonly carry none; they reveal nothing of the traffic. The token is accepted as:

- ``Authorization: Bearer <token>`` (the API, Argo Rollouts ``web`` metric headers);
- ``Authorization: Basic`` with the token as the password, any user name: a browser asks
  for it, so people can open the HTML report;
- on ``POST .../gate`` only, ``{"metadata": {"token": "<token>"}}`` in the JSON body: Flagger
  webhooks send their ``metadata`` and cannot set headers.

Open to other hosts: an admin API listening on a non-loopback address (``0.0.0.0``, a
public address) without a token is refused at start (ConfigError naming ``admin.listen``)
unless ``admin.allow_open: true``.

Errors: ONE middleware renders every HTTP error, ``UnknownRun`` (404),
``StoreUnavailable`` (503) and anything unexpected (500, logged) as
``{"error": "<one line>", "status": <code>}``. A path or query holding NUL or bytes that are
not UTF-8 is a 400 before any handler runs (PostgreSQL text cannot hold NUL).

The engine belongs to the caller (the composition root shares it between roles and disposes
of it); the application only holds it, under ``ENGINE_KEY``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import os
import platform

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict
from prometheus_client import REGISTRY, CollectorRegistry, Gauge
from prometheus_client.exposition import choose_encoder
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import AdminConfig, GraygateConfig
from diff import verdict_metrics as _verdict_metrics  # noqa: F401  (its metrics, no _created)
from graygate import __version__
from graygate.admin.api import ENGINE_KEY, add_api_routes, json_response
from graygate.admin.exposure import check_admin_exposure
from graygate.admin.governance import IDENTITY_KEY, add_governance_routes
from graygate.admin.pages import add_page_routes
from graygate.errors import StoreUnavailable, UnknownRun, one_line
from graygate.heartbeat import Pulse
from graygate.vocabulary import TokenRole
from store.engine import ping, schema_revision
from store.migrate import head_revision

__all__ = [
    "ADMIN_TOKEN_NAME",
    "ENGINE_KEY",
    "HEAD_REVISION_KEY",
    "METRICS_REGISTRY_KEY",
    "OPEN_PATHS",
    "PULSE_KEY",
    "READY_TIMEOUT_S",
    "READ_POSTS",
    "check_admin_exposure",
    "error_middleware",
    "make_admin_app",
    "metrics_registry",
]

logger = logging.getLogger(__name__)

# The name the one admin.token_env token goes by (the audit trail's "by").
ADMIN_TOKEN_NAME = "admin"
# POST routes that only read (a Flagger webhook asks the gate): a read token may call them.
READ_POSTS = frozenset({"gate_webhook"})

# Paths that answer without the admin token (see the module docstring).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Kubernetes' default probe timeout is 1 s; answer well before a wedged database would.
READY_TIMEOUT_S = 3.0

HEAD_REVISION_KEY = web.AppKey("graygate_head_revision", str)
METRICS_REGISTRY_KEY = web.AppKey("graygate_metrics_registry", CollectorRegistry)
# The heartbeat of the proxy this admin port speaks for, when it runs in another process.
PULSE_KEY = web.AppKey("graygate_proxy_pulse", Pulse)

_CHALLENGES = (
    ("WWW-Authenticate", 'Bearer realm="graygate"'),
    ("WWW-Authenticate", 'Basic realm="graygate", charset="UTF-8"'),
)


# --------------------------------------------------------------------------- errors


def _error(status: int, message: str, headers: CIMultiDict[str] | None = None) -> web.Response:
    response = json_response({"error": message, "status": status}, status=status)
    if headers:
        for name, value in headers.items():
            if name.lower() not in ("content-type", "content-length"):
                response.headers.add(name, value)
    return response


def _http_message(exc: web.HTTPException) -> str:
    text = exc.text or ""
    # aiohttp's default body is "404: Not Found"; say just "Not Found".
    if not text or text == f"{exc.status}: {exc.reason}":
        return exc.reason
    return text.strip()


def _unusable_text(value: str) -> bool:
    """NUL (which PostgreSQL text cannot hold) or a byte that is not UTF-8."""
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error the admin app meets as ``{"error": ..., "status": ...}``."""
    if _unusable_text(request.path) or any(
        _unusable_text(k) or _unusable_text(v) for k, v in request.query.items()
    ):
        return _error(400, "the path or query holds NUL or a byte that is not UTF-8")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, _http_message(exc), CIMultiDict(exc.headers))
    except UnknownRun as exc:
        return _error(404, str(exc))
    except StoreUnavailable as exc:
        return _error(503, str(exc))
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("admin request %s %s failed", request.method, request.path)
        return _error(500, "internal error; see the graygate log")


# --------------------------------------------------------------------------- auth


def _basic_password(credentials: str) -> bytes | None:
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    _, sep, password = decoded.partition(b":")
    return password if sep else None


async def _webhook_token(request: web.Request) -> bytes | None:
    """Flagger's webhook payload: ``{"name", "namespace", "phase", "metadata": {...}}``."""
    if request.method != "POST" or not request.path.endswith("/gate") or not request.can_read_body:
        return None
    try:
        payload = orjson.loads(await request.read())
    except (orjson.JSONDecodeError, ValueError):
        return None
    metadata = payload.get("metadata") if isinstance(payload, dict) else None
    token = metadata.get("token") if isinstance(metadata, dict) else None
    return token.encode() if isinstance(token, str) else None


async def _presented(request: web.Request) -> bytes | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip().encode()
    if scheme.lower() == "basic":
        return _basic_password(credentials)
    return await _webhook_token(request)


def _credentials(admin: AdminConfig) -> list[tuple[str, TokenRole, bytes]]:
    """(name, role, token) of every admin token set: the one ``token_env`` token is the
    write token named ``admin``; the named ones have their own role."""
    out: list[tuple[str, TokenRole, bytes]] = []
    if admin.token:
        out.append((ADMIN_TOKEN_NAME, TokenRole.WRITE, admin.token.encode()))
    out += [(t.name, TokenRole(t.role), t.token.encode()) for t in admin.tokens if t.token]
    return out


def _identify(
    presented: bytes, credentials: list[tuple[str, TokenRole, bytes]]
) -> tuple[str, TokenRole] | None:
    """The token ``presented`` is, compared in constant time with every configured one
    (no early exit: the time taken does not say which one matched, or how far)."""
    found: tuple[str, TokenRole] | None = None
    for name, role, expected in credentials:
        if hmac.compare_digest(presented, expected) and found is None:
            found = (name, role)
    return found


def _is_write(request: web.Request) -> bool:
    """A route that changes state: any method but GET/HEAD/OPTIONS, except the gate's
    POST (a Flagger webhook reads the verdict)."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return False
    route = request.match_info.route
    return route.name not in READ_POSTS


def _auth_middleware(credentials: list[tuple[str, TokenRole, bytes]]) -> Middleware:
    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        presented = await _presented(request)
        who = None if presented is None else _identify(presented, credentials)
        if who is None:
            logger.warning(
                "admin API refused %s %s from %s: %s (401)",
                request.method,
                request.path,
                request.remote,
                "no token" if presented is None else "wrong token",
            )
            raise web.HTTPUnauthorized(
                headers=CIMultiDict(_CHALLENGES),
                text="the admin token is required: Authorization: Bearer <token>"
                if presented is None
                else "the admin token is wrong",
            )
        name, role = who
        if role is not TokenRole.WRITE and _is_write(request):
            logger.warning(
                "admin API refused %s %s from %s: token %r has role %s, write needed (403)",
                request.method,
                request.path,
                request.remote,
                name,
                role.value,
            )
            raise web.HTTPForbidden(
                text=f"token {name!r} has role {role.value}: this needs a write token"
            )
        request[IDENTITY_KEY] = name
        return await handler(request)

    return auth_middleware


# --------------------------------------------------------------------------- views


async def healthz(request: web.Request) -> web.Response:
    pulse = request.app.get(PULSE_KEY)
    why = pulse.not_alive() if pulse is not None else None
    if why is not None:
        return json_response({"status": "failing", "error": why}, status=503)
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    head = request.app[HEAD_REVISION_KEY]
    pulse = request.app.get(PULSE_KEY)
    why = pulse.not_ready() if pulse is not None else None
    if why is not None:
        return _not_ready(why, None, head)
    revision: str | None = None
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await ping(engine)
            revision = await schema_revision(engine)
    except StoreUnavailable as exc:
        return _not_ready(str(exc), revision, head)
    except TimeoutError:
        return _not_ready(
            f"the database did not answer within {READY_TIMEOUT_S:g} s", revision, head
        )
    except (SQLAlchemyError, OSError) as exc:
        return _not_ready(f"the database cannot be read: {one_line(exc)}", revision, head)
    if revision != head:
        return _not_ready(
            f"the database schema is at revision {revision or 'none (empty database)'}, "
            f"this graygate needs {head}: run `graygate db upgrade`",
            revision,
            head,
        )
    return json_response({"ready": True, "revision": revision, "head": head})


def _not_ready(why: str, revision: str | None, head: str) -> web.Response:
    return json_response(
        {"ready": False, "error": why, "status": 503, "revision": revision, "head": head},
        status=503,
    )


BUILD_INFO = Gauge(
    "graygate_build_info",
    "Always 1; the labels say which graygate and Python serve this port.",
    ("version", "python"),
    multiprocess_mode="max",
)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)


def metrics_registry() -> CollectorRegistry:
    """The default registry, or with ``PROMETHEUS_MULTIPROC_DIR`` set, a registry that
    collects every process's metrics from that directory."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS_REGISTRY_KEY]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    # Collecting reads /proc and, in multiprocess mode, every process's files: not on the loop.
    body: bytes = await asyncio.to_thread(encoder, registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


# --------------------------------------------------------------------------- factory


def make_admin_app(cfg: GraygateConfig, engine: AsyncEngine) -> web.Application:
    """The admin port's application over ``engine`` (owned by the caller)."""
    check_admin_exposure(cfg)
    middlewares: list[Middleware] = [error_middleware]
    credentials = _credentials(cfg.admin)
    if credentials:
        middlewares.append(_auth_middleware(credentials))
    else:
        logger.info("admin API without a token (set %s to require one)", cfg.admin.token_env)
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    app[ENGINE_KEY] = engine
    app[HEAD_REVISION_KEY] = head_revision()
    app[METRICS_REGISTRY_KEY] = metrics_registry()
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/metrics", metrics, name="metrics")
    add_api_routes(app)
    add_page_routes(app)
    add_governance_routes(app)
    return app
