"""A bounded, mixed load generator for the demo order service (``examples/``).

It speaks the orders API the way a shop front would: mostly reads of orders by id, reads of
stock, and a share of new orders (``POST /api/orders`` with a JSON body), with ``N``
concurrent clients, an optional request rate, and a fixed duration and/or request count.
``graygate demo`` and the end-to-end tests drive the proxy with it.

Why the order writes pick their stock keeping units with care: the proxy serves a request
from the primary and mirrors it to the canary in the background, so two requests that touch
the same SKU close together may reach the two services in different orders. The primary and
the canary would then both be right and still disagree on ``stock_after``. A real gray
release has the same race; the demo avoids it so that a clean canary gets a clean GO: a
POST only takes SKUs that no request in flight touches and that no POST touched within
``sku_gap_s``, and a stock read only asks for such a SKU (else it becomes an order read).
Orders created by the load are read back only ``reread_after_s`` after their creation.

Usage::

    stats = await run_load(LoadOptions(base_url="http://127.0.0.1:8080", duration=10,
                                       concurrency=8, rate=100), progress=print)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

__all__ = [
    "SKUS",
    "LoadMix",
    "LoadOptions",
    "LoadStats",
    "run_load",
]

logger = logging.getLogger(__name__)

SKUS: tuple[str, ...] = tuple(f"SKU-{i:04d}" for i in range(1, 51))
MAX_GENERATED_ORDER_ID = 999_999  # ids the services generate deterministically (< 10^12)
_REREAD_KEEP = 512  # created orders remembered for reading back

ProgressCallback = Callable[["LoadStats"], None]


@dataclass(frozen=True, slots=True)
class LoadMix:
    """Relative weights of the request kinds (they need not add up to 1)."""

    get_order: float = 0.55
    get_inventory: float = 0.25
    post_order: float = 0.20
    # Of the order reads, the share that reads back an order the load created.
    reread_created: float = 0.1

    def __post_init__(self) -> None:
        weights = (self.get_order, self.get_inventory, self.post_order)
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"mix weights must be >= 0 and not all 0, got {weights}")
        if not 0.0 <= self.reread_created <= 1.0:
            raise ValueError(f"reread_created must be within 0..1, got {self.reread_created}")


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """What to send, where, for how long."""

    base_url: str
    duration: float | None = None  # seconds; stop sending after this long
    requests: int | None = None  # stop after this many requests
    concurrency: int = 8
    rate: float | None = None  # requests per second over all clients; None: as fast as it goes
    mix: LoadMix = field(default_factory=LoadMix)
    seed: int | None = None
    timeout_s: float = 10.0
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request
    sku_gap_s: float = 0.5
    reread_after_s: float = 2.0

    def __post_init__(self) -> None:
        if self.duration is None and self.requests is None:
            raise ValueError("give a duration, a request count, or both")
        if self.duration is not None and self.duration <= 0:
            raise ValueError(f"duration must be > 0, got {self.duration}")
        if self.requests is not None and self.requests < 0:
            raise ValueError(f"requests must be >= 0, got {self.requests}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


@dataclass(slots=True)
class LoadStats:
    """What was sent and how it went; updated live, handed to the progress callback."""

    sent: int = 0  # requests started
    completed: int = 0  # requests that got an HTTP answer
    errors: int = 0  # transport errors, timeouts and 5xx answers
    by_kind: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    planned_duration: float | None = None
    planned_requests: int | None = None

    @property
    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return max(0.0, end - self.started_at)

    @property
    def rate(self) -> float:
        """Requests answered per second so far."""
        elapsed = self.elapsed
        return self.completed / elapsed if elapsed > 0 else 0.0

    @property
    def fraction_done(self) -> float:
        """0..1: how far the load is along its duration or request budget."""
        parts = []
        if self.planned_duration:
            parts.append(self.elapsed / self.planned_duration)
        if self.planned_requests:
            parts.append(self.sent / self.planned_requests)
        if self.finished_at is not None or not parts:
            return 1.0 if self.finished_at is not None else 0.0
        return min(1.0, max(parts))

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "completed": self.completed,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed, 3),
            "rate": round(self.rate, 2),
            "by_kind": dict(self.by_kind),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "transport_errors": dict(self.transport_errors),
        }


class _SkuLedger:
    """Which SKUs a request may touch now without racing another one (see the module doc)."""

    def __init__(self, gap_s: float) -> None:
        self._gap = gap_s
        self._busy: Counter[str] = Counter()
        self._last_write: dict[str, float] = {}

    def _quiet(self, now: float) -> list[str]:
        return [
            s
            for s in SKUS
            if not self._busy[s] and now - self._last_write.get(s, -1e9) >= self._gap
        ]

    def take(self, rng: random.Random, n: int) -> list[str] | None:
        quiet = self._quiet(time.monotonic())
        if len(quiet) < n:
            return None
        chosen = rng.sample(quiet, n)
        for s in chosen:
            self._busy[s] += 1
        return chosen

    def release(self, skus: list[str], *, wrote: bool) -> None:
        now = time.monotonic()
        for s in skus:
            self._busy[s] -= 1
            if wrote:
                self._last_write[s] = now


class _Load:
    def __init__(
        self,
        opts: LoadOptions,
        session: aiohttp.ClientSession,
        progress: ProgressCallback | None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.opts = opts
        self.stop = stop
        self.session = session
        self.progress = progress
        self.rng = random.Random(opts.seed)
        self.stats = LoadStats(planned_duration=opts.duration, planned_requests=opts.requests)
        self.ledger = _SkuLedger(opts.sku_gap_s)
        self.created: deque[tuple[float, int]] = deque(maxlen=_REREAD_KEEP)
        self.base = opts.base_url.rstrip("/")
        self.headers = dict(opts.headers)
        self.timeout = aiohttp.ClientTimeout(total=opts.timeout_s)
        self.deadline: float | None = None
        self.issued = 0
        self.customers = [f"cust-{i:05d}" for i in range(1, 2001)]

    def _next_slot(self) -> float | None:
        """Claim the next request; None when the budget or the time is spent. Returns the
        monotonic time it may be sent at."""
        now = time.monotonic()
        if self.stop is not None and self.stop.is_set():
            return None
        if self.opts.requests is not None and self.issued >= self.opts.requests:
            return None
        if self.deadline is not None and now >= self.deadline:
            return None
        k = self.issued
        self.issued += 1
        if self.opts.rate is None:
            return now
        return self.stats.started_at + k / self.opts.rate

    def _kind(self) -> str:
        mix = self.opts.mix
        return self.rng.choices(
            ("get_order", "get_inventory", "post_order"),
            weights=(mix.get_order, mix.get_inventory, mix.post_order),
        )[0]

    def _order_id(self) -> int:
        if self.created and self.rng.random() < self.opts.mix.reread_created:
            ripe_before = time.monotonic() - self.opts.reread_after_s
            ripe = [oid for at, oid in self.created if at <= ripe_before]
            if ripe:
                return self.rng.choice(ripe)
        return self.rng.randint(1, MAX_GENERATED_ORDER_ID)

    async def _one(self) -> None:
        kind = self._kind()
        skus: list[str] = []
        if kind == "post_order":
            taken = self.ledger.take(self.rng, self.rng.choice((1, 1, 2, 2, 3)))
            if taken is None:
                kind = "get_order"
            else:
                skus = taken
        elif kind == "get_inventory":
            taken = self.ledger.take(self.rng, 1)
            if taken is None:
                kind = "get_order"
            else:
                skus = taken
        self.stats.sent += 1
        self.stats.by_kind[kind] += 1
        try:
            if kind == "post_order":
                body = {
                    "customer_id": self.rng.choice(self.customers),
                    "items": [{"sku": s, "qty": self.rng.randint(1, 5)} for s in skus],
                }
                status, data = await self._request("POST", "/api/orders", body)
                if status == 201 and isinstance(data, dict) and isinstance(data.get("id"), int):
                    self.created.append((time.monotonic(), data["id"]))
            elif kind == "get_inventory":
                await self._request("GET", f"/api/inventory/{skus[0]}")
            else:
                await self._request("GET", f"/api/orders/{self._order_id()}")
        finally:
            if skus:
                self.ledger.release(skus, wrote=kind == "post_order")
            if self.progress is not None:
                self.progress(self.stats)

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int | None, Any]:
        try:
            async with self.session.request(
                method, self.base + path, json=body, headers=self.headers, timeout=self.timeout
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.errors += 1
            self.stats.transport_errors[type(exc).__name__] += 1
            logger.debug("%s %s failed: %r", method, path, exc)
            return None, None
        self.stats.completed += 1
        self.stats.statuses[status] += 1
        if status >= 500:
            self.stats.errors += 1
        data: Any = None
        if method == "POST" and status == 201:
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
        return status, data

    async def worker(self) -> None:
        while True:
            slot = self._next_slot()
            if slot is None:
                return
            delay = slot - time.monotonic()
            if delay > 0:
                if self.deadline is not None and slot >= self.deadline:
                    return
                if self.stop is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), delay)
                    if self.stop.is_set():
                        return
            await self._one()

    async def run(self) -> LoadStats:
        self.stats.started_at = time.monotonic()
        if self.opts.duration is not None:
            self.deadline = self.stats.started_at + self.opts.duration
        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(self.opts.concurrency):
                    tg.create_task(self.worker(), name=f"loadgen-{i}")
        finally:
            self.stats.finished_at = time.monotonic()
            if self.progress is not None:
                self.progress(self.stats)
        return self.stats


async def run_load(
    opts: LoadOptions,
    *,
    progress: ProgressCallback | None = None,
    session: aiohttp.ClientSession | None = None,
    stop: asyncio.Event | None = None,
) -> LoadStats:
    """Send the load ``opts`` describes and return what happened.

    ``progress`` is called after every request (and once at the end) with the live stats;
    keep it cheap. A request that fails (refused, reset, timed out) counts as an error and
    the load goes on. Setting ``stop`` ends the load early: no new request is started and
    the ones in flight finish; cancelling the call stops every client at once.
    """
    if session is not None:
        return await _Load(opts, session, progress, stop).run()
    connector = aiohttp.TCPConnector(limit=opts.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=opts.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as own:
        return await _Load(opts, own, progress, stop).run()
