"""Prometheus metrics of the request path, on the default registry.

The default registry is what ``prometheus_client``'s multiprocess mode collects from (set
``PROMETHEUS_MULTIPROC_DIR`` before this module is imported), so several proxy processes
can be scraped as one. Metric names:

- ``graygate_upstream_requests_total{role, mode, status}``: requests sent to an upstream
  (``role`` primary | canary | secondary; ``mode`` serve | mirror; ``status`` the HTTP
  status code, or the error kind: timeout | refused | reset | error)
- ``graygate_upstream_latency_seconds{role, mode, endpoint}``: time to an upstream's full
  answer; ``endpoint`` the configured template the request matched (``GET
  /api/orders/{id}``), ``other`` for a path no template matches and past
  ``metrics.max_endpoints`` templates (``proxy.route_match``): never a raw path
- ``graygate_proxy_added_seconds``: what graygate itself adds to a served request on the
  proxied port (inline mode): from the handler's start (aiohttp has parsed the request's
  head) to the answer's head handed to the client's connection, less the time spent reading
  a request body (the client's pace) and less the serving upstream's time to its answer's
  head (from the request's first byte written to the head parsed). What remains is
  graygate's own work: tagging, routing, starting the mirror, taking a pooled connection
  (or connecting), writing the request and the answer's head, and any wait for the event
  loop. Requests without an upstream answer (502/504, a client gone before the head) are
  not observed.
- ``graygate_mirror_outcomes_total{outcome}``: mirrors sent, by outcome (ok | timeout |
  refused | reset | error; ``ok`` is any HTTP answer)
- ``graygate_mirror_skipped_total{reason}``: exchanges not mirrored, by reason
  (``graygate.vocabulary.SkipReason``: disabled | method | sampled_out | body_too_large |
  saturated | upgrade_not_mirrored | method_not_mirrored | ejected)
- ``graygate_mirror_ejections_total{role}``: a mirror target ejected after broken answers
  in a row (``mirror.eject``; ``proxy.ejection``): its mirrors are then skipped as
  ``ejected`` for a while
- ``graygate_mirror_in_flight``: mirrors running now
- ``graygate_client_closed_total{reason}``: client connections the proxy closed itself
  (``header_timeout``: a head not complete in ``timeouts.client_header_s``; ``stalled``: a
  client that took no bytes of its answer for ``timeouts.client_write_s``; ``evicted``: the
  longest idle connection, closed at ``listen_limits.max_connections`` for a new one;
  ``refused``: a new connection at the cap with none idle)
- ``graygate_client_connections``: client connections open now

What the recorder does with the exchanges is counted by the recorder
(``graygate_record_exchanges_*``).

Label children are cached: ``.labels()`` takes a lock and builds a tuple per call, which the
hot path can do without. And the request path's updates are batched: ``prometheus_client``
takes a lock for every increment (and, in multiprocess mode, writes a memory-mapped file),
some 6 us per proxied request in single-process mode and 12.5 us in multiprocess mode for
its two upstream requests, their latencies, the mirror's outcome and the in-flight gauge
(before graygate's added time was observed too).
They are added up in plain dicts (a histogram's observations by bucket) on the event
loop's thread and handed to ``prometheus_client`` in one go (:func:`flush`): half a second
after the first pending update (one loop timer), when the default registry is collected
(a scrape, ``REGISTRY.get_sample_value``: the collection waits for the flush on the loop's
thread), and at exit. A scrape of several processes (multiprocess mode) sees each one's
updates up to ``FLUSH_INTERVAL_S`` late. Updates from a thread other than the one whose
loop holds pending updates go to ``prometheus_client`` at once (its lock), never into the
pending dicts that thread swaps.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any, Final

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.registry import Collector

from graygate.vocabulary import ErrorKind, Role, SkipReason

__all__ = [
    "CLIENT_CLOSED",
    "CLIENT_CLOSED_REASONS",
    "CLIENT_CONNECTIONS",
    "MIRROR_EJECTIONS",
    "MIRROR_IN_FLIGHT",
    "MIRROR_OUTCOMES",
    "MIRROR_SKIPPED",
    "PROXY_ADDED",
    "UPSTREAM_LATENCY",
    "UPSTREAM_REQUESTS",
    "count_client_closed",
    "count_ejection",
    "count_mirror_outcome",
    "count_mirror_skip",
    "flush",
    "observe_proxy_added",
    "observe_upstream",
]

logger = logging.getLogger(__name__)

# No ``*_created`` series: they double the series and no gate or dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

FLUSH_INTERVAL_S: Final = 0.5

# Pending updates, by the metric child they go to: increments of counters and gauges; a
# histogram's observations as counts per bucket, then their sum.
_pending: dict[Any, float] = {}
_pending_observed: dict[Histogram, list[float]] = {}
_flusher: asyncio.TimerHandle | None = None
_owner: tuple[asyncio.AbstractEventLoop, int] | None = None  # the loop updating, its thread


def _apply() -> None:
    """Hand the pending updates to prometheus_client (on the updating thread)."""
    global _pending, _pending_observed
    pending, _pending = _pending, {}
    observed, _pending_observed = _pending_observed, {}
    for child, amount in pending.items():
        if amount:
            child.inc(amount)
    for hist, counts in observed.items():
        _add_observations(hist, counts)


def _add_observations(hist: Histogram, counts: list[float]) -> None:
    """Add counts by bucket (and their sum, last) to a histogram child: what as many
    ``observe`` calls would have added, one increment per bucket."""
    buckets = hist._buckets
    for i, n in enumerate(counts[:-1]):
        if n:
            buckets[i].inc(n)
    hist._sum.inc(counts[-1])


def flush() -> None:
    """Hand every pending update to prometheus_client now (from any thread: off the
    updating loop's thread, it is done on that thread and waited for, up to a second)."""
    global _flusher
    owner = _owner
    if owner is not None and owner[1] != threading.get_ident():
        loop = owner[0]
        if not loop.is_closed() and loop.is_running():
            done = threading.Event()

            def on_loop() -> None:
                try:
                    flush()
                finally:
                    done.set()

            try:
                loop.call_soon_threadsafe(on_loop)
            except RuntimeError:  # closed meanwhile: nothing updates it any more
                pass
            else:
                done.wait(1.0)
                return
    if _flusher is not None:
        _flusher.cancel()
        _flusher = None
    _apply()


def _on_timer() -> None:
    global _flusher
    _flusher = None
    _apply()


def _pending_now() -> None:
    """A first update is pending: flush within ``FLUSH_INTERVAL_S`` (at once off a loop)."""
    global _flusher, _owner
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _apply()
        return
    _owner = (loop, threading.get_ident())
    _flusher = loop.call_later(FLUSH_INTERVAL_S, _on_timer)


def _elsewhere() -> bool:
    """Updates are pending on another thread's loop: this thread must not touch the
    pending dicts (that thread swaps them when it flushes)."""
    owner = _owner
    return _flusher is not None and owner is not None and owner[1] != threading.get_ident()


def _add(child: Any, amount: float = 1.0) -> None:
    if _elsewhere():
        child.inc(amount)  # prometheus_client's own lock: safe from any thread
        return
    pending = _pending
    pending[child] = pending.get(child, 0.0) + amount
    if _flusher is None:
        _pending_now()


def _observe(hist: Histogram, seconds: float, bounds: tuple[float, ...]) -> None:
    """``bounds``: the histogram's buckets' upper bounds, ``+Inf`` last."""
    if _elsewhere():
        hist.observe(seconds)
        return
    counts = _pending_observed.get(hist)
    if counts is None:
        counts = _pending_observed[hist] = [0.0] * (len(bounds) + 1)
    counts[bisect_left(bounds, seconds)] += 1  # the first bucket with seconds <= le
    counts[-1] += seconds
    if _flusher is None:
        _pending_now()


class _FlushOnCollect(Collector):
    """Registered first in the default registry: a collection sees every update."""

    def collect(self) -> Iterable[Any]:
        flush()
        return ()

    def describe(self) -> Iterable[Any]:
        return ()


REGISTRY.register(_FlushOnCollect())
atexit.register(flush)


class _BatchedGauge:
    """A gauge's ``inc``/``dec`` batched like the counters (``MIRROR_IN_FLIGHT``)."""

    __slots__ = ("gauge",)

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge

    def inc(self, amount: float = 1.0) -> None:
        _add(self.gauge, amount)

    def dec(self, amount: float = 1.0) -> None:
        _add(self.gauge, -amount)


UPSTREAM_REQUESTS: Final = Counter(
    "graygate_upstream_requests",
    "Requests sent to an upstream, by role, mode and HTTP status or error kind.",
    ("role", "mode", "status"),
)
_LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_LATENCY_BOUNDS: Final = (*_LATENCY_BUCKETS, float("inf"))  # prometheus_client adds +Inf
UPSTREAM_LATENCY: Final = Histogram(
    "graygate_upstream_latency_seconds",
    "Time from sending a request to an upstream to the end of its answer, by role, mode and "
    "endpoint template (other: unmatched, or past metrics.max_endpoints).",
    ("role", "mode", "endpoint"),
    buckets=_LATENCY_BUCKETS,
)
_ADDED_BUCKETS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
_ADDED_BOUNDS: Final = (*_ADDED_BUCKETS, float("inf"))
PROXY_ADDED: Final = Histogram(
    "graygate_proxy_added_seconds",
    "Time graygate adds to a served request: head received to answer head sent, less body "
    "reading and the upstream's time to its answer's head.",
    buckets=_ADDED_BUCKETS,
)
MIRROR_OUTCOMES: Final = Counter(
    "graygate_mirror_outcomes",
    "Mirrors sent, by outcome: ok (an HTTP answer), timeout, refused, reset, error.",
    ("outcome",),
)
MIRROR_SKIPPED: Final = Counter(
    "graygate_mirror_skipped",
    "Exchanges not mirrored, by reason.",
    ("reason",),
)
MIRROR_EJECTIONS: Final = Counter(
    "graygate_mirror_ejections",
    "Mirror targets ejected after broken answers in a row (mirror.eject), by role.",
    ("role",),
)
MIRROR_IN_FLIGHT: Final = _BatchedGauge(
    Gauge(
        "graygate_mirror_in_flight",
        "Mirrors running now.",
        multiprocess_mode="livesum",
    )
)

CLIENT_CLOSED: Final = Counter(
    "graygate_client_closed",
    "Client connections closed by the proxy: header_timeout, stalled, evicted, refused.",
    ("reason",),
)
CLIENT_CONNECTIONS: Final = Gauge(
    "graygate_client_connections",
    "Client connections open now.",
    multiprocess_mode="livesum",
)

_requests: dict[tuple[str, str, int | str], Counter] = {}
_latency: dict[tuple[str, str, str], Histogram] = {}
_outcomes: dict[str, Counter] = {}
_skipped: dict[str, Counter] = {}


def observe_upstream(
    role: str, mode: str, endpoint: str, status: int | str, seconds: float | None
) -> None:
    """Count one upstream request (``status``: the HTTP status or the error kind;
    ``endpoint``: a ``proxy.route_match.Route.endpoint``, bounded, never a raw path)."""
    key = (role, mode, status)
    child = _requests.get(key)
    if child is None:
        child = _requests[key] = UPSTREAM_REQUESTS.labels(role, mode, str(status))
    _add(child)
    if seconds is not None:
        lkey = (role, mode, endpoint)
        hist = _latency.get(lkey)
        if hist is None:
            hist = _latency[lkey] = UPSTREAM_LATENCY.labels(*lkey)
        _observe(hist, seconds, _LATENCY_BOUNDS)


def observe_proxy_added(
    started: float, head_sent: float | None, upstream_head: float | None
) -> None:
    """Observe graygate's added time for one served request: ``started`` (``perf_counter``
    at the handler's start, moved on by the time spent reading the request body),
    ``head_sent`` (when the answer's head went to the client) and ``upstream_head`` (the
    upstream's seconds to its answer's head). Nothing when either is unknown."""
    if head_sent is None or upstream_head is None:
        return
    _observe(PROXY_ADDED, max(0.0, head_sent - started - upstream_head), _ADDED_BOUNDS)


def count_mirror_outcome(outcome: str) -> None:
    child = _outcomes.get(outcome)
    if child is None:
        child = _outcomes[outcome] = MIRROR_OUTCOMES.labels(outcome)
    _add(child)


def count_mirror_skip(reason: str) -> None:
    child = _skipped.get(reason)
    if child is None:
        child = _skipped[reason] = MIRROR_SKIPPED.labels(reason)
    _add(child)


def count_ejection(role: str) -> None:
    MIRROR_EJECTIONS.labels(role).inc()  # rare: once per ejection


_closed: dict[str, Counter] = {}


def count_client_closed(reason: str) -> None:
    child = _closed.get(reason)
    if child is None:
        child = _closed[reason] = CLIENT_CLOSED.labels(reason)
    child.inc()


CLIENT_CLOSED_REASONS: Final = ("header_timeout", "stalled", "evicted", "refused")


def _zero_known_labels() -> None:
    """Every reason and outcome known in advance starts as a 0 series, as Prometheus
    advises: ``rate()`` and ``increase()`` see the first event, and a scrape (one process or
    several) lists each metric before anything happened."""
    for skip in SkipReason:
        _skipped[skip.value] = MIRROR_SKIPPED.labels(skip.value)
    for outcome in ("ok", *(kind.value for kind in ErrorKind)):
        _outcomes[outcome] = MIRROR_OUTCOMES.labels(outcome)
    for closed in CLIENT_CLOSED_REASONS:
        _closed[closed] = CLIENT_CLOSED.labels(closed)
    for role in Role:
        MIRROR_EJECTIONS.labels(role.value)


_zero_known_labels()
