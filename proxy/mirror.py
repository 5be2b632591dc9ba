"""Mirroring (request path step 5): the copy to the other side, in the background.

A mirror is spawned (``TaskSet``) before the serving upstream is even asked, and the client
never waits for it: the handler hands it an :class:`Exchange` and goes on. At most
``mirror.max_in_flight`` mirrors run at once; one more is not queued but skipped
(``saturated``). Each is bounded by ``mirror.timeout_ms`` (the whole exchange, one timer),
marked ``X-Gray-Shadow: 1``, and carries the request's trace id and gray label. The optional
``secondary`` upstream gets the same copy at the same time (the noise baseline).

When the mirror's answers (or errors) are in, the task waits for the serving side to be done
(``Exchange.served``), then calls ``finish(exchange)``: the exchange is recorded once, with
both answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from opentelemetry.trace import Span

from graygate.tasks import TaskSet
from graygate.vocabulary import ErrorKind
from proxy.capture import Capture
from proxy.forward import fetch
from proxy.headers import X_GRAY_SHADOW
from proxy.metrics import MIRROR_IN_FLIGHT, count_mirror_outcome, observe_upstream
from proxy.tagging import Tags
from proxy.tracing import Tracing
from proxy.upstream_pools import Upstream

__all__ = ["MIRROR_TASKS_KEY", "Exchange", "Mirror", "mirror_tasks_ctx"]

logger = logging.getLogger(__name__)

_SHADOW = (X_GRAY_SHADOW, "1")


class Exchange:
    """One request in flight: what the record will be built from."""

    __slots__ = (
        "captures",
        "headers",
        "host",
        "label",
        "method",
        "mirror_skipped",
        "path",
        "query",
        "received_at",
        "request",
        "request_encoding",
        "request_type",
        "served",
        "served_by",
        "span",
        "tags",
    )

    def __init__(
        self,
        *,
        received_at: float,
        tags: Tags,
        label: str,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        served_by: str,
        host: str | None = None,
    ) -> None:
        self.received_at = received_at  # time.time()
        self.tags = tags
        self.label = label
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # as sent upstream (before the shadow mark)
        self.host = host  # the client's Host header
        self.served_by = served_by
        self.request: Capture | None = None  # the request body: bounded copy, still encoded
        self.request_encoding: str | None = None  # the request's Content-Encoding
        self.request_type: str | None = None  # the request's Content-Type
        self.mirror_skipped: str | None = None
        self.captures: dict[str, Capture] = {}  # role -> what it answered
        self.served: asyncio.Future[None] | None = None  # done when the client was answered
        self.span: Span | None = None  # the request's server span, when tracing


class Mirror:
    """Sends mirrors, bounded in number; completes exchanges through ``finish``."""

    __slots__ = ("_finish", "_limit", "_tasks", "_tracing", "in_flight", "max_in_flight")

    def __init__(
        self,
        tasks: TaskSet,
        *,
        max_in_flight: int,
        record_limit: int,
        tracing: Tracing,
        finish: Callable[[Exchange], None],
    ) -> None:
        self._tasks = tasks
        self._limit = record_limit
        self._tracing = tracing
        self._finish = finish
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def try_start(
        self,
        exchange: Exchange,
        targets: tuple[Upstream, ...],
        body: bytes | None,
    ) -> bool:
        """Spawn the mirror of ``exchange`` to ``targets``; False when saturated."""
        if self.in_flight >= self.max_in_flight:
            return False
        self.in_flight += 1
        MIRROR_IN_FLIGHT.inc()
        exchange.served = asyncio.get_running_loop().create_future()
        self._tasks.spawn(self._run(exchange, targets, body), name=exchange.tags.trace_id)
        return True

    async def _run(
        self, exchange: Exchange, targets: tuple[Upstream, ...], body: bytes | None
    ) -> None:
        try:
            headers = [*exchange.headers, _SHADOW]
            if len(targets) == 1:
                await self._one(exchange, targets[0], headers, body)
            else:
                await asyncio.gather(*(self._one(exchange, up, headers, body) for up in targets))
        finally:
            self.in_flight -= 1
            MIRROR_IN_FLIGHT.dec()
        served = exchange.served
        if served is not None:
            await served
        self._finish(exchange)

    async def _one(
        self,
        exchange: Exchange,
        upstream: Upstream,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> None:
        span = None
        if self._tracing.enabled and exchange.span is not None:
            span = self._tracing.child_span(exchange.span, "mirror", upstream.role)
        target = upstream.target(exchange.path, exchange.query)
        cap = await fetch(
            upstream, exchange.method, target, headers, body, Capture(self._limit), exchange.host
        )
        exchange.captures[upstream.role] = cap
        outcome = cap.error or "ok"
        count_mirror_outcome(outcome)
        observe_upstream(
            upstream.role,
            "mirror",
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
