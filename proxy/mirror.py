"""Mirroring (request path step 5): the copy to the other side, in the background.

A mirror is started before the serving upstream is asked (its request goes out in the
loop's next round, after the serving side's), and the client never waits for it: the
handler hands it the exchange's ``Completion`` and goes on. No task runs it when an idle
connection is at hand: the request is written at once and the answer is taken in the
connection's callbacks (``proxy.upstream.Pool.send_nowait``); otherwise (a connection to
open or to wait for, a request a reused connection lost to send again) a task does it
(``proxy.forward.fetch``), spawned in ``MirrorTasks``, which the app drains on cleanup. At most
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

When the mirror's answers (or errors) are in, it tells the exchange's
``proxy.exchange.Completion``: the exchange is recorded once, when the serving side is done
too, with every answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

from aiohttp import web
from opentelemetry.trace import Span

from graygate.errors import UpstreamError
from graygate.tasks import TaskSet
from graygate.vocabulary import ErrorKind, Role, SkipReason
from proxy.capture import Capture
from proxy.error_mapping import error_kind
from proxy.exchange import Completion
from proxy.forward import fetch, outruns
from proxy.headers import X_GRAY_SHADOW
from proxy.metrics import (
    MIRROR_IN_FLIGHT,
    count_ejection,
    count_mirror_outcome,
    observe_upstream,
)
from proxy.routing import SKIP_SATURATED
from proxy.tracing import Tracing
from proxy.upstream import AnswerSink, retryable
from proxy.upstream_pools import Upstream

__all__ = ["MIRROR_TASKS_KEY", "SKIP_EJECTED", "Mirror", "MirrorTasks", "mirror_tasks_ctx"]

logger = logging.getLogger(__name__)

_SHADOW = (X_GRAY_SHADOW, "1")
_perf = time.perf_counter


class MirrorTasks(TaskSet):
    """The mirrors in flight: those read in their connections' callbacks (most: sent on an
    idle connection) and the tasks of the others (a connection to open or wait for, a
    request to send again). :meth:`drain` waits for both, then gives up on what is left:
    those exchanges are not recorded."""

    def __init__(self) -> None:
        super().__init__("mirror")
        self.calls: set[_Mirrored] = set()
        self._emptied: asyncio.Future[None] | None = None

    def ended(self, call: _Mirrored) -> None:
        calls = self.calls
        calls.discard(call)
        if not calls and self._emptied is not None and not self._emptied.done():
            self._emptied.set_result(None)

    async def drain(self, grace: float | None = 10.0) -> None:
        loop = asyncio.get_running_loop()
        until = None if grace is None else loop.time() + grace
        if self.calls:
            self._emptied = loop.create_future()
            await asyncio.wait([self._emptied], timeout=grace)
            self._emptied = None
            for call in list(self.calls):
                call.abort()
        left = None if until is None else max(0.0, until - loop.time())
        await super().drain(left)


# A mirror not sent because a target is ejected (proxy.ejection).
SKIP_EJECTED: Final = SkipReason.EJECTED


class Mirror:
    """Sends mirrors, bounded in number; each tells its exchange's ``Completion`` when it
    is done."""

    __slots__ = ("_limit", "_loop", "_tasks", "_tracing", "in_flight", "max_in_flight")

    def __init__(
        self,
        tasks: MirrorTasks,
        *,
        max_in_flight: int,
        record_limit: int,
        tracing: Tracing,
    ) -> None:
        self._tasks = tasks
        self._limit = record_limit
        self._tracing = tracing
        self._loop = asyncio.get_running_loop()
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def try_start(
        self,
        done: Completion,
        targets: tuple[Upstream, ...],
        body: bytes | None,
        span: Span | None = None,
    ) -> SkipReason | None:
        """Start the mirror of ``done.exchange`` to ``targets`` (its spans children of
        ``span``, the request's server span when tracing), sent in the loop's next round,
        after the serving side's request; else why not: ``ejected`` (the canary is, or
        every target), ``saturated``. Another ejected target (a secondary; the primary when
        the canary serves or in shadow mode) is left out of this mirror."""
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
        call = _Mirrored(self, done, targets, body, span)
        self._tasks.calls.add(call)
        self._loop.call_soon(call.send)
        return None


class _Mirrored:
    """One exchange's mirror: its targets' answers, then ``Completion.mirrored``."""

    __slots__ = ("_body", "_mirror", "_pending", "_span", "_targets", "aborted", "done")

    def __init__(
        self,
        mirror: Mirror,
        done: Completion,
        targets: tuple[Upstream, ...],
        body: bytes | None,
        span: Span | None,
    ) -> None:
        self._mirror = mirror
        self.done = done
        self._pending = len(targets)
        self._body = body
        self._span = span
        self.aborted = False
        self._targets = [_Target(self, up) for up in targets]

    def send(self) -> None:
        if self.aborted:
            return
        ex = self.done.exchange
        headers = [*ex.headers, _SHADOW]
        mirror = self._mirror
        tracing = mirror._tracing
        body = self._body
        for target in self._targets:
            if tracing.enabled and self._span is not None:
                target.span = tracing.child_span(self._span, "mirror", target.upstream.role)
            target.send(headers, body)

    def spawn(self, target: _Target, headers: list[tuple[str, str]], fresh: bool) -> None:
        """Send ``target``'s request from a task (a connection to open or wait for)."""
        self._mirror._tasks.spawn(
            target.fetch(headers, self._body, fresh), name=self.done.exchange.tags.trace_id
        )

    def target_done(self) -> None:
        self._pending -= 1
        if self._pending or self.aborted:
            return
        self._targets = []  # (they point back here: no cycle left for the collector)
        mirror = self._mirror
        mirror.in_flight -= 1
        MIRROR_IN_FLIGHT.dec()
        mirror._tasks.ended(self)
        self.done.mirrored()

    def abort(self) -> None:
        """Give up (the app's drain ran out of time): the exchange is not recorded, its
        record would lack the side it waited for."""
        if self.aborted:
            return
        self.aborted = True
        mirror = self._mirror
        mirror.in_flight -= 1
        MIRROR_IN_FLIGHT.dec()
        mirror._tasks.ended(self)
        targets, self._targets = self._targets, []
        for target in targets:
            target.cancel()


