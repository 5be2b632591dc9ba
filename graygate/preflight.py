"""Preflight: what is checked before the proxy takes traffic.

``graygate serve`` calls :func:`preflight` once the run exists; it prints the findings and
they are stored in ``preflight_findings`` (the report shows the latest ones). Checks:

- ``primary.health``, ``canary.health`` (and ``secondary.health``): the upstream answers
  ``preflight.health_path`` with a 2xx;
- ``canary.pprof_exposed``: the canary does not serve ``/debug/pprof/`` on its serving
  port. Profiles expose memory contents and let anyone load the CPU; pprof belongs on a
  separate debug port that only operators reach. ``ok`` is False when it does, and when
  it could not be checked;
- ``canary.runtime.expvar`` / ``canary.runtime.prometheus`` (and ``primary.runtime.*``):
  each configured runtime source answers with figures graygate can read.

A finding never raises: every failure is a finding with ``ok=False`` and a detail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import UTC, datetime

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import GraygateConfig
from diff.runtime_checks import RuntimeParseError, RuntimeSample, parse_expvar, parse_prometheus
from graygate.errors import one_line
from graygate.http_get import NoAnswer, http_get
from graygate.vocabulary import Role
from store.runtime_samples import Finding, insert_findings

__all__ = ["PPROF_PATH", "Finding", "preflight"]

logger = logging.getLogger(__name__)

PPROF_PATH = "/debug/pprof/"
_PEEK_BYTES = 64 * 1024
_RUNTIME_BYTES = 8 << 20
_PPROF_MARKERS = ("/debug/pprof", "types of profiles", "goroutine?debug")


async def _health(
    session: aiohttp.ClientSession, role: str, base: str, path: str, tmo: aiohttp.ClientTimeout
) -> Finding:
    url = base + path
    check = f"{role}.health"
    try:
        got = await http_get(session, url, tmo, limit=_PEEK_BYTES)
    except NoAnswer as exc:
        return Finding(check, False, f"GET {url}: {exc}")
    ok = 200 <= got.status < 300
    return Finding(check, ok, f"GET {url} -> {got.status} in {got.elapsed_ms:.0f} ms")


async def _pprof(session: aiohttp.ClientSession, base: str, tmo: aiohttp.ClientTimeout) -> Finding:
    url = base + PPROF_PATH
    check = "canary.pprof_exposed"
    try:
        got = await http_get(session, url, tmo, limit=_PEEK_BYTES)
    except NoAnswer as exc:
        return Finding(check, False, f"not checked: GET {url}: {exc}")
    status, body = got.status, got.body
    text = body.decode("utf-8", errors="replace").lower()
    if 200 <= status < 300 and any(m in text for m in _PPROF_MARKERS):
        return Finding(
            check,
            False,
            f"the canary serves {PPROF_PATH} on its serving port ({url} -> {status}): "
            "profiles leak memory contents and cost CPU on demand; serve pprof on a "
            "separate debug port",
        )
    if 200 <= status < 300:
        return Finding(check, True, f"GET {url} -> {status}, but not a pprof index")
    return Finding(check, True, f"GET {url} -> {status}: {PPROF_PATH} not served")


async def _runtime(
    session: aiohttp.ClientSession,
    role: str,
    kind: str,
    url: str,
    tmo: aiohttp.ClientTimeout,
) -> Finding:
    check = f"{role}.runtime.{kind}"
    try:
        got = await http_get(session, url, tmo, limit=_RUNTIME_BYTES)
    except NoAnswer as exc:
        return Finding(check, False, f"GET {url}: {exc}")
    status, body = got.status, got.body
    if status != 200:
        return Finding(check, False, f"GET {url} -> {status}")
    now = datetime.now(UTC)
    try:
        sample: RuntimeSample = (
            parse_expvar(body, taken_at=now)
            if kind == "expvar"
            else parse_prometheus(body.decode("utf-8", errors="replace"), taken_at=now)
        )
    except RuntimeParseError as exc:
        return Finding(check, False, f"GET {url}: {exc}")
    figures = [
        f"{name} {value}"
        for name, value in (
            ("goroutines", sample.goroutines),
            ("NumGC", sample.num_gc),
            ("HeapInuse", sample.heap_inuse),
        )
        if value is not None
    ]
    if kind == "expvar" and sample.pause_ring is None:
        figures.append("no memstats.PauseNs: GC pauses cannot be judged")
    return Finding(check, True, f"GET {url}: " + (", ".join(figures) or "readable"))


async def preflight(
    cfg: GraygateConfig,
    session: aiohttp.ClientSession | None,
    engine: AsyncEngine | None,
    run_id: int,
) -> list[Finding]:
    """Run the preflight checks, store the findings (when ``engine`` is given) and return
    them. ``session`` None: a session is opened for the checks and closed after.

    Returns ``[]`` when ``preflight.enabled`` is false. A database that will not take the
    findings is logged, not raised: the findings are still returned.
    """
    if not cfg.preflight.enabled:
        return []
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await preflight(cfg, own, engine, run_id)

    total = cfg.preflight.timeout_ms / 1000
    tmo = aiohttp.ClientTimeout(total=total, connect=total)
    ups = cfg.upstreams
    path = cfg.preflight.health_path
    if not path.startswith("/"):
        path = "/" + path
    checks: list[Awaitable[Finding]] = [
        _health(session, Role.PRIMARY, ups.primary, path, tmo),
        _health(session, Role.CANARY, ups.canary, path, tmo),
    ]
    if ups.secondary is not None:
        checks.append(_health(session, Role.SECONDARY, ups.secondary, path, tmo))
    checks.append(_pprof(session, ups.canary, tmo))
    for role, src in ((Role.CANARY, cfg.runtime.canary), (Role.PRIMARY, cfg.runtime.primary)):
        if src is None:
            continue
        if src.expvar is not None:
            checks.append(_runtime(session, role, "expvar", src.expvar, tmo))
        if src.prometheus is not None:
            checks.append(_runtime(session, role, "prometheus", src.prometheus, tmo))
    findings = list(await asyncio.gather(*checks))

    if engine is not None:
        try:
            await insert_findings(engine, run_id, findings)
        except Exception as exc:  # the findings still reach the caller, who prints them
            logger.warning("could not store the preflight findings: %s", one_line(exc))
    return findings
