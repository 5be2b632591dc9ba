"""Mirroring (request path step 5): the copy to the other side, in the background.

A mirror is spawned (``TaskSet``) before the serving upstream is even asked, and the client
never waits for it: the handler hands it the exchange's ``Completion`` and goes on. At most
``mirror.max_in_flight`` mirrors run at once; one more is not queued but skipped
(``saturated``). Each is bounded by ``mirror.timeout_ms`` (the whole exchange, one timer),
marked ``X-Gray-Shadow: 1``, and carries the request's trace id and gray label. The optional
``secondary`` upstream gets the same copy at the same time (the noise baseline). A target
that keeps breaking its answers is ejected for a while (``proxy.ejection``). The canary
ejected, the mirror is not sent (``ejected``; the verdict's errors check
counts such exchanges as the canary's failures); another ejected target is left out of it.
An endpoint whose answers keep outrunning the bound a mirror reads past the record
bound to time them (endless bodies) is, for a while, cut at the record bound instead
(``proxy.ejection.DiscardGate``): untimed, as it would have been.

When the mirror's answers (or errors) are in, the task tells the exchange's
``proxy.exchange.Completion``: the exchange is recorded once, when the serving side is done
too, with every answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final

from aiohttp import web
from opentelemetry.trace import Span

from graygate.tasks import TaskSet
from graygate.vocabulary import ErrorKind, Role, SkipReason
from proxy.capture import Capture
from proxy.exchange import Completion, Exchange
from proxy.forward import fetch
from proxy.headers import X_GRAY_SHADOW
from proxy.metrics import (
    MIRROR_IN_FLIGHT,
    count_ejection,
    count_mirror_outcome,
    observe_upstream,
)
from proxy.routing import SKIP_SATURATED
from proxy.tracing import Tracing
from proxy.upstream_pools import Upstream

__all__ = ["MIRROR_TASKS_KEY", "SKIP_EJECTED", "Mirror", "mirror_tasks_ctx"]

logger = logging.getLogger(__name__)

_SHADOW = (X_GRAY_SHADOW, "1")

# A mirror not sent because a target is ejected (proxy.ejection).
SKIP_EJECTED: Final = SkipReason.EJECTED


class Mirror:
    """Sends mirrors, bounded in number; each tells its exchange's ``Completion`` when it
    is done."""

    __slots__ = ("_limit", "_tasks", "_tracing", "in_flight", "max_in_flight")

    def __init__(
        self,
        tasks: TaskSet,
        *,
        max_in_flight: int,
        record_limit: int,
        tracing: Tracing,
    ) -> None:
        self._tasks = tasks
        self._limit = record_limit
        self._tracing = tracing
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def try_start(
        self,
        done: Completion,
        targets: tuple[Upstream, ...],
        body: bytes | None,
        span: Span | None = None,
    ) -> SkipReason | None:
        """Spawn the mirror of ``done.exchange`` to ``targets`` (its spans children of
        ``span``, the request's server span when tracing); else why not: ``ejected`` (the
        canary is, or every target), ``saturated``. Another ejected target (a secondary; the
        primary when the canary serves or in shadow mode) is left out of this mirror."""
        for up in targets:
            if up.ejection.ejected():
                if up.role == Role.CANARY:
                    return SKIP_EJECTED  # nothing to judge without it
                targets = tuple(t for t in targets if t is not up)
        if not targets:
            return SKIP_EJECTED
        if self.in_flight >= self.max_in_flight:
            return SKIP_SATURATED
        self.in_flight += 1
        MIRROR_IN_FLIGHT.inc()
        done.mirror_started()
        exchange = done.exchange
        self._tasks.spawn(self._run(done, targets, body, span), name=exchange.tags.trace_id)
        return None

    async def _run(
        self,
        done: Completion,
        targets: tuple[Upstream, ...],
        body: bytes | None,
        span: Span | None,
    ) -> None:
        exchange = done.exchange
        try:
            headers = [*exchange.headers, _SHADOW]
            if len(targets) == 1:
                await self._one(exchange, targets[0], headers, body, span)
            else:
                await asyncio.gather(
                    *(self._one(exchange, up, headers, body, span) for up in targets)
                )
        finally:
            self.in_flight -= 1
            MIRROR_IN_FLIGHT.dec()
        done.mirrored()  # not when cancelled: a record without the mirror's side is no record

    async def _one(
        self,
        exchange: Exchange,
        upstream: Upstream,
        headers: list[tuple[str, str]],
        body: bytes | None,
        parent: Span | None,
    ) -> None:
        span = None
        if self._tracing.enabled and parent is not None:
            span = self._tracing.child_span(parent, "mirror", upstream.role)
        target = upstream.target(exchange.path, exchange.query)
        endpoint = exchange.route.endpoint
        gate = upstream.discard_gate
        read_on = gate.reads_on(endpoint)
        cap = await fetch(
            upstream,
            exchange.method,
            target,
            headers,
            body,
            Capture(self._limit),
            exchange.host,
            read_on=read_on,
        )
        exchange.captures[upstream.role] = cap
        if read_on and cap.error is None:
            # Read on past the record bound: did the answer end within the discard bound?
            gate.ended(endpoint, within=not cap.truncated or cap.latency is not None)
        outcome = cap.error or "ok"
        count_mirror_outcome(outcome)
        if upstream.ejection.outcome(cap.error):
            count_ejection(upstream.role)
        observe_upstream(
            upstream.role,
            "mirror",
            exchange.route.endpoint,
            cap.error or cap.status or ErrorKind.ERROR,
            cap.latency if cap.error is None else None,
        )
        if span is not None:
            Tracing.finish(span, cap.status, cap.error)


MIRROR_TASKS_KEY: web.AppKey[TaskSet] = web.AppKey("graygate.proxy.mirror_tasks", TaskSet)


def mirror_tasks_ctx(drain_timeout: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context: the mirrors' ``TaskSet`` under ``MIRROR_TASKS_KEY``, drained on
    cleanup (waiting up to ``drain_timeout`` seconds, then cancelling)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tasks = TaskSet("mirror")
        app[MIRROR_TASKS_KEY] = tasks
        yield
        await tasks.drain(drain_timeout)

    return ctx