class _Target(AnswerSink):
    """One target of a mirror: its answer into a ``Capture``, in the connection's
    callbacks when an idle connection took the request, else in a task (``fetch``)."""

    __slots__ = ("_headers", "_started", "call", "capture", "read_on", "span", "upstream")

    def __init__(self, call: _Mirrored, upstream: Upstream) -> None:
        super().__init__()
        self.call = call
        self.upstream = upstream
        self.capture = Capture(call._mirror._limit)
        self.span: Span | None = None
        self._started = 0.0
        self._headers: list[tuple[str, str]] = []
        # Past the record bound, read on to time the answer's end, unless its endpoint's
        # answers kept outrunning that (proxy.ejection.DiscardGate).
        self.read_on = upstream.discard_gate.reads_on(call.done.exchange.route.endpoint)

    def send(self, headers: list[tuple[str, str]], body: bytes | None) -> None:
        up = self.upstream
        ex = self.call.done.exchange
        self._started = _perf()
        self._headers = headers
        try:
            sent = up.pool.send_nowait(
                ex.method,
                up.target(ex.path, ex.query),
                headers,
                body,
                self,
                limit=up.mirror_timeout,
                host=up.host(ex.host),
            )
        except Exception:
            sent = False  # the task's send fails the same way, and records it
        if not sent:
            self.call.spawn(self, headers, False)

    # -- the connection's callbacks (AnswerSink)
    def head(self, status: int, block: bytes) -> None:
        self.capture.head(status, block)

    def body(self, data: bytes) -> bool:
        cap = self.capture
        cap.add(data)
        return not cap.truncated  # past what is recorded: read on, not kept, to time it

    def discard_limit(self, default: int) -> int:
        if not self.read_on or outruns(self.capture, default):
            return -1  # its end cannot be timed: read no more
        return default

    def end(self, error: UpstreamError | None, latency: float | None) -> None:
        if self.call.aborted:
            return
        cap = self.capture
        if error is not None:
            if retryable(error, self.call.done.exchange.method):
                self.call.spawn(self, self._headers, True)  # on a fresh connection
                return
            cap.error = error_kind(error)
            if cap.status is not None:  # the head came, the body broke off
                cap.truncated = True
            cap.latency = _perf() - self._started
        elif latency is not None:
            cap.latency = latency
        # else: past the discard bound, the answer's end is unknown: no latency
        # The rest (metrics, the record's hand-over) after what this round of the loop has
        # woken already: a client's answer that came in the same round goes out first.
        self.call._mirror._loop.call_soon(self.finish)

    async def fetch(self, headers: list[tuple[str, str]], body: bytes | None, fresh: bool) -> None:
        up = self.upstream
        ex = self.call.done.exchange
        await fetch(
            up,
            ex.method,
            up.target(ex.path, ex.query),
            headers,
            body,
            self.capture,
            ex.host,
            read_on=self.read_on,
            fresh=fresh,
        )
        if not self.call.aborted:
            self.finish()

    def finish(self) -> None:
        """The target's answer (or error) is in: into the exchange, counted."""
        if self.call.aborted:
            return
        try:
            up = self.upstream
            cap = self.capture
            call = self.call
            exchange = call.done.exchange
            exchange.captures[up.role] = cap
            if self.read_on and cap.error is None:
                # Read on past the record bound: did the answer end within the discard bound?
                up.discard_gate.ended(
                    exchange.route.endpoint, within=not cap.truncated or cap.latency is not None
                )
            if up.ejection.outcome(cap.error):
                count_ejection(up.role)
            count_mirror_outcome(cap.error or "ok")
            observe_upstream(
                up.role,
                "mirror",
                exchange.route.endpoint,
                cap.error or cap.status or ErrorKind.ERROR,
                cap.latency if cap.error is None else None,
            )
            if self.span is not None:
                Tracing.finish(self.span, cap.status, cap.error)
            call.target_done()
        except Exception:
            logger.exception("the mirror of %s failed", self.call.done.exchange.tags.trace_id)


MIRROR_TASKS_KEY: web.AppKey[MirrorTasks] = web.AppKey("graygate.proxy.mirror_tasks", MirrorTasks)


def mirror_tasks_ctx(drain_timeout: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context: the mirrors' ``MirrorTasks`` under ``MIRROR_TASKS_KEY``, drained
    on cleanup (waiting up to ``drain_timeout`` seconds, then giving up on the rest)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tasks = MirrorTasks()
        app[MIRROR_TASKS_KEY] = tasks
        yield
        await tasks.drain(drain_timeout)

    return ctx
